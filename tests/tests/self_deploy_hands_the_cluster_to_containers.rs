//! opsd deploys itself: one seed node with 50 settings creates an
//! opsd-cluster of 3 nodes in Docker containers (`opsctl create
//! opsd-cluster/prod --set size=3 --set provider=docker --wait`, the
//! README's commands), which join its cluster (4 members); `opsctl do
//! opsd-cluster/prod adopt --wait` hands the cluster to them and the seed
//! leaves (another opsd-cluster, destroyed before that, leaves the cluster
//! and its container goes). With the seed stopped and one container killed (`docker kill`),
//! the two remaining nodes still take writes and serve every key written
//! before the handoff. An adopted opsd-cluster cannot be destroyed.

use std::time::Duration;

use opsd_tests::client;
use opsd_tests::docker::{docker, Owned};
use opsd_tests::resources as res;
use opsd_tests::{skip, Cluster, Opsctl, Options};

const TEST: &str = "self_deploy_hands_the_cluster_to_containers";
/// Building the image from a debug opsd (hundreds of MB) and three joins.
const WAIT: Duration = Duration::from_secs(600);

/// Runs opsctl against `addrs`, requiring success, within [`WAIT`].
async fn opsctl_ok(addrs: &str, args: &[&str]) -> String {
    let opsctl = Opsctl {
        addr: addrs.to_string(),
    };
    let out = tokio::time::timeout(WAIT, opsctl.command(args).output())
        .await
        .unwrap_or_else(|_| panic!("opsctl {args:?} did not finish in {WAIT:?}"))
        .unwrap_or_else(|e| panic!("running opsctl {args:?}: {e}"));
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "opsctl {args:?} failed ({}):\nstderr: {stderr}\nstdout: {stdout}",
        out.status
    );
    stdout
}

