//! Tracing set-up: a global subscriber logging to stderr, OpenTelemetry spans, W3C propagation.
//!
//! The OpenTelemetry layer is installed only when spans are exported
//! ([`TelemetryConfig::otlp_endpoint`] set): then every span has a trace context, each stage's
//! per-message span is a child of the previous stage's (`traceparent` injected at each hop)
//! and the spans leave the process. Without an endpoint no span would leave the process, so
//! none is recorded: building and dropping an OpenTelemetry span per message per stage cost
//! about a fifth of the pipeline's CPU (docs/performance.md). The message's trace context
//! still travels: each stage passes on the `traceparent` it received (the producer's, or the
//! one ingress derived from the envelope id), so a sink sees the producer's trace either way.

use std::io::IsTerminal;
use std::sync::atomic::{AtomicBool, Ordering};

use async_nats::HeaderMap;
use opentelemetry::propagation::TextMapPropagator as _;
use opentelemetry::propagation::{Extractor, Injector};
use opentelemetry::trace::{TraceContextExt as _, TracerProvider as _};
use opentelemetry_otlp::{Protocol, SpanExporter, WithExportConfig};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::SdkTracerProvider;
use tracing_opentelemetry::OpenTelemetrySpanExt as _;
use tracing_subscriber::filter::ParseError;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::{SubscriberInitExt, TryInitError};
use tracing_subscriber::{EnvFilter, Layer, fmt};

use crate::config::{LogFormat, TelemetryConfig};

/// Whether an OpenTelemetry layer is installed (spans have a trace context): set by [`init`]
/// with an endpoint and by [`init_for_tests`]. Without one, [`message_span`] and
/// [`inject_current`] skip the W3C propagator, whose parse would be thrown away.
static SPANS_RECORDED: AtomicBool = AtomicBool::new(false);

/// Path of the trace signal under an OTLP/HTTP base endpoint.
const OTLP_TRACES_PATH: &str = "/v1/traces";

/// Why telemetry could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum TelemetryError {
    /// `log_filter` is not valid `EnvFilter` syntax.
    #[error("invalid log filter {filter:?}")]
    InvalidFilter {
        /// The filter as configured.
        filter: String,
        /// What the parser objected to.
        #[source]
        source: ParseError,
    },
    /// The OTLP span exporter could not be built.
    #[error("cannot set up otlp span export to {endpoint}")]
    Exporter {
        /// The traces endpoint spans would have been sent to.
        endpoint: String,
        /// The exporter's own error.
        #[source]
        source: opentelemetry_otlp::ExporterBuildError,
    },
    /// A global subscriber is already installed (telemetry was initialised twice).
    #[error("a global tracing subscriber is already installed")]
    AlreadyInitialised(#[source] TryInitError),
}

/// Keeps span export alive; flushes pending spans and shuts the exporter down when dropped.
///
/// Hold it in `main` until the process is about to exit.
#[derive(Debug)]
#[must_use = "dropping the guard shuts span export down"]
pub struct TelemetryGuard {
    /// The tracer provider behind the OpenTelemetry layer, when spans are exported.
    provider: Option<SdkTracerProvider>,
}

impl Drop for TelemetryGuard {
    fn drop(&mut self) {
        // Shutdown flushes the batch processor first; nothing useful can be done on failure.
        if let Some(Err(error)) = self.provider.as_ref().map(SdkTracerProvider::shutdown) {
            tracing::warn!(%error, "span export did not shut down cleanly");
        }
    }
}

/// Installs the global subscriber described by `config`.
///
/// `default_service_name` (usually the binary's name) is the `service.name` of exported spans
/// unless `config.service_name` is set. Fails, without panicking, if called twice.
pub fn init(
    config: &TelemetryConfig,
    default_service_name: &str,
) -> Result<TelemetryGuard, TelemetryError> {
    // The OTLP exporter's HTTP client uses rustls; every Switchyard binary uses the ring
    // provider. Losing a race with another installer is fine: a provider is then installed.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let filter =
        EnvFilter::try_new(&config.log_filter).map_err(|source| TelemetryError::InvalidFilter {
            filter: config.log_filter.clone(),
            source,
        })?;
    let service_name = config
        .service_name
        .as_deref()
        .filter(|name| !name.is_empty())
        .unwrap_or(default_service_name);
    let provider = tracer_provider(config.otlp_endpoint.as_deref(), service_name)?;
    let fmt_layer = match config.log_format {
        LogFormat::Text => fmt::layer()
            .with_writer(std::io::stderr)
            .with_ansi(std::io::stderr().is_terminal())
            .boxed(),
        LogFormat::Json => fmt::layer()
            .json()
            .with_current_span(true)
            .with_span_list(false)
            .with_writer(std::io::stderr)
            .boxed(),
    };
    let otel_layer = provider
        .as_ref()
        .map(|provider| tracing_opentelemetry::layer().with_tracer(provider.tracer("switchyard")));

    tracing_subscriber::registry()
        .with(filter)
        .with(fmt_layer)
        .with(otel_layer)
        .try_init()
        .map_err(TelemetryError::AlreadyInitialised)?;
    opentelemetry::global::set_text_map_propagator(TraceContextPropagator::new());
    SPANS_RECORDED.store(provider.is_some(), Ordering::Relaxed);
    Ok(TelemetryGuard { provider })
}

