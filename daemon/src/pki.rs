//! The cluster's certificates: a CA made at bootstrap, a certificate per
//! node signed by it, the files they live in, and join tokens.
//!
//! - The CA (ECDSA P-256, made with `rcgen` by the bootstrapping node) is
//!   replicated, key included ([`crate::domain::Command::SetClusterCa`]), so
//!   that whichever member a joining node contacts can sign its certificate.
//!   Whoever holds a node's data dir therefore holds the cluster, as with
//!   Consul's built-in CA, whose key lives in Raft the same way.
//! - A node certificate carries two DNS names: [`SERVER_NAME`], the same on
//!   every node, which every client verifies (so addresses never matter),
//!   and `node-ID`, for logs. It is good for server and client auth.
//! - A data dir holds `ca.pem`, `node.pem` and `node.key` (0600); the
//!   bootstrap node also keeps `ca.key` (0600) until the replicated state
//!   holds the CA.
//! - A join token, `opsdjoin1.ID.SECRET.FINGERPRINT`, lets a new node get its
//!   certificate from a member it trusts by the CA's SHA-256 fingerprint,
//!   without a CA file (as kubeadm's discovery hash does).

use std::io::Write;
use std::path::Path;

use anyhow::{anyhow, bail, Context};
use opsd_proto::transport::Tls;
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};

pub use opsd_proto::transport::{fingerprint_pem, hex, SERVER_NAME};

/// The cluster CA certificate in a data dir.
pub const CA_FILE: &str = "ca.pem";
/// The cluster CA's key, kept by the bootstrap node until it is replicated.
pub const CA_KEY_FILE: &str = "ca.key";
/// This node's certificate.
pub const NODE_CERT_FILE: &str = "node.pem";
/// This node's private key (0600).
pub const NODE_KEY_FILE: &str = "node.key";

/// A CA: its certificate and private key, PEM.
#[derive(Clone, PartialEq, Eq)]
pub struct Ca {
    /// The certificate.
    pub cert_pem: String,
    /// The private key.
    pub key_pem: String,
}

impl std::fmt::Debug for Ca {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ca").field("key_pem", &"***").finish_non_exhaustive()
    }
}

/// A node's certificate and private key, PEM.
#[derive(Clone)]
pub struct NodeCert {
    /// The certificate, signed by the CA.
    pub cert_pem: String,
    /// The private key.
    pub key_pem: String,
}

/// The CA's parameters: the same for the certificate made at bootstrap and
/// for the issuer rebuilt from the replicated key, so certificates signed
/// later name the CA exactly as its certificate does.
fn ca_params(cluster_id: &str) -> CertificateParams {
    let mut params = CertificateParams::default();
    let mut name = DistinguishedName::new();
    name.push(DnType::CommonName, format!("opsd cluster {cluster_id} CA"));
    name.push(DnType::OrganizationName, "opsd");
    params.distinguished_name = name;
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    params
}

/// A new CA for cluster `cluster_id`.
pub fn new_ca(cluster_id: &str) -> anyhow::Result<Ca> {
    let key = KeyPair::generate().context("making the CA's key")?;
    let cert = ca_params(cluster_id)
        .self_signed(&key)
        .context("making the CA's certificate")?;
    Ok(Ca {
        cert_pem: cert.pem(),
        key_pem: key.serialize_pem(),
    })
}

