//! The Resources service: kinds, resources, events, runs, logs and stats.
//! Changes to a resource go through its actor (the engine); reads come from
//! the applied state, after the leader's read index unless stale.

use std::collections::BTreeMap;
use std::time::Duration;

use opsd_client::{describe_status, Api, Credentials, NodeAddr, Timeouts};
use opsd_cluster::{ClusterError, ClusterNode};
use opsd_proto::v1::resources_server::Resources;
use opsd_proto::v1::{self as proto, TriggerSource};
use opsd_proto::v1::{
    resource_event, ApplyKindRequest, CancelRequest, CreateResourceRequest, DeleteResourceRequest, DoRequest,
    GetKindRequest, GetResourceRequest, GetRunRequest, HistoryRequest, KindInfo, ListKindsRequest, ListKindsResponse,
    ListResourcesRequest, ListResourcesResponse, ListRunsRequest, ListRunsResponse, LogLines, LogsRequest, Resource,
    ResourceChange, ResourceEvent, Run, StatsRequest, StatsResponse, TransitionStats, WatchResourceRequest,
};
use opsd_proto::{json, prost_types, time};
use tokio::sync::watch;
use tonic::{Request, Response, Status};

use super::caller::{require as allowed, Caller};
use super::follow::{end_of_watch, follow_as, just, AnswerStream, Applied, Feed, Next};
use super::{barrier, cluster_status, propose, read_status, refuse_if_removed, rejection_status};
use crate::domain::kind::Kind;
use crate::domain::resources::{self as domain, parse_run_id, ResourceRecord, RunOutcome, RunRecord};
use crate::domain::security::{Object, Verb};
use crate::domain::{stats, Command, DomainEvent, Outcome};
use crate::engine::{self, Engine, EngineError};

/// How long the node that ran a step has to start sending its log.
const LOG_NODE_TIMEOUT: Duration = Duration::from_secs(5);

/// The whole log of `run`, asked of the node that ran it; `Err` says why not.
async fn ask_for_log(node: &ClusterNode, run: &RunRecord) -> Result<AnswerStream<LogLines>, String> {
    let owner = run.node_id;
    let member = node
        .members()
        .into_iter()
        .find(|m| m.id == owner)
        .ok_or_else(|| format!("node {owner}, which ran it, is no longer a member of the cluster"))?;
    let addr = NodeAddr::parse(&member.info.addr).map_err(|e| format!("node {owner}: {e}"))?;
    let timeouts = Timeouts {
        connect: LOG_NODE_TIMEOUT,
        request: Some(LOG_NODE_TIMEOUT),
        answer: LOG_NODE_TIMEOUT,
    };
    let mut api = Api::lazy(&addr, timeouts, crate::pki::node_credentials(Credentials::anonymous()));
    let request = LogsRequest {
        run_id: run.run_id(),
        follow: false,
    };
    match tokio::time::timeout(LOG_NODE_TIMEOUT, api.resources.logs(request)).await {
        Ok(Ok(stream)) => Ok(Box::pin(stream.into_inner())),
        Ok(Err(status)) => Err(format!(
            "node {owner}, which ran it, did not answer: {}",
            describe_status(&status)
        )),
        Err(_) => Err(format!(
            "node {owner}, which ran it, did not answer within {} s",
            LOG_NODE_TIMEOUT.as_secs()
        )),
    }
}

/// The largest kind file accepted.
const MAX_KIND_SOURCE: usize = 256 * 1024;

/// Serves resources from a node and its engine.
pub struct ResourcesService {
    node: ClusterNode,
    engine: Engine,
    feed: Feed,
    stop: watch::Receiver<bool>,
}

impl ResourcesService {
    /// A service backed by `node` and `engine`, whose streams follow `feed`
    /// (the node's); open streams end when `stop` turns true.
    pub fn new(node: ClusterNode, engine: Engine, feed: Feed, stop: watch::Receiver<bool>) -> Self {
        ResourcesService {
            node,
            engine,
            feed,
            stop,
        }
    }

