//! The docker provider with no Docker engine where it looks
//! (`DOCKER_HOST=unix:///nonexistent...`): creating a docker image fails
//! its run at once with an error saying where it tried, and a docker
//! cluster of an image the local provider built fails saying so; an
//! "engine" that accepts connections and never answers fails the run
//! saying so instead of hanging it. Needs no Docker, so it runs everywhere.

use std::time::Duration;

use opsd_tests::resources as res;
use opsd_tests::{Cluster, Options};
use serde_json::json;

const WAIT: Duration = Duration::from_secs(60);
const NO_ENGINE: &str = "unix:///nonexistent/opsd-no-docker.sock";

#[tokio::test]
async fn docker_engine_down_fails_clearly() {
    let cluster = Cluster::start_placed(1, Options::default(), |config| {
        config.env.push(("DOCKER_HOST".into(), NO_ENGINE.into()));
    })
    .await;
    let addr = cluster.node(0).client_addr();
    let source = tempfile::tempdir().unwrap();
    std::fs::write(source.path().join("Dockerfile"), "FROM scratch\n").unwrap();

    res::create(
        &addr,
        "image",
        "web",
        json!({"provider": "docker", "source": source.path()}),
    )
    .await
    .expect("create");
    let image = res::wait_resting(&addr, "image", "web", WAIT).await;
    assert_eq!(image.state, "failed");
    let runs = res::history(&addr, "image", "web").await.unwrap();
    let error = &runs.last().unwrap().error;
    assert!(
        error.starts_with(&format!("cannot reach the Docker engine at {NO_ENGINE}: ")),
        "{error}"
    );

    // A docker cluster of an image the local provider built.
    res::create(
        &addr,
        "image",
        "local",
        json!({"source": source.path(), "start": "sleep 60"}),
    )
    .await
    .expect("create");
    assert_eq!(res::wait_resting(&addr, "image", "local", WAIT).await.state, "built");
    res::create(
        &addr,
        "cluster",
        "c",
        json!({"provider": "docker", "image": "local", "size": 1}),
    )
    .await
    .expect("create");
    assert_eq!(res::wait_resting(&addr, "cluster", "c", WAIT).await.state, "failed");
    let runs = res::history(&addr, "cluster", "c").await.unwrap();
    let error = &runs.last().unwrap().error;
    assert!(
        error.starts_with("image local is not a docker image (it has no outputs.engine)"),
        "{error}"
    );
    drop(cluster);

    // An endpoint that accepts and never answers.
    let socket_dir = tempfile::tempdir().unwrap();
    let socket = socket_dir.path().join("hangs.sock");
    let listener = std::os::unix::net::UnixListener::bind(&socket).unwrap();
    std::thread::spawn(move || {
        let mut held = Vec::new();
        for stream in listener.incoming().flatten() {
            held.push(stream);
        }
    });
    let hangs = format!("unix://{}", socket.display());
    let docker_host = hangs.clone();
    let cluster = Cluster::start_placed(1, Options::default(), move |config| {
        config.env.push(("DOCKER_HOST".into(), docker_host.clone()));
    })
    .await;
    let addr = cluster.node(0).client_addr();
    res::create(
        &addr,
        "image",
        "web",
        json!({"provider": "docker", "source": source.path()}),
    )
    .await
    .expect("create");
    assert_eq!(res::wait_resting(&addr, "image", "web", WAIT).await.state, "failed");
    let runs = res::history(&addr, "image", "web").await.unwrap();
    let error = &runs.last().unwrap().error;
    assert!(
        error.starts_with(&format!("cannot reach the Docker engine at {hangs}: no answer within ")),
        "{error}"
    );
}
