//! Bad requests are refused with the documented code and a message naming the
//! field, through the leader and through a follower alike, and change nothing:
//! no key appears, no log entry is applied, a compare-and-set with a stale
//! revision leaves the value as it was. The limits themselves are accepted.
//! A request message that does not decode is INVALID_ARGUMENT too.

use opsd_tests::api::{DeleteRequest, GetRequest, PutRequest, PutResponse, StatusResponse};
use opsd_tests::{client, Cluster, Options};
use tonic::{Code, Status};

/// A snapshot of everything a bad request might have changed.
#[derive(Debug, PartialEq)]
struct State {
    settings: Vec<opsd_tests::api::Setting>,
    applied_index: u64,
    last_log_index: u64,
}

async fn state(cluster: &Cluster, leader: usize) -> State {
    let listed = cluster.list(leader, "", false).await.expect("list on the leader");
    let s = cluster.node(leader).status().await.expect("leader status");
    State {
        settings: listed.settings,
        applied_index: s.applied_index,
        last_log_index: s.last_log_index,
    }
}

fn put(key: &str, value: &str, expected_revision: Option<u64>) -> PutRequest {
    PutRequest {
        key: key.into(),
        value: value.into(),
        expected_revision,
        ..Default::default()
    }
}

fn assert_refused(outcome: Result<impl std::fmt::Debug, Status>, code: Code, field: &str, what: &str) {
    match outcome {
        Ok(r) => panic!("{what}: accepted ({r:?}), expected {code:?}"),
        Err(e) => {
            assert_eq!(e.code(), code, "{what}: {}", client::describe(&e));
            assert!(
                e.message().contains(field),
                "{what}: the message does not name {field:?}: {}",
                client::describe(&e)
            );
        }
    }
}

/// Sends `Settings.Put` a message that is not a `PutRequest`: its field 1 is
/// a number where a put's key (a string) is expected, so it does not decode.
async fn undecodable_put(addr: &str) -> Result<PutResponse, Status> {
    let channel = opsd_tests::access::endpoint(addr)
        .connect()
        .await
        .unwrap_or_else(|e| panic!("connecting to {addr}: {e}"));
    let mut grpc = tonic::client::Grpc::new(channel);
    grpc.ready().await.expect("a ready channel");
    let not_a_put = StatusResponse {
        node_id: 7,
        ..Default::default()
    };
    let codec = tonic_prost::ProstCodec::<StatusResponse, PutResponse>::default();
    let path = tonic::codegen::http::uri::PathAndQuery::from_static("/opsd.v1.Settings/Put");
    grpc.unary(tonic::Request::new(not_a_put), path, codec)
        .await
        .map(|r| r.into_inner())
}

