//! What a request ends as: a verified [`Principal`] or a [`Denial`] with a stable [`Reason`],
//! and the table that maps each reason to its HTTP status and RFC 6750 / RFC 7617 challenge.

use std::{
    fmt,
    sync::{Arc, OnceLock},
};

use arc_swap::ArcSwapOption;
use bytes::Bytes;
use serde_json::{Map, Value};

use crate::{claims::Claims, pb};

/// Stable reason codes (SPEC §2). Also used as metric labels and span attributes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Reason {
    MissingCredential,
    MalformedCredential,
    AmbiguousCredential,
    UnsupportedCredential,
    InvalidSignature,
    UnknownKey,
    DisallowedAlgorithm,
    Expired,
    NotYetValid,
    UntrustedIssuer,
    AudienceMismatch,
    InvalidClaims,
    Revoked,
    Inactive,
    CertificateMismatch,
    InsufficientScope,
    PolicyDenied,
    RateLimited,
    UpstreamUnavailable,
    MalformedRequest,
    Overloaded,
}

/// The `WWW-Authenticate` challenge a denial carries, if any (RFC 6750 §3).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Challenge {
    /// No challenge at all.
    Absent,
    /// `Bearer realm="..."` without an `error`.
    Plain,
    InvalidToken,
    InvalidRequest,
    InsufficientScope,
}

/// How one reason is answered on every surface: the HTTP status of an HTTP-facing deny, the
/// gRPC code of Envoy's `CheckResponse.status`, and the challenge.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReasonRow {
    pub http_status: u16,
    pub grpc_code: tonic::Code,
    pub challenge: Challenge,
}

const fn row(http_status: u16, grpc_code: tonic::Code, challenge: Challenge) -> ReasonRow {
    ReasonRow {
        http_status,
        grpc_code,
        challenge,
    }
}

impl Reason {
    /// Every reason, in the order of the reason table (docs/reasons.md).
    pub const ALL: [Reason; 21] = [
        Reason::MissingCredential,
        Reason::MalformedCredential,
        Reason::AmbiguousCredential,
        Reason::UnsupportedCredential,
        Reason::InvalidSignature,
        Reason::UnknownKey,
        Reason::DisallowedAlgorithm,
        Reason::Expired,
        Reason::NotYetValid,
        Reason::UntrustedIssuer,
        Reason::AudienceMismatch,
        Reason::InvalidClaims,
        Reason::Revoked,
        Reason::Inactive,
        Reason::CertificateMismatch,
        Reason::InsufficientScope,
        Reason::PolicyDenied,
        Reason::RateLimited,
        Reason::UpstreamUnavailable,
        Reason::MalformedRequest,
        Reason::Overloaded,
    ];

