//! The safety net: a message JetStream gave up on before its stage could dead-letter it (the
//! stage crashed, hung or was killed on every delivery) still lands in the DLQ.
//!
//! JetStream publishes a max-deliveries or terminated advisory when a consumer gives up on (or
//! terminates) a message; the `ADVISORIES` stream captures those of the shared stage streams,
//! so none is lost while no dlq instance runs. The replicas share its durable consumer
//! `dlq-safety-net`; for each advisory on a watched stream, once it is [`rescue_delay`] old
//! (a younger one is nak'd with the rest of the delay, so the server holds it), the safety net
//! *rescues* the message it points at ([`SafetyNet::rescue`]) and only then acks the advisory
//! (a failed rescue is retried: nak after [`RETRY_AFTER`]):
//!
//! 1. fetch the original by stream sequence from the stream leader — if it is gone, its stage
//!    acked it after all (or, on a work queue, terminated it, which removes it), so there is
//!    nothing to do;
//! 2. write a DLQ record (`exhausted_deliveries`, or `terminated`) with the consumer's name in
//!    the reason, the stage of the stream, tenant and platform from the envelope (or the
//!    subject), and the record `Nats-Msg-Id` a stage would have used, `dlq:<stream>:<seq>`:
//!    when the stage did write its own record (it dead-letters before it acks or terminates,
//!    so within seconds of the advisory), the DLQ's 5-minute duplicate window drops ours;
//! 3. on a work-queue stream, delete the original, which would otherwise sit there until it
//!    ages out (limits streams such as `INGRESS` keep it: it is their history).
//!
//! "Gone" (step 1) means the stage acked the message after all, or dead-lettered it itself (on
//! its last delivery, before acking): the advisory is handled within seconds, while a message
//! can only age out of its stream after `max_age` (7 days). The [`crate::sweep`] remains the
//! backstop for what no advisory reports (a full `ADVISORIES` drops new ones).
//!
//! [`rescue_delay`]: crate::config::SafetyNetSettings::rescue_delay_ms

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use async_nats::jetstream::consumer::{Consumer, pull};
use async_nats::jetstream::message::AckKind;
use async_nats::jetstream::stream::{LastRawMessageErrorKind, RawMessageError, Stream};
use async_nats::jetstream::{self, message::StreamMessage};
use futures::StreamExt;
use switchyard_dlq::{DeadLetter, DlqCode};
use switchyard_envelope::Envelope;
use switchyard_envelope::attempt::decode_history;
use switchyard_keys::{PlatformId, Stage, TenantId};
use switchyard_runtime::retry::RetryPolicy;
use switchyard_service::{DlqQuota, Metrics};
use switchyard_subjects::advisory::AdvisoryKind;
use switchyard_subjects::{Namespace, StageSubject, SubjectKind};
use switchyard_topology::{ConsumerName, ResolvedTopology, StreamName};
use time::OffsetDateTime;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::advisory::Advisory;
use crate::metrics::DlqMetrics;

/// How long a failed rescue waits before its advisory is delivered again.
pub const RETRY_AFTER: Duration = Duration::from_secs(5);

/// Rescues running at once.
const MAX_IN_FLIGHT: usize = 32;

/// One watched stream.
#[derive(Clone)]
pub struct Watched {
    /// Deployed name (`EGRESS`, `STAGING_EGRESS`, `BACKPRESSURE_07`).
    pub name: String,
    /// The stage that consumes it (and is named as the one that gave up).
    pub stage: Stage,
    /// Work-queue retention: a stranded message is deleted after its rescue.
    pub work_queue: bool,
    /// Consumers declared on it in the topology. On a limits stream only these count (any
    /// other consumer there is an operator's reader, not a stage); on a work queue every
    /// consumer is a stage's (the backpressure service creates one per tenant).
    pub declared: Vec<String>,
    /// The stream handle.
    pub stream: Stream,
}

/// What prompted a rescue.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rescue {
    /// Max deliveries or terminated.
    pub kind: AdvisoryKind,
    /// Deployed stream name.
    pub stream: String,
    /// The consumer that gave up.
    pub consumer: String,
    /// The message's stream sequence.
    pub seq: u64,
    /// Deliveries made.
    pub deliveries: u64,
    /// A `+TERM` reason, if any.
    pub term_reason: Option<String>,
    /// Found by the sweep rather than an advisory.
    pub swept: bool,
}

