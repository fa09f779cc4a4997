//! The build layer: everything made from a validated [`Config`] for one generation. Issuers
//! and their key sources, the verifiers, the policy, credential extraction and the upstream
//! headers are built here and assembled into a [`Pipeline`]; this is the one module that
//! reads key files and secrets for them, and the one that reuses the previous generation's
//! remote key sources and PostgreSQL store whose settings did not change (so a reload does
//! not refetch keys or reconnect). Problems are reported with their config paths, all at
//! once.

use std::{path::PathBuf, sync::Arc};

use crate::{
    client_address::TrustedProxies,
    config::{Config, ConfigError, ConfigErrors, IssuerConfig, KeySourceConfig, PublicKeyFile},
    credentials::Extraction,
    dpop::{Dpop, replay::RedisReplay},
    identity_token::IdentityTokens,
    jwt::{self, Algorithm, ClaimPolicy, KeySet},
    keys::{
        KeySource, RemoteKeySource,
        api_keys::{file::FileStore, postgres::PostgresStore},
        htpasswd::Htpasswd,
        jwks::Location,
    },
    pipeline::{Phases, Pipeline},
    policy::Policy,
    rate_limit::{RateLimiter, redis::RedisCounters},
    revocation::{self, Revocations},
    telemetry::metrics::Metrics,
    upstream::UpstreamHeaders,
    verify::{
        Verifiers,
        api_key::{ApiKeyVerifier, FileUsage},
        basic::BasicVerifier,
        certificate::CertificateVerifier,
        introspection::Introspector,
        jwt::{IssuerVerifier, JwtVerifier},
    },
};

/// Whether building may fetch from the network and start background tasks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BuildMode {
    /// For serving: remote sources start refreshing.
    Serve,
    /// For `check-config`: static key material is loaded and checked, nothing is fetched.
    Check,
}

/// Builds the pipeline of one generation. `previous` lends remote key sources and the
/// PostgreSQL store whose settings are unchanged.
pub fn pipeline(
    config: Config,
    client: &reqwest::Client,
    metrics: &Arc<Metrics>,
    previous: Option<&Pipeline>,
    mode: BuildMode,
) -> Result<Pipeline, ConfigErrors> {
    let mut errors = Vec::new();
    let verifiers = verifiers(&config, client, metrics, previous, mode, &mut errors);
    let policy = Policy::build(&config.authorization, metrics.clone())
        .map_err(|mut rule_errors| errors.append(&mut rule_errors));
    if !errors.is_empty() {
        return Err(ConfigErrors(errors));
    }
    let Ok(policy) = policy else {
        return Err(ConfigErrors(errors));
    };
    let extraction = Extraction {
        api_key_headers: config.credentials.api_key_headers.clone(),
        max_credential_bytes: config.credentials.max_credential_bytes,
        api_key_prefix: verifiers
            .api_keys
            .is_some()
            .then(|| config.api_keys.prefix.clone()),
        trusted_proxies: TrustedProxies::new(&config.credentials.trusted_proxies),
    };
    let identity_tokens = match config
        .response
        .identity_token
        .as_ref()
        .map(IdentityTokens::new)
    {
        Some(Ok(tokens)) => Some(tokens),
        Some(Err(err)) => {
            push(&mut errors, "response.identity_token", err.to_string());
            return Err(ConfigErrors(errors));
        }
        None => None,
    };
    let rate_limiter = match rate_limiter(&config, previous, mode) {
        Ok(limiter) => limiter,
        Err(message) => {
            push(&mut errors, "rate_limits.redis.url", message);
            return Err(ConfigErrors(errors));
        }
    };
    let dpop = match dpop(&config, previous, mode) {
        Ok(dpop) => dpop,
        Err(message) => {
            push(&mut errors, "dpop.replay.redis.url", message);
            return Err(ConfigErrors(errors));
        }
    };
    let upstream = UpstreamHeaders::new(&config.response.claims_to_headers)
        .with_identity_header(identity_tokens.as_ref().map(IdentityTokens::header));
    let phases = Phases {
        extraction,
        verifiers,
        policy,
        rate_limiter,
        dpop,
        upstream,
        identity_tokens,
    };
    Ok(Pipeline::new(Arc::new(config), phases, metrics.clone()))
}

