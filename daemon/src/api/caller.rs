//! Who is calling. One layer, in front of every client service, turns a
//! request's credentials into a [`Caller`] before any handler runs; handlers
//! read it from the request and build every [`Trigger`] (the audit's who)
//! from it, so identity is decided in one place.
//!
//! Until authentication arrives the credential is a claim: the
//! `x-opsd-principal` metadata header, checked for shape only.

use tonic::metadata::MetadataMap;
use tonic::service::InterceptorLayer;
use tonic::{Request, Status};

use crate::domain::resources::MAX_TEXT;
use crate::domain::security::{Object, Verb};
use crate::domain::Trigger;
use crate::engine;

/// The metadata key naming the principal a request acts as (the contract's).
pub use opsd_proto::PRINCIPAL_KEY as PRINCIPAL_HEADER;
/// The principal of a request that names none.
pub const ANONYMOUS: &str = "anonymous";
/// The longest principal, in bytes.
pub const MAX_PRINCIPAL: usize = 128;
/// The source recorded on every change asked for through the API.
pub const API_SOURCE: &str = "api";

/// Who is calling, as the identity layer established it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    /// The user or service the request acts as.
    pub principal: String,
    /// A node of this cluster: the request came over a TLS connection that
    /// presented a certificate of the cluster CA (verified in the
    /// handshake). Nodes may do everything.
    pub node: bool,
}

impl Caller {
    /// The caller a request's metadata names: the principal header, or
    /// [`ANONYMOUS`] without one. A malformed header is refused, never
    /// replaced, so that a typo does not act as someone else.
    pub fn from_metadata(metadata: &MetadataMap) -> Result<Caller, Status> {
        let Some(value) = metadata.get(PRINCIPAL_HEADER) else {
            return Ok(Caller {
                principal: ANONYMOUS.to_string(),
                node: false,
            });
        };
        let principal = value
            .to_str()
            .ok()
            .filter(|p| !p.is_empty() && p.len() <= MAX_PRINCIPAL && !p.chars().any(|c| c.is_control()))
            .ok_or_else(|| {
                Status::invalid_argument(format!(
                    "{PRINCIPAL_HEADER}: must be 1 to {MAX_PRINCIPAL} printable ASCII characters"
                ))
            })?;
        Ok(Caller {
            principal: principal.to_string(),
            node: false,
        })
    }

    /// The caller of a request that passed the identity layer. A request
    /// without one is a wiring fault of the server, answered as INTERNAL
    /// rather than guessed at.
    pub fn of<T>(req: &Request<T>) -> Result<&Caller, Status> {
        req.extensions()
            .get::<Caller>()
            .ok_or_else(|| Status::internal("the request has no caller: the identity layer did not run"))
    }

    /// Whether this caller may do `verb` to `object`.
    ///
    /// Seam: every caller may do everything until authorisation lands.
    /// A node of this cluster (see [`Caller::node`]), acting as `principal`.
    pub fn node(principal: &str) -> Caller {
        Caller {
            principal: principal.to_string(),
            node: true,
        }
    }

    pub fn allows(&self, verb: Verb, object: &Object<'_>) -> bool {
        if self.node {
            return true;
        }
        let _ = (verb, object);
        true
    }

    /// Refuses with PERMISSION_DENIED, naming the verb and the object,
    /// unless this caller may do `verb` to `object`.
    pub fn require(&self, verb: Verb, object: &Object<'_>) -> Result<(), Status> {
        if self.allows(verb, object) {
            return Ok(());
        }
        Err(Status::permission_denied(format!(
            "{} may not {verb} {object}",
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

/// The trigger of the change a request asks for: its caller, now, `reason`.
pub fn trigger_of<T>(req: &Request<T>, reason: String) -> Result<Trigger, Status> {
    Caller::of(req)?.trigger(reason)
}

/// Establishes the caller of a request and stores it in the request's
/// extensions, or refuses the request.
pub fn identify(mut req: Request<()>) -> Result<Request<()>, Status> {
    let mut caller = Caller::from_metadata(req.metadata())?;
    // The client port verifies a client certificate against the cluster CA
    // in the handshake: one presented at all is a node's.
    if req.peer_certs().is_some_and(|certs| !certs.is_empty()) {
        caller = Caller::node(&caller.principal);
    }
    req.extensions_mut().insert(caller);
    Ok(req)
}

/// The signature of [`identify`], as the layer holds it.
pub type Identify = fn(Request<()>) -> Result<Request<()>, Status>;

/// The identity layer, applied once to the whole client server.
pub fn layer() -> InterceptorLayer<Identify> {
    InterceptorLayer::new(identify)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn caller_with(value: Option<&str>) -> Result<Caller, Status> {
        let mut req = Request::new(());
        if let Some(v) = value {
            req.metadata_mut().insert(PRINCIPAL_HEADER, v.parse().unwrap());
        }
        identify(req).map(|r| Caller::of(&r).unwrap().clone())
    }

    #[test]
    fn the_header_names_the_caller() {
        assert_eq!(caller_with(Some("alice")).unwrap().principal, "alice");
        assert_eq!(caller_with(Some("svc deploy@ci")).unwrap().principal, "svc deploy@ci");
        let longest = "p".repeat(MAX_PRINCIPAL);
        assert_eq!(caller_with(Some(&longest)).unwrap().principal, longest);
    }

    #[test]
    fn no_header_is_anonymous() {
        assert_eq!(caller_with(None).unwrap().principal, ANONYMOUS);
    }

    #[test]
    fn a_malformed_header_is_refused_naming_it() {
        let too_long = "p".repeat(MAX_PRINCIPAL + 1);
        for bad in ["", too_long.as_str(), "tab\there"] {
            let status = caller_with(Some(bad)).unwrap_err();
            assert_eq!(status.code(), tonic::Code::InvalidArgument, "{bad:?}");
            assert!(status.message().starts_with(PRINCIPAL_HEADER), "{}", status.message());
        }
        // Bytes that are not ASCII cannot be read as a principal.
        let mut req = Request::new(());
        req.metadata_mut().insert(
            PRINCIPAL_HEADER,
            tonic::metadata::MetadataValue::try_from(&b"caf\xc3\xa9"[..]).unwrap(),
        );
        let status = identify(req).unwrap_err();
        assert_eq!(status.code(), tonic::Code::InvalidArgument);
    }

    #[test]
    fn a_request_that_skipped_the_layer_has_no_caller() {
        let status = Caller::of(&Request::new(())).unwrap_err();
        assert_eq!(status.code(), tonic::Code::Internal);
    }

    #[test]
    fn triggers_carry_the_caller_and_bound_the_reason() {
        let caller = Caller {
            principal: "alice".into(),
            node: false,
        };
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
