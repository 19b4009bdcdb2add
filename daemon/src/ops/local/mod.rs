//! The `local` provider: the built-in `image` and `cluster` kinds made real
//! with directories and processes on the node that runs the step, so opsd is
//! useful (and testable end to end) on one laptop with nothing else installed.
//!
//! Each work state of a `local` kind names the step it runs (`step = "..."`
//! in the kind file); the provider dispatches on that name, never on the
//! kind's or the state's name.
//!
//! An image ([`image`]) is a copy of a source directory, built in place by
//! shell commands, under `<root>/images/<name>/<run_id>`; it lives on the
//! node that copied it (`outputs.node`) and only that node can build or
//! remove it. A cluster ([`cluster`]) is `size` machines ([`machines`]): each
//! a copy of the image under `<root>/clusters/<name>/machine-<i>` running the
//! image's `start` command as a detached process group (it outlives opsd; a
//! restart of opsd does not restart the machines).
//!
//! Every step is idempotent: directories are keyed by resource name and run
//! id and recreated from scratch, and a machine whose process is still
//! running (same pid and start time) is kept rather than started twice.

mod cluster;
#[cfg(test)]
mod fixture;
mod image;
mod machines;

use std::path::PathBuf;
use std::sync::Arc;

use tokio_util::sync::CancellationToken;

use super::MachineStep as Step;
use super::{
    step_result, uses_step, Fail, LogSink, NamedSteps, Object, Provider, ResourceLookup, StepRequest, StepResult,
    MACHINE_STEPS,
};
use crate::domain::kind::Kind;

pub use image::BUILD_GRACE;
pub use machines::{START_CHECK, STOP_GRACE};

/// The provider of the built-in `image` and `cluster` kinds: local
/// directories and processes on the node that runs the step.
pub struct LocalProvider {
    /// Where images and clusters live: a directory under opsd's data dir.
    root: PathBuf,
    /// The registry, to find a cluster's image.
    lookup: Arc<dyn ResourceLookup>,
    /// This node's advertise host: the host of its machines' addresses.
    host: String,
}

impl LocalProvider {
    /// A provider keeping its images and clusters under `root` (created as
    /// needed), finding a cluster's image through `lookup`; the machines it
    /// starts are recorded as listening on `host` (the node's advertise
    /// host) at their port.
    pub fn new(root: PathBuf, lookup: Arc<dyn ResourceLookup>, host: impl Into<String>) -> Self {
        LocalProvider {
            root,
            lookup,
            host: host.into(),
        }
    }

    /// The host this node's machines are reached at (and told to listen on,
    /// `OPSD_HOST`): the node's advertise host, except that a loopback one
    /// (`127.x.y.z`, `::1`, `localhost`) is `127.0.0.1`: every loopback
    /// address reaches the same computer, where a machine conventionally
    /// listens on 127.0.0.1 (nodes sharing one computer advertise different
    /// loopback addresses).
    fn machine_host(&self) -> &str {
        let loopback = match self.host.parse::<std::net::IpAddr>() {
            Ok(ip) => ip.is_loopback(),
            Err(_) => self.host.eq_ignore_ascii_case("localhost"),
        };
        if loopback {
            "127.0.0.1"
        } else {
            &self.host
        }
    }

    /// The address of a machine of this node listening on `port`:
    /// `HOST:PORT` ([`Self::machine_host`]), an IPv6 host in brackets.
    fn address(&self, port: u16) -> String {
        let host = self.machine_host();
        if host.contains(':') {
            format!("[{host}]:{port}")
        } else {
            format!("{host}:{port}")
        }
    }
}

/// The steps of the local provider: the machine steps (the dispatch
/// below says what each does here).
const STEPS: NamedSteps<Step> = NamedSteps::new("local", &MACHINE_STEPS);

/// What a step function returns: outputs, or why it failed.
type StepOut = Result<Object, Fail>;

