//! DLQ entries written the way a stage writes them: a real envelope, then
//! `DeadLetter::publish` onto the real DLQ stream; and a dlq service run in this process for
//! the commands that need one (`replay --job`, `jobs`, `stats`).

use async_nats::jetstream;
use switchyard_dlq::DlqCode;
use switchyard_envelope::Envelope;
use switchyard_fixtures::{Orders, Service};
use switchyard_keys::Stage;
use switchyard_subjects::Namespace;

/// How the CLI suite's entries look: fifth delivery, a `text` in the payload (so `show`
/// pretty-prints it), a 42 ms "service unavailable" attempt.
pub const ORDERS: Orders = Orders {
    deliveries: 5,
    text: Some("hello"),
    failure: (42, "service unavailable"),
};

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
    ORDERS.envelope(tenant, n)
}

/// The payload of entry `n` (JSON, so `show` pretty-prints it).
pub fn payload(n: u64) -> bytes::Bytes {
    ORDERS.payload(n)
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
    let record = ORDERS.record(ns, entry.stage, entry.code, entry.n, env);
    ORDERS
        .publish(js, ns, record, entry.n)
        .await
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

/// Writes `count` egress entries of `tenant` (messages `first..first + count`, no attempt
/// history), publishing them all before awaiting the acks; returns `(DLQ seq, envelope id)`
/// per entry.
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
        let (mut record, original) = ORDERS.record(&ns, Stage::Egress, code, n, &env);
        record.history.clear();
        let ack = ORDERS.publish(js, &ns, (record, original), n).await;
        pending.push((ack, env.id.to_string()));
    }
    let mut out = Vec::new();
    for (ack, id) in pending {
        out.push((ack.await.unwrap().sequence, id));
    }
    out
}

/// A dlq service running in this process against `url`, with short leases and scans.
pub struct DlqService(Service<String>);

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
        Self(Service::new(running, shutdown))
    }

    /// Where its `/healthz`, `/readyz` and `/metrics` answer.
    pub fn probes_addr(&self) -> std::net::SocketAddr {
        self.0.running().probes_addr
    }

    /// This instance's id (the owner named in its leases).
    pub fn instance(&self) -> String {
        self.0.running().info.clone()
    }

    /// Stops it as SIGTERM would and waits for it to drain.
    pub async fn stop(self) {
        self.0.stop().await;
    }

    /// Kills it mid-flight, as a crash would (nothing is released).
    pub async fn crash(self) {
        self.0.crash().await;
    }
}

/// The job records in the `dlq-jobs` bucket, by id.
pub async fn job(js: &jetstream::Context, id: &str) -> switchyard_dlq_ops::JobRecord {
    let store = switchyard_dlq_ops::JobStore::new(js.get_key_value("dlq-jobs").await.unwrap());
    store.get(id).await.unwrap().unwrap().0
}

/// The DLQ sequences `dlq ls --json` lists, with `global` arguments (such as `--config`)
/// before the command.
pub async fn dlq_seqs(url: &str, global: &[&str]) -> Vec<u64> {
    let args: Vec<&str> = global
        .iter()
        .copied()
        .chain(["dlq", "ls", "--json"])
        .collect();
    let json: serde_json::Value = serde_json::from_str(&crate::ok(url, &args).await).unwrap();
    json.as_array()
        .unwrap()
        .iter()
        .map(|e| e["seq"].as_u64().unwrap())
        .collect()
}

/// Splits a table line into its cells (columns are separated by two or more spaces).
pub fn cells(line: &str) -> Vec<&str> {
    line.split("  ")
        .map(str::trim)
        .filter(|c| !c.is_empty())
        .collect()
}
