//! HTTP Basic verification (RFC 7617) against the htpasswd file.
//!
//! - Parsing: base64 of `user:password`; the password may contain colons; no colon, invalid
//!   base64 or invalid UTF-8 is MALFORMED_CREDENTIAL.
//! - Throttling: failures are counted per (user, client address) pair and per client
//!   address (an IPv6 client by its /64) in a sliding window (the address as `client_address` decides: forwarded headers
//!   count only from trusted proxies). At `basic.max_failures` for the pair, or
//!   `basic.max_client_failures` for the client, its further attempts are RATE_LIMITED until
//!   old failures leave the window. Nothing is counted per user alone, so failures from
//!   elsewhere never lock the real user out.
//! - bcrypt reads only 72 bytes of a password: longer passwords never match a bcrypt entry
//!   (refused, not truncated).
//! - Cost: bcrypt/argon2 run on the blocking pool. Successful checks are remembered for
//!   `basic.cache_ttl` under HMAC-SHA256(per-process random key, user, password), so a hot
//!   caller does not pay the hash on every call and the cache never holds a password or a
//!   digest that could be attacked offline. Unknown users are checked against a real entry's
//!   hash so that they take as long as known ones.

use std::{
    collections::VecDeque,
    net::IpAddr,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use aws_lc_rs::{hmac, rand::SystemRandom};
use moka::sync::Cache;
use serde_json::{Map, Value};

use crate::{
    config::BasicConfig,
    decision::{CredentialType, Denial, Principal, Reason},
    keys::htpasswd::Htpasswd,
};

/// Issuer name reported for Basic principals.
pub const ISSUER: &str = "basic";

/// Failure timestamps of one user or client.
type Window = Arc<Mutex<VecDeque<Instant>>>;

pub struct BasicVerifier {
    htpasswd: Arc<Htpasswd>,
    key: hmac::Key,
    verified: Cache<[u8; 32], Arc<Principal>>,
    failures: Cache<String, Window>,
    max_failures: usize,
    max_client_failures: usize,
    window: Duration,
}

impl std::fmt::Debug for BasicVerifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BasicVerifier")
            .field("users", &self.htpasswd.len())
            .finish_non_exhaustive()
    }
}

/// The address a client is throttled by: an IPv6 client by its /64 (one host usually holds
/// a whole /64 and could rotate through it), an IPv4 client by its address.
fn throttle_key(address: IpAddr) -> IpAddr {
    match address.to_canonical() {
        IpAddr::V6(v6) => {
            let mut octets = v6.octets();
            octets[8..].fill(0);
            IpAddr::V6(octets.into())
        }
        v4 => v4,
    }
}

impl BasicVerifier {
    pub fn new(
        htpasswd: Htpasswd,
        config: &BasicConfig,
        max_entries: u64,
        max_ttl: Duration,
    ) -> Result<Self, String> {
        let key = hmac::Key::generate(hmac::HMAC_SHA256, &SystemRandom::new())
            .map_err(|_| "the system random number generator failed".to_owned())?;
        Ok(Self {
            htpasswd: Arc::new(htpasswd),
            key,
            verified: Cache::builder()
                .max_capacity(max_entries)
                .time_to_live(config.cache_ttl.min(max_ttl))
                .build(),
            failures: Cache::builder()
                .max_capacity(max_entries)
                .time_to_idle(config.failure_window)
                .build(),
            max_failures: usize::try_from(config.max_failures).unwrap_or(usize::MAX),
            max_client_failures: usize::try_from(config.max_client_failures).unwrap_or(usize::MAX),
            window: config.failure_window,
        })
    }

    fn cache_key(&self, user: &str, password: &str) -> [u8; 32] {
        let mut context = hmac::Context::with_key(&self.key);
        context.update(&(user.len() as u64).to_le_bytes());
        context.update(user.as_bytes());
        context.update(password.as_bytes());
        let mut out = [0u8; 32];
        out.copy_from_slice(context.sign().as_ref());
        out
    }

    /// The failures of one window still inside it at `now` (older ones are dropped).
    fn prune(&self, window: &mut VecDeque<Instant>, now: Instant) -> usize {
        while window
            .front()
            .is_some_and(|t| now.duration_since(*t) >= self.window)
        {
            window.pop_front();
        }
        window.len()
    }

    /// Failures of `who` inside the window.
    fn recent_failures(&self, who: &str, now: Instant) -> usize {
        self.failures.get(who).map_or(0, |window| {
            self.prune(&mut window.lock().unwrap_or_else(|e| e.into_inner()), now)
        })
    }

    /// Reserves one failure slot of `who` (under its lock, so concurrent guesses cannot all
    /// pass the check): false when `limit` failures are already in the window. A slot is
    /// released again when the attempt succeeds.
    fn reserve(&self, who: &str, now: Instant, limit: usize) -> bool {
        let window = self.failures.get_with(who.to_owned(), Window::default);
        let mut window = window.lock().unwrap_or_else(|e| e.into_inner());
        if self.prune(&mut window, now) >= limit {
            return false;
        }
        window.push_back(now);
        true
    }

    /// Gives back a slot reserved at `at` (the attempt succeeded).
    fn release(&self, who: &str, at: Instant) {
        if let Some(window) = self.failures.get(who) {
            let mut window = window.lock().unwrap_or_else(|e| e.into_inner());
            if let Some(position) = window.iter().rposition(|t| *t == at) {
                window.remove(position);
            }
        }
    }

