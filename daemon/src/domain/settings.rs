//! Settings: a key/value store of UTF-8 strings with revisions. Every change
//! takes the next revision of the store, a counter kept by apply (as etcd's):
//! settings writes may share a log entry, so the entry's index cannot tell
//! them apart.

use opsd_cluster::{ReadView, Txn, TxnError};
use serde::{Deserialize, Serialize};

use super::{encode, DomainEvent, Outcome, Rejection, Trigger};

/// The settings table.
pub const TABLE: &str = "settings";
/// The store's revision counter: one key, the last revision (u64 BE).
pub const META: &str = "settings_meta";
const KEY_REVISION: &[u8] = b"revision";
/// The longest key, in bytes.
pub const MAX_KEY_BYTES: usize = 512;
/// The longest value, in bytes.
pub const MAX_VALUE_BYTES: usize = 64 * 1024;

/// A stored setting.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SettingRecord {
    /// The key.
    pub key: String,
    /// The value.
    pub value: String,
    /// The revision that created it.
    pub create_revision: u64,
    /// The revision of the last change.
    pub mod_revision: u64,
    /// Writes since it was created (1 after the first).
    pub version: u64,
    /// Who made the last change, why, from where and when: settings are
    /// configuration, and who changed them is audit. On a delete event, the
    /// delete's. Empty for a setting last written before changes were recorded.
    pub changed: Trigger,
    /// A secret setting: stored, replicated and given to steps and machines
    /// as any other, but its value is shown as [`MASK`] by every answer
    /// unless revealed, and masked out of run logs. False for records written
    /// before settings could be secret.
    pub secret: bool,
}

/// What a secret value is shown as.
pub const MASK: &str = "***";

/// A setting as stored before it could be secret: still read (not secret).
#[derive(Deserialize)]
struct AuditedRecord {
    key: String,
    value: String,
    create_revision: u64,
    mod_revision: u64,
    version: u64,
    changed: Trigger,
}

/// A setting as stored before changes were recorded: still read, so that a
/// data dir written by an older build keeps its settings.
#[derive(Deserialize)]
struct UnauditedRecord {
    key: String,
    value: String,
    create_revision: u64,
    mod_revision: u64,
    version: u64,
}

/// A change to a setting, published to watchers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum SettingEvent {
    /// Written: the new record.
    Put(SettingRecord),
    /// Deleted: the record as it was, its mod_revision set to the delete's.
    Deleted(SettingRecord),
}

impl SettingEvent {
    /// The record the event carries.
    pub fn record(&self) -> &SettingRecord {
        match self {
            SettingEvent::Put(r) | SettingEvent::Deleted(r) => r,
        }
    }
}

/// Checks a key against the limits; the message names the field.
pub fn validate_key(key: &str) -> Result<(), String> {
    if key.is_empty() {
        return Err("key: must not be empty".into());
    }
    if key.len() > MAX_KEY_BYTES {
        return Err(format!(
            "key: {} bytes is longer than the limit of {MAX_KEY_BYTES}",
            key.len()
        ));
    }
    if let Some(c) = key.chars().find(|c| c.is_whitespace() || c.is_control()) {
        return Err(format!(
            "key: must not contain whitespace or control characters (found {c:?})"
        ));
    }
    Ok(())
}

/// Checks a value against the limits; the message names the field.
pub fn validate_value(value: &str) -> Result<(), String> {
    if value.len() > MAX_VALUE_BYTES {
        return Err(format!(
            "value: {} bytes is longer than the limit of {MAX_VALUE_BYTES}",
            value.len()
        ));
    }
    Ok(())
}

fn get(txn: &Txn<'_>, key: &str) -> Result<Option<SettingRecord>, TxnError> {
    txn.get(TABLE, key.as_bytes())?.map(|b| decode_record(&b)).transpose()
}

