//! The replay duplicate rule, from both entry points that replay (`dlq replay` at once, and a
//! `dlq replay --job` executed by the dlq service): an entry stays in the DLQ only when the
//! target's duplicate ack points at the very message the entry was read from (nothing was
//! stored); a duplicate of an earlier replay of the same message means the message is already
//! back in the pipeline, and the entry goes.

use std::collections::BTreeMap;
use std::time::Duration;

use async_nats::HeaderMap;
use async_nats::jetstream;
use switchyard_dlq::{DeadLetter, DlqCode};
use switchyard_dlq_ops::JobState;
use switchyard_envelope::headers;
use switchyard_fixtures::ingress_stream;
use switchyard_keys::{PlatformId, Stage, TenantId};
use switchyard_subjects::Namespace;
use switchyard_testkit::{
    NatsServer, backpressure_streams, stored_count, stored_count_in, wait_for,
};
use time::OffsetDateTime;

use crate::fixtures::{DlqService, Entry, dead_letter_with, dlq_seqs, envelope, job};
use crate::ok;
use crate::publish::long_window_config;

const INGRESS_SUBJECT: &str = "ingress.v1.acme.ops.slack";

/// DLQ entries 1..=3: (1) an ingress entry whose producer message is still stored in the
/// tenant's ingress stream (`INGRESS_acme`) inside its duplicate window; (2) and (3) one message dead-lettered twice at egress (same
/// envelope, so replays of both carry the same hop id).
async fn entries(js: &jetstream::Context) {
    let mut original = HeaderMap::new();
    original.insert(headers::NATS_MSG_ID, "order-1");
    let stored = js
        .publish_with_headers(INGRESS_SUBJECT, original.clone(), "{}".into())
        .await
        .unwrap()
        .await
        .unwrap();
    assert_eq!(
        (stored.stream, stored.sequence),
        (ingress_stream("acme"), 1)
    );
    let now = OffsetDateTime::now_utc();
    let record = DeadLetter {
        stage: Stage::Ingress,
        code: DlqCode::TenantDisabled,
        reason: "tenant acme is disabled".into(),
        tenant: Some(TenantId::new("acme").unwrap()),
        platform: Some(PlatformId::new("slack").unwrap()),
        attempts: 0,
        first_failure: now,
        last_failure: now,
        source_stream: ingress_stream("acme"),
        source_seq: 1,
        source_time: None,
        source_subject: INGRESS_SUBJECT.into(),
        history: Vec::new(),
    };
    let seq = record
        .publish(js, &Namespace::default(), Some(&original), "{}".into())
        .await
        .unwrap()
        .await
        .unwrap()
        .sequence;
    assert_eq!(seq, 1);
    let env = envelope("acme", 7);
    let first = Entry::egress("acme", DlqCode::RetriesExhausted, 7);
    let again = Entry::egress("acme", DlqCode::RetriesExhausted, 8);
    assert_eq!(dead_letter_with(js, &first, &env).await, 2);
    assert_eq!(dead_letter_with(js, &again, &env).await, 3);
}

/// A provisioned server with tenant acme enabled, whose ingress stream keeps ids for 10
/// minutes, and the config naming that window.
async fn server(dir: &tempfile::TempDir) -> (NatsServer, String) {
    let server = NatsServer::start().await;
    let config = long_window_config(dir);
    ok(&server.url(), &["--config", &config, "provision"]).await;
    ok(
        &server.url(),
        &["--config", &config, "tenants", "enable", "acme"],
    )
    .await;
    (server, config)
}

#[tokio::test]
async fn immediate_replay_keeps_only_an_entry_whose_duplicate_is_its_source_message() {
    let dir = tempfile::tempdir().unwrap();
    let (server, config) = server(&dir).await;
    let url = server.url();
    let js = jetstream::new(server.client().await);
    entries(&js).await;

    let out = ok(&url, &["--config", &config, "dlq", "replay", "1", "2", "3"]).await;
    let lines: Vec<&str> = out.lines().collect();
    assert!(
        lines[0].starts_with("kept seq 1: INGRESS_acme already holds the original at seq 1"),
        "{out}"
    );
    assert_eq!(
        lines[1..],
        [
            "replayed seq 2 -> backpressure.v1.15.acme.ops.slack.1k (BACKPRESSURE_15 seq 1)",
            "replayed seq 3 -> backpressure.v1.15.acme.ops.slack.1k (BACKPRESSURE_15 seq 1)",
            "replayed 2, kept 1 (1 duplicate)",
        ],
        "{out}"
    );
    assert_eq!(dlq_seqs(&url, &["--config", &config]).await, [1]);
    assert_eq!(stored_count_in(&js, &backpressure_streams()).await, 1);
    assert_eq!(stored_count(&js, &ingress_stream("acme")).await, 1);

    let json: serde_json::Value = serde_json::from_str(
        &ok(&url, &["--config", &config, "dlq", "replay", "1", "--json"]).await,
    )
    .unwrap();
    assert_eq!(json["results"][0]["outcome"], "kept");
    assert_eq!(json["results"][0]["kept_because"], "duplicate");
}

#[tokio::test]
async fn a_replay_job_keeps_only_an_entry_whose_duplicate_is_its_source_message() {
    let dir = tempfile::tempdir().unwrap();
    let (server, config) = server(&dir).await;
    let url = server.url();
    let js = jetstream::new(server.client().await);
    entries(&js).await;
    let service = DlqService::start(&url).await;

    let created = ok(
        &url,
        &["--config", &config, "dlq", "replay", "1", "2", "3", "--job"],
    )
    .await;
    let id = created
        .strip_prefix("job ")
        .and_then(|rest| rest.split_whitespace().next())
        .unwrap_or_else(|| panic!("no job id in {created:?}"))
        .to_owned();
    let done = wait_for("the job to finish", Duration::from_secs(30), || async {
        let record = job(&js, &id).await;
        (record.state == JobState::Done).then_some(record)
    })
    .await;
    assert_eq!(done.progress.replayed, 2);
    assert_eq!(
        done.progress.kept,
        BTreeMap::from([("duplicate".to_owned(), 1)])
    );
    assert_eq!(done.progress.handled, 3);
    assert_eq!(dlq_seqs(&url, &["--config", &config]).await, [1]);
    assert_eq!(stored_count_in(&js, &backpressure_streams()).await, 1);
    assert_eq!(stored_count(&js, &ingress_stream("acme")).await, 1);
    service.stop().await;
}
