//! The Resources service: kinds, resources, events, runs, logs and stats.
//! Changes to a resource go through its actor (the engine); reads come from
//! the applied state, after the leader's read index unless stale.

use std::collections::BTreeMap;
use std::pin::Pin;

use futures::Stream;
use opsd_cluster::{AppliedEvent, ClusterError, ClusterNode};
use opsd_proto::v1::resources_server::Resources;
use opsd_proto::v1::{
    resource_event, ApplyKindRequest, CancelRequest, CreateResourceRequest, DeleteResourceRequest, DoRequest,
    GetKindRequest, GetResourceRequest, GetRunRequest, HistoryRequest, KindInfo, ListKindsRequest, ListKindsResponse,
    ListResourcesRequest, ListResourcesResponse, ListRunsRequest, ListRunsResponse, LogLines, LogsRequest, Resource,
    ResourceChange, ResourceEvent, Run, StatsRequest, StatsResponse, TransitionStats, WatchResourceRequest,
};
use tokio::sync::broadcast::error::RecvError;
use tokio::sync::{mpsc, watch};
use tonic::{Request, Response, Status};

use super::{barrier, cluster_status, propose, read_status, refuse_if_removed, rejection_status};
use crate::domain::kind::Kind;
use crate::domain::resources::{self as domain, parse_run_id, ResourceRecord, RunOutcome, RunRecord};
use crate::domain::{stats, Command, DomainEvent, Outcome, Trigger};
use crate::engine::{self, Engine, EngineError};

/// The largest kind file accepted.
const MAX_KIND_SOURCE: usize = 256 * 1024;
/// The metadata key carrying the principal.
const PRINCIPAL_KEY: &str = "x-opsd-principal";

/// Serves resources from a node and its engine.
pub struct ResourcesService {
    node: ClusterNode,
    engine: Engine,
    stop: watch::Receiver<bool>,
}

impl ResourcesService {
    /// A service backed by `node` and `engine`; open streams end when `stop` turns true.
    pub fn new(node: ClusterNode, engine: Engine, stop: watch::Receiver<bool>) -> Self {
        ResourcesService { node, engine, stop }
    }

    /// The actor of an existing resource, or NOT_FOUND.
    async fn actor(&self, kind: &str, name: &str) -> Result<actix::Addr<engine::ResourceActor>, Status> {
        refuse_if_removed(&self.node)?;
        require("kind", kind)?;
        require("name", name)?;
        self.engine
            .resource(kind, name)
            .await
            .ok_or_else(|| Status::not_found(format!("resource {kind}/{name} not found")))
    }

    /// The resource change a command made, as the API answers it.
    fn change(&self, committed: (u64, Outcome)) -> Result<ResourceChange, Status> {
        let view = self.node.reader().view();
        match committed {
            (index, Outcome::ResourceChanged { resource, run }) => {
                let kind = domain::read_kind(&view, &resource.kind)
                    .map_err(read_status)?
                    .map(|k| k.0);
                Ok(ResourceChange {
                    resource: Some(resource_to_proto(resource, kind.as_ref())),
                    run: run.map(run_to_proto),
                    index,
                    deleted: false,
                })
            }
            (index, Outcome::ResourceDeleted { resource }) => Ok(ResourceChange {
                resource: Some(resource_to_proto(resource, None)),
                run: None,
                index,
                deleted: true,
            }),
            (_, other) => Err(Status::internal(format!("unexpected outcome: {other:?}"))),
        }
    }
}

type Stream_<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>;

fn require(field: &str, value: &str) -> Result<(), Status> {
    if value.is_empty() {
        return Err(Status::invalid_argument(format!("{field}: must not be empty")));
    }
    Ok(())
}

fn engine_status(e: EngineError) -> Status {
    match e {
        EngineError::Cluster(e) => cluster_status(e),
        EngineError::Rejected(r) => rejection_status(r),
    }
}