impl From<Advisory> for Rescue {
    fn from(a: Advisory) -> Self {
        Self {
            kind: a.kind,
            stream: a.stream,
            consumer: a.consumer,
            seq: a.stream_seq,
            deliveries: a.deliveries,
            term_reason: a.reason,
            swept: false,
        }
    }
}

/// What a rescue did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Rescued {
    /// A record was written at this DLQ sequence.
    Written(u64),
    /// The stage (or an earlier rescue) had already written the record; the DLQ dropped ours.
    AlreadyDeadLettered,
    /// The message is no longer in its stream.
    Gone,
    /// Not ours to rescue (the reason says why).
    Ignored(&'static str),
}

impl Rescued {
    fn label(&self) -> &'static str {
        match self {
            Rescued::Written(_) => "rescued",
            Rescued::AlreadyDeadLettered => "already_dead_lettered",
            Rescued::Gone => "gone",
            Rescued::Ignored(_) => "ignored",
        }
    }
}

/// The safety net of one dlq service instance.
pub struct SafetyNet {
    js: jetstream::Context,
    /// Each tenant's share of the DLQ: a rescue of a tenant holding its share waits (the
    /// advisory is retried) instead of taking other tenants' room.
    quota: Option<Arc<DlqQuota>>,
    ns: Namespace,
    watched: Vec<Watched>,
    delay: Duration,
    metrics: Arc<Metrics>,
    dlq_metrics: DlqMetrics,
}

fn not_found(err: &RawMessageError) -> bool {
    matches!(err.kind(), LastRawMessageErrorKind::NoMessageFound)
}

impl SafetyNet {
    /// Opens the watched streams (declared base names) of `topology`.
    pub async fn open(
        js: jetstream::Context,
        topology: &ResolvedTopology,
        streams: &[String],
        delay: Duration,
        metrics: Arc<Metrics>,
        dlq_metrics: DlqMetrics,
    ) -> anyhow::Result<Self> {
        let mut watched = Vec::new();
        for base in streams {
            let (stream_name, stage) = StreamName::from_base(base)
                .and_then(|s| Some((s, s.stage()?)))
                .with_context(|| {
                    format!("safety_net.streams: {base:?} is not a pipeline stream (INGRESS, IDEMPOTENCY, BACKPRESSURE, EGRESS)")
                })?;
            let resolved = topology
                .streams
                .iter()
                .find(|s| &s.base == base)
                .with_context(|| format!("safety_net.streams: no stream {base} is declared"))?;
            // A sharded declaration (`BACKPRESSURE`) is watched shard by shard.
            for (name, stream) in topology.open_streams(&js, stream_name).await? {
                watched.push(Watched {
                    stage,
                    work_queue: resolved.config.retention
                        == async_nats::jetstream::stream::RetentionPolicy::WorkQueue,
                    declared: topology
                        .consumers
                        .iter()
                        .filter(|c| c.stream == name)
                        .filter_map(|c| c.config.durable_name.clone())
                        .collect(),
                    name,
                    stream,
                });
            }
        }
        Ok(Self {
            quota: DlqQuota::start_declared(
                &js,
                &topology.namespace,
                topology.dlq_tenant_quota(),
                &CancellationToken::new(),
            ),
            js,
            ns: topology.namespace.clone(),
            watched,
            delay,
            metrics,
            dlq_metrics,
        })
    }

    /// The watched streams.
    pub fn watched(&self) -> &[Watched] {
        &self.watched
    }

    /// The service's own metrics.
    pub fn metrics(&self) -> &DlqMetrics {
        &self.dlq_metrics
    }

    /// The durable consumer on `ADVISORIES` the replicas share.
    pub async fn advisories(
        js: &jetstream::Context,
        topology: &ResolvedTopology,
    ) -> anyhow::Result<Consumer<pull::Config>> {
        Ok(topology
            .open_consumer(js, ConsumerName::DlqSafetyNet)
            .await?)
    }