    /// The actor of an existing resource, or NOT_FOUND. Found after a
    /// linearizable barrier, as `get` reads: a resource created through
    /// another node just before this call is here too.
    async fn actor(&self, kind: &str, name: &str) -> Result<actix::Addr<engine::ResourceActor>, Status> {
        require("kind", kind)?;
        require("name", name)?;
        barrier(&self.node, false).await?;
        self.engine
            .resource(kind, name)
            .await
            .ok_or_else(|| Status::not_found(format!("resource {kind}/{name} not found")))
    }

    /// Asks the provider of the resource's kind whether `event` may be done
    /// (a service's swap needs a running cluster), if the resource's state
    /// takes the event at all: the engine answers the rest.
    fn check_event(
        &self,
        kind: &str,
        name: &str,
        event: &str,
        args: &std::collections::HashMap<String, String>,
    ) -> Result<(), Status> {
        let view = self.node.reader().view();
        let (Some((kind, _)), Some(resource)) = (
            domain::read_kind(&view, kind).map_err(read_status)?,
            domain::read_resource(&view, kind, name).map_err(read_status)?,
        ) else {
            return Ok(());
        };
        drop(view);
        let takes = kind.state(&resource.state).is_some_and(|s| s.on.contains_key(event));
        let spec = domain::parse_object("spec", &resource.spec_json).unwrap_or_default();
        let Some(provider) = self
            .engine
            .providers()
            .for_resource(&kind, &spec)
            .ok()
            .filter(|_| takes)
        else {
            return Ok(());
        };
        let outputs = domain::parse_object("outputs", &resource.outputs_json).unwrap_or_default();
        let args: BTreeMap<String, String> = args.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
        provider
            .check_event(&outputs, event, &args)
            .map_err(crate::api::rejection_status)
    }

    /// Has the provider of `kind` check a new resource's spec (its checks,
    /// say) before anything is proposed: INVALID_ARGUMENT naming the field.
    /// A spec naming a provider (`spec.provider`) this node lacks, or one
    /// that cannot run the kind, is refused here; a kind this node does not
    /// know yet, or whose own provider it lacks, is left to the create
    /// itself to refuse.
    fn check_spec(&self, kind: &str, spec_json: &str) -> Result<(), Status> {
        let view = self.node.reader().view();
        let Some((kind, _)) = domain::read_kind(&view, kind).map_err(read_status)? else {
            return Ok(());
        };
        let Ok(spec) = domain::parse_object("spec", spec_json) else {
            return Ok(());
        };
        if self.engine.providers().get(&kind.provider).is_none() && !spec.contains_key(crate::ops::PROVIDER_KEY) {
            return Ok(());
        }
        let provider = self
            .engine
            .providers()
            .for_resource(&kind, &spec)
            .map_err(Status::invalid_argument)?;
        provider.check_spec(&kind, &spec).map_err(Status::invalid_argument)
    }

    /// A run's whole log: the replicated lines when they are the whole log
    /// (they also hold opsd's own lines, such as a cancel's); else from the
    /// file of its current attempt on this node if this node ran it, else
    /// from the node that did (asked as a node, which answers from its own
    /// file only). If neither can, the replicated lines, with a note saying
    /// what is missing and why.
    async fn whole_log(&self, caller: &Caller, run: &RunRecord, log: domain::RunLog) -> AnswerStream<LogLines> {
        let replicated = |log: domain::RunLog, note: String| {
            just(LogLines {
                run_id: run.run_id(),
                first_line: log.dropped,
                lines: log.lines,
                dropped: log.dropped,
                note,
            })
        };
        let partial = log.dropped > 0 || log.lines.iter().any(|l| crate::run_logs::is_skip_marker(l));
        if !partial {
            return replicated(log, String::new());
        }
        let me = self.node.node_id();
        let why = if run.node_id == me {
            match self
                .engine
                .run_logs()
                .serve(run.index, run.attempt, run.run_id(), log.clone())
            {
                Ok(stream) => return stream,
                Err(e) => format!(
                    "its file on node {me} cannot be read ({e}): the oldest runs' files are removed to keep the run \
                     logs within their bound"
                ),
            }
        } else if caller.is_node() {
            format!("node {me} was asked for it, but node {} ran it", run.node_id)
        } else {
            match ask_for_log(&self.node, run).await {
                Ok(stream) => return stream,
                Err(e) => e,
            }
        };
        let note = format!(
            "only the replicated lines of run {} are shown, the whole log is missing: {why}",
            run.run_id()
        );
        replicated(log, note)
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
        spec: Some(stored_object("spec", &r.spec_json)),
        outputs: Some(stored_object("outputs", &r.outputs_json)),
        kind: r.kind,
        name: r.name,
        state: r.state,
        version: r.version,
        labels: r.labels.into_iter().collect(),
        created_at: Some(time::timestamp(r.created_at_ms)),
        updated_at: Some(time::timestamp(r.updated_at_ms)),
        active_run_id: r.active_run.map(domain::run_id).unwrap_or_default(),
    }
}

