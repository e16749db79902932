//! The events webhook: operational events delivered to an operator's endpoint, signed as the
//! Standard Webhooks spec says, retried until taken, filtered by kind.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use base64::Engine;
use hmac::{Hmac, Mac};
use sha2::Sha256;
use switchyard_keys::TenantId;
use switchyard_service::events::EventLog;
use switchyard_subjects::{EventKind, Namespace};
use switchyard_testkit::wait_for;

use crate::Env;

const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";

/// What the receiver got: headers and body of each request, and how many it refused so far.
#[derive(Default)]
struct Received {
    requests: Vec<(HeaderMap, Bytes)>,
    refuse: usize,
}

async fn receive(
    State(state): State<Arc<Mutex<Received>>>,
    headers: HeaderMap,
    body: Bytes,
) -> StatusCode {
    let mut state = state.lock().unwrap();
    state.requests.push((headers, body));
    if state.refuse > 0 {
        state.refuse -= 1;
        StatusCode::SERVICE_UNAVAILABLE
    } else {
        StatusCode::NO_CONTENT
    }
}

/// Verifies a delivery as a receiver holding the secret would, from the spec: the signed
/// content is `{webhook-id}.{webhook-timestamp}.{body}`, HMAC-SHA256 keyed with the base64
/// after `whsec_`, and `webhook-signature` lists `v1,<base64>` signatures.
fn verified(headers: &HeaderMap, body: &[u8]) -> bool {
    let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    let (Some(id), Some(timestamp), Some(signatures)) = (
        header("webhook-id"),
        header("webhook-timestamp"),
        header("webhook-signature"),
    ) else {
        return false;
    };
    let key = base64::engine::general_purpose::STANDARD
        .decode(SECRET.trim_start_matches("whsec_"))
        .unwrap();
    let mut mac = Hmac::<Sha256>::new_from_slice(&key).unwrap();
    mac.update(format!("{id}.{timestamp}.").as_bytes());
    mac.update(body);
    let expected = format!(
        "v1,{}",
        base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes())
    );
    signatures.split(' ').any(|s| s == expected)
}

#[tokio::test]
async fn events_are_delivered_signed_to_the_operators_endpoint_retried_and_filtered_by_kind() {
    let env = Env::start().await;
    let received = Arc::new(Mutex::new(Received {
        refuse: 1,
        ..Received::default()
    }));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/ops/events", listener.local_addr().unwrap());
    let app = axum::Router::new()
        .route("/ops/events", axum::routing::post(receive))
        .with_state(received.clone());
    tokio::spawn(async move { axum::serve(listener, app).await });

    let dir = tempfile::tempdir().unwrap();
    let secret_file = dir.path().join("events-webhook-secret");
    std::fs::write(&secret_file, format!("{SECRET}\n")).unwrap();
    let mut config = env.config();
    config.events_webhook.url = url;
    config.events_webhook.secret_file = secret_file;
    config.events_webhook.kinds = vec!["destination_disabled".into(), "breaker_opened".into()];
    let service = env.service(config).await;

    let events = EventLog::new(env.js.clone(), Namespace::default(), "egress");
    let acme = TenantId::new("acme").unwrap();
    events
        .emit_and_wait(
            EventKind::DestinationDisabled,
            Some(&acme),
            Some("crm"),
            "disabled by egress: down for 3600 s",
        )
        .await
        .unwrap();
    // Not a kind the operator asked for: acked without a request.
    events
        .emit_and_wait(EventKind::DlqInflow, Some(&acme), None, "101 DLQ entries")
        .await
        .unwrap();
    events
        .emit_and_wait(
            EventKind::BreakerOpened,
            Some(&acme),
            Some("acme.crm"),
            "opened for 30 s",
        )
        .await
        .unwrap();

    // The first request is refused (503): that event comes again, under the same id.
    let requests = wait_for("three requests", Duration::from_secs(30), || async {
        let state = received.lock().unwrap();
        (state.requests.len() >= 3).then(|| state.requests.clone())
    })
    .await;
    assert!(
        requests.iter().all(|(h, b)| verified(h, b)),
        "every request verifies with the secret"
    );
    let bodies: Vec<serde_json::Value> = requests
        .iter()
        .map(|(_, b)| serde_json::from_slice(b).unwrap())
        .collect();
    let ids: Vec<&str> = requests
        .iter()
        .map(|(h, _)| h["webhook-id"].to_str().unwrap())
        .collect();
    for (body, id) in bodies.iter().zip(&ids) {
        assert_eq!(body["id"], *id, "webhook-id is the event's id");
        assert_eq!(body["tenant"], "acme");
    }
    let disabled: Vec<usize> = bodies
        .iter()
        .enumerate()
        .filter(|(_, b)| b["kind"] == "destination_disabled")
        .map(|(i, _)| i)
        .collect();
    assert_eq!(
        disabled.len(),
        2,
        "refused once, then delivered: {bodies:?}"
    );
    assert_eq!(ids[disabled[0]], ids[disabled[1]], "a retry keeps its id");
    assert!(bodies.iter().any(|b| b["kind"] == "breaker_opened"));
    assert!(
        bodies.iter().all(|b| b["kind"] != "dlq_inflow"),
        "a kind not asked for is not sent"
    );
    // Counted once each request is answered.
    let addr = service.running().http_addr;
    wait_for("the counts", Duration::from_secs(10), || async {
        let metrics = switchyard_testkit::http_get(addr, "/metrics").await;
        [
            "switchyard_dlq_events_webhook_total{outcome=\"delivered\"} 2",
            "switchyard_dlq_events_webhook_total{outcome=\"failed\"} 1",
            "switchyard_dlq_events_webhook_total{outcome=\"skipped\"} 1",
        ]
        .iter()
        .all(|line| metrics.contains(line))
        .then_some(())
    })
    .await;
    service.stop().await;
}

#[tokio::test]
async fn a_secret_file_without_a_secret_stops_the_service_naming_the_setting() {
    let env = Env::start().await;
    let dir = tempfile::tempdir().unwrap();
    let secret_file = dir.path().join("secret");
    std::fs::write(&secret_file, "hunter2").unwrap();
    let mut config = env.config();
    config.events_webhook.url = "https://ops.example.com/events".into();
    config.events_webhook.secret_file = secret_file;
    let client = env.server.client().await;
    let Err(refused) =
        switchyard_dlq_service::start(config, client, tokio_util::sync::CancellationToken::new())
            .await
    else {
        panic!("started with a secret file holding no secret");
    };
    let message = format!("{refused:#}");
    assert!(
        message.contains("invalid setting events_webhook.secret_file"),
        "{message}"
    );
    assert!(!message.contains("hunter2"), "the file's text is not shown");
}
