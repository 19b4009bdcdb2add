//! Providers: the code that makes a work state real. A provider's step is one
//! async function that does the work and says success or failure with
//! outputs; recording, retries, cancellation, timeouts, logs and takeover
//! belong to the engine. Steps must be idempotent (a step may run again after
//! a leader change) and must return promptly once their cancellation token
//! fires.
//!
//! A provider is a plug-in: it implements [`Provider`] (its name, a check of
//! the kinds that name it, its step) and is registered in [`Providers`] when
//! the node starts. Which providers exist is this node's business: the API
//! checks a kind against them before proposing it; apply never does.

pub mod docker;
pub mod ec2;
pub mod exec;
pub mod fields;
pub mod files;
pub mod local;
pub mod process;
pub mod selfdeploy;
pub mod service;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use serde_json::{Map, Value};
use tokio::sync::{mpsc, Notify};
use tokio_util::sync::CancellationToken;

use crate::domain::kind::Kind;
use crate::domain::Rejection;

/// A JSON object: a resource's spec or outputs.
pub type Object = Map<String, Value>;

/// The spec key naming the provider of one resource, overriding its kind's
/// default (`opsctl create cluster web --set provider=docker ...`).
pub const PROVIDER_KEY: &str = "provider";

/// [`PROVIDER_KEY`] as errors name it.
const PROVIDER_KEY_FIELD: &str = "spec.provider";

/// What a step gets to work on.
#[derive(Debug, Clone)]
pub struct StepRequest {
    /// The resource's kind.
    pub kind: String,
    /// The resource's name.
    pub name: String,
    /// What the user asked for.
    pub spec: Object,
    /// What earlier steps reported.
    pub outputs: Object,
    /// The arguments of the event that started the chain of runs.
    pub args: BTreeMap<String, String>,
    /// The event that started the chain (`create` for the first one).
    pub event: String,
    /// The work state being entered, whose step this is.
    pub state: String,
    /// The run this step belongs to.
    pub run_id: String,
    /// 1 for the first execution, +1 for each takeover by a new leader.
    pub attempt: u32,
    /// The state's `step`: which of its steps the provider runs.
    pub step: Option<String>,
    /// The state's `run`: the script, for the exec provider.
    pub run: Option<String>,
    /// A scratch directory for this attempt, created and owned by the engine.
    pub work_dir: PathBuf,
    /// The node executing the step.
    pub node_id: u64,
    /// The settings in scope for the resource (docs/services.md, "Settings
    /// in scope"): key (without its scope prefix) to value, the most
    /// specific scope winning.
    pub settings: BTreeMap<String, String>,
}

/// One machine of a resource, as the acceptance checks and the load balancer
/// see it: read from the resource's `outputs.machines`, whichever provider
/// made it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MachineAddr {
    /// Its number in the resource (`index`).
    pub index: u64,
    /// Where it listens, `HOST:PORT` (`address`; a record without one, from
    /// an older build, is taken to listen on 127.0.0.1:`port`).
    pub address: String,
}

/// The machines recorded in a resource's outputs (`outputs.machines`, an
/// array of objects with `index` and `address`), in order; entries without
/// an index or an address are skipped.
pub fn machines_of(outputs: &Object) -> Vec<MachineAddr> {
    let Some(Value::Array(items)) = outputs.get("machines") else {
        return Vec::new();
    };
    items
        .iter()
        .filter_map(|m| {
            let index = m.get("index")?.as_u64()?;
            let address = match (
                m.get("address").and_then(Value::as_str),
                m.get("port").and_then(Value::as_u64),
            ) {
                (Some(a), _) => a.to_string(),
                (None, Some(port)) => format!("127.0.0.1:{port}"),
                (None, None) => return None,
            };
            Some(MachineAddr { index, address })
        })
        .collect()
}

