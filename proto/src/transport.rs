//! How opsd's two ports are served and dialled: the peer port (Raft, served
//! by the cluster crate) and the client port (the API, served by the daemon
//! and dialled by the client library, opsctl and joining nodes). Every gRPC
//! server and endpoint is built here, so that transport security is added in
//! one place for both:
//!
//! - the peer port speaks mutual TLS: a peer must present a certificate of the
//!   cluster's CA ([`tls_server`]; one of another CA fails the handshake, a
//!   connection with none is refused every peer method);
//! - the client port speaks TLS with the node's certificate; a client may
//!   present a certificate too (nodes do, for node-to-node calls)
//!   ([`tls_server`]);
//! - every certificate a client checks is checked against the one name
//!   [`SERVER_NAME`], never an address, so containers, NAT and `0.0.0.0`
//!   never matter;
//! - a joining node that has no CA yet trusts the node it first contacts by
//!   the CA's SHA-256 fingerprint carried in its join token
//!   ([`pinned_endpoint`]).

use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tonic::transport::server::TcpIncoming;
use tonic::transport::{Certificate, ClientTlsConfig, Endpoint, Identity, Server, ServerTlsConfig};

/// The DNS name every node certificate carries and every client verifies.
pub const SERVER_NAME: &str = "opsd-node";

/// How long a TLS handshake may take before the connection is dropped.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// A node's TLS material, all PEM: the cluster CA's certificate, the node's
/// certificate and its private key.
#[derive(Clone)]
pub struct Tls {
    /// The cluster CA certificate.
    pub ca_pem: Arc<Vec<u8>>,
    /// This node's certificate, signed by the CA.
    pub cert_pem: Arc<Vec<u8>>,
    /// This node's private key.
    pub key_pem: Arc<Vec<u8>>,
}

impl std::fmt::Debug for Tls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tls").field("key_pem", &"***").finish_non_exhaustive()
    }
}

impl Tls {
    /// The material from its three PEM texts.
    pub fn new(ca_pem: Vec<u8>, cert_pem: Vec<u8>, key_pem: Vec<u8>) -> Self {
        Tls {
            ca_pem: Arc::new(ca_pem),
            cert_pem: Arc::new(cert_pem),
            key_pem: Arc::new(key_pem),
        }
    }

    /// The identity a server presents: the node's certificate followed by
    /// the CA's, so that a joiner can pin the CA from the chain.
    fn server_identity(&self) -> Identity {
        let mut chain = self.cert_pem.to_vec();
        if !chain.ends_with(b"\n") {
            chain.push(b'\n');
        }
        chain.extend_from_slice(&self.ca_pem);
        Identity::from_pem(chain, self.key_pem.as_slice())
    }

    /// How this node dials another node's port: trusting only the cluster
    /// CA, presenting its own certificate.
    pub fn client_config(&self) -> ClientTlsConfig {
        client_tls(&self.ca_pem, Some((&self.cert_pem, &self.key_pem)))
    }
}

/// A gRPC server for either port without TLS; services and layers are added
/// by its user.
pub fn server() -> Server {
    Server::builder()
}

/// A server for either port: with `tls`, it proves itself with the node's
/// certificate, and a certificate a client presents must be signed by the
/// cluster CA, or the handshake fails. Presenting one is optional on both
/// ports: on the client port, nodes present theirs and clients a token
/// ([`tonic::Request::peer_certs`] tells them apart); on the peer port, a
/// connection without one passes the handshake only so that a client given
/// the peer port by mistake can be told so, and every peer method is refused
/// on it (the cluster crate's `peer_port` layer).
pub fn tls_server(tls: Option<&Tls>) -> Result<Server, tonic::transport::Error> {
    match tls {
        None => Ok(server()),
        Some(tls) => server().tls_config(
            ServerTlsConfig::new()
                .identity(tls.server_identity())
                .client_ca_root(Certificate::from_pem(tls.ca_pem.as_slice()))
                .client_auth_optional(true)
                .timeout(HANDSHAKE_TIMEOUT),
        ),
    }
}

