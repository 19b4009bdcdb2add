//! A service swaps between two docker clusters with no request lost: one
//! opsd node with its load balancer on `127.0.0.2`, two clusters of the
//! test backend in containers (`web-v1`, `web-v2`, each machine answering
//! `CLUSTER mINDEX` at its container's address), `service/web` in front of
//! `web-v1`; clients send requests through the load balancer the whole
//! time, then `swap --arg cluster=web-v2`: not one request fails, and the
//! requests sent after the swap returned answer `web-v2`.
//!
//! Skipped with a visible message where Docker is missing (a failure under
//! `OPSD_TEST_STRICT`).

use std::time::{Duration, Instant};

use opsd_tests::docker::{self, Owned};
use opsd_tests::service::{self, Bed, Traffic};

const TEST: &str = "docker_service_swaps_clusters";

/// `opsctl create cluster/NAME` of the docker provider, 2 machines, with a
/// check on its own answer; it must end running. Returns its machines.
async fn docker_cluster(bed: &Bed, name: &str) -> Vec<service::Machine> {
    let checks = format!(r#"checks=[{{"type":"http","path":"/","body":"{name}","retries":20,"interval":0.2}}]"#);
    bed.ok(&[
        "create",
        &format!("cluster/{name}"),
        "--set",
        "provider=docker",
        "--set",
        "image=backend",
        "--set",
        "size=2",
        "--set",
        &checks,
        "--reason",
        "a docker cluster for the service",
        "--wait",
    ])
    .await;
    let c = bed.get(&format!("cluster/{name}")).await;
    assert_eq!(c["state"], "running", "{c:#}");
    let machines = service::machines(&c["outputs"]);
    assert_eq!(machines.len(), 2, "{c:#}");
    for m in &machines {
        assert!(
            !m.address.ip().is_loopback(),
            "{name} machine {} is not in a container: {c:#}",
            m.index
        );
        let body = service::get(m.address, "/", Duration::from_secs(5)).await.unwrap();
        assert_eq!(body, format!("{name} m{}", m.index));
    }
    machines
}

#[tokio::test]
async fn docker_service_swaps_clusters() {
    if !docker::require(TEST) {
        return;
    }
    let owned = Owned::default();
    let Some(bed) = Bed::start(TEST, 1).await else {
        return;
    };
    owned.set(&bed.cluster.node(0).status().await.expect("status").cluster_id);
    let image_dir = docker::backend_image_dir();
    bed.ok(&[
        "create",
        "image/backend",
        "--set",
        "provider=docker",
        "--set",
        &format!("source={}", image_dir.path().display()),
        "--reason",
        "the backend in a container",
        "--wait",
    ])
    .await;
    docker_cluster(&bed, "web-v1").await;
    let v2 = docker_cluster(&bed, "web-v2").await;
    bed.create_service("web", "web-v1").await;

    let lbs = bed.lbs(&[0]);
    let origin = Instant::now();
    let traffic = Traffic::start(&lbs, Duration::from_millis(20));
    tokio::time::sleep(Duration::from_secs(2)).await;
    let swap_started = Instant::now();
    bed.ok(&[
        "do",
        "service/web",
        "swap",
        "--arg",
        "cluster=web-v2",
        "--reason",
        "release v2",
        "--wait",
    ])
    .await;
    let swapped = Instant::now();
    service::switch_times(&lbs, "web-v2", swapped, Duration::from_secs(15)).await;
    let settled = Instant::now();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let samples = traffic.finish().await;

    service::assert_no_failures(&samples, &lbs, origin, "through the swap between docker clusters");
    service::assert_answers_between(&samples, &[0], (origin, swap_started), "web-v1", "before the swap");
    service::assert_answers_between(&samples, &[0], (settled, Instant::now()), "web-v2", "after the swap");
    let resolved = bed.opsctl().json(&["resolve", "service/web"]).await.to_string();
    for m in &v2 {
        assert!(
            resolved.contains(&m.address.to_string()),
            "resolve lists {}: {resolved}",
            m.address
        );
    }
}
