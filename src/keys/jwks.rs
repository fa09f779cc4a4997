//! Remote key sets (SPEC §4 "JWKS cache"): OIDC discovery or a `jwks_uri`, fetched with the
//! shared HTTP client and refreshed in the background at the Cache-Control max-age clamped to
//! configured bounds. An unknown `kid` triggers at most one refetch per cooldown, shared by
//! every waiting request (single-flight). A failed fetch or a bad document never replaces good
//! keys; the last good set serves until it is older than `max_stale`.

use std::{
    sync::{
        Arc, Weak,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use arc_swap::ArcSwapOption;
use tokio::sync::{Mutex, watch};
use tracing::{Instrument, info_span};

use crate::{
    config::JwksConfig,
    decision::{Denial, Reason},
    http_body::{BodyError, read_limited},
    jwt::{Algorithm, KeySet},
    telemetry::{self, metrics::Metrics},
};

/// Largest JWKS or discovery document accepted.
const MAX_DOCUMENT_BYTES: usize = 1024 * 1024;

/// How a source finds its key set.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Location {
    /// `{issuer}/.well-known/openid-configuration`, then its `jwks_uri`.
    Discovery {
        issuer: String,
    },
    JwksUri(String),
}

/// Why one fetch failed. Never contains key material.
#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    #[error("request failed: {0}")]
    Http(String),
    #[error("unexpected HTTP status {0}")]
    Status(u16),
    #[error("document larger than {MAX_DOCUMENT_BYTES} bytes")]
    TooLarge,
    #[error("invalid discovery document: {0}")]
    Discovery(String),
    #[error(transparent)]
    Keys(#[from] crate::jwt::KeyError),
}

/// Counters for metrics and tests.
#[derive(Debug, Default)]
pub struct FetchStats {
    pub fetches: AtomicU64,
    pub failures: AtomicU64,
}

struct Loaded {
    keys: Arc<KeySet>,
    fetched_at: Instant,
}

/// One issuer's remotely fetched key set.
pub struct RemoteKeySource {
    metrics: Arc<Metrics>,
    issuer_name: String,
    location: Location,
    allowed: Vec<Algorithm>,
    settings: JwksConfig,
    client: reqwest::Client,
    loaded: ArcSwapOption<Loaded>,
    /// Serializes fetches (single-flight); holds the `jwks_uri` found by discovery.
    fetch: Mutex<Option<String>>,
    /// Milliseconds since `epoch` of the last refetch an unknown `kid` triggered: the
    /// cooldown limits those only, so a key rotated in right after a scheduled fetch (or the
    /// first load) is fetched at once.
    last_unknown_kid_refetch_ms: AtomicU64,
    refetched_for_unknown_kid: AtomicBool,
    /// An unknown-kid refetch is running now (requests that need it wait for it).
    unknown_kid_fetch_running: AtomicBool,
    epoch: Instant,
    ready: watch::Sender<bool>,
    pub stats: FetchStats,
}

impl std::fmt::Debug for RemoteKeySource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RemoteKeySource")
            .field("issuer", &self.issuer_name)
            .field("location", &self.location)
            .finish_non_exhaustive()
    }
}

impl RemoteKeySource {
    pub fn new(
        issuer_name: String,
        location: Location,
        allowed: Vec<Algorithm>,
        settings: JwksConfig,
        client: reqwest::Client,
        metrics: Arc<Metrics>,
    ) -> Arc<Self> {
        Arc::new(Self {
            metrics,
            issuer_name,
            location,
            allowed,
            settings,
            client,
            loaded: ArcSwapOption::empty(),
            fetch: Mutex::new(None),
            last_unknown_kid_refetch_ms: AtomicU64::new(0),
            refetched_for_unknown_kid: AtomicBool::new(false),
            unknown_kid_fetch_running: AtomicBool::new(false),
            epoch: Instant::now(),
            ready: watch::channel(false).0,
            stats: FetchStats::default(),
        })
    }

    /// Whether this source can be reused as is for a new config with these settings.
    pub fn same_as(
        &self,
        location: &Location,
        allowed: &[Algorithm],
        settings: &JwksConfig,
    ) -> bool {
        &self.location == location && self.allowed == allowed && &self.settings == settings
    }

    /// The configured issuer name (metric label).
    pub fn issuer_name(&self) -> &str {
        &self.issuer_name
    }

    /// Keys in the current set and time since it was fetched, once loaded.
    pub fn key_set_status(&self) -> Option<(usize, Duration)> {
        let guard = self.loaded.load();
        guard
            .as_ref()
            .map(|loaded| (loaded.keys.len(), loaded.fetched_at.elapsed()))
    }

    /// Becomes true once a key set has loaded, and stays true.
    pub fn ready(&self) -> watch::Receiver<bool> {
        self.ready.subscribe()
    }