/// How a step ended.
#[derive(Debug, Clone, PartialEq)]
pub enum StepResult {
    /// The work is done; `outputs` are merged into the resource's.
    Succeeded {
        /// Keys to merge into the resource's outputs.
        outputs: Object,
    },
    /// The work failed, for the reason in `error`.
    Failed {
        /// What went wrong, for the run record.
        error: String,
        /// Outputs reported before the failure (kept with the run).
        outputs: Object,
    },
    /// The step stopped because its cancellation token fired. The engine
    /// decides what that means (a user's cancel, a timeout).
    Cancelled {
        /// Outputs reported before it stopped (what it already started).
        outputs: Object,
    },
}

impl StepResult {
    /// A failure without outputs.
    pub fn failed(error: impl Into<String>) -> Self {
        StepResult::Failed {
            error: error.into(),
            outputs: Object::new(),
        }
    }

    /// A step that stopped, or did not begin, because it was cancelled, with
    /// no outputs.
    pub fn cancelled() -> Self {
        StepResult::Cancelled { outputs: Object::new() }
    }
}

/// Why a step, or a piece of one, did not finish: shared by the helpers a
/// step calls, so cancellation travels as a value, never as a message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StepError {
    /// The work failed, for this reason (a line naming what failed).
    #[error("{0}")]
    Failed(String),
    /// The step's cancellation token fired.
    #[error("cancelled")]
    Cancelled,
}

impl From<String> for StepError {
    fn from(error: String) -> Self {
        StepError::Failed(error)
    }
}

impl From<&str> for StepError {
    fn from(error: &str) -> Self {
        StepError::Failed(error.to_string())
    }
}

/// Why a step failed or stopped, with the outputs it reports anyway (the
/// machines it started before failing, so a destroy can find them; the
/// checks that failed).
pub(crate) struct Fail {
    /// Why.
    pub error: StepError,
    /// What to keep with the run and merge into the resource's outputs.
    pub outputs: Object,
}

impl From<StepError> for Fail {
    fn from(error: StepError) -> Self {
        Fail {
            error,
            outputs: Object::new(),
        }
    }
}

impl From<String> for Fail {
    fn from(error: String) -> Self {
        Fail::from(StepError::Failed(error))
    }
}

impl From<&str> for Fail {
    fn from(error: &str) -> Self {
        Fail::from(error.to_string())
    }
}

/// A step function's result as the engine takes it.
pub(crate) fn step_result(out: Result<Object, Fail>) -> StepResult {
    match out {
        Ok(outputs) => StepResult::Succeeded { outputs },
        Err(Fail {
            error: StepError::Failed(error),
            outputs,
        }) => StepResult::Failed { error, outputs },
        Err(Fail {
            error: StepError::Cancelled,
            outputs,
        }) => StepResult::Cancelled { outputs },
    }
}

/// Where a step writes its log lines; the engine stores them with the run
/// and streams them to anyone following. Cheap to clone.
#[derive(Debug, Clone)]
pub struct LogSink {
    tx: mpsc::UnboundedSender<String>,
    room: Option<Arc<LogRoom>>,
}

/// How many lines a bounded sink holds that its reader has not taken yet,
/// held by both the sink and its reader.
#[derive(Debug)]
pub struct LogRoom {
    queued: AtomicUsize,
    limit: usize,
    taken: Notify,
}

impl LogRoom {
    /// The reader took one line.
    pub fn took_one(&self) {
        if self.queued.fetch_sub(1, Ordering::AcqRel) <= self.limit {
            self.taken.notify_waiters();
        }
    }
}

impl LogSink {
    /// A sink and the receiving end the engine drains.
    pub fn channel() -> (LogSink, mpsc::UnboundedReceiver<String>) {
        let (tx, rx) = mpsc::unbounded_channel();
        (LogSink { tx, room: None }, rx)
    }

    /// A sink whose [`LogSink::room`] waits while `limit` lines are queued;
    /// the reader calls [`LogRoom::took_one`] for every line it receives.
    pub fn bounded(limit: usize) -> (LogSink, mpsc::UnboundedReceiver<String>, Arc<LogRoom>) {
        let (tx, rx) = mpsc::unbounded_channel();
        let room = Arc::new(LogRoom {
            queued: AtomicUsize::new(0),
            limit,
            taken: Notify::new(),
        });
        let sink = LogSink {
            tx,
            room: Some(room.clone()),
        };
        (sink, rx, room)
    }

