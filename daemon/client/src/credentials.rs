//! Who is asking: the one place a request gets its credentials: a bearer
//! token (`authorization: Bearer opsd1.ID.SECRET`), whose user the server
//! records on runs and audit entries, and the cluster CA to dial TLS with.

use tonic::metadata::{Ascii, MetadataValue};
use tonic::service::Interceptor;
use tonic::{Request, Status};

/// The credentials sent with every request of an [`crate::Api`].
#[derive(Debug, Clone, Default)]
pub struct Credentials {
    /// The bearer token, sent as `authorization: Bearer TOKEN`; `None` sends none.
    token: Option<MetadataValue<Ascii>>,
    /// The cluster CA (PEM) the server's certificate must chain to; `None`
    /// dials plain HTTP/2.
    ca_pem: Option<std::sync::Arc<Vec<u8>>>,
    /// A certificate and key (PEM) presented in the TLS handshake: a node's
    /// own, for node-to-node calls on the client port.
    identity: Option<Identity>,
}

/// A certificate and its key, PEM.
type Identity = (std::sync::Arc<Vec<u8>>, std::sync::Arc<Vec<u8>>);

impl Credentials {
    /// No credentials: the server refuses every call but the few a joining
    /// node makes (and health checks).
    pub fn anonymous() -> Self {
        Self::default()
    }

    /// These credentials, sending `token` (`opsd1.ID.SECRET`) with every
    /// request. A token that cannot be a header value is refused here.
    pub fn with_token(mut self, token: &str) -> Result<Self, String> {
        let value = MetadataValue::try_from(format!("Bearer {}", token.trim()))
            .map_err(|_| "token: must be printable ASCII".to_string())?;
        self.token = Some(value);
        Ok(self)
    }

    /// These credentials, trusting the cluster CA `pem` and dialling TLS.
    pub fn with_ca(mut self, pem: Vec<u8>) -> Self {
        self.ca_pem = Some(std::sync::Arc::new(pem));
        self
    }

    /// These credentials, presenting the certificate `cert_pem` (with its
    /// key `key_pem`) when dialling TLS: a node calling another node.
    pub fn with_identity(mut self, cert_pem: Vec<u8>, key_pem: Vec<u8>) -> Self {
        self.identity = Some((std::sync::Arc::new(cert_pem), std::sync::Arc::new(key_pem)));
        self
    }

    /// The certificate and key presented when dialling TLS, if any.
    pub fn identity(&self) -> Option<(&[u8], &[u8])> {
        self.identity.as_ref().map(|(c, k)| (c.as_slice(), k.as_slice()))
    }

    /// How an endpoint dials with these credentials: TLS trusting the CA
    /// (and presenting the identity) when a CA is set, else `None` (plain).
    pub fn tls_config(&self) -> Option<tonic::transport::ClientTlsConfig> {
        self.ca_pem()
            .map(|ca| opsd_proto::transport::client_tls(ca, self.identity()))
    }

    /// The cluster CA the server must prove itself against, if any.
    pub fn ca_pem(&self) -> Option<&[u8]> {
        self.ca_pem.as_deref().map(|v| v.as_slice())
    }
}

impl Interceptor for Credentials {
    fn call(&mut self, mut request: Request<()>) -> Result<Request<()>, Status> {
        if let Some(token) = &self.token {
            request.metadata_mut().insert("authorization", token.clone());
        }
        Ok(request)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_token_is_sent_as_a_bearer_header() {
        let mut with = Credentials::anonymous().with_token(" opsd1.a.b\n").unwrap();
        let request = with.call(Request::new(())).unwrap();
        let sent = request.metadata().get("authorization").unwrap().to_str().unwrap();
        assert_eq!(sent, "Bearer opsd1.a.b");
        let request = Credentials::anonymous().call(Request::new(())).unwrap();
        assert!(request.metadata().get("authorization").is_none());
        assert!(Credentials::anonymous().with_token("opsd1.a\nb").is_err());
    }
}
