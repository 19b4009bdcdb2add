//! The registry: one actor that knows every resource actor, creates them
//! from the stored state and as resources appear, and routes changes to them:
//! a resource's change goes to its own actor and to the actors of the
//! resources that refer to it (see [`super::dependents`]).

use std::collections::HashMap;
use std::sync::Arc;

use actix::prelude::*;
use tracing::{debug, error};

use super::dependents::{Dependents, ResourceKey};
use super::resource_actor::{Refresh, ResourceActor};
use super::EngineCtx;
use crate::domain::resources::{self, ResourceRecord};

/// Knows the actor of every resource, and which resources refer to which.
pub struct Registry {
    ctx: Arc<EngineCtx>,
    actors: HashMap<ResourceKey, Addr<ResourceActor>>,
    dependents: Dependents,
}

impl Registry {
    pub(crate) fn new(ctx: Arc<EngineCtx>) -> Self {
        Registry {
            ctx,
            actors: HashMap::new(),
            dependents: Dependents::default(),
        }
    }

    /// Tells a resource's actor (started if need be) to re-read it.
    fn poke(&mut self, kind: &str, name: &str) {
        if let Some(addr) = self.actor(kind, name) {
            addr.do_send(Refresh);
        }
    }

    /// The live actor of a resource, started if the resource exists.
    fn actor(&mut self, kind: &str, name: &str) -> Option<Addr<ResourceActor>> {
        let key = (kind.to_string(), name.to_string());
        if let Some(addr) = self.actors.get(&key).filter(|a| a.connected()) {
            return Some(addr.clone());
        }
        self.actors.remove(&key);
        let view = self.ctx.node.reader().view();
        match resources::read_resource(&view, kind, name) {
            Ok(Some(_)) => {}
            Ok(None) => return None,
            Err(e) => {
                error!(kind, name, error = %e, "engine: cannot read a resource");
                return None;
            }
        }
        let addr = ResourceActor::new(self.ctx.clone(), key.0.clone(), key.1.clone()).start();
        self.actors.insert(key, addr.clone());
        Some(addr)
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
        self.actor(&msg.kind, &msg.name)
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
        let poke = self.dependents.changed(key, &msg.record.spec_json, msg.deleted);
        for (kind, name) in poke.iter() {
            self.poke(kind, name);
        }
        if poke.len() > 1 {
            debug!(resource = %format!("{}/{}", poke[0].0, poke[0].1), dependents = poke.len() - 1, "engine: poked the resources that refer to a changed one");
        }
    }
}

/// Everything may have changed (start-up, a snapshot, missed events, a
/// change of leader): the index of dependents is rebuilt, every actor
/// re-reads its resource, and resources without an actor get one.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Reload;

impl Handler<Reload> for Registry {
    type Result = ();

    fn handle(&mut self, _: Reload, _: &mut Self::Context) {
        let view = self.ctx.node.reader().view();
        let all = match resources::list_resources(&view, "") {
            Ok(all) => all,
            Err(e) => {
                error!(error = %e, "engine: cannot read the resources");
                return;
            }
        };
        drop(view);
        self.dependents.rebuild(
            all.iter()
                .map(|r| ((r.kind.clone(), r.name.clone()), r.spec_json.as_str())),
        );
        let mut existing: HashMap<ResourceKey, Addr<ResourceActor>> = HashMap::new();
        for r in all {
            if let Some(addr) = self.actor(&r.kind, &r.name) {
                existing.insert((r.kind, r.name), addr);
            }
        }
        // Actors of deleted resources see that on refresh and stop.
        for (key, addr) in self.actors.drain() {
            if !existing.contains_key(&key) {
                addr.do_send(Refresh);
            }
        }
        for addr in existing.values() {
            addr.do_send(Refresh);
        }
        self.actors = existing;
    }
}
