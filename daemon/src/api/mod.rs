//! The gRPC client API: validates requests, maps them to cluster operations
//! and domain commands, and maps every failure onto a gRPC code whose message
//! names the field or object at fault.

pub mod caller;
pub mod cluster;
pub mod follow;
pub mod resources;
pub mod settings;

use opsd_cluster::{ClusterError, ClusterNode};
use tonic::Status;

use crate::domain::{decode_outcome, Command, Outcome, Rejection};

/// The gRPC status for a cluster error.
pub fn cluster_status(e: ClusterError) -> Status {
    let msg = e.to_string();
    match e {
        ClusterError::NotMember { .. } => Status::not_found(msg),
        ClusterError::Removed { .. } | ClusterError::WrongCluster { .. } | ClusterError::Membership(_) => {
            Status::failed_precondition(msg)
        }
        ClusterError::Timeout { .. } | ClusterError::Interrupted { .. } => Status::deadline_exceeded(msg),
        ClusterError::NotLeader { .. }
        | ClusterError::NoLeader { .. }
        | ClusterError::Unreachable { .. }
        | ClusterError::ShuttingDown => Status::unavailable(msg),
        ClusterError::DataDir { .. } | ClusterError::Internal(_) => Status::internal(msg),
    }
}

/// The gRPC status for a command apply rejected.
pub fn rejection_status(r: Rejection) -> Status {
    match r {
        Rejection::NotFound(m) => Status::not_found(m),
        Rejection::FailedPrecondition(m) => Status::failed_precondition(m),
        Rejection::InvalidArgument(m) => Status::invalid_argument(m),
        Rejection::AlreadyExists(m) => Status::already_exists(m),
    }
}

/// The gRPC status for a failure reading the local state.
pub fn read_status(e: opsd_cluster::TxnError) -> Status {
    Status::internal(format!("reading the state: {e}"))
}

/// Proposes a command and returns its log index and outcome; a rejection
/// becomes the matching gRPC error.
pub async fn propose(node: &ClusterNode, cmd: Command) -> Result<(u64, Outcome), Status> {
    let (index, answer) = crate::propose::replicate(node, &cmd).await.map_err(cluster_status)?;
    match decode_outcome(&answer).map_err(Status::internal)? {
        Outcome::Rejected(r) => Err(rejection_status(r)),
        outcome => Ok((index, outcome)),
    }
}

/// A removed node serves nothing, not even stale reads: its state stopped
/// at its removal and would silently age.
pub fn refuse_if_removed(node: &ClusterNode) -> Result<(), Status> {
    if node.is_removed() {
        return Err(cluster_status(ClusterError::Removed {
            node_id: node.node_id(),
        }));
    }
    Ok(())
}

/// Waits until a read may be served locally: at once for a stale read,
/// after the leader's read index otherwise.
pub async fn barrier(node: &ClusterNode, stale: bool) -> Result<(), Status> {
    refuse_if_removed(node)?;
    if !stale {
        node.read_barrier().await.map_err(cluster_status)?;
    }
    Ok(())
}