    /// Writes one line (a trailing newline is not needed). Lines written
    /// after the run ended are dropped.
    pub fn line(&self, line: impl Into<String>) {
        // Counted before it is sent, so the reader never takes it first.
        if let Some(room) = &self.room {
            room.queued.fetch_add(1, Ordering::AcqRel);
        }
        if self.tx.send(line.into()).is_err() {
            if let Some(room) = &self.room {
                room.queued.fetch_sub(1, Ordering::AcqRel);
            }
        }
    }

    /// Waits until a bounded sink's reader has caught up (or is gone): a
    /// step copying a process's output calls it before each read, so a
    /// flood of lines waits in the pipe, not in memory.
    pub async fn room(&self) {
        let Some(room) = &self.room else { return };
        loop {
            let taken = room.taken.notified();
            if room.queued.load(Ordering::Acquire) < room.limit || self.tx.is_closed() {
                return;
            }
            taken.await;
        }
    }
}

/// Looks up another resource a step depends on (a cluster's image, say):
/// its state and outputs as applied on this node.
pub trait ResourceLookup: Send + Sync {
    /// The resource's current state and outputs, or `None` if it does not exist.
    fn lookup(&self, kind: &str, name: &str) -> Option<(String, Object)>;

    /// The outputs of the image `name` a cluster runs, which must exist and
    /// be built: every provider of the `cluster` kind finds its image so.
    fn built_image(&self, name: &str) -> Result<Object, String> {
        match self.lookup("image", name) {
            None => Err(format!("image {name} does not exist")),
            Some((state, outputs)) if state == "built" => Ok(outputs),
            Some((state, _)) => Err(format!("image {name} is {state}, not built")),
        }
    }

    /// The resource's spec, or `None` if it does not exist.
    fn spec(&self, kind: &str, name: &str) -> Option<Object> {
        let _ = (kind, name);
        None
    }

    /// The settings in scope of the resource (as a step of its own gets
    /// them in [`StepRequest::settings`]).
    fn settings(&self, kind: &str, name: &str) -> BTreeMap<String, String> {
        let _ = (kind, name);
        BTreeMap::new()
    }
}

/// The provider contract: what a plug-in implements to make the work states
/// of the kinds naming it real.
#[async_trait::async_trait]
pub trait Provider: Send + Sync {
    /// The name kinds use for it (`provider = "NAME"`).
    fn name(&self) -> &'static str;

    /// Checks a kind naming this provider: that it declares what the
    /// provider needs (a script, a step it has) and nothing it would ignore.
    /// Run at the API before the kind is proposed; the error names the kind,
    /// the state and the key, as kind files' errors do.
    fn check_kind(&self, kind: &Kind) -> Result<(), String>;

    /// Checks an event about to be done to a resource of a kind naming this
    /// provider, whose state takes the event: the resource's `outputs` and
    /// the event's `args`, as the receiving node applied them. Refusing here
    /// changes nothing and records no run; the step checks again when it
    /// runs (the state may change in between). Most providers accept all.
    fn check_event(&self, outputs: &Object, event: &str, args: &BTreeMap<String, String>) -> Result<(), Rejection> {
        let _ = (outputs, event, args);
        Ok(())
    }

    /// Checks the spec of a new resource of `kind` (a kind naming this
    /// provider) before anything is written: what the provider's steps would
    /// refuse later, refused at once. Run at the API's create; the error
    /// names the field (`spec.checks[0].type: ...`). By default every spec
    /// passes.
    fn check_spec(&self, kind: &Kind, spec: &Object) -> Result<(), String> {
        let _ = (kind, spec);
        Ok(())
    }

    /// Runs the step of `req.state`. Returns when the work is done, has
    /// failed, or `cancel` fired (then [`StepResult::Cancelled`], with the
    /// outputs of what it already did).
    async fn step(&self, req: StepRequest, log: LogSink, cancel: CancellationToken) -> StepResult;
}

/// The providers this node has, by name: built when the node starts, used by
/// the engine to run steps and by the API to check kinds. Cheap to clone.
#[derive(Clone, Default)]
pub struct Providers {
    by_name: BTreeMap<&'static str, Arc<dyn Provider>>,
}

