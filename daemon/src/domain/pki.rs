//! The cluster CA and join tokens as replicated state. The CA (certificate
//! and key) is set once, by the bootstrap node. A join token is stored as
//! the SHA-256 of its secret with its expiry; using it marks it spent by one
//! node id, which may use it again (a joining node's retries), and no other.
//! Apply compares the command's `at_ms` (the proposer's clock) against the
//! expiry: no clock is read here.

use opsd_cluster::{ReadView, Txn, TxnError};
use serde::{Deserialize, Serialize};

use super::{Outcome, Rejection};

/// The table: the CA under [`KEY_CA`], tokens under `join/ID`.
pub const TABLE: &str = "pki";
const KEY_CA: &[u8] = b"ca";
const JOIN_PREFIX: &str = "join/";

/// The cluster CA as stored.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CaRecord {
    /// Its certificate, PEM.
    pub cert_pem: String,
    /// Its private key, PEM.
    pub key_pem: String,
}

impl std::fmt::Debug for CaRecord {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CaRecord")
            .field("key_pem", &"***")
            .finish_non_exhaustive()
    }
}

/// A join token as stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JoinTokenRecord {
    /// Its id.
    pub id: String,
    /// The SHA-256 of its secret, hex.
    pub secret_sha256: String,
    /// When it expires, ms since the Unix epoch.
    pub expires_at_ms: i64,
    /// Who made it.
    pub created_by: String,
    /// The node that used it, if any.
    pub used_by: Option<u64>,
}

fn encode<T: Serialize>(value: &T) -> Result<Vec<u8>, TxnError> {
    bincode::serialize(value).map_err(|e| TxnError(format!("encoding: {e}")))
}

fn decode<T: for<'de> Deserialize<'de>>(bytes: &[u8]) -> Result<T, TxnError> {
    bincode::deserialize(bytes).map_err(|e| TxnError(format!("undecodable pki record: {e}")))
}

