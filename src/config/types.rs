//! Configuration types. Unknown keys are reported by the loader (see `load.rs`), so these
//! types do not use `deny_unknown_fields`: the loader collects every unknown key at once.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::SocketAddr,
    path::PathBuf,
    time::Duration,
};

use schemars::JsonSchema;
use serde::{Deserialize, Deserializer};

use super::{secret::SecretRef, verifiers::*};

/// The whole configuration file.
#[derive(Debug, Clone, Default, PartialEq, JsonSchema)]
#[schemars(deny_unknown_fields, default)]
pub struct Config {
    pub server: ServerConfig,
    pub issuers: Vec<IssuerConfig>,
    pub credentials: CredentialsConfig,
    pub cache: CacheConfig,
    pub authorization: AuthorizationConfig,
    pub response: ResponseConfig,
    pub telemetry: TelemetryConfig,
    pub api_keys: ApiKeysConfig,
    pub basic: BasicConfig,
    pub client_certificates: ClientCertificatesConfig,
    /// The JWT denylist in PostgreSQL; unset: JWTs are revoked only by expiring.
    pub revocation: Option<super::RevocationConfig>,
    /// Limits per API key, subject and rule, shared through Redis.
    pub rate_limits: super::RateLimitsConfig,
    /// DPoP proof checks (RFC 9449); unset: the defaults, and challenges do not offer DPoP.
    pub dpop: Option<super::DpopConfig>,
}

impl Config {
    /// The files a change to must trigger a reload: key files, the issuers' `file:` secrets
    /// (HMAC and introspection), the API key and htpasswd files, client CAs and TLS files.
    /// A `file:` PostgreSQL URL is not among them: the store is kept across reloads while
    /// its settings are unchanged, so a new URL needs a restart.
    pub fn files(&self) -> BTreeSet<PathBuf> {
        let mut files = BTreeSet::new();
        for issuer in &self.issuers {
            files.extend(issuer.key_sources().flat_map(KeySourceConfig::files));
            files.extend(
                issuer
                    .introspection
                    .as_ref()
                    .and_then(|i| i.client_secret.file().cloned()),
            );
        }
        if let Some(identity) = &self.response.identity_token {
            files.extend(identity.keys().filter_map(SecretRef::file).cloned());
        }
        files.extend(self.api_keys.file.clone());
        files.extend(self.basic.htpasswd_file.clone());
        files.extend(self.client_certificates.ca_files.iter().cloned());
        if let Some(tls) = &self.server.tls {
            files.extend([tls.cert_file.clone(), tls.key_file.clone()]);
            files.extend(tls.client_ca_file.clone());
        }
        files
    }

    /// Makes every relative file path in the config (key files, `file:` secrets, TLS files)
    /// relative to `base`, the directory of the config file.
    pub fn resolve_relative_paths(&mut self, base: &std::path::Path) {
        let fix = |path: &mut PathBuf| {
            if path.is_relative() {
                *path = base.join(&*path);
            }
        };
        let fix_secret = |secret: &mut SecretRef| secret.resolve_relative_to(base);
        if let Some(tls) = &mut self.server.tls {
            fix(&mut tls.cert_file);
            fix(&mut tls.key_file);
            tls.client_ca_file.iter_mut().for_each(fix);
        }
        for issuer in &mut self.issuers {
            issuer.jwks_file.iter_mut().for_each(fix);
            for file in &mut issuer.public_key_files {
                match file {
                    PublicKeyFile::Path(path) | PublicKeyFile::Detailed { path, .. } => fix(path),
                }
            }
            issuer.hmac_secret.iter_mut().for_each(fix_secret);
            if let Some(introspection) = &mut issuer.introspection {
                fix_secret(&mut introspection.client_secret);
            }
        }
        self.api_keys.file.iter_mut().for_each(fix);
        if let Some(postgres) = &mut self.api_keys.postgres {
            fix_secret(&mut postgres.url);
        }
        if let Some(revocation) = &mut self.revocation {
            fix_secret(&mut revocation.url);
        }
        if let Some(redis) = &mut self.rate_limits.redis {
            fix_secret(&mut redis.url);
        }
        if let Some(identity) = &mut self.response.identity_token {
            identity.keys_mut().for_each(fix_secret);
        }
        self.basic.htpasswd_file.iter_mut().for_each(fix);
        self.client_certificates.ca_files.iter_mut().for_each(fix);
    }
}

