//! A service keeps answering through what goes wrong around it. Three opsd
//! nodes with their own load balancer hosts (`127.0.0.2`, `.3`, `.4`),
//! `service/web` in front of `web-v1` (two machines of the test backend),
//! `web-v2` ready beside it, and clients sending requests through every
//! node's load balancer the whole time, a new connection each:
//!
//! - (a) a cluster whose acceptance check fails lands `failed` with its
//!   machines kept (they still answer when asked directly), and a swap to it
//!   fails (`do --wait` exits 1) and leaves the service on `web-v1`;
//! - (d) a swap to a cluster that does not exist, and one to a stopped
//!   cluster, are refused or fail naming the cluster, and change nothing;
//! - (c) a machine of `web-v1` killed with kill -9 (its pid from
//!   `outputs.machines`): requests through the load balancers still all
//!   succeed, on the other machine (but for one the machine had taken at
//!   the moment it died, which a load balancer of connections cannot save);
//! - (b) kill -9 of the opsd leader: requests through the surviving nodes'
//!   load balancers all succeed, and a swap to `web-v2` after the failover
//!   works: the survivors answer `web-v2`.
//!
//! Not one request fails through any node while it runs, but for those the
//! killed machine held.

use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use opsd_tests::service::{self, Bed, Traffic};
use opsd_tests::FORM_TIMEOUT;

const TEST: &str = "service_survives_failures";
/// How soon after a swap's `do --wait` returns every surviving node must
/// route to the new cluster (after a failover, with a margin over the
/// 1 s of `service_swap_and_swap_back`).
const SWITCH: Duration = Duration::from_secs(2);

/// Requires `service/web` to be as it was (`before`: its JSON from `get`):
/// serving, with the same `active`, `previous` and `endpoints` (a failed
/// swap may add the checks it ran to the outputs, nothing else).
async fn unchanged(bed: &Bed, before: &serde_json::Value, after_what: &str) {
    let now = bed.get("service/web").await;
    assert_eq!(now["state"], "serving", "{after_what}: {now:#}");
    for key in ["active", "previous", "endpoints"] {
        assert_eq!(
            now["outputs"][key], before["outputs"][key],
            "{after_what}: the service's outputs.{key} changed: {now:#}"
        );
    }
}

