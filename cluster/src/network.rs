//! The client side of the peer transport: Raft's RPCs and forwarded requests,
//! each a unary gRPC call carrying bincode, to the target's peer address.
//! Channels are shared per address and connect lazily, so a node that is down
//! costs nothing until it answers again.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use openraft::error::{InstallSnapshotError, NetworkError, RPCError, RaftError, RemoteError, Unreachable};
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse, VoteRequest,
    VoteResponse,
};
use opsd_proto::peer::peer_client::PeerClient;
use opsd_proto::peer::PeerMessage;
use serde::de::DeserializeOwned;
use serde::Serialize;
use tonic::transport::Channel;
use tracing::{info, warn};

use crate::error::ClusterError;
use crate::log_store::AnyErr;
use crate::types::{NodeId, NodeInfo, TypeConfig};
use crate::wire::{decode, encode};

/// The largest message a peer sends or accepts (a batch of log entries or a
/// snapshot chunk).
pub(crate) const MAX_PEER_MESSAGE: usize = 64 * 1024 * 1024;

/// The peer RPCs.
#[derive(Debug, Clone, Copy)]
pub(crate) enum PeerMethod {
    AppendEntries,
    Vote,
    InstallSnapshot,
    Leader,
    Removed,
}

/// Channels to peers by address, and who we are when we call them.
#[derive(Clone)]
pub(crate) struct PeerChannels {
    cluster_id: Arc<str>,
    from: NodeId,
    channels: Arc<Mutex<HashMap<String, Channel>>>,
    /// How peers are dialled: TLS with the cluster CA and this node's
    /// certificate, or plain HTTP/2 if `None`.
    tls: Option<tonic::transport::ClientTlsConfig>,
    /// Whether each peer answered its last Raft call, and when it last did:
    /// to log changes once rather than every failed heartbeat, and for the
    /// leader's view of its members.
    contacts: Arc<Mutex<HashMap<NodeId, Contact>>>,
}

/// What this node knows of its Raft calls to one peer.
#[derive(Debug, Clone, Copy)]
struct Contact {
    /// Whether the last call was answered.
    answered: bool,
    /// When a call was last answered, if ever.
    last_answer: Option<Instant>,
    /// When this node first called it.
    first_call: Instant,
    /// When its refusal of a Raft call (a full disk) was last logged.
    refusal_logged: Option<Instant>,
}

/// How a peer answers this node's Raft calls (on the leader: heartbeats,
/// several a second).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct PeerContact {
    /// Whether it answered the last call.
    pub(crate) answered: bool,
    /// Answered: since its last answer; not: since it last answered (or,
    /// if it never did, since the first call).
    pub(crate) since: Duration,
}

/// How often a peer that keeps refusing Raft calls (its disk is full) is logged.
const LOG_REFUSALS_EVERY: Duration = Duration::from_secs(30);

/// Why a peer call failed.
#[derive(Debug)]
pub(crate) enum CallError {
    /// The connection could not be made: the request was not sent.
    NotSent(tonic::Status),
    /// The request may or may not have reached the peer.
    Failed(tonic::Status),
    /// The answer could not be decoded.
    Garbled(String),
}

impl std::fmt::Display for CallError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CallError::NotSent(s) => write!(f, "not connected: {}", s.message()),
            CallError::Failed(s) => write!(f, "{:?}: {}", s.code(), s.message()),
            CallError::Garbled(e) => write!(f, "bad answer: {e}"),
        }
    }
}

impl std::error::Error for CallError {}

impl PeerChannels {
    pub(crate) fn new(cluster_id: &str, from: NodeId, tls: Option<&opsd_proto::transport::Tls>) -> Self {
        PeerChannels {
            cluster_id: cluster_id.into(),
            from,
            channels: Default::default(),
            tls: tls.map(|t| t.client_config()),
            contacts: Default::default(),
        }
    }

    /// How `target` answers this node's Raft calls, if it was ever called.
    pub(crate) fn contact(&self, target: NodeId) -> Option<PeerContact> {
        let map = self.contacts.lock().unwrap_or_else(|p| p.into_inner());
        let contact = map.get(&target)?;
        let since = match (contact.answered, contact.last_answer) {
            (_, Some(at)) => at.elapsed(),
            (_, None) => contact.first_call.elapsed(),
        };
        Some(PeerContact {
            answered: contact.answered,
            since,
        })
    }

