//! Settings in scope: the settings that apply to one resource, merged from
//! three scopes of the settings store, the most specific winning.
//!
//! | scope | key | applies to |
//! | --- | --- | --- |
//! | global | `scope/global/KEY` | every resource |
//! | kind | `scope/kind/KIND/KEY` | every resource of KIND |
//! | resource | `scope/resource/KIND/NAME/KEY` | the resource KIND/NAME |
//!
//! KEY is everything after the scope's prefix and may itself contain `/`
//! (`scope/global/db/url` is the setting `db/url`); a key ending at the
//! prefix (`scope/global/`) names no setting and is ignored. Kind and
//! resource names cannot contain `/`, so the layout is unambiguous.
//!
//! Steps get the merged view as `StepRequest::settings`; exec steps read it on
//! stdin, machines of a local cluster in their environment
//! (docs/services.md, "Settings in scope").

use std::collections::BTreeMap;

use opsd_cluster::{ReadView, TxnError};

use super::settings;

/// The prefix of every key in scope.
pub const PREFIX: &str = "scope/";

/// A setting in scope: its value and the settings key it came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Scoped {
    /// The value.
    pub value: String,
    /// The full settings key the value was read from
    /// (`scope/kind/app/LOG_LEVEL`): which one to change to change it.
    pub source: String,
    /// Whether that setting is secret (its value masked in answers and logs).
    pub secret: bool,
}

/// The three prefixes whose keys apply to `kind`/`name`, least specific
/// first.
pub fn prefixes(kind: &str, name: &str) -> [String; 3] {
    [
        format!("{PREFIX}global/"),
        format!("{PREFIX}kind/{kind}/"),
        format!("{PREFIX}resource/{kind}/{name}/"),
    ]
}

/// The settings in scope of `kind`/`name`, out of any settings (key, value)
/// pairs: key (without its scope prefix) to value and source, the most
/// specific scope winning. Keys outside the three scopes are ignored.
pub fn merge<'a>(
    kind: &str,
    name: &str,
    settings: impl IntoIterator<Item = (&'a str, &'a str)>,
) -> BTreeMap<String, Scoped> {
    let prefixes = prefixes(kind, name);
    // (rank, value, source) per key; a higher rank is more specific.
    let mut best: BTreeMap<String, (usize, Scoped)> = BTreeMap::new();
    for (key, value) in settings {
        let Some((rank, short)) = prefixes
            .iter()
            .enumerate()
            .find_map(|(rank, p)| key.strip_prefix(p.as_str()).map(|rest| (rank, rest)))
        else {
            continue;
        };
        if short.is_empty() {
            continue;
        }
        if best.get(short).is_some_and(|(have, _)| *have > rank) {
            continue;
        }
        best.insert(
            short.to_string(),
            (
                rank,
                Scoped {
                    value: value.to_string(),
                    source: key.to_string(),
                    secret: false,
                },
            ),
        );
    }
    best.into_iter().map(|(k, (_, s))| (k, s)).collect()
}

/// The settings in scope of `kind`/`name` in a view of the applied state.
pub fn in_scope(view: &ReadView<'_>, kind: &str, name: &str) -> Result<BTreeMap<String, Scoped>, TxnError> {
    let mut records = Vec::new();
    for prefix in prefixes(kind, name) {
        records.extend(settings::list(view, &prefix)?);
    }
    let mut merged = merge(kind, name, records.iter().map(|r| (r.key.as_str(), r.value.as_str())));
    for scoped in merged.values_mut() {
        scoped.secret = records.iter().any(|r| r.secret && r.key == scoped.source);
    }
    Ok(merged)
}

/// The values of the secret settings among `scoped`: what the engine masks
/// out of a step's log.
pub fn secret_values(scoped: &BTreeMap<String, Scoped>) -> Vec<String> {
    scoped.values().filter(|s| s.secret).map(|s| s.value.clone()).collect()
}

