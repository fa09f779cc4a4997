//! What the verified-credential caches share: entries keyed by a credential's SHA-256 that
//! each expire after their own TTL, which the caller caps at the credential's expiry, and a
//! bound on both their number (`cache.max_entries`) and their estimated memory
//! (`cache.max_bytes`).

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

/// A cached verification that knows roughly how much memory it holds.
pub trait Weight {
    /// Estimated bytes held by the entry (key, value and the cache's own bookkeeping).
    fn bytes(&self) -> u32;
}

/// Estimated memory of a verification whose credential or claims text is `text_len` bytes
/// long: the parsed claims, the answers encoded from them once (the principal, an ext_authz
/// allow's headers and metadata) and the cache's bookkeeping. Measured with
/// `scripts/bench_tail.py` (RSS over 200,000 distinct quickstart tokens of 426 characters):
/// about 2.5 KB each through Authenticate, 3.0 KB through Check (whose allow keeps its
/// encoded answer). This estimate (4.0 KB for them) stays above both.
pub fn estimated_bytes(text_len: usize) -> u32 {
    u32::try_from(text_len.saturating_mul(7).saturating_add(1024)).unwrap_or(u32::MAX)
}

/// The weigher of a cache whose capacity is `max_bytes` of estimated memory: every entry
/// weighs at least `max_bytes / max_entries`, so the byte bound also caps the count.
pub fn weigher<V: Weight>(
    max_entries: u64,
    max_bytes: u64,
) -> impl Fn(&[u8; 32], &Arc<V>) -> u32 + Send + Sync + 'static {
    let floor = u32::try_from(max_bytes.div_ceil(max_entries.max(1))).unwrap_or(u32::MAX);
    move |_key, value| value.bytes().max(floor)
}
