//! The product's replicated state: every change is a [`Command`], decoded and
//! applied in one place. Apply is deterministic: it reads only the transaction
//! it is given, and it re-validates every command against the stored state
//! (another proposal may have won), answering with a rejection, never a panic.

pub mod kind;
pub mod mask;
pub mod pki;
pub mod resources;
pub mod scope;
pub mod security;
pub mod settings;
pub mod stats;
#[cfg(test)]
pub(crate) mod test_kinds;

use std::collections::BTreeMap;

use opsd_cluster::{EntryInfo, StateMachineApp, Txn, TxnError};
use serde::{Deserialize, Serialize};

use kind::Kind;
use resources::{settle, ResourceRecord, RunEnd, RunRecord};

/// The tables the domain keeps, one rocksdb column family each.
pub const TABLES: &[&str] = &[
    settings::TABLE,
    settings::META,
    resources::KINDS,
    resources::RESOURCES,
    resources::STATE_COUNTS,
    resources::RUNS,
    resources::RUNS_BY_RESOURCE,
    resources::RUNNING,
    resources::RUN_LOGS,
    resources::RUN_COUNTER,
    stats::FINISHED,
    stats::BUCKETS,
    security::ROLES,
    security::USERS,
    security::TOKENS,
    security::META,
    pki::TABLE,
];

/// The format of an encoded command: its first byte. Format 1 is the bare
/// bincode of [`legacy::Command`], written by builds before this envelope
/// and still read. Format 2 is a flags byte, then the bincode of [`Command`]
/// with nothing after it. Format 3 is format 2 for a command that may start
/// a run ([`Command::starts_runs`]): such commands share log entries, and
/// their runs take their ids from the run counter, which builds that read
/// only formats 1 and 2 do not keep (they gave a run its entry's index, so
/// two runs of one entry would get one id): they stop on it instead. Every
/// later format keeps the flags byte second, so that a build which cannot
/// read a format can still tell whether it may skip the command.
const FORMAT_LEGACY: u8 = 1;
const FORMAT: u8 = 2;
const FORMAT_RUNS: u8 = 3;

/// Flags bit: a node that cannot decode this command skips it (answering
/// [`Outcome::Skipped`]) rather than stopping. Other bits are reserved.
const FLAG_IGNORABLE: u8 = 0x01;

/// Part of the message of a node that stops on a command it cannot decode,
/// so an operator (and a test) can find it in the logs.
pub const OLDER_THAN_CLUSTER: &str = "this node is older than the cluster";

