//! `dpop`: how DPoP proofs (RFC 9449) are checked, and where the `jti` values of used
//! proofs are remembered. Enforced by `crate::dpop`. A token bound to a key (`cnf.jkt`) is
//! always checked, with these defaults when the section is absent; setting the section also
//! advertises DPoP in the challenges of requests that present no credential.

use std::time::Duration;

use schemars::JsonSchema;
use serde::Deserialize;

use super::{
    secret::SecretRef,
    types::{duration, duration_schema},
};

/// DPoP proof checks (RFC 9449 §4.3) and the replay cache.
#[derive(Debug, Clone, Deserialize, JsonSchema, PartialEq)]
#[schemars(deny_unknown_fields)]
#[serde(default)]
pub struct DpopConfig {
    /// Algorithms a proof may be signed with (asymmetric only), advertised in
    /// `WWW-Authenticate: DPoP algs="..."`.
    pub algorithms: Vec<String>,
    /// Oldest proof accepted, by its `iat`; its `jti` is remembered this long (plus leeway).
    #[schemars(schema_with = "duration_schema")]
    #[serde(deserialize_with = "duration")]
    pub max_age: Duration,
    /// How far in the future a proof's `iat` may be (clock skew).
    #[schemars(schema_with = "duration_schema")]
    #[serde(deserialize_with = "duration")]
    pub leeway: Duration,
    /// Largest proof accepted, in bytes.
    pub max_proof_bytes: usize,
    /// Where used proofs are remembered.
    pub replay: DpopReplayConfig,
}

impl Default for DpopConfig {
    fn default() -> Self {
        Self {
            algorithms: ["ES256", "ES384", "EdDSA", "PS256", "RS256"]
                .map(str::to_owned)
                .to_vec(),
            max_age: Duration::from_secs(60),
            leeway: Duration::from_secs(5),
            max_proof_bytes: 8 * 1024,
            replay: DpopReplayConfig::default(),
        }
    }
}

/// `dpop.replay`: the `jti` values of accepted proofs, refused when seen again.
#[derive(Debug, Clone, Deserialize, JsonSchema, PartialEq)]
#[schemars(deny_unknown_fields)]
#[serde(default)]
pub struct DpopReplayConfig {
    /// Proofs remembered by this replica at once. When it is full of proofs still inside
    /// their window, new proofs are refused (OVERLOADED) rather than an old one forgotten.
    pub max_entries: usize,
    /// Shares the memory between replicas; unset: each replica remembers alone (a proof
    /// could then be replayed once to each other replica).
    pub redis: Option<DpopRedisConfig>,
}

impl Default for DpopReplayConfig {
    fn default() -> Self {
        Self {
            max_entries: 1_000_000,
            redis: None,
        }
    }
}

/// `dpop.replay.redis`.
#[derive(Debug, Clone, Deserialize, JsonSchema, PartialEq)]
#[schemars(deny_unknown_fields)]
pub struct DpopRedisConfig {
    /// `redis://host:port/db` (`env:REDIS_URL`, `file:/path` or literal).
    pub url: SecretRef,
    /// Longest wait for Redis per proof before `when_unavailable` applies.
    #[schemars(schema_with = "duration_schema")]
    #[serde(default = "default_timeout", deserialize_with = "duration")]
    pub timeout: Duration,
    /// Prefix of the remembered proofs' keys.
    #[serde(default = "default_key_prefix")]
    pub key_prefix: String,
    #[serde(default)]
    pub when_unavailable: DpopRedisUnavailable,
}

/// What happens to DPoP proofs while Redis cannot be reached.
#[derive(Debug, Clone, Copy, Deserialize, JsonSchema, PartialEq, Eq, Default)]
#[serde(rename_all = "snake_case")]
pub enum DpopRedisUnavailable {
    /// Requests with a proof are refused (UPSTREAM_UNAVAILABLE): no replay is possible.
    #[default]
    Deny,
    /// This replica's own memory decides: a proof could be replayed once to each other
    /// replica until Redis is back.
    Local,
}

fn default_timeout() -> Duration {
    Duration::from_millis(50)
}

fn default_key_prefix() -> String {
    "portcullis:dpop".to_owned()
}
