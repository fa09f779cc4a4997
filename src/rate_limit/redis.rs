//! Rate-limit counters in Redis, shared by every replica. One request is one `EVALSHA` of
//! [`SCRIPT`] with its limits' keys: the script reads each theoretical arrival time,
//! refuses if any limit is exceeded, and otherwise stores them all, atomically, with
//! Redis's own clock (so replicas' clocks do not matter). Concurrent requests share one
//! multiplexed connection, which pipelines them.
//!
//! A call that fails or takes longer than `timeout` reports the store unavailable, and
//! for the next second the caller is told so without trying (no added latency while Redis
//! is down); the connection manager reconnects by itself.

use std::{
    sync::atomic::{AtomicU64, Ordering},
    time::{Duration, Instant},
};

use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
use redis::{Script, aio::ConnectionManager};
use tokio::sync::OnceCell;
use tracing::warn;

use super::{Counted, Verdict, gcra};
use crate::config::RedisConfig;

/// GCRA over KEYS (one per limit) with ARGV = interval, tolerance (ms) per key. Returns
/// `{1, 0, 0}` when allowed (all stored), else `{0, index, retry_after_ms}` for the limit
/// that needs the longest wait (nothing stored). Every value is checked before anything is
/// written, and expiries are written as integers, so no write can fail halfway. Needs
/// Redis 5 or later (`TIME` before writes: effects replication).
pub const SCRIPT: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + tonumber(t[2]) / 1000
local arrivals = {}
local worst, worst_index = 0, 0
for i = 1, #KEYS do
  local interval = tonumber(ARGV[2 * i - 1])
  local tolerance = tonumber(ARGV[2 * i])
  local tat = tonumber(redis.call('GET', KEYS[i])) or now
  if tat < now then tat = now end
  local arrival = tat + interval
  local over = arrival - now - tolerance
  if over > worst then worst, worst_index = over, i - 1 end
  arrivals[i] = arrival
end
if worst > 0 then
  return {0, worst_index, math.ceil(worst)}
end
for i = 1, #KEYS do
  redis.call('SET', KEYS[i], string.format('%.3f', arrivals[i]), 'PX',
    string.format('%d', math.ceil(arrivals[i] - now) + 1000))
end
return {1, 0, 0}
";

/// How long the store is skipped after a failure.
const BACKOFF: Duration = Duration::from_secs(1);

/// The shared counters of one Redis.
pub struct RedisCounters {
    settings: RedisConfig,
    client: redis::Client,
    connection: OnceCell<ConnectionManager>,
    script: Script,
    started: Instant,
    /// Milliseconds since `started` before which the store is not tried.
    skip_until: AtomicU64,
}

impl std::fmt::Debug for RedisCounters {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisCounters").finish_non_exhaustive()
    }
}

/// The URL is not a Redis URL (the message never echoes it).
#[derive(Debug, thiserror::Error)]
#[error("not a valid redis:// URL")]
pub struct InvalidRedisUrl;

impl RedisCounters {
    /// Counters at `url`; connects on first use.
    pub fn new(settings: &RedisConfig, url: &str) -> Result<Self, InvalidRedisUrl> {
        let client = redis::Client::open(url).map_err(|_| InvalidRedisUrl)?;
        Ok(Self {
            settings: settings.clone(),
            client,
            connection: OnceCell::new(),
            script: Script::new(SCRIPT),
            started: Instant::now(),
            skip_until: AtomicU64::new(0),
        })
    }

    /// Whether these counters serve a new config with `settings` as they are.
    pub fn same_settings(&self, settings: &RedisConfig) -> bool {
        &self.settings == settings
    }

    fn elapsed_ms(&self) -> u64 {
        u64::try_from(self.started.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    /// The Redis key of an identity: the prefix and a digest (bounded, no user text).
    fn key(&self, identity: &str) -> String {
        let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, identity.as_bytes());
        format!(
            "{}:{}",
            self.settings.key_prefix,
            URL_SAFE_NO_PAD.encode(&digest.as_ref()[..18])
        )
    }

    /// Counts one request against `counted`; `Err` when the store could not answer.
    pub async fn check(&self, counted: &[Counted]) -> Result<Verdict, ()> {
        if self.elapsed_ms() < self.skip_until.load(Ordering::Relaxed) {
            return Err(());
        }
        let outcome = tokio::time::timeout(self.settings.timeout, self.evaluate(counted)).await;
        match outcome {
            Ok(Ok(verdict)) => Ok(verdict),
            Ok(Err(err)) => {
                warn!(error = %err, "rate limit store failed; applying rate_limits.redis.when_unavailable");
                // Only an unreachable store is skipped for a while; an error Redis answered
                // (a script or key problem) concerns this request alone.
                if err.is_io_error()
                    || err.is_connection_dropped()
                    || err.is_connection_refusal()
                    || err.is_timeout()
                {
                    self.back_off();
                }
                Err(())
            }
            Err(_) => {
                warn!(
                    "rate limit store did not answer in time; applying rate_limits.redis.when_unavailable"
                );
                self.back_off();
                Err(())
            }
        }
    }

    fn back_off(&self) {
        let until = self.elapsed_ms() + u64::try_from(BACKOFF.as_millis()).unwrap_or(1000);
        self.skip_until.store(until, Ordering::Relaxed);
    }

    async fn evaluate(&self, counted: &[Counted]) -> redis::RedisResult<Verdict> {
        let connection = self
            .connection
            .get_or_try_init(|| ConnectionManager::new(self.client.clone()))
            .await?;
        let mut invocation = self.script.prepare_invoke();
        for limit in counted {
            let (interval, tolerance) = gcra(&limit.limit);
            invocation
                .key(self.key(&limit.identity))
                .arg(interval)
                .arg(tolerance);
        }
        let (allowed, index, retry_after_ms): (i64, i64, i64) =
            invocation.invoke_async(&mut connection.clone()).await?;
        Ok(if allowed == 1 {
            Verdict::Allowed
        } else {
            Verdict::Limited {
                index: usize::try_from(index).unwrap_or(0).min(counted.len() - 1),
                retry_after_ms: u64::try_from(retry_after_ms).unwrap_or(0),
            }
        })
    }
}
