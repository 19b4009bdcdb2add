//! The `service` provider: the steps of the built-in `service` kind. A
//! service is a port that every node's load balancer serves in front of one
//! cluster, the one its `outputs.active` names; these steps only decide
//! which cluster that is. Moving traffic is the load balancers' business:
//! each follows the applied state, so the end of a swap's run (one
//! replicated command that merges the new `active` and `previous`) is the
//! moment every node starts sending new connections to the new cluster.
//!
//! - `activate`: the spec is sound, the cluster runs, and the load balancer
//!   of every node listens on the port (a port in use on one node fails the
//!   service, naming that node: it never half-works);
//! - `swap` (`--arg cluster=NAME`): the new cluster runs and passes its
//!   acceptance checks, then it becomes `active` and the old one `previous`;
//!   a failed swap reports no `active`, so the service is unchanged;
//! - `swap_back`: `previous` still runs; it becomes `active` again, without
//!   checks or rebuilding: the way back must be quick;
//! - `release`: the service is being destroyed; the load balancers stop
//!   serving it as they apply that.
//!
//! Every step only reads the applied state and reports outputs, so running
//! one again after a takeover is harmless.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use serde_json::{json, Value};
use tokio_util::sync::CancellationToken;

use super::{
    machines_of, refuse_run, state_error, step_result, Fail, LogSink, Object, Provider, ResourceLookup, StepError,
    StepRequest, StepResult,
};
use crate::domain::kind::Kind;
use crate::domain::Rejection;
use crate::lb::follow::active_of;
use crate::lb::{service_spec, CLUSTER_KIND};
use crate::verify;

/// How long `activate` waits for every node's load balancer to listen.
pub const LISTEN_WAIT: Duration = Duration::from_secs(20);

/// The steps of the service provider, as the kind names them.
const STEPS: [&str; 4] = ["activate", "swap", "swap_back", "release"];

/// What the service provider needs of the load balancers of the cluster.
#[async_trait::async_trait]
pub trait Listeners: Send + Sync {
    /// Waits up to `timeout` until the load balancer of every member listens
    /// for `service` on `port`. The endpoints (`HOST:PORT`, one per node),
    /// or an error naming each node that cannot and why.
    async fn listening_everywhere(&self, service: &str, port: u16, timeout: Duration) -> Result<Vec<String>, String>;
}

/// The provider of the built-in `service` kind.
pub struct ServiceProvider {
    lookup: Arc<dyn ResourceLookup>,
    listeners: Arc<dyn Listeners>,
}

impl ServiceProvider {
    /// A provider reading clusters through `lookup` and asking `listeners`
    /// whether every node serves a new service.
    pub fn new(lookup: Arc<dyn ResourceLookup>, listeners: Arc<dyn Listeners>) -> Self {
        ServiceProvider { lookup, listeners }
    }

    /// The cluster `name` with its outputs, if it exists and is running.
    fn running_cluster(&self, name: &str) -> Result<Object, String> {
        match self.lookup.lookup(CLUSTER_KIND, name) {
            None => Err(format!("cluster {name} does not exist")),
            Some((state, outputs)) if state == "running" => Ok(outputs),
            Some((state, _)) => Err(format!(
                "cluster {name} is {state}, not running: only a running cluster can serve"
            )),
        }
    }

    async fn activate(&self, req: &StepRequest, log: &LogSink) -> Result<Object, StepError> {
        let spec = service_spec(&req.spec)?;
        self.running_cluster(&spec.cluster)?;
        log.line(format!(
            "waiting for the load balancer of every node to listen on port {}",
            spec.port
        ));
        let endpoints = self
            .listeners
            .listening_everywhere(&req.name, spec.port, LISTEN_WAIT)
            .await?;
        log.line(format!(
            "service {} serves cluster {} at {}",
            req.name,
            spec.cluster,
            endpoints.join(", ")
        ));
        let mut out = Object::new();
        out.insert("active".into(), json!(spec.cluster));
        out.insert("endpoints".into(), json!(endpoints));
        Ok(out)
    }

