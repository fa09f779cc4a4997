//! JWT revocation (`revocation`): a denylist of revoked tokens, by `jti` or by subject
//! ("every token of this subject issued before T", optionally of one issuer), checked on
//! every request that presents a JWT, verification-cache hits included.
//!
//! The list lives in PostgreSQL ([`postgres`]). Each replica holds it in memory as a
//! [`Denylist`] snapshot, swapped atomically: a lookup is two hash probes, none when the
//! list is empty. A task LISTENs for new revocations and reads them within a second; the
//! whole list is read again every `resync_interval` and after a lost connection. While the
//! database is unreachable the last list keeps applying. Until the first load has
//! completed, JWTs are refused (UPSTREAM_UNAVAILABLE): no revoked token gets through a
//! start or a change of database.

pub mod postgres;

use std::{collections::HashMap, sync::Arc};

use arc_swap::ArcSwapOption;
use serde_json::Value;
use tokio::{sync::watch, task::JoinHandle};

use crate::{
    config::RevocationConfig,
    decision::{CredentialType, Denial, Principal, Reason},
};

/// One revocation, as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Revocation {
    /// The token with this `jti` (of `issuer` only, when given).
    Token { jti: String, issuer: Option<String> },
    /// Every token of `subject` (of `issuer` only, when given) issued before
    /// `issued_before` (seconds since the epoch).
    Subject {
        subject: String,
        issuer: Option<String>,
        issued_before: i64,
    },
}

/// The configured issuer name a revocation is limited to (`None`: every issuer).
type IssuerScope = Option<Box<str>>;

/// The revocations in force, indexed for O(1) lookups.
#[derive(Debug, Default, Clone)]
pub struct Denylist {
    /// `jti` -> the issuers it is revoked for.
    tokens: HashMap<Box<str>, Vec<IssuerScope>>,
    /// subject -> (issuers, revoked when issued before this).
    subjects: HashMap<Box<str>, Vec<(IssuerScope, i64)>>,
}

impl Denylist {
    pub fn is_empty(&self) -> bool {
        self.tokens.is_empty() && self.subjects.is_empty()
    }

    /// How many revocations it holds.
    pub fn len(&self) -> usize {
        self.tokens.values().map(Vec::len).sum::<usize>()
            + self.subjects.values().map(Vec::len).sum::<usize>()
    }

    /// Adds a revocation; one already held is not added twice (a notified row can be read
    /// again with the rows after it).
    pub fn insert(&mut self, revocation: Revocation) {
        fn push_new<T: PartialEq>(entries: &mut Vec<T>, entry: T) {
            if !entries.contains(&entry) {
                entries.push(entry);
            }
        }
        match revocation {
            Revocation::Token { jti, issuer } => push_new(
                self.tokens.entry(jti.into()).or_default(),
                issuer.map(Into::into),
            ),
            Revocation::Subject {
                subject,
                issuer,
                issued_before,
            } => push_new(
                self.subjects.entry(subject.into()).or_default(),
                (issuer.map(Into::into), issued_before),
            ),
        }
    }

    /// Whether a token with these claims, accepted by the issuer named `issuer`, is revoked.
    /// A subject-wide revocation cannot tell when a token without `iat` was issued, so it
    /// revokes it.
    pub fn revokes(&self, issuer: &str, subject: &str, claims: &crate::claims::Claims) -> bool {
        let applies =
            |revoked_for: &IssuerScope| revoked_for.as_deref().is_none_or(|name| name == issuer);
        // A numeric `jti` is revoked by its decimal text (`tokens revoke --jti 42`).
        let jti = match claims.get("jti") {
            Some(Value::String(jti)) => Some(jti),
            Some(Value::Number(jti)) => Some(jti.to_string()),
            _ => None,
        };
        if let Some(jti) = jti
            && let Some(issuers) = self.tokens.get(jti.as_str())
            && issuers.iter().any(applies)
        {
            return true;
        }
        let Some(entries) = self.subjects.get(subject) else {
            return false;
        };
        let issued_at = claims.get("iat").as_ref().and_then(Value::as_f64);
        entries.iter().any(|(revoked_for, before)| {
            applies(revoked_for) && issued_at.is_none_or(|iat| iat < *before as f64)
        })
    }
}

impl Extend<Revocation> for Denylist {
    fn extend<I: IntoIterator<Item = Revocation>>(&mut self, iter: I) {
        iter.into_iter().for_each(|r| self.insert(r));
    }
}

impl FromIterator<Revocation> for Denylist {
    fn from_iter<I: IntoIterator<Item = Revocation>>(iter: I) -> Self {
        let mut list = Denylist::default();
        list.extend(iter);
        list
    }
}

/// One replica's view of the revocations: the snapshot in force (none before the first
/// load) and the task that keeps it current.
pub struct Revocations {
    settings: RevocationConfig,
    current: Arc<ArcSwapOption<Denylist>>,
    ready: Arc<watch::Sender<bool>>,
    task: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for Revocations {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Revocations").finish_non_exhaustive()
    }
}

impl Drop for Revocations {
    fn drop(&mut self) {
        if let Some(task) = &self.task {
            task.abort();
        }
    }
}

impl Revocations {
    /// Starts following the database at `url` (needs a tokio runtime). `seed`: the list a
    /// previous configuration held, in force until this one has loaded its own.
    pub fn start(
        settings: &RevocationConfig,
        url: &str,
        seed: Option<Arc<Denylist>>,
    ) -> Result<Arc<Self>, postgres::RevocationError> {
        let pool = postgres::pool(url, settings.timeout)?;
        let current = Arc::new(ArcSwapOption::new(seed));
        let ready = Arc::new(watch::channel(false).0);
        let task = tokio::spawn(postgres::follow(
            pool,
            settings.clone(),
            current.clone(),
            ready.clone(),
        ));
        Ok(Arc::new(Self {
            settings: settings.clone(),
            current,
            ready,
            task: Some(task),
        }))
    }

    /// A fixed list.
    #[cfg(test)]
    pub fn fixed(settings: &RevocationConfig, list: Denylist) -> Arc<Self> {
        Arc::new(Self {
            settings: settings.clone(),
            current: Arc::new(ArcSwapOption::from_pointee(list)),
            ready: Arc::new(watch::channel(true).0),
            task: None,
        })
    }

    /// Whether this follower can serve a new config with these settings as is.
    pub fn same_settings(&self, settings: &RevocationConfig) -> bool {
        &self.settings == settings
    }

    /// Turns true once the first load has completed; readiness waits for it.
    pub fn ready(&self) -> watch::Receiver<bool> {
        self.ready.subscribe()
    }

    /// The list in force, if one has loaded.
    pub fn snapshot(&self) -> Option<Arc<Denylist>> {
        self.current.load_full()
    }

    /// Refuses a revoked JWT (REVOKED), or any JWT before the list has loaded
    /// (UPSTREAM_UNAVAILABLE). Other credentials are not revoked here.
    pub fn check(&self, principal: &Principal) -> Result<(), Denial> {
        if principal.credential_type != CredentialType::Jwt {
            return Ok(());
        }
        let current = self.current.load();
        let Some(list) = current.as_deref() else {
            return Err(Denial::new(
                Reason::UpstreamUnavailable,
                "the token revocation list has not loaded yet",
            ));
        };
        if !list.is_empty()
            && list.revokes(&principal.issuer, &principal.subject, &principal.claims)
        {
            return Err(Denial::new(Reason::Revoked, "the token was revoked"));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests;
