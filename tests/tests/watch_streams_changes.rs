//! A watch on a follower streams the changes made through other nodes under
//! its prefix — puts and deletes, nothing outside the prefix — in revision
//! order, each with the revision the writer was given.

use std::time::Duration;

use opsd_tests::api::watch_event::Type;
use opsd_tests::api::{WatchEvent, WatchRequest};
use opsd_tests::{client, Cluster, Options};

#[tokio::test]
async fn watch_streams_changes() {
    let cluster = Cluster::start(3, Options::default()).await;
    let leader = cluster.leader().await;
    let followers = cluster.followers().await;
    let (watched, other) = (followers[0], followers[1]);

    let mut c = client::connect_streaming(&cluster.node(watched).client_addr());
    let mut stream = tokio::time::timeout(
        Duration::from_secs(20),
        c.settings.watch(WatchRequest { prefix: "app/".into() }),
    )
    .await
    .expect("opening a watch hung")
    .unwrap_or_else(|e| panic!("opening a watch: {}", client::describe(&e)))
    .into_inner();

    // Changes through the leader and the other follower; one outside the prefix.
    let mut expected: Vec<(Type, String, String, u64)> = Vec::new();
    let r = cluster.put(leader, "app/a", "1").await.expect("put").revision;
    expected.push((Type::Put, "app/a".into(), "1".into(), r));
    let r = cluster.put(other, "app/b", "2").await.expect("put").revision;
    expected.push((Type::Put, "app/b".into(), "2".into(), r));
    cluster.put(other, "elsewhere/x", "not watched").await.expect("put");
    cluster
        .put(leader, "ap", "not under the prefix either")
        .await
        .expect("put");
    let r = cluster.put(other, "app/a", "3").await.expect("put").revision;
    expected.push((Type::Put, "app/a".into(), "3".into(), r));
    let r = client::delete(&cluster.node(leader).client_addr(), "app/b")
        .await
        .expect("delete")
        .revision;
    expected.push((Type::Delete, "app/b".into(), "2".into(), r));
    // A last change outside the prefix, then a marker inside it: once the
    // marker arrives, anything outside the prefix would have arrived before it.
    cluster.put(other, "elsewhere/y", "not watched").await.expect("put");
    let r = cluster.put(leader, "app/zz-marker", "end").await.expect("put").revision;
    expected.push((Type::Put, "app/zz-marker".into(), "end".into(), r));

    let mut got: Vec<WatchEvent> = Vec::new();
    while got.len() < expected.len() {
        match tokio::time::timeout(Duration::from_secs(20), stream.message()).await {
            Err(_) => panic!("no watch event for 20 s; received so far: {got:#?}"),
            Ok(Err(e)) => panic!(
                "the watch ended with {}; received so far: {got:#?}",
                client::describe(&e)
            ),
            Ok(Ok(None)) => panic!("the watch ended; received so far: {got:#?}"),
            Ok(Ok(Some(ev))) => got.push(ev),
        }
    }
    let seen: Vec<(Type, String, String, u64)> = got
        .iter()
        .map(|ev| {
            let s = ev.setting.clone().expect("an event carries its setting");
            (ev.r#type(), s.key, s.value, ev.revision)
        })
        .collect();
    assert_eq!(
        seen,
        expected,
        "the watch on {} saw other changes than were made",
        cluster.node(watched).name()
    );
    assert!(
        got.windows(2).all(|w| w[0].revision < w[1].revision),
        "events out of revision order: {got:#?}"
    );
    // A delete's setting is the one deleted, its mod_revision the delete's revision.
    let del = &got[3];
    assert_eq!(del.setting.as_ref().unwrap().mod_revision, del.revision);
    // A put's setting carries the write's revision and the key's version.
    let second_a = got[2].setting.as_ref().unwrap();
    assert_eq!(
        (second_a.mod_revision, second_a.create_revision, second_a.version),
        (expected[2].3, expected[0].3, 2)
    );
    eprintln!(
        "watch on {} saw {} events in order: {seen:?}",
        cluster.node(watched).name(),
        got.len()
    );
}
