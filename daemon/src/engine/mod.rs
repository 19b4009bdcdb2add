//! The engine: one actix actor per resource, owning what happens to it.
//!
//! A [`Registry`] actor starts the resource actors and routes the applied
//! events to them; gRPC handlers only ask it for an actor's address. Actors
//! start lazily: a resource with a run in flight has one (from start-up, or
//! from when the run begins) for as long as the run lasts; a resource at
//! rest has one only while a request needs it, so resources at rest cost no
//! actor, and start-up reads only the runs in flight. Every actor keeps its
//! resource's current state (re-read from the applied state whenever its
//! resource changes, so it never drifts) and serialises the events done to
//! it. On the leader, an actor whose resource is in a work state makes sure
//! the run is driven: it executes runs the leader itself started in its term,
//! takes over runs started by an earlier leader (attempt + 1), and proposes
//! each run's finish once the provider's step ends. What an actor does next
//! is decided by a pure function (`decide`) over what it knows; proposals
//! the cluster could not commit are retried after a `backoff`. The registry
//! keeps an index of `dependents`, so a change to one resource also pokes
//! the actors of the resources that refer to it.
//!
//! The actors live on one actix system thread; provider steps and proposals
//! run on the daemon's tokio runtime, so a slow step never blocks an actor.

mod backoff;
mod decide;
mod dependents;
mod registry;
mod resource_actor;
mod step;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use actix::{Actor, Addr};
use opsd_cluster::{AppliedEvent, ClusterError, ClusterNode};
use tokio::sync::{broadcast, watch};
use tracing::warn;

use crate::domain::{decode_outcome, resources, Command, DomainEvent, Outcome, Rejection};
use crate::ops::{Object, Providers, ResourceLookup};
use crate::run_logs::RunLogs;

pub use registry::Registry;
pub use resource_actor::{CancelRun, DeleteResource, DoEvent, ResourceActor};
pub use step::now_ms;

/// The most attempts a run gets: a run taken over this often is ended as
/// `interrupted` instead of being driven again.
pub const MAX_ATTEMPTS: u32 = 5;

/// Why the engine could not make a change.
#[derive(Debug, Clone, thiserror::Error)]
pub enum EngineError {
    /// The cluster could not commit it.
    #[error(transparent)]
    Cluster(#[from] ClusterError),
    /// Apply (or the actor, checking early) refused it.
    #[error("{0:?}")]
    Rejected(Rejection),
}

/// A committed change: its log index and apply's answer.
pub type Committed = Result<(u64, Outcome), EngineError>;

/// What every actor shares.
pub(crate) struct EngineCtx {
    pub node: ClusterNode,
    pub node_id: u64,
    pub runtime: tokio::runtime::Handle,
    pub providers: Providers,
    pub work_root: PathBuf,
    /// Where this node writes the whole log of the steps it runs.
    pub run_logs: RunLogs,
    pub leadership: watch::Receiver<Option<u64>>,
    /// The last log index when this process started its engine: a run given
    /// to this node by an entry at or below it was given to an earlier
    /// process (a restarted leader may even lead the same term again).
    pub boot_index: u64,
}

impl EngineCtx {
    /// The term this node leads now, if it leads.
    pub fn leader_term(&self) -> Option<u64> {
        *self.leadership.borrow()
    }

    /// Proposes a command on the daemon's runtime; a rejection is an error.
    pub fn propose(&self, cmd: Command) -> impl std::future::Future<Output = Committed> + 'static {
        let node = self.node.clone();
        let task = self
            .runtime
            .spawn(async move { crate::propose::replicate(&node, &cmd).await });
        async move {
            let (index, answer) = task
                .await
                .map_err(|e| ClusterError::Internal(format!("proposal task failed: {e}")))??;
            match decode_outcome(&answer).map_err(ClusterError::Internal)? {
                Outcome::Rejected(r) => Err(EngineError::Rejected(r)),
                outcome => Ok((index, outcome)),
            }
        }
    }
}

/// The engine, as the API sees it: the registry's address. Cheap to clone.
#[derive(Clone)]
pub struct Engine {
    registry: Addr<Registry>,
    ctx: Arc<EngineCtx>,
    /// The actor system and its thread, for [`Engine::stop`].
    system: actix::System,
    thread: Arc<std::sync::Mutex<Option<std::thread::JoinHandle<std::io::Result<()>>>>>,
}