#[tokio::test]
async fn self_deploy_hands_the_cluster_to_containers() {
    if !opsd_tests::docker::require(TEST) {
        return;
    }
    // The containers share the host's network: each node needs its own
    // loopback address with opsd's default ports free.
    let hosts: Vec<String> = (0..4)
        .filter_map(|_| opsd_tests::loopback_host(&[7700, 7701]))
        .filter(|ip| ip.octets() != [127, 0, 0, 1])
        .map(|ip| ip.to_string())
        .collect();
    if hosts.len() < 3 {
        skip(
            TEST,
            "this machine has no loopback addresses besides 127.0.0.1 for three nodes",
        );
        return;
    }

    let docker_made = Owned::default();
    let cluster = Cluster::start(1, Options::default()).await;
    let seed = cluster.node(0).client_addr();
    let seed_status = client::status(&seed, Duration::from_secs(5)).await.unwrap();
    docker_made.set(&seed_status.cluster_id);

    let mut written = Vec::new();
    for i in 0..50 {
        let (key, value) = (format!("app/key-{i:02}"), format!("value {i}"));
        let put = client::put(&seed, &key, &value).await.expect("write a setting");
        written.push((key, value, put.revision));
    }

    let (hosts, spare_host) = (hosts[..3].to_vec(), hosts[3].clone());
    let hosts_json = serde_json::to_string(&hosts).unwrap();
    let hosts_arg = format!("hosts={hosts_json}");
    opsctl_ok(
        &seed,
        &[
            "create",
            "opsd-cluster/prod",
            "--set",
            "size=3",
            "--set",
            "provider=docker",
            "--set",
            &hosts_arg,
            "--wait",
        ],
    )
    .await;
    let prod = res::get(&seed, "opsd-cluster", "prod").await.unwrap();
    assert_eq!(prod.state, "running");
    let outputs = res::json_of(prod.outputs.as_ref());
    let machines = outputs["machines"].as_array().cloned().unwrap_or_default();
    let addrs: Vec<String> = hosts.iter().map(|h| format!("{h}:7700")).collect();
    // The containers' nodes are of the seed's cluster: the same CA (and token).
    let seed_dir = opsd_tests::access::bootstrap_dir(&seed).expect("the seed is registered");
    for addr in &addrs {
        opsd_tests::access::register(addr, &seed_dir);
    }
    let recorded: Vec<&str> = machines.iter().filter_map(|m| m["address"].as_str()).collect();
    assert_eq!(recorded, addrs, "{outputs}");
    assert_eq!(docker_made.containers(None).len(), 3);

    // The three containers joined this cluster, as voters.
    let status = client::status(&seed, Duration::from_secs(5)).await.unwrap();
    assert_eq!(status.members.len(), 4, "{:?}", status.members);
    for addr in &addrs {
        let member = status.members.iter().find(|m| &m.addr == addr);
        assert!(
            member.is_some_and(|m| m.voter),
            "{addr} is not a voter: {:?}",
            status.members
        );
    }

    // Another opsd-cluster, destroyed before adoption: its node leaves the
    // cluster and its container goes.
    let spare_hosts = format!("hosts=[\"{spare_host}\"]");
    opsctl_ok(
        &seed,
        &[
            "create",
            "opsd-cluster/spare",
            "--set",
            "size=1",
            "--set",
            &spare_hosts,
            "--wait",
        ],
    )
    .await;
    let spare_addr = format!("{spare_host}:7700");
    let status = client::status(&seed, Duration::from_secs(5)).await.unwrap();
    assert!(
        status.members.iter().any(|m| m.addr == spare_addr),
        "{:?}",
        status.members
    );
    assert_eq!(docker_made.containers(None).len(), 4);
    opsctl_ok(&seed, &["do", "opsd-cluster/spare", "destroy", "--wait"]).await;
    assert_eq!(
        res::get(&seed, "opsd-cluster", "spare").await.unwrap().state,
        "destroyed"
    );
    let status = client::status(&seed, Duration::from_secs(5)).await.unwrap();
    assert_eq!(status.members.len(), 4, "{:?}", status.members);
    assert!(
        !status.members.iter().any(|m| m.addr == spare_addr),
        "{:?}",
        status.members
    );
    let left = docker_made.containers(None);
    assert_eq!(left.len(), 3, "{left:?}");
    assert!(
        docker_made.containers(Some("opsd-cluster/spare")).is_empty(),
        "{left:?}"
    );
    assert!(docker_made.volumes(Some("opsd-cluster/spare")).is_empty());

    // Hand the cluster over, asking through a container: the seed leaves.
    opsctl_ok(&addrs[0], &["do", "opsd-cluster/prod", "adopt", "--wait"]).await;
    let prod = res::get(&addrs[0], "opsd-cluster", "prod").await.unwrap();
    assert_eq!(prod.state, "adopted");
    let status = client::status(&addrs[1], Duration::from_secs(5)).await.unwrap();
    let members: Vec<&str> = status.members.iter().map(|m| m.addr.as_str()).collect();
    let mut expected: Vec<&str> = addrs.iter().map(String::as_str).collect();
    expected.sort();
    let mut sorted = members.clone();
    sorted.sort();
    assert_eq!(sorted, expected, "the seed is still a member: {members:?}");
    assert!(!status.members.iter().any(|m| m.id == seed_status.node_id));

    // An adopted opsd-cluster is the cluster itself: it takes no destroy.
    let refused = Opsctl { addr: addrs[0].clone() }
        .run(&["do", "opsd-cluster/prod", "destroy"])
        .await;
    assert!(
        !refused.status.success(),
        "destroy of an adopted opsd-cluster was accepted"
    );

    // The seed stops; one container is killed.
    cluster.node(0).terminate(Duration::from_secs(20)).await;
    let mut nodes = docker_made.containers(Some("opsd-cluster/prod"));
    nodes.sort_by(|a, b| a.name.cmp(&b.name));
    assert!(nodes[0].name.ends_with("-0"), "{nodes:?}");
    docker(&["kill", &nodes[0].id]).expect("docker kill one node");

    // The other two still take writes and have every key written before.
    let put = client::put(&addrs[1], "app/after", "handoff")
        .await
        .expect("a write after the kill");
    written.push(("app/after".into(), "handoff".into(), put.revision));
    for addr in &addrs[1..] {
        for stale in [true, false] {
            let listed = opsd_tests::wait_until(
                &format!("{addr} to list every key"),
                Duration::from_secs(30),
                Duration::from_millis(200),
                || async {
                    let l = client::list(addr, "app/", stale).await.map_err(|e| e.to_string())?;
                    (l.settings.len() == written.len())
                        .then_some(l)
                        .ok_or_else(|| "not every key yet".to_string())
                },
            )
            .await
            .0;
            for (key, value, revision) in &written {
                let s = listed.settings.iter().find(|s| &s.key == key);
                assert!(
                    s.is_some_and(|s| &s.value == value && s.mod_revision == *revision),
                    "{addr} (stale: {stale}): {key} is {s:?}, not {value:?}@{revision}"
                );
            }
        }
    }
}
