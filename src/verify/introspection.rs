//! OAuth2 token introspection (RFC 7662) for opaque bearer tokens, per issuer.
//!
//! Portcullis authenticates to the endpoint with `client_secret_basic` or `client_secret_post`.
//! `active: false` is INACTIVE; an active token is then held to the issuer's claim policy
//! (expired: EXPIRED, wrong audience: AUDIENCE_MISMATCH). Results are cached by the token's
//! SHA-256 for at most `cache_ttl`, `cache.max_ttl` and the time left until `exp`; expiry and
//! the requested audience are re-checked on every hit. Concurrent requests for one uncached
//! token share one call (moka `try_get_with`). An endpoint that is down, slower than `timeout`
//! or answers anything but a JSON object with a boolean `active` is UPSTREAM_UNAVAILABLE:
//! never a fallback to "allow". No redirect is followed (the shared client's policy), so the
//! client secret and the token go to the configured endpoint only.
//!
//! An answer for another kind of token (`token_type` or `token_use` naming a refresh or ID
//! token, RFC 7662 §2.2) is refused. Definite refusals (inactive, wrong issuer or type,
//! expired) are cached too, for `negative_cache_ttl` (never longer than the positive TTL),
//! so a flood of one bad token does not become a flood of calls; an unavailable endpoint is
//! never cached.

use std::{
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use base64::{Engine, engine::general_purpose::STANDARD};
use moka::future::Cache;
use serde_json::Value;
use tracing::warn;

use super::unix_now;
use crate::{
    cache::{Ttl, TtlFromEntry, Weight, estimated_bytes, weigher},
    config::{ClientAuthMethod, IssuerConfig},
    decision::{CredentialType, Denial, Principal, Reason},
    http_body::read_limited,
    jwt::{ClaimPolicy, parse_strict_object, token_digest},
    telemetry::metrics::{IssuerLabels, Metrics},
};

/// Largest introspection response accepted.
const MAX_RESPONSE_BYTES: usize = 64 * 1024;

/// One cached answer of the endpoint.
enum Introspected {
    Active {
        principal: Arc<Principal>,
        recheck: crate::jwt::Recheck,
        ttl: Duration,
        bytes: u32,
    },
    Refused {
        denial: Denial,
        ttl: Duration,
    },
}

impl Weight for Introspected {
    fn bytes(&self) -> u32 {
        match self {
            Introspected::Active { bytes, .. } => *bytes,
            Introspected::Refused { .. } => estimated_bytes(0),
        }
    }
}

impl Ttl for Introspected {
    fn ttl(&self) -> Duration {
        match self {
            Introspected::Active { ttl, .. } | Introspected::Refused { ttl, .. } => *ttl,
        }
    }
}

/// `token_type` values (RFC 6749 §7.1 types, RFC 8693 identifiers) and `token_use` values
/// that mean an access token; any other value names another kind of token.
fn is_access_token_type(value: &str) -> bool {
    [
        "bearer",
        "dpop",
        "access_token",
        "urn:ietf:params:oauth:token-type:access_token",
        "n_a",
    ]
    .iter()
    .any(|accepted| value.eq_ignore_ascii_case(accepted))
}

/// One issuer's introspection endpoint and its result cache.
pub struct Introspector {
    metrics: Arc<Metrics>,
    pub issuer_name: String,
    iss: String,
    endpoint: String,
    client_id: String,
    client_secret: String,
    method: ClientAuthMethod,
    timeout: Duration,
    cache_ttl: Duration,
    negative_cache_ttl: Duration,
    policy: ClaimPolicy,
    client: reqwest::Client,
    cache: Cache<[u8; 32], Arc<Introspected>>,
    /// Calls made to the endpoint (for metrics and tests).
    pub calls: AtomicU64,
}

impl std::fmt::Debug for Introspector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Introspector")
            .field("issuer", &self.issuer_name)
            .field("endpoint", &self.endpoint)
            .field("client_id", &self.client_id)
            .field("client_secret", &"<redacted>")
            .finish_non_exhaustive()
    }
}

