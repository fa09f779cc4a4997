//! The revocation list in PostgreSQL (`portcullis_token_revocations`, see `migrations/`):
//! writing a revocation (`portcullis tokens revoke`), and following the list from a replica.
//!
//! A trigger sends `NOTIFY portcullis_token_revocations, '<id>'` for each new row. The
//! follower uses one connection for everything: it LISTENs first, then reads the whole list
//! on it, so nothing inserted meanwhile is missed, and a connection that fails is dropped
//! whole (no pooled connection outlives it). On a notification it reads that row and every row newer than the newest it has
//! (ids can commit out of order, so the notified id is read by itself too). Every
//! `resync_interval`, and after a lost connection, it reads the whole list again, which also
//! drops expired entries; a resync that finds rows no notification announced reconnects the
//! listener. A connection can die without failing (a peer gone without a reset), so every
//! five seconds the listening connection must answer a query within `timeout`, or it is
//! replaced and the list read again. Failures keep the last list in force and are retried.

use std::{sync::Arc, time::Duration};

use arc_swap::ArcSwapOption;
use sqlx::{
    Row,
    postgres::{PgListener, PgPool, PgPoolOptions, PgRow},
};
use tokio::sync::watch;
use tracing::{info, warn};

use super::{Denylist, Revocation};
use crate::{config::RevocationConfig, keys::api_keys::postgres::connect_options};

/// The NOTIFY channel the trigger and the followers agree on.
pub const CHANNEL: &str = "portcullis_token_revocations";