/// Who asked, why, now: the principal from the request's metadata.
fn trigger_of<T>(req: &Request<T>, reason: String) -> Result<Trigger, Status> {
    let principal = match req.metadata().get(PRINCIPAL_KEY) {
        None => "anonymous".to_string(),
        Some(v) => v
            .to_str()
            .ok()
            .filter(|p| !p.is_empty() && p.len() <= 128)
            .ok_or_else(|| Status::invalid_argument(format!("{PRINCIPAL_KEY}: must be 1 to 128 printable characters")))?
            .to_string(),
    };
    if reason.len() > domain::MAX_TEXT {
        return Err(Status::invalid_argument(format!(
            "reason: longer than {} bytes",
            domain::MAX_TEXT
        )));
    }
    Ok(Trigger {
        principal,
        reason,
        source: "api".into(),
        at_ms: engine::now_ms(),
    })
}

fn kind_to_proto(kind: &Kind, record: Option<&domain::KindRecord>) -> KindInfo {
    let source = match record {
        Some(r) => r.source.clone(),
        None => crate::domain::kind::BUILTIN
            .iter()
            .find(|(n, _)| *n == kind.name)
            .map(|(_, s)| s.to_string())
            .unwrap_or_default(),
    };
    KindInfo {
        name: kind.name.clone(),
        source,
        builtin: record.is_none_or(|r| r.builtin),
        version: record.map(|r| r.version).unwrap_or(0),
        initial: kind.initial.clone(),
        provider: kind.provider.clone(),
        states: kind.states.keys().cloned().collect(),
    }
}

/// A resource for the API; `kind` tells whether its state is work or final.
pub fn resource_to_proto(r: ResourceRecord, kind: Option<&Kind>) -> Resource {
    let state = kind.and_then(|k| k.state(&r.state));
    Resource {
        working: state.is_some_and(|s| s.work),
        r#final: state.is_some_and(|s| s.is_final),
        kind: r.kind,
        name: r.name,
        state: r.state,
        version: r.version,
        spec_json: r.spec_json,
        outputs_json: r.outputs_json,
        labels: r.labels.into_iter().collect(),
        created_at_ms: r.created_at_ms,
        updated_at_ms: r.updated_at_ms,
        active_run_id: r.active_run.map(domain::run_id).unwrap_or_default(),
    }
}

/// A run for the API.
pub fn run_to_proto(r: RunRecord) -> Run {
    Run {
        run_id: r.run_id(),
        duration_ms: r.duration_ms().unwrap_or(0),
        finished_at_ms: r.finished_at_ms.unwrap_or(0),
        kind: r.kind,
        name: r.name,
        event: r.event,
        from: r.from,
        to: r.to,
        outcome: r.outcome.as_str().into(),
        attempt: r.attempt,
        node_id: r.node_id,
        principal: r.trigger.principal,
        reason: r.trigger.reason,
        source: r.trigger.source,
        started_at_ms: r.trigger.at_ms,
        error: r.error,
        outputs_json: r.outputs_json,
        args: r.args.into_iter().collect(),
        cancel_requested: r.cancel_requested,
        index: r.index,
    }
}

fn since_cutoff(since_ms: u64) -> Option<i64> {
    (since_ms > 0).then(|| engine::now_ms().saturating_sub(since_ms.min(i64::MAX as u64) as i64))
}

#[tonic::async_trait]
impl Resources for ResourcesService {
    async fn apply_kind(&self, req: Request<ApplyKindRequest>) -> Result<Response<KindInfo>, Status> {
        let source = req.into_inner().source;
        require("source", &source)?;
        if source.len() > MAX_KIND_SOURCE {
            return Err(Status::invalid_argument(format!(
                "source: {} bytes is more than the limit of {MAX_KIND_SOURCE}",
                source.len()
            )));
        }
        // Compiled here, by the leader's rules; apply stores what the command carries.
        let kind = domain::compile_kind(&source).map_err(rejection_status)?;
        let put = Command::PutKind {
            source: source.clone(),
            kind: kind.clone(),
        };
        let (version, _) = propose(&self.node, put).await?;
        let record = domain::KindRecord {
            source,
            version,
            builtin: false,
        };
        Ok(Response::new(kind_to_proto(&kind, Some(&record))))
    }

