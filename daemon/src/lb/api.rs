//! The Services gRPC service: this node's load balancer (`Local`) and
//! discovery (`Resolve`, `WatchResolve`).

use opsd_cluster::{AppliedEvent, ClusterNode};
use opsd_proto::v1::services_server::Services;
use opsd_proto::v1::{Endpoints, LocalBalancer, LocalRequest, ResolveRequest};
use tokio::sync::broadcast::error::RecvError;
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};

use super::discovery::{endpoints, local_to_proto};
use super::plane::Balancer;
use super::{CLUSTER_KIND, SERVICE_KIND};
use crate::api::caller::{require, Caller};
use crate::api::follow::AnswerStream;
use crate::api::{barrier, read_status, refuse_if_removed};
use crate::domain::resources::{self, ResourceRecord};
use crate::domain::security::{Object, Verb};
use crate::domain::DomainEvent;

/// Serves the load balancer's state and discovery from a node.
pub struct ServicesService {
    node: ClusterNode,
    balancer: Balancer,
    stop: watch::Receiver<bool>,
}

impl ServicesService {
    /// A service backed by `node` and its load balancer; open streams end
    /// when `stop` turns true.
    pub fn new(node: ClusterNode, balancer: Balancer, stop: watch::Receiver<bool>) -> Self {
        ServicesService { node, balancer, stop }
    }
}

/// The service `name` in the applied state, or NOT_FOUND naming it.
fn read_service(node: &ClusterNode, name: &str) -> Result<ResourceRecord, Status> {
    let view = node.reader().view();
    resources::read_resource(&view, SERVICE_KIND, name)
        .map_err(read_status)?
        .ok_or_else(|| Status::not_found(format!("name: service {name} not found")))
}

fn check_name(name: &str) -> Result<(), Status> {
    if name.is_empty() {
        return Err(Status::invalid_argument("name: must not be empty"));
    }
    resources::validate_name(name).map_err(|e| Status::invalid_argument(format!("name: {e}")))
}

#[tonic::async_trait]
impl Services for ServicesService {
    async fn local(&self, req: Request<LocalRequest>) -> Result<Response<LocalBalancer>, Status> {
        // Another node's discovery asks with its node certificate.
        let caller = Caller::of(&req)?;
        let name = &req.get_ref().name;
        if name.is_empty() {
            caller.require_some_under(Verb::Read, &format!("resources/{SERVICE_KIND}/"))?;
        } else {
            caller.require(
                Verb::Read,
                &Object::Resource {
                    kind: SERVICE_KIND,
                    name,
                },
            )?;
        }
        let req = req.into_inner();
        if !req.name.is_empty() {
            check_name(&req.name)?;
        }
        let only = (!req.name.is_empty()).then_some(req.name.as_str());
        Ok(Response::new(local_to_proto(self.balancer.report(only))))
    }

    async fn resolve(&self, req: Request<ResolveRequest>) -> Result<Response<Endpoints>, Status> {
        require(
            &req,
            Verb::Read,
            &Object::Resource {
                kind: SERVICE_KIND,
                name: &req.get_ref().name,
            },
        )?;
        let req = req.into_inner();
        check_name(&req.name)?;
        barrier(&self.node, req.stale).await?;
        let service = read_service(&self.node, &req.name)?;
        Ok(Response::new(
            endpoints(&self.node, Some(&self.balancer), &service).await,
        ))
    }

    type WatchResolveStream = AnswerStream<Endpoints>;

    async fn watch_resolve(&self, req: Request<ResolveRequest>) -> Result<Response<Self::WatchResolveStream>, Status> {
        let caller = require(
            &req,
            Verb::Read,
            &Object::Resource {
                kind: SERVICE_KIND,
                name: &req.get_ref().name,
            },
        )?
        .clone();
        let req = req.into_inner();
        check_name(&req.name)?;
        barrier(&self.node, req.stale).await?;
        // Subscribe first: nothing applied after the first message is missed.
        let mut events = self.node.subscribe();
        let service = read_service(&self.node, &req.name)?;
        let first = endpoints(&self.node, Some(&self.balancer), &service).await;
        let (tx, rx) = mpsc::channel(16);
        // The channel is new and has room.
        let _ = tx.try_send(Ok(first.clone()));
        let node = self.node.clone();
        let balancer = self.balancer.clone();
        let mut stop = self.stop.clone();
        let name = req.name;
        tokio::spawn(async move {
            let mut last = first;
            loop {
                let seen = tokio::select! {
                    r = events.recv() => Some(r),
                    _ = stop.wait_for(|s| *s) => None,
                    _ = tx.closed() => return,
                };
                let Some(seen) = seen else {
                    let _ = tx.send(Err(Status::unavailable("the node is shutting down"))).await;
                    return;
                };
                let relevant = match seen {
                    Ok(AppliedEvent::Applied { event, .. }) => match DomainEvent::decode(&event) {
                        Ok(DomainEvent::Security { .. }) => {
                            if let Err(status) = caller.recheck(node.reader()) {
                                let _ = tx.send(Err(status)).await;
                                return;
                            }
                            false
                        }
                        Ok(DomainEvent::ResourceDeleted(r)) if r.kind == SERVICE_KIND && r.name == name => {
                            return;
                        }
                        Ok(DomainEvent::Resource(r)) if r.kind == SERVICE_KIND && r.name == name => true,
                        Ok(DomainEvent::Resource(r)) | Ok(DomainEvent::ResourceDeleted(r))
                            if r.kind == CLUSTER_KIND =>
                        {
                            r.name == last.active
                        }
                        _ => false,
                    },
                    // Re-read: the whole answer is sent again, so nothing is missed.
                    Ok(AppliedEvent::SnapshotInstalled { .. }) | Err(RecvError::Lagged(_)) => true,
                    Err(RecvError::Closed) => {
                        let _ = tx.send(Err(Status::unavailable("the node is shutting down"))).await;
                        return;
                    }
                };
                if !relevant {
                    continue;
                }
                if refuse_if_removed(&node).is_err() {
                    return;
                }
                let service = match read_service(&node, &name) {
                    Ok(s) => s,
                    Err(_) => return,
                };
                let now = endpoints(&node, Some(&balancer), &service).await;
                if same_routing(&now, &last) {
                    continue;
                }
                last = now.clone();
                if tx.send(Ok(now)).await.is_err() {
                    return;
                }
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }
}

/// True if two answers route alike: the same state, clusters, machines and
/// endpoints (connection counts and bytes aside).
fn same_routing(a: &Endpoints, b: &Endpoints) -> bool {
    let nodes = |e: &Endpoints| {
        e.nodes
            .iter()
            .map(|n| (n.node_id, n.address.clone(), n.listening, n.error.clone()))
            .collect::<Vec<_>>()
    };
    a.state == b.state
        && a.active == b.active
        && a.previous == b.previous
        && a.port == b.port
        && a.backends == b.backends
        && nodes(a) == nodes(b)
}
