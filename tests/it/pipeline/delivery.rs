//! Happy path, duplicates, and the DLQ round trip.

use std::collections::HashMap;
use std::time::Duration;

use switchyard_dlq::DlqCode;
use switchyard_dlq_ops::plan_replay;
use switchyard_subjects::{InputStage, Namespace};

use switchyard_testkit::wait_for;

use super::{Pipeline, SECRET, signature_is_valid};

/// A little more than the ingress stream's duplicate window (100 ms).
const WINDOW: Duration = Duration::from_millis(150);

#[tokio::test]
async fn a_thousand_messages_across_three_tenants_are_each_delivered_once_signed_and_intact() {
    let p = Pipeline::start(&["acme", "globex", "initech"]).await;
    for tenant in ["acme", "globex", "initech"] {
        p.route(tenant, None, "hooks", &format!("{tenant}/in"))
            .await;
    }
    let mut sent = HashMap::new();
    for i in 0..1000 {
        let tenant = ["acme", "globex", "initech"][i % 3];
        let payload = format!("{{\"n\":{i},\"tenant\":\"{tenant}\",\"bytes\":\"\\u00e9\\u2713\"}}");
        p.publish(
            tenant,
            "ops",
            "hooks",
            &format!("msg-{i}"),
            payload.as_bytes(),
        )
        .await;
        sent.insert(payload.into_bytes(), tenant);
    }
    p.wait_delivered(1000, Duration::from_secs(120)).await;

    let received = p.sink.received();
    assert_eq!(received.len(), 1000, "each message exactly once");
    for r in &received {
        let tenant = sent
            .get(&r.body[..])
            .expect("the payload bytes arrive unchanged");
        assert_eq!(
            r.path,
            format!("{tenant}/in"),
            "delivered to its tenant's route"
        );
        assert!(
            signature_is_valid(SECRET, r),
            "valid Standard Webhooks signature"
        );
    }
    assert!(p.dlq().await.is_empty());
    p.stop().await;
}

#[tokio::test]
async fn a_producer_retry_is_dropped_at_its_tenant_edge_or_by_idempotency_and_another_tenants_same_id_is_its_own()
 {
    let p = Pipeline::start(&["acme", "globex"]).await;
    p.route("acme", None, "hooks", "acme").await;
    p.route("globex", None, "hooks", "globex").await;
    let first = p
        .publish_acked("acme", "ops", "hooks", "order-1", b"first")
        .await;
    assert!(!first.duplicate);
    // Inside the tenant's own duplicate window (2 min) JetStream drops the retry at the edge.
    let retry = p
        .publish_acked("acme", "ops", "hooks", "order-1", b"retry")
        .await;
    assert!(retry.duplicate, "{retry:?}");
    assert_eq!(retry.stream, "INGRESS_acme");
    // The same id from another tenant is its own message: its own stream, its own window.
    let other = p
        .publish_acked("globex", "ops", "hooks", "order-1", b"globex")
        .await;
    assert!(!other.duplicate, "{other:?}");
    assert_eq!(other.stream, "INGRESS_globex");
    p.wait_delivered(2, Duration::from_secs(30)).await;

    // Past the window (shortened here to the server's minimum, as an operator may set it),
    // the retry is stored and the idempotency stage drops it. nats-server forgets ids on a
    // timer (`stream.purgeMsgIds`), not at the instant the window ends, so on a busy machine
    // an id can outlive the window: the retry is repeated (each repetition the stream still
    // drops as a duplicate) until the stream stores it. The window is shortened twice: a
    // stream update fires that timer at once but sets the new window only afterwards
    // (`stream.update`, nats-server 2.15.1), so the purge can still read the old one (2 min)
    // and re-arm itself for it; the second update's purge reads a short window either way.
    let mut acme = p.js.get_stream("INGRESS_acme").await.unwrap();
    let mut config = acme.info().await.unwrap().config.clone();
    for window in [110, 100] {
        config.duplicate_window = Duration::from_millis(window);
        p.js.update_stream(config.clone()).await.unwrap();
    }
    tokio::time::sleep(WINDOW).await;
    wait_for(
        "a retry past the window to be stored",
        Duration::from_secs(10),
        || async {
            let late = p
                .publish_acked("acme", "ops", "hooks", "order-1", b"late")
                .await;
            (!late.duplicate).then_some(())
        },
    )
    .await;
    p.wait_settled(Duration::from_secs(30)).await;

    let mut bodies: Vec<Vec<u8>> = p
        .sink
        .received()
        .into_iter()
        .map(|r| r.body.to_vec())
        .collect();
    bodies.sort();
    assert_eq!(bodies, [b"first".to_vec(), b"globex".to_vec()]);
    p.stop().await;
}

