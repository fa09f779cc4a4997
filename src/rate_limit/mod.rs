//! Rate limits on allowed requests (`rate_limits`, and each API key's own limit): a
//! generic cell rate algorithm (GCRA) per counted identity, the limits of one request
//! checked together and consumed only if all pass.
//!
//! Counters live in Redis when `rate_limits.redis` is set ([`redis`]: one Lua script round
//! trip per request, on a multiplexed connection that pipelines concurrent requests), so
//! every replica enforces the same limit; otherwise, and while Redis cannot be reached
//! (`when_unavailable: local`), in this process ([`LocalCounters`]).

pub mod redis;

use std::{
    sync::{Arc, Mutex, PoisonError},
    time::{Duration, Instant},
};

use moka::sync::Cache;

use crate::{
    config::{RateLimit, RateLimitsConfig, RedisUnavailable},
    decision::{CredentialType, Denial, Principal, RateLimitExceeded, Reason},
};

/// One limit a request counts against.
#[derive(Debug, Clone)]
pub struct Counted {
    /// What is counted: `key:`, `subject:` or `rule:` and the identity (never a secret).
    pub identity: String,
    pub limit: RateLimit,
    /// The policy name the headers report: `key`, `subject` or `rule`.
    pub policy: &'static str,
}

/// The outcome of counting a request against its limits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Allowed,
    /// Over the limit at `index` of the list; retry after this many milliseconds.
    Limited {
        index: usize,
        retry_after_ms: u64,
    },
}

/// The GCRA parameters of a limit, in milliseconds: the emission interval (one request's
/// worth of time) and the tolerance (the burst's worth).
fn gcra(limit: &RateLimit) -> (f64, f64) {
    let interval = 1000.0 / limit.per_second;
    (interval, interval * f64::from(limit.burst))
}

/// Counters in this process: each identity's theoretical arrival time, bounded in number.
pub struct LocalCounters {
    started: Instant,
    cells: Cache<String, Arc<Mutex<f64>>>,
}

impl Default for LocalCounters {
    fn default() -> Self {
        Self {
            started: Instant::now(),
            cells: Cache::builder()
                .max_capacity(1_000_000)
                // A counter idle this long has refilled whatever its limit (see
                // `MAX_REFILL_SECONDS`).
                .time_to_idle(Duration::from_secs(31 * 86_400))
                .build(),
        }
    }
}

impl LocalCounters {
    /// Counts one request against every limit in `counted`, all or none.
    pub fn check(&self, counted: &[Counted]) -> Verdict {
        let now = self.started.elapsed().as_secs_f64() * 1000.0;
        let cells: Vec<Arc<Mutex<f64>>> = counted
            .iter()
            .map(|c| {
                self.cells
                    .get_with_by_ref(&c.identity, || Arc::new(Mutex::new(0.0)))
            })
            .collect();
        // Locked in identity order, so two requests never wait on each other in a cycle.
        let mut order: Vec<usize> = (0..counted.len()).collect();
        order.sort_by(|a, b| counted[*a].identity.cmp(&counted[*b].identity));
        order.dedup_by(|a, b| counted[*a].identity == counted[*b].identity);
        let mut guards: Vec<(usize, std::sync::MutexGuard<'_, f64>)> = order
            .iter()
            .map(|i| (*i, cells[*i].lock().unwrap_or_else(PoisonError::into_inner)))
            .collect();
        let mut next = Vec::with_capacity(guards.len());
        // The limit that needs the longest wait decides the retry.
        let mut worst: Option<(usize, f64)> = None;
        for (index, tat) in &guards {
            let (interval, tolerance) = gcra(&counted[*index].limit);
            let arrival = tat.max(now) + interval;
            let over = arrival - now - tolerance;
            if over > 0.0 && worst.is_none_or(|(_, longest)| over > longest) {
                worst = Some((*index, over));
            }
            next.push(arrival);
        }
        if let Some((index, over)) = worst {
            return Verdict::Limited {
                index,
                retry_after_ms: over.ceil() as u64,
            };
        }
        for ((_, tat), arrival) in guards.iter_mut().zip(next) {
            **tat = arrival;
        }
        Verdict::Allowed
    }
}

/// The limits of one configuration and where they are counted.
pub struct RateLimiter {
    per_subject: Option<RateLimit>,
    rules: std::collections::HashMap<String, RateLimit>,
    redis: Option<Arc<redis::RedisCounters>>,
    when_unavailable: RedisUnavailable,
    local: Arc<LocalCounters>,
}

impl std::fmt::Debug for RateLimiter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RateLimiter").finish_non_exhaustive()
    }
}

