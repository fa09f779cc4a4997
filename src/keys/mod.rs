//! Key material the verifiers use, and where it comes from: static sets built from files or
//! secrets at config load, remote JWKS documents fetched and cached in the background, API key
//! stores (file and PostgreSQL) and the htpasswd file behind HTTP Basic.

pub mod api_keys;
pub mod htpasswd;
pub mod jwks;

use std::sync::Arc;

use crate::{decision::Denial, jwt::KeySet};

pub use jwks::{FetchStats, RemoteKeySource};

/// Where an issuer's keys come from.
#[derive(Debug, Clone)]
pub enum KeySource {
    /// Built once from files or a secret; replaced by a config reload.
    Static(Arc<KeySet>),
    /// Fetched from an OIDC provider or a `jwks_uri` and refreshed in the background.
    Remote(Arc<RemoteKeySource>),
}

impl KeySource {
    /// The key set to verify with now.
    pub fn current(&self) -> Result<Arc<KeySet>, Denial> {
        match self {
            KeySource::Static(keys) => Ok(keys.clone()),
            KeySource::Remote(remote) => remote.current(),
        }
    }
}