impl Engine {
    /// Starts the actor system on its own thread, starts the actors of the
    /// resources with a run in flight, and follows the node's applied events
    /// and leadership. Steps work in `DATA_DIR/work` and write their logs to
    /// `DATA_DIR/run-logs`.
    pub fn start(node: ClusterNode, providers: Providers, data_dir: &Path) -> std::io::Result<Engine> {
        let boot_index = node.last_log_index().map_err(std::io::Error::other)?;
        let ctx = Arc::new(EngineCtx {
            boot_index,
            node_id: node.node_id(),
            runtime: tokio::runtime::Handle::current(),
            providers,
            work_root: data_dir.join("work"),
            run_logs: RunLogs::new(data_dir),
            leadership: node.leadership(),
            node: node.clone(),
        });
        // Subscribe before the registry loads, so nothing applied in between is missed.
        let events = node.subscribe();
        let (tx, rx) = std::sync::mpsc::channel();
        let system_ctx = ctx.clone();
        let thread = std::thread::Builder::new().name("opsd-engine".into()).spawn(move || {
            let system = actix::System::new();
            system.block_on(async move {
                let _ = tx.send((Registry::new(system_ctx).start(), actix::System::current()));
            });
            system.run()
        })?;
        let (registry, system) = rx
            .recv()
            .map_err(|_| std::io::Error::other("the engine's actor system did not start"))?;
        tokio::spawn(pump_events(events, registry.clone()));
        tokio::spawn(follow_leadership(ctx.leadership.clone(), registry.clone()));
        Ok(Engine {
            registry,
            ctx,
            system,
            thread: Arc::new(std::sync::Mutex::new(Some(thread))),
        })
    }

    /// Stops the actors and waits for their thread to end, so that nothing
    /// reads the database while the process exits (rocksdb aborts when a
    /// thread uses it during the library's teardown). Steps in flight are
    /// abandoned, as when this node loses the leadership.
    pub async fn stop(&self) {
        self.system.stop();
        let thread = self.thread.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some(thread) = thread {
            let _ = tokio::task::spawn_blocking(move || thread.join()).await;
        }
    }

    /// The actor of a resource (started if need be), if the resource exists.
    pub async fn resource(&self, kind: &str, name: &str) -> Option<Addr<ResourceActor>> {
        self.registry
            .send(registry::Lookup {
                kind: kind.to_string(),
                name: name.to_string(),
            })
            .await
            .ok()
            .flatten()
    }

    /// The providers this node runs steps with: the API checks a kind
    /// against them before proposing it.
    pub fn providers(&self) -> &Providers {
        &self.ctx.providers
    }

    /// This node's files of the steps it ran.
    pub fn run_logs(&self) -> &RunLogs {
        &self.ctx.run_logs
    }

    /// Creates a resource. The proposal goes straight to the cluster: there
    /// is no actor to serialise it yet, and apply refuses a duplicate. The
    /// registry starts the resource's actor when the creation is applied.
    pub async fn create(&self, cmd: Command) -> Committed {
        self.ctx.propose(cmd).await
    }
}

/// Hands every applied resource event to the registry; after a gap (lag, or
/// a snapshot replaced the state) the registry re-reads everything.
async fn pump_events(mut events: broadcast::Receiver<AppliedEvent>, registry: Addr<Registry>) {
    registry.do_send(registry::Reload);
    loop {
        match events.recv().await {
            Ok(AppliedEvent::Applied { event, .. }) => match DomainEvent::decode(&event) {
                Ok(DomainEvent::Resource(record)) => {
                    registry.do_send(registry::ResourceChanged { record, deleted: false })
                }
                Ok(DomainEvent::ResourceDeleted(record)) => {
                    registry.do_send(registry::ResourceChanged { record, deleted: true })
                }
                Ok(DomainEvent::Run(r)) => registry.do_send(registry::Poke {
                    kind: r.kind,
                    name: r.name,
                }),
                Ok(_) => {}
                Err(e) => warn!(error = %e, "engine: skipping an undecodable event"),
            },
            Ok(AppliedEvent::SnapshotInstalled { .. }) | Err(broadcast::error::RecvError::Lagged(_)) => {
                registry.do_send(registry::Reload)
            }
            Err(broadcast::error::RecvError::Closed) => return,
        }
    }
}

/// Tells every actor when this node gains or loses the leadership.
async fn follow_leadership(mut leadership: watch::Receiver<Option<u64>>, registry: Addr<Registry>) {
    while leadership.changed().await.is_ok() {
        registry.do_send(registry::Reload);
    }
}

/// Looks resources up for providers (a cluster's image) in the applied state.
pub struct StateLookup(pub opsd_cluster::StateReader);

impl ResourceLookup for StateLookup {
    fn lookup(&self, kind: &str, name: &str) -> Option<(String, Object)> {
        let view = self.0.view();
        let r = resources::read_resource(&view, kind, name).ok()??;
        let outputs = resources::parse_object("outputs", &r.outputs_json).unwrap_or_default();
        Some((r.state, outputs))
    }

    fn spec(&self, kind: &str, name: &str) -> Option<Object> {
        let view = self.0.view();
        let r = resources::read_resource(&view, kind, name).ok()??;
        resources::parse_object("spec", &r.spec_json).ok()
    }

    fn settings(&self, kind: &str, name: &str) -> std::collections::BTreeMap<String, String> {
        let view = self.0.view();
        crate::domain::scope::in_scope(&view, kind, name)
            .map(crate::domain::scope::values)
            .unwrap_or_default()
    }
}
