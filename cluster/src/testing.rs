//! Test scaffolding for the crates built on this one: a node that is a
//! cluster of its own, so that what runs on a node can be tested on real
//! storage and real Raft without a harness of processes.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use crate::{new_cluster_id, ClusterConfig, ClusterError, ClusterNode, DataDir, NodeInfo, StateMachineApp};

/// Starts a node in `dir` with `tables`, applying through `app`, on a
/// loopback port with short timers, and initializes it as a one-node
/// cluster (it leads at once).
pub async fn start_single_node(
    dir: &Path,
    tables: Vec<String>,
    app: Arc<dyn StateMachineApp>,
) -> Result<ClusterNode, ClusterError> {
    let node = start_node(dir, tables, app, 0).await?;
    node.initialize().await?;
    Ok(node)
}

/// Starts a node as [`start_single_node`] does, with a free-space floor of
/// `min_free_bytes`, but does not initialize it: it knows no leader until
/// [`ClusterNode::initialize`] is called.
pub async fn start_node(
    dir: &Path,
    tables: Vec<String>,
    app: Arc<dyn StateMachineApp>,
    min_free_bytes: u64,
) -> Result<ClusterNode, ClusterError> {
    let mut data_dir = DataDir::open(dir)?;
    data_dir.set_cluster_id(&new_cluster_id())?;
    let bound = tokio::net::TcpListener::bind("127.0.0.1:0").await;
    let listener = bound.map_err(|e| ClusterError::Internal(format!("binding a loopback port: {e}")))?;
    let peer = listener
        .local_addr()
        .map_err(|e| ClusterError::Internal(format!("the loopback port's address: {e}")))?
        .to_string();
    let config = ClusterConfig {
        advertise: NodeInfo {
            addr: peer.clone(),
            peer_addr: peer,
        },
        heartbeat: Duration::from_millis(50),
        election_timeout: Duration::from_millis(150),
        snapshot_threshold: 1000,
        max_voters: 3,
        request_timeout: Duration::from_secs(5),
        tables,
        min_free_bytes,
        tls: None,
    };
    ClusterNode::start(config, data_dir, listener, app).await
}
