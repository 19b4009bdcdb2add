//! How the cluster encodes what it writes to disk and sends to peers: bincode
//! of the serde types, behind two functions so the choice is made once.

use serde::de::DeserializeOwned;
use serde::Serialize;

/// Encodes a value. Encoding plain data to memory cannot fail; if a type ever
/// made it fail, the error is reported as data rather than a panic.
pub(crate) fn encode<T: Serialize>(value: &T) -> Result<Vec<u8>, String> {
    bincode::serialize(value).map_err(|e| format!("cannot encode: {e}"))
}

/// Decodes a value, naming what was expected when the bytes do not fit.
pub(crate) fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, String> {
    bincode::deserialize(bytes).map_err(|e| format!("cannot decode {}: {e}", std::any::type_name::<T>()))
}

/// A u64 as 8 big-endian bytes, so that rocksdb's byte order is numeric order.
pub(crate) fn index_key(index: u64) -> [u8; 8] {
    index.to_be_bytes()
}

/// The inverse of [`index_key`].
pub(crate) fn key_index(key: &[u8]) -> Option<u64> {
    Some(u64::from_be_bytes(key.try_into().ok()?))
}

/// What ends a sealed snapshot: this tag, then the checksum of the bytes
/// before it.
const SEAL_TAG: &[u8; 8] = b"opsdsum1";

/// FNV-1a, 64 bits: any single changed byte changes it, and it needs no
/// dependency. It guards against damage, not against an adversary.
fn checksum(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

/// Appends the tag and the checksum of `data` to it.
pub(crate) fn seal(mut data: Vec<u8>) -> Vec<u8> {
    let sum = checksum(&data);
    data.extend_from_slice(SEAL_TAG);
    data.extend_from_slice(&sum.to_le_bytes());
    data
}

/// The bytes a [`seal`] covered, once their checksum matches; bytes without
/// a seal (written before snapshots had one) are taken as they are.
pub(crate) fn unseal(data: &[u8]) -> Result<&[u8], String> {
    let Some(body_len) = data.len().checked_sub(16) else {
        return Ok(data);
    };
    if &data[body_len..body_len + 8] != SEAL_TAG {
        return Ok(data);
    }
    let mut stored = [0u8; 8];
    stored.copy_from_slice(&data[body_len + 8..]);
    let body = &data[..body_len];
    let computed = checksum(body);
    if u64::from_le_bytes(stored) != computed {
        return Err(format!(
            "checksum mismatch (stored {:016x}, computed {computed:016x}): the snapshot is damaged",
            u64::from_le_bytes(stored)
        ));
    }
    Ok(body)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_sealed_snapshot_opens_and_any_changed_byte_is_refused() {
        let data = encode(&vec![7u64; 100]).unwrap();
        let sealed = seal(data.clone());
        assert_eq!(unseal(&sealed).unwrap(), &data[..]);
        for i in 0..sealed.len() - 16 {
            let mut bad = sealed.clone();
            bad[i] ^= 0x40;
            let err = unseal(&bad).unwrap_err();
            assert!(err.contains("checksum mismatch"), "{err}");
        }
        // Written before the seal: taken as it is.
        assert_eq!(unseal(&data).unwrap(), &data[..]);
    }
}
