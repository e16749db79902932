//! Interop: DLQ entries read with a plain async-nats subscription and decoded from
//! `docs/dlq-wire-format.md` alone — no Switchyard library touches the reading side (the
//! entries are written the way stages write them).

use std::collections::BTreeMap;
use std::time::Duration;

use async_nats::HeaderMap;
use futures::StreamExt;
use serde::Deserialize;
use switchyard_dlq::{DeadLetter, DlqCode};
use switchyard_keys::Stage;
use switchyard_subjects::Namespace;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use crate::{Env, egress_record, payload};

/// One attempt in `Switchyard-Dlq-History`, as documented.
#[derive(Debug, Deserialize)]
#[allow(
    dead_code,
    reason = "decoded to prove the documented shape, not all read"
)]
struct Attempt {
    at: String,
    outcome: String,
    status: Option<u16>,
    duration_ms: u64,
    error: Option<String>,
}

/// A DLQ entry decoded by the documented rules.
#[derive(Debug)]
struct Decoded {
    tenant: Option<String>,
    stage: String,
    platform: Option<String>,
    code: String,
    reason: String,
    attempts: u32,
    first_failure: OffsetDateTime,
    last_failure: OffsetDateTime,
    source_stream: String,
    source_seq: u64,
    source_subject: String,
    record_msg_id: String,
    original_msg_id: Option<String>,
    history: Vec<Attempt>,
    /// Every header that is not a record header (`Switchyard-Dlq-*`) nor `Nats-*`.
    original: BTreeMap<String, String>,
    payload: Vec<u8>,
}

fn required<'a>(h: &'a HeaderMap, name: &str) -> &'a str {
    h.get(name)
        .unwrap_or_else(|| panic!("header {name} is documented as always present"))
        .as_str()
}

/// Section "Decoding an entry" of docs/dlq-wire-format.md, step by step.
fn decode(subject: &str, headers: &HeaderMap, body: &[u8]) -> Decoded {
    // 1. Subject: dlq.v1.<tenant or _>.<stage>.<platform or _> (no deployment prefix here).
    let tokens: Vec<&str> = subject.split('.').collect();
    assert_eq!(tokens.len(), 5, "{subject}");
    assert_eq!(&tokens[..2], ["dlq", "v1"]);
    let known = |t: &str| (t != "_").then(|| t.to_owned());
    // 2. Record headers.
    let time = |name| OffsetDateTime::parse(required(headers, name), &Rfc3339).unwrap();
    let stage = required(headers, "Switchyard-Dlq-Stage").to_owned();
    assert_eq!(
        stage, tokens[3],
        "the subject's stage token is the stage header"
    );
    let history = headers
        .get("Switchyard-Dlq-History")
        .map_or_else(Vec::new, |h| serde_json::from_str(h.as_str()).unwrap());
    // 3. The rest are the original message's headers.
    let mut original = BTreeMap::new();
    for (name, values) in headers.iter() {
        let name: &str = name.as_ref();
        if name.starts_with("Switchyard-Dlq-") || name.starts_with("Nats-") {
            continue;
        }
        original.insert(name.to_owned(), values[0].as_str().to_owned());
    }
    Decoded {
        tenant: known(tokens[2]),
        stage,
        platform: known(tokens[4]),
        code: required(headers, "Switchyard-Dlq-Code").to_owned(),
        reason: required(headers, "Switchyard-Dlq-Reason").to_owned(),
        attempts: required(headers, "Switchyard-Dlq-Attempts")
            .parse()
            .unwrap(),
        first_failure: time("Switchyard-Dlq-First-Failure"),
        last_failure: time("Switchyard-Dlq-Last-Failure"),
        source_stream: required(headers, "Switchyard-Dlq-Source-Stream").to_owned(),
        source_seq: required(headers, "Switchyard-Dlq-Source-Seq")
            .parse()
            .unwrap(),
        source_subject: required(headers, "Switchyard-Dlq-Source-Subject").to_owned(),
        record_msg_id: required(headers, "Nats-Msg-Id").to_owned(),
        original_msg_id: headers
            .get("Switchyard-Dlq-Original-Msg-Id")
            .map(|v| v.as_str().to_owned()),
        history,
        original,
        // 4. The payload is the original payload, byte for byte.
        payload: body.to_vec(),
    }
}

