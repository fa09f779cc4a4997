//! The PostgreSQL key store (`api_keys.postgres`): the shared store for many replicas.
//!
//! Keys are looked up by the SHA-256 digest of the presented key (`sha256`, lower-case hex).
//! Found records are cached for `cache_ttl`, unknown digests for `negative_cache_ttl`. A
//! trigger (see `migrations/`) sends `NOTIFY portcullis_api_keys, '<sha256>'` on every insert,
//! update and delete; each replica LISTENs and drops that digest from its cache, so a
//! revocation reaches every replica within a second. When the listening connection is lost,
//! the cache keeps serving until the entries' TTLs (the database may be down) and is cleared
//! once the listener is back, because notifications may have been missed meanwhile.
//!
//! The pool connects lazily and reconnects by itself; a lookup that cannot reach the database
//! within `timeout` is UPSTREAM_UNAVAILABLE.

use std::{
    str::FromStr,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use moka::sync::Cache;
use serde_json::Value;
use sqlx::{
    Row,
    postgres::{PgConnectOptions, PgListener, PgPool, PgPoolOptions},
};
use tokio::{sync::watch, task::JoinHandle};
use tracing::{debug, info, warn};

use super::{
    ApiKeyRecord, format,
    usage::{self, Activity, UsageTracker},
};
use crate::config::PostgresConfig;

/// The NOTIFY channel the trigger and the listener agree on.
pub const CHANNEL: &str = "portcullis_api_keys";

/// The schema, embedded in the binary (`portcullis keys migrate`).
pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");

/// Database problems. Messages come from sqlx and never contain key material or the URL's
/// password (sqlx does not echo connection strings).
#[derive(Debug, thiserror::Error)]
pub enum PostgresError {
    #[error("invalid database URL: {0}")]
    Url(String),
    #[error("database error: {0}")]
    Database(#[from] sqlx::Error),
    #[error("migration failed: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    #[error("database did not answer within {0:?}")]
    Timeout(Duration),
    #[error("no API key has id {0:?}")]
    NoSuchKey(String),
    #[error("API key {id:?} was already rotated to {successor:?}; rotate that one")]
    AlreadyRotated { id: String, successor: String },
}

/// Connection options from a URL, never echoing it (it may carry a password).
pub fn connect_options(url: &str) -> Result<PgConnectOptions, PostgresError> {
    PgConnectOptions::from_str(url)
        .map_err(|_| PostgresError::Url("not a valid postgres:// URL".to_owned()))
}

/// A pool that connects on first use.
pub fn lazy_pool(
    url: &str,
    max_connections: u32,
    timeout: Duration,
) -> Result<PgPool, PostgresError> {
    Ok(PgPoolOptions::new()
        .max_connections(max_connections)
        .acquire_timeout(timeout)
        .connect_lazy_with(connect_options(url)?))
}

/// Applies the embedded migrations.
pub async fn migrate(pool: &PgPool) -> Result<(), PostgresError> {
    MIGRATOR.run(pool).await?;
    Ok(())
}

/// Disables a key by id and stamps `revoked_at`; the trigger notifies every replica.
pub async fn revoke(pool: &PgPool, id: &str) -> Result<(), PostgresError> {
    let done = sqlx::query(
        "UPDATE portcullis_api_keys SET disabled = true, revoked_at = coalesce(revoked_at, now()) WHERE id = $1",
    )
    .bind(id)
    .execute(pool)
    .await?;
    if done.rows_affected() == 0 {
        return Err(PostgresError::NoSuchKey(id.to_owned()));
    }
    Ok(())
}

/// A successor key for `keys rotate`: its id and digest (the key itself is printed once by
/// the caller and never reaches the database).
pub struct Successor<'a> {
    pub id: &'a str,
    pub sha256_hex: &'a str,
}

/// What `keys rotate` did, in seconds since the Unix epoch: the old key's new expiry, and
/// the successor's (the old key's lifetime again, from now; none when the old key had none).
#[derive(Debug)]
pub struct Rotated {
    pub old_expires_at: i64,
    pub successor_expires_at: Option<i64>,
}

/// Rotates key `id`: in one transaction, inserts `successor` with the same subject, scopes
/// and metadata (plus `rotated_from`), gives it `lifetime` (default: the old key's lifetime)
/// from now, and lets the old key expire after `overlap` (sooner if it already expires
/// sooner), recording `rotated_to`. A disabled, expired or unknown key is not rotated.
pub async fn rotate(
    pool: &PgPool,
    id: &str,
    successor: &Successor<'_>,
    overlap: Duration,
    lifetime: Option<Duration>,
) -> Result<Rotated, PostgresError> {
    let mut tx = pool.begin().await?;
    let row = sqlx::query(
        "SELECT extract(epoch FROM expires_at - created_at)::bigint AS lifetime, \
                metadata->>'rotated_to' AS rotated_to \
         FROM portcullis_api_keys \
         WHERE id = $1 AND NOT disabled AND (expires_at IS NULL OR expires_at > now()) \
         FOR UPDATE",
    )
    .bind(id)
    .fetch_optional(&mut *tx)
    .await?
    .ok_or_else(|| PostgresError::NoSuchKey(id.to_owned()))?;
    if let Some(successor) = row.try_get::<Option<String>, _>("rotated_to")? {
        return Err(PostgresError::AlreadyRotated {
            id: id.to_owned(),
            successor,
        });
    }
    let old_lifetime: Option<i64> = row.try_get("lifetime")?;
    let lifetime = lifetime
        .map(|lifetime| i64::try_from(lifetime.as_secs()).unwrap_or(i64::MAX))
        .or(old_lifetime);
    let overlap_seconds = i64::try_from(overlap.as_secs()).unwrap_or(i64::MAX);
    let inserted = sqlx::query(
        "INSERT INTO portcullis_api_keys (id, sha256, subject, scopes, expires_at, metadata, rate_limit_per_second, rate_limit_burst) \
         SELECT $2, $3, subject, scopes, now() + make_interval(secs => $4::double precision), \
                metadata || jsonb_build_object('rotated_from', id), rate_limit_per_second, rate_limit_burst \
         FROM portcullis_api_keys WHERE id = $1 \
         RETURNING extract(epoch FROM expires_at)::bigint AS expires_at",
    )
    .bind(id)
    .bind(successor.id)
    .bind(successor.sha256_hex)
    .bind(lifetime.map(|seconds| seconds as f64))
    .fetch_one(&mut *tx)
    .await?;
    let updated = sqlx::query(
        "UPDATE portcullis_api_keys \
         SET expires_at = least(coalesce(expires_at, 'infinity'), \
                                now() + make_interval(secs => $2::double precision)), \
             metadata = metadata || jsonb_build_object('rotated_to', $3::text) \
         WHERE id = $1 \
         RETURNING extract(epoch FROM expires_at)::bigint AS expires_at",
    )
    .bind(id)
    .bind(overlap_seconds as f64)
    .bind(successor.id)
    .fetch_one(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(Rotated {
        old_expires_at: updated.try_get("expires_at")?,
        successor_expires_at: inserted.try_get("expires_at")?,
    })
}

/// One key as `keys list` shows it.
#[derive(Debug)]
pub struct Listed {
    pub id: String,
    pub subject: String,
    pub scopes: Vec<String>,
    /// Seconds since the Unix epoch.
    pub expires_at: Option<i64>,
    pub disabled: bool,
    pub rotated_from: Option<String>,
    pub rotated_to: Option<String>,
    /// Uses written so far by the replicas (0 when never used).
    pub uses: i64,
    /// Seconds since the Unix epoch of the last written use.
    pub last_used: Option<i64>,
    /// The client address of that use, when known.
    pub last_address: Option<String>,
    /// Seconds since the Unix epoch.
    pub created_at: i64,
    pub revoked_at: Option<i64>,
}

const LISTED_COLUMNS: &str = "k.id, k.subject, k.scopes, \
    extract(epoch FROM k.expires_at)::bigint AS expires_at, k.disabled, \
    k.metadata->>'rotated_from' AS rotated_from, k.metadata->>'rotated_to' AS rotated_to, \
    coalesce(u.use_count, 0) AS uses, extract(epoch FROM u.last_used_at)::bigint AS last_used, \
    u.last_address, extract(epoch FROM k.created_at)::bigint AS created_at, \
    extract(epoch FROM k.revoked_at)::bigint AS revoked_at";

fn listed(row: &sqlx::postgres::PgRow) -> Result<Listed, PostgresError> {
    Ok(Listed {
        id: row.try_get("id")?,
        subject: row.try_get("subject")?,
        scopes: row.try_get("scopes")?,
        expires_at: row.try_get("expires_at")?,
        disabled: row.try_get("disabled")?,
        rotated_from: row.try_get("rotated_from")?,
        rotated_to: row.try_get("rotated_to")?,
        uses: row.try_get("uses")?,
        last_used: row.try_get("last_used")?,
        last_address: row.try_get("last_address")?,
        created_at: row.try_get("created_at")?,
        revoked_at: row.try_get("revoked_at")?,
    })
}

/// Every key with its usage, oldest first (digests are not listed).
pub async fn list(pool: &PgPool) -> Result<Vec<Listed>, PostgresError> {
    let query = format!(
        "SELECT {LISTED_COLUMNS} FROM portcullis_api_keys k \
         LEFT JOIN portcullis_api_key_usage u ON u.id = k.id ORDER BY k.created_at, k.id"
    );
    let rows = sqlx::query(&query).fetch_all(pool).await?;
    rows.iter().map(listed).collect()
}

/// One key with its usage and metadata.
pub async fn show(pool: &PgPool, id: &str) -> Result<(Listed, Value), PostgresError> {
    let query = format!(
        "SELECT {LISTED_COLUMNS}, k.metadata FROM portcullis_api_keys k \
         LEFT JOIN portcullis_api_key_usage u ON u.id = k.id WHERE k.id = $1"
    );
    let row = sqlx::query(&query)
        .bind(id)
        .fetch_optional(pool)
        .await?
        .ok_or_else(|| PostgresError::NoSuchKey(id.to_owned()))?;
    let metadata: sqlx::types::Json<Value> = row.try_get("metadata")?;
    Ok((listed(&row)?, metadata.0))
}

/// A row's rate limit columns (the table's checks keep them valid).
fn rate_limit_of(
    row: &sqlx::postgres::PgRow,
) -> Result<Option<crate::config::RateLimit>, PostgresError> {
    let per_second: Option<f64> = row.try_get("rate_limit_per_second")?;
    let burst: Option<i32> = row.try_get("rate_limit_burst")?;
    Ok(per_second.zip(burst).and_then(|(per_second, burst)| {
        Some(crate::config::RateLimit {
            per_second,
            burst: u32::try_from(burst).ok().filter(|b| *b > 0)?,
        })
    }))
}

/// The INSERT statement `keys generate` prints for a record.
pub fn insert_statement(sha256_hex: &str, record: &ApiKeyRecord) -> String {
    let quote = |s: &str| format!("'{}'", s.replace('\'', "''"));
    let scopes = format!(
        "ARRAY[{}]::text[]",
        record
            .scopes
            .iter()
            .map(|s| quote(s))
            .collect::<Vec<_>>()
            .join(", ")
    );
    let expires = record
        .expires_at
        .map(|t| format!("to_timestamp({t})"))
        .unwrap_or_else(|| "NULL".to_owned());
    let metadata = quote(&Value::Object(record.metadata.clone()).to_string());
    let (per_second, burst) = record
        .rate_limit
        .map_or(("NULL".to_owned(), "NULL".to_owned()), |l| {
            (l.per_second.to_string(), l.burst.to_string())
        });
    format!(
        "INSERT INTO portcullis_api_keys (id, sha256, subject, scopes, expires_at, disabled, metadata, rate_limit_per_second, rate_limit_burst) VALUES ({}, {}, {}, {scopes}, {expires}, {}, {metadata}::jsonb, {per_second}, {burst});",
        quote(&record.id),
        quote(sha256_hex),
        quote(&record.subject),
        record.disabled,
    )
}

type Entry = Option<Arc<ApiKeyRecord>>;

struct EntryTtl {
    positive: Duration,
    negative: Duration,
}

impl moka::Expiry<[u8; 32], Entry> for EntryTtl {
    fn expire_after_create(&self, _: &[u8; 32], value: &Entry, _: Instant) -> Option<Duration> {
        Some(if value.is_some() {
            self.positive
        } else {
            self.negative
        })
    }
}

/// One replica's view of the shared store.
pub struct PostgresStore {
    settings: PostgresConfig,
    usage_flush_interval: Duration,
    pool: PgPool,
    /// Uses of this store's keys not written yet.
    usage: Arc<UsageTracker>,
    /// Keys (not disabled) expiring within 7 and 30 days, as last counted by the usage task.
    expiring: Arc<[AtomicU64; 2]>,
    usage_task: Option<JoinHandle<()>>,
    cache: Cache<[u8; 32], Entry>,
    /// Bumped by every notification, so a lookup racing a revocation does not cache stale data.
    generation: Arc<AtomicU64>,
    listener: Option<JoinHandle<()>>,
    /// True once the listener has LISTENed (revocations are seen from then on).
    ready: Arc<watch::Sender<bool>>,
}

impl std::fmt::Debug for PostgresStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PostgresStore").finish_non_exhaustive()
    }
}

