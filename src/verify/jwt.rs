//! The JWT verifier: routes a token to its issuer by `iss` (never by trying keys), finds the
//! key by `kid` and algorithm (refetching a remote set once per cooldown for an unknown `kid`),
//! checks the signature and the claims, and caches the verified result.
//!
//! The cache is keyed by the SHA-256 digest of the token, keeps an entry no longer than the
//! token's `exp` or `cache.max_ttl` (each entry carries its deadline; a hit past it is a
//! miss), and on every hit re-checks expiry, the requested audience, and that the signing
//! key is still in the issuer's current key set.

use std::{
    collections::HashMap,
    sync::Arc,
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use quick_cache::sync::Cache;
use serde_json::Value;

use crate::{
    cache::{ByteWeigher, Weight, estimated_bytes},
    decision::{CredentialType, Denial, Principal, Reason},
    jwt::{
        Algorithm, ClaimPolicy, KeyLookup, KeySet, Recheck, VerifyingKey, parse_compact,
        token_digest,
    },
    keys::KeySource,
    telemetry::metrics::Metrics,
};

/// One trusted issuer: its `iss`, algorithms, claim policy and keys.
#[derive(Debug)]
pub struct IssuerVerifier {
    /// Shared with the principals it verifies.
    pub name: Arc<str>,
    pub iss: String,
    /// Allowed algorithms; empty means each key's own (single) algorithm.
    pub algorithms: Vec<Algorithm>,
    pub policy: ClaimPolicy,
    pub keys: KeySource,
}

struct CachedToken {
    issuer: Arc<IssuerVerifier>,
    key: Arc<VerifyingKey>,
    recheck: Recheck,
    principal: Arc<Principal>,
    /// When the entry stops being reused.
    deadline: Instant,
    bytes: u32,
}

impl Weight for CachedToken {
    fn bytes(&self) -> u32 {
        self.bytes
    }
}

/// Verifies JWTs for every configured issuer.
pub struct JwtVerifier {
    metrics: Arc<Metrics>,
    by_iss: HashMap<String, Arc<IssuerVerifier>>,
    cache: Cache<[u8; 32], Arc<CachedToken>, ByteWeigher>,
    max_ttl: Duration,
}

impl JwtVerifier {
    /// `max_entries` and `max_bytes` bound the verified-token cache (see `cache::weigher`).
    pub fn new(
        issuers: Vec<IssuerVerifier>,
        max_entries: u64,
        max_bytes: u64,
        max_ttl: Duration,
        metrics: Arc<Metrics>,
    ) -> Self {
        let by_iss = issuers
            .into_iter()
            .map(|issuer| (issuer.iss.clone(), Arc::new(issuer)))
            .collect();
        // What the cache is expected to hold (tokens of about 2 KB estimated, at most 16,384
        // reserved up front): quick_cache splits the bounds over fewer shards for fewer
        // entries, so a small cache is not cut into shards too small for a large token.
        let expected_entries = max_entries.min(max_bytes / 2048).clamp(1, 16_384);
        let expected_entries = usize::try_from(expected_entries).unwrap_or(16_384);
        let cache = Cache::with_weighter(
            expected_entries,
            max_bytes,
            ByteWeigher::new(max_entries, max_bytes),
        );
        Self {
            metrics,
            by_iss,
            cache,
            max_ttl,
        }
    }

    pub fn issuers(&self) -> impl Iterator<Item = &Arc<IssuerVerifier>> {
        self.by_iss.values()
    }

    pub fn is_empty(&self) -> bool {
        self.by_iss.is_empty()
    }

    /// Verified tokens currently cached (approximate; for metrics and tests).
    pub fn cached_tokens(&self) -> u64 {
        self.cache_size().0
    }

    /// The cache's entries and their estimated bytes (what `cache.max_bytes` bounds).
    pub fn cache_size(&self) -> (u64, u64) {
        (
            u64::try_from(self.cache.len()).unwrap_or(u64::MAX),
            self.cache.weight(),
        )
    }

    /// Verifies a compact JWS. `requested_audience` (may be empty) must be in `aud` too.
    pub async fn verify(
        &self,
        token: &str,
        requested_audience: &str,
    ) -> Result<Arc<Principal>, Denial> {
        let digest = token_digest(token);
        let now = unix_now();
        let mut cached = self.cache.get(&digest);
        if cached
            .as_ref()
            .is_some_and(|cached| Instant::now() >= cached.deadline)
        {
            self.cache.remove(&digest);
            cached = None;
        }
        self.metrics.record_jwt_cache(cached.is_some());
        if let Some(cached) = cached {
            if cached.issuer.keys.current()?.contains(&cached.key) {
                cached.issuer.policy.recheck(
                    &cached.recheck,
                    &cached.principal.claims,
                    now,
                    requested_audience,
                )?;
                return Ok(cached.principal.clone());
            }
            self.cache.remove(&digest);
        }

        let bytes = estimated_bytes(token.len());
        let token = parse_compact(token)?;
        let iss = match token.claims.get("iss") {
            Some(Value::String(iss)) => iss.as_str(),
            Some(_) => return Err(Denial::new(Reason::InvalidClaims, "iss is not a string")),
            None => {
                return Err(Denial::new(
                    Reason::InvalidClaims,
                    "required claim iss is missing",
                ));
            }
        };
        let issuer = self.by_iss.get(iss).ok_or_else(|| {
            Denial::new(Reason::UntrustedIssuer, "the token's issuer is not trusted")
        })?;
        if !issuer.algorithms.is_empty() && !issuer.algorithms.contains(&token.algorithm) {
            return Err(disallowed(token.algorithm));
        }

        let keys = issuer.keys.current()?;
        let key = match find_key(&keys, &token.kid, token.algorithm)? {
            Some(key) => key,
            None => refetch_and_find(issuer, &keys, &token.kid, token.algorithm).await?,
        };
        if !key.verify(token.signing_input.as_bytes(), token.signature) {
            return Err(Denial::new(
                Reason::InvalidSignature,
                "signature does not verify",
            ));
        }
        // Read the clock again: a refetch above may have waited for seconds.
        let now = unix_now();
        let checked =
            issuer
                .policy
                .check(token.typ.as_deref(), &token.claims, now, requested_audience)?;

        // The key was found by the token's kid when it has one: share the key's.
        let key_id = match (&key.kid, token.kid) {
            (Some(shared), Some(kid)) if **shared == *kid => shared.clone(),
            (_, Some(kid)) => kid.into(),
            (Some(shared), None) => shared.clone(),
            (None, None) => Arc::from(""),
        };
        let principal = Arc::new(Principal::new(
            checked.subject,
            issuer.name.clone(),
            CredentialType::Jwt,
            token.claims,
            checked.scopes,
            checked.recheck.expires_at,
            key_id,
        ));
        let recheck = checked.recheck;
        let ttl = match recheck.expires_at {
            Some(exp) => {
                Duration::from_secs(u64::try_from(exp - now).unwrap_or(0)).min(self.max_ttl)
            }
            None => self.max_ttl,
        };
        if !ttl.is_zero()
            && let Some(deadline) = Instant::now().checked_add(ttl)
        {
            self.cache.insert(
                digest,
                Arc::new(CachedToken {
                    issuer: issuer.clone(),
                    key,
                    recheck,
                    principal: principal.clone(),
                    deadline,
                    bytes,
                }),
            );
        }
        Ok(principal)
    }
}

fn disallowed(alg: Algorithm) -> Denial {
    Denial::new(
        Reason::DisallowedAlgorithm,
        format!("algorithm {alg} is not allowed for this issuer or key"),
    )
}

/// `Ok(None)`: the kid is unknown (a refetch may help).
fn find_key(
    keys: &KeySet,
    kid: &Option<String>,
    alg: Algorithm,
) -> Result<Option<Arc<VerifyingKey>>, Denial> {
    match keys.find(kid.as_deref(), alg) {
        KeyLookup::Found(key) => Ok(Some(key.clone())),
        KeyLookup::WrongAlgorithm => Err(disallowed(alg)),
        KeyLookup::Ambiguous => Err(Denial::new(
            Reason::UnknownKey,
            "token has no kid and more than one key could have signed it",
        )),
        KeyLookup::NotFound => Ok(None),
    }
}

async fn refetch_and_find(
    issuer: &IssuerVerifier,
    seen: &Arc<KeySet>,
    kid: &Option<String>,
    alg: Algorithm,
) -> Result<Arc<VerifyingKey>, Denial> {
    let unknown = || Denial::new(Reason::UnknownKey, "no key matches the token's kid");
    let KeySource::Remote(remote) = &issuer.keys else {
        return Err(unknown());
    };
    let Some(newer) = remote.refetch_for_unknown_kid(seen).await else {
        return Err(unknown());
    };
    find_key(&newer, kid, alg)?.ok_or_else(unknown)
}

fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}
