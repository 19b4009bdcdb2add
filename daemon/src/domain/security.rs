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
    pub const ALL: [Verb; 6] = [
        Verb::Read,
        Verb::Write,
        Verb::Do,
        Verb::Cancel,
        Verb::Reveal,
        Verb::Admin,
    ];

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

// ---------------------------------------------------------------------------
// Replicated state: roles, users, tokens.

use std::collections::BTreeSet;

use opsd_cluster::{ReadView, Txn, TxnError};
use serde::{Deserialize, Serialize};

use super::{encode, DomainEvent, Outcome, Rejection};

/// The roles table: name → [`RoleRecord`].
pub const ROLES: &str = "security_roles";
/// The users table: name → [`UserRecord`].
pub const USERS: &str = "security_users";
/// The tokens table: id → [`TokenRecord`].
pub const TOKENS: &str = "security_tokens";
/// Security's own bookkeeping: one key, [`SecurityMeta`].
pub const META: &str = "security_meta";
const KEY_META: &[u8] = b"meta";

/// The built-in role (`*:*`) and the first user, made at bootstrap.
pub const ADMIN: &str = "admin";
/// The prefix of every token's text.
pub const TOKEN_PREFIX: &str = "opsd1";
/// The length of a token id, in hex digits.
pub const TOKEN_ID_HEX: usize = 16;
/// The length of a token secret, in bytes (64 hex digits).
pub const SECRET_BYTES: usize = 32;
/// The longest user or role name, in bytes.
pub const MAX_NAME: usize = 64;
/// The most rules a role holds.
pub const MAX_RULES: usize = 64;
/// The longest rule, in bytes.
pub const MAX_RULE: usize = 600;
/// The most roles a user holds.
pub const MAX_ROLES: usize = 32;
/// The longest token description, in bytes.
pub const MAX_DESCRIPTION: usize = 256;

impl Serialize for Verb {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for Verb {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        Verb::parse(&text).ok_or_else(|| serde::de::Error::custom(format!("unknown verb {text:?}")))
    }
}

impl Verb {
    /// The verb with this name, if any.
    pub fn parse(text: &str) -> Option<Verb> {
        Verb::ALL.into_iter().find(|v| v.as_str() == text)
    }
}

/// A grant: verbs on the objects a pattern matches. Text form
/// `VERB[,VERB...]:PATTERN` (`do,read:resources/app/*`, `*:*`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rule {
    /// The verbs granted, in [`Verb::ALL`] order, without repeats.
    pub verbs: Vec<Verb>,
    /// An exact object path, a prefix ending in `*`, or `*` (everything).
    pub pattern: String,
}

impl Rule {
    /// Parses a rule's text form; the message names the rule.
    pub fn parse(text: &str) -> Result<Rule, String> {
        let bad = |why: String| Err(format!("rule {text:?}: {why}"));
        if text.len() > MAX_RULE {
            return bad(format!("longer than {MAX_RULE} bytes"));
        }
        let Some((verbs, pattern)) = text.split_once(':') else {
            return bad("must be VERB[,VERB...]:PATTERN, e.g. read,do:resources/app/*".into());
        };
        let mut set = BTreeSet::new();
        for verb in verbs.split(',').map(str::trim) {
            if verb == "*" {
                set.extend(Verb::ALL);
            } else if let Some(v) = Verb::parse(verb) {
                set.insert(v);
            } else {
                let known: Vec<&str> = Verb::ALL.iter().map(|v| v.as_str()).collect();
                return bad(format!(
                    "unknown verb {verb:?} (known: {}, or * for all)",
                    known.join(", ")
                ));
            }
        }
        let pattern = pattern.trim();
        if pattern.is_empty() {
            return bad("the pattern must not be empty (* matches everything)".into());
        }
        if let Some(c) = pattern.chars().find(|c| c.is_whitespace() || c.is_control()) {
            return bad(format!(
                "the pattern must not contain whitespace or control characters (found {c:?})"
            ));
        }
        if pattern.strip_suffix('*').unwrap_or(pattern).contains('*') {
            return bad("a * may only end the pattern (a prefix match)".into());
        }
        const ROOTS: [&str; 5] = ["settings/", "kinds/", "resources/", "cluster", "security"];
        let root_ok = pattern == "*"
            || ROOTS.iter().any(|r| pattern.starts_with(r))
            || ROOTS
                .iter()
                .any(|r| r.starts_with(pattern.trim_end_matches('*')) && pattern.ends_with('*'));
        if !root_ok {
            return bad(format!(
                "the pattern must start with one of settings/, kinds/, resources/, cluster, security (or be *); got {pattern:?}"
            ));
        }
        Ok(Rule {
            verbs: set.into_iter().collect(),
            pattern: pattern.to_string(),
        })
    }

