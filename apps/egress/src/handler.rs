//! The egress decision for one message: route lookup, breaker, per-route slot, one delivery
//! attempt, then delivered / retry later / dead-letter.
//!
//! Waiting never holds an ack-pending slot: a retry, a message held back by an open breaker
//! and a message that found its route busy are all scheduled to re-enter egress later
//! ([`Handoff::schedule`]) and the current copy is acked. Only real attempts count against
//! `max_attempts`; their history travels in the `Switchyard-Attempts-Log` header.

use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream;
use async_nats::jetstream::ErrorCode;
use async_nats::jetstream::stream::{
    DeleteMessageError, DeleteMessageErrorKind, DirectGetErrorKind,
};
use switchyard_dlq::{DeadLetter, DlqCode};
use switchyard_envelope::attempt::{decode_history, encode_history};
use switchyard_envelope::headers::ATTEMPTS_LOG;
use switchyard_envelope::{AttemptRecord, Envelope};
use switchyard_keys::{PlatformId, RouteKey, Stage, TenantId};
use switchyard_registry::{KvCache, Route};
use switchyard_service::{Handled, Handler, Handoff, Outcome};
use switchyard_subjects::{DelaySubject, InputStage, Namespace, SubjectKind};
use time::OffsetDateTime;
use tokio::time::Instant;
use tracing::Instrument;

use crate::backoff::{Backoff, jitter, random_unit};
use crate::breaker::{Admission, Breakers, Change};
use crate::classify::{Classified, Verdict, classify};
use crate::config::EgressSettings;
use crate::limiter::Limiter;
use crate::metrics::EgressMetrics;
use crate::receipt::Receipt;
use crate::routing::{Lookup, Resolved, lookup};
use crate::sink::{Sinks, with_progress};

/// How long a message that found its route busy waits before re-entering (jittered within
/// `[d/2, d]`).
pub const BUSY_DELAY: Duration = Duration::from_secs(1);

/// Messages held back by an open breaker come back spread over this much time after it
/// half-opens, not all at once.
pub const HALF_OPEN_SPREAD: Duration = Duration::from_millis(500);

/// The longest nak delay when a schedule cannot be stored (a NATS problem of our own).
const MAX_NAK_DELAY: Duration = Duration::from_secs(30);

/// What egress needs to handle messages.
pub struct EgressHandler {
    /// The deployment namespace.
    pub ns: Namespace,
    /// The egress stream (holds the scheduled re-entries; names the DLQ source when a message
    /// has no JetStream metadata).
    pub stream: jetstream::stream::Stream,
    /// The consumer's ack wait: long attempts send progress acks well within it.
    pub ack_wait: Duration,
    /// Routes, kept fresh by a KV watch.
    pub routes: Arc<KvCache<RouteKey, Route>>,
    /// Schedules re-entries.
    pub handoff: Handoff,
    /// Publishes receipts.
    pub client: async_nats::Client,
    /// Delivers to webhooks and NATS subjects.
    pub sinks: Sinks,
    /// Per-route circuit breakers.
    pub breakers: Breakers,
    /// Per-route in-flight limits.
    pub limiter: Limiter,
    /// Per-tenant in-flight limits (`tenant_max_in_flight`), across a tenant's routes.
    pub tenant_limiter: Limiter,
    /// The retry schedule.
    pub backoff: Backoff,
    /// The `[egress]` settings.
    pub settings: EgressSettings,
    /// Egress's own metrics.
    pub metrics: EgressMetrics,
}

impl Handler for EgressHandler {
    async fn handle(&self, msg: &jetstream::Message) -> Handled {
        let envelope = match Envelope::from_headers(msg.headers.as_ref()) {
            Ok(envelope) => envelope,
            Err(error) => {
                return Handled::invalid_envelope(msg, &self.ns, Stage::Egress, error.to_string());
            }
        };
        let tenant = Some(envelope.address.tenant.clone());
        let span = tracing::info_span!(
            "deliver",
            envelope_id = %envelope.id,
            tenant = %envelope.address.tenant,
            team = %envelope.address.team,
            platform = %envelope.address.platform,
            attempt = envelope.attempt.delivery + 1,
        );
        let outcome = self.deliver(msg, envelope).instrument(span).await;
        Handled { tenant, outcome }
    }
}

