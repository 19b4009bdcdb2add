//! The built-in load balancer and discovery on one node: a service in front
//! of a cluster of two small HTTP servers answers through the node's
//! `--lb-host` (the listen host by default) at the service's port, requests
//! reach both machines, `opsctl resolve` lists the endpoint and the machines,
//! `opsctl get service/NAME` shows connections and bytes per backend, and a
//! service whose port is already taken on the node fails naming it.

use std::time::Duration;

use opsd_tests::resources as res;
use opsd_tests::Opsctl;
use opsd_tests::{wait_until, Cluster, Options};
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

const WAIT: Duration = Duration::from_secs(60);

/// GET / through `addr`; the body, or why not.
async fn http_get(addr: &str) -> Result<String, String> {
    let mut s = TcpStream::connect(addr).await.map_err(|e| format!("{addr}: {e}"))?;
    s.write_all(b"GET / HTTP/1.0\r\n\r\n")
        .await
        .map_err(|e| e.to_string())?;
    let mut body = String::new();
    s.read_to_string(&mut body).await.map_err(|e| e.to_string())?;
    Ok(body)
}

/// A port free now on `host`.
async fn free_port(host: &str) -> u16 {
    TcpListener::bind((host, 0)).await.unwrap().local_addr().unwrap().port()
}

#[tokio::test]
async fn service_load_balancer_routes() {
    let cluster = Cluster::start(1, Options::default()).await;
    let node = cluster.node(0);
    let addr = node.client_addr();
    let host = node.config().listen.ip().to_string();
    let opsctl = Opsctl { addr: addr.clone() };

    // Two machines, each answering with its own index.
    let source = tempfile::tempdir().unwrap();
    res::create(
        &addr,
        "image",
        "hello",
        json!({
            "source": source.path(),
            "build": [],
            "start": "mkdir -p www && echo \"machine $OPSD_MACHINE on $PORT\" > www/index.html && \
                      exec python3 -m http.server \"$PORT\" --bind 127.0.0.1 --directory www",
        }),
    )
    .await
    .expect("create the image");
    assert_eq!(res::wait_resting(&addr, "image", "hello", WAIT).await.state, "built");
    res::create(&addr, "cluster", "hello-v1", json!({"image": "hello", "size": 2}))
        .await
        .expect("create the cluster");
    let v1 = res::wait_resting(&addr, "cluster", "hello-v1", WAIT).await;
    assert_eq!(v1.state, "running", "{v1:?}");

    // The service: the node's load balancer serves it on the listen host.
    let port = free_port(&host).await;
    res::create(&addr, "service", "hello", json!({"port": port, "cluster": "hello-v1"}))
        .await
        .expect("create the service");
    let service = res::wait_resting(&addr, "service", "hello", WAIT).await;
    assert_eq!(service.state, "serving", "{service:?}");
    let endpoint = format!("{host}:{port}");
    let mut answers = std::collections::BTreeSet::new();
    for _ in 0..6 {
        let (body, _) = wait_until(
            "an answer through the load balancer",
            Duration::from_secs(10),
            Duration::from_millis(100),
            || http_get(&endpoint),
        )
        .await;
        let line = body.lines().last().unwrap_or_default().to_string();
        assert!(line.starts_with("machine "), "{body}");
        answers.insert(line);
    }
    assert_eq!(answers.len(), 2, "round robin reaches both machines: {answers:?}");

    // Discovery: the endpoint of the one node, and the two machines.
    let resolved = opsctl.json(&["resolve", "service/hello"]).await;
    assert_eq!(resolved["active"], "hello-v1", "{resolved:#}");
    assert_eq!(resolved["port"], json!(port));
    let endpoints = resolved["endpoints"].as_array().unwrap();
    assert_eq!(endpoints.len(), 1, "{resolved:#}");
    assert_eq!(endpoints[0]["address"], json!(endpoint));
    assert_eq!(endpoints[0]["listening"], json!(true));
    assert_eq!(resolved["backends"].as_array().unwrap().len(), 2, "{resolved:#}");
    let table = opsctl.run(&["resolve", "service/hello"]).await;
    assert!(table.status.success());
    assert!(String::from_utf8_lossy(&table.stdout).contains(&endpoint));

    // Connections and bytes per backend in `get`.
    let got = opsctl.json(&["get", "service/hello"]).await;
    let balancers = got["balancers"].as_array().expect("balancers");
    assert_eq!(balancers.len(), 1, "{got:#}");
    let backends = balancers[0]["backends"].as_array().unwrap();
    let total: u64 = backends.iter().map(|b| b["total_connections"].as_u64().unwrap()).sum();
    let bytes: u64 = backends.iter().map(|b| b["bytes_out"].as_u64().unwrap()).sum();
    assert!(total >= 6, "{got:#}");
    assert!(bytes > 0, "{got:#}");
    assert!(backends.iter().all(|b| b["healthy"] == Value::Bool(true)), "{got:#}");

    // A port in use on the node: the service fails, naming it.
    let taken = TcpListener::bind((host.as_str(), 0)).await.unwrap();
    let busy = taken.local_addr().unwrap().port();
    res::create(&addr, "service", "busy", json!({"port": busy, "cluster": "hello-v1"}))
        .await
        .expect("create the service");
    let failed = res::wait_resting(&addr, "service", "busy", WAIT).await;
    assert_eq!(failed.state, "failed", "{failed:?}");
    let resolved = opsctl.json(&["resolve", "service/busy"]).await;
    let error = resolved["endpoints"][0]["error"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    assert!(
        error.contains("cannot listen") && error.contains(&busy.to_string()),
        "{resolved:#}"
    );
    drop(taken);

    // An unknown service is NOT_FOUND, named.
    let out = opsctl.fails(&["resolve", "service/nope"], 1).await;
    assert!(out.contains("service nope not found"), "{out}");
}
