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
}

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
        Self { principal: Some(value) }
    }

    /// Acting as the user running this process: `$USER`, else `$LOGNAME`,
    /// else `unknown`.
    pub fn login_user() -> Self {
        let name = ["USER", "LOGNAME"]
            .iter()
            .filter_map(|var| std::env::var(var).ok())
            .map(|name| name.trim().to_string())
            .find(|name| !name.is_empty())
            .unwrap_or_else(|| "unknown".to_string());
        Self::principal(&name)
    }
}

impl Interceptor for Credentials {
    fn call(&mut self, mut request: Request<()>) -> Result<Request<()>, Status> {
        if let Some(principal) = &self.principal {
            request.metadata_mut().insert(PRINCIPAL_KEY, principal.clone());
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
}
