//! A service swaps from one cluster to another and back with no request
//! lost: three opsd nodes, each with its own load balancer host
//! (`--lb-host 127.0.0.2`, `.3`, `.4`); two clusters of the test backend,
//! `web-v1` and `web-v2` (each machine answers `CLUSTER mINDEX`), each with
//! an acceptance check on its own answer; `service/web` in front of
//! `web-v1`. Clients send requests through the load balancer of every node
//! the whole time, a new connection each. Then `swap --arg cluster=web-v2`
//! and `swap-back`, through opsctl as an operator would:
//!
//! - not one request fails, through any node, at any time;
//! - after each swap's `do --wait` returns, every node answers with the new
//!   cluster within 1 s, and every request sent after that second does;
//! - the service's outputs say which cluster is active and which was before,
//!   and `opsctl resolve` lists every node's endpoint and the active backends.

use std::time::{Duration, Instant};

use opsd_tests::service::{self, Bed, Traffic};

const TEST: &str = "service_swap_and_swap_back";
/// How soon after `do --wait` returns every node must route to the new cluster.
const SWITCH: Duration = Duration::from_secs(1);

/// Swaps `service/web` with opsctl (`args` after `do service/web`), which
/// must succeed. Then requires every node's load balancer to answer `to`
/// within [`SWITCH`] of its return. Returns when opsctl started and returned.
async fn swap(bed: &Bed, args: &[&str], to: &str) -> (Instant, Instant) {
    let mut full = vec!["do", "service/web"];
    full.extend_from_slice(args);
    let started = Instant::now();
    bed.ok(&full).await;
    let acked = Instant::now();
    eprintln!("[test] opsctl {full:?} took {:?}", acked - started);
    let lbs = bed.lbs(&bed.cluster.serving());
    let times = service::switch_times(&lbs, to, acked, Duration::from_secs(15)).await;
    eprintln!("[test] the load balancers answered {to} after {times:?}");
    for (lb, t) in lbs.iter().zip(&times) {
        assert!(
            *t <= SWITCH,
            "{lb} answered {to} only {t:?} after the swap was acknowledged (at most {SWITCH:?})"
        );
    }
    (started, acked)
}

#[tokio::test]
async fn service_swap_and_swap_back() {
    let Some(bed) = Bed::start(TEST, 3).await else {
        return;
    };
    bed.backend_image("backend").await;
    let v1 = bed.running_cluster("web-v1", "backend", 2).await;
    let v2 = bed.running_cluster("web-v2", "backend", 2).await;
    for (name, ms) in [("web-v1", &v1), ("web-v2", &v2)] {
        for m in ms.iter() {
            let body = service::get(m.address, "/", Duration::from_secs(5))
                .await
                .unwrap_or_else(|e| panic!("{name} machine {}: {e}", m.index));
            assert_eq!(
                body,
                format!("{name} m{}", m.index),
                "{name}'s machine answers directly"
            );
        }
    }

    let created = bed.create_service("web", "web-v1").await;
    let endpoints = created["outputs"]["endpoints"].to_string();
    for i in 0..3 {
        assert!(
            endpoints.contains(&bed.lb(i).to_string()),
            "outputs.endpoints names every node's load balancer ({}): {created:#}",
            bed.lb(i)
        );
    }

    // Round robin: both machines of web-v1 answer through every node (once
    // each node's health checks have seen both).
    for i in 0..3 {
        let seen = std::sync::Mutex::new(std::collections::BTreeSet::new());
        opsd_tests::wait_until(
            &format!("both machines of web-v1 to answer through {}", bed.lb(i)),
            Duration::from_secs(10),
            Duration::from_millis(20),
            || async {
                let body = service::get(bed.lb(i), "/", Duration::from_secs(5)).await?;
                let mut seen = seen.lock().unwrap_or_else(|e| e.into_inner());
                seen.insert(body);
                (seen.len() >= 2).then_some(()).ok_or(format!("seen {seen:?}"))
            },
        )
        .await;
        let seen = seen.into_inner().unwrap_or_else(|e| e.into_inner());
        assert_eq!(
            seen.into_iter().collect::<Vec<_>>(),
            vec!["web-v1 m0".to_string(), "web-v1 m1".to_string()],
            "{} answers only with web-v1's machines",
            bed.lb(i)
        );
    }

    // discovery: the endpoints of every node and the active backends.
    let resolved = bed.opsctl().json(&["resolve", "service/web"]).await.to_string();
    for i in 0..3 {
        assert!(
            resolved.contains(&bed.lb(i).to_string()),
            "resolve lists {}: {resolved}",
            bed.lb(i)
        );
    }
    for m in &v1 {
        assert!(
            resolved.contains(&m.address.to_string()),
            "resolve lists web-v1's machine {}: {resolved}",
            m.address
        );
    }

    let lbs = bed.lbs(&[0, 1, 2]);
    let origin = Instant::now();
    let traffic = Traffic::start(&lbs, Duration::from_millis(20));
    tokio::time::sleep(Duration::from_secs(2)).await;

    let (v2_started, to_v2) = swap(
        &bed,
        &["swap", "--arg", "cluster=web-v2", "--reason", "release v2", "--wait"],
        "web-v2",
    )
    .await;
    let s = bed.get("service/web").await;
    assert_eq!(
        (
            s["state"].as_str(),
            s["outputs"]["active"].as_str(),
            s["outputs"]["previous"].as_str()
        ),
        (Some("serving"), Some("web-v2"), Some("web-v1")),
        "{s:#}"
    );
    let resolved = bed.opsctl().json(&["resolve", "service/web"]).await.to_string();
    for m in &v2 {
        assert!(
            resolved.contains(&m.address.to_string()),
            "after the swap, resolve lists web-v2's machine {}: {resolved}",
            m.address
        );
    }
    tokio::time::sleep(Duration::from_secs(3)).await;

    let (back_started, back) = swap(&bed, &["swap-back", "--reason", "roll back", "--wait"], "web-v1").await;
    let s = bed.get("service/web").await;
    assert_eq!(
        (
            s["state"].as_str(),
            s["outputs"]["active"].as_str(),
            s["outputs"]["previous"].as_str()
        ),
        (Some("serving"), Some("web-v1"), Some("web-v2")),
        "{s:#}"
    );
    tokio::time::sleep(Duration::from_secs(3)).await;

    let samples = traffic.finish().await;
    eprintln!(
        "[test] {} requests through the 3 load balancers over {:?}",
        samples.len(),
        origin.elapsed()
    );
    service::assert_no_failures(&samples, &lbs, origin, "through the swap and the swap back");
    service::assert_answers_between(&samples, &[0, 1, 2], (origin, v2_started), "web-v1", "before the swap");
    service::assert_answers_between(
        &samples,
        &[0, 1, 2],
        (to_v2 + SWITCH, back_started),
        "web-v2",
        "from 1 s after the swap to v2",
    );
    service::assert_answers_between(
        &samples,
        &[0, 1, 2],
        (back + SWITCH, Instant::now()),
        "web-v1",
        "from 1 s after the swap back",
    );
    let early = samples
        .iter()
        .filter(|s| s.sent < to_v2 && s.answer.as_deref().is_ok_and(|b| b.contains("web-v2")))
        .count();
    eprintln!("[test] {early} requests answered web-v2 while the swap's opsctl ran");
}
