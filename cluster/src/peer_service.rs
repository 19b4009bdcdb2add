//! The server side of the peer transport: decodes each message, checks it
//! comes from this cluster and not from this node's own id, that a Raft
//! message's sender is the leader or candidate it speaks for, and hands it to
//! Raft or to the leader logic. docs/cluster.md ("Peer calls: what a peer can
//! make a node do") says what each call can still do without mutual TLS.

use std::time::Instant;

use openraft::raft::{AppendEntriesRequest, InstallSnapshotRequest, VoteRequest};
use opsd_proto::peer::peer_server::Peer;
use opsd_proto::peer::PeerMessage;
use serde::de::DeserializeOwned;
use serde::Serialize;
use tonic::{Request, Response, Status};
use tracing::warn;

use crate::error::ClusterError;
use crate::node::{ClusterNode, LeaderRequest};
use crate::types::{NodeId, TypeConfig};
use crate::wire::{decode, encode};

/// Serves a node's peers.
pub(crate) struct PeerService {
    node: ClusterNode,
}

impl PeerService {
    pub(crate) fn new(node: ClusterNode) -> Self {
        PeerService { node }
    }

    /// Checks the sender's cluster and id and decodes the request.
    fn open<T: DeserializeOwned>(&self, req: Request<PeerMessage>) -> Result<(NodeId, T), Status> {
        let addr = remote(&req);
        let msg = req.into_inner();
        let ours = &self.node.inner().cluster_id;
        if &msg.cluster_id != ours {
            return Err(Status::failed_precondition(
                ClusterError::WrongCluster {
                    expected: ours.clone(),
                    got: msg.cluster_id,
                }
                .to_string(),
            ));
        }
        // A node never sends peer calls to itself: another process with this
        // node's id (a copied data dir) or a forgery.
        if msg.from == self.node.inner().id {
            return Err(Status::failed_precondition(format!(
                "from: the message claims to come from node {}, which is this node itself (sent from {addr}); \
                 two processes may share one data dir's identity",
                msg.from
            )));
        }
        let body = decode(&msg.data).map_err(Status::invalid_argument)?;
        Ok((msg.from, body))
    }

    /// Refuses a Raft message whose leader or candidate is not its sender.
    fn check_speaker(&self, from: NodeId, vote: &openraft::Vote<NodeId>, what: &str) -> Result<(), Status> {
        match vote.leader_id().voted_for() {
            Some(id) if id == from => Ok(()),
            other => Err(Status::invalid_argument(format!(
                "from: {what} from node {from} speaks for {}",
                match other {
                    Some(id) => format!("node {id}"),
                    None => "no node".to_string(),
                }
            ))),
        }
    }

    fn reply<T: Serialize>(&self, body: &T) -> Result<Response<PeerMessage>, Status> {
        Ok(Response::new(PeerMessage {
            cluster_id: self.node.inner().cluster_id.clone(),
            from: self.node.inner().id,
            data: encode(body).map_err(Status::internal)?,
        }))
    }

    fn refuse_if_removed(&self) -> Result<(), Status> {
        if self.node.is_removed() {
            return Err(Status::failed_precondition(
                ClusterError::Removed {
                    node_id: self.node.inner().id,
                }
                .to_string(),
            ));
        }
        Ok(())
    }

    /// While this node's disk is below the free-space floor, it takes no
    /// entries or snapshots from the leader: the leader sees the call fail
    /// and sends them again later. Heartbeats (appends without entries)
    /// still pass, so the node keeps following its leader.
    fn refuse_if_disk_low(&self) -> Result<(), Status> {
        match self.node.disk_low() {
            Some(why) => Err(Status::unavailable(format!(
                "{why}; this node takes no entries from the leader until it has room again"
            ))),
            None => Ok(()),
        }
    }
}

#[tonic::async_trait]
impl Peer for PeerService {
    async fn append_entries(&self, req: Request<PeerMessage>) -> Result<Response<PeerMessage>, Status> {
        self.refuse_if_removed()?;
        let (from, rpc): (NodeId, AppendEntriesRequest<TypeConfig>) = self.open(req)?;
        self.check_speaker(from, &rpc.vote, "an append from the leader")?;
        if !rpc.entries.is_empty() {
            self.refuse_if_disk_low()?;
        }
        let vote = rpc.vote;
        self.node.heard_from_leader(&vote);
        let res = self.node.inner().raft.append_entries(rpc).await;
        self.node.heard_from_leader(&vote);
        self.reply(&res)
    }

