//! API key verification: the format and checksum are checked first (a bad one is
//! MALFORMED_CREDENTIAL with no lookup), then the key's SHA-256 is looked up in the file store
//! and then PostgreSQL. Disabled or revoked: REVOKED; past `expires_at`: EXPIRED; unknown:
//! UNKNOWN_KEY; store unreachable: UPSTREAM_UNAVAILABLE. Each accepted use is counted for
//! the key's usage and activity (see `keys::api_keys::usage`).

use std::{net::IpAddr, sync::Arc, time::Duration};

use tokio::task::JoinHandle;
use tracing::warn;

use super::unix_now;
use crate::{
    decision::{CredentialType, Denial, Principal, Reason},
    keys::api_keys::{
        ApiKeyRecord,
        file::FileStore,
        format,
        postgres::PostgresStore,
        usage::{self, UsageTracker},
    },
};

/// Issuer name reported for keys from the file store.
pub const FILE_ISSUER: &str = usage::FILE_STORE;
/// Issuer name reported for keys from PostgreSQL.
pub const POSTGRES_ISSUER: &str = usage::POSTGRES_STORE;

/// The configured API key stores.
#[derive(Debug)]
pub struct ApiKeyVerifier {
    pub prefix: String,
    pub file: Option<Arc<FileStore>>,
    pub postgres: Option<Arc<PostgresStore>>,
    /// Uses of the file's keys, logged every `usage_flush_interval`.
    pub file_usage: Option<FileUsage>,
}

/// The file store's usage: counted like PostgreSQL's, written as log lines by a task; what
/// is pending when the configuration is replaced is logged then.
#[derive(Debug)]
pub struct FileUsage {
    tracker: Arc<UsageTracker>,
    task: JoinHandle<()>,
}

impl FileUsage {
    /// Starts the task that logs the pending usage every `interval` (needs a tokio runtime).
    pub fn start(interval: Duration) -> Self {
        let tracker = Arc::new(UsageTracker::default());
        let pending = tracker.clone();
        let task = tokio::spawn(async move {
            let mut ticks = tokio::time::interval(interval);
            ticks.tick().await;
            loop {
                ticks.tick().await;
                usage::log_activity(FILE_ISSUER, &pending.drain());
            }
        });
        Self { tracker, task }
    }
}

impl Drop for FileUsage {
    fn drop(&mut self) {
        self.task.abort();
        usage::log_activity(FILE_ISSUER, &self.tracker.drain());
    }
}

impl ApiKeyVerifier {
    /// Verifies `key`, presented from `client` (counted as the key's last address).
    pub async fn verify(
        &self,
        key: &str,
        client: Option<IpAddr>,
    ) -> Result<Arc<Principal>, Denial> {
        format::check(key, &self.prefix)
            .map_err(|err| Denial::new(Reason::MalformedCredential, err.to_string()))?;
        let digest = format::digest(key);
        let found = match self.file.as_ref().and_then(|file| file.get(&digest)) {
            Some(record) => Some((record, FILE_ISSUER)),
            None => match &self.postgres {
                Some(store) => store
                    .get(&digest)
                    .await
                    .map_err(|err| {
                        warn!(error = %err, "API key store unavailable");
                        Denial::new(
                            Reason::UpstreamUnavailable,
                            "the API key store is unavailable",
                        )
                    })?
                    .map(|record| (record, POSTGRES_ISSUER)),
                None => None,
            },
        };
        let (record, issuer) =
            found.ok_or_else(|| Denial::new(Reason::UnknownKey, "unknown API key"))?;
        let now = unix_now();
        check_record(&record, now)?;
        let tracker = match issuer {
            FILE_ISSUER => self.file_usage.as_ref().map(|usage| &*usage.tracker),
            _ => self.postgres.as_deref().map(PostgresStore::usage),
        };
        if let Some(tracker) = tracker {
            tracker.record(&record.id, now, client);
        }
        Ok(Arc::new(
            Principal::new(
                record.subject.clone(),
                issuer.into(),
                CredentialType::ApiKey,
                record.metadata.clone(),
                record.scopes.clone(),
                record.expires_at,
                record.id.as_str().into(),
            )
            .with_rate_limit(record.rate_limit),
        ))
    }
}

impl ApiKeyVerifier {
    /// Per store, the keys (not disabled) expiring within 7 and within 30 days: counted in
    /// the file now, and as last counted by PostgreSQL's usage task.
    pub fn expiring(&self) -> Vec<(&'static str, [u64; 2])> {
        let mut stores = Vec::new();
        if let Some(file) = &self.file {
            let now = unix_now();
            let within = |days: i64| {
                file.records()
                    .filter(|(_, r)| !r.disabled)
                    .filter_map(|(_, r)| r.expires_at)
                    .filter(|at| *at > now && *at <= now + days * 86_400)
                    .count() as u64
            };
            stores.push((FILE_ISSUER, [within(7), within(30)]));
        }
        if let Some(store) = &self.postgres {
            stores.push((POSTGRES_ISSUER, store.expiring()));
        }
        stores
    }
}

fn check_record(record: &ApiKeyRecord, now: i64) -> Result<(), Denial> {
    if record.disabled {
        return Err(Denial::new(
            Reason::Revoked,
            "API key is disabled or revoked",
        ));
    }
    if record.expires_at.is_some_and(|exp| exp <= now) {
        return Err(Denial::new(Reason::Expired, "API key has expired"));
    }
    Ok(())
}
