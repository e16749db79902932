//! A hand-off too large for the next stream is dead-lettered `payload_too_large` by the
//! tenant loop at once instead of being held and retried.

use std::time::Duration;

use switchyard_dlq::DlqCode;
use switchyard_envelope::Envelope;
use switchyard_fixtures::{dlq_entries, stamped};
use switchyard_keys::{Address, Stage};
use switchyard_service::Handoff;
use switchyard_subjects::{InputStage, Namespace, StageSubject, SubjectKind};
use switchyard_testkit::{backpressure_streams, stored_count, stored_count_in, wait_for};

use super::Harness;

async fn hand_to_backpressure(harness: &Harness, envelope: &Envelope, payload: Vec<u8>) {
    let mut h = Handoff::headers(envelope, None);
    h.insert(
        "Nats-Msg-Id",
        envelope.hop_msg_id(InputStage::Backpressure.stage()),
    );
    let subject = StageSubject {
        stage: InputStage::Backpressure,
        address: envelope.address.clone(),
    }
    .format(&Namespace::default());
    harness
        .js
        .publish_with_headers(subject, h, payload.into())
        .await
        .unwrap()
        .await
        .unwrap();
}

#[tokio::test]
async fn a_hand_off_too_large_for_egress_is_dead_lettered_payload_too_large() {
    let harness = Harness::start(1).await;
    // EGRESS now takes only small messages.
    let mut stream = harness.js.get_stream("EGRESS").await.unwrap();
    let mut small = stream.info().await.unwrap().config.clone();
    small.max_message_size = 4096;
    harness.js.update_stream(small).await.unwrap();

    let address = Address::parse("acme", "ops", "hooks").unwrap();
    let big = stamped(address.clone(), "big-1", 1);
    let fits = stamped(address, "small-1", 2);
    hand_to_backpressure(&harness, &big, vec![b'x'; 8000]).await;
    hand_to_backpressure(&harness, &fits, b"{}".to_vec()).await;

    let entries = wait_for(
        "the oversized hand-off in the DLQ",
        Duration::from_secs(15),
        || async {
            let entries = dlq_entries(&harness.js).await;
            (!entries.is_empty()).then_some(entries)
        },
    )
    .await;
    assert_eq!(entries.len(), 1, "{entries:?}");
    let record = &entries[0].record;
    assert_eq!(record.code, DlqCode::PayloadTooLarge);
    assert_eq!(record.stage, Stage::Backpressure);
    assert_eq!(record.tenant.as_ref().map(|t| t.as_str()), Some("acme"));
    assert_eq!(entries[0].payload.len(), 8000);
    // The small one went on, and nothing is left held in BACKPRESSURE.
    wait_for("BACKPRESSURE to drain", Duration::from_secs(15), || async {
        (stored_count_in(&harness.js, &backpressure_streams()).await == 0).then_some(())
    })
    .await;
    assert_eq!(stored_count(&harness.js, "EGRESS").await, 1);
}