#[tokio::test]
async fn a_permanent_failure_lands_in_the_dlq_and_replays_once_the_route_is_fixed() {
    let p = Pipeline::start(&["acme"]).await;
    p.route("acme", None, "hooks", "broken").await;
    p.sink.answer("broken", 400);
    p.publish("acme", "ops", "hooks", "order-9", b"payload-9")
        .await;
    let entry = switchyard_testkit::wait_for("the dlq entry", Duration::from_secs(30), || async {
        p.dlq().await.into_iter().next()
    })
    .await;
    assert_eq!(entry.record.code, DlqCode::PermanentFailure);
    assert_eq!(entry.record.attempts, 1);
    assert_eq!(entry.record.history.len(), 1);
    assert_eq!(entry.record.history[0].status, Some(400));
    assert_eq!(&entry.payload[..], b"payload-9");

    // Fix the route, replay: re-injected at backpressure (not dropped as a duplicate by the
    // idempotency stage it already passed), delivered, and only then removed from the DLQ.
    p.route("acme", None, "hooks", "fixed").await;
    let plan = plan_replay(&Namespace::default(), &entry).unwrap();
    let ack =
        p.js.publish_with_headers(plan.subject, plan.headers, plan.payload)
            .await
            .unwrap()
            .await
            .unwrap();
    assert!(!ack.duplicate);
    p.js.get_stream("DLQ")
        .await
        .unwrap()
        .delete_message(entry.seq)
        .await
        .unwrap();
    switchyard_testkit::wait_for("the replayed delivery", Duration::from_secs(30), || async {
        p.sink.received().into_iter().find(|r| r.path == "fixed")
    })
    .await;
    let received = p.sink.received();
    assert_eq!(received.iter().filter(|r| r.path == "fixed").count(), 1);
    assert_eq!(
        received[0].webhook_id, received[1].webhook_id,
        "the replay keeps the webhook id"
    );
    assert!(p.dlq().await.is_empty());
    p.stop().await;
}

#[tokio::test]
async fn replayed_egress_entries_are_paced_by_the_tenants_rate_limit() {
    let p = Pipeline::start(&["acme"]).await;
    p.set_limit("acme", 2.0, 1).await;
    p.route("acme", None, "hooks", "broken").await;
    p.sink.answer("broken", 400);
    for i in 0..10 {
        p.publish("acme", "ops", "hooks", &format!("order-{i}"), b"x")
            .await;
    }
    let entries =
        switchyard_testkit::wait_for("10 dlq entries", Duration::from_secs(60), || async {
            let entries = p.dlq().await;
            (entries.len() == 10).then_some(entries)
        })
        .await;

    // The default target of an egress entry is backpressure: the copies wait for the
    // tenant's tokens (2/s, burst 1) instead of reaching the sink at once.
    p.route("acme", None, "hooks", "fixed").await;
    let started = std::time::Instant::now();
    for entry in &entries {
        assert_eq!(entry.record.code, DlqCode::PermanentFailure);
        let plan = plan_replay(&Namespace::default(), entry).unwrap();
        assert_eq!(plan.stage, InputStage::Backpressure);
        p.js.publish_with_headers(plan.subject, plan.headers, plan.payload)
            .await
            .unwrap()
            .await
            .unwrap();
    }
    switchyard_testkit::wait_for(
        "10 replayed deliveries",
        Duration::from_secs(60),
        || async {
            (p.sink
                .received()
                .iter()
                .filter(|r| r.path == "fixed")
                .count()
                == 10)
                .then_some(())
        },
    )
    .await;
    let took = started.elapsed();
    assert!(
        took >= Duration::from_secs(4),
        "10 replays at 2/s (burst 1) reached the sink in {took:?}: the rate limit was bypassed"
    );
    p.stop().await;
}