    /// Records whether a peer answered, logging when that changes.
    fn note_reachable(&self, target: NodeId, addr: &str, ok: bool, why: impl FnOnce() -> String) {
        let mut map = self.contacts.lock().unwrap_or_else(|p| p.into_inner());
        let now = Instant::now();
        let before = map.get(&target).map(|c| c.answered);
        let contact = map.entry(target).or_insert(Contact {
            answered: ok,
            last_answer: None,
            first_call: now,
            refusal_logged: None,
        });
        contact.answered = ok;
        if ok {
            contact.last_answer = Some(now);
        }
        if ok {
            if before == Some(false) {
                info!(node_id = target, %addr, "peer reachable again");
            }
            return;
        }
        let why = why();
        // A peer that refuses our certificate is told apart from one that
        // is down, and said again every LOG_REFUSALS_EVERY while it lasts:
        // the handshake's failure reaches us as the peer's alert only on
        // some attempts (on others, as the connection closing).
        if why.contains("refused our certificate") {
            if contact
                .refusal_logged
                .is_none_or(|last| now >= last + LOG_REFUSALS_EVERY)
            {
                contact.refusal_logged = Some(now);
                warn!(node_id = target, %addr, "peer {addr} refused our certificate (another cluster's CA?): {why}");
            }
        } else if before != Some(false) {
            warn!(node_id = target, %addr, "peer unreachable: {why}");
        }
    }

    /// Logs that a peer answered a Raft call with a refusal (such as a full
    /// disk), at most every [`LOG_REFUSALS_EVERY`]: it keeps answering
    /// heartbeats meanwhile, so it is not unreachable.
    /// Call it after [`PeerChannels::note_reachable`], which records the peer.
    fn note_refusal(&self, target: NodeId, addr: &str, status: &tonic::Status) {
        let mut map = self.contacts.lock().unwrap_or_else(|p| p.into_inner());
        let now = Instant::now();
        let Some(contact) = map.get_mut(&target) else {
            return;
        };
        if contact
            .refusal_logged
            .is_some_and(|last| now < last + LOG_REFUSALS_EVERY)
        {
            return;
        }
        contact.refusal_logged = Some(now);
        warn!(node_id = target, %addr, "peer refuses entries: {}", status.message());
    }

    fn channel(&self, addr: &str) -> Result<Channel, tonic::Status> {
        let mut map = self.channels.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(ch) = map.get(addr) {
            return Ok(ch.clone());
        }
        let endpoint = opsd_proto::transport::endpoint(addr, Duration::from_secs(1), self.tls.clone())
            .map_err(|e| tonic::Status::invalid_argument(format!("bad peer address {addr}: {e}")))?;
        let ch = endpoint.connect_lazy();
        map.insert(addr.to_string(), ch.clone());
        Ok(ch)
    }

    /// Sends one request and decodes the answer.
    pub(crate) async fn call<Req: Serialize, Resp: DeserializeOwned>(
        &self,
        addr: &str,
        method: PeerMethod,
        req: &Req,
        timeout: Duration,
    ) -> Result<Resp, CallError> {
        let channel = self.channel(addr).map_err(CallError::NotSent)?;
        let mut client = PeerClient::new(channel)
            .max_decoding_message_size(MAX_PEER_MESSAGE)
            .max_encoding_message_size(MAX_PEER_MESSAGE);
        let msg = PeerMessage {
            cluster_id: self.cluster_id.to_string(),
            from: self.from,
            data: encode(req).map_err(CallError::Garbled)?,
        };
        let mut request = tonic::Request::new(msg);
        request.set_timeout(timeout);
        let result = match method {
            PeerMethod::AppendEntries => client.append_entries(request).await,
            PeerMethod::Vote => client.vote(request).await,
            PeerMethod::InstallSnapshot => client.install_snapshot(request).await,
            PeerMethod::Leader => client.leader(request).await,
            PeerMethod::Removed => client.removed(request).await,
        };
        match result {
            Ok(resp) => decode(&resp.into_inner().data).map_err(CallError::Garbled),
            Err(status) if opsd_proto::transport::never_sent(&status) => Err(CallError::NotSent(status)),
            Err(status) => Err(CallError::Failed(status)),
        }
    }

