//! `telemetry::init` owns this test process: it installs the global subscriber exactly once.

use std::collections::HashMap;

use opentelemetry::propagation::TextMapPropagator as _;
use opentelemetry::trace::TraceContextExt as _;
use switchyard_runtime::config::{LogFormat, TelemetryConfig};
use switchyard_runtime::telemetry::{self, TelemetryError};
use tracing_opentelemetry::OpenTelemetrySpanExt as _;

#[test]
fn init_installs_once_and_propagates_trace_context() {
    let config = TelemetryConfig {
        log_format: LogFormat::Json,
        // Nothing listens on port 9: export fails quietly in the background, never in the caller.
        otlp_endpoint: Some("http://127.0.0.1:9".to_owned()),
        ..TelemetryConfig::default()
    };
    let guard = telemetry::init(&config, "runtime-test").expect("first init");

    let again = telemetry::init(&TelemetryConfig::default(), "runtime-test");
    assert!(
        matches!(again, Err(TelemetryError::AlreadyInitialised(_))),
        "{again:?}"
    );

    let span = tracing::info_span!("hand_off", tenant = "acme");
    let mut headers = HashMap::new();
    opentelemetry::global::get_text_map_propagator(|propagator| {
        propagator.inject_context(&span.context(), &mut headers)
    });
    let traceparent = headers.get("traceparent").expect("traceparent injected");
    let trace_id = span.context().span().span_context().trace_id();
    assert!(traceparent.contains(&trace_id.to_string()), "{traceparent}");

    let extracted = opentelemetry_sdk::propagation::TraceContextPropagator::new().extract(&headers);
    assert_eq!(extracted.span().span_context().trace_id(), trace_id);

    // Also fine once a subscriber exists.
    telemetry::init_for_tests();
    drop(guard);
}
