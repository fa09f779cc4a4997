//! Telemetry events: each thing worth observing is one function here that logs it and counts
//! it, so a request, a shadow-rule evaluation, a reload or a key fetch is recorded the same
//! way wherever it happens.

use std::time::Duration;

use super::metrics::{METRICS, Surface};
use crate::decision::{CredentialType, Decision};

/// A decided request: span fields, metrics and, for a denial, an audit log line.
pub fn request_decided(surface: Surface, decision: &Decision, elapsed: Duration) {
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
        span.record("issuer", principal.issuer.as_str());
    }
    if !rule.is_empty() {
        span.record("rule", rule.as_str());
    }
    METRICS.record_request(
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

/// The first 8 bytes of the SHA-256 of a credential, hex: enough to correlate log lines,
/// useless for recovering a high-entropy credential.
pub fn short_digest(credential: &str) -> String {
    crate::jwt::token_digest(credential)[..8]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}
