//! The peer port answers only the peer protocol. Anything else reaching it
//! is almost always a person or a tool given the peer port where the client
//! port belongs (`opsctl --addr HOST:7701`, `opsd --join HOST:7701`); it is
//! answered UNIMPLEMENTED with a message naming this node's client port,
//! instead of gRPC's empty one.
//!
//! With TLS, a peer must present a certificate of the cluster CA. One of
//! another CA is refused in the handshake; a connection with none is let
//! through the handshake only so that the mistake above can still be
//! explained: every peer method on it is refused here (UNAUTHENTICATED),
//! before any Raft message is read.

use std::task::{Context, Poll};

use tonic::codegen::http::{Request, Response};
use tonic::codegen::Service;
use tonic::Status;
use tower_layer::Layer;

use crate::types::NodeInfo;

/// The path prefix of the peer service's methods.
const PEER_PATH: &str = "/opsd.peer.v1.Peer/";

/// What a request for any other service is told.
pub(crate) fn not_a_client_port(info: &NodeInfo) -> String {
    format!(
        "{} is a peer port (Raft traffic between opsd nodes); the client port is {}: give that to opsctl --addr and opsd --join",
        info.peer_addr, info.addr
    )
}

/// Wraps the peer server's routes: peer methods pass, anything else is
/// answered at once.
#[derive(Clone)]
pub(crate) struct PeerOnly {
    message: String,
    require_cert: bool,
}

impl PeerOnly {
    /// `require_cert`: peer methods need a client certificate (verified
    /// against the cluster CA in the handshake).
    pub(crate) fn new(info: &NodeInfo, require_cert: bool) -> Self {
        Self {
            message: not_a_client_port(info),
            require_cert,
        }
    }
}

/// What a peer without a certificate is told.
pub(crate) const NO_CERTIFICATE: &str =
    "a peer must present a certificate of this cluster's CA (this is a peer port: Raft traffic between opsd nodes)";

/// Whether the TLS connection a request came on presented a client
/// certificate (which the handshake verified against the cluster CA).
fn presented_certificate<B>(request: &Request<B>) -> bool {
    use tonic::transport::server::{TcpConnectInfo, TlsConnectInfo};
    request
        .extensions()
        .get::<TlsConnectInfo<TcpConnectInfo>>()
        .and_then(|info| info.peer_certs())
        .is_some_and(|certs| !certs.is_empty())
}

impl<S> Layer<S> for PeerOnly {
    type Service = PeerOnlyService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        PeerOnlyService {
            inner,
            message: self.message.clone(),
            require_cert: self.require_cert,
        }
    }
}

/// The service [`PeerOnly`] makes.
#[derive(Clone)]
pub(crate) struct PeerOnlyService<S> {
    inner: S,
    message: String,
    require_cert: bool,
}

impl<S, B, R> Service<Request<B>> for PeerOnlyService<S>
where
    S: Service<Request<B>, Response = Response<R>>,
    S::Future: Send + 'static,
    R: Default,
{
    type Response = Response<R>;
    type Error = S::Error;
    type Future = futures::future::Either<S::Future, std::future::Ready<Result<Response<R>, S::Error>>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<B>) -> Self::Future {
        if request.uri().path().starts_with(PEER_PATH) {
            if self.require_cert && !presented_certificate(&request) {
                let answer = Status::unauthenticated(NO_CERTIFICATE).into_http();
                return futures::future::Either::Right(std::future::ready(Ok(answer)));
            }
            futures::future::Either::Left(self.inner.call(request))
        } else {
            let answer = Status::unimplemented(self.message.clone()).into_http();
            futures::future::Either::Right(std::future::ready(Ok(answer)))
        }
    }
}
