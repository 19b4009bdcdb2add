//! A node's client address, checked once when parsed so a typo is a usage
//! error rather than a connection failure.

use std::fmt;

use tonic::transport::Endpoint;

use crate::{Credentials, Timeouts};

/// One node's client address, `HOST:PORT`.
#[derive(Debug, Clone)]
pub struct NodeAddr {
    /// The address as given, for messages.
    text: String,
    /// The endpoint to connect to, without timeouts.
    endpoint: Endpoint,
}

impl NodeAddr {
    /// Parses `HOST:PORT` (an `http://` prefix is accepted). The error says
    /// what is wrong, for a usage message (opsctl's `--addr`, opsd's `--join`).
    pub fn parse(text: &str) -> Result<Self, String> {
        let text = text.trim();
        if text.is_empty() {
            return Err("empty address (expected HOST:PORT)".to_string());
        }
        let url = match text.split_once("://") {
            None => format!("http://{text}"),
            Some(("http", _)) => text.to_string(),
            Some((scheme, _)) => {
                return Err(format!(
                    "unsupported scheme {scheme:?} in {text:?} (expected HOST:PORT)"
                ))
            }
        };
        let authority = url.split_once("://").map_or("", |(_, rest)| rest).trim_end_matches('/');
        if !authority.is_empty() && authority.chars().all(|c| c.is_ascii_digit()) {
            return Err(format!(
                "address {text:?} has no host, only a port (expected HOST:PORT, e.g. 127.0.0.1:{authority})"
            ));
        }
        if let Some(port) = authority.strip_prefix(':') {
            return Err(format!(
                "address {text:?} has no host (expected HOST:PORT, e.g. 127.0.0.1:{port})"
            ));
        }
        let endpoint =
            Endpoint::from_shared(url).map_err(|e| format!("invalid address {text:?}: {e} (expected HOST:PORT)"))?;
        if endpoint.uri().port_u16().is_none() {
            let host = endpoint.uri().host().unwrap_or("HOST");
            return Err(format!(
                "address {text:?} has no port (expected HOST:PORT, e.g. {host}:7700)"
            ));
        }
        if !matches!(endpoint.uri().path(), "" | "/") {
            return Err(format!("address {text:?} has a path (expected HOST:PORT)"));
        }
        Ok(Self {
            text: text.to_string(),
            endpoint,
        })
    }

    /// The endpoint of this address with `timeouts` and Nagle's algorithm off
    /// (a small request would otherwise wait for a delayed ACK), over TLS
    /// when `credentials` carry a CA. The one place a client endpoint is built.
    pub(crate) fn endpoint(&self, timeouts: Timeouts, credentials: &Credentials) -> Endpoint {
        let base = match credentials.tls_config() {
            None => self.endpoint.clone(),
            Some(tls) => {
                let authority = self
                    .endpoint
                    .uri()
                    .authority()
                    .map(|a| a.to_string())
                    .unwrap_or_default();
                // The authority was parsed once already, and the configuration
                // is the crate's own: neither can fail here.
                Endpoint::from_shared(format!("https://{authority}"))
                    .and_then(|e| e.tls_config(tls))
                    .unwrap_or_else(|_| self.endpoint.clone())
            }
        };
        let endpoint = opsd_proto::transport::dial(base, timeouts.connect);
        match timeouts.request {
            Some(t) => endpoint.timeout(t),
            None => endpoint,
        }
    }
}

impl fmt::Display for NodeAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_are_checked_when_parsed() {
        assert_eq!(
            NodeAddr::parse(" 127.0.0.1:7700 ").unwrap().to_string(),
            "127.0.0.1:7700"
        );
        assert!(NodeAddr::parse("http://localhost:7700").is_ok());
        assert!(NodeAddr::parse("").unwrap_err().contains("empty"));
        assert!(NodeAddr::parse("localhost").unwrap_err().contains("no port"));
        assert!(NodeAddr::parse("localhost")
            .unwrap_err()
            .contains("e.g. localhost:7700"));
        assert_eq!(
            NodeAddr::parse("7700").unwrap_err(),
            "address \"7700\" has no host, only a port (expected HOST:PORT, e.g. 127.0.0.1:7700)"
        );
        assert!(NodeAddr::parse(":7700")
            .unwrap_err()
            .contains("has no host (expected HOST:PORT, e.g. 127.0.0.1:7700)"));
        assert!(NodeAddr::parse("https://h:1")
            .unwrap_err()
            .contains("unsupported scheme"));
        assert!(NodeAddr::parse("h:1/x").unwrap_err().contains("has a path"));
    }
}