    /// The reason's stable name, as in SPEC §2.
    pub fn as_str(self) -> &'static str {
        self.to_proto().as_str_name()
    }

    /// The one row of the reason table every surface reads (SPEC §2, docs/reasons.md).
    pub const fn row(self) -> ReasonRow {
        use Challenge::*;
        use tonic::Code::*;
        match self {
            Reason::MissingCredential => row(401, Unauthenticated, Plain),
            Reason::MalformedCredential => row(401, Unauthenticated, InvalidToken),
            Reason::AmbiguousCredential => row(400, InvalidArgument, InvalidRequest),
            Reason::UnsupportedCredential => row(401, Unauthenticated, Plain),
            Reason::InvalidSignature => row(401, Unauthenticated, InvalidToken),
            Reason::UnknownKey => row(401, Unauthenticated, InvalidToken),
            Reason::DisallowedAlgorithm => row(401, Unauthenticated, InvalidToken),
            Reason::Expired => row(401, Unauthenticated, InvalidToken),
            Reason::NotYetValid => row(401, Unauthenticated, InvalidToken),
            Reason::UntrustedIssuer => row(401, Unauthenticated, InvalidToken),
            Reason::AudienceMismatch => row(401, Unauthenticated, InvalidToken),
            Reason::InvalidClaims => row(401, Unauthenticated, InvalidToken),
            Reason::Revoked => row(401, Unauthenticated, InvalidToken),
            Reason::Inactive => row(401, Unauthenticated, InvalidToken),
            Reason::CertificateMismatch => row(401, Unauthenticated, InvalidToken),
            Reason::InsufficientScope => row(403, PermissionDenied, InsufficientScope),
            Reason::PolicyDenied => row(403, PermissionDenied, Absent),
            Reason::RateLimited => row(429, ResourceExhausted, Absent),
            Reason::UpstreamUnavailable => row(503, Unavailable, Absent),
            Reason::MalformedRequest => row(400, InvalidArgument, Absent),
            Reason::Overloaded => row(503, Unavailable, Absent),
        }
    }

    /// The HTTP status an HTTP-facing surface answers with.
    pub fn http_status(self) -> u16 {
        self.row().http_status
    }

    pub fn to_proto(self) -> pb::Reason {
        match self {
            Reason::MissingCredential => pb::Reason::MissingCredential,
            Reason::MalformedCredential => pb::Reason::MalformedCredential,
            Reason::AmbiguousCredential => pb::Reason::AmbiguousCredential,
            Reason::UnsupportedCredential => pb::Reason::UnsupportedCredential,
            Reason::InvalidSignature => pb::Reason::InvalidSignature,
            Reason::UnknownKey => pb::Reason::UnknownKey,
            Reason::DisallowedAlgorithm => pb::Reason::DisallowedAlgorithm,
            Reason::Expired => pb::Reason::Expired,
            Reason::NotYetValid => pb::Reason::NotYetValid,
            Reason::UntrustedIssuer => pb::Reason::UntrustedIssuer,
            Reason::AudienceMismatch => pb::Reason::AudienceMismatch,
            Reason::InvalidClaims => pb::Reason::InvalidClaims,
            Reason::Revoked => pb::Reason::Revoked,
            Reason::Inactive => pb::Reason::Inactive,
            Reason::CertificateMismatch => pb::Reason::CertificateMismatch,
            Reason::InsufficientScope => pb::Reason::InsufficientScope,
            Reason::PolicyDenied => pb::Reason::PolicyDenied,
            Reason::RateLimited => pb::Reason::RateLimited,
            Reason::UpstreamUnavailable => pb::Reason::UpstreamUnavailable,
            Reason::MalformedRequest => pb::Reason::MalformedRequest,
            Reason::Overloaded => pb::Reason::Overloaded,
        }
    }
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The authentication scheme a challenge is issued for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scheme {
    Bearer,
    Basic,
    /// RFC 9449 §7.1: the request used the `DPoP` scheme, or its token is DPoP-bound;
    /// `invalid_proof` when the DPoP proof itself is what failed (`invalid_dpop_proof`).
    Dpop {
        invalid_proof: bool,
    },
}

/// A refusal. `message` is for humans and never contains the credential or any part of it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Denial {
    pub reason: Reason,
    pub message: String,
    /// Scopes the caller lacks, for `insufficient_scope` challenges.
    pub missing_scopes: Vec<String>,
    pub scheme: Scheme,
    /// For a rate limit that was hit: when to retry, and the limit (response headers).
    pub rate_limit: Option<RateLimitExceeded>,
}

/// A rate limit a request exceeded, as HTTP answers report it: `Retry-After`, and the IETF
/// `RateLimit` / `RateLimit-Policy` fields.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RateLimitExceeded {
    /// Which limit: `key`, `subject` or `rule`.
    pub policy: &'static str,
    /// Seconds until a request may succeed (at least 1).
    pub retry_after: u64,
    /// Requests the limit allows at once (its burst).
    pub quota: u32,
    /// Seconds over which the quota refills.
    pub window: u64,
}

impl RateLimitExceeded {
    /// The response headers of a request this limit refused.
    pub fn headers(&self) -> [(&'static str, String); 3] {
        [
            ("retry-after", self.retry_after.to_string()),
            (
                "ratelimit",
                format!("\"{}\";r=0;t={}", self.policy, self.retry_after),
            ),
            (
                "ratelimit-policy",
                format!("\"{}\";q={};w={}", self.policy, self.quota, self.window),
            ),
        ]
    }
}

impl Denial {
    pub fn new(reason: Reason, message: impl Into<String>) -> Self {
        Self {
            reason,
            message: message.into(),
            missing_scopes: Vec::new(),
            scheme: Scheme::Bearer,
            rate_limit: None,
        }
    }

    /// RATE_LIMITED by `limit`.
    pub fn rate_limited(limit: RateLimitExceeded) -> Self {
        Self {
            rate_limit: Some(limit),
            ..Self::new(
                Reason::RateLimited,
                "rate limit exceeded; retry after the time in Retry-After",
            )
        }
    }

