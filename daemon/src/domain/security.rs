//! Who may do what: the verbs and objects every permission check names.
//! Users, roles, rules and tokens (replicated state, changed through apply
//! like everything else) are kept here too.

use std::fmt;

/// What a request does to an object. A rule grants verbs on objects.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Verb {
    /// See it: get, list, watch, runs, logs, history, stats, status.
    Read,
    /// Change it: put/delete settings, apply kinds, create/delete resources.
    Write,
    /// Send events to a resource (`opsctl do`).
    Do,
    /// Cancel a resource's runs.
    Cancel,
    /// See the values of secret settings.
    Reveal,
    /// Change cluster membership, users, roles and tokens.
    Admin,
}

impl Verb {
    /// Every verb, in the order they are listed.
    pub const ALL: [Verb; 6] = [Verb::Read, Verb::Write, Verb::Do, Verb::Cancel, Verb::Reveal, Verb::Admin];

    /// The verb's name in rules and messages.
    pub fn as_str(self) -> &'static str {
        match self {
            Verb::Read => "read",
            Verb::Write => "write",
            Verb::Do => "do",
            Verb::Cancel => "cancel",
            Verb::Reveal => "reveal",
            Verb::Admin => "admin",
        }
    }
}

impl fmt::Display for Verb {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What a request acts on. Its path (`settings/KEY`, `kinds/KIND`,
/// `resources/KIND/NAME`, `cluster`, `security`) is what rule patterns match.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Object<'a> {
    /// A setting, by key.
    Setting(&'a str),
    /// A kind, by name (writing one is running code on the leader).
    Kind(&'a str),
    /// A resource and its runs.
    Resource {
        /// The kind.
        kind: &'a str,
        /// The name.
        name: &'a str,
    },
    /// Cluster membership and join tokens.
    Cluster,
    /// Users, roles and tokens.
    Security,
}

impl fmt::Display for Object<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Object::Setting(key) => write!(f, "settings/{key}"),
            Object::Kind(kind) => write!(f, "kinds/{kind}"),
            Object::Resource { kind, name } => write!(f, "resources/{kind}/{name}"),
            Object::Cluster => f.write_str("cluster"),
            Object::Security => f.write_str("security"),
        }
    }
}
