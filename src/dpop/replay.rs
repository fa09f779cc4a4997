//! The memory of accepted DPoP proofs (RFC 9449 §11.1): a proof's identity is kept until
//! its `iat` leaves the acceptance window, and a second use inside it is refused. Kept in
//! this process ([`LocalReplay`]) and, when `dpop.replay.redis` is set, in Redis
//! (`SET NX PX`), so that every replica refuses a proof any of them accepted.
//!
//! The local memory is bounded and refuses new proofs rather than forgetting one when full.
//! No client can fill it for the others: proofs are spread over its shards by a hash keyed
//! per process (a client cannot aim at one shard by choosing its `jti`s), and each key may
//! hold at most a sixteenth of it. What it may not hold is refused too: proofs issued
//! before it started (a restart forgets, unless Redis remembers) or before a reload made
//! `max_age` longer than the window its entries were kept for.

use std::{
    collections::HashMap,
    hash::BuildHasher,
    sync::{
        Arc, Mutex, PoisonError,
        atomic::{AtomicI64, AtomicUsize, Ordering},
    },
    time::Duration,
};

use moka::sync::Cache;

use crate::{
    config::{DpopRedisConfig, DpopRedisUnavailable},
    decision::{Denial, Reason},
    redis_link::RedisLink,
};

/// Shards of the local memory (each its own lock, never held across an await).
const SHARDS: usize = 32;
/// One key may hold at most this fraction of the memory.
const KEY_SHARE: usize = 16;

/// The outcome of presenting a proof's identity.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FirstUse {
    Yes,
    /// Seen before, inside its window.
    Replayed,
}

/// Why the local memory cannot take a proof.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Full {
    /// Full of proofs still inside their window.
    Memory,
    /// This key already holds its share.
    Key,
}

/// Accepted proofs in this process, each until its expiry (milliseconds since the epoch).
pub struct LocalReplay {
    shards: Box<[Mutex<Shard>]>,
    /// Picks a proof's shard; keyed per process.
    shard_hasher: std::collections::hash_map::RandomState,
    /// Most proofs kept per shard (`dpop.replay.max_entries` / shards).
    per_shard: AtomicUsize,
    /// Proofs accepted per key (its thumbprint's digest) in the current window.
    per_key: Cache<[u8; 16], Arc<Mutex<KeyWindow>>>,
    /// Most proofs one key may have accepted per window.
    key_quota: AtomicUsize,
    /// The window (`max_age`, seconds) entries are kept for.
    max_age: AtomicI64,
    /// Proofs issued (`iat`, seconds) before this are refused: the memory may not hold them.
    covers_from: AtomicI64,
}

#[derive(Default)]
struct Shard {
    expiries: HashMap<[u8; 16], u64>,
    /// No sweep for expired entries before this time (one per second at most).
    next_sweep_ms: u64,
}

/// A key's proofs in its current window.
struct KeyWindow {
    started_ms: u64,
    count: usize,
}

impl LocalReplay {
    /// A memory of `max_entries` proofs kept `max_age` seconds, started at `now` (seconds).
    /// `forgot_before_start`: a restart loses what was remembered (no Redis), so proofs
    /// issued before `now` are refused.
    pub fn new(max_entries: usize, max_age: i64, now: i64, forgot_before_start: bool) -> Self {
        Self {
            shards: (0..SHARDS).map(|_| Mutex::default()).collect(),
            shard_hasher: Default::default(),
            per_shard: AtomicUsize::new(per_shard(max_entries)),
            per_key: Cache::builder()
                .max_capacity(u64::try_from(max_entries).unwrap_or(u64::MAX))
                .time_to_idle(Duration::from_secs(
                    2 * u64::try_from(max_age).unwrap_or(0) + 2,
                ))
                .build(),
            key_quota: AtomicUsize::new(key_quota(max_entries)),
            max_age: AtomicI64::new(max_age),
            covers_from: AtomicI64::new(if forgot_before_start { now } else { i64::MIN }),
        }
    }

    /// A reload's settings; what is remembered stays. A longer `max_age` would accept
    /// proofs whose entries were kept for the shorter one, so proofs issued before `now`
    /// are refused from then on.
    pub fn reconfigure(&self, max_entries: usize, max_age: i64, now: i64) {
        self.per_shard
            .store(per_shard(max_entries), Ordering::Relaxed);
        self.key_quota
            .store(key_quota(max_entries), Ordering::Relaxed);
        if self.max_age.swap(max_age, Ordering::Relaxed) < max_age {
            self.covers_from.fetch_max(now, Ordering::Relaxed);
        }
    }

    /// Whether a proof issued at `iat` (seconds) is one this memory would have recorded.
    pub fn covers(&self, iat: i64) -> bool {
        iat >= self.covers_from.load(Ordering::Relaxed)
    }

