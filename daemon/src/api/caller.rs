//! Who is calling. One layer, in front of every client service, turns a
//! request's credentials into a [`Caller`] before any handler runs; handlers
//! read it from the request ([`Caller::of`]), check it may do what it asks
//! ([`Caller::require`]) and build every [`Trigger`] (the audit's who) from
//! it, so identity is decided in one place.
//!
//! The credential is a bearer token (`authorization: Bearer
//! opsd1.ID.SECRET`), looked up in this node's applied state on every
//! request (what the lookup found is kept while the tokens, users and roles
//! tables have no new write: see [`TokenCache`]): a revoke applied here is a
//! revoke here. The layer never refuses
//! a request itself: it records the outcome, and [`Caller::of`] answers a
//! request without a valid token with UNAUTHENTICATED. So health checks and
//! reflection, which never ask for a caller, stay open, and every other
//! handler is closed by the first line it runs.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use opsd_cluster::{ReadView, StateReader};
use tonic::metadata::MetadataMap;
use tonic::service::InterceptorLayer;
use tonic::{Request, Status};
use tracing::warn;

use crate::domain::resources::MAX_TEXT;
use crate::domain::security::{self as sec, Object, Rule, Verb};
use crate::domain::Trigger;
use crate::engine;

/// The principal of a request without a token, where one is let through
/// (the calls a joining node makes, see [`Caller::of_or_anonymous`]).
pub const ANONYMOUS: &str = "anonymous";
/// The principal of a request made by another node of the cluster.
pub const NODE: &str = "node";
/// The source recorded on every change asked for through the API.
pub const API_SOURCE: &str = "api";
/// What a request without a token is told.
pub const NO_TOKEN: &str = "no token: give --token, OPSD_TOKEN or a token file (--token-file, OPSD_TOKEN_FILE)";
/// What a request with a token this node does not hold is told.
pub const UNKNOWN_TOKEN: &str = "unknown or revoked token";

/// What a caller may do.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Grants {
    /// Everything (another node of the cluster).
    All,
    /// What these rules (of its roles) grant.
    Rules(Vec<Rule>),
}

/// Who is calling, as the identity layer established it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    /// The user (or node) the request acts as.
    pub principal: String,
    /// The token it presented, if any: streams re-check it as tokens change.
    pub token_id: Option<String>,
    grants: Grants,
}

/// What the identity layer found: a caller, or why there is none.
#[derive(Debug, Clone)]
struct Identity {
    caller: Result<Caller, Status>,
    had_token: bool,
}

impl Caller {
    /// A user acting with token `token_id`, granted `rules`.
    pub fn user(name: &str, token_id: Option<String>, rules: Vec<Rule>) -> Caller {
        Caller {
            principal: name.to_string(),
            token_id,
            grants: Grants::Rules(rules),
        }
    }

    /// Another node of the cluster, proven by the certificate it presented
    /// on the client port (verified against the cluster CA in the TLS
    /// handshake): allowed everything.
    pub fn node() -> Caller {
        Caller {
            principal: NODE.to_string(),
            token_id: None,
            grants: Grants::All,
        }
    }

    /// Whether this caller is another node of the cluster.
    pub fn is_node(&self) -> bool {
        self.grants == Grants::All
    }

    /// A caller without a token, granted nothing.
    fn anonymous() -> Caller {
        Caller::user(ANONYMOUS, None, Vec::new())
    }

    /// Whether this caller gave no credential at all (no token, no node
    /// certificate): see [`Caller::of_or_anonymous`].
    pub fn is_anonymous(&self) -> bool {
        self.token_id.is_none() && self.principal == ANONYMOUS
    }

