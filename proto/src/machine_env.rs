//! The environment a machine of a local cluster gets, beyond what it inherits
//! from opsd: one rule, used by the `local` provider to start machines and by
//! `opsctl shell` to open a shell in a machine's context, so the two never
//! disagree.
//!
//! Precedence, lowest first: the settings in scope of the cluster (those whose
//! key is a valid environment variable name; the others are skipped), then
//! the cluster's `spec.env`, then opsd's own variables (`PORT`, `OPSD_HOST`,
//! `OPSD_CLUSTER`, `OPSD_MACHINE`).

use std::collections::BTreeMap;

/// Whether `name` is usable as an environment variable name:
/// `[A-Za-z_][A-Za-z0-9_]*`.
pub fn is_env_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars.next().is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// Whether a setting can be given to a machine: its key is an environment
/// variable name and its value has no NUL byte.
pub fn is_env_setting(key: &str, value: &str) -> bool {
    is_env_name(key) && !value.contains('\0')
}

/// The keys of `settings` no machine gets (see [`is_env_setting`]), in key
/// order.
pub fn skipped_settings(settings: &BTreeMap<String, String>) -> Vec<&str> {
    settings
        .iter()
        .filter(|(k, v)| !is_env_setting(k, v))
        .map(|(k, _)| k.as_str())
        .collect()
}

/// The variables machine `index` of cluster `cluster`, listening on
/// `host`:`port`, gets: `settings` (the settings in scope, key to value) under `spec_env`
/// (the cluster's `spec.env`) under opsd's own, one value per name, by name.
pub fn machine_env(
    settings: &BTreeMap<String, String>,
    spec_env: &[(String, String)],
    cluster: &str,
    index: u64,
    host: &str,
    port: u16,
) -> Vec<(String, String)> {
    let mut vars: BTreeMap<String, String> = settings
        .iter()
        .filter(|(k, v)| is_env_setting(k, v))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    vars.extend(spec_env.iter().cloned());
    vars.insert("PORT".into(), port.to_string());
    vars.insert("OPSD_HOST".into(), host.to_string());
    vars.insert("OPSD_CLUSTER".into(), cluster.to_string());
    vars.insert("OPSD_MACHINE".into(), index.to_string());
    vars.into_iter().collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn env_names() {
        for ok in ["A", "_", "LOG_LEVEL", "a1", "_x_9"] {
            assert!(is_env_name(ok), "{ok}");
        }
        for bad in ["", "1A", "db/url", "A-B", "A.B", "A B", "A=B", "É"] {
            assert!(!is_env_name(bad), "{bad}");
        }
    }

    #[test]
    fn settings_then_spec_env_then_opsd_own() {
        let settings = BTreeMap::from(
            [
                ("LEVEL", "setting"),
                ("ONLY_SETTING", "s"),
                ("PORT", "from a setting"),
                ("OPSD_MACHINE", "from a setting"),
                ("db/url", "skipped"),
                ("NUL", "a\0b"),
            ]
            .map(|(k, v)| (k.to_string(), v.to_string())),
        );
        let spec_env = [("LEVEL".to_string(), "spec".to_string())];
        let env = machine_env(&settings, &spec_env, "web", 1, "127.0.0.1", 8080);
        let want: Vec<(String, String)> = [
            ("LEVEL", "spec"),
            ("ONLY_SETTING", "s"),
            ("OPSD_CLUSTER", "web"),
            ("OPSD_HOST", "127.0.0.1"),
            ("OPSD_MACHINE", "1"),
            ("PORT", "8080"),
        ]
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .into_iter()
        .collect();
        assert_eq!(env, want);
        assert_eq!(skipped_settings(&settings), vec!["NUL", "db/url"]);
    }
}
