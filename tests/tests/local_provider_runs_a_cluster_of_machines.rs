//! The built-in kinds and the local provider: an image is built from a source
//! directory, a 2-machine cluster of a small HTTP server runs it, both
//! machines answer on their ports, an opsd restart (kill -9) does not lose
//! them, and stop, start and destroy work.

use std::time::Duration;

use opsd_tests::resources as res;
use opsd_tests::{wait_until, Cluster, Options, FORM_TIMEOUT};
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const WAIT: Duration = Duration::from_secs(60);

/// GET / from a machine; the body, or why not.
async fn http_get(port: u64) -> Result<String, String> {
    let mut s = TcpStream::connect(("127.0.0.1", port as u16))
        .await
        .map_err(|e| format!("port {port}: {e}"))?;
    s.write_all(b"GET /index.html HTTP/1.0\r\n\r\n")
        .await
        .map_err(|e| e.to_string())?;
    let mut body = String::new();
    s.read_to_string(&mut body).await.map_err(|e| e.to_string())?;
    Ok(body)
}

async fn wait_answering(port: u64) {
    wait_until(
        &format!("port {port} to answer"),
        Duration::from_secs(20),
        Duration::from_millis(100),
        || async {
            let body = http_get(port).await?;
            body.contains("hello from opsd").then_some(()).ok_or(body)
        },
    )
    .await;
}

async fn wait_refusing(port: u64) {
    wait_until(
        &format!("port {port} to refuse"),
        Duration::from_secs(20),
        Duration::from_millis(100),
        || async {
            match http_get(port).await {
                Err(_) => Ok(()),
                Ok(body) => Err(format!("still answers: {} bytes", body.len())),
            }
        },
    )
    .await;
}

fn machines(outputs: Option<&opsd_proto::prost_types::Struct>) -> Vec<Value> {
    let outputs = opsd_tests::resources::json_of(outputs);
    outputs["machines"].as_array().cloned().unwrap_or_default()
}

#[tokio::test]
async fn local_provider_runs_a_cluster_of_machines() {
    let cluster = Cluster::start(1, Options::default()).await;
    let node = cluster.node(0);
    let addr = node.client_addr();
    let source = tempfile::tempdir().unwrap();
    std::fs::write(source.path().join("index.html"), "hello from opsd\n").unwrap();

    // The image: a fresh copy of the source, with its build commands run in it.
    res::create(
        &addr,
        "image",
        "site",
        json!({
            "source": source.path(),
            "build": ["echo built > BUILT"],
            "start": "exec python3 -m http.server \"$PORT\" --bind 127.0.0.1",
        }),
    )
    .await
    .expect("create the image");
    let image = res::wait_resting(&addr, "image", "site", WAIT).await;
    assert_eq!(image.state, "built", "{image:?}");
    let outputs: Value = opsd_tests::resources::json_of(image.outputs.as_ref());
    let dir = std::path::PathBuf::from(outputs["dir"].as_str().expect("the image's dir"));
    assert!(dir.join("BUILT").exists() && dir.join("index.html").exists(), "{dir:?}");

    // The cluster: two machines of the image, each on its own port.
    res::create(&addr, "cluster", "web", json!({"image": "site", "size": 2}))
        .await
        .expect("create the cluster");
    let web = res::wait_resting(&addr, "cluster", "web", WAIT).await;
    assert_eq!(web.state, "running", "{web:?}");
    let ms = machines(web.outputs.as_ref());
    assert_eq!(ms.len(), 2, "{ms:?}");
    let ports: Vec<u64> = ms.iter().map(|m| m["port"].as_u64().unwrap()).collect();
    assert_ne!(ports[0], ports[1]);
    for m in &ms {
        assert_eq!(m["node"].as_u64(), Some(node.id()));
        assert!(m["pid"].as_u64().is_some() && m["dir"].as_str().is_some(), "{m}");
    }
    for p in &ports {
        wait_answering(*p).await;
    }

    // opsd dies and comes back: the machines never noticed.
    node.kill9();
    for p in &ports {
        wait_answering(*p).await;
    }
    node.restart();
    cluster.wait_for_leader(&[], FORM_TIMEOUT).await;
    let web = res::wait_resting(&addr, "cluster", "web", WAIT).await;
    assert_eq!(
        (web.state.as_str(), machines(web.outputs.as_ref())),
        ("running", ms.clone())
    );

    // stop, start (same ports), destroy.
    res::do_event(&addr, "cluster", "web", "stop", &[], "maintenance")
        .await
        .expect("stop");
    let web = res::wait_resting(&addr, "cluster", "web", WAIT).await;
    assert_eq!(web.state, "stopped");
    for p in &ports {
        wait_refusing(*p).await;
    }
    res::do_event(&addr, "cluster", "web", "start", &[], "back")
        .await
        .expect("start");
    let web = res::wait_resting(&addr, "cluster", "web", WAIT).await;
    assert_eq!(web.state, "running");
    let restarted: Vec<u64> = machines(web.outputs.as_ref())
        .iter()
        .map(|m| m["port"].as_u64().unwrap())
        .collect();
    assert_eq!(restarted, ports);
    for p in &ports {
        wait_answering(*p).await;
    }
    let dirs: Vec<String> = machines(web.outputs.as_ref())
        .iter()
        .map(|m| m["dir"].as_str().unwrap().to_string())
        .collect();
    res::delete(&addr, "cluster", "web").await.expect("destroy");
    let web = res::wait_resting(&addr, "cluster", "web", WAIT).await;
    assert_eq!(web.state, "destroyed");
    for p in &ports {
        wait_refusing(*p).await;
    }
    for d in &dirs {
        assert!(!std::path::Path::new(d).exists(), "{d} removed");
    }
    assert!(res::delete(&addr, "cluster", "web").await.expect("remove").deleted);
    res::delete(&addr, "image", "site").await.expect("destroy the image");
    let image = res::wait_resting(&addr, "image", "site", WAIT).await;
    assert_eq!(image.state, "destroyed");
    assert!(!dir.exists(), "the image's dir is removed");
}