    /// The caller a token in `metadata` names, read from `view` and checked
    /// against `now_ms` (this node's clock).
    pub fn authenticate(
        view: &ReadView<'_>,
        metadata: &MetadataMap,
        now_ms: i64,
        cache: &TokenCache,
    ) -> Result<Caller, Status> {
        let Some(value) = metadata.get("authorization") else {
            return Err(Status::unauthenticated(NO_TOKEN));
        };
        let text = value
            .to_str()
            .ok()
            .and_then(|v| v.strip_prefix("Bearer "))
            .ok_or_else(|| Status::unauthenticated("malformed token: send it as authorization: Bearer TOKEN"))?;
        let (id, secret) = sec::parse_token(text).map_err(Status::unauthenticated)?;
        let read = |e: opsd_cluster::TxnError| Status::internal(format!("reading the state: {e}"));
        let generations = TokenCache::generations(view);
        let cached = cache.get(&id, generations);
        let read_token;
        let found = match &cached {
            Some(resolved) => Some(&resolved.token),
            None => {
                read_token = sec::read_token(view, &id).map_err(read)?;
                read_token.as_ref()
            }
        };
        // Compared even when absent, so an unknown id takes as long.
        let hash = sec::secret_hash(&secret);
        let stored = found.map(|t| t.secret_sha256.as_slice()).unwrap_or(&[0u8; 32]);
        let matches = sec::constant_time_eq(stored, &hash);
        let Some(token) = found.filter(|_| matches) else {
            if !sec::initialised(view).map_err(read)? {
                return Err(Status::unavailable(
                    "this node has not applied the cluster's users and tokens yet; retry, here or on another node",
                ));
            }
            return Err(Status::unauthenticated(UNKNOWN_TOKEN));
        };
        if let Some(at) = token.expires_at_ms.filter(|at| *at <= now_ms) {
            return Err(Status::unauthenticated(format!(
                "expired token: token {id} expired at {}",
                humantime::format_rfc3339_seconds(
                    std::time::UNIX_EPOCH + std::time::Duration::from_millis(at.max(0) as u64)
                )
            )));
        }
        let resolved = match cached {
            Some(resolved) => resolved,
            None => {
                let user = sec::read_user(view, &token.user)
                    .map_err(read)?
                    .ok_or_else(|| Status::unauthenticated(UNKNOWN_TOKEN))?;
                let mut rules = Vec::new();
                for role in &user.roles {
                    if let Some(r) = sec::read_role(view, role).map_err(read)? {
                        rules.extend(r.rules);
                    }
                }
                let resolved = Arc::new(Resolved {
                    token: token.clone(),
                    user: user.name,
                    rules,
                });
                cache.put(&id, generations, resolved.clone());
                resolved
            }
        };
        Ok(Caller::user(&resolved.user, Some(id), resolved.rules.clone()))
    }

    /// Whether the token this caller presented still works (a stream asks
    /// whenever users, roles or tokens change): UNAUTHENTICATED once it is
    /// revoked, its user deleted, or it has expired.
    pub fn recheck(&self, reader: &StateReader) -> Result<(), Status> {
        let Some(id) = &self.token_id else {
            return Ok(());
        };
        let view = reader.view();
        let token = sec::read_token(&view, id)
            .map_err(|e| Status::internal(format!("reading the state: {e}")))?
            .filter(|t| t.user == self.principal)
            .ok_or_else(|| Status::unauthenticated(format!("{UNKNOWN_TOKEN}: the token of this stream was revoked")))?;
        if token.expires_at_ms.is_some_and(|at| at <= engine::now_ms()) {
            return Err(Status::unauthenticated(
                "expired token: the token of this stream expired",
            ));
        }
        Ok(())
    }

    /// The caller of a request that passed the identity layer, or
    /// UNAUTHENTICATED saying why it has none. A request the layer did not
    /// see is a wiring fault of the server, answered as INTERNAL.
    pub fn of<T>(req: &Request<T>) -> Result<&Caller, Status> {
        let identity = req
            .extensions()
            .get::<Identity>()
            .ok_or_else(|| Status::internal("the request has no caller: the identity layer did not run"))?;
        identity.caller.as_ref().map_err(Clone::clone)
    }

    /// Makes this the caller of `req`, as the identity layer would: for
    /// calls made in-process (tests), which no layer sees.
    pub fn attach<T>(self, req: &mut Request<T>) {
        req.extensions_mut().insert(Identity {
            caller: Ok(self),
            had_token: true,
        });
    }

    /// As [`Caller::of`], except that a request without any token acts as
    /// [`ANONYMOUS`] (granted nothing) rather than being refused. A token
    /// that is given must be valid.
    // Used by the two calls a joining node makes with its join token as
    // its credential: Cluster.JoinCertificate and Cluster.Join.
    pub fn of_or_anonymous<T>(req: &Request<T>) -> Result<Caller, Status> {
        match req.extensions().get::<Identity>() {
            Some(Identity {
                caller: Err(_),
                had_token: false,
            }) => Ok(Caller::anonymous()),
            _ => Caller::of(req).cloned(),
        }
    }

    /// Whether this caller may do `verb` to `object`.
    pub fn allows(&self, verb: Verb, object: &Object<'_>) -> bool {
        match &self.grants {
            Grants::All => true,
            Grants::Rules(rules) => {
                let path = object.to_string();
                rules.iter().any(|r| r.grants(verb, &path))
            }
        }
    }

