//! Proposing domain commands through the cluster: the network side of the
//! domain, kept out of it so that the domain stays pure (no I/O).

use opsd_cluster::{ClusterError, ClusterNode};
use tracing::{info, warn};

use crate::domain::{decode_outcome, resources, Command, Outcome};

/// Replicates `command` through `node`; returns its log index and the
/// encoded apply answer. Commands that may share a log entry
/// ([`Command::may_share_entry`]) go through the shared write path.
pub async fn replicate(node: &ClusterNode, command: &Command) -> Result<(u64, Vec<u8>), ClusterError> {
    if command.may_share_entry() {
        node.write_shared(command.encode()).await
    } else {
        node.write(command.encode()).await
    }
}

/// Installs this build's built-in kinds into the replicated kinds where the
/// stored ones are missing or of an older revision, so apply everywhere
/// uses the same definitions. Returns how many were installed. Apply
/// decides: a proposal made from a stale view is refused, not applied twice.
pub async fn install_builtin_kinds(node: &ClusterNode) -> Result<usize, ClusterError> {
    let updates = {
        let view = node.reader().view();
        resources::builtin_kind_updates(&view).map_err(|e| ClusterError::Internal(e.to_string()))?
    };
    let mut installed = 0;
    for command in updates {
        let (_, answer) = replicate(node, &command).await?;
        match decode_outcome(&answer).map_err(ClusterError::Internal)? {
            Outcome::KindPut { name, version } => {
                info!(kind = %name, version, revision = resources::BUILTIN_REVISION, "installed built-in kind");
                installed += 1;
            }
            other => info!("built-in kind not installed: {other:?}"),
        }
    }
    Ok(installed)
}

/// Whenever this node becomes the leader, installs its built-in kinds
/// ([`install_builtin_kinds`]), retrying while it leads and fails.
pub fn spawn_builtin_kind_installer(node: ClusterNode) {
    let mut leadership = node.leadership();
    tokio::spawn(async move {
        loop {
            let leading = leadership.borrow_and_update().is_some();
            if leading {
                match install_builtin_kinds(&node).await {
                    Ok(_) => {}
                    Err(e) => {
                        warn!("installing the built-in kinds: {e}; retrying");
                        tokio::time::sleep(std::time::Duration::from_secs(1)).await;
                        continue;
                    }
                }
            }
            if leadership.changed().await.is_err() {
                return;
            }
        }
    });
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::Duration;

    use opsd_cluster::testing::start_single_node;

    use super::*;
    use crate::domain::{Domain, OLDER_THAN_CLUSTER, TABLES};

    async fn single_node(dir: &std::path::Path) -> ClusterNode {
        let tables = TABLES.iter().map(|t| t.to_string()).collect();
        start_single_node(dir, tables, Arc::new(Domain)).await.unwrap()
    }

    #[tokio::test]
    async fn built_in_kinds_are_installed_once() {
        let dir = tempfile::tempdir().unwrap();
        let node = single_node(dir.path()).await;
        assert_eq!(
            install_builtin_kinds(&node).await.unwrap(),
            crate::domain::kind::BUILTIN.len()
        );
        assert_eq!(install_builtin_kinds(&node).await.unwrap(), 0);
        let view = node.reader().view();
        let (_, record) = resources::read_kind(&view, "image").unwrap().unwrap();
        assert!(record.unwrap().builtin);
        drop(view);
        node.shutdown().await;
    }

    #[tokio::test]
    async fn a_command_this_build_cannot_read_stops_the_node_saying_to_upgrade_it() {
        let dir = tempfile::tempdir().unwrap();
        let node = single_node(dir.path()).await;
        let put = Command::PutSetting {
            key: "a".into(),
            value: "1".into(),
            expected_revision: None,
            trigger: crate::domain::Trigger::unrecorded(),
        };
        replicate(&node, &put).await.unwrap();
        // A command of a format a newer build writes.
        let _ = node.write(vec![9, 0, 1, 2, 3]).await;
        let why = tokio::time::timeout(Duration::from_secs(5), node.failed())
            .await
            .expect("the node stops");
        assert!(why.reason.contains(OLDER_THAN_CLUSTER), "{why:?}");
        assert!(!why.storage, "{why:?}");
        assert!(replicate(&node, &put).await.is_err());
        node.shutdown().await;
    }
}
