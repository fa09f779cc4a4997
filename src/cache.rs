//! What the verified-credential caches share: entries keyed by a credential's SHA-256 that
//! each expire after their own TTL, which the caller caps at the credential's expiry.

use std::{sync::Arc, time::Duration, time::Instant};

/// A cached verification that knows how long it may be reused.
pub trait Ttl {
    fn ttl(&self) -> Duration;
}

/// Moka expiry policy: every entry lives for its own [`Ttl`].
pub struct TtlFromEntry;

impl<V: Ttl + Send + Sync> moka::Expiry<[u8; 32], Arc<V>> for TtlFromEntry {
    fn expire_after_create(
        &self,
        _key: &[u8; 32],
        value: &Arc<V>,
        _created_at: Instant,
    ) -> Option<Duration> {
        Some(value.ttl())
    }
}
