//! The Cluster service: status and membership.

use opsd_cluster::{ClusterNode, Contact, Member, MemberHealth, NodeId, NodeInfo, Role};
use opsd_proto::time;
use opsd_proto::v1::cluster_server::Cluster;
use opsd_proto::v1::{
    CreateJoinTokenRequest, CreateJoinTokenResponse, JoinCertificateRequest, JoinCertificateResponse, JoinRequest,
    JoinResponse, Member as ProtoMember, MemberRole, MembersRequest, MembersResponse, Reachability, RemoveRequest,
    RemoveResponse, StatusRequest, StatusResponse,
};
use tonic::{Request, Response, Status};

use super::caller::{require, Caller};
use super::{cluster_status, propose, read_status};
use crate::domain::pki::{read_ca, CaRecord};
use crate::domain::security::{Object, Verb};
use crate::domain::{Command, Outcome};
use crate::pki::JoinToken;

/// A join token's TTL when none is asked for.
pub const DEFAULT_JOIN_TOKEN_TTL: std::time::Duration = std::time::Duration::from_secs(3600);
/// The longest TTL a join token may have.
pub const MAX_JOIN_TOKEN_TTL: std::time::Duration = std::time::Duration::from_secs(7 * 24 * 3600);
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

impl ClusterService {
    /// The cluster CA from this node's state, or FAILED_PRECONDITION.
    fn cluster_ca(&self) -> Result<CaRecord, Status> {
        let view = self.node.reader().view();
        read_ca(&view).map_err(read_status)?.ok_or_else(|| {
            Status::failed_precondition(
                "this cluster has no CA (it was bootstrapped before TLS, or its bootstrap node has not \
                     replicated it yet): join tokens are not available",
            )
        })
    }

    /// Spends `token` (its text, from field `field`) for node `node_id`:
    /// refused with a message naming why (unknown, expired, used by another
    /// node, of another cluster); the same node may spend it again.
    async fn use_join_token(&self, field: &str, token: &str, node_id: u64) -> Result<CaRecord, Status> {
        if node_id == 0 {
            return Err(Status::invalid_argument("node_id: must not be 0"));
        }
        let token = JoinToken::parse(token).map_err(|e| Status::invalid_argument(format!("{field}: {e}")))?;
        let ca = self.cluster_ca()?;
        let ours = crate::pki::fingerprint_pem(ca.cert_pem.as_bytes()).map_err(Status::internal)?;
        if token.ca_fingerprint != ours {
            return Err(Status::failed_precondition(format!(
                "{field}: the token names a CA of fingerprint {}, not this cluster's ({ours}): a token of another \
                 cluster",
                token.ca_fingerprint
            )));
        }
        propose(
            &self.node,
            Command::UseJoinToken {
                id: token.id.clone(),
                secret_sha256: token.secret_sha256(),
                node_id,
                at_ms: crate::engine::now_ms(),
            },
        )
        .await?;
        Ok(ca)
    }
}

/// What a join without any credential is told.
fn no_join_token() -> Status {
    Status::unauthenticated(
        "join_token: no join token (and no token): a new node joins with --join-token TOKEN; make one with \
         `opsctl cluster join-token` on a member",
    )
}

