//! Starting a node: the data dir, then bootstrap, join or resume, then the
//! client API, until SIGTERM or SIGINT shuts it down gracefully.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context};
use opsd_client::{Api, ClusterApi, Credentials, NodeAddr, Timeouts};
use opsd_cluster::disk::{below_floor, MB};
use opsd_cluster::{new_cluster_id, ClusterConfig, ClusterNode, DataDir, NodeInfo};
use opsd_proto::transport;
use opsd_proto::v1::cluster_server::ClusterServer;
use opsd_proto::v1::resources_server::ResourcesServer;
use opsd_proto::v1::security_server::SecurityServer;
use opsd_proto::v1::services_server::ServicesServer;
use opsd_proto::v1::settings_server::SettingsServer;
use opsd_proto::v1::{JoinCertificateRequest, JoinCertificateResponse, JoinRequest, StatusRequest};
use tokio::net::TcpListener;
use tokio::signal::unix::{signal, SignalKind};
use tonic_health::server::HealthReporter;
use tonic_health::ServingStatus;
use tracing::{error, info, warn};

use crate::api::caller;
use crate::api::cluster::ClusterService;
use crate::api::resources::ResourcesService;
use crate::api::security::SecurityService;
use crate::api::settings::SettingsService;
use crate::config::Config;
use crate::domain::{Command, Domain, Outcome, TABLES};
use crate::engine::{Engine, StateLookup};
use crate::lb::api::ServicesService;
use crate::lb::discovery::MemberListeners;
use crate::lb::Balancer;
use crate::ops::docker::DockerProvider;
use crate::ops::ec2::Ec2Provider;
use crate::ops::exec::ExecProvider;
use crate::ops::local::LocalProvider;
use crate::ops::service::ServiceProvider;
use crate::ops::{Provider, Providers};
use crate::pki;

/// opsd's exit code when its data dir's disk is full or failed
/// (`EX_TEMPFAIL`: try again later). A supervisor that restarts opsd on it
/// brings the node back once the disk has room.
pub const EXIT_DISK: u8 = 75;

/// An error that ends opsd with [`EXIT_DISK`]: the disk, not the node's state.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct DiskError(pub String);

/// Sets who user commands (exec steps and checks, the local provider's
/// builds and machines) run as: `--exec-user`, or opsd's own user, with a
/// warning if that is root.
fn run_user_commands_as(config: &Config) -> anyhow::Result<()> {
    let euid = nix::unistd::geteuid();
    match &config.exec_user {
        Some(user) => {
            if !euid.is_root() && euid.as_raw() != user.uid {
                bail!(
                    "--exec-user {}: opsd runs as uid {euid}, not root, so it cannot run commands as another user \
                     (start opsd as root, or drop --exec-user)",
                    user.name
                );
            }
            crate::ops::process::set_exec_user(user.clone(), &config.data_dir).map_err(|e| anyhow!(e))?;
            info!(user = %user.name, uid = user.uid, gid = user.gid, "user commands run as the exec user");
        }
        None if euid.is_root() => warn!(
            "opsd runs as root without --exec-user: exec steps, exec checks, build commands and machines run as root \
             too; start opsd with --exec-user USER (an unprivileged user) in production"
        ),
        None => {}
    }
    Ok(())
}

