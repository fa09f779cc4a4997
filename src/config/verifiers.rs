//! Configuration of the verifiers beyond JWT: API key stores (`api_keys`), HTTP Basic
//! (`basic`), per-issuer OAuth2 introspection (`issuers[].introspection`), client certificates
//! (`client_certificates`) and TLS on the gRPC listener (`server.tls`).

use std::{path::PathBuf, time::Duration};

use schemars::JsonSchema;
use serde::Deserialize;

use super::{
    secret::SecretRef,
    types::{duration, duration_schema},
};

/// TLS on the gRPC listener. With `client_ca_file`, clients may present a certificate signed
/// by that CA (optional: callers without one still use the other credentials). The files are
/// watched: rotated contents apply to new connections without a restart.
#[derive(Debug, Clone, Deserialize, JsonSchema, PartialEq)]
#[schemars(deny_unknown_fields)]
pub struct TlsConfig {
    pub cert_file: PathBuf,
    pub key_file: PathBuf,
    #[serde(default)]
    pub client_ca_file: Option<PathBuf>,
}

/// `api_keys`: the key prefix and the stores looked up (file first, then PostgreSQL).
#[derive(Debug, Clone, Deserialize, JsonSchema, PartialEq)]
#[schemars(deny_unknown_fields)]
#[serde(default)]
pub struct ApiKeysConfig {
    /// The prefix every key carries (`<prefix>_...`); keys with another prefix are malformed.
    pub prefix: String,
    /// A YAML file of key records (hot-reloaded).
    pub file: Option<PathBuf>,
    pub postgres: Option<PostgresConfig>,
    /// How often each key's usage (uses, last use, last client address) is written out:
    /// to PostgreSQL for its keys, as `api_key_usage` log lines for the file's (1s to 1h).
    #[schemars(schema_with = "duration_schema")]
    #[serde(deserialize_with = "duration")]
    pub usage_flush_interval: Duration,
}

impl Default for ApiKeysConfig {
    fn default() -> Self {
        Self {
            prefix: "pcl".to_owned(),
            file: None,
            postgres: None,
            usage_flush_interval: Duration::from_secs(10),
        }
    }
}

impl ApiKeysConfig {
    pub fn is_configured(&self) -> bool {
        self.file.is_some() || self.postgres.is_some()
    }
}

/// `api_keys.postgres`: the shared key store.
#[derive(Debug, Clone, Deserialize, JsonSchema, PartialEq)]
#[schemars(deny_unknown_fields)]
pub struct PostgresConfig {
    /// Connection URL (`env:DATABASE_URL`, `file:/path` or literal).
    pub url: SecretRef,
    /// How long a found key is cached (revocations arrive sooner, by NOTIFY).
    #[schemars(schema_with = "duration_schema")]
    #[serde(default = "default_pg_cache_ttl", deserialize_with = "duration")]
    pub cache_ttl: Duration,
    /// How long an unknown digest is remembered as unknown.
    #[schemars(schema_with = "duration_schema")]
    #[serde(default = "default_pg_negative_ttl", deserialize_with = "duration")]
    pub negative_cache_ttl: Duration,
    /// Connections in the pool.
    #[serde(default = "default_pg_connections")]
    pub max_connections: u32,
    /// Longest wait for a connection or a query before UPSTREAM_UNAVAILABLE.
    #[schemars(schema_with = "duration_schema")]
    #[serde(default = "default_pg_timeout", deserialize_with = "duration")]
    pub timeout: Duration,
}

fn default_pg_cache_ttl() -> Duration {
    Duration::from_secs(60)
}
fn default_pg_negative_ttl() -> Duration {
    Duration::from_secs(5)
}
fn default_pg_connections() -> u32 {
    4
}
fn default_pg_timeout() -> Duration {
    Duration::from_secs(2)
}

/// `basic`: HTTP Basic credentials checked against an htpasswd file.
#[derive(Debug, Clone, Deserialize, JsonSchema, PartialEq)]
#[schemars(deny_unknown_fields)]
#[serde(default)]
pub struct BasicConfig {
    /// Realm of the `Basic` challenge; defaults to `response.realm`.
    pub realm: Option<String>,
    pub htpasswd_file: Option<PathBuf>,
    /// How long a successful check is remembered (keyed digest of user and password).
    #[schemars(schema_with = "duration_schema")]
    #[serde(deserialize_with = "duration")]
    pub cache_ttl: Duration,
    /// Failures allowed per (user, client address) pair within `failure_window`.
    pub max_failures: u32,
    /// Failures allowed per client address, whatever the user, within `failure_window`.
    pub max_client_failures: u32,
    #[schemars(schema_with = "duration_schema")]
    #[serde(deserialize_with = "duration")]
    pub failure_window: Duration,
}

impl Default for BasicConfig {
    fn default() -> Self {
        Self {
            realm: None,
            htpasswd_file: None,
            cache_ttl: Duration::from_secs(60),
            max_failures: 5,
            max_client_failures: 20,
            failure_window: Duration::from_secs(60),
        }
    }
}

/// How Portcullis authenticates itself to an introspection endpoint (RFC 7662 §2.1).
#[derive(Debug, Clone, Copy, Deserialize, JsonSchema, PartialEq, Eq, Default)]
#[serde(rename_all = "snake_case")]
pub enum ClientAuthMethod {
    #[default]
    ClientSecretBasic,
    ClientSecretPost,
}

/// `issuers[].introspection`: RFC 7662 for the issuer's opaque tokens.
#[derive(Debug, Clone, Deserialize, JsonSchema, PartialEq)]
#[schemars(deny_unknown_fields)]
pub struct IntrospectionConfig {
    pub endpoint: String,
    pub client_id: String,
    pub client_secret: SecretRef,
    #[serde(default)]
    pub auth_method: ClientAuthMethod,
    /// Longest time an introspection result is reused (never past the token's `exp`).
    #[schemars(schema_with = "duration_schema")]
    #[serde(default = "default_introspection_ttl", deserialize_with = "duration")]
    pub cache_ttl: Duration,
    /// How long a definite refusal (inactive, another issuer or token type, expired) is
    /// reused; never longer than `cache_ttl`. An unavailable endpoint is never cached.
    #[schemars(schema_with = "duration_schema")]
    #[serde(
        default = "default_introspection_negative_ttl",
        deserialize_with = "duration"
    )]
    pub negative_cache_ttl: Duration,
    /// Bound on one introspection call; past it the request is UPSTREAM_UNAVAILABLE.
    #[schemars(schema_with = "duration_schema")]
    #[serde(
        default = "default_introspection_timeout",
        deserialize_with = "duration"
    )]
    pub timeout: Duration,
}

fn default_introspection_ttl() -> Duration {
    Duration::from_secs(60)
}
fn default_introspection_negative_ttl() -> Duration {
    Duration::from_secs(5)
}
fn default_introspection_timeout() -> Duration {
    Duration::from_secs(2)
}

/// `client_certificates`: CAs that client certificates are validated against, besides
/// `server.tls.client_ca_file`. Certificate authentication is on when any CA is configured.
#[derive(Debug, Clone, Deserialize, JsonSchema, PartialEq, Default)]
#[schemars(deny_unknown_fields)]
#[serde(default)]
pub struct ClientCertificatesConfig {
    pub ca_files: Vec<PathBuf>,
}