    /// Handles advisories from `consumer` until `shutdown`; waits for the rescues under way.
    pub async fn run(
        self: Arc<Self>,
        consumer: Consumer<pull::Config>,
        shutdown: CancellationToken,
    ) {
        let slots = Arc::new(Semaphore::new(MAX_IN_FLIGHT));
        let mut tasks = JoinSet::new();
        let mut backoff = RetryPolicy::INFRASTRUCTURE.backoff();
        'consume: loop {
            let mut messages = tokio::select! {
                _ = shutdown.cancelled() => break,
                messages = consumer.messages() => match messages {
                    Ok(messages) => messages,
                    Err(error) => {
                        tracing::warn!(%error, "reading the advisories failed; retrying");
                        if !backoff.wait(&shutdown).await {
                            break;
                        }
                        continue;
                    }
                },
            };
            loop {
                let message = tokio::select! {
                    _ = shutdown.cancelled() => break 'consume,
                    message = messages.next() => match message {
                        Some(Ok(message)) => message,
                        Some(Err(error)) => {
                            tracing::warn!(%error, "reading the advisories failed; retrying");
                            break;
                        }
                        None => break,
                    },
                };
                backoff.reset();
                while tasks.try_join_next().is_some() {}
                let parsed = crate::advisory::parse(message.subject.as_str(), &message.payload);
                let advisory = match parsed {
                    Ok(advisory) => advisory,
                    Err(error) => {
                        tracing::warn!(%error, subject = %message.subject, "unreadable advisory dropped");
                        if let Err(error) = message.ack().await {
                            tracing::warn!(%error, "acking an unreadable advisory failed");
                        }
                        continue;
                    }
                };
                // Too young: give the stage time to write its own record first. The server
                // holds the advisory meanwhile (a nak with delay), not this instance.
                let age = message.info().map_or(Duration::MAX, |info| {
                    (OffsetDateTime::now_utc() - info.published)
                        .try_into()
                        .unwrap_or_default()
                });
                if let Some(wait) = self.delay.checked_sub(age).filter(|w| !w.is_zero()) {
                    if let Err(error) = message.ack_with(AckKind::Nak(Some(wait))).await {
                        tracing::warn!(%error, "deferring an advisory failed; it will be delivered again");
                    }
                    continue;
                }
                let Ok(permit) = slots.clone().acquire_owned().await else {
                    break 'consume;
                };
                let net = self.clone();
                tasks.spawn(async move {
                    let settled = match net.handle(advisory.into()).await {
                        Some(_) => message.ack().await,
                        None => message.ack_with(AckKind::Nak(Some(RETRY_AFTER))).await,
                    };
                    if let Err(error) = settled {
                        tracing::warn!(%error, "settling an advisory failed; it will be delivered again");
                    }
                    drop(permit);
                });
            }
            if !backoff.wait(&shutdown).await {
                break;
            }
        }
        while tasks.join_next().await.is_some() {}
    }

    /// Rescues, logging and counting the result.
    pub async fn handle(&self, rescue: Rescue) -> Option<Rescued> {
        self.metrics.in_flight.inc();
        let started = std::time::Instant::now();
        let result = self.rescue(&rescue).await;
        self.metrics.in_flight.dec();
        self.metrics
            .latency
            .observe(started.elapsed().as_secs_f64());
        match result {
            Ok(done) => {
                self.dlq_metrics.rescue(&rescue.stream, done.label());
                match &done {
                    Rescued::Written(dlq_seq) => tracing::warn!(
                        stream = %rescue.stream,
                        consumer = %rescue.consumer,
                        seq = rescue.seq,
                        deliveries = rescue.deliveries,
                        dlq_seq,
                        swept = rescue.swept,
                        "rescued a message its stage never dead-lettered"
                    ),
                    Rescued::Ignored(why) => {
                        tracing::debug!(stream = %rescue.stream, consumer = %rescue.consumer, seq = rescue.seq, why, "advisory ignored")
                    }
                    other => {
                        tracing::info!(stream = %rescue.stream, consumer = %rescue.consumer, seq = rescue.seq, result = other.label(), "nothing to rescue: acked or dead-lettered by its stage")
                    }
                }
                Some(done)
            }
            Err(error) => {
                self.dlq_metrics.rescue(&rescue.stream, "failed");
                tracing::error!(error = format!("{error:#}"), stream = %rescue.stream, seq = rescue.seq, "rescue failed; retried");
                None
            }
        }
    }

    /// Rescues one message (see the module docs).
    pub async fn rescue(&self, r: &Rescue) -> anyhow::Result<Rescued> {
        let Some(w) = self.watched.iter().find(|w| w.name == r.stream) else {
            return Ok(Rescued::Ignored("not a watched stream"));
        };
        if !w.work_queue && !w.declared.iter().any(|c| c == &r.consumer) {
            return Ok(Rescued::Ignored(
                "not a pipeline consumer on a limits stream",
            ));
        }
        let original = match w.stream.raw_message_builder().sequence(r.seq).send().await {
            Ok(message) => message,
            Err(err) if not_found(&err) => return Ok(Rescued::Gone),
            Err(err) => {
                return Err(err).with_context(|| format!("reading {} seq {}", w.name, r.seq));
            }
        };
        let record = self.record(r, w, &original);
        if let Some(quota) = &self.quota
            && let Err(held) = quota.reserve(record.tenant.as_ref())
        {
            anyhow::bail!(
                "tenant {} holds its share of the DLQ ({held} of {} entries); retried",
                record.tenant.as_ref().map_or("_", TenantId::as_str),
                quota.limit()
            );
        }
        let tenant = record
            .tenant
            .as_ref()
            .map_or("_", TenantId::as_str)
            .to_owned();
        self.metrics.count_received(&tenant);
        let ack = record
            .publish(
                &self.js,
                &self.ns,
                Some(&original.headers),
                original.payload.clone(),
            )
            .await
            .context("publishing the dlq record")?
            .await
            .context("waiting for the dlq record's ack")?;
        if w.work_queue {
            // Only once the record is stored: the original goes, or it would sit there forever.
            match w.stream.delete_message(r.seq).await {
                Ok(_) => {}
                Err(err) => {
                    tracing::warn!(error = %err, stream = %w.name, seq = r.seq, "dead-lettered but not deleted; the sweep retries");
                }
            }
        }
        if ack.duplicate {
            self.metrics.count_processed(&tenant, "duplicate");
            return Ok(Rescued::AlreadyDeadLettered);
        }
        self.metrics.count_processed(&tenant, "dead_lettered");
        self.metrics
            .count_dead_lettered(&tenant, record.code.as_str());
        Ok(Rescued::Written(ack.sequence))
    }

    /// The DLQ record for a rescued message.
    fn record(&self, r: &Rescue, w: &Watched, original: &StreamMessage) -> DeadLetter {
        let (tenant, platform) = address(&self.ns, original);
        let (code, reason) = match r.kind {
            AdvisoryKind::MaxDeliveries => (
                DlqCode::ExhaustedDeliveries,
                format!(
                    "consumer {} on {} gave up after {} deliveries without an ack (its stage crashed, hung or was killed each time){}",
                    r.consumer,
                    w.name,
                    r.deliveries,
                    if r.swept {
                        "; found stranded by the dlq sweep"
                    } else {
                        "; dead-lettered by the dlq safety net"
                    }
                ),
            ),
            AdvisoryKind::Terminated => (
                DlqCode::Terminated,
                format!(
                    "consumer {} on {} terminated the message after {} deliveries{} and no stage had dead-lettered it; dead-lettered by the dlq safety net",
                    r.consumer,
                    w.name,
                    r.deliveries,
                    r.term_reason
                        .as_deref()
                        .map(|why| format!(" ({why})"))
                        .unwrap_or_default()
                ),
            ),
        };
        let history = decode_history(
            original
                .headers
                .get(switchyard_envelope::headers::ATTEMPTS_LOG)
                .map(|v| v.as_str()),
        )
        .unwrap_or_default();
        DeadLetter {
            stage: w.stage,
            code,
            reason,
            tenant,
            platform,
            attempts: u32::try_from(r.deliveries).unwrap_or(u32::MAX),
            first_failure: original.time,
            last_failure: OffsetDateTime::now_utc(),
            source_stream: w.name.clone(),
            source_seq: r.seq,
            source_time: Some(original.time),
            source_subject: original.subject.to_string(),
            history,
        }
    }
}

/// Tenant and platform of a stored message: from its envelope when readable, else from its
/// subject (every pipeline subject carries them), else unknown.
fn address(ns: &Namespace, message: &StreamMessage) -> (Option<TenantId>, Option<PlatformId>) {
    if let Ok(envelope) = Envelope::from_headers(Some(&message.headers)) {
        return (
            Some(envelope.address.tenant),
            Some(envelope.address.platform),
        );
    }
    match StageSubject::parse(ns, message.subject.as_str()) {
        Ok(subject) => (Some(subject.address.tenant), Some(subject.address.platform)),
        Err(_) => (None, None),
    }
}
