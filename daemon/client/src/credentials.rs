//! Who is asking: the one place a request gets its credentials. Today that
//! is the principal, a name the server records on runs and audit entries; an
//! authentication token would be added here, and every caller of [`crate::Api`]
//! would send it.

use tonic::metadata::{Ascii, MetadataValue};
use tonic::service::Interceptor;
use tonic::{Request, Status};

pub use opsd_proto::PRINCIPAL_KEY;

/// The credentials sent with every request of an [`crate::Api`].
#[derive(Debug, Clone, Default)]
pub struct Credentials {
    /// The principal as a metadata value; `None` sends none (the server then
    /// records `anonymous`).
    principal: Option<MetadataValue<Ascii>>,
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
    /// No credentials: the server treats the caller as `anonymous`.
    pub fn anonymous() -> Self {
        Self::default()
    }

    /// Acting as `name`. Metadata must be printable ASCII, so anything else is
    /// written as a Rust-style escape (`é` becomes `\u{e9}`): the name stays
    /// recognisable instead of the request failing.
    pub fn principal(name: &str) -> Self {
        let mut text = String::with_capacity(name.len());
        for c in name.chars() {
            if c == ' ' || c.is_ascii_graphic() {
                text.push(c);
            } else {
                text.extend(c.escape_default());
            }
        }
        let value = MetadataValue::try_from(text.as_str()).unwrap_or_else(|_| MetadataValue::from_static("unknown"));
        Self {
            principal: Some(value),
            ..Self::default()
        }
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

    /// Acting as the user running this process: `$USER`, else `$LOGNAME`,
    /// else the login name of this process's user id in the password
    /// database, else `uid N`. Until authentication arrives this is a claim,
    /// but a truthful one wherever the environment is bare (cron, systemd,
    /// containers).
    pub fn login_user() -> Self {
        let from_env = ["USER", "LOGNAME"]
            .iter()
            .filter_map(|var| std::env::var(var).ok())
            .map(|name| name.trim().to_string())
            .find(|name| !name.is_empty());
        Self::principal(&from_env.unwrap_or_else(os_login_name))
    }
}

/// The login name of this process's real user id, from the password
/// database; `uid N` if it has no entry.
fn os_login_name() -> String {
    // SAFETY: getuid cannot fail.
    let uid = unsafe { libc::getuid() };
    user_name(uid).unwrap_or_else(|| format!("uid {uid}"))
}

/// The name the password database gives `uid`, if any.
fn user_name(uid: libc::uid_t) -> Option<String> {
    let mut buffer = vec![0 as libc::c_char; 4096];
    loop {
        // SAFETY: every pointer is to a live local of the right type, and
        // the buffer's length is passed with it; getpwuid_r writes only there.
        let mut entry: libc::passwd = unsafe { std::mem::zeroed() };
        let mut found: *mut libc::passwd = std::ptr::null_mut();
        let code = unsafe { libc::getpwuid_r(uid, &mut entry, buffer.as_mut_ptr(), buffer.len(), &mut found) };
        if code == libc::ERANGE && buffer.len() < 1 << 20 {
            buffer.resize(buffer.len() * 2, 0);
            continue;
        }
        if code != 0 || found.is_null() || entry.pw_name.is_null() {
            return None;
        }
        // SAFETY: on success pw_name points to a NUL-terminated string in `buffer`.
        let name = unsafe { std::ffi::CStr::from_ptr(entry.pw_name) };
        let name = name.to_string_lossy().trim().to_string();
        return (!name.is_empty()).then_some(name);
    }
}

impl Interceptor for Credentials {
    fn call(&mut self, mut request: Request<()>) -> Result<Request<()>, Status> {
        if let Some(principal) = &self.principal {
            request.metadata_mut().insert(PRINCIPAL_KEY, principal.clone());
        }
        if let Some(token) = &self.token {
            request.metadata_mut().insert("authorization", token.clone());
        }
        Ok(request)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sent(mut credentials: Credentials) -> Option<String> {
        let request = credentials.call(Request::new(())).unwrap();
        request
            .metadata()
            .get(PRINCIPAL_KEY)
            .map(|v| v.to_str().unwrap().to_string())
    }

    #[test]
    fn the_principal_is_sent_as_printable_ascii() {
        assert_eq!(sent(Credentials::principal("alice")).as_deref(), Some("alice"));
        assert_eq!(sent(Credentials::principal("josé")).as_deref(), Some("jos\\u{e9}"));
        assert_eq!(sent(Credentials::principal("a\tb")).as_deref(), Some("a\\tb"));
        assert_eq!(sent(Credentials::anonymous()), None);
    }

    #[test]
    fn the_os_login_name_comes_from_the_password_database() {
        // uid 0 is root on every Linux; an id nobody has reads as a number.
        assert_eq!(user_name(0).as_deref(), Some("root"));
        assert_eq!(user_name(4_000_000_123), None);
        assert!(!os_login_name().is_empty());
    }
}