    /// Whether this caller may do `verb` to anything whose path starts with
    /// `prefix`: whether a filtered listing may show it anything at all.
    pub fn allows_some_under(&self, verb: Verb, prefix: &str) -> bool {
        match &self.grants {
            Grants::All => true,
            Grants::Rules(rules) => rules.iter().any(|r| r.grants_some_under(verb, prefix)),
        }
    }

    /// Refuses with PERMISSION_DENIED, naming the verb and the object,
    /// unless this caller may do `verb` to `object`. Refusals are logged.
    pub fn require(&self, verb: Verb, object: &Object<'_>) -> Result<(), Status> {
        if self.allows(verb, object) {
            return Ok(());
        }
        warn!(user = %self.principal, %verb, %object, "permission denied");
        Err(Status::permission_denied(format!(
            "{} may not {verb} {object}",
            self.principal
        )))
    }

    /// As [`Caller::require`], for a request that acts on everything under
    /// `prefix` and shows only what may be seen: refused only when nothing
    /// under it could be.
    pub fn require_some_under(&self, verb: Verb, prefix: &str) -> Result<(), Status> {
        if self.allows_some_under(verb, prefix) {
            return Ok(());
        }
        warn!(user = %self.principal, %verb, prefix, "permission denied");
        Err(Status::permission_denied(format!(
            "{} may not {verb} anything under {prefix}*",
            self.principal
        )))
    }

    /// The trigger of a change this caller asks for now, for `reason`
    /// (their words, possibly empty). Every API trigger is built here.
    pub fn trigger(&self, reason: String) -> Result<Trigger, Status> {
        if reason.len() > MAX_TEXT {
            return Err(Status::invalid_argument(format!(
                "reason: longer than {MAX_TEXT} bytes"
            )));
        }
        Ok(Trigger {
            principal: self.principal.clone(),
            reason,
            source: API_SOURCE.into(),
            at_ms: engine::now_ms(),
        })
    }
}

/// The caller of a request, who must be allowed `verb` on `object`.
pub fn require<'r, T>(req: &'r Request<T>, verb: Verb, object: &Object<'_>) -> Result<&'r Caller, Status> {
    let caller = Caller::of(req)?;
    caller.require(verb, object)?;
    Ok(caller)
}

/// A token that authenticated, with its user's name and the rules of the
/// user's roles.
struct Resolved {
    token: sec::TokenRecord,
    user: String,
    rules: Vec<Rule>,
}

/// The tokens that authenticated lately, with what they resolved to, kept
/// while the tokens, users and roles tables are unchanged: a request then
/// skips reading its token, user and roles (three reads of the database
/// per request). Any committed change to those tables empties it, so a
/// revocation or a role change applies to the next request exactly as
/// without it; the secret and the expiry are checked on every request.
#[derive(Default)]
pub struct TokenCache {
    inner: Mutex<CacheInner>,
}

#[derive(Default)]
struct CacheInner {
    /// The generations of the security tables the entries were read at.
    generations: [u64; 3],
    entries: HashMap<String, Arc<Resolved>>,
}

impl TokenCache {
    /// The most tokens kept; when full, it starts again empty.
    const MAX_ENTRIES: usize = 4096;

    /// The generations of the tables a token's resolution reads, in `view`.
    fn generations(view: &ReadView<'_>) -> Option<[u64; 3]> {
        Some([
            view.generation(sec::TOKENS)?,
            view.generation(sec::USERS)?,
            view.generation(sec::ROLES)?,
        ])
    }

    fn get(&self, id: &str, generations: Option<[u64; 3]>) -> Option<Arc<Resolved>> {
        let inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        (Some(inner.generations) == generations)
            .then(|| inner.entries.get(id).cloned())
            .flatten()
    }

    fn put(&self, id: &str, generations: Option<[u64; 3]>, resolved: Arc<Resolved>) {
        let Some(generations) = generations else { return };
        let mut inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        if inner.generations != generations || inner.entries.len() >= Self::MAX_ENTRIES {
            inner.entries.clear();
            inner.generations = generations;
        }
        inner.entries.insert(id.to_string(), resolved);
    }
}

/// The identity layer's interceptor: authenticates against this node's
/// applied state.
#[derive(Clone)]
pub struct Identify {
    reader: StateReader,
    cache: Arc<TokenCache>,
}

