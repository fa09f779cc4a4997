//! Verifiers for every credential besides JWTs (which live in `jwt`): API keys, HTTP Basic,
//! opaque tokens by OAuth2 introspection, and client certificates (including RFC 8705
//! certificate-bound tokens). Each turns one extracted credential into a [`Principal`] or a
//! [`Denial`](crate::decision::Denial).
//!
//! [`Principal`]: crate::decision::Principal

pub mod api_key;
pub mod basic;
pub mod build;
pub mod certificate;
pub mod introspection;

use std::time::{SystemTime, UNIX_EPOCH};

/// Seconds since the Unix epoch.
pub(crate) fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}
