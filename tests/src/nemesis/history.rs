//! What clients did and what they were told: every settings operation with
//! its start, its end and its outcome, as the checker needs it. The outcome
//! of a failed call is classified by what the API promises about it: some
//! errors mean "not applied", others mean "unknown" (it may have happened,
//! or may still), and the checker must allow both for those.

use std::error::Error as _;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use tonic::{Code, Status};

/// The client id of the reads made after healing, once the workload stopped.
pub const FINAL_CLIENT: usize = usize::MAX;

/// What an operation asked for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Call {
    /// `Settings.Put` without an expected revision.
    Put {
        /// The value written; unique among all writes of a run.
        value: String,
    },
    /// `Settings.Put` with `expected_revision` (0: the key must be absent).
    Cas {
        /// The revision the key must be at.
        expected: u64,
        /// The value written; unique among all writes of a run.
        value: String,
    },
    /// A linearizable `Settings.Get` (or one key of a linearizable `List`).
    Read,
}

/// What an operation was told.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// A write was acknowledged at `revision`; `previous` is the key's value
    /// and mod_revision just before it, as the server reported.
    Written {
        /// The revision of the write (the store's change counter).
        revision: u64,
        /// The setting before the write, if the key existed.
        previous: Option<(String, u64)>,
    },
    /// A read answered: the value and mod_revision, or absent.
    Read {
        /// The setting, if the key exists.
        value: Option<(String, u64)>,
    },
    /// A compare-and-set whose condition did not hold: decided by the
    /// replicated apply, so certainly without effect.
    Refused {
        /// The server's message.
        why: String,
    },
    /// Certainly not applied: refused before it reached the log (no leader
    /// reachable, connection refused, a removed node).
    Failed {
        /// The error, described.
        why: String,
    },
    /// The outcome is unknown: it may have been applied, or may still be.
    Unknown {
        /// The error, described.
        why: String,
    },
}

/// One operation as the client saw it.
#[derive(Clone, Debug)]
pub struct Op {
    /// The order in which operations were recorded.
    pub id: usize,
    /// Which client made it ([`FINAL_CLIENT`] for the final reads).
    pub client: usize,
    /// The node's client address it was sent to.
    pub node: String,
    /// The key.
    pub key: String,
    /// What it asked for.
    pub call: Call,
    /// When it was sent, since the run's start.
    pub start: Duration,
    /// When the answer (or the error) came, since the run's start.
    pub end: Duration,
    /// What it was told.
    pub outcome: Outcome,
}

impl Op {
    /// The value this operation writes, if it is a write.
    pub fn written_value(&self) -> Option<&str> {
        match &self.call {
            Call::Put { value } | Call::Cas { value, .. } => Some(value),
            Call::Read => None,
        }
    }

    /// True for a write the cluster acknowledged.
    pub fn acknowledged(&self) -> bool {
        matches!(self.outcome, Outcome::Written { .. })
    }

    /// A one-line description for anomaly reports.
    pub fn describe(&self) -> String {
        let client = if self.client == FINAL_CLIENT {
            "final".to_string()
        } else {
            format!("c{}", self.client)
        };
        let call = match &self.call {
            Call::Put { value } => format!("put {value:?}"),
            Call::Cas { expected, value } => format!("cas @{expected} -> {value:?}"),
            Call::Read => "read".to_string(),
        };
        let outcome = match &self.outcome {
            Outcome::Written { revision, previous } => format!("ok @{revision} (previous {previous:?})"),
            Outcome::Read { value } => format!("read {value:?}"),
            Outcome::Refused { why } => format!("refused: {why}"),
            Outcome::Failed { why } => format!("failed: {why}"),
            Outcome::Unknown { why } => format!("unknown: {why}"),
        };
        format!(
            "#{} {client} via {} [{:.3}s..{:.3}s] {} {call}: {outcome}",
            self.id,
            self.node,
            self.start.as_secs_f64(),
            self.end.as_secs_f64(),
            self.key
        )
    }

