//! The docker provider end to end on one opsd node and a real Docker
//! engine: bad specs are refused at create naming the field; an image that
//! fails to build fails with the build's error and leaves no image; an
//! image builds from a directory (`FROM scratch`, no registry); a cluster of
//! 3 containers on its own network passes its acceptance checks, each
//! machine answering at its container's address, with the containers'
//! output in the run's log; `opsctl shell` runs a command in a container;
//! stop and start; a rebuild keeps the build running containers use; a machine that exits at once fails its cluster with the
//! end of its log and stays listed; destroying the clusters and images
//! leaves no container, network or image of this opsd cluster, as the
//! engine itself lists them.
//!
//! Skipped with a visible message where Docker is missing (a failure under
//! `OPSD_TEST_STRICT`).

use std::time::Duration;

use opsd_tests::docker::{self, Owned};
use opsd_tests::resources as res;
use opsd_tests::service;
use opsd_tests::{Cluster, Opsctl, Options};
use serde_json::{json, Value};
use tonic::Code;

const TEST: &str = "docker_cluster_lifecycle";
const WAIT: Duration = Duration::from_secs(180);

/// Creates `kind/name` with `spec` and waits until it rests; returns it.
async fn create_and_rest(addr: &str, kind: &str, name: &str, spec: Value) -> opsd_tests::api::Resource {
    res::create(addr, kind, name, spec)
        .await
        .unwrap_or_else(|e| panic!("create {kind}/{name}: {e}"));
    res::wait_resting(addr, kind, name, WAIT).await
}

/// The error of the last run of `kind/name`.
async fn last_error(addr: &str, kind: &str, name: &str) -> String {
    let runs = res::history(addr, kind, name).await.expect("history");
    runs.last().map(|r| r.error.clone()).unwrap_or_default()
}

/// Every machine answers `GET /` at its recorded address with `NAME mINDEX`.
async fn machines_answer(outputs: &Value, name: &str) -> Vec<service::Machine> {
    let machines = service::machines(outputs);
    for m in &machines {
        assert!(
            !m.address.ip().is_loopback(),
            "machine {} is at a container address: {outputs:#}",
            m.index
        );
        let body = service::get(m.address, "/", Duration::from_secs(5))
            .await
            .unwrap_or_else(|e| panic!("machine {} of {name}: {e}", m.index));
        assert_eq!(body, format!("{name} m{}", m.index));
    }
    machines
}

