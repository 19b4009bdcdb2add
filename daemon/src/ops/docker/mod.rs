//! The `docker` provider: the built-in `image` and `cluster` kinds made real
//! with the Docker engine (`spec.provider = "docker"`, docs/providers.md):
//! an image is a Docker image built from a directory, a cluster is
//! containers of it on a user-defined network. It runs the same steps as the
//! local provider (a work state names its step), so the acceptance checks,
//! services and the load balancer work on containers as on processes.
//!
//! Everything it makes is named and labelled after this opsd cluster
//! ([`engine::LABEL_CLUSTER`]) and the resource ([`engine::LABEL_RESOURCE`]),
//! and found again by those labels: a step that runs again after a takeover
//! finds what the earlier attempt made (containers are named per cluster,
//! resource and machine index, so there can be no twins), and a destroy
//! removes everything carrying the resource's label, recorded or not.

mod cluster;
pub mod engine;
mod image;
pub mod opsd_nodes;

use std::collections::BTreeMap;
use std::sync::Arc;

use opsd_cluster::ClusterNode;
use tokio_util::sync::CancellationToken;

use super::{
    step_result, uses_step, Fail, LogSink, MachineStep, NamedSteps, Object, Provider, ResourceLookup, StepRequest,
    StepResult, MACHINE_STEPS,
};
use crate::domain::kind::Kind;
use engine::{Engine, LABEL_CLUSTER, LABEL_RESOURCE, LABEL_RUN};

pub use cluster::DEFAULT_PORT;

/// The provider of the built-in kinds on the Docker engine.
pub struct DockerProvider {
    /// The registry, to find a cluster's image.
    lookup: Arc<dyn ResourceLookup>,
    /// This opsd cluster's id: in the names and labels of everything the
    /// provider makes, so two opsd clusters sharing one Docker engine never
    /// see (or remove) each other's containers.
    scope: String,
    /// This node's advertise host.
    host: String,
    /// This node, for the steps that change the opsd cluster itself (the
    /// `opsd-cluster` kind); `None` in unit tests.
    node: Option<ClusterNode>,
}

impl DockerProvider {
    /// A provider finding a cluster's image through `lookup`, naming what it
    /// makes after `scope` (this opsd cluster's id), on the node `node`
    /// advertised at `host`.
    pub fn new(
        lookup: Arc<dyn ResourceLookup>,
        scope: impl Into<String>,
        host: impl Into<String>,
        node: Option<ClusterNode>,
    ) -> Self {
        DockerProvider {
            lookup,
            scope: scope.into(),
            host: host.into(),
            node,
        }
    }

    /// The prefix of every name this provider gives on the engine:
    /// `opsd-SCOPE`, in the characters Docker allows in names and image
    /// repositories.
    fn prefix(&self) -> String {
        format!("opsd-{}", docker_name_part(&self.scope))
    }

    /// The name of something of resource `name`, with `suffix` (`-0`, ...).
    fn engine_name(&self, name: &str, suffix: &str) -> String {
        format!("{}-{}{suffix}", self.prefix(), docker_name_part(name))
    }

    /// The labels of everything made for resource `kind/name` by run `run`.
    fn labels(&self, kind: &str, name: &str, run: &str) -> BTreeMap<String, String> {
        BTreeMap::from([
            (LABEL_CLUSTER.to_string(), self.scope.clone()),
            (LABEL_RESOURCE.to_string(), format!("{kind}/{name}")),
            (LABEL_RUN.to_string(), run.to_string()),
        ])
    }
}

/// `s` in the characters Docker allows in container, network and image
/// repository names (lowercase letters, digits, `.`, `_`, `-`), anything
/// else as `-`. Labels, not names, say exactly which resource a thing is.
fn docker_name_part(s: &str) -> String {
    let part: String = s
        .chars()
        .map(|c| match c.to_ascii_lowercase() {
            c @ ('a'..='z' | '0'..='9' | '_' | '.' | '-') => c,
            _ => '-',
        })
        .collect();
    let part = part.trim_matches(|c: char| !c.is_ascii_alphanumeric()).to_string();
    if part.is_empty() {
        "x".to_string()
    } else {
        part
    }
}

/// Connects to this node's Docker engine (`DOCKER_HOST`, else the local
/// socket), or fails the step saying where it tried; stops at once if the
/// step is cancelled.
async fn connect(cancel: &CancellationToken) -> Result<Engine, Fail> {
    tokio::select! {
        engine = Engine::connect() => Ok(engine?),
        _ = cancel.cancelled() => Err(super::StepError::Cancelled.into()),
    }
}