impl EgressHandler {
    async fn deliver(&self, msg: &jetstream::Message, mut envelope: Envelope) -> Outcome {
        let parties = (
            Some(envelope.address.tenant.clone()),
            Some(envelope.address.platform.clone()),
        );
        let tenant = envelope.address.tenant.as_str().to_owned();
        let resolved = match lookup(&self.routes, &self.ns, &envelope.address) {
            Lookup::Found(resolved) => resolved,
            Lookup::Missing(reason) => {
                return self.dead_letter(msg, DlqCode::NoRoute, reason, parties, 0, Vec::new());
            }
            Lookup::Invalid(reason) => {
                return self.dead_letter(
                    msg,
                    DlqCode::InvalidRoute,
                    reason,
                    parties,
                    0,
                    Vec::new(),
                );
            }
        };
        // An open breaker holds the message back without waiting for a slot ...
        if let Some(until) = self.breakers.peek(&resolved.id, Instant::now()) {
            return self.hold(msg, &envelope, until).await;
        }
        let wait = self.settings.route_wait();
        // A tenant's share of the slots first: a tenant with slow sinks waits for its own
        // slots, never for the others'.
        let Some(tenant_slot) = self
            .tenant_limiter
            .acquire(
                envelope.address.tenant.as_str(),
                self.settings.tenant_max_in_flight,
                wait,
            )
            .await
        else {
            let wait = jitter(BUSY_DELAY, random_unit());
            return self.defer(msg, &envelope, wait, "tenant_busy").await;
        };
        let Some(slot) = self
            .limiter
            .acquire(&resolved.id, resolved.route.max_in_flight(), wait)
            .await
        else {
            let wait = jitter(BUSY_DELAY, random_unit());
            return self.defer(msg, &envelope, wait, "route_busy").await;
        };
        // ... and the decision that counts is taken holding the slot, so a breaker that
        // opened while this message waited is respected.
        if let Admission::Wait { until } = self.breakers.admit(&resolved.id, Instant::now()) {
            drop(slot);
            drop(tenant_slot);
            return self.hold(msg, &envelope, until).await;
        }

        let started_at = OffsetDateTime::now_utc();
        let clock = Instant::now();
        let attempted = with_progress(
            msg,
            self.ack_wait,
            self.sinks.attempt(msg, &envelope, &resolved),
        )
        .await;
        let elapsed = clock.elapsed();
        let classified = classify(&attempted, OffsetDateTime::now_utc());
        let kind = resolved.kind();
        let result = match classified.verdict {
            Verdict::Delivered => "delivered",
            Verdict::Retryable { .. } => "retryable",
            Verdict::Permanent => "permanent",
        };
        self.metrics
            .count_attempt(&tenant, kind, result, elapsed.as_secs_f64());
        let change = match classified.verdict {
            Verdict::Retryable { .. } => self.breakers.failed(&resolved.id, Instant::now()),
            Verdict::Delivered | Verdict::Permanent => self.breakers.succeeded(&resolved.id),
        };
        self.breaker_changed(change, &tenant, &resolved.id);
        // Released only now: the next message on this route sees the breaker's new state.
        drop(slot);
        drop(tenant_slot);

        let attempt = envelope.attempt.delivery.saturating_add(1);
        if classified.is_delivered() {
            tracing::debug!(route = %resolved.id, attempt, status = ?classified.status, "delivered");
            self.receipt(&envelope, &resolved, attempt, classified.status)
                .await;
            self.cancel_orphan_schedule(msg, &envelope).await;
            return Outcome::Delivered;
        }
        let mut history = match decode_history(
            msg.headers
                .as_ref()
                .and_then(|h| h.get(ATTEMPTS_LOG))
                .map(|v| v.as_str()),
        ) {
            Ok(history) => history,
            Err(error) => {
                tracing::warn!(%error, "unreadable attempt history; starting a new one");
                Vec::new()
            }
        };
        let duration_ms = u64::try_from(elapsed.as_millis()).unwrap_or(u64::MAX);
        history.push(record(started_at, &classified, duration_ms));
        let reason = classified.error.clone().unwrap_or_default();
        match classified.verdict {
            Verdict::Retryable { retry_after } if attempt < self.settings.max_attempts => {
                let delay = self.backoff.delay(attempt, retry_after);
                envelope.attempt.delivery = attempt;
                let mut h = Handoff::headers(&envelope, msg.headers.as_ref());
                h.insert(ATTEMPTS_LOG, encode_history(&history));
                let at = OffsetDateTime::now_utc() + delay;
                let tag = attempt.to_string();
                let scheduled = self
                    .handoff
                    .schedule(
                        InputStage::Egress,
                        &envelope,
                        h,
                        msg.payload.clone(),
                        at,
                        &tag,
                    )
                    .await;
                match scheduled {
                    Ok(()) => {
                        tracing::info!(route = %resolved.id, attempt, ?delay, %reason, "attempt failed; retry scheduled");
                        Outcome::Delayed
                    }
                    Err(error) => Outcome::Retry {
                        after: delay.min(MAX_NAK_DELAY),
                        reason: format!("scheduling retry {attempt} failed: {error}"),
                    },
                }
            }
            Verdict::Retryable { .. } => {
                self.cancel_orphan_schedule(msg, &envelope).await;
                let reason = format!(
                    "{attempt} of {} attempts failed; last: {reason}",
                    self.settings.max_attempts
                );
                self.dead_letter(
                    msg,
                    DlqCode::RetriesExhausted,
                    reason,
                    parties,
                    attempt,
                    history,
                )
            }
            Verdict::Permanent | Verdict::Delivered => {
                self.cancel_orphan_schedule(msg, &envelope).await;
                let reason = format!("{} refused the message: {reason}", resolved.id);
                self.dead_letter(
                    msg,
                    DlqCode::PermanentFailure,
                    reason,
                    parties,
                    attempt,
                    history,
                )
            }
        }
    }