    /// A denial whose challenge is `Basic` (RFC 7617).
    pub fn basic(reason: Reason, message: impl Into<String>) -> Self {
        Self {
            scheme: Scheme::Basic,
            ..Self::new(reason, message)
        }
    }

    pub fn insufficient_scope(missing: Vec<String>) -> Self {
        let message = format!("missing required scopes: {}", missing.join(" "));
        Self {
            reason: Reason::InsufficientScope,
            message,
            missing_scopes: missing,
            scheme: Scheme::Bearer,
            rate_limit: None,
        }
    }

    /// A denial whose challenge is `DPoP` (RFC 9449 §7.1); `invalid_proof` when the proof
    /// is what failed.
    pub fn dpop(reason: Reason, invalid_proof: bool, message: impl Into<String>) -> Self {
        Self {
            scheme: Scheme::Dpop { invalid_proof },
            ..Self::new(reason, message)
        }
    }

    /// The `WWW-Authenticate` value for this denial (RFC 6750 §3, RFC 7617 §2), or empty when
    /// the reason carries no challenge. Without DPoP algorithms to name; see
    /// [`Denial::challenge`].
    pub fn www_authenticate(&self, realm: &str) -> String {
        self.challenge(realm, None)
    }

    /// The `WWW-Authenticate` value for this denial. `dpop_algs` (space-separated) is set
    /// when DPoP is offered: `DPoP` challenges name them (RFC 9449 §7.1), and a request with
    /// no credential is offered both schemes.
    pub fn challenge(&self, realm: &str, dpop_algs: Option<&str>) -> String {
        let challenge = self.reason.row().challenge;
        if challenge == Challenge::Absent {
            return String::new();
        }
        let realm = quoted_string_safe(realm);
        let error = match challenge {
            Challenge::Absent | Challenge::Plain => None,
            Challenge::InvalidToken => Some("invalid_token"),
            Challenge::InvalidRequest => Some("invalid_request"),
            Challenge::InsufficientScope => Some("insufficient_scope"),
        };
        let scope = (challenge == Challenge::InsufficientScope).then(|| {
            format!(
                ", scope=\"{}\"",
                quoted_string_safe(&self.missing_scopes.join(" "))
            )
        });
        let scope = scope.as_deref().unwrap_or_default();
        match self.scheme {
            Scheme::Basic => format!("Basic realm=\"{realm}\", charset=\"UTF-8\""),
            Scheme::Bearer => {
                let bearer = match error {
                    None => format!("Bearer realm=\"{realm}\""),
                    Some(error) => format!("Bearer realm=\"{realm}\", error=\"{error}\"{scope}"),
                };
                match (challenge, dpop_algs) {
                    (Challenge::Plain, Some(algs)) => {
                        format!("{bearer}, DPoP algs=\"{}\"", quoted_string_safe(algs))
                    }
                    _ => bearer,
                }
            }
            Scheme::Dpop { invalid_proof } => {
                let error = if invalid_proof {
                    Some("invalid_dpop_proof")
                } else {
                    error
                };
                let mut value = format!("DPoP realm=\"{realm}\"");
                if let Some(error) = error {
                    value.push_str(&format!(", error=\"{error}\"{scope}"));
                }
                if let Some(algs) = dpop_algs {
                    value.push_str(&format!(", algs=\"{}\"", quoted_string_safe(algs)));
                }
                value
            }
        }
    }

