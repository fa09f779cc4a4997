//! Identity tokens for upstreams (`response.identity_token`): the shaping step after an
//! allow of a verified credential. Portcullis mints a short-lived JWT with normalized claims
//! (its own `iss`, the principal's `sub`, credential type, original issuer, scopes, selected
//! claims, an `aud` chosen by rule, host or default, `exp` bounded by the credential's own
//! expiry and the configured TTL, a random `jti`) so upstreams verify one format whatever
//! the caller presented.
//!
//! A principal keeps the tokens minted for it (see [`Principal::identity_token`]): a
//! cached request reuses one until half its lifetime has passed, so it is not signed again.
//! The keys (current, next, previous) are published as a JWKS with OpenID discovery on the
//! admin listener; only the current key signs.

mod signing;

use std::{
    collections::BTreeMap,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
};

use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
use bytes::Bytes;
use serde_json::{Map, Value};
use signing::SigningKey;

use crate::{
    config::{IdentityTokenConfig, SecretRef},
    decision::{Denial, IdentityToken, Principal, Reason},
    verify::unix_now,
};

/// Distinguishes the minters built in this process: a token is reused only by its minter.
static NEXT_MINTER_ID: AtomicU64 = AtomicU64::new(1);

/// Distinguishes minted tokens: what an ext_authz allow rendered with one is keyed by.
static NEXT_TOKEN_SERIAL: AtomicU64 = AtomicU64::new(1);

/// Most tokens one principal keeps (one per audience it was minted for): with the largest
/// `max_bytes`, 256 KiB beside a cached principal, outside `cache.max_bytes`.
const KEPT_PER_PRINCIPAL: usize = 4;

/// The minter of one pipeline: configuration, signing key and the published key set.
pub struct IdentityTokens {
    id: u64,
    issuer: String,
    header: String,
    ttl_seconds: i64,
    audience: String,
    audience_by_rule: BTreeMap<String, String>,
    audience_by_host: BTreeMap<String, String>,
    /// (dotted claim path, claim name in the token).
    claims: Vec<(Vec<String>, String)>,
    max_bytes: usize,
    signing: SigningKey,
    /// `{"keys": [...]}`: current, next and previous public keys.
    jwks: Bytes,
    /// The OpenID discovery document.
    discovery: Bytes,
}

/// Why the configured keys cannot be used: the message names the key, never its contents.
#[derive(Debug, thiserror::Error)]
#[error("{key}: {reason}")]
pub struct IdentityKeyError {
    key: String,
    reason: String,
}

impl IdentityTokens {
    /// Reads and parses the configured keys.
    pub fn new(config: &IdentityTokenConfig) -> Result<Self, IdentityKeyError> {
        let load = |secret: &SecretRef, key: String| {
            let pem = secret.resolve().map_err(|reason| IdentityKeyError {
                key: key.clone(),
                reason,
            })?;
            SigningKey::from_pem(&pem).map_err(|err| IdentityKeyError {
                key,
                reason: err.to_string(),
            })
        };
        let signing = load(&config.signing_key, "signing_key".to_owned())?;
        let mut published = vec![signing.jwk().clone()];
        if let Some(next) = &config.next_signing_key {
            published.push(load(next, "next_signing_key".to_owned())?.jwk().clone());
        }
        for (i, previous) in config.previous_signing_keys.iter().enumerate() {
            let key = load(previous, format!("previous_signing_keys[{i}]"))?;
            published.push(key.jwk().clone());
        }
        // The same key listed twice (current also under previous) is published once.
        let mut kids = std::collections::HashSet::new();
        published.retain(|jwk| kids.insert(jwk.common.key_id.clone()));
        let jwks = serde_json::json!({ "keys": published });
        let mut algorithms: Vec<String> = published
            .iter()
            .filter_map(|jwk| serde_json::to_value(jwk.common.key_algorithm?).ok())
            .filter_map(|alg| alg.as_str().map(str::to_owned))
            .collect();
        algorithms.sort();
        algorithms.dedup();
        let mut claims_supported: Vec<&str> = [
            "iss",
            "sub",
            "aud",
            "exp",
            "iat",
            "jti",
            "scope",
            "credential_type",
            "original_issuer",
        ]
        .into();
        claims_supported.extend(config.claims.values().map(String::as_str));
        // The fields a token verifier reads: Portcullis signs tokens but is no OpenID
        // provider, so nothing about authorization endpoints or response types is claimed.
        let discovery = serde_json::json!({
            "issuer": config.issuer,
            "jwks_uri": config.jwks_uri(),
            "id_token_signing_alg_values_supported": algorithms,
            "claims_supported": claims_supported,
        });
        Ok(Self {
            id: NEXT_MINTER_ID.fetch_add(1, Ordering::Relaxed),
            issuer: config.issuer.clone(),
            header: config.header.clone(),
            ttl_seconds: i64::try_from(config.ttl.as_secs()).unwrap_or(i64::MAX),
            audience: config.audience.clone(),
            audience_by_rule: config.audience_by_rule.clone(),
            audience_by_host: config.audience_by_host.clone(),
            claims: config
                .claims
                .iter()
                .map(|(path, name)| (path.split('.').map(str::to_owned).collect(), name.clone()))
                .collect(),
            max_bytes: config.max_bytes,
            signing,
            jwks: jwks.to_string().into(),
            discovery: discovery.to_string().into(),
        })
    }