    async fn list_kinds(&self, _: Request<ListKindsRequest>) -> Result<Response<ListKindsResponse>, Status> {
        barrier(&self.node, false).await?;
        let view = self.node.reader().view();
        let kinds = domain::list_kinds(&view).map_err(read_status)?;
        Ok(Response::new(ListKindsResponse {
            kinds: kinds.iter().map(|(k, r)| kind_to_proto(k, r.as_ref())).collect(),
        }))
    }

    async fn get_kind(&self, req: Request<GetKindRequest>) -> Result<Response<KindInfo>, Status> {
        let name = req.into_inner().name;
        require("name", &name)?;
        barrier(&self.node, false).await?;
        let view = self.node.reader().view();
        match domain::read_kind(&view, &name).map_err(read_status)? {
            Some((k, r)) => Ok(Response::new(kind_to_proto(&k, r.as_ref()))),
            None => Err(Status::not_found(format!("kind {name:?} not found"))),
        }
    }

    async fn create(&self, req: Request<CreateResourceRequest>) -> Result<Response<ResourceChange>, Status> {
        refuse_if_removed(&self.node)?;
        let trigger = trigger_of(&req, req.get_ref().reason.clone())?;
        let req = req.into_inner();
        require("kind", &req.kind)?;
        domain::validate_name(&req.name).map_err(Status::invalid_argument)?;
        domain::parse_object("spec_json", &req.spec_json).map_err(Status::invalid_argument)?;
        let cmd = Command::CreateResource {
            kind: req.kind,
            name: req.name,
            spec_json: req.spec_json,
            labels: req.labels.into_iter().collect::<BTreeMap<_, _>>(),
            trigger,
        };
        let committed = self.engine.create(cmd).await.map_err(engine_status)?;
        Ok(Response::new(self.change(committed)?))
    }

    async fn get(&self, req: Request<GetResourceRequest>) -> Result<Response<Resource>, Status> {
        let req = req.into_inner();
        require("kind", &req.kind)?;
        require("name", &req.name)?;
        barrier(&self.node, req.stale).await?;
        let view = self.node.reader().view();
        let kind = domain::read_kind(&view, &req.kind).map_err(read_status)?.map(|k| k.0);
        match domain::read_resource(&view, &req.kind, &req.name).map_err(read_status)? {
            Some(r) => Ok(Response::new(resource_to_proto(r, kind.as_ref()))),
            None => Err(Status::not_found(format!(
                "resource {}/{} not found",
                req.kind, req.name
            ))),
        }
    }

    async fn list(&self, req: Request<ListResourcesRequest>) -> Result<Response<ListResourcesResponse>, Status> {
        let req = req.into_inner();
        barrier(&self.node, req.stale).await?;
        let view = self.node.reader().view();
        if !req.kind.is_empty() && domain::read_kind(&view, &req.kind).map_err(read_status)?.is_none() {
            return Err(Status::not_found(format!("kind {:?} not found", req.kind)));
        }
        let mut kinds: BTreeMap<String, Option<Kind>> = BTreeMap::new();
        let mut out = Vec::new();
        for r in domain::list_resources(&view, &req.kind).map_err(read_status)? {
            if !kinds.contains_key(&r.kind) {
                let k = domain::read_kind(&view, &r.kind).map_err(read_status)?.map(|k| k.0);
                kinds.insert(r.kind.clone(), k);
            }
            let kind = kinds[&r.kind].as_ref();
            out.push(resource_to_proto(r, kind));
        }
        Ok(Response::new(ListResourcesResponse { resources: out }))
    }

    async fn delete(&self, req: Request<DeleteResourceRequest>) -> Result<Response<ResourceChange>, Status> {
        let trigger = trigger_of(&req, req.get_ref().reason.clone())?;
        let req = req.into_inner();
        let actor = self.actor(&req.kind, &req.name).await?;
        let committed = actor
            .send(engine::DeleteResource { trigger })
            .await
            .map_err(|_| cluster_status(ClusterError::ShuttingDown))?
            .map_err(engine_status)?;
        Ok(Response::new(self.change(committed)?))
    }

