//! The Settings service.

use std::pin::Pin;

use futures::Stream;
use opsd_cluster::{AppliedEvent, ClusterNode};
use opsd_proto::v1::settings_server::Settings;
use opsd_proto::v1::{
    watch_event, DeleteRequest, DeleteResponse, GetRequest, GetResponse, ListRequest, ListResponse, PutRequest,
    PutResponse, Setting, WatchEvent, WatchRequest,
};
use tokio::sync::broadcast::error::RecvError;
use tokio::sync::{mpsc, watch};
use tonic::{Request, Response, Status};

use super::{barrier, propose, read_status, refuse_if_removed};
use crate::domain::settings::{self as domain, SettingEvent, SettingRecord};
use crate::domain::{Command, DomainEvent, Outcome};

/// Serves settings from a cluster node.
pub struct SettingsService {
    node: ClusterNode,
    stop: watch::Receiver<bool>,
}

impl SettingsService {
    /// A service backed by `node`; open watches end when `stop` turns true.
    pub fn new(node: ClusterNode, stop: watch::Receiver<bool>) -> Self {
        SettingsService { node, stop }
    }
}

fn to_proto(r: SettingRecord) -> Setting {
    Setting {
        key: r.key,
        value: r.value,
        create_revision: r.create_revision,
        mod_revision: r.mod_revision,
        version: r.version,
    }
}

fn invalid(e: String) -> Status {
    Status::invalid_argument(e)
}

type WatchStream = Pin<Box<dyn Stream<Item = Result<WatchEvent, Status>> + Send>>;

#[tonic::async_trait]
impl Settings for SettingsService {
    async fn put(&self, req: Request<PutRequest>) -> Result<Response<PutResponse>, Status> {
        let req = req.into_inner();
        domain::validate_key(&req.key).map_err(invalid)?;
        domain::validate_value(&req.value).map_err(invalid)?;
        let cmd = Command::PutSetting {
            key: req.key,
            value: req.value,
            expected_revision: req.expected_revision,
        };
        match propose(&self.node, cmd).await? {
            (_, Outcome::SettingPut { previous, revision }) => Ok(Response::new(PutResponse {
                revision,
                previous: previous.map(to_proto),
            })),
            (_, other) => Err(Status::internal(format!("unexpected outcome of a put: {other:?}"))),
        }
    }

    async fn get(&self, req: Request<GetRequest>) -> Result<Response<GetResponse>, Status> {
        let req = req.into_inner();
        domain::validate_key(&req.key).map_err(invalid)?;
        barrier(&self.node, req.stale).await?;
        let reader = self.node.reader();
        let view = reader.view();
        let revision = domain::current_revision(&view).map_err(read_status)?;
        match domain::read(&view, &req.key).map_err(read_status)? {
            Some(r) => Ok(Response::new(GetResponse {
                setting: Some(to_proto(r)),
                revision,
            })),
            None => Err(Status::not_found(format!("setting {:?} not found", req.key))),
        }
    }

    async fn list(&self, req: Request<ListRequest>) -> Result<Response<ListResponse>, Status> {
        let req = req.into_inner();
        if req.prefix.len() > domain::MAX_KEY_BYTES {
            return Err(invalid(format!(
                "prefix: {} bytes is longer than the key limit of {}",
                req.prefix.len(),
                domain::MAX_KEY_BYTES
            )));
        }
        barrier(&self.node, req.stale).await?;
        let reader = self.node.reader();
        let view = reader.view();
        let revision = domain::current_revision(&view).map_err(read_status)?;
        let settings = domain::list(&view, &req.prefix).map_err(read_status)?;
        Ok(Response::new(ListResponse {
            settings: settings.into_iter().map(to_proto).collect(),
            revision,
        }))
    }

    async fn delete(&self, req: Request<DeleteRequest>) -> Result<Response<DeleteResponse>, Status> {
        let req = req.into_inner();
        domain::validate_key(&req.key).map_err(invalid)?;
        let cmd = Command::DeleteSetting {
            key: req.key,
            expected_revision: req.expected_revision,
        };
        match propose(&self.node, cmd).await? {
            (_, Outcome::SettingDeleted { previous, revision }) => Ok(Response::new(DeleteResponse {
                revision,
                previous: Some(to_proto(previous)),
            })),
            (_, other) => Err(Status::internal(format!("unexpected outcome of a delete: {other:?}"))),
        }
    }

    type WatchStream = WatchStream;

    async fn watch(&self, req: Request<WatchRequest>) -> Result<Response<Self::WatchStream>, Status> {
        let prefix = req.into_inner().prefix;
        if prefix.len() > domain::MAX_KEY_BYTES {
            return Err(invalid(format!(
                "prefix: longer than the key limit of {}",
                domain::MAX_KEY_BYTES
            )));
        }
        refuse_if_removed(&self.node)?;
        let mut events = self.node.subscribe();
        let mut stop = self.stop.clone();
        let (tx, rx) = mpsc::channel(256);
        tokio::spawn(async move {
            let mut last = 0u64;
            loop {
                let received = tokio::select! {
                    r = events.recv() => r,
                    _ = stop.wait_for(|s| *s) => Err(RecvError::Closed),
                };
                let item = match received {
                    Ok(AppliedEvent::Applied { event, .. }) => {
                        let Ok(DomainEvent::Setting(ev)) = DomainEvent::decode(&event) else {
                            continue;
                        };
                        if !ev.record().key.starts_with(&prefix) {
                            continue;
                        }
                        last = ev.record().mod_revision;
                        Ok(watch_event_of(ev))
                    }
                    Ok(AppliedEvent::SnapshotInstalled { index }) => Err(Status::aborted(format!(
                        "this node's state was replaced by a snapshot at log index {index}; re-read and watch again"
                    ))),
                    Err(RecvError::Lagged(n)) => Err(Status::aborted(format!(
                        "the watcher fell {n} changes behind after revision {last}; re-read and watch again"
                    ))),
                    Err(RecvError::Closed) => Err(Status::unavailable("the node is shutting down")),
                };
                let end = item.is_err();
                if tx.send(item).await.is_err() || end {
                    return;
                }
            }
        });
        Ok(Response::new(Box::pin(tokio_stream::wrappers::ReceiverStream::new(rx))))
    }
}

fn watch_event_of(ev: SettingEvent) -> WatchEvent {
    let revision = ev.record().mod_revision;
    let (kind, record) = match ev {
        SettingEvent::Put(r) => (watch_event::Type::Put, r),
        SettingEvent::Deleted(r) => (watch_event::Type::Delete, r),
    };
    WatchEvent {
        r#type: kind as i32,
        setting: Some(to_proto(record)),
        revision,
    }
}
