//! The safety net: messages JetStream gave up on land in the DLQ once, and leave their work
//! queue; the sweep finds what advisories missed while the service was down.

use std::time::{Duration, Instant};

use async_nats::jetstream::{self, consumer::PullConsumer};
use futures::StreamExt;
use switchyard_dlq::{DeadLetter, DlqCode};
use switchyard_fixtures::dlq_entries;
use switchyard_keys::Stage;
use switchyard_keys::TenantId;
use switchyard_subjects::{InputStage, Namespace};
use switchyard_testkit::{backpressure_stream, stored_count, stored_messages, wait_for};
use switchyard_topology::{ConsumerName, DeploymentConfig};
use tokio::task::JoinHandle;

use crate::{Env, hand_to, payload};

/// A stage that crashes on `poison` every time (fetches it, never acks it) and processes
/// everything else; with `dead_letter_first`, it writes its own DLQ record before crashing.
fn crashing_stage(
    js: jetstream::Context,
    stream: impl Into<String>,
    consumer: &'static str,
    poison: bytes::Bytes,
    dead_letter_first: bool,
) -> JoinHandle<()> {
    let stream = stream.into();
    tokio::spawn(async move {
        let consumer: PullConsumer = js
            .get_stream(&stream)
            .await
            .unwrap()
            .get_consumer(consumer)
            .await
            .unwrap();
        loop {
            let Ok(mut batch) = consumer
                .fetch()
                .max_messages(10)
                .expires(Duration::from_millis(300))
                .messages()
                .await
            else {
                continue;
            };
            while let Some(Ok(message)) = batch.next().await {
                if message.payload != poison {
                    message.ack().await.unwrap();
                    continue;
                }
                if dead_letter_first {
                    let record = DeadLetter::for_message(
                        &message,
                        Stage::Egress,
                        DlqCode::RetriesExhausted,
                        "sink kept failing",
                        None,
                        None,
                    );
                    record
                        .publish(
                            &js,
                            &Namespace::default(),
                            message.headers.as_ref(),
                            message.payload.clone(),
                        )
                        .await
                        .unwrap()
                        .await
                        .unwrap();
                }
                // …and the stage dies before it acks.
            }
        }
    })
}

#[tokio::test]
async fn a_message_its_stage_never_acks_ends_in_the_dlq_and_leaves_its_work_queue() {
    let env = Env::start().await;
    let (max_deliver, ack_wait) = (2, Duration::from_secs(1));
    env.tighten("EGRESS", "egress-worker", max_deliver, ack_wait)
        .await;
    let service = env.service(env.config()).await;

    let poison = hand_to(&env.js, InputStage::Egress, "acme", 1).await;
    let started = Instant::now();
    let stage = crashing_stage(env.js.clone(), "EGRESS", "egress-worker", payload(1), false);
    // The stage keeps processing other messages meanwhile.
    for n in 2..=4 {
        hand_to(&env.js, InputStage::Egress, "acme", n).await;
    }

    let entry = wait_for(
        "the poison message in the DLQ",
        Duration::from_secs(30),
        || async { dlq_entries(&env.js).await.into_iter().next() },
    )
    .await;
    let latency = started.elapsed();
    println!(
        "safety net: poison message dead-lettered {latency:?} after its first delivery (max deliveries {max_deliver} x ack wait {ack_wait:?})"
    );
    assert!(
        latency < ack_wait * max_deliver as u32 + Duration::from_secs(10),
        "{latency:?}"
    );
    let r = &entry.record;
    assert_eq!(r.code, DlqCode::ExhaustedDeliveries);
    assert_eq!(r.stage, Stage::Egress);
    assert!(
        r.reason
            .contains("consumer egress-worker on EGRESS gave up after 2 deliveries"),
        "{}",
        r.reason
    );
    assert_eq!(r.tenant.as_ref().map(|t| t.as_str()), Some("acme"));
    assert_eq!(r.platform.as_ref().map(|p| p.as_str()), Some("slack"));
    assert_eq!(r.attempts, 2);
    assert_eq!((r.source_stream.as_str(), r.source_seq), ("EGRESS", 1));
    assert_eq!(r.source_subject, "egress.v1.acme.ops.slack");
    assert_eq!(entry.payload, payload(1), "payload bytes unchanged");
    assert_eq!(
        entry
            .original_headers
            .get("Switchyard-Id")
            .unwrap()
            .as_str(),
        poison.id.to_string()
    );

    wait_for("EGRESS to be empty", Duration::from_secs(10), || async {
        (stored_count(&env.js, "EGRESS").await == 0).then_some(())
    })
    .await;
    assert_eq!(
        dlq_entries(&env.js).await.len(),
        1,
        "the good messages were processed, not dead-lettered"
    );
    stage.abort();
    service.stop().await;
}

