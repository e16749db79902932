//! Storage health as the services measure it, on a real nats-server: the KV and publish round
//! trips and the fill of the shared streams and buckets a service uses, in `/metrics`, and
//! `/readyz` failing with the reason when a stream passes `storage.max_fill_pct` — and ready
//! again once it is below. The publish probe never stores anything.

use std::time::Duration;

use async_nats::jetstream::stream;
use switchyard_keys::Stage;
use switchyard_runtime::StorageConfig;
use switchyard_service::{Metrics, StorageProbe};
use switchyard_subjects::Namespace;
use switchyard_testkit::{NatsServer, http_get, stored_count, wait_for};
use switchyard_topology::{DeploymentConfig, provision};

use crate::pipeline::{Pipeline, Svc};

const DEADLINE: Duration = Duration::from_secs(30);

#[tokio::test]
async fn a_measurement_reports_round_trips_and_fill_and_names_a_stream_past_its_bound() {
    let server = NatsServer::start().await;
    let js = async_nats::jetstream::new(server.client().await);
    provision(&js, &DeploymentConfig::default().resolve().unwrap(), false)
        .await
        .unwrap();
    js.create_stream(stream::Config {
        name: "TINY".into(),
        subjects: vec!["tiny.>".into()],
        max_messages: 4,
        ..Default::default()
    })
    .await
    .unwrap();
    let metrics = Metrics::new(Stage::Egress);
    let probe = StorageProbe::new(
        js.clone(),
        &Namespace::default(),
        Stage::Egress,
        StorageConfig::default(),
        Some("tenants".into()),
        vec!["KV_tenants".into(), "TINY".into()],
        &metrics,
    );
    probe.measure().await.unwrap();
    let text = metrics.render();
    for series in [
        "switchyard_storage_kv_rtt_seconds ",
        "switchyard_storage_publish_rtt_seconds ",
        "switchyard_storage_fill_pct{stream=\"TINY\"} 0",
        "switchyard_storage_messages{stream=\"TINY\"} 0",
    ] {
        assert!(text.contains(series), "{series} missing:\n{text}");
    }
    assert_eq!(
        stored_count(&js, "DLQ").await,
        0,
        "the publish probe is refused, never stored"
    );

    for i in 0..4 {
        js.publish(format!("tiny.{i}"), "x".into())
            .await
            .unwrap()
            .await
            .unwrap();
    }
    let reason = probe.measure().await.unwrap_err();
    assert_eq!(reason, "TINY is 100.0% full (storage.max_fill_pct = 95)");
    assert!(
        metrics
            .render()
            .contains("switchyard_storage_fill_pct{stream=\"TINY\"} 100"),
        "{}",
        metrics.render()
    );
}

/// `/readyz` of a running egress: ready; not ready naming the DLQ once it is past its bound;
/// ready again after.
#[tokio::test]
async fn readiness_fails_with_the_reason_while_the_dlq_is_past_its_fill_bound() {
    let mut p = Pipeline::start(&["acme"]).await;
    p.stop_service(Svc::Egress).await;
    p.start_service_tuned(Svc::Egress, |config| {
        config.storage.check_interval_secs = 1;
    })
    .await;
    let addr = p.probes_addr(Svc::Egress);
    wait_for("egress ready", DEADLINE, || async {
        http_get(addr, "/readyz")
            .await
            .starts_with("HTTP/1.1 200")
            .then_some(())
    })
    .await;
    let rtt = switchyard_testkit::metric(addr, "switchyard_storage_publish_rtt_seconds").await;
    assert!(rtt > 0.0, "a publish round trip was measured");

    // The DLQ bounded to one entry, and holding one.
    let mut dlq = p.js.get_stream("DLQ").await.unwrap();
    let original = dlq.info().await.unwrap().config.clone();
    let mut bounded = original.clone();
    bounded.max_messages = 1;
    p.js.update_stream(&bounded).await.unwrap();
    p.js.publish("dlq.v1.acme.egress.hooks", "entry".into())
        .await
        .unwrap()
        .await
        .unwrap();
    let answer = wait_for("egress not ready", DEADLINE, || async {
        let answer = http_get(addr, "/readyz").await;
        answer.starts_with("HTTP/1.1 503").then_some(answer)
    })
    .await;
    assert!(
        answer.contains("not ready: DLQ is 100.0% full (storage.max_fill_pct = 95)"),
        "{answer}"
    );

    p.js.update_stream(&original).await.unwrap();
    wait_for("egress ready again", DEADLINE, || async {
        http_get(addr, "/readyz")
            .await
            .starts_with("HTTP/1.1 200")
            .then_some(())
    })
    .await;
    p.stop().await;
}