/// A new certificate and key for node `node_id`, signed by `ca` (the CA of
/// cluster `cluster_id`).
pub fn issue_node_cert(ca: &Ca, cluster_id: &str, node_id: u64) -> anyhow::Result<NodeCert> {
    let ca_key = KeyPair::from_pem(&ca.key_pem).map_err(|e| anyhow!("the CA's key: {e}"))?;
    let issuer = Issuer::new(ca_params(cluster_id), ca_key);
    let mut params = CertificateParams::new(vec![SERVER_NAME.to_string(), format!("node-{node_id}")])
        .context("the node certificate's names")?;
    let mut name = DistinguishedName::new();
    name.push(DnType::CommonName, format!("opsd node {node_id}"));
    name.push(DnType::OrganizationName, format!("opsd cluster {cluster_id}"));
    params.distinguished_name = name;
    params.is_ca = IsCa::NoCa;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth, ExtendedKeyUsagePurpose::ClientAuth];
    params.use_authority_key_identifier_extension = true;
    let key = KeyPair::generate().context("making the node's key")?;
    let cert = params
        .signed_by(&key, &issuer)
        .context("signing the node's certificate")?;
    Ok(NodeCert {
        cert_pem: cert.pem(),
        key_pem: key.serialize_pem(),
    })
}

/// Writes `contents` to `dir/name` atomically (a temporary file renamed
/// over it), with mode `mode`.
fn write_atomic(dir: &Path, name: &str, contents: &[u8], mode: u32) -> anyhow::Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    let path = dir.join(name);
    let tmp = dir.join(format!(".{name}.tmp"));
    let _ = std::fs::remove_file(&tmp);
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(&tmp)
        .with_context(|| format!("writing {}", tmp.display()))?;
    file.write_all(contents)
        .and_then(|()| file.sync_all())
        .with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, &path).with_context(|| format!("writing {}", path.display()))?;
    if let Ok(d) = std::fs::File::open(dir) {
        let _ = d.sync_all();
    }
    Ok(())
}

/// Writes a node's TLS files into its data dir: `ca.pem`, `node.pem`, and
/// `node.key` (0600), the key first so that `node.pem` present means all are.
pub fn write_node_files(dir: &Path, ca_pem: &str, cert: &NodeCert) -> anyhow::Result<()> {
    write_atomic(dir, NODE_KEY_FILE, cert.key_pem.as_bytes(), 0o600)?;
    write_atomic(dir, CA_FILE, ca_pem.as_bytes(), 0o644)?;
    write_atomic(dir, NODE_CERT_FILE, cert.cert_pem.as_bytes(), 0o644)?;
    Ok(())
}

/// Keeps the CA's key in the data dir (0600) until the state holds it.
pub fn write_ca_key(dir: &Path, ca: &Ca) -> anyhow::Result<()> {
    write_atomic(dir, CA_KEY_FILE, ca.key_pem.as_bytes(), 0o600)
}

/// The CA kept in the data dir by the bootstrap node, if its key is still there.
pub fn read_kept_ca(dir: &Path) -> Option<Ca> {
    let key_pem = std::fs::read_to_string(dir.join(CA_KEY_FILE)).ok()?;
    let cert_pem = std::fs::read_to_string(dir.join(CA_FILE)).ok()?;
    Some(Ca { cert_pem, key_pem })
}

/// The node's TLS material from its data dir: `None` if it has none (a
/// node of a cluster made before TLS); an error if only some of the files
/// are there.
pub fn load(dir: &Path) -> anyhow::Result<Option<Tls>> {
    let read = |name: &str| match std::fs::read(dir.join(name)) {
        Ok(bytes) => Ok(Some(bytes)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(anyhow!("reading {}: {e}", dir.join(name).display())),
    };
    match (read(CA_FILE)?, read(NODE_CERT_FILE)?, read(NODE_KEY_FILE)?) {
        (None, None, _) => Ok(None),
        (Some(ca), Some(cert), Some(key)) => Ok(Some(Tls::new(ca, cert, key))),
        _ => bail!(
            "data dir {}: some of {CA_FILE}, {NODE_CERT_FILE} and {NODE_KEY_FILE} are missing; restore them from a \
             backup, or start this node anew with an empty data dir and a join token",
            dir.display()
        ),
    }
}

/// The prefix of a join token.
pub const JOIN_TOKEN_PREFIX: &str = "opsdjoin1";

/// A join token: `opsdjoin1.ID.SECRET.FINGERPRINT`, ID 16 hex digits, SECRET
/// 64 (32 random bytes; the cluster stores only its SHA-256), FINGERPRINT the
/// SHA-256 of the cluster CA certificate's DER (64 hex digits).
#[derive(Clone, PartialEq, Eq)]
pub struct JoinToken {
    /// The token's id, how the cluster finds it.
    pub id: String,
    /// The secret, hex.
    pub secret: String,
    /// The CA's fingerprint, hex.
    pub ca_fingerprint: String,
}

impl std::fmt::Debug for JoinToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JoinToken")
            .field("id", &self.id)
            .field("secret", &"***")
            .field("ca_fingerprint", &self.ca_fingerprint)
            .finish()
    }
}