#[derive(Debug, Clone, Deserialize, JsonSchema, PartialEq)]
#[schemars(deny_unknown_fields)]
#[serde(default)]
pub struct ServerConfig {
    pub grpc_listen: SocketAddr,
    pub admin_listen: SocketAddr,
    /// The HTTP forward-auth listener (nginx `auth_request`, Traefik, Caddy, Envoy
    /// `http_service`); unset: off.
    pub http_listen: Option<SocketAddr>,
    /// How long in-flight requests may take to finish after SIGTERM.
    #[schemars(schema_with = "duration_schema")]
    #[serde(deserialize_with = "duration")]
    pub shutdown_grace: Duration,
    /// TLS on the gRPC listener (its files reload; turning it on or off needs a restart).
    pub tls: Option<TlsConfig>,
    /// Resource limits of the listeners (restart to change).
    pub limits: LimitsConfig,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            grpc_listen: SocketAddr::from(([0, 0, 0, 0], 50051)),
            admin_listen: SocketAddr::from(([0, 0, 0, 0], 9090)),
            http_listen: None,
            shutdown_grace: Duration::from_secs(10),
            tls: None,
            limits: LimitsConfig::default(),
        }
    }
}

/// `server.limits`: what one client, or all of them together, may hold.
#[derive(Debug, Clone, Deserialize, JsonSchema, PartialEq)]
#[schemars(deny_unknown_fields)]
#[serde(default)]
pub struct LimitsConfig {
    /// Open gRPC connections at most; further ones wait in the listen backlog.
    pub max_connections: usize,
    /// HTTP/2 streams at once on one connection.
    pub max_concurrent_streams: u32,
    /// Largest request message, in bytes.
    pub max_request_bytes: usize,
    /// Largest HTTP/2 header list (gRPC metadata) of one request, in bytes.
    pub max_header_list_bytes: u32,
    /// Requests being served at once over all connections; beyond it a request is answered
    /// at once with RESOURCE_EXHAUSTED (Check: a 503 deny with reason OVERLOADED).
    pub max_in_flight: usize,
    /// Requests are shed the same way while work waits longer than this to run (the
    /// server is past its capacity); `0s` turns it off.
    #[schemars(schema_with = "duration_schema")]
    #[serde(deserialize_with = "duration")]
    pub max_queue_delay: Duration,
    /// Longest time one request may take, reading its message included.
    #[schemars(schema_with = "duration_schema")]
    #[serde(deserialize_with = "duration")]
    pub request_timeout: Duration,
    /// Interval of HTTP/2 keepalive pings.
    #[schemars(schema_with = "duration_schema")]
    #[serde(deserialize_with = "duration")]
    pub keepalive_interval: Duration,
    /// A connection whose ping is not answered within this time is closed.
    #[schemars(schema_with = "duration_schema")]
    #[serde(deserialize_with = "duration")]
    pub keepalive_timeout: Duration,
    /// A connection from which nothing arrives for this long is closed (a client that never
    /// completes its handshake included).
    #[schemars(schema_with = "duration_schema")]
    #[serde(deserialize_with = "duration")]
    pub idle_timeout: Duration,
    /// Admin HTTP listener: time to receive a request's headers.
    #[schemars(schema_with = "duration_schema")]
    #[serde(deserialize_with = "duration")]
    pub admin_header_timeout: Duration,
    /// Admin HTTP listener: open connections at most.
    pub admin_max_connections: usize,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        Self {
            max_connections: 4096,
            max_concurrent_streams: 128,
            max_request_bytes: 128 * 1024,
            max_header_list_bytes: 16 * 1024,
            max_in_flight: 1024,
            max_queue_delay: Duration::from_millis(200),
            request_timeout: Duration::from_secs(10),
            keepalive_interval: Duration::from_secs(30),
            keepalive_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(120),
            admin_header_timeout: Duration::from_secs(5),
            admin_max_connections: 64,
        }
    }
}

/// One trusted token issuer. Exactly one key source is set.
#[derive(Debug, Clone, Deserialize, JsonSchema, PartialEq)]
#[schemars(deny_unknown_fields)]
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
    #[schemars(schema_with = "duration_schema")]
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
    /// Refuse this issuer's tokens unless they are DPoP-bound (`cnf.jkt`) and presented
    /// with a valid proof (RFC 9449); bound tokens are always checked.
    #[serde(default)]
    pub require_dpop: bool,
}