    /// The upstream header Check and forward-auth set to the token.
    pub fn header(&self) -> &str {
        &self.header
    }

    /// The published keys, as `/.well-known/jwks.json` serves them.
    pub fn jwks(&self) -> Bytes {
        self.jwks.clone()
    }

    /// The OpenID discovery document (`/.well-known/openid-configuration`).
    pub fn discovery(&self) -> Bytes {
        self.discovery.clone()
    }

    /// The audience for a request `rule` allowed on `host` (canonical: lower-case, without
    /// a port): by rule, then by host, then the default.
    pub fn audience_for(&self, rule: &str, host: &str) -> &str {
        self.audience_by_rule
            .get(rule)
            .or_else(|| self.audience_by_host.get(host))
            .unwrap_or(&self.audience)
    }

    /// The token for `principal` allowed by `rule` on `host`: one it keeps from this
    /// minter for the same audience while fresh, else a new one it then keeps. A token that
    /// cannot be made denies the request: an upstream that expects one must not get none.
    pub fn for_principal(
        &self,
        principal: &Principal,
        rule: &str,
        host: &str,
    ) -> Result<Arc<IdentityToken>, Denial> {
        let audience = self.audience_for(rule, host);
        let now = unix_now();
        if let Some(kept) = principal.identity_token(|t| t.reusable(self.id, audience, now)) {
            return Ok(kept);
        }
        let minted = Arc::new(self.mint(principal, audience, now)?);
        principal.keep_identity_token(minted.clone(), KEPT_PER_PRINCIPAL, |t| {
            t.minter == self.id && now < t.refresh_at
        });
        Ok(minted)
    }

    /// Signs a new token for `principal` and `audience`.
    fn mint(
        &self,
        principal: &Principal,
        audience: &str,
        now: i64,
    ) -> Result<IdentityToken, Denial> {
        if principal.subject.is_empty() {
            return Err(Denial::new(
                Reason::InvalidClaims,
                "an identity token needs a subject, and the credential has none",
            ));
        }
        let mut expires_at = now.saturating_add(self.ttl_seconds);
        if let Some(credential_expiry) = principal.expires_at {
            // Within the verifier's leeway a credential past its `exp` is still accepted;
            // a token minted for it would be born expired.
            if credential_expiry <= now {
                return Err(Denial::new(
                    Reason::Expired,
                    "the credential expires before an identity token could be used",
                ));
            }
            expires_at = expires_at.min(credential_expiry);
        }
        let mut claims = Map::new();
        for (path, name) in &self.claims {
            if let Some(value) = principal.claim_at(path).filter(|v| !v.is_null()) {
                claims.insert(name.clone(), value);
            }
        }
        let text = |value: &str| Value::String(value.to_owned());
        claims.insert("iss".to_owned(), text(&self.issuer));
        claims.insert("sub".to_owned(), text(&principal.subject));
        claims.insert("aud".to_owned(), text(audience));
        claims.insert("iat".to_owned(), now.into());
        claims.insert("exp".to_owned(), expires_at.into());
        claims.insert("jti".to_owned(), text(&random_jti()?));
        claims.insert(
            "credential_type".to_owned(),
            text(principal.credential_type.as_str()),
        );
        claims.insert("original_issuer".to_owned(), text(&principal.issuer));
        if !principal.scopes.is_empty() {
            claims.insert("scope".to_owned(), text(&principal.scopes.join(" ")));
        }
        let payload = serde_json::to_vec(&claims).map_err(|_| unsignable())?;
        let token = self.signing.sign(&payload).map_err(|_| unsignable())?;
        if token.len() > self.max_bytes {
            return Err(Denial::new(
                Reason::InvalidClaims,
                "the credential's claims do not fit in an identity token",
            ));
        }
        let half_life = (self.ttl_seconds / 2).max(1);
        Ok(IdentityToken {
            token: token.into(),
            audience: audience.into(),
            minter: self.id,
            serial: NEXT_TOKEN_SERIAL.fetch_add(1, Ordering::Relaxed),
            refresh_at: now.saturating_add(half_life).min(expires_at),
        })
    }
}

/// A signing failure is the service's, not the caller's: the request fails closed.
fn unsignable() -> Denial {
    Denial::new(
        Reason::UpstreamUnavailable,
        "the identity token could not be signed",
    )
}

/// 128 random bits, base64url.
fn random_jti() -> Result<String, Denial> {
    let mut bytes = [0u8; 16];
    aws_lc_rs::rand::fill(&mut bytes).map_err(|_| unsignable())?;
    Ok(URL_SAFE_NO_PAD.encode(bytes))
}

#[cfg(test)]
mod tests;
