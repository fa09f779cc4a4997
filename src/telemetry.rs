//! Logging set-up: JSON or text, level from config unless `RUST_LOG` is set.

use tracing_subscriber::{EnvFilter, fmt};

use crate::config::{LogFormat, TelemetryConfig};

/// Installs the global subscriber once; later calls (tests, reloads) are no-ops.
pub fn init(config: &TelemetryConfig) {
    let filter = EnvFilter::try_from_default_env()
        .or_else(|_| EnvFilter::try_new(&config.log_level))
        .unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = fmt().with_env_filter(filter).with_writer(std::io::stderr);
    let _ = match config.log_format {
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
        LogFormat::Text => builder.try_init(),
    };
}
