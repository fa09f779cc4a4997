//! Strict loading: YAML -> typed sections, collecting every error at once with its path.
//!
//! Each top-level section (and each issuer) is deserialized on its own, wrapped in
//! `serde_ignored` (unknown keys) and `serde_path_to_error` (type errors), so one mistake does
//! not hide the next. Semantic checks run afterwards over whatever parsed.

use std::{fmt, path::Path, time::Duration};

use serde::de::DeserializeOwned;
use serde_norway::Value;

use super::{SecretRef, types::*};
use crate::vocabulary::{Algorithm, CredentialType, parse_network, valid_api_key_prefix};

/// One problem in a config file, located by its dotted path (`issuers[0].leeway`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    pub path: String,
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.path.is_empty() {
            f.write_str(&self.message)
        } else {
            write!(f, "{}: {}", self.path, self.message)
        }
    }
}

/// Every problem found in one config, reported together.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct ConfigErrors(pub Vec<ConfigError>);

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, error) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("\n")?;
            }
            write!(f, "{error}")?;
        }
        Ok(())
    }
}

pub fn load_file(path: &Path) -> Result<Config, ConfigErrors> {
    let (config, errors) = load_file_partial(path);
    if errors.is_empty() {
        Ok(config)
    } else {
        Err(ConfigErrors(errors))
    }
}

/// Like [`load_file`], but also returns what did parse when there are errors (sections that
/// failed keep their defaults), so that `check-config` can check the rest in the same run.
///
/// Relative paths in the file (key files, secrets, TLS files) are resolved against the
/// directory the config file is in, as Prometheus does.
pub fn load_file_partial(path: &Path) -> (Config, Vec<ConfigError>) {
    match std::fs::read_to_string(path) {
        Ok(text) => {
            let (mut config, errors) = parse(&text);
            let base = path.parent().unwrap_or(Path::new(""));
            config.resolve_relative_paths(base);
            (config, errors)
        }
        Err(err) => (
            Config::default(),
            vec![ConfigError {
                path: String::new(),
                message: format!("cannot read {}: {err}", path.display()),
            }],
        ),
    }
}

/// Parses and validates a config. Secret references are not resolved here; the pipeline does
/// that when it builds key material (see `build::pipeline`).
pub fn load_str(text: &str) -> Result<Config, ConfigErrors> {
    let (config, errors) = parse(text);
    if errors.is_empty() {
        Ok(config)
    } else {
        Err(ConfigErrors(errors))
    }
}

/// Parses and validates every section, collecting every error; sections that fail keep
/// their defaults in the returned config.
fn parse(text: &str) -> (Config, Vec<ConfigError>) {
    let mut errors = Vec::new();
    let root: Value = match serde_norway::from_str(text) {
        Ok(Value::Null) => Value::Mapping(Default::default()),
        Ok(value) => value,
        Err(err) => {
            return (
                Config::default(),
                vec![error("", format!("invalid YAML: {err}"))],
            );
        }
    };
    let Value::Mapping(sections) = root else {
        return (
            Config::default(),
            vec![error("", "the config must be a mapping of sections")],
        );
    };

    let mut config = Config::default();
    let mut positions = Vec::new();
    for (key, value) in sections {
        let Some(name) = key.as_str() else {
            errors.push(error("", "section names must be strings"));
            continue;
        };
        match name {
            "server" => section(value, name, &mut errors).map(|v| config.server = v),
            "issuers" => issuers(value, &mut errors).map(|parsed| {
                (positions, config.issuers) = parsed.into_iter().unzip();
            }),
            "credentials" => section(value, name, &mut errors).map(|v| config.credentials = v),
            "cache" => section(value, name, &mut errors).map(|v| config.cache = v),
            "authorization" => section(value, name, &mut errors).map(|v| config.authorization = v),
            "response" => section(value, name, &mut errors).map(|v| config.response = v),
            "telemetry" => section(value, name, &mut errors).map(|v| config.telemetry = v),
            "api_keys" => section(value, name, &mut errors).map(|v| config.api_keys = v),
            "basic" => section(value, name, &mut errors).map(|v| config.basic = v),
            "client_certificates" => {
                section(value, name, &mut errors).map(|v| config.client_certificates = v)
            }
            "revocation" => section(value, name, &mut errors).map(|v| config.revocation = Some(v)),
            "rate_limits" => section(value, name, &mut errors).map(|v| config.rate_limits = v),
            "dpop" => section(value, name, &mut errors).map(|v| config.dpop = Some(v)),
            other => {
                errors.push(error(other, "unknown key"));
                None
            }
        };
    }
    validate(&config, &positions, &mut errors);
    (config, errors)
}

fn error(path: impl Into<String>, message: impl Into<String>) -> ConfigError {
    ConfigError {
        path: path.into(),
        message: message.into(),
    }
}

fn join(prefix: &str, inner: &str) -> String {
    match (prefix.is_empty(), inner.is_empty() || inner == ".") {
        (_, true) => prefix.to_owned(),
        (true, false) => inner.to_owned(),
        (false, false) if inner.starts_with('[') => format!("{prefix}{inner}"),
        (false, false) => format!("{prefix}.{inner}"),
    }
}

