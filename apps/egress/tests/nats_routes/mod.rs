//! NATS routes must not count a message as delivered with nobody listening, and a delivered
//! message's ack must be confirmed: a core route is a request (no responders → retried, then
//! dead-lettered; a reply → delivered once), `fire_and_forget` is the explicit opt-out, and
//! the settler's confirmed ack is safe to repeat.

use std::time::Duration;

use async_nats::jetstream::consumer;
use bytes::Bytes;
use futures::StreamExt;
use switchyard_dlq::DlqCode;
use switchyard_registry::{NatsRoute, Route};
use switchyard_testkit::wait_for;

use crate::support::{Harness, address};

const LONG: Duration = Duration::from_secs(30);

fn core_route(subject: &str, fire_and_forget: bool) -> Route {
    Route::Nats(NatsRoute {
        subject: subject.into(),
        jetstream: false,
        fire_and_forget,
        timeout_ms: 1000,
        max_in_flight: 4,
    })
}

/// The value of a metric line starting with `prefix`, 0 when absent.
async fn metric(h: &Harness, prefix: &str) -> u64 {
    h.probe("/metrics")
        .await
        .lines()
        .find(|line| line.starts_with(prefix))
        .and_then(|line| line.rsplit(' ').next())
        .and_then(|value| value.parse().ok())
        .unwrap_or(0)
}

/// The egress consumer has nothing pending and nothing awaiting an ack.
async fn egress_settled(h: &Harness) {
    wait_for("egress to settle everything", LONG, || async {
        let mut consumer: consumer::PullConsumer =
            h.js.get_consumer_from_stream("egress-worker", "EGRESS")
                .await
                .ok()?;
        let info = consumer.info().await.ok()?;
        (info.num_pending == 0 && info.num_ack_pending == 0).then_some(())
    })
    .await;
}

#[tokio::test]
async fn a_core_nats_route_with_nobody_subscribed_is_retried_then_dead_lettered_naming_no_responders()
 {
    let mut h = Harness::new().await;
    h.put_route("acme.ops.core", &core_route("sink.acme.nobody", false))
        .await;
    h.start(|c| {
        c.egress.max_attempts = 2;
        c.egress.backoff_secs = vec![1];
        c.egress.breaker_failure_threshold = 100;
    })
    .await;

    let envelope = h
        .publish(
            &address("acme", "ops", "core"),
            Bytes::from_static(b"anyone?"),
            None,
        )
        .await;

    let entry = h.dlq_entry(&envelope).await;
    let r = &entry.record;
    assert_eq!(r.code, DlqCode::RetriesExhausted);
    assert_eq!(r.attempts, 2);
    assert_eq!(r.history.len(), 2, "{:?}", r.history);
    for attempt in &r.history {
        assert_eq!(attempt.outcome, "nats");
        let error = attempt.error.as_deref().unwrap_or_default();
        assert!(
            error.contains("no responders on sink.acme.nobody"),
            "{error}"
        );
    }
    assert!(
        r.reason.starts_with("2 of 2 attempts failed"),
        "{}",
        r.reason
    );
    assert!(r.reason.contains("no responders"), "{}", r.reason);
    assert_eq!(entry.payload, Bytes::from_static(b"anyone?"));
    assert_eq!(
        metric(&h, "switchyard_messages_processed_total{stage=\"egress\",tenant=\"acme\",outcome=\"delivered\"}").await,
        0
    );
    h.stop().await;
}

#[tokio::test]
async fn a_core_nats_route_whose_subscriber_replies_is_delivered_once() {
    let mut h = Harness::new().await;
    h.put_route("acme.ops.core", &core_route("sink.acme.service", false))
        .await;
    let mut sub = h.client.subscribe("sink.acme.service").await.unwrap();
    h.client.flush().await.unwrap();
    h.start(|c| {
        c.egress.max_attempts = 3;
        c.egress.backoff_secs = vec![1];
    })
    .await;

    let envelope = h
        .publish(
            &address("acme", "ops", "core"),
            Bytes::from_static(b"order"),
            None,
        )
        .await;
    let got = tokio::time::timeout(LONG, sub.next())
        .await
        .expect("a request")
        .unwrap();
    assert_eq!(got.payload, Bytes::from_static(b"order"));
    assert_eq!(
        got.headers
            .as_ref()
            .unwrap()
            .get("Nats-Msg-Id")
            .unwrap()
            .as_str(),
        envelope.id.to_string()
    );
    // Any reply counts, whatever it says.
    h.client
        .publish(got.reply.clone().unwrap(), Bytes::from_static(b"whatever"))
        .await
        .unwrap();

    egress_settled(&h).await;
    wait_for("the delivery to be counted", LONG, || async {
        (metric(&h, "switchyard_messages_processed_total{stage=\"egress\",tenant=\"acme\",outcome=\"delivered\"}").await == 1)
            .then_some(())
    })
    .await;
    // The delivery's ack was confirmed: nothing comes again and no ack went unconfirmed.
    assert!(
        tokio::time::timeout(Duration::from_millis(2500), sub.next())
            .await
            .is_err(),
        "delivered once"
    );
    assert_eq!(
        metric(
            &h,
            "switchyard_acks_unconfirmed_total{stage=\"egress\",tenant=\"acme\"}"
        )
        .await,
        0
    );
    assert!(h.dlq().await.is_empty());
    h.stop().await;
}

#[tokio::test]
async fn a_fire_and_forget_route_counts_as_delivered_with_nobody_subscribed() {
    let mut h = Harness::new().await;
    h.put_route("acme.ops.feed", &core_route("feed.acme.nobody", true))
        .await;
    h.start(|c| c.egress.max_attempts = 2).await;

    h.publish(
        &address("acme", "ops", "feed"),
        Bytes::from_static(b"lossy"),
        None,
    )
    .await;

    wait_for("the opt-out delivery to be counted", LONG, || async {
        (metric(&h, "switchyard_messages_processed_total{stage=\"egress\",tenant=\"acme\",outcome=\"delivered\"}").await == 1)
            .then_some(())
    })
    .await;
    egress_settled(&h).await;
    assert!(h.dlq().await.is_empty());
    h.stop().await;
}

#[tokio::test]
async fn a_confirmed_ack_is_confirmed_again_when_repeated() {
    // The settler retries a confirmed ack whose confirmation did not come; that is only safe
    // if the server confirms an ack for a message it already counts as acked.
    let h = Harness::new().await;
    h.publish(
        &address("acme", "ops", "core"),
        Bytes::from_static(b"x"),
        None,
    )
    .await;
    let consumer: consumer::PullConsumer =
        h.js.get_consumer_from_stream("egress-worker", "EGRESS")
            .await
            .unwrap();
    let mut batch = consumer
        .fetch()
        .max_messages(1)
        .expires(Duration::from_secs(5))
        .messages()
        .await
        .unwrap();
    let message = batch.next().await.expect("a message").unwrap();
    message
        .double_ack()
        .await
        .expect("the first ack is confirmed");
    message
        .double_ack()
        .await
        .expect("a repeated ack is confirmed too");
    egress_settled(&h).await;
}
