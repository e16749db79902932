//! What egress lets out: which headers a sink receives, and that a route URL's credentials
//! never reach the DLQ record or the attempt history (so neither `dlq show` nor `dlq export`).

use std::collections::BTreeMap;
use std::time::Duration;

use bytes::Bytes;
use switchyard_dlq::DlqCode;
use switchyard_registry::{NatsRoute, Route, WebhookRoute, WebhookSecret};

use crate::support::{Harness, Reply, SECRET, Sink, address, webhook};

const LONG: Duration = Duration::from_secs(30);

/// What a route URL may hide: a password, a path that is itself a secret, a query token.
const HIDDEN: [&str; 3] = ["pa55word", "P4TH", "T0KEN"];

#[tokio::test]
async fn producer_headers_reach_a_nats_sink_but_never_a_webhook() {
    let sink = Sink::start().await;
    let mut h = Harness::new().await;
    let mut route = webhook(&sink, "/hook");
    if let Route::Webhook(w) = &mut route {
        w.headers = BTreeMap::from([("X-Env".to_owned(), "test".to_owned())]);
    }
    h.put_route("acme.ops.slack", &route).await;
    let nats = Route::Nats(NatsRoute {
        subject: "sink.acme.orders".into(),
        jetstream: false,
        fire_and_forget: false,
        timeout_ms: 2000,
        max_in_flight: 4,
    });
    h.put_route("acme.ops.core", &nats).await;
    h.start(|_| {}).await;
    let mut sub = h.client.subscribe("sink.acme.orders").await.unwrap();

    let producer = [("X-Order", "42"), ("X-Internal-Host", "db7.corp")];
    for platform in ["slack", "core"] {
        h.publish_with(
            &address("acme", "ops", platform),
            Bytes::from_static(b"{}"),
            Some("application/json"),
            &producer,
        )
        .await;
    }

    // A NATS sink is part of the tenant's own plumbing: it gets the producer's headers.
    let got = tokio::time::timeout(LONG, futures::StreamExt::next(&mut sub))
        .await
        .expect("a NATS delivery")
        .unwrap();
    // A core NATS route is a request: the reply acknowledges it.
    h.client
        .publish(got.reply.clone().unwrap(), Bytes::new())
        .await
        .unwrap();
    let nats_headers = got.headers.unwrap();
    assert_eq!(nats_headers.get("X-Order").unwrap().as_str(), "42");

    // A webhook is a third party: the Standard Webhooks headers, the content type, the trace
    // context and the route's own headers, nothing of the producer's or the pipeline's.
    switchyard_testkit::wait_for("the webhook delivery", LONG, || async {
        (sink.count("/hook") == 1).then_some(())
    })
    .await;
    let request = &sink.requests("/hook")[0];
    assert_eq!(request.headers["x-env"], "test");
    assert_eq!(request.headers["content-type"], "application/json");
    for name in request.headers.keys() {
        let name = name.as_str();
        assert!(
            [
                "content-type",
                "content-length",
                "webhook-id",
                "webhook-timestamp",
                "webhook-signature",
                "traceparent",
                "tracestate",
                "user-agent",
                "accept",
                "host",
                "x-env",
            ]
            .contains(&name),
            "the webhook got header {name}: {:?}",
            request.headers
        );
    }
    h.stop().await;
}