    /// The key set to verify with now: UPSTREAM_UNAVAILABLE before the first load and once the
    /// last good set is older than `max_stale`.
    pub fn current(&self) -> Result<Arc<KeySet>, Denial> {
        let guard = self.loaded.load();
        match guard.as_ref() {
            Some(loaded) if loaded.fetched_at.elapsed() <= self.settings.max_stale => {
                Ok(loaded.keys.clone())
            }
            Some(_) => Err(Denial::new(
                Reason::UpstreamUnavailable,
                "the issuer's keys could not be refreshed and are too old to use",
            )),
            None => Err(Denial::new(
                Reason::UpstreamUnavailable,
                "the issuer's keys have not been loaded yet",
            )),
        }
    }

    /// Whether an unknown-kid refetch ran less than `refetch_cooldown` ago.
    fn cooling_down(&self) -> bool {
        if !self.refetched_for_unknown_kid.load(Ordering::Acquire) {
            return false;
        }
        let last = Duration::from_millis(self.last_unknown_kid_refetch_ms.load(Ordering::Acquire));
        self.epoch.elapsed().saturating_sub(last) < self.settings.refetch_cooldown
    }

    /// A token named a `kid` missing from `seen`. Refetches at most once per cooldown; callers
    /// that arrive while a fetch runs wait for it and share its result. Returns the newer set,
    /// or `None` when nothing newer could be had.
    pub async fn refetch_for_unknown_kid(&self, seen: &Arc<KeySet>) -> Option<Arc<KeySet>> {
        if self.cooling_down() {
            // The cooldown starts when an unknown-kid refetch does: while that refetch runs
            // (bounded by `jwks.timeout`, at most one per cooldown), wait for it and use what
            // it loaded. A scheduled refresh is not waited for: an attacker's random kids
            // must not make requests queue behind retries during an outage.
            if self.unknown_kid_fetch_running.load(Ordering::Acquire) {
                drop(self.fetch.lock().await);
            }
            return self.newer_than(seen);
        }
        let mut jwks_uri = self.fetch.lock().await;
        if let Some(newer) = self.newer_than(seen) {
            return Some(newer);
        }
        if self.cooling_down() {
            return None;
        }
        // Marked running before the cooldown starts, so that a request which sees the
        // cooldown also sees the refetch it must wait for. Cleared however the fetch ends,
        // the caller giving up included.
        self.unknown_kid_fetch_running
            .store(true, Ordering::Release);
        let running = ClearOnDrop(&self.unknown_kid_fetch_running);
        let since_epoch = u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.last_unknown_kid_refetch_ms
            .store(since_epoch, Ordering::Release);
        self.refetched_for_unknown_kid
            .store(true, Ordering::Release);
        let fetched = self.fetch_locked(&mut jwks_uri).await;
        drop(running);
        fetched.ok()?;
        self.newer_than(seen)
    }

    fn newer_than(&self, seen: &Arc<KeySet>) -> Option<Arc<KeySet>> {
        let guard = self.loaded.load();
        let loaded = guard.as_ref()?;
        (!Arc::ptr_eq(&loaded.keys, seen)).then(|| loaded.keys.clone())
    }

    /// Fetches now (waiting for any fetch in flight). Returns how long until the next refresh.
    pub async fn refresh(&self) -> Result<Duration, FetchError> {
        let mut jwks_uri = self.fetch.lock().await;
        self.fetch_locked(&mut jwks_uri).await
    }

    async fn fetch_locked(&self, jwks_uri: &mut Option<String>) -> Result<Duration, FetchError> {
        self.stats.fetches.fetch_add(1, Ordering::Relaxed);
        let span = info_span!("jwks_fetch", issuer = %self.issuer_name);
        let result = self.fetch_document(jwks_uri).instrument(span).await;
        telemetry::key_fetch_finished(
            &self.metrics,
            &self.issuer_name,
            match &result {
                Ok((keys, _)) => Ok(keys.len()),
                Err(err) => Err(err),
            },
        );
        match result {
            Ok((keys, max_age)) => {
                self.loaded.store(Some(Arc::new(Loaded {
                    keys: Arc::new(keys),
                    fetched_at: Instant::now(),
                })));
                self.ready.send_replace(true);
                Ok(self.next_refresh(max_age))
            }
            Err(err) => {
                self.stats.failures.fetch_add(1, Ordering::Relaxed);
                if matches!(self.location, Location::Discovery { .. }) {
                    *jwks_uri = None; // rediscover next time
                }
                Err(err)
            }
        }
    }

    fn next_refresh(&self, max_age: Option<Duration>) -> Duration {
        max_age
            .unwrap_or(self.settings.max_refresh)
            .clamp(self.settings.min_refresh, self.settings.max_refresh)
    }

    async fn fetch_document(
        &self,
        jwks_uri: &mut Option<String>,
    ) -> Result<(KeySet, Option<Duration>), FetchError> {
        let uri = match (&self.location, jwks_uri.as_ref()) {
            (Location::JwksUri(uri), _) => uri.clone(),
            (Location::Discovery { .. }, Some(found)) => found.clone(),
            (Location::Discovery { issuer }, None) => {
                let found = self.discover(issuer).await?;
                *jwks_uri = Some(found.clone());
                found
            }
        };
        let (body, max_age) = self.get(&uri).await?;
        let keys = KeySet::from_jwks(&body, &self.allowed, false)?;
        Ok((keys, max_age))
    }

