//! The egress service in-process against a real nats-server and a real HTTP sink: signed
//! webhook deliveries, retries and `Retry-After`, dead-lettering with the attempt history,
//! NATS routes, per-route isolation, the circuit breaker and the delivery deadline.

mod deadline;
mod destinations;
mod dlq_share;
mod exposure;
mod nats_routes;
mod rotation;
mod shared_breakers;
mod support;

use std::collections::BTreeMap;
use std::time::Duration;

use base64::Engine;
use bytes::Bytes;
use hmac::{Hmac, Mac};
use sha2::Sha256;
use switchyard_dlq::DlqCode;
use switchyard_egress::receipt::Receipt;
use switchyard_registry::{NatsRoute, Route};
use switchyard_testkit::{stored_count, wait_for};

use support::{Harness, Reply, SECRET, Sink, address, progress_acks, webhook};

const LONG: Duration = Duration::from_secs(30);

#[tokio::test]
async fn a_webhook_delivery_is_signed_and_carries_the_payload_bytes_unchanged() {
    let sink = Sink::start().await;
    let mut h = Harness::new().await;
    let mut route = webhook(&sink, "/hook");
    if let Route::Webhook(w) = &mut route {
        w.headers = BTreeMap::from([("X-Env".to_owned(), "test".to_owned())]);
    }
    h.put_route("acme.ops.slack", &route).await;
    h.start(|_| {}).await;
    let mut receipts = h.client.subscribe("delivered.v1.acme.>").await.unwrap();

    let payload = Bytes::from_static(b"{\"a\":1}\x00\xff not utf-8 \r\n");
    let envelope = h
        .publish(
            &address("acme", "ops", "slack"),
            payload.clone(),
            Some("application/x-test"),
        )
        .await;

    wait_for("the webhook delivery", LONG, || async {
        (sink.count("/hook") == 1).then_some(())
    })
    .await;
    let request = &sink.requests("/hook")[0];
    assert_eq!(
        request.body, payload,
        "payload bytes are forwarded unchanged"
    );
    let header = |name: &str| request.headers[name].to_str().unwrap().to_owned();
    assert_eq!(header("webhook-id"), envelope.id.to_string());
    assert_eq!(header("content-type"), "application/x-test");
    assert_eq!(header("x-env"), "test");
    // The request is a child of egress's span in the producer's trace: same trace id, a new
    // parent span id.
    let traceparent = header("traceparent");
    let sent: Vec<&str> = support::TRACEPARENT.split('-').collect();
    let got: Vec<&str> = traceparent.split('-').collect();
    assert_eq!(
        (got.len(), got[0], got[1]),
        (4, sent[0], sent[1]),
        "{traceparent}"
    );
    assert_ne!(
        got[2], sent[2],
        "the parent is egress's span: {traceparent}"
    );
    let timestamp: i64 = header("webhook-timestamp").parse().unwrap();
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    assert!(
        (now - timestamp).abs() < 300,
        "timestamp {timestamp} is now"
    );

    // Verify the signature the way a receiver would, from the secret alone.
    let key = base64::engine::general_purpose::STANDARD
        .decode(SECRET.strip_prefix("whsec_").unwrap())
        .unwrap();
    let mut mac = Hmac::<Sha256>::new_from_slice(&key).unwrap();
    mac.update(format!("{}.{timestamp}.", envelope.id).as_bytes());
    mac.update(&payload);
    let expected = base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes());
    let signatures = header("webhook-signature");
    assert!(
        signatures.split(' ').any(|s| s == format!("v1,{expected}")),
        "{signatures} holds v1,{expected}"
    );

    let receipt = tokio::time::timeout(LONG, futures::StreamExt::next(&mut receipts))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(receipt.subject.as_str(), "delivered.v1.acme.ops.slack");
    let receipt: Receipt = serde_json::from_slice(&receipt.payload).unwrap();
    assert_eq!(receipt.id, envelope.id.to_string());
    assert_eq!((receipt.attempts, receipt.status), (1, Some(200)));
    assert_eq!(receipt.route, "acme.ops.slack");

    let metrics = h.probe("/metrics").await;
    assert!(
        metrics.contains(
            "switchyard_egress_attempts_total{tenant=\"acme\",route_type=\"webhook\",result=\"delivered\"} 1"
        ),
        "{metrics}"
    );
    assert!(metrics.contains("outcome=\"delivered\"} 1"), "{metrics}");
    assert_eq!(h.probe("/readyz").await, "ready\n");
    assert!(h.dlq().await.is_empty());
    h.stop().await;
}

