//! Discovery: where a service is reached. Every member's load balancer is
//! asked for its own view (`Services.Local`, with a short timeout), so an
//! answer says which endpoints really listen, not only which should.

use std::time::{Duration, Instant};

use futures::future::join_all;
use opsd_client::{describe_status, Api, Credentials, NodeAddr, Timeouts};
use opsd_cluster::{ClusterNode, Member};
use opsd_proto::v1::{
    Backend as ProtoBackend, BalancedService, Endpoints, LocalBalancer, LocalRequest, MachineEndpoint, NodeEndpoint,
};

use super::follow::{active_of, backends_of};
use super::plane::{host_port, Balancer, LocalReport, ServiceReport};
use crate::domain::resources::{self, ResourceRecord};

/// How long a member has to answer `Local` when a service is resolved.
pub const MEMBER_TIMEOUT: Duration = Duration::from_secs(1);

/// A load balancer's report for the API.
pub fn local_to_proto(report: LocalReport) -> LocalBalancer {
    let host = report.host.clone();
    LocalBalancer {
        node_id: report.node_id,
        lb_host: report.host,
        services: report
            .services
            .into_iter()
            .map(|s| service_to_proto(&host, s))
            .collect(),
    }
}

fn service_to_proto(host: &str, s: ServiceReport) -> BalancedService {
    BalancedService {
        endpoint: host_port(host, s.port),
        name: s.name,
        port: u32::from(s.port),
        listening: s.listening,
        bind_error: s.bind_error.unwrap_or_default(),
        active: s.active.unwrap_or_default(),
        backends: s
            .backends
            .into_iter()
            .map(|b| ProtoBackend {
                cluster: b.cluster,
                index: b.index,
                address: b.address,
                healthy: b.healthy,
                draining: b.draining,
                open_connections: b.open,
                total_connections: b.total,
                bytes_in: b.bytes_in,
                bytes_out: b.bytes_out,
                detail: b.detail,
            })
            .collect(),
    }
}

/// Asks one member for its load balancer's view of `service`; this node
/// answers itself through `me`, when given.
async fn ask(
    member: &Member,
    me: Option<&Balancer>,
    service: &str,
    timeout: Duration,
) -> Result<LocalBalancer, String> {
    if let Some(me) = me.filter(|b| b.node_id() == member.id) {
        return Ok(local_to_proto(me.report(Some(service))));
    }
    let addr = NodeAddr::parse(&member.info.addr).map_err(|e| format!("node {}: {e}", member.id))?;
    let timeouts = Timeouts {
        connect: timeout,
        request: Some(timeout),
        answer: timeout,
    };
    let mut api = Api::lazy(&addr, timeouts, crate::pki::node_credentials(Credentials::anonymous()));
    let request = LocalRequest {
        name: service.to_string(),
    };
    match tokio::time::timeout(timeout, api.services.local(request)).await {
        Ok(Ok(answer)) => Ok(answer.into_inner()),
        Ok(Err(status)) => Err(format!(
            "node {} at {} did not answer: {}",
            member.id,
            member.info.addr,
            describe_status(&status)
        )),
        Err(_) => Err(format!(
            "node {} at {} did not answer within {} ms",
            member.id,
            member.info.addr,
            timeout.as_millis()
        )),
    }
}

/// Every member's endpoint for `service`, by node id.
pub async fn node_endpoints(
    node: &ClusterNode,
    me: Option<&Balancer>,
    service: &str,
    port: u16,
    timeout: Duration,
) -> Vec<NodeEndpoint> {
    let mut members = node.members();
    members.sort_by_key(|m| m.id);
    let answers = join_all(members.iter().map(|m| ask(m, me, service, timeout))).await;
    members
        .iter()
        .zip(answers)
        .map(|(member, answer)| match answer {
            Err(error) => NodeEndpoint {
                node_id: member.id,
                address: String::new(),
                listening: false,
                error,
                balancer: None,
            },
            Ok(local) => {
                let address = host_port(&local.lb_host, port);
                match local.services.into_iter().find(|s| s.name == service) {
                    None => NodeEndpoint {
                        node_id: member.id,
                        address,
                        listening: false,
                        error: format!("node {} does not serve service {service} (yet)", member.id),
                        balancer: None,
                    },
                    Some(s) => NodeEndpoint {
                        node_id: member.id,
                        address: s.endpoint.clone(),
                        listening: s.listening && s.port == u32::from(port),
                        error: match (s.listening, s.bind_error.as_str()) {
                            (_, e) if !e.is_empty() => format!("node {}: {e}", member.id),
                            (false, _) => format!("node {} is not listening yet", member.id),
                            (true, _) if s.port != u32::from(port) => {
                                format!(
                                    "node {} listens on port {} (not applied the change yet)",
                                    member.id, s.port
                                )
                            }
                            _ => String::new(),
                        },
                        balancer: Some(s),
                    },
                }
            }
        })
        .collect()
}

