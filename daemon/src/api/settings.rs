//! The Settings service.

use opsd_cluster::ClusterNode;
use opsd_proto::v1::settings_server::Settings;
use opsd_proto::v1::{
    watch_event, DeleteRequest, DeleteResponse, EffectiveRequest, EffectiveResponse, EffectiveSetting, GetRequest,
    GetResponse, ListRequest, ListResponse, PutRequest, PutResponse, Setting, WatchEvent, WatchRequest,
};
use tokio::sync::watch;
use tonic::{Request, Response, Status};

use super::caller::{require, Caller};
use super::follow::{end_of_watch, follow_as, AnswerStream, Applied, Feed, Next};
use super::{barrier, propose, read_status, refuse_if_removed};
use crate::domain::security::{Object, Verb};
use crate::domain::settings::{self as domain, SettingEvent, SettingRecord};
use crate::domain::{kind, resources, scope};
use crate::domain::{Command, DomainEvent, Outcome};

/// Serves settings from a cluster node.
pub struct SettingsService {
    node: ClusterNode,
    feed: Feed,
    stop: watch::Receiver<bool>,
}

impl SettingsService {
    /// A service backed by `node`, whose watches follow `feed` (the node's);
    /// open watches end when `stop` turns true.
    pub fn new(node: ClusterNode, feed: Feed, stop: watch::Receiver<bool>) -> Self {
        SettingsService { node, feed, stop }
    }

    /// Proposes a put or delete; answers with the revision it made and the
    /// setting it replaced.
    async fn write(&self, cmd: Command) -> Result<(u64, Option<Setting>), Status> {
        match propose(&self.node, cmd).await? {
            (_, Outcome::SettingPut { previous, revision }) => Ok((revision, previous.map(masked))),
            (_, Outcome::SettingDeleted { previous, revision }) => Ok((revision, Some(masked(previous)))),
            (_, other) => Err(Status::internal(format!(
                "unexpected outcome of a settings write: {other:?}"
            ))),
        }
    }
}

/// A setting as answered, a secret one's value shown as `***`.
fn masked(r: SettingRecord) -> Setting {
    to_proto(r, false)
}

/// A setting as answered: a secret one's value is `***` unless `reveal`
/// (which the caller was checked for).
fn to_proto(r: SettingRecord, reveal: bool) -> Setting {
    let value = if r.secret && !reveal {
        domain::MASK.to_string()
    } else {
        r.value
    };
    Setting {
        key: r.key,
        value,
        create_revision: r.create_revision,
        mod_revision: r.mod_revision,
        version: r.version,
        changed_by: r.changed.principal,
        change_reason: r.changed.reason,
        changed_at: Some(opsd_proto::time::timestamp(r.changed.at_ms)),
        secret: r.secret,
    }
}

fn invalid(e: String) -> Status {
    Status::invalid_argument(e)
}

#[tonic::async_trait]
impl Settings for SettingsService {
    async fn put(&self, req: Request<PutRequest>) -> Result<Response<PutResponse>, Status> {
        let caller = require(&req, Verb::Write, &Object::Setting(&req.get_ref().key))?;
        let trigger = caller.trigger(req.get_ref().reason.clone())?;
        let req = req.into_inner();
        domain::validate_key(&req.key).map_err(invalid)?;
        domain::validate_value(&req.value).map_err(invalid)?;
        // A put that does not mention secrecy is the command every build
        // reads; only one that sets it needs the newer command.
        let cmd = match req.secret {
            None => Command::PutSetting {
                key: req.key,
                value: req.value,
                expected_revision: req.expected_revision,
                trigger,
            },
            Some(secret) => Command::PutSettingV2 {
                key: req.key,
                value: req.value,
                expected_revision: req.expected_revision,
                trigger,
                secret: Some(secret),
            },
        };
        let (revision, previous) = self.write(cmd).await?;
        Ok(Response::new(PutResponse { revision, previous }))
    }

    async fn get(&self, req: Request<GetRequest>) -> Result<Response<GetResponse>, Status> {
        let caller = require(&req, Verb::Read, &Object::Setting(&req.get_ref().key))?.clone();
        let req = req.into_inner();
        domain::validate_key(&req.key).map_err(invalid)?;
        barrier(&self.node, req.stale).await?;
        let reader = self.node.reader();
        let view = reader.view();
        let revision = domain::current_revision(&view).map_err(read_status)?;
        match domain::read(&view, &req.key).map_err(read_status)? {
            Some(r) => {
                let reveal = req.reveal && r.secret;
                if reveal {
                    caller.require(Verb::Reveal, &Object::Setting(&r.key))?;
                }
                Ok(Response::new(GetResponse {
                    setting: Some(to_proto(r, reveal)),
                    revision,
                }))
            }
            None => Err(Status::not_found(format!("setting {:?} not found", req.key))),
        }
    }

