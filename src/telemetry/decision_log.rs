//! Decision logs (`telemetry.decision_log`): one line per sampled decision, allow and deny,
//! as an info event with target `decision_log`. `telemetry::init` routes the target to its
//! outputs: stderr, in the log format (JSON lines by default), and/or OTLP log records
//! (each field an attribute). A line names the decision, rule, reason,
//! principal (subject, issuer), credential type and a short digest of the credential, the
//! request (surface, method, host, path) and the duration. Never the credential itself: the
//! path is cut before any query string, fragment or `;` parameter (they may carry
//! `access_token` or a session id), the host loses any `user:password@`, each is bounded in
//! length, and a claim appears only when `claims` lists it.

use std::{borrow::Cow, collections::HashMap, time::Duration};

use serde_json::{Map, Value};

use crate::{
    config::DecisionLogConfig,
    decision::{CredentialType, Decision},
    telemetry::metrics::Surface,
};

/// What a decision line says of the request, as it arrived.
#[derive(Debug, Clone, Copy, Default)]
pub struct Requested<'a> {
    pub method: &'a str,
    pub host: &'a str,
    /// The path; whatever follows a `?` is not logged.
    pub path: &'a str,
    pub grpc_service: &'a str,
    pub grpc_method: &'a str,
}

/// The target of decision lines (no module's path, so no other event shares it);
/// `telemetry::init` lets it through at info unless the log filter names it.
pub const TARGET: &str = "decision_log";

/// Longest method, host and path a line carries; longer ones are cut, ending with `…`.
const MAX_METHOD_CHARS: usize = 32;
const MAX_HOST_CHARS: usize = 255;
const MAX_PATH_CHARS: usize = 1024;

/// `text` cut to `max` characters.
fn bounded(text: &str, max: usize) -> Cow<'_, str> {
    match text.char_indices().nth(max) {
        None => Cow::Borrowed(text),
        Some((end, _)) => Cow::Owned(format!("{}…", &text[..end])),
    }
}

/// The path as a line may show it: before any `?`, `#` or `;`.
fn loggable_path(path: &str) -> Cow<'_, str> {
    let end = path.find(['?', '#', ';']).unwrap_or(path.len());
    bounded(&path[..end], MAX_PATH_CHARS)
}

/// The host as a line may show it: without any `userinfo@`.
fn loggable_host(host: &str) -> Cow<'_, str> {
    let host = host.rsplit_once('@').map_or(host, |(_, host)| host);
    bounded(host, MAX_HOST_CHARS)
}

/// Decision logging as configured: which decisions to log and what to copy into them.
#[derive(Debug)]
pub struct DecisionLog {
    sample_ratio: f64,
    per_rule: HashMap<String, f64>,
    claims: Vec<String>,
}

impl DecisionLog {
    /// `None` when decision logs are off.
    pub fn new(config: &DecisionLogConfig) -> Option<Self> {
        config.enabled.then(|| Self {
            sample_ratio: config.sample_ratio,
            per_rule: config
                .rules
                .iter()
                .map(|(rule, ratio)| (rule.clone(), *ratio))
                .collect(),
            claims: config.claims.clone(),
        })
    }

    /// The share of decisions by `rule` that are logged.
    fn ratio(&self, rule: &str) -> f64 {
        self.per_rule
            .get(rule)
            .copied()
            .unwrap_or(self.sample_ratio)
    }

    /// Whether a decision by `rule` is logged this time.
    fn sampled(&self, rule: &str) -> bool {
        let ratio = self.ratio(rule);
        ratio >= 1.0 || (ratio > 0.0 && fastrand::f64() < ratio)
    }

    /// Logs `decision` if it is sampled.
    pub fn record(
        &self,
        surface: Surface,
        request: Requested<'_>,
        decision: &Decision,
        elapsed: Duration,
    ) {
        let (allowed, principal, rule, credential, digest, denial) = match decision {
            Decision::Allow {
                principal,
                rule,
                credential,
                credential_digest,
                ..
            } => (true, principal, rule, credential, credential_digest, None),
            Decision::Deny {
                denial,
                principal,
                rule,
                credential,
                credential_digest,
            } => (
                false,
                principal,
                rule,
                credential,
                credential_digest,
                Some(denial),
            ),
        };
        if !self.sampled(rule) {
            return;
        }
        let claims = match (principal, self.claims.is_empty()) {
            (Some(principal), false) => {
                let selected: Map<String, Value> = self
                    .claims
                    .iter()
                    .filter_map(|name| Some((name.clone(), principal.claims.get(name)?)))
                    .collect();
                Value::Object(selected).to_string()
            }
            _ => String::new(),
        };
        let (method, host, path) = (
            bounded(request.method, MAX_METHOD_CHARS),
            loggable_host(request.host),
            loggable_path(request.path),
        );
        tracing::info!(
            target: TARGET,
            decision = if allowed { "allow" } else { "deny" },
            surface = surface.as_str(),
            rule = rule.as_str(),
            reason = denial.map_or("", |d| d.reason.as_str()),
            subject = principal.as_ref().map_or("", |p| p.subject.as_str()),
            issuer = principal.as_ref().map_or("", |p| &*p.issuer),
            credential_type = credential.map_or("", CredentialType::as_str),
            credential_digest = digest.as_str(),
            method = method.as_ref(),
            host = host.as_ref(),
            path = path.as_ref(),
            grpc_service = bounded(request.grpc_service, MAX_PATH_CHARS).as_ref(),
            grpc_method = bounded(request.grpc_method, MAX_PATH_CHARS).as_ref(),
            duration_us = u64::try_from(elapsed.as_micros()).unwrap_or(u64::MAX),
            claims = claims.as_str(),
            "decision"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn log(ratio: f64, rules: &[(&str, f64)]) -> DecisionLog {
        DecisionLog::new(&DecisionLogConfig {
            enabled: true,
            sample_ratio: ratio,
            rules: rules.iter().map(|(r, v)| (r.to_string(), *v)).collect(),
            claims: Vec::new(),
            ..DecisionLogConfig::default()
        })
        .expect("enabled")
    }

    #[test]
    fn request_fields_carry_no_secret_and_are_bounded() {
        assert_eq!(loggable_path("/a/b?access_token=x"), "/a/b");
        assert_eq!(loggable_path("/a;jsessionid=s3cr3t/b"), "/a");
        assert_eq!(loggable_path("/a#frag"), "/a");
        assert_eq!(
            loggable_host("user:pass@api.example.com"),
            "api.example.com"
        );
        assert_eq!(
            loggable_host("api.example.com:8443"),
            "api.example.com:8443"
        );
        let long = format!("/{}", "é".repeat(5000));
        let cut = loggable_path(&long);
        assert_eq!(cut.chars().count(), MAX_PATH_CHARS + 1);
        assert!(cut.ends_with('…'));
        assert_eq!(bounded("GET", MAX_METHOD_CHARS), "GET");
    }

    #[test]
    fn shares_are_per_rule_with_a_global_fallback() {
        assert!(
            DecisionLog::new(&DecisionLogConfig::default()).is_none(),
            "off by default"
        );
        let log = log(1.0, &[("healthz", 0.0), ("orders", 0.25)]);
        assert!((0..1000).all(|_| log.sampled("admin")));
        assert!((0..1000).all(|_| !log.sampled("healthz")));
        let logged = (0..20_000).filter(|_| log.sampled("orders")).count();
        assert!(
            (4_000..6_000).contains(&logged),
            "about a quarter of 20,000: {logged}"
        );
        let none = self::log(0.0, &[]);
        assert!((0..1000).all(|_| !none.sampled("any")));
    }
}