impl Drop for PostgresStore {
    fn drop(&mut self) {
        if let Some(listener) = &self.listener {
            listener.abort();
        }
        if let Some(task) = &self.usage_task {
            task.abort();
        }
        // A replaced store's last uses are logged rather than lost.
        usage::log_activity(usage::POSTGRES_STORE, &self.usage.drain());
    }
}

impl PostgresStore {
    /// A store over a lazily connected pool. With `listen`, a task LISTENs for changes and
    /// another writes usage every `usage_flush_interval` (needs a tokio runtime).
    pub fn new(
        settings: &PostgresConfig,
        url: &str,
        max_entries: u64,
        listen: bool,
        usage_flush_interval: Duration,
    ) -> Result<Arc<Self>, PostgresError> {
        let pool = lazy_pool(url, settings.max_connections, settings.timeout)?;
        let cache = Cache::builder()
            .max_capacity(max_entries)
            .expire_after(EntryTtl {
                positive: settings.cache_ttl,
                negative: settings.negative_cache_ttl,
            })
            .build();
        let generation = Arc::new(AtomicU64::new(0));
        let ready = Arc::new(watch::channel(false).0);
        let listener = listen.then(|| {
            tokio::spawn(listen_for_changes(
                pool.clone(),
                cache.clone(),
                generation.clone(),
                ready.clone(),
            ))
        });
        let usage = Arc::new(UsageTracker::default());
        let expiring = Arc::new([AtomicU64::new(0), AtomicU64::new(0)]);
        let usage_task = listen.then(|| {
            tokio::spawn(write_usage(
                pool.clone(),
                usage.clone(),
                expiring.clone(),
                usage_flush_interval,
            ))
        });
        Ok(Arc::new(Self {
            settings: settings.clone(),
            usage_flush_interval,
            pool,
            usage,
            expiring,
            usage_task,
            cache,
            generation,
            listener,
            ready,
        }))
    }

