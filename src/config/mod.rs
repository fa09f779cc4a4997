//! The YAML configuration (SPEC §6): typed sections, strict loading that reports every error
//! at once with its path, and the semantic checks that make a config safe to serve.

mod dpop;
mod identity_token;
mod load;
mod rate_limits;
mod revocation;
mod secret;
mod types;
mod verifiers;

pub use dpop::{DpopConfig, DpopRedisConfig, DpopRedisUnavailable, DpopReplayConfig};
pub use identity_token::IdentityTokenConfig;
pub use load::{ConfigError, ConfigErrors, load_file, load_file_partial, load_str};
pub use rate_limits::{LimitConfig, RateLimit, RateLimitsConfig, RedisConfig, RedisUnavailable};
pub use revocation::RevocationConfig;
pub use secret::SecretRef;
pub use types::*;
pub use verifiers::*;

/// The JSON Schema (draft-07, every subschema inlined) of the configuration file, generated
/// from the config types: what `portcullis config-schema` prints and the Helm chart embeds
/// for `config`.
pub fn json_schema() -> serde_json::Value {
    let mut schema = schemars::generate::SchemaSettings::draft07()
        .with(|settings| settings.inline_subschemas = true)
        .into_generator()
        .into_root_schema_for::<Config>()
        .to_value();
    durations_as_written(&mut schema);
    schema
}

/// Default durations serialize as `{secs, nanos}`; the file writes them as `30s`.
fn durations_as_written(value: &mut serde_json::Value) {
    match value {
        serde_json::Value::Object(fields) => {
            if let Some(default) = fields.get_mut("default")
                && let (Some(secs), Some(0)) = (
                    default.get("secs").and_then(serde_json::Value::as_u64),
                    default.get("nanos").and_then(serde_json::Value::as_u64),
                )
            {
                *default = humantime::format_duration(std::time::Duration::from_secs(secs))
                    .to_string()
                    .into();
            }
            fields.values_mut().for_each(durations_as_written);
        }
        serde_json::Value::Array(items) => items.iter_mut().for_each(durations_as_written),
        _ => {}
    }
}