#[tokio::test]
async fn a_500_then_a_200_is_delivered_on_the_second_attempt() {
    let sink = Sink::start().await;
    sink.script("/flaky", vec![Reply::status(500)], Reply::status(200));
    let mut h = Harness::new().await;
    h.put_route("acme._.slack", &webhook(&sink, "/flaky")).await;
    h.start(|c| c.egress.backoff_secs = vec![1]).await;
    let mut receipts = h.client.subscribe("delivered.v1.>").await.unwrap();
    // Egress's acks as nats-server gets them (a confirmed ack carries a reply subject).
    let mut acks = h.client.subscribe("$JS.ACK.EGRESS.>").await.unwrap();

    let envelope = h
        .publish(
            &address("acme", "ops", "slack"),
            Bytes::from_static(b"retry me"),
            None,
        )
        .await;

    let receipt = next_receipt(&mut receipts).await;
    assert_eq!(receipt.attempts, 2);
    assert_eq!(
        receipt.route, "acme._.slack",
        "the tenant's default route applies"
    );
    let requests = sink.requests("/flaky");
    assert_eq!(requests.len(), 2);
    for request in &requests {
        assert_eq!(request.headers["webhook-id"], envelope.id.to_string());
        assert_eq!(request.body, Bytes::from_static(b"retry me"));
    }
    // Both acks are confirmed: the first copy's (its retry scheduled) as well as the delivered
    // copy's. A lost plain ack of the first would have it redelivered after the ack wait and
    // attempted again beside its fired schedule: a second delivery.
    let mut confirmed = Vec::new();
    while confirmed.len() < 2 {
        let ack = tokio::time::timeout(LONG, futures::StreamExt::next(&mut acks))
            .await
            .expect("egress's acks")
            .unwrap();
        if &ack.payload[..] == b"+ACK" {
            confirmed.push(ack.reply.is_some());
        }
    }
    assert_eq!(confirmed, [true, true], "every ack awaits its confirmation");
    assert!(h.dlq().await.is_empty());
    h.stop().await;
}

#[tokio::test]
async fn a_2xx_whose_body_never_ends_is_delivered_once_not_retried() {
    let sink = Sink::start().await;
    sink.script(
        "/stalls",
        Vec::new(),
        Reply::status(200).body("ok").stall_body(),
    );
    let mut h = Harness::new().await;
    let mut route = webhook(&sink, "/stalls");
    if let Route::Webhook(w) = &mut route {
        w.timeout_ms = 1_000;
    }
    h.put_route("acme._.slack", &route).await;
    h.start(|c| c.egress.backoff_secs = vec![1]).await;
    let mut receipts = h.client.subscribe("delivered.v1.>").await.unwrap();
    h.publish(
        &address("acme", "ops", "slack"),
        Bytes::from_static(b"once"),
        None,
    )
    .await;
    let receipt = next_receipt(&mut receipts).await;
    assert_eq!(receipt.attempts, 1);
    assert_eq!(receipt.status, Some(200));
    // Settled for good: nothing left in EGRESS (no message, no retry scheduled) to call the
    // receiver again.
    wait_for("EGRESS empty", LONG, || async {
        (stored_count(&h.js, "EGRESS").await == 0).then_some(())
    })
    .await;
    assert_eq!(sink.count("/stalls"), 1, "the receiver got it once");
    assert!(h.dlq().await.is_empty());
    h.stop().await;
}