    /// The denial as the gRPC API returns it, with its `WWW-Authenticate` value.
    pub fn to_proto(&self, www_authenticate: String) -> pb::Denial {
        pb::Denial {
            reason: self.reason.to_proto() as i32,
            message: self.message.clone(),
            www_authenticate,
        }
    }
}

/// Keeps a value safe inside an HTTP quoted-string: printable ASCII without `"` or `\`.
fn quoted_string_safe(value: &str) -> String {
    value
        .chars()
        .filter(|c| c.is_ascii_graphic() || *c == ' ')
        .filter(|c| *c != '"' && *c != '\\')
        .collect()
}

pub use crate::vocabulary::CredentialType;

/// The wire form of a credential type.
impl CredentialType {
    pub fn to_proto(self) -> pb::CredentialType {
        match self {
            CredentialType::Jwt => pb::CredentialType::Jwt,
            CredentialType::OpaqueToken => pb::CredentialType::OpaqueToken,
            CredentialType::ApiKey => pb::CredentialType::ApiKey,
            CredentialType::Basic => pb::CredentialType::Basic,
            CredentialType::ClientCertificate => pb::CredentialType::ClientCertificate,
        }
    }
}

/// One identity token minted for upstreams (`identity_token`), as a principal keeps it.
#[derive(Debug)]
pub struct IdentityToken {
    /// The compact JWS.
    pub token: Box<str>,
    pub(crate) audience: Box<str>,
    /// The minter (`identity_token::IdentityTokens`) that made it.
    pub(crate) minter: u64,
    pub(crate) serial: u64,
    /// Seconds since the epoch from which a request mints a fresh token instead.
    pub(crate) refresh_at: i64,
}

impl IdentityToken {
    /// Unique in this process: ext_authz answers rendered with this token are keyed by it.
    pub fn serial(&self) -> u64 {
        self.serial
    }

    /// Whether `minter` may answer a request for `audience` at `now` with this token.
    pub(crate) fn reusable(&self, minter: u64, audience: &str, now: i64) -> bool {
        self.minter == minter && *self.audience == *audience && now < self.refresh_at
    }
}

/// A verified identity. Built once per verification and shared (cached) behind an `Arc`.
/// It is encoded as a `portcullis.v1.Principal` when it is made, and its claims are kept
/// only in that encoding (see [`Claims`]), which Authenticate and Authorize answer with.
#[derive(Debug)]
pub struct Principal {
    pub subject: String,
    /// The configured issuer or store name that accepted the credential (shared with it).
    pub issuer: Arc<str>,
    pub credential_type: CredentialType,
    pub claims: Claims,
    pub scopes: Vec<String>,
    /// Seconds since the Unix epoch.
    pub expires_at: Option<i64>,
    /// The key's id (shared with the key, when it has one).
    pub key_id: Arc<str>,
    /// Whether the claims hold `cnf` (a binding to a key or a certificate).
    confirmed: bool,
    /// The encoded `portcullis.v1.Principal`; `claims` is a slice of it.
    encoded: Bytes,
    /// The last ext_authz allow rendered for this principal.
    check_allow: ArcSwapOption<CheckAllowParts>,
    /// The principal as CEL rules see it, made on the first CEL evaluation.
    cel_variables: OnceLock<Box<Result<CelVariables, String>>>,
    /// Identity tokens minted for this principal (`response.identity_token`), newest last.
    identity_tokens: ArcSwapOption<Vec<Arc<IdentityToken>>>,
    /// An API key's own rate limit (`rate_limit` on its record).
    pub rate_limit: Option<crate::config::RateLimit>,
}

/// The `claims` and `principal` variables of a CEL rule, for one principal. Values share
/// their contents (reference-counted), so handing them to each evaluation copies nothing.
#[derive(Debug, Clone)]
pub struct CelVariables {
    pub claims: cel::Value,
    pub principal: cel::Value,
}

/// The parts of an ext_authz allow that depend only on the principal, the pipeline (its
/// `claims_to_headers`) and the rule that allowed, encoded (see `grpc::wire`), with the
/// pipeline and rule they were rendered for.
#[derive(Debug)]
pub struct CheckAllowParts {
    pipeline: u64,
    rule: Box<str>,
    /// The serial of the identity token the parts carry (0: none).
    identity_token: u64,
    /// An encoded `OkHttpResponse`: identity headers and `headers_to_remove`.
    pub ok_response: Bytes,
    /// An encoded `google.protobuf.Struct`: decision, rule and principal.
    pub dynamic_metadata: Bytes,
}

impl Principal {
    /// What a DPoP-bound access token is bound to (RFC 9449 §6: `cnf.jkt`, a JWK
    /// thumbprint), as the claims hold it. Only JWTs and introspected tokens are bound.
    pub fn dpop_binding(&self) -> Option<Value> {
        match self.credential_type {
            CredentialType::Jwt | CredentialType::OpaqueToken => self.confirmation("jkt"),
            _ => None,
        }
    }