    /// Turns true once the store listens for changes; readiness waits for it.
    pub fn ready(&self) -> watch::Receiver<bool> {
        self.ready.subscribe()
    }

    /// Whether this store can serve a new config with these settings as is.
    pub fn same_settings(&self, settings: &PostgresConfig, usage_flush_interval: Duration) -> bool {
        &self.settings == settings && self.usage_flush_interval == usage_flush_interval
    }

    /// Writes the pending usage now (graceful shutdown), within the store's timeout.
    pub async fn flush_usage(&self) {
        let mut batch = self.usage.drain();
        if batch.is_empty() {
            return;
        }
        match tokio::time::timeout(self.settings.timeout, add_usage(&self.pool, &mut batch)).await {
            Ok(Ok(())) => {}
            _ => {
                warn!("cannot write the last API key usage; logging it instead");
                usage::log_activity(usage::POSTGRES_STORE, &batch);
            }
        }
    }

    /// Where uses of this store's keys are counted.
    pub fn usage(&self) -> &UsageTracker {
        &self.usage
    }

    /// Keys expiring within 7 and within 30 days (not disabled), as last counted.
    pub fn expiring(&self) -> [u64; 2] {
        [
            self.expiring[0].load(Ordering::Relaxed),
            self.expiring[1].load(Ordering::Relaxed),
        ]
    }

