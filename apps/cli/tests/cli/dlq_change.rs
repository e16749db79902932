//! `dlq replay` and `dlq purge`: the only commands that remove entries, each exactly the
//! selected ones, and only after confirmation when selected by a filter; a replay upgrades an
//! entry's envelope schema version or keeps the entry, naming the versions.

use std::time::Duration;

use async_nats::jetstream;
use futures::StreamExt;
use switchyard_dlq::DlqCode;
use switchyard_envelope::{Envelope, headers};
use switchyard_keys::Stage;
use switchyard_testkit::{
    backpressure_stream, backpressure_streams, stored_count, stored_count_in, stored_messages,
};

use crate::fixtures::{Entry, dead_letter, dead_letter_with, dlq_seqs, envelope, payload, seed};
use crate::{fails, ok, provisioned, stderr, switchyard};

#[tokio::test]
async fn dlq_replay_by_tenant_republishes_exactly_that_tenants_entries() {
    let server = provisioned().await;
    let url = server.url();
    let client = server.client().await;
    let js = jetstream::new(client.clone());
    let mut copies = client.subscribe("backpressure.v1.>").await.unwrap();
    client.flush().await.unwrap();
    seed(&js).await;

    let dry = ok(&url, &["dlq", "replay", "--tenant", "acme", "--dry-run"]).await;
    assert_eq!(
        dry,
        "would replay seq 1 -> backpressure.v1.15.acme.ops.slack.1k\n\
         would replay seq 3 -> backpressure.v1.15.acme.ops.slack.1k\n\
         would replay 2, would keep 0; dry run: nothing changed\n"
    );
    assert_eq!(
        stored_count(&js, "DLQ").await,
        4,
        "a dry run changes nothing"
    );
    assert_eq!(
        stored_count_in(&js, &backpressure_streams()).await,
        0,
        "a dry run publishes nothing"
    );

    let err = fails(&url, &["dlq", "replay", "--tenant", "acme"]).await;
    assert!(
        err.contains("error: refusing to replay DLQ entries selected by a filter without confirmation: stdin is not a terminal; pass --yes to confirm"),
        "{err}"
    );
    assert_eq!(stored_count(&js, "DLQ").await, 4);

    let out = ok(
        &url,
        &["dlq", "replay", "--tenant", "acme", "--yes", "--rate", "50"],
    )
    .await;
    assert_eq!(
        out,
        "replayed seq 1 -> backpressure.v1.15.acme.ops.slack.1k (BACKPRESSURE_15 seq 1)\n\
         replayed seq 3 -> backpressure.v1.15.acme.ops.slack.1k (BACKPRESSURE_15 seq 2)\n\
         replayed 2, kept 0\n"
    );
    for n in [1, 3] {
        let msg = tokio::time::timeout(Duration::from_secs(10), copies.next())
            .await
            .expect("the replayed copy arrives")
            .unwrap();
        assert_eq!(msg.subject.as_str(), "backpressure.v1.15.acme.ops.slack.1k");
        assert_eq!(msg.payload, payload(n), "payload bytes unchanged");
        let h = msg.headers.unwrap();
        assert_eq!(h.get("Switchyard-Replay").unwrap().as_str(), "1");
        assert_eq!(h.get("Switchyard-Attempt").unwrap().as_str(), "0");
        assert_eq!(
            h.get("Switchyard-Msg-Id").unwrap().as_str(),
            format!("order-{n}")
        );
        assert!(
            h.get("Nats-Msg-Id")
                .unwrap()
                .as_str()
                .ends_with(":backpressure:1")
        );
        assert!(
            h.get("Switchyard-Dlq-Code").is_none(),
            "no DLQ headers on the copy"
        );
    }
    assert_eq!(
        dlq_seqs(&url, &[]).await,
        [2, 4],
        "exactly acme's entries left the DLQ"
    );
    assert_eq!(stored_count_in(&js, &backpressure_streams()).await, 2);
}

