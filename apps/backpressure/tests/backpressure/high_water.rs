//! `EGRESS` must discard old (JetStream refuses message schedules otherwise), so a full one
//! would evict its oldest messages. Hand-offs into it stop at its high-water mark instead: the
//! rest wait in `BACKPRESSURE`, nothing is evicted, and every message arrives once there is
//! room. The hand-offs held meanwhile stay within the service's byte budget.

use std::collections::BTreeSet;
use std::time::Duration;

use async_nats::jetstream::consumer::pull;
use futures::StreamExt;
use switchyard_envelope::Envelope;
use switchyard_testkit::{backpressure_streams, stored_count, stored_count_in, wait_for};

use super::Harness;

#[tokio::test]
async fn hand_offs_stop_at_egress_high_water_mark_and_nothing_is_evicted() {
    let mut h = Harness::start(0).await;
    // A tiny EGRESS: 10 messages, so 90 % is 9.
    shrink_egress(&h, 10).await;
    h.add_replica().await;

    h.send("acme", 30, 0.0).await;
    wait_for(
        "EGRESS to reach its high-water mark, the rest waiting",
        Duration::from_secs(30),
        || async {
            (stored_count(&h.js, "EGRESS").await >= 9
                && stored_count_in(&h.js, &backpressure_streams()).await > 0)
                .then_some(())
        },
    )
    .await;
    let egress = h.js.get_stream("EGRESS").await.unwrap();
    let state = egress.cached_info().state.clone();
    assert_eq!(
        state.first_sequence, 1,
        "nothing evicted from EGRESS: {state:?}"
    );
    assert!(state.messages <= 10, "{state:?}");

    // Something drains EGRESS (here: the egress stage's consumer, acking what it reads):
    // every message arrives, once.
    assert_eq!(drain_egress(&h, 30).await.len(), 30);
    let state =
        h.js.get_stream("EGRESS")
            .await
            .unwrap()
            .cached_info()
            .state
            .clone();
    assert_eq!(state.messages, 0, "{state:?}");
    h.stop().await;
}

/// A tenant's messages are handed on together, not one round trip at a time: while `EGRESS`
/// is at its high-water mark every hand-off is held in place, and all of the tenant's messages
/// its lease window admits are held at once (the stage's in-flight gauge), not one behind the
/// other. All of them arrive once there is room.
#[tokio::test]
async fn a_tenants_held_hand_offs_are_in_flight_together_not_one_at_a_time() {
    let mut h = Harness::start(0).await;
    shrink_egress(&h, 10).await;
    h.add_replica().await;
    // 1,000/s over a 0.5 s lease window: up to 500 of the tenant's messages in flight.
    h.set_limit("acme", super::limit(1_000.0, 1_000)).await;

    h.send("acme", 30, 0.0).await;
    // EGRESS takes 9 (90 % of 10); the other 21 are held, all at once.
    wait_for(
        "the tenant's held hand-offs to be in flight together",
        Duration::from_secs(30),
        || async { (h.metric_sum("switchyard_messages_in_flight").await >= 15.0).then_some(()) },
    )
    .await;

    assert_eq!(drain_egress(&h, 30).await.len(), 30);
    h.stop().await;
}

/// The tenant loops share the service's byte budget: while every hand-off is held above
/// `EGRESS`'s mark, three tenants' 300 KiB messages are fetched only while what the service
/// holds is under `max_in_flight_bytes` (here the least, 1 MiB + 64 KiB: three messages fit)
/// or its tenant under its fair share, and each tenant's loop may bring one more: at most
/// twice the budget and a message per tenant (docs/contracts.md, "What a stage holds"), where
/// each tenant's lease window alone would let in all its ten. All of them arrive once there is
/// room.
#[tokio::test]
async fn the_tenant_loops_hold_no_more_message_bytes_than_the_budget_together() {
    const BUDGET: f64 = 1_114_112.0;
    const SIZE: usize = 300 * 1024;
    let mut h = Harness::start(0).await;
    shrink_egress(&h, 10).await;
    h.add_replica_with(|c| c.backpressure.max_in_flight_bytes = BUDGET as usize)
        .await;
    let tenants = ["acme", "globex", "initech"];
    for tenant in tenants {
        h.set_limit(tenant, super::limit(1_000.0, 1_000)).await;
    }
    let payload = bytes::Bytes::from(vec![b'x'; SIZE]);
    for tenant in tenants {
        h.send_sized(tenant, 10, 0.0, payload.clone()).await;
    }
    // EGRESS takes 9 (90 % of 10); the loops then fill the budget with held hand-offs and stop
    // fetching (no pull open where messages wait), while the rest wait unfetched in
    // BACKPRESSURE.
    wait_for(
        "the budget to fill and the loops to stop fetching",
        Duration::from_secs(30),
        || async {
            (h.metric_sum("switchyard_message_bytes_held").await >= BUDGET
                && fetching(&h, &tenants).await == 0)
                .then_some(())
        },
    )
    .await;
    assert!(stored_count_in(&h.js, &backpressure_streams()).await > 9);
    let held = h.metric_sum("switchyard_message_bytes_held").await;
    assert!(
        held < 2.0 * BUDGET + 3.0 * (SIZE as f64 + 4096.0),
        "{held} bytes held: more than twice the budget and one message per tenant loop"
    );

    assert_eq!(drain_egress(&h, 30).await.len(), 30);
    h.stop().await;
}

/// The `tenants`' `backpressure-<tenant>` consumers (in every shard) with a pull open while
/// messages wait for them: loops still fetching. (A tenant whose messages have all been
/// fetched keeps a pull open for more.)
async fn fetching(h: &Harness, tenants: &[&str]) -> usize {
    let mut fetching = 0;
    for name in backpressure_streams() {
        let stream = h.js.get_stream(&name).await.unwrap();
        for tenant in tenants {
            let durable = format!("backpressure-{tenant}");
            if let Ok(mut consumer) = stream.get_consumer::<pull::Config>(&durable).await {
                let info = consumer.info().await.unwrap();
                if info.num_waiting > 0 && info.num_pending > 0 {
                    fetching += 1;
                }
            }
        }
    }
    fetching
}

/// Sets `EGRESS`'s `max_messages` (its high-water mark is 90 % of it).
async fn shrink_egress(h: &Harness, max_messages: i64) {
    switchyard_testkit::set_max_messages(&h.js, "EGRESS", max_messages).await;
}

/// Reads `EGRESS` through the egress stage's consumer, acking, until `n` distinct envelopes
/// arrived (or fails after 60 s naming how many did); their ids.
async fn drain_egress(h: &Harness, n: usize) -> BTreeSet<switchyard_envelope::EnvelopeId> {
    let drain =
        h.js.get_stream("EGRESS")
            .await
            .unwrap()
            .get_consumer::<pull::Config>("egress-worker")
            .await
            .unwrap();
    let mut ids = BTreeSet::new();
    let mut messages = drain.messages().await.unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while ids.len() < n {
        let msg = tokio::time::timeout_at(deadline, messages.next())
            .await
            .unwrap_or_else(|_| panic!("only {} of {n} reached EGRESS", ids.len()))
            .unwrap()
            .unwrap();
        ids.insert(Envelope::from_headers(msg.headers.as_ref()).unwrap().id);
        msg.double_ack().await.unwrap();
    }
    ids
}
