//! What the verified-credential caches share: entries keyed by a credential's SHA-256 that
//! each expire after their own TTL, which the caller caps at the credential's expiry, and a
//! bound on both their number (`cache.max_entries`) and their estimated memory
//! (`cache.max_bytes`). The JWT cache is a `quick_cache` (the smallest bookkeeping per
//! entry, for the cache that holds the most), whose entries carry their own deadline; the
//! others are `moka` caches that expire entries themselves.

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
/// long: the principal with its claims encoded once, an ext_authz allow's encoded headers
/// and metadata, and the cache's bookkeeping. Measured with `scripts/bench_tail.py` (RSS
/// over 200,000 distinct quickstart tokens of 426 characters): 0.96 KB each through
/// Authenticate, 1.7 KB through Check (whose allow keeps its encoded answer). This estimate
/// (2.0 KB for them) stays above both.
pub fn estimated_bytes(text_len: usize) -> u32 {
    u32::try_from(text_len.saturating_mul(3).saturating_add(768)).unwrap_or(u32::MAX)
}

/// The least an entry weighs in a cache of `max_bytes` for `max_entries`, so that the
/// byte bound also caps the count.
fn weight_floor(max_entries: u64, max_bytes: u64) -> u32 {
    u32::try_from(max_bytes.div_ceil(max_entries.max(1))).unwrap_or(u32::MAX)
}

/// The weigher of a moka cache whose capacity is `max_bytes` of estimated memory: every
/// entry weighs at least `max_bytes / max_entries`, so the byte bound also caps the count.
pub fn weigher<V: Weight>(
    max_entries: u64,
    max_bytes: u64,
) -> impl Fn(&[u8; 32], &Arc<V>) -> u32 + Send + Sync + 'static {
    let floor = weight_floor(max_entries, max_bytes);
    move |_key, value| value.bytes().max(floor)
}

/// The same weigher for a `quick_cache` cache.
#[derive(Debug, Clone, Copy)]
pub struct ByteWeigher {
    floor: u32,
}

impl ByteWeigher {
    pub fn new(max_entries: u64, max_bytes: u64) -> Self {
        Self {
            floor: weight_floor(max_entries, max_bytes),
        }
    }
}

impl<V: Weight> quick_cache::Weighter<[u8; 32], Arc<V>> for ByteWeigher {
    fn weight(&self, _key: &[u8; 32], value: &Arc<V>) -> u64 {
        u64::from(value.bytes().max(self.floor))
    }
}
