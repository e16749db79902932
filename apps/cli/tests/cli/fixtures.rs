//! DLQ entries written the way a stage writes them: a real envelope, then
//! `DeadLetter::publish` onto the real DLQ stream; and a dlq service run in this process for
//! the commands that need one (`replay --job`, `jobs`, `stats`).

use async_nats::HeaderMap;
use async_nats::jetstream::{self, stream::Stream};
use bytes::Bytes;
use switchyard_dlq::{DeadLetter, DlqCode};
use switchyard_envelope::AttemptRecord;
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

/// Writes `count` egress entries of `tenant` (messages `first..first + count`), publishing
/// them all before awaiting the acks; returns `(DLQ seq, envelope id)` per entry.
pub async fn seed_many(
    js: &jetstream::Context,
    tenant: &'static str,
    first: u64,
    count: u64,
    code: DlqCode,
) -> Vec<(u64, String)> {
    let ns = Namespace::default();
    let mut pending = Vec::new();
    for n in first..first + count {
        let env = envelope(tenant, n);
        let mut original = HeaderMap::new();
        env.write_headers(&mut original);
        original.insert(headers::NATS_MSG_ID, env.hop_msg_id(Stage::Egress));
        let now = OffsetDateTime::now_utc();
        let record = DeadLetter {
            stage: Stage::Egress,
            code,
            reason: format!("{code} for order {n}"),
            tenant: Some(env.address.tenant.clone()),
            platform: Some(env.address.platform.clone()),
            attempts: 5,
            first_failure: now,
            last_failure: now,
            source_stream: "EGRESS".into(),
            source_seq: n,
            source_subject: StageSubject {
                stage: InputStage::Egress,
                address: env.address.clone(),
            }
            .format(&ns),
            history: Vec::new(),
        };
        let ack = record
            .publish(js, &ns, Some(&original), payload(n))
            .await
            .unwrap();
        pending.push((ack, env.id.to_string()));
    }
    let mut out = Vec::new();
    for (ack, id) in pending {
        out.push((ack.await.unwrap().sequence, id));
    }
    out
}

/// A dlq service running in this process against `url`, with short leases and scans.
pub struct DlqService {
    running: Option<switchyard_dlq_service::Running>,
    shutdown: tokio_util::sync::CancellationToken,
}

impl DlqService {
    /// Starts an instance (its own connection).
    pub async fn start(url: &str) -> Self {
        let mut config = switchyard_dlq_service::DlqConfig::defaults().unwrap();
        config.nats.url = url.to_owned();
        config.http.listen = "127.0.0.1:0".parse().unwrap();
        config.jobs.lease_secs = 3;
        config.jobs.scan_interval_secs = 1;
        config.stats.lease_secs = 3;
        config.safety_net.sweep_interval_secs = 0;
        let client = async_nats::connect(url).await.unwrap();
        let shutdown = tokio_util::sync::CancellationToken::new();
        let running = switchyard_dlq_service::start(config, client, shutdown.clone())
            .await
            .unwrap();
        Self {
            running: Some(running),
            shutdown,
        }
    }

    /// This instance's id (the owner named in its leases).
    pub fn instance(&self) -> String {
        self.running.as_ref().unwrap().info.clone()
    }

    /// Stops it as SIGTERM would and waits for it to drain.
    pub async fn stop(mut self) {
        self.shutdown.cancel();
        self.running.take().unwrap().task.await.unwrap().unwrap();
    }

    /// Kills it mid-flight, as a crash would (nothing is released).
    pub async fn crash(mut self) {
        let running = self.running.take().unwrap();
        running.task.abort();
        let _ = running.task.await;
    }
}

/// The job records in the `dlq-jobs` bucket, by id.
pub async fn job(js: &jetstream::Context, id: &str) -> switchyard_dlq_ops::JobRecord {
    let store = switchyard_dlq_ops::JobStore::new(js.get_key_value("dlq-jobs").await.unwrap());
    store.get(id).await.unwrap().unwrap().0
}

/// Splits a table line into its cells (columns are separated by two or more spaces).
pub fn cells(line: &str) -> Vec<&str> {
    line.split("  ")
        .map(str::trim)
        .filter(|c| !c.is_empty())
        .collect()
}
