//! Following the applied state as it changes: the one loop behind every
//! streaming RPC (watches, log follows). It receives the node's applied
//! events, decodes them, and turns the ways a feed can end (the follower fell
//! behind, a snapshot replaced the state, the node is stopping) into calls
//! of the stream's own function, which decides what the client sees.

use std::pin::Pin;
use std::sync::Arc;

use futures::Stream;
use opsd_cluster::{AppliedEvent, ClusterNode, StateReader};
use tokio::sync::broadcast::error::RecvError;
use tokio::sync::{broadcast, mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;
use tonic::Status;

use super::caller::Caller;
use crate::domain::DomainEvent;

/// A stream of answers, as a streaming RPC returns it.
pub type AnswerStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>;

/// What the follower saw next. Built and consumed once per event, never
/// kept, so its size does not matter.
#[derive(Debug)]
#[allow(clippy::large_enum_variant)]
pub enum Applied {
    /// A change was applied (decoded once for every follower).
    Event(Arc<DomainEvent>),
    /// A snapshot replaced this node's state at `index`: events in between
    /// were never published. The feed ends after this.
    SnapshotInstalled {
        /// The snapshot's last log index.
        index: u64,
    },
    /// The follower read too slowly and `missed` events were dropped. The
    /// feed ends after this.
    Lagged {
        /// How many events were dropped.
        missed: u64,
    },
    /// The node is shutting down. The feed ends after this.
    Stopping,
}

/// What a stream does with what the follower saw.
#[derive(Debug)]
pub enum Next<T> {
    /// Nothing for this client; keep following.
    Skip,
    /// Send this and keep following.
    Send(T),
    /// Send this, then end the stream.
    SendLast(T),
    /// End the stream with this error.
    Fail(Status),
    /// End the stream quietly.
    End,
}

/// What a [`Feed`] passes on: an applied event, decoded, or the end of the
/// node's feed.
#[derive(Debug, Clone)]
pub enum Fed {
    /// A change was applied.
    Event(Arc<DomainEvent>),
    /// A snapshot replaced the state at `index`.
    SnapshotInstalled {
        /// The snapshot's last log index.
        index: u64,
    },
    /// The feed itself fell behind the node and dropped `missed` events.
    Lagged {
        /// How many events were dropped.
        missed: u64,
    },
}

/// How many events a follower of a [`Feed`] may fall behind, as of the node's feed.
const FEED_CAPACITY: usize = 4096;

/// A node's applied events, each decoded once for every stream following
/// them (a hundred watches need not decode every event a hundred times).
/// Undecodable events are skipped.
#[derive(Clone)]
pub struct Feed(broadcast::Sender<Fed>);

impl Feed {
    /// Starts decoding the events `node` applies from now on.
    pub fn start(node: &ClusterNode) -> Feed {
        Feed::of(node.subscribe())
    }

    fn of(mut events: broadcast::Receiver<AppliedEvent>) -> Feed {
        let (tx, _) = broadcast::channel(FEED_CAPACITY);
        let feed = Feed(tx.clone());
        tokio::spawn(async move {
            loop {
                let fed = match events.recv().await {
                    Ok(AppliedEvent::Applied { event, .. }) => match DomainEvent::decode(&event) {
                        Ok(event) => Fed::Event(Arc::new(event)),
                        Err(_) => continue,
                    },
                    Ok(AppliedEvent::SnapshotInstalled { index }) => Fed::SnapshotInstalled { index },
                    Err(RecvError::Lagged(missed)) => Fed::Lagged { missed },
                    Err(RecvError::Closed) => return,
                };
                // No follower is fine.
                let _ = tx.send(fed);
            }
        });
        feed
    }

    /// Follows the events decoded from now on: subscribe before reading the
    /// state a stream starts from, so nothing applied in between is missed.
    pub fn subscribe(&self) -> broadcast::Receiver<Fed> {
        self.0.subscribe()
    }
}

/// Sends `first` (if any), then follows `events` until `next` ends the
/// stream, the feed ends, `stop` turns true or the client goes away.
/// `events` must be subscribed before the state `first` was read from, so
/// nothing applied in between is missed.
pub fn follow<T, F>(
    mut events: broadcast::Receiver<Fed>,
    mut stop: watch::Receiver<bool>,
    buffer: usize,
    first: Option<T>,
    mut next: F,
) -> AnswerStream<T>
where
    T: Send + 'static,
    F: FnMut(Applied) -> Next<T> + Send + 'static,
{
    let (tx, rx) = mpsc::channel(buffer.max(1));
    if let Some(first) = first {
        // The channel is new and has room: this cannot fail.
        let _ = tx.try_send(Ok(first));
    }
    tokio::spawn(async move {
        loop {
            let seen = tokio::select! {
                r = events.recv() => match r {
                    Ok(Fed::Event(event)) => Applied::Event(event),
                    Ok(Fed::SnapshotInstalled { index }) => Applied::SnapshotInstalled { index },
                    Ok(Fed::Lagged { missed }) | Err(RecvError::Lagged(missed)) => Applied::Lagged { missed },
                    Err(RecvError::Closed) => Applied::Stopping,
                },
                _ = stop.wait_for(|s| *s) => Applied::Stopping,
                _ = tx.closed() => return,
            };
            let feed_ended = !matches!(seen, Applied::Event(_));
            let (item, last) = match next(seen) {
                Next::Skip => (None, false),
                Next::Send(v) => (Some(Ok(v)), false),
                Next::SendLast(v) => (Some(Ok(v)), true),
                Next::Fail(status) => (Some(Err(status)), true),
                Next::End => (None, true),
            };
            if let Some(item) = item {
                if tx.send(item).await.is_err() {
                    return;
                }
            }
            if last || feed_ended {
                return;
            }
        }
    });
    Box::pin(ReceiverStream::new(rx))
}

/// As [`follow`], for a stream opened by `caller`: whenever users, roles or
/// tokens change, the caller's token is checked again against `reader`
/// (this node's applied state), and the stream ends with UNAUTHENTICATED
/// once it no longer works (revoked, its user deleted, expired).
pub fn follow_as<T, F>(
    caller: Caller,
    reader: StateReader,
    events: broadcast::Receiver<Fed>,
    stop: watch::Receiver<bool>,
    buffer: usize,
    first: Option<T>,
    mut next: F,
) -> AnswerStream<T>
where
    T: Send + 'static,
    F: FnMut(Applied) -> Next<T> + Send + 'static,
{
    follow(events, stop, buffer, first, move |seen| {
        if matches!(&seen, Applied::Event(e) if matches!(**e, DomainEvent::Security { .. })) {
            if let Err(status) = caller.recheck(&reader) {
                return Next::Fail(status);
            }
        }
        next(seen)
    })
}

/// How a watch ends on what is not an event (skipped): ABORTED when the
/// feed ended and the client must re-read before watching again (`last`,
/// the last revision it was sent, if the watch has revisions), UNAVAILABLE
/// when the node stops.
pub fn end_of_watch<T>(seen: Applied, last: Option<u64>) -> Next<T> {
    match seen {
        Applied::Event(_) => Next::Skip,
        Applied::SnapshotInstalled { index } => Next::Fail(Status::aborted(format!(
            "this node's state was replaced by a snapshot at log index {index}; re-read and watch again"
        ))),
        Applied::Lagged { missed } => {
            let after = last.map(|r| format!(" after revision {r}")).unwrap_or_default();
            Next::Fail(Status::aborted(format!(
                "the watcher fell {missed} changes behind{after}; re-read and watch again"
            )))
        }
        Applied::Stopping => Next::Fail(Status::unavailable("the node is shutting down")),
    }
}

/// A stream of just `first`: what a follower sends when there is nothing
/// left to follow.
pub fn just<T: Send + 'static>(first: T) -> AnswerStream<T> {
    Box::pin(tokio_stream::once(Ok(first)))
}