/// Deserializes one section, recording unknown keys and the first type error with their paths.
fn section<T: DeserializeOwned>(
    value: Value,
    path: &str,
    errors: &mut Vec<ConfigError>,
) -> Option<T> {
    let value = if value.is_null() {
        Value::Mapping(Default::default())
    } else {
        value
    };
    let mut unknown: Vec<String> = Vec::new();
    let mut record = |ignored: serde_ignored::Path<'_>| unknown.push(ignored.to_string());
    let deserializer = serde_ignored::Deserializer::new(value, &mut record);
    let result: Result<T, _> = serde_path_to_error::deserialize(deserializer);
    for key in unknown {
        errors.push(error(join(path, &key), "unknown key"));
    }
    match result {
        Ok(parsed) => Some(parsed),
        Err(err) => {
            let inner = err.path().to_string();
            errors.push(error(join(path, &inner), err.into_inner().to_string()));
            None
        }
    }
}

/// The issuers that parsed, each with its position in the file (for error paths).
fn issuers(value: Value, errors: &mut Vec<ConfigError>) -> Option<Vec<(usize, IssuerConfig)>> {
    let Value::Sequence(items) = value else {
        errors.push(error("issuers", "expected a list of issuers"));
        return None;
    };
    let mut parsed = Vec::with_capacity(items.len());
    for (i, item) in items.into_iter().enumerate() {
        if let Some(issuer) = section(item, &format!("issuers[{i}]"), errors) {
            parsed.push((i, issuer));
        }
    }
    Some(parsed)
}

fn validate(config: &Config, positions: &[usize], errors: &mut Vec<ConfigError>) {
    let mut names = std::collections::HashSet::new();
    let mut iss_values = std::collections::HashSet::new();
    for (i, issuer) in positions.iter().zip(&config.issuers) {
        let path = format!("issuers[{i}]");
        if issuer.name.trim().is_empty() {
            errors.push(error(format!("{path}.name"), "must not be empty"));
        } else if !names.insert(issuer.name.as_str()) {
            errors.push(error(
                format!("{path}.name"),
                format!("duplicate issuer name {:?}", issuer.name),
            ));
        }
        if issuer.issuer.is_empty() {
            errors.push(error(format!("{path}.issuer"), "must not be empty"));
        } else if !iss_values.insert(issuer.issuer.as_str()) {
            errors.push(error(
                format!("{path}.issuer"),
                "another issuer has the same iss value; tokens are routed by iss",
            ));
        }
        validate_issuer(issuer, &path, errors);
    }
    for (i, issuer) in positions.iter().zip(&config.issuers) {
        let j = &issuer.jwks;
        let path = format!("issuers[{i}].jwks");
        if j.min_refresh > j.max_refresh {
            errors.push(error(
                &path,
                "min_refresh must not be greater than max_refresh",
            ));
        }
        for (name, value) in [
            ("refetch_cooldown", j.refetch_cooldown),
            ("timeout", j.timeout),
            ("min_refresh", j.min_refresh),
        ] {
            if value.is_zero() {
                errors.push(error(format!("{path}.{name}"), "must be greater than zero"));
            }
        }
    }
    let limits = &config.server.limits;
    for (name, value) in [
        ("max_connections", limits.max_connections),
        (
            "max_concurrent_streams",
            limits.max_concurrent_streams as usize,
        ),
        ("max_in_flight", limits.max_in_flight),
        ("admin_max_connections", limits.admin_max_connections),
    ] {
        if value == 0 {
            errors.push(error(
                format!("server.limits.{name}"),
                "must be greater than zero",
            ));
        }
    }
    if !(1024..=64 * 1024 * 1024).contains(&limits.max_request_bytes) {
        errors.push(error(
            "server.limits.max_request_bytes",
            "must be between 1024 and 67108864",
        ));
    }
    if !(1024..=1024 * 1024).contains(&limits.max_header_list_bytes) {
        errors.push(error(
            "server.limits.max_header_list_bytes",
            "must be between 1024 and 1048576",
        ));
    }
    for (name, value) in [
        ("request_timeout", limits.request_timeout),
        ("keepalive_interval", limits.keepalive_interval),
        ("keepalive_timeout", limits.keepalive_timeout),
        ("idle_timeout", limits.idle_timeout),
        ("admin_header_timeout", limits.admin_header_timeout),
    ] {
        if value.is_zero() {
            errors.push(error(
                format!("server.limits.{name}"),
                "must be greater than zero",
            ));
        }
    }
    if config.cache.max_bytes < 64 * 1024 {
        errors.push(error("cache.max_bytes", "must be at least 65536"));
    }
    if config.cache.max_entries == 0 {
        errors.push(error("cache.max_entries", "must be greater than zero"));
    }
    let max = config.credentials.max_credential_bytes;
    if !(256..=1024 * 1024).contains(&max) {
        errors.push(error(
            "credentials.max_credential_bytes",
            "must be between 256 and 1048576",
        ));
    }
    for (i, header) in config.credentials.api_key_headers.iter().enumerate() {
        if header.is_empty()
            || header
                .chars()
                .any(|c| !c.is_ascii_lowercase() && c != '-' && !c.is_ascii_digit() && c != '_')
        {
            errors.push(error(
                format!("credentials.api_key_headers[{i}]"),
                "must be a lower-case header name",
            ));
        } else if matches!(header.as_str(), "authorization" | "dpop") {
            errors.push(error(
                format!("credentials.api_key_headers[{i}]"),
                format!("{header} carries other credentials; name another header"),
            ));
        }
    }
    for (i, proxy) in config.credentials.trusted_proxies.iter().enumerate() {
        if parse_network(proxy).is_none() {
            errors.push(error(
                format!("credentials.trusted_proxies[{i}]"),
                "must be an IP address or CIDR, e.g. 10.0.0.0/8 or 2001:db8::/32",
            ));
        }
    }
    validate_rules(config, errors);
    validate_headers(config, errors);
    validate_identity_token(config, errors);
    validate_revocation(config, errors);
    validate_rate_limits(config, errors);
    validate_dpop(config, errors);
    if !(Duration::from_secs(1)..=Duration::from_secs(3600))
        .contains(&config.api_keys.usage_flush_interval)
    {
        errors.push(error(
            "api_keys.usage_flush_interval",
            "must be between 1s and 1h",
        ));
    }
    if !(0.0..=1.0).contains(&config.telemetry.trace_sample_ratio) {
        errors.push(error(
            "telemetry.trace_sample_ratio",
            "must be between 0.0 and 1.0",
        ));
    }
    validate_decision_log(config, errors);
    if let Some(endpoint) = &config.telemetry.otlp_endpoint
        && !is_http_url(endpoint)
    {
        errors.push(error(
            "telemetry.otlp_endpoint",
            "must be an http(s) URL such as http://otel-collector:4317",
        ));
    }
    if let Err(err) = tracing_subscriber::EnvFilter::try_new(&config.telemetry.log_level) {
        errors.push(error("telemetry.log_level", err.to_string()));
    }
    validate_verifiers(config, positions, errors);
}