/// The steps of the docker provider, as kinds name them (`step = "NAME"`):
/// the machine steps (the dispatch below says what each does here), and
/// the built-in `opsd-cluster` kind's.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Step {
    /// One of the machine steps.
    Machine(MachineStep),
    /// opsd-cluster: builds this opsd's image and starts its nodes.
    StartOpsdNodes,
    /// opsd-cluster: hands the opsd cluster to its nodes.
    AdoptOpsdNodes,
    /// opsd-cluster: its nodes leave, their containers go.
    DestroyOpsdNodes,
}

/// Every step with its name: the machine steps, then opsd-cluster's.
const ALL_STEPS: [(&str, Step); 11] = {
    let mut all = [("", Step::StartOpsdNodes); 11];
    let mut i = 0;
    while i < MACHINE_STEPS.len() {
        all[i] = (MACHINE_STEPS[i].0, Step::Machine(MACHINE_STEPS[i].1));
        i += 1;
    }
    all[8] = ("start_opsd_nodes", Step::StartOpsdNodes);
    all[9] = ("adopt_opsd_nodes", Step::AdoptOpsdNodes);
    all[10] = ("destroy_opsd_nodes", Step::DestroyOpsdNodes);
    all
};

/// The dispatch table.
const STEPS: NamedSteps<Step> = NamedSteps::new("docker", &ALL_STEPS);

/// What a step function returns: outputs, or why it failed.
type StepOut = Result<Object, Fail>;

#[async_trait::async_trait]
impl Provider for DockerProvider {
    fn name(&self) -> &'static str {
        "docker"
    }

    /// Every work state names one of the steps above; no state has a script.
    fn check_kind(&self, kind: &Kind) -> Result<(), String> {
        STEPS.check_kind(kind)
    }

    /// A kind whose states build images checks an image's spec; one whose
    /// states start machines checks a cluster's, checks included; one whose
    /// states start opsd nodes an opsd-cluster's.
    fn check_spec(&self, kind: &Kind, spec: &Object) -> Result<(), String> {
        let uses = |step| uses_step(kind, step);
        if uses("copy_source") || uses("build_image") {
            image::image_spec(spec)?;
        }
        if uses("start_machines") || uses("restart_machines") {
            cluster::cluster_spec(spec)?;
        }
        if uses("start_opsd_nodes") {
            super::selfdeploy::nodes_spec(spec, &self.host)?;
        }
        if uses("verify_machines") || uses("start_machines") {
            crate::verify::parse_checks(spec)?;
        }
        Ok(())
    }

    async fn step(&self, req: StepRequest, log: LogSink, cancel: CancellationToken) -> StepResult {
        let step = match STEPS.to_run(&req, &cancel) {
            Ok(step) => step,
            Err(ended) => return ended,
        };
        let out = match step {
            Step::Machine(MachineStep::CopySource) => self.copy_source(&req, &log, &cancel).await,
            Step::Machine(MachineStep::BuildImage) => self.build_image(&req, &log, &cancel).await,
            Step::Machine(MachineStep::RemoveImage) => self.remove_image(&req, &log, &cancel).await,
            Step::Machine(MachineStep::StartMachines) => self.start_machines(&req, &log, &cancel, true).await,
            Step::Machine(MachineStep::RestartMachines) => self.start_machines(&req, &log, &cancel, false).await,
            Step::Machine(MachineStep::StopMachines) => self.stop_machines(&req, &log, &cancel).await,
            Step::Machine(MachineStep::DestroyMachines) => self.destroy_machines(&req, &log, &cancel).await,
            Step::Machine(MachineStep::VerifyMachines) => crate::verify::verify_machines(&req, &log, &cancel).await,
            Step::StartOpsdNodes => self.start_opsd_nodes(&req, &log, &cancel).await,
            Step::AdoptOpsdNodes => self.adopt_opsd_nodes(&req, &log, &cancel).await,
            Step::DestroyOpsdNodes => self.destroy_opsd_nodes(&req, &log, &cancel).await,
        };
        step_result(out)
    }
}

