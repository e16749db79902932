//! Crashes mid-stream: services killed between claim and ack or after a delivery, and the
//! nats-server itself killed with SIGKILL. Nothing accepted is lost; a doubled delivery, if
//! any, carries the same webhook id.

use std::collections::HashMap;
use std::time::Duration;

use super::{Pipeline, Svc};

fn distinct_and_doubles(p: &Pipeline) -> (usize, usize) {
    let mut counts: HashMap<String, usize> = HashMap::new();
    for r in p.sink.received() {
        *counts.entry(r.webhook_id).or_default() += 1;
    }
    (counts.len(), counts.values().filter(|&&n| n > 1).count())
}

#[tokio::test]
async fn killing_idempotency_and_egress_mid_stream_loses_nothing() {
    let mut p = Pipeline::start(&["acme"]).await;
    p.shorten_ack_wait(Duration::from_secs(2)).await;
    p.route("acme", None, "hooks", "in").await;
    for i in 0..300 {
        p.publish(
            "acme",
            "ops",
            "hooks",
            &format!("m-{i}"),
            format!("{i}").as_bytes(),
        )
        .await;
        if i == 100 {
            p.kill(Svc::Idempotency);
            p.kill(Svc::Egress);
        }
        if i == 200 {
            p.start_service(Svc::Idempotency).await;
            p.start_service(Svc::Egress).await;
        }
    }
    p.wait_delivered(300, Duration::from_secs(120)).await;
    let (distinct, doubled) = distinct_and_doubles(&p);
    assert_eq!(distinct, 300, "every message delivered");
    eprintln!(
        "deliveries doubled by the crash (same webhook-id, de-duplicable by the sink): {doubled}"
    );
    assert!(p.dlq().await.is_empty());
    p.stop().await;
}

#[tokio::test]
async fn a_nats_server_killed_with_sigkill_mid_stream_loses_nothing() {
    let mut p = Pipeline::start(&["acme"]).await;
    p.shorten_ack_wait(Duration::from_secs(2)).await;
    p.route("acme", None, "hooks", "in").await;
    for i in 0..200 {
        p.publish(
            "acme",
            "ops",
            "hooks",
            &format!("m-{i}"),
            format!("{i}").as_bytes(),
        )
        .await;
        if i == 100 {
            p.server.single().restart().await;
        }
    }
    p.wait_delivered(200, Duration::from_secs(180)).await;
    let (distinct, doubled) = distinct_and_doubles(&p);
    assert_eq!(distinct, 200, "every accepted message delivered");
    eprintln!("deliveries doubled by the restart (same webhook-id): {doubled}");
    assert!(p.dlq().await.is_empty());
    p.stop().await;
}

#[tokio::test]
async fn on_a_three_node_cluster_a_node_killed_mid_stream_loses_nothing() {
    let mut p = Pipeline::start_cluster(&["acme"]).await;
    p.shorten_ack_wait(Duration::from_secs(2)).await;
    p.route("acme", None, "hooks", "in").await;
    for i in 0..300 {
        p.publish(
            "acme",
            "ops",
            "hooks",
            &format!("m-{i}"),
            format!("{i}").as_bytes(),
        )
        .await;
        if i == 100 {
            p.server.cluster().kill(0);
        }
        if i == 200 {
            p.server.cluster().start_again(0).await;
        }
    }
    p.wait_delivered(300, Duration::from_secs(180)).await;
    let (distinct, doubled) = distinct_and_doubles(&p);
    assert_eq!(distinct, 300, "every accepted message delivered");
    eprintln!("deliveries doubled by the node loss (same webhook-id): {doubled}");
    assert!(p.dlq().await.is_empty());
    p.stop().await;
}
