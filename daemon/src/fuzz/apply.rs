//! Apply of arbitrary commands on arbitrary state: sequences of structured
//! commands (of every variant, on names the state has, so they reach deep)
//! mixed with commands of arbitrary fields, raw garbage entries and leader
//! changes, applied to a real state on rocksdb. After every step: no panic;
//! a rejected, skipped or refused command changed nothing; the invariants
//! hold. At the end, a second state that applied the same sequence holds
//! the same bytes (apply is deterministic).
//!
//! A new command variant gets a line in [`structured`] (and one in
//! `command::any_command`).

use std::cell::RefCell;
use std::collections::BTreeMap;

use proptest::collection::vec;
use proptest::prelude::*;
use proptest::sample::select;

use super::command::{any_command, run_end};
use super::strategies::{bytes, map, number, one_of, signed, text};
use super::{fuzz, regressions, Harness};
use crate::domain::kind::Kind;
use crate::domain::resources::{self, compile_kind, RunEnd, RunOutcome};
use crate::domain::settings;
use crate::domain::test_kinds::{APP_LIFECYCLE, DB_BACKUP, DESIGN_EXAMPLE, SMALL_APP};
use crate::domain::testing::TestState;
use crate::domain::{Command, DomainEvent, Outcome, Trigger, TABLES};

/// The kinds commands name: the test kinds, the built-in ones, and none.
const KINDS: &[&str] = &[
    "app",
    "db-backup",
    "image",
    "cluster",
    "service",
    "opsd-cluster",
    "nokind",
];
/// The resources commands name.
const NAMES: &[&str] = &["web", "db", "a"];
/// Every event of those kinds, `create`, and none.
const EVENTS: &[&str] = &[
    "deploy",
    "pause",
    "destroy",
    "resume",
    "retry",
    "again",
    "clean_up",
    "rebuild",
    "stop",
    "verify",
    "start",
    "adopt",
    "swap",
    "swap-back",
    "create",
    "nope",
];
/// Setting keys, scoped and not.
const KEYS: &[&str] = &["a", "b", "app/web/x", "kinds/app/y"];
/// A spec with every key the kinds require.
const FULL_SPEC: &str =
    r#"{"replicas":2,"database":"d","bucket":"b","image":"i","size":1,"source":"s","port":8080,"cluster":"c"}"#;

fn trigger() -> impl Strategy<Value = Trigger> {
    prop_oneof![
        8 => (0i64..100_000).prop_map(|at_ms| Trigger {
            principal: "alice".into(),
            reason: "fuzz".into(),
            source: "api".into(),
            at_ms,
        }),
        1 => super::command::trigger(),
    ]
}

/// The kinds a `PutKind` carries: compiled test kinds (as the API compiles
/// them), and a built-in name, which apply must refuse.
fn kind_command() -> impl Strategy<Value = Command> {
    let mut compiled: Vec<(String, Kind)> = [APP_LIFECYCLE, SMALL_APP, DB_BACKUP]
        .into_iter()
        .map(|s| (s.to_string(), compile_kind(s).expect("a test kind compiles")))
        .collect();
    compiled.push((
        DESIGN_EXAMPLE.to_string(),
        Kind::parse(DESIGN_EXAMPLE).expect("the design example parses"),
    ));
    select(compiled).prop_map(|(source, kind)| Command::PutKind { source, kind })
}

fn builtin_command() -> impl Strategy<Value = Command> {
    let builtins: Vec<(String, Kind)> = crate::domain::kind::BUILTIN
        .iter()
        .map(|(name, source)| (source.to_string(), resources::embedded_kind(name)))
        .collect();
    (select(builtins), 0u64..8).prop_map(|((source, kind), revision)| Command::PutBuiltinKind {
        source,
        kind,
        revision,
    })
}

fn spec() -> impl Strategy<Value = String> {
    prop_oneof![
        6 => Just(FULL_SPEC.to_string()),
        1 => Just("{}".to_string()),
        1 => Just("[1]".to_string()),
        1 => text(),
    ]
}