impl tonic::service::Interceptor for Identify {
    fn call(&mut self, mut req: Request<()>) -> Result<Request<()>, Status> {
        // The client port asks for a client certificate and verifies any
        // one presented against the cluster CA: one presented is a node's.
        if req.peer_certs().is_some_and(|certs| !certs.is_empty()) {
            req.extensions_mut().insert(Identity {
                caller: Ok(Caller::node()),
                had_token: false,
            });
            return Ok(req);
        }
        let had_token = req.metadata().contains_key("authorization");
        let caller = Caller::authenticate(&self.reader.view(), req.metadata(), engine::now_ms(), &self.cache);
        if let Err(status) = &caller {
            if had_token {
                warn!(reason = status.message(), "a request's token was refused");
            }
        }
        req.extensions_mut().insert(Identity { caller, had_token });
        Ok(req)
    }
}

/// The identity layer, applied once to the whole client server.
pub fn layer(reader: StateReader) -> InterceptorLayer<Identify> {
    InterceptorLayer::new(Identify {
        reader,
        cache: Default::default(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::security::{secret_hash, token_text, TokenRecord};
    use crate::domain::testing::TestState;
    use crate::domain::{Command, Outcome};

    const ID: &str = "00112233445566aa";

    fn identify(s: &TestState, cache: &TokenCache, header: Option<&str>, now: i64) -> Result<Caller, Status> {
        let mut md = MetadataMap::new();
        if let Some(h) = header {
            md.insert("authorization", h.parse().unwrap());
        }
        Caller::authenticate(&s.state.view(), &md, now, cache)
    }

    /// A command creating token `id` of `user` with `secret`.
    fn create_token(id: &str, user: &str, secret: &[u8], expires_at_ms: Option<i64>) -> Command {
        Command::CreateToken {
            token: TokenRecord {
                id: id.into(),
                user: user.into(),
                secret_sha256: secret_hash(secret),
                created_at_ms: 1,
                expires_at_ms,
                description: String::new(),
            },
        }
    }

    fn state() -> (TestState, String) {
        let mut s = TestState::new();
        let secret = vec![7u8; 32];
        let (out, _) = s.apply(Command::InitSecurity {
            admin_token_id: ID.into(),
            admin_token_hash: secret_hash(&secret),
            at_ms: 1,
        });
        assert!(matches!(out, Outcome::SecurityChanged { .. }), "{out:?}");
        (s, token_text(ID, &secret))
    }

    #[test]
    fn a_valid_token_names_its_user_and_grants_its_roles() {
        let (mut s, admin) = state();
        let cache = TokenCache::default();
        let caller = identify(&s, &cache, Some(&format!("Bearer {admin}")), 5).unwrap();
        assert_eq!(caller.principal, "admin");
        assert!(caller.allows(Verb::Admin, &Object::Security));
        s.apply(Command::PutRole {
            name: "deployer".into(),
            rules: vec!["do,read:resources/app/*".into()],
        });
        s.apply(Command::CreateUser {
            name: "ci".into(),
            roles: vec!["deployer".into()],
            at_ms: 1,
        });
        let secret = vec![9u8; 32];
        let out = s.apply(create_token("aaaaaaaaaaaaaaaa", "ci", &secret, Some(100)));
        assert!(matches!(out.0, Outcome::SecurityChanged { .. }), "{out:?}");
        let text = format!("Bearer {}", token_text("aaaaaaaaaaaaaaaa", &secret));
        let ci = identify(&s, &cache, Some(&text), 50).unwrap();
        assert_eq!(
            identify(&s, &cache, Some(&text), 50).unwrap(),
            ci,
            "known, it resolves the same"
        );
        assert_eq!(ci.principal, "ci");
        let app = Object::Resource { kind: "app", name: "x" };
        assert!(ci.allows(Verb::Do, &app));
        assert!(!ci.allows(Verb::Write, &app));
        assert!(!ci.allows(Verb::Read, &Object::Resource { kind: "db", name: "x" }));
        let denied = ci.require(Verb::Admin, &Object::Cluster).unwrap_err();
        assert_eq!(denied.code(), tonic::Code::PermissionDenied);
        assert_eq!(denied.message(), "ci may not admin cluster");
        assert!(ci.allows_some_under(Verb::Read, "resources/"));
        assert!(!ci.allows_some_under(Verb::Read, "settings/"));
        // Expired by this node's clock.
        let expired = identify(&s, &cache, Some(&text), 100).unwrap_err();
        assert!(expired.message().starts_with("expired token"), "{}", expired.message());
    }

    #[test]
    fn a_missing_malformed_unknown_or_wrong_token_is_unauthenticated() {
        let (s, admin) = state();
        let cache = TokenCache::default();
        // Once the right secret was seen, a wrong one is still refused.
        identify(&s, &cache, Some(&format!("Bearer {admin}")), 5).unwrap();
        let wrong = token_text(ID, &[8u8; 32]);
        let unknown = token_text("ffffffffffffffff", &[7u8; 32]);
        let cases = [
            (None, NO_TOKEN.to_string()),
            (Some(admin.clone()), "malformed token".to_string()),
            (Some("Bearer x".to_string()), "malformed token".to_string()),
            (Some("Bearer opsd1.zz.yy".to_string()), "malformed token".to_string()),
            (Some(format!("Bearer {wrong}")), UNKNOWN_TOKEN.to_string()),
            (Some(format!("Bearer {unknown}")), UNKNOWN_TOKEN.to_string()),
        ];
        for (header, message) in cases {
            let status = identify(&s, &cache, header.as_deref(), 5).unwrap_err();
            assert_eq!(status.code(), tonic::Code::Unauthenticated, "{header:?}");
            assert!(
                status.message().starts_with(&message),
                "{header:?}: {}",
                status.message()
            );
            assert!(
                !status.message().contains(&"07".repeat(32)),
                "the secret is never echoed"
            );
        }
    }

    #[test]
    fn a_change_to_tokens_users_or_roles_applies_to_the_next_request() {
        let (mut s, admin) = state();
        let cache = TokenCache::default();
        let bearer = |id: &str, secret: &[u8]| format!("Bearer {}", token_text(id, secret));
        s.apply(Command::PutRole {
            name: "reader".into(),
            rules: vec!["read:resources/*".into()],
        });
        s.apply(Command::CreateUser {
            name: "ci".into(),
            roles: vec!["reader".into()],
            at_ms: 1,
        });
        s.apply(create_token("aaaaaaaaaaaaaaaa", "ci", &[1u8; 32], None));
        s.apply(create_token("bbbbbbbbbbbbbbbb", "ci", &[2u8; 32], None));
        let (one, two) = (
            bearer("aaaaaaaaaaaaaaaa", &[1u8; 32]),
            bearer("bbbbbbbbbbbbbbbb", &[2u8; 32]),
        );
        let app = Object::Resource { kind: "app", name: "x" };
        for header in [&one, &two, &one] {
            assert!(identify(&s, &cache, Some(header), 5).unwrap().allows(Verb::Read, &app));
        }

        // A role's rules change: the next request has the new ones.
        s.apply(Command::PutRole {
            name: "reader".into(),
            rules: vec!["read:settings/*".into()],
        });
        let ci = identify(&s, &cache, Some(&one), 5).unwrap();
        assert!(!ci.allows(Verb::Read, &app));
        assert!(ci.allows_some_under(Verb::Read, "settings/"));

        // A revoked token stops at once; the other goes on.
        s.apply(Command::RevokeToken {
            id: "aaaaaaaaaaaaaaaa".into(),
        });
        let status = identify(&s, &cache, Some(&one), 5).unwrap_err();
        assert!(status.message().starts_with(UNKNOWN_TOKEN), "{}", status.message());
        identify(&s, &cache, Some(&two), 5).unwrap();

        // A deleted user's tokens stop at once.
        let (out, _) = s.apply(Command::DeleteUser { name: "ci".into() });
        assert!(matches!(out, Outcome::SecurityChanged { .. }), "{out:?}");
        assert_eq!(
            identify(&s, &cache, Some(&two), 5).unwrap_err().code(),
            tonic::Code::Unauthenticated
        );
        identify(&s, &cache, Some(&format!("Bearer {admin}")), 5).unwrap();
    }

    #[test]
    fn a_request_that_skipped_the_layer_has_no_caller() {
        let status = Caller::of(&Request::new(())).unwrap_err();
        assert_eq!(status.code(), tonic::Code::Internal);
    }

    #[test]
    fn a_node_may_do_everything() {
        let node = Caller::node();
        assert!(node.allows(Verb::Admin, &Object::Cluster));
        assert_eq!(node.principal, NODE);
    }

    #[test]
    fn triggers_carry_the_caller_and_bound_the_reason() {
        let caller = Caller::user("alice", None, Vec::new());
        let t = caller.trigger("because".into()).unwrap();
        assert_eq!(
            (t.principal.as_str(), t.reason.as_str(), t.source.as_str()),
            ("alice", "because", API_SOURCE)
        );
        assert!(t.at_ms > 0);
        let status = caller.trigger("x".repeat(MAX_TEXT + 1)).unwrap_err();
        assert_eq!(status.code(), tonic::Code::InvalidArgument);
        assert!(status.message().starts_with("reason"), "{}", status.message());
    }
}