    /// A copy JetStream delivered more than once may have left a schedule behind: the earlier
    /// copy scheduled a retry or a hold, then crashed before its ack. Once this copy is settled
    /// for good, such a schedule would deliver the message again; cancel it.
    ///
    /// An envelope has at most one pending schedule (a new one replaces the last), so the
    /// schedule is found by a direct get of the last message on its delay subject and deleted
    /// by that sequence: egress may read only the last message of a delay subject and delete
    /// single messages, never purge EGRESS.
    async fn cancel_orphan_schedule(&self, msg: &jetstream::Message, envelope: &Envelope) {
        if !msg.info().is_ok_and(|info| info.delivered > 1) {
            return;
        }
        let subject = DelaySubject {
            stage: InputStage::Egress,
            address: envelope.address.clone(),
            key: envelope.id.to_string(),
        }
        .format(&self.ns);
        let schedule = match self.stream.direct_get_last_for_subject(subject).await {
            Ok(schedule) => schedule,
            Err(error) if error.kind() == DirectGetErrorKind::NotFound => return,
            Err(error) => {
                tracing::warn!(%error, "looking up a leftover schedule failed");
                return;
            }
        };
        match self.stream.delete_message(schedule.sequence).await {
            Ok(_) => tracing::info!(
                sequence = schedule.sequence,
                "cancelled a schedule left by an earlier delivery"
            ),
            // Fired (or cancelled by another copy) since it was looked up: nothing left to do.
            Err(error) if already_gone(&error) => {
                tracing::debug!(
                    sequence = schedule.sequence,
                    "leftover schedule already gone"
                );
            }
            Err(error) => tracing::warn!(
                %error,
                sequence = schedule.sequence,
                "cancelling a leftover schedule failed"
            ),
        }
    }

    /// Holds the message back until the route's breaker half-opens (spread a little so the
    /// held messages do not all come back at once), without counting an attempt.
    async fn hold(&self, msg: &jetstream::Message, envelope: &Envelope, until: Instant) -> Outcome {
        let wait = until.saturating_duration_since(Instant::now())
            + HALF_OPEN_SPREAD.mul_f64(random_unit());
        self.defer(msg, envelope, wait, "breaker_open").await
    }