/// Decodes a stored record of any of the three formats, newest first (each
/// is the one before plus fields at its end, so an older record is too short
/// to decode as a newer one).
fn decode_record(bytes: &[u8]) -> Result<SettingRecord, TxnError> {
    use bincode::Options;
    // Each format must take the bytes whole: a damaged newer record must not
    // pass for an older one with bytes to spare.
    let exact = || {
        bincode::DefaultOptions::new()
            .with_fixint_encoding()
            .reject_trailing_bytes()
    };
    exact().deserialize(bytes).or_else(|e| {
        if let Ok(old) = exact().deserialize::<AuditedRecord>(bytes) {
            return Ok(SettingRecord {
                key: old.key,
                value: old.value,
                create_revision: old.create_revision,
                mod_revision: old.mod_revision,
                version: old.version,
                changed: old.changed,
                secret: false,
            });
        }
        let old: UnauditedRecord = exact()
            .deserialize(bytes)
            .map_err(|_| TxnError(format!("undecodable setting record: {e}")))?;
        Ok(SettingRecord {
            key: old.key,
            value: old.value,
            create_revision: old.create_revision,
            mod_revision: old.mod_revision,
            version: old.version,
            changed: Trigger::unrecorded(),
            secret: false,
        })
    })
}

fn check_revision(key: &str, current: Option<&SettingRecord>, expected: Option<u64>) -> Option<Rejection> {
    let expected = expected?;
    let actual = current.map(|r| r.mod_revision).unwrap_or(0);
    (actual != expected).then(|| {
        Rejection::FailedPrecondition(match current {
            Some(_) => format!("expected_revision: setting {key:?} is at revision {actual}, not {expected}"),
            None => format!("expected_revision: setting {key:?} does not exist, so it is not at revision {expected}"),
        })
    })
}

fn revision_of(bytes: Option<Vec<u8>>) -> u64 {
    bytes
        .and_then(|b| b.try_into().ok())
        .map(u64::from_be_bytes)
        .unwrap_or(0)
}

/// Takes the store's next revision.
fn next_revision(txn: &mut Txn<'_>) -> Result<u64, TxnError> {
    let revision = revision_of(txn.get(META, KEY_REVISION)?) + 1;
    txn.put(META, KEY_REVISION, &revision.to_be_bytes())?;
    Ok(revision)
}

/// The store's revision as of a view: that of its last change.
pub fn current_revision(view: &ReadView<'_>) -> Result<u64, TxnError> {
    Ok(revision_of(view.get(META, KEY_REVISION)?))
}

/// Applies a put, asked for by `trigger`. `secret`: `Some` sets whether the
/// setting is secret; `None` keeps what it was (not secret for a new key),
/// so that a secret stays secret through a put that does not mention it.
pub fn apply_put(
    txn: &mut Txn<'_>,
    key: &str,
    value: &str,
    expected_revision: Option<u64>,
    trigger: Trigger,
    secret: Option<bool>,
) -> Result<Outcome, TxnError> {
    if let Err(e) = validate_key(key).and_then(|_| validate_value(value)) {
        return Ok(Outcome::Rejected(Rejection::InvalidArgument(e)));
    }
    let previous = get(txn, key)?;
    if let Some(r) = check_revision(key, previous.as_ref(), expected_revision) {
        return Ok(Outcome::Rejected(r));
    }
    let revision = next_revision(txn)?;
    let record = SettingRecord {
        key: key.to_string(),
        value: value.to_string(),
        create_revision: previous.as_ref().map(|p| p.create_revision).unwrap_or(revision),
        mod_revision: revision,
        version: previous.as_ref().map(|p| p.version + 1).unwrap_or(1),
        changed: trigger,
        secret: secret.unwrap_or_else(|| previous.as_ref().is_some_and(|p| p.secret)),
    };
    txn.put(TABLE, key.as_bytes(), &encode(&record)?)?;
    txn.emit(encode(&DomainEvent::Setting(SettingEvent::Put(record)))?);
    Ok(Outcome::SettingPut { previous, revision })
}