/// Installs a subscriber that writes through the test harness's capture, unless one is set.
///
/// The filter comes from `RUST_LOG` (default `info`). Spans carry an OpenTelemetry context (not
/// exported) and the W3C propagator is set, so propagation can be tested. Safe to call from
/// every test.
pub fn init_for_tests() {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let tracer = SdkTracerProvider::builder()
        .build()
        .tracer("switchyard-tests");
    // Ignore "already set": another test of this binary got there first.
    let _ = tracing_subscriber::registry()
        .with(filter)
        .with(fmt::layer().with_test_writer())
        .with(tracing_opentelemetry::layer().with_tracer(tracer))
        .try_init();
    opentelemetry::global::set_text_map_propagator(TraceContextPropagator::new());
    SPANS_RECORDED.store(true, Ordering::Relaxed);
}

/// The span every stage opens around one message: named after the stage (`otel.name`), with
/// the message's subject, and parented on the W3C trace context in `headers` (`traceparent`,
/// `tracestate`) — or, when those carry none, on `fallback` (a `traceparent` value the stage
/// derives itself, e.g. ingress's per-envelope trace). With neither, the span starts a trace.
///
/// Chained with [`inject_current`] on every publish, one trace shows a message's whole path:
/// ingress → idempotency → backpressure → egress → sink.
pub fn message_span(
    stage: &str,
    subject: &str,
    headers: Option<&HeaderMap>,
    fallback: Option<&str>,
) -> tracing::Span {
    let span = tracing::info_span!("message", otel.name = stage, stage, subject);
    if !SPANS_RECORDED.load(Ordering::Relaxed) {
        return span;
    }
    let propagator = TraceContextPropagator::new();
    let mut parent = headers
        .map(|h| propagator.extract(&NatsHeaders(h)))
        .filter(|cx| cx.span().span_context().is_valid());
    if parent.is_none()
        && let Some(traceparent) = fallback
    {
        let carrier =
            std::collections::HashMap::from([("traceparent".to_owned(), traceparent.to_owned())]);
        parent =
            Some(propagator.extract(&carrier)).filter(|cx| cx.span().span_context().is_valid());
    }
    if let Some(parent) = parent {
        // Only fails when no OpenTelemetry layer is installed; the span is then a plain one.
        let _ = span.set_parent(parent);
    }
    span
}

/// Writes the current span's W3C trace context into `headers` (`traceparent`, and
/// `tracestate` when there is one), replacing what was there, so the next hop's span is its
/// child. Leaves `headers` alone when the current span has no valid context (no OpenTelemetry
/// layer installed).
pub fn inject_current(headers: &mut HeaderMap) {
    if !SPANS_RECORDED.load(Ordering::Relaxed) {
        return;
    }
    let cx = tracing::Span::current().context();
    if !cx.span().span_context().is_valid() {
        return;
    }
    TraceContextPropagator::new().inject_context(&cx, &mut NatsHeadersMut(headers));
}

/// The current span's `traceparent` value, when it has a valid trace context.
pub fn current_traceparent() -> Option<String> {
    let mut headers = HeaderMap::new();
    inject_current(&mut headers);
    headers.get("traceparent").map(|v| v.as_str().to_owned())
}

/// NATS headers read by the W3C propagator.
struct NatsHeaders<'a>(&'a HeaderMap);

impl Extractor for NatsHeaders<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).map(|v| v.as_str())
    }

    fn keys(&self) -> Vec<&str> {
        self.0
            .iter()
            .map(|(name, _)| AsRef::<str>::as_ref(name))
            .collect()
    }
}

/// NATS headers written by the W3C propagator.
struct NatsHeadersMut<'a>(&'a mut HeaderMap);

impl Injector for NatsHeadersMut<'_> {
    fn set(&mut self, key: &str, value: String) {
        self.0.insert(key, value);
    }
}

/// A tracer provider for `service_name` exporting over OTLP/HTTP to `endpoint`; `None` without
/// an endpoint (nothing to record spans for).
fn tracer_provider(
    endpoint: Option<&str>,
    service_name: &str,
) -> Result<Option<SdkTracerProvider>, TelemetryError> {
    let Some(base) = endpoint.map(str::trim).filter(|e| !e.is_empty()) else {
        return Ok(None);
    };
    let resource = Resource::builder()
        .with_service_name(service_name.to_owned())
        .build();
    let builder = SdkTracerProvider::builder().with_resource(resource);
    let endpoint = traces_endpoint(base);
    let exporter = SpanExporter::builder()
        .with_http()
        .with_protocol(Protocol::HttpBinary)
        .with_endpoint(endpoint.clone())
        .build()
        .map_err(|source| TelemetryError::Exporter { endpoint, source })?;
    Ok(Some(builder.with_batch_exporter(exporter).build()))
}

/// The traces URL under an OTLP/HTTP base endpoint, leaving one that already names it alone.
fn traces_endpoint(base: &str) -> String {
    let base = base.trim_end_matches('/');
    if base.ends_with(OTLP_TRACES_PATH) {
        base.to_owned()
    } else {
        format!("{base}{OTLP_TRACES_PATH}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn traces_path_is_appended_once() {
        assert_eq!(
            traces_endpoint("http://127.0.0.1:4318"),
            "http://127.0.0.1:4318/v1/traces"
        );
        assert_eq!(
            traces_endpoint("http://collector:4318/"),
            "http://collector:4318/v1/traces"
        );
        assert_eq!(
            traces_endpoint("http://collector:4318/v1/traces"),
            "http://collector:4318/v1/traces"
        );
    }

    #[test]
    fn invalid_filter_is_reported_before_anything_is_installed() {
        let config = TelemetryConfig {
            log_filter: "info,=[".to_owned(),
            ..TelemetryConfig::default()
        };
        let err = init(&config, "test").expect_err("the filter is invalid");
        assert!(matches!(err, TelemetryError::InvalidFilter { .. }), "{err}");
    }
}