    /// The record for a digest: from the cache, else from the database.
    pub async fn get(&self, digest: &[u8; 32]) -> Result<Entry, PostgresError> {
        if let Some(entry) = self.cache.get(digest) {
            return Ok(entry);
        }
        let generation = self.generation.load(Ordering::SeqCst);
        let query = sqlx::query(
            "SELECT id, subject, scopes, extract(epoch FROM expires_at)::bigint AS expires_at, disabled, metadata, rate_limit_per_second, rate_limit_burst FROM portcullis_api_keys WHERE sha256 = $1",
        )
        .bind(format::hex(digest))
        .fetch_optional(&self.pool);
        let span = tracing::info_span!(
            "db_lookup",
            db.system = "postgresql",
            db.table = "portcullis_api_keys"
        );
        let row = tracing::Instrument::instrument(
            tokio::time::timeout(self.settings.timeout, query),
            span,
        )
        .await
        .map_err(|_| PostgresError::Timeout(self.settings.timeout))??;
        let entry = match row {
            None => None,
            Some(row) => {
                let metadata: sqlx::types::Json<Value> = row.try_get("metadata")?;
                Some(Arc::new(ApiKeyRecord {
                    id: row.try_get("id")?,
                    subject: row.try_get("subject")?,
                    scopes: row.try_get("scopes")?,
                    expires_at: row.try_get("expires_at")?,
                    disabled: row.try_get("disabled")?,
                    metadata: match metadata.0 {
                        Value::Object(map) => map,
                        _ => Default::default(),
                    },
                    rate_limit: rate_limit_of(&row)?,
                }))
            }
        };
        if self.generation.load(Ordering::SeqCst) == generation {
            self.cache.insert(*digest, entry.clone());
        }
        Ok(entry)
    }
}

