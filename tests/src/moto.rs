//! A real EC2 API server for the EC2 provider's tests: `moto` in server mode,
//! from the project's Python virtualenv (`target/pyenv`, made by
//! `.ci/python-deps`), on 127.0.0.1 with a port of its own, one per test,
//! killed when the [`Moto`] is dropped.
//!
//! moto answers the EC2 API (instances, AMIs, security groups, key pairs,
//! tags) and keeps its state in memory; it runs no workloads. The private
//! addresses it hands out belong to nobody here: nothing may connect to them,
//! so the tests assert the API calls, never traffic. It also does not honour
//! `RunInstances`' `ClientToken` (a repeated call makes new instances), so
//! what the takeover test proves is opsd's own find-by-tag idempotency.
//!
//! The tests read EC2's state with EC2's own list calls, through a small
//! boto3 script run in the same virtualenv ([`Moto::query`]).
//!
//! [`HoldingProxy`] sits between opsd and moto and holds back the answer to
//! one chosen `RunInstances` call (EC2 has made the instance; the caller
//! never hears of it), so a test can kill the leader at exactly that point.

use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::Notify;

/// The region every test uses.
pub const REGION: &str = "us-east-1";

/// The virtualenv's Python.
pub fn python() -> PathBuf {
    crate::target_dir().join("pyenv").join("bin").join("python")
}

/// A moto server on loopback, killed on drop.
pub struct Moto {
    child: Child,
    port: u16,
    log: PathBuf,
    _dir: tempfile::TempDir,
}

