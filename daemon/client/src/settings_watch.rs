//! A settings watch that outlives the node serving it. `Settings.Watch`
//! streams changes from the moment of the call and the server keeps no
//! history to replay from a revision, so a watch that broke (its node died,
//! or it fell behind and was ended with ABORTED) is resumed the way the API
//! documents: watch again through the next node, then re-read the prefix and
//! report what changed meanwhile. The re-read is linearizable at some
//! revision R, so it covers every change up to R: the new stream's events up
//! to R are dropped as already reported. The watch keeps the `mod_revision`
//! of every key under its prefix to find what the re-read changed. Nothing is
//! reported twice and no change is lost, but changes made while the watch was
//! broken are coalesced (a key written three times shows one PUT of its last
//! value, and a delete shows the revision of the re-read, not of the delete).

use std::collections::BTreeMap;

use opsd_proto::v1::watch_event::Type as EventType;
use opsd_proto::v1::{ListRequest, Setting, WatchEvent, WatchRequest};
use tonic::codec::Streaming;

use crate::{describe_status, is_stream_break, CallError, Nodes, Patience};

/// What [`SettingsWatch::next`] yields.
#[derive(Debug, Clone, PartialEq)]
pub enum WatchItem {
    /// A change to a key under the prefix.
    Event(WatchEvent),
    /// The stream through `addr` broke (`why`) and the watch was resumed
    /// through another node; any events that follow first are what changed
    /// while it was broken.
    Resumed {
        /// The address whose stream broke.
        addr: String,
        /// Why it broke.
        why: String,
    },
}

/// A watch of the settings under a prefix, resumed through the next address
/// whenever its stream breaks (see the module docs).
pub struct SettingsWatch<'a> {
    nodes: &'a Nodes,
    prefix: String,
    /// The position of the address serving the stream.
    served: usize,
    stream: Streaming<WatchEvent>,
    /// Every key under the prefix as last reported, with its mod_revision.
    known: BTreeMap<String, u64>,
    /// The revision up to which a re-read reported every change (0 before
    /// any resume): streamed events up to it are not news.
    covered: u64,
    /// Events found by a re-read, not yet yielded, oldest first.
    pending: Vec<WatchEvent>,
}

impl<'a> SettingsWatch<'a> {
    /// Starts watching `prefix` (all keys if empty) through the first address
    /// that answers, then reads what is under it, so that later changes can
    /// be told from what was already there.
    pub async fn open(nodes: &'a Nodes, prefix: &str) -> Result<SettingsWatch<'a>, CallError> {
        let (served, stream) = open_stream(nodes, 0, Patience::NONE, prefix).await?;
        let mut watch = SettingsWatch {
            nodes,
            prefix: prefix.to_string(),
            served,
            stream,
            known: BTreeMap::new(),
            covered: 0,
            pending: Vec::new(),
        };
        // What is there already, for a later re-read to compare with. It
        // reports nothing: the watch starts from now, and every streamed
        // event is news (the stream starts after the watch was registered).
        let (listed, _) = watch.list(Patience::NONE).await?;
        watch.known = listed.iter().map(|s| (s.key.clone(), s.mod_revision)).collect();
        Ok(watch)
    }

    /// The next change, or a note that the watch was resumed; `None` when the
    /// server ended the stream. An error means the watch could not go on:
    /// the server refused it, or no node could serve it for a minute.
    pub async fn next(&mut self) -> Result<Option<WatchItem>, CallError> {
        loop {
            if !self.pending.is_empty() {
                return Ok(Some(WatchItem::Event(self.pending.remove(0))));
            }
            match self.stream.message().await {
                Ok(Some(event)) => {
                    if admit(&mut self.known, self.covered, &event) {
                        return Ok(Some(WatchItem::Event(event)));
                    }
                }
                Ok(None) => return Ok(None),
                Err(status) if is_stream_break(&status) => {
                    let addr = self.nodes.addr(self.served).to_string();
                    let why = describe_status(&status);
                    self.resume().await?;
                    return Ok(Some(WatchItem::Resumed { addr, why }));
                }
                Err(status) => return Err(CallError::Status(status)),
            }
        }
    }

    /// Watches again through the next address, then re-reads the prefix and
    /// queues what changed while the stream was broken.
    async fn resume(&mut self) -> Result<(), CallError> {
        let (served, stream) = open_stream(self.nodes, self.served + 1, Patience::default(), &self.prefix).await?;
        self.served = served;
        self.stream = stream;
        let (listed, revision) = self.list(Patience::default()).await?;
        self.pending = resync(&mut self.known, &listed, revision);
        self.covered = self.covered.max(revision);
        Ok(())
    }

    /// The settings under the prefix (linearizable) and the revision read at.
    async fn list(&self, patience: Patience) -> Result<(Vec<Setting>, u64), CallError> {
        let request = ListRequest {
            prefix: self.prefix.clone(),
            stale: false,
        };
        let (_, answer) = self
            .nodes
            .call_patiently(self.served, patience, |mut api| {
                let request = request.clone();
                async move { api.settings.list(request).await }
            })
            .await?;
        Ok((answer.settings, answer.revision))
    }
}

async fn open_stream(
    nodes: &Nodes,
    first: usize,
    patience: Patience,
    prefix: &str,
) -> Result<(usize, Streaming<WatchEvent>), CallError> {
    let request = WatchRequest {
        prefix: prefix.to_string(),
    };
    nodes
        .call_patiently(first, patience, |mut api| {
            let request = request.clone();
            async move { api.settings.watch(request).await }
        })
        .await
}

/// Whether a streamed event is news: not if a re-read already covered its
/// revision. News is recorded in `known`.
fn admit(known: &mut BTreeMap<String, u64>, covered: u64, event: &WatchEvent) -> bool {
    if event.revision <= covered {
        return false;
    }
    if let Some(setting) = &event.setting {
        if event.r#type == EventType::Delete as i32 {
            known.remove(&setting.key);
        } else {
            known.insert(setting.key.clone(), event.revision);
        }
    }
    true
}