fn end() -> impl Strategy<Value = RunEnd> {
    prop_oneof![
        6 => select(vec!["{}", r#"{"ip":"10.0.0.1"}"#, r#"{"replicas":3}"#])
            .prop_map(|o| RunEnd::Succeeded { outputs_json: o.into() }),
        2 => Just(RunEnd::Failed { error: "boom".into(), outputs_json: "{}".into() }),
        1 => Just(RunEnd::Cancelled { error: String::new(), outputs_json: "{}".into() }),
        1 => Just(RunEnd::Interrupted { error: "gone".into() }),
        1 => run_end(),
    ]
}

/// A run index: one of the first runs' (runs are numbered from the index of
/// the entry that started them), or any.
fn run() -> impl Strategy<Value = u64> {
    prop_oneof![8 => 1u64..40, 1 => number()]
}

fn attempt() -> impl Strategy<Value = u32> {
    prop_oneof![8 => 0u32..4, 1 => any::<u32>()]
}

/// A command of every variant, on the names the state has.
fn structured() -> BoxedStrategy<Command> {
    prop_oneof![
        3 => (one_of(KEYS), text(), proptest::option::of(0u64..12), trigger()).prop_map(
            |(key, value, expected_revision, trigger)| Command::PutSetting { key, value, expected_revision, trigger }
        ),
        1 => (one_of(KEYS), proptest::option::of(0u64..12), trigger()).prop_map(
            |(key, expected_revision, trigger)| Command::DeleteSetting { key, expected_revision, trigger }
        ),
        1 => kind_command(),
        1 => builtin_command(),
        3 => (one_of(KINDS), one_of(NAMES), spec(), map(&["team", "tier"]), trigger()).prop_map(
            |(kind, name, spec_json, labels, trigger)| Command::CreateResource { kind, name, spec_json, labels, trigger }
        ),
        3 => (one_of(KINDS), one_of(NAMES), one_of(EVENTS), map(&["version"]), trigger()).prop_map(
            |(kind, name, event, args, trigger)| Command::DoEvent { kind, name, event, args, trigger }
        ),
        1 => (one_of(KINDS), one_of(NAMES)).prop_map(|(kind, name)| Command::DeleteResource { kind, name }),
        4 => (run(), attempt(), end(), signed()).prop_map(|(run, attempt, end, at_ms)| Command::FinishRun {
            run, attempt, end, at_ms
        }),
        1 => (run(), attempt()).prop_map(|(run, attempt)| Command::TakeOverRun { run, attempt }),
        1 => (run(), trigger()).prop_map(|(run, trigger)| Command::CancelRun { run, trigger }),
        1 => (run(), attempt(), vec(text(), 0..4)).prop_map(|(run, attempt, lines)| Command::AppendRunLog {
            run, attempt, lines
        }),
        3 => super::command::security_command(one_of(&["admin", "ci", "deployer", "app/x", "db/url"])),
    ]
    .boxed()
}

/// One step of a sequence.
#[derive(Debug, Clone)]
enum Step {
    /// A command on the state's names.
    Command(Command),
    /// A command of arbitrary fields.
    Any(Command),
    /// Bytes in a log entry.
    Raw(Vec<u8>),
    /// A new leader in a new term commits what follows.
    Leader(u64),
    /// A command on the state's names in the entry of the last one: entries
    /// the leader shares between commands (runs started by one entry must
    /// still get ids of their own).
    Shared(Command),
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        24 => structured().prop_map(Step::Command),
        2 => any_command().prop_map(Step::Any),
        1 => bytes().prop_map(Step::Raw),
        1 => (1u64..4).prop_map(Step::Leader),
        8 => structured().prop_map(Step::Shared),
    ]
}

/// Every row of every domain table.
type Dump = Vec<(&'static str, Vec<(Vec<u8>, Vec<u8>)>)>;

fn dump(s: &TestState) -> Dump {
    let view = s.state.view();
    TABLES
        .iter()
        .map(|t| (*t, view.scan_prefix(t, b"").expect("scanning a table")))
        .collect()
}

/// Empties a state, so that one database serves case after case.
fn clear(s: &mut TestState) {
    let rows = dump(s);
    s.state
        .with_txn(|txn| {
            for (table, rows) in &rows {
                for (k, _) in rows {
                    txn.delete(table, k)?;
                }
            }
            Ok(())
        })
        .expect("clearing the state");
    s.index = 0;
    s.leader = 1;
    s.term = 1;
}

/// What applying a step answered, comparable across states.
type Answer = Result<(Outcome, Vec<DomainEvent>), String>;

fn apply(s: &mut TestState, step: &Step) -> Option<Answer> {
    let bytes = match step {
        Step::Command(c) | Step::Any(c) => c.encode(),
        Step::Raw(b) => b.clone(),
        Step::Shared(c) => return Some(s.try_apply_raw_shared(&c.encode()).map_err(|e| e.0)),
        Step::Leader(id) => {
            s.leader = *id;
            s.term += 1;
            return None;
        }
    };
    Some(s.try_apply_raw(&bytes).map_err(|e| e.0))
}

/// The invariants of the domain's tables; returns the settings revision.
fn check(s: &TestState, last_revision: u64) -> Result<u64, TestCaseError> {
    let view = s.state.view();
    let revision = settings::current_revision(&view).map_err(fail)?;
    prop_assert!(
        revision >= last_revision,
        "revision went back: {} -> {}",
        last_revision,
        revision
    );
    for r in settings::list(&view, "").map_err(fail)? {
        prop_assert!(
            r.create_revision <= r.mod_revision && r.mod_revision <= revision && r.version >= 1,
            "setting {:?}: revisions {}/{} at {}",
            r.key,
            r.create_revision,
            r.mod_revision,
            revision
        );
    }
    let running_keys: Vec<u64> = view
        .scan_prefix(resources::RUNNING, b"")
        .map_err(fail)?
        .iter()
        .map(|(k, _)| u64::from_be_bytes(k.as_slice().try_into().unwrap_or([0xff; 8])))
        .collect();
    let mut counts: BTreeMap<(String, String), u64> = BTreeMap::new();
    for r in resources::list_resources(&view, "").map_err(fail)? {
        let kind = resources::read_kind(&view, &r.kind).map_err(fail)?;
        let Some((kind, _)) = kind else {
            return Err(TestCaseError::fail(format!("resource {}/{}: no kind", r.kind, r.name)));
        };
        let state = kind.state(&r.state);
        prop_assert!(
            state.is_some(),
            "resource {}/{}: state {:?} not in its kind",
            r.kind,
            r.name,
            r.state
        );
        *counts.entry((r.kind.clone(), r.state.clone())).or_default() += 1;
        if let Some(active) = r.active_run {
            prop_assert!(
                running_keys.contains(&active),
                "{}/{}: active run {} not running",
                r.kind,
                r.name,
                active
            );
            prop_assert!(
                state.is_some_and(|s| s.work),
                "{}/{}: a run in stable state {}",
                r.kind,
                r.name,
                r.state
            );
        }
    }
    let mut stored: BTreeMap<(String, String), u64> = BTreeMap::new();
    for (k, v) in view.scan_prefix(resources::STATE_COUNTS, b"").map_err(fail)? {
        let text = String::from_utf8_lossy(&k).into_owned();
        let (kind, state) = text.split_once('\0').unwrap_or((&text, ""));
        let n = u64::from_be_bytes(v.as_slice().try_into().unwrap_or([0xff; 8]));
        stored.insert((kind.to_string(), state.to_string()), n);
    }
    prop_assert_eq!(&stored, &counts, "state counts");
    let running = resources::running(&view).map_err(fail)?;
    prop_assert_eq!(running.len(), running_keys.len(), "a running key without its run");
    for run in running {
        prop_assert_eq!(
            run.outcome,
            RunOutcome::Running,
            "run {} in the running table",
            run.index
        );
        let resource = resources::read_resource(&view, &run.kind, &run.name).map_err(fail)?;
        let Some(resource) = resource else {
            return Err(TestCaseError::fail(format!(
                "run {}: no resource {}/{}",
                run.index, run.kind, run.name
            )));
        };
        prop_assert_eq!(
            resource.active_run,
            Some(run.index),
            "run {}: not its resource's",
            run.index
        );
        prop_assert_eq!(&resource.state, &run.to, "run {}: its resource moved on", run.index);
    }
    let last_run = view
        .get(resources::RUN_COUNTER, b"last")
        .map_err(fail)?
        .map(|b| u64::from_be_bytes(b.as_slice().try_into().unwrap_or([0; 8])))
        .unwrap_or(0);
    for (k, v) in view.scan_prefix(resources::RUNS, b"").map_err(fail)? {
        let run: resources::RunRecord = bincode::deserialize(&v).map_err(fail)?;
        prop_assert_eq!(k, run.index.to_be_bytes().to_vec());
        prop_assert!(
            run.index <= last_run,
            "run {} after the counter's {}",
            run.index,
            last_run
        );
        prop_assert_eq!(
            run.outcome == RunOutcome::Running,
            running_keys.contains(&run.index),
            "run {} is {:?}",
            run.index,
            run.outcome
        );
    }
    Ok(revision)
}

fn fail(e: impl std::fmt::Display) -> TestCaseError {
    TestCaseError::fail(format!("reading the state: {e}"))
}

/// The mean length of a sequence.
const MEAN_STEPS: u64 = 20;

/// Apply is the slowest harness (real storage, checked after every step):
/// it runs as two tests, which the test runner runs side by side, each
/// with its own seed.
#[test]
fn apply_of_arbitrary_commands() {
    apply_harness("apply");
}

#[test]
fn apply_of_arbitrary_commands_too() {
    apply_harness("apply_too");
}

fn apply_harness(name: &'static str) {
    let harness = Harness {
        name,
        per_mille: 60,
        inputs_per_case: MEAN_STEPS,
        regressions: regressions!("apply"),
    };
    let states = RefCell::new((TestState::new(), TestState::new()));
    fuzz(&harness, vec(step(), 1..(2 * MEAN_STEPS as usize)), |steps, count| {
        let (a, b) = &mut *states.borrow_mut();
        clear(a);
        clear(b);
        let mut revision = 0;
        for step in &steps {
            count.add(1);
            let before = dump(a);
            let answer = apply(a, step);
            let other = apply(b, step);
            prop_assert_eq!(&answer, &other, "two states answered {:?} differently", step);
            let unchanged = match &answer {
                None => true,
                Some(Err(_)) | Some(Ok((Outcome::Rejected(_) | Outcome::Skipped, _))) => {
                    if let Some(Ok((_, events))) = &answer {
                        prop_assert!(events.is_empty(), "a refused {:?} published {:?}", step, events);
                    }
                    let after = dump(a);
                    prop_assert!(before == after, "refused {:?} ({:?}) changed the state", step, answer);
                    true
                }
                Some(Ok(_)) => false,
            };
            if !unchanged {
                revision = check(a, revision)?;
            }
        }
        check(a, revision)?;
        prop_assert!(dump(a) == dump(b), "two states that applied the same commands differ");
        Ok(())
    });
}