/// Every replicated change. New variants go at the end (the encoding numbers
/// variants in order), and a new variant or field may be proposed only once
/// every node of the cluster decodes it (docs/cluster.md, "Upgrading").
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Command {
    /// Set a setting, optionally only if its revision is as expected.
    PutSetting {
        /// The key.
        key: String,
        /// The value.
        value: String,
        /// Compare-and-set: the key's mod_revision must equal this (0: absent).
        expected_revision: Option<u64>,
        /// Who asked, why, and when; recorded on the setting.
        trigger: Trigger,
    },
    /// Delete a setting, optionally only if its revision is as expected.
    DeleteSetting {
        /// The key.
        key: String,
        /// Compare-and-delete: the key's mod_revision must equal this.
        expected_revision: Option<u64>,
        /// Who asked, why, and when; published with the delete.
        trigger: Trigger,
    },
    /// Register or update a kind: its source, and the kind the leader
    /// compiled from it ([`resources::compile_kind`]), which apply stores
    /// as it is, so no node's parser decides.
    PutKind {
        /// The kind file.
        source: String,
        /// The kind compiled from it.
        kind: Kind,
    },
    /// Create a resource in its kind's initial state.
    CreateResource {
        /// The kind.
        kind: String,
        /// The name, unique per kind.
        name: String,
        /// The spec, a JSON object as text.
        spec_json: String,
        /// Labels.
        labels: BTreeMap<String, String>,
        /// Who asked, why, and when.
        trigger: Trigger,
    },
    /// Do an event to a resource.
    DoEvent {
        /// The kind.
        kind: String,
        /// The name.
        name: String,
        /// The event.
        event: String,
        /// The event's arguments, passed to the steps it starts.
        args: BTreeMap<String, String>,
        /// Who asked, why, and when.
        trigger: Trigger,
    },
    /// Remove a resource that rests in a final state.
    DeleteResource {
        /// The kind.
        kind: String,
        /// The name.
        name: String,
    },
    /// End a running run: its step's result, reported by the attempt that ran it.
    FinishRun {
        /// The run's index (its id is `r<index>`).
        run: u64,
        /// The attempt reporting; a stale attempt's finish is rejected.
        attempt: u32,
        /// How the step ended.
        end: RunEnd,
        /// When, by the proposer's clock.
        at_ms: i64,
    },
    /// A new leader takes over a run still running: the attempt goes up by one
    /// and the entry's leader becomes its executor.
    TakeOverRun {
        /// The run's index.
        run: u64,
        /// The new attempt: the stored attempt + 1.
        attempt: u32,
    },
    /// Ask a running run to stop.
    CancelRun {
        /// The run's index.
        run: u64,
        /// Who asked, why, and when.
        trigger: Trigger,
    },
    /// Append log lines to a running run's log.
    AppendRunLog {
        /// The run's index.
        run: u64,
        /// The attempt writing them.
        attempt: u32,
        /// The lines.
        lines: Vec<String>,
    },
    /// Install a built-in kind (compiled into the proposing build) into the
    /// replicated kinds, so every node applies the same definition whatever
    /// its own build embeds. Proposed by a leader whose built-in kinds are of
    /// a newer revision than the stored ones.
    PutBuiltinKind {
        /// The kind file, as embedded.
        source: String,
        /// The kind compiled from it.
        kind: Kind,
        /// The proposer's [`resources::BUILTIN_REVISION`]: apply keeps the
        /// newest, so an older leader never brings an old definition back.
        revision: u64,
    },
    /// Set a setting and say whether it is secret: [`Command::PutSetting`]
    /// with the flag (proposed only for a put that sets it, so a cluster
    /// that never marks a secret never needs a build that decodes this).
    PutSettingV2 {
        /// The key.
        key: String,
        /// The value.
        value: String,
        /// Compare-and-set: the key's mod_revision must equal this (0: absent).
        expected_revision: Option<u64>,
        /// Who asked, why, and when; recorded on the setting.
        trigger: Trigger,
        /// Whether the setting is secret from now on; `None` keeps what it was.
        secret: Option<bool>,
    },
    /// Make the `admin` role, the `admin` user and its first token (the
    /// bootstrap's `admin.token`). Applied once; a second is a no-op.
    InitSecurity {
        /// The admin token's id.
        admin_token_id: String,
        /// SHA-256 of its secret (made by the proposer, never replicated).
        admin_token_hash: Vec<u8>,
        /// When, by the proposer's clock.
        at_ms: i64,
    },
    /// Create or replace a role (not `admin`); the rules are re-parsed by apply.
    PutRole {
        /// The name.
        name: String,
        /// The rules, in text form (`VERB[,VERB...]:PATTERN`).
        rules: Vec<String>,
    },
    /// Remove a role nobody holds.
    DeleteRole {
        /// The name.
        name: String,
    },
    /// Create a user holding existing roles.
    CreateUser {
        /// The name.
        name: String,
        /// Its roles.
        roles: Vec<String>,
        /// When, by the proposer's clock.
        at_ms: i64,
    },
    /// Delete a user and revoke its tokens (never the last admin).
    DeleteUser {
        /// The name.
        name: String,
    },
    /// Create a token; its secret was made by the proposer, only its hash is here.
    CreateToken {
        /// The token as stored.
        token: security::TokenRecord,
    },
    /// Revoke (delete) a token.
    RevokeToken {
        /// The token's id.
        id: String,
    },
    /// Set the cluster CA (once), proposed by the bootstrap node: its key is
    /// replicated so that any member can sign a joining node's certificate.
    SetClusterCa {
        /// The CA certificate, PEM.
        cert_pem: String,
        /// The CA's private key, PEM.
        key_pem: String,
    },
    /// Record a join token (only the SHA-256 of its secret).
    CreateJoinToken {
        /// The token's id, 16 hex digits.
        id: String,
        /// The SHA-256 of its secret, hex.
        secret_sha256: String,
        /// When it expires, ms since the Unix epoch (the proposer's clock + TTL).
        expires_at_ms: i64,
        /// Who made it.
        created_by: String,
    },
    /// Spend a join token for a node (again for the same node: no change).
    UseJoinToken {
        /// The token's id.
        id: String,
        /// The SHA-256 of the secret presented.
        secret_sha256: String,
        /// The node it is spent by.
        node_id: u64,
        /// When, by the proposer's clock: compared against the expiry.
        at_ms: i64,
    },
}

/// Who asked for a change, why, from where, and when (by the proposer's clock).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Trigger {
    /// The user or service that asked.
    pub principal: String,
    /// Why, in their words (may be empty).
    pub reason: String,
    /// `api`, `schedule` or `recovery`.
    pub source: String,
    /// Milliseconds since the Unix epoch.
    pub at_ms: i64,
}

impl Trigger {
    /// The trigger of a change made by a build that recorded none (settings
    /// written before settings were audited): empty, the same on every node.
    pub fn unrecorded() -> Trigger {
        Trigger {
            principal: String::new(),
            reason: String::new(),
            source: String::new(),
            at_ms: 0,
        }
    }
}

