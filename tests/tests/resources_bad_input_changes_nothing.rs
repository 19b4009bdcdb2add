//! Bad input to the Resources API gets a clear error naming what is wrong
//! and changes nothing: broken kind files, kinds this node's providers
//! refuse (an unknown provider among them), unknown kinds, resources, events
//! and runs, malformed Structs and Durations, specs the kind rejects, events
//! in the wrong state; a step that
//! crashes or writes garbage outputs fails its run without harming the node.

use std::collections::HashMap;
use std::time::Duration;

use opsd_proto::prost_types::{value::Kind, Duration as ProtoDuration, Struct, Value as ProtoValue};
use opsd_tests::api::{
    CreateResourceRequest, GetKindRequest, GetResourceRequest, GetRunRequest, HistoryRequest, ListResourcesRequest,
    ListRunsRequest, LogsRequest, RunOutcome, StatsRequest,
};
use opsd_tests::kinds::MISBEHAVING_JOB as JOB;
use opsd_tests::resources as res;
use opsd_tests::{client, Cluster, Options};
use tonic::Code;

fn expect(result: Result<impl std::fmt::Debug, tonic::Status>, code: Code, needle: &str) {
    let err = result.expect_err("an error");
    assert_eq!(err.code(), code, "{}", err.message());
    assert!(err.message().contains(needle), "{:?} names {needle:?}", err.message());
}