/// Applies a delete, asked for by `trigger`.
pub fn apply_delete(
    txn: &mut Txn<'_>,
    key: &str,
    expected_revision: Option<u64>,
    trigger: Trigger,
) -> Result<Outcome, TxnError> {
    if let Err(e) = validate_key(key) {
        return Ok(Outcome::Rejected(Rejection::InvalidArgument(e)));
    }
    let Some(previous) = get(txn, key)? else {
        return Ok(Outcome::Rejected(Rejection::NotFound(format!(
            "setting {key:?} not found"
        ))));
    };
    if let Some(r) = check_revision(key, Some(&previous), expected_revision) {
        return Ok(Outcome::Rejected(r));
    }
    txn.delete(TABLE, key.as_bytes())?;
    let revision = next_revision(txn)?;
    let mut gone = previous.clone();
    gone.mod_revision = revision;
    gone.changed = trigger;
    txn.emit(encode(&DomainEvent::Setting(SettingEvent::Deleted(gone)))?);
    Ok(Outcome::SettingDeleted { previous, revision })
}

/// Reads one setting from a view.
pub fn read(view: &ReadView<'_>, key: &str) -> Result<Option<SettingRecord>, TxnError> {
    view.get(TABLE, key.as_bytes())?.map(|b| decode_record(&b)).transpose()
}

