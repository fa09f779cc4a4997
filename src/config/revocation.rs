//! `revocation`: the JWT denylist in PostgreSQL (`portcullis tokens revoke`), which every
//! replica keeps in memory and updates by LISTEN/NOTIFY (see `crate::revocation`).

use std::time::Duration;

use schemars::JsonSchema;
use serde::Deserialize;

use super::{
    secret::SecretRef,
    types::{duration, duration_schema},
};

/// Revoked JWTs (by `jti`, or every token of a subject issued before a time), checked on
/// every request, cache hits included.
#[derive(Debug, Clone, Deserialize, JsonSchema, PartialEq)]
#[schemars(deny_unknown_fields)]
pub struct RevocationConfig {
    /// PostgreSQL URL (`env:DATABASE_URL`, `file:/path` or literal); the schema comes from
    /// `portcullis keys migrate`.
    pub url: SecretRef,
    /// How long a revocation is kept after it was made: at least the longest lifetime of
    /// the tokens you accept (a revoked token must expire before its entry goes).
    #[schemars(schema_with = "duration_schema")]
    #[serde(default = "default_retention", deserialize_with = "duration")]
    pub retention: Duration,
    /// How often the whole list is read again (drops expired entries; a safety net under
    /// the notifications).
    #[schemars(schema_with = "duration_schema")]
    #[serde(default = "default_resync_interval", deserialize_with = "duration")]
    pub resync_interval: Duration,
    /// Longest wait for the database before a load is retried.
    #[schemars(schema_with = "duration_schema")]
    #[serde(default = "default_timeout", deserialize_with = "duration")]
    pub timeout: Duration,
}

fn default_retention() -> Duration {
    Duration::from_secs(24 * 3600)
}

fn default_resync_interval() -> Duration {
    Duration::from_secs(300)
}

fn default_timeout() -> Duration {
    Duration::from_secs(2)
}