    async fn swap(&self, req: &StepRequest, log: &LogSink, cancel: &CancellationToken) -> Result<Object, Fail> {
        let active = active_of(&req.outputs);
        let target = match req.args.get("cluster").map(String::as_str) {
            Some(t) if !t.is_empty() => t,
            _ => return Err("swap needs the cluster to move to: --arg cluster=NAME".into()),
        };
        if active.as_deref() == Some(target) {
            return Err(format!("cluster {target} is already the active cluster of service {}", req.name).into());
        }
        let outputs = self.running_cluster(target)?;
        let spec = self
            .lookup
            .spec(CLUSTER_KIND, target)
            .ok_or_else(|| format!("cluster {target} does not exist"))?;
        let checks = verify::parse_checks(&spec).map_err(|e| format!("cluster {target}: {e}"))?;
        let machines = machines_of(&outputs);
        if machines.is_empty() {
            return Err(format!("cluster {target} has no machines recorded").into());
        }
        let report = if checks.is_empty() {
            log.line(format!(
                "cluster {target} declares no acceptance checks: it is taken as it is"
            ));
            None
        } else {
            log.line(format!(
                "running the {} acceptance check(s) of cluster {target} on its {} machine(s)",
                checks.len(),
                machines.len()
            ));
            // Exec checks get the settings in scope of the cluster they check.
            let settings = self.lookup.settings(CLUSTER_KIND, target);
            let report = verify::run_checks(&checks, &machines, &settings, log, cancel).await?;
            if let Some(why) = report.failure() {
                let still = active.as_deref().unwrap_or("no cluster");
                return Err(Fail {
                    error: StepError::Failed(format!(
                        "cluster {target} failed its acceptance checks: {why}; service {} still serves {still}",
                        req.name
                    )),
                    outputs: report.to_outputs(),
                });
            }
            Some(report)
        };
        log.line(format!(
            "service {} now serves cluster {target} (was {})",
            req.name,
            active.as_deref().unwrap_or("none")
        ));
        let mut out = report.map(|r| r.to_outputs()).unwrap_or_default();
        out.insert("active".into(), json!(target));
        out.insert("previous".into(), json!(active));
        Ok(out)
    }

    async fn swap_back(&self, req: &StepRequest, log: &LogSink) -> Result<Object, StepError> {
        let active = active_of(&req.outputs);
        let previous = match req.outputs.get("previous") {
            Some(Value::String(p)) if !p.is_empty() => p.clone(),
            _ => {
                return Err(StepError::Failed(format!(
                    "service {} has no previous cluster to swap back to",
                    req.name
                )))
            }
        };
        self.running_cluster(&previous)
            .map_err(|e| format!("cannot swap back: {e}"))?;
        log.line(format!(
            "service {} swaps back to cluster {previous} (was {})",
            req.name,
            active.as_deref().unwrap_or("none")
        ));
        let mut out = Object::new();
        out.insert("active".into(), json!(previous));
        out.insert("previous".into(), json!(active));
        Ok(out)
    }
}