    async fn discover(&self, issuer: &str) -> Result<String, FetchError> {
        let url = format!(
            "{}/.well-known/openid-configuration",
            issuer.trim_end_matches('/')
        );
        let (body, _) = self.get(&url).await?;
        let document: serde_json::Value = serde_json::from_slice(&body)
            .map_err(|_| FetchError::Discovery("not JSON".to_owned()))?;
        if document.get("issuer").and_then(|v| v.as_str()) != Some(issuer) {
            return Err(FetchError::Discovery(
                "its issuer does not match the configured issuer".to_owned(),
            ));
        }
        let jwks_uri = document
            .get("jwks_uri")
            .and_then(|v| v.as_str())
            .filter(|uri| uri.starts_with("https://") || uri.starts_with("http://"))
            .ok_or_else(|| FetchError::Discovery("no http(s) jwks_uri".to_owned()))?;
        if !self.origin_allowed(issuer, jwks_uri) {
            return Err(FetchError::Discovery(
                "its jwks_uri is on another origin than the issuer; list that origin in jwks.allowed_origins to trust it".to_owned(),
            ));
        }
        Ok(jwks_uri.to_owned())
    }

    /// A discovered `jwks_uri` must share the issuer's origin (scheme, host and port) or be
    /// on an origin listed in `jwks.allowed_origins`.
    fn origin_allowed(&self, issuer: &str, jwks_uri: &str) -> bool {
        let origin = |url: &str| reqwest::Url::parse(url).ok().map(|u| u.origin());
        let Some(target) = origin(jwks_uri).filter(|o| o.is_tuple()) else {
            return false;
        };
        std::iter::once(issuer)
            .chain(self.settings.allowed_origins.iter().map(String::as_str))
            .any(|allowed| origin(allowed).as_ref() == Some(&target))
    }

    /// GET with the configured timeout and a size limit; returns the body and max-age.
    async fn get(&self, url: &str) -> Result<(Vec<u8>, Option<Duration>), FetchError> {
        let request = async {
            let response = self
                .client
                .get(url)
                .header(reqwest::header::ACCEPT, "application/json")
                .send()
                .await
                .map_err(|err| {
                    FetchError::Http(crate::outbound::error_chain(&err.without_url()))
                })?;
            if !response.status().is_success() {
                return Err(FetchError::Status(response.status().as_u16()));
            }
            let max_age = response
                .headers()
                .get(reqwest::header::CACHE_CONTROL)
                .and_then(|v| v.to_str().ok())
                .and_then(parse_max_age);
            let body =
                read_limited(response, MAX_DOCUMENT_BYTES)
                    .await
                    .map_err(|err| match err {
                        BodyError::TooLarge(_) => FetchError::TooLarge,
                        BodyError::Read(message) => FetchError::Http(message),
                    })?;
            Ok((body, max_age))
        };
        tokio::time::timeout(self.settings.timeout, request)
            .await
            .map_err(|_| FetchError::Http("timed out".to_owned()))?
    }

    /// Starts the background refresher. It stops when the source is dropped (config reload).
    pub fn spawn_refresher(self: &Arc<Self>) {
        let weak: Weak<Self> = Arc::downgrade(self);
        tokio::spawn(async move {
            let mut failures: u32 = 0;
            loop {
                let Some(source) = weak.upgrade() else { return };
                let wait = match source.refresh().await {
                    Ok(next) => {
                        failures = 0;
                        next
                    }
                    Err(_) => {
                        failures = failures.saturating_add(1);
                        // Retry quickly at first, backing off to min_refresh.
                        let backoff =
                            Duration::from_millis(250).saturating_mul(1 << failures.min(8));
                        backoff.min(source.settings.min_refresh)
                    }
                };
                drop(source);
                tokio::time::sleep(wait).await;
            }
        });
    }
}

/// `max-age` from a Cache-Control value; `no-store`/`no-cache` count as zero.
fn parse_max_age(value: &str) -> Option<Duration> {
    let mut max_age = None;
    for directive in value.split(',') {
        let directive = directive.trim().to_ascii_lowercase();
        if directive == "no-store" || directive == "no-cache" {
            return Some(Duration::ZERO);
        }
        if let Some(seconds) = directive.strip_prefix("max-age=") {
            max_age = seconds
                .trim_matches('"')
                .parse::<u64>()
                .ok()
                .map(Duration::from_secs);
        }
    }
    max_age
}

/// Clears a flag when dropped.
struct ClearOnDrop<'a>(&'a AtomicBool);

impl Drop for ClearOnDrop<'_> {
    fn drop(&mut self) {
        self.0.store(false, Ordering::Release);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_max_age() {
        assert_eq!(
            parse_max_age("public, max-age=600"),
            Some(Duration::from_secs(600))
        );
        assert_eq!(parse_max_age("no-store"), Some(Duration::ZERO));
        assert_eq!(parse_max_age("public"), None);
        assert_eq!(parse_max_age("max-age=abc"), None);
    }
}