fn unavailable() -> Denial {
    Denial::new(
        Reason::UpstreamUnavailable,
        "the introspection endpoint is unavailable",
    )
}

/// RFC 6749 §2.3.1: client id and secret are form-urlencoded before Basic encoding.
fn form_encode(value: &str) -> String {
    form_urlencoded::byte_serialize(value.as_bytes()).collect()
}

impl Introspector {
    /// Builds the introspector for an issuer that has `introspection` configured.
    pub fn new(
        issuer: &IssuerConfig,
        client: reqwest::Client,
        max_entries: u64,
        max_bytes: u64,
        max_ttl: Duration,
        metrics: Arc<Metrics>,
    ) -> Result<Option<Self>, String> {
        let Some(config) = &issuer.introspection else {
            return Ok(None);
        };
        let secret = config
            .client_secret
            .resolve()
            .map_err(|err| format!("introspection.client_secret: {err}"))?;
        let client_secret = String::from_utf8(secret)
            .map_err(|_| "introspection.client_secret is not UTF-8".to_owned())?;
        let policy = ClaimPolicy {
            required_claims: Vec::new(),
            typ: Vec::new(),
            ..ClaimPolicy::from_config(issuer)
        };
        Ok(Some(Self {
            metrics,
            issuer_name: issuer.name.clone(),
            iss: issuer.issuer.clone(),
            endpoint: config.endpoint.clone(),
            client_id: config.client_id.clone(),
            client_secret,
            method: config.auth_method,
            timeout: config.timeout,
            cache_ttl: config.cache_ttl.min(max_ttl),
            negative_cache_ttl: config.negative_cache_ttl.min(config.cache_ttl).min(max_ttl),
            policy,
            client,
            cache: Cache::builder()
                .max_capacity(max_bytes)
                .weigher(weigher(max_entries, max_bytes))
                .expire_after(TtlFromEntry)
                .build(),
            calls: AtomicU64::new(0),
        }))
    }

    pub async fn verify(
        &self,
        token: &str,
        requested_audience: &str,
    ) -> Result<Arc<Principal>, Denial> {
        let digest = token_digest(token);
        let entry = self
            .cache
            .try_get_with(digest, self.introspect(token))
            .await
            .map_err(|denial| (*denial).clone())?;
        match &*entry {
            Introspected::Active {
                principal, recheck, ..
            } => {
                self.policy
                    .recheck(recheck, &principal.claims, unix_now(), requested_audience)?;
                Ok(principal.clone())
            }
            Introspected::Refused { denial, .. } => Err(denial.clone()),
        }
    }

    /// A definite refusal, remembered for `negative_cache_ttl`.
    fn refused(&self, denial: Denial) -> Result<Arc<Introspected>, Denial> {
        Ok(Arc::new(Introspected::Refused {
            denial,
            ttl: self.negative_cache_ttl,
        }))
    }

