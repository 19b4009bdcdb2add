//! Apply of every resource command, on real storage, without a cluster.

use super::*;
use crate::domain::test_kinds::APP_LIFECYCLE;
use crate::domain::testing::TestState;
use crate::domain::{Command, DomainEvent, Outcome, Rejection};

/// The kind most tests drive.
const APP: &str = APP_LIFECYCLE;

fn trigger(at_ms: i64) -> Trigger {
    Trigger {
        principal: "alice".into(),
        reason: "testing".into(),
        source: "api".into(),
        at_ms,
    }
}

/// The command registering `source`, compiled as the API compiles it.
fn put_kind(source: &str) -> Command {
    Command::PutKind {
        source: source.into(),
        kind: compile_kind(source).unwrap(),
    }
}

fn state_with_app() -> TestState {
    let mut s = TestState::new();
    let (out, _) = s.apply(put_kind(APP));
    assert!(matches!(out, Outcome::KindPut { .. }), "{out:?}");
    s
}

fn create(s: &mut TestState, name: &str) -> (Outcome, Vec<DomainEvent>) {
    s.apply(Command::CreateResource {
        kind: "app".into(),
        name: name.into(),
        spec_json: r#"{"replicas": 2}"#.into(),
        labels: BTreeMap::new(),
        trigger: trigger(1000),
    })
}

fn finish(s: &mut TestState, run: u64, attempt: u32, end: RunEnd, at_ms: i64) -> Outcome {
    s.apply(Command::FinishRun {
        run,
        attempt,
        end,
        at_ms,
    })
    .0
}

fn ok(outputs: &str) -> RunEnd {
    RunEnd::Succeeded {
        outputs_json: outputs.into(),
    }
}

fn resource(s: &TestState, name: &str) -> ResourceRecord {
    read_resource(&s.state.view(), "app", name).unwrap().unwrap()
}

fn rejection(out: Outcome) -> Rejection {
    match out {
        Outcome::Rejected(r) => r,
        other => panic!("expected a rejection, got {other:?}"),
    }
}

fn message(r: Rejection) -> String {
    match r {
        Rejection::NotFound(m)
        | Rejection::FailedPrecondition(m)
        | Rejection::InvalidArgument(m)
        | Rejection::AlreadyExists(m) => m,
    }
}

fn do_event(s: &mut TestState, name: &str, event: &str) -> Outcome {
    s.apply(Command::DoEvent {
        kind: "app".into(),
        name: name.into(),
        event: event.into(),
        args: BTreeMap::from([("version".to_string(), "2".to_string())]),
        trigger: trigger(5000),
    })
    .0
}

/// Drives the three work states of creation to `ready`.
fn create_ready(s: &mut TestState, name: &str) -> u64 {
    create(s, name);
    for _ in 0..3 {
        let run = resource(s, name).active_run.unwrap();
        assert!(matches!(
            finish(s, run, 1, ok("{}"), 2000),
            Outcome::ResourceChanged { .. }
        ));
    }
    assert_eq!(resource(s, name).state, "ready");
    s.index
}

#[test]
fn creating_enters_the_initial_work_state_and_starts_its_run_owned_by_the_leader() {
    let mut s = state_with_app();
    s.leader = 3;
    s.term = 7;
    let (out, events) = create(&mut s, "web");
    let Outcome::ResourceChanged {
        resource,
        run: Some(run),
    } = out
    else {
        panic!("{out:?}")
    };
    assert_eq!((resource.state.as_str(), resource.version), ("pending", 2));
    assert_eq!(resource.active_run, Some(2));
    assert_eq!(run.run_id(), "r2");
    assert_eq!(
        (run.event.as_str(), run.from.as_str(), run.to.as_str()),
        ("create", "", "pending")
    );
    assert_eq!(
        (run.outcome, run.attempt, run.node_id, run.term),
        (RunOutcome::Running, 1, 3, 7)
    );
    assert_eq!(run.trigger.principal, "alice");
    assert!(events.iter().any(|e| matches!(e, DomainEvent::Run(r) if r.index == 2)));
    assert!(events
        .iter()
        .any(|e| matches!(e, DomainEvent::Resource(r) if r.name == "web")));
    assert_eq!(running(&s.state.view()).unwrap().len(), 1);
}

