//! Runs under faults: a few resources of an exec kind with short steps are
//! driven through their states while nodes die, pause and lose the network,
//! so that steps are interrupted, taken over by new leaders and finished late
//! by old ones. Afterwards every run must have reached a terminal outcome
//! exactly once: nothing stays `running`, no step of an event runs twice, no
//! run that was seen finished changes its ending, every acknowledged event
//! has its run, and no run appears that nobody asked for.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tonic::{Code, Status};

use super::history::{classify, describe, ErrorClass};
use super::workload::{connect, Ctx};
use crate::api::{
    ApplyKindRequest, CreateResourceRequest, DoRequest, GetResourceRequest, HistoryRequest, ListRunsRequest, Run,
    RunOutcome,
};
use crate::kinds;
use crate::resources::finished_ms;

/// The kind every nemesis resource has ([`kinds::NEMESIS`]): an event `go`
/// runs two short work states in a chain (`a` then `b`) and comes back to
/// rest in `idle`.
pub const KIND_NAME: &str = "nemesis";

/// What an event (`Resources.Do`) was told.
#[derive(Clone, Debug)]
pub enum EventOutcome {
    /// Acknowledged; the run it started.
    Started(Option<String>),
    /// Certainly not applied.
    NotApplied(String),
    /// Refused by the resource's state (a run in flight, say): no effect.
    Refused(String),
    /// May or may not have happened.
    Unknown(String),
}

/// One event sent.
#[derive(Clone, Debug)]
pub struct EventOp {
    /// The resource's name.
    pub resource: String,
    /// The event's reason: unique, so its runs can be told apart.
    pub reason: String,
    /// The node it was sent to.
    pub node: String,
    /// When it was sent and answered, since the run's start.
    pub start: Duration,
    /// See `start`.
    pub end: Duration,
    /// What it was told.
    pub outcome: EventOutcome,
}

/// How a run ended, as first seen: must never change afterwards.
type Ending = (String, i64, u32, u64);

fn ending(run: &Run) -> Ending {
    (
        run.outcome().label().to_string(),
        finished_ms(run),
        run.attempt,
        run.node_id,
    )
}

/// What the driver recorded.
#[derive(Default)]
pub struct Records {
    /// Every event sent, in order.
    pub events: Vec<EventOp>,
    /// The reasons the resources were created with.
    pub creates: HashSet<String>,
    /// Each run's ending when first seen ended, and which resource it is of.
    pub endings: HashMap<String, (Ending, String)>,
    /// Changes seen while driving (a run ended twice).
    pub anomalies: Vec<String>,
}

impl Records {
    fn observe(&mut self, resource: &str, runs: &[Run]) {
        for run in runs {
            let seen = self.endings.get(&run.run_id).map(|(e, _)| e.clone());
            match (run.outcome().label(), seen) {
                ("running", None) => {}
                ("running", Some(first)) => self.anomalies.push(format!(
                    "run {} of {resource} was seen ended {first:?}, later running again (attempt {})",
                    run.run_id, run.attempt
                )),
                (_, None) => {
                    self.endings
                        .insert(run.run_id.clone(), (ending(run), resource.to_string()));
                }
                (_, Some(first)) if first != ending(run) => self.anomalies.push(format!(
                    "run {} of {resource} finished twice: first seen ended {first:?}, later {:?}",
                    run.run_id,
                    ending(run)
                )),
                _ => {}
            }
        }
    }
}

/// Registers the kind and creates `count` resources `r0`.. through `addr`,
/// retrying while the cluster is busy (it was just formed). Returns the
/// creation reasons.
pub async fn setup(addr: &str, count: usize, records: &Arc<Mutex<Records>>) -> Result<(), String> {
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut c = connect(addr);
    loop {
        match c
            .resources
            .apply_kind(ApplyKindRequest {
                source: kinds::NEMESIS.into(),
            })
            .await
        {
            Ok(_) => break,
            Err(e) if Instant::now() < deadline => {
                eprintln!("[nemesis] applying kind {KIND_NAME}: {} (retrying)", describe(&e));
                tokio::time::sleep(Duration::from_millis(200)).await
            }
            Err(e) => return Err(format!("applying kind {KIND_NAME} through {addr}: {}", describe(&e))),
        }
    }
    for r in 0..count {
        let name = format!("r{r}");
        let reason = format!("nemesis create {name}");
        loop {
            let result = c
                .resources
                .create(CreateResourceRequest {
                    kind: KIND_NAME.into(),
                    name: name.clone(),
                    spec: None,
                    labels: Default::default(),
                    reason: reason.clone(),
                })
                .await;
            match result {
                Ok(_) => break,
                Err(e) if e.code() == Code::AlreadyExists => break,
                Err(e) if Instant::now() < deadline => {
                    eprintln!("[nemesis] creating {KIND_NAME}/{name}: {} (retrying)", describe(&e));
                    tokio::time::sleep(Duration::from_millis(200)).await
                }
                Err(e) => return Err(format!("creating {KIND_NAME}/{name} through {addr}: {}", describe(&e))),
            }
        }
        records.lock().unwrap_or_else(|e| e.into_inner()).creates.insert(reason);
    }
    Ok(())
}

