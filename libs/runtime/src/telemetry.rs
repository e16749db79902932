//! Tracing set-up: a global subscriber logging to stderr, OpenTelemetry spans, W3C propagation.
//!
//! The OpenTelemetry layer is always installed, so every span has a trace context that can be
//! injected into and extracted from `traceparent` headers; spans leave the process only when
//! [`TelemetryConfig::otlp_endpoint`] is set.

use std::io::IsTerminal;

use opentelemetry::trace::TracerProvider as _;
use opentelemetry_otlp::{Protocol, SpanExporter, WithExportConfig};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::SdkTracerProvider;
use tracing_subscriber::filter::ParseError;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::{SubscriberInitExt, TryInitError};
use tracing_subscriber::{EnvFilter, Layer, fmt};

use crate::config::{LogFormat, TelemetryConfig};

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
    /// The tracer provider behind the OpenTelemetry layer.
    provider: SdkTracerProvider,
}

impl Drop for TelemetryGuard {
    fn drop(&mut self) {
        // Shutdown flushes the batch processor first; nothing useful can be done on failure.
        if let Err(error) = self.provider.shutdown() {
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
    let otel_layer = tracing_opentelemetry::layer().with_tracer(provider.tracer("switchyard"));

    tracing_subscriber::registry()
        .with(filter)
        .with(fmt_layer)
        .with(otel_layer)
        .try_init()
        .map_err(TelemetryError::AlreadyInitialised)?;
    opentelemetry::global::set_text_map_propagator(TraceContextPropagator::new());
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
}

/// A tracer provider for `service_name`, exporting over OTLP/HTTP when `endpoint` is set.
fn tracer_provider(
    endpoint: Option<&str>,
    service_name: &str,
) -> Result<SdkTracerProvider, TelemetryError> {
    let resource = Resource::builder()
        .with_service_name(service_name.to_owned())
        .build();
    let builder = SdkTracerProvider::builder().with_resource(resource);
    let Some(base) = endpoint.map(str::trim).filter(|e| !e.is_empty()) else {
        return Ok(builder.build());
    };
    let endpoint = traces_endpoint(base);
    let exporter = SpanExporter::builder()
        .with_http()
        .with_protocol(Protocol::HttpBinary)
        .with_endpoint(endpoint.clone())
        .build()
        .map_err(|source| TelemetryError::Exporter { endpoint, source })?;
    Ok(builder.with_batch_exporter(exporter).build())
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
