//! The `ec2` provider: the built-in `image` and `cluster` kinds made real on
//! Amazon EC2 (`spec.provider = "ec2"`, docs/providers.md), through
//! `aws-sdk-ec2` with aws-config's standard credential chain and endpoint
//! settings. An image is an AMI ([`image`]), a cluster is instances started
//! with client tokens made of the run id, tagged with the opsd cluster, the
//! resource and the run ([`cluster`]).
//!
//! It runs the same steps as the local provider (a work state names its
//! step), with this provider's meaning. The SDK configuration is loaded
//! once, at the first EC2 step on this node, not when opsd starts: a node
//! without AWS settings starts and serves, and only its EC2 runs fail,
//! saying what is missing.

mod cluster;
mod image;
mod instances;
pub mod sdk;
pub mod spec;

use std::sync::Arc;

use opsd_cluster::ClusterNode;
use tokio::sync::OnceCell;
use tokio_util::sync::CancellationToken;

use super::MachineStep as Step;
use super::{
    step_result, uses_step, Fail, LogSink, NamedSteps, Object, Provider, ResourceLookup, StepError, StepRequest,
    StepResult, MACHINE_STEPS,
};
use crate::domain::kind::Kind;
use crate::domain::{Command, Trigger};

/// What a step function returns: outputs, or why it failed.
type StepOut = Result<Object, Fail>;

/// The provider of the built-in kinds on EC2.
pub struct Ec2Provider {
    /// The registry, to find a cluster's image and the settings in scope.
    lookup: Arc<dyn ResourceLookup>,
    /// This opsd cluster's id: in the tags and names of everything the
    /// provider makes, so two opsd clusters sharing one account never see
    /// (or terminate) each other's instances.
    scope: String,
    /// This node, to keep a key pair's private key in the resource's
    /// settings; `None` in unit tests (the key is then not kept).
    node: Option<ClusterNode>,
    /// The EC2 client, loaded at the first step that needs it.
    ec2: OnceCell<sdk::Ec2>,
}

impl Ec2Provider {
    /// A provider finding a cluster's image through `lookup`, naming and
    /// tagging what it makes after `scope` (this opsd cluster's id), keeping
    /// private keys through `node`.
    pub fn new(lookup: Arc<dyn ResourceLookup>, scope: impl Into<String>, node: Option<ClusterNode>) -> Self {
        Ec2Provider {
            lookup,
            scope: scope.into(),
            node,
            ec2: OnceCell::new(),
        }
    }

    /// The EC2 client, loaded from the standard chain the first time (a
    /// failure, such as no region, is not kept: the next step tries again).
    async fn ec2(&self) -> Result<sdk::Ec2, StepError> {
        self.ec2
            .get_or_try_init(sdk::load)
            .await
            .cloned()
            .map_err(StepError::Failed)
    }

    /// Writes (or, with `None`, deletes) the private key of a cluster's key
    /// pair as the setting `scope/resource/KIND/NAME/ec2/ssh_private_key`,
    /// through Raft, before any instance uses the key: a takeover finds it,
    /// and `opsctl shell` reads it from the resource's settings.
    async fn keep_private_key(&self, req: &StepRequest, key: Option<String>) -> Result<(), StepError> {
        let Some(node) = &self.node else {
            return Ok(());
        };
        let setting = format!("scope/resource/{}/{}/{}", req.kind, req.name, spec::SSH_KEY_SETTING);
        let trigger = Trigger {
            principal: "opsd".into(),
            reason: format!("ec2 key pair of {}/{} (run {})", req.kind, req.name, req.run_id),
            source: "api".into(),
            at_ms: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_millis() as i64)
                .unwrap_or(0),
        };
        let command = match key {
            // A private key: secret, so no answer or log shows it.
            Some(value) => Command::PutSettingV2 {
                key: setting.clone(),
                value,
                expected_revision: None,
                trigger,
                secret: Some(true),
            },
            None => {
                if !self
                    .lookup
                    .settings(&req.kind, &req.name)
                    .contains_key(spec::SSH_KEY_SETTING)
                {
                    return Ok(());
                }
                Command::DeleteSetting {
                    key: setting.clone(),
                    expected_revision: None,
                    trigger,
                }
            }
        };
        crate::propose::replicate(node, &command)
            .await
            .map(|_| ())
            .map_err(|e| StepError::Failed(format!("keeping the private key in the setting {setting}: {e}")))
    }
}