impl RateLimiter {
    /// From validated config; `redis` and `local` may be lent by the previous generation,
    /// so counts survive a reload.
    pub fn new(
        config: &RateLimitsConfig,
        redis: Option<Arc<redis::RedisCounters>>,
        local: Arc<LocalCounters>,
    ) -> Self {
        Self {
            per_subject: config.per_subject.as_ref().and_then(|l| l.parse().ok()),
            rules: config
                .rules
                .iter()
                .filter_map(|(rule, l)| Some((rule.clone(), l.parse().ok()?)))
                .collect(),
            redis,
            when_unavailable: config
                .redis
                .as_ref()
                .map(|r| r.when_unavailable)
                .unwrap_or_default(),
            local,
        }
    }

    /// The shared counters, for the next generation to reuse.
    pub fn redis(&self) -> Option<&Arc<redis::RedisCounters>> {
        self.redis.as_ref()
    }

    /// The in-process counters, for the next generation to reuse.
    pub fn local(&self) -> &Arc<LocalCounters> {
        &self.local
    }

    /// The limits a request of `principal` allowed by `rule` counts against. Each counted
    /// identity is its parts, length-prefixed (no part can pass for another). A principal
    /// without a subject is not limited per subject or rule: it would share one counter
    /// with every other subject-less principal of its issuer.
    pub fn limits_for(&self, principal: &Principal, rule: &str) -> Vec<Counted> {
        let mut counted = Vec::new();
        let identity = |parts: &[&str]| {
            parts
                .iter()
                .map(|part| format!("{}:{part}", part.len()))
                .collect::<Vec<_>>()
                .join("|")
        };
        if principal.credential_type == CredentialType::ApiKey
            && let Some(limit) = principal.rate_limit
        {
            counted.push(Counted {
                identity: identity(&["key", &principal.issuer, &principal.key_id]),
                limit,
                policy: "key",
            });
        }
        if principal.subject.is_empty() {
            return counted;
        }
        if let Some(limit) = self.per_subject {
            counted.push(Counted {
                identity: identity(&["subject", &principal.issuer, &principal.subject]),
                limit,
                policy: "subject",
            });
        }
        if let Some(limit) = self.rules.get(rule) {
            counted.push(Counted {
                identity: identity(&["rule", rule, &principal.issuer, &principal.subject]),
                limit: *limit,
                policy: "rule",
            });
        }
        counted
    }

    /// Counts an allowed request; RATE_LIMITED when over a limit.
    pub async fn check(&self, principal: &Principal, rule: &str) -> Result<(), Denial> {
        let counted = self.limits_for(principal, rule);
        if counted.is_empty() {
            return Ok(());
        }
        let verdict = match &self.redis {
            Some(redis) => match redis.check(&counted).await {
                Ok(verdict) => verdict,
                Err(_unavailable) => match self.when_unavailable {
                    RedisUnavailable::Local => self.local.check(&counted),
                    RedisUnavailable::Allow => Verdict::Allowed,
                    RedisUnavailable::Deny => {
                        return Err(Denial::new(
                            Reason::UpstreamUnavailable,
                            "the rate limit store is unavailable",
                        ));
                    }
                },
            },
            None => self.local.check(&counted),
        };
        match verdict {
            Verdict::Allowed => Ok(()),
            Verdict::Limited {
                index,
                retry_after_ms,
            } => {
                let limit = &counted[index].limit;
                Err(Denial::rate_limited(RateLimitExceeded {
                    policy: counted[index].policy,
                    retry_after: retry_after_ms.div_ceil(1000).max(1),
                    quota: limit.burst,
                    window: (f64::from(limit.burst) / limit.per_second).ceil().max(1.0) as u64,
                }))
            }
        }
    }
}

#[cfg(test)]
mod tests;