/// Only the values of [`in_scope`]: what a step gets.
pub fn values(scoped: BTreeMap<String, Scoped>) -> BTreeMap<String, String> {
    scoped.into_iter().map(|(k, s)| (k, s.value)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::testing::TestState;
    use crate::domain::{Command, Trigger};

    fn merged(pairs: &[(&str, &str)]) -> Vec<(String, String, String)> {
        merge("app", "web", pairs.iter().copied())
            .into_iter()
            .map(|(k, s)| (k, s.value, s.source))
            .collect()
    }

    fn row(key: &str, value: &str, source: &str) -> (String, String, String) {
        (key.into(), value.into(), source.into())
    }

    #[test]
    fn the_most_specific_scope_wins_whatever_the_order() {
        let pairs = [
            ("scope/resource/app/web/LEVEL", "resource"),
            ("scope/global/LEVEL", "global"),
            ("scope/kind/app/LEVEL", "kind"),
            ("scope/global/ONLY_GLOBAL", "g"),
            ("scope/kind/app/ONLY_KIND", "k"),
            ("scope/global/KIND_OVER_GLOBAL", "g"),
            ("scope/kind/app/KIND_OVER_GLOBAL", "k"),
        ];
        let want = vec![
            row("KIND_OVER_GLOBAL", "k", "scope/kind/app/KIND_OVER_GLOBAL"),
            row("LEVEL", "resource", "scope/resource/app/web/LEVEL"),
            row("ONLY_GLOBAL", "g", "scope/global/ONLY_GLOBAL"),
            row("ONLY_KIND", "k", "scope/kind/app/ONLY_KIND"),
        ];
        assert_eq!(merged(&pairs), want);
        let mut reversed = pairs;
        reversed.reverse();
        assert_eq!(merged(&reversed), want, "the order of the input does not matter");
    }

    #[test]
    fn other_kinds_resources_and_keys_are_not_in_scope() {
        let pairs = [
            ("scope/kind/app2/A", "other kind sharing a prefix"),
            ("scope/kind/ap/A", "other kind"),
            ("scope/resource/app/web2/A", "other resource"),
            ("scope/resource/app/we/A", "other resource"),
            ("scope/resource/db/web/A", "same name, other kind"),
            ("global/A", "not under scope/"),
            ("scope/A", "no scope named"),
            ("scope/global/", "no key"),
            ("scope/resource/app/web/", "no key"),
        ];
        assert_eq!(merged(&pairs), vec![]);
    }

    #[test]
    fn keys_may_contain_slashes() {
        let pairs = [
            ("scope/global/db/url", "global"),
            ("scope/resource/app/web/db/url", "mine"),
            ("scope/kind/app/db/pool/size", "5"),
        ];
        assert_eq!(
            merged(&pairs),
            vec![
                row("db/pool/size", "5", "scope/kind/app/db/pool/size"),
                row("db/url", "mine", "scope/resource/app/web/db/url"),
            ]
        );
    }

    #[test]
    fn in_scope_reads_the_store() {
        let mut s = TestState::new();
        for (key, value) in [
            ("scope/global/A", "1"),
            ("scope/kind/app/A", "2"),
            ("scope/kind/app/B", "3"),
            ("scope/resource/app/other/B", "4"),
            ("unrelated", "5"),
        ] {
            s.apply(Command::PutSetting {
                key: key.into(),
                value: value.into(),
                expected_revision: None,
                trigger: Trigger::unrecorded(),
            });
        }
        let got = in_scope(&s.state.view(), "app", "web").unwrap();
        assert_eq!(
            values(got.clone()),
            BTreeMap::from([("A".to_string(), "2".to_string()), ("B".to_string(), "3".to_string())])
        );
        assert_eq!(got["A"].source, "scope/kind/app/A");
        assert!(!got["A"].secret);
        assert_eq!(
            in_scope(&s.state.view(), "db", "x").unwrap()["A"].source,
            "scope/global/A"
        );
    }

    #[test]
    fn in_scope_says_which_values_are_secret() {
        let mut s = TestState::new();
        for (key, value, secret) in [
            ("scope/global/TOKEN", "global-token", Some(true)),
            ("scope/kind/app/TOKEN", "kind-token", None),
            ("scope/global/PASSWORD", "pw", Some(true)),
            ("scope/kind/app/PASSWORD", "plain-pw", Some(false)),
            ("scope/global/LEVEL", "info", None),
        ] {
            s.apply(Command::PutSettingV2 {
                key: key.into(),
                value: value.into(),
                expected_revision: None,
                trigger: Trigger::unrecorded(),
                secret,
            });
        }
        let got = in_scope(&s.state.view(), "app", "web").unwrap();
        assert!(!got["TOKEN"].secret, "the winning (kind) setting is not secret");
        assert!(!got["PASSWORD"].secret);
        assert!(!got["LEVEL"].secret);
        let other = in_scope(&s.state.view(), "db", "x").unwrap();
        assert!(other["TOKEN"].secret && other["PASSWORD"].secret && !other["LEVEL"].secret);
        let mut secrets = secret_values(&other);
        secrets.sort();
        assert_eq!(secrets, vec!["global-token".to_string(), "pw".to_string()]);
    }
}