/// A run for the API.
pub fn run_to_proto(r: RunRecord) -> Run {
    Run {
        run_id: r.run_id(),
        duration: r.duration_ms().map(time::duration),
        finished_at: r.finished_at_ms.map(time::timestamp),
        outputs: Some(stored_object("outputs", &r.outputs_json)),
        kind: r.kind,
        name: r.name,
        event: r.event,
        from: r.from,
        to: r.to,
        outcome: outcome_to_proto(r.outcome) as i32,
        attempt: r.attempt,
        node_id: r.node_id,
        principal: r.trigger.principal,
        reason: r.trigger.reason,
        source: TriggerSource::from_label(&r.trigger.source).unwrap_or(TriggerSource::Unspecified) as i32,
        started_at: Some(time::timestamp(r.trigger.at_ms)),
        error: r.error,
        args: r.args.into_iter().collect(),
        cancel_requested: r.cancel_requested,
        index: r.index,
    }
}

/// A stored JSON object (a spec or outputs) as a Struct. Apply stores only
/// objects it parsed, so this cannot fail short of a damaged store; that is
/// logged and shown as `{}` rather than failing every read of the resource.
fn stored_object(field: &str, text: &str) -> prost_types::Struct {
    json::text_to_struct(field, text).unwrap_or_else(|e| {
        tracing::error!("a stored {field} is not a JSON object: {e}");
        prost_types::Struct::default()
    })
}

/// A run outcome as the API has it.
fn outcome_to_proto(outcome: RunOutcome) -> proto::RunOutcome {
    match outcome {
        RunOutcome::Running => proto::RunOutcome::Running,
        RunOutcome::Succeeded => proto::RunOutcome::Succeeded,
        RunOutcome::Failed => proto::RunOutcome::Failed,
        RunOutcome::Cancelled => proto::RunOutcome::Cancelled,
        RunOutcome::Interrupted => proto::RunOutcome::Interrupted,
    }
}

/// A `ListRunsRequest.outcome` filter: `None` for any outcome.
fn outcome_filter(outcome: i32) -> Result<Option<RunOutcome>, Status> {
    let outcome = proto::RunOutcome::try_from(outcome)
        .map_err(|_| Status::invalid_argument(format!("outcome: {outcome} is not a RunOutcome this server knows")))?;
    Ok(match outcome {
        proto::RunOutcome::Unspecified => None,
        proto::RunOutcome::Running => Some(RunOutcome::Running),
        proto::RunOutcome::Succeeded => Some(RunOutcome::Succeeded),
        proto::RunOutcome::Failed => Some(RunOutcome::Failed),
        proto::RunOutcome::Cancelled => Some(RunOutcome::Cancelled),
        proto::RunOutcome::Interrupted => Some(RunOutcome::Interrupted),
    })
}

/// A request's spec: a JSON object as the domain stores it (text); absent is `{}`.
fn spec_text(spec: Option<&prost_types::Struct>) -> Result<String, Status> {
    let object = match spec {
        Some(spec) => json::from_struct("spec", spec).map_err(Status::invalid_argument)?,
        None => serde_json::Map::new(),
    };
    Ok(serde_json::Value::Object(object).to_string())
}