impl Providers {
    /// The registry of `providers` (a later one replaces an earlier one of
    /// the same name).
    pub fn new(providers: impl IntoIterator<Item = Arc<dyn Provider>>) -> Self {
        Providers {
            by_name: providers.into_iter().map(|p| (p.name(), p)).collect(),
        }
    }

    /// The provider called `name`, if this node has it.
    pub fn get(&self, name: &str) -> Option<&Arc<dyn Provider>> {
        self.by_name.get(name)
    }

    /// The names of the providers this node has, sorted.
    pub fn names(&self) -> Vec<&'static str> {
        self.by_name.keys().copied().collect()
    }

    /// The provider that runs the steps of a resource of `kind` with `spec`:
    /// the one its spec names (`spec.provider`, docs/providers.md), else its
    /// kind's (`provider = "..."`, the default for the kind's resources). A
    /// provider named by the spec must exist on this node and accept the
    /// kind (it has the steps the kind's states name); the error names
    /// `spec.provider`.
    pub fn for_resource(&self, kind: &Kind, spec: &Object) -> Result<&Arc<dyn Provider>, String> {
        let name = match spec.get(PROVIDER_KEY) {
            None | Some(Value::Null) => {
                return self.get(&kind.provider).ok_or_else(|| {
                    format!(
                        "provider {:?} of kind {} is not available on this node (it has: {})",
                        kind.provider,
                        kind.name,
                        self.names().join(", ")
                    )
                })
            }
            Some(Value::String(name)) => name,
            Some(v) => return Err(format!("{PROVIDER_KEY_FIELD}: must be the name of a provider, not {v}")),
        };
        let provider = self.get(name).ok_or_else(|| {
            format!(
                "{PROVIDER_KEY_FIELD}: unknown provider {name:?} (this node has: {})",
                self.names().join(", ")
            )
        })?;
        if *name != kind.provider {
            provider.check_kind(kind).map_err(|e| {
                format!(
                    "{PROVIDER_KEY_FIELD}: the {name} provider cannot run kind {}: {e}",
                    kind.name
                )
            })?;
        }
        Ok(provider)
    }

    /// Checks that this node has the kind's provider and that the provider
    /// accepts the kind. The error names the kind and the key at fault.
    pub fn check(&self, kind: &Kind) -> Result<(), String> {
        match self.get(&kind.provider) {
            Some(provider) => provider.check_kind(kind),
            None => Err(format!(
                "kind {:?}: provider: unknown provider {:?} (this node has: {})",
                kind.name,
                kind.provider,
                self.names().join(", ")
            )),
        }
    }
}

/// The steps of the built-in `image` and `cluster` kinds (`step = "NAME"`),
/// which every provider of machines (`local`, `docker`, `ec2`) runs, each
/// with its own meaning.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MachineStep {
    /// An image: takes a copy of its source.
    CopySource,
    /// An image: builds it from the copy.
    BuildImage,
    /// An image: removes what was built.
    RemoveImage,
    /// A cluster: every machine index has a running machine of its image.
    StartMachines,
    /// A cluster: its stopped machines run again.
    RestartMachines,
    /// A cluster: stops its machines, keeping them.
    StopMachines,
    /// A cluster: removes its machines and what was made for them.
    DestroyMachines,
    /// A cluster: its acceptance checks against its machines.
    VerifyMachines,
}

/// The machine steps by name: the dispatch table of a provider of machines.
pub const MACHINE_STEPS: [(&str, MachineStep); 8] = [
    ("copy_source", MachineStep::CopySource),
    ("build_image", MachineStep::BuildImage),
    ("remove_image", MachineStep::RemoveImage),
    ("start_machines", MachineStep::StartMachines),
    ("restart_machines", MachineStep::RestartMachines),
    ("stop_machines", MachineStep::StopMachines),
    ("destroy_machines", MachineStep::DestroyMachines),
    ("verify_machines", MachineStep::VerifyMachines),
];

