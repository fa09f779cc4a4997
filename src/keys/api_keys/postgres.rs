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

use super::{ApiKeyRecord, format};
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
        "INSERT INTO portcullis_api_keys (id, sha256, subject, scopes, expires_at, metadata) \
         SELECT $2, $3, subject, scopes, now() + make_interval(secs => $4::double precision), \
                metadata || jsonb_build_object('rotated_from', id) \
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
}

/// Every key, oldest first (digests are not listed).
pub async fn list(pool: &PgPool) -> Result<Vec<Listed>, PostgresError> {
    let rows = sqlx::query(
        "SELECT id, subject, scopes, extract(epoch FROM expires_at)::bigint AS expires_at, \
                disabled, metadata->>'rotated_from' AS rotated_from, \
                metadata->>'rotated_to' AS rotated_to \
         FROM portcullis_api_keys ORDER BY created_at, id",
    )
    .fetch_all(pool)
    .await?;
    rows.iter()
        .map(|row| {
            Ok(Listed {
                id: row.try_get("id")?,
                subject: row.try_get("subject")?,
                scopes: row.try_get("scopes")?,
                expires_at: row.try_get("expires_at")?,
                disabled: row.try_get("disabled")?,
                rotated_from: row.try_get("rotated_from")?,
                rotated_to: row.try_get("rotated_to")?,
            })
        })
        .collect()
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
    format!(
        "INSERT INTO portcullis_api_keys (id, sha256, subject, scopes, expires_at, disabled, metadata) VALUES ({}, {}, {}, {scopes}, {expires}, {}, {metadata}::jsonb);",
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
    pool: PgPool,
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
    }
}

impl PostgresStore {
    /// A store over a lazily connected pool. With `listen`, a task LISTENs for changes (needs
    /// a tokio runtime).
    pub fn new(
        settings: &PostgresConfig,
        url: &str,
        max_entries: u64,
        listen: bool,
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
        Ok(Arc::new(Self {
            settings: settings.clone(),
            pool,
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
    pub fn same_settings(&self, settings: &PostgresConfig) -> bool {
        &self.settings == settings
    }

    /// The record for a digest: from the cache, else from the database.
    pub async fn get(&self, digest: &[u8; 32]) -> Result<Entry, PostgresError> {
        if let Some(entry) = self.cache.get(digest) {
            return Ok(entry);
        }
        let generation = self.generation.load(Ordering::SeqCst);
        let query = sqlx::query(
            "SELECT id, subject, scopes, extract(epoch FROM expires_at)::bigint AS expires_at, disabled, metadata FROM portcullis_api_keys WHERE sha256 = $1",
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
                }))
            }
        };
        if self.generation.load(Ordering::SeqCst) == generation {
            self.cache.insert(*digest, entry.clone());
        }
        Ok(entry)
    }
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