#[async_trait::async_trait]
impl Provider for LocalProvider {
    fn name(&self) -> &'static str {
        "local"
    }

    /// Every work state names one of the steps above; no state has a script.
    fn check_kind(&self, kind: &Kind) -> Result<(), String> {
        STEPS.check_kind(kind)
    }

    /// A kind whose states start machines (`start_machines`) is a cluster
    /// kind: its spec must be a cluster's, checks included. A kind that only
    /// verifies (`verify_machines`) must have valid checks.
    fn check_spec(&self, kind: &Kind, spec: &Object) -> Result<(), String> {
        let uses = |step| uses_step(kind, step);
        if uses("start_machines") || uses("restart_machines") {
            cluster::cluster_spec(spec)?;
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
            Step::CopySource => self.copy_source(&req, &log, &cancel).await,
            Step::BuildImage => self.build_image(&req, &log, &cancel).await,
            Step::RemoveImage => self.remove_image(&req, &log).await,
            Step::StartMachines => self.start_machines(&req, &log, &cancel, true).await,
            Step::RestartMachines => self.start_machines(&req, &log, &cancel, false).await,
            Step::StopMachines => self.stop_machines(&req, &log, &cancel, false).await,
            Step::DestroyMachines => self.stop_machines(&req, &log, &cancel, true).await,
            Step::VerifyMachines => crate::verify::verify_machines(&req, &log, &cancel).await,
        };
        step_result(out)
    }
}

#[cfg(test)]
mod tests {
    use super::fixture::*;
    use super::*;
    use crate::domain::kind::{builtin, BUILTIN};
    use crate::domain::test_kinds::small_app;
    use serde_json::json;

    #[test]
    fn the_builtin_kinds_pass_the_check() {
        let f = fixture();
        for (name, _) in BUILTIN {
            let kind = builtin(name).unwrap();
            if kind.provider != "local" {
                continue;
            }
            f.provider.check_kind(&kind).unwrap_or_else(|e| panic!("{name}: {e}"));
            for state in kind.states.values().filter(|s| s.work) {
                assert!(STEPS.named(state.step.as_deref().unwrap()).is_some());
            }
        }
    }

    /// A small local kind, edited by the check tests.
    fn app() -> String {
        small_app("local", "step = \"build_image\"\n")
    }

    fn check(source: &str) -> Result<(), String> {
        fixture().provider.check_kind(&Kind::parse(source).unwrap())
    }

    #[test]
    fn machines_are_addressed_at_the_advertise_host_loopback_as_127_0_0_1() {
        let at = |host: &str| LocalProvider::new("/nonexistent".into(), fixture().registry.clone(), host).address(8080);
        assert_eq!(at("10.0.0.5"), "10.0.0.5:8080");
        assert_eq!(at("node-a.example"), "node-a.example:8080");
        assert_eq!(at("fd00::5"), "[fd00::5]:8080");
        assert_eq!(at("127.42.0.7"), "127.0.0.1:8080");
        assert_eq!(at("::1"), "127.0.0.1:8080");
        assert_eq!(at("LOCALHOST"), "127.0.0.1:8080");
    }

    #[test]
    fn a_local_work_state_names_a_step_it_has() {
        check(&app()).unwrap();
        let e = check(&app().replace("step = \"build_image\"\n", "")).unwrap_err();
        assert!(e.starts_with("kind \"app\": state \"building\": step: missing"), "{e}");
        assert!(e.contains("copy_source"), "{e}");
        let e = check(&app().replace("build_image", "bake")).unwrap_err();
        assert!(
            e.starts_with("kind \"app\": state \"building\": step: unknown step \"bake\" (the local provider has: "),
            "{e}"
        );
    }

    #[test]
    fn run_needs_the_exec_provider() {
        let e = check(&app().replace("fail = \"failed\"\n", "fail = \"failed\"\nrun = \"make\"\n")).unwrap_err();
        assert!(e.starts_with("kind \"app\": state \"building\": run: "), "{e}");
        assert!(e.contains("exec"), "{e}");
    }

    #[tokio::test]
    async fn a_state_without_a_step_of_ours_fails() {
        let f = fixture();
        let mut req = request("image", "a", "built", json!({}), &Object::new(), "r5");
        let (r, _) = step(&f.provider, req.clone()).await;
        assert_eq!(
            error_of(r),
            "state built of kind image names no step (the local provider runs the step a work state names)"
        );
        req.step = Some("bake".into());
        let (r, _) = step(&f.provider, req).await;
        assert_eq!(
            error_of(r),
            "the local provider has no step \"bake\" (state built of kind image)"
        );
    }

    #[tokio::test]
    async fn a_cancelled_step_does_not_begin() {
        let f = fixture();
        let req = request(
            "image",
            "a",
            "pending",
            json!({"source": "/nope"}),
            &Object::new(),
            "r1",
        );
        let (log, _rx) = LogSink::channel();
        let cancel = CancellationToken::new();
        cancel.cancel();
        assert_eq!(f.provider.step(req, log, cancel).await, StepResult::cancelled());
    }
}