#[tokio::test]
async fn bad_input_changes_nothing() {
    let cluster = Cluster::start(3, Options::default()).await;
    let leader = cluster.leader().await;
    let follower = cluster.followers().await[0];
    let kept = cluster.put(leader, "app/kept", "original").await.expect("a good write");
    let before = state(&cluster, leader).await;

    let long_key = "k".repeat(513);
    let long_value = "v".repeat(65537);
    for via in [leader, follower] {
        let name = cluster.node(via).name().to_string();
        let mut c = cluster.node(via).client();
        let s = &mut c.settings;
        assert_refused(
            s.put(put("", "v", None)).await,
            Code::InvalidArgument,
            "key",
            &format!("put with an empty key via {name}"),
        );
        assert_refused(
            s.put(put(&long_key, "v", None)).await,
            Code::InvalidArgument,
            "key",
            &format!("put with a 513-byte key via {name}"),
        );
        assert_refused(
            s.put(put("app/big", &long_value, None)).await,
            Code::InvalidArgument,
            "value",
            &format!("put with a 65537-byte value via {name}"),
        );
        assert_refused(
            s.put(put("app/with space", "v", None)).await,
            Code::InvalidArgument,
            "key",
            &format!("put with whitespace in the key via {name}"),
        );
        assert_refused(
            s.put(put("app/ctl\u{7}", "v", None)).await,
            Code::InvalidArgument,
            "key",
            &format!("put with a control character in the key via {name}"),
        );
        assert_refused(
            s.delete(DeleteRequest {
                key: String::new(),
                expected_revision: None,
                ..Default::default()
            })
            .await,
            Code::InvalidArgument,
            "key",
            &format!("delete with an empty key via {name}"),
        );
        assert_refused(
            s.get(GetRequest {
                key: String::new(),
                stale: false,
                ..Default::default()
            })
            .await,
            Code::InvalidArgument,
            "key",
            &format!("get with an empty key via {name}"),
        );

        // A request message that does not decode is the request's fault.
        assert_refused(
            undecodable_put(&cluster.node(via).client_addr()).await,
            Code::InvalidArgument,
            "could not be decoded",
            &format!("a put whose message does not decode via {name}"),
        );

        // Compare-and-set against a revision the key does not have.
        assert_refused(
            s.put(put("app/kept", "clobbered", Some(kept.revision + 1000))).await,
            Code::FailedPrecondition,
            "revision",
            &format!("put with a stale expected_revision via {name}"),
        );
        assert_refused(
            s.put(put("app/kept", "clobbered", Some(0))).await,
            Code::FailedPrecondition,
            "revision",
            &format!("create-only put of an existing key via {name}"),
        );
        assert_refused(
            s.delete(DeleteRequest {
                key: "app/kept".into(),
                expected_revision: Some(kept.revision + 1000),
                ..Default::default()
            })
            .await,
            Code::FailedPrecondition,
            "revision",
            &format!("delete with a stale expected_revision via {name}"),
        );

        // Missing keys.
        for stale in [false, true] {
            assert_refused(
                s.get(GetRequest {
                    key: "app/missing".into(),
                    stale,
                    ..Default::default()
                })
                .await,
                Code::NotFound,
                "app/missing",
                &format!("get of a missing key via {name} (stale {stale})"),
            );
        }
        assert_refused(
            s.delete(DeleteRequest {
                key: "app/missing".into(),
                expected_revision: None,
                ..Default::default()
            })
            .await,
            Code::NotFound,
            "app/missing",
            &format!("delete of a missing key via {name}"),
        );
    }

    // Nothing changed: same keys and values, no entry appended to the log.
    // (A refused compare-and-set may be decided by apply, so it is an entry
    // that changed no data; the data is what must not change.)
    let after = state(&cluster, leader).await;
    assert_eq!(
        after.settings, before.settings,
        "a refused request changed the settings"
    );
    let got = cluster.get(follower, "app/kept", false).await.expect("the kept key");
    let setting = got.setting.expect("a setting");
    assert_eq!(
        (setting.value.as_str(), setting.mod_revision, setting.version),
        ("original", kept.revision, 1)
    );
    eprintln!(
        "log before the bad requests: applied {} last {}; after: applied {} last {}",
        before.applied_index, before.last_log_index, after.applied_index, after.last_log_index
    );

    // Validation failures never reach the log at all: send only those and
    // compare log indexes. (Measured again if an election happened meanwhile,
    // since a new leader appends an entry of its own.)
    let mut attempts = 0;
    loop {
        attempts += 1;
        let term_before = cluster.node(leader).status().await.expect("status").term;
        let quiet_before = state(&cluster, leader).await;
        for via in [leader, follower] {
            let mut c = cluster.node(via).client();
            let _ = c.settings.put(put("", "v", None)).await;
            let _ = c.settings.put(put(&long_key, "v", None)).await;
            let _ = c.settings.put(put("app/big", &long_value, None)).await;
        }
        let quiet_after = state(&cluster, leader).await;
        let term_after = cluster.node(leader).status().await.expect("status").term;
        if term_after != term_before && attempts < 3 {
            eprintln!(
                "an election happened during the measurement (term {term_before} -> {term_after}); measuring again"
            );
            continue;
        }
        assert_eq!(quiet_after, quiet_before, "an invalid request reached the log");
        break;
    }

    // The limits themselves are fine: a 512-byte key, a 65536-byte value, an empty value.
    let max_key = "k".repeat(512);
    let max_value = "v".repeat(65536);
    cluster
        .put(follower, &max_key, "v")
        .await
        .expect("a 512-byte key is allowed");
    cluster
        .put(follower, "app/max-value", &max_value)
        .await
        .expect("a 65536-byte value is allowed");
    cluster
        .put(follower, "app/empty-value", "")
        .await
        .expect("an empty value is allowed");
    let got = cluster
        .get(leader, "app/max-value", false)
        .await
        .expect("the largest value");
    assert_eq!(got.setting.expect("a setting").value.len(), 65536);

    // And a compare-and-set with the right revision succeeds.
    let cas = cluster
        .node(follower)
        .client()
        .settings
        .put(put("app/kept", "updated", Some(kept.revision)))
        .await
        .expect("a put with the current revision")
        .into_inner();
    assert_eq!(cas.previous.expect("the previous setting").value, "original");
    let got = cluster
        .get(leader, "app/kept", false)
        .await
        .expect("the updated key")
        .setting
        .expect("a setting");
    assert_eq!(
        (got.value.as_str(), got.mod_revision, got.version),
        ("updated", cas.revision, 2)
    );
}