    pub async fn verify(
        &self,
        user: &str,
        password: &str,
        client: Option<IpAddr>,
    ) -> Result<Arc<Principal>, Denial> {
        if user.is_empty() || user.contains(':') {
            return Err(Denial::basic(
                Reason::MalformedCredential,
                "the Basic user name is empty or contains ':'",
            ));
        }
        let now = Instant::now();
        let client = client.map_or_else(String::new, |c| throttle_key(c).to_string());
        // The user name is length-prefixed so no (user, client) pair can spell another.
        let pair_key = format!("pair:{}:{user}:{client}", user.len());
        let client_key = format!("client:{client}");
        let throttled = self.recent_failures(&pair_key, now) >= self.max_failures
            || self.recent_failures(&client_key, now) >= self.max_client_failures;
        if throttled {
            return Err(Denial::basic(
                Reason::RateLimited,
                "too many failed attempts; try again later",
            ));
        }
        let cache_key = self.cache_key(user, password);
        if let Some(principal) = self.verified.get(&cache_key) {
            return Ok(principal);
        }
        // Each attempt that reaches the hash holds a failure slot of its pair and its client
        // until it is known to be right, so a burst of concurrent guesses cannot overshoot.
        if !self.reserve(&pair_key, now, self.max_failures) {
            return Err(Denial::basic(
                Reason::RateLimited,
                "too many failed attempts; try again later",
            ));
        }
        if !self.reserve(&client_key, now, self.max_client_failures) {
            self.release(&pair_key, now);
            return Err(Denial::basic(
                Reason::RateLimited,
                "too many failed attempts; try again later",
            ));
        }
        let htpasswd = self.htpasswd.clone();
        let (owned_user, owned_password) = (user.to_owned(), password.to_owned());
        let valid =
            tokio::task::spawn_blocking(move || htpasswd.verify(&owned_user, &owned_password))
                .await
                .unwrap_or(false);
        if !valid {
            return Err(Denial::basic(
                Reason::InvalidSignature,
                "unknown user or wrong password",
            ));
        }
        self.release(&pair_key, now);
        self.release(&client_key, now);
        let mut claims = Map::new();
        claims.insert("sub".to_owned(), Value::String(user.to_owned()));
        let principal = Arc::new(Principal::new(
            user.to_owned(),
            ISSUER.into(),
            CredentialType::Basic,
            claims,
            Vec::new(),
            None,
            "".into(),
        ));
        self.verified.insert(cache_key, principal.clone());
        Ok(principal)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn successes_are_cached_under_a_keyed_digest_of_user_and_password() {
        let hash = bcrypt::hash("c", 4).unwrap();
        let file = Htpasswd::parse(&format!("ab:{hash}\n")).unwrap();
        let verifier =
            BasicVerifier::new(file, &BasicConfig::default(), 100, Duration::from_secs(60))
                .unwrap();
        assert_ne!(
            verifier.cache_key("ab", "c"),
            verifier.cache_key("a", "bc"),
            "user and password boundaries are part of the key"
        );
        assert!(verifier.verify("ab", "c", None).await.is_ok());
        verifier.verified.run_pending_tasks();
        assert_eq!(verifier.verified.entry_count(), 1, "the success is cached");
        assert!(
            verifier
                .verified
                .contains_key(&verifier.cache_key("ab", "c"))
        );
        assert!(verifier.verify("ab", "wrong", None).await.is_err());
        verifier.verified.run_pending_tasks();
        assert_eq!(
            verifier.verified.entry_count(),
            1,
            "failures are not cached"
        );
    }

    #[test]
    fn ipv6_clients_are_throttled_by_their_64() {
        let a: IpAddr = "2001:db8:1:2:aaaa::1".parse().unwrap();
        let b: IpAddr = "2001:db8:1:2:ffff::9".parse().unwrap();
        let other: IpAddr = "2001:db8:1:3::1".parse().unwrap();
        assert_eq!(throttle_key(a), throttle_key(b));
        assert_ne!(throttle_key(a), throttle_key(other));
        let v4: IpAddr = "192.0.2.7".parse().unwrap();
        assert_eq!(throttle_key(v4), v4);
        let mapped: IpAddr = "::ffff:192.0.2.7".parse().unwrap();
        assert_eq!(throttle_key(mapped), v4);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_burst_of_concurrent_guesses_cannot_overshoot_the_limit() {
        let hash = bcrypt::hash("right", 4).unwrap();
        let file = Htpasswd::parse(&format!("u:{hash}\n")).unwrap();
        let config = BasicConfig {
            max_failures: 3,
            ..BasicConfig::default()
        };
        let verifier =
            Arc::new(BasicVerifier::new(file, &config, 100, Duration::from_secs(60)).unwrap());
        let client: IpAddr = "192.0.2.9".parse().unwrap();
        let guesses: Vec<_> = (0..20)
            .map(|i| {
                let verifier = verifier.clone();
                tokio::spawn(async move {
                    verifier
                        .verify("u", &format!("guess-{i}"), Some(client))
                        .await
                        .unwrap_err()
                        .reason
                })
            })
            .collect();
        let mut checked = 0;
        for guess in guesses {
            if guess.await.unwrap() == Reason::InvalidSignature {
                checked += 1;
            }
        }
        assert_eq!(checked, 3, "only max_failures guesses reach the hash");
        // The right password from this client is throttled too; from another it is not.
        let throttled = verifier.verify("u", "right", Some(client)).await;
        assert_eq!(throttled.unwrap_err().reason, Reason::RateLimited);
        let elsewhere: IpAddr = "192.0.2.10".parse().unwrap();
        assert!(verifier.verify("u", "right", Some(elsewhere)).await.is_ok());
    }
}
