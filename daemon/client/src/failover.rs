//! A request to a cluster given several node addresses: it goes to the first
//! address that answers, so a client keeps working while some nodes are down
//! or without quorum; and the errors, described for people.

use std::future::Future;
use std::time::{Duration, Instant};

use tonic::{Code, Response, Status};

use crate::{Api, Credentials, NodeAddr};

/// How long a client waits for a node: to accept a connection, and to answer
/// a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timeouts {
    /// How long to wait for one node to accept a connection before giving up
    /// on it (and, with [`Nodes`], trying the next).
    pub connect: Duration,
    /// How long a connected node may take to answer a request; for a stream,
    /// to start it (its length is not bounded). `None`: no limit.
    pub request: Option<Duration>,
    /// How long [`Nodes`] waits for a node's answer to a read before moving
    /// on to the next address. A stopped or wedged node still accepts
    /// connections (its kernel does), so only a short wait for the answer
    /// gets past it. Writes never use it: a write that got no answer may
    /// still commit, so it is not sent elsewhere, and a healthy leader may
    /// take the daemon's whole write timeout to answer it; writes wait
    /// `request`. Nor does the last address tried: with no other node to
    /// move on to, the read waits `request` there.
    pub answer: Duration,
}

impl Default for Timeouts {
    /// 2 s to connect, 15 s to answer: longer than the daemon's own write
    /// timeout (5 s), so a client sees the daemon's error rather than its own;
    /// 2 s for a read's answer before trying the next address.
    fn default() -> Self {
        Self {
            connect: Duration::from_secs(2),
            request: Some(Duration::from_secs(15)),
            answer: Duration::from_secs(2),
        }
    }
}

/// How long a patient call ([`Nodes::call_patiently`]) keeps trying while no
/// node can serve it, e.g. while a leader is elected or a node restarts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Patience {
    /// Give up once this long has passed since the first try.
    pub limit: Duration,
    /// Wait this long between two rounds over the addresses.
    pub pause: Duration,
}

impl Patience {
    /// One round over the addresses, as [`Nodes::call_from`].
    pub const NONE: Patience = Patience {
        limit: Duration::ZERO,
        pause: Duration::ZERO,
    };
}

impl Default for Patience {
    /// A minute, a round a second: longer than an election or a restart.
    fn default() -> Self {
        Self {
            limit: Duration::from_secs(60),
            pause: Duration::from_secs(1),
        }
    }
}

/// Why a request failed.
#[derive(Debug, thiserror::Error)]
pub enum CallError {
    /// A node answered with an error that another node would answer the same
    /// way (not found, invalid argument, stale revision, ...).
    #[error("{}", describe_status(.0))]
    Status(Status),
    /// A node accepted a write but did not answer in time. Not retried
    /// elsewhere: the write may still commit. Only writes end this way: a
    /// read that got no answer moves on to the next address, and when none
    /// is left ends as [`CallError::Unreachable`].
    #[error("no answer from {addr} within {}; the write's outcome is unknown (it may still be applied): check before retrying", seconds(*.after))]
    Timeout {
        /// The node that was asked.
        addr: String,
        /// How long the client waited.
        after: Duration,
    },
    /// The connection to the node broke after a write was sent: it may have
    /// been applied, so it was not sent to another node.
    #[error("the connection to {addr} broke after the request was sent ({why}); it may have been applied: check before retrying")]
    Broken {
        /// The node that was asked.
        addr: String,
        /// The transport's error.
        why: String,
    },
    /// Every address failed: could not be connected to, answered
    /// UNAVAILABLE, or (for a read) gave no answer in time.
    #[error("{}", describe_unreachable(.0))]
    Unreachable(Vec<Failure>),
}

/// Why one address could not serve a request.
#[derive(Debug)]
pub struct Failure {
    /// The address tried.
    pub addr: String,
    /// What went wrong there.
    pub why: String,
    /// True if a connection was made (the node answered UNAVAILABLE, or
    /// gave no answer in time), false if the node could not be reached.
    pub reached: bool,
}

