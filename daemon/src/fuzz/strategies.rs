//! Inputs the harnesses share: text that is short, empty, huge, at the
//! limits, unicode or full of control characters; maps of it; numbers at
//! the extremes; and mutations of valid bytes.

use std::collections::BTreeMap;

use proptest::collection::{btree_map, vec};
use proptest::prelude::*;
use proptest::sample::{select, Index};

/// The lengths the domain's limits sit at (names 64 and 128, keys 512,
/// texts 4096, values and specs 64 KiB), and one either side of each.
const EDGE_LENGTHS: &[usize] = &[
    63, 64, 65, 127, 128, 129, 511, 512, 513, 4095, 4096, 4097, 65535, 65536, 65537,
];

/// One character: mostly printable ASCII, then control characters, the
/// separators keys are built with (`\0`, `/`, `.`), and any Unicode scalar.
pub fn character() -> impl Strategy<Value = char> {
    prop_oneof![
        8 => (0x20u8..0x7f).prop_map(char::from),
        2 => (0u8..0x20).prop_map(char::from),
        1 => select(vec!['\0', '/', '.', '\u{7f}', '\u{85}', '\u{2028}', '\u{feff}', 'é', '😀']),
        2 => any::<char>(),
    ]
}

/// Text of any sort: short, empty, or huge (a run of one character at a
/// limit's length or one off it).
pub fn text() -> BoxedStrategy<String> {
    prop_oneof![
        12 => vec(character(), 0..24).prop_map(String::from_iter),
        2 => Just(String::new()),
        1 => (select(vec!['a', '\0', 'é', ' ']), select(EDGE_LENGTHS.to_vec())).prop_map(|(c, n)| {
            let s: String = std::iter::repeat_n(c, n).collect();
            // A multi-byte character: cut to the length in bytes, on a boundary.
            let mut end = n.min(s.len());
            while !s.is_char_boundary(end) {
                end -= 1;
            }
            s[..end].to_string()
        }),
    ]
    .boxed()
}

/// One of `known` (names the state has, so commands reach deep), or any text.
pub fn one_of(known: &'static [&'static str]) -> BoxedStrategy<String> {
    prop_oneof![
        6 => select(known).prop_map(str::to_string),
        1 => text(),
    ]
    .boxed()
}

/// A map of text to text: empty, a few entries of `keys` or any text, or
/// more entries than the limit of 64.
pub fn map(keys: &'static [&'static str]) -> BoxedStrategy<BTreeMap<String, String>> {
    prop_oneof![
        4 => btree_map(one_of(keys), text(), 0..4),
        1 => (65usize..70).prop_map(|n| (0..n).map(|i| (format!("k{i}"), "v".to_string())).collect()),
    ]
    .boxed()
}

/// A u64, often at an extreme.
pub fn number() -> impl Strategy<Value = u64> {
    prop_oneof![
        4 => 0u64..16,
        1 => Just(u64::MAX),
        1 => Just(i64::MAX as u64),
        1 => Just(1u64 << 63),
        1 => any::<u64>(),
    ]
}

/// An i64, often at an extreme.
pub fn signed() -> impl Strategy<Value = i64> {
    prop_oneof![
        4 => -2i64..5_000,
        1 => Just(i64::MIN),
        1 => Just(i64::MAX),
        1 => any::<i64>(),
    ]
}

/// One change to a byte string.
#[derive(Debug, Clone)]
pub enum Mutation {
    /// Flip one bit of the byte at.
    Flip(Index, u8),
    /// Overwrite the byte at.
    Set(Index, u8),
    /// Insert a byte at.
    Insert(Index, u8),
    /// Remove the byte at.
    Remove(Index),
    /// Cut everything from.
    Truncate(Index),
    /// Overwrite 8 bytes from (a length or a variant number) with a number.
    Word(Index, u64),
}

/// A mutation.
pub fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        3 => (any::<Index>(), 0u8..8).prop_map(|(i, b)| Mutation::Flip(i, b)),
        2 => (any::<Index>(), any::<u8>()).prop_map(|(i, b)| Mutation::Set(i, b)),
        1 => (any::<Index>(), any::<u8>()).prop_map(|(i, b)| Mutation::Insert(i, b)),
        1 => any::<Index>().prop_map(Mutation::Remove),
        1 => any::<Index>().prop_map(Mutation::Truncate),
        2 => (any::<Index>(), number()).prop_map(|(i, w)| Mutation::Word(i, w)),
    ]
}

/// `bytes` with `mutations` done to it, in order.
pub fn mutate(mut bytes: Vec<u8>, mutations: &[Mutation]) -> Vec<u8> {
    for m in mutations {
        let len = bytes.len();
        match m {
            Mutation::Insert(i, b) => bytes.insert(i.index(len + 1), *b),
            _ if len == 0 => {}
            Mutation::Flip(i, bit) => bytes[i.index(len)] ^= 1 << bit,
            Mutation::Set(i, b) => bytes[i.index(len)] = *b,
            Mutation::Remove(i) => {
                bytes.remove(i.index(len));
            }
            Mutation::Truncate(i) => bytes.truncate(i.index(len)),
            Mutation::Word(i, w) => {
                let at = i.index(len);
                for (k, b) in w.to_le_bytes().iter().enumerate() {
                    if let Some(slot) = bytes.get_mut(at + k) {
                        *slot = *b;
                    }
                }
            }
        }
    }
    bytes
}

/// Arbitrary bytes: short, empty, or up to a few KiB.
pub fn bytes() -> BoxedStrategy<Vec<u8>> {
    prop_oneof![
        6 => vec(any::<u8>(), 0..64),
        1 => vec(any::<u8>(), 0..4096),
    ]
    .boxed()
}