fn event_outcome(status: &Status) -> EventOutcome {
    let why = describe(status);
    match classify(status) {
        ErrorClass::NotApplied => EventOutcome::NotApplied(why),
        ErrorClass::Unknown if status.code() == Code::FailedPrecondition => EventOutcome::Refused(why),
        ErrorClass::Refused => EventOutcome::Refused(why),
        ErrorClass::Unknown => EventOutcome::Unknown(why),
    }
}

/// Drives `count` resources until the workload stops: reads a resource's
/// history (checking that ended runs stay ended), and if it rests, sends
/// `go` with a unique reason.
pub async fn drive(ctx: Ctx, count: usize, records: Arc<Mutex<Records>>) {
    let mut rng = ctx.rng.fork(3000);
    let mut pool: HashMap<String, crate::Clients> = HashMap::new();
    let mut seq = 0u64;
    while !ctx.stop.load(std::sync::atomic::Ordering::SeqCst) {
        let name = format!("r{}", rng.index(count));
        let Some(addr) = ctx.targets.pick(&mut rng) else {
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        let c = pool.entry(addr.clone()).or_insert_with(|| connect(&addr));
        let runs = match c
            .resources
            .history(HistoryRequest {
                kind: KIND_NAME.into(),
                name: name.clone(),
            })
            .await
        {
            Ok(r) => r.into_inner().runs,
            Err(_) => {
                tokio::time::sleep(rng.between(Duration::from_millis(50), Duration::from_millis(200))).await;
                continue;
            }
        };
        let busy = runs.iter().any(|r| r.outcome() == RunOutcome::Running);
        records.lock().unwrap_or_else(|e| e.into_inner()).observe(&name, &runs);
        if busy {
            tokio::time::sleep(rng.between(Duration::from_millis(50), Duration::from_millis(200))).await;
            continue;
        }
        let reason = format!("{} {name} go {seq}", ctx.label);
        seq += 1;
        let start = ctx.history.now();
        let result = c
            .resources
            .r#do(DoRequest {
                kind: KIND_NAME.into(),
                name: name.clone(),
                event: "go".into(),
                args: Default::default(),
                reason: reason.clone(),
            })
            .await;
        let end = ctx.history.now();
        let outcome = match result {
            Ok(change) => EventOutcome::Started(change.into_inner().run.map(|r| r.run_id)),
            Err(e) => event_outcome(&e),
        };
        records.lock().unwrap_or_else(|e| e.into_inner()).events.push(EventOp {
            resource: name,
            reason,
            node: addr,
            start,
            end,
            outcome,
        });
        tokio::time::sleep(rng.between(Duration::from_millis(50), Duration::from_millis(300))).await;
    }
}

/// What the run checks found.
#[derive(Debug, Default)]
pub struct RunFindings {
    /// Events sent.
    pub operations: usize,
    /// Events acknowledged.
    pub acknowledged: usize,
    /// Runs checked.
    pub runs: usize,
    /// Acknowledged events whose run is gone.
    pub lost: Vec<String>,
    /// Everything else that breaks the rules.
    pub anomalies: Vec<String>,
}

/// Runs a read until it succeeds, fails with anything but UNAVAILABLE, or
/// ten seconds have passed: after healing, a leader change may still be
/// settling, and that is not what the run checks are about.
async fn again<T, F, Fut>(mut read: F) -> Result<T, Status>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, Status>>,
{
    let started = Instant::now();
    loop {
        match read().await {
            Err(e) if e.code() == Code::Unavailable && started.elapsed() < Duration::from_secs(10) => {
                tokio::time::sleep(Duration::from_millis(200)).await
            }
            outcome => return outcome,
        }
    }
}