/// Something that changed, published to the engine and to watchers once it
/// is written.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum DomainEvent {
    /// A setting changed.
    Setting(settings::SettingEvent),
    /// A kind was registered or updated.
    Kind {
        /// The kind's name.
        name: String,
    },
    /// A resource was created or changed: the record after the change.
    Resource(ResourceRecord),
    /// A resource was removed: the record as it was.
    ResourceDeleted(ResourceRecord),
    /// A run started or changed: the record after the change.
    Run(RunRecord),
    /// Lines were appended to a run's log.
    RunLog {
        /// The run's index.
        run: u64,
        /// The resource's kind.
        kind: String,
        /// The resource's name.
        name: String,
        /// The position of the first line in the run's whole log.
        first_line: u64,
        /// The lines.
        lines: Vec<String>,
    },
    /// Users, roles or tokens changed: open streams re-check their token.
    Security {
        /// What changed, in words.
        what: String,
    },
}

impl DomainEvent {
    /// Decodes a published event.
    pub fn decode(bytes: &[u8]) -> Result<DomainEvent, String> {
        bincode::deserialize(bytes).map_err(|e| format!("undecodable event: {e}"))
    }
}

/// Why apply refused a command; maps onto a gRPC code.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Rejection {
    /// The command names something absent.
    NotFound(String),
    /// The command conflicts with the current state.
    FailedPrecondition(String),
    /// The command would create something that exists.
    AlreadyExists(String),
    /// The command itself is malformed.
    InvalidArgument(String),
}

/// Apply's answer to the proposer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Outcome {
    /// A setting was written.
    SettingPut {
        /// The setting before, if it existed.
        previous: Option<settings::SettingRecord>,
        /// The revision of the write.
        revision: u64,
    },
    /// A setting was deleted.
    SettingDeleted {
        /// The setting before.
        previous: settings::SettingRecord,
        /// The revision of the delete.
        revision: u64,
    },
    /// A kind was registered or updated at `version`.
    KindPut {
        /// The kind's name.
        name: String,
        /// The log index of the change.
        version: u64,
    },
    /// A resource changed (created, or an event done); `run` is the run the
    /// change started, if any.
    ResourceChanged {
        /// The resource after the change.
        resource: ResourceRecord,
        /// The run started by the change.
        run: Option<RunRecord>,
    },
    /// A resource was removed.
    ResourceDeleted {
        /// The resource as it was.
        resource: ResourceRecord,
    },
    /// A run changed (finished, taken over, asked to cancel, log appended).
    RunChanged {
        /// The run after the change.
        run: RunRecord,
    },
    /// Nothing changed, for this reason.
    Rejected(Rejection),
    /// Nothing changed: the command was flagged ignorable and this node
    /// cannot decode it.
    Skipped,
    /// Users, roles or tokens changed.
    SecurityChanged {
        /// What changed, in words.
        what: String,
    },
    /// Nothing changed: security was initialised already.
    SecurityUnchanged,
    /// The cluster CA is set (now, or it was already this one).
    ClusterCaSet,
    /// A join token was recorded.
    JoinTokenCreated {
        /// Its id.
        id: String,
        /// When it expires.
        expires_at_ms: i64,
    },
    /// A join token is spent by `node_id`.
    JoinTokenUsed {
        /// Its id.
        id: String,
        /// The node.
        node_id: u64,
    },
}

/// What decoding a command gives: the command to apply, or an answer
/// decided without applying (a skipped ignorable command; a legacy kind
/// that does not compile).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decoded {
    /// Apply this.
    Apply(Command),
    /// Answer this; nothing changes.
    Answer(Box<Outcome>),
}

/// The bincode options of format 2: as `bincode::serialize`, but decoding
/// refuses bytes left over (a field this build does not know).
fn strict() -> impl bincode::Options {
    use bincode::Options;
    bincode::DefaultOptions::new()
        .with_fixint_encoding()
        .reject_trailing_bytes()
}

impl Command {
    /// Encodes the command for the log (format 2).
    pub fn encode(&self) -> Vec<u8> {
        use bincode::Options;
        let flags = if self.ignorable() { FLAG_IGNORABLE } else { 0 };
        let format = if self.starts_runs() { FORMAT_RUNS } else { FORMAT };
        let mut out = vec![format, flags];
        // Encoding owned strings and integers into a Vec cannot fail.
        out.extend(strict().serialize(self).unwrap_or_default());
        out
    }

    /// Decodes a command from the log. An error means this build cannot
    /// read a command it may not skip: the node must stop (see
    /// [`OLDER_THAN_CLUSTER`]); the message says what it could not read.
    pub fn decode(bytes: &[u8]) -> Result<Decoded, String> {
        use bincode::Options;
        let unreadable = |flags: u8, what: String| {
            if flags & FLAG_IGNORABLE != 0 {
                Ok(Decoded::Answer(Box::new(Outcome::Skipped)))
            } else {
                Err(what)
            }
        };
        match bytes {
            [] => Err("an empty command".into()),
            [FORMAT_LEGACY, body @ ..] => legacy::decode(body),
            [format @ (FORMAT | FORMAT_RUNS), flags, body @ ..] if flags & !FLAG_IGNORABLE == 0 => {
                match strict().deserialize(body) {
                    Ok(command) => Ok(Decoded::Apply(command)),
                    Err(e) => unreadable(*flags, format!("a command of format {format} it does not know: {e}")),
                }
            }
            [format, flags, ..] => unreadable(
                *flags,
                format!(
                    "a command of format {format} with flags {flags:#04x}; this build reads formats 1 to {FORMAT_RUNS}"
                ),
            ),
            [format] => Err(format!("a command of format {format} without flags")),
        }
    }

