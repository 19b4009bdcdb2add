//! The gRPC client API: validates requests, maps them to cluster operations
//! and domain commands, and maps every failure onto a gRPC code whose message
//! names the field or object at fault.

pub mod caller;
pub mod cluster;
pub mod follow;
pub mod resources;
pub mod security;
pub mod settings;

use opsd_cluster::{ClusterError, ClusterNode};
use tonic::Status;

use crate::domain::{decode_outcome, Command, Outcome, Rejection};

/// The gRPC status for a cluster error:
///
/// - `UNAVAILABLE`: the request was not applied and may be retried, here
///   later or on another node (no leader, this node's disk is full, ...);
/// - `DEADLINE_EXCEEDED`: the server's own timeout passed; a write may still
///   commit;
/// - `UNKNOWN`: the connection to the leader broke or Raft stopped after the
///   write was handed on; it may have committed;
/// - `FAILED_PRECONDITION`, `NOT_FOUND`: retrying will not help;
/// - `INTERNAL`: a fault of this node.
pub fn cluster_status(e: ClusterError) -> Status {
    let msg = e.to_string();
    match e {
        ClusterError::NotMember { .. } => Status::not_found(msg),
        ClusterError::Removed { .. } | ClusterError::WrongCluster { .. } | ClusterError::Membership(_) => {
            Status::failed_precondition(msg)
        }
        ClusterError::Timeout { .. } => Status::deadline_exceeded(msg),
        ClusterError::Interrupted { .. } => Status::unknown(msg),
        ClusterError::NotLeader { .. }
        | ClusterError::NoLeader { .. }
        | ClusterError::Unreachable { .. }
        | ClusterError::ShuttingDown
        | ClusterError::Storage { .. } => Status::unavailable(msg),
        ClusterError::DataDir { .. } | ClusterError::Internal(_) => Status::internal(msg),
    }
}

/// The gRPC status for a cluster error met by a read: as
/// [`cluster_status`], except that a read changes nothing, so its messages
/// say nothing of writes, and a read cut off on its way to the leader is
/// `UNAVAILABLE` (safe to ask again, on any node).
pub fn cluster_read_status(e: ClusterError) -> Status {
    match e {
        ClusterError::Timeout { what, waited_ms } => Status::deadline_exceeded(format!(
            "{what} was not confirmed within {waited_ms} ms: the cluster may have lost its quorum (a stale read \
             is served without one)"
        )),
        ClusterError::Interrupted { what, reason } => Status::unavailable(format!(
            "{what} failed before its answer arrived ({reason}); the read changed nothing and may be retried"
        )),
        e => cluster_status(e),
    }
}

/// Answers a request the server could not decode (tonic calls that
/// `INTERNAL`) with `INVALID_ARGUMENT`: the fault is the request's.
pub fn undecodable_is_invalid_argument(
    mut response: tonic::codegen::http::Response<tonic::body::Body>,
) -> tonic::codegen::http::Response<tonic::body::Body> {
    if let Some(status) = Status::from_header_map(response.headers()) {
        if status.code() == tonic::Code::Internal && status.message().starts_with(UNDECODABLE) {
            let fixed = Status::invalid_argument(format!(
                "the request message could not be decoded: {}",
                status.message()
            ));
            // Only fails for a message that cannot be a header, which this
            // one (tonic's, with a prefix) can.
            let _ = fixed.add_header(response.headers_mut());
        }
    }
    response
}

/// How tonic's Protobuf codec starts the message of a request it cannot decode.
const UNDECODABLE: &str = "failed to decode Protobuf message";

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
        node.read_barrier().await.map_err(cluster_read_status)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use opsd_cluster::NodeInfo;
    use tonic::Code;

    use super::*;

    fn timeout() -> ClusterError {
        ClusterError::Timeout {
            what: "confirming leadership for a linearizable read".into(),
            waited_ms: 5000,
        }
    }

    fn interrupted() -> ClusterError {
        ClusterError::Interrupted {
            what: "the request forwarded to leader 2".into(),
            reason: "connection reset".into(),
        }
    }

    #[test]
    fn every_cluster_error_has_the_code_its_meaning_calls_for() {
        let info = NodeInfo {
            addr: "a:1".into(),
            peer_addr: "a:2".into(),
        };
        let cases = [
            // Not applied, for a reason the message gives: retry.
            (
                ClusterError::Storage {
                    reason: "disk full at /d: 3 MB free, below the floor of 64 MB (--min-free-mb)".into(),
                },
                Code::Unavailable,
            ),
            (
                ClusterError::NoLeader {
                    waited_ms: 5000,
                    detail: "no leader is known to this node".into(),
                },
                Code::Unavailable,
            ),
            (
                ClusterError::NotLeader {
                    node_id: 1,
                    leader: Some((2, info)),
                },
                Code::Unavailable,
            ),
            (
                ClusterError::Unreachable {
                    node_id: 2,
                    addr: "a:2".into(),
                    reason: "refused".into(),
                },
                Code::Unavailable,
            ),
            (ClusterError::ShuttingDown, Code::Unavailable),
            // Only the server's own timeout is DEADLINE_EXCEEDED.
            (timeout(), Code::DeadlineExceeded),
            // Handed on, then cut off: the outcome is unknown.
            (interrupted(), Code::Unknown),
            (ClusterError::Removed { node_id: 1 }, Code::FailedPrecondition),
            (
                ClusterError::WrongCluster {
                    expected: "a".into(),
                    got: "b".into(),
                },
                Code::FailedPrecondition,
            ),
            (ClusterError::Membership("last voter".into()), Code::FailedPrecondition),
            (ClusterError::NotMember { node_id: 9 }, Code::NotFound),
            (ClusterError::Internal("x".into()), Code::Internal),
            (
                ClusterError::DataDir {
                    path: "/d".into(),
                    reason: "x".into(),
                },
                Code::Internal,
            ),
        ];
        for (error, code) in cases {
            let text = error.to_string();
            let status = cluster_status(error);
            assert_eq!(status.code(), code, "{text}");
            assert_eq!(status.message(), text);
        }
    }

    #[test]
    fn a_read_never_speaks_of_writes() {
        let timed_out = cluster_read_status(timeout());
        assert_eq!(timed_out.code(), Code::DeadlineExceeded);
        let cut_off = cluster_read_status(interrupted());
        // Safe to ask again, on any node.
        assert_eq!(cut_off.code(), Code::Unavailable);
        for status in [timed_out, cut_off] {
            assert!(!status.message().contains("write"), "{}", status.message());
            assert!(!status.message().contains("commit"), "{}", status.message());
        }
        let full = cluster_read_status(ClusterError::Storage {
            reason: "disk full".into(),
        });
        assert_eq!(full.code(), Code::Unavailable);
    }

    #[test]
    fn an_undecodable_request_is_invalid_argument() {
        let response = |status: Status| {
            let mut r = tonic::codegen::http::Response::new(tonic::body::Body::empty());
            status.add_header(r.headers_mut()).unwrap();
            undecodable_is_invalid_argument(r)
        };
        let fixed = response(Status::internal("failed to decode Protobuf message: invalid wire type"));
        let status = Status::from_header_map(fixed.headers()).unwrap();
        assert_eq!(status.code(), Code::InvalidArgument);
        assert!(status.message().contains("invalid wire type"), "{}", status.message());
        // Any other INTERNAL is the server's own fault, and stays so.
        let kept = response(Status::internal("reading the state: io"));
        assert_eq!(Status::from_header_map(kept.headers()).unwrap().code(), Code::Internal);
    }
}
