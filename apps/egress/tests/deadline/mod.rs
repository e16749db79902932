//! The delivery deadline and held messages: whatever holds a message (an open breaker, a busy
//! route or tenant, retries), it is dead-lettered `deadline_exceeded` with its history once
//! its deadline passes; a replay gets a fresh deadline; and a dead route's held messages come
//! back from a per-route queue instead of all at once.

use std::time::Duration;

use bytes::Bytes;
use switchyard_dlq::DlqCode;
use switchyard_testkit::wait_for;
use time::OffsetDateTime;

use crate::support::{Harness, Reply, Sink, address, webhook};

const LONG: Duration = Duration::from_secs(60);

/// Messages left in `EGRESS` (waiting copies and pending schedules).
async fn egress_messages(h: &Harness) -> u64 {
    let mut stream = h.js.get_stream("EGRESS").await.unwrap();
    stream.info().await.unwrap().state.messages
}

#[tokio::test]
async fn held_messages_to_a_dead_route_are_dead_lettered_deadline_exceeded_with_their_history() {
    let sink = Sink::start().await;
    sink.script("/dead", vec![], Reply::status(503));
    let mut h = Harness::new().await;
    h.put_route("acme.ops.slack", &webhook(&sink, "/dead"))
        .await;
    h.start(|c| {
        c.egress.delivery_deadline_secs = 5;
        c.egress.backoff_secs = vec![1];
        c.egress.breaker_failure_threshold = 5;
        c.egress.breaker_open_secs = 30;
        c.egress.breaker_max_open_secs = 300;
    })
    .await;

    let total = 40;
    let mut sent = Vec::new();
    for _ in 0..total {
        let envelope = h
            .publish(
                &address("acme", "ops", "slack"),
                Bytes::from_static(b"held"),
                None,
            )
            .await;
        sent.push(envelope.id.to_string());
    }

    let entries = wait_for("every message in the DLQ", LONG, || async {
        let entries = h.dlq().await;
        (entries.len() >= total).then_some(entries)
    })
    .await;
    assert_eq!(entries.len(), total, "each message dead-lettered once");
    let mut ids: Vec<String> = entries
        .iter()
        .map(|e| {
            e.original_headers
                .get("Switchyard-Id")
                .unwrap()
                .as_str()
                .to_owned()
        })
        .collect();
    ids.sort();
    sent.sort();
    assert_eq!(ids, sent, "none lost, none doubled");
    for entry in &entries {
        let r = &entry.record;
        assert_eq!(r.code, DlqCode::DeadlineExceeded, "{}", r.reason);
        assert!(
            r.reason.contains("delivery deadline of 5 s"),
            "{}",
            r.reason
        );
        assert_eq!(r.attempts as usize, r.history.len(), "{:?}", r.history);
        assert!(r.history.iter().all(|a| a.status == Some(503)));
        assert_eq!(entry.payload, Bytes::from_static(b"held"));
    }
    let attempted: usize = entries.iter().map(|e| e.record.history.len()).sum();
    assert_eq!(
        attempted,
        sink.count("/dead"),
        "every attempt is in some message's history"
    );
    assert!(
        entries.iter().any(|e| e.record.history.is_empty()),
        "some messages were only ever held"
    );
    assert!(sink.statuses("/dead").iter().all(|s| *s == 503));
    // Nothing is left behind: no waiting copy, no pending schedule.
    wait_for("EGRESS to empty", LONG, || async {
        (egress_messages(&h).await == 0).then_some(())
    })
    .await;
    let metrics = h.probe("/metrics").await;
    assert!(metrics.contains("deadline_exceeded"), "{metrics}");
    h.stop().await;
}

#[tokio::test]
async fn a_message_past_its_deadline_is_dead_lettered_and_its_replay_gets_a_fresh_one() {
    let sink = Sink::start().await;
    let mut h = Harness::new().await;
    h.put_route("acme.ops.slack", &webhook(&sink, "/ok")).await;
    h.start(|c| c.egress.delivery_deadline_secs = 3600).await;

    let two_days_ago = OffsetDateTime::now_utc() - Duration::from_secs(2 * 86_400);
    let late = h
        .publish_received(
            &address("acme", "ops", "slack"),
            Bytes::from_static(b"late"),
            None,
            &[],
            two_days_ago,
            0,
        )
        .await;
    let entry = h.dlq_entry(&late).await;
    assert_eq!(entry.record.code, DlqCode::DeadlineExceeded);
    assert_eq!(entry.record.attempts, 0);
    assert!(entry.record.history.is_empty());
    assert!(
        entry.record.reason.contains("delivery deadline of 3600 s"),
        "{}",
        entry.record.reason
    );

    // The same message replayed from the DLQ: its deadline counts from the replay.
    h.publish_received(
        &address("acme", "ops", "slack"),
        Bytes::from_static(b"replayed"),
        None,
        &[],
        two_days_ago,
        1,
    )
    .await;
    wait_for("the replay's delivery", LONG, || async {
        (sink.count("/ok") == 1).then_some(())
    })
    .await;
    assert_eq!(sink.count("/ok"), 1, "only the replay reached the sink");
    assert_eq!(h.dlq().await.len(), 1);
    h.stop().await;
}

#[tokio::test]
async fn a_replayed_message_keeps_its_fresh_deadline_across_holds() {
    // A replayed copy of a message received long ago is held by an open breaker: its
    // rescheduled copies carry when the replay started, so it is dead-lettered when the
    // replay's deadline passes (not at once, not never).
    let sink = Sink::start().await;
    sink.script("/dead", vec![], Reply::status(503));
    let mut h = Harness::new().await;
    h.put_route("acme.ops.slack", &webhook(&sink, "/dead"))
        .await;
    h.start(|c| {
        c.egress.delivery_deadline_secs = 4;
        c.egress.backoff_secs = vec![1];
        c.egress.breaker_failure_threshold = 1;
    })
    .await;
    let long_ago = OffsetDateTime::now_utc() - Duration::from_secs(86_400);
    let started = std::time::Instant::now();
    let replayed = h
        .publish_received(
            &address("acme", "ops", "slack"),
            Bytes::from_static(b"again"),
            None,
            &[],
            long_ago,
            1,
        )
        .await;
    let entry = h.dlq_entry(&replayed).await;
    let waited = started.elapsed();
    assert_eq!(entry.record.code, DlqCode::DeadlineExceeded);
    assert_eq!(entry.record.attempts, 1, "{:?}", entry.record.history);
    assert!(
        waited >= Duration::from_secs(3),
        "dead-lettered after {waited:?}, before the replay's deadline"
    );
    h.stop().await;
}
