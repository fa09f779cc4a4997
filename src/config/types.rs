//! Configuration types. Unknown keys are reported by the loader (see `load.rs`), so these
//! types do not use `deny_unknown_fields`: the loader collects every unknown key at once.

use std::{net::SocketAddr, path::PathBuf, time::Duration};

use serde::{Deserialize, Deserializer};

use super::{secret::SecretRef, verifiers::*};

/// The whole configuration file.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Config {
    pub server: ServerConfig,
    pub issuers: Vec<IssuerConfig>,
    pub credentials: CredentialsConfig,
    pub cache: CacheConfig,
    pub response: ResponseConfig,
    pub telemetry: TelemetryConfig,
    pub api_keys: ApiKeysConfig,
    pub basic: BasicConfig,
    pub client_certificates: ClientCertificatesConfig,
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(default)]
pub struct ServerConfig {
    pub grpc_listen: SocketAddr,
    pub admin_listen: SocketAddr,
    /// How long in-flight requests may take to finish after SIGTERM.
    #[serde(deserialize_with = "duration")]
    pub shutdown_grace: Duration,
    /// TLS on the gRPC listener (restart to change).
    pub tls: Option<TlsConfig>,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            grpc_listen: SocketAddr::from(([0, 0, 0, 0], 50051)),
            admin_listen: SocketAddr::from(([0, 0, 0, 0], 9090)),
            shutdown_grace: Duration::from_secs(10),
            tls: None,
        }
    }
}

/// One trusted token issuer. Exactly one key source is set.
#[derive(Debug, Clone, Deserialize, PartialEq)]
pub struct IssuerConfig {
    /// Name reported as `Principal.issuer`.
    pub name: String,
    /// The exact `iss` value tokens carry.
    pub issuer: String,
    #[serde(default)]
    pub discovery: bool,
    #[serde(default)]
    pub jwks_uri: Option<String>,
    #[serde(default)]
    pub jwks_file: Option<PathBuf>,
    #[serde(default)]
    pub public_key_files: Vec<PublicKeyFile>,
    #[serde(default)]
    pub hmac_secret: Option<SecretRef>,
    #[serde(default)]
    pub audiences: Vec<String>,
    /// Allowed algorithms. Empty: every algorithm that the keys' types imply.
    #[serde(default)]
    pub algorithms: Vec<String>,
    #[serde(default = "default_leeway", deserialize_with = "duration")]
    pub leeway: Duration,
    #[serde(default = "default_required_claims")]
    pub required_claims: Vec<String>,
    /// Allowed `typ` header values (case-insensitive, `application/` prefix optional).
    /// Empty: any `typ` is accepted.
    #[serde(default)]
    pub typ: Vec<String>,
    #[serde(default)]
    pub jwks: JwksConfig,
    /// RFC 7662 introspection for this issuer's opaque tokens.
    #[serde(default)]
    pub introspection: Option<IntrospectionConfig>,
}

fn default_leeway() -> Duration {
    Duration::from_secs(60)
}

fn default_required_claims() -> Vec<String> {
    vec!["exp".to_owned()]
}

/// A PEM public key file and, optionally, the one algorithm it may be used with.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(untagged)]
pub enum PublicKeyFile {
    Path(PathBuf),
    Detailed {
        path: PathBuf,
        #[serde(default)]
        kid: Option<String>,
        #[serde(default)]
        algorithm: Option<String>,
    },
}

impl PublicKeyFile {
    pub fn path(&self) -> &PathBuf {
        match self {
            PublicKeyFile::Path(path) | PublicKeyFile::Detailed { path, .. } => path,
        }
    }
}

/// How remote key sets (discovery, `jwks_uri`) are fetched and kept.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(default)]
pub struct JwksConfig {
    /// Lower bound on the refresh interval, whatever Cache-Control says.
    #[serde(deserialize_with = "duration")]
    pub min_refresh: Duration,
    /// Upper bound on the refresh interval; also the interval when no max-age is sent.
    #[serde(deserialize_with = "duration")]
    pub max_refresh: Duration,
    /// At most one refetch per issuer per this period when a token names an unknown kid.
    #[serde(deserialize_with = "duration")]
    pub refetch_cooldown: Duration,
    /// How long the last good key set keeps serving while fetches fail.
    #[serde(deserialize_with = "duration")]
    pub max_stale: Duration,
    /// Timeout of one fetch (connect, headers and body).
    #[serde(deserialize_with = "duration")]
    pub timeout: Duration,
}

impl Default for JwksConfig {
    fn default() -> Self {
        Self {
            min_refresh: Duration::from_secs(60),
            max_refresh: Duration::from_secs(3600),
            refetch_cooldown: Duration::from_secs(30),
            max_stale: Duration::from_secs(24 * 3600),
            timeout: Duration::from_secs(5),
        }
    }
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(default)]
pub struct CredentialsConfig {
    /// Headers an API key may arrive in (lower-case names).
    pub api_key_headers: Vec<String>,
    /// Largest credential accepted, in bytes; larger ones are MALFORMED_CREDENTIAL.
    pub max_credential_bytes: usize,
    /// The issuer (by name) whose introspection receives opaque bearer tokens; needed only
    /// when more than one issuer has `introspection`.
    pub opaque_token_issuer: Option<String>,
}

impl Default for CredentialsConfig {
    fn default() -> Self {
        Self {
            api_key_headers: vec!["x-api-key".to_owned()],
            max_credential_bytes: 8 * 1024,
            opaque_token_issuer: None,
        }
    }
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(default)]
pub struct CacheConfig {
    /// Verified credentials kept at most.
    pub max_entries: u64,
    /// Longest time a verified credential is kept (never past its own expiry).
    #[serde(deserialize_with = "duration")]
    pub max_ttl: Duration,
}

impl Default for CacheConfig {
    fn default() -> Self {
        Self {
            max_entries: 100_000,
            max_ttl: Duration::from_secs(300),
        }
    }
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(default)]
pub struct ResponseConfig {
    /// The realm named in `WWW-Authenticate` challenges.
    pub realm: String,
}

impl Default for ResponseConfig {
    fn default() -> Self {
        Self {
            realm: "portcullis".to_owned(),
        }
    }
}

#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    #[default]
    Json,
    Text,
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(default)]
pub struct TelemetryConfig {
    pub log_format: LogFormat,
    /// A tracing filter such as `info` or `portcullis=debug`; `RUST_LOG` overrides it.
    pub log_level: String,
}

impl Default for TelemetryConfig {
    fn default() -> Self {
        Self {
            log_format: LogFormat::Json,
            log_level: "info".to_owned(),
        }
    }
}

/// Reads a duration written as `30s`, `5m`, `1h 30m` (humantime) or as whole seconds.
pub(crate) fn duration<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Duration, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Raw {
        Seconds(u64),
        Text(String),
    }
    match Raw::deserialize(deserializer)? {
        Raw::Seconds(seconds) => Ok(Duration::from_secs(seconds)),
        Raw::Text(text) => humantime::parse_duration(&text).map_err(|err| {
            serde::de::Error::custom(format!(
                "invalid duration {text:?} ({err}); use forms like 30s, 5m, 1h"
            ))
        }),
    }
}