#[tokio::test]
async fn a_retry_that_cannot_be_scheduled_is_held_without_calling_the_sink_again() {
    let sink = Sink::start().await;
    sink.script("/down", Vec::new(), Reply::status(503));
    let mut h = Harness::new().await;
    h.put_route("acme._.slack", &webhook(&sink, "/down")).await;
    // EGRESS at its high-water mark: its limit lowered to 20 messages, 19 of them fillers that
    // no consumer reads, so no retry can be scheduled into it.
    h.fill_egress(20, 19).await;
    let mut acks = h.client.subscribe("$JS.ACK.EGRESS.>").await.unwrap();
    h.start(|c| {
        c.egress.backoff_secs = vec![1];
        c.storage.max_fill_pct = 100.0;
    })
    .await;
    h.publish(
        &address("acme", "ops", "slack"),
        Bytes::from_static(b"held"),
        None,
    )
    .await;
    wait_for("the first attempt", LONG, || async {
        (sink.count("/down") == 1).then_some(())
    })
    .await;
    // Its retry cannot be stored: it is stored again in place (a progress ack before each
    // try), the sink not called again.
    progress_acks(&mut acks, 3).await;
    assert_eq!(
        sink.count("/down"),
        1,
        "no attempt while the retry waits for room"
    );
    // Room again: the retry is stored, and fires as scheduled (attempt 2).
    h.remove_fillers().await;
    wait_for("the scheduled retry", LONG, || async {
        (sink.count("/down") == 2).then_some(())
    })
    .await;
    h.stop().await;
}

#[tokio::test]
async fn a_429_retry_after_delays_the_next_attempt_by_at_least_that_long() {
    let sink = Sink::start().await;
    sink.script(
        "/limited",
        vec![Reply::status(429).header("retry-after", "2")],
        Reply::status(200),
    );
    let mut h = Harness::new().await;
    h.put_route("acme.ops.slack", &webhook(&sink, "/limited"))
        .await;
    // The schedule alone would retry within a second.
    h.start(|c| c.egress.backoff_secs = vec![1]).await;

    h.publish(
        &address("acme", "ops", "slack"),
        Bytes::from_static(b"x"),
        None,
    )
    .await;

    wait_for("the second attempt", LONG, || async {
        (sink.count("/limited") == 2).then_some(())
    })
    .await;
    let requests = sink.requests("/limited");
    let gap = requests[1].at - requests[0].at;
    assert!(
        gap >= Duration::from_millis(1900),
        "second attempt after {gap:?}"
    );
    h.stop().await;
}

#[tokio::test]
async fn a_400_is_dead_lettered_as_permanent_failure_after_one_attempt() {
    let sink = Sink::start().await;
    sink.script(
        "/bad",
        vec![],
        Reply::status(400).body("field x is required"),
    );
    let mut h = Harness::new().await;
    h.put_route("acme.ops.slack", &webhook(&sink, "/bad")).await;
    h.start(|_| {}).await;

    let payload = Bytes::from_static(b"{\"y\":2}");
    let envelope = h
        .publish(&address("acme", "ops", "slack"), payload.clone(), None)
        .await;

    let entry = h.dlq_entry(&envelope).await;
    let r = &entry.record;
    assert_eq!(r.code, DlqCode::PermanentFailure);
    assert_eq!(r.stage, switchyard_keys::Stage::Egress);
    assert_eq!(r.attempts, 1);
    assert_eq!(r.history.len(), 1);
    assert_eq!(r.history[0].status, Some(400));
    assert_eq!(r.history[0].outcome, "http_status");
    assert!(
        r.history[0]
            .error
            .as_deref()
            .unwrap()
            .contains("field x is required"),
        "{:?}",
        r.history[0]
    );
    assert!(r.reason.contains("HTTP 400"), "{}", r.reason);
    assert_eq!(r.tenant.as_ref().map(|t| t.as_str()), Some("acme"));
    assert_eq!(r.platform.as_ref().map(|p| p.as_str()), Some("slack"));
    assert_eq!(r.source_stream, "EGRESS");
    assert_eq!(r.source_subject, "egress.v1.acme.ops.slack");
    assert_eq!(entry.payload, payload);
    assert_eq!(sink.count("/bad"), 1, "a permanent failure is not retried");
    h.stop().await;
}