    /// Whether a node that cannot decode this command may skip it: only a
    /// command whose effect an older node may miss without deciding later
    /// commands differently. None is, yet; a future one (a hint, a cache
    /// warm-up) would say so here.
    pub fn ignorable(&self) -> bool {
        false
    }
}

impl Command {
    /// Whether apply lets this command share its log entry, and so its index,
    /// with other commands: settings writes (each takes the store's next
    /// revision) and the commands of resources and runs (a run takes the next
    /// id of the run counter; resources changed by one entry share its index
    /// as their version, as one transaction).
    pub fn may_share_entry(&self) -> bool {
        matches!(
            self,
            Command::PutSetting { .. }
                | Command::PutSettingV2 { .. }
                | Command::DeleteSetting { .. }
                | Command::AppendRunLog { .. }
                | Command::CreateResource { .. }
                | Command::DoEvent { .. }
                | Command::DeleteResource { .. }
                | Command::FinishRun { .. }
                | Command::TakeOverRun { .. }
                | Command::CancelRun { .. }
        )
    }

    /// Whether applying this command may start a run: it is encoded in
    /// format 3 (see [`FORMAT_RUNS`]).
    pub fn starts_runs(&self) -> bool {
        matches!(
            self,
            Command::CreateResource { .. } | Command::DoEvent { .. } | Command::FinishRun { .. }
        )
    }
}

/// Decodes an apply answer.
pub fn decode_outcome(bytes: &[u8]) -> Result<Outcome, String> {
    bincode::deserialize(bytes).map_err(|e| format!("undecodable apply answer: {e}"))
}

/// The domain's apply function, handed to the cluster.
pub struct Domain;

impl StateMachineApp for Domain {
    /// Applies one command. A command this build cannot decode (and may not
    /// skip) is an `Err`, which stops the node: answering it with a
    /// rejection here while newer nodes apply it would split the cluster.
    fn apply(&self, txn: &mut Txn<'_>, entry: EntryInfo, command: &[u8]) -> Result<Vec<u8>, TxnError> {
        let outcome = match Command::decode(command) {
            Err(what) => {
                return Err(TxnError(format!(
                    "{OLDER_THAN_CLUSTER}: the entry at index {} holds {what}; upgrade this node to the build the \
                     other nodes run",
                    entry.index
                )))
            }
            Ok(Decoded::Answer(outcome)) => *outcome,
            Ok(Decoded::Apply(command)) => apply_command(txn, entry, command)?,
        };
        bincode::serialize(&outcome).map_err(|e| TxnError(format!("encoding the outcome: {e}")))
    }
}

/// Applies one decoded command: its outcome (a rejection too), or the
/// storage failing.
fn apply_command(txn: &mut Txn<'_>, entry: EntryInfo, command: Command) -> Result<Outcome, TxnError> {
    match command {
        Command::PutSetting {
            key,
            value,
            expected_revision,
            trigger,
        } => settings::apply_put(txn, &key, &value, expected_revision, trigger, None),
        Command::PutSettingV2 {
            key,
            value,
            expected_revision,
            trigger,
            secret,
        } => settings::apply_put(txn, &key, &value, expected_revision, trigger, secret),
        Command::DeleteSetting {
            key,
            expected_revision,
            trigger,
        } => settings::apply_delete(txn, &key, expected_revision, trigger),
        Command::PutKind { source, kind } => settle(resources::put_kind(txn, entry.index, source, kind)),
        Command::PutBuiltinKind { source, kind, revision } => {
            settle(resources::put_builtin_kind(txn, entry.index, source, kind, revision))
        }
        Command::CreateResource {
            kind,
            name,
            spec_json,
            labels,
            trigger,
        } => settle(resources::create(txn, entry, &kind, &name, &spec_json, labels, trigger)),
        Command::DoEvent {
            kind,
            name,
            event,
            args,
            trigger,
        } => settle(resources::do_event(txn, entry, &kind, &name, &event, args, trigger)),
        Command::DeleteResource { kind, name } => settle(resources::delete(txn, &kind, &name)),
        Command::FinishRun {
            run,
            attempt,
            end,
            at_ms,
        } => settle(resources::finish_run(txn, entry, run, attempt, end, at_ms)),
        Command::TakeOverRun { run, attempt } => settle(resources::take_over(txn, entry, run, attempt)),
        Command::CancelRun { run, trigger } => settle(resources::cancel(txn, run, trigger)),
        Command::AppendRunLog { run, attempt, lines } => settle(resources::append_log(txn, run, attempt, lines)),
        Command::InitSecurity {
            admin_token_id,
            admin_token_hash,
            at_ms,
        } => security::apply_init(txn, &admin_token_id, &admin_token_hash, at_ms),
        Command::PutRole { name, rules } => security::apply_put_role(txn, &name, &rules),
        Command::DeleteRole { name } => security::apply_delete_role(txn, &name),
        Command::CreateUser { name, roles, at_ms } => security::apply_create_user(txn, &name, &roles, at_ms),
        Command::DeleteUser { name } => security::apply_delete_user(txn, &name),
        Command::CreateToken { token } => security::apply_create_token(txn, token),
        Command::RevokeToken { id } => security::apply_revoke_token(txn, &id),
        Command::SetClusterCa { cert_pem, key_pem } => pki::apply_set_ca(txn, cert_pem, key_pem),
        Command::CreateJoinToken {
            id,
            secret_sha256,
            expires_at_ms,
            created_by,
        } => pki::apply_create_join_token(txn, id, secret_sha256, expires_at_ms, created_by),
        Command::UseJoinToken {
            id,
            secret_sha256,
            node_id,
            at_ms,
        } => pki::apply_use_join_token(txn, &id, &secret_sha256, node_id, at_ms),
    }
}

