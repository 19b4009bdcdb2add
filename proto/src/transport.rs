//! How opsd's two ports are served and dialled: the peer port (Raft, served
//! by the cluster crate) and the client port (the API, served by the daemon
//! and dialled by the client library, opsctl and joining nodes). Every gRPC
//! server and endpoint is built here, so that transport security (TLS for
//! clients, mutual TLS for peers) is added in one place for both.

use std::time::Duration;

use tokio::net::TcpListener;
use tonic::transport::server::TcpIncoming;
use tonic::transport::{Endpoint, Server};

/// A gRPC server for either port; services and layers are added by its user.
pub fn server() -> Server {
    Server::builder()
}

/// The connections a listener accepts, with Nagle's algorithm off: a small
/// reply would otherwise wait for the other side's delayed ACK, about 40 ms
/// per request.
pub fn incoming(listener: TcpListener) -> TcpIncoming {
    TcpIncoming::from(listener).with_nodelay(Some(true))
}

/// An endpoint dialling a node's port at `addr` (HOST:PORT), Nagle's
/// algorithm off, giving up a connection attempt after `connect_timeout`.
/// Its user adds request timeouts and connects, lazily or at once.
pub fn endpoint(addr: &str, connect_timeout: Duration) -> Result<Endpoint, tonic::transport::Error> {
    Ok(dial(Endpoint::from_shared(format!("http://{addr}"))?, connect_timeout))
}

/// Sets how an already parsed endpoint dials: Nagle's algorithm off, giving
/// up a connection attempt after `connect_timeout`.
pub fn dial(endpoint: Endpoint, connect_timeout: Duration) -> Endpoint {
    endpoint.connect_timeout(connect_timeout).tcp_nodelay(true)
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_dial_plain_http_for_now() {
        let e = endpoint("127.0.0.1:7000", Duration::from_secs(1)).unwrap();
        assert_eq!(e.uri().to_string(), "http://127.0.0.1:7000/");
        assert!(endpoint("bad host:7000", Duration::from_secs(1)).is_err());
    }
}
