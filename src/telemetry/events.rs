//! Telemetry events: each thing worth observing is one function here that logs it and counts
//! it in the [`Metrics`] it is handed, so a request, a shed request, a shadow-rule
//! evaluation, a reload or a key fetch is recorded the same way wherever it happens.

use std::time::Duration;

use tracing::{debug, error, info, warn};

use super::metrics::{FetchLabels, Metrics, Outcome, ResultLabels, ShadowLabels, Surface};
use crate::decision::{CredentialType, Decision, Reason};

/// A decided request: span fields, metrics and, for a denial, an audit log line.
pub fn request_decided(
    metrics: &Metrics,
    surface: Surface,
    decision: &Decision,
    elapsed: Duration,
) {
    let span = tracing::Span::current();
    let (allowed, denial, principal, rule, credential) = match decision {
        Decision::Allow {
            principal,
            rule,
            credential,
            ..
        } => (true, None, principal.as_ref(), rule, *credential),
        Decision::Deny {
            denial,
            principal,
            rule,
            credential,
            ..
        } => (false, Some(denial), principal.as_ref(), rule, *credential),
    };
    span.record("decision", if allowed { "allow" } else { "deny" });
    if let Some(denial) = denial {
        span.record("reason", denial.reason.as_str());
    }
    if let Some(kind) = credential {
        span.record("credential_type", kind.as_str());
    }
    if let Some(principal) = principal {
        span.record("issuer", &*principal.issuer);
    }
    if !rule.is_empty() {
        span.record("rule", rule.as_str());
    }
    metrics.record_request(
        surface,
        allowed,
        denial.map(|d| d.reason),
        credential,
        elapsed.as_secs_f64(),
    );
    if let (
        Some(denial),
        Decision::Deny {
            credential_digest, ..
        },
    ) = (denial, decision)
    {
        tracing::info!(
            target: "portcullis::audit",
            surface = ?surface,
            reason = denial.reason.as_str(),
            rule = rule.as_str(),
            subject = principal.map_or("", |p| p.subject.as_str()),
            credential_type = credential.map_or("", CredentialType::as_str),
            credential_digest = credential_digest.as_str(),
            detail = denial.message.as_str(),
            "request denied"
        );
    }
}

/// A request answered at once with RESOURCE_EXHAUSTED / OVERLOADED; `surface` when it was
/// one of the decision RPCs.
pub fn request_shed(metrics: &Metrics, surface: Option<Surface>) {
    metrics.requests_shed.inc();
    if let Some(surface) = surface {
        metrics.record_request(surface, false, Some(Reason::Overloaded), None, 0.0);
    }
}

/// A shadow rule decided a request (logged and counted, never enforced).
pub fn shadow_evaluated(metrics: &Metrics, rule: &str, allowed: bool) {
    let decision = if allowed {
        Outcome::allow
    } else {
        Outcome::deny
    };
    metrics
        .shadow_decisions
        .get_or_create(&ShadowLabels {
            rule: rule.to_owned(),
            decision,
        })
        .inc();
    info!(
        shadow_rule = %rule,
        shadow_decision = if allowed { "allow" } else { "deny" },
        "shadow rule evaluated (not enforced)"
    );
}

/// A configuration reload: `Ok(generation)` applied, or refused with its errors.
pub fn reload_finished(metrics: &Metrics, outcome: Result<u64, &str>) {
    let result = if outcome.is_ok() {
        "success"
    } else {
        "failure"
    };
    metrics
        .config_reloads
        .get_or_create(&ResultLabels { result })
        .inc();
    match outcome {
        Ok(generation) => {
            metrics.config_last_reload_successful.set(1);
            metrics.config_last_reload_success_time.set(unix_seconds());
            metrics
                .config_generation
                .set(i64::try_from(generation).unwrap_or(i64::MAX));
            info!(generation, "configuration reloaded");
        }
        Err(errors) => {
            metrics.config_last_reload_successful.set(0);
            error!(errors = %errors, "configuration change refused; the previous configuration keeps serving");
        }
    }
}

/// The first configuration generation is serving.
pub fn config_started(metrics: &Metrics) {
    metrics.config_generation.set(1);
    metrics.config_last_reload_successful.set(1);
}

/// A fetch of an issuer's key set: `Ok(keys)` loaded, or why not.
pub fn key_fetch_finished(
    metrics: &Metrics,
    issuer: &str,
    outcome: Result<usize, &dyn std::fmt::Display>,
) {
    let result = if outcome.is_ok() {
        "success"
    } else {
        "failure"
    };
    metrics
        .jwks_fetches
        .get_or_create(&FetchLabels {
            issuer: issuer.to_owned(),
            result,
        })
        .inc();
    match outcome {
        Ok(keys) => debug!(issuer = %issuer, keys, "key set loaded"),
        Err(err) => {
            warn!(issuer = %issuer, error = %err, "key set fetch failed; keeping the last good keys")
        }
    }
}

fn unix_seconds() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

/// The first 8 bytes of the SHA-256 of a credential, hex: enough to correlate log lines,
/// useless for recovering a high-entropy credential.
pub fn short_digest(credential: &str) -> String {
    crate::jwt::token_digest(credential)[..8]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}