    async fn list(&self, req: Request<ListRequest>) -> Result<Response<ListResponse>, Status> {
        let caller = Caller::of(&req)?.clone();
        let req = req.into_inner();
        if req.prefix.len() > domain::MAX_KEY_BYTES {
            return Err(invalid(format!(
                "prefix: {} bytes is longer than the key limit of {}",
                req.prefix.len(),
                domain::MAX_KEY_BYTES
            )));
        }
        caller.require_some_under(Verb::Read, &format!("settings/{}", req.prefix))?;
        barrier(&self.node, req.stale).await?;
        let reader = self.node.reader();
        let view = reader.view();
        let revision = domain::current_revision(&view).map_err(read_status)?;
        let settings = domain::list(&view, &req.prefix).map_err(read_status)?;
        Ok(Response::new(ListResponse {
            settings: settings
                .into_iter()
                .filter(|s| caller.allows(Verb::Read, &Object::Setting(&s.key)))
                .map(masked)
                .collect(),
            revision,
        }))
    }

    async fn delete(&self, req: Request<DeleteRequest>) -> Result<Response<DeleteResponse>, Status> {
        let caller = require(&req, Verb::Write, &Object::Setting(&req.get_ref().key))?;
        let trigger = caller.trigger(req.get_ref().reason.clone())?;
        let req = req.into_inner();
        domain::validate_key(&req.key).map_err(invalid)?;
        let cmd = Command::DeleteSetting {
            key: req.key,
            expected_revision: req.expected_revision,
            trigger,
        };
        let (revision, previous) = self.write(cmd).await?;
        Ok(Response::new(DeleteResponse { revision, previous }))
    }

    type WatchStream = AnswerStream<WatchEvent>;

    async fn watch(&self, req: Request<WatchRequest>) -> Result<Response<Self::WatchStream>, Status> {
        let caller = Caller::of(&req)?.clone();
        let prefix = req.into_inner().prefix;
        if prefix.len() > domain::MAX_KEY_BYTES {
            return Err(invalid(format!(
                "prefix: longer than the key limit of {}",
                domain::MAX_KEY_BYTES
            )));
        }
        caller.require_some_under(Verb::Read, &format!("settings/{prefix}"))?;
        refuse_if_removed(&self.node)?;
        let mut last = 0u64;
        let reader = self.node.reader().clone();
        let watcher = caller.clone();
        let stream = follow_as(
            caller,
            reader,
            self.feed.subscribe(),
            self.stop.clone(),
            256,
            None,
            move |seen| match seen {
                Applied::Event(event) => match &*event {
                    DomainEvent::Setting(ev)
                        if ev.record().key.starts_with(&prefix)
                            && watcher.allows(Verb::Read, &Object::Setting(&ev.record().key)) =>
                    {
                        last = ev.record().mod_revision;
                        Next::Send(watch_event_of(ev))
                    }
                    _ => Next::Skip,
                },
                other => end_of_watch(other, Some(last)),
            },
        );
        Ok(Response::new(stream))
    }

    async fn effective(&self, req: Request<EffectiveRequest>) -> Result<Response<EffectiveResponse>, Status> {
        let caller = require(
            &req,
            Verb::Read,
            &Object::Resource {
                kind: &req.get_ref().kind,
                name: &req.get_ref().name,
            },
        )?
        .clone();
        let req = req.into_inner();
        check_resource_name(&req.kind, &req.name)?;
        barrier(&self.node, req.stale).await?;
        let reader = self.node.reader();
        let view = reader.view();
        if resources::read_resource(&view, &req.kind, &req.name)
            .map_err(read_status)?
            .is_none()
        {
            return Err(Status::not_found(format!(
                "resource {}/{} not found",
                req.kind, req.name
            )));
        }
        let revision = domain::current_revision(&view).map_err(read_status)?;
        let scoped = scope::in_scope(&view, &req.kind, &req.name).map_err(read_status)?;
        if req.reveal {
            for s in scoped.values().filter(|s| s.secret) {
                caller.require(Verb::Reveal, &Object::Setting(&s.source))?;
            }
        }
        let settings = scoped
            .into_iter()
            .filter(|(key, _)| caller.allows(Verb::Read, &Object::Setting(key)))
            .map(|(key, s)| EffectiveSetting {
                key,
                value: if s.secret && !req.reveal {
                    domain::MASK.to_string()
                } else {
                    s.value
                },
                source: s.source,
                secret: s.secret,
            })
            .collect();
        Ok(Response::new(EffectiveResponse { settings, revision }))
    }
}

/// Checks the resource an Effective request names; the message names the field.
fn check_resource_name(kind_name: &str, name: &str) -> Result<(), Status> {
    if kind_name.is_empty() {
        return Err(invalid("kind: must not be empty".into()));
    }
    kind::check_kind_name(kind_name).map_err(|e| invalid(format!("kind: {e}")))?;
    resources::validate_name(name).map_err(invalid)
}

fn watch_event_of(ev: &SettingEvent) -> WatchEvent {
    let revision = ev.record().mod_revision;
    let (kind, record) = match ev {
        SettingEvent::Put(r) => (watch_event::Type::Put, r),
        SettingEvent::Deleted(r) => (watch_event::Type::Delete, r),
    };
    WatchEvent {
        r#type: kind as i32,
        setting: Some(masked(record.clone())),
        revision,
    }
}
