//! The load balancer's view of the applied state: the routes every service
//! resource calls for, re-read whenever a service or a cluster changes on
//! this node (and after a gap in the applied events). It reads only what
//! this node applied and never proposes anything.

use opsd_cluster::{AppliedEvent, ClusterNode, ReadView};
use tokio::sync::broadcast::error::RecvError;
use tokio::task::JoinHandle;
use tracing::warn;

use super::plane::{Balancer, Route};
use super::{service_spec, CLUSTER_KIND, SERVICE_KIND};
use crate::domain::resources::{self, ResourceRecord};
use crate::domain::DomainEvent;
use crate::ops::machines_of;

/// The states in which a service is not served.
pub const UNSERVED_STATES: [&str; 2] = ["destroying", "destroyed"];

/// The routes of every service in `view`: each service not destroying or
/// destroyed, routed to the machines of the cluster its `outputs.active`
/// names (none while that is unset or the cluster is gone). A service whose
/// spec is not valid is skipped with a log line.
pub fn routes(view: &ReadView<'_>) -> Result<Vec<Route>, String> {
    let services = resources::list_resources(view, SERVICE_KIND).map_err(|e| e.to_string())?;
    let mut routes = Vec::new();
    for service in services {
        if service.kind != SERVICE_KIND || UNSERVED_STATES.contains(&service.state.as_str()) {
            continue;
        }
        match route_of(view, &service) {
            Ok(route) => routes.push(route),
            Err(e) => warn!(service = %service.name, "load balancer: not serving: {e}"),
        }
    }
    Ok(routes)
}

/// One service's route.
fn route_of(view: &ReadView<'_>, service: &ResourceRecord) -> Result<Route, String> {
    let spec = resources::parse_object("spec", &service.spec_json)?;
    let spec = service_spec(&spec)?;
    let outputs = resources::parse_object("outputs", &service.outputs_json)?;
    let active = active_of(&outputs);
    let backends = match &active {
        None => Vec::new(),
        Some(cluster) => match resources::read_resource(view, CLUSTER_KIND, cluster).map_err(|e| e.to_string())? {
            None => Vec::new(),
            Some(c) => machines_of(&resources::parse_object("outputs", &c.outputs_json)?),
        },
    };
    Ok(Route {
        name: service.name.clone(),
        port: spec.port,
        health: spec.health,
        drain: spec.drain,
        active,
        backends,
    })
}

/// A service's `outputs.active`, if set to a name.
pub fn active_of(outputs: &crate::ops::Object) -> Option<String> {
    outputs
        .get("active")
        .and_then(|v| v.as_str())
        .filter(|s| !s.is_empty())
        .map(str::to_string)
}

/// True if an applied event may change the routes.
fn concerns_routes(event: &DomainEvent) -> bool {
    match event {
        DomainEvent::Resource(r) | DomainEvent::ResourceDeleted(r) => r.kind == SERVICE_KIND || r.kind == CLUSTER_KIND,
        _ => false,
    }
}

/// Starts following the node's applied state, applying the routes to
/// `balancer` now and after every change that concerns them. The task ends
/// (stopping the balancer) when the node stops publishing events.
pub fn start(node: &ClusterNode, balancer: Balancer) -> JoinHandle<()> {
    // Subscribe before the first read, so nothing applied in between is missed.
    let mut events = node.subscribe();
    let reader = node.reader().clone();
    tokio::spawn(async move {
        let refresh = || {
            let view = reader.view();
            match routes(&view) {
                Ok(routes) => balancer.apply(routes),
                Err(e) => warn!("load balancer: cannot read the services: {e}"),
            }
        };
        refresh();
        loop {
            match events.recv().await {
                Ok(AppliedEvent::Applied { event, .. }) => {
                    if DomainEvent::decode(&event).is_ok_and(|e| concerns_routes(&e)) {
                        refresh();
                    }
                }
                Ok(AppliedEvent::SnapshotInstalled { .. }) | Err(RecvError::Lagged(_)) => refresh(),
                Err(RecvError::Closed) => break,
            }
        }
        balancer.stop();
    })
}
