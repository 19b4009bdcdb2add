//! The gRPC client API: validates requests, maps them to cluster operations
//! and domain commands, and maps every failure onto a gRPC code whose message
//! names the field or object at fault.

pub mod cluster;
pub mod settings;

use opsd_cluster::ClusterError;
use tonic::Status;

use crate::domain::Rejection;

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
    }
}

/// The gRPC status for a failure reading the local state.
pub fn read_status(e: opsd_cluster::TxnError) -> Status {
    Status::internal(format!("reading the state: {e}"))
}
