//! One Redis connection as Portcullis's shared state uses it (rate-limit counters, DPoP
//! replay memory): one multiplexed connection made on first use and remade by itself,
//! every call bounded by a timeout, and after a failure to reach Redis a one-second pause
//! during which callers are told at once that it is unavailable (no added latency while it
//! is down). Keys are a prefix and a digest: bounded, and no caller text reaches Redis.

use std::{
    sync::atomic::{AtomicU64, Ordering},
    time::{Duration, Instant},
};

use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
use redis::aio::ConnectionManager;
use tokio::sync::OnceCell;
use tracing::warn;

/// How long Redis is skipped after a failure to reach it.
const BACKOFF: Duration = Duration::from_secs(1);

/// The URL is not a Redis URL (the message never echoes it).
#[derive(Debug, thiserror::Error)]
#[error("not a valid redis:// URL")]
pub struct InvalidRedisUrl;

/// Redis could not answer this call (unreachable, too slow, or it answered an error).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Unavailable;

/// A Redis and how it is called.
pub struct RedisLink {
    client: redis::Client,
    connection: OnceCell<ConnectionManager>,
    timeout: Duration,
    key_prefix: String,
    /// The settings section, named in warnings (`rate_limits.redis`).
    section: &'static str,
    started: Instant,
    /// Milliseconds since `started` before which Redis is not tried.
    skip_until: AtomicU64,
}

impl std::fmt::Debug for RedisLink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisLink")
            .field("section", &self.section)
            .finish_non_exhaustive()
    }
}

impl RedisLink {
    /// A link to `url` for the settings at `section`; connects on first use.
    pub fn new(
        url: &str,
        timeout: Duration,
        key_prefix: &str,
        section: &'static str,
    ) -> Result<Self, InvalidRedisUrl> {
        Ok(Self {
            client: redis::Client::open(url).map_err(|_| InvalidRedisUrl)?,
            connection: OnceCell::new(),
            timeout,
            key_prefix: key_prefix.to_owned(),
            section,
            started: Instant::now(),
            skip_until: AtomicU64::new(0),
        })
    }

    /// The Redis key of `identity`: the prefix and a digest of it.
    pub fn key(&self, identity: &[u8]) -> String {
        let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, identity);
        format!(
            "{}:{}",
            self.key_prefix,
            URL_SAFE_NO_PAD.encode(&digest.as_ref()[..18])
        )
    }

    fn elapsed_ms(&self) -> u64 {
        u64::try_from(self.started.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    /// Runs `call` on the connection within the timeout. Any failure (unreachable, too
    /// slow, or an error Redis answered, such as READONLY after a failover) pauses the link
    /// for a second: one warning and no round trip per request while it lasts.
    pub async fn call<T, F, Fut>(&self, call: F) -> Result<T, Unavailable>
    where
        F: FnOnce(ConnectionManager) -> Fut,
        Fut: Future<Output = redis::RedisResult<T>>,
    {
        if self.elapsed_ms() < self.skip_until.load(Ordering::Relaxed) {
            return Err(Unavailable);
        }
        let attempt = async {
            let connection = self
                .connection
                .get_or_try_init(|| ConnectionManager::new(self.client.clone()))
                .await?;
            call(connection.clone()).await
        };
        match tokio::time::timeout(self.timeout, attempt).await {
            Ok(Ok(value)) => Ok(value),
            Ok(Err(err)) => {
                warn!(error = %err, section = self.section, "Redis call failed; applying its when_unavailable");
                self.back_off();
                Err(Unavailable)
            }
            Err(_) => {
                warn!(
                    section = self.section,
                    "Redis did not answer in time; applying its when_unavailable"
                );
                self.back_off();
                Err(Unavailable)
            }
        }
    }

    fn back_off(&self) {
        let until = self.elapsed_ms() + u64::try_from(BACKOFF.as_millis()).unwrap_or(1000);
        self.skip_until.store(until, Ordering::Relaxed);
    }
}