#[tokio::test]
async fn a_dead_route_is_dead_lettered_with_retries_exhausted_after_max_attempts() {
    let sink = Sink::start().await;
    sink.script("/dead", vec![], Reply::status(503));
    let mut h = Harness::new().await;
    h.put_route("acme.ops.slack", &webhook(&sink, "/dead"))
        .await;
    h.start(|c| {
        c.egress.max_attempts = 3;
        c.egress.backoff_secs = vec![1];
        c.egress.breaker_failure_threshold = 100;
    })
    .await;

    let envelope = h
        .publish(
            &address("acme", "ops", "slack"),
            Bytes::from_static(b"doomed"),
            None,
        )
        .await;

    let entry = h.dlq_entry(&envelope).await;
    let r = &entry.record;
    assert_eq!(r.code, DlqCode::RetriesExhausted);
    assert_eq!(r.attempts, 3);
    assert_eq!(r.history.len(), 3);
    assert!(
        r.history.iter().all(|a| a.status == Some(503)),
        "{:?}",
        r.history
    );
    assert_eq!(r.first_failure, r.history[0].at);
    assert_eq!(r.last_failure, r.history[2].at);
    assert!(r.first_failure < r.last_failure);
    assert!(
        r.reason.starts_with("3 of 3 attempts failed"),
        "{}",
        r.reason
    );
    assert_eq!(entry.payload, Bytes::from_static(b"doomed"));
    assert_eq!(sink.count("/dead"), 3);
    // Reported as an operational event too, naming the route and the message.
    let event = wait_for("the attempts_exhausted event", LONG, || async {
        h.events("attempts_exhausted").await.1
    })
    .await;
    assert_eq!(event["about"], "acme.ops.slack");
    let detail = event["detail"].as_str().unwrap();
    assert!(
        detail.starts_with(&format!(
            "message {} dead-lettered retries_exhausted: 3 of 3 attempts failed",
            envelope.id
        )),
        "{detail}"
    );
    h.stop().await;
}

#[tokio::test]
async fn a_failing_route_does_not_hold_up_other_routes() {
    let sink = Sink::start().await;
    // The dead route hangs until each attempt times out.
    sink.script(
        "/hang",
        vec![],
        Reply::status(200).hang(Duration::from_secs(60)),
    );
    let mut h = Harness::new().await;
    let mut dead = webhook(&sink, "/hang");
    if let Route::Webhook(w) = &mut dead {
        w.timeout_ms = 2000;
        w.max_in_flight = 2;
    }
    h.put_route("acme.ops.slack", &dead).await;
    h.put_route("globex.ops.slack", &webhook(&sink, "/ok"))
        .await;
    h.start(|c| {
        c.egress.concurrency = 8;
        c.egress.max_attempts = 3;
        c.egress.backoff_secs = vec![1];
        c.egress.breaker_failure_threshold = 100;
        c.egress.route_wait_ms = 50;
    })
    .await;

    // Far more stuck messages than worker slots, all ahead of the healthy ones.
    let stuck = 60;
    for _ in 0..stuck {
        h.publish(
            &address("acme", "ops", "slack"),
            Bytes::from_static(b"stuck"),
            None,
        )
        .await;
    }
    for _ in 0..5 {
        h.publish(
            &address("globex", "ops", "slack"),
            Bytes::from_static(b"fine"),
            None,
        )
        .await;
    }

    wait_for("the healthy route's deliveries", LONG, || async {
        (sink.count("/ok") == 5).then_some(())
    })
    .await;
    // Each stuck message needs three attempts that time out after 2 s: none has given up yet,
    // and the dead route never had more than its two slots' worth of requests.
    assert!(sink.count("/hang") >= 1);
    assert!(
        h.dlq().await.is_empty(),
        "the healthy route waited for the dead one"
    );
    assert_eq!(sink.max_in_flight("/hang"), 2);
    h.stop().await;
}

#[tokio::test]
async fn a_tenant_with_slow_sinks_holds_only_its_share_of_the_slots() {
    // Far more of the slow tenant's messages than slots.
    let (h, _sink) =
        a_slow_tenant_ahead_of_a_quiet_one(16, 40, Bytes::from_static(b"slow"), 4).await;
    assert!(h.dlq().await.is_empty());
    h.stop().await;
}

/// Egress bounds what it holds by its slots, not by bytes (one consume loop reads every
/// tenant's messages in stream order): a tenant whose large messages hang at its sink holds
/// its share of the slots, and another tenant's messages behind them are still fetched.
#[tokio::test]
async fn a_tenant_whose_large_messages_hang_does_not_hold_up_another_tenant() {
    // Ten of 300 KiB.
    let large = Bytes::from(vec![b'x'; 300 * 1024]);
    let (h, _sink) = a_slow_tenant_ahead_of_a_quiet_one(64, 10, large, 1).await;
    h.stop().await;
}