/// Runs an engine call unless the step is cancelled first.
async fn or_cancelled<T>(
    cancel: &CancellationToken,
    call: impl std::future::Future<Output = Result<T, super::StepError>>,
) -> Result<T, super::StepError> {
    tokio::select! {
        r = call => r,
        _ = cancel.cancelled() => Err(super::StepError::Cancelled),
    }
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;
    use crate::domain::kind::builtin;

    struct NoResources;

    impl ResourceLookup for NoResources {
        fn lookup(&self, _: &str, _: &str) -> Option<(String, Object)> {
            None
        }
    }

    /// A provider of the scope `Cluster_01/x`, finding no resources.
    pub(super) fn provider() -> DockerProvider {
        DockerProvider::new(Arc::new(NoResources), "Cluster_01/x", "127.0.0.1", None)
    }

    /// A request to run `step` for cluster `web` (run r1, attempt 1).
    pub(super) fn request(step: &str) -> StepRequest {
        StepRequest {
            kind: "cluster".into(),
            name: "web".into(),
            spec: Object::new(),
            outputs: Object::new(),
            args: BTreeMap::new(),
            event: "create".into(),
            state: "pending".into(),
            run_id: "r1".into(),
            attempt: 1,
            step: Some(step.into()),
            run: None,
            work_dir: std::env::temp_dir(),
            node_id: 1,
            settings: BTreeMap::new(),
        }
    }

    #[test]
    fn the_builtin_image_and_cluster_kinds_pass_the_check() {
        for name in ["image", "cluster", "opsd-cluster"] {
            let kind = builtin(name).unwrap();
            provider().check_kind(&kind).unwrap_or_else(|e| panic!("{name}: {e}"));
        }
    }

    #[tokio::test]
    async fn a_cancelled_step_does_not_begin() {
        let (log, _rx) = LogSink::channel();
        let cancel = CancellationToken::new();
        cancel.cancel();
        let req = request("start_machines");
        assert_eq!(
            provider().step(req.clone(), log.clone(), cancel).await,
            StepResult::cancelled()
        );
        let e = provider()
            .step(
                StepRequest {
                    step: Some("bake".into()),
                    ..req
                },
                log,
                CancellationToken::new(),
            )
            .await;
        assert_eq!(
            e,
            StepResult::failed("the docker provider has no step \"bake\" (state pending of kind cluster)")
        );
    }

    #[test]
    fn names_are_docker_names_and_labels_are_exact() {
        let p = provider();
        assert_eq!(p.engine_name("Web v1", "-0"), "opsd-cluster_01-x-web-v1-0");
        assert_eq!(docker_name_part("///"), "x");
        let labels = p.labels("cluster", "Web v1", "r7");
        assert_eq!(labels[LABEL_CLUSTER], "Cluster_01/x");
        assert_eq!(labels[LABEL_RESOURCE], "cluster/Web v1");
        assert_eq!(labels[LABEL_RUN], "r7");
    }

    #[test]
    fn specs_are_checked_naming_the_field() {
        let p = provider();
        let spec = |v: serde_json::Value| v.as_object().cloned().unwrap();
        let image = builtin("image").unwrap();
        let cluster = builtin("cluster").unwrap();
        p.check_spec(&image, &spec(serde_json::json!({"source": "/src"})))
            .unwrap();
        let e = p
            .check_spec(&image, &spec(serde_json::json!({"source": "/src", "build": "make"})))
            .unwrap_err();
        assert!(e.starts_with("spec.build: "), "{e}");
        let e = p
            .check_spec(&image, &spec(serde_json::json!({"start": 3})))
            .unwrap_err();
        assert!(e.starts_with("spec.source: required"), "{e}");
        p.check_spec(
            &cluster,
            &spec(serde_json::json!({"image": "a", "size": 3, "port": 80})),
        )
        .unwrap();
        for (bad, field) in [
            (
                serde_json::json!({"image": "a", "size": 1, "base_port": 9000}),
                "spec.base_port: ",
            ),
            (serde_json::json!({"image": "a", "size": 1, "port": 0}), "spec.port: "),
            (serde_json::json!({"image": "a", "size": 65}), "spec.size: "),
            (
                serde_json::json!({"image": "a", "size": 1, "env": {"PORT": "1"}}),
                "spec.env.PORT: ",
            ),
            (
                serde_json::json!({"image": "a", "size": 1, "checks": [{"type": "ping"}]}),
                "spec.checks[0].type: ",
            ),
        ] {
            let e = p.check_spec(&cluster, &spec(bad.clone())).unwrap_err();
            assert!(e.starts_with(field), "{bad}: {e}");
        }
    }
}
