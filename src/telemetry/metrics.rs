//! Prometheus metrics (SPEC §8), served as text on the admin port at `/metrics`. Names are
//! `portcullis_*` with units; every label value comes from a closed set (surfaces, decisions,
//! reason codes, credential types) or from configuration (issuer and rule names).

use std::sync::OnceLock;

use prometheus_client::{
    encoding::{EncodeLabelSet, EncodeLabelValue, text::encode},
    metrics::{counter::Counter, family::Family, gauge::Gauge, histogram::Histogram},
    registry::{Registry, Unit},
};

use crate::decision::{CredentialType, Reason};

#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq, EncodeLabelValue)]
#[allow(non_camel_case_types)]
pub enum Surface {
    authenticate,
    authorize,
    ext_authz,
    /// The HTTP forward-auth listener (`server.http_listen`).
    forward_auth,
}

impl Surface {
    pub fn as_str(self) -> &'static str {
        match self {
            Surface::authenticate => "authenticate",
            Surface::authorize => "authorize",
            Surface::ext_authz => "ext_authz",
            Surface::forward_auth => "forward_auth",
        }
    }
}

#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq, EncodeLabelValue)]
#[allow(non_camel_case_types)]
pub enum Outcome {
    allow,
    deny,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    pub surface: Surface,
    pub decision: Outcome,
    /// A SPEC reason code, or `none` for an allow.
    pub reason: &'static str,
    /// A SPEC credential type, or `none` when no credential was found.
    pub credential_type: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SurfaceLabels {
    pub surface: Surface,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CacheLabels {
    pub cache: &'static str,
    pub result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct IssuerLabels {
    pub issuer: String,
}

/// An API key store and a horizon (`7d`, `30d`).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ExpiringLabels {
    pub store: String,
    pub within: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct FetchLabels {
    pub issuer: String,
    pub result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResultLabels {
    pub result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct BuildLabels {
    pub version: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ShadowLabels {
    pub rule: String,
    pub decision: Outcome,
}

/// Every metric Portcullis exports. Built once at start-up and handed to what records into
/// it (the pipeline, key sources, the policy, the reloader, load shedding); tests build
/// their own.
pub struct Metrics {
    registry: Registry,
    /// Per-request metrics (requests, latency, cache lookups) on or off
    /// (`telemetry.metrics`); the rare events (fetches, reloads) are always counted.
    per_request: bool,
    pub requests: Family<RequestLabels, Counter>,
    pub request_duration: Family<SurfaceLabels, Histogram>,
    pub cache_lookups: Family<CacheLabels, Counter>,
    /// Set when scraped: entries in the verified-JWT cache, and their estimated memory.
    pub jwt_cache_entries: Gauge,
    pub jwt_cache_bytes: Gauge,
    pub jwks_fetches: Family<FetchLabels, Counter>,
    pub jwks_keys: Family<IssuerLabels, Gauge>,
    pub jwks_key_age: Family<IssuerLabels, Gauge<f64, std::sync::atomic::AtomicU64>>,
    /// Set when scraped: API keys (not disabled) expiring within 7 and 30 days, by store.
    pub api_keys_expiring: Family<ExpiringLabels, Gauge>,
    pub config_reloads: Family<ResultLabels, Counter>,
    pub config_generation: Gauge,
    pub config_last_reload_successful: Gauge,
    pub config_last_reload_success_time: Gauge<f64, std::sync::atomic::AtomicU64>,
    pub requests_in_flight: Gauge,
    pub requests_shed: Counter,
    pub introspection_duration: Family<IssuerLabels, Histogram>,
    pub shadow_decisions: Family<ShadowLabels, Counter>,
    /// The per-request series, resolved once each (see [`RequestSeries`]).
    request_series: RequestSeries,
}

/// Handles of the per-request series, each resolved from its family on first use: recording
/// a request is then an atomic load and an increment, with no label hashing and no lock.
struct RequestSeries {
    /// By surface, outcome, reason (or none) and credential type (or none).
    counters: Box<[OnceLock<Counter>]>,
    /// By surface.
    durations: [OnceLock<Histogram>; SURFACES.len()],
    /// Verified-JWT cache lookups: miss, hit.
    jwt_cache: [OnceLock<Counter>; 2],
}

const SURFACES: [Surface; 4] = [
    Surface::authenticate,
    Surface::authorize,
    Surface::ext_authz,
    Surface::forward_auth,
];

impl RequestSeries {
    const REASONS: usize = Reason::ALL.len() + 1;
    const CREDENTIALS: usize = CredentialType::ALL.len() + 1;

    fn new() -> Self {
        let count = SURFACES.len() * 2 * Self::REASONS * Self::CREDENTIALS;
        Self {
            counters: (0..count).map(|_| OnceLock::new()).collect(),
            durations: [const { OnceLock::new() }; SURFACES.len()],
            jwt_cache: [const { OnceLock::new() }; 2],
        }
    }

    fn surface_index(surface: Surface) -> usize {
        match surface {
            Surface::authenticate => 0,
            Surface::authorize => 1,
            Surface::ext_authz => 2,
            Surface::forward_auth => 3,
        }
    }

    fn counter_index(
        surface: Surface,
        allowed: bool,
        reason: Option<Reason>,
        credential_type: Option<CredentialType>,
    ) -> usize {
        let reason = reason.map_or(0, |reason| {
            1 + Reason::ALL.iter().position(|r| *r == reason).unwrap_or(0)
        });
        let credential = credential_type.map_or(0, |kind| {
            1 + CredentialType::ALL
                .iter()
                .position(|k| *k == kind)
                .unwrap_or(0)
        });
        ((Self::surface_index(surface) * 2 + usize::from(allowed)) * Self::REASONS + reason)
            * Self::CREDENTIALS
            + credential
    }
}

fn latency_histogram() -> Histogram {
    // 25 µs .. ~1.6 s
    Histogram::new(prometheus_client::metrics::histogram::exponential_buckets(
        0.000_025, 2.0, 17,
    ))
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics")
            .field("per_request", &self.per_request)
            .finish_non_exhaustive()
    }
}

impl Metrics {
    /// A registry with every metric at zero; `per_request`: `telemetry.metrics`.
    pub fn new(per_request: bool) -> Self {
        let mut root = Registry::default();
        root.register_collector(Box::new(super::process::ProcessCollector));
        let registry = root.sub_registry_with_prefix("portcullis");
        let build_info = Family::<BuildLabels, Gauge>::default();
        build_info
            .get_or_create(&BuildLabels {
                version: env!("CARGO_PKG_VERSION"),
            })
            .set(1);
        registry.register(
            "build_info",
            "The running build: 1, labelled with its version",
            build_info,
        );
        let requests = Family::default();
        registry.register(
            "requests",
            "Requests by surface, decision, reason and credential type",
            requests.clone(),
        );
        let request_duration = Family::new_with_constructor(latency_histogram as fn() -> Histogram);
        registry.register_with_unit(
            "request_duration",
            "Time to decide one request",
            Unit::Seconds,
            request_duration.clone(),
        );
        let cache_lookups = Family::default();
        registry.register(
            "cache_lookups",
            "Verified-credential cache lookups by cache and result (hit, miss)",
            cache_lookups.clone(),
        );
        let jwt_cache_entries = Gauge::default();
        registry.register(
            "jwt_cache_entries",
            "Verified JWTs cached now (bounded by cache.max_entries)",
            jwt_cache_entries.clone(),
        );
        let jwt_cache_bytes = Gauge::default();
        registry.register_with_unit(
            "jwt_cache",
            "Estimated memory of the verified-JWT cache (bounded by cache.max_bytes)",
            Unit::Bytes,
            jwt_cache_bytes.clone(),
        );
        let jwks_fetches = Family::default();
        registry.register(
            "jwks_fetches",
            "JWKS and discovery fetches by issuer and result (success, failure)",
            jwks_fetches.clone(),
        );
        let jwks_keys = Family::default();
        registry.register(
            "jwks_keys",
            "Keys in each issuer's current remote key set",
            jwks_keys.clone(),
        );
        let api_keys_expiring = Family::default();
        registry.register(
            "api_keys_expiring",
            "API keys (not disabled) expiring within the horizon `within` (7d, 30d), by store",
            api_keys_expiring.clone(),
        );
        let jwks_key_age = Family::default();
        registry.register_with_unit(
            "jwks_key_set_age",
            "Time since each issuer's key set was last fetched successfully",
            Unit::Seconds,
            jwks_key_age.clone(),
        );
        let config_reloads = Family::default();
        registry.register(
            "config_reloads",
            "Configuration reloads by result (success, failure)",
            config_reloads.clone(),
        );
        let config_generation = Gauge::default();
        registry.register(
            "config_generation",
            "Configuration generations applied since start (1 is the one started with)",
            config_generation.clone(),
        );
        let config_last_reload_successful = Gauge::default();
        registry.register(
            "config_last_reload_successful",
            "Whether the last configuration reload was applied (1) or refused (0)",
            config_last_reload_successful.clone(),
        );
        let config_last_reload_success_time = Gauge::default();
        registry.register_with_unit(
            "config_last_reload_success_timestamp",
            "Unix time of the last configuration generation applied",
            Unit::Seconds,
            config_last_reload_success_time.clone(),
        );
        let requests_in_flight = Gauge::default();
        registry.register(
            "requests_in_flight",
            "gRPC requests being served now",
            requests_in_flight.clone(),
        );
        let requests_shed = Counter::default();
        registry.register(
            "requests_shed",
            "gRPC requests answered at once with RESOURCE_EXHAUSTED / OVERLOADED (load shedding)",
            requests_shed.clone(),
        );
        let introspection_duration =
            Family::new_with_constructor(latency_histogram as fn() -> Histogram);
        registry.register_with_unit(
            "introspection_duration",
            "Time of one OAuth2 introspection call (RFC 7662), by issuer",
            Unit::Seconds,
            introspection_duration.clone(),
        );
        let shadow_decisions = Family::default();
        registry.register(
            "shadow_decisions",
            "Decisions of shadow-mode rules (logged, not enforced)",
            shadow_decisions.clone(),
        );
        Self {
            registry: root,
            per_request,
            requests,
            request_duration,
            cache_lookups,
            jwt_cache_entries,
            jwt_cache_bytes,
            jwks_fetches,
            jwks_keys,
            jwks_key_age,
            api_keys_expiring,
            config_reloads,
            config_generation,
            config_last_reload_successful,
            config_last_reload_success_time,
            requests_in_flight,
            requests_shed,
            introspection_duration,
            shadow_decisions,
            request_series: RequestSeries::new(),
        }
    }

    /// The Prometheus text exposition of every metric.
    pub fn render(&self) -> String {
        let mut out = String::new();
        let _ = encode(&mut out, &self.registry);
        out
    }

    /// Counts one decided request.
    pub fn record_request(
        &self,
        surface: Surface,
        allowed: bool,
        reason: Option<Reason>,
        credential_type: Option<CredentialType>,
        seconds: f64,
    ) {
        if !self.per_request {
            return;
        }
        let series = &self.request_series;
        let index = RequestSeries::counter_index(surface, allowed, reason, credential_type);
        series.counters[index]
            .get_or_init(|| {
                self.requests
                    .get_or_create(&RequestLabels {
                        surface,
                        decision: if allowed {
                            Outcome::allow
                        } else {
                            Outcome::deny
                        },
                        reason: reason.map_or("none", Reason::as_str),
                        credential_type: credential_type.map_or("none", CredentialType::as_str),
                    })
                    .clone()
            })
            .inc();
        series.durations[RequestSeries::surface_index(surface)]
            .get_or_init(|| {
                self.request_duration
                    .get_or_create(&SurfaceLabels { surface })
                    .clone()
            })
            .observe(seconds);
    }

    /// Counts one lookup in the verified-JWT cache.
    pub fn record_jwt_cache(&self, hit: bool) {
        if !self.per_request {
            return;
        }
        self.request_series.jwt_cache[usize::from(hit)]
            .get_or_init(|| {
                self.cache_lookups
                    .get_or_create(&CacheLabels {
                        cache: "jwt",
                        result: if hit { "hit" } else { "miss" },
                    })
                    .clone()
            })
            .inc();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_request_series_has_its_own_handle() {
        let mut seen = std::collections::HashSet::new();
        let reasons = std::iter::once(None).chain(Reason::ALL.into_iter().map(Some));
        for surface in SURFACES {
            for allowed in [false, true] {
                for reason in reasons.clone() {
                    let kinds = std::iter::once(None).chain(CredentialType::ALL.map(Some));
                    for kind in kinds {
                        let index = RequestSeries::counter_index(surface, allowed, reason, kind);
                        assert!(index < RequestSeries::new().counters.len());
                        assert!(
                            seen.insert(index),
                            "{surface:?} {allowed} {reason:?} {kind:?}"
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn recorded_requests_are_exported_with_their_labels() {
        let metrics = Metrics::new(true);
        for _ in 0..2 {
            metrics.record_request(
                Surface::ext_authz,
                false,
                Some(Reason::Expired),
                Some(CredentialType::Jwt),
                0.000_1,
            );
        }
        metrics.record_request(Surface::authenticate, true, None, None, 0.000_1);
        metrics.record_jwt_cache(true);
        metrics.record_jwt_cache(false);
        metrics.record_jwt_cache(true);
        let text = metrics.render();
        assert!(
            text.contains("portcullis_cache_lookups_total{cache=\"jwt\",result=\"hit\"} 2"),
            "{text}"
        );
        let value = |labels: &[&str]| {
            text.lines()
                .find(|line| {
                    line.starts_with("portcullis_requests_total{")
                        && labels.iter().all(|label| line.contains(label))
                })
                .and_then(|line| line.rsplit(' ').next())
                .map(str::to_owned)
        };
        let expired = [
            "surface=\"ext_authz\"",
            "decision=\"deny\"",
            "reason=\"EXPIRED\"",
            "credential_type=\"JWT\"",
        ];
        assert_eq!(value(&expired).as_deref(), Some("2"), "{text}");
        let allowed = [
            "surface=\"authenticate\"",
            "decision=\"allow\"",
            "reason=\"none\"",
        ];
        assert_eq!(value(&allowed).as_deref(), Some("1"), "{text}");
        assert!(
            text.contains("portcullis_request_duration_seconds_count{surface=\"ext_authz\"} 2"),
            "{text}"
        );
        let off = Metrics::new(false);
        off.record_request(Surface::authenticate, true, None, None, 0.1);
        assert!(!off.render().contains("portcullis_requests_total{"));
    }
}