fn is_hex(s: &str, len: usize) -> bool {
    s.len() == len && s.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

fn rejected(r: Rejection) -> Result<Outcome, TxnError> {
    Ok(Outcome::Rejected(r))
}

/// Sets the cluster CA, once: the same CA again changes nothing; another is refused.
pub fn apply_set_ca(txn: &mut Txn<'_>, cert_pem: String, key_pem: String) -> Result<Outcome, TxnError> {
    if !cert_pem.contains("BEGIN CERTIFICATE") || !key_pem.contains("PRIVATE KEY") {
        return rejected(Rejection::InvalidArgument(
            "cluster CA: expected a PEM certificate and a PEM private key".into(),
        ));
    }
    if let Some(bytes) = txn.get(TABLE, KEY_CA)? {
        let stored: CaRecord = decode(&bytes)?;
        if stored.cert_pem == cert_pem {
            return Ok(Outcome::ClusterCaSet);
        }
        return rejected(Rejection::FailedPrecondition(
            "cluster CA: this cluster already has another CA".into(),
        ));
    }
    txn.put(TABLE, KEY_CA, &encode(&CaRecord { cert_pem, key_pem })?)?;
    Ok(Outcome::ClusterCaSet)
}

/// Records a new join token.
pub fn apply_create_join_token(
    txn: &mut Txn<'_>,
    id: String,
    secret_sha256: String,
    expires_at_ms: i64,
    created_by: String,
) -> Result<Outcome, TxnError> {
    if !is_hex(&id, 16) {
        return rejected(Rejection::InvalidArgument(
            "join token id: expected 16 hex digits".into(),
        ));
    }
    if !is_hex(&secret_sha256, 64) {
        return rejected(Rejection::InvalidArgument(
            "join token secret_sha256: expected 64 hex digits".into(),
        ));
    }
    let key = format!("{JOIN_PREFIX}{id}");
    if txn.get(TABLE, key.as_bytes())?.is_some() {
        return rejected(Rejection::AlreadyExists(format!("join token {id} exists")));
    }
    let record = JoinTokenRecord {
        id: id.clone(),
        secret_sha256,
        expires_at_ms,
        created_by,
        used_by: None,
    };
    txn.put(TABLE, key.as_bytes(), &encode(&record)?)?;
    Ok(Outcome::JoinTokenCreated { id, expires_at_ms })
}

/// Uses a join token for node `node_id` at `at_ms`: refused if unknown, of
/// another secret, spent by another node, or (not yet spent) expired.
pub fn apply_use_join_token(
    txn: &mut Txn<'_>,
    id: &str,
    secret_sha256: &str,
    node_id: u64,
    at_ms: i64,
) -> Result<Outcome, TxnError> {
    let key = format!("{JOIN_PREFIX}{id}");
    let refused = |why: String| rejected(Rejection::FailedPrecondition(format!("join token {id}: {why}")));
    let Some(bytes) = txn.get(TABLE, key.as_bytes())? else {
        return refused("unknown to this cluster (made by another cluster, or never made)".into());
    };
    let mut record: JoinTokenRecord = decode(&bytes)?;
    if !ring_eq(record.secret_sha256.as_bytes(), secret_sha256.as_bytes()) {
        return refused("wrong secret".into());
    }
    match record.used_by {
        Some(by) if by == node_id => {
            return Ok(Outcome::JoinTokenUsed {
                id: id.to_string(),
                node_id,
            })
        }
        Some(by) => {
            return refused(format!(
                "already used by node {by}; a join token is good for one node (make another with `opsctl cluster \
                 join-token`)"
            ))
        }
        None => {}
    }
    if at_ms >= record.expires_at_ms {
        return refused("expired (make another with `opsctl cluster join-token`)".into());
    }
    if node_id == 0 {
        return rejected(Rejection::InvalidArgument("node_id: must not be 0".into()));
    }
    record.used_by = Some(node_id);
    txn.put(TABLE, key.as_bytes(), &encode(&record)?)?;
    Ok(Outcome::JoinTokenUsed {
        id: id.to_string(),
        node_id,
    })
}

/// Compares two byte strings in time independent of where they differ.
fn ring_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// The cluster CA, if set.
pub fn read_ca(view: &ReadView<'_>) -> Result<Option<CaRecord>, TxnError> {
    view.get(TABLE, KEY_CA)?.map(|b| decode(&b)).transpose()
}

/// A join token, if known.
pub fn read_join_token(view: &ReadView<'_>, id: &str) -> Result<Option<JoinTokenRecord>, TxnError> {
    view.get(TABLE, format!("{JOIN_PREFIX}{id}").as_bytes())?
        .map(|b| decode(&b))
        .transpose()
}

#[cfg(test)]
mod tests {
    use super::super::testing::TestState;
    use super::super::{Command, Outcome, Rejection};
    use super::*;

    const ID: &str = "0123456789abcdef";

    fn ca(s: &mut TestState, cert: &str) -> Outcome {
        s.apply(Command::SetClusterCa {
            cert_pem: format!("-----BEGIN CERTIFICATE-----{cert}"),
            key_pem: "-----BEGIN PRIVATE KEY-----k".into(),
        })
        .0
    }

    fn create(s: &mut TestState, secret: &str, expires_at_ms: i64) -> Outcome {
        s.apply(Command::CreateJoinToken {
            id: ID.into(),
            secret_sha256: crate::pki::secret_sha256(secret),
            expires_at_ms,
            created_by: "alice".into(),
        })
        .0
    }

    fn use_token(s: &mut TestState, secret: &str, node_id: u64, at_ms: i64) -> Outcome {
        s.apply(Command::UseJoinToken {
            id: ID.into(),
            secret_sha256: crate::pki::secret_sha256(secret),
            node_id,
            at_ms,
        })
        .0
    }

    fn refused(outcome: Outcome, says: &str) {
        match outcome {
            Outcome::Rejected(Rejection::FailedPrecondition(m)) => assert!(m.contains(says), "{m}"),
            other => panic!("expected a refusal saying {says:?}, got {other:?}"),
        }
    }

    #[test]
    fn the_cluster_ca_is_set_once() {
        let mut s = TestState::new();
        assert!(read_ca(&s.state.view()).unwrap().is_none());
        assert_eq!(ca(&mut s, "one"), Outcome::ClusterCaSet);
        // The same CA again (a bootstrap node restarted before it deleted ca.key): no change.
        assert_eq!(ca(&mut s, "one"), Outcome::ClusterCaSet);
        refused(ca(&mut s, "two"), "already has another CA");
        assert!(read_ca(&s.state.view()).unwrap().unwrap().cert_pem.ends_with("one"));
        let bad = s
            .apply(Command::SetClusterCa {
                cert_pem: "x".into(),
                key_pem: "y".into(),
            })
            .0;
        assert!(
            matches!(bad, Outcome::Rejected(Rejection::InvalidArgument(_))),
            "{bad:?}"
        );
    }

    #[test]
    fn a_join_token_is_spent_by_one_node_before_it_expires() {
        let mut s = TestState::new();
        refused(use_token(&mut s, "secret", 5, 100), "unknown to this cluster");
        assert_eq!(
            create(&mut s, "secret", 1000),
            Outcome::JoinTokenCreated {
                id: ID.into(),
                expires_at_ms: 1000
            }
        );
        assert!(matches!(
            create(&mut s, "other", 1000),
            Outcome::Rejected(Rejection::AlreadyExists(_))
        ));
        refused(use_token(&mut s, "wrong", 5, 100), "wrong secret");
        let used = Outcome::JoinTokenUsed {
            id: ID.into(),
            node_id: 5,
        };
        assert_eq!(use_token(&mut s, "secret", 5, 100), used);
        // The same node again (its retries), even past the expiry: no change.
        assert_eq!(use_token(&mut s, "secret", 5, 5000), used);
        refused(use_token(&mut s, "secret", 6, 200), "already used by node 5");
        let record = read_join_token(&s.state.view(), ID).unwrap().unwrap();
        assert_eq!(record.used_by, Some(5));
        assert_eq!(record.secret_sha256, crate::pki::secret_sha256("secret"));
    }

    #[test]
    fn an_unspent_token_expires_by_the_proposers_clock() {
        let mut s = TestState::new();
        create(&mut s, "secret", 1000);
        refused(use_token(&mut s, "secret", 5, 1000), "expired");
        assert_eq!(read_join_token(&s.state.view(), ID).unwrap().unwrap().used_by, None);
        let bad = s
            .apply(Command::CreateJoinToken {
                id: "short".into(),
                secret_sha256: "x".into(),
                expires_at_ms: 1,
                created_by: String::new(),
            })
            .0;
        assert!(
            matches!(bad, Outcome::Rejected(Rejection::InvalidArgument(_))),
            "{bad:?}"
        );
    }
}