/// Runs a node until it is told to stop.
pub async fn run(config: Config) -> anyhow::Result<()> {
    let mut data_dir = DataDir::open(&config.data_dir)?;
    let identity = data_dir.identity().clone();
    if identity.removed {
        bail!(
            "data dir {}: node {} was removed from cluster {}; it cannot serve again (start it with an empty data dir to join anew)",
            config.data_dir.display(),
            identity.node_id,
            identity.cluster_id.as_deref().unwrap_or("?")
        );
    }
    run_user_commands_as(&config)?;
    let min_free_bytes = config.min_free_mb.saturating_mul(MB);
    if let Some(why) = below_floor(&config.data_dir, min_free_bytes) {
        return Err(DiskError(format!(
            "{why}: opsd does not start on it; free some space there (or lower --min-free-mb) and start it again"
        ))
        .into());
    }
    let me = NodeInfo {
        addr: host_port(&config.advertise, config.listen.port()),
        peer_addr: host_port(&config.advertise, config.peer_listen.port()),
    };
    // Bind both ports first, so a port in use fails before anything else happens.
    let listener = TcpListener::bind(config.listen)
        .await
        .with_context(|| format!("--listen {}: cannot listen", config.listen))?;
    let peer_listener = TcpListener::bind(config.peer_listen)
        .await
        .with_context(|| format!("--peer-listen {}: cannot listen", config.peer_listen))?;

    enum Start {
        Bootstrap,
        Join,
        Resume,
    }
    let dir = config.data_dir.clone();
    let mut tls = pki::load(&dir)?;
    let start = match (&identity.cluster_id, config.join.is_empty()) {
        (None, true) => {
            // The cluster's CA and this node's certificate, written before
            // the cluster id: a data dir with a cluster id has its files.
            let cluster_id = new_cluster_id();
            let ca = pki::new_ca(&cluster_id)?;
            let cert = pki::issue_node_cert(&ca, &cluster_id, identity.node_id)?;
            pki::write_ca_key(&dir, &ca)?;
            pki::write_node_files(&dir, &ca.cert_pem, &cert)?;
            tls = pki::load(&dir)?;
            // Written before InitSecurity (its hash) is proposed: a crash in
            // between leaves the file, and the initialiser proposes it again.
            crate::security::write_admin_token(&config.data_dir).context("making the admin token")?;
            data_dir.set_cluster_id(&cluster_id)?;
            Start::Bootstrap
        }
        (None, false) => {
            let cluster_id = match (&tls, &config.join_token) {
                (None, Some(token)) => {
                    let got = fetch_certificate(&config, token, identity.node_id).await?;
                    let cert = pki::NodeCert {
                        cert_pem: got.cert_pem,
                        key_pem: got.key_pem,
                    };
                    pki::write_node_files(&dir, &got.ca_pem, &cert)?;
                    tls = pki::load(&dir)?;
                    got.cluster_id
                }
                _ => seed_cluster_id(&config, &dial_credentials(tls.as_ref())).await?,
            };
            data_dir.set_cluster_id(&cluster_id)?;
            Start::Join
        }
        (Some(ours), false) => {
            check_seed_cluster(&config, ours, &dial_credentials(tls.as_ref())).await?;
            Start::Join
        }
        (Some(_), true) => Start::Resume,
    };
    if let Some(tls) = &tls {
        pki::set_local(tls.clone());
    }

    let cluster_config = ClusterConfig {
        advertise: me.clone(),
        heartbeat: config.heartbeat,
        election_timeout: config.election_timeout,
        snapshot_threshold: config.snapshot_threshold,
        max_voters: config.max_voters,
        request_timeout: config.write_timeout,
        tables: TABLES.iter().map(|t| t.to_string()).collect(),
        min_free_bytes,
        tls: tls.clone(),
    };
    let node = ClusterNode::start(cluster_config, data_dir, peer_listener, Arc::new(Domain)).await?;
    match start {
        Start::Bootstrap => {
            node.initialize().await?;
            crate::security::init_at_bootstrap(&node, &config.data_dir).await?;
            info!(
                node_id = node.node_id(),
                cluster_id = node.cluster_id(),
                "bootstrapped a new single-node cluster"
            );
            // Join tokens need the CA in the state: replicated before the
            // client API serves.
            let deadline = Instant::now() + Duration::from_secs(30);
            while !replicate_kept_ca(&node, &dir).await && Instant::now() < deadline {
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
        Start::Join if node.is_member().await => info!(node_id = node.node_id(), "resumed; already a member"),
        Start::Join => {
            if let Err(e) = join(&config, &node, &me, &dial_credentials(tls.as_ref())).await {
                node.shutdown().await;
                return Err(e);
            }
        }
        Start::Resume => {
            if !node.is_member().await {
                warn!("this node is not a member yet: waiting for a leader to add it (start it with --join to ask)");
            }
            info!(
                node_id = node.node_id(),
                cluster_id = node.cluster_id(),
                "resumed from the data dir"
            );
        }
    }
    spawn_ca_replicator(node.clone(), dir.clone());

    crate::propose::spawn_builtin_kind_installer(node.clone());
    crate::security::spawn_initialiser(node.clone(), config.data_dir.clone());
    let engine = start_engine(&node, &config.data_dir, &config.advertise)?;
    let balancer = Balancer::new(node.node_id(), &config.lb_host, &lb_client_host(&config));
    let following = crate::lb::follow::start(&node, balancer.clone());
    let served = serve(listener, node.clone(), engine.clone(), balancer.clone(), tls.as_ref()).await;
    // The load balancer stops reading the state before the node closes it.
    following.abort();
    let _ = following.await;
    balancer.stop();
    engine.stop().await;
    node.shutdown().await;
    served?;
    info!("stopped");
    Ok(())
}

/// The host clients reach the load balancer at: `--lb-host`, or the
/// advertised host when that is an unspecified address (0.0.0.0, ::).
fn lb_client_host(config: &Config) -> String {
    match config.lb_host.parse::<std::net::IpAddr>() {
        Ok(ip) if ip.is_unspecified() => config.advertise.clone(),
        _ => config.lb_host.clone(),
    }
}

fn host_port(host: &str, port: u16) -> String {
    if host.contains(':') && !host.starts_with('[') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    }
}

/// Starts the engine with the providers this node offers; their files live
/// under the data dir (`work/` for run scratch directories, `local/` for
/// the local provider's images and machines). The local provider's machines
/// are recorded at `advertise` (this node's advertise host) and their ports.
fn start_engine(node: &ClusterNode, data_dir: &std::path::Path, advertise: &str) -> anyhow::Result<Engine> {
    // Steps run in other working directories: every path they get is absolute.
    let data_dir = std::path::absolute(data_dir).context("resolving the data dir")?;
    let lookup = Arc::new(StateLookup(node.reader().clone()));
    let providers = Providers::new([
        Arc::new(ExecProvider::new(Duration::from_secs(5))) as Arc<dyn Provider>,
        Arc::new(LocalProvider::new(data_dir.join("local"), lookup.clone(), advertise)),
        Arc::new(DockerProvider::new(
            lookup.clone(),
            node.cluster_id(),
            advertise,
            Some(node.clone()),
        )),
        Arc::new(Ec2Provider::new(lookup.clone(), node.cluster_id(), Some(node.clone()))),
        Arc::new(ServiceProvider::new(lookup, Arc::new(MemberListeners(node.clone())))),
    ]);
    Engine::start(node.clone(), providers, &data_dir).context("starting the engine")
}

/// Serves the client API until SIGTERM or SIGINT, or until the node can no
/// longer apply the log (an error: the process exits non-zero). A node whose
/// disk failed under Raft goes on serving what it can (reads; health says
/// NOT_SERVING, writes are refused with the reason) until the disk has room
/// again, then exits with [`EXIT_DISK`] for its supervisor to restart it.
async fn serve(
    listener: TcpListener,
    node: ClusterNode,
    engine: Engine,
    balancer: Balancer,
    tls: Option<&transport::Tls>,
) -> anyhow::Result<()> {
    let (health, health_service) = tonic_health::server::health_reporter();
    spawn_health(health, node.clone()).await;
    let reflection = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(opsd_proto::FILE_DESCRIPTOR_SET)
        .build_v1()
        .context("building the reflection service")?;
    let mut term = signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
    let mut int = signal(SignalKind::interrupt()).context("installing the SIGINT handler")?;
    let addr = listener.local_addr()?;
    info!(%addr, "serving the client API");
    // Streams (watches) never end by themselves, so they are told to stop
    // too; otherwise a graceful shutdown would wait for every watcher.
    let (stopping, stop) = tokio::sync::watch::channel(false);
    // Watches share one decoding of the applied events.
    let feed = crate::api::follow::Feed::start(&node);
    let failure = Arc::new(std::sync::Mutex::new(None));
    let failed = failure.clone();
    let watched = node.clone();
    // Every service, health and reflection included, learns its caller in
    // one layer before any handler runs.
    transport::tls_server(tls)
        .context("the client port's TLS configuration")?
        .layer(caller::layer(node.reader().clone()))
        .layer(tower::util::MapResponseLayer::new(
            crate::api::undecodable_is_invalid_argument,
        ))
        .add_service(health_service)
        .add_service(reflection)
        .add_service(ClusterServer::new(ClusterService::new(node.clone())))
        .add_service(SecurityServer::new(SecurityService::new(node.clone())))
        .add_service(SettingsServer::new(SettingsService::new(
            node.clone(),
            feed.clone(),
            stop.clone(),
        )))
        .add_service(ServicesServer::new(ServicesService::new(
            node.clone(),
            balancer,
            stop.clone(),
        )))
        .add_service(ResourcesServer::new(ResourcesService::new(node, engine, feed, stop)))
        .serve_with_incoming_shutdown(transport::incoming(listener), async move {
            let failure = tokio::select! {
                _ = term.recv() => { info!("SIGTERM: shutting down"); None }
                _ = int.recv() => { info!("SIGINT: shutting down"); None }
                why = watched.failed() => Some(why),
            };
            if let Some(failure) = failure {
                if failure.storage {
                    error!(
                        "{}: this node serves reads but no writes, and exits with code {EXIT_DISK} once its disk \
                         has room again, for its supervisor to restart it",
                        failure.reason
                    );
                    tokio::select! {
                        _ = term.recv() => info!("SIGTERM: shutting down"),
                        _ = int.recv() => info!("SIGINT: shutting down"),
                        _ = disk_room(&watched) => info!("the disk has room again: exiting with code {EXIT_DISK}"),
                    }
                }
                *failed.lock().unwrap_or_else(|p| p.into_inner()) = Some(failure);
            }
            let _ = stopping.send(true);
        })
        .await
        .context("client API server")?;
    if let Some(failure) = failure.lock().unwrap_or_else(|p| p.into_inner()).take() {
        if failure.storage {
            return Err(DiskError(format!("this node stopped: {}", failure.reason)).into());
        }
        bail!("this node stopped: {}", failure.reason);
    }
    Ok(())
}

/// Keeps gRPC health current: SERVING while the node takes writes,
/// NOT_SERVING while its disk is below the floor or Raft has stopped.
async fn spawn_health(health: HealthReporter, node: ClusterNode) {
    let mut problem = node.problem();
    let serving = |p: &Option<String>| match p {
        None => ServingStatus::Serving,
        Some(_) => ServingStatus::NotServing,
    };
    // Set before the server answers its first check.
    let now = serving(&problem.borrow_and_update());
    set_health(&health, now).await;
    tokio::spawn(async move {
        while problem.changed().await.is_ok() {
            let now = serving(&problem.borrow_and_update());
            set_health(&health, now).await;
        }
    });
}

/// Sets the health of the server ("") and of each of its services.
async fn set_health(health: &HealthReporter, status: ServingStatus) {
    health.set_service_status("", status).await;
    health
        .set_service_status(service_name::<ClusterServer<ClusterService>>(), status)
        .await;
    health
        .set_service_status(service_name::<SettingsServer<SettingsService>>(), status)
        .await;
    health
        .set_service_status(service_name::<ResourcesServer<ResourcesService>>(), status)
        .await;
    health
        .set_service_status(service_name::<ServicesServer<ServicesService>>(), status)
        .await;
    health
        .set_service_status(service_name::<SecurityServer<SecurityService>>(), status)
        .await;
}

fn service_name<S: tonic::server::NamedService>() -> &'static str {
    S::NAME
}

