//! Transport security between clusters: every node has the cluster CA and
//! a certificate of its own in its data dir; a node of another cluster
//! cannot join or talk Raft to this one (its certificate is refused at the
//! handshake); nor can a plain-TCP client, a peer without a certificate, or
//! a client that trusts another CA. A join token is good for one node only,
//! for its TTL, and for its own cluster: anything else is refused with a
//! message saying why, the membership unchanged. opsctl with the CA works;
//! without it, it says the node speaks TLS.

use std::os::unix::fs::PermissionsExt;
use std::time::Duration;

use opsd_proto::peer::peer_client::PeerClient;
use opsd_proto::peer::PeerMessage;
use opsd_proto::transport::{self, Tls};
use opsd_proto::v1::cluster_client::ClusterClient;
use opsd_proto::v1::{CreateJoinTokenRequest, JoinCertificateRequest, StatusRequest};
use opsd_tests::opsctl::Opsctl;
use opsd_tests::{access, Cluster, Node, NodeConfig, Options};
use tonic::transport::ClientTlsConfig;
use tonic::Status;

const EXIT_BOUND: Duration = Duration::from_secs(60);

fn tls_of(node: &Node) -> Tls {
    let read = |name: &str| {
        std::fs::read(node.data_dir().join(name)).unwrap_or_else(|e| panic!("{}: {name}: {e}", node.name()))
    };
    Tls::new(read("ca.pem"), read("node.pem"), read("node.key"))
}

/// Whether `result` is an answer of the server (a success, or a status the
/// server sent), rather than a failure of the connection.
fn answered<T>(result: &Result<T, Status>) -> bool {
    match result {
        Ok(_) => true,
        Err(s) => std::error::Error::source(s).is_none(),
    }
}

fn describe<T>(result: &Result<T, Status>) -> String {
    match result {
        Ok(_) => "answered".to_string(),
        Err(s) => {
            let mut text = format!("{:?}: {}", s.code(), s.message());
            let mut source = std::error::Error::source(s);
            while let Some(e) = source {
                text.push_str(&format!(" <- {e}"));
                source = e.source();
            }
            text
        }
    }
}

/// A raw peer call (a leader query) to `addr`, dialled with `tls`.
async fn peer_call(addr: &str, tls: Option<ClientTlsConfig>) -> Result<(), Status> {
    let channel = transport::endpoint(addr, Duration::from_secs(2), tls)
        .expect("an endpoint")
        .timeout(Duration::from_secs(5))
        .connect_lazy();
    let message = PeerMessage {
        cluster_id: "not-this-one".into(),
        from: 999,
        data: Vec::new(),
    };
    PeerClient::new(channel).leader(message).await.map(|_| ())
}

/// A status call to the client port at `addr`, dialled with `tls`.
async fn client_call(addr: &str, tls: Option<ClientTlsConfig>) -> Result<(), Status> {
    let channel = transport::endpoint(addr, Duration::from_secs(2), tls)
        .expect("an endpoint")
        .timeout(Duration::from_secs(5))
        .connect_lazy();
    ClusterClient::new(channel).status(StatusRequest {}).await.map(|_| ())
}

async fn member_ids(cluster: &Cluster) -> Vec<u64> {
    let mut ids: Vec<u64> = cluster
        .node(0)
        .status()
        .await
        .expect("status")
        .members
        .iter()
        .map(|m| m.id)
        .collect();
    ids.sort();
    ids
}

/// A new node that joins `cluster` with `token` (an empty one: none).
fn joiner(cluster: &Cluster, name: &str, token: &str, options: Options) -> Node {
    let mut config = NodeConfig::new(name, cluster.dir(), options);
    config.join = vec![cluster.node(0).client_addr()];
    config.env.push(("OPSD_JOIN_TOKEN".into(), token.into()));
    Node::spawn(config)
}

async fn refused(node: &Node, what: &str, says: &[(&str, &str)]) {
    let exit = node.wait_exit(EXIT_BOUND).await;
    exit.assert_refused_saying(what, says);
}

async fn join_token(cluster: &Cluster, ttl_ms: Option<u64>) -> String {
    let mut api = cluster.node(0).client();
    api.cluster
        .create_join_token(CreateJoinTokenRequest {
            ttl: ttl_ms.map(opsd_proto::time::duration),
        })
        .await
        .expect("a join token")
        .into_inner()
        .token
}

