//! Revoking a token ends what it opened: on a 3-node cluster a token opens a
//! settings watch on every node, a resource watch and a `logs --follow` of
//! a running step; once it is revoked,
//! every one of those streams ends with UNAUTHENTICATED within seconds (each
//! node re-checks the token as it applies the revoke), and new calls with it
//! fail on every node.

use std::time::{Duration, Instant};

use opsd_tests::api::{LogsRequest, RevokeTokenRequest, WatchRequest, WatchResourceRequest, WhoAmIRequest};
use opsd_tests::resources as res;
use opsd_tests::{access, client, kinds, Cluster, Options};
use serde_json::json;
use tonic::Code;

const WITHIN: Duration = Duration::from_secs(10);

#[tokio::test]
async fn security_revoked_token_ends_watches() {
    let cluster = Cluster::start(3, Options::default()).await;
    let leader = cluster.leader().await;
    let leader_addr = cluster.node(leader).client_addr();
    res::apply_kind(&leader_addr, kinds::NOOP).await.expect("apply noop");
    res::create(&leader_addr, "noop", "w", json!({}))
        .await
        .expect("create noop/w");
    res::apply_kind(&leader_addr, kinds::SLOW_AND_HANGING)
        .await
        .expect("apply slow");
    res::create(&leader_addr, "slow", "s", json!({}))
        .await
        .expect("create slow/s");
    let running = res::do_event(&leader_addr, "slow", "s", "work", &[], "a long step")
        .await
        .expect("work")
        .run
        .expect("a run");

    let token = access::make_user(&leader_addr, "watcher", &["read:*"], 0).await;
    let id = token.split('.').nth(1).unwrap().to_string();

    // Every node knows the token (a follower may apply it a moment later).
    let addrs = cluster.client_addrs();
    for addr in &addrs {
        let started = Instant::now();
        loop {
            let mut c = access::clients_with_token(addr, Some(&token), Some(Duration::from_secs(5)));
            match c.security.who_am_i(WhoAmIRequest {}).await {
                Ok(who) => {
                    assert_eq!(who.into_inner().user, "watcher");
                    break;
                }
                Err(e) if started.elapsed() < WITHIN => {
                    let _ = e;
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Err(e) => panic!("{addr} never accepted the token: {}", client::describe(&e)),
            }
        }
    }

    // A settings watch on every node, and a resource watch.
    let mut settings_watches = Vec::new();
    for addr in &addrs {
        let mut c = access::clients_with_token(addr, Some(&token), None);
        let stream = tokio::time::timeout(WITHIN, c.settings.watch(WatchRequest { prefix: String::new() }))
            .await
            .expect("opening a watch hung")
            .unwrap_or_else(|e| panic!("watch on {addr}: {}", client::describe(&e)))
            .into_inner();
        settings_watches.push((addr.clone(), stream));
    }
    let mut c = access::clients_with_token(&addrs[0], Some(&token), None);
    let mut resource_watch = tokio::time::timeout(
        WITHIN,
        c.resources.watch(WatchResourceRequest {
            kind: "noop".into(),
            name: "w".into(),
        }),
    )
    .await
    .expect("opening a resource watch hung")
    .expect("a resource watch")
    .into_inner();
    resource_watch
        .message()
        .await
        .expect("the resource as it is")
        .expect("a first message");
    let mut logs = tokio::time::timeout(
        WITHIN,
        c.resources.logs(LogsRequest {
            run_id: running.run_id.clone(),
            follow: true,
        }),
    )
    .await
    .expect("opening a log follow hung")
    .expect("a log follow")
    .into_inner();
    // The watches work before the revoke.
    client::put(&leader_addr, "seen/before", "1").await.expect("put");
    for (addr, stream) in &mut settings_watches {
        let event = tokio::time::timeout(WITHIN, stream.message())
            .await
            .unwrap_or_else(|_| panic!("no event on {addr}"))
            .expect("an event")
            .expect("the watch is open");
        assert_eq!(event.setting.unwrap().key, "seen/before");
    }

    client::connect(&leader_addr)
        .security
        .revoke_token(RevokeTokenRequest { id })
        .await
        .expect("revoke the token");

    // Every stream ends with UNAUTHENTICATED.
    for (addr, stream) in &mut settings_watches {
        let ended = tokio::time::timeout(WITHIN, async {
            loop {
                match stream.message().await {
                    Ok(Some(_)) => continue,
                    Ok(None) => panic!("the watch on {addr} ended without an error"),
                    Err(status) => return status,
                }
            }
        })
        .await
        .unwrap_or_else(|_| panic!("the settings watch on {addr} was still open {WITHIN:?} after the revoke"));
        assert_eq!(
            ended.code(),
            Code::Unauthenticated,
            "{addr}: {}",
            client::describe(&ended)
        );
        assert!(ended.message().contains("revoked"), "{addr}: {}", ended.message());
    }
    let ended = tokio::time::timeout(WITHIN, async {
        loop {
            match resource_watch.message().await {
                Ok(Some(_)) => continue,
                Ok(None) => panic!("the resource watch ended without an error"),
                Err(status) => return status,
            }
        }
    })
    .await
    .expect("the resource watch was still open after the revoke");
    assert_eq!(ended.code(), Code::Unauthenticated, "{}", client::describe(&ended));
    let ended = tokio::time::timeout(WITHIN, async {
        loop {
            match logs.message().await {
                Ok(Some(_)) => continue,
                Ok(None) => panic!("the log follow ended without an error"),
                Err(status) => return status,
            }
        }
    })
    .await
    .expect("the log follow was still open after the revoke");
    assert_eq!(ended.code(), Code::Unauthenticated, "{}", client::describe(&ended));
    res::cancel(&leader_addr, &running.run_id)
        .await
        .expect("cancel the long step");

    // New calls with it fail on every node.
    for addr in &addrs {
        let mut c = access::clients_with_token(addr, Some(&token), Some(Duration::from_secs(5)));
        let refused = c.security.who_am_i(WhoAmIRequest {}).await.unwrap_err();
        assert_eq!(
            refused.code(),
            Code::Unauthenticated,
            "{addr}: {}",
            client::describe(&refused)
        );
        assert!(
            refused.message().contains("unknown or revoked token"),
            "{}",
            refused.message()
        );
    }
}