/// The cluster as reachable through some node addresses, tried in order,
/// with the same timeouts and credentials for every request.
#[derive(Debug, Clone)]
pub struct Nodes {
    addrs: Vec<NodeAddr>,
    timeouts: Timeouts,
    credentials: Credentials,
}

impl Nodes {
    /// Nodes to try in the given order (at least one address).
    pub fn new(addrs: Vec<NodeAddr>, timeouts: Timeouts, credentials: Credentials) -> Self {
        Self {
            addrs,
            timeouts,
            credentials,
        }
    }

    /// Runs one request that is safe to repeat (a read) with address
    /// failover: tries each address in order, moving on when connecting
    /// fails, the node answers UNAVAILABLE (no leader or no quorum, which the
    /// API documents as safe to retry), the connection breaks or the node
    /// gives no answer within [`Timeouts::answer`] (a stopped node), and
    /// returns the first other answer, success or error. If every address
    /// fails, the error names each one and what it did.
    pub async fn call<T, F, Fut>(&self, rpc: F) -> Result<T, CallError>
    where
        F: FnMut(Api) -> Fut,
        Fut: Future<Output = Result<Response<T>, Status>>,
    {
        self.try_in_turn(0, Repeat::Safe, rpc).await.map(|(_, answer)| answer)
    }

    /// Runs one write with address failover, moving on to the next address
    /// only when the write certainly did not take effect: the connection
    /// could not be made, or the node itself answered UNAVAILABLE. A
    /// connection that broke after the request went out, or a node that did
    /// not answer within the request timeout, is not retried (the write may
    /// have been applied): its error says so.
    pub async fn write_with<R, T, F, Fut>(&self, request: &R, mut rpc: F) -> Result<T, CallError>
    where
        R: Clone,
        F: FnMut(Api, R) -> Fut,
        Fut: Future<Output = Result<Response<T>, Status>>,
    {
        self.try_in_turn(0, Repeat::IfNotSent, |api| rpc(api, request.clone()))
            .await
            .map(|(_, answer)| answer)
    }

    /// [`Nodes::call`] of one request message, given to `rpc` with each try
    /// (a copy: a request that met an unavailable node is sent again).
    pub async fn call_with<R, T, F, Fut>(&self, request: &R, mut rpc: F) -> Result<T, CallError>
    where
        R: Clone,
        F: FnMut(Api, R) -> Fut,
        Fut: Future<Output = Result<Response<T>, Status>>,
    {
        self.call(|api| rpc(api, request.clone())).await
    }

    /// Like [`Nodes::call`], but starts at the address at position `first`
    /// (modulo their number) and goes round, and also says which address
    /// answered. A stream that broke is reopened with `first` one past the
    /// address that served it, so the next try goes to another node.
    pub async fn call_from<T, F, Fut>(&self, first: usize, rpc: F) -> Result<(usize, T), CallError>
    where
        F: FnMut(Api) -> Fut,
        Fut: Future<Output = Result<Response<T>, Status>>,
    {
        self.try_in_turn(first, Repeat::Safe, rpc).await
    }