#[tokio::test]
async fn tls_other_cluster_cannot_join_or_talk() {
    let options = Options {
        join_timeout_ms: Some(5000),
        ..Options::default()
    };
    let a = Cluster::start(2, options.clone()).await;
    let b = Cluster::start(1, options.clone()).await;
    let (a0, a1, b0) = (a.node(0), a.node(1), b.node(0));
    let before = member_ids(&a).await;
    assert_eq!(before.len(), 2);

    // Every node has the CA and its own certificate; keys are private, and
    // the CA's key left the bootstrap node's data dir once replicated.
    for node in [a0, a1, b0] {
        for file in ["ca.pem", "node.pem", "node.key"] {
            assert!(node.data_dir().join(file).exists(), "{} has no {file}", node.name());
        }
        let mode = std::fs::metadata(node.data_dir().join("node.key"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600, "{}: node.key mode {mode:o}", node.name());
        assert!(
            !node.data_dir().join("ca.key").exists(),
            "{} still has ca.key",
            node.name()
        );
    }
    let (ta0, ta1, tb0) = (tls_of(a0), tls_of(a1), tls_of(b0));
    assert_eq!(ta0.ca_pem, ta1.ca_pem, "the nodes of A share one CA");
    assert_ne!(ta0.ca_pem, tb0.ca_pem, "A and B have CAs of their own");

    // The peer port: A's own node certificate gets an answer (the control) ...
    let ours = peer_call(&a0.peer_addr(), Some(ta1.client_config())).await;
    assert!(answered(&ours), "a peer of A with A's certificate: {}", describe(&ours));
    // ... B's certificate is refused at the handshake, even trusting A's CA ...
    let b_identity = transport::client_tls(&ta0.ca_pem, Some((&tb0.cert_pem, &tb0.key_pem)));
    let theirs = peer_call(&a0.peer_addr(), Some(b_identity)).await;
    assert!(
        !answered(&theirs),
        "B's certificate at A's peer port: {}",
        describe(&theirs)
    );
    // ... no certificate at all gets no peer method (it passes the handshake
    // only to be told, as opsctl is, that this is a peer port) ...
    let none = peer_call(&a0.peer_addr(), Some(transport::client_tls(&ta0.ca_pem, None))).await;
    match &none {
        Err(s) if answered(&none) => {
            assert_eq!(s.code(), tonic::Code::Unauthenticated, "{}", describe(&none));
            assert!(
                s.message().contains("certificate of this cluster's CA"),
                "{}",
                describe(&none)
            );
        }
        _ => panic!("no certificate at A's peer port: {}", describe(&none)),
    }
    // ... and plain HTTP/2 is refused at the handshake.
    let plain = peer_call(&a0.peer_addr(), None).await;
    assert!(!answered(&plain), "plain HTTP/2 at A's peer port: {}", describe(&plain));

    // The client port: A's CA works without a client certificate; plain
    // HTTP/2 and trusting B's CA do not.
    let good = client_call(&a0.client_addr(), Some(transport::client_tls(&ta0.ca_pem, None))).await;
    assert!(answered(&good), "a client trusting A's CA: {}", describe(&good));
    let plain = client_call(&a0.client_addr(), None).await;
    eprintln!("plain HTTP/2 at the client port: {}", describe(&plain));
    assert!(
        !answered(&plain),
        "plain HTTP/2 at A's client port: {}",
        describe(&plain)
    );
    let wrong_ca = client_call(&a0.client_addr(), Some(transport::client_tls(&tb0.ca_pem, None))).await;
    eprintln!("trusting another CA at the client port: {}", describe(&wrong_ca));
    eprintln!("B's certificate at the peer port: {}", describe(&theirs));
    assert!(
        !answered(&wrong_ca),
        "a client trusting B's CA: {}",
        describe(&wrong_ca)
    );

    // opsctl: with the CA (the harness gives OPSD_CA) it works; without, it
    // says the node speaks TLS.
    let opsctl = Opsctl { addr: a0.client_addr() };
    let status = opsctl.json(&["status"]).await;
    assert_eq!(status["node_id"].as_u64(), Some(a0.id()), "{status}");
    let out = opsctl
        .command(&["status"])
        .env_remove("OPSD_CA")
        .output()
        .await
        .expect("opsctl");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "opsctl without the CA: {stderr}");
    assert!(
        stderr.contains("the node speaks TLS: give --ca or OPSD_CA"),
        "opsctl without the CA does not say what to do:\n{stderr}"
    );

    // A node of B, with its certificate from B, started with --join to A:
    // refused, A unchanged.
    assert!(b0.terminate(Duration::from_secs(30)).await.status.success());
    let mut config = b0.config().clone();
    config.join = vec![a0.client_addr()];
    let b_joining = Node::spawn(config);
    refused(
        &b_joining,
        "a node of cluster B with --join to A",
        &[("another cluster", "say the node is of another cluster")],
    )
    .await;
    assert_eq!(member_ids(&a).await, before, "A's membership changed");

    // A token of B does not let a new node into A (the CA it pins is B's).
    // (The harness took that address for a node of A: it is B's again.)
    access::register(&b0.client_addr(), b0.data_dir());
    b0.restart();
    b0.wait_ready(Duration::from_secs(60)).await;
    let b_token = {
        let mut api = b0.client();
        api.cluster
            .create_join_token(CreateJoinTokenRequest { ttl: None })
            .await
            .expect("a join token of B")
            .into_inner()
            .token
    };
    let foreign = joiner(&a, "foreign-token", &b_token, options.clone());
    refused(
        &foreign,
        "a new node with a join token of cluster B, --join to A",
        &[(
            "not the one the join token names",
            "say the token is of another cluster",
        )],
    )
    .await;
    assert_eq!(member_ids(&a).await, before, "A's membership changed");

    // Bad requests name their field and change nothing.
    let mut api = a0.client();
    let bad = api
        .cluster
        .join_certificate(JoinCertificateRequest {
            join_token: "not a token".into(),
            node_id: 7,
        })
        .await
        .expect_err("a malformed token");
    assert_eq!(bad.code(), tonic::Code::InvalidArgument, "{bad:?}");
    assert!(bad.message().starts_with("join_token: "), "{bad:?}");
    let token = join_token(&a, None).await;
    let bad = api
        .cluster
        .join_certificate(JoinCertificateRequest {
            join_token: token.clone(),
            node_id: 0,
        })
        .await
        .expect_err("node id 0");
    assert_eq!(bad.code(), tonic::Code::InvalidArgument, "{bad:?}");
    assert!(bad.message().starts_with("node_id: "), "{bad:?}");
    let bad = api
        .cluster
        .create_join_token(CreateJoinTokenRequest {
            ttl: Some(opsd_proto::time::duration(8 * 24 * 3600 * 1000)),
        })
        .await
        .expect_err("a TTL over 7 days");
    assert_eq!(bad.code(), tonic::Code::InvalidArgument, "{bad:?}");
    assert!(bad.message().starts_with("ttl: "), "{bad:?}");
    // A wrong secret with a real id is refused, and does not spend the token.
    let mut parts: Vec<String> = token.split('.').map(String::from).collect();
    parts[2] = "0".repeat(64);
    let bad = api
        .cluster
        .join_certificate(JoinCertificateRequest {
            join_token: parts.join("."),
            node_id: 7,
        })
        .await
        .expect_err("a wrong secret");
    assert_eq!(bad.code(), tonic::Code::FailedPrecondition, "{bad:?}");
    assert!(bad.message().contains("wrong secret"), "{bad:?}");

    // A token is good once: the first node joins ...
    let first = joiner(&a, "first", &token, options.clone());
    let first_status = first.wait_ready(Duration::from_secs(60)).await;
    assert_eq!(first_status.cluster_id, a0.status().await.unwrap().cluster_id);
    let with_first = member_ids(&a).await;
    assert_eq!(with_first.len(), 3, "{with_first:?}");
    // ... a second with the same token is refused, naming the node that used it.
    let second = joiner(&a, "second", &token, options.clone());
    refused(
        &second,
        "a node with a join token another node used",
        &[
            ("already used by node", "say the token is spent"),
            (&first_status.node_id.to_string(), "name the node that used it"),
        ],
    )
    .await;
    assert_eq!(member_ids(&a).await, with_first, "A's membership changed");

    // An expired token is refused.
    let short = join_token(&a, Some(1)).await;
    tokio::time::sleep(Duration::from_millis(50)).await;
    let late = joiner(&a, "late", &short, options.clone());
    refused(
        &late,
        "a node with an expired join token",
        &[("expired", "say it expired")],
    )
    .await;
    // No token at all: the seed speaks TLS, and opsd says a token is needed.
    let none = joiner(&a, "no-token", "", options.clone());
    refused(
        &none,
        "a new node without a join token",
        &[("--join-token", "name the flag")],
    )
    .await;
    assert_eq!(member_ids(&a).await, with_first, "A's membership changed");

    // A member of A whose certificate is swapped for B's (A's CA kept):
    // A's nodes refuse it in the handshake, and it says so in its log.
    assert!(a1.terminate(Duration::from_secs(30)).await.status.success());
    for file in ["node.pem", "node.key"] {
        std::fs::copy(b0.data_dir().join(file), a1.data_dir().join(file)).expect("copying B's certificate");
    }
    a1.restart();
    opsd_tests::wait_until(
        "the node with B's certificate to log that A's nodes refuse it",
        Duration::from_secs(30),
        Duration::from_millis(200),
        || async {
            let log = a1.run_log();
            if log.contains("refused our certificate (another cluster's CA?)") {
                Ok(())
            } else {
                Err(log.lines().last().unwrap_or_default().to_string())
            }
        },
    )
    .await;
}