fn is_hex(s: &str, len: usize) -> bool {
    s.len() == len && s.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

impl JoinToken {
    /// A fresh token for the cluster whose CA has `ca_fingerprint`.
    pub fn generate(ca_fingerprint: &str) -> anyhow::Result<JoinToken> {
        use ring::rand::SecureRandom;
        let rng = ring::rand::SystemRandom::new();
        let mut id = [0u8; 8];
        let mut secret = [0u8; 32];
        rng.fill(&mut id)
            .map_err(|_| anyhow!("no randomness for a join token"))?;
        rng.fill(&mut secret)
            .map_err(|_| anyhow!("no randomness for a join token"))?;
        Ok(JoinToken {
            id: hex(&id),
            secret: hex(&secret),
            ca_fingerprint: ca_fingerprint.to_string(),
        })
    }

    /// Parses a token's text; the error says what is wrong with it (never
    /// quoting the secret).
    pub fn parse(text: &str) -> Result<JoinToken, String> {
        let parts: Vec<&str> = text.trim().split('.').collect();
        let [prefix, id, secret, fingerprint] = parts[..] else {
            return Err(format!(
                "join token: expected {JOIN_TOKEN_PREFIX}.ID.SECRET.FINGERPRINT (from `opsctl cluster join-token`)"
            ));
        };
        if prefix != JOIN_TOKEN_PREFIX {
            return Err(format!("join token: must start with {JOIN_TOKEN_PREFIX}."));
        }
        if !is_hex(id, 16) {
            return Err("join token: its id must be 16 lowercase hex digits".into());
        }
        if !is_hex(secret, 64) {
            return Err("join token: its secret must be 64 lowercase hex digits".into());
        }
        if !is_hex(fingerprint, 64) {
            return Err("join token: its CA fingerprint must be 64 lowercase hex digits".into());
        }
        Ok(JoinToken {
            id: id.to_string(),
            secret: secret.to_string(),
            ca_fingerprint: fingerprint.to_string(),
        })
    }

    /// The SHA-256 of the secret, hex: what the cluster stores.
    pub fn secret_sha256(&self) -> String {
        secret_sha256(&self.secret)
    }
}

/// The SHA-256 of a token secret, hex.
pub fn secret_sha256(secret: &str) -> String {
    hex(ring::digest::digest(&ring::digest::SHA256, secret.as_bytes()).as_ref())
}

impl std::fmt::Display for JoinToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{JOIN_TOKEN_PREFIX}.{}.{}.{}",
            self.id, self.secret, self.ca_fingerprint
        )
    }
}

/// The node's own TLS material and client credentials, set once at start:
/// what node-to-node calls on the client port present.
static LOCAL: std::sync::OnceLock<Tls> = std::sync::OnceLock::new();

/// Records this process's node TLS material (first call wins).
pub fn set_local(tls: Tls) {
    let _ = LOCAL.set(tls);
}

