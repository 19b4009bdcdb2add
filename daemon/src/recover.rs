//! `opsd check` and `opsd recover --rejoin`: a stopped node's data dir
//! verified offline, and the way back for a node whose state is damaged or
//! lost: it comes back as a new member, never under its old id.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context};
use opsd_client::{CallError, NodeAddr, Nodes, Timeouts};
use opsd_cluster::check::check_data_dir;
use opsd_cluster::{DataDir, NodeId};
use opsd_proto::v1::{MembersRequest, RemoveRequest, StatusRequest};
use tracing::{info, warn};

use crate::config::{check_addrs, Config};
use crate::domain::TABLES;

/// `opsd check`: prints the report; `Ok(true)` if the data dir is clean.
pub fn check(data_dir: &Path) -> bool {
    let tables: Vec<String> = TABLES.iter().map(|t| t.to_string()).collect();
    let report = check_data_dir(data_dir, &tables);
    print!("{}", report.render());
    if report.is_clean() {
        println!("data dir {}: clean", data_dir.display());
    } else {
        println!(
            "data dir {}: damaged; see the lines marked DAMAGED (docs/cluster.md, \"When a node's disk fails\", says what to do)",
            data_dir.display()
        );
    }
    report.is_clean()
}

/// `opsd recover --rejoin ADDR...`: removes the node's old id from the
/// cluster at `rejoin` (if it is still a member), moves its state into
/// `DATA_DIR/damaged-TIME/`, gives it a new id, then starts it and joins
/// through `rejoin` like `--join`.
pub async fn recover(mut config: Config, rejoin: Vec<String>) -> anyhow::Result<()> {
    check_addrs("--rejoin", &rejoin)?;
    let addrs = rejoin
        .iter()
        .map(|a| NodeAddr::parse(a).map_err(|e| anyhow!("--rejoin {a}: {e}")))
        .collect::<anyhow::Result<Vec<_>>>()?;
    // A node that still has its certificate asks as a node of the cluster.
    let tls = crate::pki::load(&config.data_dir).unwrap_or(None);
    let nodes = Nodes::new(
        addrs,
        Timeouts::default(),
        crate::server::dial_credentials(tls.as_ref()),
    );

    let mut dir = DataDir::inspect(&config.data_dir).map_err(|e| {
        anyhow!("{e}; nothing to recover (to join a cluster with a new data dir, start opsd with --join)")
    })?;
    let old = dir.identity().clone();
    if let Some(ours) = &old.cluster_id {
        remove_old_id(&nodes, old.node_id, ours, &rejoin, config.join_timeout).await?;
    }
    let aside = aside_dir(dir.path());
    let new_id = dir.start_anew(&aside)?;
    let message = format!(
        "data dir {}: moved the state of node {} into {}; the node starts anew as node {new_id} and joins through {}",
        config.data_dir.display(),
        old.node_id,
        aside.display(),
        rejoin.join(", ")
    );
    eprintln!("opsd: {message}");
    info!("{message}");
    drop(dir);

    // Any --join given too are further members to join through.
    let mut join = rejoin;
    for addr in std::mem::take(&mut config.join) {
        if !join.contains(&addr) {
            join.push(addr);
        }
    }
    config.join = join;
    crate::server::run(config).await
}

/// Removes `old` from the cluster the `nodes` belong to, if it is still a
/// member; refuses if they belong to another cluster than `ours`. A cluster
/// that has just lost this node may be electing a leader: a removal that
/// fails is tried again (after checking the membership, so a removal that
/// applied without its answer arriving counts) until `patience` has passed.
async fn remove_old_id(
    nodes: &Nodes,
    old: NodeId,
    ours: &str,
    rejoin: &[String],
    patience: Duration,
) -> anyhow::Result<()> {
    let unreachable = |e: CallError| anyhow!("--rejoin {}: {e}", rejoin.join(","));
    let status = nodes
        .call(|mut api| async move { api.cluster.status(StatusRequest {}).await })
        .await
        .map_err(unreachable)?;
    if status.cluster_id != ours {
        bail!(
            "--rejoin {}: that node is a member of cluster {}, but this data dir belonged to cluster {ours}; give a member \
             of cluster {ours}",
            rejoin.join(","),
            status.cluster_id
        );
    }
    let deadline = Instant::now() + patience;
    loop {
        let members = nodes
            .call(|mut api| async move { api.cluster.members(MembersRequest {}).await })
            .await
            .map_err(unreachable)?
            .members;
        if !members.iter().any(|m| m.id == old) {
            let message = format!("the old node id {old} is not a member of cluster {ours}");
            eprintln!("opsd: {message}");
            info!("{message}");
            return Ok(());
        }
        let removed = nodes
            .write_with(&RemoveRequest { node_id: old }, |mut api, r| async move {
                api.cluster.remove(r).await
            })
            .await;
        match removed {
            Ok(_) => {
                let message = format!("removed the old node id {old} from cluster {ours}");
                eprintln!("opsd: {message}");
                info!("{message}");
                return Ok(());
            }
            Err(e) if Instant::now() < deadline => {
                warn!("cannot remove node {old} from cluster {ours} yet (trying again): {e}");
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
            Err(e) => {
                return Err(anyhow!("cannot remove node {old} from cluster {ours}: {e}"))
                    .context("the old id must leave the cluster before the node comes back under a new one")
            }
        }
    }
}

/// `DATA_DIR/damaged-YYYYMMDDTHHMMSSZ`, with a suffix if that exists.
fn aside_dir(data_dir: &Path) -> PathBuf {
    let stamp: String = humantime::format_rfc3339_seconds(std::time::SystemTime::now())
        .to_string()
        .chars()
        .filter(|c| !matches!(c, '-' | ':'))
        .collect();
    let mut path = data_dir.join(format!("damaged-{stamp}"));
    let mut n = 1;
    while path.exists() {
        n += 1;
        path = data_dir.join(format!("damaged-{stamp}-{n}"));
    }
    path
}