impl Moto {
    /// Starts moto for `test`, or skips the test (returns `None`) with a
    /// visible reason where the virtualenv or moto is missing (in strict
    /// mode, a failure).
    pub async fn start(test: &str) -> Option<Moto> {
        let python = python();
        let usable = python.exists()
            && Command::new(&python)
                .args(["-c", "import moto.server, boto3"])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .is_ok_and(|s| s.success());
        if !usable {
            crate::skip(
                test,
                &format!(
                    "{} cannot import moto and boto3: run .ci/python-deps (or `make test`, which runs it)",
                    python.display()
                ),
            );
            return None;
        }
        let dir = tempfile::Builder::new()
            .prefix("opsd-moto-")
            .tempdir()
            .unwrap_or_else(|e| panic!("temp dir for moto: {e}"));
        let log = dir.path().join("moto.log");
        let port = free_port();
        let out = std::fs::File::create(&log).unwrap_or_else(|e| panic!("{}: {e}", log.display()));
        let err = out.try_clone().unwrap_or_else(|e| panic!("{}: {e}", log.display()));
        let mut cmd = Command::new(&python);
        cmd.args(["-m", "moto.server", "-H", "127.0.0.1", "-p", &port.to_string()])
            .env("MOTO_ENABLE_AMI_VALIDATION", "true")
            .stdin(Stdio::null())
            .stdout(Stdio::from(out))
            .stderr(Stdio::from(err));
        // SAFETY: prctl(PR_SET_PDEATHSIG) is async-signal-safe.
        unsafe {
            cmd.pre_exec(|| {
                nix::sys::prctl::set_pdeathsig(Signal::SIGKILL).map_err(std::io::Error::from)?;
                Ok(())
            });
        }
        let child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("starting moto with {}: {e}", python.display()));
        let mut moto = Moto {
            child,
            port,
            log,
            _dir: dir,
        };
        let started = Instant::now();
        loop {
            if TcpStream::connect((Ipv4Addr::LOCALHOST, port)).is_ok() {
                break;
            }
            if let Ok(Some(status)) = moto.child.try_wait() {
                panic!("moto exited at once ({status}):\n{}", moto.log_text());
            }
            if started.elapsed() > Duration::from_secs(60) {
                panic!(
                    "moto did not listen on 127.0.0.1:{port} within 60 s:\n{}",
                    moto.log_text()
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        eprintln!(
            "[moto] serving EC2 on {} (started in {:?})",
            moto.endpoint(),
            started.elapsed()
        );
        Some(moto)
    }

    /// `http://127.0.0.1:PORT`.
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// The address moto listens on.
    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from((Ipv4Addr::LOCALHOST, self.port))
    }

    /// What moto wrote.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The environment an opsd node needs to use EC2 at `endpoint`: static
    /// test credentials, the region, no profile files and no instance
    /// metadata lookups (nothing leaves loopback), and a short attempt
    /// timeout so a silent endpoint fails the step promptly.
    pub fn node_env(endpoint: &str) -> Vec<(String, String)> {
        [
            ("AWS_ENDPOINT_URL", endpoint),
            ("AWS_ACCESS_KEY_ID", "testing"),
            ("AWS_SECRET_ACCESS_KEY", "testing"),
            ("AWS_REGION", REGION),
            ("AWS_EC2_METADATA_DISABLED", "true"),
            ("AWS_CONFIG_FILE", "/nonexistent/opsd-test/aws-config"),
            ("AWS_SHARED_CREDENTIALS_FILE", "/nonexistent/opsd-test/aws-credentials"),
            ("AWS_MAX_ATTEMPTS", "2"),
            ("OPSD_EC2_ATTEMPT_TIMEOUT", "3s"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
    }

    /// Runs `script` (Python, with `ec2`, a boto3 client of this server, and
    /// `json` in scope) and parses the JSON it prints last.
    pub async fn query(&self, script: &str) -> Value {
        let prelude = format!(
            "import boto3, json, sys\n\
             ec2 = boto3.client('ec2', endpoint_url='{}', region_name='{REGION}', \
             aws_access_key_id='testing', aws_secret_access_key='testing')\n",
            self.endpoint()
        );
        let out = tokio::process::Command::new(python())
            .args(["-c", &format!("{prelude}{script}")])
            .env("AWS_EC2_METADATA_DISABLED", "true")
            .output()
            .await
            .unwrap_or_else(|e| panic!("running python: {e}"));
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "the boto3 script failed ({}):\n{script}\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        let last = stdout.lines().last().unwrap_or("null");
        serde_json::from_str(last).unwrap_or_else(|e| panic!("not JSON ({e}): {stdout}"))
    }

    /// Every instance of this opsd cluster (`scope`, its cluster id) tagged
    /// with `resource` (`cluster/web`), in any state: `id`, `state`, `ami`,
    /// `tags` (an object), from `DescribeInstances`.
    pub async fn instances(&self, scope: &str, resource: &str) -> Vec<Value> {
        let script = format!(
            "pages = ec2.get_paginator('describe_instances').paginate(Filters=[\
             {{'Name': 'tag:opsd.cluster', 'Values': [{scope:?}]}}, \
             {{'Name': 'tag:opsd.resource', 'Values': [{resource:?}]}}])\n\
             out = [{{'id': i['InstanceId'], 'state': i['State']['Name'], 'ami': i['ImageId'], \
             'key': i.get('KeyName'), 'groups': [g['GroupId'] for g in i.get('SecurityGroups', [])], \
             'tags': {{t['Key']: t['Value'] for t in i.get('Tags', [])}}}} \
             for p in pages for r in p['Reservations'] for i in r['Instances']]\n\
             print(json.dumps(out))"
        );
        self.query(&script).await.as_array().cloned().unwrap_or_default()
    }

    /// Every instance not terminated, of any owner: what is left running.
    pub async fn live_instances(&self) -> Vec<Value> {
        let script = "pages = ec2.get_paginator('describe_instances').paginate(Filters=[\
             {'Name': 'instance-state-name', 'Values': ['pending', 'running', 'stopping', 'stopped']}])\n\
             print(json.dumps([i['InstanceId'] for p in pages for r in p['Reservations'] for i in r['Instances']]))";
        self.query(script).await.as_array().cloned().unwrap_or_default()
    }

    /// An AMI moto knows from the start (an Amazon Linux one): a base image.
    pub async fn base_ami(&self) -> String {
        let script = "imgs = ec2.describe_images(Owners=['amazon'])['Images']\n\
             linux = [i['ImageId'] for i in imgs if 'amzn' in i.get('Name', '').lower()]\n\
             print(json.dumps((linux or [i['ImageId'] for i in imgs])[0]))";
        self.query(script)
            .await
            .as_str()
            .map(str::to_string)
            .unwrap_or_else(|| panic!("moto lists no AMI"))
    }

    /// The AMIs owned by this account whose name starts with `prefix`:
    /// `id`, `name`, `state`.
    pub async fn own_images(&self, prefix: &str) -> Vec<Value> {
        let script = format!(
            "imgs = ec2.describe_images(Owners=['self'])['Images']\n\
             print(json.dumps([{{'id': i['ImageId'], 'name': i['Name'], 'state': i['State']}} \
             for i in imgs if i['Name'].startswith({prefix:?})]))"
        );
        self.query(&script).await.as_array().cloned().unwrap_or_default()
    }

    /// Whether the security group `name` exists.
    pub async fn group_exists(&self, name: &str) -> bool {
        let script = format!(
            "g = ec2.describe_security_groups(Filters=[{{'Name': 'group-name', 'Values': [{name:?}]}}])\n\
             print(json.dumps(len(g['SecurityGroups']) > 0))"
        );
        self.query(&script).await == Value::Bool(true)
    }

    /// Whether the key pair `name` exists.
    pub async fn key_exists(&self, name: &str) -> bool {
        let script = format!(
            "k = ec2.describe_key_pairs(Filters=[{{'Name': 'key-name', 'Values': [{name:?}]}}])\n\
             print(json.dumps(len(k['KeyPairs']) > 0))"
        );
        self.query(&script).await == Value::Bool(true)
    }
}

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            let log = self.log_text();
            let tail: Vec<&str> = log.lines().rev().take(40).collect();
            eprintln!("---- moto log tail ----");
            for line in tail.into_iter().rev() {
                eprintln!("{line}");
            }
        }
    }
}

