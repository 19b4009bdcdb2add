//! Settings: a key/value store of UTF-8 strings with revisions. The revision
//! of a change is the log index of the command that made it.

use opsd_cluster::{ReadView, Txn, TxnError};
use serde::{Deserialize, Serialize};

use super::{Outcome, Rejection};

/// The settings table.
pub const TABLE: &str = "settings";
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
        return Err(format!("key: {} bytes is longer than the limit of {MAX_KEY_BYTES}", key.len()));
    }
    if let Some(c) = key.chars().find(|c| c.is_whitespace() || c.is_control()) {
        return Err(format!("key: must not contain whitespace or control characters (found {c:?})"));
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

fn decode_record(bytes: &[u8]) -> Result<SettingRecord, TxnError> {
    bincode::deserialize(bytes).map_err(|e| TxnError(format!("undecodable setting record: {e}")))
}

fn encode<T: Serialize>(v: &T) -> Result<Vec<u8>, TxnError> {
    bincode::serialize(v).map_err(|e| TxnError(format!("encoding: {e}")))
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

/// Applies a put.
pub fn apply_put(
    txn: &mut Txn<'_>,
    index: u64,
    key: &str,
    value: &str,
    expected_revision: Option<u64>,
) -> Result<Outcome, TxnError> {
    if let Err(e) = validate_key(key).and_then(|_| validate_value(value)) {
        return Ok(Outcome::Rejected(Rejection::InvalidArgument(e)));
    }
    let previous = get(txn, key)?;
    if let Some(r) = check_revision(key, previous.as_ref(), expected_revision) {
        return Ok(Outcome::Rejected(r));
    }
    let record = SettingRecord {
        key: key.to_string(),
        value: value.to_string(),
        create_revision: previous.as_ref().map(|p| p.create_revision).unwrap_or(index),
        mod_revision: index,
        version: previous.as_ref().map(|p| p.version + 1).unwrap_or(1),
    };
    txn.put(TABLE, key.as_bytes(), &encode(&record)?)?;
    txn.emit(encode(&SettingEvent::Put(record))?);
    Ok(Outcome::SettingPut { previous })
}

/// Applies a delete.
pub fn apply_delete(
    txn: &mut Txn<'_>,
    index: u64,
    key: &str,
    expected_revision: Option<u64>,
) -> Result<Outcome, TxnError> {
    if let Err(e) = validate_key(key) {
        return Ok(Outcome::Rejected(Rejection::InvalidArgument(e)));
    }
    let Some(previous) = get(txn, key)? else {
        return Ok(Outcome::Rejected(Rejection::NotFound(format!("setting {key:?} not found"))));
    };
    if let Some(r) = check_revision(key, Some(&previous), expected_revision) {
        return Ok(Outcome::Rejected(r));
    }
    txn.delete(TABLE, key.as_bytes())?;
    let mut gone = previous.clone();
    gone.mod_revision = index;
    txn.emit(encode(&SettingEvent::Deleted(gone))?);
    Ok(Outcome::SettingDeleted { previous })
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

/// Decodes a published event.
pub fn decode_event(bytes: &[u8]) -> Result<SettingEvent, String> {
    bincode::deserialize(bytes).map_err(|e| format!("undecodable setting event: {e}"))
}
