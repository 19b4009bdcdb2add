//! Resource calls every engine scenario makes: define a kind, create, do an
//! event, wait for the resource to rest, read runs. Each is retried while
//! UNAVAILABLE (an election), except the changes, which a test makes once
//! and checks.

use std::collections::HashMap;
use std::time::Duration;

use opsd_proto::json;
use opsd_proto::v1::{
    ApplyKindRequest, CancelRequest, CreateResourceRequest, DoRequest, GetResourceRequest, GetRunRequest,
    HistoryRequest, KindInfo, LogsRequest, Resource, ResourceChange, Run, StatsRequest, TransitionStats,
};
use tonic::Status;

pub use crate::client::PRINCIPAL;
use crate::client::{connect, retry_unavailable};
use crate::{kinds, wait_until};

/// A spec or outputs as the API returns them, as JSON (absent is `{}`).
pub fn json_of(object: Option<&opsd_proto::prost_types::Struct>) -> serde_json::Value {
    json::struct_value(object)
}

/// When a run finished, in milliseconds since the Unix epoch; 0 while it runs.
pub fn finished_ms(run: &Run) -> i64 {
    run.finished_at
        .as_ref()
        .map_or(0, |t| opsd_proto::time::timestamp_ms("finished_at", t).unwrap_or(0))
}

/// A JSON object as the API's Struct; anything but an object is a test bug.
pub fn spec_struct(spec: serde_json::Value) -> opsd_proto::prost_types::Struct {
    match spec {
        serde_json::Value::Object(object) => json::to_struct(object),
        other => panic!("a spec must be a JSON object, not {other}"),
    }
}

/// Registers a kind from its TOML source.
pub async fn apply_kind(addr: &str, source: &str) -> Result<KindInfo, Status> {
    retry_unavailable(|| async {
        connect(addr)
            .resources
            .apply_kind(ApplyKindRequest {
                source: source.to_string(),
            })
            .await
            .map(|r| r.into_inner())
    })
    .await
}

/// Creates a resource with a JSON spec.
pub async fn create(addr: &str, kind: &str, name: &str, spec: serde_json::Value) -> Result<ResourceChange, Status> {
    connect(addr)
        .resources
        .create(CreateResourceRequest {
            kind: kind.into(),
            name: name.into(),
            spec: Some(spec_struct(spec)),
            labels: HashMap::new(),
            reason: format!("create {name}"),
        })
        .await
        .map(|r| r.into_inner())
}

/// Does an event with arguments and a reason.
pub async fn do_event(
    addr: &str,
    kind: &str,
    name: &str,
    event: &str,
    args: &[(&str, &str)],
    reason: &str,
) -> Result<ResourceChange, Status> {
    connect(addr)
        .resources
        .r#do(DoRequest {
            kind: kind.into(),
            name: name.into(),
            event: event.into(),
            args: args.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
            reason: reason.into(),
        })
        .await
        .map(|r| r.into_inner())
}

/// Reads a resource (linearizable).
pub async fn get(addr: &str, kind: &str, name: &str) -> Result<Resource, Status> {
    retry_unavailable(|| async {
        connect(addr)
            .resources
            .get(GetResourceRequest {
                kind: kind.into(),
                name: name.into(),
                stale: false,
            })
            .await
            .map(|r| r.into_inner())
    })
    .await
}

/// Waits until the resource rests in a stable state (no run in flight).
pub async fn wait_resting(addr: &str, kind: &str, name: &str, timeout: Duration) -> Resource {
    let what = format!("{kind}/{name} to rest in a stable state");
    wait_for(addr, kind, name, &what, timeout, |r| {
        !r.working && r.active_run_id.is_empty()
    })
    .await
}

/// Waits until the resource is in `state`.
pub async fn wait_state(addr: &str, kind: &str, name: &str, state: &str, timeout: Duration) -> Resource {
    let what = format!("{kind}/{name} to be {state}");
    wait_for(addr, kind, name, &what, timeout, |r| r.state == state).await
}

