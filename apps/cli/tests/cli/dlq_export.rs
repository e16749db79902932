//! `dlq export` and `dlq import`: export, purge, import restores the same entries (payload and
//! headers equal), once: never twice (the file again, or into the DLQ it came from), and never
//! nothing (after a second purge inside the duplicate window).

use std::collections::BTreeMap;

use async_nats::HeaderMap;
use async_nats::jetstream::{self, message::StreamMessage};
use switchyard_dlq::{DeadLetter, DlqCode, DlqEntry};
use switchyard_keys::Stage;
use switchyard_subjects::Namespace;
use switchyard_testkit::{stored_count, stored_messages};
use time::OffsetDateTime;

use crate::fixtures::{Entry, dead_letter, seed};
use crate::{fails, ok, provisioned};

/// What must survive a round trip: subject, every header but the server's `Nats-*` ones (the
/// record's `Nats-Msg-Id` becomes `import:…`; direct gets add `Nats-Sequence` and friends),
/// payload, and the entry as decoded (less its new sequence and storage time).
fn comparable(m: &StreamMessage) -> (String, BTreeMap<String, Vec<String>>, Vec<u8>, String) {
    let mut headers: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for (name, values) in m.headers.iter() {
        let name: &str = name.as_ref();
        if name.starts_with("Nats-") {
            continue;
        }
        headers
            .entry(name.to_owned())
            .or_default()
            .extend(values.iter().map(|v| v.as_str().to_owned()));
    }
    let entry = DlqEntry::from_message(
        &Namespace::default(),
        0,
        OffsetDateTime::UNIX_EPOCH,
        m.subject.as_str(),
        Some(&m.headers),
        m.payload.clone(),
    )
    .unwrap();
    (
        m.subject.to_string(),
        headers,
        m.payload.to_vec(),
        serde_json::to_string(&entry.view()).unwrap(),
    )
}