    /// Whether this rule grants `verb` on the object at `path`.
    pub fn grants(&self, verb: Verb, path: &str) -> bool {
        self.verbs.contains(&verb) && pattern_matches(&self.pattern, path)
    }

    /// Whether this rule grants `verb` on something under `prefix` (a
    /// path prefix): what a filtered list may show.
    pub fn grants_some_under(&self, verb: Verb, prefix: &str) -> bool {
        if !self.verbs.contains(&verb) {
            return false;
        }
        match self.pattern.strip_suffix('*') {
            Some(p) => p.starts_with(prefix) || prefix.starts_with(p),
            None => self.pattern.starts_with(prefix),
        }
    }
}

impl std::fmt::Display for Rule {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.verbs.len() == Verb::ALL.len() {
            return write!(f, "*:{}", self.pattern);
        }
        let verbs: Vec<&str> = self.verbs.iter().map(|v| v.as_str()).collect();
        write!(f, "{}:{}", verbs.join(","), self.pattern)
    }
}

/// Whether `pattern` (exact, `prefix*`, or `*`) matches `path`.
pub fn pattern_matches(pattern: &str, path: &str) -> bool {
    match pattern.strip_suffix('*') {
        Some(prefix) => path.starts_with(prefix),
        None => pattern == path,
    }
}

/// A stored role.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RoleRecord {
    /// The name.
    pub name: String,
    /// What it grants.
    pub rules: Vec<Rule>,
    /// Built in (`admin`): cannot be changed or removed.
    pub builtin: bool,
    /// The users holding it (so a role in use is not removed).
    pub users: BTreeSet<String>,
}

/// A stored user.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UserRecord {
    /// The name: the principal of everything done with its tokens.
    pub name: String,
    /// Its roles, by name.
    pub roles: Vec<String>,
    /// The ids of its tokens (so deleting the user revokes them).
    pub tokens: BTreeSet<String>,
    /// When it was made, by the proposer's clock.
    pub created_at_ms: i64,
}

/// A stored token: never its secret, only the secret's SHA-256.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenRecord {
    /// The id (16 hex digits), the public part of the token's text.
    pub id: String,
    /// The user it acts as.
    pub user: String,
    /// SHA-256 of the 32 secret bytes.
    pub secret_sha256: Vec<u8>,
    /// When it was made, by the proposer's clock.
    pub created_at_ms: i64,
    /// When it stops working, if ever.
    pub expires_at_ms: Option<i64>,
    /// What it is for.
    pub description: String,
}

/// Security's bookkeeping.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SecurityMeta {
    /// The users holding the `admin` role (the last one cannot be deleted).
    pub admins: BTreeSet<String>,
}

/// Checks a user or role name; `field` names it in the message.
pub fn validate_name(field: &str, name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err(format!("{field}: must not be empty"));
    }
    if name.len() > MAX_NAME {
        return Err(format!("{field}: longer than {MAX_NAME} bytes"));
    }
    if let Some(c) = name
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '@')))
    {
        return Err(format!(
            "{field}: {name:?} may hold only letters, digits, '-', '_', '.' and '@' (found {c:?})"
        ));
    }
    Ok(())
}

/// Checks a token id: 16 lowercase hex digits.
pub fn validate_token_id(id: &str) -> Result<(), String> {
    if id.len() != TOKEN_ID_HEX || !id.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
        return Err(format!(
            "token id: must be {TOKEN_ID_HEX} lowercase hex digits, got {id:?}"
        ));
    }
    Ok(())
}