/// A free port on 127.0.0.1 now.
fn free_port() -> u16 {
    TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .unwrap_or_else(|e| panic!("no free port on 127.0.0.1: {e}"))
}

/// A TCP proxy on 127.0.0.1 in front of moto that forwards everything,
/// except that the answer to the `hold_at`-th `RunInstances` request (1 for
/// the first) is held back: moto has made the instance, and the caller
/// waits for an answer that never comes. [`HoldingProxy::held`] resolves
/// once that happened. Stops when dropped.
pub struct HoldingProxy {
    addr: SocketAddr,
    held: Arc<Notify>,
    task: tokio::task::JoinHandle<()>,
}

impl HoldingProxy {
    /// Starts a proxy to `upstream`.
    pub async fn start(upstream: SocketAddr, hold_at: usize) -> HoldingProxy {
        let listener = tokio::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
            .await
            .unwrap_or_else(|e| panic!("proxy bind: {e}"));
        let addr = listener.local_addr().unwrap_or_else(|e| panic!("proxy addr: {e}"));
        let held = Arc::new(Notify::new());
        let seen = Arc::new(AtomicUsize::new(0));
        let notify = held.clone();
        let task = tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let (seen, notify) = (seen.clone(), notify.clone());
                tokio::spawn(async move {
                    let Ok(server) = tokio::net::TcpStream::connect(upstream).await else {
                        return;
                    };
                    let (mut cr, mut cw) = client.into_split();
                    let (mut sr, mut sw) = server.into_split();
                    let hold = Arc::new(std::sync::atomic::AtomicBool::new(false));
                    let hold_up = hold.clone();
                    let up = async move {
                        let mut buf = vec![0u8; 64 * 1024];
                        let mut text = String::new();
                        loop {
                            let n = match cr.read(&mut buf).await {
                                Ok(0) | Err(_) => return,
                                Ok(n) => n,
                            };
                            text.push_str(&String::from_utf8_lossy(&buf[..n]));
                            while let Some(at) = text.find("Action=RunInstances") {
                                text.drain(..at + "Action=RunInstances".len());
                                if seen.fetch_add(1, Ordering::SeqCst) + 1 == hold_at {
                                    hold_up.store(true, Ordering::SeqCst);
                                }
                            }
                            let keep = text.len().saturating_sub(32);
                            text.drain(..keep);
                            if sw.write_all(&buf[..n]).await.is_err() {
                                return;
                            }
                        }
                    };
                    let down = async move {
                        let notify = notify;
                        let mut buf = vec![0u8; 64 * 1024];
                        loop {
                            let n = match sr.read(&mut buf).await {
                                Ok(0) | Err(_) => return,
                                Ok(n) => n,
                            };
                            if hold.load(Ordering::SeqCst) {
                                // EC2 has answered; the caller never hears it.
                                notify.notify_one();
                                std::future::pending::<()>().await;
                            }
                            if cw.write_all(&buf[..n]).await.is_err() {
                                return;
                            }
                        }
                    };
                    tokio::join!(up, down);
                });
            }
        });
        HoldingProxy { addr, held, task }
    }

    /// `http://ADDR`, the endpoint opsd nodes get.
    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Resolves once the chosen `RunInstances` was forwarded and its answer held.
    pub async fn held(&self) {
        self.held.notified().await
    }
}

impl Drop for HoldingProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A loopback TCP listener that accepts connections and never answers:
/// an EC2 endpoint that hangs. Stops when dropped.
pub struct SilentEndpoint {
    addr: SocketAddr,
    task: tokio::task::JoinHandle<()>,
}

impl SilentEndpoint {
    /// Starts one on 127.0.0.1.
    pub async fn start() -> SilentEndpoint {
        let listener = tokio::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
            .await
            .unwrap_or_else(|e| panic!("bind: {e}"));
        let addr = listener.local_addr().unwrap_or_else(|e| panic!("addr: {e}"));
        let task = tokio::spawn(async move {
            let mut held = Vec::new();
            while let Ok((conn, _)) = listener.accept().await {
                held.push(conn);
            }
        });
        SilentEndpoint { addr, task }
    }

    /// `http://ADDR`.
    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }
}

impl Drop for SilentEndpoint {
    fn drop(&mut self) {
        self.task.abort();
    }
}