#[tokio::test]
async fn export_then_purge_then_import_restores_the_same_entries() {
    let server = provisioned().await;
    let url = server.url();
    let js = jetstream::new(server.client().await);
    seed(&js).await;
    dead_letter(&js, &Entry::egress("acme", DlqCode::PermanentFailure, 5)).await;
    // A binary payload, no tenant, repeated headers.
    let now = OffsetDateTime::now_utc();
    let mut producer = HeaderMap::new();
    producer.insert("Nats-Msg-Id", "raw ✓ 1");
    producer.append("X-Tag", "a");
    producer.append("X-Tag", "b");
    DeadLetter {
        stage: Stage::Ingress,
        code: DlqCode::InvalidSubject,
        reason: "bad subject".into(),
        tenant: None,
        platform: None,
        attempts: 0,
        first_failure: now,
        last_failure: now,
        source_stream: "INGRESS".into(),
        source_seq: 9,
        source_time: None,
        source_subject: "ingress.v1.x".into(),
        history: Vec::new(),
    }
    .publish(
        &js,
        &Namespace::default(),
        Some(&producer),
        vec![0u8, 255, 10, 13].into(),
    )
    .await
    .unwrap()
    .await
    .unwrap();
    let before: Vec<_> = stored_messages(&js, "DLQ")
        .await
        .iter()
        .map(comparable)
        .collect();
    assert_eq!(before.len(), 6);

    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("dlq.ndjson");
    let path = file.to_str().unwrap();
    assert_eq!(
        ok(&url, &["dlq", "export", "--file", path]).await,
        format!("exported 6 entries to {path} (seq 1..6)\n")
    );
    let text = std::fs::read_to_string(&file).unwrap();
    assert_eq!(text.lines().count(), 6);
    let first: serde_json::Value = serde_json::from_str(text.lines().next().unwrap()).unwrap();
    assert_eq!(first["format"], "switchyard-dlq-export/1");
    assert_eq!(first["seq"], 1);
    assert_eq!(first["code"], "retries_exhausted");
    assert_eq!(first["payload"]["encoding"], "utf8");
    assert!(
        first["stored_headers"]
            .as_array()
            .unwrap()
            .iter()
            .any(|h| h[0] == "Switchyard-Dlq-Code")
    );
    let err = fails(&url, &["dlq", "export", "--file", path]).await;
    assert!(
        err.contains("(it must not exist; --force replaces it)"),
        "{err}"
    );
    let filtered = dir.path().join("acme.ndjson");
    let report: serde_json::Value = serde_json::from_str(
        &ok(
            &url,
            &[
                "dlq",
                "export",
                "--file",
                filtered.to_str().unwrap(),
                "--tenant",
                "acme",
                "--json",
            ],
        )
        .await,
    )
    .unwrap();
    assert_eq!(report["exported"], 3);

    // Importing into the DLQ the file came from, while it still holds the originals, stores
    // nothing twice.
    assert_eq!(
        ok(&url, &["dlq", "import", "--file", path])
            .await
            .lines()
            .last(),
        Some("restored 0 entries; 6 already stored (left alone)")
    );
    assert_eq!(stored_count(&js, "DLQ").await, 6);

    ok(&url, &["dlq", "purge", "--all", "--yes"]).await;
    assert_eq!(stored_count(&js, "DLQ").await, 0);

    // A damaged file is refused as a whole, naming the line; nothing is published.
    let damaged = dir.path().join("damaged.ndjson");
    let mut lines: Vec<&str> = text.lines().collect();
    lines.insert(2, "{\"format\":\"something-else\"}");
    std::fs::write(&damaged, lines.join("\n")).unwrap();
    let err = fails(
        &url,
        &["dlq", "import", "--file", damaged.to_str().unwrap()],
    )
    .await;
    assert!(err.contains("line 3 of"), "{err}");
    assert_eq!(stored_count(&js, "DLQ").await, 0);

    assert_eq!(
        ok(&url, &["dlq", "import", "--file", path, "--dry-run"])
            .await
            .lines()
            .last(),
        Some("would restore 6 entries")
    );
    assert_eq!(stored_count(&js, "DLQ").await, 0);
    assert_eq!(
        ok(&url, &["dlq", "import", "--file", path]).await,
        "restored 6 entries\n"
    );
    let after_msgs = stored_messages(&js, "DLQ").await;
    let after: Vec<_> = after_msgs.iter().map(comparable).collect();
    assert_eq!(
        after, before,
        "same subjects, headers, payloads and records"
    );
    for m in &after_msgs {
        let id = m.headers.get("Nats-Msg-Id").unwrap().as_str();
        assert!(
            id.starts_with("import:") && id.contains("/dlq:"),
            "import:<run>/<record id>, not {id}"
        );
    }
    // Browsing and replaying work on restored entries as on any other.
    let ls: serde_json::Value =
        serde_json::from_str(&ok(&url, &["dlq", "ls", "--json"]).await).unwrap();
    assert_eq!(ls.as_array().unwrap().len(), 6);

    // The same file again restores nothing twice.
    let again: serde_json::Value =
        serde_json::from_str(&ok(&url, &["dlq", "import", "--file", path, "--json"]).await)
            .unwrap();
    assert_eq!(again["restored"].as_array().unwrap().len(), 0);
    assert_eq!(again["already_stored"].as_array().unwrap().len(), 6);
    assert_eq!(stored_count(&js, "DLQ").await, 6);

    // Purged again, inside the DLQ's duplicate window (which remembers the purged ids): the
    // next import restores every entry instead of silently nothing.
    ok(&url, &["dlq", "purge", "--all", "--yes"]).await;
    assert_eq!(
        ok(&url, &["dlq", "import", "--file", path]).await,
        "restored 6 entries\n"
    );
    let restored_again: Vec<_> = stored_messages(&js, "DLQ")
        .await
        .iter()
        .map(comparable)
        .collect();
    assert_eq!(restored_again, before);
}