/// Format 1: the command enum of the builds that wrote it, frozen, so their
/// log entries (a follower upgraded before the leader, an entry not yet
/// applied when the node was upgraded) still apply as those builds applied
/// them. It shares [`RunEnd`] and [`Trigger`] with [`Command`]: a change to
/// either needs a frozen copy here first.
mod legacy {
    use std::collections::BTreeMap;

    use serde::Deserialize;

    use super::kind::Kind;
    use super::resources::RunEnd;
    use super::{Decoded, Outcome, Rejection, Trigger};

    /// The commands of format 1, variant for variant and field for field.
    #[derive(Deserialize)]
    #[cfg_attr(test, derive(serde::Serialize))]
    pub(super) enum Command {
        PutSetting {
            key: String,
            value: String,
            expected_revision: Option<u64>,
        },
        DeleteSetting {
            key: String,
            expected_revision: Option<u64>,
        },
        PutKind {
            source: String,
        },
        CreateResource {
            kind: String,
            name: String,
            spec_json: String,
            labels: BTreeMap<String, String>,
            trigger: Trigger,
        },
        DoEvent {
            kind: String,
            name: String,
            event: String,
            args: BTreeMap<String, String>,
            trigger: Trigger,
        },
        DeleteResource {
            kind: String,
            name: String,
        },
        FinishRun {
            run: u64,
            attempt: u32,
            end: RunEnd,
            at_ms: i64,
        },
        TakeOverRun {
            run: u64,
            attempt: u32,
        },
        CancelRun {
            run: u64,
            trigger: Trigger,
        },
        AppendRunLog {
            run: u64,
            attempt: u32,
            lines: Vec<String>,
        },
    }

    /// The built-in kinds of the builds that wrote format 1: their apply
    /// refused to register kinds of these names.
    const BUILTIN_NAMES: &[&str] = &["image", "cluster"];

    /// The rules those builds' apply checked that kind files no longer meet
    /// in apply (the providers check them at the API now): only their two
    /// providers, a script on every work state of an exec kind and nowhere
    /// else, and no `step` key (they refused keys they did not know).
    fn format_1_rules(kind: &Kind) -> Result<(), String> {
        let at =
            |state: &str, key: &str, msg: &str| Err(format!("kind {:?}: state {state:?}: {key}: {msg}", kind.name));
        if !["exec", "local"].contains(&kind.provider.as_str()) {
            return Err(format!(
                "kind {:?}: provider: unknown provider {:?} (known: exec, local)",
                kind.name, kind.provider
            ));
        }
        for (name, state) in &kind.states {
            match (&state.run, kind.provider.as_str()) {
                (Some(_), "local") => return at(name, "run", "only the exec provider runs scripts"),
                (None, "exec") if state.work => {
                    return at(name, "run", "missing: a work state of an exec kind must have a script")
                }
                _ => {}
            }
            if state.step.is_some() {
                return at(name, "step", "unknown key");
            }
        }
        Ok(())
    }

