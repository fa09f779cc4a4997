//! `response.identity_token`: the short-lived JWT Portcullis signs for upstreams after an
//! allow, the keys that sign it (current, next, previous) and how its audience and claims
//! are chosen. Checked at load by `load::validate_identity_token`; the keys are read and
//! parsed when a pipeline is built (`identity_token::IdentityTokens`).

use std::{collections::BTreeMap, time::Duration};

use schemars::JsonSchema;
use serde::Deserialize;

use super::{
    secret::SecretRef,
    types::{duration, duration_schema},
};

/// A JWT minted after every allow of a verified credential, so upstreams verify one format:
/// returned by Authenticate and Authorize and set as `header` by Check and forward-auth.
/// Its keys are published on the admin listener (`/.well-known/jwks.json`, OpenID
/// discovery at `/.well-known/openid-configuration`).
#[derive(Debug, Clone, Deserialize, JsonSchema, PartialEq)]
#[schemars(deny_unknown_fields)]
pub struct IdentityTokenConfig {
    /// This service's issuer URL (`https://...`, or `http://` inside a cluster): the tokens'
    /// `iss`, and where upstreams find `/.well-known/openid-configuration`.
    pub issuer: String,
    /// Where upstreams fetch the keys; default `{issuer}/.well-known/jwks.json`.
    #[serde(default)]
    pub jwks_uri: Option<String>,
    /// The PKCS#8 PEM private key that signs (Ed25519: EdDSA, P-256: ES256), as
    /// `file:/path` or `env:NAME`.
    pub signing_key: SecretRef,
    /// The key that will sign after the next rotation: published in the JWKS now, so
    /// upstreams know it before it signs.
    #[serde(default)]
    pub next_signing_key: Option<SecretRef>,
    /// Keys that signed before the last rotation: still published (never used to sign) so
    /// the tokens they signed verify until they expire.
    #[serde(default)]
    pub previous_signing_keys: Vec<SecretRef>,
    /// The upstream header Check and forward-auth set to the token.
    #[serde(default = "default_header")]
    pub header: String,
    /// The token's lifetime, never past the original credential's expiry (1s to 24h).
    #[schemars(schema_with = "duration_schema")]
    #[serde(default = "default_ttl", deserialize_with = "duration")]
    pub ttl: Duration,
    /// `aud` when neither the deciding rule nor the request's host names one.
    pub audience: String,
    /// Rule name -> `aud` for requests that rule allowed (checked first).
    #[serde(default)]
    pub audience_by_rule: BTreeMap<String, String>,
    /// Request host (as canonicalized, with or without its port) -> `aud`.
    #[serde(default)]
    pub audience_by_host: BTreeMap<String, String>,
    /// Dotted claim path of the verified credential -> claim name in the token; an absent
    /// claim is left out.
    #[serde(default)]
    pub claims: BTreeMap<String, String>,
    /// The longest token minted (512 to 65536 bytes); a principal whose token would be
    /// longer is denied (INVALID_CLAIMS) rather than passed on without it.
    #[serde(default = "default_max_bytes")]
    pub max_bytes: usize,
}

fn default_header() -> String {
    "x-identity-token".to_owned()
}

fn default_ttl() -> Duration {
    Duration::from_secs(300)
}

fn default_max_bytes() -> usize {
    8192
}

impl IdentityTokenConfig {
    /// Every key this config reads: current, next, then previous.
    pub fn keys(&self) -> impl Iterator<Item = &SecretRef> {
        std::iter::once(&self.signing_key)
            .chain(&self.next_signing_key)
            .chain(&self.previous_signing_keys)
    }

    /// The same, to make relative `file:` paths relative to the config file.
    pub(crate) fn keys_mut(&mut self) -> impl Iterator<Item = &mut SecretRef> {
        std::iter::once(&mut self.signing_key)
            .chain(&mut self.next_signing_key)
            .chain(&mut self.previous_signing_keys)
    }

    /// The JWKS URL discovery names.
    pub fn jwks_uri(&self) -> String {
        self.jwks_uri.clone().unwrap_or_else(|| {
            format!(
                "{}/.well-known/jwks.json",
                self.issuer.trim_end_matches('/')
            )
        })
    }
}
