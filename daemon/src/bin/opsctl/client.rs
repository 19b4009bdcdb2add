//! Talking to a cluster given several node addresses: every request goes to the
//! first address that answers, so `opsctl` keeps working while some nodes are
//! down or without quorum.

use std::fmt;
use std::future::Future;
use std::sync::OnceLock;
use std::time::Duration;

use opsd_proto::v1::resources_client::ResourcesClient;
use tonic::metadata::{Ascii, MetadataValue};
use tonic::service::interceptor::InterceptedService;
use tonic::service::Interceptor;
use tonic::transport::{Channel, Endpoint};
use tonic::{Code, Request, Response, Status};

/// How long to wait for one node to accept a connection before trying the next.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

/// How long to wait for a node's answer once connected. For a streaming call
/// (watch) this bounds only the start of the stream, not its length.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(15);

/// One node's client address as given on the command line, validated at parse
/// time so a typo is a usage error rather than a connection failure.
#[derive(Debug, Clone)]
pub struct NodeAddr {
    /// The address as the user wrote it, for messages.
    text: String,
    /// The endpoint to connect to.
    endpoint: Endpoint,
}

impl NodeAddr {
    /// Parses `HOST:PORT` (an `http://` prefix is accepted). Used as clap's
    /// value parser for `--addr`.
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
        let endpoint =
            Endpoint::from_shared(url).map_err(|e| format!("invalid address {text:?}: {e} (expected HOST:PORT)"))?;
        if endpoint.uri().port_u16().is_none() {
            return Err(format!("address {text:?} has no port (expected HOST:PORT)"));
        }
        if !matches!(endpoint.uri().path(), "" | "/") {
            return Err(format!("address {text:?} has a path (expected HOST:PORT)"));
        }
        let endpoint = endpoint.connect_timeout(CONNECT_TIMEOUT);
        Ok(Self {
            text: text.to_string(),
            endpoint,
        })
    }
}

impl fmt::Display for NodeAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

/// Why a request failed.
#[derive(Debug, thiserror::Error)]
pub enum CallError {
    /// A node answered with an error that another node would answer the same
    /// way (not found, invalid argument, stale revision, ...).
    #[error("{}", describe_status(.0))]
    Status(Status),
    /// A node accepted the request but did not answer in time. Not retried
    /// elsewhere: a write may still commit.
    #[error("no answer from {addr} within {}s; a write may still have been applied", .after.as_secs())]
    Timeout {
        /// The node that was asked.
        addr: String,
        /// How long we waited.
        after: Duration,
    },
    /// Every address failed to connect or answered UNAVAILABLE.
    #[error("{}", describe_unreachable(.0))]
    Unreachable(Vec<Failure>),
}

/// Why one address could not serve a request.
#[derive(Debug)]
pub struct Failure {
    /// The address tried.
    addr: String,
    /// What went wrong there.
    why: String,
    /// True if the node answered (UNAVAILABLE), false if it could not be reached.
    answered: bool,
}

impl Failure {
    fn new(addr: &NodeAddr, why: String, answered: bool) -> Self {
        Self {
            addr: addr.to_string(),
            why,
            answered,
        }
    }
}

/// The cluster as reachable through the addresses the user gave, in order.
#[derive(Debug, Clone)]
pub struct Nodes {
    addrs: Vec<NodeAddr>,
}

impl Nodes {
    /// Nodes to try in the given order.
    pub fn new(addrs: Vec<NodeAddr>) -> Self {
        Self { addrs }
    }

    /// Runs one request with address failover: tries each address in order,
    /// moving on when connecting fails or the node answers UNAVAILABLE (no
    /// leader or no quorum, which the API documents as safe to retry), and
    /// returns the first other answer, success or error. Every command goes
    /// through here.
    pub async fn call<T, F, Fut>(&self, rpc: F) -> Result<T, CallError>
    where
        F: FnMut(Channel) -> Fut,
        Fut: Future<Output = Result<Response<T>, Status>>,
    {
        self.call_from(0, rpc).await.map(|(_, answer)| answer)
    }

    /// Like [`Nodes::call`], but starts at the address at position `first`
    /// (modulo their number) and goes round, and also says which address
    /// answered. A stream that broke is reopened with `first` one past the
    /// address that served it, so the next try goes to another node.
    pub async fn call_from<T, F, Fut>(&self, first: usize, mut rpc: F) -> Result<(usize, T), CallError>
    where
        F: FnMut(Channel) -> Fut,
        Fut: Future<Output = Result<Response<T>, Status>>,
    {
        let count = self.addrs.len();
        let mut failures = Vec::with_capacity(count);
        for position in (0..count).map(|i| (first + i) % count) {
            let addr = &self.addrs[position];
            let channel = match tokio::time::timeout(CONNECT_TIMEOUT, addr.endpoint.connect()).await {
                Ok(Ok(channel)) => channel,
                Ok(Err(e)) => {
                    failures.push(Failure::new(
                        addr,
                        format!("cannot connect: {}", error_chain(&e)),
                        false,
                    ));
                    continue;
                }
                Err(_) => {
                    let why = format!("no connection within {}s", CONNECT_TIMEOUT.as_secs());
                    failures.push(Failure::new(addr, why, false));
                    continue;
                }
            };
            match tokio::time::timeout(REQUEST_TIMEOUT, rpc(channel)).await {
                Ok(Ok(response)) => return Ok((position, response.into_inner())),
                Ok(Err(status)) if status.code() == Code::Unavailable => {
                    failures.push(Failure::new(addr, describe_status(&status), true));
                }
                Ok(Err(status)) => return Err(CallError::Status(status)),
                Err(_) => {
                    return Err(CallError::Timeout {
                        addr: addr.to_string(),
                        after: REQUEST_TIMEOUT,
                    })
                }
            }
        }
        Err(CallError::Unreachable(failures))
    }