#[tokio::test]
async fn credentials_in_a_route_url_never_reach_the_dlq_record_or_the_attempt_history() {
    let sink = Sink::start().await;
    sink.script("/deny/P4TH", vec![], Reply::status(400).body("no"));
    // A port nothing listens on: every attempt fails to connect.
    let dead_port = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap().port()
    };
    let with_credentials = |authority: &str, path: &str| {
        Route::Webhook(WebhookRoute {
            url: format!("http://alice:pa55word@{authority}{path}/P4TH?token=T0KEN"),
            secret: WebhookSecret(SECRET.into()),
            timeout_ms: 5000,
            max_in_flight: 4,
            headers: BTreeMap::new(),
            previous_secrets: Vec::new(),
            signing_key: None,
        })
    };
    let mut h = Harness::new().await;
    let sink_authority = sink.base.trim_start_matches("http://").to_owned();
    h.put_route(
        "acme.ops.dead",
        &with_credentials(&format!("127.0.0.1:{dead_port}"), "/h"),
    )
    .await;
    h.put_route("acme.ops.deny", &with_credentials(&sink_authority, "/deny"))
        .await;
    h.put_raw_route(
        "acme.ops.broken",
        br#"{"type":"webhook","url":"ftp://alice:pa55word@x/P4TH?token=T0KEN","secret":"whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"}"#,
    )
    .await;
    h.start(|c| {
        c.egress.max_attempts = 2;
        c.egress.backoff_secs = vec![1];
        c.egress.breaker_failure_threshold = 100;
    })
    .await;

    let mut published = Vec::new();
    for platform in ["dead", "deny", "broken"] {
        let envelope = h
            .publish(
                &address("acme", "ops", platform),
                Bytes::from_static(b"x"),
                None,
            )
            .await;
        published.push((platform, envelope));
    }
    for (platform, envelope) in &published {
        let entry = h.dlq_entry(envelope).await;
        let expected = match *platform {
            "dead" => DlqCode::RetriesExhausted,
            "deny" => DlqCode::PermanentFailure,
            _ => DlqCode::InvalidRoute,
        };
        assert_eq!(entry.record.code, expected, "{}", entry.record.reason);
        // What `dlq show --json` prints and `dlq export` writes.
        let shown = serde_json::to_string(&entry.view()).unwrap();
        for hidden in HIDDEN {
            assert!(!shown.contains(hidden), "{platform}: {shown}");
        }
        match *platform {
            "dead" => {
                assert_eq!(entry.record.history.len(), 2);
                let error = entry.record.history[0].error.as_deref().unwrap();
                assert!(
                    error.starts_with(&format!("POST http://127.0.0.1:{dead_port}: ")),
                    "{error}"
                );
            }
            "deny" => assert!(
                entry.record.reason.contains("acme.ops.deny"),
                "{}",
                entry.record.reason
            ),
            _ => assert!(
                entry.record.reason.contains("\"ftp://x\""),
                "{}",
                entry.record.reason
            ),
        }
    }
    // The credentials are still used: the sink got them as basic auth.
    let request = &sink.requests("/deny/P4TH")[0];
    assert!(request.headers.contains_key("authorization"));
    h.stop().await;
}

#[tokio::test]
async fn credentials_and_escape_codes_in_a_sinks_answer_never_reach_the_dlq_or_the_delivery_log() {
    let sink = Sink::start().await;
    sink.script(
        "/deny",
        vec![],
        Reply::status(400).body(
            "{\"password\":\"two words here\",\"token\":\"T0KEN\"}\u{1b}[2J\u{1b}]0;owned\u{7}",
        ),
    );
    let mut h = Harness::new().await;
    h.put_route("acme.ops.slack", &webhook(&sink, "/deny"))
        .await;
    h.start(|_| {}).await;
    let envelope = h
        .publish(
            &address("acme", "ops", "slack"),
            Bytes::from_static(b"{}"),
            None,
        )
        .await;
    let entry = h.dlq_entry(&envelope).await;
    assert_eq!(entry.record.code, DlqCode::PermanentFailure);
    let history_error = entry.record.history[0].error.clone().unwrap();
    for text in [&entry.record.reason, &history_error] {
        for leaked in ["two words here", "T0KEN", "\u{1b}", "\u{7}"] {
            assert!(!text.contains(leaked), "{leaked:?} in {text:?}");
        }
        assert!(text.contains(r#""password":"***""#), "{text}");
    }
    let js = async_nats::jetstream::new(h.client.clone());
    let logged = switchyard_testkit::wait_for("the attempt in the delivery log", LONG, || async {
        let stream = js.get_stream("ATTEMPTS").await.ok()?;
        let message = stream
            .get_last_raw_message_by_subject("attempts.v1.acme")
            .await
            .ok()?;
        serde_json::from_slice::<switchyard_envelope::LoggedAttempt>(&message.payload).ok()
    })
    .await;
    assert_eq!(logged.result, "permanent");
    assert_eq!(logged.record.error.as_deref(), Some(history_error.as_str()));
    h.stop().await;
}
