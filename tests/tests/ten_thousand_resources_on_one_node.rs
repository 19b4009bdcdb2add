//! 10,000 resources of a no-op kind on one node: created, then each driven
//! through one transition whose work state succeeds at once. Every one
//! arrives, every run is recorded once, and the stats count them all. Time
//! and memory are printed, not asserted.

use std::sync::Arc;
use std::time::{Duration, Instant};

use opsd_tests::api::ListResourcesRequest;
use opsd_tests::resources as res;
use opsd_tests::{client, kinds, wait_until, Cluster, Options};
use tokio::sync::Semaphore;

const COUNT: usize = 10_000;
const CONCURRENCY: usize = 64;

/// Runs `op(i)` for every i in 0..COUNT, CONCURRENCY at a time; panics on the first error.
async fn for_each<F, Fut>(op: F)
where
    F: Fn(usize) -> Fut,
    Fut: std::future::Future<Output = Result<(), String>> + Send + 'static,
{
    let limit = Arc::new(Semaphore::new(CONCURRENCY));
    let mut tasks = Vec::with_capacity(COUNT);
    for i in 0..COUNT {
        let permit = limit.clone().acquire_owned().await.unwrap();
        let fut = op(i);
        tasks.push(tokio::spawn(async move {
            let r = fut.await;
            drop(permit);
            r
        }));
    }
    for t in tasks {
        t.await.unwrap().unwrap();
    }
}

async fn count_in(addr: &str, state: &str) -> Result<usize, String> {
    let all = client::connect(addr)
        .resources
        .list(ListResourcesRequest {
            kind: "noop".into(),
            stale: true,
        })
        .await
        .map_err(|e| e.to_string())?
        .into_inner()
        .resources;
    Ok(all.iter().filter(|r| r.state == state).count())
}

#[tokio::test]
async fn ten_thousand_resources_on_one_node() {
    let cluster = Cluster::start(1, Options::default()).await;
    let addr = cluster.node(0).client_addr();
    let node = cluster.node(0);
    res::apply_kind(&addr, kinds::NOOP).await.expect("apply the kind");
    let idle_rss = node.rss_mb();

    let started = Instant::now();
    let a = addr.clone();
    for_each(move |i| {
        let a = a.clone();
        async move {
            res::create(&a, "noop", &format!("n{i:05}"), serde_json::json!({}))
                .await
                .map(|_| ())
                .map_err(|e| format!("create n{i:05}: {e}"))
        }
    })
    .await;
    let created = started.elapsed();
    assert_eq!(count_in(&addr, "idle").await.unwrap(), COUNT);

    let driving = Instant::now();
    let a = addr.clone();
    for_each(move |i| {
        let a = a.clone();
        async move {
            res::do_event(&a, "noop", &format!("n{i:05}"), "go", &[], "")
                .await
                .map(|_| ())
                .map_err(|e| format!("go n{i:05}: {e}"))
        }
    })
    .await;
    wait_until(
        "every resource to be done",
        Duration::from_secs(600),
        Duration::from_millis(500),
        || async {
            let done = count_in(&addr, "done").await?;
            (done == COUNT).then_some(()).ok_or(format!("{done} of {COUNT} done"))
        },
    )
    .await;
    let driven = driving.elapsed();
    let rss = node.rss_mb();
    println!(
        "SCALE {COUNT} resources: created in {created:.1?} ({:.0}/s); driven through one transition in {driven:.1?} \
         ({:.0}/s); RSS idle {idle_rss:.0} MiB, after {rss:.0} MiB",
        COUNT as f64 / created.as_secs_f64(),
        COUNT as f64 / driven.as_secs_f64()
    );

    let stats = res::stats(&addr, "noop").await.unwrap();
    let go = stats
        .iter()
        .find(|t| t.from == "idle" && t.to == "going")
        .expect("stats of idle -> going");
    assert_eq!((go.count, go.succeeded), (COUNT as u64, COUNT as u64));
    for i in (0..COUNT).step_by(997) {
        let history = res::history(&addr, "noop", &format!("n{i:05}")).await.unwrap();
        let outcomes: Vec<(&str, &str)> = history.iter().map(|r| (r.to.as_str(), r.outcome().label())).collect();
        assert_eq!(outcomes, vec![("idle", "succeeded"), ("going", "succeeded")]);
    }
}
