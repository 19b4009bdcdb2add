//! The registry: one actor that finds the actor of a resource, starting it
//! when needed, and routes changes to it: a resource's change goes to its
//! own actor and to the actors of the resources that refer to it (see
//! [`super::dependents`]).
//!
//! Actors start lazily. A resource whose run is in flight has an actor
//! (started at start-up from the stored runs, and when a run begins); an
//! actor keeps itself alive while its resource has a run in flight or this
//! process executes one. A resource at rest gets an actor only while a
//! request needs it (an event, a delete, a cancel): the registry holds weak
//! addresses, so an actor at rest that nobody holds stops, and costs nothing
//! until the next request.

use std::collections::HashMap;
use std::sync::Arc;

use actix::prelude::*;
use actix::WeakAddr;
use tracing::{debug, error};

use super::dependents::{Dependents, ResourceKey};
use super::resource_actor::{Refresh, ResourceActor};
use super::EngineCtx;
use crate::domain::resources::{self, ResourceRecord};

/// Finds the actor of a resource, and knows which resources refer to which.
pub struct Registry {
    ctx: Arc<EngineCtx>,
    /// The actors started, live or stopped since: see [`Registry::prune`].
    actors: HashMap<ResourceKey, WeakAddr<ResourceActor>>,
    /// How many entries `actors` may hold before the stopped ones are dropped.
    prune_at: usize,
    dependents: Dependents,
}

/// The fewest entries of `actors` worth pruning.
const PRUNE_MIN: usize = 1024;

impl Registry {
    pub(crate) fn new(ctx: Arc<EngineCtx>) -> Self {
        Registry {
            ctx,
            actors: HashMap::new(),
            prune_at: PRUNE_MIN,
            dependents: Dependents::default(),
        }
    }

    /// Tells a resource's actor to re-read it, starting the actor only if
    /// the resource has a run in flight: an actor at rest has nothing to do
    /// with a change.
    fn poke(&mut self, kind: &str, name: &str) {
        if let Some(addr) = self.actor(kind, name, false) {
            addr.do_send(Refresh);
        }
    }

    /// The live actor of a resource. A resource without one gets one if it
    /// exists and, unless `at_rest`, has a run in flight.
    fn actor(&mut self, kind: &str, name: &str, at_rest: bool) -> Option<Addr<ResourceActor>> {
        let key = (kind.to_string(), name.to_string());
        if let Some(addr) = self.actors.get(&key).and_then(WeakAddr::upgrade) {
            return Some(addr);
        }
        let read = resources::read_resource(&self.ctx.node.reader().view(), kind, name);
        match read {
            Ok(Some(r)) if at_rest || r.active_run.is_some() => {}
            Ok(_) => return None,
            Err(e) => {
                error!(kind, name, error = %e, "engine: cannot read a resource");
                return None;
            }
        }
        let addr = ResourceActor::new(self.ctx.clone(), key.0.clone(), key.1.clone()).start();
        self.actors.insert(key, addr.downgrade());
        if self.actors.len() >= self.prune_at {
            self.prune();
        }
        Some(addr)
    }

    /// Forgets the actors that stopped.
    fn prune(&mut self) {
        self.actors.retain(|_, weak| weak.upgrade().is_some());
        self.prune_at = (self.actors.len() * 2).max(PRUNE_MIN);
    }
}

impl Actor for Registry {
    type Context = Context<Self>;
}

/// Asks for a resource's actor.
#[derive(Message)]
#[rtype(result = "Option<Addr<ResourceActor>>")]
pub struct Lookup {
    pub kind: String,
    pub name: String,
}

impl Handler<Lookup> for Registry {
    type Result = Option<Addr<ResourceActor>>;

    fn handle(&mut self, msg: Lookup, _: &mut Self::Context) -> Self::Result {
        self.actor(&msg.kind, &msg.name, true)
    }
}

/// A resource's run changed: the resource's actor re-reads it.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Poke {
    pub kind: String,
    pub name: String,
}

impl Handler<Poke> for Registry {
    type Result = ();

    fn handle(&mut self, msg: Poke, _: &mut Self::Context) {
        self.poke(&msg.kind, &msg.name);
    }
}

/// A resource was created, changed or deleted (the record after the change,
/// or as it was): the index of dependents follows, and the actors of the
/// resource and of every resource referring to it re-read theirs.
#[derive(Message)]
#[rtype(result = "()")]
pub struct ResourceChanged {
    pub record: ResourceRecord,
    pub deleted: bool,
}

impl Handler<ResourceChanged> for Registry {
    type Result = ();

    fn handle(&mut self, msg: ResourceChanged, _: &mut Self::Context) {
        let key = (msg.record.kind, msg.record.name);
        let rests = msg.deleted || msg.record.active_run.is_none();
        let poke = self.dependents.changed(key, &msg.record.spec_json, rests);
        for (kind, name) in poke.iter() {
            self.poke(kind, name);
        }
        if poke.len() > 1 {
            debug!(resource = %format!("{}/{}", poke[0].0, poke[0].1), dependents = poke.len() - 1, "engine: poked the resources that refer to a changed one");
        }
    }
}

/// Everything may have changed (start-up, a snapshot, missed events, a
/// change of leader): the index of dependents is rebuilt from the resources
/// with a run in flight, every live actor re-reads its resource, and each
/// resource with a run in flight gets an actor. Resources at rest are not
/// read at all.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Reload;

impl Handler<Reload> for Registry {
    type Result = ();

    fn handle(&mut self, _: Reload, _: &mut Self::Context) {
        let view = self.ctx.node.reader().view();
        let in_flight = resources::running(&view).and_then(|runs| {
            let mut out = Vec::new();
            for run in runs {
                out.extend(resources::read_resource(&view, &run.kind, &run.name)?);
            }
            Ok(out)
        });
        drop(view);
        let in_flight = match in_flight {
            Ok(in_flight) => in_flight,
            Err(e) => {
                error!(error = %e, "engine: cannot read the resources with a run in flight");
                return;
            }
        };
        self.dependents.rebuild(
            in_flight
                .iter()
                .map(|r| ((r.kind.clone(), r.name.clone()), r.spec_json.as_str())),
        );
        // Actors of deleted resources see that on refresh and stop.
        self.prune();
        let live: Vec<Addr<ResourceActor>> = self.actors.values().filter_map(WeakAddr::upgrade).collect();
        for addr in live {
            addr.do_send(Refresh);
        }
        for r in in_flight {
            self.actor(&r.kind, &r.name, false);
        }
    }
}