    /// Schedules the message to come back after `wait` without counting an attempt.
    async fn defer(
        &self,
        msg: &jetstream::Message,
        envelope: &Envelope,
        wait: Duration,
        reason: &'static str,
    ) -> Outcome {
        let h = Handoff::headers(envelope, msg.headers.as_ref());
        let at = OffsetDateTime::now_utc() + wait;
        // Unique per deferral: the hand-off id is de-duplicated by the stream.
        let tag = format!(
            "{reason}-{}-{}",
            envelope.attempt.delivery,
            at.unix_timestamp_nanos() / 1_000_000
        );
        let scheduled = self
            .handoff
            .schedule(
                InputStage::Egress,
                envelope,
                h,
                msg.payload.clone(),
                at,
                &tag,
            )
            .await;
        match scheduled {
            Ok(()) => {
                tracing::debug!(reason, ?wait, "deferred");
                self.metrics
                    .count_deferred(envelope.address.tenant.as_str(), reason);
                Outcome::Delayed
            }
            Err(error) => Outcome::Retry {
                after: wait.min(MAX_NAK_DELAY),
                reason: format!("deferring ({reason}) failed: {error}"),
            },
        }
    }

    fn breaker_changed(&self, change: Change, tenant: &str, route: &str) {
        match change {
            Change::None => {}
            Change::Opened { period } => {
                tracing::warn!(route, ?period, "circuit breaker opened");
                self.metrics.breaker_opened(tenant, true);
            }
            Change::Reopened { period } => {
                tracing::warn!(route, ?period, "probe failed; circuit breaker open again");
                self.metrics.breaker_opened(tenant, false);
            }
            Change::Closed => {
                tracing::info!(route, "route recovered; circuit breaker closed");
                self.metrics.breaker_closed(tenant);
            }
        }
    }

    async fn receipt(
        &self,
        envelope: &Envelope,
        resolved: &Resolved,
        attempts: u32,
        status: Option<u16>,
    ) {
        if !self.settings.receipts {
            return;
        }
        let receipt = Receipt::new(envelope, resolved, attempts, status);
        let (subject, h, payload) = receipt.message(&self.ns, envelope);
        if let Err(error) = self
            .client
            .publish_with_headers(subject, h, payload.into())
            .await
        {
            tracing::warn!(%error, "publishing the delivery receipt failed");
            self.metrics.receipts_failed.inc();
        }
    }

    fn dead_letter(
        &self,
        msg: &jetstream::Message,
        code: DlqCode,
        reason: String,
        (tenant, platform): (Option<TenantId>, Option<PlatformId>),
        attempts: u32,
        history: Vec<AttemptRecord>,
    ) -> Outcome {
        let mut record =
            DeadLetter::for_message(msg, Stage::Egress, code, reason, tenant, platform);
        if record.source_stream.is_empty() {
            record.source_stream = self.stream.cached_info().config.name.clone();
        }
        if let (Some(first), Some(last)) = (history.first(), history.last()) {
            record.first_failure = first.at;
            record.last_failure = last.at;
        }
        record.attempts = attempts;
        record.history = history;
        Outcome::DeadLetter(Box::new(record))
    }
}

fn record(at: OffsetDateTime, classified: &Classified, duration_ms: u64) -> AttemptRecord {
    AttemptRecord::new(
        at,
        classified.outcome,
        classified.status,
        duration_ms,
        classified.error.clone(),
    )
}

/// Whether deleting a message failed only because it is no longer in the stream (the server
/// answers `no message found`, error code 10057, or 10043 for a sequence it never had).
fn already_gone(error: &DeleteMessageError) -> bool {
    match error.kind() {
        DeleteMessageErrorKind::JetStream(error) => {
            error.error_code() == ErrorCode::SEQUENCE_NOT_FOUND
                || (error.error_code() == ErrorCode::STREAM_MESSAGE_DELETE_FAILED
                    && error.to_string().contains("no message found"))
        }
        _ => false,
    }
}
