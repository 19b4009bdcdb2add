//! opsd's gRPC API, generated from the `.proto` files of this crate. The
//! `.proto` files are the documented contract; this crate is only their Rust
//! rendering, shared by the daemon, `opsctl` and the end-to-end tests.

#![allow(clippy::all, missing_docs)]

/// The client API (cluster status and membership, settings, resources).
pub mod v1 {
    tonic::include_proto!("opsd.v1");
}

/// The internal node-to-node protocol.
pub mod peer {
    tonic::include_proto!("opsd.peer.v1");
}

/// The encoded descriptor set of the client API, for gRPC server reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("opsd_descriptor");
