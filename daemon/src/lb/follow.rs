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
use crate::ops::{machines_of, MachineAddr};

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
    let backends = backends_of(view, active.as_deref())?;
    Ok(Route {
        name: service.name.clone(),
        port: spec.port,
        health: spec.health,
        drain: spec.drain,
        active,
        backends,
    })
}

/// The machines of the active cluster `active`: none while no cluster is
/// active or the cluster is gone.
pub fn backends_of(view: &ReadView<'_>, active: Option<&str>) -> Result<Vec<MachineAddr>, String> {
    let Some(cluster) = active else {
        return Ok(Vec::new());
    };
    match resources::read_resource(view, CLUSTER_KIND, cluster).map_err(|e| e.to_string())? {
        None => Ok(Vec::new()),
        Some(c) => Ok(machines_of(&resources::parse_object("outputs", &c.outputs_json)?)),
    }
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

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::domain::resources::{builtin_kind_updates, RunEnd};
    use crate::domain::testing::TestState;
    use crate::domain::{Command, Outcome, Trigger};

    fn trigger() -> Trigger {
        Trigger {
            principal: "p".into(),
            reason: String::new(),
            source: "api".into(),
            at_ms: 1,
        }
    }

    fn with_builtin_kinds() -> TestState {
        let mut s = TestState::new();
        let updates = builtin_kind_updates(&s.state.view()).unwrap();
        for cmd in updates {
            s.apply(cmd);
        }
        s
    }

    /// Creates a resource and finishes its first run with `outputs`.
    fn create(s: &mut TestState, kind: &str, name: &str, spec: &str, outputs: &str) {
        let (out, _) = s.apply(Command::CreateResource {
            kind: kind.into(),
            name: name.into(),
            spec_json: spec.into(),
            labels: BTreeMap::new(),
            trigger: trigger(),
        });
        let Outcome::ResourceChanged { run: Some(run), .. } = out else {
            panic!("{kind}/{name}: {out:?}");
        };
        s.apply(Command::FinishRun {
            run: run.index,
            attempt: 1,
            end: RunEnd::Succeeded {
                outputs_json: outputs.into(),
            },
            at_ms: 2,
        });
    }

    #[test]
    fn a_service_routes_to_the_machines_of_its_active_cluster() {
        let mut s = with_builtin_kinds();
        create(
            &mut s,
            "cluster",
            "web-v1",
            r#"{"image": "i", "size": 2}"#,
            r#"{"machines": [{"index": 0, "address": "127.0.0.1:4000"}, {"index": 1, "port": 4001}]}"#,
        );
        create(
            &mut s,
            "service",
            "web",
            r#"{"port": 8080, "cluster": "web-v1", "drain": 5}"#,
            r#"{"active": "web-v1"}"#,
        );
        // Not active yet: served, with no backends.
        create(&mut s, "service", "new", r#"{"port": 8081, "cluster": "web-v1"}"#, "{}");
        // Active on a cluster that does not exist: no backends.
        create(
            &mut s,
            "service",
            "gone",
            r#"{"port": 8082, "cluster": "x"}"#,
            r#"{"active": "x"}"#,
        );
        let all = routes(&s.state.view()).unwrap();
        let by_name: BTreeMap<&str, &Route> = all.iter().map(|r| (r.name.as_str(), r)).collect();
        assert_eq!(by_name.len(), 3, "{all:?}");
        let web = by_name["web"];
        assert_eq!((web.port, web.active.as_deref()), (8080, Some("web-v1")));
        assert_eq!(web.drain, std::time::Duration::from_secs(5));
        let addresses: Vec<&str> = web.backends.iter().map(|m| m.address.as_str()).collect();
        assert_eq!(addresses, ["127.0.0.1:4000", "127.0.0.1:4001"]);
        assert_eq!(
            (by_name["new"].active.as_deref(), by_name["new"].backends.len()),
            (None, 0)
        );
        assert_eq!(by_name["gone"].backends.len(), 0);
        assert_eq!(by_name["new"].drain, super::super::DEFAULT_DRAIN);
        // A service being destroyed is no longer served.
        s.apply(Command::DoEvent {
            kind: "service".into(),
            name: "gone".into(),
            event: "destroy".into(),
            args: BTreeMap::new(),
            trigger: trigger(),
        });
        let names: Vec<String> = routes(&s.state.view()).unwrap().into_iter().map(|r| r.name).collect();
        assert_eq!(names, ["new", "web"]);
    }

    #[test]
    fn only_service_and_cluster_changes_concern_the_routes() {
        let mut s = with_builtin_kinds();
        let (_, events) = s.apply(Command::CreateResource {
            kind: "service".into(),
            name: "web".into(),
            spec_json: r#"{"port": 8080, "cluster": "c"}"#.into(),
            labels: BTreeMap::new(),
            trigger: trigger(),
        });
        assert!(events.iter().any(concerns_routes), "{events:?}");
        let (_, events) = s.apply(Command::PutSetting {
            key: "k".into(),
            value: "v".into(),
            expected_revision: None,
            trigger: trigger(),
        });
        assert!(!events.iter().any(concerns_routes), "{events:?}");
    }
}