#[tokio::test]
async fn docker_cluster_lifecycle() {
    if !docker::require(TEST) {
        return;
    }
    // Declared before the opsd cluster: removes what it made after its
    // processes are gone, even when the test fails.
    let owned = Owned::default();
    let cluster = Cluster::start(1, Options::default()).await;
    let addr = cluster.node(0).client_addr();
    let status = cluster.node(0).status().await.expect("status");
    owned.set(&status.cluster_id);
    let opsctl = Opsctl { addr: addr.clone() };
    let image_dir = docker::backend_image_dir();
    let source = image_dir.path().display().to_string();

    // Bad specs: refused at create naming the field; nothing is created.
    for (kind, spec, field) in [
        (
            "image",
            json!({"provider": "docker", "source": source, "build": "make"}),
            "spec.build: not supported by the docker provider",
        ),
        (
            "cluster",
            json!({"provider": "docker", "image": "web", "size": 1, "base_port": 9000}),
            "spec.base_port: not supported by the docker provider",
        ),
        (
            "cluster",
            json!({"provider": "docker", "image": "web", "size": 1, "port": 70000}),
            "spec.port: must be a port",
        ),
    ] {
        let e = res::create(&addr, kind, "bad", spec).await.unwrap_err();
        assert_eq!(e.code(), Code::InvalidArgument, "{e:?}");
        assert!(
            e.message().starts_with(field),
            "{:?} does not start with {field:?}",
            e.message()
        );
        assert_eq!(res::get(&addr, kind, "bad").await.unwrap_err().code(), Code::NotFound);
    }

    // An image that fails to build: failed with the build's own error, and
    // no image of it is left.
    let broken = tempfile::tempdir().unwrap();
    std::fs::write(broken.path().join("Dockerfile"), "FROM scratch\nCOPY no-such-file /\n").unwrap();
    let r = create_and_rest(
        &addr,
        "image",
        "broken",
        json!({"provider": "docker", "source": broken.path()}),
    )
    .await;
    assert_eq!(r.state, "failed");
    let error = last_error(&addr, "image", "broken").await;
    assert!(
        error.starts_with("the build of ") && error.contains("no-such-file"),
        "{error}"
    );
    assert_eq!(owned.images(Some("image/broken")), Vec::<String>::new());

    // The image builds, on this engine.
    let web = create_and_rest(&addr, "image", "web", json!({"provider": "docker", "source": source})).await;
    let outputs = res::json_of(web.outputs.as_ref());
    assert_eq!(web.state, "built", "{outputs:#}");
    assert!(
        outputs["image_id"].as_str().is_some_and(|id| id.starts_with("sha256:")),
        "{outputs:#}"
    );
    let engine_id = docker::docker(&["info", "--format", "{{.ID}}"]).unwrap();
    assert_eq!(outputs["engine"], json!(engine_id));
    assert_eq!(owned.images(Some("image/web")).len(), 1);

    // Three containers on their own network; the checks pass against them.
    let checks = json!([
        {"type": "http", "path": "/", "body": "^web m[0-2]\\s*$", "retries": 20, "interval": 0.2},
        {"type": "tcp"},
    ]);
    let c = create_and_rest(
        &addr,
        "cluster",
        "web",
        json!({"provider": "docker", "image": "web", "size": 3, "checks": checks}),
    )
    .await;
    let outputs = res::json_of(c.outputs.as_ref());
    assert_eq!(c.state, "running", "{outputs:#}");
    assert_eq!(outputs["checks"]["passed"], json!(true), "{outputs:#}");
    assert_eq!(outputs["checks"]["results"].as_array().map(Vec::len), Some(6));
    let machines = machines_answer(&outputs, "web").await;
    assert_eq!(machines.len(), 3);
    let listed = owned.containers(Some("cluster/web"));
    assert_eq!(listed.len(), 3, "{listed:?}");
    assert!(listed.iter().all(|c| c.state == "running"), "{listed:?}");
    for m in outputs["machines"].as_array().unwrap() {
        let id = m["container"].as_str().expect("a container id");
        assert!(
            listed.iter().any(|c| id.starts_with(&c.id)),
            "{m} is not listed: {listed:?}"
        );
        assert_eq!(m["address"].as_str().unwrap().rsplit(':').next(), Some("8080"), "{m}");
    }
    assert_eq!(owned.networks(Some("cluster/web")).len(), 1);
    // The containers' output is in the run's log.
    let start_run = &res::history(&addr, "cluster", "web").await.unwrap()[0];
    let log = res::log_lines(&addr, &start_run.run_id).await.unwrap();
    assert!(
        log.iter()
            .any(|l| l.starts_with("machine 1: ") && l.contains("listening on 0.0.0.0:8080")),
        "{log:#?}"
    );
    // opsctl machines and opsctl shell (docker exec) see the containers.
    let table = opsctl.json(&["machines", "cluster/web"]).await;
    assert_eq!(table.as_array().map(Vec::len), Some(3), "{table:#}");
    for m in table.as_array().unwrap() {
        assert_eq!(m["state"], json!("running"), "{m}");
        assert!(m["container"].as_str().is_some_and(|c| !c.is_empty()), "{m}");
    }
    let out = opsctl
        .run(&[
            "shell",
            "cluster/web",
            "--machine",
            "2",
            "--",
            "/bin/sh",
            "-c",
            "echo $OPSD_MACHINE $PORT $OPSD_CLUSTER",
        ])
        .await;
    assert!(out.status.success(), "{out:?}");
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "2 8080 web");

    // Stop: the containers are kept, exited; start: they answer again.
    opsctl.run(&["do", "cluster/web", "stop", "--wait"]).await;
    let stopped = res::wait_resting(&addr, "cluster", "web", WAIT).await;
    assert_eq!(stopped.state, "stopped");
    let listed = owned.containers(Some("cluster/web"));
    assert_eq!(listed.len(), 3, "{listed:?}");
    assert!(listed.iter().all(|c| c.state == "exited"), "{listed:?}");
    for m in &machines {
        assert!(
            service::get(m.address, "/", Duration::from_secs(2)).await.is_err(),
            "{m:?} still answers"
        );
    }
    opsctl.run(&["do", "cluster/web", "start", "--wait"]).await;
    let started = res::wait_resting(&addr, "cluster", "web", WAIT).await;
    let outputs = res::json_of(started.outputs.as_ref());
    assert_eq!(started.state, "running", "{outputs:#}");
    assert_eq!(machines_answer(&outputs, "web").await.len(), 3);
    assert_eq!(owned.containers(Some("cluster/web")).len(), 3, "start made twins");

    // A rebuild while the cluster runs keeps the build its containers use.
    opsctl.run(&["do", "image/web", "rebuild", "--wait"]).await;
    assert_eq!(res::wait_resting(&addr, "image", "web", WAIT).await.state, "built");
    let rebuild = res::history(&addr, "image", "web").await.unwrap();
    let log = res::log_lines(&addr, &rebuild.last().unwrap().run_id).await.unwrap();
    assert!(log.iter().any(|l| l.starts_with("kept the earlier build ")), "{log:#?}");
    assert_eq!(owned.images(Some("image/web")).len(), 2);
    assert_eq!(machines_answer(&outputs, "web").await.len(), 3);

    // A machine that exits at once: the cluster fails with the end of its
    // log, and the container stays listed for debugging.
    create_and_rest(
        &addr,
        "image",
        "quits",
        json!({"provider": "docker", "source": source, "start": "echo cannot start here >&2; exit 3"}),
    )
    .await;
    let q = create_and_rest(
        &addr,
        "cluster",
        "quits",
        json!({"provider": "docker", "image": "quits", "size": 1}),
    )
    .await;
    assert_eq!(q.state, "failed");
    let error = last_error(&addr, "cluster", "quits").await;
    assert!(
        error.starts_with("machine 0 of cluster quits exited at once (status 3)")
            && error.contains("cannot start here"),
        "{error}"
    );
    let listed = owned.containers(Some("cluster/quits"));
    assert_eq!(listed.len(), 1, "{listed:?}");
    assert_eq!(listed[0].state, "exited");

    // Destroying leaves nothing of this opsd cluster on the engine.
    for (kind, name) in [("cluster", "web"), ("cluster", "quits")] {
        res::delete(&addr, kind, name).await.expect("destroy");
        assert_eq!(res::wait_resting(&addr, kind, name, WAIT).await.state, "destroyed");
    }
    assert_eq!(owned.containers(None), Vec::new());
    assert_eq!(owned.networks(None), Vec::<String>::new());
    for m in &machines {
        assert!(service::get(m.address, "/", Duration::from_secs(2)).await.is_err());
    }
    for name in ["web", "quits", "broken"] {
        res::delete(&addr, "image", name).await.expect("destroy");
        assert_eq!(res::wait_resting(&addr, "image", name, WAIT).await.state, "destroyed");
    }
    assert_eq!(owned.images(None), Vec::<String>::new());
}