    /// Tries each address from `first` on, moving on from one whose answer
    /// `repeat` says another node may be asked instead.
    async fn try_in_turn<T, F, Fut>(&self, first: usize, repeat: Repeat, mut rpc: F) -> Result<(usize, T), CallError>
    where
        F: FnMut(Api) -> Fut,
        Fut: Future<Output = Result<Response<T>, Status>>,
    {
        let count = self.addrs.len();
        let mut failures = Vec::with_capacity(count);
        // The request timeout bounds the call below, not the channel: a
        // stream must outlive it.
        let connect_only = Timeouts {
            request: None,
            ..self.timeouts
        };
        for (tried, position) in (0..count).map(|i| (i, (first + i) % count)) {
            let addr = &self.addrs[position];
            let failure = |why: String, reached: bool| Failure {
                addr: addr.to_string(),
                why,
                reached,
            };
            let connecting = Api::connect(addr, connect_only, self.credentials.clone());
            let api = match tokio::time::timeout(self.timeouts.connect, connecting).await {
                Ok(Ok(api)) => api,
                Ok(Err(e)) => {
                    let chain = error_chain(&e);
                    let why = match tls_advice(&chain, self.credentials.ca_pem().is_some()) {
                        Some(advice) => format!("{advice} ({chain})"),
                        None => format!("cannot connect: {chain}"),
                    };
                    failures.push(failure(why, false));
                    continue;
                }
                Err(_) => {
                    let why = format!("no connection within {}s", self.timeouts.connect.as_secs());
                    failures.push(failure(why, false));
                    continue;
                }
            };
            let another_left = tried + 1 < count;
            let answer = match self.answer_limit(repeat, another_left) {
                Some(limit) => match tokio::time::timeout(limit, rpc(api)).await {
                    Ok(answer) => answer,
                    Err(_) if repeat == Repeat::Safe => {
                        failures.push(failure(format!("no answer within {}", seconds(limit)), true));
                        continue;
                    }
                    Err(_) => {
                        return Err(CallError::Timeout {
                            addr: addr.to_string(),
                            after: limit,
                        })
                    }
                },
                None => rpc(api).await,
            };
            match answer {
                Ok(response) => return Ok((position, response.into_inner())),
                Err(status) if repeat.may_ask_another(&status) => {
                    failures.push(failure(self.describe_transport(&status), true));
                }
                Err(status) if lost_connection(&status) => {
                    return Err(CallError::Broken {
                        addr: addr.to_string(),
                        why: self.describe_transport(&status),
                    })
                }
                Err(status) => return Err(CallError::Status(self.advise(status))),
            }
        }
        Err(CallError::Unreachable(failures))
    }

    /// How long a connected node may take to answer: a read with another
    /// address left to try waits [`Timeouts::answer`] (at most the request
    /// timeout), anything else the request timeout (see [`Timeouts::answer`]).
    fn answer_limit(&self, repeat: Repeat, another_left: bool) -> Option<Duration> {
        let request = self.timeouts.request;
        if repeat == Repeat::Safe && another_left {
            Some(request.map_or(self.timeouts.answer, |r| r.min(self.timeouts.answer)))
        } else {
            request
        }
    }

    /// Like [`Nodes::call_from`], but while no address can serve the request
    /// (every one unreachable or UNAVAILABLE, or the one that accepted it did
    /// not answer in time) it goes round again after `patience.pause`, until
    /// `patience.limit` has passed, then returns the last error. This is how
    /// a stream that broke is resumed through the next node, and how what
    /// was missed meanwhile is re-read; use it only for requests that are
    /// safe to repeat (reads, watches).
    pub async fn call_patiently<T, F, Fut>(
        &self,
        first: usize,
        patience: Patience,
        mut rpc: F,
    ) -> Result<(usize, T), CallError>
    where
        F: FnMut(Api) -> Fut,
        Fut: Future<Output = Result<Response<T>, Status>>,
    {
        let deadline = Instant::now() + patience.limit;
        loop {
            match self.call_from(first, &mut rpc).await {
                Err(CallError::Unreachable(_) | CallError::Timeout { .. }) if Instant::now() < deadline => {
                    tokio::time::sleep(patience.pause).await;
                }
                outcome => return outcome,
            }
        }
    }

    /// The address at `position` (modulo their number), for messages.
    pub fn addr(&self, position: usize) -> &NodeAddr {
        &self.addrs[position % self.addrs.len()]
    }
}

/// Whether a failed request may be sent to another node.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Repeat {
    /// It is safe to repeat (a read): on any UNAVAILABLE.
    Safe,
    /// Only if it certainly did not take effect (a write).
    IfNotSent,
}

impl Repeat {
    fn may_ask_another(self, status: &Status) -> bool {
        lost_connection(status) && (self == Repeat::Safe || certainly_not_applied(status))
    }
}

/// Whether a request failed for want of a node rather than by its answer:
/// UNAVAILABLE (from the node, or from the transport), or a transport error
/// surfaced as UNKNOWN (a connection reset by a node that is going away: a
/// status made here, with the transport's error as its source, not one read
/// off the wire).
fn lost_connection(status: &Status) -> bool {
    match status.code() {
        Code::Unavailable => true,
        Code::Unknown => std::error::Error::source(status).is_some(),
        _ => false,
    }
}