/// Egress with `concurrency` slots, 4 per tenant: `count` of acme's messages (`payload`) to a
/// sink that answers only after 10 s, then, once acme has `started` requests under way, 5 of
/// globex's to a fast one. Globex is delivered while acme's requests still hang, and acme
/// never had more than its 4 at once. The sink is returned to outlive the harness's drain.
async fn a_slow_tenant_ahead_of_a_quiet_one(
    concurrency: usize,
    count: usize,
    payload: Bytes,
    started: usize,
) -> (Harness, Sink) {
    let sink = Sink::start().await;
    // A slow but successful sink: each request answers 200 after 10 s.
    sink.script(
        "/slow",
        vec![],
        Reply::status(200).hang(Duration::from_secs(10)),
    );
    let mut h = Harness::new().await;
    let mut slow = webhook(&sink, "/slow");
    if let Route::Webhook(w) = &mut slow {
        w.timeout_ms = 15_000;
        w.max_in_flight = 64;
    }
    h.put_route("acme.ops.slack", &slow).await;
    h.put_route("globex.ops.slack", &webhook(&sink, "/ok"))
        .await;
    h.start(|c| {
        c.egress.concurrency = concurrency;
        c.egress.tenant_max_in_flight = 4;
        c.egress.route_wait_ms = 50;
    })
    .await;

    // All of the slow tenant's messages ahead of the quiet tenant's.
    for _ in 0..count {
        h.publish(&address("acme", "ops", "slack"), payload.clone(), None)
            .await;
    }
    wait_for("the slow tenant's first requests", LONG, || async {
        (sink.count("/slow") >= started).then_some(())
    })
    .await;
    for _ in 0..5 {
        h.publish(
            &address("globex", "ops", "slack"),
            Bytes::from_static(b"quiet"),
            None,
        )
        .await;
    }
    // The quiet tenant is delivered while every slow request still hangs.
    let waited = std::time::Instant::now();
    wait_for("the quiet tenant's deliveries", LONG, || async {
        (sink.count("/ok") == 5).then_some(())
    })
    .await;
    assert!(
        waited.elapsed() < Duration::from_secs(8),
        "the quiet tenant waited for the slow one: {:?}",
        waited.elapsed()
    );
    assert_eq!(sink.max_in_flight("/slow"), 4, "the slow tenant's share");
    (h, sink)
}

#[tokio::test]
async fn messages_without_a_usable_route_or_envelope_are_dead_lettered_with_their_code() {
    let mut h = Harness::new().await;
    h.put_raw_route(
        "acme.ops.broken",
        b"{\"type\":\"webhook\",\"url\":\"ftp://x\"}",
    )
    .await;
    let feeding_itself = Route::Nats(NatsRoute {
        subject: "egress.v1.acme.ops.loop".into(),
        jetstream: true,
        fire_and_forget: false,
        timeout_ms: 1000,
        max_in_flight: 1,
    });
    h.put_route("acme.ops.loop", &feeding_itself).await;
    h.start(|_| {}).await;

    let none = h
        .publish(
            &address("acme", "ops", "nowhere"),
            Bytes::from_static(b"a"),
            None,
        )
        .await;
    let broken = h
        .publish(
            &address("acme", "ops", "broken"),
            Bytes::from_static(b"b"),
            None,
        )
        .await;
    let looping = h
        .publish(
            &address("acme", "ops", "loop"),
            Bytes::from_static(b"c"),
            None,
        )
        .await;
    h.js.publish("egress.v1.acme.ops.raw", Bytes::from_static(b"no envelope"))
        .await
        .unwrap()
        .await
        .unwrap();

    let entry = h.dlq_entry(&none).await;
    assert_eq!(entry.record.code, DlqCode::NoRoute);
    assert!(
        entry.record.reason.contains("acme.ops.nowhere")
            && entry.record.reason.contains("acme._.nowhere"),
        "{}",
        entry.record.reason
    );
    assert_eq!(entry.record.attempts, 0);
    let entry = h.dlq_entry(&broken).await;
    assert_eq!(entry.record.code, DlqCode::InvalidRoute);
    assert!(
        entry.record.reason.contains("acme.ops.broken"),
        "{}",
        entry.record.reason
    );
    let entry = h.dlq_entry(&looping).await;
    assert_eq!(entry.record.code, DlqCode::InvalidRoute);
    assert!(
        entry.record.reason.contains("Switchyard's own subjects"),
        "{}",
        entry.record.reason
    );

    let raw = wait_for("the envelope-less message's entry", LONG, || async {
        h.dlq()
            .await
            .into_iter()
            .find(|e| e.record.code == DlqCode::InvalidEnvelope)
    })
    .await;
    assert_eq!(raw.record.tenant.as_ref().map(|t| t.as_str()), Some("acme"));
    assert_eq!(raw.record.source_subject, "egress.v1.acme.ops.raw");
    assert!(
        raw.record.reason.contains("Switchyard-Schema"),
        "{}",
        raw.record.reason
    );
    assert_eq!(raw.payload, Bytes::from_static(b"no envelope"));
    h.stop().await;
}

