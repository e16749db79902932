//! Settling a message: the one place where a stage's decision ([`Outcome`]) becomes an
//! acknowledgement. Every consume loop — the shared [`Worker`](crate::Worker) and the
//! backpressure service's per-tenant loops — hands each message to [`Settler::process`], which
//! opens the message's tracing span (parented on its `traceparent`), runs the stage's decision,
//! retries transient failures in place, and then acks, naks or dead-letters it.
//!
//! | outcome | settlement |
//! |---|---|
//! | `Forwarded`, `Duplicate` | ack (plain) |
//! | `Delivered`, `Delayed`, `Dropped` | confirmed ack (see below) |
//! | `Retry` | decided again in place (progress acks keep the message; delays from [`SettleSettings::hold`]) until the hold's deadline, then nak after `after` |
//! | `Wait` | nak after `after` at once (no hold: the slot is freed for other tenants' messages) |
//! | `DeadLetter(record)` | publish the record, await the DLQ's ack, then confirmed ack; if it cannot be stored, nak after [`SettleSettings::dlq_retry_after`] |
//!
//! **Which acks are confirmed** ([`Outcome::ack_mode`], the one place this is chosen). A plain
//! ack is fire-and-forget: if it is lost (a connection cut, a consumer leader change), JetStream
//! redelivers the message after the consumer's ack wait and the stage handles it again. Where
//! that second handling is absorbed, plain acks stay (one publish, no round trip); where it
//! would reach the outside world twice, the ack is confirmed — sent with a reply subject
//! (`AckKind::Ack`, async-nats `double_ack`) and awaited, retried within
//! [`SettleSettings::confirm_ack`]:
//!
//! - `Forwarded`: plain. The redelivered copy is handed on again under the same deterministic
//!   hop `Nats-Msg-Id`, which the next stream's duplicate window drops.
//! - `Duplicate`: plain. The copy is decided a duplicate again.
//! - `Delayed` (egress: a retry, a deferral — busy, rate-limited, breaker open, destination
//!   disabled — or a parked dead letter scheduled): confirmed. The schedule is published under
//!   a deterministic id, so a redelivered copy stores it once, and egress cancels a schedule
//!   left behind once a redelivered copy settles for good; but a schedule due before the ack
//!   wait has fired by then, and its copy is a stream message of its own, which nothing
//!   cancels: the redelivered copy would be attempted beside it, and the sink called twice. The
//!   round trip is paid on those paths, never by a first delivery: a deferral (a rate-limited
//!   destination's burst, say) now costs two round trips, the schedule's and the ack's.
//! - `Retry` (nak): plain. A lost nak means redelivery after the ack wait instead of `after`.
//! - `Delivered`: confirmed. A redelivered copy would be delivered to the sink again.
//! - `Dropped`: confirmed. A redelivered copy would be counted and receipted again.
//! - `DeadLetter`: confirmed. The DLQ record itself is de-duplicated (`dlq:<stream>:<seq>`),
//!   but a redelivered copy at egress would be attempted at the sink again.
//!
//! A confirmation that does not come is logged and counted (`switchyard_acks_unconfirmed_total`);
//! the message may then be redelivered and is handled again under the same ids (a webhook gets
//! the same `webhook-id`, a NATS route the same `Nats-Msg-Id`), so the receiver can drop it.

use std::sync::Arc;
use std::time::{Duration, Instant};

use async_nats::jetstream::{self, AckKind};
use switchyard_dlq::{DeadLetter, DlqCode};
use switchyard_envelope::EnvelopeError;
use switchyard_keys::{Stage, TenantId};
use switchyard_runtime::RetryPolicy;
use switchyard_runtime::telemetry::message_span;
use switchyard_subjects::{Namespace, StageSubject, SubjectKind};
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::dlq_quota::DlqQuota;
use crate::{Handler, Metrics};

/// How an outcome's acknowledgement is sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AckMode {
    /// Fire-and-forget: a lost ack is absorbed (the copy JetStream redelivers is dropped or
    /// decided the same way without reaching the outside world again).
    Plain,
    /// Sent with a reply subject and awaited (`AckKind::Ack` via `double_ack`): a lost ack
    /// would deliver (or attempt) the message again.
    Confirmed,
}