/// After healing: waits up to `settle` for every resource to rest, then
/// checks every run (see the module's doc) through `addr`.
pub async fn check(addr: &str, count: usize, records: &Records, settle: Duration) -> RunFindings {
    let mut f = RunFindings {
        operations: records.events.len(),
        acknowledged: records
            .events
            .iter()
            .filter(|e| matches!(e.outcome, EventOutcome::Started(_)))
            .count(),
        anomalies: records.anomalies.clone(),
        ..RunFindings::default()
    };
    let mut c = connect(addr);
    let started = Instant::now();
    for r in 0..count {
        let name = format!("r{r}");
        let mut last: String;
        loop {
            match c
                .resources
                .get(GetResourceRequest {
                    kind: KIND_NAME.into(),
                    name: name.clone(),
                    stale: false,
                })
                .await
            {
                Ok(res) => {
                    let res = res.into_inner();
                    if !res.working && res.active_run_id.is_empty() {
                        break;
                    }
                    last = format!("in state {} with run {:?} in flight", res.state, res.active_run_id);
                }
                Err(e) => last = describe(&e),
            }
            if started.elapsed() > settle {
                f.anomalies.push(format!(
                    "{KIND_NAME}/{name} does not come to rest {settle:?} after healing: {last}"
                ));
                break;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    let mut reported: HashSet<String> = HashSet::new();
    let running = again(|| {
        let mut c = c.clone();
        async move {
            c.resources
                .list_runs(ListRunsRequest {
                    outcome: RunOutcome::Running as i32,
                    limit: 1000,
                    ..Default::default()
                })
                .await
        }
    })
    .await;
    match running {
        Ok(r) => {
            for run in r.into_inner().runs {
                f.anomalies.push(format!(
                    "run {} of {}/{} ({} -> {}, event {:?}, attempt {}) is still running after healing",
                    run.run_id, run.kind, run.name, run.from, run.to, run.reason, run.attempt
                ));
                reported.insert(run.run_id);
            }
        }
        Err(e) => f
            .anomalies
            .push(format!("listing running runs after healing: {}", describe(&e))),
    }

    let mut sent: HashMap<&str, &EventOp> = HashMap::new();
    for e in &records.events {
        sent.insert(e.reason.as_str(), e);
    }
    for r in 0..count {
        let name = format!("r{r}");
        let history = again(|| {
            let (mut c, name) = (c.clone(), name.clone());
            async move {
                c.resources
                    .history(HistoryRequest {
                        kind: KIND_NAME.into(),
                        name,
                    })
                    .await
            }
        })
        .await;
        let runs = match history {
            Ok(h) => h.into_inner().runs,
            Err(e) => {
                f.anomalies
                    .push(format!("reading the history of {KIND_NAME}/{name}: {}", describe(&e)));
                continue;
            }
        };
        f.runs += runs.len();
        let mut ids: HashSet<&str> = HashSet::new();
        let mut steps: BTreeMap<(&str, &str, &str), Vec<&str>> = BTreeMap::new();
        for run in &runs {
            if !ids.insert(&run.run_id) {
                f.anomalies
                    .push(format!("run {} appears twice in the history of {name}", run.run_id));
            }
            if (run.outcome() == RunOutcome::Running || finished_ms(run) == 0) && !reported.contains(&run.run_id) {
                f.anomalies.push(format!(
                    "run {} of {name} has not ended after healing: outcome {:?}, finished at {}",
                    run.run_id,
                    run.outcome().label(),
                    finished_ms(run)
                ));
            }
            steps
                .entry((run.reason.as_str(), run.from.as_str(), run.to.as_str()))
                .or_default()
                .push(&run.run_id);
            if let Some((first, _)) = records.endings.get(&run.run_id) {
                if *first != ending(run) {
                    f.anomalies.push(format!(
                        "run {} of {name} finished twice: first seen ended {first:?}, after healing {:?}",
                        run.run_id,
                        ending(run)
                    ));
                }
            }
            match sent.get(run.reason.as_str()) {
                _ if records.creates.contains(&run.reason) => {}
                None => f.anomalies.push(format!(
                    "run {} of {name} has reason {:?}, which no event sent: a run nobody asked for",
                    run.run_id, run.reason
                )),
                Some(e) => match &e.outcome {
                    EventOutcome::NotApplied(why) | EventOutcome::Refused(why) => f.anomalies.push(format!(
                        "event {:?} on {name} was answered {why:?} (no effect), yet it has run {}",
                        e.reason, run.run_id
                    )),
                    _ => {}
                },
            }
        }
        for ((reason, from, to), ids) in &steps {
            if ids.len() > 1 {
                f.anomalies.push(format!(
                    "event {reason:?} on {name} ran the step {from} -> {to} {} times: runs {ids:?}",
                    ids.len()
                ));
            }
        }
        for e in records.events.iter().filter(|e| e.resource == name) {
            if let EventOutcome::Started(Some(run_id)) = &e.outcome {
                if !ids.contains(run_id.as_str()) {
                    f.lost.push(format!(
                        "event {:?} on {name}, acknowledged by {} with run {run_id}, has no such run after healing",
                        e.reason, e.node
                    ));
                }
            }
        }
    }
    f
}
