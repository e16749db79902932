//! Crashes mid-stream: services killed between claim and ack or after a delivery, the
//! nats-server itself killed with SIGKILL, and a cluster node lost. Nothing accepted is lost; a
//! doubled delivery, if any, carries the same webhook id.

use std::collections::HashMap;
use std::ops::Range;
use std::time::Duration;

use switchyard_testkit::wait_for;
use switchyard_topology::ConsumerName;

use super::{Pipeline, Svc};

/// Short ack waits (so crash redeliveries come quickly) and a route for tenant `acme`.
async fn prepare(p: &Pipeline) {
    p.shorten_ack_wait(Duration::from_secs(2)).await;
    p.route("acme", None, "hooks", "in").await;
}

/// Publishes messages `m-<i>` (payload `<i>`) for every `i` in `range`.
async fn publish_range(p: &Pipeline, range: Range<usize>) {
    for i in range {
        p.publish(
            "acme",
            "ops",
            "hooks",
            &format!("m-{i}"),
            format!("{i}").as_bytes(),
        )
        .await;
    }
}

/// Waits for `n` distinct deliveries, checks nothing was dead-lettered, reports doubles (which
/// carry the same webhook id, so a sink can drop them), and stops the pipeline.
async fn assert_all_delivered(p: Pipeline, n: usize, timeout: Duration, fault: &str) {
    p.wait_delivered(n, timeout).await;
    let mut counts: HashMap<String, usize> = HashMap::new();
    for r in p.sink.received() {
        *counts.entry(r.webhook_id).or_default() += 1;
    }
    assert_eq!(counts.len(), n, "every accepted message delivered");
    let doubled = counts.values().filter(|&&c| c > 1).count();
    eprintln!(
        "deliveries doubled by {fault} (same webhook-id, de-duplicable by the sink): {doubled}"
    );
    assert!(p.dlq().await.is_empty());
    p.stop().await;
}

#[tokio::test]
async fn killing_idempotency_and_egress_mid_stream_loses_nothing() {
    let mut p = Pipeline::start(&["acme"]).await;
    prepare(&p).await;
    publish_range(&p, 0..101).await;
    p.kill(Svc::Idempotency);
    p.kill(Svc::Egress);
    publish_range(&p, 101..201).await;
    p.start_service(Svc::Idempotency).await;
    p.start_service(Svc::Egress).await;
    publish_range(&p, 201..300).await;
    assert_all_delivered(p, 300, Duration::from_secs(120), "the crash").await;
}

#[tokio::test]
async fn a_nats_server_killed_with_sigkill_mid_stream_loses_nothing() {
    let mut p = Pipeline::start(&["acme"]).await;
    prepare(&p).await;
    publish_range(&p, 0..101).await;
    let restarted = time::OffsetDateTime::now_utc();
    p.server.single().restart().await;
    publish_range(&p, 101..200).await;
    // The tenant's consumers keep their state in memory: the restart removed them, and the
    // stages create them again once reconnected — not only when the pull each had waiting
    // (forgotten by the restarted server) would have expired, 20 s on.
    for name in [
        ConsumerName::IngressWorker,
        ConsumerName::BackpressureTenant,
    ] {
        let info = wait_for(
            &format!("{name:?} created again"),
            Duration::from_secs(15),
            || async {
                p.tenant_consumer_info("acme", name)
                    .await
                    .filter(|info| info.created >= restarted)
            },
        )
        .await;
        assert!(info.config.memory_storage, "{name:?} state in memory");
    }
    p.wait_delivered(200, Duration::from_secs(180)).await;
    assert_all_delivered(p, 200, Duration::from_secs(180), "the restart").await;
}

#[tokio::test]
async fn on_a_three_node_cluster_a_node_killed_mid_stream_loses_nothing() {
    let mut p = Pipeline::start_cluster(&["acme"]).await;
    prepare(&p).await;
    publish_range(&p, 0..101).await;
    p.server.cluster().kill(0);
    publish_range(&p, 101..201).await;
    p.server.cluster().start_again(0).await;
    publish_range(&p, 201..300).await;
    assert_all_delivered(p, 300, Duration::from_secs(180), "the node loss").await;
}
