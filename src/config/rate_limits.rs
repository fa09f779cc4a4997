//! `rate_limits`: limits per authenticated subject and per rule (an API key's own limit is
//! on its record), and the Redis that shares the counters between replicas. Enforced by
//! `crate::rate_limit`.

use std::{collections::BTreeMap, time::Duration};

use schemars::JsonSchema;
use serde::Deserialize;

use super::{
    secret::SecretRef,
    types::{duration, duration_schema},
};

/// A rate and a burst, as written: `{rate: 100/s, burst: 200}`.
#[derive(Debug, Clone, Deserialize, serde::Serialize, JsonSchema, PartialEq)]
#[schemars(deny_unknown_fields)]
pub struct LimitConfig {
    /// Requests per second, minute or hour: `100/s`, `600/m`, `1000/h`.
    pub rate: String,
    /// Requests allowed at once after a quiet period (at least 1).
    pub burst: u32,
}

impl LimitConfig {
    /// The limit, or why `rate` is not one.
    pub fn parse(&self) -> Result<RateLimit, String> {
        RateLimit::new(&self.rate, self.burst)
    }
}

/// The slowest rate a limit may have: one request per day.
const MIN_PER_SECOND: f64 = 1.0 / 86_400.0;

/// The longest a burst may take to refill (the counters' lifetime): 30 days.
pub const MAX_REFILL_SECONDS: f64 = 30.0 * 86_400.0;

/// A parsed limit: a sustained rate and a burst (GCRA).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RateLimit {
    pub per_second: f64,
    pub burst: u32,
}

impl RateLimit {
    /// The limit as a key file writes it: `{rate: N/s, burst: B}`.
    pub fn to_config(&self) -> LimitConfig {
        LimitConfig {
            rate: format!("{}/s", self.per_second),
            burst: self.burst,
        }
    }

    /// `rate` as `N/s`, `N/m` or `N/h` (N a positive number, at least one per day), with
    /// `burst` at least 1 and refilled within 30 days.
    pub fn new(rate: &str, burst: u32) -> Result<Self, String> {
        let invalid = || format!("{rate:?} is not a rate such as 100/s, 600/m or 1000/h");
        let (count, unit) = rate.trim().split_once('/').ok_or_else(invalid)?;
        let count: f64 = count.trim().parse().map_err(|_| invalid())?;
        let seconds = match unit.trim() {
            "s" => 1.0,
            "m" => 60.0,
            "h" => 3600.0,
            _ => return Err(invalid()),
        };
        if !(count.is_finite() && count > 0.0 && count <= 1e9) {
            return Err(invalid());
        }
        if burst == 0 || burst > 1_000_000 {
            return Err("burst must be between 1 and 1000000".to_owned());
        }
        let per_second = count / seconds;
        if per_second < MIN_PER_SECOND {
            return Err(format!("{rate:?} is below one request per day"));
        }
        if f64::from(burst) / per_second > MAX_REFILL_SECONDS {
            return Err("the burst takes more than 30 days to refill at this rate".to_owned());
        }
        Ok(Self { per_second, burst })
    }
}

/// What happens to limited requests while Redis cannot be reached.
#[derive(Debug, Clone, Copy, Deserialize, JsonSchema, PartialEq, Eq, Default)]
#[serde(rename_all = "snake_case")]
pub enum RedisUnavailable {
    /// Each replica enforces the limits alone (the default): traffic keeps flowing, and a
    /// client gets at most the limit times the number of replicas.
    #[default]
    Local,
    /// No limit is enforced.
    Allow,
    /// Limited requests are refused (UPSTREAM_UNAVAILABLE).
    Deny,
}

/// `rate_limits.redis`: the shared counters.
#[derive(Debug, Clone, Deserialize, JsonSchema, PartialEq)]
#[schemars(deny_unknown_fields)]
pub struct RedisConfig {
    /// `redis://host:port/db` (`env:REDIS_URL`, `file:/path` or literal).
    pub url: SecretRef,
    /// Longest wait for Redis per request before the `when_unavailable` behaviour applies.
    #[schemars(schema_with = "duration_schema")]
    #[serde(default = "default_redis_timeout", deserialize_with = "duration")]
    pub timeout: Duration,
    /// Prefix of the counters' keys.
    #[serde(default = "default_key_prefix")]
    pub key_prefix: String,
    #[serde(default)]
    pub when_unavailable: RedisUnavailable,
}

fn default_redis_timeout() -> Duration {
    Duration::from_millis(50)
}

fn default_key_prefix() -> String {
    "portcullis:rl".to_owned()
}

/// Limits on allowed requests, counted per principal. A request over any of them is
/// RATE_LIMITED (429 with `Retry-After` and `RateLimit` headers).
#[derive(Debug, Clone, Deserialize, JsonSchema, PartialEq, Default)]
#[schemars(deny_unknown_fields)]
#[serde(default)]
pub struct RateLimitsConfig {
    /// Per authenticated subject (its issuer or store, and subject), any credential type.
    pub per_subject: Option<LimitConfig>,
    /// Rule name -> a limit per subject on the requests that rule allowed.
    pub rules: BTreeMap<String, LimitConfig>,
    /// Counters shared by every replica; unset: each replica counts alone.
    pub redis: Option<RedisConfig>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates_are_per_second_minute_or_hour() {
        assert_eq!(RateLimit::new("100/s", 5).unwrap().per_second, 100.0);
        assert_eq!(RateLimit::new("600/m", 5).unwrap().per_second, 10.0);
        assert_eq!(RateLimit::new(" 36 / h ", 1).unwrap().per_second, 0.01);
        for bad in ["", "100", "0/s", "-1/s", "1/d", "x/s", "NaN/s", "inf/s"] {
            assert!(RateLimit::new(bad, 1).is_err(), "{bad}");
        }
        assert!(RateLimit::new("1/s", 0).is_err(), "burst 0");
        assert!(
            RateLimit::new("1e-320/s", 1).is_err(),
            "slower than one a day"
        );
        assert!(RateLimit::new("0.01/h", 1).is_err());
        assert!(
            RateLimit::new("1/h", 1_000).is_err(),
            "a burst refilled over 41 days"
        );
        assert!(RateLimit::new("1/h", 720).is_ok(), "30 days");
    }
}
