//! Circuit breakers shared across egress replicas: one replica's open breaker holds the route
//! on every replica, and one answered probe closes it everywhere, each reported once.

use std::time::Duration;

use bytes::Bytes;
use switchyard_keys::DestinationKey;
use switchyard_registry::{BreakerRecord, Destination, Route, Store, Subscription};
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

    // The open period on this process's clock.
    let held_until = tokio::time::Instant::now()
        + (record.open_until - time::OffsetDateTime::now_utc())
            .try_into()
            .unwrap_or(Duration::ZERO);

    // The route recovers at once: were B not holding the route too, it would deliver now.
    // Both hold it until the open period ends; then the first answered probe closes the
    // breaker everywhere, and every message is delivered once.
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
    let requests = sink.requests("/down");
    let failed = requests.iter().filter(|r| r.status == 503).count();
    assert!(
        failed <= at_open + 1,
        "failed attempts: {at_open} when the breaker opened, {failed} in all"
    );
    let first_delivery = requests
        .iter()
        .filter(|r| r.status == 200)
        .map(|r| r.at)
        .min()
        .unwrap();
    assert!(
        first_delivery + Duration::from_millis(250) >= held_until,
        "a replica attempted the route {:?} before its shared open period ended",
        held_until - first_delivery
    );
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

#[tokio::test]
async fn a_destination_disabled_by_one_replica_forgets_its_breaker_on_every_replica() {
    const MESSAGES: usize = 5;
    let sink = Sink::start().await;
    sink.script("/crm", vec![], Reply::status(503));
    let mut h = Harness::new().await;
    let destinations: Store<DestinationKey, Destination> =
        Store::new(h.js.get_key_value("destinations").await.unwrap());
    let key = DestinationKey {
        tenant: "acme".parse().unwrap(),
        destination: "crm".parse().unwrap(),
    };
    let destination = Destination {
        target: webhook(&sink, "/crm"),
        subscription: Subscription::default(),
        description: None,
        disabled: None,
        rate_limit: None,
    };
    destinations.put(&key, &destination).await.unwrap();
    // Both replicas open at the first failure and probe every second, together: the failed
    // probes of one race the other's disabling.
    let tune = |c: &mut switchyard_egress::config::EgressConfig| {
        c.egress.max_attempts = 1000;
        c.egress.backoff_secs = vec![1];
        c.egress.breaker_failure_threshold = 1;
        c.egress.breaker_open_secs = 1;
        c.egress.breaker_max_open_secs = 1;
        c.egress.disable_after_secs = 2;
        c.egress.park_recheck_secs = 1;
    };
    h.start(tune).await;
    h.start_replicas(1, tune).await;
    for i in 0..MESSAGES {
        h.publish(
            &address("acme", "ops", "shop"),
            Bytes::from(format!("{{\"n\":{i}}}")),
            Some("application/json"),
        )
        .await;
    }
    wait_for("egress to disable crm", Duration::from_secs(30), || async {
        destinations
            .get(&key)
            .await
            .unwrap()
            .and_then(|d| d.disabled)
    })
    .await;
    // Parking holds its messages: no breaker record is left for it, on any replica.
    let breakers = h.js.get_key_value("breakers").await.unwrap();
    wait_for(
        "crm's breaker forgotten",
        Duration::from_secs(10),
        || async {
            breakers
                .get("acme.crm")
                .await
                .unwrap()
                .is_none()
                .then_some(())
        },
    )
    .await;

    // Fixed and enabled: every message is delivered once, and crm is not disabled again by
    // an outage that is over.
    sink.script("/crm", vec![], Reply::status(200));
    let mut enabled = destinations.get(&key).await.unwrap().unwrap();
    enabled.disabled = None;
    destinations.put(&key, &enabled).await.unwrap();
    wait_for(
        "every message delivered",
        Duration::from_secs(30),
        || async {
            let delivered = sink.statuses("/crm").iter().filter(|s| **s == 200).count();
            (delivered >= MESSAGES).then_some(())
        },
    )
    .await;
    let delivered = sink.statuses("/crm").iter().filter(|s| **s == 200).count();
    assert_eq!(delivered, MESSAGES, "each message delivered once");
    assert!(
        destinations
            .get(&key)
            .await
            .unwrap()
            .unwrap()
            .disabled
            .is_none(),
        "not disabled again"
    );
    assert!(breakers.get("acme.crm").await.unwrap().is_none());
    h.stop().await;
}