#[tokio::test]
async fn dlq_replay_keeps_missing_and_unreplayable_entries_and_removes_a_message_already_replayed()
{
    let server = provisioned().await;
    let url = server.url();
    let js = jetstream::new(server.client().await);

    let env = envelope("acme", 7);
    let first = dead_letter_with(
        &js,
        &Entry::egress("acme", DlqCode::RetriesExhausted, 7),
        &env,
    )
    .await;
    assert_eq!(
        ok(&url, &["dlq", "replay", &first.to_string()]).await,
        "replayed seq 1 -> backpressure.v1.15.acme.ops.slack.1k (BACKPRESSURE_15 seq 1)\nreplayed 1, kept 0\n",
        "explicit sequences need no confirmation"
    );
    // The same message dead-lettered again replays to the same hop id: EGRESS drops the copy
    // inside its duplicate window. The message is already back in EGRESS (the duplicate is not
    // the entry's own source message), so the entry goes (the rule: `dlq_duplicates`).
    let again = dead_letter_with(
        &js,
        &Entry::egress("acme", DlqCode::RetriesExhausted, 8),
        &env,
    )
    .await;
    let refused_at_ingress = Entry {
        tenant: "acme",
        code: DlqCode::InvalidPayload,
        stage: Stage::Ingress,
        n: 9,
    };
    let invalid = dead_letter(&js, &refused_at_ingress).await;
    assert_eq!((again, invalid), (2, 3));

    // 2 named twice is replayed once.
    let out = ok(&url, &["dlq", "replay", "2", "3", "2", "99"]).await;
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines[0], "kept seq 99: no DLQ entry with seq 99", "{out}");
    assert_eq!(
        lines[1], "replayed seq 2 -> backpressure.v1.15.acme.ops.slack.1k (BACKPRESSURE_15 seq 1)",
        "{out}"
    );
    assert!(
        lines[2]
            .starts_with("kept seq 3: entry 3 was refused at ingress with code invalid_payload"),
        "{out}"
    );
    assert_eq!(
        lines[3],
        "replayed 1, kept 2 (1 no such entry, 1 not replayable)"
    );
    assert_eq!(dlq_seqs(&url, &[]).await, [3]);
    assert_eq!(stored_count_in(&js, &backpressure_streams()).await, 1);

    let json: serde_json::Value =
        serde_json::from_str(&ok(&url, &["dlq", "replay", "3", "--json"]).await).unwrap();
    assert_eq!(json["results"][0]["seq"], 3);
    assert_eq!(json["results"][0]["outcome"], "kept");
    assert_eq!(json["results"][0]["kept_because"], "not replayable");
}

#[tokio::test]
async fn dlq_replay_upgrades_a_version_1_entry_and_keeps_one_of_a_version_this_build_does_not_read()
{
    let server = provisioned().await;
    let url = server.url();
    let js = jetstream::new(server.client().await);
    let older = envelope("acme", 11);
    assert_eq!(
        older.schema_version, 1,
        "written by a build before version 2"
    );
    let mut newer = envelope("acme", 12);
    newer.schema_version = 3;
    let retries = |n| Entry::egress("acme", DlqCode::RetriesExhausted, n);
    let v1 = dead_letter_with(&js, &retries(11), &older).await;
    let v3 = dead_letter_with(&js, &retries(12), &newer).await;
    assert_eq!((v1, v3), (1, 2));

    let out = ok(&url, &["dlq", "replay", "1", "2"]).await;
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(
        lines,
        [
            "replayed seq 1 -> backpressure.v1.15.acme.ops.slack.1k (BACKPRESSURE_15 seq 1)",
            "kept seq 2: entry 2 cannot be replayed by this build: envelope schema version 3 is not one this build reads (it reads versions 1..=2)",
            "replayed 1, kept 1 (1 unsupported schema)",
        ],
        "{out}"
    );

    // The version 1 entry arrives at its stage readable, still version 1 (a plain payload).
    let copies = stored_messages(&js, &backpressure_stream("acme")).await;
    assert_eq!(copies.len(), 1);
    let copy = Envelope::from_headers(Some(&copies[0].headers)).unwrap();
    assert_eq!(copy.schema_version, 1);
    assert_eq!(copy.id, older.id);
    assert_eq!(copy.attempt.replay, 1);
    assert_eq!(copies[0].payload, payload(11), "payload bytes unchanged");

    // The version 3 entry stays in the DLQ as it was.
    assert_eq!(dlq_seqs(&url, &[]).await, [2]);
    let kept = &switchyard_fixtures::dlq_entries(&js).await[0];
    assert_eq!(kept.seq, 2);
    assert_eq!(kept.record.code, DlqCode::RetriesExhausted);
    assert_eq!(
        kept.original_headers
            .get(headers::SCHEMA)
            .map(|v| v.as_str()),
        Some("3")
    );
    let json: serde_json::Value =
        serde_json::from_str(&ok(&url, &["dlq", "replay", "2", "--json"]).await).unwrap();
    assert_eq!(json["results"][0]["kept_because"], "unsupported schema");
    assert_eq!(stored_count_in(&js, &backpressure_streams()).await, 1);
}