fn default_leeway() -> Duration {
    Duration::from_secs(60)
}

fn default_required_claims() -> Vec<String> {
    vec!["exp".to_owned()]
}

/// A PEM public key file and, optionally, the one algorithm it may be used with.
#[derive(Debug, Clone, Deserialize, JsonSchema, PartialEq)]
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

/// Where an issuer's JWT keys come from: the one key source field it sets. Validation, the
/// build layer and the reload watcher all read an issuer's key source through this.
#[derive(Debug, Clone, Copy)]
pub enum KeySourceConfig<'a> {
    /// OpenID Connect discovery from the issuer URL.
    Discovery,
    JwksUri(&'a String),
    JwksFile(&'a PathBuf),
    PublicKeyFiles(&'a [PublicKeyFile]),
    HmacSecret(&'a SecretRef),
}

impl<'a> KeySourceConfig<'a> {
    /// The files this source reads.
    pub fn files(self) -> Vec<PathBuf> {
        match self {
            KeySourceConfig::Discovery | KeySourceConfig::JwksUri(_) => Vec::new(),
            KeySourceConfig::JwksFile(path) => vec![path.clone()],
            KeySourceConfig::PublicKeyFiles(files) => {
                files.iter().map(|file| file.path().clone()).collect()
            }
            KeySourceConfig::HmacSecret(secret) => secret.file().cloned().into_iter().collect(),
        }
    }
}

impl IssuerConfig {
    /// Every key source field this issuer sets (validation accepts at most one).
    pub fn key_sources(&self) -> impl Iterator<Item = KeySourceConfig<'_>> {
        [
            self.discovery.then_some(KeySourceConfig::Discovery),
            self.jwks_uri.as_ref().map(KeySourceConfig::JwksUri),
            self.jwks_file.as_ref().map(KeySourceConfig::JwksFile),
            (!self.public_key_files.is_empty())
                .then_some(KeySourceConfig::PublicKeyFiles(&self.public_key_files)),
            self.hmac_secret.as_ref().map(KeySourceConfig::HmacSecret),
        ]
        .into_iter()
        .flatten()
    }

    /// The issuer's key source; none when it has introspection only.
    pub fn key_source(&self) -> Option<KeySourceConfig<'_>> {
        self.key_sources().next()
    }
}

impl PublicKeyFile {
    pub fn path(&self) -> &PathBuf {
        match self {
            PublicKeyFile::Path(path) | PublicKeyFile::Detailed { path, .. } => path,
        }
    }
}

/// How remote key sets (discovery, `jwks_uri`) are fetched and kept.
#[derive(Debug, Clone, Deserialize, JsonSchema, PartialEq)]
#[schemars(deny_unknown_fields)]
#[serde(default)]
pub struct JwksConfig {
    /// Lower bound on the refresh interval, whatever Cache-Control says.
    #[schemars(schema_with = "duration_schema")]
    #[serde(deserialize_with = "duration")]
    pub min_refresh: Duration,
    /// Upper bound on the refresh interval; also the interval when no max-age is sent.
    #[schemars(schema_with = "duration_schema")]
    #[serde(deserialize_with = "duration")]
    pub max_refresh: Duration,
    /// At most one refetch per issuer per this period when a token names an unknown kid.
    #[schemars(schema_with = "duration_schema")]
    #[serde(deserialize_with = "duration")]
    pub refetch_cooldown: Duration,
    /// How long the last good key set keeps serving while fetches fail.
    #[schemars(schema_with = "duration_schema")]
    #[serde(deserialize_with = "duration")]
    pub max_stale: Duration,
    /// Timeout of one fetch (connect, headers and body).
    #[schemars(schema_with = "duration_schema")]
    #[serde(deserialize_with = "duration")]
    pub timeout: Duration,
    /// Origins (`https://host[:port]`) a `jwks_uri` found by discovery may be on besides the
    /// issuer's own; any other origin is refused.
    pub allowed_origins: Vec<String>,
}

impl Default for JwksConfig {
    fn default() -> Self {
        Self {
            min_refresh: Duration::from_secs(60),
            max_refresh: Duration::from_secs(3600),
            refetch_cooldown: Duration::from_secs(30),
            max_stale: Duration::from_secs(24 * 3600),
            timeout: Duration::from_secs(5),
            allowed_origins: Vec::new(),
        }
    }
}

#[derive(Debug, Clone, Deserialize, JsonSchema, PartialEq)]
#[schemars(deny_unknown_fields)]
#[serde(default)]
pub struct CredentialsConfig {
    /// Headers an API key may arrive in (lower-case names).
    pub api_key_headers: Vec<String>,
    /// Largest credential accepted, in bytes; larger ones are MALFORMED_CREDENTIAL.
    pub max_credential_bytes: usize,
    /// The issuer (by name) whose introspection receives opaque bearer tokens; needed only
    /// when more than one issuer has `introspection`.
    pub opaque_token_issuer: Option<String>,
    /// CIDRs of the proxies whose `x-forwarded-for` is believed. The client address is the
    /// caller's (Envoy's `source.address` for ext_authz); when that is a trusted proxy, the
    /// right-most `x-forwarded-for` entry that is not a trusted proxy (nginx `real_ip`).
    pub trusted_proxies: Vec<String>,
}

impl Default for CredentialsConfig {
    fn default() -> Self {
        Self {
            api_key_headers: vec!["x-api-key".to_owned()],
            max_credential_bytes: 8 * 1024,
            opaque_token_issuer: None,
            trusted_proxies: Vec::new(),
        }
    }
}

#[derive(Debug, Clone, Deserialize, JsonSchema, PartialEq)]
#[schemars(deny_unknown_fields)]
#[serde(default)]
pub struct CacheConfig {
    /// Verified credentials kept at most.
    pub max_entries: u64,
    /// Estimated memory the verified-credential caches may hold, in bytes (each cache).
    pub max_bytes: u64,
    /// Longest time a verified credential is kept (never past its own expiry).
    #[schemars(schema_with = "duration_schema")]
    #[serde(deserialize_with = "duration")]
    pub max_ttl: Duration,
}

impl Default for CacheConfig {
    fn default() -> Self {
        Self {
            max_entries: 100_000,
            max_bytes: 64 * 1024 * 1024,
            max_ttl: Duration::from_secs(300),
        }
    }
}

/// The rule name reported when `authorization.default` decides (and the name decision log
/// shares use for it).
pub const DEFAULT_RULE: &str = "default";
/// The rule name reported when `Authorize.required_scopes` decides.
pub const REQUIRED_SCOPES_RULE: &str = "required_scopes";

/// Policy rules (SPEC §5). Default deny.
#[derive(Debug, Clone, Deserialize, JsonSchema, PartialEq, Default)]
#[schemars(deny_unknown_fields)]
#[serde(default)]
pub struct AuthorizationConfig {
    /// What happens when no rule applies to a request.
    pub default: Effect,
    /// At most 1024 rules.
    #[schemars(length(max = 1024))]
    pub rules: Vec<RuleConfig>,
}

/// Most rules `authorization.rules` may hold (the rules matching a request fit in a fixed
/// bit set, found without allocating).
pub const MAX_RULES: usize = 1024;

#[derive(Debug, Clone, Copy, Deserialize, JsonSchema, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
pub enum Effect {
    Allow,
    #[default]
    Deny,
}

#[derive(Debug, Clone, Copy, Deserialize, JsonSchema, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
pub enum RuleMode {
    #[default]
    Enforce,
    /// Evaluated, logged and counted, never enforced.
    Shadow,
}

/// One rule: where it applies (`match`), what it requires, and its effect.
#[derive(Debug, Clone, Deserialize, JsonSchema, PartialEq)]
#[schemars(deny_unknown_fields)]
pub struct RuleConfig {
    pub name: String,
    #[serde(default, rename = "match")]
    pub matches: MatchConfig,
    #[serde(default)]
    pub require: RequireConfig,
    #[serde(default = "default_rule_effect")]
    pub effect: Effect,
    #[serde(default)]
    pub mode: RuleMode,
    /// Public route: `true` admits requests that present no credential; `allow_failed` also
    /// admits requests whose credential fails verification. A verified credential is still
    /// reported, and deny rules and `required_scopes` still apply.
    #[serde(default)]
    pub anonymous: Anonymous,
    /// Accept an `access_token` query parameter on matching requests (RFC 6750 §2.3; off:
    /// query strings end up in logs).
    #[serde(default)]
    pub allow_query_credentials: bool,
}

/// Who an `anonymous` rule admits without a verified credential.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Anonymous {
    /// `false`: nobody; the rule needs a verified credential.
    #[default]
    No,
    /// `true`: requests that present no credential at all.
    AllowMissing,
    /// `allow_failed`: also requests whose credential fails verification (never an
    /// ambiguous credential, and never while a key source or store is unreachable).
    AllowFailed,
}