    /// Sends a request to the leader and relays its answer.
    pub(crate) async fn call_leader<Req: Serialize, Resp: DeserializeOwned>(
        &self,
        leader: NodeId,
        info: &NodeInfo,
        req: &Req,
        timeout: Duration,
    ) -> Result<Resp, ClusterError> {
        match self
            .call::<Req, Result<Resp, ClusterError>>(&info.peer_addr, PeerMethod::Leader, req, timeout)
            .await
        {
            Ok(answer) => answer,
            Err(CallError::NotSent(s)) => Err(ClusterError::Unreachable {
                node_id: leader,
                addr: info.peer_addr.clone(),
                reason: s.message().to_string(),
            }),
            Err(CallError::Failed(s))
                if s.code() == tonic::Code::Cancelled || s.code() == tonic::Code::DeadlineExceeded =>
            {
                Err(ClusterError::Timeout {
                    what: format!("the request forwarded to leader {leader}"),
                    waited_ms: timeout.as_millis() as u64,
                })
            }
            Err(e) => Err(ClusterError::Interrupted {
                what: format!("the request forwarded to leader {leader}"),
                reason: e.to_string(),
            }),
        }
    }
}

/// Makes a connection per target for openraft.
#[derive(Clone)]
pub struct PeerNetwork {
    pub(crate) channels: PeerChannels,
}

/// openraft's connection to one peer.
pub struct PeerConnection {
    channels: PeerChannels,
    target: NodeId,
    addr: String,
}

impl RaftNetworkFactory<TypeConfig> for PeerNetwork {
    type Network = PeerConnection;

    async fn new_client(&mut self, target: NodeId, node: &NodeInfo) -> Self::Network {
        PeerConnection {
            channels: self.channels.clone(),
            target,
            addr: node.peer_addr.clone(),
        }
    }
}

impl PeerConnection {
    async fn raft_call<Req, Resp, E>(
        &self,
        method: PeerMethod,
        req: &Req,
        option: &RPCOption,
    ) -> Result<Resp, RPCError<NodeId, NodeInfo, RaftError<NodeId, E>>>
    where
        Req: Serialize,
        Resp: DeserializeOwned,
        E: std::error::Error + DeserializeOwned,
    {
        let result = self
            .channels
            .call::<Req, Result<Resp, RaftError<NodeId, E>>>(&self.addr, method, req, option.hard_ttl())
            .await;
        // The peer's own refusal (a status it sent, not one the transport
        // made here) is an answer: it is reachable.
        let refused = matches!(&result, Err(CallError::Failed(s))
            if s.code() == tonic::Code::Unavailable && std::error::Error::source(s).is_none());
        let answered = refused || matches!(result, Ok(_) | Err(CallError::Garbled(_)));
        self.channels
            .note_reachable(self.target, &self.addr, answered, || match &result {
                Err(e @ (CallError::NotSent(s) | CallError::Failed(s))) => {
                    match opsd_proto::transport::tls_problem(s) {
                        Some(problem) => format!("{problem}: {e}"),
                        None => e.to_string(),
                    }
                }
                Err(e) => e.to_string(),
                Ok(_) => String::new(),
            });
        if let Err(CallError::Failed(s)) = &result {
            if refused {
                self.channels.note_refusal(self.target, &self.addr, s);
            }
        }
        match result {
            Ok(Ok(resp)) => Ok(resp),
            Ok(Err(e)) => Err(RPCError::RemoteError(RemoteError::new(self.target, e))),
            Err(e @ CallError::NotSent(_)) => Err(RPCError::Unreachable(Unreachable::new(&e))),
            Err(e @ CallError::Failed(_)) => Err(RPCError::Network(NetworkError::new(&e))),
            Err(CallError::Garbled(e)) => Err(RPCError::Network(NetworkError::new(&AnyErr(e)))),
        }
    }
}