/// Waits until the resource is as `done` wants it; `what` names the wait.
async fn wait_for(
    addr: &str,
    kind: &str,
    name: &str,
    what: &str,
    timeout: Duration,
    done: impl Fn(&Resource) -> bool,
) -> Resource {
    wait_until(what, timeout, Duration::from_millis(50), || async {
        let r = get(addr, kind, name).await.map_err(|e| e.to_string())?;
        if !done(&r) {
            return Err(format!("in {} (run {})", r.state, r.active_run_id));
        }
        Ok(r)
    })
    .await
    .0
}

/// One resource's runs, oldest first.
pub async fn history(addr: &str, kind: &str, name: &str) -> Result<Vec<Run>, Status> {
    retry_unavailable(|| async {
        connect(addr)
            .resources
            .history(HistoryRequest {
                kind: kind.into(),
                name: name.into(),
            })
            .await
            .map(|r| r.into_inner().runs)
    })
    .await
}

/// One run.
pub async fn run(addr: &str, run_id: &str) -> Result<Run, Status> {
    retry_unavailable(|| async {
        connect(addr)
            .resources
            .get_run(GetRunRequest { run_id: run_id.into() })
            .await
            .map(|r| r.into_inner())
    })
    .await
}

/// Asks a run to stop.
pub async fn cancel(addr: &str, run_id: &str) -> Result<Run, Status> {
    connect(addr)
        .resources
        .cancel(CancelRequest {
            run_id: run_id.into(),
            reason: "stop it".into(),
        })
        .await
        .map(|r| r.into_inner())
}

/// A run's stored log lines (not following).
pub async fn log_lines(addr: &str, run_id: &str) -> Result<Vec<String>, Status> {
    let mut stream = connect(addr)
        .resources
        .logs(LogsRequest {
            run_id: run_id.into(),
            follow: false,
        })
        .await?
        .into_inner();
    let mut lines = Vec::new();
    while let Some(msg) = stream.message().await? {
        lines.extend(msg.lines);
    }
    Ok(lines)
}

/// Defines [`kinds::LONG_STEP`], creates `long/task` and does `go` with
/// `reason`; returns the run once its step has logged its first line, so
/// that the node executing it can be killed in the middle of it.
pub async fn start_long_step(addr: &str, reason: &str) -> Run {
    apply_kind(addr, kinds::LONG_STEP).await.expect("apply the kind");
    create(addr, "long", "task", serde_json::json!({}))
        .await
        .expect("create");
    let run = do_event(addr, "long", "task", "go", &[], reason)
        .await
        .expect("go")
        .run
        .expect("a run");
    wait_until(
        "the step's first log line",
        Duration::from_secs(20),
        Duration::from_millis(50),
        || async {
            let lines = log_lines(addr, &run.run_id).await.map_err(|e| e.to_string())?;
            lines
                .iter()
                .any(|l| l.contains("attempt 1"))
                .then_some(())
                .ok_or(format!("{lines:?}"))
        },
    )
    .await;
    run
}

/// Stats of a kind.
pub async fn stats(addr: &str, kind: &str) -> Result<Vec<TransitionStats>, Status> {
    retry_unavailable(|| async {
        connect(addr)
            .resources
            .stats(StatsRequest {
                kind: kind.into(),
                since: None,
            })
            .await
            .map(|r| r.into_inner().transitions)
    })
    .await
}

/// Deletes a resource (through its destroy path unless it is final).
pub async fn delete(addr: &str, kind: &str, name: &str) -> Result<ResourceChange, Status> {
    connect(addr)
        .resources
        .delete(opsd_proto::v1::DeleteResourceRequest {
            kind: kind.into(),
            name: name.into(),
            reason: "done".into(),
        })
        .await
        .map(|r| r.into_inner())
}
