//! opsd, the operations daemon: the product built on the `opsd-cluster`
//! consensus crate. `domain` holds the replicated state and its apply
//! function, `propose` sends its commands through the cluster, `api` the
//! gRPC services, `config` and `server` the `opsd` binary's start-up, `recover` its
//! `check` and `recover` commands.

pub mod api;
pub mod config;
pub mod domain;
pub mod engine;
#[cfg(test)]
mod fuzz;
pub mod lb;
pub mod ops;
pub mod pki;
pub mod propose;
pub mod recover;
pub mod run_logs;
pub mod security;
pub mod server;
pub mod verify;
