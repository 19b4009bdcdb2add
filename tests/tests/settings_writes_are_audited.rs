//! Who changed what is audit, for settings as for runs: the principal a
//! client names in its `x-opsd-principal` header reaches a run's trigger and
//! a setting's last-change fields on every node, a write naming none is
//! recorded as `anonymous`, and a malformed header is refused by every
//! service with INVALID_ARGUMENT naming it, changing nothing.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use opsd_tests::api::watch_event::Type;
use opsd_tests::api::{
    CreateResourceRequest, DeleteRequest, GetRequest, PutRequest, Setting, StatusRequest, WatchRequest,
};
use opsd_tests::resources as res;
use opsd_tests::{client, kinds, Cluster, Options};
use tonic::{Code, Request};

const HEADER: &str = "x-opsd-principal";

fn now_ms() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_millis() as i64
}

/// Clients sending no principal of their own (the harness's clients act as
/// [`client::PRINCIPAL`]), so each request can name its own.
fn anonymous(addr: &str) -> client::Clients {
    let node = opsd_client::NodeAddr::parse(addr).expect("a HOST:PORT address");
    let timeouts = opsd_client::Timeouts {
        connect: Duration::from_secs(2),
        request: Some(client::REQUEST_TIMEOUT),
        ..opsd_client::Timeouts::default()
    };
    let mut credentials = opsd_client::Credentials::anonymous();
    if let Some(ca) = opsd_tests::access::ca(addr) {
        credentials = credentials.with_ca(ca);
    }
    opsd_client::Api::lazy(&node, timeouts, credentials)
}

fn as_principal<T>(principal: &str, msg: T) -> Request<T> {
    let mut req = Request::new(msg);
    req.metadata_mut().insert(HEADER, principal.parse().expect("ascii"));
    req
}

fn put(key: &str, value: &str) -> PutRequest {
    PutRequest {
        key: key.into(),
        value: value.into(),
        expected_revision: None,
        ..Default::default()
    }
}

fn assert_refused_naming_the_header(what: &str, status: tonic::Status) {
    assert_eq!(
        status.code(),
        Code::InvalidArgument,
        "{what}: {}",
        client::describe(&status)
    );
    assert!(status.message().contains(HEADER), "{what}: {}", status.message());
}

async fn setting_on(addr: &str, key: &str) -> Setting {
    client::get(addr, key, true)
        .await
        .unwrap_or_else(|e| panic!("get {key} on {addr}: {}", client::describe(&e)))
        .setting
        .expect("a found setting")
}