/// A token's text split into its id and secret bytes; the message says
/// what is malformed, never echoing the secret.
pub fn parse_token(text: &str) -> Result<(String, Vec<u8>), String> {
    let mut parts = text.trim().split('.');
    let (Some(prefix), Some(id), Some(secret), None) = (parts.next(), parts.next(), parts.next(), parts.next()) else {
        return Err(format!("malformed token: must be {TOKEN_PREFIX}.ID.SECRET"));
    };
    if prefix != TOKEN_PREFIX {
        return Err(format!("malformed token: must start with {TOKEN_PREFIX}."));
    }
    validate_token_id(id).map_err(|_| format!("malformed token: the id must be {TOKEN_ID_HEX} hex digits"))?;
    let secret = from_hex(secret)
        .filter(|s| s.len() == SECRET_BYTES)
        .ok_or_else(|| format!("malformed token: the secret must be {} hex digits", SECRET_BYTES * 2))?;
    Ok((id.to_string(), secret))
}

/// A token's text.
pub fn token_text(id: &str, secret: &[u8]) -> String {
    format!("{TOKEN_PREFIX}.{id}.{}", to_hex(secret))
}

/// SHA-256 of a secret.
pub fn secret_hash(secret: &[u8]) -> Vec<u8> {
    ring::digest::digest(&ring::digest::SHA256, secret).as_ref().to_vec()
}

/// Compares two byte strings in time that depends on their lengths only.
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    let diff = a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y));
    std::hint::black_box(diff) == 0
}

/// Lowercase hex.
pub fn to_hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn from_hex(text: &str) -> Option<Vec<u8>> {
    if !text.len().is_multiple_of(2) {
        return None;
    }
    (0..text.len())
        .step_by(2)
        .map(|i| text.get(i..i + 2).and_then(|h| u8::from_str_radix(h, 16).ok()))
        .collect()
}

/// A new token's id and secret, from the system's random source (the
/// proposer's: never called in apply).
pub fn new_token_secret() -> Result<(String, Vec<u8>), String> {
    use ring::rand::SecureRandom;
    let rng = ring::rand::SystemRandom::new();
    let mut id = [0u8; TOKEN_ID_HEX / 2];
    let mut secret = vec![0u8; SECRET_BYTES];
    rng.fill(&mut id)
        .map_err(|_| "the system's random source failed".to_string())?;
    rng.fill(&mut secret)
        .map_err(|_| "the system's random source failed".to_string())?;
    Ok((to_hex(&id), secret))
}

// --- reads ---

fn get<T: serde::de::DeserializeOwned>(view: &ReadView<'_>, table: &str, key: &str) -> Result<Option<T>, TxnError> {
    view.get(table, key.as_bytes())?
        .map(|b| super::decode(&b, table))
        .transpose()
}

fn all<T: serde::de::DeserializeOwned>(view: &ReadView<'_>, table: &str) -> Result<Vec<T>, TxnError> {
    view.scan_prefix(table, b"")?
        .iter()
        .map(|(_, v)| super::decode(v, table))
        .collect()
}

/// Whether security was initialised (the bootstrap's `InitSecurity` applied).
pub fn initialised(view: &ReadView<'_>) -> Result<bool, TxnError> {
    Ok(view.get(META, KEY_META)?.is_some())
}

/// One role.
pub fn read_role(view: &ReadView<'_>, name: &str) -> Result<Option<RoleRecord>, TxnError> {
    get(view, ROLES, name)
}

/// One user.
pub fn read_user(view: &ReadView<'_>, name: &str) -> Result<Option<UserRecord>, TxnError> {
    get(view, USERS, name)
}

/// One token.
pub fn read_token(view: &ReadView<'_>, id: &str) -> Result<Option<TokenRecord>, TxnError> {
    get(view, TOKENS, id)
}

/// Every role, by name.
pub fn list_roles(view: &ReadView<'_>) -> Result<Vec<RoleRecord>, TxnError> {
    all(view, ROLES)
}

/// Every user, by name.
pub fn list_users(view: &ReadView<'_>) -> Result<Vec<UserRecord>, TxnError> {
    all(view, USERS)
}

/// Every token, by id.
pub fn list_tokens(view: &ReadView<'_>) -> Result<Vec<TokenRecord>, TxnError> {
    all(view, TOKENS)
}

// --- apply ---

fn tget<T: serde::de::DeserializeOwned>(txn: &Txn<'_>, table: &str, key: &str) -> Result<Option<T>, TxnError> {
    txn.get(table, key.as_bytes())?
        .map(|b| super::decode(&b, table))
        .transpose()
}