/// Makes a join token good for `ttl`, recorded as made by `created_by`:
/// the token and when it expires.
pub async fn mint_join_token(
    node: &ClusterNode,
    ttl: std::time::Duration,
    created_by: &str,
) -> Result<(JoinToken, i64), Status> {
    let ca = {
        let view = node.reader().view();
        read_ca(&view).map_err(read_status)?.ok_or_else(|| {
            Status::failed_precondition(
                "this cluster has no CA (it was bootstrapped before TLS, or its bootstrap node has not replicated \
                 it yet): join tokens are not available",
            )
        })?
    };
    let fingerprint = crate::pki::fingerprint_pem(ca.cert_pem.as_bytes()).map_err(Status::internal)?;
    let token = JoinToken::generate(&fingerprint).map_err(|e| Status::internal(e.to_string()))?;
    let expires_at_ms = crate::engine::now_ms().saturating_add(ttl.as_millis() as i64);
    let (_, outcome) = propose(
        node,
        Command::CreateJoinToken {
            id: token.id.clone(),
            secret_sha256: token.secret_sha256(),
            expires_at_ms,
            created_by: created_by.to_string(),
        },
    )
    .await?;
    match outcome {
        Outcome::JoinTokenCreated { expires_at_ms, .. } => Ok((token, expires_at_ms)),
        other => Err(Status::internal(format!("unexpected answer: {other:?}"))),
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
        // Any valid token (or node) may ask: it is the first thing a client
        // asks, and names no object.
        Caller::of(&req)?;
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
        // A joining node has no token: its join token (below) is its
        // credential. Without one, the caller must be an admin of the
        // cluster (or another node, which `opsd recover` is).
        let caller = Caller::of_or_anonymous(&req)?;
        let req = req.into_inner();
        if req.join_token.trim().is_empty() && caller.is_anonymous() {
            return Err(no_join_token());
        }
        if req.node_id == 0 {
            return Err(Status::invalid_argument("node_id: must not be 0"));
        }
        validate_addr("addr", &req.addr)?;
        validate_addr("peer_addr", &req.peer_addr)?;
        // A join token is spent by this node id, so the joiner's retries pass.
        if req.join_token.is_empty() {
            caller.require(Verb::Admin, &Object::Cluster)?;
        } else {
            self.use_join_token("join_token", &req.join_token, req.node_id).await?;
        }
        let info = NodeInfo {
            addr: req.addr,
            peer_addr: req.peer_addr,
        };
        let members = self
            .node
            .add_node(req.node_id, info, req.cluster_id)
            .await
            .map_err(cluster_status)?;
        let leader = self.node.leader().map(|l| l.0);
        Ok(Response::new(JoinResponse {
            cluster_id: self.node.cluster_id().to_string(),
            members: members.into_iter().map(|m| to_proto(m, leader)).collect(),
        }))
    }

    async fn create_join_token(
        &self,
        req: Request<CreateJoinTokenRequest>,
    ) -> Result<Response<CreateJoinTokenResponse>, Status> {
        let caller = Caller::of(&req)?.clone();
        caller.require(Verb::Admin, &Object::Cluster)?;
        let ttl = match req.into_inner().ttl {
            None => DEFAULT_JOIN_TOKEN_TTL,
            Some(d) => {
                let ttl =
                    std::time::Duration::from_millis(time::duration_ms("ttl", &d).map_err(Status::invalid_argument)?);
                if ttl.is_zero() || ttl > MAX_JOIN_TOKEN_TTL {
                    return Err(Status::invalid_argument(format!(
                        "ttl: must be more than 0 and at most {}",
                        humantime::format_duration(MAX_JOIN_TOKEN_TTL)
                    )));
                }
                ttl
            }
        };
        let (token, expires_at_ms) = mint_join_token(&self.node, ttl, &caller.principal).await?;
        Ok(Response::new(CreateJoinTokenResponse {
            id: token.id.clone(),
            token: token.to_string(),
            expires_at_ms,
        }))
    }

    async fn join_certificate(
        &self,
        req: Request<JoinCertificateRequest>,
    ) -> Result<Response<JoinCertificateResponse>, Status> {
        // The join token is the credential; a bearer token given must be valid.
        Caller::of_or_anonymous(&req)?;
        let req = req.into_inner();
        if req.join_token.trim().is_empty() {
            return Err(no_join_token());
        }
        let ca = self.use_join_token("join_token", &req.join_token, req.node_id).await?;
        let cluster_id = self.node.cluster_id().to_string();
        let issuer = crate::pki::Ca {
            cert_pem: ca.cert_pem.clone(),
            key_pem: ca.key_pem,
        };
        let cert = crate::pki::issue_node_cert(&issuer, &cluster_id, req.node_id)
            .map_err(|e| Status::internal(format!("signing the node's certificate: {e:#}")))?;
        Ok(Response::new(JoinCertificateResponse {
            cluster_id,
            ca_pem: ca.cert_pem,
            cert_pem: cert.cert_pem,
            key_pem: cert.key_pem,
        }))
    }

    async fn remove(&self, req: Request<RemoveRequest>) -> Result<Response<RemoveResponse>, Status> {
        require(&req, Verb::Admin, &Object::Cluster)?;
        let id = req.into_inner().node_id;
        if id == 0 {
            return Err(Status::invalid_argument("node_id: must not be 0"));
        }
        let members = self.node.remove_node(id).await.map_err(cluster_status)?;
        let leader = self.node.leader().map(|l| l.0);
        Ok(Response::new(RemoveResponse {
            members: members.into_iter().map(|m| to_proto(m, leader)).collect(),
        }))
    }
}