#[tokio::test]
async fn dlq_entries_decode_from_the_documented_format_with_a_plain_client() {
    let env = Env::start().await;
    // The reader: a stock async-nats client, nothing else.
    let reader = async_nats::connect(env.server.url()).await.unwrap();
    let mut live = reader.subscribe("dlq.v1.>").await.unwrap();
    reader.flush().await.unwrap();
    // Wait until the subscription demonstrably receives (a probe on a subject inside its filter
    // that the DLQ stream does not store), so no entry published below can miss it.
    const PROBE: &str = "dlq.v1.probe";
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the live subscription never received a probe"
        );
        env.client.publish(PROBE, "probe".into()).await.unwrap();
        env.client.flush().await.unwrap();
        if let Ok(Some(message)) =
            tokio::time::timeout(Duration::from_millis(200), live.next()).await
            && message.subject.as_str() == PROBE
        {
            break;
        }
    }

    // Two entries, written as stages write them: an egress failure with an envelope, and an
    // ingress refusal of a message whose tenant and platform are unknown.
    let (record, original) = egress_record("acme", 7, DlqCode::RetriesExhausted);
    record
        .publish(&env.js, &Namespace::default(), Some(&original), payload(7))
        .await
        .unwrap()
        .await
        .unwrap();
    let now = OffsetDateTime::now_utc();
    let mut producer = HeaderMap::new();
    producer.insert("Nats-Msg-Id", "raw 1");
    producer.insert("Content-Type", "application/octet-stream");
    let refused = DeadLetter {
        stage: Stage::Ingress,
        code: DlqCode::InvalidSubject,
        reason: "subject has 2 tokens after the version".into(),
        tenant: None,
        platform: None,
        attempts: 0,
        first_failure: now,
        last_failure: now,
        source_stream: "INGRESS".into(),
        source_seq: 3,
        source_time: None,
        source_subject: "ingress.v1.acme.ops".into(),
        history: Vec::new(),
    };
    let binary: &[u8] = &[0, 159, 146, 150, 255];
    refused
        .publish(
            &env.js,
            &Namespace::default(),
            Some(&producer),
            binary.to_vec().into(),
        )
        .await
        .unwrap()
        .await
        .unwrap();

    let mut decoded = Vec::new();
    for _ in 0..2 {
        let message = loop {
            let message = tokio::time::timeout(Duration::from_secs(10), live.next())
                .await
                .expect("a live DLQ entry")
                .unwrap();
            if message.subject.as_str() != PROBE {
                break message;
            }
        };
        decoded.push(decode(
            message.subject.as_str(),
            message.headers.as_ref().unwrap(),
            &message.payload,
        ));
    }

    let e = &decoded[0];
    assert_eq!(e.tenant.as_deref(), Some("acme"));
    assert_eq!(
        (e.stage.as_str(), e.platform.as_deref()),
        ("egress", Some("slack"))
    );
    assert_eq!(e.code, "retries_exhausted");
    assert_eq!(e.reason, "retries_exhausted for order 7");
    assert_eq!(e.attempts, 3);
    assert!(e.first_failure <= e.last_failure);
    assert_eq!((e.source_stream.as_str(), e.source_seq), ("EGRESS", 7));
    assert_eq!(e.source_subject, "egress.v1.acme.ops.slack");
    assert_eq!(e.record_msg_id, "dlq:EGRESS:7");
    assert!(e.original_msg_id.as_deref().unwrap().ends_with(":egress:0"));
    assert_eq!(e.history.len(), 1);
    assert_eq!(
        (e.history[0].outcome.as_str(), e.history[0].status),
        ("http_status", Some(503))
    );
    assert_eq!(e.original["Switchyard-Tenant"], "acme");
    assert_eq!(e.original["Switchyard-Msg-Id"], "order-7");
    assert_eq!(e.original["Content-Type"], "application/json");
    assert_eq!(e.payload, payload(7).to_vec());

    let r = &decoded[1];
    assert_eq!((r.tenant.as_deref(), r.platform.as_deref()), (None, None));
    assert_eq!(
        (r.stage.as_str(), r.code.as_str()),
        ("ingress", "invalid_subject")
    );
    assert_eq!(r.original_msg_id.as_deref(), Some("raw 1"));
    assert_eq!(r.record_msg_id, "dlq:INGRESS:3");
    assert!(r.history.is_empty());
    assert_eq!(r.original["Content-Type"], "application/octet-stream");
    assert_eq!(r.payload, binary, "binary payloads arrive as they were");

    // The same entries, stored: a plain JetStream ordered consumer reads them without
    // removing anything, and they decode the same way.
    let js = async_nats::jetstream::new(reader.clone());
    let stream = js.get_stream("DLQ").await.unwrap();
    let consumer = stream
        .create_consumer(async_nats::jetstream::consumer::pull::OrderedConfig {
            filter_subject: "dlq.v1.*.*.*".into(),
            ..Default::default()
        })
        .await
        .unwrap();
    let mut stored = consumer.messages().await.unwrap();
    for expected in &decoded {
        let message = stored.next().await.unwrap().unwrap();
        let again = decode(
            message.subject.as_str(),
            message.headers.as_ref().unwrap(),
            &message.payload,
        );
        assert_eq!(again.record_msg_id, expected.record_msg_id);
        assert_eq!(again.payload, expected.payload);
        assert_eq!(again.original, expected.original);
    }
    let mut stream = stream;
    assert_eq!(
        stream.info().await.unwrap().state.messages,
        2,
        "reading removed nothing"
    );
}
