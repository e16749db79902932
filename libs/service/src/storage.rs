//! Storage health, measured by each service every `storage.check_interval_secs` and reported
//! by its `/readyz` and `/metrics`:
//!
//! - **KV round trip:** a read of a key that is never written (`_readiness`) from one of the
//!   service's buckets: a request answered by the bucket's stream leader.
//! - **Stream publish round trip:** a publish to a DLQ subject (`…dlq.v1._.<stage>._readiness`)
//!   carrying `Nats-Expected-Stream: switchyard-readiness-probe`. The DLQ stream's leader
//!   refuses it (JetStream error 10060, stream name mismatch) without storing anything, so the
//!   probe measures the publish path to the leader and back, not the disk write; a slow disk
//!   shows in the services' own handler latencies and in the stream's fill.
//! - **Fill:** bytes and messages of every shared stream and bucket the service uses, in % of
//!   their limits (the fuller of the two). Tenants' own streams are left out on purpose: a
//!   tenant filling its quota is that tenant's business (`quota_near_full` events), never a
//!   reason to take a service out of rotation for every tenant.
//!
//! `/readyz` fails with the reason when the last measurement passed a bound
//! (`storage.max_kv_rtt_ms`, `storage.max_publish_rtt_ms`, `storage.max_fill_pct`), or when
//! measuring has not finished for three intervals (a request that hangs).
//!
//! Metrics: `switchyard_storage_kv_rtt_seconds`, `switchyard_storage_publish_rtt_seconds`
//! (last measurement), `switchyard_storage_fill_pct{stream}`, `switchyard_storage_bytes{stream}`,
//! `switchyard_storage_messages{stream}`, `switchyard_storage_checks_total{result}`.

use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_nats::HeaderMap;
use async_nats::jetstream::{self, stream};
use bytes::Bytes;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use switchyard_keys::Stage;
use switchyard_runtime::config::StorageConfig;
use switchyard_subjects::{DlqFilter, Namespace};
use tokio_util::sync::CancellationToken;

use crate::Metrics;

