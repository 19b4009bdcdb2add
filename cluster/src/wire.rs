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