/// The rate limits, with the previous generation's counters: its local ones always, its
/// Redis connection while the Redis settings are unchanged.
fn rate_limiter(
    config: &Config,
    previous: Option<&Pipeline>,
    mode: BuildMode,
) -> Result<RateLimiter, String> {
    let previous = previous.map(Pipeline::rate_limiter);
    let local = previous.map(|p| p.local().clone()).unwrap_or_default();
    let redis = match &config.rate_limits.redis {
        None => None,
        Some(settings) => match previous
            .and_then(RateLimiter::redis)
            .filter(|redis| redis.same_settings(settings))
        {
            Some(redis) => Some(redis.clone()),
            None => {
                let url = settings.url.resolve_string()?;
                let counters = RedisCounters::new(settings, &url).map_err(|err| err.to_string())?;
                (mode == BuildMode::Serve).then(|| Arc::new(counters))
            }
        },
    };
    Ok(RateLimiter::new(&config.rate_limits, redis, local))
}

/// The DPoP checks, with the previous generation's memory of used proofs: its local one
/// always, its Redis connection while the Redis settings are unchanged (a reload forgets
/// no proof).
fn dpop(config: &Config, previous: Option<&Pipeline>, mode: BuildMode) -> Result<Dpop, String> {
    let previous = previous.map(|p| p.dpop().replay());
    let local = previous.map(|replay| replay.local.clone());
    let settings = config
        .dpop
        .as_ref()
        .and_then(|dpop| dpop.replay.redis.as_ref());
    let redis = match settings {
        None => None,
        Some(settings) => match previous
            .and_then(|replay| replay.redis.as_ref())
            .filter(|redis| redis.same_settings(settings))
        {
            Some(redis) => Some(redis.clone()),
            None => {
                let url = settings.url.resolve_string()?;
                let memory = RedisReplay::new(settings, &url)?;
                (mode == BuildMode::Serve).then(|| Arc::new(memory))
            }
        },
    };
    Ok(Dpop::new(config, local, redis))
}

fn push(errors: &mut Vec<ConfigError>, path: &str, message: impl Into<String>) {
    errors.push(ConfigError {
        path: path.to_owned(),
        message: message.into(),
    });
}

/// Every verifier the config asks for.
fn verifiers(
    config: &Config,
    client: &reqwest::Client,
    metrics: &Arc<Metrics>,
    previous: Option<&Pipeline>,
    mode: BuildMode,
    errors: &mut Vec<ConfigError>,
) -> Verifiers {
    let mut issuers = Vec::with_capacity(config.issuers.len());
    for (i, issuer) in config.issuers.iter().enumerate() {
        // An issuer may have introspection only.
        let Some(source) = issuer.key_source() else {
            continue;
        };
        match issuer_verifier(issuer, source, client, metrics, previous, mode) {
            Ok(built) => issuers.push(built),
            Err(message) => push(errors, &format!("issuers[{i}]"), message),
        }
    }
    let cache = &config.cache;
    Verifiers {
        jwt: JwtVerifier::new(
            issuers,
            cache.max_entries,
            cache.max_bytes,
            cache.max_ttl,
            metrics.clone(),
        ),
        api_keys: api_key_verifier(
            config,
            previous.and_then(|p| p.verifiers().api_keys.as_ref()),
            mode,
            errors,
        ),
        basic: basic_verifier(config, errors),
        opaque: opaque_introspector(config, client, metrics, errors),
        certificates: certificate_verifier(config, errors),
        revocations: revocations(config, previous, mode, errors),
    }
}

/// The JWT denylist: the previous configuration's follower when its settings are
/// unchanged (no gap in a reload), else a new one seeded with the previous list, in force
/// until the new database's list has loaded.
fn revocations(
    config: &Config,
    previous: Option<&Pipeline>,
    mode: BuildMode,
    errors: &mut Vec<ConfigError>,
) -> Option<Arc<Revocations>> {
    let settings = config.revocation.as_ref()?;
    let url = settings
        .url
        .resolve_string()
        .map_err(|err| push(errors, "revocation.url", err))
        .ok()?;
    let previous = previous.and_then(|p| p.verifiers().revocations.as_ref());
    if mode == BuildMode::Check {
        return revocation::postgres::pool(&url, settings.timeout)
            .map_err(|err| push(errors, "revocation.url", err.to_string()))
            .ok()
            .and(None);
    }
    if let Some(follower) = previous.filter(|follower| follower.same_settings(settings)) {
        return Some(follower.clone());
    }
    let seed = previous.and_then(|follower| follower.snapshot());
    Revocations::start(settings, &url, seed)
        .map_err(|err| push(errors, "revocation.url", err.to_string()))
        .ok()
}