/// The time a request's `since` duration reaches back to: `None` (any time)
/// when absent or zero.
fn since_cutoff(since: Option<&prost_types::Duration>) -> Result<Option<i64>, Status> {
    let since_ms = time::optional_duration_ms("since", since).map_err(Status::invalid_argument)?;
    Ok((since_ms > 0).then(|| engine::now_ms().saturating_sub(since_ms.min(i64::MAX as u64) as i64)))
}

/// The object a request on resource `kind`/`name` acts on.
fn resource_of<'a>(kind: &'a str, name: &'a str) -> Object<'a> {
    Object::Resource { kind, name }
}

/// The path prefix of the resources of `kind` (every resource's, if empty).
fn resources_prefix(kind: &str) -> String {
    if kind.is_empty() {
        "resources/".into()
    } else {
        format!("resources/{kind}/")
    }
}

#[tonic::async_trait]
impl Resources for ResourcesService {
    async fn apply_kind(&self, req: Request<ApplyKindRequest>) -> Result<Response<KindInfo>, Status> {
        let caller = Caller::of(&req)?.clone();
        let source = req.into_inner().source;
        require("source", &source)?;
        if source.len() > MAX_KIND_SOURCE {
            return Err(Status::invalid_argument(format!(
                "source: {} bytes is more than the limit of {MAX_KIND_SOURCE}",
                source.len()
            )));
        }
        // Compiled here, by this node's rules; apply stores what the command carries.
        let kind = domain::compile_kind(&source).map_err(rejection_status)?;
        caller.require(Verb::Write, &Object::Kind(&kind.name))?;
        // Only here: which providers exist is this node's business, not apply's.
        self.engine.providers().check(&kind).map_err(Status::invalid_argument)?;
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

    async fn list_kinds(&self, req: Request<ListKindsRequest>) -> Result<Response<ListKindsResponse>, Status> {
        let caller = Caller::of(&req)?;
        caller.require_some_under(Verb::Read, "kinds/")?;
        barrier(&self.node, false).await?;
        let view = self.node.reader().view();
        let kinds = domain::list_kinds(&view).map_err(read_status)?;
        Ok(Response::new(ListKindsResponse {
            kinds: kinds
                .iter()
                .filter(|(k, _)| caller.allows(Verb::Read, &Object::Kind(&k.name)))
                .map(|(k, r)| kind_to_proto(k, r.as_ref()))
                .collect(),
        }))
    }

    async fn get_kind(&self, req: Request<GetKindRequest>) -> Result<Response<KindInfo>, Status> {
        allowed(&req, Verb::Read, &Object::Kind(&req.get_ref().name))?;
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
        let caller = allowed(
            &req,
            Verb::Write,
            &resource_of(&req.get_ref().kind, &req.get_ref().name),
        )?;
        refuse_if_removed(&self.node)?;
        let trigger = caller.trigger(req.get_ref().reason.clone())?;
        let req = req.into_inner();
        require("kind", &req.kind)?;
        domain::validate_name(&req.name).map_err(Status::invalid_argument)?;
        let spec_json = spec_text(req.spec.as_ref())?;
        self.check_spec(&req.kind, &spec_json)?;
        let cmd = Command::CreateResource {
            kind: req.kind,
            name: req.name,
            spec_json,
            labels: req.labels.into_iter().collect::<BTreeMap<_, _>>(),
            trigger,
        };
        let committed = self.engine.create(cmd).await.map_err(engine_status)?;
        Ok(Response::new(self.change(committed)?))
    }

    async fn get(&self, req: Request<GetResourceRequest>) -> Result<Response<Resource>, Status> {
        allowed(&req, Verb::Read, &resource_of(&req.get_ref().kind, &req.get_ref().name))?;
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
        let caller = Caller::of(&req)?.clone();
        let req = req.into_inner();
        caller.require_some_under(Verb::Read, &resources_prefix(&req.kind))?;
        barrier(&self.node, req.stale).await?;
        let view = self.node.reader().view();
        if !req.kind.is_empty() && domain::read_kind(&view, &req.kind).map_err(read_status)?.is_none() {
            return Err(Status::not_found(format!("kind {:?} not found", req.kind)));
        }
        let mut kinds: BTreeMap<String, Option<Kind>> = BTreeMap::new();
        let mut out = Vec::new();
        for r in domain::list_resources(&view, &req.kind).map_err(read_status)? {
            if !caller.allows(Verb::Read, &resource_of(&r.kind, &r.name)) {
                continue;
            }
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
        let caller = allowed(
            &req,
            Verb::Write,
            &resource_of(&req.get_ref().kind, &req.get_ref().name),
        )?;
        let trigger = caller.trigger(req.get_ref().reason.clone())?;
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
        let caller = allowed(&req, Verb::Do, &resource_of(&req.get_ref().kind, &req.get_ref().name))?;
        let trigger = caller.trigger(req.get_ref().reason.clone())?;
        let req = req.into_inner();
        require("event", &req.event)?;
        let actor = self.actor(&req.kind, &req.name).await?;
        self.check_event(&req.kind, &req.name, &req.event, &req.args)?;
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

    type WatchStream = AnswerStream<ResourceEvent>;

    async fn watch(&self, req: Request<WatchResourceRequest>) -> Result<Response<Self::WatchStream>, Status> {
        let caller = allowed(&req, Verb::Read, &resource_of(&req.get_ref().kind, &req.get_ref().name))?.clone();
        let req = req.into_inner();
        require("kind", &req.kind)?;
        require("name", &req.name)?;
        // The first message is a linearizable read, like `get`: a node that
        // has not yet applied a create committed before this call (a
        // follower just restarted, say) must not answer NOT_FOUND for it.
        barrier(&self.node, false).await?;
        // Subscribe first: nothing applied after the first message is missed.
        let events = self.feed.subscribe();
        let view = self.node.reader().view();
        let kind = domain::read_kind(&view, &req.kind).map_err(read_status)?.map(|k| k.0);
        let Some(current) = domain::read_resource(&view, &req.kind, &req.name).map_err(read_status)? else {
            return Err(Status::not_found(format!(
                "resource {}/{} not found",
                req.kind, req.name
            )));
        };
        drop(view);
        let first = ResourceEvent {
            event: Some(resource_event::Event::Resource(resource_to_proto(
                current,
                kind.as_ref(),
            ))),
        };
        let mine = move |k: &str, n: &str| k == req.kind && n == req.name;
        let reader = self.node.reader().clone();
        let stream = follow_as(
            caller,
            reader,
            events,
            self.stop.clone(),
            1024,
            Some(first),
            move |seen| {
                let send = |event| ResourceEvent { event: Some(event) };
                let Applied::Event(event) = seen else {
                    return end_of_watch(seen, None);
                };
                match &*event {
                    DomainEvent::Resource(r) if mine(&r.kind, &r.name) => Next::Send(send(
                        resource_event::Event::Resource(resource_to_proto(r.clone(), kind.as_ref())),
                    )),
                    DomainEvent::ResourceDeleted(r) if mine(&r.kind, &r.name) => {
                        Next::SendLast(send(resource_event::Event::Deleted(resource_to_proto(r.clone(), None))))
                    }
                    DomainEvent::Run(r) if mine(&r.kind, &r.name) => {
                        Next::Send(send(resource_event::Event::Run(run_to_proto(r.clone()))))
                    }
                    DomainEvent::RunLog {
                        run,
                        kind: k,
                        name: n,
                        first_line,
                        lines,
                    } if mine(k, n) => Next::Send(send(resource_event::Event::Log(LogLines {
                        run_id: domain::run_id(*run),
                        first_line: *first_line,
                        lines: lines.clone(),
                        ..LogLines::default()
                    }))),
                    _ => Next::Skip,
                }
            },
        );
        Ok(Response::new(stream))
    }

    async fn list_runs(&self, req: Request<ListRunsRequest>) -> Result<Response<ListRunsResponse>, Status> {
        let caller = Caller::of(&req)?.clone();
        let req = req.into_inner();
        if req.kind.is_empty() != req.name.is_empty() {
            return Err(Status::invalid_argument(
                "kind and name: give both (one resource's runs) or neither",
            ));
        }
        if req.kind.is_empty() {
            caller.require_some_under(Verb::Read, "resources/")?;
        } else {
            caller.require(Verb::Read, &resource_of(&req.kind, &req.name))?;
        }
        let outcome = outcome_filter(req.outcome)?;
        let since = since_cutoff(req.since.as_ref())?;
        let limit = if req.limit == 0 {
            100
        } else {
            req.limit.min(10_000) as usize
        };
        barrier(&self.node, false).await?;
        let view = self.node.reader().view();
        let keep = |r: &RunRecord| {
            outcome.is_none_or(|o| r.outcome == o)
                && caller.allows(Verb::Read, &resource_of(&r.kind, &r.name))
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
        let caller = Caller::of(&req)?.clone();
        let index = parse_run_id(&req.into_inner().run_id).map_err(Status::invalid_argument)?;
        barrier(&self.node, false).await?;
        let view = self.node.reader().view();
        match domain::read_run(&view, index).map_err(read_status)? {
            Some(r) => {
                caller.require(Verb::Read, &resource_of(&r.kind, &r.name))?;
                Ok(Response::new(run_to_proto(r)))
            }
            None => Err(Status::not_found(format!("run {} not found", domain::run_id(index)))),
        }
    }

    type LogsStream = AnswerStream<LogLines>;

    async fn logs(&self, req: Request<LogsRequest>) -> Result<Response<Self::LogsStream>, Status> {
        let caller = Caller::of(&req)?.clone();
        let req = req.into_inner();
        let index = parse_run_id(&req.run_id).map_err(Status::invalid_argument)?;
        barrier(&self.node, false).await?;
        let events = self.feed.subscribe();
        let view = self.node.reader().view();
        let Some(run) = domain::read_run(&view, index).map_err(read_status)? else {
            return Err(Status::not_found(format!("run {} not found", domain::run_id(index))));
        };
        caller.require(Verb::Read, &resource_of(&run.kind, &run.name))?;
        let log = domain::read_log(&view, index).map_err(read_status)?;
        drop(view);
        if !(req.follow && run.outcome == RunOutcome::Running) {
            return Ok(Response::new(self.whole_log(&caller, &run, log).await));
        }
        let run_id = domain::run_id(index);
        let mut sent = log.dropped + log.lines.len() as u64;
        let first = LogLines {
            run_id: run_id.clone(),
            first_line: log.dropped,
            lines: log.lines,
            dropped: log.dropped,
            note: String::new(),
        };
        let reader = self.node.reader().clone();
        let stream = follow_as(
            caller,
            reader,
            events,
            self.stop.clone(),
            256,
            Some(first),
            move |seen| match seen {
                Applied::Event(event) => match &*event {
                    DomainEvent::RunLog {
                        run, first_line, lines, ..
                    } if *run == index => {
                        // Skip lines already sent from the stored log.
                        let skip = sent.saturating_sub(*first_line) as usize;
                        if skip >= lines.len() {
                            return Next::Skip;
                        }
                        let start = first_line + skip as u64;
                        sent = first_line + lines.len() as u64;
                        Next::Send(LogLines {
                            run_id: run_id.clone(),
                            first_line: start,
                            lines: lines[skip..].to_vec(),
                            ..LogLines::default()
                        })
                    }
                    // The finish comes after the last line.
                    DomainEvent::Run(r) if r.index == index && r.outcome != RunOutcome::Running => Next::End,
                    _ => Next::Skip,
                },
                Applied::SnapshotInstalled { .. } | Applied::Lagged { .. } => {
                    Next::Fail(Status::aborted("the log follower fell behind; read the log again"))
                }
                Applied::Stopping => Next::End,
            },
        );
        Ok(Response::new(stream))
    }

    async fn cancel(&self, req: Request<CancelRequest>) -> Result<Response<Run>, Status> {
        let caller = Caller::of(&req)?.clone();
        let trigger = caller.trigger(req.get_ref().reason.clone())?;
        let index = parse_run_id(&req.into_inner().run_id).map_err(Status::invalid_argument)?;
        barrier(&self.node, false).await?;
        let run = domain::read_run(&self.node.reader().view(), index)
            .map_err(read_status)?
            .ok_or_else(|| Status::not_found(format!("run {} not found", domain::run_id(index))))?;
        caller.require(Verb::Cancel, &resource_of(&run.kind, &run.name))?;
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
        allowed(&req, Verb::Read, &resource_of(&req.get_ref().kind, &req.get_ref().name))?;
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
        let caller = Caller::of(&req)?.clone();
        let req = req.into_inner();
        caller.require_some_under(Verb::Read, &resources_prefix(&req.kind))?;
        let since = since_cutoff(req.since.as_ref())?;
        barrier(&self.node, false).await?;
        let view = self.node.reader().view();
        if !req.kind.is_empty() && domain::read_kind(&view, &req.kind).map_err(read_status)?.is_none() {
            return Err(Status::not_found(format!("kind {:?} not found", req.kind)));
        }
        let rows = stats::query(&view, &req.kind, since).map_err(read_status)?;
        Ok(Response::new(StatsResponse {
            transitions: rows
                .into_iter()
                .filter(|s| caller.allows_some_under(Verb::Read, &resources_prefix(&s.kind)))
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

#[cfg(test)]
mod tests {
    use opsd_proto::prost_types::value::Kind as ValueKind;
    use opsd_proto::prost_types::{Duration, Struct, Value};
    use tonic::Code;

    use super::*;

    fn refused<T: std::fmt::Debug>(result: Result<T, Status>, needle: &str) {
        let status = result.expect_err("refused");
        assert_eq!(status.code(), Code::InvalidArgument, "{}", status.message());
        assert!(
            status.message().contains(needle),
            "{:?} names {needle:?}",
            status.message()
        );
    }

    #[test]
    fn outcomes_map_both_ways_and_unknown_filters_are_refused() {
        for outcome in [
            RunOutcome::Running,
            RunOutcome::Succeeded,
            RunOutcome::Failed,
            RunOutcome::Cancelled,
            RunOutcome::Interrupted,
        ] {
            let proto = outcome_to_proto(outcome);
            assert_eq!(proto.label(), outcome.as_str());
            assert_eq!(outcome_filter(proto as i32).unwrap(), Some(outcome));
        }
        assert_eq!(outcome_filter(0).unwrap(), None);
        refused(outcome_filter(99), "outcome");
    }

    #[test]
    fn a_spec_struct_becomes_stored_json_and_a_bad_one_names_its_key() {
        assert_eq!(spec_text(None).unwrap(), "{}");
        let spec = json::text_to_struct("spec", r#"{"replicas":2,"image":{"tag":"v2"}}"#).unwrap();
        assert_eq!(
            spec_text(Some(&spec)).unwrap(),
            r#"{"image":{"tag":"v2"},"replicas":2}"#
        );
        let bad = Struct {
            fields: [("hole".to_string(), Value { kind: None })].into(),
        };
        refused(spec_text(Some(&bad)), "spec.hole");
        let nan = Struct {
            fields: [(
                "n".to_string(),
                Value {
                    kind: Some(ValueKind::NumberValue(f64::INFINITY)),
                },
            )]
            .into(),
        };
        refused(spec_text(Some(&nan)), "spec.n");
    }

    #[test]
    fn since_reaches_back_from_now_and_a_bad_duration_names_the_field() {
        assert_eq!(since_cutoff(None).unwrap(), None);
        assert_eq!(since_cutoff(Some(&Duration::default())).unwrap(), None);
        let hour = since_cutoff(Some(&Duration {
            seconds: 3600,
            nanos: 0,
        }))
        .unwrap()
        .unwrap();
        assert!((engine::now_ms() - hour - 3_600_000).abs() < 60_000);
        refused(since_cutoff(Some(&Duration { seconds: -1, nanos: 0 })), "since");
        refused(
            since_cutoff(Some(&Duration {
                seconds: 0,
                nanos: 1_000_000_000,
            })),
            "since",
        );
    }

    #[test]
    fn stored_objects_become_structs() {
        let s = stored_object("outputs", r#"{"url":"http://web"}"#);
        assert_eq!(json::struct_value(Some(&s)), serde_json::json!({"url": "http://web"}));
        assert_eq!(stored_object("outputs", ""), Struct::default());
    }
}