#[cfg(test)]
mod tests {
    use futures::StreamExt;

    use super::*;
    use crate::domain::settings::{SettingEvent, SettingRecord};
    use crate::domain::{encode, Trigger};

    fn setting(key: &str) -> AppliedEvent {
        let record = SettingRecord {
            key: key.into(),
            value: String::new(),
            create_revision: 1,
            mod_revision: 1,
            version: 1,
            changed: Trigger {
                principal: "p".into(),
                reason: String::new(),
                source: "api".into(),
                at_ms: 1,
            },
            secret: false,
        };
        AppliedEvent::Applied {
            index: 1,
            event: std::sync::Arc::new(encode(&DomainEvent::Setting(SettingEvent::Put(record))).unwrap()),
        }
    }

    fn keys(seen: Applied) -> Next<String> {
        match seen {
            Applied::Event(e) => match &*e {
                DomainEvent::Setting(e) if e.record().key == "last" => Next::SendLast(e.record().key.clone()),
                DomainEvent::Setting(e) if e.record().key.starts_with("a") => Next::Send(e.record().key.clone()),
                _ => Next::Skip,
            },
            Applied::Lagged { missed } => Next::Fail(Status::aborted(format!("missed {missed}"))),
            Applied::SnapshotInstalled { index } => Next::Fail(Status::aborted(format!("snapshot {index}"))),
            Applied::Stopping => Next::Fail(Status::unavailable("stopping")),
        }
    }