/// A service's endpoints: its record, the machines of its active cluster
/// (read from this node's applied state) and every member's load balancer.
pub async fn endpoints(node: &ClusterNode, me: Option<&Balancer>, service: &ResourceRecord) -> Endpoints {
    let spec = resources::parse_object("spec", &service.spec_json).unwrap_or_default();
    let outputs = resources::parse_object("outputs", &service.outputs_json).unwrap_or_default();
    let port = spec
        .get("port")
        .and_then(|p| p.as_u64())
        .and_then(|p| u16::try_from(p).ok())
        .unwrap_or(0);
    let active = active_of(&outputs);
    let previous = outputs
        .get("previous")
        .and_then(|v| v.as_str())
        .unwrap_or_default()
        .to_string();
    let backends = backends_of(&node.reader().view(), active.as_deref()).unwrap_or_default();
    Endpoints {
        name: service.name.clone(),
        state: service.state.clone(),
        port: u32::from(port),
        active: active.unwrap_or_default(),
        previous,
        nodes: node_endpoints(node, me, &service.name, port, MEMBER_TIMEOUT).await,
        backends: backends
            .into_iter()
            .map(|m| MachineEndpoint {
                index: m.index,
                address: m.address,
            })
            .collect(),
    }
}

/// Waits until the load balancer of every member listens for `service` on
/// `port`; returns the endpoints, `HOST:PORT` by node id. Fails at once if a
/// member cannot listen (its bind error, naming the node), and after
/// `timeout` naming the members that do not answer or do not listen yet.
/// Called by the service provider's `activate` step.
pub async fn listening_everywhere(
    node: &ClusterNode,
    service: &str,
    port: u16,
    timeout: Duration,
) -> Result<Vec<String>, String> {
    let started = Instant::now();
    loop {
        let left = timeout.saturating_sub(started.elapsed());
        let ask = MEMBER_TIMEOUT.min(left.max(Duration::from_millis(100)));
        let endpoints = node_endpoints(node, None, service, port, ask).await;
        if !endpoints.is_empty() && endpoints.iter().all(|e| e.listening) {
            return Ok(endpoints.into_iter().map(|e| e.address).collect());
        }
        let bind_errors: Vec<String> = endpoints
            .iter()
            .filter(|e| e.balancer.as_ref().is_some_and(|b| !b.bind_error.is_empty()))
            .map(|e| e.error.clone())
            .collect();
        if !bind_errors.is_empty() {
            return Err(format!(
                "service {service}: port {port} cannot be served on every node: {}",
                bind_errors.join("; ")
            ));
        }
        if started.elapsed() >= timeout {
            let waiting: Vec<String> = endpoints
                .iter()
                .filter(|e| !e.listening)
                .map(|e| e.error.clone())
                .collect();
            return Err(format!(
                "service {service}: not every node listens on port {port} after {} ms: {}",
                timeout.as_millis(),
                waiting.join("; ")
            ));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The load balancers of the cluster's members, as the service provider
/// asks them whether a new service is served everywhere.
pub struct MemberListeners(pub ClusterNode);

#[async_trait::async_trait]
impl crate::ops::service::Listeners for MemberListeners {
    async fn listening_everywhere(&self, service: &str, port: u16, timeout: Duration) -> Result<Vec<String>, String> {
        listening_everywhere(&self.0, service, port, timeout).await
    }
}