    /// The member `name` of the `cnf` claim (RFC 7800), if the claims hold one.
    pub fn confirmation(&self, name: &str) -> Option<Value> {
        if !self.confirmed {
            return None;
        }
        match self.claims.get("cnf")? {
            Value::Object(mut cnf) => cnf.remove(name),
            _ => None,
        }
    }

    pub fn new(
        subject: String,
        issuer: Arc<str>,
        credential_type: CredentialType,
        claims: Map<String, Value>,
        scopes: Vec<String>,
        expires_at: Option<i64>,
        key_id: Arc<str>,
    ) -> Self {
        use prost::Message;
        // The canonical encoding, field by field in tag order, with the claims (tag 4)
        // written where a slice of the result can keep them.
        let before_claims = pb::Principal {
            subject,
            issuer: issuer.to_string(),
            credential_type: credential_type.to_proto() as i32,
            ..Default::default()
        };
        let after_claims = pb::Principal {
            scopes,
            expires_at: expires_at.map(|seconds| prost_types::Timestamp { seconds, nanos: 0 }),
            key_id: key_id.to_string(),
            ..Default::default()
        };
        let claims_struct = crate::claims::json_object_to_struct(&claims);
        let claims_len = claims_struct.encoded_len();
        let mut buf = Vec::with_capacity(
            before_claims.encoded_len()
                + prost::encoding::key_len(4)
                + prost::encoding::encoded_len_varint(claims_len as u64)
                + claims_len
                + after_claims.encoded_len(),
        );
        before_claims.encode_raw(&mut buf);
        prost::encoding::encode_key(4, prost::encoding::WireType::LengthDelimited, &mut buf);
        prost::encoding::encode_varint(claims_len as u64, &mut buf);
        let claims_start = buf.len();
        claims_struct.encode_raw(&mut buf);
        let claims_end = buf.len();
        after_claims.encode_raw(&mut buf);
        let encoded = Bytes::from(buf);
        let confirmed = claims.contains_key("cnf");
        Self {
            subject: before_claims.subject,
            issuer,
            credential_type,
            claims: Claims::with_encoding(claims, encoded.slice(claims_start..claims_end)),
            scopes: after_claims.scopes,
            expires_at,
            key_id,
            confirmed,
            encoded,
            check_allow: ArcSwapOption::empty(),
            cel_variables: OnceLock::new(),
            identity_tokens: ArcSwapOption::empty(),
            rate_limit: None,
        }
    }

    /// The same principal, counted against `limit` (an API key's own rate limit).
    pub fn with_rate_limit(mut self, limit: Option<crate::config::RateLimit>) -> Self {
        self.rate_limit = limit;
        self
    }

    /// The claim at a dotted path (`realm_access.roles`), split into its segments.
    pub fn claim_at(&self, path: &[String]) -> Option<Value> {
        self.claims.at(path)
    }

    /// A kept identity token that `usable` accepts.
    pub fn identity_token(
        &self,
        usable: impl Fn(&IdentityToken) -> bool,
    ) -> Option<Arc<IdentityToken>> {
        let kept = self.identity_tokens.load();
        kept.as_deref()?.iter().rev().find(|t| usable(t)).cloned()
    }

    /// Keeps `token`, with the kept tokens `still_useful` accepts, the newest `at_most`.
    pub fn keep_identity_token(
        &self,
        token: Arc<IdentityToken>,
        at_most: usize,
        still_useful: impl Fn(&IdentityToken) -> bool,
    ) {
        self.identity_tokens.rcu(|kept| {
            let mut tokens: Vec<Arc<IdentityToken>> = kept
                .as_deref()
                .into_iter()
                .flatten()
                .filter(|t| still_useful(t))
                .cloned()
                .collect();
            tokens.push(token.clone());
            let excess = tokens.len().saturating_sub(at_most);
            tokens.drain(..excess);
            Some(Arc::new(tokens))
        });
    }

    /// The principal's CEL variables, made by `make` the first time (a conversion that failed
    /// stays failed: the claims do not change).
    pub fn cel_variables(
        &self,
        make: impl FnOnce(&Self) -> Result<CelVariables, String>,
    ) -> Result<&CelVariables, &str> {
        self.cel_variables
            .get_or_init(|| Box::new(make(self)))
            .as_ref()
            .as_ref()
            .map_err(String::as_str)
    }

    /// The principal as an encoded `portcullis.v1.Principal`.
    pub fn encoded(&self) -> Bytes {
        self.encoded.clone()
    }