impl Anonymous {
    pub fn is_anonymous(self) -> bool {
        self != Anonymous::No
    }
}

impl JsonSchema for Anonymous {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "Anonymous".into()
    }

    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({
            "description": "Public route: true (or allow_missing) admits requests without a credential; allow_failed also admits failed ones.",
            "oneOf": [
                {"type": "boolean"},
                {"type": "string", "enum": ["allow_missing", "allow_failed"]}
            ]
        })
    }
}

impl<'de> Deserialize<'de> for Anonymous {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Flag(bool),
            Word(String),
        }
        match Raw::deserialize(deserializer) {
            Ok(Raw::Flag(false)) => Ok(Anonymous::No),
            Ok(Raw::Flag(true)) => Ok(Anonymous::AllowMissing),
            Ok(Raw::Word(word)) if word == "allow_missing" => Ok(Anonymous::AllowMissing),
            Ok(Raw::Word(word)) if word == "allow_failed" => Ok(Anonymous::AllowFailed),
            _ => Err(serde::de::Error::custom(
                "expected true, false, allow_missing or allow_failed",
            )),
        }
    }
}

fn default_rule_effect() -> Effect {
    Effect::Allow
}

/// Where a rule applies. Every field set must match; globs use `*`, `?`, `**`, `{a,b}`.
#[derive(Debug, Clone, Deserialize, JsonSchema, PartialEq, Default)]
#[schemars(deny_unknown_fields)]
#[serde(default)]
pub struct MatchConfig {
    pub grpc: GrpcMatchConfig,
    pub http: HttpMatchConfig,
    /// Exact values of Envoy `context_extensions` (or Authorize `resource.attributes`).
    pub context_extensions: std::collections::BTreeMap<String, String>,
}

