//! `opsctl status` and `opsctl cluster ...`: the Raft cluster and its membership.

use anyhow::Result;
use clap::Subcommand;
use opsd_client::Nodes;
use opsd_proto::v1::{MembersRequest, RemoveRequest, StatusRequest};

use crate::render::Printer;

/// Commands that show or change the cluster's membership.
#[derive(Debug, Subcommand)]
pub enum ClusterCommand {
    /// List the cluster's members: id, client address, peer address, voter or learner.
    ///
    /// Shows the membership the answering node has applied (the first address
    /// in --addr that answers); ask the leader for the very latest.
    Members,
    /// Remove a node (voter or learner) from the cluster, then list the members left.
    ///
    /// Any member accepts the request and forwards it to the leader. The
    /// removed node is told so and refuses further requests; the last voter
    /// cannot be removed.
    Remove {
        /// The id of the node to remove, as `opsctl cluster members` shows it.
        #[arg(value_name = "NODE_ID")]
        node_id: u64,
    },
}

/// `opsctl status`: the answering node's own view of the cluster.
pub async fn status(nodes: &Nodes, printer: Printer) -> Result<()> {
    let status = nodes
        .call(|mut api| async move { api.cluster.status(StatusRequest {}).await })
        .await?;
    printer.status(&status)?;
    Ok(())
}

/// Runs one `opsctl cluster ...` command.
pub async fn run(command: ClusterCommand, nodes: &Nodes, printer: Printer) -> Result<()> {
    let members = match command {
        ClusterCommand::Members => {
            nodes
                .call(|mut api| async move { api.cluster.members(MembersRequest {}).await })
                .await?
                .members
        }
        ClusterCommand::Remove { node_id } => {
            nodes
                .write_with(&RemoveRequest { node_id }, |mut api, r| async move {
                    api.cluster.remove(r).await
                })
                .await?
                .members
        }
    };
    printer.members(&members)?;
    Ok(())
}