#[async_trait::async_trait]
impl Provider for ServiceProvider {
    fn name(&self) -> &'static str {
        "service"
    }

    fn check_kind(&self, kind: &Kind) -> Result<(), String> {
        refuse_run(kind)?;
        for (name, state) in kind.states.iter().filter(|(_, s)| s.work) {
            match state.step.as_deref() {
                Some(step) if STEPS.contains(&step) => {}
                other => {
                    return Err(state_error(
                        kind,
                        name,
                        "step",
                        format_args!(
                            "{}: a work state of a service kind names one of {}",
                            other.map_or("missing".to_string(), |s| format!("unknown step {s:?}")),
                            STEPS.join(", ")
                        ),
                    ))
                }
            }
        }
        Ok(())
    }

    /// The spec is a service's: a port, a cluster, a sound health check.
    fn check_spec(&self, _kind: &Kind, spec: &Object) -> Result<(), String> {
        service_spec(spec).map(|_| ())
    }

    /// A swap names a running cluster other than the active one; a swap
    /// back has a running previous cluster to return to.
    fn check_event(&self, outputs: &Object, event: &str, args: &BTreeMap<String, String>) -> Result<(), Rejection> {
        let active = active_of(outputs);
        let target = match event {
            "swap" => match args.get("cluster").map(String::as_str) {
                Some(t) if !t.is_empty() => t.to_string(),
                _ => {
                    return Err(Rejection::InvalidArgument(
                        "args.cluster: required: the cluster to swap to (--arg cluster=NAME)".into(),
                    ))
                }
            },
            "swap-back" => match outputs.get("previous").and_then(Value::as_str) {
                Some(p) if !p.is_empty() => p.to_string(),
                _ => {
                    return Err(Rejection::FailedPrecondition(
                        "this service has no previous cluster to swap back to".into(),
                    ))
                }
            },
            _ => return Ok(()),
        };
        if active.as_deref() == Some(target.as_str()) {
            return Err(Rejection::FailedPrecondition(format!(
                "cluster {target} is already the active cluster"
            )));
        }
        match self.lookup.lookup(CLUSTER_KIND, &target) {
            None => Err(Rejection::NotFound(format!("cluster {target} does not exist"))),
            Some((state, _)) if state != "running" => Err(Rejection::FailedPrecondition(format!(
                "cluster {target} is {state}, not running: only a running cluster can serve"
            ))),
            Some(_) => Ok(()),
        }
    }

    async fn step(&self, req: StepRequest, log: LogSink, cancel: CancellationToken) -> StepResult {
        if cancel.is_cancelled() {
            return StepResult::cancelled();
        }
        let out: Result<Object, Fail> = match req.step.as_deref() {
            Some("activate") => self.activate(&req, &log).await.map_err(Fail::from),
            Some("swap") => self.swap(&req, &log, &cancel).await,
            Some("swap_back") => self.swap_back(&req, &log).await.map_err(Fail::from),
            Some("release") => {
                log.line(format!("the load balancers stop serving service {}", req.name));
                Ok(Object::new())
            }
            other => Err(Fail::from(format!(
                "the service provider has no step {:?} (state {} of kind {})",
                other.unwrap_or(""),
                req.state,
                req.kind
            ))),
        };
        step_result(out)
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;
    use std::sync::Mutex;

    use super::*;
    use crate::domain::kind::builtin;

    /// A cluster as the applied state has it: state, spec, outputs.
    type Record = (String, Object, Object);

    /// The applied state, as a map: (kind, name) → record.
    #[derive(Default)]
    struct State(Mutex<HashMap<(String, String), Record>>);

    impl State {
        fn put(&self, name: &str, state: &str, spec: Value, outputs: Value) {
            let obj = |v: Value| v.as_object().cloned().unwrap_or_default();
            self.0
                .lock()
                .unwrap()
                .insert(("cluster".into(), name.into()), (state.into(), obj(spec), obj(outputs)));
        }
    }

    impl ResourceLookup for State {
        fn lookup(&self, kind: &str, name: &str) -> Option<(String, Object)> {
            let map = self.0.lock().unwrap();
            map.get(&(kind.into(), name.into()))
                .map(|(s, _, o)| (s.clone(), o.clone()))
        }
        fn spec(&self, kind: &str, name: &str) -> Option<Object> {
            let map = self.0.lock().unwrap();
            map.get(&(kind.into(), name.into())).map(|(_, spec, _)| spec.clone())
        }
    }

    /// Load balancers that answer what the test says.
    struct Answer(Result<Vec<String>, String>);

    #[async_trait::async_trait]
    impl Listeners for Answer {
        async fn listening_everywhere(&self, _: &str, _: u16, _: Duration) -> Result<Vec<String>, String> {
            self.0.clone()
        }
    }

    fn provider(state: Arc<State>, listeners: Result<Vec<String>, String>) -> ServiceProvider {
        ServiceProvider::new(state, Arc::new(Answer(listeners)))
    }

    fn machines() -> Value {
        json!({"machines": [{"index": 0, "address": "127.0.0.1:1"}]})
    }

    fn request(step: &str, outputs: Value, args: &[(&str, &str)]) -> StepRequest {
        StepRequest {
            kind: "service".into(),
            name: "web".into(),
            spec: json!({"port": 8080, "cluster": "v1"}).as_object().cloned().unwrap(),
            outputs: outputs.as_object().cloned().unwrap_or_default(),
            args: args.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
            event: "swap".into(),
            state: "swapping".into(),
            run_id: "r9".into(),
            attempt: 1,
            step: Some(step.into()),
            run: None,
            work_dir: std::env::temp_dir(),
            node_id: 1,
            settings: BTreeMap::new(),
        }
    }

    async fn run(p: &ServiceProvider, req: StepRequest) -> StepResult {
        let (log, _rx) = LogSink::channel();
        p.step(req, log, CancellationToken::new()).await
    }

    fn error(r: StepResult) -> String {
        match r {
            StepResult::Failed { error, .. } => error,
            other => panic!("expected a failure, got {other:?}"),
        }
    }

    fn outputs(r: StepResult) -> Value {
        match r {
            StepResult::Succeeded { outputs } => Value::Object(outputs),
            other => panic!("expected a success, got {other:?}"),
        }
    }

    #[test]
    fn the_builtin_service_kind_passes_the_check() {
        let p = provider(Arc::default(), Ok(vec![]));
        p.check_kind(&builtin("service").unwrap()).unwrap();
    }

    #[tokio::test]
    async fn activate_needs_a_running_cluster_and_every_node_listening() {
        let state = Arc::new(State::default());
        let p = provider(
            state.clone(),
            Ok(vec!["127.0.0.2:8080".into(), "127.0.0.3:8080".into()]),
        );
        let req = || request("activate", json!({}), &[]);
        assert_eq!(error(run(&p, req()).await), "cluster v1 does not exist");
        state.put("v1", "stopped", json!({}), machines());
        assert_eq!(
            error(run(&p, req()).await),
            "cluster v1 is stopped, not running: only a running cluster can serve"
        );
        state.put("v1", "running", json!({}), machines());
        assert_eq!(
            outputs(run(&p, req()).await),
            json!({"active": "v1", "endpoints": ["127.0.0.2:8080", "127.0.0.3:8080"]})
        );

        let p = provider(state, Err("node 2 (127.0.0.1:7710): address in use".into()));
        assert_eq!(error(run(&p, req()).await), "node 2 (127.0.0.1:7710): address in use");
        let mut bad = req();
        bad.spec.insert("port".into(), json!(0));
        assert!(error(run(&p, bad).await).starts_with("spec.port: "));
    }

    #[tokio::test]
    async fn swap_moves_to_a_running_cluster_and_keeps_the_old_one_as_previous() {
        let state = Arc::new(State::default());
        let p = provider(state.clone(), Ok(vec![]));
        let serving = json!({"active": "v1"});
        assert_eq!(
            error(run(&p, request("swap", serving.clone(), &[])).await),
            "swap needs the cluster to move to: --arg cluster=NAME"
        );
        assert_eq!(
            error(run(&p, request("swap", serving.clone(), &[("cluster", "v1")])).await),
            "cluster v1 is already the active cluster of service web"
        );
        assert_eq!(
            error(run(&p, request("swap", serving.clone(), &[("cluster", "v2")])).await),
            "cluster v2 does not exist"
        );
        state.put("v2", "failed", json!({}), machines());
        assert_eq!(
            error(run(&p, request("swap", serving.clone(), &[("cluster", "v2")])).await),
            "cluster v2 is failed, not running: only a running cluster can serve"
        );
        state.put("v2", "running", json!({}), json!({}));
        assert_eq!(
            error(run(&p, request("swap", serving.clone(), &[("cluster", "v2")])).await),
            "cluster v2 has no machines recorded"
        );
        state.put("v2", "running", json!({}), machines());
        assert_eq!(
            outputs(run(&p, request("swap", serving, &[("cluster", "v2")])).await),
            json!({"active": "v2", "previous": "v1"})
        );
    }

    #[test]
    fn swaps_to_a_cluster_that_cannot_serve_are_refused_before_anything_is_proposed() {
        let state = Arc::new(State::default());
        let p = provider(state.clone(), Ok(vec![]));
        let check = |outputs: Value, event: &str, args: &[(&str, &str)]| {
            let args = args.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
            p.check_event(outputs.as_object().unwrap(), event, &args)
        };
        let serving = json!({"active": "v1"});
        assert_eq!(
            check(serving.clone(), "swap", &[]),
            Err(Rejection::InvalidArgument(
                "args.cluster: required: the cluster to swap to (--arg cluster=NAME)".into()
            ))
        );
        assert_eq!(
            check(serving.clone(), "swap", &[("cluster", "v2")]),
            Err(Rejection::NotFound("cluster v2 does not exist".into()))
        );
        state.put("v2", "stopped", json!({}), machines());
        assert_eq!(
            check(serving.clone(), "swap", &[("cluster", "v2")]),
            Err(Rejection::FailedPrecondition(
                "cluster v2 is stopped, not running: only a running cluster can serve".into()
            ))
        );
        state.put("v2", "running", json!({}), machines());
        check(serving.clone(), "swap", &[("cluster", "v2")]).unwrap();
        assert_eq!(
            check(serving.clone(), "swap", &[("cluster", "v1")]),
            Err(Rejection::FailedPrecondition(
                "cluster v1 is already the active cluster".into()
            ))
        );
        assert_eq!(
            check(serving.clone(), "swap-back", &[]),
            Err(Rejection::FailedPrecondition(
                "this service has no previous cluster to swap back to".into()
            ))
        );
        check(json!({"active": "v1", "previous": "v2"}), "swap-back", &[]).unwrap();
        check(serving, "destroy", &[]).unwrap();
    }

    #[tokio::test]
    async fn a_swap_whose_checks_fail_reports_them_and_moves_nothing() {
        // A port nothing listens on: bind one, then let it go.
        let closed = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap();
        let state = Arc::new(State::default());
        state.put(
            "v2",
            "running",
            json!({"checks": [{"type": "tcp", "retries": 0, "timeout": 1}]}),
            json!({"machines": [{"index": 0, "address": closed.to_string()}]}),
        );
        let p = provider(state, Ok(vec![]));
        let (log, _rx) = LogSink::channel();
        let req = request("swap", json!({"active": "v1"}), &[("cluster", "v2")]);
        match p.step(req, log, CancellationToken::new()).await {
            StepResult::Failed { error, outputs } => {
                assert!(
                    error.starts_with(&format!(
                        "cluster v2 failed its acceptance checks: check tcp#0 failed on machine 0 ({closed})"
                    )),
                    "{error}"
                );
                assert!(error.ends_with("; service web still serves v1"), "{error}");
                assert_eq!(outputs["checks"]["passed"], json!(false));
                assert!(!outputs.contains_key("active") && !outputs.contains_key("previous"));
            }
            other => panic!("expected a failure, got {other:?}"),
        }
    }

    #[tokio::test]
    async fn swap_back_returns_to_a_previous_cluster_still_running() {
        let state = Arc::new(State::default());
        let p = provider(state.clone(), Ok(vec![]));
        assert_eq!(
            error(run(&p, request("swap_back", json!({"active": "v2"}), &[])).await),
            "service web has no previous cluster to swap back to"
        );
        let swapped = json!({"active": "v2", "previous": "v1"});
        state.put("v1", "stopped", json!({}), machines());
        assert_eq!(
            error(run(&p, request("swap_back", swapped.clone(), &[])).await),
            "cannot swap back: cluster v1 is stopped, not running: only a running cluster can serve"
        );
        state.put("v1", "running", json!({}), machines());
        assert_eq!(
            outputs(run(&p, request("swap_back", swapped, &[])).await),
            json!({"active": "v1", "previous": "v2"})
        );
    }
}