    /// One call to the endpoint. The per-request audience is checked by the caller, since
    /// concurrent requests with different audiences share this call. `Err` (not cached) only
    /// when the endpoint is unavailable.
    async fn introspect(&self, token: &str) -> Result<Arc<Introspected>, Denial> {
        self.calls.fetch_add(1, Ordering::Relaxed);
        let mut form = vec![("token", token), ("token_type_hint", "access_token")];
        let mut request = self.client.post(&self.endpoint).timeout(self.timeout);
        match self.method {
            ClientAuthMethod::ClientSecretBasic => {
                let pair = format!(
                    "{}:{}",
                    form_encode(&self.client_id),
                    form_encode(&self.client_secret)
                );
                request = request.header(
                    reqwest::header::AUTHORIZATION,
                    format!("Basic {}", STANDARD.encode(pair)),
                );
            }
            ClientAuthMethod::ClientSecretPost => {
                form.push(("client_id", &self.client_id));
                form.push(("client_secret", &self.client_secret));
            }
        }
        let call = async {
            let response = request
                .header(reqwest::header::ACCEPT, "application/json")
                .form(&form)
                .send()
                .await
                .map_err(|err| {
                    format!(
                        "request failed: {}",
                        crate::outbound::error_chain(&err.without_url())
                    )
                })?;
            if !response.status().is_success() {
                return Err(format!("HTTP status {}", response.status().as_u16()));
            }
            let body = read_limited(response, MAX_RESPONSE_BYTES)
                .await
                .map_err(|err| err.to_string())?;
            parse_strict_object(&body)
                .map(|claims| (claims, body.len()))
                .map_err(|err| format!("response is not JSON: {err}"))
        };
        let started = std::time::Instant::now();
        let span = tracing::info_span!("introspection", issuer = %self.issuer_name);
        let outcome =
            tracing::Instrument::instrument(tokio::time::timeout(self.timeout, call), span).await;
        self.metrics
            .introspection_duration
            .get_or_create(&IssuerLabels {
                issuer: self.issuer_name.clone(),
            })
            .observe(started.elapsed().as_secs_f64());
        let (claims, body_len) = match outcome {
            Ok(Ok(found)) => found,
            Ok(Err(problem)) => {
                warn!(issuer = %self.issuer_name, problem = %problem, "introspection failed");
                return Err(unavailable());
            }
            Err(_) => {
                warn!(issuer = %self.issuer_name, "introspection timed out");
                return Err(unavailable());
            }
        };
        match claims.get("active") {
            Some(Value::Bool(true)) => {}
            Some(Value::Bool(false)) => {
                return self.refused(Denial::new(Reason::Inactive, "the token is not active"));
            }
            _ => {
                warn!(issuer = %self.issuer_name, "introspection response has no boolean active");
                return Err(unavailable());
            }
        }
        if let Some(iss) = claims.get("iss")
            && iss.as_str() != Some(self.iss.as_str())
        {
            return self.refused(Denial::new(
                Reason::UntrustedIssuer,
                "introspection names another issuer",
            ));
        }
        for field in ["token_type", "token_use"] {
            match claims.get(field) {
                None => {}
                Some(Value::String(kind)) if is_access_token_type(kind) => {}
                Some(_) => {
                    return self.refused(Denial::new(
                        Reason::InvalidClaims,
                        format!("introspection says {field} is not an access token"),
                    ));
                }
            }
        }
        let now = unix_now();
        let checked = match self.policy.check(None, &claims, now, "") {
            Ok(checked) => checked,
            Err(denial) => return self.refused(denial),
        };
        let subject = [&checked.subject]
            .into_iter()
            .filter(|s| !s.is_empty())
            .cloned()
            .chain(
                ["client_id", "username"]
                    .iter()
                    .filter_map(|name| claims.get(*name).and_then(Value::as_str))
                    .map(str::to_owned),
            )
            .next()
            .ok_or_else(|| {
                Denial::new(
                    Reason::InvalidClaims,
                    "introspection names no sub, client_id or username",
                )
            });
        let subject = match subject {
            Ok(subject) => subject,
            Err(denial) => return self.refused(denial),
        };
        let ttl = match checked.recheck.expires_at {
            Some(exp) => {
                Duration::from_secs(u64::try_from(exp - now).unwrap_or(0)).min(self.cache_ttl)
            }
            None => self.cache_ttl,
        };
        let bytes = estimated_bytes(body_len + token.len());
        let principal = Arc::new(Principal::new(
            subject,
            self.issuer_name.as_str().into(),
            CredentialType::OpaqueToken,
            claims,
            checked.scopes,
            checked.recheck.expires_at,
            "".into(),
        ));
        Ok(Arc::new(Introspected::Active {
            principal,
            recheck: checked.recheck,
            ttl,
            bytes,
        }))
    }
}