impl RaftNetwork<TypeConfig> for PeerConnection {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<NodeId>, RPCError<NodeId, NodeInfo, RaftError<NodeId>>> {
        self.raft_call(PeerMethod::AppendEntries, &rpc, &option).await
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<InstallSnapshotResponse<NodeId>, RPCError<NodeId, NodeInfo, RaftError<NodeId, InstallSnapshotError>>>
    {
        self.raft_call(PeerMethod::InstallSnapshot, &rpc, &option).await
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<NodeId>,
        option: RPCOption,
    ) -> Result<VoteResponse<NodeId>, RPCError<NodeId, NodeInfo, RaftError<NodeId>>> {
        self.raft_call(PeerMethod::Vote, &rpc, &option).await
    }
}

#[cfg(test)]
mod tests {
    use tokio::io::AsyncReadExt;

    use super::*;

    #[tokio::test]
    async fn a_peer_that_cannot_be_reached_was_not_sent_to() {
        // A port nothing listens on: bound, then released.
        let addr = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap().to_string()
        };
        let channels = PeerChannels::new("c", 1, None);
        let r = channels
            .call::<u64, u64>(&addr, PeerMethod::Vote, &7, Duration::from_secs(5))
            .await;
        assert!(matches!(r, Err(CallError::NotSent(_))), "{r:?}");
    }

    /// A peer behind a proxy that took the request and answers, as Envoy
    /// does, that its upstream broke: the message says "connect", but the
    /// request went out and may have been served.
    struct Proxy;

    #[tonic::async_trait]
    impl opsd_proto::peer::peer_server::Peer for Proxy {
        async fn append_entries(
            &self,
            _: tonic::Request<PeerMessage>,
        ) -> Result<tonic::Response<PeerMessage>, tonic::Status> {
            Err(Self::upstream())
        }
        async fn vote(&self, _: tonic::Request<PeerMessage>) -> Result<tonic::Response<PeerMessage>, tonic::Status> {
            Err(Self::upstream())
        }
        async fn install_snapshot(
            &self,
            _: tonic::Request<PeerMessage>,
        ) -> Result<tonic::Response<PeerMessage>, tonic::Status> {
            Err(Self::upstream())
        }
        async fn leader(&self, _: tonic::Request<PeerMessage>) -> Result<tonic::Response<PeerMessage>, tonic::Status> {
            Err(Self::upstream())
        }
        async fn removed(&self, _: tonic::Request<PeerMessage>) -> Result<tonic::Response<PeerMessage>, tonic::Status> {
            Err(Self::upstream())
        }
    }

    impl Proxy {
        fn upstream() -> tonic::Status {
            tonic::Status::unavailable("upstream connect error or disconnect/reset before headers")
        }
    }

    #[tokio::test]
    async fn an_unavailable_answer_that_mentions_connect_may_have_been_served() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(opsd_proto::peer::peer_server::PeerServer::new(Proxy))
                .serve_with_incoming(tonic::transport::server::TcpIncoming::from(listener)),
        );
        let channels = PeerChannels::new("c", 1, None);
        let r = channels
            .call::<u64, u64>(&addr.to_string(), PeerMethod::Leader, &7, Duration::from_secs(5))
            .await;
        assert!(
            matches!(&r, Err(CallError::Failed(s)) if s.message().contains("connect")),
            "{r:?}"
        );
        let forwarded = channels
            .call_leader::<u64, u64>(
                2,
                &NodeInfo {
                    addr: String::new(),
                    peer_addr: addr.to_string(),
                },
                &7,
                Duration::from_secs(5),
            )
            .await;
        assert!(
            matches!(forwarded, Err(ClusterError::Interrupted { .. })),
            "{forwarded:?}"
        );
    }

    #[tokio::test]
    async fn a_connection_lost_after_the_request_went_out_may_have_been_sent() {
        // A peer that takes the connection and the request, then hangs up
        // without answering: the error mentions the connection, but the
        // request was written, so it may have been served.
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        tokio::spawn(async move {
            while let Ok((mut socket, _)) = listener.accept().await {
                let mut buf = vec![0u8; 64 * 1024];
                let _ = tokio::time::timeout(Duration::from_millis(300), async {
                    while let Ok(n) = socket.read(&mut buf).await {
                        if n == 0 {
                            break;
                        }
                    }
                })
                .await;
            }
        });
        let channels = PeerChannels::new("c", 1, None);
        let r = channels
            .call::<u64, u64>(&addr, PeerMethod::Vote, &7, Duration::from_secs(5))
            .await;
        assert!(matches!(r, Err(CallError::Failed(_))), "{r:?}");
    }
}