    async fn vote(&self, req: Request<PeerMessage>) -> Result<Response<PeerMessage>, Status> {
        self.refuse_if_removed()?;
        let (from, rpc): (NodeId, VoteRequest<NodeId>) = self.open(req)?;
        self.check_speaker(from, &rpc.vote, "a vote request")?;
        let (term, last_log_id) = (rpc.vote.leader_id().term, rpc.last_log_id);
        let res = self.node.inner().raft.vote(rpc).await;
        if let Ok(answer) = &res {
            if !answer.vote_granted && last_log_id < answer.last_log_id {
                self.node.outrun_candidate(term);
            }
        }
        self.reply(&res)
    }

    async fn install_snapshot(&self, req: Request<PeerMessage>) -> Result<Response<PeerMessage>, Status> {
        self.refuse_if_removed()?;
        self.refuse_if_disk_low()?;
        let (from, rpc): (NodeId, InstallSnapshotRequest<TypeConfig>) = self.open(req)?;
        self.check_speaker(from, &rpc.vote, "a snapshot from the leader")?;
        let vote = rpc.vote;
        self.node.heard_from_leader(&vote);
        let res = self.node.inner().raft.install_snapshot(rpc).await;
        self.node.heard_from_leader(&vote);
        self.reply(&res)
    }

    async fn leader(&self, req: Request<PeerMessage>) -> Result<Response<PeerMessage>, Status> {
        self.refuse_if_removed()?;
        let (from, body): (NodeId, LeaderRequest) = self.open(req)?;
        let deadline = Instant::now() + self.node.inner().request_timeout;
        let res = self.node.serve_leader_request(from, body, deadline).await;
        self.reply(&res)
    }

    /// A hint, checked with this node's own leader in the background (see
    /// [`ClusterNode::removal_notice`]); the answer never waits for it.
    async fn removed(&self, req: Request<PeerMessage>) -> Result<Response<PeerMessage>, Status> {
        let addr = remote(&req);
        let (from, id): (NodeId, NodeId) = self.open(req)?;
        if id == self.node.inner().id {
            self.node.removal_notice(from, addr);
        } else {
            warn!(
                node_id = self.node.inner().id,
                "ignored a removal notice for node {id}, not this node, from node {from} at {addr}"
            );
        }
        self.reply(&())
    }
}

/// The sender's address, for logs.
fn remote<T>(req: &Request<T>) -> String {
    req.remote_addr()
        .map(|a| a.to_string())
        .unwrap_or_else(|| "an unknown address".into())
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use openraft::Vote;

    use super::*;
    use crate::state_machine::{EntryInfo, StateMachineApp, Txn, TxnError};

    struct Echo;

    impl StateMachineApp for Echo {
        fn apply(&self, _: &mut Txn<'_>, _: EntryInfo, command: &[u8]) -> Result<Vec<u8>, TxnError> {
            Ok(command.to_vec())
        }
    }

    fn message<T: Serialize>(node: &ClusterNode, from: NodeId, body: &T) -> Request<PeerMessage> {
        Request::new(PeerMessage {
            cluster_id: node.cluster_id().to_string(),
            from,
            data: encode(body).unwrap(),
        })
    }

    #[tokio::test]
    async fn a_vote_request_must_come_from_its_candidate_and_not_from_this_node() {
        let dir = tempfile::tempdir().unwrap();
        let node = crate::testing::start_single_node(dir.path(), vec![], Arc::new(Echo))
            .await
            .unwrap();
        node.write(b"leading".to_vec()).await.unwrap();
        let service = PeerService::new(node.clone());
        let me = node.node_id();
        let (other, third) = (me + 1, me + 2);

        let forged = VoteRequest::new(Vote::new(100, third), None);
        let err = service.vote(message(&node, other, &forged)).await.unwrap_err();
        assert_eq!(err.code(), tonic::Code::InvalidArgument, "{err}");
        assert!(err.message().contains(&format!("speaks for node {third}")), "{err}");

        let mine = VoteRequest::new(Vote::new(100, me), None);
        let err = service.vote(message(&node, me, &mine)).await.unwrap_err();
        assert_eq!(err.code(), tonic::Code::FailedPrecondition, "{err}");
        assert!(err.message().starts_with("from:"), "{err}");

        // Neither reached Raft: the node still leads in its first term.
        let status = node.status();
        assert_eq!(status.role, crate::Role::Leader);
        assert!(status.term < 100, "term {}", status.term);
        node.shutdown().await;
    }
}