/// What a stage decided for one message.
#[derive(Debug)]
pub enum Outcome {
    /// Handed on to the next stage (ack).
    Forwarded,
    /// Delivered to its sink (ack).
    Delivered,
    /// A duplicate, dropped on purpose (ack; counted).
    Duplicate,
    /// Scheduled to re-enter the stage later; the schedule is stored (ack).
    Delayed,
    /// Dropped on purpose because the tenant asked for it (egress: a message none of its
    /// destinations takes, under `unmatched = "drop"`); counted and receipted by the stage
    /// (ack).
    Dropped,
    /// A transient failure of our own infrastructure (NATS, KV): decided again in place until
    /// the stage's hold runs out, then nak with this delay. Only for outages, never for input.
    Retry {
        /// How long JetStream should wait before redelivering, once the hold is over.
        after: Duration,
        /// Why, for the log.
        reason: String,
    },
    /// Not now, for a reason no hold in place would outlast (a key-encryption key this
    /// service lacks): nak at once with this delay, freeing the message's slot. Counts towards
    /// the consumer's `max_deliver` like every delivery.
    Wait {
        /// How long JetStream should wait before redelivering.
        after: Duration,
        /// Why, for the log.
        reason: String,
    },
    /// Give up: write this DLQ record, then ack.
    DeadLetter(Box<DeadLetter>),
}

impl Outcome {
    /// The metric label of the outcome (`forwarded`, `retry`, `dead_lettered`, …).
    pub fn label(&self) -> &'static str {
        match self {
            Outcome::Forwarded => "forwarded",
            Outcome::Delivered => "delivered",
            Outcome::Duplicate => "duplicate",
            Outcome::Delayed => "delayed",
            Outcome::Dropped => "dropped",
            Outcome::Retry { .. } => "retry",
            Outcome::Wait { .. } => "wait",
            Outcome::DeadLetter(_) => "dead_lettered",
        }
    }

    /// How this outcome is acknowledged: the one place the choice is made (see the module
    /// documentation for why each outcome gets its mode).
    pub fn ack_mode(&self) -> AckMode {
        match self {
            Outcome::Delivered | Outcome::DeadLetter(_) | Outcome::Dropped | Outcome::Delayed => {
                AckMode::Confirmed
            }
            Outcome::Forwarded
            | Outcome::Duplicate
            | Outcome::Retry { .. }
            | Outcome::Wait { .. } => AckMode::Plain,
        }
    }
}

/// An outcome and the tenant it concerns (for metrics).
#[derive(Debug)]
pub struct Handled {
    /// The message's tenant, when it has a valid one.
    pub tenant: Option<TenantId>,
    /// The decision.
    pub outcome: Outcome,
}

impl Handled {
    /// The decision for a message whose envelope headers cannot be read
    /// ([`Envelope::from_headers`](switchyard_envelope::Envelope::from_headers) refused them):
    /// dead-letter it `unsupported_schema` when its `Switchyard-Schema` is a version this build
    /// does not read, else `invalid_envelope`; the reason is `error`, the tenant and platform
    /// are taken from its subject (which the ingress stage validated; headers that fail to
    /// parse are not trusted for anything).
    pub fn unreadable_envelope(
        msg: &jetstream::Message,
        ns: &Namespace,
        stage: Stage,
        error: &EnvelopeError,
    ) -> Self {
        let code = match error {
            EnvelopeError::UnsupportedSchema(_) => DlqCode::UnsupportedSchema,
            EnvelopeError::MissingHeader(_) | EnvelopeError::InvalidHeader { .. } => {
                DlqCode::InvalidEnvelope
            }
        };
        Self::dead_letter_by_subject(msg, ns, stage, code, error.to_string(), 0)
    }

    /// Dead-letter `msg` with `code` after `attempts` attempts, its tenant and platform read
    /// from its subject (never from its headers, which may be what is wrong with it).
    fn dead_letter_by_subject(
        msg: &jetstream::Message,
        ns: &Namespace,
        stage: Stage,
        code: DlqCode,
        reason: impl Into<String>,
        attempts: u32,
    ) -> Self {
        let address = StageSubject::parse(ns, &msg.subject)
            .ok()
            .map(|s| s.address);
        let tenant = address.as_ref().map(|a| a.tenant.clone());
        let platform = address.map(|a| a.platform);
        let mut record =
            DeadLetter::for_message(msg, stage, code, reason, tenant.clone(), platform);
        record.attempts = attempts;
        Self {
            tenant,
            outcome: Outcome::DeadLetter(Box::new(record)),
        }
    }
}