#[tokio::test]
async fn resources_bad_input_changes_nothing() {
    let cluster = Cluster::start(1, Options::default()).await;
    let addr = cluster.node(0).client_addr();
    let mut c = client::connect(&addr).resources;
    res::apply_kind(&addr, JOB).await.expect("apply the kind");
    res::create(&addr, "job", "one", serde_json::json!({"owner": "ops"}))
        .await
        .expect("create");
    // Its log index: the built-in kinds' installation may have come first.
    let created = res::get(&addr, "job", "one").await.unwrap().version;
    let before = client::status(&addr, Duration::from_secs(5))
        .await
        .unwrap()
        .applied_index;

    // Broken kind files.
    let broken = JOB.replace(
        "next = \"idle\"\nfail = \"idle\"\n\n[states.crashing]",
        "next = \"idel\"\nfail = \"idle\"\n\n[states.crashing]",
    );
    expect(
        res::apply_kind(&addr, &broken).await,
        Code::InvalidArgument,
        "next: unknown state \"idel\"",
    );
    expect(
        res::apply_kind(&addr, "kind = [").await,
        Code::InvalidArgument,
        "line 1",
    );
    expect(res::apply_kind(&addr, "").await, Code::InvalidArgument, "source");

    // A provider this node does not have, or a kind its provider refuses, is
    // turned away by the node receiving it, before anything is proposed:
    // apply never checks providers, so nodes of different builds agree.
    let index = client::status(&addr, Duration::from_secs(5))
        .await
        .unwrap()
        .applied_index;
    let refused = [
        (
            "provider = \"exec\"",
            "provider = \"podman\"",
            "provider: unknown provider \"podman\" (this node has: docker, ec2, exec, local, service)",
        ),
        ("run = 'kill -SEGV $$'\n", "", "state \"crashing\": run: missing"),
        (
            "provider = \"exec\"",
            "provider = \"local\"",
            "run: only the exec provider runs scripts",
        ),
    ];
    for (line, edited, error) in refused {
        let source = JOB
            .replace("kind = \"job\"", "kind = \"job-podman\"")
            .replace(line, edited);
        expect(res::apply_kind(&addr, &source).await, Code::InvalidArgument, error);
    }
    assert_eq!(
        client::status(&addr, Duration::from_secs(5))
            .await
            .unwrap()
            .applied_index,
        index,
        "a refused kind was proposed"
    );
    expect(
        c.get_kind(GetKindRequest {
            name: "job-podman".into(),
        })
        .await,
        Code::NotFound,
        "job-podman",
    );
    let builtin = c
        .get_kind(GetKindRequest { name: "image".into() })
        .await
        .unwrap()
        .into_inner();
    expect(
        res::apply_kind(&addr, &builtin.source).await,
        Code::FailedPrecondition,
        "built in",
    );
    expect(
        c.get_kind(GetKindRequest { name: "nope".into() }).await,
        Code::NotFound,
        "nope",
    );

    // Creation.
    let create = |kind: &str, name: &str, spec: serde_json::Value| CreateResourceRequest {
        kind: kind.into(),
        name: name.into(),
        spec: Some(res::spec_struct(spec)),
        labels: HashMap::new(),
        reason: String::new(),
    };
    let empty = || serde_json::json!({});
    expect(c.create(create("nope", "x", empty())).await, Code::NotFound, "kind");
    expect(
        c.create(create("job", "a b", empty())).await,
        Code::InvalidArgument,
        "name",
    );
    expect(
        c.create(create("job", "", empty())).await,
        Code::InvalidArgument,
        "name",
    );
    // Structs no JSON object can be: a Value with no kind, a NaN.
    let with = |key: &str, kind: Option<Kind>| CreateResourceRequest {
        spec: Some(Struct {
            fields: [
                (
                    "owner".to_string(),
                    ProtoValue {
                        kind: Some(Kind::StringValue("ops".into())),
                    },
                ),
                (key.to_string(), ProtoValue { kind }),
            ]
            .into(),
        }),
        ..create("job", "x", empty())
    };
    expect(c.create(with("hole", None)).await, Code::InvalidArgument, "spec.hole");
    expect(
        c.create(with("n", Some(Kind::NumberValue(f64::NAN)))).await,
        Code::InvalidArgument,
        "spec.n",
    );
    expect(
        c.create(create("job", "x", empty())).await,
        Code::InvalidArgument,
        "owner",
    );
    // A spec naming a provider this node lacks, or one that cannot run the kind.
    expect(
        c.create(create(
            "job",
            "x",
            serde_json::json!({"owner": "x", "provider": "nope"}),
        ))
        .await,
        Code::InvalidArgument,
        "spec.provider: unknown provider \"nope\"",
    );
    expect(
        c.create(create(
            "job",
            "x",
            serde_json::json!({"owner": "x", "provider": "local"}),
        ))
        .await,
        Code::InvalidArgument,
        "spec.provider: the local provider cannot run kind job",
    );
    expect(
        c.create(create("job", "one", serde_json::json!({"owner": "x"}))).await,
        Code::AlreadyExists,
        "job/one",
    );

    // Events.
    expect(
        res::do_event(&addr, "job", "nope", "crash", &[], "").await,
        Code::NotFound,
        "job/nope",
    );
    expect(
        res::do_event(&addr, "nope", "one", "crash", &[], "").await,
        Code::NotFound,
        "nope/one",
    );
    expect(
        res::do_event(&addr, "job", "one", "fly", &[], "").await,
        Code::FailedPrecondition,
        "crash, garbage",
    );
    expect(
        res::do_event(&addr, "job", "one", "", &[], "").await,
        Code::InvalidArgument,
        "event",
    );
    expect(
        res::do_event(&addr, "job", "one", "crash", &[("bad key!", "v")], "").await,
        Code::InvalidArgument,
        "args",
    );

    // Reads of unknown things.
    let get = GetResourceRequest {
        kind: "job".into(),
        name: "nope".into(),
        stale: false,
    };
    expect(c.get(get).await, Code::NotFound, "job/nope");
    expect(
        c.get_run(GetRunRequest { run_id: "x1".into() }).await,
        Code::InvalidArgument,
        "run_id",
    );
    expect(
        c.get_run(GetRunRequest {
            run_id: "r99999".into(),
        })
        .await,
        Code::NotFound,
        "r99999",
    );
    let logs = c
        .logs(LogsRequest {
            run_id: "r99999".into(),
            follow: true,
        })
        .await;
    expect(logs.map(|_| ()), Code::NotFound, "r99999");
    let history = HistoryRequest {
        kind: "job".into(),
        name: "nope".into(),
    };
    expect(c.history(history).await, Code::NotFound, "job/nope");
    expect(
        c.stats(StatsRequest {
            kind: "nope".into(),
            since: None,
        })
        .await,
        Code::NotFound,
        "nope",
    );
    let runs = ListRunsRequest {
        outcome: 99,
        ..Default::default()
    };
    expect(c.list_runs(runs).await, Code::InvalidArgument, "outcome");
    // Durations that are negative or malformed.
    let runs = ListRunsRequest {
        since: Some(ProtoDuration { seconds: -60, nanos: 0 }),
        ..Default::default()
    };
    expect(c.list_runs(runs).await, Code::InvalidArgument, "since");
    let stats = StatsRequest {
        kind: "job".into(),
        since: Some(ProtoDuration {
            seconds: 1,
            nanos: 2_000_000_000,
        }),
    };
    expect(c.stats(stats).await, Code::InvalidArgument, "since");
    expect(
        c.list(ListResourcesRequest {
            kind: "nope".into(),
            stale: false,
        })
        .await,
        Code::NotFound,
        "nope",
    );

    // None of that changed anything but the index (rejected commands take one).
    let one = res::get(&addr, "job", "one").await.unwrap();
    assert_eq!((one.state.as_str(), one.version), ("idle", created));
    assert_eq!(res::history(&addr, "job", "one").await.unwrap().len(), 1);
    assert!(
        client::status(&addr, Duration::from_secs(5))
            .await
            .unwrap()
            .applied_index
            >= before
    );

    // Steps that write garbage or crash fail their run, and the node goes on.
    let run = res::do_event(&addr, "job", "one", "garbage", &[], "")
        .await
        .unwrap()
        .run
        .unwrap();
    res::wait_resting(&addr, "job", "one", Duration::from_secs(30)).await;
    let run = res::run(&addr, &run.run_id).await.unwrap();
    assert_eq!(run.outcome(), RunOutcome::Failed);
    assert!(
        run.error.contains("OPSD_OUTPUTS") || run.error.contains("outputs"),
        "{}",
        run.error
    );
    let run = res::do_event(&addr, "job", "one", "crash", &[], "")
        .await
        .unwrap()
        .run
        .unwrap();
    res::wait_resting(&addr, "job", "one", Duration::from_secs(30)).await;
    let run = res::run(&addr, &run.run_id).await.unwrap();
    assert_eq!(run.outcome(), RunOutcome::Failed);
    assert!(run.error.contains("signal"), "{}", run.error);
    assert!(cluster.node(0).is_running());
}
