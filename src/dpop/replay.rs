//! The memory of accepted DPoP proofs (RFC 9449 §11.1): a proof's identity is kept until
//! its `iat` leaves the acceptance window, and a second use inside it is refused. Kept in
//! this process ([`LocalReplay`]: sharded, bounded, and refusing new proofs rather than
//! forgetting one when full) and, when `dpop.replay.redis` is set, in Redis (`SET NX PX`),
//! so that every replica refuses a proof any of them accepted.

use std::{
    collections::HashMap,
    sync::{
        Arc, Mutex, PoisonError,
        atomic::{AtomicUsize, Ordering},
    },
};

use crate::{
    config::{DpopRedisConfig, DpopRedisUnavailable},
    decision::{Denial, Reason},
    redis_link::RedisLink,
};

/// Shards of the local memory (each its own lock, never held across an await).
const SHARDS: usize = 32;

/// The outcome of presenting a proof's identity.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FirstUse {
    Yes,
    /// Seen before, inside its window.
    Replayed,
}

/// Accepted proofs in this process, each until its expiry (milliseconds since the epoch).
pub struct LocalReplay {
    shards: Box<[Mutex<Shard>]>,
    /// Most proofs kept per shard (`dpop.replay.max_entries` / shards).
    per_shard: AtomicUsize,
}

#[derive(Default)]
struct Shard {
    expiries: HashMap<[u8; 16], u64>,
    /// No sweep for expired entries before this time (one per second at most).
    next_sweep_ms: u64,
}

/// The local memory is full of proofs still inside their window.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Full;

impl LocalReplay {
    pub fn new(max_entries: usize) -> Self {
        Self {
            shards: (0..SHARDS).map(|_| Mutex::default()).collect(),
            per_shard: AtomicUsize::new(per_shard(max_entries)),
        }
    }

    /// A new `max_entries` (a reload); what is remembered stays.
    pub fn resize(&self, max_entries: usize) {
        self.per_shard
            .store(per_shard(max_entries), Ordering::Relaxed);
    }

    /// Records `identity` until `expires_ms`; `Replayed` when it is already recorded and
    /// not expired at `now_ms`.
    pub fn first_use(
        &self,
        identity: &[u8; 32],
        expires_ms: u64,
        now_ms: u64,
    ) -> Result<FirstUse, Full> {
        let mut key = [0u8; 16];
        key.copy_from_slice(&identity[..16]);
        let shard = &self.shards[usize::from(identity[16]) % SHARDS];
        let mut shard = shard.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(expiry) = shard.expiries.get(&key)
            && *expiry > now_ms
        {
            return Ok(FirstUse::Replayed);
        }
        let capacity = self.per_shard.load(Ordering::Relaxed);
        if shard.expiries.len() >= capacity && !shard.expiries.contains_key(&key) {
            if now_ms >= shard.next_sweep_ms {
                shard.expiries.retain(|_, expiry| *expiry > now_ms);
                shard.next_sweep_ms = now_ms + 1000;
            }
            if shard.expiries.len() >= capacity {
                return Err(Full);
            }
        }
        shard.expiries.insert(key, expires_ms);
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
    /// Records a proof accepted at `now_ms` until `expires_ms`; refuses it when it was
    /// used before (CERTIFICATE_MISMATCH, `invalid_dpop_proof`), when the memory is full
    /// (OVERLOADED), or when Redis cannot say and `when_unavailable` is `deny`
    /// (UPSTREAM_UNAVAILABLE).
    pub async fn first_use(
        &self,
        identity: &[u8; 32],
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
        match self.local.first_use(identity, expires_ms, now_ms) {
            Ok(FirstUse::Yes) => {}
            Ok(FirstUse::Replayed) => return Err(replayed()),
            Err(Full) => {
                return Err(Denial::new(
                    Reason::Overloaded,
                    "too many recent DPoP proofs to remember; retry shortly",
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
