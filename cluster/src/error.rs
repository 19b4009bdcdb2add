//! The cluster's errors. They cross the wire (a follower forwards a request to
//! the leader and relays its answer), so they are plain data.

use serde::{Deserialize, Serialize};

use crate::types::{NodeId, NodeInfo};

/// Why a cluster operation failed. Each says what to do about it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error, Serialize, Deserialize)]
pub enum ClusterError {
    /// The data dir cannot be used.
    #[error("data dir {path}: {reason}")]
    DataDir {
        /// The data dir.
        path: String,
        /// What is wrong with it.
        reason: String,
    },
    /// This node is not the leader; used between nodes to redirect.
    #[error("node {node_id} is not the leader (leader: {leader:?})")]
    NotLeader {
        /// The node that answered.
        node_id: NodeId,
        /// The leader it knows of.
        leader: Option<(NodeId, NodeInfo)>,
    },
    /// No leader could be reached before the deadline.
    #[error("no leader could be reached within {waited_ms} ms: the cluster may be electing a leader or may have lost its quorum (last: {detail})")]
    NoLeader {
        /// How long it tried.
        waited_ms: u64,
        /// The last thing that went wrong.
        detail: String,
    },
    /// A write or read was not confirmed before the deadline; a write may still commit.
    #[error("{what} was not confirmed within {waited_ms} ms: the cluster may have lost its quorum; a write may still commit later")]
    Timeout {
        /// What timed out.
        what: String,
        /// How long it waited.
        waited_ms: u64,
    },
    /// The connection to the leader broke before its answer came; a write
    /// may or may not have committed.
    #[error("{what} failed before its answer arrived ({reason}); a write may still have committed")]
    Interrupted {
        /// What was interrupted.
        what: String,
        /// What failed.
        reason: String,
    },
    /// The node was removed from the cluster and serves nothing any more.
    #[error("node {node_id} was removed from the cluster; it no longer serves requests (wipe its data dir to join it again)")]
    Removed {
        /// The removed node.
        node_id: NodeId,
    },
    /// A node id that is not a member.
    #[error("node {node_id} is not a member of the cluster")]
    NotMember {
        /// The id asked about.
        node_id: NodeId,
    },
    /// A node of one cluster met a node of another.
    #[error("cluster mismatch: this is cluster {expected}, but the request came from a node of cluster {got}")]
    WrongCluster {
        /// This cluster's id.
        expected: String,
        /// The other cluster's id.
        got: String,
    },
    /// A membership change that cannot be made.
    #[error("membership change refused: {0}")]
    Membership(String),
    /// A peer could not be reached.
    #[error("cannot reach node {node_id} at {addr}: {reason}")]
    Unreachable {
        /// The peer.
        node_id: NodeId,
        /// Its peer address.
        addr: String,
        /// What failed.
        reason: String,
    },
    /// The node is shutting down.
    #[error("the node is shutting down")]
    ShuttingDown,
    /// Storage or another internal failure; the message says which.
    #[error("internal error: {0}")]
    Internal(String),
    /// This node takes no writes now: its data dir's disk is below the
    /// free-space floor, or a write to it failed and Raft stopped. Nothing
    /// was applied.
    #[error("{reason}")]
    Storage {
        /// What is wrong, naming the data dir.
        reason: String,
    },
}