/// The stream name the probe publish expects: no stream has it, so the publish is refused.
pub const PROBE_EXPECTED_STREAM: &str = "switchyard-readiness-probe";
/// The key the KV probe reads (never written).
pub const PROBE_KEY: &str = "_readiness";
/// How long one probe request may take before it counts as failed.
const PROBE_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StreamLabels {
    stream: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ResultLabels {
    result: &'static str,
}

/// The gauges a service's storage measurement writes.
#[derive(Clone, Default)]
struct Gauges {
    kv_rtt: Gauge<f64, AtomicU64>,
    publish_rtt: Gauge<f64, AtomicU64>,
    fill: Family<StreamLabels, Gauge<f64, AtomicU64>>,
    bytes: Family<StreamLabels, Gauge>,
    messages: Family<StreamLabels, Gauge>,
    checks: Family<ResultLabels, Counter>,
}

impl Gauges {
    fn register(&self, metrics: &Metrics) {
        metrics.register(
            "storage_kv_rtt_seconds",
            "Last KV round trip measured by the storage check (a read of a key never written)",
            self.kv_rtt.clone(),
        );
        metrics.register(
            "storage_publish_rtt_seconds",
            "Last stream publish round trip measured by the storage check (a publish the DLQ's leader refuses unstored)",
            self.publish_rtt.clone(),
        );
        metrics.register(
            "storage_fill_pct",
            "Fill of a shared stream or bucket the service uses: the fuller of bytes and messages, in % of its limits",
            self.fill.clone(),
        );
        metrics.register(
            "storage_bytes",
            "Bytes stored in a shared stream or bucket the service uses",
            self.bytes.clone(),
        );
        metrics.register(
            "storage_messages",
            "Messages stored in a shared stream or bucket the service uses",
            self.messages.clone(),
        );
        metrics.register(
            "storage_checks",
            "Storage measurements, by result (ok, or failed: a bound passed or a probe failed)",
            self.checks.clone(),
        );
    }
}

/// The fill of a stream: the fuller of bytes and messages, in % of the limits that are set
/// (0 when none is; a limit of 0 or below is no limit).
pub fn fill_pct(state: &stream::State, config: &stream::Config) -> f64 {
    let share = |used: u64, max: i64| (max > 0).then(|| used as f64 * 100.0 / max as f64);
    share(state.bytes, config.max_bytes)
        .into_iter()
        .chain(share(state.messages, config.max_messages))
        .fold(0.0, f64::max)
}

/// What a service measures: where, and against which bounds.
#[derive(Clone)]
pub struct StorageProbe {
    js: jetstream::Context,
    config: StorageConfig,
    /// The bucket the KV probe reads (`None`: no KV probe).
    bucket: Option<String>,
    /// The subject the publish probe uses.
    subject: String,
    /// Shared streams whose fill is checked (buckets as `KV_<bucket>`).
    streams: Vec<String>,
    gauges: Gauges,
    last: Arc<Mutex<Last>>,
}

/// The last measurement.
struct Last {
    finished: Instant,
    verdict: Result<(), String>,
}

impl StorageProbe {
    /// A probe for a service of `stage`: KV reads from `bucket`, publishes refused by the DLQ
    /// stream, fill of `streams` (concrete stream names; a bucket as `KV_<bucket>`). Its
    /// metrics are registered in `metrics`.
    pub fn new(
        js: jetstream::Context,
        ns: &Namespace,
        stage: Stage,
        config: StorageConfig,
        bucket: Option<String>,
        streams: Vec<String>,
        metrics: &Metrics,
    ) -> Self {
        let subject = probe_subject(ns, stage);
        let gauges = Gauges::default();
        gauges.register(metrics);
        Self {
            js,
            config,
            bucket,
            subject,
            streams,
            gauges,
            last: Arc::new(Mutex::new(Last {
                finished: Instant::now(),
                verdict: Err("storage not measured yet".to_owned()),
            })),
        }
    }

    /// The readiness verdict of the last measurement: `Err` with the reason when a bound was
    /// passed, a probe failed, or no measurement finished for three intervals.
    pub fn verdict(&self) -> Result<(), String> {
        let Ok(last) = self.last.lock() else {
            return Err("storage check state poisoned".to_owned());
        };
        let stale = Duration::from_secs(self.config.check_interval_secs * 3) + PROBE_TIMEOUT;
        if last.finished.elapsed() > stale {
            return Err(format!(
                "storage not measured for {} s (a KV or stream request hangs)",
                last.finished.elapsed().as_secs()
            ));
        }
        last.verdict.clone()
    }

    /// Records a measurement's verdict (what [`Self::verdict`] answers from now on).
    pub fn record(&self, verdict: Result<(), String>) {
        let result = if verdict.is_ok() { "ok" } else { "failed" };
        self.gauges
            .checks
            .get_or_create(&ResultLabels { result })
            .inc();
        if let Err(reason) = &verdict {
            tracing::warn!(%reason, "storage check failed: not ready");
        }
        if let Ok(mut last) = self.last.lock() {
            *last = Last {
                finished: Instant::now(),
                verdict,
            };
        }
    }

    /// Measures every `check_interval_secs` (the first after one interval) until `shutdown`.
    pub async fn run(self, shutdown: CancellationToken) {
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(Duration::from_secs(self.config.check_interval_secs)) => {}
            }
            self.record(self.measure().await);
        }
    }

    /// One measurement: every probe runs (so every gauge is fresh), the first problem is the
    /// verdict.
    pub async fn measure(&self) -> Result<(), String> {
        let mut problems = Vec::new();
        match self.kv_rtt().await {
            Ok(None) => {}
            Ok(Some((bucket, rtt))) => {
                self.gauges.kv_rtt.set(rtt.as_secs_f64());
                if rtt > Duration::from_millis(self.config.max_kv_rtt_ms) {
                    problems.push(format!(
                        "KV round trip to bucket {bucket} took {} ms (storage.max_kv_rtt_ms = {})",
                        rtt.as_millis(),
                        self.config.max_kv_rtt_ms
                    ));
                }
            }
            Err(e) => problems.push(e),
        }
        match self.publish_rtt().await {
            Ok(rtt) => {
                self.gauges.publish_rtt.set(rtt.as_secs_f64());
                if rtt > Duration::from_millis(self.config.max_publish_rtt_ms) {
                    problems.push(format!(
                        "stream publish round trip took {} ms (storage.max_publish_rtt_ms = {})",
                        rtt.as_millis(),
                        self.config.max_publish_rtt_ms
                    ));
                }
            }
            Err(e) => problems.push(e),
        }
        for name in &self.streams {
            let labels = StreamLabels {
                stream: name.clone(),
            };
            let info = tokio::time::timeout(PROBE_TIMEOUT, async {
                let stream = self.js.get_stream(name).await?;
                let info = stream.cached_info();
                Ok::<_, jetstream::context::GetStreamError>((
                    info.state.clone(),
                    info.config.clone(),
                ))
            })
            .await;
            match info {
                Ok(Ok((state, config))) => {
                    let fill = fill_pct(&state, &config);
                    self.gauges.fill.get_or_create(&labels).set(fill);
                    self.gauges
                        .bytes
                        .get_or_create(&labels)
                        .set(i64::try_from(state.bytes).unwrap_or(i64::MAX));
                    self.gauges
                        .messages
                        .get_or_create(&labels)
                        .set(i64::try_from(state.messages).unwrap_or(i64::MAX));
                    if fill >= self.config.max_fill_pct {
                        problems.push(format!(
                            "{name} is {fill:.1}% full (storage.max_fill_pct = {})",
                            self.config.max_fill_pct
                        ));
                    }
                }
                Ok(Err(e)) => problems.push(format!("reading stream {name}: {e}")),
                Err(_) => problems.push(format!(
                    "reading stream {name}: no answer in {} s",
                    PROBE_TIMEOUT.as_secs()
                )),
            }
        }
        match problems.into_iter().next() {
            None => Ok(()),
            Some(first) => Err(first),
        }
    }

    async fn kv_rtt(&self) -> Result<Option<(&str, Duration)>, String> {
        let Some(bucket) = self.bucket.as_deref() else {
            return Ok(None);
        };
        kv_round_trip(&self.js, bucket)
            .await
            .map(|rtt| Some((bucket, rtt)))
    }

    async fn publish_rtt(&self) -> Result<Duration, String> {
        publish_round_trip(&self.js, &self.subject).await
    }
}