#[tokio::test]
async fn dlq_purge_by_code_removes_only_those_and_needs_yes() {
    let server = provisioned().await;
    let url = server.url();
    let js = jetstream::new(server.client().await);
    seed(&js).await;

    let err = fails(&url, &["dlq", "purge", "--code", "no_route"]).await;
    assert!(
        err.contains("error: refusing to purge DLQ entries selected by a filter without confirmation: stdin is not a terminal; pass --yes to confirm"),
        "{err}"
    );
    assert_eq!(stored_count(&js, "DLQ").await, 4);

    assert_eq!(
        ok(&url, &["dlq", "purge", "--code", "no_route", "--yes"]).await,
        "removed 2 entries\n"
    );
    assert_eq!(dlq_seqs(&url, &[]).await, [1, 4]);

    assert_eq!(ok(&url, &["dlq", "purge", "1"]).await, "removed 1 entry\n");
    let json: serde_json::Value =
        serde_json::from_str(&ok(&url, &["dlq", "purge", "1", "--json"]).await).unwrap();
    assert_eq!(json, serde_json::json!({"removed": [], "not_found": [1]}));

    let err = fails(&url, &["dlq", "purge"]).await;
    assert!(
        err.contains("select entries: give sequences, or filters"),
        "{err}"
    );
    let err = fails(&url, &["dlq", "purge", "4", "--tenant", "acme"]).await;
    assert!(err.contains("not both"), "{err}");
    assert_eq!(dlq_seqs(&url, &[]).await, [4]);
}

#[tokio::test]
async fn dlq_publish_and_routes_honour_the_deployment_prefix() {
    let server = switchyard_testkit::NatsServer::start().await;
    let url = server.url();
    ok(&url, &["--prefix", "staging", "provision"]).await;
    let js = jetstream::new(server.client().await);
    let ns = switchyard_subjects::Namespace::new(Some("staging".parse().unwrap()));
    let entry = Entry::egress("acme", DlqCode::NoRoute, 1);
    crate::fixtures::dead_letter_in(&js, &ns, &entry, &envelope("acme", 1)).await;

    let json: serde_json::Value = serde_json::from_str(
        &ok(
            &url,
            &[
                "--prefix", "staging", "dlq", "ls", "--tenant", "acme", "--json",
            ],
        )
        .await,
    )
    .unwrap();
    assert_eq!(json[0]["subject"], "staging.dlq.v1.acme.egress.slack");
    assert_eq!(
        ok(
            &url,
            &["--prefix", "staging", "dlq", "replay", "--all", "--yes"]
        )
        .await,
        "replayed seq 1 -> staging.backpressure.v1.15.acme.ops.slack.1k (STAGING_BACKPRESSURE_15 seq 1)\nreplayed 1, kept 0\n"
    );
    assert_eq!(stored_count(&js, "STAGING_DLQ").await, 0);
    assert!(
        ok(&url, &["--prefix", "staging", "tenants", "enable", "acme"])
            .await
            .starts_with("stream STAGING_INGRESS_acme: Created\n"),
        "the tenant's own stream, prefixed"
    );
    assert_eq!(
        ok(
            &url,
            &[
                "--prefix", "staging", "publish", "acme", "ops", "slack", "--id", "a", "--data",
                "x"
            ]
        )
        .await,
        "stored in STAGING_INGRESS_acme seq 1\n"
    );
    ok(
        &url,
        &[
            "--prefix",
            "staging",
            "routes",
            "set",
            "acme",
            "_",
            "slack",
            "--nats",
            "sink.acme",
        ],
    )
    .await;
    let err = fails(&url, &["routes", "ls"]).await;
    assert!(
        err.contains("the routes bucket routes does not exist"),
        "unprefixed: {err}"
    );
    let ls = ok(&url, &["--prefix", "staging", "routes", "ls"]).await;
    assert!(
        ls.contains("acme    _     slack     nats  sink.acme"),
        "{ls}"
    );
    let err = fails(&url, &["dlq", "ls"]).await;
    assert!(err.contains("the DLQ stream DLQ does not exist"), "{err}");
}

