//! What a test's clients need to reach a cluster with security on: the
//! bootstrap node's admin token (`admin.token`) and the cluster CA (`ca.pem`),
//! both written into the data dir of the node that bootstrapped the cluster.
//!
//! The harness registers each node's client address with the data dir of
//! its cluster's bootstrap node ([`register`]); every client the harness
//! makes ([`credentials`], [`opsctl_env`]) then finds what it needs by
//! address. The files' contents are cached when first read, so a test that
//! later wipes the bootstrap node's data dir keeps its access.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use opsd_client::Credentials;

/// The admin token file the bootstrap node writes into its data dir.
pub const TOKEN_FILE: &str = "admin.token";
/// The cluster CA certificate every node keeps in its data dir.
pub const CA_FILE: &str = "ca.pem";

#[derive(Clone, Default)]
struct Access {
    dir: PathBuf,
    token: Option<String>,
    ca: Option<Vec<u8>>,
}

static REGISTRY: Mutex<BTreeMap<String, Access>> = Mutex::new(BTreeMap::new());

/// Registers the client address `addr` as a node of the cluster bootstrapped
/// by the node whose data dir is `bootstrap_dir`.
pub fn register(addr: &str, bootstrap_dir: &Path) {
    let mut map = REGISTRY.lock().unwrap_or_else(|p| p.into_inner());
    let known = map.values().find(|a| a.dir == bootstrap_dir).cloned();
    map.insert(
        addr.to_string(),
        known.unwrap_or_else(|| Access {
            dir: bootstrap_dir.to_path_buf(),
            ..Access::default()
        }),
    );
}

/// The first address of a comma-separated list that is registered (a
/// list may start with a dead address no node ever had), else the first.
fn registered(map: &BTreeMap<String, Access>, addr: &str) -> String {
    let mut addrs = addr.split(',').map(str::trim);
    let first = addrs.clone().next().unwrap_or(addr).to_string();
    addrs
        .find(|a| map.contains_key(*a))
        .map(str::to_string)
        .unwrap_or(first)
}

/// The bootstrap data dir registered for `addr` (the first registered
/// address of a comma-separated list), if any.
pub fn bootstrap_dir(addr: &str) -> Option<PathBuf> {
    let map = REGISTRY.lock().unwrap_or_else(|p| p.into_inner());
    map.get(&registered(&map, addr)).map(|a| a.dir.clone())
}

/// The token and CA for `addr` (the first registered address of a
/// comma-separated list: a list may start with a dead one), read (once)
/// from its bootstrap data dir.
fn access(addr: &str) -> Access {
    let mut map = REGISTRY.lock().unwrap_or_else(|p| p.into_inner());
    let first = registered(&map, addr);
    let Some(entry) = map.get(&first).cloned() else {
        return Access::default();
    };
    let mut entry = entry;
    if entry.token.is_none() {
        entry.token = std::fs::read_to_string(entry.dir.join(TOKEN_FILE))
            .ok()
            .map(|t| t.trim().to_string());
    }
    if entry.ca.is_none() {
        entry.ca = std::fs::read(entry.dir.join(CA_FILE)).ok();
    }
    // Every address of the same cluster shares what was read.
    for a in map.values_mut().filter(|a| a.dir == entry.dir) {
        a.token = entry.token.clone();
        a.ca = entry.ca.clone();
    }
    entry
}

/// Credentials for a client of `addr`: the admin token and the cluster CA
/// when its cluster has them, else none (an unregistered address).
pub fn credentials(addr: &str) -> Credentials {
    let access = access(addr);
    let mut credentials = Credentials::anonymous();
    if let Some(token) = &access.token {
        credentials = credentials
            .with_token(token)
            .unwrap_or_else(|e| panic!("the admin token of {}: {e}", access.dir.display()));
    }
    if let Some(ca) = access.ca {
        credentials = credentials.with_ca(ca);
    }
    credentials
}

/// The environment an `opsctl` run against `addr` needs: `OPSD_TOKEN`
/// and `OPSD_CA` as files in the bootstrap node's data dir (or copies of
/// them, once read), nothing for an unregistered address.
pub fn opsctl_env(addr: &str) -> Vec<(String, String)> {
    let access = access(addr);
    let mut env = Vec::new();
    // A node still starting (no database yet) writes its CA and token
    // before it serves: opsctl (`status --wait`) waits for the files.
    let starting = !access.dir.as_os_str().is_empty() && !access.dir.join("db").exists();
    match access.token {
        Some(token) => env.push(("OPSD_TOKEN".to_string(), token)),
        None if starting => env.push((
            "OPSD_TOKEN_FILE".to_string(),
            access.dir.join(TOKEN_FILE).display().to_string(),
        )),
        None => {}
    }
    if access.ca.is_some() || starting {
        env.push(("OPSD_CA".to_string(), access.dir.join(CA_FILE).display().to_string()));
    }
    env
}

