//! API key verification: the format and checksum are checked first (a bad one is
//! MALFORMED_CREDENTIAL with no lookup), then the key's SHA-256 is looked up in the file store
//! and then PostgreSQL. Disabled or revoked: REVOKED; past `expires_at`: EXPIRED; unknown:
//! UNKNOWN_KEY; store unreachable: UPSTREAM_UNAVAILABLE.

use std::sync::Arc;

use tracing::warn;

use super::unix_now;
use crate::{
    decision::{CredentialType, Denial, Principal, Reason},
    keys::api_keys::{ApiKeyRecord, file::FileStore, format, postgres::PostgresStore},
};

/// Issuer name reported for keys from the file store.
pub const FILE_ISSUER: &str = "api_keys.file";
/// Issuer name reported for keys from PostgreSQL.
pub const POSTGRES_ISSUER: &str = "api_keys.postgres";

/// The configured API key stores.
#[derive(Debug)]
pub struct ApiKeyVerifier {
    pub prefix: String,
    pub file: Option<Arc<FileStore>>,
    pub postgres: Option<Arc<PostgresStore>>,
}

impl ApiKeyVerifier {
    pub async fn verify(&self, key: &str) -> Result<Arc<Principal>, Denial> {
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
        check_record(&record, unix_now())?;
        Ok(Arc::new(Principal::new(
            record.subject.clone(),
            issuer.to_owned(),
            CredentialType::ApiKey,
            record.metadata.clone(),
            record.scopes.clone(),
            record.expires_at,
            record.id.clone(),
        )))
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