/// Database problems; messages never contain the URL or its password.
#[derive(Debug, thiserror::Error)]
pub enum RevocationError {
    #[error("invalid database URL: not a valid postgres:// URL")]
    Url,
    #[error("database error: {0}")]
    Database(#[from] sqlx::Error),
    #[error("database did not answer within {0:?}")]
    Timeout(Duration),
}

/// A small pool that connects on first use.
pub fn pool(url: &str, timeout: Duration) -> Result<PgPool, RevocationError> {
    let options = connect_options(url).map_err(|_| RevocationError::Url)?;
    Ok(PgPoolOptions::new()
        .max_connections(2)
        .acquire_timeout(timeout)
        .connect_lazy_with(options))
}

const COLUMNS: &str =
    "id, jti, subject, issuer, extract(epoch FROM issued_before)::bigint AS issued_before";

/// A row as a revocation (None: a row the constraints should have refused).
fn revocation(row: &PgRow) -> Result<(i64, Option<Revocation>), sqlx::Error> {
    let id: i64 = row.try_get("id")?;
    let jti: Option<String> = row.try_get("jti")?;
    let subject: Option<String> = row.try_get("subject")?;
    let issuer: Option<String> = row.try_get("issuer")?;
    let issued_before: Option<i64> = row.try_get("issued_before")?;
    let revocation = match (jti, subject, issued_before) {
        (Some(jti), None, _) => Some(Revocation::Token { jti, issuer }),
        (None, Some(subject), Some(issued_before)) => Some(Revocation::Subject {
            subject,
            issuer,
            issued_before,
        }),
        _ => None,
    };
    Ok((id, revocation))
}

/// Every revocation still in force, and the newest id.
async fn load_all(
    connection: &mut PgListener,
    timeout: Duration,
) -> Result<(Denylist, i64), RevocationError> {
    let query = format!(
        "SELECT {COLUMNS} FROM portcullis_token_revocations WHERE expires_at > now() ORDER BY id"
    );
    let rows = tokio::time::timeout(timeout, sqlx::query(&query).fetch_all(connection))
        .await
        .map_err(|_| RevocationError::Timeout(timeout))??;
    let mut list = Denylist::default();
    let mut newest = 0;
    for row in &rows {
        let (id, revocation) = revocation(row)?;
        newest = newest.max(id);
        list.extend(revocation);
    }
    Ok((list, newest))
}

/// The row `notified` and every row newer than `newest`.
async fn load_new(
    connection: &mut PgListener,
    timeout: Duration,
    newest: i64,
    notified: Option<i64>,
) -> Result<Vec<(i64, Option<Revocation>)>, RevocationError> {
    let query = format!(
        "SELECT {COLUMNS} FROM portcullis_token_revocations WHERE (id > $1 OR id = $2) AND expires_at > now() ORDER BY id"
    );
    let rows = tokio::time::timeout(
        timeout,
        sqlx::query(&query)
            .bind(newest)
            .bind(notified.unwrap_or(newest))
            .fetch_all(connection),
    )
    .await
    .map_err(|_| RevocationError::Timeout(timeout))??;
    rows.iter()
        .map(revocation)
        .collect::<Result<_, _>>()
        .map_err(Into::into)
}

/// How often the listening connection is asked to answer (at most; `resync_interval` if
/// shorter).
const LIVENESS_INTERVAL: Duration = Duration::from_secs(5);

/// What woke the follower.
enum Event {
    Received(Result<Option<sqlx::postgres::PgNotification>, sqlx::Error>),
    Resync,
    Liveness,
}

/// Keeps `current` equal to the database's list for as long as the task lives.
pub(super) async fn follow(
    pool: PgPool,
    settings: RevocationConfig,
    current: Arc<ArcSwapOption<Denylist>>,
    ready: Arc<watch::Sender<bool>>,
) {
    let retry = Duration::from_millis(250);
    loop {
        let mut listener = match PgListener::connect_with(&pool).await {
            Ok(listener) => listener,
            Err(err) => {
                warn!(error = %err, "revocation follower cannot connect; retrying");
                tokio::time::sleep(retry).await;
                continue;
            }
        };
        if let Err(err) = listener.listen(CHANNEL).await {
            warn!(error = %err, "revocation follower cannot LISTEN; retrying");
            tokio::time::sleep(retry).await;
            continue;
        }
        let mut newest = match load_all(&mut listener, settings.timeout).await {
            Ok((list, newest)) => {
                info!(revocations = list.len(), "token revocation list loaded");
                current.store(Some(Arc::new(list)));
                ready.send_replace(true);
                newest
            }
            Err(err) => {
                warn!(error = %err, "cannot load the token revocation list (run `portcullis keys migrate`?); retrying");
                tokio::time::sleep(retry).await;
                continue;
            }
        };
        let mut resync = tokio::time::interval(settings.resync_interval);
        resync.tick().await;
        let mut liveness = tokio::time::interval(LIVENESS_INTERVAL.min(settings.resync_interval));
        liveness.tick().await;
        loop {
            let event = tokio::select! {
                received = listener.try_recv() => Event::Received(received),
                _ = resync.tick() => Event::Resync,
                _ = liveness.tick() => Event::Liveness,
            };
            let outcome = match event {
                Event::Received(Ok(Some(notification))) => {
                    let notified = notification.payload().parse::<i64>().ok();
                    apply_new(&mut listener, &settings, &current, &mut newest, notified).await
                }
                Event::Received(Ok(None)) => Err("the connection was lost".to_owned()),
                Event::Received(Err(err)) => Err(err.to_string()),
                Event::Resync => match load_all(&mut listener, settings.timeout).await {
                    Ok((list, latest)) => {
                        current.store(Some(Arc::new(list)));
                        let missed = latest > newest;
                        newest = latest;
                        if missed {
                            // Rows were added that no notification announced: the LISTEN
                            // connection may be dead without having failed.
                            Err("revocations arrived without a notification".to_owned())
                        } else {
                            Ok(())
                        }
                    }
                    Err(err) => Err(err.to_string()),
                },
                // A LISTEN connection can die without failing (a peer gone without a
                // reset): it then never delivers again. A query on it must answer.
                Event::Liveness => {
                    let ping = sqlx::query("SELECT 1").execute(&mut listener);
                    match tokio::time::timeout(settings.timeout, ping).await {
                        Ok(Ok(_)) => Ok(()),
                        Ok(Err(err)) => Err(err.to_string()),
                        Err(_) => Err("the listening connection did not answer".to_owned()),
                    }
                }
            };
            if let Err(err) = outcome {
                // The last list stays in force; reconnecting reads the whole list again.
                warn!(error = %err, "revocation follower failed; reconnecting");
                break;
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Reads and adds new revocations to the list in force.
async fn apply_new(
    connection: &mut PgListener,
    settings: &RevocationConfig,
    current: &ArcSwapOption<Denylist>,
    newest: &mut i64,
    notified: Option<i64>,
) -> Result<(), String> {
    let rows = load_new(connection, settings.timeout, *newest, notified)
        .await
        .map_err(|err| err.to_string())?;
    if rows.is_empty() {
        return Ok(());
    }
    let mut list = current
        .load_full()
        .map(|l| (*l).clone())
        .unwrap_or_default();
    for (id, revocation) in rows {
        *newest = (*newest).max(id);
        list.extend(revocation);
    }
    current.store(Some(Arc::new(list)));
    Ok(())
}

/// Stores a revocation that ends `retention` from now, and drops the expired ones. Returns
/// the new entry's id.
pub async fn revoke(
    pool: &PgPool,
    revocation: &Revocation,
    retention: Duration,
) -> Result<i64, RevocationError> {
    let retention_seconds = i64::try_from(retention.as_secs()).unwrap_or(i64::MAX);
    let mut transaction = pool.begin().await?;
    sqlx::query("DELETE FROM portcullis_token_revocations WHERE expires_at <= now()")
        .execute(&mut *transaction)
        .await?;
    let (jti, subject, issuer, issued_before) = match revocation {
        Revocation::Token { jti, issuer } => (Some(jti), None, issuer, None),
        Revocation::Subject {
            subject,
            issuer,
            issued_before,
        } => (None, Some(subject), issuer, Some(*issued_before)),
    };
    let id: i64 = sqlx::query_scalar(
        "INSERT INTO portcullis_token_revocations (jti, subject, issuer, issued_before, expires_at) \
         VALUES ($1, $2, $3, to_timestamp($4), \
                 greatest(now(), coalesce(to_timestamp($4), now())) + make_interval(secs => $5)) RETURNING id",
    )
    .bind(jti)
    .bind(subject)
    .bind(issuer)
    .bind(issued_before.map(|seconds| seconds as f64))
    .bind(retention_seconds as f64)
    .fetch_one(&mut *transaction)
    .await?;
    transaction.commit().await?;
    Ok(id)
}
