//! Circuit breakers shared across egress replicas: one replica's open breaker holds the route
//! on every replica, and one answered probe closes it everywhere, each reported once.

use std::time::Duration;

use bytes::Bytes;
use switchyard_registry::{BreakerRecord, Route};
use switchyard_testkit::wait_for;

use crate::support::{Harness, Reply, Sink, address, webhook};

/// How many operational events of `kind` the EVENTS stream holds for tenant acme.
async fn events(h: &Harness, kind: &str) -> u64 {
    h.events(kind).await.0
}

#[tokio::test]
async fn a_breaker_one_replica_opens_holds_the_route_on_every_replica_and_one_probe_closes_it() {
    const MESSAGES: usize = 20;
    let sink = Sink::start().await;
    sink.script("/down", vec![], Reply::status(503));
    let mut h = Harness::new().await;
    let mut route = webhook(&sink, "/down");
    if let Route::Webhook(w) = &mut route {
        // One attempt at a time per replica: at most one is in flight when the breaker opens.
        w.max_in_flight = 1;
    }
    h.put_route("acme.ops.slack", &route).await;
    let common = |c: &mut switchyard_egress::config::EgressConfig| {
        c.egress.max_attempts = 1000;
        c.egress.backoff_secs = vec![1];
        c.egress.breaker_open_secs = 6;
        c.egress.breaker_max_open_secs = 6;
    };
    // Replica A opens its breaker after three failures. Replica B never would on its own
    // (its thresholds are out of reach): whatever B holds back, it holds because A's breaker
    // is shared.
    h.start(|c| {
        common(c);
        c.egress.breaker_failure_threshold = 3;
    })
    .await;
    h.start_replicas(1, |c| {
        common(c);
        c.egress.breaker_failure_threshold = 1000;
        c.egress.breaker_failure_rate = 0.0;
    })
    .await;
    for i in 0..MESSAGES {
        h.publish(
            &address("acme", "ops", "slack"),
            Bytes::from(format!("{{\"n\":{i}}}")),
            Some("application/json"),
        )
        .await;
    }

    wait_for("the breaker to open", Duration::from_secs(30), || async {
        (events(&h, "breaker_opened").await >= 1).then_some(())
    })
    .await;
    let at_open = sink.count("/down");
    let breakers = h.js.get_key_value("breakers").await.unwrap();
    let record: BreakerRecord = serde_json::from_slice(
        &breakers
            .get("acme.ops.slack")
            .await
            .unwrap()
            .expect("the open breaker's record"),
    )
    .unwrap();
    assert!(record.open_until > record.down_since, "{record:?}");
    assert_eq!(record.reopenings, 0);

    // Held on both replicas for the open period: no attempt but the one B may have had in
    // flight when A's breaker opened, though messages keep coming back to look.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let held = sink.count("/down");
    assert!(
        held <= at_open + 1,
        "attempts while the breaker was open: {at_open} when it opened, {held} two seconds later"
    );

    // The route recovers: the first answered probe closes the breaker everywhere, and every
    // message is delivered once.
    sink.script("/down", vec![], Reply::status(200));
    wait_for(
        "every message delivered",
        Duration::from_secs(60),
        || async {
            let delivered = sink.statuses("/down").iter().filter(|s| **s == 200).count();
            (delivered >= MESSAGES).then_some(())
        },
    )
    .await;
    wait_for("the breaker closed", Duration::from_secs(10), || async {
        (events(&h, "breaker_closed").await >= 1).then_some(())
    })
    .await;
    assert!(
        breakers.get("acme.ops.slack").await.unwrap().is_none(),
        "the record is gone once the breaker closed"
    );
    let delivered = sink.statuses("/down").iter().filter(|s| **s == 200).count();
    assert_eq!(delivered, MESSAGES, "each message delivered once");
    // One outage, two replicas: reported once each way.
    assert_eq!(events(&h, "breaker_opened").await, 1);
    assert_eq!(events(&h, "breaker_closed").await, 1);
    h.stop().await;
}