/// How [`Settler`] settles.
#[derive(Debug, Clone)]
pub struct SettleSettings {
    /// Delay before redelivery when writing a DLQ record fails.
    pub dlq_retry_after: Duration,
    /// How a transient failure (`Outcome::Retry`) is held in place — the message kept with
    /// progress acks, the decision made again after each delay — before it is handed back to
    /// JetStream. A NATS leader election or a short outage then costs no delivery attempt, so
    /// it cannot exhaust the consumer's `max_deliver`. Its deadline is the whole hold.
    pub hold: RetryPolicy,
    /// How a confirmed ack ([`AckMode::Confirmed`]) is retried when its confirmation does not
    /// come; its deadline bounds the whole wait. Acking twice is harmless: the server confirms
    /// an ack for a message it no longer holds as pending.
    pub confirm_ack: RetryPolicy,
    /// How long one try of a confirmed ack waits for the server's confirmation.
    pub confirm_ack_try: Duration,
    /// Each tenant's share of the DLQ ([`crate::dlq_quota`]); `None`: unbounded.
    pub dlq_quota: Option<Arc<DlqQuota>>,
}

impl Default for SettleSettings {
    fn default() -> Self {
        Self {
            dlq_retry_after: Duration::from_secs(5),
            hold: RetryPolicy::new(Duration::from_millis(250), Duration::from_secs(5))
                .within(Duration::from_secs(60)),
            confirm_ack: RetryPolicy::new(Duration::from_millis(100), Duration::from_secs(1))
                .within(Duration::from_secs(10)),
            confirm_ack_try: Duration::from_secs(2),
            dlq_quota: None,
        }
    }
}

/// Settles messages for one stage: writes DLQ records with `js` in `ns`, counts in `metrics`.
#[derive(Clone)]
pub struct Settler {
    js: jetstream::Context,
    ns: Namespace,
    metrics: Arc<Metrics>,
    settings: SettleSettings,
}

impl Settler {
    /// A settler for the stage `metrics` belongs to.
    pub fn new(
        js: jetstream::Context,
        ns: Namespace,
        metrics: Arc<Metrics>,
        settings: SettleSettings,
    ) -> Self {
        Self {
            js,
            ns,
            metrics,
            settings,
        }
    }

    /// The stage's namespace.
    pub fn namespace(&self) -> &Namespace {
        &self.ns
    }

    /// The stage.
    pub fn stage(&self) -> Stage {
        self.metrics.stage()
    }

    /// Decides `msg` with `handler` inside the message's span (parented on its `traceparent`,
    /// else on [`Handler::trace_fallback`]), holds transient failures in place, and settles the
    /// final outcome. `shutdown` cuts a hold short (the message is then nakked and redelivered
    /// to whichever replica is still running).
    ///
    /// `max_deliver` is the consumer's (`-1`: unlimited). The stage counts deliveries itself:
    /// the last delivery JetStream will make (`max_deliver`, when it is 2 or more) is not
    /// decided again but dead-lettered `exhausted_deliveries` at once, so a message that
    /// crashed or hung its stage on every earlier delivery still reaches the DLQ from its own
    /// stage, with no advisory needed.
    pub async fn process<H: Handler>(
        &self,
        msg: jetstream::Message,
        shutdown: &CancellationToken,
        handler: &H,
        max_deliver: i64,
    ) {
        let started = Instant::now();
        let span = message_span(
            self.stage().as_str(),
            &msg.subject,
            msg.headers.as_ref(),
            handler.trace_fallback(&msg).as_deref(),
        );
        async {
            self.metrics.in_flight.inc();
            let delivered = msg.info().map(|i| i.delivered).unwrap_or(1);
            let mut handled = if max_deliver >= 2 && delivered >= max_deliver {
                self.exhausted(&msg, delivered)
            } else {
                handler.handle(&msg).await
            };
            let mut hold = self.settings.hold.backoff();
            while let Outcome::Retry { reason, .. } = &handled.outcome {
                tracing::warn!(%reason, subject = %msg.subject, "transient failure; holding the message and retrying in place");
                if let Err(error) = msg.ack_with(AckKind::Progress).await {
                    tracing::debug!(%error, "progress ack failed");
                }
                if !hold.wait(shutdown).await {
                    break;
                }
                handled = handler.handle(&msg).await;
            }
            let tenant = handled
                .tenant
                .as_ref()
                .map_or("_", TenantId::as_str)
                .to_owned();
            self.metrics.count_received(&tenant);
            self.settle(&msg, &tenant, handled.outcome, shutdown).await;
            self.metrics.in_flight.dec();
            self.metrics
                .latency
                .observe(started.elapsed().as_secs_f64());
        }
        .instrument(span)
        .await
    }

    /// The decision for a message on its consumer's last delivery: every earlier one ended
    /// without a settlement (the stage crashed, hung or lost its connection).
    fn exhausted(&self, msg: &jetstream::Message, delivered: i64) -> Handled {
        tracing::error!(subject = %msg.subject, delivered, "dead-lettering a message on its last delivery");
        Handled::dead_letter_by_subject(
            msg,
            &self.ns,
            self.stage(),
            DlqCode::ExhaustedDeliveries,
            format!(
                "{} gave up after {delivered} deliveries: none of the earlier ones was settled (the stage crashed, hung or was cut off while handling it)",
                self.stage()
            ),
            u32::try_from(delivered).unwrap_or(u32::MAX),
        )
    }

