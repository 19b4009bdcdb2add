//! The test backend and the harness's HTTP pieces work on their own, so that
//! a failing service scenario points at opsd, not at its test machinery:
//! `opsd-test-backend` answers `CLUSTER mINDEX` on 127.0.0.1 and on every
//! host of `--hosts`, keeps connections alive, answers `/health`, and
//! refuses to start with nothing to listen on; [`service::get`],
//! [`service::KeepAlive`] and [`service::Traffic`] read its answers.

use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use opsd_tests::service::{self, KeepAlive, Traffic};

/// A backend process, killed when dropped.
struct Backend(Child);

impl Drop for Backend {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts the backend as a local machine would be: `PORT`, `OPSD_CLUSTER`
/// and `OPSD_MACHINE` in its environment, `args` on its command line.
fn start(port: u16, cluster: &str, machine: u64, args: &[&str]) -> Backend {
    let child = Command::new(service::backend_bin())
        .args(args)
        .env("PORT", port.to_string())
        .env("OPSD_CLUSTER", cluster)
        .env("OPSD_MACHINE", machine.to_string())
        .env_remove("BACKEND_BODY")
        .env_remove("BACKEND_HOSTS")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap_or_else(|e| panic!("starting {}: {e}", service::backend_bin().display()));
    Backend(child)
}

#[tokio::test]
async fn test_backend_answers() {
    let hosts = match service::lb_hosts(2) {
        Ok(h) => h,
        Err(why) => {
            opsd_tests::skip("test_backend_answers", &why);
            return;
        }
    };
    let mut all = vec![std::net::IpAddr::from([127, 0, 0, 1])];
    all.extend(hosts.iter().copied());
    let port = service::free_port(&all);
    let host_list = hosts.iter().map(|h| h.to_string()).collect::<Vec<_>>().join(",");
    let _backend = start(port, "web-v1", 1, &["--hosts", &host_list]);

    // It answers on 127.0.0.1 and on every listed host.
    for h in &all {
        let addr = SocketAddr::new(*h, port);
        service::wait_answering(
            &format!("the backend on {addr}"),
            addr,
            "web-v1 m1",
            Duration::from_secs(10),
        )
        .await;
        assert_eq!(
            service::get(addr, "/", Duration::from_secs(5)).await,
            Ok("web-v1 m1".to_string())
        );
        assert_eq!(
            service::get(addr, "/health", Duration::from_secs(5)).await,
            Ok("ok".to_string())
        );
    }

    // Kept alive: many requests on one connection.
    let addr = SocketAddr::new(all[1], port);
    let mut conn = KeepAlive::connect(addr, "/any/path").await.expect("connect");
    for _ in 0..100 {
        assert_eq!(conn.get().await.as_deref(), Ok("web-v1 m1\n"));
    }

    // --body wins over the cluster's name.
    let other = service::free_port(&all);
    let second = start(other, "web-v1", 0, &["--body", "v2"]);
    let other_addr = SocketAddr::new(all[0], other);
    service::wait_answering("the second backend", other_addr, "v2 m0", Duration::from_secs(10)).await;

    // Traffic through both, then one dies: its requests fail and are reported.
    let targets = [addr, other_addr];
    let origin = Instant::now();
    let mut traffic = Traffic::start(&targets, Duration::from_millis(10));
    tokio::time::sleep(Duration::from_millis(500)).await;
    traffic.stop(1).await;
    let samples = traffic.samples();
    service::assert_no_failures(&samples, &targets, origin, "two live backends");
    service::assert_answers_between(&samples, &[0], (origin, Instant::now()), "web-v1 m1", "the first");
    service::assert_answers_between(&samples, &[1], (origin, Instant::now()), "v2 m0", "the second");
    drop(second);
    tokio::time::sleep(Duration::from_millis(200)).await;
    let dead = service::get(other_addr, "/", Duration::from_secs(2)).await;
    assert!(dead.is_err(), "a killed backend does not answer: {dead:?}");
    let samples = traffic.finish().await;
    assert!(
        samples.iter().filter(|s| s.target == 0).count() > 10,
        "{}",
        samples.len()
    );

    // Nothing to listen on: it exits at once, saying why.
    let out = Command::new(service::backend_bin())
        .env_remove("PORT")
        .output()
        .expect("run the backend");
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stderr).contains("PORT"), "{out:?}");
}