#[tokio::test]
async fn a_message_a_tenants_backpressure_consumer_gives_up_on_is_rescued_from_its_shard() {
    let env = Env::start().await;
    // The tenant's consumer on its shard, as the backpressure service makes it, giving up
    // after two deliveries a second apart.
    let topology = DeploymentConfig::default().resolve().unwrap();
    let acme = TenantId::new("acme").unwrap();
    let mut declared = topology
        .tenant_consumer(ConsumerName::BackpressureTenant, &acme)
        .unwrap();
    declared.config.max_deliver = 2;
    declared.config.ack_wait = Duration::from_secs(1);
    let shard = backpressure_stream("acme");
    assert_eq!(declared.stream, shard);
    env.js
        .get_stream(&shard)
        .await
        .unwrap()
        .create_consumer(declared.config)
        .await
        .unwrap();
    let service = env.service(env.config()).await;

    hand_to(&env.js, InputStage::Backpressure, "acme", 1).await;
    let stage = crashing_stage(
        env.js.clone(),
        shard.clone(),
        "backpressure-acme",
        payload(1),
        false,
    );

    let entry = wait_for(
        "the poison message in the DLQ",
        Duration::from_secs(30),
        || async { dlq_entries(&env.js).await.into_iter().next() },
    )
    .await;
    let r = &entry.record;
    assert_eq!(r.code, DlqCode::ExhaustedDeliveries);
    assert_eq!(r.stage, Stage::Backpressure);
    assert_eq!(
        (r.source_stream.as_str(), r.source_seq),
        (shard.as_str(), 1)
    );
    assert_eq!(r.source_subject, "backpressure.v1.15.acme.ops.slack.1k");
    wait_for("the shard to be empty", Duration::from_secs(10), || async {
        (stored_count(&env.js, &shard).await == 0).then_some(())
    })
    .await;
    stage.abort();
    service.stop().await;
}

#[tokio::test]
async fn a_message_its_stage_dead_lettered_before_crashing_is_not_written_twice() {
    let env = Env::start().await;
    env.tighten("EGRESS", "egress-worker", 2, Duration::from_secs(1))
        .await;
    let service = env.service(env.config()).await;
    hand_to(&env.js, InputStage::Egress, "acme", 1).await;
    let stage = crashing_stage(env.js.clone(), "EGRESS", "egress-worker", payload(1), true);

    // Only the safety net deletes the message: once it is gone, the advisory was handled.
    wait_for(
        "the safety net to remove the message",
        Duration::from_secs(30),
        || async { (stored_count(&env.js, "EGRESS").await == 0).then_some(()) },
    )
    .await;
    let entries = dlq_entries(&env.js).await;
    assert_eq!(entries.len(), 1, "one record: the stage's own");
    assert_eq!(entries[0].record.code, DlqCode::RetriesExhausted);
    stage.abort();
    service.stop().await;
}

/// A message JetStream gave up on while no dlq instance ran; `advisory_lost` drops its
/// advisory from `ADVISORIES` first (as a full stream would). Returns the rescued entry's
/// reason once the stranded message has left `EGRESS`, and the one waiting for its first
/// delivery is left alone.
async fn stranded_while_down(advisory_lost: bool) -> String {
    let env = Env::start().await;
    env.tighten("EGRESS", "egress-worker", 2, Duration::from_secs(1))
        .await;
    hand_to(&env.js, InputStage::Egress, "globex", 1).await;
    let stage = crashing_stage(env.js.clone(), "EGRESS", "egress-worker", payload(1), false);
    // No dlq service runs: the advisory waits in ADVISORIES.
    let stream = env.js.get_stream("EGRESS").await.unwrap();
    wait_for(
        "JetStream to give up on the message",
        Duration::from_secs(30),
        || async {
            let info = stream.consumer_info("egress-worker").await.ok()?;
            (info.num_ack_pending == 0
                && info.num_pending == 0
                && info.delivered.stream_sequence == 1)
                .then_some(())
        },
    )
    .await;
    stage.abort();
    assert_eq!(
        stored_count(&env.js, "EGRESS").await,
        1,
        "stranded in its work queue"
    );
    wait_for(
        "the advisory to be captured",
        Duration::from_secs(10),
        || async { (stored_count(&env.js, "ADVISORIES").await == 1).then_some(()) },
    )
    .await;
    if advisory_lost {
        env.js
            .get_stream("ADVISORIES")
            .await
            .unwrap()
            .purge()
            .await
            .unwrap();
    }
    // A message waiting for its first delivery is not stranded and must be left alone.
    hand_to(&env.js, InputStage::Egress, "globex", 2).await;

    let mut config = env.config();
    config.safety_net.sweep_interval_secs = 1;
    let service = env.service(config).await;
    let entry = wait_for("the rescue", Duration::from_secs(30), || async {
        dlq_entries(&env.js).await.into_iter().next()
    })
    .await;
    assert_eq!(entry.record.code, DlqCode::ExhaustedDeliveries);
    assert_eq!(entry.record.source_seq, 1);
    assert_eq!(entry.record.attempts, 2, "the consumer's max_deliver");
    wait_for(
        "the stranded message to leave EGRESS",
        Duration::from_secs(10),
        || async {
            let left: Vec<u64> = stored_messages(&env.js, "EGRESS")
                .await
                .iter()
                .map(|m| m.sequence)
                .collect();
            (left == [2]).then_some(())
        },
    )
    .await;
    wait_for(
        "the advisory to be acked",
        Duration::from_secs(10),
        || async { (stored_count(&env.js, "ADVISORIES").await == 0).then_some(()) },
    )
    .await;
    service.stop().await;
    assert_eq!(dlq_entries(&env.js).await.len(), 1);
    entry.record.reason
}

#[tokio::test]
async fn a_message_stranded_while_the_dlq_service_was_down_is_rescued_from_its_durable_advisory() {
    let reason = stranded_while_down(false).await;
    assert!(
        reason.ends_with("dead-lettered by the dlq safety net"),
        "{reason}"
    );
}

#[tokio::test]
async fn a_message_whose_advisory_was_lost_is_rescued_by_the_sweep() {
    let reason = stranded_while_down(true).await;
    assert!(
        reason.contains("found stranded by the dlq sweep"),
        "{reason}"
    );
}