#[tokio::test]
async fn nats_routes_deliver_to_a_subscriber_and_to_a_stream() {
    let mut h = Harness::new().await;
    let core = Route::Nats(NatsRoute {
        subject: "sink.acme.orders".into(),
        jetstream: false,
        fire_and_forget: false,
        timeout_ms: 2000,
        max_in_flight: 4,
    });
    let stream = Route::Nats(NatsRoute {
        subject: "sink.js.orders".into(),
        jetstream: true,
        fire_and_forget: false,
        timeout_ms: 2000,
        max_in_flight: 4,
    });
    let missing_stream = Route::Nats(NatsRoute {
        subject: "sink.nostream.orders".into(),
        jetstream: true,
        fire_and_forget: false,
        timeout_ms: 2000,
        max_in_flight: 4,
    });
    h.put_route("acme.ops.core", &core).await;
    h.put_route("acme.ops.stream", &stream).await;
    h.put_route("acme.ops.missing", &missing_stream).await;
    h.js.create_stream(async_nats::jetstream::stream::Config {
        name: "SINK".into(),
        subjects: vec!["sink.js.>".into()],
        ..Default::default()
    })
    .await
    .unwrap();
    h.start(|c| {
        c.egress.max_attempts = 2;
        c.egress.backoff_secs = vec![1];
    })
    .await;
    let mut sub = h.client.subscribe("sink.acme.orders").await.unwrap();

    let payload = Bytes::from_static(b"\x01\x02 bytes");
    let envelope = h
        .publish(&address("acme", "ops", "core"), payload.clone(), None)
        .await;
    let got = tokio::time::timeout(LONG, futures::StreamExt::next(&mut sub))
        .await
        .expect("a delivery")
        .unwrap();
    h.client
        .publish(got.reply.clone().unwrap(), Bytes::new())
        .await
        .unwrap();
    assert_eq!(got.payload, payload);
    let headers = got.headers.unwrap();
    assert_eq!(
        headers.get("Switchyard-Id").unwrap().as_str(),
        envelope.id.to_string()
    );
    assert_eq!(
        headers.get("Nats-Msg-Id").unwrap().as_str(),
        envelope.id.to_string()
    );
    assert!(headers.get("Switchyard-Attempts-Log").is_none());

    let stored = h
        .publish(&address("acme", "ops", "stream"), payload.clone(), None)
        .await;
    let sink = h.js.get_stream("SINK").await.unwrap();
    wait_for("the stream delivery", LONG, || async {
        sink.get_raw_message(1).await.ok()
    })
    .await;
    let message = sink.get_raw_message(1).await.unwrap();
    assert_eq!(message.payload, payload);
    assert_eq!(
        message.headers.get("Nats-Msg-Id").unwrap().as_str(),
        stored.id.to_string()
    );

    // JetStream route with no stream behind it: no responders, retried, then given up.
    let lost = h
        .publish(&address("acme", "ops", "missing"), payload, None)
        .await;
    let entry = h.dlq_entry(&lost).await;
    assert_eq!(entry.record.code, DlqCode::RetriesExhausted);
    assert_eq!(entry.record.history.len(), 2);
    assert!(entry.record.history.iter().all(|a| a.outcome == "nats"));
    h.stop().await;
}