/// Whether an UNAVAILABLE answer means the request took no effect: the node
/// itself said so (a status read off the wire has no local cause), or the
/// connection could not be made (tonic's [`tonic::ConnectError`] in the
/// cause chain, so the request was never written). Decided from the error's
/// kind, never its text: a connection that broke after the request went out
/// is neither.
fn certainly_not_applied(status: &Status) -> bool {
    std::error::Error::source(status).is_none() || opsd_proto::transport::never_sent(status)
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

/// What to do about a failure at the TLS layer (`chain`: the error with its
/// causes), if it is one: a client without a CA at a node that speaks TLS,
/// or a node whose certificate is not of the CA the client trusts.
pub fn tls_advice(chain: &str, has_ca: bool) -> Option<&'static str> {
    let t = chain.to_ascii_lowercase();
    // A plain HTTP/2 client at a TLS port: the server reads its preface as
    // a bad TLS record and drops the connection, which the client sees as
    // a frame it cannot read or a connection broken at once.
    let dropped = [
        "frame with invalid size",
        "h2 protocol error",
        "broken pipe",
        "connection reset",
    ];
    if !has_ca && dropped.iter().any(|d| t.contains(d)) {
        return Some("the node speaks TLS: give --ca or OPSD_CA (the cluster's ca.pem)");
    }
    if t.contains("certificaterequired") {
        return Some(
            "it asks for a node certificate: it is a peer port (Raft traffic between opsd nodes), not a client \
             port; give opsctl --addr and opsd --join a node's client port (--listen, 7700 by default)",
        );
    }
    if has_ca && (t.contains("invalid peer certificate") || t.contains("unknownissuer")) {
        return Some("the node's certificate is not of the CA given (--ca or OPSD_CA): a node of another cluster?");
    }
    if has_ca && (t.contains("corrupt message") || t.contains("invalidcontenttype")) {
        return Some("the node does not speak TLS (a cluster made before TLS?): give no --ca or OPSD_CA");
    }
    None
}

impl Nodes {
    /// A status that did not come from the node (the transport's) failing
    /// at the TLS layer, with what to do in its message; others as they are.
    fn advise(&self, status: Status) -> Status {
        let Some(source) = std::error::Error::source(&status) else {
            return status;
        };
        let chain = error_chain(source);
        match tls_advice(&chain, self.credentials.ca_pem().is_some()) {
            Some(advice) => Status::new(status.code(), format!("{advice} ({chain})")),
            None => status,
        }
    }