    /// The protobuf form (built on each call: surfaces answer with [`Self::encoded`]).
    pub fn to_proto(&self) -> pb::Principal {
        pb::Principal {
            subject: self.subject.clone(),
            issuer: self.issuer.to_string(),
            credential_type: self.credential_type.to_proto() as i32,
            claims: Some(self.claims.to_struct()),
            scopes: self.scopes.clone(),
            expires_at: self
                .expires_at
                .map(|seconds| prost_types::Timestamp { seconds, nanos: 0 }),
            key_id: self.key_id.to_string(),
        }
    }

    /// The ext_authz allow parts for `pipeline`, `rule` and identity token (its serial, 0
    /// for none): the last ones rendered if they are for the same three, else what `render`
    /// encodes (`OkHttpResponse`, dynamic metadata), kept for the next request under that
    /// key. A principal allowed by alternating rules renders each time, as if nothing were
    /// kept.
    pub fn check_allow(
        &self,
        pipeline: u64,
        rule: &str,
        identity_token: u64,
        render: impl FnOnce() -> (Bytes, Bytes),
    ) -> Arc<CheckAllowParts> {
        let last = self.check_allow.load();
        if let Some(parts) = &*last
            && parts.pipeline == pipeline
            && *parts.rule == *rule
            && parts.identity_token == identity_token
        {
            return parts.clone();
        }
        let (ok_response, dynamic_metadata) = render();
        let parts = Arc::new(CheckAllowParts {
            pipeline,
            rule: rule.into(),
            identity_token,
            ok_response,
            dynamic_metadata,
        });
        self.check_allow.store(Some(parts.clone()));
        parts
    }

    /// Scopes of `required` that this principal lacks, in the order asked.
    pub fn missing_scopes(&self, required: &[String]) -> Vec<String> {
        required
            .iter()
            .filter(|scope| !self.scopes.iter().any(|have| have == *scope))
            .cloned()
            .collect()
    }
}

/// The outcome of one request, rendered by each surface in its own wire format.
#[derive(Debug, Clone)]
pub enum Decision {
    Allow {
        /// None for an anonymous (public-route) allow.
        principal: Option<Arc<Principal>>,
        rule: String,
        /// The kind of credential the request presented, if one was recognised.
        credential: Option<CredentialType>,
        /// A short digest of that credential, for decision logs: empty unless they are on.
        credential_digest: String,
        /// The token minted for upstreams (`response.identity_token`), when configured.
        identity_token: Option<Arc<IdentityToken>>,
    },
    Deny {
        denial: Denial,
        principal: Option<Arc<Principal>>,
        rule: String,
        /// The kind of credential the request presented, if one was recognised.
        credential: Option<CredentialType>,
        /// A short digest of that credential for the audit log (empty: none).
        credential_digest: String,
    },
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn challenges_follow_rfc6750() {
        let realm = "corp";
        assert_eq!(
            Denial::new(Reason::MissingCredential, "x").www_authenticate(realm),
            "Bearer realm=\"corp\""
        );
        assert_eq!(
            Denial::new(Reason::Expired, "x").www_authenticate(realm),
            "Bearer realm=\"corp\", error=\"invalid_token\""
        );
        assert_eq!(
            Denial::new(Reason::AmbiguousCredential, "x").www_authenticate(realm),
            "Bearer realm=\"corp\", error=\"invalid_request\""
        );
        assert_eq!(
            Denial::insufficient_scope(vec!["a".into(), "b".into()]).www_authenticate(realm),
            "Bearer realm=\"corp\", error=\"insufficient_scope\", scope=\"a b\""
        );
        assert_eq!(
            Denial::new(Reason::PolicyDenied, "x").www_authenticate(realm),
            ""
        );
    }

    #[test]
    fn realm_cannot_break_out_of_the_quoted_string() {
        let challenge =
            Denial::new(Reason::MissingCredential, "x").www_authenticate("a\"b\r\nX-Evil: 1");
        assert_eq!(challenge, "Bearer realm=\"abX-Evil: 1\"");
    }

