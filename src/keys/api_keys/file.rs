//! The file key store (`api_keys.file`): a YAML document of key records, loaded whole when
//! the pipeline is built. The reloader watches the file's directory, so an edit or a
//! Kubernetes Secret symlink swap builds a new store; a broken file is refused and the old
//! store keeps serving.
//!
//! ```yaml
//! keys:
//!   - id: k_3f9a1c
//!     sha256: 5d41402abc4b2a76b9719d911017c592...   # 64 lower-case hex digits
//!     subject: billing-service
//!     scopes: [orders:read]
//!     expires_at: 2030-01-01T00:00:00Z             # optional, RFC 3339
//!     disabled: false                               # optional
//!     metadata: { team: billing }                   # optional, returned as claims
//! ```

use std::{
    collections::{HashMap, HashSet},
    path::Path,
    sync::Arc,
    time::UNIX_EPOCH,
};

use serde::Deserialize;
use serde_json::{Map, Value};

use super::{ApiKeyRecord, format::parse_hex_digest};

/// Why a key file was refused. Never contains a digest or key.
#[derive(Debug, thiserror::Error)]
pub enum FileStoreError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("{path}: {message}")]
    Invalid { path: String, message: String },
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Document {
    #[serde(default)]
    keys: Vec<Entry>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Entry {
    id: String,
    sha256: String,
    subject: String,
    #[serde(default)]
    scopes: Vec<String>,
    #[serde(default)]
    expires_at: Option<String>,
    #[serde(default)]
    disabled: bool,
    #[serde(default)]
    metadata: Map<String, Value>,
    /// `{rate: 10/s, burst: 20}`: this key's own rate limit.
    #[serde(default)]
    rate_limit: Option<crate::config::LimitConfig>,
}

/// Key records by digest.
#[derive(Debug, Default)]
pub struct FileStore {
    by_digest: HashMap<[u8; 32], Arc<ApiKeyRecord>>,
}

impl FileStore {
    pub fn load(path: &Path) -> Result<Self, FileStoreError> {
        let text = std::fs::read_to_string(path).map_err(|source| FileStoreError::Read {
            path: path.display().to_string(),
            source,
        })?;
        Self::parse(&text).map_err(|message| FileStoreError::Invalid {
            path: path.display().to_string(),
            message,
        })
    }

    /// Parses a key document; errors name the entry (`keys[2]`), never its digest.
    pub fn parse(text: &str) -> Result<Self, String> {
        let document: Document = if text.trim().is_empty() {
            Document { keys: Vec::new() }
        } else {
            serde_norway::from_str(text).map_err(|err| format!("invalid key file: {err}"))?
        };
        let mut by_digest = HashMap::with_capacity(document.keys.len());
        let mut ids = HashSet::new();
        for (i, entry) in document.keys.into_iter().enumerate() {
            let at = |message: &str| format!("keys[{i}]: {message}");
            let digest = parse_hex_digest(&entry.sha256)
                .ok_or_else(|| at("sha256 must be 64 hex digits (the SHA-256 of the key)"))?;
            if entry.id.is_empty() || entry.subject.is_empty() {
                return Err(at("id and subject must not be empty"));
            }
            if !ids.insert(entry.id.clone()) {
                return Err(at("duplicate id"));
            }
            let expires_at = entry
                .expires_at
                .as_deref()
                .map(|text| {
                    humantime::parse_rfc3339_weak(text)
                        .ok()
                        .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
                        .and_then(|d| i64::try_from(d.as_secs()).ok())
                        .ok_or_else(|| at("expires_at must be an RFC 3339 time"))
                })
                .transpose()?;
            let rate_limit = entry
                .rate_limit
                .as_ref()
                .map(|limit| {
                    limit
                        .parse()
                        .map_err(|message| at(&format!("rate_limit: {message}")))
                })
                .transpose()?;
            let record = ApiKeyRecord {
                id: entry.id,
                subject: entry.subject,
                scopes: entry.scopes,
                expires_at,
                disabled: entry.disabled,
                metadata: entry.metadata,
                rate_limit,
            };
            if by_digest.insert(digest, Arc::new(record)).is_some() {
                return Err(at("the same key digest appears twice"));
            }
        }
        Ok(Self { by_digest })
    }

    pub fn get(&self, digest: &[u8; 32]) -> Option<Arc<ApiKeyRecord>> {
        self.by_digest.get(digest).cloned()
    }

    /// Every record with its key's digest, in no particular order.
    pub fn records(&self) -> impl Iterator<Item = (&[u8; 32], &ApiKeyRecord)> {
        self.by_digest
            .iter()
            .map(|(digest, record)| (digest, record.as_ref()))
    }

    pub fn len(&self) -> usize {
        self.by_digest.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_digest.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bad_key_files_are_refused_with_the_entry_named() {
        let digest = "a".repeat(64);
        let cases = [
            (
                "digest too short",
                "keys:\n  - {id: a, sha256: abc, subject: s}\n",
                "keys[0]",
            ),
            (
                "duplicate id",
                &*format!(
                    "keys:\n  - {{id: a, sha256: {digest}, subject: s}}\n  - {{id: a, sha256: {}, subject: s}}\n",
                    "b".repeat(64)
                ),
                "keys[1]",
            ),
            (
                "bad expiry",
                &*format!("keys:\n  - {{id: a, sha256: {digest}, subject: s, expires_at: soon}}\n"),
                "keys[0]",
            ),
            (
                "unknown field",
                "keys:\n  - {id: a, sha256: x, subject: s, colour: red}\n",
                "colour",
            ),
        ];
        for (name, text, expected) in cases {
            let err = FileStore::parse(text).unwrap_err();
            assert!(err.contains(expected), "{name}: {err}");
            assert!(!err.contains(&digest), "{name}: the digest is not echoed");
        }
        let store = FileStore::parse(&format!(
            "keys:\n  - {{id: a, sha256: {digest}, subject: s, expires_at: 2030-01-01T00:00:00Z}}\n"
        ))
        .unwrap();
        assert_eq!(store.len(), 1);
        assert_eq!(
            store.get(&[0xaa; 32]).unwrap().expires_at,
            Some(1_893_456_000)
        );
    }
}