/// Every `interval`: writes the pending usage in one statement (put back if it fails, to be
/// written next time), then counts the keys near expiry.
async fn write_usage(
    pool: PgPool,
    usage: Arc<UsageTracker>,
    expiring: Arc<[AtomicU64; 2]>,
    interval: Duration,
) {
    let mut ticks = tokio::time::interval(interval);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    ticks.tick().await;
    loop {
        ticks.tick().await;
        let mut batch = usage.drain();
        if !batch.is_empty()
            && let Err(err) = add_usage(&pool, &mut batch).await
        {
            warn!(error = %err, keys = batch.len(), "cannot write API key usage; keeping it for the next attempt");
            usage.restore(batch);
        }
        match count_expiring(&pool).await {
            Ok(counts) => {
                for (gauge, count) in expiring.iter().zip(counts) {
                    gauge.store(count, Ordering::Relaxed);
                }
            }
            Err(err) => debug!(error = %err, "cannot count API keys near expiry"),
        }
    }
}

/// Adds a batch of usage to `portcullis_api_key_usage`, in one statement. Rows are written
/// in id order, so replicas writing at once lock them in the same order (no deadlock).
pub async fn add_usage(
    pool: &PgPool,
    batch: &mut [(Box<str>, Activity)],
) -> Result<(), PostgresError> {
    batch.sort_unstable_by(|a, b| a.0.cmp(&b.0));
    let ids: Vec<&str> = batch.iter().map(|(id, _)| &**id).collect();
    let uses: Vec<i64> = batch
        .iter()
        .map(|(_, a)| i64::try_from(a.uses).unwrap_or(i64::MAX))
        .collect();
    let last_used: Vec<f64> = batch.iter().map(|(_, a)| a.last_used as f64).collect();
    let addresses: Vec<Option<String>> = batch
        .iter()
        .map(|(_, a)| a.last_address.map(|ip| ip.to_string()))
        .collect();
    sqlx::query(
        "INSERT INTO portcullis_api_key_usage AS u (id, use_count, last_used_at, last_address)          SELECT b.id, b.uses, to_timestamp(b.last_used), b.address          FROM unnest($1::text[], $2::bigint[], $3::float8[], $4::text[]) AS b(id, uses, last_used, address)          WHERE EXISTS (SELECT 1 FROM portcullis_api_keys k WHERE k.id = b.id)          ON CONFLICT (id) DO UPDATE SET            use_count = u.use_count + EXCLUDED.use_count,            last_address = CASE WHEN u.last_used_at IS NULL OR EXCLUDED.last_used_at >= u.last_used_at                                THEN coalesce(EXCLUDED.last_address, u.last_address) ELSE u.last_address END,            last_used_at = greatest(u.last_used_at, EXCLUDED.last_used_at)",
    )
    .bind(ids)
    .bind(uses)
    .bind(last_used)
    .bind(addresses)
    .execute(pool)
    .await?;
    Ok(())
}