/// Checks of `api_keys`, `basic`, introspection and opaque-token routing.
fn validate_verifiers(config: &Config, positions: &[usize], errors: &mut Vec<ConfigError>) {
    let prefix = &config.api_keys.prefix;
    if !valid_api_key_prefix(prefix) {
        errors.push(error(
            "api_keys.prefix",
            "must be 1 to 16 lower-case letters or digits",
        ));
    }
    if let Some(pg) = &config.api_keys.postgres {
        if pg.max_connections == 0 {
            errors.push(error(
                "api_keys.postgres.max_connections",
                "must be greater than zero",
            ));
        }
        if pg.timeout.is_zero() {
            errors.push(error(
                "api_keys.postgres.timeout",
                "must be greater than zero",
            ));
        }
    }
    let basic = &config.basic;
    if basic.max_client_failures == 0 {
        errors.push(error(
            "basic.max_client_failures",
            "must be greater than zero",
        ));
    }
    if basic.max_failures == 0 {
        errors.push(error("basic.max_failures", "must be greater than zero"));
    }
    if basic.failure_window.is_zero() {
        errors.push(error("basic.failure_window", "must be greater than zero"));
    }
    let mut introspected = Vec::new();
    for (i, issuer) in positions.iter().zip(&config.issuers) {
        let Some(introspection) = &issuer.introspection else {
            continue;
        };
        introspected.push(issuer.name.as_str());
        let path = format!("issuers[{i}].introspection");
        if !is_http_url(&introspection.endpoint) {
            errors.push(error(format!("{path}.endpoint"), "must be an http(s) URL"));
        }
        if introspection.client_id.is_empty() {
            errors.push(error(format!("{path}.client_id"), "must not be empty"));
        }
        if introspection.timeout.is_zero() {
            errors.push(error(
                format!("{path}.timeout"),
                "must be greater than zero",
            ));
        }
    }
    match &config.credentials.opaque_token_issuer {
        Some(name) if !introspected.contains(&name.as_str()) => errors.push(error(
            "credentials.opaque_token_issuer",
            format!("no issuer named {name:?} has introspection"),
        )),
        None if introspected.len() > 1 => errors.push(error(
            "credentials.opaque_token_issuer",
            "more than one issuer has introspection; name the one that receives opaque tokens",
        )),
        _ => {}
    }
}

/// Rule checks that need the whole config (issuer names); patterns and CEL are compiled by
/// `policy::Policy::build`, which reports its errors with the rule's name.
fn validate_rules(config: &Config, errors: &mut Vec<ConfigError>) {
    if config.authorization.rules.len() > super::MAX_RULES {
        errors.push(error(
            "authorization.rules",
            format!("at most {} rules", super::MAX_RULES),
        ));
    }
    let mut names = std::collections::HashSet::new();
    for (i, rule) in config.authorization.rules.iter().enumerate() {
        let path = format!("authorization.rules[{i}]");
        if rule.name.trim().is_empty() {
            errors.push(error(format!("{path}.name"), "must not be empty"));
        } else if !names.insert(rule.name.as_str()) {
            errors.push(error(
                format!("{path}.name"),
                format!("duplicate rule name {:?}", rule.name),
            ));
        }
        for (j, issuer) in rule.require.issuers.iter().enumerate() {
            if !config.issuers.iter().any(|known| &known.name == issuer) {
                errors.push(error(
                    format!("{path}.require.issuers[{j}]"),
                    format!("rule {:?} names unknown issuer {issuer:?}", rule.name),
                ));
            }
        }
        for (j, kind) in rule.require.credential_types.iter().enumerate() {
            if CredentialType::from_name(kind).is_none() {
                errors.push(error(
                    format!("{path}.require.credential_types[{j}]"),
                    format!("rule {:?}: unknown credential type {kind:?} (JWT, OPAQUE_TOKEN, API_KEY, BASIC, CLIENT_CERTIFICATE)", rule.name),
                ));
            }
        }
        if rule.anonymous.is_anonymous() && rule.effect == Effect::Deny {
            errors.push(error(
                format!("{path}.anonymous"),
                format!(
                    "rule {:?}: an anonymous rule must have effect allow",
                    rule.name
                ),
            ));
        }
    }
}