fn tput<T: Serialize>(txn: &mut Txn<'_>, table: &str, key: &str, v: &T) -> Result<(), TxnError> {
    txn.put(table, key.as_bytes(), &encode(v)?)
}

fn meta(txn: &Txn<'_>) -> Result<Option<SecurityMeta>, TxnError> {
    txn.get(META, KEY_META)?.map(|b| super::decode(&b, META)).transpose()
}

fn reject(r: Rejection) -> Result<Outcome, TxnError> {
    Ok(Outcome::Rejected(r))
}

fn changed(txn: &mut Txn<'_>, what: String) -> Result<Outcome, TxnError> {
    txn.emit(encode(&DomainEvent::Security { what: what.clone() })?);
    Ok(Outcome::SecurityChanged { what })
}

fn check_token_fields(id: &str, hash: &[u8]) -> Result<(), Rejection> {
    validate_token_id(id).map_err(Rejection::InvalidArgument)?;
    if hash.len() != 32 {
        return Err(Rejection::InvalidArgument(format!(
            "token {id}: the secret's hash must be 32 bytes (SHA-256), got {}",
            hash.len()
        )));
    }
    Ok(())
}

/// Applies `InitSecurity`: the `admin` role, the `admin` user and its first
/// token. Once only: a second is a no-op.
pub fn apply_init(txn: &mut Txn<'_>, token_id: &str, hash: &[u8], at_ms: i64) -> Result<Outcome, TxnError> {
    if meta(txn)?.is_some() {
        return Ok(Outcome::SecurityUnchanged);
    }
    if let Err(r) = check_token_fields(token_id, hash) {
        return reject(r);
    }
    let role = RoleRecord {
        name: ADMIN.into(),
        rules: vec![Rule {
            verbs: Verb::ALL.to_vec(),
            pattern: "*".into(),
        }],
        builtin: true,
        users: BTreeSet::from([ADMIN.to_string()]),
    };
    let user = UserRecord {
        name: ADMIN.into(),
        roles: vec![ADMIN.into()],
        tokens: BTreeSet::from([token_id.to_string()]),
        created_at_ms: at_ms,
    };
    let token = TokenRecord {
        id: token_id.into(),
        user: ADMIN.into(),
        secret_sha256: hash.to_vec(),
        created_at_ms: at_ms,
        expires_at_ms: None,
        description: "the bootstrap admin token (admin.token)".into(),
    };
    tput(txn, ROLES, ADMIN, &role)?;
    tput(txn, USERS, ADMIN, &user)?;
    tput(txn, TOKENS, token_id, &token)?;
    let meta = SecurityMeta {
        admins: BTreeSet::from([ADMIN.to_string()]),
    };
    txn.put(META, KEY_META, &encode(&meta)?)?;
    changed(txn, "security initialised".into())
}

/// Applies `PutRole`: creates or replaces a role (not `admin`).
pub fn apply_put_role(txn: &mut Txn<'_>, name: &str, rules: &[String]) -> Result<Outcome, TxnError> {
    if let Err(e) = validate_name("name", name) {
        return reject(Rejection::InvalidArgument(e));
    }
    if rules.is_empty() || rules.len() > MAX_RULES {
        return reject(Rejection::InvalidArgument(format!(
            "rules: a role has 1 to {MAX_RULES} rules, got {}",
            rules.len()
        )));
    }
    let parsed = match rules.iter().map(|r| Rule::parse(r)).collect::<Result<Vec<_>, _>>() {
        Ok(p) => p,
        Err(e) => return reject(Rejection::InvalidArgument(format!("rules: {e}"))),
    };
    let previous: Option<RoleRecord> = tget(txn, ROLES, name)?;
    if previous.as_ref().is_some_and(|r| r.builtin) || name == ADMIN {
        return reject(Rejection::FailedPrecondition(format!(
            "role {name:?} is built in and cannot be changed"
        )));
    }
    let role = RoleRecord {
        name: name.into(),
        rules: parsed,
        builtin: false,
        users: previous.map(|p| p.users).unwrap_or_default(),
    };
    tput(txn, ROLES, name, &role)?;
    changed(txn, format!("role {name} put"))
}

