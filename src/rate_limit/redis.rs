//! Rate-limit counters in Redis, shared by every replica. One request is one `EVALSHA` of
//! [`SCRIPT`] with its limits' keys: the script reads each theoretical arrival time,
//! refuses if any limit is exceeded, and otherwise stores them all, atomically, with
//! Redis's own clock (so replicas' clocks do not matter). Concurrent requests share one
//! multiplexed connection, which pipelines them.
//! Calls go through a [`RedisLink`]: timeout, reconnection and back-off.

use redis::Script;

use super::{Counted, Verdict, gcra};
use crate::{
    config::RedisConfig,
    redis_link::{InvalidRedisUrl, RedisLink, Unavailable},
};

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

/// The shared counters of one Redis.
pub struct RedisCounters {
    settings: RedisConfig,
    link: RedisLink,
    script: Script,
}

impl std::fmt::Debug for RedisCounters {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisCounters").finish_non_exhaustive()
    }
}

impl RedisCounters {
    /// Counters at `url`; connects on first use.
    pub fn new(settings: &RedisConfig, url: &str) -> Result<Self, InvalidRedisUrl> {
        Ok(Self {
            settings: settings.clone(),
            link: RedisLink::new(
                url,
                settings.timeout,
                &settings.key_prefix,
                "rate_limits.redis",
            )?,
            script: Script::new(SCRIPT),
        })
    }

    /// Whether these counters serve a new config with `settings` as they are.
    pub fn same_settings(&self, settings: &RedisConfig) -> bool {
        &self.settings == settings
    }

    /// Counts one request against `counted`; `Err` when the store could not answer.
    pub async fn check(&self, counted: &[Counted]) -> Result<Verdict, Unavailable> {
        let mut invocation = self.script.prepare_invoke();
        for limit in counted {
            let (interval, tolerance) = gcra(&limit.limit);
            invocation
                .key(self.link.key(limit.identity.as_bytes()))
                .arg(interval)
                .arg(tolerance);
        }
        let (allowed, index, retry_after_ms): (i64, i64, i64) = self
            .link
            .call(|mut connection| async move { invocation.invoke_async(&mut connection).await })
            .await?;
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
