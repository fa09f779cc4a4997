//! DPoP (RFC 9449), part of the bind phase: an access token bound to a key (`cnf.jkt`, from
//! its claims or its introspection) is accepted only with the `DPoP` authorization scheme
//! and a proof ([`proof`]) made for this request with that key, used once ([`replay`]). A
//! bound token sent as `Bearer`, an unbound token sent as `DPoP`, and an unbound token of
//! an issuer with `require_dpop` are refused. Runs on every request, cache hits included:
//! the proof changes with each request, the verified token does not.

pub mod proof;
pub mod replay;

use std::{
    sync::Arc,
    time::{SystemTime, UNIX_EPOCH},
};

use serde_json::Value;

use crate::{
    config::{Config, DpopConfig},
    credentials::{self, Credential, Presented, TokenScheme},
    decision::{Denial, Principal, Reason},
    jwt::Algorithm,
};
use replay::{LocalReplay, RedisReplay, ReplayGuard};

/// The HTTP request a proof must name (`htm`, `htu`), as the surface received it.
#[derive(Debug, Clone, Copy, Default)]
pub struct HttpTarget<'a> {
    pub method: &'a str,
    /// `http` or `https`; empty: `https`.
    pub scheme: &'a str,
    /// Host and optional port, as the request named them.
    pub authority: &'a str,
    /// The path, with any query or fragment (ignored: RFC 9449 §4.3).
    pub path: &'a str,
}

/// `http(s)://authority/path?query` as (scheme, authority, `/path?query`); `None` for
/// anything else (another scheme, userinfo, an empty authority). An empty path is `/`.
pub fn split_absolute_url(url: &str) -> Option<(&'static str, &str, &str)> {
    let (scheme, rest) = if let Some(rest) = url.strip_prefix("https://") {
        ("https", rest)
    } else {
        ("http", url.strip_prefix("http://")?)
    };
    let split = rest.find(['/', '?']).unwrap_or(rest.len());
    let (authority, path) = rest.split_at(split);
    if authority.is_empty() || authority.contains('@') {
        return None;
    }
    let path = if path.is_empty() { "/" } else { path };
    // A query without a path (`host?x=1`) is not a path: callers refuse it.
    Some((scheme, authority, path))
}

impl HttpTarget<'_> {
    /// Whether `htu` names this request's URL, compared after RFC 3986 §6.2.2 and §6.2.3
    /// normalization (case of scheme and host, percent-encoding, dot segments, default
    /// ports), ignoring query and fragment. An `htu` with user info, an authority that is
    /// not a plain `host[:port]`, or a path that is not absolute matches nothing. The
    /// scheme may come as a proxy chain's list (`https,http`): the first, the client's,
    /// counts.
    fn matches_htu(&self, htu: &str) -> bool {
        let scheme = self.scheme.split(',').next().unwrap_or_default().trim();
        let scheme = if scheme.is_empty() {
            "https".to_owned()
        } else {
            scheme.to_ascii_lowercase()
        };
        let plain_authority = !self.authority.is_empty()
            && self.authority.bytes().all(|b| {
                b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b':' | b'[' | b']' | b'_')
            });
        let path = self.path.split(['?', '#']).next().unwrap_or_default();
        if !plain_authority
            || !path.starts_with('/')
            || !matches!(scheme.as_str(), "http" | "https")
        {
            return false;
        }
        let (Ok(claimed), Ok(actual)) = (
            url::Url::parse(htu),
            url::Url::parse(&format!("{scheme}://{}{path}", self.authority)),
        ) else {
            return false;
        };
        claimed.username().is_empty()
            && claimed.password().is_none()
            && claimed.scheme() == actual.scheme()
            && claimed.host_str().is_some()
            && claimed.host_str() == actual.host_str()
            && claimed.port_or_known_default() == actual.port_or_known_default()
            && normalized_escapes(claimed.path()) == normalized_escapes(actual.path())
    }
}

/// `path` with its percent-escapes normalized (RFC 3986 §6.2.2.1-2): escapes of unreserved
/// characters decoded, the others in upper-case hex. `path` is a parsed URL's, so ASCII.
fn normalized_escapes(path: &str) -> std::borrow::Cow<'_, str> {
    if !path.contains('%') {
        return path.into();
    }
    let bytes = path.as_bytes();
    let mut out = String::with_capacity(path.len());
    let mut i = 0;
    while i < bytes.len() {
        let escaped = (bytes[i] == b'%')
            .then(|| path.get(i + 1..i + 3))
            .flatten()
            .and_then(|hex| u8::from_str_radix(hex, 16).ok());
        match escaped {
            Some(byte)
                if byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'.' | b'_' | b'~') =>
            {
                out.push(char::from(byte));
                i += 3;
            }
            Some(byte) => {
                out.push_str(&format!("%{byte:02X}"));
                i += 3;
            }
            None => {
                out.push(char::from(bytes[i]));
                i += 1;
            }
        }
    }
    out.into()
}

/// DPoP checks for one config generation.
pub struct Dpop {
    rules: proof::Rules,
    /// `algs` of `DPoP` challenges: the allowed algorithms, space-separated.
    algs: String,
    /// Whether challenges offer DPoP (the `dpop` section is set).
    offered: bool,
    /// Issuers whose unbound tokens are refused.
    required_by: Vec<String>,
    replay: ReplayGuard,
}

impl std::fmt::Debug for Dpop {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Dpop")
            .field("algs", &self.algs)
            .field("required_by", &self.required_by)
            .finish_non_exhaustive()
    }
}