/// Returns once the data dir's filesystem has at least the floor free.
async fn disk_room(node: &ClusterNode) {
    while !node.disk_has_room() {
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

/// The credentials this node dials other nodes' client ports with: the
/// cluster CA and its own certificate when it has them (it is then a node
/// caller there), else none (plain HTTP/2, a cluster made before TLS).
pub fn dial_credentials(tls: Option<&transport::Tls>) -> Credentials {
    let credentials = Credentials::anonymous();
    match tls {
        Some(tls) => credentials
            .with_ca(tls.ca_pem.to_vec())
            .with_identity(tls.cert_pem.to_vec(), tls.key_pem.to_vec()),
        None => credentials,
    }
}

/// A client of a member's Cluster service (2 s to connect, 15 s per request).
async fn cluster_client(addr: &str, credentials: &Credentials) -> anyhow::Result<ClusterApi> {
    let parsed = NodeAddr::parse(addr).map_err(|e| anyhow!("--join {addr}: {e}"))?;
    let api = Api::connect(&parsed, Timeouts::default(), credentials.clone())
        .await
        .map_err(|e| anyhow!("{addr}: {}", connect_error(&e)))?;
    Ok(api.cluster)
}

/// Whether a plain connection's error says the other side speaks TLS.
fn speaks_tls(text: &str) -> bool {
    // The server drops the connection when the first bytes are not TLS:
    // the request in flight on it is then cancelled.
    opsd_client::tls_advice(text, false).is_some_and(|advice| advice.contains("speaks TLS"))
        || text.contains("operation was canceled")
}

/// A status with its whole cause chain, in words.
fn status_chain(status: &tonic::Status) -> String {
    let mut text = status.message().to_string();
    let mut source = std::error::Error::source(status);
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

/// A connection error in words, its TLS cause named if it has one.
fn connect_error(e: &tonic::transport::Error) -> String {
    let mut text = e.to_string();
    let mut source = std::error::Error::source(e);
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

/// Gets this node's certificate with the join token from a --join member,
/// trusting it by the CA fingerprint the token carries; checks that the
/// CA answered is that one.
async fn fetch_certificate(
    config: &Config,
    token: &pki::JoinToken,
    node_id: u64,
) -> anyhow::Result<JoinCertificateResponse> {
    let req = JoinCertificateRequest {
        join_token: token.to_string(),
        node_id,
    };
    with_seeds(config, "get this node's certificate", |addr| {
        let req = req.clone();
        async move {
            let endpoint = transport::pinned_endpoint(&addr, Duration::from_secs(2), &token.ca_fingerprint)
                .map_err(|e| SeedError::Fatal(anyhow!("--join {addr}: {e}")))?
                .timeout(Duration::from_secs(15));
            let channel = endpoint.connect().await.map_err(|e| {
                let text = connect_error(&e);
                if text.contains("not the one the join token names") {
                    SeedError::Fatal(anyhow!(
                        "--join {addr}: that node's CA is not the one the join token names (a token of another \
                         cluster?): {text}"
                    ))
                } else if text.to_ascii_lowercase().contains("certificaterequired") {
                    let advice = opsd_client::tls_advice(&text, true).unwrap_or_default();
                    SeedError::Fatal(anyhow!("--join {addr}: {advice} ({text})"))
                } else {
                    SeedError::Retry(anyhow!("{addr}: {text}"))
                }
            })?;
            let mut client = Api::from_channel(addr.clone(), channel, Credentials::anonymous()).cluster;
            let got = client
                .join_certificate(req)
                .await
                .map_err(|s| classify(&addr, s))?
                .into_inner();
            let fingerprint = pki::fingerprint_pem(got.ca_pem.as_bytes())
                .map_err(|e| SeedError::Fatal(anyhow!("--join {addr}: its CA certificate: {e}")))?;
            if fingerprint != token.ca_fingerprint {
                return Err(SeedError::Fatal(anyhow!(
                    "--join {addr}: answered a CA of fingerprint {fingerprint}, not the join token's {}",
                    token.ca_fingerprint
                )));
            }
            Ok(got)
        }
    })
    .await
}

/// Replicates the CA the bootstrap node keeps in its data dir (`ca.key`),
/// then deletes the key file. `true` once the state holds the CA (or there
/// is no kept key).
async fn replicate_kept_ca(node: &ClusterNode, dir: &std::path::Path) -> bool {
    let Some(ca) = pki::read_kept_ca(dir) else {
        return true;
    };
    let command = Command::SetClusterCa {
        cert_pem: ca.cert_pem,
        key_pem: ca.key_pem,
    };
    match crate::propose::replicate(node, &command).await {
        Ok((_, answer)) => match crate::domain::decode_outcome(&answer) {
            Ok(Outcome::ClusterCaSet) => {
                if let Err(e) = std::fs::remove_file(dir.join(pki::CA_KEY_FILE)) {
                    warn!("the cluster CA is replicated, but {} stays: {e}", pki::CA_KEY_FILE);
                }
                info!("replicated the cluster CA");
                true
            }
            Ok(other) => {
                error!("the cluster CA was not replicated: {other:?}");
                true
            }
            Err(e) => {
                warn!("replicating the cluster CA: {e}; will retry");
                false
            }
        },
        Err(e) => {
            warn!("replicating the cluster CA: {e}; will retry");
            false
        }
    }
}

/// Replicates a kept CA in the background until it is ([`replicate_kept_ca`]).
fn spawn_ca_replicator(node: ClusterNode, dir: std::path::PathBuf) {
    tokio::spawn(async move {
        while !replicate_kept_ca(&node, &dir).await {
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    });
}

/// Tries each --join address, with backoff, until `attempt` succeeds on one
/// or the join timeout passes. `attempt` returning `Err(Fatal)` stops at once.
async fn with_seeds<T, F, Fut>(config: &Config, what: &str, mut attempt: F) -> anyhow::Result<T>
where
    F: FnMut(String) -> Fut,
    Fut: std::future::Future<Output = Result<T, SeedError>>,
{
    let started = Instant::now();
    let mut delay = Duration::from_millis(200);
    let mut errors: Vec<String> = Vec::new();
    loop {
        for addr in &config.join {
            match attempt(addr.clone()).await {
                Ok(v) => return Ok(v),
                Err(SeedError::Fatal(e)) => return Err(e),
                Err(SeedError::Retry(e)) => {
                    warn!("{what} via {addr}: {e:#}; will retry");
                    errors.retain(|x| !x.starts_with(&format!("{addr}:")));
                    errors.push(format!("{addr}: {e:#}"));
                }
            }
        }
        let left = config.join_timeout.saturating_sub(started.elapsed());
        if left.is_zero() {
            bail!(
                "--join: could not {what} within {} ms; tried {}",
                config.join_timeout.as_millis(),
                errors.join("; ")
            );
        }
        // The last wait is cut short so that one more try lands at the deadline.
        tokio::time::sleep(delay.min(left)).await;
        delay = (delay * 2).min(Duration::from_secs(5));
    }
}

enum SeedError {
    Retry(anyhow::Error),
    Fatal(anyhow::Error),
}

fn classify(addr: &str, status: tonic::Status) -> SeedError {
    use tonic::Code::*;
    if std::error::Error::source(&status).is_some() {
        let chain = status_chain(&status);
        if chain.to_ascii_lowercase().contains("certificaterequired") {
            let advice = opsd_client::tls_advice(&chain, true).unwrap_or_default();
            return SeedError::Fatal(anyhow!("--join {addr}: {advice} ({chain})"));
        }
    }
    let e = anyhow!("{addr} answered: {}", opsd_client::describe_status(&status));
    match status.code() {
        Unavailable | DeadlineExceeded | Unknown | Internal | ResourceExhausted | Aborted => SeedError::Retry(e),
        _ => SeedError::Fatal(anyhow!("--join {e}")),
    }
}

/// Learns the cluster id from a member.
async fn seed_cluster_id(config: &Config, credentials: &Credentials) -> anyhow::Result<String> {
    with_seeds(config, "reach a member", |addr| async move {
        let mut client = cluster_client(&addr, credentials).await.map_err(|e| {
            let text = format!("{e:#}");
            if credentials.ca_pem().is_none() && speaks_tls(&text) {
                SeedError::Fatal(anyhow!(
                    "--join {addr}: that node speaks TLS: a new node needs --join-token (make one on a member with \
                     `opsctl cluster join-token`)"
                ))
            } else if credentials.ca_pem().is_some() && transport::tls_problem_in(&text).is_some() {
                SeedError::Fatal(anyhow!(
                    "--join {addr}: that node's certificate is not of this node's cluster CA, or it refused ours: it \
                     is a member of another cluster ({text})"
                ))
            } else {
                SeedError::Retry(e)
            }
        })?;
        let status = client
            .status(StatusRequest {})
            .await
            .map_err(|s| {
                if credentials.ca_pem().is_none() && speaks_tls(&status_chain(&s)) {
                    SeedError::Fatal(anyhow!(
                        "--join {addr}: that node speaks TLS: a new node needs --join-token (make one on a member \
                         with `opsctl cluster join-token`)"
                    ))
                } else {
                    classify(&addr, s)
                }
            })?
            .into_inner();
        if status.cluster_id.is_empty() {
            return Err(SeedError::Retry(anyhow!("{addr} has no cluster id yet")));
        }
        Ok(status.cluster_id)
    })
    .await
}

/// A node with state started with --join: refuse if the seeds belong to
/// another cluster. Seeds that do not answer are not waited for: the node has
/// its own state and can resume without them.
async fn check_seed_cluster(config: &Config, ours: &str, credentials: &Credentials) -> anyhow::Result<()> {
    for addr in &config.join {
        let mut client = match cluster_client(addr, credentials).await {
            Ok(client) => client,
            Err(e) => {
                let text = format!("{e:#}");
                if transport::tls_problem_in(&text).is_some_and(|p| p.contains("certificate")) {
                    bail!(
                        "--join {addr}: that node's certificate is not of this node's cluster CA (or it refused \
                         ours): it is a member of another cluster, but data dir {} belongs to cluster {ours}; start \
                         without --join to resume cluster {ours}, or use an empty data dir and a join token to join \
                         that cluster ({text})",
                        config.data_dir.display()
                    );
                }
                continue;
            }
        };
        let Ok(status) = client.status(StatusRequest {}).await else {
            continue;
        };
        let theirs = status.into_inner().cluster_id;
        if theirs != ours {
            bail!(
                "--join {addr}: that node is a member of cluster {theirs}, but data dir {} belongs to cluster {ours}; \
                 start without --join to resume cluster {ours}, or use an empty data dir to join cluster {theirs}",
                config.data_dir.display()
            );
        }
        return Ok(());
    }
    Ok(())
}

/// Asks a member to add this node, until one does.
async fn join(config: &Config, node: &ClusterNode, me: &NodeInfo, credentials: &Credentials) -> anyhow::Result<()> {
    let req = JoinRequest {
        node_id: node.node_id(),
        addr: me.addr.clone(),
        peer_addr: me.peer_addr.clone(),
        cluster_id: node.cluster_id().to_string(),
        join_token: config.join_token.as_ref().map(|t| t.to_string()).unwrap_or_default(),
    };
    let resp = with_seeds(config, "join the cluster", |addr| {
        let req = req.clone();
        async move {
            let mut client = cluster_client(&addr, credentials).await.map_err(SeedError::Retry)?;
            client.join(req).await.map_err(|s| classify(&addr, s))
        }
    })
    .await?
    .into_inner();
    info!(
        node_id = node.node_id(),
        cluster_id = resp.cluster_id,
        members = resp.members.len(),
        "joined as a learner; the leader promotes it to voter once caught up"
    );
    Ok(())
}
