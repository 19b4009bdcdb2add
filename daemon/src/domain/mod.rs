//! The product's replicated state: every change is a [`Command`], decoded and
//! applied in one place. Apply is deterministic: it reads only the transaction
//! it is given, and it re-validates every command against the stored state
//! (another proposal may have won), answering with a rejection, never a panic.

pub mod settings;

use opsd_cluster::{StateMachineApp, Txn, TxnError};
use serde::{Deserialize, Serialize};

/// The tables the domain keeps, one rocksdb column family each.
pub const TABLES: &[&str] = &[settings::TABLE];

/// Version of the command encoding; the first byte of every encoded command.
/// An unknown version is rejected by apply, never guessed at.
const COMMAND_VERSION: u8 = 1;

/// Every replicated change. New variants go at the end (the encoding numbers
/// variants in order).
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
    },
    /// Delete a setting, optionally only if its revision is as expected.
    DeleteSetting {
        /// The key.
        key: String,
        /// Compare-and-delete: the key's mod_revision must equal this.
        expected_revision: Option<u64>,
    },
}

/// Why apply refused a command; maps onto a gRPC code.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Rejection {
    /// The command names something absent.
    NotFound(String),
    /// The command conflicts with the current state.
    FailedPrecondition(String),
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
    },
    /// A setting was deleted.
    SettingDeleted {
        /// The setting before.
        previous: settings::SettingRecord,
    },
    /// Nothing changed, for this reason.
    Rejected(Rejection),
}

impl Command {
    /// Encodes the command for the log.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = vec![COMMAND_VERSION];
        // Encoding owned strings and integers into a Vec cannot fail.
        out.extend(bincode::serialize(self).unwrap_or_default());
        out
    }

    /// Decodes a command from the log.
    pub fn decode(bytes: &[u8]) -> Result<Command, String> {
        match bytes.split_first() {
            Some((&COMMAND_VERSION, rest)) => bincode::deserialize(rest).map_err(|e| format!("undecodable command: {e}")),
            Some((v, _)) => Err(format!(
                "command encoding version {v} is unknown to this opsd (it understands {COMMAND_VERSION}); upgrade this node"
            )),
            None => Err("empty command".into()),
        }
    }
}

/// Decodes an apply answer.
pub fn decode_outcome(bytes: &[u8]) -> Result<Outcome, String> {
    bincode::deserialize(bytes).map_err(|e| format!("undecodable apply answer: {e}"))
}

/// The domain's apply function, handed to the cluster.
pub struct Domain;

impl StateMachineApp for Domain {
    fn apply(&self, txn: &mut Txn<'_>, index: u64, command: &[u8]) -> Result<Vec<u8>, TxnError> {
        let outcome = match Command::decode(command) {
            Err(reason) => Outcome::Rejected(Rejection::InvalidArgument(reason)),
            Ok(Command::PutSetting {
                key,
                value,
                expected_revision,
            }) => settings::apply_put(txn, index, &key, &value, expected_revision)?,
            Ok(Command::DeleteSetting { key, expected_revision }) => {
                settings::apply_delete(txn, index, &key, expected_revision)?
            }
        };
        bincode::serialize(&outcome).map_err(|e| TxnError(format!("encoding the outcome: {e}")))
    }
}