/// The steps of the ec2 provider: the machine steps (the dispatch
/// below says what each does here).
const STEPS: NamedSteps<Step> = NamedSteps::new("ec2", &MACHINE_STEPS);

#[async_trait::async_trait]
impl Provider for Ec2Provider {
    fn name(&self) -> &'static str {
        "ec2"
    }

    /// Every work state names one of the steps above; no state has a script.
    fn check_kind(&self, kind: &Kind) -> Result<(), String> {
        STEPS.check_kind(kind)
    }

    /// An image kind's spec (it copies a source) and a cluster kind's spec
    /// (it starts machines) are checked before anything is written.
    fn check_spec(&self, kind: &Kind, spec: &Object) -> Result<(), String> {
        let uses = |step| uses_step(kind, step);
        if uses("copy_source") {
            spec::image_spec(spec)?;
        }
        if uses("start_machines") {
            spec::cluster_spec(spec)?;
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
            Step::CopySource => self.start_builder(&req, &log, &cancel).await,
            Step::BuildImage => self.make_ami(&req, &log, &cancel).await,
            Step::RemoveImage => self.remove_image(&req, &log, &cancel).await,
            Step::StartMachines | Step::RestartMachines => self.start_machines(&req, &log, &cancel).await,
            Step::StopMachines => self.stop_machines(&req, &log, &cancel).await,
            Step::DestroyMachines => self.destroy_machines(&req, &log, &cancel).await,
            Step::VerifyMachines => crate::verify::verify_machines(&req, &log, &cancel).await,
        };
        if let Err(Fail {
            error: StepError::Failed(e),
            ..
        }) = &out
        {
            log.line(format!("error: {e}"));
        }
        step_result(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::kind::builtin;
    use serde_json::json;

    struct Nothing;
    impl ResourceLookup for Nothing {
        fn lookup(&self, _: &str, _: &str) -> Option<(String, Object)> {
            None
        }
    }

    fn provider() -> Ec2Provider {
        Ec2Provider::new(Arc::new(Nothing), "c1", None)
    }

    #[test]
    fn the_builtin_image_and_cluster_kinds_pass_the_check() {
        for name in ["image", "cluster"] {
            let kind = builtin(name).unwrap();
            provider().check_kind(&kind).unwrap_or_else(|e| panic!("{name}: {e}"));
        }
    }

    #[test]
    fn specs_are_checked_before_anything_is_written() {
        let image = builtin("image").unwrap();
        let cluster = builtin("cluster").unwrap();
        let p = provider();
        let obj = |v: serde_json::Value| v.as_object().cloned().unwrap();
        p.check_spec(&image, &obj(json!({"source": "ami-0123abcd"}))).unwrap();
        let e = p.check_spec(&image, &obj(json!({"source": "./web"}))).unwrap_err();
        assert!(e.starts_with("spec.source: "), "{e}");
        p.check_spec(&cluster, &obj(json!({"image": "i", "size": 2}))).unwrap();
        let e = p
            .check_spec(&cluster, &obj(json!({"image": "i", "size": 2, "checks": 1})))
            .unwrap_err();
        assert!(e.starts_with("spec.checks"), "{e}");
    }

    #[tokio::test]
    async fn a_cluster_of_a_missing_image_fails_naming_it_before_any_call() {
        let req = StepRequest {
            kind: "cluster".into(),
            name: "web".into(),
            spec: json!({"image": "base", "size": 1}).as_object().cloned().unwrap(),
            outputs: Object::new(),
            args: Default::default(),
            event: "create".into(),
            state: "pending".into(),
            run_id: "r1".into(),
            attempt: 1,
            step: Some("start_machines".into()),
            run: None,
            work_dir: std::env::temp_dir(),
            node_id: 1,
            settings: Default::default(),
        };
        let (log, _rx) = LogSink::channel();
        let r = provider().step(req, log, CancellationToken::new()).await;
        assert_eq!(r, StepResult::failed("spec.image: image base does not exist"));
    }
}
