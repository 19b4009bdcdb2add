//! The one table of types openraft is generic over, and the few aliases the
//! rest of the crate uses.

use std::fmt;
use std::io::Cursor;

use serde::{Deserialize, Serialize};

/// A node's id: random, generated once when its data dir is created, and at
/// most 2^53 so that it survives JSON (and JavaScript) unchanged.
pub type NodeId = u64;

/// How the members of a cluster reach a node. Stored in the replicated
/// membership, so every node knows every other's addresses.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct NodeInfo {
    /// The client (gRPC API) address, HOST:PORT.
    pub addr: String,
    /// The Raft peer address, HOST:PORT.
    pub peer_addr: String,
}

impl fmt::Display for NodeInfo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} (peer {})", self.addr, self.peer_addr)
    }
}

/// The commands of one log entry, applied in order. Each is opaque here: the
/// application encodes it and decodes it again in its apply function. Most
/// entries carry one; writes that may share an entry are batched on the
/// leader, so that one fsync and one replication round carry many.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Command(pub Vec<Vec<u8>>);

impl fmt::Debug for Command {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let bytes: usize = self.0.iter().map(Vec::len).sum();
        write!(f, "Command({} commands, {bytes} bytes)", self.0.len())
    }
}

impl fmt::Display for Command {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self, f)
    }
}

/// What the application's apply function answered for each command of an
/// entry, in order; opaque here.
#[derive(Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CommandResponse(pub Vec<Vec<u8>>);

impl fmt::Debug for CommandResponse {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "CommandResponse({} answers)", self.0.len())
    }
}

openraft::declare_raft_types!(
    /// opsd's Raft type configuration.
    pub TypeConfig:
        D = Command,
        R = CommandResponse,
        NodeId = NodeId,
        Node = NodeInfo,
        SnapshotData = Cursor<Vec<u8>>,
);

/// The Raft instance of a node.
pub type Raft = openraft::Raft<TypeConfig>;
/// A log entry.
pub type Entry = openraft::Entry<TypeConfig>;
/// A log id (term, leader, index).
pub type LogId = openraft::LogId<NodeId>;
/// Storage errors as openraft wants them.
pub type StorageError = openraft::StorageError<NodeId>;
/// A membership as stored with the state.
pub type StoredMembership = openraft::StoredMembership<NodeId, NodeInfo>;
/// Snapshot metadata.
pub type SnapshotMeta = openraft::SnapshotMeta<NodeId, NodeInfo>;