/// Whether `rule` can decide a request: a configured rule, `default`, and with
/// `denials_too` also `required_scopes` (which only denies). A setting keyed by rule name
/// must name one, so a typo cannot silently apply to nothing.
fn deciding_rule(config: &Config, rule: &str, denials_too: bool) -> Result<(), &'static str> {
    let known = rule == super::DEFAULT_RULE
        || (denials_too && rule == super::REQUIRED_SCOPES_RULE)
        || config.authorization.rules.iter().any(|r| r.name == rule);
    match (known, denials_too) {
        (true, _) => Ok(()),
        (false, true) => {
            Err("names no rule in authorization.rules (or `default`, `required_scopes`)")
        }
        (false, false) => Err("names no rule in authorization.rules (or `default`)"),
    }
}

/// Most claims a decision log line may copy.
const MAX_DECISION_LOG_CLAIMS: usize = 32;

/// Decision log shares are probabilities; a per-rule share names a configured rule (or
/// `default`), so a typo cannot silently log nothing; copied claims are few and named.
fn validate_decision_log(config: &Config, errors: &mut Vec<ConfigError>) {
    let log = &config.telemetry.decision_log;
    let ratio_ok = |ratio: f64| (0.0..=1.0).contains(&ratio);
    if !ratio_ok(log.sample_ratio) {
        errors.push(error(
            "telemetry.decision_log.sample_ratio",
            "must be between 0.0 and 1.0",
        ));
    }
    for (rule, ratio) in &log.rules {
        let path = format!("telemetry.decision_log.rules.{rule}");
        if !ratio_ok(*ratio) {
            errors.push(error(path.clone(), "must be between 0.0 and 1.0"));
        }
        if let Err(message) = deciding_rule(config, rule, true) {
            errors.push(error(path, message));
        }
    }
    if log.enabled && log.outputs.is_empty() {
        errors.push(error(
            "telemetry.decision_log.outputs",
            "names no output: list stderr, otlp or both",
        ));
    }
    if log.logs_to(DecisionLogOutput::Otlp) && config.telemetry.otlp_endpoint.is_none() {
        errors.push(error(
            "telemetry.decision_log.outputs",
            "otlp needs telemetry.otlp_endpoint",
        ));
    }
    if log.claims.len() > MAX_DECISION_LOG_CLAIMS {
        errors.push(error(
            "telemetry.decision_log.claims",
            format!("at most {MAX_DECISION_LOG_CLAIMS} claims"),
        ));
    }
    for (i, claim) in log.claims.iter().enumerate() {
        if claim.is_empty() || claim.len() > 128 {
            errors.push(error(
                format!("telemetry.decision_log.claims[{i}]"),
                "must be a claim name of 1 to 128 characters",
            ));
        }
    }
}

/// Upstream header names must be valid lower-case tokens and must not be hop-by-hop or
/// credential headers.
fn validate_headers(config: &Config, errors: &mut Vec<ConfigError>) {
    let mut seen = std::collections::HashSet::new();
    for (claim, header) in &config.response.claims_to_headers {
        let path = format!("response.claims_to_headers.{claim}");
        if let Some(problem) = upstream_header_problem(config, header) {
            errors.push(error(&path, problem));
        } else if !seen.insert(header.as_str()) {
            errors.push(error(
                &path,
                format!("header {header:?} is set from two claims"),
            ));
        }
    }
}

/// Why `header` cannot carry identity upstream: not a lower-case token, hop-by-hop, or a
/// header credentials are read from (the upstream would take the identity for a credential).
fn upstream_header_problem(config: &Config, header: &str) -> Option<String> {
    let valid = !header.is_empty()
        && header
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_');
    if !valid {
        return Some(format!("{header:?} is not a lower-case header name"));
    }
    // Credentials, hop-by-hop headers, and what proxies route, trace and forward by.
    let reserved = matches!(
        header,
        "authorization"
            | "dpop"
            | "proxy-authorization"
            | "cookie"
            | "host"
            | "connection"
            | "content-length"
            | "transfer-encoding"
            | "te"
            | "upgrade"
            | "forwarded"
            | "x-real-ip"
            | "traceparent"
            | "tracestate"
    ) || ["x-forwarded-", "x-original-", "x-envoy-"]
        .iter()
        .any(|prefix| header.starts_with(prefix));
    let credential = config
        .credentials
        .api_key_headers
        .iter()
        .any(|name| name == header);
    (reserved || credential).then(|| format!("{header:?} cannot carry identity upstream"))
}