    async fn r#do(&self, req: Request<DoRequest>) -> Result<Response<ResourceChange>, Status> {
        let trigger = trigger_of(&req, req.get_ref().reason.clone())?;
        let req = req.into_inner();
        require("event", &req.event)?;
        let actor = self.actor(&req.kind, &req.name).await?;
        let committed = actor
            .send(engine::DoEvent {
                event: req.event,
                args: req.args.into_iter().collect(),
                trigger,
            })
            .await
            .map_err(|_| cluster_status(ClusterError::ShuttingDown))?
            .map_err(engine_status)?;
        Ok(Response::new(self.change(committed)?))
    }

    type WatchStream = Stream_<ResourceEvent>;

    async fn watch(&self, req: Request<WatchResourceRequest>) -> Result<Response<Self::WatchStream>, Status> {
        let req = req.into_inner();
        require("kind", &req.kind)?;
        require("name", &req.name)?;
        refuse_if_removed(&self.node)?;
        // Subscribe first: nothing applied after the first message is missed.
        let mut events = self.node.subscribe();
        let view = self.node.reader().view();
        let kind = domain::read_kind(&view, &req.kind).map_err(read_status)?.map(|k| k.0);
        let Some(current) = domain::read_resource(&view, &req.kind, &req.name).map_err(read_status)? else {
            return Err(Status::not_found(format!(
                "resource {}/{} not found",
                req.kind, req.name
            )));
        };
        drop(view);
        let mut stop = self.stop.clone();
        let (tx, rx) = mpsc::channel(1024);
        let _ = tx.try_send(Ok(ResourceEvent {
            event: Some(resource_event::Event::Resource(resource_to_proto(
                current,
                kind.as_ref(),
            ))),
        }));
        tokio::spawn(async move {
            let mine = |k: &str, n: &str| k == req.kind && n == req.name;
            loop {
                let received = tokio::select! {
                    r = events.recv() => r,
                    _ = stop.wait_for(|s| *s) => Err(RecvError::Closed),
                };
                let (item, end) = match received {
                    Ok(AppliedEvent::Applied { event, .. }) => match DomainEvent::decode(&event) {
                        Ok(DomainEvent::Resource(r)) if mine(&r.kind, &r.name) => (
                            Some(resource_event::Event::Resource(resource_to_proto(r, kind.as_ref()))),
                            false,
                        ),
                        Ok(DomainEvent::ResourceDeleted(r)) if mine(&r.kind, &r.name) => {
                            (Some(resource_event::Event::Deleted(resource_to_proto(r, None))), true)
                        }
                        Ok(DomainEvent::Run(r)) if mine(&r.kind, &r.name) => {
                            (Some(resource_event::Event::Run(run_to_proto(r))), false)
                        }
                        Ok(DomainEvent::RunLog {
                            run,
                            kind: k,
                            name: n,
                            first_line,
                            lines,
                        }) if mine(&k, &n) => (
                            Some(resource_event::Event::Log(LogLines {
                                run_id: domain::run_id(run),
                                first_line,
                                lines,
                                dropped: 0,
                            })),
                            false,
                        ),
                        _ => (None, false),
                    },
                    Ok(AppliedEvent::SnapshotInstalled { index }) => {
                        let _ = tx
                            .send(Err(Status::aborted(format!(
                                "this node's state was replaced by a snapshot at index {index}; read and watch again"
                            ))))
                            .await;
                        return;
                    }
                    Err(RecvError::Lagged(n)) => {
                        let _ = tx
                            .send(Err(Status::aborted(format!(
                                "the watcher fell {n} changes behind; read and watch again"
                            ))))
                            .await;
                        return;
                    }
                    Err(RecvError::Closed) => {
                        let _ = tx.send(Err(Status::unavailable("the node is shutting down"))).await;
                        return;
                    }
                };
                if let Some(event) = item {
                    if tx.send(Ok(ResourceEvent { event: Some(event) })).await.is_err() {
                        return;
                    }
                }
                if end {
                    return;
                }
            }
        });
        Ok(Response::new(Box::pin(tokio_stream::wrappers::ReceiverStream::new(rx))))
    }

    async fn list_runs(&self, req: Request<ListRunsRequest>) -> Result<Response<ListRunsResponse>, Status> {
        let req = req.into_inner();
        if req.kind.is_empty() != req.name.is_empty() {
            return Err(Status::invalid_argument(
                "kind and name: give both (one resource's runs) or neither",
            ));
        }
        let outcome = match req.outcome.as_str() {
            "" => None,
            o => Some(RunOutcome::parse(o).ok_or_else(|| {
                Status::invalid_argument(format!(
                    "outcome: {o:?} is not running, succeeded, failed, cancelled or interrupted"
                ))
            })?),
        };
        let limit = if req.limit == 0 {
            100
        } else {
            req.limit.min(10_000) as usize
        };
        barrier(&self.node, false).await?;
        let view = self.node.reader().view();
        let since = since_cutoff(req.since_ms);
        let keep = |r: &RunRecord| {
            outcome.is_none_or(|o| r.outcome == o)
                && (req.kind.is_empty() || (r.kind == req.kind && r.name == req.name))
        };
        let runs = if req.kind.is_empty() {
            domain::list_runs(&view, since, limit, keep).map_err(read_status)?
        } else {
            let mut runs = domain::history(&view, &req.kind, &req.name).map_err(read_status)?;
            runs.retain(|r| keep(r) && since.is_none_or(|s| r.trigger.at_ms >= s));
            runs.reverse();
            runs.truncate(limit);
            runs
        };
        Ok(Response::new(ListRunsResponse {
            runs: runs.into_iter().map(run_to_proto).collect(),
        }))
    }

    async fn get_run(&self, req: Request<GetRunRequest>) -> Result<Response<Run>, Status> {
        let index = parse_run_id(&req.into_inner().run_id).map_err(Status::invalid_argument)?;
        barrier(&self.node, false).await?;
        let view = self.node.reader().view();
        match domain::read_run(&view, index).map_err(read_status)? {
            Some(r) => Ok(Response::new(run_to_proto(r))),
            None => Err(Status::not_found(format!("run {} not found", domain::run_id(index)))),
        }
    }

    type LogsStream = Stream_<LogLines>;

    async fn logs(&self, req: Request<LogsRequest>) -> Result<Response<Self::LogsStream>, Status> {
        let req = req.into_inner();
        let index = parse_run_id(&req.run_id).map_err(Status::invalid_argument)?;
        barrier(&self.node, false).await?;
        let mut events = self.node.subscribe();
        let view = self.node.reader().view();
        let Some(run) = domain::read_run(&view, index).map_err(read_status)? else {
            return Err(Status::not_found(format!("run {} not found", domain::run_id(index))));
        };
        let log = domain::read_log(&view, index).map_err(read_status)?;
        drop(view);
        let run_id = domain::run_id(index);
        let mut sent = log.dropped + log.lines.len() as u64;
        let (tx, rx) = mpsc::channel(256);
        let _ = tx.try_send(Ok(LogLines {
            run_id: run_id.clone(),
            first_line: log.dropped,
            lines: log.lines,
            dropped: log.dropped,
        }));
        if req.follow && run.outcome == RunOutcome::Running {
            let mut stop = self.stop.clone();
            tokio::spawn(async move {
                loop {
                    let received = tokio::select! {
                        r = events.recv() => r,
                        _ = stop.wait_for(|s| *s) => return,
                    };
                    match received {
                        Ok(AppliedEvent::Applied { event, .. }) => match DomainEvent::decode(&event) {
                            Ok(DomainEvent::RunLog {
                                run, first_line, lines, ..
                            }) if run == index => {
                                // Skip lines already sent from the stored log.
                                let skip = sent.saturating_sub(first_line) as usize;
                                if skip >= lines.len() {
                                    continue;
                                }
                                let start = first_line + skip as u64;
                                sent = first_line + lines.len() as u64;
                                let lines = lines.into_iter().skip(skip).collect();
                                let msg = LogLines {
                                    run_id: run_id.clone(),
                                    first_line: start,
                                    lines,
                                    dropped: 0,
                                };
                                if tx.send(Ok(msg)).await.is_err() {
                                    return;
                                }
                            }
                            // The finish comes after the last line.
                            Ok(DomainEvent::Run(r)) if r.index == index && r.outcome != RunOutcome::Running => return,
                            _ => {}
                        },
                        Ok(AppliedEvent::SnapshotInstalled { .. }) | Err(RecvError::Lagged(_)) => {
                            let _ = tx
                                .send(Err(Status::aborted("the log follower fell behind; read the log again")))
                                .await;
                            return;
                        }
                        Err(RecvError::Closed) => return,
                    }
                }
            });
        }
        Ok(Response::new(Box::pin(tokio_stream::wrappers::ReceiverStream::new(rx))))
    }

    async fn cancel(&self, req: Request<CancelRequest>) -> Result<Response<Run>, Status> {
        let trigger = trigger_of(&req, req.get_ref().reason.clone())?;
        let index = parse_run_id(&req.into_inner().run_id).map_err(Status::invalid_argument)?;
        barrier(&self.node, false).await?;
        let run = domain::read_run(&self.node.reader().view(), index)
            .map_err(read_status)?
            .ok_or_else(|| Status::not_found(format!("run {} not found", domain::run_id(index))))?;
        if run.outcome != RunOutcome::Running {
            return Err(Status::failed_precondition(format!(
                "run {} already ended: {}",
                run.run_id(),
                run.outcome.as_str()
            )));
        }
        let actor = self.actor(&run.kind, &run.name).await?;
        let committed = actor
            .send(engine::CancelRun { run: index, trigger })
            .await
            .map_err(|_| cluster_status(ClusterError::ShuttingDown))?
            .map_err(engine_status)?;
        match committed {
            (_, Outcome::RunChanged { run }) => Ok(Response::new(run_to_proto(run))),
            (_, other) => Err(Status::internal(format!("unexpected outcome of a cancel: {other:?}"))),
        }
    }

    async fn history(&self, req: Request<HistoryRequest>) -> Result<Response<ListRunsResponse>, Status> {
        let req = req.into_inner();
        require("kind", &req.kind)?;
        require("name", &req.name)?;
        barrier(&self.node, false).await?;
        let view = self.node.reader().view();
        let runs = domain::history(&view, &req.kind, &req.name).map_err(read_status)?;
        if runs.is_empty()
            && domain::read_resource(&view, &req.kind, &req.name)
                .map_err(read_status)?
                .is_none()
        {
            return Err(Status::not_found(format!(
                "resource {}/{} not found",
                req.kind, req.name
            )));
        }
        Ok(Response::new(ListRunsResponse {
            runs: runs.into_iter().map(run_to_proto).collect(),
        }))
    }

    async fn stats(&self, req: Request<StatsRequest>) -> Result<Response<StatsResponse>, Status> {
        let req = req.into_inner();
        barrier(&self.node, false).await?;
        let view = self.node.reader().view();
        if !req.kind.is_empty() && domain::read_kind(&view, &req.kind).map_err(read_status)?.is_none() {
            return Err(Status::not_found(format!("kind {:?} not found", req.kind)));
        }
        let rows = stats::query(&view, &req.kind, since_cutoff(req.since_ms)).map_err(read_status)?;
        Ok(Response::new(StatsResponse {
            transitions: rows
                .into_iter()
                .map(|s| TransitionStats {
                    kind: s.kind,
                    from: s.from,
                    to: s.to,
                    count: s.count,
                    succeeded: s.succeeded,
                    failed: s.failed,
                    cancelled: s.cancelled,
                    interrupted: s.interrupted,
                    mean_ms: s.mean_ms,
                    p50_ms: s.p50_ms,
                    p95_ms: s.p95_ms,
                    max_ms: s.max_ms,
                    fail_mean_ms: s.fail_mean_ms,
                })
                .collect(),
        }))
    }
}