impl Dpop {
    /// From a validated config; `local` and `redis` are the previous generation's
    /// memories when there is one (a reload forgets no proof).
    pub fn new(
        config: &Config,
        local: Option<Arc<LocalReplay>>,
        redis: Option<Arc<RedisReplay>>,
    ) -> Self {
        let settings = config.dpop.clone().unwrap_or_default();
        let algorithms: Vec<Algorithm> = settings
            .algorithms
            .iter()
            .filter_map(|name| name.parse().ok())
            .filter(|alg: &Algorithm| !alg.is_hmac())
            .collect();
        let max_age = seconds(&settings, |s| s.max_age);
        let now = i64::try_from(unix_now_ms() / 1000).unwrap_or(i64::MAX);
        let local = match local {
            Some(local) => {
                local.reconfigure(settings.replay.max_entries, max_age, now);
                local
            }
            None => Arc::new(LocalReplay::new(
                settings.replay.max_entries,
                max_age,
                now,
                settings.replay.redis.is_none(),
            )),
        };
        Self {
            algs: algorithms
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join(" "),
            rules: proof::Rules {
                algorithms,
                max_age,
                leeway: seconds(&settings, |s| s.leeway),
                max_proof_bytes: settings.max_proof_bytes,
            },
            offered: config.dpop.is_some(),
            required_by: config
                .issuers
                .iter()
                .filter(|issuer| issuer.require_dpop)
                .map(|issuer| issuer.name.clone())
                .collect(),
            replay: ReplayGuard { local, redis },
        }
    }

    /// The algorithms challenges name, when DPoP is offered.
    pub fn offered_algs(&self) -> Option<&str> {
        self.offered.then_some(self.algs.as_str())
    }

    /// The algorithms a `DPoP` challenge names (whether or not DPoP is offered).
    pub fn algs(&self) -> &str {
        &self.algs
    }

    /// The proofs' memories, for the next generation.
    pub fn replay(&self) -> &ReplayGuard {
        &self.replay
    }

    /// The bind-phase check of `principal`, verified from `presented`, for a request to
    /// `target`.
    pub async fn bind(
        &self,
        principal: &Principal,
        presented: &Presented<'_>,
        target: &HttpTarget<'_>,
    ) -> Result<(), Denial> {
        let mismatch = |message: &str| Denial::dpop(Reason::CertificateMismatch, false, message);
        let binding = principal.dpop_binding();
        match (presented.scheme, binding) {
            (TokenScheme::Bearer, None)
                if self
                    .required_by
                    .iter()
                    .any(|name| **name == *principal.issuer) =>
            {
                Err(mismatch(
                    "this issuer's tokens are accepted only DPoP-bound, with a DPoP proof",
                ))
            }
            (TokenScheme::Bearer, None) => Ok(()),
            (TokenScheme::Bearer, Some(_)) => Err(mismatch(
                "a DPoP-bound token must be sent with the DPoP authorization scheme and a proof",
            )),
            (TokenScheme::Dpop, None) => Err(mismatch(
                "the DPoP scheme was used with a token that is not DPoP-bound (no cnf.jkt)",
            )),
            (TokenScheme::Dpop, Some(Value::String(bound))) => {
                self.check_proof(presented, &bound, target).await
            }
            (TokenScheme::Dpop, Some(_)) => Err(Denial::dpop(
                Reason::InvalidClaims,
                false,
                "cnf.jkt is not a string",
            )),
        }
    }

    async fn check_proof(
        &self,
        presented: &Presented<'_>,
        bound: &str,
        target: &HttpTarget<'_>,
    ) -> Result<(), Denial> {
        let token = match &presented.credential {
            Ok(Credential::Jwt(token) | Credential::OpaqueToken(token)) => *token,
            _ => {
                return Err(Denial::dpop(
                    Reason::CertificateMismatch,
                    false,
                    "only access tokens are DPoP-bound",
                ));
            }
        };
        let proof = match credentials::dpop_proof(presented.headers, self.rules.max_proof_bytes) {
            Ok(Some(proof)) => proof,
            Ok(None) => {
                return Err(Denial::dpop(
                    Reason::CertificateMismatch,
                    true,
                    "a DPoP-bound token needs a DPoP proof header",
                ));
            }
            Err(denial) => return Err(denial),
        };
        let now_ms = unix_now_ms();
        let now = i64::try_from(now_ms / 1000).unwrap_or(i64::MAX);
        let checked = proof::check(proof, token, bound, target, now, &self.rules)?;
        if !self.replay.local.covers(checked.issued_at) {
            return Err(Denial::dpop(
                Reason::Expired,
                true,
                "DPoP proof was made before this server's memory of used proofs began (a restart, or a longer dpop.max_age); make a new one",
            ));
        }
        // Remembered until the proof's iat leaves the window (and a second more).
        let expires = checked.issued_at.saturating_add(self.rules.max_age) + 1;
        let expires_ms = u64::try_from(expires).unwrap_or(0).saturating_mul(1000);
        self.replay
            .first_use(
                &checked.identity,
                &checked.key,
                expires_ms.max(now_ms + 1000),
                now_ms,
            )
            .await
    }
}

fn seconds(settings: &DpopConfig, field: impl Fn(&DpopConfig) -> std::time::Duration) -> i64 {
    i64::try_from(field(settings).as_secs()).unwrap_or(i64::MAX)
}

fn unix_now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

#[cfg(test)]
mod tests;
