//! The Cluster service: status and membership.

use opsd_cluster::{ClusterNode, Contact, Member, MemberHealth, NodeId, NodeInfo, Role};
use opsd_proto::time;
use opsd_proto::v1::cluster_server::Cluster;
use opsd_proto::v1::{
    JoinRequest, JoinResponse, Member as ProtoMember, MemberRole, MembersRequest, MembersResponse, Reachability,
    RemoveRequest, RemoveResponse, StatusRequest, StatusResponse,
};
use tonic::{Request, Response, Status};

use super::caller::{require, Caller};
use super::cluster_status;
use crate::domain::security::{Object, Verb};

/// Serves cluster status and membership from a node.
pub struct ClusterService {
    node: ClusterNode,
}

impl ClusterService {
    /// A service backed by `node`.
    pub fn new(node: ClusterNode) -> Self {
        ClusterService { node }
    }
}

/// A member as a node knows it from the membership alone: its role follows
/// from `leader`; reachability and lag are the leader's to tell.
fn to_proto(m: Member, leader: Option<NodeId>) -> ProtoMember {
    health_to_proto(MemberHealth {
        role: m.role(leader),
        member: m,
        contact: Contact::Unknown,
        matched_index: None,
        lag: None,
    })
}

fn health_to_proto(m: MemberHealth) -> ProtoMember {
    let role = match m.role {
        Role::Leader => MemberRole::Leader,
        Role::Follower | Role::Candidate => MemberRole::Follower,
        Role::Learner => MemberRole::Learner,
        Role::Removed | Role::Stopped => MemberRole::Unspecified,
    };
    let (reachability, since) = match m.contact {
        Contact::Unknown => (Reachability::Unknown, None),
        Contact::Reachable { since_ms } => (Reachability::Reachable, Some(since_ms)),
        Contact::Unreachable { since_ms } => (Reachability::Unreachable, Some(since_ms)),
    };
    ProtoMember {
        id: m.member.id,
        addr: m.member.info.addr,
        peer_addr: m.member.info.peer_addr,
        voter: m.member.voter,
        role: role as i32,
        reachability: reachability as i32,
        since_contact: since.map(time::duration),
        matched_index: m.matched_index.unwrap_or(0),
        lag: m.lag.unwrap_or(0),
    }
}

/// Checks a HOST:PORT field; the message names it.
fn validate_addr(field: &str, addr: &str) -> Result<(), Status> {
    let ok = addr
        .rsplit_once(':')
        .is_some_and(|(host, port)| !host.is_empty() && port.parse::<u16>().is_ok_and(|p| p > 0));
    if ok {
        Ok(())
    } else {
        Err(Status::invalid_argument(format!("{field}: {addr:?} is not HOST:PORT")))
    }
}

#[tonic::async_trait]
impl Cluster for ClusterService {
    async fn status(&self, req: Request<StatusRequest>) -> Result<Response<StatusResponse>, Status> {
        // SEAM(join-token): a joining node asks without a token; any valid
        // token may ask too, and an invalid one is refused.
        Caller::of_or_anonymous(&req)?;
        let s = self.node.status();
        let leader_id = s.leader.as_ref().map(|l| l.0);
        Ok(Response::new(StatusResponse {
            node_id: s.node_id,
            cluster_id: s.cluster_id,
            leader_id: s.leader.as_ref().map(|l| l.0).unwrap_or(0),
            leader_addr: s.leader.map(|l| l.1.addr).unwrap_or_default(),
            term: s.term,
            role: s.role.as_str().to_string(),
            last_log_index: s.last_log_index,
            applied_index: s.applied_index,
            snapshot_index: s.snapshot_index,
            purged_index: s.purged_index,
            members: s.members.into_iter().map(|m| to_proto(m, leader_id)).collect(),
            version: env!("CARGO_PKG_VERSION").to_string(),
            problem: s.problem.unwrap_or_default(),
        }))
    }

    async fn members(&self, req: Request<MembersRequest>) -> Result<Response<MembersResponse>, Status> {
        require(&req, Verb::Read, &Object::Cluster)?;
        let view = self.node.members_view().await.map_err(cluster_status)?;
        Ok(Response::new(MembersResponse {
            members: view.members.into_iter().map(health_to_proto).collect(),
            leader_view: view.from_leader,
            leader_id: view.leader_id.unwrap_or(0),
            answered_by: self.node.node_id(),
        }))
    }

    async fn join(&self, req: Request<JoinRequest>) -> Result<Response<JoinResponse>, Status> {
        // SEAM(join-token): a joining node has no token yet, so a request
        // without one is let through; one with a token needs admin:cluster.
        let caller = Caller::of_or_anonymous(&req)?;
        if caller.token_id.is_some() {
            caller.require(Verb::Admin, &Object::Cluster)?;
        }
        let req = req.into_inner();
        if req.node_id == 0 {
            return Err(Status::invalid_argument("node_id: must not be 0"));
        }
        validate_addr("addr", &req.addr)?;
        validate_addr("peer_addr", &req.peer_addr)?;
        let info = NodeInfo {
            addr: req.addr,
            peer_addr: req.peer_addr,
        };
        let members = self
            .node
            .add_node(req.node_id, info, req.cluster_id)
            .await
            .map_err(cluster_status)?;
        let leader = self.node.status().leader.map(|l| l.0);
        Ok(Response::new(JoinResponse {
            cluster_id: self.node.cluster_id().to_string(),
            members: members.into_iter().map(|m| to_proto(m, leader)).collect(),
        }))
    }

    async fn remove(&self, req: Request<RemoveRequest>) -> Result<Response<RemoveResponse>, Status> {
        require(&req, Verb::Admin, &Object::Cluster)?;
        let id = req.into_inner().node_id;
        if id == 0 {
            return Err(Status::invalid_argument("node_id: must not be 0"));
        }
        let members = self.node.remove_node(id).await.map_err(cluster_status)?;
        let leader = self.node.status().leader.map(|l| l.0);
        Ok(Response::new(RemoveResponse {
            members: members.into_iter().map(|m| to_proto(m, leader)).collect(),
        }))
    }
}
