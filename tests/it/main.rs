//! The integration tests: one binary, a module per area, sharing `support` (in-process and
//! child-process servers, a fault-injecting JWKS endpoint, the real OpenID provider) and the
//! `portcullis-test-support` keys. Each module's own doc says what it covers.

mod support;

mod api_keys;
mod basic;
mod certificates;
mod cli;
mod dpop;
mod ext_authz;
mod forward_auth;
mod hardening;
mod hostile_tokens;
mod introspection;
mod jwks_cache;
mod limits;
mod oidc_provider;
mod postgres_store;
mod rate_limits;
mod reload_race;
mod revocation;
mod server;
mod telemetry;
mod telemetry_logs;
mod wycheproof;