fn issuer_verifier(
    issuer: &IssuerConfig,
    source: KeySourceConfig<'_>,
    client: &reqwest::Client,
    metrics: &Arc<Metrics>,
    previous: Option<&Pipeline>,
    mode: BuildMode,
) -> Result<IssuerVerifier, String> {
    let algorithms = issuer
        .algorithms
        .iter()
        .map(|name| name.parse())
        .collect::<Result<Vec<Algorithm>, String>>()?;
    let keys = key_source(issuer, source, &algorithms, client, metrics, previous, mode)?;
    Ok(IssuerVerifier {
        name: issuer.name.as_str().into(),
        iss: issuer.issuer.clone(),
        algorithms,
        policy: ClaimPolicy::from_config(issuer),
        keys,
    })
}

fn key_source(
    issuer: &IssuerConfig,
    source: KeySourceConfig<'_>,
    algorithms: &[Algorithm],
    client: &reqwest::Client,
    metrics: &Arc<Metrics>,
    previous: Option<&Pipeline>,
    mode: BuildMode,
) -> Result<KeySource, String> {
    let location = match source {
        KeySourceConfig::Discovery => Location::Discovery {
            issuer: issuer.issuer.clone(),
        },
        KeySourceConfig::JwksUri(uri) => Location::JwksUri(uri.clone()),
        KeySourceConfig::JwksFile(path) => {
            let bytes = std::fs::read(path)
                .map_err(|err| format!("cannot read jwks_file {}: {err}", path.display()))?;
            let keys = KeySet::from_jwks(&bytes, algorithms, true)
                .map_err(|err| format!("jwks_file {}: {err}", path.display()))?;
            return Ok(KeySource::Static(Arc::new(keys)));
        }
        KeySourceConfig::HmacSecret(secret) => {
            let secret = secret
                .resolve()
                .map_err(|err| format!("hmac_secret: {err}"))?;
            let algorithm = algorithms.first().copied().unwrap_or(Algorithm::HS256);
            let key = jwt::hmac_key(None, &secret, algorithm)
                .map_err(|err| format!("hmac_secret: {err}"))?;
            let keys = KeySet::from_keys(vec![key]).map_err(|err| err.to_string())?;
            return Ok(KeySource::Static(Arc::new(keys)));
        }
        KeySourceConfig::PublicKeyFiles(files) => {
            return public_keys(files, algorithms).map(|keys| KeySource::Static(Arc::new(keys)));
        }
    };
    let reused = previous.and_then(|p| {
        p.remote_sources()
            .find(|source| source.same_as(&location, algorithms, &issuer.jwks))
            .cloned()
    });
    let source = reused.unwrap_or_else(|| {
        let source = RemoteKeySource::new(
            issuer.name.clone(),
            location,
            algorithms.to_vec(),
            issuer.jwks.clone(),
            client.clone(),
            metrics.clone(),
        );
        if mode == BuildMode::Serve {
            source.spawn_refresher();
        }
        source
    });
    Ok(KeySource::Remote(source))
}

fn public_keys(files: &[PublicKeyFile], algorithms: &[Algorithm]) -> Result<KeySet, String> {
    let mut keys = Vec::with_capacity(files.len());
    for file in files {
        let path = file.path();
        let pem =
            std::fs::read(path).map_err(|err| format!("cannot read {}: {err}", path.display()))?;
        let (kid, declared) = match file {
            PublicKeyFile::Path(_) => (None, None),
            PublicKeyFile::Detailed { kid, algorithm, .. } => (
                kid.clone(),
                algorithm.as_deref().map(str::parse).transpose()?,
            ),
        };
        keys.push(
            jwt::pem_key(&pem, kid, declared, algorithms)
                .map_err(|err| format!("{}: {err}", path.display()))?,
        );
    }
    KeySet::from_keys(keys).map_err(|err| err.to_string())
}

