//! The built-in L4 load balancer: a data-plane task on every node that reads
//! only the applied state (services and the machines of their active
//! clusters) and proxies each service's TCP port on the node's `--lb-host`
//! to the healthy machines, round robin. It never proposes, so it keeps
//! serving through a leader failover.
//!
//! - [`plane`]: listeners, round robin, health, draining, byte counts;
//! - [`follow`]: the routes the applied state calls for, followed as it changes;
//! - [`discovery`]: where a service is reached, asked of every member;
//! - [`api`]: the `opsd.v1.Services` gRPC service.

pub mod api;
pub mod discovery;
pub mod follow;
pub mod plane;

use std::time::Duration;

use serde_json::Value;

use crate::ops::Object;
use crate::verify::Check;

pub use discovery::listening_everywhere;
pub use plane::{Balancer, Route};

/// The kind of the resources the load balancer serves.
pub const SERVICE_KIND: &str = "service";

/// The kind of the clusters a service routes to.
pub const CLUSTER_KIND: &str = "cluster";

/// The default drain timeout: how long connections opened before a swap may
/// go on to the old cluster.
pub const DEFAULT_DRAIN: Duration = Duration::from_secs(30);

/// A service's spec, checked.
#[derive(Debug, Clone, PartialEq)]
pub struct ServiceSpec {
    /// The port every node's load balancer listens on.
    pub port: u16,
    /// The cluster named at creation (the first active one).
    pub cluster: String,
    /// How a load balancer checks a backend (default: a TCP connect every
    /// second, timeout 1 s).
    pub health: Check,
    /// How long connections to an old cluster may go on after a swap.
    pub drain: Duration,
}

/// Checks a service's spec, naming the field at fault.
pub fn service_spec(spec: &Object) -> Result<ServiceSpec, String> {
    let port = match spec.get("port") {
        None | Some(Value::Null) => return Err("spec.port: required: the TCP port the load balancers listen on".into()),
        Some(v) => v
            .as_u64()
            .filter(|p| (1..=65535).contains(p))
            .ok_or_else(|| format!("spec.port: must be a port, 1 to 65535, not {v}"))? as u16,
    };
    let cluster = match spec.get("cluster") {
        Some(Value::String(s)) if !s.is_empty() => s.clone(),
        None | Some(Value::Null) => return Err("spec.cluster: required: the name of the cluster that serves".into()),
        Some(v) => return Err(format!("spec.cluster: must be the name of a cluster, not {v}")),
    };
    let health = match spec.get("health") {
        None | Some(Value::Null) => Check {
            name: "health".into(),
            probe: crate::verify::Probe::Tcp,
            timeout: Duration::from_secs(1),
            retries: 0,
            interval: Duration::from_secs(1),
        },
        Some(v) => crate::verify::parse_check(v, "spec.health", 0)?,
    };
    let drain = match spec.get("drain") {
        None | Some(Value::Null) => DEFAULT_DRAIN,
        Some(v) => Duration::from_secs(
            v.as_u64()
                .filter(|s| *s <= 3600)
                .ok_or_else(|| format!("spec.drain: must be a number of seconds, 0 to 3600, not {v}"))?,
        ),
    };
    Ok(ServiceSpec {
        port,
        cluster,
        health,
        drain,
    })
}