/// `rate_limits`: parseable limits, rules that exist, a bounded Redis timeout.
fn validate_rate_limits(config: &Config, errors: &mut Vec<ConfigError>) {
    let limits = &config.rate_limits;
    if let Some(limit) = &limits.per_subject
        && let Err(message) = limit.parse()
    {
        errors.push(error("rate_limits.per_subject", message));
    }
    for (rule, limit) in &limits.rules {
        let path = format!("rate_limits.rules.{rule}");
        if let Err(message) = limit.parse() {
            errors.push(error(path, message));
        } else if let Err(message) = deciding_rule(config, rule, false) {
            errors.push(error(path, message));
        }
    }
    if let Some(redis) = &limits.redis {
        if !(Duration::from_millis(1)..=Duration::from_secs(5)).contains(&redis.timeout) {
            errors.push(error(
                "rate_limits.redis.timeout",
                "must be between 1ms and 5s",
            ));
        }
        if redis.key_prefix.is_empty() || redis.key_prefix.len() > 64 {
            errors.push(error(
                "rate_limits.redis.key_prefix",
                "must be 1 to 64 characters",
            ));
        }
    }
}

/// `revocation`: bounded retention, resync and timeout.
fn validate_dpop(config: &Config, errors: &mut Vec<ConfigError>) {
    let Some(dpop) = &config.dpop else {
        return;
    };
    if dpop.algorithms.is_empty() {
        errors.push(error("dpop.algorithms", "must name at least one algorithm"));
    }
    for (i, name) in dpop.algorithms.iter().enumerate() {
        match name.parse::<Algorithm>() {
            Ok(alg) if alg.is_hmac() => errors.push(error(
                format!("dpop.algorithms[{i}]"),
                "a DPoP proof is signed with a public key: HMAC algorithms are not allowed",
            )),
            Ok(_) => {}
            Err(_) => errors.push(error(
                format!("dpop.algorithms[{i}]"),
                format!("unknown algorithm {name:?}"),
            )),
        }
    }
    if !(Duration::from_secs(1)..=Duration::from_secs(3600)).contains(&dpop.max_age) {
        errors.push(error("dpop.max_age", "must be between 1s and 1h"));
    }
    if dpop.leeway > Duration::from_secs(60) {
        errors.push(error("dpop.leeway", "must be at most 1m"));
    }
    if !(256..=64 * 1024).contains(&dpop.max_proof_bytes) {
        errors.push(error(
            "dpop.max_proof_bytes",
            "must be between 256 and 65536",
        ));
    }
    if !(1_000..=100_000_000).contains(&dpop.replay.max_entries) {
        errors.push(error(
            "dpop.replay.max_entries",
            "must be between 1000 and 100000000",
        ));
    }
    if let Some(redis) = &dpop.replay.redis {
        if !(Duration::from_millis(1)..=Duration::from_secs(5)).contains(&redis.timeout) {
            errors.push(error(
                "dpop.replay.redis.timeout",
                "must be between 1ms and 5s",
            ));
        }
        if redis.key_prefix.is_empty() || redis.key_prefix.len() > 64 {
            errors.push(error(
                "dpop.replay.redis.key_prefix",
                "must be 1 to 64 characters",
            ));
        }
    }
}

fn validate_revocation(config: &Config, errors: &mut Vec<ConfigError>) {
    let Some(revocation) = &config.revocation else {
        return;
    };
    let within = |value: Duration, low: Duration, high: Duration| (low..=high).contains(&value);
    if !within(
        revocation.retention,
        Duration::from_secs(60),
        Duration::from_secs(366 * 24 * 3600),
    ) {
        errors.push(error("revocation.retention", "must be between 1m and 366d"));
    }
    if !within(
        revocation.resync_interval,
        Duration::from_secs(1),
        Duration::from_secs(24 * 3600),
    ) {
        errors.push(error(
            "revocation.resync_interval",
            "must be between 1s and 24h",
        ));
    }
    if !within(
        revocation.timeout,
        Duration::from_millis(100),
        Duration::from_secs(60),
    ) {
        errors.push(error("revocation.timeout", "must be between 100ms and 60s"));
    }
}

/// Claims every identity token sets itself: a configured claim may not replace them.
const IDENTITY_TOKEN_CLAIMS: [&str; 10] = [
    "iss",
    "sub",
    "aud",
    "exp",
    "iat",
    "nbf",
    "jti",
    "scope",
    "credential_type",
    "original_issuer",
];

/// Most claims an identity token may copy.
const MAX_IDENTITY_TOKEN_CLAIMS: usize = 32;