    /// A status that did not come from the node (the transport's), with
    /// what to do when it failed at the TLS layer.
    fn describe_transport(&self, status: &Status) -> String {
        if let Some(source) = std::error::Error::source(status) {
            let chain = error_chain(source);
            if let Some(advice) = tls_advice(&chain, self.credentials.ca_pem().is_some()) {
                return format!("{advice} ({chain})");
            }
        }
        describe_status(status)
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
        // The server's message says whether a write may still be applied:
        // a read that timed out changed nothing.
        Code::DeadlineExceeded => "deadline exceeded",
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
    let mut text = if failures.iter().any(|f| f.reached) {
        String::from("no opsd node could serve the request; tried:")
    } else {
        String::from("cannot reach opsd (is it running? set --addr or OPSD_ADDR); tried:")
    };
    for failure in failures {
        text.push_str(&format!("\n  {}: {}", failure.addr, failure.why));
    }
    text
}

/// A duration for messages: whole seconds as `2s`, anything finer in ms.
fn seconds(duration: Duration) -> String {
    if duration.subsec_nanos() == 0 {
        format!("{}s", duration.as_secs())
    } else {
        format!("{}ms", duration.as_millis())
    }
}

/// An error with its causes, `outer: inner: root`, since transport errors say
/// little at the top ("transport error") and the cause is in the chain.
pub(crate) fn error_chain(error: &dyn std::error::Error) -> String {
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
    fn statuses_read_as_message_then_meaning() {
        assert_eq!(
            describe_status(&Status::not_found("key \"a\" not found")),
            "key \"a\" not found (not found)"
        );
        assert_eq!(describe_status(&Status::unavailable("")), "unavailable; safe to retry");
        // What a timeout means for a write is the server's to say, in its
        // message: the code alone would tell a read it may have changed something.
        assert_eq!(
            describe_status(&Status::deadline_exceeded("confirming leadership was not confirmed")),
            "confirming leadership was not confirmed (deadline exceeded)"
        );
    }

    #[test]
    fn a_write_goes_to_another_node_only_if_it_certainly_took_no_effect() {
        use std::sync::Arc;
        let answered = Status::unavailable("no leader");
        let mut broken = Status::unavailable("transport error");
        broken.set_source(Arc::new(std::io::Error::from(std::io::ErrorKind::ConnectionReset)));
        let mut refused = Status::unavailable("transport error");
        let cause: Box<dyn std::error::Error + Send + Sync> =
            Box::new(std::io::Error::from(std::io::ErrorKind::ConnectionRefused));
        refused.set_source(Arc::new(tonic::ConnectError(cause)));
        assert!(Repeat::IfNotSent.may_ask_another(&answered));
        assert!(Repeat::IfNotSent.may_ask_another(&refused));
        assert!(!Repeat::IfNotSent.may_ask_another(&broken));
        assert!(!Repeat::IfNotSent.may_ask_another(&Status::internal("x")));
        // A connection reset surfaced as UNKNOWN: a read moves on, a write does not.
        let mut reset = Status::unknown("transport error");
        reset.set_source(Arc::new(std::io::Error::from(std::io::ErrorKind::ConnectionReset)));
        assert!(Repeat::Safe.may_ask_another(&reset));
        assert!(!Repeat::IfNotSent.may_ask_another(&reset));
        assert!(lost_connection(&reset));
        // An UNKNOWN answer from the server itself is its answer.
        assert!(!Repeat::Safe.may_ask_another(&Status::unknown("handler failed")));
        // A read may be asked again anywhere.
        assert!(Repeat::Safe.may_ask_another(&broken));
        assert!(!Repeat::Safe.may_ask_another(&Status::not_found("x")));
    }

    #[tokio::test]
    async fn a_patient_call_goes_round_until_its_patience_runs_out() {
        let nodes = Nodes::new(
            vec![NodeAddr::parse("127.0.0.1:1").unwrap()],
            Timeouts::default(),
            Credentials::anonymous(),
        );
        let patience = Patience {
            limit: Duration::from_millis(300),
            pause: Duration::from_millis(50),
        };
        let started = Instant::now();
        let error = nodes
            .call_patiently(0, patience, |mut api| async move {
                api.cluster.status(opsd_proto::v1::StatusRequest {}).await
            })
            .await
            .unwrap_err();
        assert!(matches!(error, CallError::Unreachable(_)), "{error}");
        // One round to a refused port takes a millisecond: it went round until the limit.
        assert!(started.elapsed() >= patience.limit, "{:?}", started.elapsed());
        let started = Instant::now();
        let once = nodes
            .call_patiently(0, Patience::NONE, |mut api| async move {
                api.cluster.status(opsd_proto::v1::StatusRequest {}).await
            })
            .await;
        assert!(once.is_err());
        assert!(started.elapsed() < patience.limit);
    }

    /// A node that accepts connections but never answers, as a stopped
    /// process does: its kernel completes the handshake, nobody reads.
    fn silent_node() -> (std::net::TcpListener, NodeAddr) {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = NodeAddr::parse(&listener.local_addr().unwrap().to_string()).unwrap();
        (listener, addr)
    }

    fn short_timeouts() -> Timeouts {
        Timeouts {
            connect: Duration::from_secs(2),
            request: Some(Duration::from_millis(1500)),
            answer: Duration::from_millis(200),
        }
    }

    #[tokio::test]
    async fn a_read_moves_past_a_silent_node_and_names_it() {
        let (_listener, silent) = silent_node();
        let refused = NodeAddr::parse("127.0.0.1:1").unwrap();
        let nodes = Nodes::new(
            vec![silent.clone(), refused],
            short_timeouts(),
            Credentials::anonymous(),
        );
        let started = Instant::now();
        let error = nodes
            .call(|mut api| async move { api.cluster.status(opsd_proto::v1::StatusRequest {}).await })
            .await
            .unwrap_err();
        // It waited the answer timeout on the silent node, not the request timeout.
        assert!(
            started.elapsed() < Duration::from_millis(1200),
            "{:?}",
            started.elapsed()
        );
        assert!(matches!(error, CallError::Unreachable(_)), "{error}");
        let text = error.to_string();
        assert!(text.starts_with("no opsd node could serve the request"), "{text}");
        assert!(text.contains(&format!("{silent}: no answer within 200ms")), "{text}");
        assert!(text.contains("127.0.0.1:1: cannot connect"), "{text}");
        assert!(!text.contains("write"), "{text}");
    }

    #[tokio::test]
    async fn a_read_waits_the_request_timeout_on_the_last_address() {
        let (_listener, silent) = silent_node();
        let refused = NodeAddr::parse("127.0.0.1:1").unwrap();
        let nodes = Nodes::new(
            vec![refused, silent.clone()],
            short_timeouts(),
            Credentials::anonymous(),
        );
        let started = Instant::now();
        let error = nodes
            .call(|mut api| async move { api.cluster.status(opsd_proto::v1::StatusRequest {}).await })
            .await
            .unwrap_err();
        assert!(
            started.elapsed() >= Duration::from_millis(1500),
            "{:?}",
            started.elapsed()
        );
        let text = error.to_string();
        assert!(text.contains("127.0.0.1:1: cannot connect"), "{text}");
        assert!(text.contains(&format!("{silent}: no answer within 1500ms")), "{text}");
        assert!(!text.contains("write"), "{text}");
    }

    #[tokio::test]
    async fn a_write_that_got_no_answer_is_not_sent_elsewhere() {
        let (_listener, silent) = silent_node();
        // A second silent node: had the write been sent there, it would have
        // been accepted; the elapsed time shows it was not.
        let (_other, second) = silent_node();
        let nodes = Nodes::new(
            vec![silent.clone(), second.clone()],
            short_timeouts(),
            Credentials::anonymous(),
        );
        let request = opsd_proto::v1::StatusRequest {};
        let started = Instant::now();
        let error = nodes
            .write_with(&request, |mut api, r| async move { api.cluster.status(r).await })
            .await
            .unwrap_err();
        let elapsed = started.elapsed();
        // It waited the request timeout, not the answer timeout, and only once.
        assert!(
            elapsed >= Duration::from_millis(1500) && elapsed < Duration::from_millis(2900),
            "{elapsed:?}"
        );
        match &error {
            CallError::Timeout { addr, .. } => assert_eq!(addr, &silent.to_string()),
            other => panic!("expected a timeout, got {other}"),
        }
        let text = error.to_string();
        assert!(text.contains("outcome is unknown"), "{text}");
        assert!(!text.contains(&second.to_string()), "{text}");
    }

    #[tokio::test]
    async fn every_unreachable_address_is_named() {
        // Port 1 on loopback: nothing listens there, the connection is refused.
        let addrs = vec![
            NodeAddr::parse("127.0.0.1:1").unwrap(),
            NodeAddr::parse("127.0.0.1:2").unwrap(),
        ];
        let nodes = Nodes::new(addrs, Timeouts::default(), Credentials::anonymous());
        let error = nodes
            .call(|mut api| async move { api.cluster.status(opsd_proto::v1::StatusRequest {}).await })
            .await
            .unwrap_err();
        let text = error.to_string();
        assert!(text.starts_with("cannot reach opsd"), "{text}");
        assert!(
            text.contains("127.0.0.1:1: cannot connect") && text.contains("127.0.0.1:2: "),
            "{text}"
        );
    }
}
