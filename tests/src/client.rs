//! gRPC clients of one node, made by the project's one client library
//! (`opsd-client`), and the few settings calls every scenario makes, with the
//! retry rule the API documents: UNAVAILABLE is safe to retry.
//!
//! These are free functions over an address (not methods of a node) so that
//! writer tasks spawned by a test can own what they need.

use std::time::{Duration, Instant};

use opsd_client::{Api, NodeAddr, Timeouts};
use opsd_proto::v1::{
    DeleteRequest, DeleteResponse, GetRequest, GetResponse, ListRequest, ListResponse, PutRequest, PutResponse,
    StatusRequest, StatusResponse,
};
use tonic::{Code, Response, Status};

/// How long one request may take before the client gives up on it. Longer than
/// the daemon's default write timeout (5 s), so a test sees the daemon's own
/// error rather than the client's, and short enough that a paused or
/// partitioned node cannot hang a test.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(20);

/// How long the retrying helpers keep retrying UNAVAILABLE (an election in
/// progress, a node restarting) before returning the last error.
pub const RETRY_BUDGET: Duration = Duration::from_secs(30);

/// The user every scenario acts as: the harness's clients send the
/// bootstrap admin token (`admin.token`), whose user is `admin`.
pub const PRINCIPAL: &str = "admin";

/// Connected clients of one node's API (`addr`, `cluster`, `settings`,
/// `resources`), every request carrying the admin token (acting as [`PRINCIPAL`]). Cheap to clone; the
/// channel connects lazily and reconnects on the next call after the node
/// comes back.
pub type Clients = Api;

/// Clients of the node at `addr` whose every request times out after
/// [`REQUEST_TIMEOUT`]. Must be called inside a tokio runtime.
pub fn connect(addr: &str) -> Clients {
    connect_with(addr, Some(REQUEST_TIMEOUT))
}

/// Clients of the node at `addr` with no per-request timeout, for streams
/// (`Settings.Watch`) that stay open longer than any one request. Bound the
/// waits on such a stream with `tokio::time::timeout`.
pub fn connect_streaming(addr: &str) -> Clients {
    connect_with(addr, None)
}

/// Clients of the node at `addr` with the given per-request timeout.
pub fn connect_with(addr: &str, request_timeout: Option<Duration>) -> Clients {
    let node = NodeAddr::parse(addr).unwrap_or_else(|e| panic!("{addr} is not a HOST:PORT address: {e}"));
    let timeouts = Timeouts {
        connect: Duration::from_secs(2),
        request: request_timeout,
        ..Timeouts::default()
    };
    Api::lazy(&node, timeouts, crate::access::credentials(addr))
}

/// The node's own view (`Cluster.Status`, never forwarded), or the error, within `timeout`.
pub async fn status(addr: &str, timeout: Duration) -> Result<StatusResponse, Status> {
    let mut c = connect_with(addr, Some(timeout));
    c.cluster.status(StatusRequest {}).await.map(|r| r.into_inner())
}

/// One `Settings.Put` attempt, no retry: the outcome as the client saw it.
pub async fn put_once(addr: &str, key: &str, value: &str) -> Result<PutResponse, Status> {
    let mut c = connect(addr);
    c.settings
        .put(PutRequest {
            key: key.to_string(),
            value: value.to_string(),
            expected_revision: None,
            ..Default::default()
        })
        .await
        .map(|r| r.into_inner())
}

/// Runs `op` until it succeeds, fails with anything but UNAVAILABLE, or
/// [`RETRY_BUDGET`] has passed; returns the last outcome.
pub async fn retry_unavailable<T, F, Fut>(mut op: F) -> Result<T, Status>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, Status>>,
{
    let started = Instant::now();
    loop {
        match op().await {
            Err(s) if s.code() == Code::Unavailable && started.elapsed() < RETRY_BUDGET => {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            outcome => return outcome,
        }
    }
}

/// `Settings.Put` through the node at `addr`, retried while UNAVAILABLE
/// (writing the same value again is harmless). Any other error is returned at once.
pub async fn put(addr: &str, key: &str, value: &str) -> Result<PutResponse, Status> {
    retry_unavailable(|| put_once(addr, key, value)).await
}

/// `Settings.Get` through the node at `addr` (linearizable unless `stale`),
/// retried while UNAVAILABLE.
pub async fn get(addr: &str, key: &str, stale: bool) -> Result<GetResponse, Status> {
    let request = GetRequest {
        key: key.to_string(),
        stale,
        ..Default::default()
    };
    retry_unavailable(|| async { connect(addr).settings.get(request.clone()).await })
        .await
        .map(Response::into_inner)
}

/// `Settings.List` of a prefix through the node at `addr` (linearizable unless
/// `stale`), retried while UNAVAILABLE.
pub async fn list(addr: &str, prefix: &str, stale: bool) -> Result<ListResponse, Status> {
    let request = ListRequest {
        prefix: prefix.to_string(),
        stale,
    };
    retry_unavailable(|| async { connect(addr).settings.list(request.clone()).await })
        .await
        .map(Response::into_inner)
}

/// `Settings.Delete` through the node at `addr`, retried while UNAVAILABLE.
pub async fn delete(addr: &str, key: &str) -> Result<DeleteResponse, Status> {
    let request = DeleteRequest {
        key: key.to_string(),
        expected_revision: None,
        ..Default::default()
    };
    retry_unavailable(|| async { connect(addr).settings.delete(request.clone()).await })
        .await
        .map(Response::into_inner)
}

/// A one-line description of a gRPC error for assertion messages.
pub fn describe(status: &Status) -> String {
    format!("{:?}: {}", status.code(), status.message())
}

/// The node's overall status on the standard gRPC health service
/// (`grpc.health.v1.Health/Check` of the service ""), as load balancers and
/// probes see it.
pub async fn health(addr: &str) -> Result<tonic_health::ServingStatus, Status> {
    use tonic_health::pb::health_check_response::ServingStatus as Wire;
    let channel = crate::access::endpoint(addr).timeout(REQUEST_TIMEOUT).connect_lazy();
    let answer = tonic_health::pb::health_client::HealthClient::new(channel)
        .check(tonic_health::pb::HealthCheckRequest { service: String::new() })
        .await?
        .into_inner();
    Ok(match Wire::try_from(answer.status) {
        Ok(Wire::Serving) => tonic_health::ServingStatus::Serving,
        Ok(Wire::NotServing) => tonic_health::ServingStatus::NotServing,
        _ => tonic_health::ServingStatus::Unknown,
    })
}