/// How a client dials TLS: trusting the CA `ca_pem` only, checking the
/// server's certificate against [`SERVER_NAME`], presenting `identity`
/// (certificate and key PEM) if given.
pub fn client_tls(ca_pem: &[u8], identity: Option<(&[u8], &[u8])>) -> ClientTlsConfig {
    let config = ClientTlsConfig::new()
        .domain_name(SERVER_NAME)
        .ca_certificate(Certificate::from_pem(ca_pem))
        .timeout(HANDSHAKE_TIMEOUT);
    match identity {
        Some((cert, key)) => config.identity(Identity::from_pem(cert, key)),
        None => config,
    }
}

/// The connections a listener accepts, with Nagle's algorithm off: a small
/// reply would otherwise wait for the other side's delayed ACK, about 40 ms
/// per request.
pub fn incoming(listener: TcpListener) -> TcpIncoming {
    TcpIncoming::from(listener).with_nodelay(Some(true))
}

/// An endpoint dialling a node's port at `addr` (HOST:PORT), Nagle's
/// algorithm off, giving up a connection attempt after `connect_timeout`;
/// over TLS with `tls` (`https://`), else plain HTTP/2.
/// Its user adds request timeouts and connects, lazily or at once.
pub fn endpoint(
    addr: &str,
    connect_timeout: Duration,
    tls: Option<ClientTlsConfig>,
) -> Result<Endpoint, tonic::transport::Error> {
    let endpoint = match tls {
        None => Endpoint::from_shared(format!("http://{addr}"))?,
        Some(tls) => Endpoint::from_shared(format!("https://{addr}"))?.tls_config(tls)?,
    };
    Ok(dial(endpoint, connect_timeout))
}

/// An endpoint dialling `addr` over TLS that trusts the server only if the
/// chain it presents holds a CA certificate whose SHA-256 (of its DER, hex)
/// is `fingerprint` and the server's certificate is signed by that CA for
/// [`SERVER_NAME`]: how a joining node, which has no CA file yet, trusts
/// the node its join token names.
pub fn pinned_endpoint(
    addr: &str,
    connect_timeout: Duration,
    fingerprint: &str,
) -> Result<Endpoint, tonic::transport::Error> {
    let verifier = Arc::new(pin::PinnedCa::new(fingerprint));
    let config = ClientTlsConfig::new()
        .domain_name(SERVER_NAME)
        .timeout(HANDSHAKE_TIMEOUT);
    let endpoint = Endpoint::from_shared(format!("https://{addr}"))?.tls_config_with_verifier(config, verifier)?;
    Ok(dial(endpoint, connect_timeout))
}

/// Sets how an already parsed endpoint dials: Nagle's algorithm off, giving
/// up a connection attempt after `connect_timeout`.
pub fn dial(endpoint: Endpoint, connect_timeout: Duration) -> Endpoint {
    endpoint.connect_timeout(connect_timeout).tcp_nodelay(true)
}

/// The SHA-256 of a certificate's DER, lowercase hex: a CA's fingerprint.
pub fn fingerprint_der(der: &[u8]) -> String {
    hex(ring::digest::digest(&ring::digest::SHA256, der).as_ref())
}

/// The fingerprint ([`fingerprint_der`]) of the first certificate in `pem`.
pub fn fingerprint_pem(pem: &[u8]) -> Result<String, String> {
    use rustls::pki_types::pem::PemObject;
    let der = rustls::pki_types::CertificateDer::pem_slice_iter(pem)
        .next()
        .ok_or("no certificate in the PEM text")?
        .map_err(|e| format!("bad PEM certificate: {e:?}"))?;
    Ok(fingerprint_der(&der))
}

/// Lowercase hex of `bytes`.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Whether a failed call failed at the TLS layer, and how, in words for an
/// operator: the other side speaks TLS and we did not, or it refused our
/// certificate, or we refused its. `None` if the cause chain shows nothing
/// of TLS.
pub fn tls_problem(status: &tonic::Status) -> Option<&'static str> {
    let mut text = status.message().to_string();
    let mut source = std::error::Error::source(status);
    while let Some(e) = source {
        text.push_str(" | ");
        text.push_str(&e.to_string());
        source = e.source();
    }
    tls_problem_in(&text)
}

/// [`tls_problem`] for an error already in words (its whole cause chain).
pub fn tls_problem_in(text: &str) -> Option<&'static str> {
    let t = text.to_ascii_lowercase();
    if t.contains("received fatal alert") && (t.contains("certificate") || t.contains("unknownca")) {
        Some("the other side refused our certificate (another cluster's CA?)")
    } else if t.contains("invalid peer certificate") || t.contains("unknownissuer") || t.contains("unknown issuer") {
        Some("the other side's certificate is not of our cluster's CA")
    } else if t.contains("corrupt message") || t.contains("invalidcontenttype") || t.contains("invalid content type") {
        Some("the other side does not speak TLS")
    } else {
        None
    }
}

