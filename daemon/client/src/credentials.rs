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
}

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