/// What changed between what was reported (`known`) and a re-read
/// (`listed`, served at `revision`), as events in revision order: a PUT for
/// each key new or changed, then a DELETE for each key gone. Updates `known`.
fn resync(known: &mut BTreeMap<String, u64>, listed: &[Setting], revision: u64) -> Vec<WatchEvent> {
    let mut events: Vec<WatchEvent> = listed
        .iter()
        .filter(|s| known.get(&s.key) != Some(&s.mod_revision))
        .map(|s| WatchEvent {
            r#type: EventType::Put as i32,
            setting: Some(s.clone()),
            revision: s.mod_revision,
        })
        .collect();
    events.sort_by_key(|e| e.revision);
    let present: std::collections::BTreeSet<&str> = listed.iter().map(|s| s.key.as_str()).collect();
    for key in known.keys().filter(|k| !present.contains(k.as_str())) {
        events.push(WatchEvent {
            r#type: EventType::Delete as i32,
            setting: Some(Setting {
                key: key.clone(),
                mod_revision: revision,
                ..Setting::default()
            }),
            revision,
        });
    }
    *known = listed.iter().map(|s| (s.key.clone(), s.mod_revision)).collect();
    events
}

#[cfg(test)]
mod tests {
    use super::*;

    fn setting(key: &str, value: &str, rev: u64) -> Setting {
        Setting {
            key: key.into(),
            value: value.into(),
            create_revision: rev,
            mod_revision: rev,
            version: 1,
            ..Default::default()
        }
    }

    fn event(kind: EventType, key: &str, rev: u64) -> WatchEvent {
        WatchEvent {
            r#type: kind as i32,
            setting: Some(setting(key, "v", rev)),
            revision: rev,
        }
    }

    #[test]
    fn a_reread_reports_puts_in_revision_order_then_deletes() {
        let mut known = BTreeMap::from([("a".to_string(), 3), ("b".to_string(), 4), ("gone".to_string(), 5)]);
        let listed = [setting("a", "3", 3), setting("b", "new", 9), setting("c", "new", 7)];
        let events = resync(&mut known, &listed, 10);
        let summary: Vec<(i32, &str, u64)> = events
            .iter()
            .map(|e| (e.r#type, e.setting.as_ref().unwrap().key.as_str(), e.revision))
            .collect();
        let (put, delete) = (EventType::Put as i32, EventType::Delete as i32);
        assert_eq!(summary, [(put, "c", 7), (put, "b", 9), (delete, "gone", 10)]);
        assert_eq!(
            known,
            BTreeMap::from([("a".into(), 3), ("b".into(), 9), ("c".into(), 7)])
        );
    }

    #[test]
    fn streamed_events_already_covered_by_a_reread_are_dropped() {
        let mut known = BTreeMap::from([("b".to_string(), 9)]);
        // Before any resume every event is news.
        assert!(admit(&mut known, 0, &event(EventType::Put, "a", 2)));
        // After a re-read at 10, the new stream's events up to 10 are not...
        assert!(!admit(&mut known, 10, &event(EventType::Put, "b", 9)));
        assert!(!admit(&mut known, 10, &event(EventType::Delete, "a", 10)));
        assert_eq!(known, BTreeMap::from([("a".into(), 2), ("b".into(), 9)]));
        // ...later ones are, and are recorded.
        assert!(admit(&mut known, 10, &event(EventType::Put, "b", 11)));
        assert!(admit(&mut known, 10, &event(EventType::Delete, "a", 12)));
        assert_eq!(known, BTreeMap::from([("b".into(), 11)]));
    }
}