#[tokio::test]
async fn an_open_breaker_holds_messages_without_hitting_the_route_or_spending_attempts() {
    let sink = Sink::start().await;
    let down = vec![Reply::status(503); 4];
    sink.script("/flap", down, Reply::status(200));
    let mut h = Harness::new().await;
    let mut route = webhook(&sink, "/flap");
    if let Route::Webhook(w) = &mut route {
        // One attempt at a time, so the order of requests is the order of decisions.
        w.max_in_flight = 1;
    }
    h.put_route("acme.ops.slack", &route).await;
    h.start(|c| {
        c.egress.max_attempts = 5;
        c.egress.backoff_secs = vec![1];
        c.egress.breaker_failure_threshold = 3;
        c.egress.breaker_open_secs = 2;
        c.egress.breaker_max_open_secs = 4;
    })
    .await;
    let mut receipts = h.client.subscribe("delivered.v1.>").await.unwrap();

    let messages = 6;
    for _ in 0..messages {
        h.publish(
            &address("acme", "ops", "slack"),
            Bytes::from_static(b"m"),
            None,
        )
        .await;
    }
    let mut attempts = 0;
    for _ in 0..messages {
        attempts += next_receipt(&mut receipts).await.attempts;
    }

    let requests = sink.requests("/flap");
    // Three failures open the breaker; the probe after 2 s fails and re-opens it for 4 s;
    // the next probe succeeds and the rest flow.
    assert_eq!(requests.len(), 4 + messages, "{:?}", sink.statuses("/flap"));
    let gap = |i: usize| requests[i].at - requests[i - 1].at;
    assert!(
        gap(3) >= Duration::from_millis(1900),
        "first open period: {:?}",
        gap(3)
    );
    assert!(
        gap(4) >= Duration::from_millis(3900),
        "second open period: {:?}",
        gap(4)
    );
    // Only real attempts count: 4 failures and one success per message.
    assert_eq!(attempts as usize, 4 + messages);
    assert!(h.dlq().await.is_empty());
    let metrics = h.probe("/metrics").await;
    assert!(
        metrics
            .contains("switchyard_egress_deferred_total{tenant=\"acme\",reason=\"breaker_open\"}"),
        "{metrics}"
    );
    assert!(
        metrics.contains("switchyard_egress_breaker_opened_total{tenant=\"acme\"} 2"),
        "{metrics}"
    );
    assert!(
        metrics.contains("switchyard_egress_breakers_open{tenant=\"acme\"} 0"),
        "{metrics}"
    );
    h.stop().await;
}

#[tokio::test]
async fn a_redelivered_copy_that_is_delivered_cancels_the_schedule_an_earlier_copy_left() {
    let sink = Sink::start().await;
    let mut h = Harness::new().await;
    h.put_route("acme.ops.slack", &webhook(&sink, "/once"))
        .await;
    let envelope = h
        .publish(
            &address("acme", "ops", "slack"),
            Bytes::from_static(b"once"),
            None,
        )
        .await;
    // An earlier copy "crashed" after scheduling a retry and before acking: a schedule is
    // pending and the copy is redelivered.
    let handoff = switchyard_service::Handoff::new(h.js.clone(), h.ns.clone());
    let at = time::OffsetDateTime::now_utc() + Duration::from_secs(600);
    handoff
        .schedule(
            switchyard_subjects::InputStage::Egress,
            &envelope,
            switchyard_service::Handoff::headers(&envelope, None),
            Bytes::from_static(b"once"),
            at,
            "1",
        )
        .await
        .unwrap();
    let delay_subject = format!("delay.v1.egress.acme.ops.slack.{}", envelope.id);
    let stream = h.js.get_stream("EGRESS").await.unwrap();
    assert!(
        stream
            .get_last_raw_message_by_subject(&delay_subject)
            .await
            .is_ok()
    );
    h.nak_pending().await;

    h.start(|_| {}).await;
    wait_for("the delivery", LONG, || async {
        (sink.count("/once") == 1).then_some(())
    })
    .await;
    wait_for("the leftover schedule to be cancelled", LONG, || async {
        stream
            .get_last_raw_message_by_subject(&delay_subject)
            .await
            .is_err()
            .then_some(())
    })
    .await;
    h.stop().await;
}

/// The next receipt on `receipts` (a subscription to `delivered.v1.>`).
async fn next_receipt(receipts: &mut async_nats::Subscriber) -> Receipt {
    let receipt = tokio::time::timeout(LONG, futures::StreamExt::next(receipts))
        .await
        .expect("a receipt")
        .unwrap();
    serde_json::from_slice(&receipt.payload).unwrap()
}