    /// Decodes a format 1 body (leniently, as those builds did) into today's
    /// command. Their `PutKind` carried only the source, compiled by apply:
    /// it is compiled here, and refused as those builds refused it.
    pub(super) fn decode(body: &[u8]) -> Result<Decoded, String> {
        let old: Command =
            bincode::deserialize(body).map_err(|e| format!("a command of format 1 it cannot read: {e}"))?;
        Ok(Decoded::Apply(match old {
            Command::PutSetting {
                key,
                value,
                expected_revision,
            } => super::Command::PutSetting {
                key,
                value,
                expected_revision,
                trigger: Trigger::unrecorded(),
            },
            Command::DeleteSetting { key, expected_revision } => super::Command::DeleteSetting {
                key,
                expected_revision,
                trigger: Trigger::unrecorded(),
            },
            Command::PutKind { source } => {
                match Kind::parse(&source).and_then(|kind| format_1_rules(&kind).map(|()| kind)) {
                    Ok(kind) if BUILTIN_NAMES.contains(&kind.name.as_str()) => {
                        let refused = Rejection::FailedPrecondition(format!(
                            "kind {:?} is built in and cannot be replaced; choose another name",
                            kind.name
                        ));
                        return Ok(Decoded::Answer(Box::new(Outcome::Rejected(refused))));
                    }
                    Ok(kind) => super::Command::PutKind { source, kind },
                    Err(e) => {
                        return Ok(Decoded::Answer(Box::new(Outcome::Rejected(
                            Rejection::InvalidArgument(e),
                        ))))
                    }
                }
            }
            Command::CreateResource {
                kind,
                name,
                spec_json,
                labels,
                trigger,
            } => super::Command::CreateResource {
                kind,
                name,
                spec_json,
                labels,
                trigger,
            },
            Command::DoEvent {
                kind,
                name,
                event,
                args,
                trigger,
            } => super::Command::DoEvent {
                kind,
                name,
                event,
                args,
                trigger,
            },
            Command::DeleteResource { kind, name } => super::Command::DeleteResource { kind, name },
            Command::FinishRun {
                run,
                attempt,
                end,
                at_ms,
            } => super::Command::FinishRun {
                run,
                attempt,
                end,
                at_ms,
            },
            Command::TakeOverRun { run, attempt } => super::Command::TakeOverRun { run, attempt },
            Command::CancelRun { run, trigger } => super::Command::CancelRun { run, trigger },
            Command::AppendRunLog { run, attempt, lines } => super::Command::AppendRunLog { run, attempt, lines },
        }))
    }

    /// Encodes a command as format 1, as those builds did, for tests.
    #[cfg(test)]
    pub(super) fn encode(command: &Command) -> Vec<u8> {
        let mut out = vec![super::FORMAT_LEGACY];
        out.extend(bincode::serialize(command).unwrap_or_default());
        out
    }
}

/// Encodes a stored record or event.
pub(crate) fn encode<T: Serialize>(v: &T) -> Result<Vec<u8>, TxnError> {
    bincode::serialize(v).map_err(|e| TxnError(format!("encoding: {e}")))
}

/// Decodes a stored record; `what` names it in the error.
pub(crate) fn decode<T: serde::de::DeserializeOwned>(bytes: &[u8], what: &str) -> Result<T, TxnError> {
    bincode::deserialize(bytes).map_err(|e| TxnError(format!("undecodable {what}: {e}")))
}

/// Apply without Raft, for unit tests of every command.
#[cfg(test)]
pub(crate) mod testing {
    use std::sync::Arc;

    use opsd_cluster::{EntryInfo, LocalState};

    use super::*;

    /// A real rocksdb state in a temporary directory, applying commands at
    /// increasing indexes as if committed by `leader`.
    pub struct TestState {
        _dir: tempfile::TempDir,
        /// The state.
        pub state: LocalState,
        /// The index of the last applied command.
        pub index: u64,
        /// The leader the next commands are committed by.
        pub leader: u64,
        /// The term they are committed in.
        pub term: u64,
    }

    impl TestState {
        /// An empty state.
        pub fn new() -> TestState {
            let dir = tempfile::tempdir().unwrap();
            let tables: Vec<String> = TABLES.iter().map(|t| t.to_string()).collect();
            let state = LocalState::open(dir.path(), &tables, Arc::new(Domain)).unwrap();
            TestState {
                _dir: dir,
                state,
                index: 0,
                leader: 1,
                term: 1,
            }
        }

        /// Applies a command at the next index.
        pub fn apply(&mut self, cmd: Command) -> (Outcome, Vec<DomainEvent>) {
            let (answer, events) = self.apply_raw(&cmd.encode());
            (answer, events)
        }

        /// Applies raw command bytes at the next index.
        pub fn apply_raw(&mut self, bytes: &[u8]) -> (Outcome, Vec<DomainEvent>) {
            self.try_apply_raw(bytes).unwrap()
        }

        /// Applies raw command bytes at the next index; an `Err` is what
        /// would stop the node.
        pub fn try_apply_raw(&mut self, bytes: &[u8]) -> Result<(Outcome, Vec<DomainEvent>), TxnError> {
            self.index += 1;
            self.try_apply_raw_shared(bytes)
        }

        /// Applies a command in the entry of the last one, as the next
        /// command of a shared entry.
        pub fn apply_shared(&mut self, cmd: Command) -> (Outcome, Vec<DomainEvent>) {
            self.try_apply_raw_shared(&cmd.encode()).unwrap()
        }