/// Whether a failed call certainly never reached the other side: the
/// connection could not be made, so the request was never written. Decided
/// from the error's kind (tonic's [`tonic::ConnectError`] somewhere in its
/// cause chain), never its text: a connection that broke after the request
/// went out is not a failure to connect, and retrying it could apply a write
/// twice.
pub fn never_sent(status: &tonic::Status) -> bool {
    let mut source = std::error::Error::source(status);
    while let Some(e) = source {
        if e.is::<tonic::ConnectError>() {
            return true;
        }
        source = e.source();
    }
    false
}

/// The verifier of [`pinned_endpoint`].
mod pin {
    use std::sync::Arc;

    use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
    use rustls::client::WebPkiServerVerifier;
    use rustls::crypto::{verify_tls12_signature, verify_tls13_signature, CryptoProvider};
    use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
    use rustls::{DigitallySignedStruct, Error, RootCertStore, SignatureScheme};

    /// Trusts a server whose chain holds the CA of one fingerprint.
    #[derive(Debug)]
    pub(super) struct PinnedCa {
        fingerprint: String,
        provider: Arc<CryptoProvider>,
    }

    impl PinnedCa {
        pub(super) fn new(fingerprint: &str) -> Self {
            PinnedCa {
                fingerprint: fingerprint.trim().to_ascii_lowercase(),
                provider: Arc::new(rustls::crypto::ring::default_provider()),
            }
        }
    }

    impl ServerCertVerifier for PinnedCa {
        fn verify_server_cert(
            &self,
            end_entity: &CertificateDer<'_>,
            intermediates: &[CertificateDer<'_>],
            server_name: &ServerName<'_>,
            ocsp_response: &[u8],
            now: UnixTime,
        ) -> Result<ServerCertVerified, Error> {
            let ca = intermediates
                .iter()
                .find(|c| super::fingerprint_der(c) == self.fingerprint)
                .ok_or_else(|| {
                    Error::General(
                        "the node's CA is not the one the join token names (a token of another cluster?)".into(),
                    )
                })?;
            let mut roots = RootCertStore::empty();
            roots
                .add(ca.clone().into_owned())
                .map_err(|e| Error::General(format!("the node's CA certificate: {e}")))?;
            let inner = WebPkiServerVerifier::builder_with_provider(Arc::new(roots), self.provider.clone())
                .build()
                .map_err(|e| Error::General(format!("the node's CA certificate: {e}")))?;
            inner.verify_server_cert(end_entity, &[], server_name, ocsp_response, now)
        }

        fn verify_tls12_signature(
            &self,
            message: &[u8],
            cert: &CertificateDer<'_>,
            dss: &DigitallySignedStruct,
        ) -> Result<HandshakeSignatureValid, Error> {
            verify_tls12_signature(message, cert, dss, &self.provider.signature_verification_algorithms)
        }

        fn verify_tls13_signature(
            &self,
            message: &[u8],
            cert: &CertificateDer<'_>,
            dss: &DigitallySignedStruct,
        ) -> Result<HandshakeSignatureValid, Error> {
            verify_tls13_signature(message, cert, dss, &self.provider.signature_verification_algorithms)
        }

        fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
            self.provider.signature_verification_algorithms.supported_schemes()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_dial_plain_http_without_tls_and_https_with_it() {
        let e = endpoint("127.0.0.1:7000", Duration::from_secs(1), None).unwrap();
        assert_eq!(e.uri().to_string(), "http://127.0.0.1:7000/");
        assert!(endpoint("bad host:7000", Duration::from_secs(1), None).is_err());
        let e = pinned_endpoint("127.0.0.1:7000", Duration::from_secs(1), &"ab".repeat(32)).unwrap();
        assert_eq!(e.uri().to_string(), "https://127.0.0.1:7000/");
    }

    #[test]
    fn fingerprints_are_sha256_hex() {
        assert_eq!(
            fingerprint_der(b""),
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
        assert!(fingerprint_pem(b"not pem").is_err());
    }
}