#[derive(Debug, Clone, Deserialize, JsonSchema, PartialEq, Default)]
#[schemars(deny_unknown_fields)]
#[serde(default)]
pub struct GrpcMatchConfig {
    /// Fully-qualified service globs, e.g. `acme.orders.v1.*`.
    pub services: Vec<String>,
    /// Method name globs, e.g. `Get*`.
    pub methods: Vec<String>,
}

#[derive(Debug, Clone, Deserialize, JsonSchema, PartialEq, Default)]
#[schemars(deny_unknown_fields)]
#[serde(default)]
pub struct HttpMatchConfig {
    /// Host globs (port ignored, case-insensitive), e.g. `*.example.com`.
    pub hosts: Vec<String>,
    /// HTTP methods (case-insensitive).
    pub methods: Vec<String>,
    /// Path globs; `*` stays within a segment, `**` crosses segments.
    pub paths: Vec<String>,
}

/// What a request must prove for a rule to hold. Every field set must hold.
#[derive(Debug, Clone, Deserialize, JsonSchema, PartialEq, Default)]
#[schemars(deny_unknown_fields)]
#[serde(default)]
pub struct RequireConfig {
    /// Any of: JWT, OPAQUE_TOKEN, API_KEY, BASIC, CLIENT_CERTIFICATE.
    pub credential_types: Vec<String>,
    /// Any of these issuer (or store) names.
    pub issuers: Vec<String>,
    pub scopes_all: Vec<String>,
    pub scopes_any: Vec<String>,
    /// Dotted claim path -> expected value. Equality; for an array claim, membership; an
    /// expected list means any of its values.
    pub claims: std::collections::BTreeMap<String, serde_json::Value>,
    /// A CEL expression over `claims`, `principal` and `request`; must yield true.
    pub cel: Option<String>,
    /// Only tokens bound to a key (`cnf.jkt`) whose DPoP proof verified (RFC 9449).
    pub dpop: bool,
}