/// `response.identity_token`: an absolute http(s) issuer, a header no other mapping sets,
/// a bounded lifetime and size, audiences for configured rules, and copied claims that
/// neither replace the token's own claims nor collide.
fn validate_identity_token(config: &Config, errors: &mut Vec<ConfigError>) {
    let Some(identity) = &config.response.identity_token else {
        return;
    };
    let at = |field: &str| format!("response.identity_token.{field}");
    let absolute_url = |url: &str| {
        is_http_url(url)
            && reqwest::Url::parse(url)
                .is_ok_and(|url| url.query().is_none() && url.fragment().is_none())
    };
    // Discovery is served at the root of the admin listener, so the issuer has no path.
    let root_url = |url: &str| {
        absolute_url(url)
            && !url.ends_with('/')
            && reqwest::Url::parse(url).is_ok_and(|url| url.path() == "/")
    };
    if !root_url(&identity.issuer) {
        errors.push(error(
            at("issuer"),
            "must be an absolute http(s) URL with no path, query or fragment, e.g. http://portcullis.auth.svc:9090",
        ));
    }
    for (i, key) in identity.keys().enumerate() {
        if key.file().is_none() && !matches!(key, SecretRef::Env(_)) {
            errors.push(error(
                at(&format!("keys[{i}]")),
                "a private key is read from `file:/path` or `env:NAME`, never written inline",
            ));
        }
    }
    if let Some(uri) = &identity.jwks_uri
        && !absolute_url(uri)
    {
        errors.push(error(at("jwks_uri"), "must be an absolute http(s) URL"));
    }
    if let Some(problem) = upstream_header_problem(config, &identity.header) {
        errors.push(error(at("header"), problem));
    } else if config
        .response
        .claims_to_headers
        .values()
        .any(|header| *header == identity.header)
    {
        errors.push(error(
            at("header"),
            "is also set from a claim (response.claims_to_headers)",
        ));
    }
    if !(Duration::from_secs(1)..=Duration::from_secs(24 * 3600)).contains(&identity.ttl) {
        errors.push(error(at("ttl"), "must be between 1s and 24h"));
    }
    if !(512..=65536).contains(&identity.max_bytes) {
        errors.push(error(at("max_bytes"), "must be between 512 and 65536"));
    }
    let audience_ok = |aud: &str| !aud.is_empty() && aud.len() <= 256;
    if !audience_ok(&identity.audience) {
        errors.push(error(at("audience"), "must be 1 to 256 characters"));
    }
    for (rule, audience) in &identity.audience_by_rule {
        let path = at(&format!("audience_by_rule.{rule}"));
        if let Err(message) = deciding_rule(config, rule, false) {
            errors.push(error(path, message));
        } else if !audience_ok(audience) {
            errors.push(error(path, "must be 1 to 256 characters"));
        }
    }
    for (host, audience) in &identity.audience_by_host {
        // Rules see the canonical host: lower-case, without port or trailing dot.
        let canonical = !host.is_empty()
            && !host.ends_with('.')
            && host
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'.' || b == b'-');
        if !audience_ok(audience) || !canonical {
            errors.push(error(
                at(&format!("audience_by_host.{host}")),
                "needs a lower-case host name without port and an audience of 1 to 256 characters",
            ));
        }
    }
    if identity.claims.len() > MAX_IDENTITY_TOKEN_CLAIMS {
        errors.push(error(
            at("claims"),
            format!("at most {MAX_IDENTITY_TOKEN_CLAIMS} claims"),
        ));
    }
    let mut names = std::collections::HashSet::new();
    for (path, name) in &identity.claims {
        let field = at(&format!("claims.{path}"));
        if path.is_empty() || name.is_empty() || name.len() > 128 {
            errors.push(error(
                field,
                "needs a claim path and a name of 1 to 128 characters",
            ));
        } else if IDENTITY_TOKEN_CLAIMS.contains(&name.as_str()) {
            errors.push(error(
                field,
                format!("{name:?} is a claim the identity token sets itself"),
            ));
        } else if !names.insert(name.as_str()) {
            errors.push(error(field, format!("{name:?} is copied from two claims")));
        }
    }
}

fn validate_issuer(issuer: &IssuerConfig, path: &str, errors: &mut Vec<ConfigError>) {
    match issuer.key_sources().count() {
        1 => {}
        0 if issuer.introspection.is_some() => {}
        0 => errors.push(error(
            path,
            "set exactly one key source: discovery, jwks_uri, jwks_file, public_key_files or hmac_secret",
        )),
        _ => errors.push(error(
            path,
            "more than one key source set; choose one of discovery, jwks_uri, jwks_file, public_key_files, hmac_secret",
        )),
    }
    if issuer.discovery && !is_http_url(&issuer.issuer) {
        errors.push(error(
            format!("{path}.issuer"),
            "discovery needs an http(s) issuer URL",
        ));
    }
    if let Some(uri) = &issuer.jwks_uri
        && !is_http_url(uri)
    {
        errors.push(error(format!("{path}.jwks_uri"), "must be an http(s) URL"));
    }
    for (i, origin) in issuer.jwks.allowed_origins.iter().enumerate() {
        let parsed = reqwest::Url::parse(origin).ok().filter(|url| {
            matches!(url.scheme(), "http" | "https")
                && url.host().is_some()
                && url.path() == "/"
                && url.query().is_none()
                && url.username().is_empty()
        });
        if parsed.is_none() {
            errors.push(error(
                format!("{path}.jwks.allowed_origins[{i}]"),
                "must be an origin such as https://keys.example.com",
            ));
        }
    }
    let mut has_hmac = false;
    let mut has_asymmetric = false;
    for (i, name) in issuer.algorithms.iter().enumerate() {
        match name.parse::<Algorithm>() {
            Ok(alg) if alg.is_hmac() => has_hmac = true,
            Ok(_) => has_asymmetric = true,
            Err(message) => errors.push(error(format!("{path}.algorithms[{i}]"), message)),
        }
    }
    if issuer.hmac_secret.is_some() && has_asymmetric {
        errors.push(error(
            format!("{path}.algorithms"),
            "an hmac_secret issuer allows only HS256, HS384 or HS512",
        ));
    }
    if issuer.hmac_secret.is_none() && has_hmac {
        errors.push(error(
            format!("{path}.algorithms"),
            "HS* algorithms need an hmac_secret (a public key must never be used as an HMAC secret)",
        ));
    }
    for (i, file) in issuer.public_key_files.iter().enumerate() {
        if let PublicKeyFile::Detailed {
            algorithm: Some(name),
            ..
        } = file
            && let Err(message) = name.parse::<Algorithm>()
        {
            errors.push(error(
                format!("{path}.public_key_files[{i}].algorithm"),
                message,
            ));
        }
    }
    for (i, claim) in issuer.required_claims.iter().enumerate() {
        if claim.is_empty() {
            errors.push(error(
                format!("{path}.required_claims[{i}]"),
                "must not be empty",
            ));
        }
    }
}