    /// Records `identity`, a proof of the key `key`, until `expires_ms`; `Replayed` when it
    /// is already recorded and not expired at `now_ms`.
    pub fn first_use(
        &self,
        identity: &[u8; 32],
        key: &[u8; 16],
        expires_ms: u64,
        now_ms: u64,
    ) -> Result<FirstUse, Full> {
        let window = self.per_key.get_with(*key, || {
            Arc::new(Mutex::new(KeyWindow {
                started_ms: now_ms,
                count: 0,
            }))
        });
        let mut window = window.lock().unwrap_or_else(PoisonError::into_inner);
        let window_ms = u64::try_from(self.max_age.load(Ordering::Relaxed))
            .unwrap_or(0)
            .saturating_mul(1000)
            + 1000;
        if now_ms.saturating_sub(window.started_ms) >= window_ms {
            *window = KeyWindow {
                started_ms: now_ms,
                count: 0,
            };
        }
        let mut entry = [0u8; 16];
        entry.copy_from_slice(&identity[..16]);
        let index = usize::try_from(self.shard_hasher.hash_one(entry) % SHARDS as u64).unwrap_or(0);
        let mut shard = self.shards[index]
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if let Some(expiry) = shard.expiries.get(&entry)
            && *expiry > now_ms
        {
            return Ok(FirstUse::Replayed);
        }
        if window.count >= self.key_quota.load(Ordering::Relaxed) {
            return Err(Full::Key);
        }
        let capacity = self.per_shard.load(Ordering::Relaxed);
        if shard.expiries.len() >= capacity && !shard.expiries.contains_key(&entry) {
            if now_ms >= shard.next_sweep_ms {
                shard.expiries.retain(|_, expiry| *expiry > now_ms);
                shard.next_sweep_ms = now_ms + 1000;
            }
            if shard.expiries.len() >= capacity {
                return Err(Full::Memory);
            }
        }
        shard.expiries.insert(entry, expires_ms);
        window.count += 1;
        Ok(FirstUse::Yes)
    }

    /// Proofs remembered now (expired ones not yet swept included).
    #[cfg(test)]
    pub fn remembered(&self) -> usize {
        self.shards
            .iter()
            .map(|s| {
                s.lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .expiries
                    .len()
            })
            .sum()
    }
}

fn per_shard(max_entries: usize) -> usize {
    max_entries.div_ceil(SHARDS).max(1)
}

fn key_quota(max_entries: usize) -> usize {
    (max_entries / KEY_SHARE).max(1)
}

/// The proofs' memory in Redis.
pub struct RedisReplay {
    settings: DpopRedisConfig,
    link: RedisLink,
}

impl RedisReplay {
    pub fn new(settings: &DpopRedisConfig, url: &str) -> Result<Self, String> {
        let link = RedisLink::new(
            url,
            settings.timeout,
            &settings.key_prefix,
            "dpop.replay.redis",
        )
        .map_err(|err| err.to_string())?;
        Ok(Self {
            settings: settings.clone(),
            link,
        })
    }

    /// Whether this memory serves a new config with `settings` as it is.
    pub fn same_settings(&self, settings: &DpopRedisConfig) -> bool {
        &self.settings == settings
    }
}

/// Where accepted proofs are remembered: always this process, and Redis when configured.
pub struct ReplayGuard {
    pub local: Arc<LocalReplay>,
    pub redis: Option<Arc<RedisReplay>>,
}

impl ReplayGuard {
    /// Records a proof of `key` accepted at `now_ms` until `expires_ms`; refuses it when it
    /// was used before (CERTIFICATE_MISMATCH, `invalid_dpop_proof`), when the memory or the
    /// key's share of it is full (OVERLOADED), or when Redis cannot say and
    /// `when_unavailable` is `deny` (UPSTREAM_UNAVAILABLE).
    pub async fn first_use(
        &self,
        identity: &[u8; 32],
        key: &[u8; 16],
        expires_ms: u64,
        now_ms: u64,
    ) -> Result<(), Denial> {
        let replayed = || {
            Denial::dpop(
                Reason::CertificateMismatch,
                true,
                "DPoP proof was already used (jti replay)",
            )
        };
        match self.local.first_use(identity, key, expires_ms, now_ms) {
            Ok(FirstUse::Yes) => {}
            Ok(FirstUse::Replayed) => return Err(replayed()),
            Err(Full::Memory) => {
                return Err(Denial::new(
                    Reason::Overloaded,
                    "too many recent DPoP proofs to remember; retry shortly",
                ));
            }
            Err(Full::Key) => {
                return Err(Denial::new(
                    Reason::Overloaded,
                    "this DPoP key made too many proofs recently; retry shortly",
                ));
            }
        }
        let Some(redis) = &self.redis else {
            return Ok(());
        };
        let key = redis.link.key(identity);
        let ttl_ms = expires_ms.saturating_sub(now_ms).max(1);
        let stored = redis
            .link
            .call(|mut connection| async move {
                redis::cmd("SET")
                    .arg(&key)
                    .arg(1)
                    .arg("NX")
                    .arg("PX")
                    .arg(ttl_ms)
                    .query_async::<Option<String>>(&mut connection)
                    .await
            })
            .await;
        match (stored, redis.settings.when_unavailable) {
            (Ok(Some(_)), _) => Ok(()),
            (Ok(None), _) => Err(replayed()),
            // This replica's memory already refused what it saw before.
            (Err(_), DpopRedisUnavailable::Local) => Ok(()),
            (Err(_), DpopRedisUnavailable::Deny) => Err(Denial::new(
                Reason::UpstreamUnavailable,
                "the DPoP replay store is unavailable",
            )),
        }
    }
}
