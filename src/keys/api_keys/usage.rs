//! Usage and activity of API keys: per key, how many requests it authenticated, when it was
//! last used and from which client address. Counted in memory on the request path (one
//! short lock on one of 16 shards, never across an await), then drained in batches by the
//! store's task every `api_keys.usage_flush_interval`: PostgreSQL keys into
//! `portcullis_api_key_usage` (one statement per batch, never a write per request), file
//! keys as one `api_key_usage` log line per key used in the interval.

use std::{
    collections::HashMap,
    net::IpAddr,
    sync::{Mutex, PoisonError},
};

/// The store names principals report as their issuer, and usage lines as their store.
pub const FILE_STORE: &str = "api_keys.file";
pub const POSTGRES_STORE: &str = "api_keys.postgres";

/// Shards of the pending counts: requests for different keys rarely share a lock.
const SHARDS: usize = 16;

/// What one key did since the last drain.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Activity {
    pub uses: u64,
    /// Seconds since the Unix epoch.
    pub last_used: i64,
    /// The client address of the last use, when known.
    pub last_address: Option<IpAddr>,
}

impl Activity {
    /// `self`, then `later` (counts add; the latest use wins).
    fn merge(&mut self, later: Activity) {
        self.uses = self.uses.saturating_add(later.uses);
        if later.last_used >= self.last_used {
            self.last_used = later.last_used;
            self.last_address = later.last_address.or(self.last_address);
        }
    }
}

/// One shard: pending activity by key id.
type Shard = Mutex<HashMap<Box<str>, Activity>>;

/// Pending activity by key id.
#[derive(Debug)]
pub struct UsageTracker {
    shards: Box<[Shard]>,
}

impl Default for UsageTracker {
    fn default() -> Self {
        Self {
            shards: (0..SHARDS).map(|_| Mutex::default()).collect(),
        }
    }
}

impl UsageTracker {
    fn shard(&self, id: &str) -> &Shard {
        let index = id.bytes().fold(0usize, |hash, b| {
            hash.wrapping_mul(31).wrapping_add(usize::from(b))
        });
        &self.shards[index % self.shards.len()]
    }

    /// Counts one use of key `id` at `now` from `address`.
    pub fn record(&self, id: &str, now: i64, address: Option<IpAddr>) {
        let used = Activity {
            uses: 1,
            last_used: now,
            last_address: address,
        };
        let mut pending = self
            .shard(id)
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        match pending.get_mut(id) {
            Some(activity) => activity.merge(used),
            None => {
                pending.insert(id.into(), used);
            }
        }
    }

    /// Takes everything pending.
    pub fn drain(&self) -> Vec<(Box<str>, Activity)> {
        self.shards
            .iter()
            .flat_map(|shard| {
                std::mem::take(&mut *shard.lock().unwrap_or_else(PoisonError::into_inner))
            })
            .collect()
    }

    /// Puts back a batch that could not be written, under what arrived meanwhile.
    pub fn restore(&self, batch: Vec<(Box<str>, Activity)>) {
        for (id, earlier) in batch {
            let mut pending = self
                .shard(&id)
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            let entry = pending.entry(id).or_insert(Activity {
                uses: 0,
                last_used: i64::MIN,
                last_address: None,
            });
            let later = *entry;
            *entry = earlier;
            entry.merge(later);
        }
    }
}

/// Logs a batch, one line per key (target `api_key_usage`): how file-store keys report
/// their activity, and what a PostgreSQL store that is going away could not write.
pub fn log_activity(store: &str, batch: &[(Box<str>, Activity)]) {
    for (id, activity) in batch {
        tracing::info!(
            target: crate::telemetry::USAGE_TARGET,
            store,
            key_id = &**id,
            uses = activity.uses,
            last_used = activity.last_used,
            last_address = activity.last_address.map(|a| a.to_string()).unwrap_or_default(),
            "API key used"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(last: u8) -> Option<IpAddr> {
        Some(IpAddr::from([10, 0, 0, last]))
    }

    #[test]
    fn uses_are_counted_per_key_and_the_latest_use_wins() {
        let tracker = UsageTracker::default();
        tracker.record("k1", 100, ip(1));
        tracker.record("k1", 105, ip(2));
        tracker.record("k1", 103, ip(3));
        tracker.record("k2", 50, None);
        let mut batch = tracker.drain();
        batch.sort_by(|a, b| a.0.cmp(&b.0));
        assert_eq!(
            batch,
            vec![
                (
                    "k1".into(),
                    Activity {
                        uses: 3,
                        last_used: 105,
                        last_address: ip(2)
                    }
                ),
                (
                    "k2".into(),
                    Activity {
                        uses: 1,
                        last_used: 50,
                        last_address: None
                    }
                ),
            ]
        );
        assert!(tracker.drain().is_empty(), "drained");
    }

    #[test]
    fn a_batch_that_failed_is_restored_under_newer_activity() {
        let tracker = UsageTracker::default();
        tracker.record("k1", 100, ip(1));
        let failed = tracker.drain();
        tracker.record("k1", 200, ip(2));
        tracker.restore(failed);
        assert_eq!(
            tracker.drain(),
            vec![(
                "k1".into(),
                Activity {
                    uses: 2,
                    last_used: 200,
                    last_address: ip(2)
                }
            )]
        );
    }

    #[test]
    fn concurrent_uses_are_all_counted() {
        let tracker = std::sync::Arc::new(UsageTracker::default());
        let threads: Vec<_> = (0..4)
            .map(|t| {
                let tracker = tracker.clone();
                std::thread::spawn(move || {
                    for i in 0..1000 {
                        tracker.record(&format!("k{}", i % 7), i64::from(t), None);
                    }
                })
            })
            .collect();
        threads.into_iter().for_each(|t| t.join().unwrap());
        let total: u64 = tracker.drain().iter().map(|(_, a)| a.uses).sum();
        assert_eq!(total, 4000);
    }
}
