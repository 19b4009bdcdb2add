//! Consensus and storage for opsd, and nothing about resources.
//!
//! A node keeps a Raft log and a replicated state in one rocksdb database,
//! talks to its peers over gRPC, and applies committed commands by calling
//! the application's [`StateMachineApp`] with a transaction over named tables.
//! The application sees commands as bytes it encoded itself.
//!
//! Read it by concern: [`types`] (the one type table), [`data_dir`] (identity
//! and lock), `log_store` and [`state_machine`] (storage), `network` and
//! `peer_service` (transport), [`node`] (membership, forwarding, reads),
//! [`log_mark`] and [`check`] (damaged state: what is refused, `opsd check`).

// openraft's storage traits return its StorageError, which is large; every
// function here that feeds them returns it too.
#![allow(clippy::result_large_err)]

pub mod check;
pub mod data_dir;
pub mod disk;
pub mod error;
#[cfg(test)]
mod fuzz_peer;
pub mod log_mark;
mod log_store;
mod network;
pub mod node;
mod peer_port;
mod peer_service;
pub mod state_machine;
mod storage;
#[cfg(test)]
mod store_tests;
#[cfg(any(test, feature = "testing"))]
pub mod testing;
pub mod types;
mod wire;

pub use data_dir::{DataDir, NodeIdentity, FORMAT_VERSION};
pub use error::ClusterError;
pub use node::{
    new_cluster_id, ClusterConfig, ClusterNode, ClusterStatus, Contact, Failure, Member, MemberHealth, MembersView,
    Role,
};
pub use state_machine::{
    AppliedEvent, EntryInfo, LocalState, ReadView, Rows, StateMachineApp, StateReader, Txn, TxnError,
};
pub use types::{NodeId, NodeInfo};