#[tokio::test]
async fn settings_writes_are_audited() {
    let cluster = Cluster::start(3, Options::default()).await;
    let leader = cluster.leader().await;
    let follower = cluster.followers().await[0];
    let leader_addr = cluster.node(leader).client_addr();
    let follower_addr = cluster.node(follower).client_addr();

    // A write through a follower is forwarded; who asked travels with it.
    let before = now_ms();
    let mut c = anonymous(&follower_addr);
    let written = c
        .settings
        .put(as_principal(
            "alice",
            PutRequest {
                reason: "move to the new database".into(),
                ..put("db/url", "postgres://db")
            },
        ))
        .await
        .unwrap_or_else(|e| panic!("put as alice: {}", client::describe(&e)))
        .into_inner();
    let after = now_ms();
    for node in 0..cluster.len() {
        let addr = cluster.node(node).client_addr();
        client::get(&addr, "db/url", false)
            .await
            .expect("a read after the write");
        let s = setting_on(&addr, "db/url").await;
        assert_eq!(s.mod_revision, written.revision);
        assert_eq!(s.changed_by, "alice", "on {}: {s:?}", cluster.node(node).name());
        assert_eq!(s.change_reason, "move to the new database");
        let at = opsd_proto::time::timestamp_ms("changed_at", &s.changed_at.expect("changed_at is set"))
            .expect("a valid changed_at");
        assert!(
            (before..=after).contains(&at),
            "changed at {at} outside [{before}, {after}]"
        );
    }

    // The answer to the next write shows the setting as alice left it; the
    // new record names bob.
    let rewritten = c
        .settings
        .put(as_principal("bob", put("db/url", "postgres://db2")))
        .await
        .expect("put as bob")
        .into_inner();
    assert_eq!(rewritten.previous.expect("a previous setting").changed_by, "alice");
    assert_eq!(setting_on(&leader_addr, "db/url").await.changed_by, "bob");

    // No header: anonymous. The client library's credentials: its principal.
    c.settings.put(put("db/pool", "8")).await.expect("put without a header");
    assert_eq!(setting_on(&leader_addr, "db/pool").await.changed_by, "anonymous");
    client::put(&leader_addr, "db/user", "ops")
        .await
        .expect("put through the harness's client");
    assert_eq!(setting_on(&leader_addr, "db/user").await.changed_by, client::PRINCIPAL);

    // A watcher sees who deleted a setting.
    let mut w = client::connect_streaming(&follower_addr);
    let mut stream = tokio::time::timeout(
        Duration::from_secs(20),
        w.settings.watch(WatchRequest { prefix: "db/".into() }),
    )
    .await
    .expect("opening a watch hung")
    .expect("open a watch")
    .into_inner();
    c.settings
        .delete(as_principal(
            "carol",
            DeleteRequest {
                key: "db/pool".into(),
                expected_revision: None,
                ..Default::default()
            },
        ))
        .await
        .expect("delete as carol");
    // The follower may still be applying bob's put: skip to the delete.
    let deleted = loop {
        let event = tokio::time::timeout(Duration::from_secs(20), stream.message())
            .await
            .expect("no watch event for 20 s")
            .expect("the watch failed")
            .expect("the watch ended");
        if event.r#type() == Type::Delete {
            break event.setting.expect("a deleted setting");
        }
    };
    assert_eq!(
        (deleted.key.as_str(), deleted.changed_by.as_str()),
        ("db/pool", "carol")
    );

    // The principal reaches a run's trigger too, through a follower.
    res::apply_kind(&leader_addr, kinds::ONE_STEP_JOB)
        .await
        .expect("apply the kind");
    let created = c
        .resources
        .create(as_principal(
            "dave",
            CreateResourceRequest {
                kind: "job".into(),
                name: "nightly".into(),
                spec: Some(Default::default()),
                labels: Default::default(),
                reason: "the nightly job".into(),
            },
        ))
        .await
        .unwrap_or_else(|e| panic!("create as dave: {}", client::describe(&e)))
        .into_inner();
    let run = created.run.expect("creation starts a run");
    assert_eq!(
        (run.principal.as_str(), run.reason.as_str(), run.source()),
        ("dave", "the nightly job", opsd_tests::api::TriggerSource::Api)
    );
    res::wait_resting(&leader_addr, "job", "nightly", Duration::from_secs(30)).await;
    let history = res::history(&leader_addr, "job", "nightly").await.expect("history");
    assert!(
        history.iter().all(|r| r.principal == "dave"),
        "every run of the creation names dave: {history:?}"
    );

    // A malformed principal is refused by every service, before any handler
    // runs, and nothing is written.
    let too_long = "p".repeat(129);
    for bad in [too_long.as_str(), "tab\there"] {
        let status = c
            .settings
            .put(as_principal(bad, put("db/never", "x")))
            .await
            .unwrap_err();
        assert_refused_naming_the_header("Settings.Put", status);
        let status = c
            .resources
            .create(as_principal(
                bad,
                CreateResourceRequest {
                    kind: "job".into(),
                    name: "never".into(),
                    spec: Some(Default::default()),
                    labels: Default::default(),
                    reason: String::new(),
                },
            ))
            .await
            .unwrap_err();
        assert_refused_naming_the_header("Resources.Create", status);
        let status = c.cluster.status(as_principal(bad, StatusRequest {})).await.unwrap_err();
        assert_refused_naming_the_header("Cluster.Status", status);
    }
    let mut empty = Request::new(GetRequest {
        key: "db/url".into(),
        stale: false,
    });
    empty.metadata_mut().insert(HEADER, "".parse().expect("ascii"));
    assert_refused_naming_the_header("Settings.Get", c.settings.get(empty).await.unwrap_err());
    let absent = client::get(&leader_addr, "db/never", false).await.unwrap_err();
    assert_eq!(absent.code(), Code::NotFound, "a refused write wrote nothing");
    let absent = res::get(&leader_addr, "job", "never").await.unwrap_err();
    assert_eq!(absent.code(), Code::NotFound, "a refused create created nothing");
}