    /// The address at `position`, for messages.
    pub fn addr(&self, position: usize) -> &NodeAddr {
        &self.addrs[position % self.addrs.len()]
    }
}

/// A `Resources` client whose every request says who is asking: the
/// `x-opsd-principal` metadata the server records on runs (see
/// `proto/opsd/v1/resources.proto`). Every `Resources` call goes through
/// [`resources`], so no request can leave without it.
pub type ResourcesApi = ResourcesClient<InterceptedService<Channel, Principal>>;

/// A `Resources` client on `channel` that sends the principal with every request.
pub fn resources(channel: Channel) -> ResourcesApi {
    ResourcesClient::with_interceptor(channel, Principal::current())
}

/// The metadata key naming who made a request.
const PRINCIPAL_KEY: &str = "x-opsd-principal";

/// The interceptor that adds the principal, the login name of the user running
/// opsctl, to a request.
#[derive(Debug, Clone)]
pub struct Principal(MetadataValue<Ascii>);

impl Principal {
    /// The principal of this process: `$USER`, else `$LOGNAME`, else `unknown`,
    /// read once.
    fn current() -> Self {
        static CURRENT: OnceLock<Principal> = OnceLock::new();
        CURRENT
            .get_or_init(|| {
                let name = ["USER", "LOGNAME"]
                    .iter()
                    .filter_map(|var| std::env::var(var).ok())
                    .map(|name| name.trim().to_string())
                    .find(|name| !name.is_empty())
                    .unwrap_or_else(|| "unknown".to_string());
                Principal(principal_value(&name))
            })
            .clone()
    }
}

impl Interceptor for Principal {
    fn call(&mut self, mut request: Request<()>) -> Result<Request<()>, Status> {
        request.metadata_mut().insert(PRINCIPAL_KEY, self.0.clone());
        Ok(request)
    }
}

/// A login name as a metadata value, which must be printable ASCII: anything
/// else is written as a Rust-style escape (`é` becomes `\u{e9}`), so the name
/// stays recognisable instead of the request failing.
fn principal_value(name: &str) -> MetadataValue<Ascii> {
    let mut text = String::with_capacity(name.len());
    for c in name.chars() {
        if c == ' ' || c.is_ascii_graphic() {
            text.push(c);
        } else {
            text.extend(c.escape_default());
        }
    }
    MetadataValue::try_from(text.as_str()).unwrap_or_else(|_| MetadataValue::from_static("unknown"))
}

/// True if a stream ended with an error that says the connection or the
/// serving node went away (or the server dropped a watcher that fell behind)
/// rather than that the request itself is wrong: reopening the stream,
/// through another node if need be, may succeed.
pub fn is_stream_break(status: &Status) -> bool {
    matches!(
        status.code(),
        Code::Unavailable | Code::Unknown | Code::Internal | Code::Cancelled | Code::ResourceExhausted | Code::Aborted
    )
}

/// A gRPC error for humans: the server's message followed by what its code means.
pub fn describe_status(status: &Status) -> String {
    let code = code_text(status.code());
    let message = status.message().trim();
    if message.is_empty() {
        code.to_string()
    } else {
        format!("{message} ({code})")
    }
}

/// What a gRPC code means for someone at a terminal, following the meanings
/// `proto/opsd/v1/cluster.proto` gives them.
fn code_text(code: Code) -> &'static str {
    match code {
        Code::Ok => "ok",
        Code::Cancelled => "cancelled",
        Code::Unknown => "unknown error",
        Code::InvalidArgument => "invalid argument",
        Code::DeadlineExceeded => "deadline exceeded; the change may still be applied",
        Code::NotFound => "not found",
        Code::AlreadyExists => "already exists",
        Code::PermissionDenied => "permission denied",
        Code::ResourceExhausted => "resource exhausted",
        Code::FailedPrecondition => "failed precondition",
        Code::Aborted => "aborted",
        Code::OutOfRange => "out of range",
        Code::Unimplemented => "not implemented by this server",
        Code::Internal => "internal server error",
        Code::Unavailable => "unavailable; safe to retry",
        Code::DataLoss => "data loss",
        Code::Unauthenticated => "not authenticated",
    }
}

/// The message for "no address could serve the request": one line per
/// address and why, under a headline that says whether any node was reached.
fn describe_unreachable(failures: &[Failure]) -> String {
    let mut text = if failures.iter().any(|f| f.answered) {
        String::from("no opsd node could serve the request; tried:")
    } else {
        String::from("cannot reach opsd (is it running? set --addr or OPSD_ADDR); tried:")
    };
    for failure in failures {
        text.push_str(&format!("\n  {}: {}", failure.addr, failure.why));
    }
    text
}

/// An error with its causes, `outer: inner: root`, since transport errors say
/// little at the top ("transport error") and the cause is in the chain.
fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.ends_with(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn principal_is_sent_as_printable_ascii() {
        assert_eq!(principal_value("alice").to_str().unwrap(), "alice");
        assert_eq!(principal_value("josé").to_str().unwrap(), "jos\\u{e9}");
        assert_eq!(principal_value("a\tb").to_str().unwrap(), "a\\tb");
    }

    #[test]
    fn requests_carry_the_principal() {
        let mut principal = Principal(principal_value("alice"));
        let request = principal.call(Request::new(())).unwrap();
        assert_eq!(request.metadata().get(PRINCIPAL_KEY).unwrap(), "alice");
    }
}
