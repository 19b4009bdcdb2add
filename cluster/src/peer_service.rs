//! The server side of the peer transport: decodes each message, checks it
//! comes from this cluster, and hands it to Raft or to the leader logic.

use std::time::Instant;

use openraft::raft::AppendEntriesRequest;
use opsd_proto::peer::peer_server::Peer;
use opsd_proto::peer::PeerMessage;
use serde::de::DeserializeOwned;
use serde::Serialize;
use tonic::{Request, Response, Status};

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

    /// Checks the sender's cluster and decodes the request.
    fn open<T: DeserializeOwned>(&self, req: Request<PeerMessage>) -> Result<(NodeId, T), Status> {
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
        let body = decode(&msg.data).map_err(Status::invalid_argument)?;
        Ok((msg.from, body))
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
        let (_, rpc): (_, AppendEntriesRequest<TypeConfig>) = self.open(req)?;
        if !rpc.entries.is_empty() {
            self.refuse_if_disk_low()?;
        }
        let res = self.node.inner().raft.append_entries(rpc).await;
        self.reply(&res)
    }

    async fn vote(&self, req: Request<PeerMessage>) -> Result<Response<PeerMessage>, Status> {
        self.refuse_if_removed()?;
        let (_, rpc) = self.open(req)?;
        let res = self.node.inner().raft.vote(rpc).await;
        self.reply(&res)
    }

    async fn install_snapshot(&self, req: Request<PeerMessage>) -> Result<Response<PeerMessage>, Status> {
        self.refuse_if_removed()?;
        self.refuse_if_disk_low()?;
        let (_, rpc) = self.open(req)?;
        let res = self.node.inner().raft.install_snapshot(rpc).await;
        self.reply(&res)
    }

    async fn leader(&self, req: Request<PeerMessage>) -> Result<Response<PeerMessage>, Status> {
        self.refuse_if_removed()?;
        let (from, body): (NodeId, LeaderRequest) = self.open(req)?;
        let deadline = Instant::now() + self.node.inner().request_timeout;
        let res = self.node.serve_leader_request(from, body, deadline).await;
        self.reply(&res)
    }

    async fn removed(&self, req: Request<PeerMessage>) -> Result<Response<PeerMessage>, Status> {
        let (_, id): (NodeId, NodeId) = self.open(req)?;
        if id == self.node.inner().id {
            self.node.mark_removed();
        }
        self.reply(&())
    }
}