fn is_http_url(value: &str) -> bool {
    reqwest::Url::parse(value)
        .map(|url| matches!(url.scheme(), "http" | "https") && url.host().is_some())
        .unwrap_or(false)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_error_is_reported_at_once_with_its_path() {
        let yaml = r#"
server:
  grpc_listen: 127.0.0.1:50051
  colour: blue
issuers:
  - name: a
    issuer: https://a.example
    jwks_uri: https://a.example/jwks
    leeway: soon
  - name: b
    issuer: https://b.example
    algorithms: [none]
    hmac_secret: env:X
    extra: 1
  - name: b
    issuer: https://c.example
    jwks_uri: https://c.example/jwks
cache: { max_entries: 0 }
unknown_section: {}
"#;
        let errors = load_str(yaml).unwrap_err().0;
        let paths: Vec<_> = errors.iter().map(|e| e.path.as_str()).collect();
        assert!(paths.contains(&"server.colour"), "{errors:?}");
        assert!(paths.contains(&"issuers[0].leeway"), "{errors:?}");
        assert!(paths.contains(&"issuers[1].extra"), "{errors:?}");
        assert!(paths.contains(&"issuers[2].name"), "{errors:?}");
        assert!(paths.contains(&"issuers[1].algorithms[0]"), "{errors:?}");
        assert!(paths.contains(&"cache.max_entries"), "{errors:?}");
        assert!(paths.contains(&"unknown_section"), "{errors:?}");
    }

    #[test]
    fn decision_log_shares_rules_and_claims_are_checked() {
        let base = "issuers:\n  - name: a\n    issuer: https://a.example\n    jwks_uri: https://a.example/jwks\nauthorization:\n  rules:\n    - name: orders\n";
        let with = |log: &str| format!("{base}telemetry:\n  decision_log: {log}\n");
        let good = load_str(&with(
            "{enabled: true, sample_ratio: 0.5, rules: {orders: 0.1, default: 0.0, required_scopes: 1.0}, claims: [email]}",
        ))
        .unwrap();
        assert_eq!(good.telemetry.decision_log.rules["orders"], 0.1);
        let many: Vec<String> = (0..33).map(|i| format!("c{i}")).collect();
        let bad = with(&format!(
            "{{sample_ratio: 1.5, rules: {{ordrs: 0.1, orders: -1}}, claims: [{}]}}",
            many.join(", ")
        ));
        let errors = load_str(&bad).unwrap_err().0;
        let paths: Vec<_> = errors.iter().map(|e| e.path.as_str()).collect();
        for path in [
            "telemetry.decision_log.sample_ratio",
            "telemetry.decision_log.rules.ordrs",
            "telemetry.decision_log.rules.orders",
            "telemetry.decision_log.claims",
        ] {
            assert!(paths.contains(&path), "{path}: {errors:?}");
        }
        for outputs in ["[]", "[otlp]", "[stderr, otlp]"] {
            let errors = load_str(&with(&format!("{{enabled: true, outputs: {outputs}}}")))
                .unwrap_err()
                .0;
            assert_eq!(
                errors[0].path, "telemetry.decision_log.outputs",
                "{outputs}: no output, or otlp without an endpoint"
            );
        }
        let to_otlp = format!(
            "{base}telemetry:\n  otlp_endpoint: http://collector:4317\n  decision_log: {{enabled: true, outputs: [otlp]}}\n"
        );
        assert!(
            load_str(&to_otlp)
                .unwrap()
                .telemetry
                .decision_log
                .logs_to(DecisionLogOutput::Otlp)
        );
    }

    #[test]
    fn identity_token_settings_are_checked() {
        let base = "issuers:\n  - name: a\n    issuer: https://a.example\n    jwks_uri: https://a.example/jwks\nauthorization:\n  rules:\n    - name: orders\n";
        let with = |identity: &str| {
            format!(
                "{base}response:\n  claims_to_headers: {{sub: x-user}}\n  identity_token: {identity}\n"
            )
        };
        let good = load_str(&with(
            "{issuer: 'https://portcullis.example', signing_key: 'file:k.pem', audience: api, audience_by_rule: {orders: o}, claims: {email: email}}",
        ))
        .unwrap();
        let identity = good.response.identity_token.expect("configured");
        assert_eq!(identity.header, "x-identity-token");
        assert_eq!(identity.ttl, Duration::from_secs(300));
        assert_eq!(
            identity.jwks_uri(),
            "https://portcullis.example/.well-known/jwks.json"
        );
        let bad = with(
            "{issuer: 'https://p.example/?x=1', signing_key: k, audience: '', header: x-api-key, ttl: 2d, max_bytes: 10, audience_by_rule: {ordrs: o}, audience_by_host: {API.example: a, 'b.example:8443': b}, claims: {email: sub, name: n, nick: n}}",
        );
        let errors = load_str(&bad).unwrap_err().0;
        let paths: Vec<_> = errors.iter().map(|e| e.path.as_str()).collect();
        for path in [
            "response.identity_token.issuer",
            "response.identity_token.audience",
            "response.identity_token.header",
            "response.identity_token.ttl",
            "response.identity_token.max_bytes",
            "response.identity_token.audience_by_rule.ordrs",
            "response.identity_token.audience_by_host.API.example",
            "response.identity_token.audience_by_host.b.example:8443",
            "response.identity_token.keys[0]",
            "response.identity_token.claims.email",
            "response.identity_token.claims.nick",
        ] {
            assert!(paths.contains(&path), "{path}: {errors:?}");
        }
        for issuer in ["https://p.example/", "https://p.example/tokens"] {
            let errors = load_str(&with(&format!(
                "{{issuer: '{issuer}', signing_key: 'file:k', audience: a}}"
            )))
            .unwrap_err()
            .0;
            assert_eq!(errors[0].path, "response.identity_token.issuer", "{issuer}");
        }
        for header in [
            "authorization",
            "x-user",
            "x-forwarded-host",
            "x-envoy-original-path",
        ] {
            let errors = load_str(&with(&format!(
                "{{issuer: 'https://p.example', signing_key: 'file:k', audience: a, header: {header}}}"
            )))
            .unwrap_err()
            .0;
            assert_eq!(
                errors[0].path, "response.identity_token.header",
                "{header}: {errors:?}"
            );
        }
    }

    #[test]
    fn durations_accept_human_forms_and_seconds() {
        let yaml = r#"
issuers:
  - name: a
    issuer: https://a.example
    jwks_uri: https://a.example/jwks
    leeway: 30s
    jwks: { max_refresh: 2h, min_refresh: 90 }
cache: { max_ttl: 5m }
"#;
        let config = load_str(yaml).unwrap();
        assert_eq!(config.issuers[0].leeway.as_secs(), 30);
        assert_eq!(config.issuers[0].jwks.max_refresh.as_secs(), 7200);
        assert_eq!(config.issuers[0].jwks.min_refresh.as_secs(), 90);
        assert_eq!(config.cache.max_ttl.as_secs(), 300);
    }

    #[test]
    fn hmac_algorithms_need_an_hmac_secret() {
        let yaml = r#"
issuers:
  - name: a
    issuer: https://a.example
    jwks_uri: https://a.example/jwks
    algorithms: [RS256, HS256]
"#;
        let errors = load_str(yaml).unwrap_err().0;
        assert_eq!(errors.len(), 1, "{errors:?}");
        assert_eq!(errors[0].path, "issuers[0].algorithms");
    }

    #[test]
    fn opaque_tokens_need_one_introspection_issuer_or_a_named_one() {
        let issuer = |name: &str| {
            format!(
                "  - name: {name}\n    issuer: https://{name}.example\n    introspection: {{endpoint: https://{name}.example/introspect, client_id: c, client_secret: env:S}}\n"
            )
        };
        let one = format!("issuers:\n{}", issuer("a"));
        assert!(
            load_str(&one).is_ok(),
            "an introspection-only issuer needs no key source"
        );
        let two = format!("issuers:\n{}{}", issuer("a"), issuer("b"));
        let errors = load_str(&two).unwrap_err().0;
        assert_eq!(
            errors[0].path, "credentials.opaque_token_issuer",
            "{errors:?}"
        );
        assert!(load_str(&format!("{two}credentials: {{opaque_token_issuer: b}}\n")).is_ok());
        let errors = load_str(&format!("{two}credentials: {{opaque_token_issuer: c}}\n"))
            .unwrap_err()
            .0;
        assert_eq!(
            errors[0].path, "credentials.opaque_token_issuer",
            "{errors:?}"
        );
        let errors =
            load_str("api_keys: {prefix: Bad_Prefix, colour: 1}\nbasic: {max_failures: 0}\n")
                .unwrap_err()
                .0;
        let paths: Vec<_> = errors.iter().map(|e| e.path.as_str()).collect();
        for expected in ["api_keys.colour", "api_keys.prefix", "basic.max_failures"] {
            assert!(paths.contains(&expected), "{expected}: {errors:?}");
        }
    }

    #[test]
    fn dpop_settings_are_checked_and_its_header_is_reserved() {
        let errors = load_str(
            "dpop: {algorithms: [ES256, HS256, XX1], max_age: 2h, leeway: 2m, max_proof_bytes: 1, replay: {max_entries: 5}}\n\
             credentials: {api_key_headers: [dpop]}\n\
             response: {claims_to_headers: {sub: dpop}}\n",
        )
        .unwrap_err()
        .0;
        let paths: Vec<_> = errors.iter().map(|e| e.path.as_str()).collect();
        for expected in [
            "dpop.algorithms[1]",
            "dpop.algorithms[2]",
            "dpop.max_age",
            "dpop.leeway",
            "dpop.max_proof_bytes",
            "dpop.replay.max_entries",
            "credentials.api_key_headers[0]",
            "response.claims_to_headers.sub",
        ] {
            assert!(paths.contains(&expected), "{expected}: {errors:?}");
        }
        assert!(load_str("dpop: {}\n").is_ok(), "the defaults are valid");
    }
}
