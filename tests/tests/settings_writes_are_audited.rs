//! Who changed what is audit, for settings as for runs: the user of the
//! token a request carries reaches a run's trigger and a setting's
//! last-change fields on every node; a request without a token, or with a
//! malformed one, is refused by every service with UNAUTHENTICATED, changing
//! nothing; and the old `x-opsd-principal` header names no one.

use std::collections::HashMap;
use std::sync::OnceLock;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use opsd_tests::api::watch_event::Type;
use opsd_tests::api::{
    CreateResourceRequest, DeleteRequest, GetRequest, PutRequest, Setting, StatusRequest, WatchRequest,
};
use opsd_tests::resources as res;
use opsd_tests::{access, client, kinds, Cluster, Options};
use tonic::{Code, Request};

const HEADER: &str = "x-opsd-principal";

fn now_ms() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_millis() as i64
}

/// Clients sending no token of their own (the harness's clients send the
/// admin's), so each request can carry its user's.
fn anonymous(addr: &str) -> client::Clients {
    access::clients_with_token(addr, None, Some(client::REQUEST_TIMEOUT))
}

/// Each test user's token, made once.
static TOKENS: OnceLock<HashMap<String, String>> = OnceLock::new();

fn as_principal<T>(principal: &str, msg: T) -> Request<T> {
    let token = &TOKENS.get().expect("the users were made")[principal];
    let mut req = Request::new(msg);
    req.metadata_mut()
        .insert("authorization", format!("Bearer {token}").parse().expect("ascii"));
    req
}

fn malformed<T>(msg: T) -> Request<T> {
    let mut req = Request::new(msg);
    req.metadata_mut()
        .insert("authorization", "Bearer opsd1.nope".parse().expect("ascii"));
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

fn assert_unauthenticated(what: &str, status: tonic::Status) {
    assert_eq!(
        status.code(),
        Code::Unauthenticated,
        "{what}: {}",
        client::describe(&status)
    );
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
    let mut tokens = HashMap::new();
    for user in ["alice", "bob", "carol", "dave"] {
        let token = access::make_user(&leader_addr, user, &["read,write,do:*"], 0).await;
        tokens.insert(user.to_string(), token);
    }
    TOKENS.set(tokens).expect("made once");
    // The follower has the users once it has applied what the leader has.
    client::get(&follower_addr, "absent", false).await.ok();

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

    // No token: refused, nothing written. The harness's token: its user.
    let status = c.settings.put(put("db/never", "8")).await.unwrap_err();
    assert_unauthenticated("Settings.Put without a token", status);
    c.settings
        .put(as_principal("alice", put("db/pool", "8")))
        .await
        .expect("put as alice");
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

    // The old principal header names no one: the token's user is recorded.
    let mut claimed = as_principal("bob", put("db/claimed", "x"));
    claimed.metadata_mut().insert(HEADER, "mallory".parse().expect("ascii"));
    c.settings.put(claimed).await.expect("put as bob, claiming mallory");
    assert_eq!(setting_on(&leader_addr, "db/claimed").await.changed_by, "bob");

    // A malformed token is refused by every service, and nothing is written.
    {
        let status = c.settings.put(malformed(put("db/never", "x"))).await.unwrap_err();
        assert_unauthenticated("Settings.Put", status);
        let status = c
            .resources
            .create(malformed(CreateResourceRequest {
                kind: "job".into(),
                name: "never".into(),
                spec: Some(Default::default()),
                labels: Default::default(),
                reason: String::new(),
            }))
            .await
            .unwrap_err();
        assert_unauthenticated("Resources.Create", status);
        let status = c.cluster.status(malformed(StatusRequest {})).await.unwrap_err();
        assert_unauthenticated("Cluster.Status", status);
    }
    let get = GetRequest {
        key: "db/url".into(),
        stale: false,
        ..Default::default()
    };
    assert_unauthenticated("Settings.Get", c.settings.get(malformed(get)).await.unwrap_err());
    let absent = client::get(&leader_addr, "db/never", false).await.unwrap_err();
    assert_eq!(absent.code(), Code::NotFound, "a refused write wrote nothing");
    let absent = res::get(&leader_addr, "job", "never").await.unwrap_err();
    assert_eq!(absent.code(), Code::NotFound, "a refused create created nothing");
}