/// Records in `dlq-replays` that a replay of DLQ entry `seq` (tenant acme) began `ago`, as a
/// replay that stopped between publishing its copy and removing the entry leaves it.
async fn unfinished_replay(js: &jetstream::Context, seq: u64, ago: Duration) -> String {
    let stored = js
        .get_stream("DLQ")
        .await
        .unwrap()
        .get_raw_message(seq)
        .await
        .unwrap()
        .time;
    let key = format!("acme.{seq}.{}", stored.unix_timestamp_nanos() / 1_000_000);
    let at = time::OffsetDateTime::now_utc() - ago;
    let intent = serde_json::json!({
        "at": at.format(&time::format_description::well_known::Rfc3339).unwrap(),
        "subject": "backpressure.v1.15.acme.ops.slack",
    });
    js.get_key_value("dlq-replays")
        .await
        .unwrap()
        .put(key.as_str(), intent.to_string().into())
        .await
        .unwrap();
    key
}

#[tokio::test]
async fn an_unfinished_replay_past_the_duplicate_window_is_kept_as_uncertain_until_forced() {
    let server = provisioned().await;
    let url = server.url();
    let js = jetstream::new(server.client().await);
    let old = dead_letter(&js, &Entry::egress("acme", DlqCode::RetriesExhausted, 1)).await;
    let recent = dead_letter(&js, &Entry::egress("acme", DlqCode::RetriesExhausted, 2)).await;
    let old_key = unfinished_replay(&js, old, Duration::from_secs(600)).await;
    unfinished_replay(&js, recent, Duration::from_secs(60)).await;

    // A dry run says what the real run will keep.
    let dry = ok(&url, &["dlq", "replay", "1", "2", "--dry-run"]).await;
    assert!(
        dry.starts_with("kept seq 1: a replay of this entry to backpressure.v1.15.acme.ops.slack"),
        "{dry}"
    );
    assert!(dry.contains("would replay seq 2 -> "), "{dry}");

    // Ten minutes ago: a copy may be stored and the target's 5-minute window would not drop a
    // second one, so nothing is published. One minute ago: the window still would, so the
    // replay goes ahead.
    let out = ok(&url, &["dlq", "replay", "1", "2"]).await;
    let lines: Vec<&str> = out.lines().collect();
    assert!(
        lines[0].starts_with(
            "kept seq 1: a replay of this entry to backpressure.v1.15.acme.ops.slack began at"
        ) && lines[0].contains("`dlq replay 1 --force`"),
        "{out}"
    );
    assert_eq!(
        lines[1..],
        [
            "replayed seq 2 -> backpressure.v1.15.acme.ops.slack.1k (BACKPRESSURE_15 seq 1)",
            "replayed 1, kept 1 (1 uncertain)",
        ],
        "{out}"
    );
    assert_eq!(stored_count_in(&js, &backpressure_streams()).await, 1);
    assert_eq!(dlq_seqs(&url, &[]).await, [1]);

    // --force takes sequences only, never a filter.
    let err = fails(
        &url,
        &["dlq", "replay", "--tenant", "acme", "--force", "--yes"],
    )
    .await;
    assert!(
        err.contains("--force replays entries named by sequence"),
        "{err}"
    );

    // The operator checked the sink: --force replays it, and the record of the replay goes.
    assert_eq!(
        ok(&url, &["dlq", "replay", "1", "--force"]).await,
        "replayed seq 1 -> backpressure.v1.15.acme.ops.slack.1k (BACKPRESSURE_15 seq 2)\nreplayed 1, kept 0\n"
    );
    assert!(dlq_seqs(&url, &[]).await.is_empty());
    let markers = js.get_key_value("dlq-replays").await.unwrap();
    assert!(markers.get(old_key.as_str()).await.unwrap().is_none());
}

#[tokio::test]
async fn a_replayed_entry_the_dlq_refuses_to_delete_is_reported_not_counted_gone() {
    let server = provisioned().await;
    let url = server.url();
    let js = jetstream::new(server.client().await);
    let seq = dead_letter(&js, &Entry::egress("acme", DlqCode::RetriesExhausted, 1)).await;
    // A DLQ that refuses deletes (nats-server's 10057 "message delete not permitted").
    let mut config = js
        .get_stream("DLQ")
        .await
        .unwrap()
        .cached_info()
        .config
        .clone();
    config.deny_delete = true;
    js.update_stream(config).await.unwrap();
    let output = switchyard(&url, &["dlq", "replay", &seq.to_string()]).await;
    let err = stderr(&output);
    assert!(
        err.contains(&format!(
            "entry {seq} was replayed but could not be deleted"
        )),
        "{err}"
    );
    assert_eq!(dlq_seqs(&url, &[]).await, [seq], "the entry is still there");
}
