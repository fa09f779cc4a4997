//! API key material: the key format ([`format`]), the record a store keeps for each key, and
//! the stores themselves — a YAML file ([`file`]) and PostgreSQL ([`postgres`]). Stores are
//! looked up by the SHA-256 digest of the presented key; the key itself is never stored.

pub mod file;
pub mod format;
pub mod postgres;
pub mod usage;

use serde_json::{Map, Value};

pub use format::FormatError;

/// What a store knows about one key (everything but the key).
#[derive(Debug, Clone, PartialEq)]
pub struct ApiKeyRecord {
    /// Public identifier, reported as `Principal.key_id` and used to revoke.
    pub id: String,
    pub subject: String,
    pub scopes: Vec<String>,
    /// Seconds since the Unix epoch.
    pub expires_at: Option<i64>,
    /// Disabled or revoked: REVOKED.
    pub disabled: bool,
    /// Returned as the principal's claims.
    pub metadata: Map<String, Value>,
    /// The key's own rate limit (`rate_limits`), if any.
    pub rate_limit: Option<crate::config::RateLimit>,
}