/// Applies `DeleteRole`: a role nobody holds, not `admin`.
pub fn apply_delete_role(txn: &mut Txn<'_>, name: &str) -> Result<Outcome, TxnError> {
    let Some(role) = tget::<RoleRecord>(txn, ROLES, name)? else {
        return reject(Rejection::NotFound(format!("role {name:?} not found")));
    };
    if role.builtin {
        return reject(Rejection::FailedPrecondition(format!(
            "role {name:?} is built in and cannot be removed"
        )));
    }
    if !role.users.is_empty() {
        let users: Vec<&str> = role.users.iter().map(String::as_str).collect();
        return reject(Rejection::FailedPrecondition(format!(
            "role {name:?} is held by {}; delete those users first",
            users.join(", ")
        )));
    }
    txn.delete(ROLES, name.as_bytes())?;
    changed(txn, format!("role {name} deleted"))
}

/// Applies `CreateUser`.
pub fn apply_create_user(txn: &mut Txn<'_>, name: &str, roles: &[String], at_ms: i64) -> Result<Outcome, TxnError> {
    if let Err(e) = validate_name("name", name) {
        return reject(Rejection::InvalidArgument(e));
    }
    if roles.len() > MAX_ROLES {
        return reject(Rejection::InvalidArgument(format!(
            "roles: at most {MAX_ROLES}, got {}",
            roles.len()
        )));
    }
    let unique: BTreeSet<&String> = roles.iter().collect();
    if unique.len() != roles.len() {
        return reject(Rejection::InvalidArgument("roles: a role is named twice".into()));
    }
    if tget::<UserRecord>(txn, USERS, name)?.is_some() {
        return reject(Rejection::AlreadyExists(format!("user {name:?} already exists")));
    }
    let mut records = Vec::new();
    for role in roles {
        match tget::<RoleRecord>(txn, ROLES, role)? {
            Some(r) => records.push(r),
            None => return reject(Rejection::NotFound(format!("roles: role {role:?} not found"))),
        }
    }
    for mut r in records {
        r.users.insert(name.into());
        tput(txn, ROLES, &r.name.clone(), &r)?;
    }
    if roles.iter().any(|r| r == ADMIN) {
        let mut m = meta(txn)?.unwrap_or_default();
        m.admins.insert(name.into());
        txn.put(META, KEY_META, &encode(&m)?)?;
    }
    let user = UserRecord {
        name: name.into(),
        roles: roles.to_vec(),
        tokens: BTreeSet::new(),
        created_at_ms: at_ms,
    };
    tput(txn, USERS, name, &user)?;
    changed(txn, format!("user {name} created"))
}

/// Applies `DeleteUser`: revokes its tokens; never the last admin.
pub fn apply_delete_user(txn: &mut Txn<'_>, name: &str) -> Result<Outcome, TxnError> {
    let Some(user) = tget::<UserRecord>(txn, USERS, name)? else {
        return reject(Rejection::NotFound(format!("user {name:?} not found")));
    };
    let mut m = meta(txn)?.unwrap_or_default();
    if m.admins.contains(name) && m.admins.len() == 1 {
        return reject(Rejection::FailedPrecondition(format!(
            "user {name:?} is the last admin and cannot be deleted; make another admin first"
        )));
    }
    for id in &user.tokens {
        txn.delete(TOKENS, id.as_bytes())?;
    }
    for role in &user.roles {
        if let Some(mut r) = tget::<RoleRecord>(txn, ROLES, role)? {
            r.users.remove(name);
            tput(txn, ROLES, role, &r)?;
        }
    }
    if m.admins.remove(name) {
        txn.put(META, KEY_META, &encode(&m)?)?;
    }
    txn.delete(USERS, name.as_bytes())?;
    changed(txn, format!("user {name} deleted"))
}

/// Applies `CreateToken`: its secret's hash, made by the proposer.
pub fn apply_create_token(txn: &mut Txn<'_>, token: TokenRecord) -> Result<Outcome, TxnError> {
    if let Err(r) = check_token_fields(&token.id, &token.secret_sha256) {
        return reject(r);
    }
    if token.description.len() > MAX_DESCRIPTION {
        return reject(Rejection::InvalidArgument(format!(
            "description: longer than {MAX_DESCRIPTION} bytes"
        )));
    }
    if token.expires_at_ms.is_some_and(|e| e <= token.created_at_ms) {
        return reject(Rejection::InvalidArgument("ttl: must be positive".into()));
    }
    let Some(mut user) = tget::<UserRecord>(txn, USERS, &token.user)? else {
        return reject(Rejection::NotFound(format!("user: user {:?} not found", token.user)));
    };
    if tget::<TokenRecord>(txn, TOKENS, &token.id)?.is_some() {
        return reject(Rejection::AlreadyExists(format!("token {} already exists", token.id)));
    }
    user.tokens.insert(token.id.clone());
    tput(txn, USERS, &user.name.clone(), &user)?;
    let id = token.id.clone();
    tput(txn, TOKENS, &id, &token)?;
    changed(txn, format!("token {id} created"))
}

