//! The test fixture of the local provider's steps: a source directory, a
//! provider rooted in a temporary directory, a registry double, and a guard
//! that kills every machine a test started, even a failing one.

use std::collections::HashMap;
use std::fs;
use std::net::TcpStream;
use std::os::unix::fs::{symlink, PermissionsExt};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use nix::sys::signal::{killpg, Signal};
use nix::unistd::Pid;
use serde_json::Value;
use tokio_util::sync::CancellationToken;

use super::machines::{is_running, Machine};
use super::LocalProvider;
use crate::domain::kind::builtin;
use crate::ops::{LogSink, Object, Provider, ResourceLookup, StepRequest, StepResult};

/// A test double for the registry: resources by (kind, name).
#[derive(Default)]
pub(crate) struct RegistryDouble {
    resources: Mutex<HashMap<(String, String), (String, Object)>>,
}

impl RegistryDouble {
    pub(crate) fn put(&self, kind: &str, name: &str, state: &str, outputs: Object) {
        self.resources
            .lock()
            .unwrap()
            .insert((kind.into(), name.into()), (state.into(), outputs));
    }
}

impl ResourceLookup for RegistryDouble {
    fn lookup(&self, kind: &str, name: &str) -> Option<(String, Object)> {
        self.resources.lock().unwrap().get(&(kind.into(), name.into())).cloned()
    }
}

pub(crate) struct Fixture {
    _tmp: tempfile::TempDir,
    /// A source directory for images.
    pub source: PathBuf,
    /// The provider's root.
    pub root: PathBuf,
    /// What the provider looks resources up in.
    pub registry: Arc<RegistryDouble>,
    /// The provider under test.
    pub provider: LocalProvider,
    /// Every machine a test saw, killed when the test ends.
    seen: Mutex<Vec<Machine>>,
}

/// A failing test must not leave machines running: kill every group
/// the clusters' record files name.
impl Drop for Fixture {
    fn drop(&mut self) {
        let mut all = self.seen.lock().map(|s| s.clone()).unwrap_or_default();
        if let Ok(clusters) = fs::read_dir(self.root.join("clusters")) {
            for c in clusters.flatten() {
                let Ok(bytes) = fs::read(c.path().join("machines.json")) else {
                    continue;
                };
                all.extend(serde_json::from_slice::<Vec<Machine>>(&bytes).unwrap_or_default());
            }
        }
        for m in all {
            if let (true, Some(pid)) = (is_running(&m), m.pid) {
                let _ = killpg(Pid::from_raw(pid), Signal::SIGKILL);
            }
        }
    }
}

pub(crate) fn fixture() -> Fixture {
    let tmp = tempfile::tempdir().unwrap();
    let source = tmp.path().join("src");
    fs::create_dir_all(source.join("sub")).unwrap();
    fs::write(source.join("index.html"), "hello from the image\n").unwrap();
    fs::write(source.join("sub/run.sh"), "#!/bin/sh\necho run\n").unwrap();
    fs::set_permissions(source.join("sub/run.sh"), fs::Permissions::from_mode(0o750)).unwrap();
    symlink("index.html", source.join("link.html")).unwrap();
    let root = tmp.path().join("data/local");
    let registry = Arc::new(RegistryDouble::default());
    let provider = LocalProvider::new(root.clone(), registry.clone(), "127.0.0.1");
    Fixture {
        source,
        root,
        registry,
        provider,
        seen: Mutex::new(Vec::new()),
        _tmp: tmp,
    }
}

/// A request for the step of `state` of the built-in `kind`, as the engine
/// would make it: the step named by the kind file.
pub(crate) fn request(kind: &str, name: &str, state: &str, spec: Value, outputs: &Object, run_id: &str) -> StepRequest {
    StepRequest {
        kind: kind.into(),
        name: name.into(),
        spec: spec.as_object().cloned().unwrap_or_default(),
        outputs: outputs.clone(),
        args: Default::default(),
        event: "create".into(),
        state: state.into(),
        run_id: run_id.into(),
        attempt: 1,
        step: builtin(kind).and_then(|k| k.state(state).and_then(|s| s.step.clone())),
        run: None,
        work_dir: std::env::temp_dir(),
        node_id: 1,
        settings: Default::default(),
    }
}

pub(crate) async fn step(p: &LocalProvider, req: StepRequest) -> (StepResult, Vec<String>) {
    let (log, mut rx) = LogSink::channel();
    let r = p.step(req, log, CancellationToken::new()).await;
    let mut lines = Vec::new();
    while let Ok(l) = rx.try_recv() {
        lines.push(l);
    }
    (r, lines)
}

/// Runs a step that must succeed, merging its outputs into `outputs`.
pub(crate) async fn ok(p: &LocalProvider, req: StepRequest, outputs: &mut Object) -> Vec<String> {
    let what = format!("{}/{} {}", req.kind, req.name, req.state);
    let (r, lines) = step(p, req).await;
    match r {
        StepResult::Succeeded { outputs: o } => outputs.extend(o),
        other => panic!("{what} did not succeed: {other:?}\n{lines:#?}"),
    }
    lines
}

pub(crate) fn error_of(r: StepResult) -> String {
    match r {
        StepResult::Failed { error, .. } => error,
        other => panic!("expected a failure, got {other:?}"),
    }
}

/// Builds image `name` (pending + building) and registers it as built.
pub(crate) async fn build_image(f: &Fixture, name: &str, spec: Value) -> Object {
    let mut outputs = Object::new();
    ok(
        &f.provider,
        request("image", name, "pending", spec.clone(), &outputs, "run-1"),
        &mut outputs,
    )
    .await;
    ok(
        &f.provider,
        request("image", name, "building", spec, &outputs, "run-2"),
        &mut outputs,
    )
    .await;
    f.registry.put("image", name, "built", outputs.clone());
    outputs
}

impl Fixture {
    /// The machines in a cluster's outputs, remembered for cleanup.
    pub(crate) fn machines(&self, outputs: &Object) -> Vec<Machine> {
        let ms: Vec<Machine> = serde_json::from_value(outputs["machines"].clone()).unwrap();
        self.seen.lock().unwrap().extend(ms.iter().cloned());
        ms
    }
}

pub(crate) fn accepts(port: u16) -> bool {
    TcpStream::connect(("127.0.0.1", port)).is_ok()
}

pub(crate) async fn wait_until(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
