//! A dead letter of a tenant holding its share of the DLQ is parked, not redelivered: the sink
//! that refused the message for good is not called again while the record waits, and the
//! record, once written, counts the one attempt made.

use std::time::Duration;

use bytes::Bytes;
use switchyard_dlq::{DeadLetter, DlqCode};
use switchyard_keys::{PlatformId, Stage, TenantId};
use switchyard_subjects::Namespace;
use switchyard_testkit::{stored_count, wait_for};
use switchyard_topology::spec::EMBEDDED;
use time::OffsetDateTime;

use crate::support::{Harness, Reply, Sink, address, webhook};

#[tokio::test]
async fn a_permanent_failure_waits_for_room_in_the_dlq_without_calling_the_sink_again() {
    let sink = Sink::start().await;
    sink.script("/refuses", vec![], Reply::status(400));
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("topology.toml");
    std::fs::write(
        &file,
        EMBEDDED.replace("tenant_max_msgs = 10000", "tenant_max_msgs = 1"),
    )
    .unwrap();
    let mut h = Harness::new().await;
    // acme already holds its one entry.
    let now = OffsetDateTime::now_utc();
    DeadLetter {
        stage: Stage::Ingress,
        code: DlqCode::MissingMsgId,
        reason: "earlier".into(),
        tenant: Some(TenantId::new("acme").unwrap()),
        platform: Some(PlatformId::new("slack").unwrap()),
        attempts: 0,
        first_failure: now,
        last_failure: now,
        source_stream: "INGRESS_acme".into(),
        source_seq: 1,
        source_time: Some(now),
        source_subject: "ingress.v1.acme.ops.slack".into(),
        history: Vec::new(),
    }
    .publish(&h.js, &Namespace::default(), None, "old".into())
    .await
    .unwrap()
    .await
    .unwrap();
    h.put_route("acme.ops.slack", &webhook(&sink, "/refuses"))
        .await;
    h.start(|c| c.deployment.topology_file = Some(file.clone()))
        .await;

    let envelope = h
        .publish(
            &address("acme", "ops", "slack"),
            Bytes::from_static(b"refused"),
            None,
        )
        .await;
    wait_for("the sink's answer", Duration::from_secs(20), || async {
        (sink.count("/refuses") == 1).then_some(())
    })
    .await;
    // Parked: a copy waits in EGRESS (its schedule), the DLQ still holds only the old entry,
    // and over three parking rounds (5 s each) the sink is not called again.
    wait_for("three parking rounds", Duration::from_secs(30), || async {
        let metrics = h.probe("/metrics").await;
        let parked: f64 = metrics
            .lines()
            .filter(|l| {
                l.starts_with("switchyard_egress_deferred_total") && l.contains("dlq_share")
            })
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum();
        (parked >= 3.0).then_some(())
    })
    .await;
    assert_eq!(sink.count("/refuses"), 1, "the sink is not called again");
    assert_eq!(stored_count(&h.js, "DLQ").await, 1);
    assert!(
        stored_count(&h.js, "EGRESS").await >= 1,
        "the parked copy waits"
    );

    // Room again: the record is written, once, with the one attempt that was made.
    h.js.get_stream("DLQ")
        .await
        .unwrap()
        .purge()
        .filter("dlq.v1.acme.ingress.>")
        .await
        .unwrap();
    let entry = h.dlq_entry(&envelope).await;
    assert_eq!(entry.record.code, DlqCode::PermanentFailure);
    assert_eq!(entry.record.attempts, 1);
    assert_eq!(entry.record.history.len(), 1);
    assert_eq!(sink.count("/refuses"), 1);
    assert!(
        entry
            .original_headers
            .get(switchyard_envelope::headers::PARKED_CODE)
            .is_some(),
        "the record keeps what parked it (a replay clears it)"
    );
    h.stop().await;
}