/// Applies `RevokeToken`: the token is deleted.
pub fn apply_revoke_token(txn: &mut Txn<'_>, id: &str) -> Result<Outcome, TxnError> {
    let Some(token) = tget::<TokenRecord>(txn, TOKENS, id)? else {
        return reject(Rejection::NotFound(format!("token {id:?} not found")));
    };
    if let Some(mut user) = tget::<UserRecord>(txn, USERS, &token.user)? {
        user.tokens.remove(id);
        tput(txn, USERS, &token.user, &user)?;
    }
    txn.delete(TOKENS, id.as_bytes())?;
    changed(txn, format!("token {id} revoked"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::testing::TestState;
    use crate::domain::Command;

    const ID: &str = "0123456789abcdef";

    #[test]
    fn rules_parse_verbs_and_patterns() {
        let r = Rule::parse("do,read:resources/app/*").unwrap();
        assert_eq!(r.verbs, vec![Verb::Read, Verb::Do]);
        assert_eq!(r.to_string(), "read,do:resources/app/*");
        assert!(r.grants(Verb::Do, "resources/app/x"));
        assert!(!r.grants(Verb::Write, "resources/app/x"));
        assert!(!r.grants(Verb::Do, "resources/db/x"));
        let all = Rule::parse("*:*").unwrap();
        assert_eq!(all.to_string(), "*:*");
        assert!(Verb::ALL.iter().all(|v| all.grants(*v, "cluster")));
        let exact = Rule::parse("admin:cluster").unwrap();
        assert!(exact.grants(Verb::Admin, "cluster"));
        assert!(!exact.grants(Verb::Admin, "security"));
        assert!(Rule::parse("read:settings/app/*")
            .unwrap()
            .grants(Verb::Read, "settings/app/db/url"));
        assert!(Rule::parse("read,read:kinds/app").is_ok());
    }

    #[test]
    fn a_bad_rule_is_refused_naming_it() {
        for bad in [
            "deploy:resources/*",
            "read",
            "read:",
            "read:resources/*/x",
            "read:nowhere/x",
            "read:settings/a b",
            ":settings/x",
        ] {
            let e = Rule::parse(bad).unwrap_err();
            assert!(e.contains(&format!("{bad:?}")), "{bad}: {e}");
        }
        assert!(Rule::parse(&format!("read:settings/{}", "x".repeat(MAX_RULE))).is_err());
        // Multi-byte text never panics.
        assert!(Rule::parse("read:settings/é").is_ok());
        assert!(Rule::parse("read:é*").is_err());
    }

    #[test]
    fn a_rule_grants_some_under_a_prefix() {
        let r = Rule::parse("read:resources/app/*").unwrap();
        assert!(r.grants_some_under(Verb::Read, "resources/"));
        assert!(r.grants_some_under(Verb::Read, "resources/app/"));
        assert!(r.grants_some_under(Verb::Read, "resources/app/x/"));
        assert!(!r.grants_some_under(Verb::Read, "resources/db/"));
        assert!(!r.grants_some_under(Verb::Write, "resources/"));
        let exact = Rule::parse("read:settings/a").unwrap();
        assert!(exact.grants_some_under(Verb::Read, "settings/"));
        assert!(!exact.grants_some_under(Verb::Read, "settings/b"));
    }

    #[test]
    fn tokens_parse_and_hash() {
        let secret = [0xabu8; SECRET_BYTES];
        let text = token_text(ID, &secret);
        assert_eq!(text, format!("opsd1.{ID}.{}", "ab".repeat(32)));
        assert_eq!(parse_token(&text).unwrap(), (ID.to_string(), secret.to_vec()));
        for bad in [
            "",
            "opsd1",
            "opsd2.0123456789abcdef.00",
            "opsd1.0123.00",
            &format!("opsd1.{ID}.{}", "zz".repeat(32)),
            &format!("opsd1.{ID}.{}", "ab".repeat(31)),
            &format!("opsd1.{ID}.{}.x", "ab".repeat(32)),
            &format!("opsd1.{}.{}", "ABCDEF0123456789", "ab".repeat(32)),
        ] {
            let e = parse_token(bad).unwrap_err();
            assert!(e.starts_with("malformed token"), "{bad}: {e}");
            assert!(!e.contains(&"ab".repeat(32)), "the secret is never echoed");
        }
        let (id, secret) = new_token_secret().unwrap();
        assert!(validate_token_id(&id).is_ok());
        assert_eq!(secret.len(), SECRET_BYTES);
        assert_ne!(new_token_secret().unwrap().1, secret, "random secrets");
        assert_eq!(secret_hash(b"abc").len(), 32);
    }

    #[test]
    fn constant_time_eq_compares_bytes() {
        assert!(constant_time_eq(b"abc", b"abc"));
        assert!(!constant_time_eq(b"abc", b"abd"));
        assert!(!constant_time_eq(b"abc", b"ab"));
        assert!(constant_time_eq(b"", b""));
    }

    fn changed(out: &Outcome) -> bool {
        matches!(out, Outcome::SecurityChanged { .. })
    }

    fn refused(out: Outcome, needle: &str) -> Rejection {
        match out {
            Outcome::Rejected(r) => {
                let text = format!("{r:?}");
                assert!(text.contains(needle), "{text} lacks {needle:?}");
                r
            }
            other => panic!("expected a rejection naming {needle:?}, got {other:?}"),
        }
    }

    fn init(s: &mut TestState) {
        let (out, events) = s.apply(Command::InitSecurity {
            admin_token_id: ID.into(),
            admin_token_hash: vec![1; 32],
            at_ms: 10,
        });
        assert!(changed(&out), "{out:?}");
        assert!(matches!(events[..], [DomainEvent::Security { .. }]));
    }

    fn token(id: &str, user: &str) -> TokenRecord {
        TokenRecord {
            id: id.into(),
            user: user.into(),
            secret_sha256: vec![2; 32],
            created_at_ms: 10,
            expires_at_ms: None,
            description: String::new(),
        }
    }

    #[test]
    fn init_makes_the_admin_once() {
        let mut s = TestState::new();
        assert!(!initialised(&s.state.view()).unwrap());
        init(&mut s);
        let view = s.state.view();
        assert!(initialised(&view).unwrap());
        let admin = read_user(&view, ADMIN).unwrap().unwrap();
        assert_eq!(admin.roles, vec![ADMIN.to_string()]);
        assert!(read_role(&view, ADMIN).unwrap().unwrap().builtin);
        assert_eq!(read_token(&view, ID).unwrap().unwrap().user, ADMIN);
        drop(view);
        let (again, events) = s.apply(Command::InitSecurity {
            admin_token_id: "ffffffffffffffff".into(),
            admin_token_hash: vec![3; 32],
            at_ms: 20,
        });
        assert_eq!(again, Outcome::SecurityUnchanged);
        assert!(events.is_empty());
        assert!(read_token(&s.state.view(), "ffffffffffffffff").unwrap().is_none());
        // A malformed init is refused.
        let mut fresh = TestState::new();
        refused(
            fresh
                .apply(Command::InitSecurity {
                    admin_token_id: "x".into(),
                    admin_token_hash: vec![1; 32],
                    at_ms: 1,
                })
                .0,
            "token id",
        );
        assert!(!initialised(&fresh.state.view()).unwrap());
    }

    #[test]
    fn roles_users_and_tokens_apply_and_refuse() {
        let mut s = TestState::new();
        init(&mut s);
        let put_role = |name: &str, rules: &[&str]| Command::PutRole {
            name: name.into(),
            rules: rules.iter().map(|r| r.to_string()).collect(),
        };
        assert!(changed(&s.apply(put_role("deployer", &["do,read:resources/app/*"])).0));
        refused(s.apply(put_role("bad", &["deploy:resources/*"])).0, "unknown verb");
        refused(s.apply(put_role("bad", &[])).0, "rules");
        refused(s.apply(put_role("bad name", &["read:*"])).0, "name");
        refused(s.apply(put_role(ADMIN, &["read:*"])).0, "built in");
        assert!(read_role(&s.state.view(), "bad").unwrap().is_none());

        let create_user = |name: &str, roles: &[&str]| Command::CreateUser {
            name: name.into(),
            roles: roles.iter().map(|r| r.to_string()).collect(),
            at_ms: 11,
        };
        assert!(changed(&s.apply(create_user("ci", &["deployer"])).0));
        refused(s.apply(create_user("ci", &["deployer"])).0, "already exists");
        refused(s.apply(create_user("x", &["nope"])).0, "nope");
        refused(s.apply(create_user("x", &["deployer", "deployer"])).0, "twice");
        assert!(read_user(&s.state.view(), "x").unwrap().is_none());
        let role = read_role(&s.state.view(), "deployer").unwrap().unwrap();
        assert!(role.users.contains("ci"));
        // A role in use is not removed; replacing its rules keeps its users.
        refused(
            s.apply(Command::DeleteRole {
                name: "deployer".into(),
            })
            .0,
            "held by ci",
        );
        assert!(changed(&s.apply(put_role("deployer", &["read:*"])).0));
        assert!(read_role(&s.state.view(), "deployer")
            .unwrap()
            .unwrap()
            .users
            .contains("ci"));
        refused(s.apply(Command::DeleteRole { name: ADMIN.into() }).0, "built in");
        refused(s.apply(Command::DeleteRole { name: "nope".into() }).0, "not found");

        let id = "aaaaaaaaaaaaaaaa";
        assert!(changed(&s.apply(Command::CreateToken { token: token(id, "ci") }).0));
        refused(
            s.apply(Command::CreateToken { token: token(id, "ci") }).0,
            "already exists",
        );
        refused(
            s.apply(Command::CreateToken {
                token: token("bbbbbbbbbbbbbbbb", "nobody"),
            })
            .0,
            "nobody",
        );
        let mut bad = token("cccccccccccccccc", "ci");
        bad.secret_sha256 = vec![1; 3];
        refused(s.apply(Command::CreateToken { token: bad }).0, "32 bytes");
        let mut bad = token("cccccccccccccccc", "ci");
        bad.expires_at_ms = Some(5);
        refused(s.apply(Command::CreateToken { token: bad }).0, "ttl");
        let mut bad = token("cccccccccccccccc", "ci");
        bad.description = "d".repeat(MAX_DESCRIPTION + 1);
        refused(s.apply(Command::CreateToken { token: bad }).0, "description");
        assert!(read_user(&s.state.view(), "ci").unwrap().unwrap().tokens.contains(id));

        // Revoking deletes the token; a second revoke finds nothing.
        let (out, events) = s.apply(Command::RevokeToken { id: id.into() });
        assert!(changed(&out));
        assert!(matches!(events[..], [DomainEvent::Security { .. }]));
        assert!(read_token(&s.state.view(), id).unwrap().is_none());
        refused(s.apply(Command::RevokeToken { id: id.into() }).0, "not found");

        // Deleting a user revokes its tokens and frees its roles.
        s.apply(Command::CreateToken { token: token(id, "ci") });
        assert!(changed(&s.apply(Command::DeleteUser { name: "ci".into() }).0));
        let view = s.state.view();
        assert!(read_token(&view, id).unwrap().is_none());
        assert!(read_user(&view, "ci").unwrap().is_none());
        assert!(read_role(&view, "deployer").unwrap().unwrap().users.is_empty());
        drop(view);
        assert!(changed(
            &s.apply(Command::DeleteRole {
                name: "deployer".into()
            })
            .0
        ));
        refused(s.apply(Command::DeleteUser { name: "ci".into() }).0, "not found");
    }

    #[test]
    fn the_last_admin_cannot_be_deleted() {
        let mut s = TestState::new();
        init(&mut s);
        refused(s.apply(Command::DeleteUser { name: ADMIN.into() }).0, "last admin");
        s.apply(Command::CreateUser {
            name: "root2".into(),
            roles: vec![ADMIN.into()],
            at_ms: 1,
        });
        assert!(changed(&s.apply(Command::DeleteUser { name: ADMIN.into() }).0));
        assert!(
            read_token(&s.state.view(), ID).unwrap().is_none(),
            "its token went with it"
        );
        refused(s.apply(Command::DeleteUser { name: "root2".into() }).0, "last admin");
    }
}
