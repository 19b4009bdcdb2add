//! Masking secret values out of text, as CI systems do with their secrets:
//! every occurrence of a secret setting's value in a step's log line (and
//! its error and outputs) becomes [`MASK`] before it is proposed, so the
//! value never enters the replicated log at all.
//!
//! Limits, by nature: only the exact value (and each line of a multi-line
//! value) is found. A script that transforms a value (base64s it, prints it
//! a character per line, reverses it) defeats masking; so would a value cut
//! by the log's line length limit. Masking is a guard against accidents,
//! not against a script that means to leak.

use serde_json::Value;

pub use super::settings::MASK;

/// The secret values to mask out of a step's text. Empty values mask
/// nothing (masking "" would mask everything); a multi-line value is also
/// masked line by line, as the log is split into lines.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Masker {
    /// The values, without empty ones or duplicates.
    values: Vec<String>,
}

impl Masker {
    /// A masker for `secrets`, the values of the secret settings in scope.
    pub fn new<I, S>(secrets: I) -> Masker
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        let mut values: Vec<String> = Vec::new();
        for secret in secrets {
            let secret = secret.as_ref();
            let mut add = |v: &str| {
                if !v.is_empty() && !values.iter().any(|have| have == v) {
                    values.push(v.to_string());
                }
            };
            add(secret);
            if secret.contains('\n') {
                for line in secret.lines() {
                    add(line.strip_suffix('\r').unwrap_or(line));
                }
            }
        }
        Masker { values }
    }

    /// Whether there is nothing to mask.
    pub fn is_empty(&self) -> bool {
        self.values.is_empty()
    }

    /// `text` with every stretch covered by an occurrence of a secret value
    /// (overlapping and adjacent occurrences count as one stretch) replaced
    /// by [`MASK`].
    pub fn mask(&self, text: &str) -> String {
        if self.values.is_empty() {
            return text.to_string();
        }
        let mut covered = vec![false; text.len()];
        let mut any = false;
        for value in &self.values {
            let mut from = 0;
            while let Some(at) = text[from..].find(value.as_str()) {
                let start = from + at;
                covered[start..start + value.len()].fill(true);
                any = true;
                // The next occurrence may overlap this one: look again one
                // character further on.
                from = start + text[start..].chars().next().map_or(1, char::len_utf8);
            }
        }
        if !any {
            return text.to_string();
        }
        let mut out = String::with_capacity(text.len());
        let mut in_mask = false;
        for (i, c) in text.char_indices() {
            if covered[i] {
                if !in_mask {
                    out.push_str(MASK);
                    in_mask = true;
                }
            } else {
                in_mask = false;
                out.push(c);
            }
        }
        out
    }

    /// Masks every string in a JSON value (object keys too), in place.
    pub fn mask_json(&self, value: &mut Value) {
        if self.values.is_empty() {
            return;
        }
        match value {
            Value::String(s) => *s = self.mask(s),
            Value::Array(items) => items.iter_mut().for_each(|v| self.mask_json(v)),
            Value::Object(map) => {
                let old = std::mem::take(map);
                for (k, mut v) in old {
                    self.mask_json(&mut v);
                    map.insert(self.mask(&k), v);
                }
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_value_inside_a_line_is_masked() {
        let m = Masker::new(["hunter2"]);
        assert_eq!(m.mask("password=hunter2; ok"), "password=***; ok");
        assert_eq!(m.mask("hunter2"), "***");
        assert_eq!(m.mask("hunter2hunter2"), "***", "adjacent occurrences are one stretch");
        assert_eq!(m.mask("hunter2 and hunter2"), "*** and ***");
        assert_eq!(m.mask("nothing here"), "nothing here");
        assert_eq!(m.mask("hunter"), "hunter", "a part of the value is not the value");
    }

    #[test]
    fn several_values_are_masked() {
        let m = Masker::new(["alpha-secret", "beta-secret"]);
        assert_eq!(m.mask("a=alpha-secret b=beta-secret"), "a=*** b=***");
    }

    #[test]
    fn overlapping_values_mask_their_union() {
        let m = Masker::new(["abcd", "cdef"]);
        assert_eq!(m.mask("xabcdefy"), "x***y", "no part of either is left");
        let m = Masker::new(["aa"]);
        assert_eq!(m.mask("baaab"), "b***b", "overlapping occurrences of one value");
        let m = Masker::new(["secret", "sec"]);
        assert_eq!(m.mask("sec secret"), "*** ***", "a value inside another");
    }

    #[test]
    fn an_empty_secret_masks_nothing() {
        let m = Masker::new(["", "x"]);
        assert_eq!(m.mask("a line"), "a line");
        assert_eq!(m.mask("axb"), "a***b");
        assert!(Masker::new([""]).is_empty());
        assert_eq!(Masker::new([""]).mask("anything"), "anything");
    }

    #[test]
    fn multi_line_values_are_masked_line_by_line() {
        let m = Masker::new(["-----BEGIN KEY-----\nAAAABBBB\r\n-----END KEY-----\n"]);
        assert_eq!(m.mask("AAAABBBB"), "***");
        assert_eq!(m.mask("x -----END KEY----- y"), "x *** y");
    }

    #[test]
    fn non_ascii_text_and_values_keep_their_characters() {
        let m = Masker::new(["clé"]);
        assert_eq!(m.mask("ünë clé ß"), "ünë *** ß");
        let m = Masker::new(["ää"]);
        assert_eq!(m.mask("äää!"), "***!");
    }

    #[test]
    fn json_strings_and_keys_are_masked() {
        let m = Masker::new(["s3cr3t"]);
        let mut v = json!({"token": "s3cr3t", "list": ["a s3cr3t b", 1], "s3cr3t": true, "n": 5});
        m.mask_json(&mut v);
        assert_eq!(v, json!({"token": "***", "list": ["a *** b", 1], "***": true, "n": 5}));
    }
}