    /// The one place outcomes become acknowledgements.
    async fn settle(
        &self,
        msg: &jetstream::Message,
        tenant: &str,
        outcome: Outcome,
        shutdown: &CancellationToken,
    ) {
        let label = outcome.label();
        let mode = outcome.ack_mode();
        let result = match outcome {
            Outcome::Forwarded
            | Outcome::Delivered
            | Outcome::Duplicate
            | Outcome::Delayed
            | Outcome::Dropped => self.ack(msg, tenant, mode, shutdown).await,
            Outcome::Retry { after, reason } => {
                tracing::warn!(%reason, ?after, subject = %msg.subject, "transient failure outlasted the hold; redelivery requested");
                msg.ack_with(AckKind::Nak(Some(after))).await
            }
            Outcome::Wait { after, reason } => {
                tracing::warn!(%reason, ?after, subject = %msg.subject, "not handled now; redelivery requested");
                msg.ack_with(AckKind::Nak(Some(after))).await
            }
            Outcome::DeadLetter(record) => {
                if let Some(quota) = &self.settings.dlq_quota
                    && let Err(held) = quota.reserve(record.tenant.as_ref())
                {
                    tracing::warn!(
                        held,
                        limit = quota.limit(),
                        code = %record.code,
                        "the tenant holds its share of the DLQ; the message is kept and retried"
                    );
                    self.metrics.count_processed(tenant, "dlq_quota");
                    if let Err(error) = msg
                        .ack_with(AckKind::Nak(Some(self.settings.dlq_retry_after)))
                        .await
                    {
                        tracing::warn!(%error, "nak failed; the message is redelivered after its ack wait");
                    }
                    return;
                }
                let written = match record
                    .publish(
                        &self.js,
                        &self.ns,
                        msg.headers.as_ref(),
                        msg.payload.clone(),
                    )
                    .await
                {
                    Ok(ack) => ack.await.map_err(|e| e.to_string()),
                    Err(e) => Err(e.to_string()),
                };
                match written {
                    Ok(_) => {
                        tracing::info!(
                            code = %record.code,
                            reason = %record.reason,
                            source_seq = record.source_seq,
                            "dead-lettered"
                        );
                        self.metrics
                            .count_dead_lettered(tenant, record.code.as_str());
                        self.ack(msg, tenant, mode, shutdown).await
                    }
                    Err(error) => {
                        tracing::error!(%error, code = %record.code, "writing the dlq record failed; the message will be redelivered");
                        self.metrics.count_processed(tenant, "retry");
                        if let Err(error) = msg
                            .ack_with(AckKind::Nak(Some(self.settings.dlq_retry_after)))
                            .await
                        {
                            tracing::warn!(%error, "nak failed; the message is redelivered after its ack wait");
                        }
                        return;
                    }
                }
            }
        };
        self.metrics.count_processed(tenant, label);
        if let Err(error) = result {
            tracing::warn!(%error, outcome = label, "acknowledgement failed; the message may be redelivered");
        }
    }

    /// Acks `msg` in `mode`. A confirmed ack is tried again within
    /// [`SettleSettings::confirm_ack`], each try waiting [`SettleSettings::confirm_ack_try`];
    /// one never confirmed is counted and returned as an error.
    async fn ack(
        &self,
        msg: &jetstream::Message,
        tenant: &str,
        mode: AckMode,
        shutdown: &CancellationToken,
    ) -> Result<(), async_nats::Error> {
        match mode {
            AckMode::Plain => msg.ack().await,
            AckMode::Confirmed => {
                let per_try = self.settings.confirm_ack_try;
                let confirmed = self
                    .settings
                    .confirm_ack
                    .run(
                        shutdown,
                        || async move {
                            match tokio::time::timeout(per_try, msg.double_ack()).await {
                                Ok(result) => result,
                                Err(_) => Err(format!(
                                    "no confirmation within {} ms",
                                    per_try.as_millis()
                                )
                                .into()),
                            }
                        },
                        |_| true,
                        |error, delay| {
                            tracing::debug!(%error, ?delay, "ack not confirmed; acking again");
                        },
                    )
                    .await;
                if let Err(error) = &confirmed {
                    self.metrics.count_ack_unconfirmed(tenant);
                    tracing::warn!(%error, subject = %msg.subject, "the server did not confirm the ack; the message may be redelivered and handled again under the same ids");
                }
                confirmed
            }
        }
    }
}