#[tokio::test]
async fn service_survives_failures() {
    let Some(bed) = Bed::start(TEST, 3).await else {
        return;
    };
    bed.backend_image("backend").await;
    let v1 = bed.running_cluster("web-v1", "backend", 2).await;
    bed.running_cluster("web-v2", "backend", 2).await;
    let serving = bed.create_service("web", "web-v1").await;

    let lbs = bed.lbs(&[0, 1, 2]);
    let origin = Instant::now();
    let mut traffic = Traffic::start(&lbs, Duration::from_millis(20));

    // (a) A cluster whose check fails: `failed`, its machines kept and answering.
    let out = bed
        .create_cluster(
            "web-bad",
            "backend",
            2,
            Some(r#"[{"type":"http","path":"/","body":"^never$"}]"#),
        )
        .await;
    assert_eq!(
        out.status.code(),
        Some(1),
        "creating a cluster whose check fails exits 1:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let bad = bed.get("cluster/web-bad").await;
    assert_eq!(bad["state"], "failed", "{bad:#}");
    let bad_machines = service::machines(&bad["outputs"]);
    assert_eq!(bad_machines.len(), 2, "a failed check keeps the machines: {bad:#}");
    for m in &bad_machines {
        let body = service::get(m.address, "/", Duration::from_secs(5))
            .await
            .unwrap_or_else(|e| panic!("web-bad's machine {} is kept and answers: {e}", m.index));
        assert_eq!(body, format!("web-bad m{}", m.index));
    }
    // ... and a swap to it fails, changing nothing.
    let said = bed
        .fails(&[
            "do",
            "service/web",
            "swap",
            "--arg",
            "cluster=web-bad",
            "--reason",
            "try the bad one",
            "--wait",
        ])
        .await;
    assert!(said.contains("web-bad"), "the failed swap names the cluster:\n{said}");
    unchanged(&bed, &serving, "after a swap to a failed cluster").await;

    // (d) A swap to a cluster that does not exist, and to a stopped one.
    let said = bed
        .fails(&[
            "do",
            "service/web",
            "swap",
            "--arg",
            "cluster=no-such-cluster",
            "--reason",
            "typo",
            "--wait",
        ])
        .await;
    assert!(
        said.contains("no-such-cluster"),
        "a swap to an unknown cluster names it:\n{said}"
    );
    unchanged(&bed, &serving, "after a swap to an unknown cluster").await;
    bed.running_cluster("web-stopped", "backend", 1).await;
    bed.ok(&["do", "cluster/web-stopped", "stop", "--reason", "not today", "--wait"])
        .await;
    assert_eq!(bed.get("cluster/web-stopped").await["state"], "stopped");
    let said = bed
        .fails(&[
            "do",
            "service/web",
            "swap",
            "--arg",
            "cluster=web-stopped",
            "--reason",
            "the stopped one",
            "--wait",
        ])
        .await;
    assert!(
        said.contains("web-stopped"),
        "a swap to a stopped cluster names it:\n{said}"
    );
    unchanged(&bed, &serving, "after a swap to a stopped cluster").await;

    // (c) A backend machine dies: the load balancers go on with the other one.
    let victim = &v1[0];
    let pid = victim
        .pid
        .unwrap_or_else(|| panic!("web-v1's machine {} has no pid in outputs.machines", victim.index));
    let machine_killed = Instant::now();
    kill(Pid::from_raw(pid as i32), Signal::SIGKILL)
        .unwrap_or_else(|e| panic!("kill -9 of web-v1's machine {} (pid {pid}): {e}", victim.index));
    let machine_dead = Instant::now();
    opsd_tests::wait_until(
        &format!(
            "web-v1's machine {} ({}) to stop answering",
            victim.index, victim.address
        ),
        Duration::from_secs(10),
        Duration::from_millis(50),
        || async {
            match service::get(victim.address, "/", Duration::from_secs(1)).await {
                Err(_) => Ok(()),
                Ok(body) => Err(format!("still answers {body:?}")),
            }
        },
    )
    .await;
    tokio::time::sleep(Duration::from_secs(5)).await;

    // (b) kill -9 of the opsd leader while traffic flows through the others.
    let leader = bed.cluster.leader().await;
    let survivors: Vec<usize> = (0..3).filter(|&i| i != leader).collect();
    traffic.stop(leader).await;
    let leader_killed = Instant::now();
    bed.cluster.node(leader).kill9();
    eprintln!("[test] killed the leader, {}", bed.cluster.node(leader).name());
    tokio::time::sleep(Duration::from_secs(3)).await;
    bed.cluster.wait_for_leader(&[], FORM_TIMEOUT).await;
    let swap_started = Instant::now();
    bed.ok(&[
        "do",
        "service/web",
        "swap",
        "--arg",
        "cluster=web-v2",
        "--reason",
        "release v2 after the failover",
        "--wait",
    ])
    .await;
    let acked = Instant::now();
    let times = service::switch_times(&bed.lbs(&survivors), "web-v2", acked, Duration::from_secs(15)).await;
    eprintln!("[test] after the failover, the survivors answered web-v2 after {times:?}");
    for (i, t) in survivors.iter().zip(&times) {
        assert!(
            *t <= SWITCH,
            "{} answered web-v2 only {t:?} after the swap was acknowledged (at most {SWITCH:?})",
            bed.lb(*i)
        );
    }
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
    tokio::time::sleep(Duration::from_secs(2)).await;

    let samples = traffic.finish().await;
    eprintln!(
        "[test] {} requests through the load balancers over {:?}",
        samples.len(),
        origin.elapsed()
    );
    // A request the machine had taken when it was killed dies with it: the
    // load balancer passes bytes through and cannot replay them elsewhere.
    // Every other request must succeed.
    let (in_flight, samples): (Vec<_>, Vec<_>) = samples
        .into_iter()
        .partition(|s| s.sent <= machine_dead && s.done >= machine_killed);
    eprintln!(
        "[test] {} requests were in flight when the machine was killed: {:?}",
        in_flight.len(),
        in_flight.iter().map(|s| &s.answer).collect::<Vec<_>>()
    );
    service::assert_no_failures(
        &samples,
        &lbs,
        origin,
        "through a failed cluster, refused swaps, a dead machine and a dead leader",
    );
    service::assert_answers_between(
        &samples,
        &[0, 1, 2],
        (origin, swap_started),
        "web-v1",
        "until the swap after the failover",
    );
    service::assert_answers_between(
        &samples,
        &[0, 1, 2],
        (machine_killed + Duration::from_secs(3), swap_started),
        &format!("web-v1 m{}", v1[1].index),
        "once the dead machine was seen dead, only the other machine",
    );
    service::assert_answers_between(
        &samples,
        &survivors,
        (acked + SWITCH, Instant::now()),
        "web-v2",
        "after the swap after the failover",
    );
    let after_kill = samples
        .iter()
        .filter(|s| s.sent >= leader_killed && survivors.contains(&s.target))
        .count();
    assert!(
        after_kill > 0,
        "requests went through the survivors after the leader was killed"
    );
}