/// Credentials for a call this node makes to another node's client port:
/// trusting the cluster CA and presenting this node's certificate, when
/// the node has them.
pub fn node_credentials(base: opsd_client::Credentials) -> opsd_client::Credentials {
    match LOCAL.get() {
        Some(tls) => base
            .with_ca(tls.ca_pem.to_vec())
            .with_identity(tls.cert_pem.to_vec(), tls.key_pem.to_vec()),
        None => base,
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::Duration;

    use rustls::client::danger::ServerCertVerifier;
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, ServerName, UnixTime};

    use super::*;

    fn der(pem: &str) -> CertificateDer<'static> {
        CertificateDer::from_pem_slice(pem.as_bytes()).unwrap()
    }

    fn verifier(ca: &Ca) -> Arc<rustls::client::WebPkiServerVerifier> {
        let mut roots = rustls::RootCertStore::empty();
        roots.add(der(&ca.cert_pem)).unwrap();
        rustls::client::WebPkiServerVerifier::builder_with_provider(
            Arc::new(roots),
            Arc::new(rustls::crypto::ring::default_provider()),
        )
        .build()
        .unwrap()
    }

    #[test]
    fn node_certificates_chain_to_their_ca_for_the_fixed_name() {
        let ca = new_ca("c1").unwrap();
        let node = issue_node_cert(&ca, "c1", 7).unwrap();
        let name = ServerName::try_from(SERVER_NAME).unwrap();
        let now = UnixTime::now();
        verifier(&ca)
            .verify_server_cert(&der(&node.cert_pem), &[], &name, &[], now)
            .expect("rustls accepts the node's certificate for the fixed name");
        // The name for logs is there too; an address is not.
        let per_node = ServerName::try_from("node-7").unwrap();
        verifier(&ca)
            .verify_server_cert(&der(&node.cert_pem), &[], &per_node, &[], now)
            .unwrap();
        let other_name = ServerName::try_from("example.com").unwrap();
        assert!(verifier(&ca)
            .verify_server_cert(&der(&node.cert_pem), &[], &other_name, &[], now)
            .is_err());
        // Another cluster's CA does not accept it.
        let other = new_ca("c2").unwrap();
        assert!(verifier(&other)
            .verify_server_cert(&der(&node.cert_pem), &[], &name, &[], now)
            .is_err());
        // As a client certificate too.
        let mut roots = rustls::RootCertStore::empty();
        roots.add(der(&ca.cert_pem)).unwrap();
        let client = rustls::server::WebPkiClientVerifier::builder_with_provider(
            Arc::new(roots),
            Arc::new(rustls::crypto::ring::default_provider()),
        )
        .build()
        .unwrap();
        client
            .verify_client_cert(&der(&node.cert_pem), &[], now)
            .expect("the node's certificate is good for client auth");
    }

    /// A client-port server with `tls` on a free loopback port, serving
    /// health only; its address.
    async fn serve(tls: &Tls) -> String {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let (_, health) = tonic_health::server::health_reporter();
        let server = opsd_proto::transport::tls_server(Some(tls)).unwrap();
        tokio::spawn(async move {
            let mut server = server;
            let _ = server
                .add_service(health)
                .serve_with_incoming(opsd_proto::transport::incoming(listener))
                .await;
        });
        addr
    }

    async fn check(endpoint: tonic::transport::Endpoint) -> Result<(), String> {
        let channel = endpoint.connect().await.map_err(|e| format!("{e:?}"))?;
        tonic_health::pb::health_client::HealthClient::new(channel)
            .check(tonic_health::pb::HealthCheckRequest { service: String::new() })
            .await
            .map(|_| ())
            .map_err(|e| format!("{e:?}"))
    }

    #[tokio::test]
    async fn a_pinned_ca_fingerprint_trusts_its_cluster_only() {
        let ca = new_ca("c1").unwrap();
        let node = issue_node_cert(&ca, "c1", 1).unwrap();
        let tls = Tls::new(
            ca.cert_pem.clone().into_bytes(),
            node.cert_pem.clone().into_bytes(),
            node.key_pem.clone().into_bytes(),
        );
        let addr = serve(&tls).await;
        let second = Duration::from_secs(2);
        let right = fingerprint_pem(ca.cert_pem.as_bytes()).unwrap();
        check(opsd_proto::transport::pinned_endpoint(&addr, second, &right).unwrap())
            .await
            .expect("the right fingerprint is trusted");
        // Another cluster's CA: refused in the handshake.
        let other = new_ca("c2").unwrap();
        let wrong = fingerprint_pem(other.cert_pem.as_bytes()).unwrap();
        let e = check(opsd_proto::transport::pinned_endpoint(&addr, second, &wrong).unwrap())
            .await
            .unwrap_err();
        assert!(e.contains("not the one the join token names"), "{e}");
        // A server of another cluster presenting our CA in its chain, but a
        // certificate not signed by it: refused too.
        let other_node = issue_node_cert(&other, "c2", 2).unwrap();
        let forged = Tls::new(
            ca.cert_pem.clone().into_bytes(),
            other_node.cert_pem.into_bytes(),
            other_node.key_pem.into_bytes(),
        );
        let forged_addr = serve(&forged).await;
        let e = check(opsd_proto::transport::pinned_endpoint(&forged_addr, second, &right).unwrap())
            .await
            .unwrap_err();
        assert!(e.contains("UnknownIssuer") || e.contains("BadSignature"), "{e}");
        // The CA itself as a client trusts the server too (no pin needed).
        let config = opsd_proto::transport::client_tls(ca.cert_pem.as_bytes(), None);
        check(opsd_proto::transport::endpoint(&addr, second, Some(config)).unwrap())
            .await
            .expect("a client with the CA");
    }

    #[test]
    fn files_are_written_atomically_with_the_key_private() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        assert!(load(dir.path()).unwrap().is_none());
        let ca = new_ca("c1").unwrap();
        let node = issue_node_cert(&ca, "c1", 3).unwrap();
        write_node_files(dir.path(), &ca.cert_pem, &node).unwrap();
        write_ca_key(dir.path(), &ca).unwrap();
        for private in [NODE_KEY_FILE, CA_KEY_FILE] {
            let mode = std::fs::metadata(dir.path().join(private))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600, "{private}");
        }
        let tls = load(dir.path()).unwrap().unwrap();
        assert_eq!(tls.ca_pem.as_slice(), ca.cert_pem.as_bytes());
        assert_eq!(read_kept_ca(dir.path()).unwrap(), ca);
        std::fs::remove_file(dir.path().join(NODE_CERT_FILE)).unwrap();
        std::fs::remove_file(dir.path().join(NODE_KEY_FILE)).unwrap();
        assert!(load(dir.path()).unwrap_err().to_string().contains("missing"));
    }

    #[test]
    fn join_tokens_round_trip_and_bad_ones_are_named() {
        let ca = new_ca("c1").unwrap();
        let fingerprint = fingerprint_pem(ca.cert_pem.as_bytes()).unwrap();
        let token = JoinToken::generate(&fingerprint).unwrap();
        let text = token.to_string();
        assert!(text.starts_with("opsdjoin1."));
        assert_eq!(JoinToken::parse(&format!(" {text}\n")).unwrap(), token);
        assert_ne!(JoinToken::generate(&fingerprint).unwrap().secret, token.secret);
        assert_eq!(token.secret_sha256().len(), 64);
        assert!(!format!("{token:?}").contains(&token.secret));
        for (bad, says) in [
            ("", "expected opsdjoin1"),
            ("opsd1.a.b.c", "must start with"),
            (&format!("opsdjoin1.x.{}.{}", token.secret, fingerprint), "id"),
            (&format!("opsdjoin1.{}.short.{}", token.id, fingerprint), "secret"),
            (&format!("opsdjoin1.{}.{}.XYZ", token.id, token.secret), "fingerprint"),
        ] {
            let e = JoinToken::parse(bad).unwrap_err();
            assert!(e.contains(says), "{bad}: {e}");
            assert!(!e.contains(&token.secret));
        }
    }
}