    #[tokio::test]
    async fn sends_first_then_what_the_stream_keeps_until_it_ends() {
        let (events, rx) = broadcast::channel(16);
        let (_stopping, stop) = watch::channel(false);
        let stream = follow(Feed::of(rx).subscribe(), stop, 8, Some("first".to_string()), keys);
        for e in [
            setting("a1"),
            setting("b"),
            AppliedEvent::Applied {
                index: 2,
                event: std::sync::Arc::new(vec![0xff]),
            },
            setting("a2"),
            setting("last"),
            setting("a3"),
        ] {
            events.send(e).unwrap();
        }
        let got: Vec<String> = stream.map(|r| r.unwrap()).collect().await;
        assert_eq!(got, ["first", "a1", "a2", "last"]);
    }

    #[tokio::test]
    async fn a_lagging_follower_gets_the_streams_answer_and_ends() {
        // The follower lags behind the feed...
        let (fed, rx) = broadcast::channel(2);
        let (_stopping, stop) = watch::channel(false);
        for k in ["a1", "a2", "a3", "a4"] {
            fed.send(Fed::Event(Arc::new(DomainEvent::Security { what: k.into() })))
                .unwrap();
        }
        let got: Vec<_> = follow(rx, stop, 8, None, keys).collect().await;
        assert_eq!(got.len(), 1, "{got:?}");
        assert_eq!(got[0].as_ref().unwrap_err().message(), "missed 2");

        // ...or the feed behind the node.
        let (events, rx) = broadcast::channel(2);
        let (_stopping, stop) = watch::channel(false);
        for k in ["a1", "a2", "a3", "a4"] {
            events.send(setting(k)).unwrap();
        }
        let follower = Feed::of(rx).subscribe();
        drop(events);
        let got: Vec<_> = follow(follower, stop, 8, None, keys).collect().await;
        assert_eq!(got.len(), 1, "{got:?}");
        assert_eq!(got[0].as_ref().unwrap_err().message(), "missed 2");
    }

    #[tokio::test]
    async fn a_snapshot_or_stopping_ends_the_stream() {
        let (events, rx) = broadcast::channel(4);
        let (_stopping, stop) = watch::channel(false);
        let feed = Feed::of(rx);
        let follower = feed.subscribe();
        events.send(AppliedEvent::SnapshotInstalled { index: 7 }).unwrap();
        events.send(setting("a1")).unwrap();
        let got: Vec<_> = follow(follower, stop, 8, None, keys).collect().await;
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].as_ref().unwrap_err().message(), "snapshot 7");

        let (_fed, rx) = broadcast::channel::<Fed>(4);
        let (stopping, stop) = watch::channel(false);
        let stream = follow(rx, stop, 8, None, keys);
        stopping.send(true).unwrap();
        let got: Vec<_> = stream.collect().await;
        assert_eq!(got[0].as_ref().unwrap_err().code(), tonic::Code::Unavailable);
    }
}
