//! Observability (SPEC §8): logs (JSON or text, level from config or `RUST_LOG`), traces
//! exported over OTLP/gRPC when `telemetry.otlp_endpoint` is set (W3C trace context honoured
//! from incoming gRPC metadata and ext_authz headers), and Prometheus metrics ([`metrics`]).
//! Nothing secret is ever recorded: credentials appear only as a short digest.

pub mod decision_log;
mod events;
pub mod metrics;
pub mod process;

pub use events::{
    config_started, key_fetch_finished, reload_finished, request_decided, request_shed,
    shadow_evaluated, short_digest,
};

use std::sync::OnceLock;

use opentelemetry::{KeyValue, propagation::TextMapPropagator, trace::TracerProvider as _};
use opentelemetry_appender_tracing::layer::OpenTelemetryTracingBridge;
use opentelemetry_otlp::WithExportConfig;
use opentelemetry_sdk::{
    Resource,
    logs::SdkLoggerProvider,
    propagation::TraceContextPropagator,
    trace::{Sampler, SdkTracerProvider},
};
use tracing_opentelemetry::OpenTelemetrySpanExt;
use tracing_subscriber::{
    EnvFilter, Layer,
    field::RecordFields,
    filter::filter_fn,
    fmt::{FormatFields, format::Writer},
    layer::SubscriberExt,
    util::SubscriberInitExt,
};

use crate::{
    config::{DecisionLogOutput, LogFormat, TelemetryConfig},
    headers::Headers,
};

/// The target of API key usage lines (`keys::api_keys::usage`).
pub const USAGE_TARGET: &str = "api_key_usage";

/// Keeps the trace and decision log exporters alive; flushes what is pending when dropped.
pub struct TelemetryGuard {
    provider: Option<SdkTracerProvider>,
    decision_logs: Option<SdkLoggerProvider>,
}

impl TelemetryGuard {
    /// Exports every finished span and pending decision record now (tests and shutdown).
    pub fn flush(&self) {
        if let Some(provider) = &self.provider {
            let _ = provider.force_flush();
        }
        if let Some(provider) = &self.decision_logs {
            let _ = provider.force_flush();
        }
    }
}