    /// The operation as one JSON object, for the history file.
    pub fn to_json(&self) -> serde_json::Value {
        let (call, value, expected) = match &self.call {
            Call::Put { value } => ("put", Some(value.as_str()), None),
            Call::Cas { expected, value } => ("cas", Some(value.as_str()), Some(*expected)),
            Call::Read => ("read", None, None),
        };
        let outcome = match &self.outcome {
            Outcome::Written { revision, previous } => {
                serde_json::json!({"type": "ok", "revision": revision, "previous": previous})
            }
            Outcome::Read { value } => serde_json::json!({"type": "ok", "read": value}),
            Outcome::Refused { why } => serde_json::json!({"type": "refused", "why": why}),
            Outcome::Failed { why } => serde_json::json!({"type": "failed", "why": why}),
            Outcome::Unknown { why } => serde_json::json!({"type": "unknown", "why": why}),
        };
        serde_json::json!({
            "id": self.id,
            "client": if self.client == FINAL_CLIENT { -1 } else { self.client as i64 },
            "node": self.node,
            "key": self.key,
            "call": call,
            "value": value,
            "expected": expected,
            "start_ms": self.start.as_secs_f64() * 1000.0,
            "end_ms": self.end.as_secs_f64() * 1000.0,
            "outcome": outcome,
        })
    }
}

/// The shared record of a run's operations, appended to by every client.
pub struct History {
    t0: Instant,
    ops: Mutex<Vec<Op>>,
}

impl History {
    /// An empty history whose clock starts now.
    pub fn new() -> History {
        History {
            t0: Instant::now(),
            ops: Mutex::new(Vec::new()),
        }
    }

    /// When the history started: `start` and `end` are measured from here.
    pub fn started(&self) -> Instant {
        self.t0
    }

    /// Time since the history started: what `start` and `end` are measured in.
    pub fn now(&self) -> Duration {
        self.t0.elapsed()
    }

    /// Records an operation; returns its id.
    #[allow(clippy::too_many_arguments)]
    pub fn record(
        &self,
        client: usize,
        node: &str,
        key: &str,
        call: Call,
        start: Duration,
        end: Duration,
        outcome: Outcome,
    ) -> usize {
        let mut ops = self.ops.lock().unwrap_or_else(|e| e.into_inner());
        let id = ops.len();
        ops.push(Op {
            id,
            client,
            node: node.to_string(),
            key: key.to_string(),
            call,
            start,
            end,
            outcome,
        });
        id
    }

    /// A copy of every operation recorded so far, in record order.
    pub fn ops(&self) -> Vec<Op> {
        self.ops.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

impl Default for History {
    fn default() -> Self {
        History::new()
    }
}

/// How sure we are about a failed call.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ErrorClass {
    /// Certainly not applied.
    NotApplied,
    /// A compare-and-set (or an event) refused by the replicated state: no effect.
    Refused,
    /// May have been applied.
    Unknown,
}

/// What a failed call means for its effect, by the API's documented codes:
///
/// - errors raised in this process (the status carries a source) are
///   "not applied" only when the connection could not be made at all; a
///   timeout or a connection broken after sending is unknown;
/// - UNAVAILABLE from the server is "not applied" (docs/cluster.md: no
///   leader reachable, it was not applied); INVALID_ARGUMENT never reaches
///   the log; FAILED_PRECONDITION from a removed node is a refusal to serve;
/// - FAILED_PRECONDITION naming `expected_revision` is a compare-and-set
///   refused by the apply (the message the settings apply gives);
/// - everything else (DEADLINE_EXCEEDED above all) is unknown.
pub fn classify(status: &Status) -> ErrorClass {
    if let Some(mut source) = status.source() {
        loop {
            if source.downcast_ref::<tonic::ConnectError>().is_some() {
                return ErrorClass::NotApplied;
            }
            match source.source() {
                Some(next) => source = next,
                None => return ErrorClass::Unknown,
            }
        }
    }
    match status.code() {
        Code::Unavailable | Code::InvalidArgument => ErrorClass::NotApplied,
        Code::FailedPrecondition if status.message().contains("was removed") => ErrorClass::NotApplied,
        Code::FailedPrecondition if status.message().contains("expected_revision") => ErrorClass::Refused,
        _ => ErrorClass::Unknown,
    }
}

/// A short description of an error for the history: code and message.
pub fn describe(status: &Status) -> String {
    let mut s = format!("{:?}: {}", status.code(), status.message());
    if s.len() > 200 {
        let mut cut = 200;
        while !s.is_char_boundary(cut) {
            cut -= 1;
        }
        s.truncate(cut);
        s.push('…');
    }
    s
}

/// The outcome of a failed write, by [`classify`].
pub fn write_failure(status: &Status) -> Outcome {
    let why = describe(status);
    match classify(status) {
        ErrorClass::NotApplied => Outcome::Failed { why },
        ErrorClass::Refused => Outcome::Refused { why },
        ErrorClass::Unknown => Outcome::Unknown { why },
    }
}