/// The steps of a provider whose work states name the step they run
/// (`step = "NAME"` in the kind file: `local`, `docker`, `ec2`): the one
/// table each such provider keeps, checking kinds against it and finding the
/// step of a request in it, so the provider itself only says what each step
/// does.
pub struct NamedSteps<S: 'static> {
    /// The provider's name, for messages.
    provider: &'static str,
    /// Each step with its name.
    steps: &'static [(&'static str, S)],
}

impl<S: Copy> NamedSteps<S> {
    /// The table of `provider`'s `steps`.
    pub const fn new(provider: &'static str, steps: &'static [(&'static str, S)]) -> Self {
        NamedSteps { provider, steps }
    }

    /// The step called `name`, if there is one.
    pub fn named(&self, name: &str) -> Option<S> {
        self.steps.iter().find(|(n, _)| *n == name).map(|(_, s)| *s)
    }

    /// The names of every step, for messages.
    fn names(&self) -> String {
        self.steps.iter().map(|(n, _)| *n).collect::<Vec<_>>().join(", ")
    }

    /// Checks a kind: every work state names one of these steps, and no
    /// state has a script. The error names the state and the key.
    pub fn check_kind(&self, kind: &Kind) -> Result<(), String> {
        refuse_run(kind)?;
        for (name, state) in kind.states.iter().filter(|(_, s)| s.work) {
            match state.step.as_deref() {
                None => {
                    return Err(state_error(
                        kind,
                        name,
                        "step",
                        format_args!(
                            "missing: a work state of a {} kind names the step it runs (one of {})",
                            self.provider,
                            self.names()
                        ),
                    ))
                }
                Some(step) if self.named(step).is_none() => {
                    return Err(state_error(
                        kind,
                        name,
                        "step",
                        format_args!(
                            "unknown step {step:?} (the {} provider has: {})",
                            self.provider,
                            self.names()
                        ),
                    ))
                }
                Some(_) => {}
            }
        }
        Ok(())
    }

    /// The step `req` runs, or what the step ends with instead: cancelled
    /// before it began, or failed because its state names no step of ours.
    pub fn to_run(&self, req: &StepRequest, cancel: &CancellationToken) -> Result<S, StepResult> {
        if cancel.is_cancelled() {
            return Err(StepResult::cancelled());
        }
        match req.step.as_deref() {
            Some(name) => self.named(name).ok_or_else(|| {
                StepResult::failed(format!(
                    "the {} provider has no step {name:?} (state {} of kind {})",
                    self.provider, req.state, req.kind
                ))
            }),
            None => Err(StepResult::failed(format!(
                "state {} of kind {} names no step (the {} provider runs the step a work state names)",
                req.state, req.kind, self.provider
            ))),
        }
    }
}

/// Whether a work state of `kind` runs the step `name` (which spec checks a
/// provider's `check_spec` applies follows from the steps a kind uses).
pub fn uses_step(kind: &Kind, name: &str) -> bool {
    kind.states.values().any(|s| s.step.as_deref() == Some(name))
}

/// `kind "K": state "S": KEY: MESSAGE`, the form of kind errors, for
/// providers' checks.
pub fn state_error(kind: &Kind, state: &str, key: &str, message: impl std::fmt::Display) -> String {
    format!("kind {:?}: state {state:?}: {key}: {message}", kind.name)
}

/// Refuses `run` on every state of a kind whose provider runs no scripts.
pub fn refuse_run(kind: &Kind) -> Result<(), String> {
    match kind.states.iter().find(|(_, s)| s.run.is_some()) {
        Some((name, _)) => Err(state_error(
            kind,
            name,
            "run",
            format_args!(
                "only the exec provider runs scripts (this kind's provider is {:?})",
                kind.provider
            ),
        )),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::test_kinds::small_app;

    #[tokio::test]
    async fn a_bounded_sink_waits_for_its_reader() {
        let (log, mut rx, room) = LogSink::bounded(2);
        log.line("a");
        log.room().await;
        log.line("b");
        let waiting = tokio::spawn({
            let log = log.clone();
            async move { log.room().await }
        });
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        assert!(!waiting.is_finished(), "two lines queued: no room");
        assert_eq!(rx.recv().await.as_deref(), Some("a"));
        room.took_one();
        tokio::time::timeout(std::time::Duration::from_secs(5), waiting)
            .await
            .expect("room once a line was taken")
            .unwrap();
        // A reader that is gone never keeps the step waiting.
        log.line("c");
        drop(rx);
        log.room().await;
    }

    struct Named(&'static str);

    #[async_trait::async_trait]
    impl Provider for Named {
        fn name(&self) -> &'static str {
            self.0
        }
        fn check_kind(&self, kind: &Kind) -> Result<(), String> {
            refuse_run(kind)
        }
        async fn step(&self, _: StepRequest, _: LogSink, _: CancellationToken) -> StepResult {
            StepResult::failed("not a real provider")
        }
    }

    fn kind(provider: &str) -> Kind {
        Kind::parse(&small_app(provider, "")).unwrap()
    }

    #[test]
    fn an_unknown_provider_is_refused_naming_the_known_ones() {
        let providers = Providers::new([Arc::new(Named("local")) as Arc<dyn Provider>, Arc::new(Named("exec"))]);
        assert_eq!(providers.names(), ["exec", "local"]);
        assert_eq!(
            providers.check(&kind("docker")),
            Err("kind \"app\": provider: unknown provider \"docker\" (this node has: exec, local)".into())
        );
        providers.check(&kind("local")).unwrap();
        assert!(providers.get("docker").is_none());
        assert_eq!(providers.get("exec").map(|p| p.name()), Some("exec"));
    }

    #[test]
    fn a_spec_may_name_another_provider_that_can_run_the_kind() {
        /// A provider refusing every kind, as one lacking the kind's steps does.
        struct Refusing;
        #[async_trait::async_trait]
        impl Provider for Refusing {
            fn name(&self) -> &'static str {
                "picky"
            }
            fn check_kind(&self, _: &Kind) -> Result<(), String> {
                Err("it has no step build_image".into())
            }
            async fn step(&self, _: StepRequest, _: LogSink, _: CancellationToken) -> StepResult {
                StepResult::failed("not a real provider")
            }
        }
        let providers = Providers::new([
            Arc::new(Named("local")) as Arc<dyn Provider>,
            Arc::new(Named("docker")),
            Arc::new(Refusing),
        ]);
        let app = kind("local");
        let spec = |v: serde_json::Value| v.as_object().cloned().unwrap();
        let name = |spec: Object| providers.for_resource(&app, &spec).map(|p| p.name());
        assert_eq!(name(spec(serde_json::json!({}))), Ok("local"));
        assert_eq!(name(spec(serde_json::json!({"provider": null}))), Ok("local"));
        assert_eq!(name(spec(serde_json::json!({"provider": "docker"}))), Ok("docker"));
        assert_eq!(
            name(spec(serde_json::json!({"provider": "ec2"}))),
            Err("spec.provider: unknown provider \"ec2\" (this node has: docker, local, picky)".into())
        );
        assert_eq!(
            name(spec(serde_json::json!({"provider": 7}))),
            Err("spec.provider: must be the name of a provider, not 7".into())
        );
        assert_eq!(
            name(spec(serde_json::json!({"provider": "picky"}))),
            Err("spec.provider: the picky provider cannot run kind app: it has no step build_image".into())
        );
        let only_docker = Providers::new([Arc::new(Named("docker")) as Arc<dyn Provider>]);
        assert_eq!(
            only_docker.for_resource(&app, &Object::new()).map(|p| p.name()),
            Err("provider \"local\" of kind app is not available on this node (it has: docker)".into())
        );
    }

    #[test]
    fn a_known_provider_checks_the_kind() {
        let providers = Providers::new([Arc::new(Named("local")) as Arc<dyn Provider>]);
        let with_run = Kind::parse(&small_app("local", "run = \"make\"\n")).unwrap();
        let e = providers.check(&with_run).unwrap_err();
        assert!(
            e.starts_with("kind \"app\": state \"building\": run: only the exec provider"),
            "{e}"
        );
    }
}