impl Drop for TelemetryGuard {
    fn drop(&mut self) {
        if let Some(provider) = self.provider.take() {
            let _ = provider.shutdown();
        }
        if let Some(provider) = self.decision_logs.take() {
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
    // Decision lines (when `decision_log` is on) and API key usage lines are records, logged
    // whatever the log level, unless the filter itself names their target
    // (`RUST_LOG=decision_log=off`).
    let filter_text = std::env::var("RUST_LOG").unwrap_or_else(|_| config.log_level.clone());
    let filter = [decision_log::TARGET, USAGE_TARGET]
        .into_iter()
        .filter(|target| !filter_text.contains(target))
        .filter_map(|target| format!("{target}=info").parse().ok())
        .fold(filter, EnvFilter::add_directive);
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
    // Decision lines reach stderr only when it is one of their outputs.
    // (`outputs`, not `enabled`: a reload may turn decision logs on later.)
    let decisions_to_stderr = config
        .decision_log
        .outputs
        .contains(&DecisionLogOutput::Stderr);
    let fmt = fmt.with_filter(filter_fn(move |meta| {
        decisions_to_stderr || meta.target() != decision_log::TARGET
    }));
    let resource = || {
        Resource::builder()
            .with_service_name("portcullis")
            .with_attribute(KeyValue::new("service.version", env!("CARGO_PKG_VERSION")))
            .build()
    };
    let decision_logs = match &config.otlp_endpoint {
        Some(endpoint) if config.decision_log.logs_to(DecisionLogOutput::Otlp) => {
            let exporter = opentelemetry_otlp::LogExporter::builder()
                .with_tonic()
                .with_endpoint(endpoint.clone())
                .build()
                .map_err(|err| TelemetryError(err.to_string()))?;
            Some(
                SdkLoggerProvider::builder()
                    .with_batch_exporter(exporter)
                    .with_resource(resource())
                    .build(),
            )
        }
        _ => None,
    };
    // Only decision events become OTLP log records: each field an attribute.
    let decision_records = decision_logs.as_ref().map(|provider| {
        OpenTelemetryTracingBridge::new(provider)
            .with_filter(filter_fn(|meta| meta.target() == decision_log::TARGET))
    });
    let (otel, provider) = match &config.otlp_endpoint {
        Some(endpoint) => {
            let exporter = opentelemetry_otlp::SpanExporter::builder()
                .with_tonic()
                .with_endpoint(endpoint.clone())
                .build()
                .map_err(|err| TelemetryError(err.to_string()))?;
            // Follow the caller's sampling decision; sample root spans at the configured ratio.
            let sampler = Sampler::ParentBased(Box::new(Sampler::TraceIdRatioBased(
                config.trace_sample_ratio,
            )));
            let provider = SdkTracerProvider::builder()
                .with_sampler(sampler)
                .with_batch_exporter(exporter)
                .with_resource(resource())
                .build();
            // A request span carries what `request_span` records, nothing per poll: no busy/
            // idle timing, source location, thread or target attributes, and no OTel context
            // made current on each poll (no outbound call propagates it).
            let layer = tracing_opentelemetry::layer()
                .with_tracked_inactivity(false)
                .with_location(false)
                .with_threads(false)
                .with_target(false)
                .with_context_activation(false)
                .with_tracer(provider.tracer("portcullis"));
            (Some(layer), Some(provider))
        }
        None => (None, None),
    };
    if tracing_subscriber::registry()
        .with(filter)
        .with(fmt)
        .with(otel)
        .with(decision_records)
        .try_init()
        .is_ok()
    {
        let _ = SPAN_POLICY.set(SpanPolicy::of(config));
    }
    Ok(TelemetryGuard {
        provider,
        decision_logs,
    })
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

/// Which requests get a span, decided once by [`init`] (before it: every request).
static SPAN_POLICY: OnceLock<SpanPolicy> = OnceLock::new();

/// Which requests get a span. A span that nothing reads is not made: without an OTLP
/// exporter, JSON logs show no span fields. Text logs show the request span's fields on each
/// line, and an exporter samples spans itself (the spans a request opens, such as a key
/// refetch, must stay its children, so an unsampled request still has its span).
#[derive(Debug, Clone, Copy, PartialEq)]
enum SpanPolicy {
    Always,
    Never,
}

impl SpanPolicy {
    fn of(config: &TelemetryConfig) -> Self {
        match (&config.otlp_endpoint, config.log_format) {
            (None, LogFormat::Json) => SpanPolicy::Never,
            _ => SpanPolicy::Always,
        }
    }
}

/// Where a request's W3C trace context may travel: gRPC metadata, or (ext_authz) the HTTP
/// headers Envoy forwards (lower-case names).
#[derive(Clone, Copy)]
pub enum TraceCarrier<'a> {
    Metadata(&'a tonic::metadata::MetadataMap),
    Headers(Headers<'a>),
}

impl TraceCarrier<'_> {
    /// The remote parent context, if this carrier has a `traceparent`.
    fn remote_parent(self) -> Option<opentelemetry::Context> {
        let carrier: Vec<(&str, &str)>;
        let headers = match self {
            TraceCarrier::Headers(headers) => {
                headers.get("traceparent")?;
                headers
            }
            TraceCarrier::Metadata(metadata) => {
                metadata.get("traceparent")?;
                carrier = ["traceparent", "tracestate"]
                    .into_iter()
                    .filter_map(|name| Some((name, metadata.get(name)?.to_str().ok()?)))
                    .collect();
                Headers::new(&carrier)
            }
        };
        Some(TraceContextPropagator::new().extract(&Carrier(headers)))
    }
}

/// The span a request runs in, parented on the first carrier's `traceparent` (a caller's
/// sampling decision is followed); the pipeline records the decision fields into it. A
/// disabled span when no one would see it (see [`SpanPolicy`]).
pub fn request_span(surface: &'static str, carriers: &[TraceCarrier<'_>]) -> tracing::Span {
    if SPAN_POLICY.get().copied() == Some(SpanPolicy::Never) {
        return tracing::Span::none();
    }
    let parent = carriers.iter().find_map(|carrier| carrier.remote_parent());
    let span = tracing::info_span!(
        "request",
        otel.name = surface,
        otel.kind = "server",
        surface,
        decision = tracing::field::Empty,
        reason = tracing::field::Empty,
        credential_type = tracing::field::Empty,
        issuer = tracing::field::Empty,
        rule = tracing::field::Empty,
    );
    if let Some(context) = parent {
        let _ = span.set_parent(context);
    }
    span
}

struct Carrier<'a>(Headers<'a>);

impl opentelemetry::propagation::Extractor for Carrier<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key)
    }

    fn keys(&self) -> Vec<&str> {
        self.0.iter().map(|(name, _)| name).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(yaml: &str) -> TelemetryConfig {
        serde_norway::from_str(yaml).unwrap()
    }

    #[test]
    fn spans_are_made_only_where_something_reads_them() {
        let of = |yaml| SpanPolicy::of(&config(yaml));
        assert_eq!(
            of("{log_format: text}"),
            SpanPolicy::Always,
            "text logs show span fields"
        );
        assert_eq!(
            of("{}"),
            SpanPolicy::Never,
            "the default: JSON logs, no export"
        );
        for exported in [
            "{log_format: json, otlp_endpoint: 'http://127.0.0.1:4317'}",
            "{log_format: json, otlp_endpoint: 'http://127.0.0.1:4317', trace_sample_ratio: 0.1}",
        ] {
            assert_eq!(of(exported), SpanPolicy::Always, "{exported}");
        }
    }
}