/// Keys (not disabled) expiring within 7 and within 30 days.
async fn count_expiring(pool: &PgPool) -> Result<[u64; 2], PostgresError> {
    let row = sqlx::query(
        "SELECT count(*) FILTER (WHERE expires_at <= now() + interval '7 days') AS week,                 count(*) AS month          FROM portcullis_api_keys          WHERE NOT disabled AND NOT metadata ? 'rotated_to' \
           AND expires_at > now() AND expires_at <= now() + interval '30 days'",
    )
    .fetch_one(pool)
    .await?;
    let count = |name: &str| -> Result<u64, PostgresError> {
        let value: i64 = row.try_get(name)?;
        Ok(u64::try_from(value).unwrap_or(0))
    };
    Ok([count("week")?, count("month")?])
}

/// Keeps a LISTEN connection open for as long as the store lives, reconnecting after losses.
async fn listen_for_changes(
    pool: PgPool,
    cache: Cache<[u8; 32], Entry>,
    generation: Arc<AtomicU64>,
    ready: Arc<watch::Sender<bool>>,
) {
    // Every connection after the first follows a loss, during which notifications were missed.
    let mut reconnecting = false;
    loop {
        let mut listener = match PgListener::connect_with(&pool).await {
            Ok(listener) => listener,
            Err(err) => {
                debug!(error = %err, "API key listener cannot connect; retrying");
                reconnecting = true;
                tokio::time::sleep(Duration::from_millis(250)).await;
                continue;
            }
        };
        if let Err(err) = listener.listen(CHANNEL).await {
            debug!(error = %err, "API key listener cannot LISTEN; retrying");
            reconnecting = true;
            tokio::time::sleep(Duration::from_millis(250)).await;
            continue;
        }
        if reconnecting {
            // Notifications sent while we were away are gone: forget everything cached.
            generation.fetch_add(1, Ordering::SeqCst);
            cache.invalidate_all();
            info!("API key listener reconnected; cache cleared");
        }
        reconnecting = true;
        ready.send_replace(true);
        loop {
            match listener.try_recv().await {
                Ok(Some(notification)) => {
                    generation.fetch_add(1, Ordering::SeqCst);
                    match format::parse_hex_digest(notification.payload()) {
                        Some(digest) => cache.invalidate(&digest),
                        None => cache.invalidate_all(),
                    }
                }
                Ok(None) => {
                    warn!("API key listener lost its connection; reconnecting");
                    break;
                }
                Err(err) => {
                    warn!(error = %err, "API key listener failed; reconnecting");
                    break;
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