#[test]
fn creation_is_refused_with_the_field_at_fault_and_writes_nothing() {
    let mut s = state_with_app();
    let cases = [
        ("nope", "web", "{}", "kind"),
        ("app", "bad name", "{}", "name"),
        ("app", "web", "[1]", "spec"),
        ("app", "web", "{", "spec"),
        ("image", "img", "{}", "source"),
    ];
    for (kind, name, spec, field) in cases {
        let (out, events) = s.apply(Command::CreateResource {
            kind: kind.into(),
            name: name.into(),
            spec_json: spec.into(),
            labels: BTreeMap::new(),
            trigger: trigger(1),
        });
        let m = message(rejection(out));
        assert!(m.contains(field), "{m:?} names {field}");
        assert!(events.is_empty());
    }
    assert!(list_resources(&s.state.view(), "").unwrap().is_empty());
    create(&mut s, "web");
    let r = rejection(create(&mut s, "web").0);
    assert!(matches!(r, Rejection::AlreadyExists(_)), "{r:?}");
}

#[test]
fn a_chain_of_work_states_is_one_run_each_and_outputs_merge() {
    let mut s = state_with_app();
    create(&mut s, "web");
    let out = finish(&mut s, 2, 1, ok(r#"{"a": 1}"#), 1500);
    let Outcome::ResourceChanged {
        resource: r,
        run: Some(next),
    } = out
    else {
        panic!("{out:?}")
    };
    assert_eq!(
        (r.state.as_str(), next.index, next.from.as_str()),
        ("building", 3, "pending")
    );
    assert_eq!(next.trigger.principal, "alice", "the chain keeps who asked");
    finish(&mut s, 3, 1, ok(r#"{"b": 2}"#), 1700);
    let out = finish(&mut s, 4, 1, ok(r#"{"a": 3}"#), 1900);
    let Outcome::ResourceChanged { resource: r, run: None } = out else {
        panic!("{out:?}")
    };
    assert_eq!((r.state.as_str(), r.active_run), ("ready", None));
    assert_eq!(r.outputs_json, r#"{"a":3,"b":2}"#);
    let runs = history(&s.state.view(), "app", "web").unwrap();
    let steps: Vec<(&str, &str, RunOutcome)> = runs
        .iter()
        .map(|r| (r.from.as_str(), r.to.as_str(), r.outcome))
        .collect();
    assert_eq!(
        steps,
        vec![
            ("", "pending", RunOutcome::Succeeded),
            ("pending", "building", RunOutcome::Succeeded),
            ("building", "deploying", RunOutcome::Succeeded),
        ]
    );
    assert_eq!(runs[0].duration_ms(), Some(500));
    assert!(running(&s.state.view()).unwrap().is_empty());
}

#[test]
fn events_are_checked_against_the_state_and_the_run_in_flight() {
    let mut s = state_with_app();
    create(&mut s, "web");
    let m = message(rejection(do_event(&mut s, "web", "deploy")));
    assert!(m.contains("run r2 is in flight"), "{m}");
    while let Some(run) = resource(&s, "web").active_run {
        finish(&mut s, run, 1, ok("{}"), 2000);
    }
    let m = message(rejection(do_event(&mut s, "web", "resume")));
    assert!(
        m.contains("does not take event \"resume\"") && m.contains("deploy, destroy, pause"),
        "{m}"
    );
    let m = message(rejection(do_event(&mut s, "nope", "deploy")));
    assert!(m.contains("app/nope not found"), "{m}");
    // A move between stable states is recorded and done at once.
    let Outcome::ResourceChanged {
        resource: r,
        run: Some(run),
    } = do_event(&mut s, "web", "pause")
    else {
        panic!()
    };
    assert_eq!(
        (r.state.as_str(), run.outcome, r.active_run),
        ("paused", RunOutcome::Succeeded, None)
    );
    // An event into a work state starts a run with the event's arguments.
    do_event(&mut s, "web", "resume");
    let Outcome::ResourceChanged { run: Some(run), .. } = do_event(&mut s, "web", "deploy") else {
        panic!()
    };
    assert_eq!((run.event.as_str(), run.to.as_str()), ("deploy", "deploying"));
    assert_eq!(run.args["version"], "2");
}

#[test]
fn a_failed_step_lands_in_its_fail_state_and_retry_recovers() {
    let mut s = state_with_app();
    create(&mut s, "web");
    let end = RunEnd::Failed {
        error: "no network".into(),
        outputs_json: r#"{"partial": true}"#.into(),
    };
    let Outcome::ResourceChanged { resource: r, run: None } = finish(&mut s, 2, 1, end, 3000) else {
        panic!()
    };
    assert_eq!(r.state, "failed");
    assert_eq!(
        r.outputs_json, r#"{"partial":true}"#,
        "a failed step's outputs are kept"
    );
    let run = read_run(&s.state.view(), 2).unwrap().unwrap();
    assert_eq!((run.outcome, run.error.as_str()), (RunOutcome::Failed, "no network"));
    let Outcome::ResourceChanged {
        resource: r,
        run: Some(run),
    } = do_event(&mut s, "web", "retry")
    else {
        panic!()
    };
    assert_eq!((r.state.as_str(), run.from.as_str()), ("pending", "failed"));
}

#[test]
fn a_finish_is_accepted_once_and_only_from_the_current_attempt() {
    let mut s = state_with_app();
    create(&mut s, "web");
    s.leader = 2;
    s.term = 2;
    let Outcome::RunChanged { run } = s.apply(Command::TakeOverRun { run: 2, attempt: 2 }).0 else {
        panic!()
    };
    assert_eq!((run.attempt, run.node_id, run.term), (2, 2, 2));
    // The deposed leader's late finish, and a second takeover of attempt 1.
    let m = message(rejection(finish(&mut s, 2, 1, ok("{}"), 2000)));
    assert!(m.contains("attempt 2"), "{m}");
    rejection(s.apply(Command::TakeOverRun { run: 2, attempt: 2 }).0);
    assert!(matches!(
        finish(&mut s, 2, 2, ok("{}"), 2000),
        Outcome::ResourceChanged { .. }
    ));
    let m = message(rejection(finish(&mut s, 2, 2, ok("{}"), 2000)));
    assert!(m.contains("already ended"), "{m}");
    let log = read_log(&s.state.view(), 2).unwrap();
    assert!(log.lines[0].contains("taken over by node 2"), "{:?}", log.lines);
    let m = message(rejection(finish(&mut s, 99, 1, ok("{}"), 2000)));
    assert!(m.contains("r99 not found"), "{m}");
}

#[test]
fn garbage_outputs_are_refused_and_change_nothing() {
    let mut s = state_with_app();
    create(&mut s, "web");
    let m = message(rejection(finish(&mut s, 2, 1, ok("[1, 2]"), 2000)));
    assert!(m.contains("outputs"), "{m}");
    assert_eq!(
        read_run(&s.state.view(), 2).unwrap().unwrap().outcome,
        RunOutcome::Running
    );
}

#[test]
fn cancel_marks_the_run_and_its_finish_goes_to_the_cancel_target() {
    let mut s = state_with_app();
    create_ready(&mut s, "web");
    let Outcome::ResourceChanged { run: Some(run), .. } = do_event(&mut s, "web", "deploy") else {
        panic!()
    };
    let Outcome::RunChanged { run: r } = s
        .apply(Command::CancelRun {
            run: run.index,
            trigger: trigger(6000),
        })
        .0
    else {
        panic!()
    };
    assert!(r.cancel_requested);
    let end = RunEnd::Cancelled {
        error: String::new(),
        outputs_json: String::new(),
    };
    let Outcome::ResourceChanged { resource: res, .. } = finish(&mut s, run.index, 1, end, 6100) else {
        panic!()
    };
    assert_eq!(res.state, "ready", "deploying's cancel target");
    rejection(
        s.apply(Command::CancelRun {
            run: run.index,
            trigger: trigger(7000),
        })
        .0,
    );
    // Without `cancel`, a cancelled step goes to `fail`.
    let mut s = state_with_app();
    create(&mut s, "web");
    let end = RunEnd::Cancelled {
        error: String::new(),
        outputs_json: String::new(),
    };
    let Outcome::ResourceChanged { resource: res, .. } = finish(&mut s, 2, 1, end, 2000) else {
        panic!()
    };
    assert_eq!(res.state, "failed");
}

#[test]
fn run_logs_are_bounded_and_only_the_current_attempt_appends() {
    let mut s = state_with_app();
    create(&mut s, "web");
    for chunk in 0..3 {
        let lines = (0..1000).map(|i| format!("line {}", chunk * 1000 + i)).collect();
        let (out, events) = s.apply(Command::AppendRunLog {
            run: 2,
            attempt: 1,
            lines,
        });
        assert!(matches!(out, Outcome::RunChanged { .. }));
        let DomainEvent::RunLog { first_line, .. } = &events[0] else {
            panic!()
        };
        assert_eq!(*first_line, chunk * 1000);
    }
    let log = read_log(&s.state.view(), 2).unwrap();
    assert_eq!((log.dropped, log.lines.len()), (1000, MAX_LOG_LINES));
    assert_eq!(log.lines[0], "line 1000");
    rejection(
        s.apply(Command::AppendRunLog {
            run: 2,
            attempt: 5,
            lines: vec!["x".into()],
        })
        .0,
    );
    let long = "é".repeat(MAX_LOG_LINE);
    s.apply(Command::AppendRunLog {
        run: 2,
        attempt: 1,
        lines: vec![long],
    });
    assert!(read_log(&s.state.view(), 2).unwrap().lines.last().unwrap().len() < MAX_LOG_LINE + 16);
}

#[test]
fn delete_removes_only_a_final_resource_and_keeps_its_history() {
    let mut s = state_with_app();
    create_ready(&mut s, "web");
    let del = |s: &mut TestState| {
        s.apply(Command::DeleteResource {
            kind: "app".into(),
            name: "web".into(),
        })
        .0
    };
    let m = message(rejection(del(&mut s)));
    assert!(m.contains("not a final state"), "{m}");
    let Outcome::ResourceChanged { run: Some(run), .. } = do_event(&mut s, "web", "destroy") else {
        panic!()
    };
    finish(&mut s, run.index, 1, ok("{}"), 9000);
    assert_eq!(resource(&s, "web").state, "gone");
    assert!(matches!(del(&mut s), Outcome::ResourceDeleted { .. }));
    assert!(read_resource(&s.state.view(), "app", "web").unwrap().is_none());
    assert_eq!(history(&s.state.view(), "app", "web").unwrap().len(), 4);
    // The name is free again.
    assert!(matches!(create(&mut s, "web").0, Outcome::ResourceChanged { .. }));
}

#[test]
fn a_kind_update_may_not_strand_resources() {
    let mut s = state_with_app();
    create_ready(&mut s, "web");
    do_event(&mut s, "web", "pause");
    let without_paused = APP
        .replace("pause = \"paused\", ", "")
        .replace("[states.paused]\non = { resume = \"ready\" }", "");
    let m = message(rejection(s.apply(put_kind(&without_paused)).0));
    assert!(
        m.contains("removes state \"paused\"") && m.contains("1 resource"),
        "{m}"
    );
    do_event(&mut s, "web", "resume");
    assert!(matches!(s.apply(put_kind(&without_paused)).0, Outcome::KindPut { .. }));
}

/// Found by the apply fuzzer: before the leader installs the built-in kinds,
/// resources are created of the ones this build embeds, and a kind stored
/// over one (registered or built in) could remove the state they are in.
#[test]
fn a_kind_stored_over_an_embedded_built_in_kind_may_not_strand_its_resources() {
    let mut s = TestState::new();
    let (out, _) = s.apply(Command::CreateResource {
        kind: "image".into(),
        name: "web".into(),
        spec_json: r#"{"source": "s"}"#.into(),
        labels: BTreeMap::new(),
        trigger: trigger(1000),
    });
    assert!(
        matches!(&out, Outcome::ResourceChanged { resource, .. } if resource.state == "pending"),
        "{out:?}"
    );
    let mut without_pending = embedded_kind("image");
    without_pending.states.remove("pending");
    without_pending.initial = "building".into();
    let put = Command::PutKind {
        source: "kind = \"image\"".into(),
        kind: without_pending.clone(),
    };
    let builtin = Command::PutBuiltinKind {
        source: "newer".into(),
        kind: without_pending,
        revision: BUILTIN_REVISION + 1,
    };
    for command in [put, builtin] {
        let m = message(rejection(s.apply(command).0));
        assert!(
            m.contains("removes state \"pending\"") && m.contains("1 resource"),
            "{m}"
        );
    }
    assert_eq!(resource_of(&s, "image", "web").state, "pending");
    let (kind, record) = read_kind(&s.state.view(), "image").unwrap().unwrap();
    assert!(record.is_none() && kind.states.contains_key("pending"));
}

fn resource_of(s: &TestState, kind: &str, name: &str) -> ResourceRecord {
    read_resource(&s.state.view(), kind, name).unwrap().unwrap()
}

#[test]
fn compiling_a_kind_refuses_bad_sources_and_built_in_names() {
    let invalid = |source: &str| match compile_kind(source) {
        Err(Rejection::InvalidArgument(m)) => m,
        other => panic!("{other:?}"),
    };
    assert!(!invalid("kind = \"image\"\n").is_empty());
    assert!(invalid("kind = [").contains("line"));
    let builtin = kind::BUILTIN[0].1;
    let Err(Rejection::FailedPrecondition(m)) = compile_kind(builtin) else {
        panic!("a built-in kind's name was accepted");
    };
    assert!(m.contains("built in"), "{m}");
    assert_eq!(compile_kind(APP).unwrap().name, "app");
}

#[test]
fn apply_stores_the_kind_the_command_carries_without_parsing() {
    let mut s = TestState::new();
    // A source that does not parse, with the kind the leader compiled: apply
    // stores what it is given (reads show the source as given).
    let put = Command::PutKind {
        source: "not a kind file".into(),
        kind: compile_kind(APP).unwrap(),
    };
    assert!(matches!(s.apply(put).0, Outcome::KindPut { .. }));
    let (k, record) = read_kind(&s.state.view(), "app").unwrap().unwrap();
    assert_eq!(k, compile_kind(APP).unwrap());
    assert_eq!(record.unwrap().source, "not a kind file");
    assert!(matches!(create(&mut s, "web").0, Outcome::ResourceChanged { .. }));
}

#[test]
fn an_event_in_a_state_the_kind_lacks_is_refused_not_a_panic() {
    let mut s = state_with_app();
    create_ready(&mut s, "web");
    // A resource in a state its kind does not have: prevented by the kind
    // update rule, so written directly here.
    let mut r = resource(&s, "web");
    r.state = "limbo".into();
    s.state
        .with_txn(|txn| txn.put(RESOURCES, &resource_key("app", "web"), &encode(&r)?))
        .unwrap();
    let m = message(rejection(do_event(&mut s, "web", "deploy")));
    assert!(m.contains("\"limbo\"") && m.contains("does not have"), "{m}");
    let del = s.apply(Command::DeleteResource {
        kind: "app".into(),
        name: "web".into(),
    });
    assert!(matches!(rejection(del.0), Rejection::FailedPrecondition(_)));
    assert_eq!(resource(&s, "web").state, "limbo");
}

#[test]
fn built_in_kinds_travel_through_the_log_and_only_forward() {
    let mut s = TestState::new();
    // Before the leader installs them, this build's own are used.
    let (image, record) = read_kind(&s.state.view(), "image").unwrap().unwrap();
    assert_eq!(image, embedded_kind("image"));
    assert!(record.is_none());
    let names =
        |kinds: Vec<(Kind, Option<KindRecord>)>| -> Vec<String> { kinds.into_iter().map(|k| k.0.name).collect() };
    assert_eq!(
        names(list_kinds(&s.state.view()).unwrap()),
        ["image", "cluster", "service", "opsd-cluster"]
    );

    let updates = builtin_kind_updates(&s.state.view()).unwrap();
    assert_eq!(updates.len(), kind::BUILTIN.len());
    for update in updates {
        assert!(matches!(s.apply(update).0, Outcome::KindPut { .. }));
    }
    assert!(builtin_kind_updates(&s.state.view()).unwrap().is_empty());
    let (_, record) = read_kind(&s.state.view(), "image").unwrap().unwrap();
    let record = record.unwrap();
    assert!(record.builtin && record.version > 0);
    assert_eq!(
        names(list_kinds(&s.state.view()).unwrap()),
        ["image", "cluster", "service", "opsd-cluster"]
    );

    // Apply uses the stored definition, whatever this build embeds: a newer
    // build's image kind, with one more state, is what a create enters.
    let mut newer = embedded_kind("image");
    newer.initial = "queued".into();
    newer.states.insert(
        "queued".into(),
        kind::State {
            on: BTreeMap::from([("go".to_string(), "pending".to_string())]),
            ..Default::default()
        },
    );
    let install = |kind: Kind, revision: u64| Command::PutBuiltinKind {
        source: "newer".into(),
        kind,
        revision,
    };
    let m = message(rejection(s.apply(install(newer.clone(), BUILTIN_REVISION)).0));
    assert!(m.contains("not older"), "{m}");
    assert!(matches!(
        s.apply(install(newer.clone(), BUILTIN_REVISION + 1)).0,
        Outcome::KindPut { .. }
    ));
    let created = s.apply(Command::CreateResource {
        kind: "image".into(),
        name: "base".into(),
        spec_json: r#"{"source": "x"}"#.into(),
        labels: BTreeMap::new(),
        trigger: trigger(1),
    });
    let Outcome::ResourceChanged { resource: r, .. } = created.0 else {
        panic!("{created:?}")
    };
    assert_eq!(r.state, "queued");
    // This (older) build does not bring its own back.
    assert!(builtin_kind_updates(&s.state.view()).unwrap().is_empty());
    let older = install(embedded_kind("image"), BUILTIN_REVISION);
    assert!(matches!(s.apply(older).0, Outcome::Rejected(_)));
    // Nor may a user replace a stored built-in kind, whatever the API checked.
    let user = Command::PutKind {
        source: String::new(),
        kind: embedded_kind("image"),
    };
    assert!(message(rejection(s.apply(user).0)).contains("built in"));
}

#[test]
fn a_built_in_kind_does_not_replace_a_registered_kind_of_its_name() {
    let mut s = TestState::new();
    let mut theirs = compile_kind(APP).unwrap();
    theirs.name = "cluster".into();
    let put = Command::PutKind {
        source: "theirs".into(),
        kind: theirs.clone(),
    };
    assert!(matches!(s.apply(put).0, Outcome::KindPut { .. }));
    let updates = builtin_kind_updates(&s.state.view()).unwrap();
    for update in updates {
        s.apply(update);
    }
    let (cluster, record) = read_kind(&s.state.view(), "cluster").unwrap().unwrap();
    assert_eq!((cluster, record.unwrap().builtin), (theirs, false));
}

#[test]
fn the_built_in_kinds_are_pinned_to_their_revision() {
    // FNV-1a of the built-in kind files. When a file changes, this fails:
    // bump BUILTIN_REVISION (so leaders install the new definitions) and
    // pin the new fingerprint here.
    const PINNED: (u64, u64) = (4, 0xdd70_552c_f5e8_fbd3);
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for (name, source) in kind::BUILTIN {
        for b in name.bytes().chain([0]).chain(source.bytes()).chain([0]) {
            hash = (hash ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
        }
    }
    assert_eq!(
        (BUILTIN_REVISION, hash),
        PINNED,
        "a built-in kind changed: bump BUILTIN_REVISION to {} and pin ({}, {hash:#x})",
        PINNED.0 + 1,
        PINNED.0 + 1
    );
}

#[test]
fn a_stored_kind_this_build_cannot_read_is_refused_and_reads_say_why() {
    let mut s = TestState::new();
    let cases: [(&str, Vec<u8>); 2] = [
        // A newer build's record, in a form this one does not know.
        ("newer build", br#"{"source": "x", "shape": "unknown"}"#.to_vec()),
        // An earlier build's record whose source this build no longer compiles.
        (
            "no longer compiles",
            bincode::serialize(&("kind = [".to_string(), 3u64)).unwrap(),
        ),
    ];
    for (why, bytes) in cases {
        s.state.with_txn(|txn| txn.put(KINDS, b"app", &bytes)).unwrap();
        let m = message(rejection(create(&mut s, "web").0));
        assert!(m.contains("\"app\"") && m.contains(why), "{m}");
        let e = read_kind(&s.state.view(), "app").unwrap_err().0;
        assert!(e.contains("\"app\"") && e.contains(why), "{e}");
        let e = list_kinds(&s.state.view()).unwrap_err().0;
        assert!(e.contains(why), "{e}");
    }
}

#[test]
fn a_kind_stored_by_an_earlier_build_is_compiled_when_read() {
    let mut s = TestState::new();
    let legacy = bincode::serialize(&(APP.to_string(), 3u64)).unwrap();
    s.state.with_txn(|txn| txn.put(KINDS, b"app", &legacy)).unwrap();
    let (k, record) = read_kind(&s.state.view(), "app").unwrap().unwrap();
    assert_eq!(k, compile_kind(APP).unwrap());
    assert_eq!(record.unwrap().version, 3);
    assert!(matches!(create(&mut s, "web").0, Outcome::ResourceChanged { .. }));
}

#[test]
fn stats_count_every_outcome_per_transition() {
    let mut s = state_with_app();
    create(&mut s, "web");
    finish(
        &mut s,
        2,
        1,
        RunEnd::Failed {
            error: "x".into(),
            outputs_json: String::new(),
        },
        1400,
    );
    do_event(&mut s, "web", "retry");
    let run = resource(&s, "web").active_run.unwrap();
    finish(&mut s, run, 1, ok("{}"), 5000 + 250);
    let stats = crate::domain::stats::query(&s.state.view(), "app", None).unwrap();
    let pending = stats.iter().find(|t| t.from.is_empty() && t.to == "pending").unwrap();
    assert_eq!((pending.count, pending.succeeded, pending.failed), (1, 0, 1));
    assert_eq!(pending.fail_mean_ms, 400.0);
    let retry = stats.iter().find(|t| t.from == "failed" && t.to == "pending").unwrap();
    assert_eq!((retry.count, retry.succeeded, retry.max_ms), (1, 1, 250.0));
    // With a window, only runs that finished inside it count.
    let recent = crate::domain::stats::query(&s.state.view(), "app", Some(5000)).unwrap();
    assert_eq!(recent.iter().map(|t| t.count).sum::<u64>(), 1);
}

#[test]
fn a_run_given_up_on_ends_interrupted_in_its_fail_state() {
    let mut s = state_with_app();
    create(&mut s, "web");
    let end = RunEnd::Interrupted {
        error: "given up".into(),
    };
    let Outcome::ResourceChanged { resource: r, .. } = finish(&mut s, 2, 1, end, 2000) else {
        panic!()
    };
    assert_eq!(r.state, "failed");
    assert_eq!(
        read_run(&s.state.view(), 2).unwrap().unwrap().outcome,
        RunOutcome::Interrupted
    );
}

/// The number of the run a change started.
fn started(out: &Outcome) -> u64 {
    match out {
        Outcome::ResourceChanged { run: Some(run), .. } => run.index,
        other => panic!("expected a run, got {other:?}"),
    }
}

#[test]
fn runs_started_by_one_entry_are_numbered_in_turn_from_its_index() {
    let mut s = state_with_app();
    create_ready(&mut s, "web");
    create_ready(&mut s, "db");
    // One run per entry so far: each numbered by its entry's index, as
    // before entries were shared.
    let numbers: Vec<u64> = history(&s.state.view(), "app", "web")
        .unwrap()
        .iter()
        .map(|r| r.index)
        .collect();
    assert_eq!(numbers, vec![2, 3, 4]);

    // Two deploys and a create in one entry: three runs, three numbers.
    let entry = s.index + 1;
    let web = do_event(&mut s, "web", "deploy");
    let db = s.apply_shared(Command::DoEvent {
        kind: "app".into(),
        name: "db".into(),
        event: "deploy".into(),
        args: BTreeMap::new(),
        trigger: trigger(5000),
    });
    let api = s.apply_shared(Command::CreateResource {
        kind: "app".into(),
        name: "api".into(),
        spec_json: "{}".into(),
        labels: BTreeMap::new(),
        trigger: trigger(5000),
    });
    assert_eq!(
        [started(&web), started(&db.0), started(&api.0)],
        [entry, entry + 1, entry + 2]
    );
    for name in ["web", "db", "api"] {
        let r = resource(&s, name);
        assert_eq!(r.version, entry, "{name}: the entry's index is its version");
        let run = read_run(&s.state.view(), r.active_run.unwrap()).unwrap().unwrap();
        assert_eq!((run.name.as_str(), run.since), (name, entry));
    }
    // The next entry's run comes after them, though its index does not.
    let (next, _) = create(&mut s, "cache");
    assert_eq!((s.index, started(&next)), (entry + 1, entry + 3));
    // Entries that start no run let the index catch up.
    for name in ["web", "db"] {
        let run = resource(&s, name).active_run.unwrap();
        assert!(matches!(
            finish(&mut s, run, 1, ok("{}"), 6000),
            Outcome::ResourceChanged { run: None, .. }
        ));
    }
    let pause = do_event(&mut s, "web", "pause");
    assert_eq!((s.index, started(&pause)), (entry + 4, entry + 4));
    let numbers: Vec<u64> = history(&s.state.view(), "app", "web")
        .unwrap()
        .iter()
        .map(|r| r.index)
        .collect();
    assert_eq!(numbers, vec![2, 3, 4, entry, entry + 4]);
}