/// The API key stores: the file, and PostgreSQL (the previous generation's store when its
/// settings are unchanged, so a reload keeps its pool, listener and cache).
fn api_key_verifier(
    config: &Config,
    previous: Option<&ApiKeyVerifier>,
    mode: BuildMode,
    errors: &mut Vec<ConfigError>,
) -> Option<ApiKeyVerifier> {
    if !config.api_keys.is_configured() {
        return None;
    }
    let file = config.api_keys.file.as_ref().and_then(|path| {
        FileStore::load(path)
            .map(Arc::new)
            .map_err(|err| push(errors, "api_keys.file", err.to_string()))
            .ok()
    });
    let postgres = config.api_keys.postgres.as_ref().and_then(|settings| {
        let url = settings
            .url
            .resolve_string()
            .map_err(|err| push(errors, "api_keys.postgres.url", err))
            .ok()?;
        if mode == BuildMode::Check {
            return crate::keys::api_keys::postgres::connect_options(&url)
                .map_err(|err| push(errors, "api_keys.postgres.url", err.to_string()))
                .ok()
                .and(None);
        }
        let interval = config.api_keys.usage_flush_interval;
        if let Some(store) = previous
            .and_then(|p| p.postgres.as_ref())
            .filter(|store| store.same_settings(settings, interval))
        {
            return Some(store.clone());
        }
        PostgresStore::new(settings, &url, config.cache.max_entries, true, interval)
            .map_err(|err| push(errors, "api_keys.postgres.url", err.to_string()))
            .ok()
    });
    let file_usage = (file.is_some() && mode == BuildMode::Serve)
        .then(|| FileUsage::start(config.api_keys.usage_flush_interval));
    Some(ApiKeyVerifier {
        prefix: config.api_keys.prefix.clone(),
        file,
        postgres,
        file_usage,
    })
}

fn basic_verifier(config: &Config, errors: &mut Vec<ConfigError>) -> Option<BasicVerifier> {
    let path = config.basic.htpasswd_file.as_ref()?;
    let htpasswd = Htpasswd::load(path)
        .map_err(|err| {
            push(
                errors,
                "basic.htpasswd_file",
                format!("{}: {err}", path.display()),
            )
        })
        .ok()?;
    BasicVerifier::new(
        htpasswd,
        &config.basic,
        config.cache.max_entries,
        config.cache.max_ttl,
    )
    .map_err(|err| push(errors, "basic", err))
    .ok()
}

/// The introspection that receives opaque tokens: `credentials.opaque_token_issuer`'s, or
/// the one issuer with introspection.
fn opaque_introspector(
    config: &Config,
    client: &reqwest::Client,
    metrics: &Arc<Metrics>,
    errors: &mut Vec<ConfigError>,
) -> Option<Introspector> {
    let opaque_issuer = config.credentials.opaque_token_issuer.as_deref();
    let mut built = None;
    for (i, issuer) in config.issuers.iter().enumerate() {
        if issuer.introspection.is_none() || opaque_issuer.is_some_and(|name| name != issuer.name) {
            continue;
        }
        match Introspector::new(
            issuer,
            client.clone(),
            config.cache.max_entries,
            config.cache.max_bytes,
            config.cache.max_ttl,
            metrics.clone(),
        ) {
            Ok(introspector) => built = introspector,
            Err(err) => push(errors, &format!("issuers[{i}]"), err),
        }
    }
    built
}

/// Client CAs: `client_certificates.ca_files` and the listener's `server.tls.client_ca_file`.
fn certificate_verifier(
    config: &Config,
    errors: &mut Vec<ConfigError>,
) -> Option<CertificateVerifier> {
    let mut ca_files: Vec<PathBuf> = config.client_certificates.ca_files.clone();
    if let Some(ca) = config
        .server
        .tls
        .as_ref()
        .and_then(|t| t.client_ca_file.clone())
    {
        ca_files.push(ca);
    }
    CertificateVerifier::load(&ca_files)
        .map_err(|err| push(errors, "client_certificates.ca_files", err))
        .ok()
        .flatten()
}