        /// Applies raw command bytes in the entry of the last command (the
        /// first entry if there was none).
        pub fn try_apply_raw_shared(&mut self, bytes: &[u8]) -> Result<(Outcome, Vec<DomainEvent>), TxnError> {
            self.index = self.index.max(1);
            let entry = EntryInfo {
                index: self.index,
                leader: self.leader,
                term: self.term,
            };
            let (answer, events) = self.state.apply(entry, bytes)?;
            let events = events.iter().map(|e| DomainEvent::decode(e).unwrap()).collect();
            Ok((decode_outcome(&answer).unwrap(), events))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::testing::TestState;
    use super::*;

    fn trigger() -> Trigger {
        Trigger {
            principal: "alice".into(),
            reason: String::new(),
            source: "api".into(),
            at_ms: 1000,
        }
    }

    fn put(key: &str) -> Command {
        Command::PutSetting {
            key: key.into(),
            value: "v".into(),
            expected_revision: None,
            trigger: trigger(),
        }
    }

    /// A command of every variant.
    fn every_command() -> Vec<Command> {
        let kind = resources::embedded_kind("image");
        vec![
            put("a"),
            Command::DeleteSetting {
                key: "a".into(),
                expected_revision: Some(3),
                trigger: trigger(),
            },
            Command::PutKind {
                source: "kind = \"x\"".into(),
                kind: kind.clone(),
            },
            Command::CreateResource {
                kind: "image".into(),
                name: "web".into(),
                spec_json: "{}".into(),
                labels: BTreeMap::from([("team".into(), "ops".into())]),
                trigger: trigger(),
            },
            Command::DoEvent {
                kind: "image".into(),
                name: "web".into(),
                event: "rebuild".into(),
                args: BTreeMap::new(),
                trigger: trigger(),
            },
            Command::DeleteResource {
                kind: "image".into(),
                name: "web".into(),
            },
            Command::FinishRun {
                run: 2,
                attempt: 1,
                end: RunEnd::Failed {
                    error: "e".into(),
                    outputs_json: "{}".into(),
                },
                at_ms: 5,
            },
            Command::TakeOverRun { run: 2, attempt: 2 },
            Command::CancelRun {
                run: 2,
                trigger: trigger(),
            },
            Command::AppendRunLog {
                run: 2,
                attempt: 1,
                lines: vec!["x".into()],
            },
            Command::PutBuiltinKind {
                source: "s".into(),
                kind,
                revision: 7,
            },
            Command::InitSecurity {
                admin_token_id: "0123456789abcdef".into(),
                admin_token_hash: vec![1; 32],
                at_ms: 5,
            },
            Command::PutRole {
                name: "r".into(),
                rules: vec!["read:*".into()],
            },
            Command::DeleteRole { name: "r".into() },
            Command::CreateUser {
                name: "u".into(),
                roles: vec!["r".into()],
                at_ms: 5,
            },
            Command::DeleteUser { name: "u".into() },
            Command::CreateToken {
                token: security::TokenRecord {
                    id: "0123456789abcdef".into(),
                    user: "u".into(),
                    secret_sha256: vec![2; 32],
                    created_at_ms: 5,
                    expires_at_ms: Some(9),
                    description: "d".into(),
                },
            },
            Command::RevokeToken {
                id: "0123456789abcdef".into(),
            },
            Command::SetClusterCa {
                cert_pem: "c".into(),
                key_pem: "k".into(),
            },
            Command::CreateJoinToken {
                id: "0123456789abcdef".into(),
                secret_sha256: "ab".repeat(32),
                expires_at_ms: 9,
                created_by: "alice".into(),
            },
            Command::UseJoinToken {
                id: "0123456789abcdef".into(),
                secret_sha256: "ab".repeat(32),
                node_id: 3,
                at_ms: 8,
            },
        ]
    }

    #[test]
    fn every_command_survives_its_encoding() {
        for command in every_command() {
            let bytes = command.encode();
            let format = if command.starts_runs() { FORMAT_RUNS } else { FORMAT };
            assert_eq!(bytes[..2], [format, 0], "{command:?}");
            assert_eq!(Command::decode(&bytes), Ok(Decoded::Apply(command)));
        }
    }

    fn stops(s: &mut TestState, bytes: &[u8]) -> String {
        match s.try_apply_raw(bytes) {
            Err(e) => e.0,
            Ok(answer) => panic!("applied {bytes:?}: {answer:?}"),
        }
    }

    #[test]
    fn a_command_this_build_cannot_decode_stops_the_node_and_changes_nothing() {
        let mut s = TestState::new();
        let mut unknown_variant = vec![FORMAT, 0];
        unknown_variant.extend(999u32.to_le_bytes());
        let mut new_field = put("a").encode();
        new_field.extend(b"a field this build does not know");
        let cases: Vec<(&str, Vec<u8>)> = vec![
            ("an unknown command", unknown_variant),
            ("a known command with a new field", new_field),
            ("a later format", vec![9, 0, 1, 2, 3]),
            ("unknown flags", vec![FORMAT, 0x80, 0, 0, 0, 0]),
            ("a format without flags", vec![9]),
            ("nothing", vec![]),
            ("a format 1 command it cannot read", vec![FORMAT_LEGACY, 99, 0, 0, 0]),
        ];
        for (what, bytes) in cases {
            let e = stops(&mut s, &bytes);
            assert!(e.contains(OLDER_THAN_CLUSTER), "{what}: {e}");
            assert!(e.contains("upgrade this node"), "{what}: {e}");
        }
        // Nothing was written: the first write still gets the first revision.
        let (out, _) = s.apply(put("a"));
        assert!(matches!(out, Outcome::SettingPut { revision: 1, .. }), "{out:?}");
    }

    #[test]
    fn an_ignorable_command_this_build_cannot_decode_is_skipped() {
        let mut s = TestState::new();
        let mut unknown_variant = vec![FORMAT, FLAG_IGNORABLE];
        unknown_variant.extend(999u32.to_le_bytes());
        for bytes in [
            unknown_variant,
            vec![9, FLAG_IGNORABLE, 1, 2],
            vec![9, 0x80 | FLAG_IGNORABLE],
        ] {
            let (out, events) = s.apply_raw(&bytes);
            assert_eq!(out, Outcome::Skipped, "{bytes:?}");
            assert!(events.is_empty());
        }
        // A command it can decode applies, flag or not.
        let mut flagged = put("a").encode();
        flagged[1] = FLAG_IGNORABLE;
        assert!(matches!(
            s.apply_raw(&flagged).0,
            Outcome::SettingPut { revision: 1, .. }
        ));
    }

    #[test]
    fn commands_written_by_earlier_builds_still_apply() {
        let mut s = TestState::new();
        let old_put = legacy::encode(&legacy::Command::PutSetting {
            key: "a".into(),
            value: "1".into(),
            expected_revision: None,
        });
        // As those builds wrote it: bincode of the enum after the format byte.
        let mut by_hand = vec![FORMAT_LEGACY];
        by_hand.extend(bincode::serialize(&(0u32, "a", "1", None::<u64>)).unwrap());
        assert_eq!(old_put, by_hand);
        assert!(matches!(
            s.apply_raw(&old_put).0,
            Outcome::SettingPut { revision: 1, .. }
        ));

        let app = "kind = \"app\"\ninitial = \"on\"\nprovider = \"local\"\n[states.on]\nfinal = true\n";
        let old_kind = legacy::encode(&legacy::Command::PutKind { source: app.into() });
        assert!(matches!(s.apply_raw(&old_kind).0, Outcome::KindPut { .. }));
        let (stored, record) = resources::read_kind(&s.state.view(), "app").unwrap().unwrap();
        assert_eq!((stored.initial.as_str(), record.unwrap().source.as_str()), ("on", app));
        // Refused as those builds refused them.
        let broken = legacy::encode(&legacy::Command::PutKind {
            source: "kind = [".into(),
        });
        assert!(matches!(
            s.apply_raw(&broken).0,
            Outcome::Rejected(Rejection::InvalidArgument(_))
        ));
        let image = legacy::encode(&legacy::Command::PutKind {
            source: app.replace("\"app\"", "\"image\""),
        });
        assert!(matches!(
            s.apply_raw(&image).0,
            Outcome::Rejected(Rejection::FailedPrecondition(m)) if m.contains("built in")
        ));
        // Their apply checked providers and scripts, and knew no `step` key.
        for (key, source) in [
            ("provider: unknown provider", app.replace("\"local\"", "\"docker\"")),
            (
                "step: unknown key",
                app.replace("[states.on]\nfinal = true", "[states.on]\nwork = true\nnext = \"on\"\nfail = \"on\"\nstep = \"x\""),
            ),
            (
                "run: missing",
                "kind = \"e\"\ninitial = \"w\"\nprovider = \"exec\"\n[states.w]\nwork = true\nnext = \"d\"\nfail = \"d\"\n[states.d]\nfinal = true\n".into(),
            ),
        ] {
            let refused = legacy::encode(&legacy::Command::PutKind { source });
            let answer = s.apply_raw(&refused).0;
            assert!(
                matches!(&answer, Outcome::Rejected(Rejection::InvalidArgument(m)) if m.contains(key)),
                "{answer:?}"
            );
        }
        let create = legacy::encode(&legacy::Command::CreateResource {
            kind: "app".into(),
            name: "one".into(),
            spec_json: "{}".into(),
            labels: BTreeMap::new(),
            trigger: trigger(),
        });
        let (out, _) = s.apply_raw(&create);
        assert!(
            matches!(out, Outcome::ResourceChanged { ref resource, .. } if resource.state == "on"),
            "{out:?}"
        );
    }
}