#[derive(Debug, Clone, Deserialize, JsonSchema, PartialEq)]
#[schemars(deny_unknown_fields)]
#[serde(default)]
pub struct ResponseConfig {
    /// The realm named in `WWW-Authenticate` challenges.
    pub realm: String,
    /// Dotted claim path -> upstream header name, set on allow (ext_authz, Authorize).
    pub claims_to_headers: std::collections::BTreeMap<String, String>,
    /// A JWT signed by Portcullis for upstreams after each allow; unset: none is minted.
    pub identity_token: Option<super::IdentityTokenConfig>,
}

impl Default for ResponseConfig {
    fn default() -> Self {
        Self {
            realm: "portcullis".to_owned(),
            claims_to_headers: Default::default(),
            identity_token: None,
        }
    }
}

#[derive(Debug, Clone, Copy, Deserialize, JsonSchema, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    #[default]
    Json,
    Text,
}

#[derive(Debug, Clone, Deserialize, JsonSchema, PartialEq)]
#[schemars(deny_unknown_fields)]
#[serde(default)]
pub struct TelemetryConfig {
    pub log_format: LogFormat,
    /// A tracing filter such as `info` or `portcullis=debug`; `RUST_LOG` overrides it.
    pub log_level: String,
    /// OTLP/gRPC collector for traces, e.g. `http://otel-collector:4317`; unset: no export.
    pub otlp_endpoint: Option<String>,
    /// Per-request metrics (requests, latency, cache lookups) on `/metrics`.
    pub metrics: bool,
    /// Share of traces started here that are exported (0.0..=1.0); a caller's sampled
    /// `traceparent` is always followed.
    pub trace_sample_ratio: f64,
    /// One log line per sampled decision, allow and deny (off by default).
    pub decision_log: DecisionLogConfig,
}

/// Decision logs: a JSON line (target `decision_log`) or OTLP log record per sampled
/// decision with the rule, reason, principal, credential type and digest, request and
/// duration. Never the credential, and no claim unless listed in `claims`.
#[derive(Debug, Clone, Deserialize, JsonSchema, PartialEq)]
#[schemars(deny_unknown_fields)]
#[serde(default)]
pub struct DecisionLogConfig {
    pub enabled: bool,
    /// Share of decisions logged (0.0..=1.0) where `rules` names no share of its own.
    pub sample_ratio: f64,
    /// Share per deciding rule, by name (`default` for `authorization.default`), e.g.
    /// `{healthz: 0.0, admin: 1.0}`.
    pub rules: BTreeMap<String, f64>,
    /// Claims copied into each line of a verified principal, by name (at most 32).
    pub claims: Vec<String>,
    /// Where decisions go: `stderr` (with the other logs, in their format) and/or `otlp`
    /// (OTLP log records to `telemetry.otlp_endpoint`). Read at start: a restart applies
    /// a change.
    pub outputs: Vec<DecisionLogOutput>,
}

/// A destination of decision logs.
#[derive(Debug, Clone, Copy, Deserialize, JsonSchema, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum DecisionLogOutput {
    /// A line on stderr, in `telemetry.log_format`.
    Stderr,
    /// An OTLP log record, exported with the traces' endpoint.
    Otlp,
}

impl Default for DecisionLogConfig {
    fn default() -> Self {
        Self {
            enabled: false,
            sample_ratio: 1.0,
            rules: BTreeMap::new(),
            claims: Vec::new(),
            outputs: vec![DecisionLogOutput::Stderr],
        }
    }
}

impl DecisionLogConfig {
    /// Whether decisions are logged to `output`.
    pub fn logs_to(&self, output: DecisionLogOutput) -> bool {
        self.enabled && self.outputs.contains(&output)
    }
}

impl Default for TelemetryConfig {
    fn default() -> Self {
        Self {
            log_format: LogFormat::Json,
            log_level: "info".to_owned(),
            otlp_endpoint: None,
            metrics: true,
            trace_sample_ratio: 1.0,
            decision_log: DecisionLogConfig::default(),
        }
    }
}

/// The JSON Schema of a duration: `30s`, `5m`, `1h 30m`, or whole seconds.
pub(crate) fn duration_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    schemars::json_schema!({
        "description": "A duration such as 30s, 5m or 1h 30m, or whole seconds.",
        "type": ["string", "integer"],
        "minimum": 0
    })
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