/// Reads every setting whose key starts with `prefix`, in key order.
pub fn list(view: &ReadView<'_>, prefix: &str) -> Result<Vec<SettingRecord>, TxnError> {
    view.scan_prefix(TABLE, prefix.as_bytes())?
        .iter()
        .map(|(_, v)| decode_record(v))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::testing::TestState;
    use crate::domain::Command;

    type State = TestState;

    fn by(principal: &str) -> Trigger {
        Trigger {
            principal: principal.into(),
            reason: format!("{principal}'s reason"),
            source: "api".into(),
            at_ms: 1_700_000_000_000,
        }
    }

    fn settings_apply(s: &mut State, cmd: Command) -> (Outcome, Vec<SettingEvent>) {
        let (outcome, events) = s.apply(cmd);
        let events = events
            .into_iter()
            .filter_map(|e| match e {
                DomainEvent::Setting(s) => Some(s),
                _ => None,
            })
            .collect();
        (outcome, events)
    }

    impl TestState {
        fn put(&mut self, key: &str, value: &str, expected: Option<u64>) -> Outcome {
            self.apply(Command::PutSetting {
                key: key.into(),
                value: value.into(),
                expected_revision: expected,
                trigger: by("alice"),
            })
            .0
        }

        fn get(&self, key: &str) -> Option<SettingRecord> {
            read(&self.state.view(), key).unwrap()
        }
    }

    #[test]
    fn put_creates_then_updates_with_revisions() {
        let mut s = State::new();
        assert_eq!(
            s.put("a", "1", None),
            Outcome::SettingPut {
                previous: None,
                revision: 1
            }
        );
        let first = s.get("a").unwrap();
        assert_eq!((first.create_revision, first.mod_revision, first.version), (1, 1, 1));
        let (outcome, events) = settings_apply(
            &mut s,
            Command::PutSetting {
                key: "a".into(),
                value: "2".into(),
                expected_revision: None,
                trigger: by("alice"),
            },
        );
        assert_eq!(
            outcome,
            Outcome::SettingPut {
                previous: Some(first.clone()),
                revision: 2
            }
        );
        let second = s.get("a").unwrap();
        assert_eq!(
            (
                second.value.as_str(),
                second.create_revision,
                second.mod_revision,
                second.version
            ),
            ("2", 1, 2, 2)
        );
        assert_eq!(events, vec![SettingEvent::Put(second)]);
    }

    #[test]
    fn compare_and_set_checks_the_revision() {
        let mut s = State::new();
        assert!(
            matches!(s.put("a", "1", Some(0)), Outcome::SettingPut { .. }),
            "0 means absent"
        );
        let Outcome::Rejected(Rejection::FailedPrecondition(msg)) = s.put("a", "x", Some(0)) else {
            panic!("a second create must be refused")
        };
        assert!(msg.contains("expected_revision") && msg.contains("revision 1"), "{msg}");
        let before = s.get("a");
        assert_eq!(
            s.put("a", "2", Some(1)),
            Outcome::SettingPut {
                previous: before,
                revision: 2
            },
            "a refused write takes no revision"
        );
        assert!(matches!(
            s.put("a", "3", Some(1)),
            Outcome::Rejected(Rejection::FailedPrecondition(_))
        ));
        assert_eq!(s.get("a").unwrap().value, "2", "a refused write changes nothing");
    }

    #[test]
    fn delete_removes_and_reports_missing_keys() {
        let mut s = State::new();
        s.put("a", "1", None);
        let (outcome, events) = settings_apply(
            &mut s,
            Command::DeleteSetting {
                key: "a".into(),
                expected_revision: Some(1),
                trigger: by("alice"),
            },
        );
        let Outcome::SettingDeleted { previous, revision } = outcome else {
            panic!("{outcome:?}")
        };
        assert_eq!(revision, 2);
        assert_eq!(previous.value, "1");
        assert_eq!(s.get("a"), None);
        let SettingEvent::Deleted(gone) = &events[0] else {
            panic!("{events:?}")
        };
        assert_eq!(gone.mod_revision, 2, "a delete event carries the delete's revision");
        let (outcome, events) = settings_apply(
            &mut s,
            Command::DeleteSetting {
                key: "a".into(),
                expected_revision: None,
                trigger: by("alice"),
            },
        );
        assert!(matches!(outcome, Outcome::Rejected(Rejection::NotFound(m)) if m.contains("\"a\"")));
        assert!(events.is_empty());
    }

    #[test]
    fn recreate_after_delete_starts_a_new_life() {
        let mut s = State::new();
        s.put("a", "1", None);
        settings_apply(
            &mut s,
            Command::DeleteSetting {
                key: "a".into(),
                expected_revision: None,
                trigger: by("alice"),
            },
        );
        s.put("a", "again", None);
        let r = s.get("a").unwrap();
        assert_eq!((r.create_revision, r.version), (3, 1));
    }

    #[test]
    fn apply_revalidates_what_the_api_validates() {
        let mut s = State::new();
        for (key, value, field) in [
            ("", "v", "key"),
            (&"k".repeat(MAX_KEY_BYTES + 1), "v", "key"),
            ("has space", "v", "key"),
            ("k", &"v".repeat(MAX_VALUE_BYTES + 1), "value"),
        ] {
            let Outcome::Rejected(Rejection::InvalidArgument(msg)) = s.put(key, value, None) else {
                panic!("{key:?} must be refused")
            };
            assert!(msg.starts_with(field), "{msg}");
        }
        assert!(list(&s.state.view(), "").unwrap().is_empty(), "nothing was written");
        assert!(matches!(
            s.put(&"k".repeat(MAX_KEY_BYTES), "", None),
            Outcome::SettingPut { .. }
        ));
    }

    #[test]
    fn undecodable_commands_stop_the_node_not_applied() {
        let mut s = State::new();
        for bytes in [&b""[..], &[9u8, 0, 2][..], &[1u8, 200, 200][..]] {
            assert!(s.try_apply_raw(bytes).is_err(), "{bytes:?}");
        }
        assert!(s.get("a").is_none());
    }

    #[test]
    fn list_is_by_prefix_in_key_order() {
        let mut s = State::new();
        for k in ["b/2", "a/1", "b/1", "c"] {
            s.put(k, k, None);
        }
        let keys: Vec<String> = list(&s.state.view(), "b/")
            .unwrap()
            .into_iter()
            .map(|r| r.key)
            .collect();
        assert_eq!(keys, vec!["b/1", "b/2"]);
        assert_eq!(list(&s.state.view(), "").unwrap().len(), 4);
    }

    #[test]
    fn every_change_records_who_made_it() {
        let mut s = State::new();
        s.put("a", "1", None);
        assert_eq!(s.get("a").unwrap().changed, by("alice"));
        let (_, events) = settings_apply(
            &mut s,
            Command::PutSetting {
                key: "a".into(),
                value: "2".into(),
                expected_revision: None,
                trigger: by("bob"),
            },
        );
        assert_eq!(s.get("a").unwrap().changed, by("bob"), "the last change's trigger");
        assert_eq!(events[0].record().changed, by("bob"));
        let (outcome, events) = settings_apply(
            &mut s,
            Command::DeleteSetting {
                key: "a".into(),
                expected_revision: None,
                trigger: by("carol"),
            },
        );
        let Outcome::SettingDeleted { previous, .. } = outcome else {
            panic!("{outcome:?}")
        };
        assert_eq!(previous.changed, by("bob"), "the answer shows the setting as it was");
        assert_eq!(events[0].record().changed, by("carol"), "watchers see who deleted it");
    }

    fn put_secret(s: &mut State, key: &str, value: &str, secret: Option<bool>) -> Outcome {
        s.apply(Command::PutSettingV2 {
            key: key.into(),
            value: value.into(),
            expected_revision: None,
            trigger: by("alice"),
            secret,
        })
        .0
    }

    #[test]
    fn a_secret_stays_secret_until_a_put_says_otherwise() {
        let mut s = State::new();
        s.put("plain", "1", None);
        assert!(
            !s.get("plain").unwrap().secret,
            "a put without the flag makes no secret"
        );
        put_secret(&mut s, "new", "1", None);
        assert!(!s.get("new").unwrap().secret, "a new key is not secret unless said");
        assert!(matches!(
            put_secret(&mut s, "k", "s1", Some(true)),
            Outcome::SettingPut { .. }
        ));
        assert!(s.get("k").unwrap().secret);
        s.put("k", "s2", None);
        let r = s.get("k").unwrap();
        assert!(r.secret && r.value == "s2", "an old-style put keeps it secret: {r:?}");
        put_secret(&mut s, "k", "s3", None);
        assert!(s.get("k").unwrap().secret, "a put without the flag keeps it secret");
        let (_, events) = settings_apply(
            &mut s,
            Command::PutSettingV2 {
                key: "k".into(),
                value: "public".into(),
                expected_revision: None,
                trigger: by("bob"),
                secret: Some(false),
            },
        );
        assert!(!s.get("k").unwrap().secret, "false makes it ordinary again");
        assert!(!events[0].record().secret, "watchers see the flag of the new record");
        put_secret(&mut s, "plain", "2", Some(true));
        assert!(s.get("plain").unwrap().secret, "an ordinary key can be made secret");
    }

    #[test]
    fn a_secret_put_is_validated_as_any_put() {
        let mut s = State::new();
        assert!(matches!(
            put_secret(&mut s, "has space", "v", Some(true)),
            Outcome::Rejected(Rejection::InvalidArgument(m)) if m.starts_with("key")
        ));
        assert!(list(&s.state.view(), "").unwrap().is_empty());
    }

    #[test]
    fn records_written_before_settings_could_be_secret_still_read() {
        #[derive(Serialize)]
        struct Audited<'a> {
            key: &'a str,
            value: &'a str,
            create_revision: u64,
            mod_revision: u64,
            version: u64,
            changed: Trigger,
        }
        let bytes = bincode::serialize(&Audited {
            key: "k",
            value: "v",
            create_revision: 3,
            mod_revision: 5,
            version: 2,
            changed: by("bob"),
        })
        .unwrap();
        let r = decode_record(&bytes).unwrap();
        assert_eq!(
            (r.key.as_str(), r.value.as_str(), r.mod_revision, r.version, r.secret),
            ("k", "v", 5, 2, false)
        );
        assert_eq!(r.changed, by("bob"));
        let mut current = r.clone();
        current.secret = true;
        let decoded = decode_record(&encode(&current).unwrap()).unwrap();
        assert_eq!(decoded, current, "today's records round-trip with the flag");
        assert!(decode_record(&bytes[..bytes.len() - 1]).is_err());
    }

    #[test]
    fn records_written_before_changes_were_recorded_still_read() {
        #[derive(Serialize)]
        struct Old<'a> {
            key: &'a str,
            value: &'a str,
            create_revision: u64,
            mod_revision: u64,
            version: u64,
        }
        let bytes = bincode::serialize(&Old {
            key: "k",
            value: "v",
            create_revision: 3,
            mod_revision: 5,
            version: 2,
        })
        .unwrap();
        let r = decode_record(&bytes).unwrap();
        assert_eq!(
            (r.key.as_str(), r.value.as_str(), r.mod_revision, r.version),
            ("k", "v", 5, 2)
        );
        assert_eq!(r.changed.principal, "", "nobody is made up for an old change");
        assert!(!r.secret);
        assert!(
            decode_record(&bytes[..bytes.len() - 1]).is_err(),
            "a damaged record is still refused"
        );
    }
}