/// Makes role `user`-role granting `rules`, the user `user` holding it, and
/// a token for that user (expiring after `ttl_seconds`, 0: never), through
/// the admin token of `addr`'s cluster; returns the token's text.
pub async fn make_user(addr: &str, user: &str, rules: &[&str], ttl_seconds: u64) -> String {
    use opsd_proto::v1::{CreateTokenRequest, CreateUserRequest, PutRoleRequest};
    let mut admin = crate::client::connect(addr);
    let role = format!("{user}-role");
    admin
        .security
        .put_role(PutRoleRequest {
            name: role.clone(),
            rules: rules.iter().map(|r| r.to_string()).collect(),
        })
        .await
        .unwrap_or_else(|e| panic!("put role {role}: {}", crate::client::describe(&e)));
    admin
        .security
        .create_user(CreateUserRequest {
            name: user.to_string(),
            roles: vec![role],
        })
        .await
        .unwrap_or_else(|e| panic!("create user {user}: {}", crate::client::describe(&e)));
    admin
        .security
        .create_token(CreateTokenRequest {
            user: user.to_string(),
            ttl_seconds,
            description: format!("{user}'s test token"),
        })
        .await
        .unwrap_or_else(|e| panic!("create a token for {user}: {}", crate::client::describe(&e)))
        .into_inner()
        .secret_token
}

/// Clients of `addr` sending `token` (and trusting the cluster's CA, if
/// any) instead of the admin token; no per-request timeout if `request` is None.
pub fn clients_with_token(addr: &str, token: Option<&str>, request: Option<std::time::Duration>) -> crate::Clients {
    let node = opsd_client::NodeAddr::parse(addr).unwrap_or_else(|e| panic!("{addr}: {e}"));
    let timeouts = opsd_client::Timeouts {
        connect: std::time::Duration::from_secs(2),
        request,
        ..opsd_client::Timeouts::default()
    };
    let mut credentials = Credentials::anonymous();
    if let Some(token) = token {
        credentials = credentials.with_token(token).unwrap_or_else(|e| panic!("{e}"));
    }
    if let Some(ca) = access(addr).ca {
        credentials = credentials.with_ca(ca);
    }
    opsd_client::Api::lazy(&node, timeouts, credentials)
}

/// An endpoint dialling `addr` as the harness's clients do: TLS trusting
/// its cluster's CA when the cluster has one, else plain HTTP/2. For tests
/// that tune their own channel; [`credentials`] does the same for clients
/// of the client library.
pub fn endpoint(addr: &str) -> tonic::transport::Endpoint {
    let tls = access(addr).ca.map(|ca| opsd_proto::transport::client_tls(&ca, None));
    let endpoint = match tls {
        None => tonic::transport::Endpoint::from_shared(format!("http://{addr}")),
        Some(tls) => tonic::transport::Endpoint::from_shared(format!("https://{addr}")).and_then(|e| e.tls_config(tls)),
    };
    endpoint.unwrap_or_else(|e| panic!("{addr} is not a HOST:PORT address: {e}"))
}

/// A fresh join token (`opsctl cluster join-token`) from the cluster of the
/// first of `seeds` that makes one, made with the cluster's admin token;
/// `None` if the seeds are not registered, their cluster has no CA, or none
/// answers (the joining node then fails as it would without one).
pub fn join_token(seeds: &[String]) -> Option<String> {
    let seeds: Vec<String> = seeds.iter().filter(|s| access(s).ca.is_some()).cloned().collect();
    if seeds.is_empty() {
        return None;
    }
    // A runtime of its own, on a thread of its own: the harness starts
    // nodes from inside tests' runtimes as well as from plain threads.
    std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .ok()?;
        runtime.block_on(async {
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
            loop {
                for seed in &seeds {
                    let Ok(addr) = opsd_client::NodeAddr::parse(seed) else {
                        continue;
                    };
                    let timeouts = opsd_client::Timeouts::default();
                    let Ok(mut api) = opsd_client::Api::connect(&addr, timeouts, credentials(seed)).await else {
                        continue;
                    };
                    let request = opsd_proto::v1::CreateJoinTokenRequest { ttl: None };
                    match api.cluster.create_join_token(request).await {
                        Ok(answer) => return Some(answer.into_inner().token),
                        Err(status) => eprintln!("[harness] a join token from {seed}: {}", status.message()),
                    }
                }
                if std::time::Instant::now() > deadline {
                    return None;
                }
                tokio::time::sleep(std::time::Duration::from_millis(300)).await;
            }
        })
    })
    .join()
    .ok()
    .flatten()
}

/// The cluster CA (PEM) of `addr`'s cluster, if it has one: for a test that
/// makes its own credentials (say, without a principal).
pub fn ca(addr: &str) -> Option<Vec<u8>> {
    access(addr).ca
}
