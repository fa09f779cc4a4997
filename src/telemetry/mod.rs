//! Observability (SPEC §8): logs (JSON or text, level from config or `RUST_LOG`), traces
//! exported over OTLP/gRPC when `telemetry.otlp_endpoint` is set (W3C trace context honoured
//! from incoming gRPC metadata and ext_authz headers), and Prometheus metrics ([`metrics`]).
//! Nothing secret is ever recorded: credentials appear only as a short digest.

mod events;
pub mod metrics;
pub mod process;

pub use events::{
    config_started, key_fetch_finished, reload_finished, request_decided, request_shed,
    shadow_evaluated, short_digest,
};

use std::collections::HashMap;

use opentelemetry::{KeyValue, propagation::TextMapPropagator, trace::TracerProvider as _};
use opentelemetry_otlp::WithExportConfig;
use opentelemetry_sdk::{
    Resource,
    propagation::TraceContextPropagator,
    trace::{Sampler, SdkTracerProvider},
};
use tracing_opentelemetry::OpenTelemetrySpanExt;
use tracing_subscriber::{
    EnvFilter, Layer,
    field::RecordFields,
    fmt::{FormatFields, format::Writer},
    layer::SubscriberExt,
    util::SubscriberInitExt,
};

use crate::config::{LogFormat, TelemetryConfig};

/// Keeps the trace exporter alive; flushes pending spans when dropped.
pub struct TelemetryGuard {
    provider: Option<SdkTracerProvider>,
}

impl TelemetryGuard {
    /// Exports every finished span now (tests and shutdown).
    pub fn flush(&self) {
        if let Some(provider) = &self.provider {
            let _ = provider.force_flush();
        }
    }
}

impl Drop for TelemetryGuard {
    fn drop(&mut self) {
        if let Some(provider) = self.provider.take() {
            let _ = provider.shutdown();
        }
    }
}

/// Why telemetry could not start.
#[derive(Debug, thiserror::Error)]
#[error("cannot start the OTLP exporter: {0}")]
pub struct TelemetryError(String);

/// Installs the global subscriber (logs, and traces when an OTLP endpoint is configured).
/// A second call in one process keeps the first subscriber.
pub fn init(config: &TelemetryConfig) -> Result<TelemetryGuard, TelemetryError> {
    let filter = EnvFilter::try_from_default_env()
        .or_else(|_| EnvFilter::try_new(&config.log_level))
        .unwrap_or_else(|_| EnvFilter::new("info"));
    // ANSI colours only when a person reads the terminal, never in files or collectors.
    let fmt = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()));
    let fmt = match config.log_format {
        // JSON lines carry their own fields, so span fields are not formatted for them:
        // doing it for every request span would cost more than the rest of a cached request.
        LogFormat::Json => fmt
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .with_span_list(false)
            .fmt_fields(NoSpanFields)
            .boxed(),
        LogFormat::Text => fmt.boxed(),
    };
    let (otel, provider) = match &config.otlp_endpoint {
        Some(endpoint) => {
            let exporter = opentelemetry_otlp::SpanExporter::builder()
                .with_tonic()
                .with_endpoint(endpoint.clone())
                .build()
                .map_err(|err| TelemetryError(err.to_string()))?;
            let resource = Resource::builder()
                .with_service_name("portcullis")
                .with_attribute(KeyValue::new("service.version", env!("CARGO_PKG_VERSION")))
                .build();
            // Follow the caller's sampling decision; sample root spans at the configured ratio.
            let sampler = Sampler::ParentBased(Box::new(Sampler::TraceIdRatioBased(
                config.trace_sample_ratio,
            )));
            let provider = SdkTracerProvider::builder()
                .with_sampler(sampler)
                .with_batch_exporter(exporter)
                .with_resource(resource)
                .build();
            let layer = tracing_opentelemetry::layer().with_tracer(provider.tracer("portcullis"));
            (Some(layer), Some(provider))
        }
        None => (None, None),
    };
    let _ = tracing_subscriber::registry()
        .with(filter)
        .with(fmt)
        .with(otel)
        .try_init();
    Ok(TelemetryGuard { provider })
}

/// Formats no span fields (see `init`); the JSON event formatter writes event fields itself.
struct NoSpanFields;

impl<'writer> FormatFields<'writer> for NoSpanFields {
    fn format_fields<R: RecordFields>(
        &self,
        _writer: Writer<'writer>,
        _fields: R,
    ) -> std::fmt::Result {
        Ok(())
    }
}

/// Makes the W3C trace context in `carrier` (gRPC metadata or HTTP headers, lower-case
/// names) the parent of `span`. Without a valid `traceparent` nothing changes.
pub fn set_remote_parent(span: &tracing::Span, carrier: &HashMap<String, String>) {
    if !carrier.contains_key("traceparent") {
        return;
    }
    let context = TraceContextPropagator::new().extract(&Carrier(carrier));
    let _ = span.set_parent(context);
}

/// Parents `span` on the W3C trace context in gRPC request metadata, if there is one.
pub fn set_parent_from_metadata(
    span: &tracing::Span,
    metadata: &tonic::metadata::MetadataMap,
) -> bool {
    if metadata.get("traceparent").is_none() {
        return false;
    }
    let carrier: HashMap<String, String> = ["traceparent", "tracestate"]
        .into_iter()
        .filter_map(|name| {
            Some((
                name.to_owned(),
                metadata.get(name)?.to_str().ok()?.to_owned(),
            ))
        })
        .collect();
    set_remote_parent(span, &carrier);
    true
}

/// The span every request runs in; the pipeline records the decision fields into it.
pub fn request_span(surface: &'static str) -> tracing::Span {
    tracing::info_span!(
        "request",
        otel.name = surface,
        otel.kind = "server",
        surface,
        decision = tracing::field::Empty,
        reason = tracing::field::Empty,
        credential_type = tracing::field::Empty,
        issuer = tracing::field::Empty,
        rule = tracing::field::Empty,
    )
}

struct Carrier<'a>(&'a HashMap<String, String>);

impl opentelemetry::propagation::Extractor for Carrier<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).map(String::as_str)
    }

    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(String::as_str).collect()
    }
}
