//! One trace across every hop: each stage's per-message span is the child of the previous
//! stage's, and the sink's request is the child of egress's — checked on the spans a real
//! OTLP/HTTP receiver gets from the services' exporter.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::routing::post;
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use prost::Message as _;
use switchyard_runtime::config::TelemetryConfig;
use switchyard_testkit::wait_for;

use super::Pipeline;

/// A span as exported: ids in lowercase hex.
#[derive(Debug, Clone)]
struct Exported {
    name: String,
    trace_id: String,
    span_id: String,
    parent_id: String,
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// An OTLP/HTTP traces receiver (protobuf), keeping every span it is sent.
async fn otlp_receiver() -> (String, Arc<Mutex<Vec<Exported>>>) {
    async fn traces(State(spans): State<Arc<Mutex<Vec<Exported>>>>, body: Bytes) -> Vec<u8> {
        let request = ExportTraceServiceRequest::decode(body).expect("an OTLP protobuf export");
        let mut spans = spans.lock().unwrap();
        for resource in request.resource_spans {
            for scope in resource.scope_spans {
                for span in scope.spans {
                    spans.push(Exported {
                        name: span.name,
                        trace_id: hex(&span.trace_id),
                        span_id: hex(&span.span_id),
                        parent_id: hex(&span.parent_span_id),
                    });
                }
            }
        }
        ExportTraceServiceResponse::default().encode_to_vec()
    }
    let spans = Arc::new(Mutex::new(Vec::new()));
    let app = Router::new()
        .route("/v1/traces", post(traces))
        .with_state(spans.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    (url, spans)
}

// Installs the process-wide exporting subscriber: needs a process of its own (nextest runs
// each test in one; `make test` uses nextest).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_trace_runs_from_ingress_through_every_stage_to_the_sink() {
    let (endpoint, spans) = otlp_receiver().await;
    let guard = switchyard_runtime::telemetry::init(
        &TelemetryConfig {
            otlp_endpoint: Some(endpoint),
            ..TelemetryConfig::default()
        },
        "switchyard-it",
    )
    .expect("the first subscriber of this process");

    let p = Pipeline::start(&["acme"]).await;
    p.route("acme", None, "hooks", "acme/in").await;
    p.publish("acme", "ops", "hooks", "traced-1", b"{}").await;
    p.wait_delivered(1, Duration::from_secs(60)).await;
    let delivered = p.sink.received().remove(0);

    // The producer sent no traceparent: ingress traces the message under its envelope id.
    let trace_id = delivered.webhook_id.replace('-', "");
    let parts: Vec<&str> = delivered.traceparent.split('-').collect();
    assert_eq!(parts.len(), 4, "the sink got a traceparent: {delivered:?}");
    assert_eq!(
        parts[1], trace_id,
        "the sink's request is in the message's trace"
    );
    let sink_parent = parts[2].to_owned();

    let stages = ["ingress", "idempotency", "backpressure", "egress"];
    let trace = wait_for(
        "every stage's span exported",
        Duration::from_secs(30),
        || {
            let spans = spans.lock().unwrap().clone();
            let trace: HashMap<String, Exported> = spans
                .into_iter()
                .filter(|s| s.trace_id == trace_id)
                .map(|s| (s.span_id.clone(), s))
                .collect();
            let complete = stages
                .iter()
                .all(|stage| trace.values().any(|s| s.name == *stage))
                && trace.contains_key(&sink_parent);
            async move { complete.then_some(trace) }
        },
    )
    .await;

    let span_of = |stage: &str| {
        let found: Vec<&Exported> = trace.values().filter(|s| s.name == stage).collect();
        assert_eq!(found.len(), 1, "one {stage} span per message: {found:?}");
        found[0].clone()
    };
    for pair in stages.windows(2) {
        let (parent, child) = (span_of(pair[0]), span_of(pair[1]));
        assert_eq!(
            child.parent_id, parent.span_id,
            "{} is the child of {}",
            pair[1], pair[0]
        );
    }
    // The sink's parent is egress's span or one of its descendants.
    let egress = span_of("egress");
    let mut at = trace[&sink_parent].clone();
    while at.span_id != egress.span_id {
        at = trace
            .get(&at.parent_id)
            .unwrap_or_else(|| panic!("{at:?} does not descend from egress's span"))
            .clone();
    }

    p.stop().await;
    // Shutting export down blocks on its own thread; keep it off the runtime's workers.
    tokio::task::spawn_blocking(move || drop(guard))
        .await
        .unwrap();
}