/// The subject the publish probe of a `stage` uses: `…dlq.v1._.<stage>._readiness` (the DLQ
/// stream's, so that stream's leader answers; refused, never stored).
pub fn probe_subject(ns: &Namespace, stage: Stage) -> String {
    let mut wildcards = ["_", PROBE_KEY].into_iter();
    ns.dlq_filter(&DlqFilter {
        stage: Some(stage),
        ..Default::default()
    })
    .split('.')
    .map(|token| match token {
        "*" => wildcards.next().unwrap_or("_"),
        other => other,
    })
    .collect::<Vec<_>>()
    .join(".")
}

/// A KV round trip: a read of [`PROBE_KEY`] (never written) from `bucket`, timed from the
/// request to its answer.
///
/// # Errors
/// The bucket cannot be opened, the read fails, or no answer comes in 10 s: the reason.
pub async fn kv_round_trip(js: &jetstream::Context, bucket: &str) -> Result<Duration, String> {
    let kv = tokio::time::timeout(PROBE_TIMEOUT, js.get_key_value(bucket))
        .await
        .map_err(|_| format!("opening bucket {bucket}: no answer"))?
        .map_err(|e| format!("opening bucket {bucket}: {e}"))?;
    let started = Instant::now();
    match tokio::time::timeout(PROBE_TIMEOUT, kv.get(PROBE_KEY)).await {
        Ok(Ok(_)) => Ok(started.elapsed()),
        Ok(Err(e)) => Err(format!("KV read from bucket {bucket}: {e}")),
        Err(_) => Err(format!(
            "KV read from bucket {bucket}: no answer in {} s",
            PROBE_TIMEOUT.as_secs()
        )),
    }
}

/// A stream publish round trip: a publish to `subject` (see [`probe_subject`]) with
/// `Nats-Expected-Stream: switchyard-readiness-probe`, which the stream's leader refuses
/// unstored, timed from the publish to the refusal.
///
/// # Errors
/// No stream answers, another error comes back, or no answer comes in 10 s: the reason.
pub async fn publish_round_trip(
    js: &jetstream::Context,
    subject: &str,
) -> Result<Duration, String> {
    let mut headers = HeaderMap::new();
    headers.insert("Nats-Expected-Stream", PROBE_EXPECTED_STREAM);
    let started = Instant::now();
    let answer = tokio::time::timeout(PROBE_TIMEOUT, async {
        let ack = js
            .publish_with_headers(subject.to_owned(), headers, Bytes::new())
            .await
            .map_err(|e| e.to_string())?;
        Ok::<_, String>(ack.await)
    })
    .await;
    let elapsed = started.elapsed();
    match answer {
        // The refusal is the answer the probe asks for: the stream's leader read the publish
        // and said no.
        Ok(Ok(Err(e))) if is_stream_mismatch(&e) => Ok(elapsed),
        Ok(Ok(Err(e))) => Err(format!("stream publish probe: {e}")),
        // Stored: cannot happen unless a stream took the probe's name.
        Ok(Ok(Ok(_))) => Ok(elapsed),
        Ok(Err(e)) => Err(format!("stream publish probe: {e}")),
        Err(_) => Err(format!(
            "stream publish probe: no answer in {} s",
            PROBE_TIMEOUT.as_secs()
        )),
    }
}

/// JetStream's error code for "expected stream does not match" (`Nats-Expected-Stream`).
const STREAM_MISMATCH: u64 = 10060;

/// Whether a publish was refused by a stream's leader for `Nats-Expected-Stream` (what the
/// probe asks for), as opposed to no stream, no leader or no answer.
fn is_stream_mismatch(e: &jetstream::context::PublishError) -> bool {
    std::error::Error::source(e)
        .and_then(|source| source.downcast_ref::<jetstream::Error>())
        .is_some_and(|j| j.error_code() == jetstream::ErrorCode(STREAM_MISMATCH))
}
