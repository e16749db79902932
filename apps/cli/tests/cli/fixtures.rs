//! DLQ entries written the way a stage writes them: a real envelope, then
//! `DeadLetter::publish` onto the real DLQ stream.

use async_nats::HeaderMap;
use async_nats::jetstream::{self, stream::Stream};
use bytes::Bytes;
use switchyard_dlq::{AttemptRecord, DeadLetter, DlqCode};
use switchyard_envelope::{
    Attempt, Envelope, EnvelopeId, SCHEMA_VERSION, SourceRef, TraceContext, headers,
};
use switchyard_keys::{Address, MsgId, Stage};
use switchyard_subjects::{InputStage, Namespace, StageSubject, SubjectKind};
use time::OffsetDateTime;

/// One entry to write: tenant, team, platform, code; `n` makes it unique (source sequence,
/// msg id and payload).
pub struct Entry {
    pub tenant: &'static str,
    pub code: DlqCode,
    pub stage: Stage,
    pub n: u64,
}

impl Entry {
    pub fn egress(tenant: &'static str, code: DlqCode, n: u64) -> Self {
        Self {
            tenant,
            code,
            stage: Stage::Egress,
            n,
        }
    }
}

/// The envelope ingress would have stamped on message `n`.
pub fn envelope(tenant: &str, n: u64) -> Envelope {
    let received_at = OffsetDateTime::now_utc();
    let source = SourceRef {
        stream: "INGRESS".into(),
        sequence: n,
    };
    Envelope {
        id: EnvelopeId::derive(&source, received_at),
        address: Address::parse(tenant, "ops", "slack").unwrap(),
        msg_id: MsgId::new(format!("order-{n}")).unwrap(),
        received_at,
        content_type: Some("application/json".into()),
        trace: TraceContext::default(),
        schema_version: SCHEMA_VERSION,
        attempt: Attempt {
            delivery: 5,
            replay: 0,
        },
        source,
    }
}

/// The payload of entry `n` (JSON, so `show` pretty-prints it).
pub fn payload(n: u64) -> Bytes {
    Bytes::from(format!("{{\"order\":{n},\"text\":\"hello\"}}"))
}

/// Writes `entry` with the envelope `env` as a stage would; returns the DLQ sequence.
pub async fn dead_letter_with(js: &jetstream::Context, entry: &Entry, env: &Envelope) -> u64 {
    dead_letter_in(js, &Namespace::default(), entry, env).await
}

/// [`dead_letter_with`] in a deployment namespace (prefix).
pub async fn dead_letter_in(
    js: &jetstream::Context,
    ns: &Namespace,
    entry: &Entry,
    env: &Envelope,
) -> u64 {
    let mut original = HeaderMap::new();
    env.write_headers(&mut original);
    original.insert(headers::NATS_MSG_ID, env.hop_msg_id(entry.stage));
    let now = OffsetDateTime::now_utc();
    let record = DeadLetter {
        stage: entry.stage,
        code: entry.code,
        reason: format!("{} for order {}", entry.code, entry.n),
        tenant: Some(env.address.tenant.clone()),
        platform: Some(env.address.platform.clone()),
        attempts: 5,
        first_failure: now,
        last_failure: now,
        source_stream: "EGRESS".into(),
        source_seq: entry.n,
        source_subject: StageSubject {
            stage: InputStage::Egress,
            address: env.address.clone(),
        }
        .format(ns),
        history: vec![AttemptRecord::new(
            now,
            "http_status",
            Some(503),
            42,
            Some("service unavailable".into()),
        )],
    };
    record
        .publish(js, ns, Some(&original), payload(entry.n))
        .await
        .unwrap()
        .await
        .unwrap()
        .sequence
}

/// Writes `entry` with a fresh envelope; returns the DLQ sequence.
pub async fn dead_letter(js: &jetstream::Context, entry: &Entry) -> u64 {
    dead_letter_with(js, entry, &envelope(entry.tenant, entry.n)).await
}

/// The standard four: acme/retries_exhausted (1), globex/no_route (2), acme/no_route (3),
/// globex/retries_exhausted (4).
pub async fn seed(js: &jetstream::Context) -> Vec<u64> {
    let mut seqs = Vec::new();
    for entry in [
        Entry::egress("acme", DlqCode::RetriesExhausted, 1),
        Entry::egress("globex", DlqCode::NoRoute, 2),
        Entry::egress("acme", DlqCode::NoRoute, 3),
        Entry::egress("globex", DlqCode::RetriesExhausted, 4),
    ] {
        seqs.push(dead_letter(js, &entry).await);
    }
    seqs
}

/// Messages stored in a stream now.
pub async fn messages(js: &jetstream::Context, stream: &str) -> u64 {
    let mut stream: Stream = js.get_stream(stream).await.unwrap();
    stream.info().await.unwrap().state.messages
}