    /// Every reason has exactly one row in docs/reasons.md, and the row says what the code
    /// does: HTTP status, Check's gRPC code, and the challenge.
    #[test]
    fn every_reason_matches_its_row_in_the_reason_table() {
        let table = include_str!("../docs/reasons.md");
        let proto_reasons = (1..).map_while(|n| pb::Reason::try_from(n).ok()).count();
        assert_eq!(
            Reason::ALL.len(),
            proto_reasons,
            "Reason::ALL covers the proto"
        );
        for reason in Reason::ALL {
            let name = format!("| `{}` |", reason.as_str());
            let rows: Vec<&str> = table.lines().filter(|l| l.starts_with(&name)).collect();
            assert_eq!(rows.len(), 1, "{name} appears once in docs/reasons.md");
            let cells: Vec<&str> = rows[0].split('|').map(str::trim).collect();
            let row = reason.row();
            assert_eq!(cells[3], row.http_status.to_string(), "{name} HTTP status");
            let code = match row.grpc_code {
                tonic::Code::Unauthenticated => "`UNAUTHENTICATED`",
                tonic::Code::InvalidArgument => "`INVALID_ARGUMENT`",
                tonic::Code::PermissionDenied => "`PERMISSION_DENIED`",
                tonic::Code::ResourceExhausted => "`RESOURCE_EXHAUSTED`",
                tonic::Code::Unavailable => "`UNAVAILABLE`",
                other => panic!("{name}: unexpected code {other:?}"),
            };
            assert_eq!(cells[4], code, "{name} gRPC code");
            let challenge = cells[5];
            let documented = match row.challenge {
                Challenge::Absent => challenge == "none",
                Challenge::Plain => challenge.contains("realm") && !challenge.contains("error="),
                Challenge::InvalidToken => challenge.contains("error=\"invalid_token\""),
                Challenge::InvalidRequest => challenge.contains("error=\"invalid_request\""),
                Challenge::InsufficientScope => challenge.contains("error=\"insufficient_scope\""),
            };
            assert!(documented, "{name} challenge: {challenge}");
        }
    }

    #[test]
    fn check_allow_parts_are_reused_only_for_the_same_pipeline_rule_and_identity_token() {
        let principal = Principal::new(
            "alice".into(),
            "corp".into(),
            CredentialType::Jwt,
            Map::new(),
            Vec::new(),
            None,
            "".into(),
        );
        let renders = std::cell::Cell::new(0);
        let parts = |pipeline: u64, rule: &str, token: u64| {
            principal.check_allow(pipeline, rule, token, || {
                renders.set(renders.get() + 1);
                (
                    Bytes::from(format!("{pipeline}/{rule}/{token}")),
                    Bytes::new(),
                )
            })
        };
        let asked = [
            (1, "a", 0),
            (1, "a", 0),
            (2, "a", 0),
            (2, "b", 0),
            (2, "b", 0),
            (1, "b", 0),
            (1, "b", 7),
            (1, "b", 7),
            (1, "b", 8),
        ];
        for (pipeline, rule, token) in asked {
            let got = parts(pipeline, rule, token);
            assert_eq!(
                got.ok_response,
                format!("{pipeline}/{rule}/{token}").as_bytes()
            );
        }
        assert_eq!(
            renders.get(),
            6,
            "rendered once per new (pipeline, rule, identity token)"
        );
    }

    #[test]
    fn the_encoded_principal_is_the_api_message() {
        use prost::Message;
        let claims = serde_json::json!({"sub": "alice", "n": 3, "roles": ["a"]});
        let Value::Object(claims) = claims else {
            unreachable!()
        };
        let principal = Principal::new(
            "alice".into(),
            "corp".into(),
            CredentialType::Jwt,
            claims,
            vec!["read".into()],
            Some(1_900_000_000),
            "k1".into(),
        );
        let decoded = pb::Principal::decode(principal.encoded()).expect("decodes");
        assert_eq!(decoded, principal.to_proto());
        assert_eq!(decoded.subject, "alice");
        assert_eq!(decoded.expires_at.map(|t| t.seconds), Some(1_900_000_000));
    }

    #[test]
    fn statuses_follow_the_spec_table() {
        assert_eq!(Reason::AmbiguousCredential.http_status(), 400);
        assert_eq!(Reason::InsufficientScope.http_status(), 403);
        assert_eq!(Reason::RateLimited.http_status(), 429);
        assert_eq!(Reason::UpstreamUnavailable.http_status(), 503);
        assert_eq!(Reason::Expired.http_status(), 401);
        assert_eq!(Reason::Expired.as_str(), "EXPIRED");
    }
}
