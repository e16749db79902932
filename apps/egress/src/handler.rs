//! The egress decision for one message: fan-out to the tenant's destinations
//! ([`crate::fanout`]), or route / destination lookup, breaker, per-route slot, one delivery
//! attempt, then delivered / retry later / dead-letter.
//!
//! Waiting never holds an ack-pending slot: a retry, a message held back by an open breaker
//! and a message that found its route busy are all scheduled to re-enter egress later
//! ([`Handoff::schedule`]) and the current copy is acked. Only real attempts count against
//! `max_attempts`; their history travels in the `Switchyard-Attempts-Log` header. Held
//! messages come back one by one from a per-route queue ([`Breakers::release_at`]), never
//! all at once. Whatever holds a message, its delivery [`Deadline`] bounds the wait: past it
//! the message is dead-lettered `deadline_exceeded` with its history, and no wait is
//! scheduled beyond it.

use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream;
use async_nats::jetstream::AckKind;
use async_nats::jetstream::stream::{
    DeleteMessageError, DeleteMessageErrorKind, DirectGetErrorKind,
};
use switchyard_crypt::Opened;
use switchyard_dlq::{DeadLetter, DlqCode};
use switchyard_envelope::attempt::{decode_history, encode_history};
use switchyard_envelope::headers::{
    ATTEMPTS_LOG, DESTINATION, PARKED_ATTEMPTS, PARKED_CODE, PARKED_REASON,
};
use switchyard_envelope::{AttemptRecord, Destination as Target, Envelope};
use switchyard_keys::{
    DestinationId, DestinationKey, PlatformId, RouteKey, Stage, TenantId, TenantKey,
};
use switchyard_registry::{
    Destination, Disabled, DisabledBy, KvCache, RateLimit, Route, Store, TenantRecord, Unmatched,
    Written,
};
use switchyard_runtime::retry::RetryPolicy;
use switchyard_service::events::EventLog;
use switchyard_service::{DlqQuota, Handled, Handler, Handoff, Outcome};
use switchyard_subjects::{DelaySubject, EventKind, InputStage, Namespace, SubjectKind};
use time::OffsetDateTime;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::attempt_log::AttemptLog;
use crate::backoff::{Backoff, DEADLINE_FROM, Deadline, jitter, random_unit};
use crate::breaker::{Admission, BUSY_MAX_SPREAD, Breakers, Change, Spread};
use crate::classify::{Classified, Verdict, classify};
use crate::config::EgressSettings;
use crate::fanout::{self, Plan};
use crate::limiter::Limiter;
use crate::metrics::EgressMetrics;
use crate::nats_sink::OwnSubjects;
use crate::rate::{self, DestinationRates};
use crate::receipt::Receipt;
use crate::routing::{Lookup, Resolved, lookup, lookup_destination};
use crate::shared_breaker::SharedBreakers;
use crate::sink::{Sinks, Unopened, with_progress};

/// How long a message that found its route busy waits before re-entering (jittered within
/// `[d/2, d]`).
pub const BUSY_DELAY: Duration = Duration::from_secs(1);

/// The longest nak delay when a schedule cannot be stored, even after trying again in place
/// (a NATS problem of our own).
const MAX_NAK_DELAY: Duration = Duration::from_secs(30);

/// What egress needs to handle messages.
pub struct EgressHandler {
    /// The deployment namespace.
    pub ns: Namespace,
    /// The namespace's own subjects, which NATS routes may not publish into.
    pub own_subjects: OwnSubjects,
    /// The egress stream (holds the scheduled re-entries; names the DLQ source when a message
    /// has no JetStream metadata).
    pub stream: jetstream::stream::Stream,
    /// The consumer's ack wait: long attempts send progress acks well within it.
    pub ack_wait: Duration,
    /// Routes, kept fresh by a KV watch.
    pub routes: Arc<KvCache<RouteKey, Route>>,
    /// Destinations, kept fresh by a KV watch.
    pub destinations: Arc<KvCache<DestinationKey, Destination>>,
    /// The destinations bucket, for disabling a destination that stayed down.
    pub destination_store: Store<DestinationKey, Destination>,
    /// Per-destination rate limits, leased from the `rate-limits` bucket.
    pub rates: DestinationRates,
    /// Tenant records (their `unmatched` policy), kept fresh by a KV watch.
    pub tenants: Arc<KvCache<TenantKey, TenantRecord>>,
    /// Schedules re-entries.
    pub handoff: Handoff,
    /// Publishes receipts.
    pub client: async_nats::Client,
    /// Delivers to webhooks and NATS subjects.
    pub sinks: Sinks,
    /// Per-route circuit breakers (this replica's view; kept in step with the other
    /// replicas' by `shared_breakers`).
    pub breakers: Arc<Breakers>,
    /// The open breakers every replica shares (the `breakers` bucket).
    pub shared_breakers: Arc<SharedBreakers>,
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
    /// Each tenant's share of the DLQ: a dead letter of a tenant holding its share is parked
    /// ([`PARKED_CODE`]) rather than left to a redelivery that would call the sink again.
    pub dlq_quota: Option<Arc<DlqQuota>>,
    /// The delivery log: every attempt, delivered or not.
    pub attempt_log: AttemptLog,
    /// Operational events (breakers, destinations disabled).
    pub events: EventLog,
    /// How a schedule that cannot be stored is tried again in place (the settler's
    /// [`SettleSettings::hold`](switchyard_service::SettleSettings::hold)).
    pub hold: RetryPolicy,
    /// Cuts such a wait short: the message is then nakked.
    pub shutdown: CancellationToken,
}

/// The longest `attempts_exhausted` detail, in characters (the DLQ entry keeps the whole
/// reason).
const EXHAUSTED_DETAIL_CHARS: usize = 400;

/// The least time a message whose payload cannot be opened now waits before it comes back
/// (with the consumer's `max_deliver` of 50: about 50 minutes before it is dead-lettered,
/// sealed, `exhausted_deliveries`).
const UNOPENED_WAIT: Duration = Duration::from_secs(60);

/// How long a parked dead letter waits before it tries the DLQ again.
const PARKED_WAIT: Duration = Duration::from_secs(5);

impl Handler for EgressHandler {
    async fn handle(&self, msg: &jetstream::Message) -> Handled {
        let envelope = match Envelope::from_headers(msg.headers.as_ref()) {
            Ok(envelope) => envelope,
            Err(error) => {
                return Handled::unreadable_envelope(msg, &self.ns, Stage::Egress, &error);
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
        let parties = (tenant.clone(), Some(envelope.address.platform.clone()));
        let outcome = match parked(msg) {
            // Decided already (the sink refused it for good, say): only the record is due.
            Some((code, reason, attempts)) => {
                self.dead_letter(msg, code, reason, parties, attempts, history(msg))
            }
            None => self.deliver(msg, envelope).instrument(span).await,
        };
        let outcome = match outcome {
            Outcome::DeadLetter(record)
                if self
                    .dlq_quota
                    .as_ref()
                    .is_some_and(|q| q.holds_share(record.tenant.as_ref())) =>
            {
                self.park(msg, &record).await
            }
            other => other,
        };
        Handled { tenant, outcome }
    }
}

/// A parked dead letter's code, reason and attempts, when `msg` is one.
fn parked(msg: &jetstream::Message) -> Option<(DlqCode, String, u32)> {
    let h = msg.headers.as_ref()?;
    let code = h.get(PARKED_CODE)?.as_str().parse().ok()?;
    let reason = h.get(PARKED_REASON).map_or("", |v| v.as_str()).to_owned();
    let attempts = h
        .get(PARKED_ATTEMPTS)
        .and_then(|v| v.as_str().parse().ok())
        .unwrap_or(0);
    Some((code, reason, attempts))
}

impl EgressHandler {
    async fn deliver(&self, msg: &jetstream::Message, mut envelope: Envelope) -> Outcome {
        let parties = (
            Some(envelope.address.tenant.clone()),
            Some(envelope.address.platform.clone()),
        );
        let tenant = envelope.address.tenant.as_str().to_owned();
        let deadline = Deadline::new(
            self.settings.delivery_deadline(),
            envelope.received_at,
            envelope.attempt.replay,
            msg.headers
                .as_ref()
                .and_then(|h| h.get(DEADLINE_FROM))
                .map(|v| v.as_str()),
            OffsetDateTime::now_utc(),
        );
        // Encrypted payloads are opened once, before fan-out filters and the sink read them;
        // copies, retries and dead letters keep the sealed bytes.
        let (payload, sealed) = match self.sinks.open(msg, &envelope).await {
            Ok(Opened::Plain(payload)) => (payload, false),
            Ok(Opened::Decrypted { payload, .. }) => (payload, true),
            Err(Unopened::DeadLetter(code, reason)) => {
                return self.dead_letter(msg, code, reason, parties, 0, Vec::new());
            }
            // Not held in place: a key this replica cannot unwrap (a KEK it lacks) lasts
            // longer than any hold, and held messages would take the slots other tenants'
            // messages need.
            Err(Unopened::Retry { after, reason }) => {
                return Outcome::Wait {
                    after: after.max(UNOPENED_WAIT),
                    reason,
                };
            }
        };
        let found = match &envelope.destination {
            Some(Target::Named(destination)) => lookup_destination(
                &self.destinations,
                &self.own_subjects,
                &envelope.address.tenant,
                destination,
                self.tenant_destination_rate(&envelope.address.tenant),
            ),
            Some(Target::Route) => lookup(&self.routes, &self.own_subjects, &envelope.address),
            None => match fanout::plan(
                &self.destinations,
                &self.routes,
                &self.own_subjects,
                &envelope,
                msg.headers.as_ref(),
                &payload,
            ) {
                Plan::Route => lookup(&self.routes, &self.own_subjects, &envelope.address),
                Plan::Copies(targets) => return self.fan_out(msg, &envelope, &targets).await,
                Plan::Unmatched(reason) => {
                    return self.unmatched(msg, &envelope, reason, parties).await;
                }
                Plan::TooCostly(reason) => {
                    return self.dead_letter(
                        msg,
                        DlqCode::InvalidRoute,
                        reason,
                        parties,
                        0,
                        Vec::new(),
                    );
                }
            },
        };
        let mut resolved = match found {
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
        // A disabled destination's copy waits for it, whatever its deadline: the deadline
        // counts again from its release.
        if resolved.disabled.is_some() {
            // Parking holds its messages now: its breaker is forgotten on every replica.
            if let Err(error) = self.shared_breakers.forget(&resolved.id).await {
                tracing::warn!(%error, route = %resolved.id, "forgetting a disabled destination's shared breaker failed");
            }
            return self.hold_parked(msg, &envelope).await;
        }
        if deadline.passed(OffsetDateTime::now_utc()) {
            return self
                .deadline_exceeded(msg, &envelope, &deadline, parties)
                .await;
        }
        // A tenant with encryption on stores its secrets sealed: opened for this attempt only;
        // one that cannot be opened never signs (dead-lettered, or waited for as a payload).
        match self.sinks.open_secrets(&mut resolved).await {
            Ok(()) => {}
            Err(Unopened::DeadLetter(code, reason)) => {
                return self.dead_letter(msg, code, reason, parties, 0, Vec::new());
            }
            Err(Unopened::Retry { after, reason }) => {
                return Outcome::Wait {
                    after: after.max(UNOPENED_WAIT),
                    reason,
                };
            }
        }
        // An open breaker holds the message back without waiting for a slot ...
        if let Some(until) = self.breakers.peek(&resolved.id, Instant::now()) {
            return self
                .hold(msg, &envelope, &deadline, &resolved.id, until)
                .await;
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
            let spacing = busy_spacing(self.settings.tenant_max_in_flight);
            let wait = self.spread(&resolved.id, spacing);
            return self
                .defer(msg, &envelope, &deadline, wait, "tenant_busy")
                .await;
        };
        let Some(slot) = self
            .limiter
            .acquire(&resolved.id, resolved.route.max_in_flight(), wait)
            .await
        else {
            // No attempt: the tenant's slot goes back now, its hold not counted.
            tenant_slot.unused();
            let spacing = busy_spacing(resolved.route.max_in_flight());
            let wait = self.spread(&resolved.id, spacing);
            return self
                .defer(msg, &envelope, &deadline, wait, "route_busy")
                .await;
        };
        // A rate-limited destination: a slot of its rate, shared by every replica, before the
        // breaker's decision (a probe must not then wait for the rate).
        if let Some((key, limit)) = &resolved.rate {
            match self
                .rates
                .take(key, limit, now_ms(), self.settings.route_wait())
                .await
            {
                Ok(wait) if wait.is_zero() => {}
                Ok(wait) => tokio::time::sleep(wait).await,
                Err(()) => {
                    slot.unused();
                    tenant_slot.unused();
                    let wait = self.spread(&resolved.id, rate::spacing(limit));
                    return self
                        .defer(msg, &envelope, &deadline, wait, "rate_limited")
                        .await;
                }
            }
        }
        // ... and the decision that counts is taken holding the slot, so a breaker that
        // opened while this message waited is respected.
        if let Admission::Wait { until } = self.breakers.admit(&resolved.id, Instant::now()) {
            slot.unused();
            tenant_slot.unused();
            return self
                .hold(msg, &envelope, &deadline, &resolved.id, until)
                .await;
        }

        let started_at = OffsetDateTime::now_utc();
        let clock = Instant::now();
        let attempted = with_progress(
            msg,
            self.ack_wait,
            self.sinks.attempt(msg, &envelope, &resolved, payload),
        )
        .await;
        let elapsed = clock.elapsed();
        // An encrypted payload's attempt keeps no excerpt of the answer (it may echo the
        // payload) in the records that follow.
        let attempted = if sealed {
            attempted.without_body()
        } else {
            attempted
        };
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
        self.breaker_changed(change, &envelope.address.tenant, &resolved.id)
            .await;
        if let (Change::Opened { .. } | Change::Reopened { .. }, Some(Target::Named(id))) =
            (change, &envelope.destination)
        {
            self.disable_if_down(&envelope.address.tenant, id, &resolved.id)
                .await;
        }
        // Released only now: the next message on this route sees the breaker's new state.
        drop(slot);
        drop(tenant_slot);

        let attempt = envelope.attempt.delivery.saturating_add(1);
        let duration_ms = u64::try_from(elapsed.as_millis()).unwrap_or(u64::MAX);
        self.attempt_log
            .record(
                &envelope,
                &resolved,
                attempt,
                result,
                record(started_at, &classified, duration_ms),
            )
            .await;
        if classified.is_delivered() {
            tracing::debug!(route = %resolved.id, attempt, status = ?classified.status, "delivered");
            self.receipt(&envelope, &resolved, attempt, classified.status)
                .await;
            self.cancel_orphan_schedule(msg, &envelope).await;
            return Outcome::Delivered;
        }
        let mut history = history(msg);
        history.push(record(started_at, &classified, duration_ms));
        let reason = classified.error.clone().unwrap_or_default();
        match classified.verdict {
            Verdict::Retryable { retry_after } if attempt < self.settings.max_attempts => {
                let delay = self.backoff.delay(attempt, retry_after);
                if delay >= deadline.remaining(OffsetDateTime::now_utc()) {
                    // The next attempt would come after the deadline: give up now.
                    self.cancel_orphan_schedule(msg, &envelope).await;
                    let reason = format!(
                        "{}; attempt {attempt} failed and the next would be due after it: {reason}",
                        deadline_reason(&deadline)
                    );
                    self.exhausted(
                        &envelope,
                        Some(&resolved.id),
                        DlqCode::DeadlineExceeded,
                        &reason,
                    );
                    return self.dead_letter(
                        msg,
                        DlqCode::DeadlineExceeded,
                        reason,
                        parties,
                        attempt,
                        history,
                    );
                }
                envelope.attempt.delivery = attempt;
                let mut h = Handoff::headers(&envelope, msg.headers.as_ref());
                h.insert(ATTEMPTS_LOG, encode_history(&history));
                if let Some(stamp) = deadline.stamp() {
                    h.insert(DEADLINE_FROM, stamp);
                }
                let at = OffsetDateTime::now_utc() + delay;
                let tag = attempt.to_string();
                let scheduled = self.reenter(&envelope, h, msg, (at, &tag), true).await;
                match scheduled {
                    Ok(()) => {
                        tracing::info!(route = %resolved.id, attempt, ?delay, %reason, "attempt failed; retry scheduled");
                        Outcome::Delayed
                    }
                    Err(error) => Outcome::Wait {
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
                self.exhausted(
                    &envelope,
                    Some(&resolved.id),
                    DlqCode::RetriesExhausted,
                    &reason,
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

    /// Publishes one copy of the message per target back into `EGRESS`, each naming its
    /// destination and under its own hop id, and acks the original once every copy is stored.
    /// Room for every copy is taken at once ([`Handoff::forward_all`]): above the high-water
    /// mark none is published. A copy that is not stored fails the whole fan-out, which runs
    /// again in place or on redelivery (the copies already stored are dropped by the stream's
    /// duplicate window).
    async fn fan_out(
        &self,
        msg: &jetstream::Message,
        envelope: &Envelope,
        targets: &[Target],
    ) -> Outcome {
        let copies = targets
            .iter()
            .map(|target| {
                let mut copy = envelope.clone();
                copy.destination = Some(target.clone());
                let mut h = Handoff::pass_on_headers(msg.headers.as_ref());
                h.insert(DESTINATION, target.as_str());
                (copy, h)
            })
            .collect();
        if let Err(error) = self
            .handoff
            .forward_all(InputStage::Egress, copies, &msg.payload)
            .await
        {
            tracing::warn!(%error, copies = targets.len(), "fanning out failed");
            return error.outcome(msg, Stage::Egress, envelope);
        }
        tracing::debug!(copies = targets.len(), "fanned out");
        self.metrics
            .count_fanned_out(envelope.address.tenant.as_str(), targets.len());
        Outcome::Forwarded
    }

    /// The tenant's `destination_rate_limit`, from its cached record.
    fn tenant_destination_rate(&self, tenant: &TenantId) -> Option<RateLimit> {
        let key = TenantKey {
            tenant: tenant.clone(),
        };
        match self.tenants.get(&key) {
            Some(Ok(record)) => record.destination_rate_limit,
            _ => None,
        }
    }

    /// Holds a copy for a disabled destination: it comes back after about
    /// `park_recheck_secs` to look again, without counting an attempt, and carries a fresh
    /// [`DEADLINE_FROM`] so that its delivery deadline counts from its release.
    async fn hold_parked(&self, msg: &jetstream::Message, envelope: &Envelope) -> Outcome {
        let wait = jitter(self.settings.park_recheck(), random_unit());
        let now = OffsetDateTime::now_utc();
        let mut h = Handoff::headers(envelope, msg.headers.as_ref());
        h.insert(
            DEADLINE_FROM,
            Deadline::stamp_at(envelope.attempt.replay, now),
        );
        let tag = format!(
            "parked-{}-{}",
            envelope.attempt.delivery,
            now.unix_timestamp_nanos() / 1_000_000
        );
        match self
            .reenter(envelope, h, msg, (now + wait, &tag), false)
            .await
        {
            Ok(()) => {
                tracing::debug!(?wait, "destination disabled; parked");
                self.metrics
                    .count_deferred(envelope.address.tenant.as_str(), "destination_disabled");
                Outcome::Delayed
            }
            Err(unstored) => unscheduled(
                &unstored,
                false,
                wait,
                format!("parking for a disabled destination failed: {unstored}"),
            ),
        }
    }

    /// Disables destination `destination` of `tenant` (breaker id `id`) when its breaker has
    /// been open for `[egress] disable_after_secs`: written to its record by compare-and-set
    /// (an operator's concurrent change wins; another replica's disabling is kept), then its
    /// breaker is forgotten, since parking now holds its messages.
    async fn disable_if_down(&self, tenant: &TenantId, destination: &DestinationId, id: &str) {
        let Some(after) = self.settings.disable_after() else {
            return;
        };
        let Some(down) = self.breakers.down_for(id, Instant::now()) else {
            return;
        };
        if down < after {
            return;
        }
        let key = DestinationKey {
            tenant: tenant.clone(),
            destination: destination.clone(),
        };
        let written = match self.destination_store.entry(&key).await {
            Ok(Some((mut record, revision))) if record.disabled.is_none() => {
                record.disabled = Some(Disabled {
                    at: OffsetDateTime::now_utc(),
                    by: DisabledBy::Egress,
                    reason: format!(
                        "down for {} s (circuit breaker open since); its messages are parked",
                        down.as_secs()
                    ),
                });
                self.destination_store
                    .update(&key, &record, revision)
                    .await
                    .map(Some)
            }
            // Gone, or disabled already.
            Ok(_) => Ok(None),
            Err(error) => Err(error),
        };
        match written {
            Ok(Some(Written::Stored(_))) => {
                tracing::warn!(destination = %destination, down_secs = down.as_secs(), "destination stayed down; disabled, its messages are parked");
                self.metrics.count_disabled(tenant.as_str());
                // Parking holds its messages now: every replica forgets the breaker.
                if let Err(error) = self.shared_breakers.forget(id).await {
                    tracing::warn!(%error, route = id, "forgetting a disabled destination's shared breaker failed");
                }
                self.events.emit(
                    EventKind::DestinationDisabled,
                    Some(tenant),
                    Some(destination.as_str()),
                    &format!(
                        "disabled by egress: down for {} s; its messages are parked until it is \
                         enabled",
                        down.as_secs()
                    ),
                );
            }
            Ok(Some(Written::Conflict)) | Ok(None) => {}
            Err(error) => {
                tracing::warn!(%error, destination = %destination, "disabling a destination that stayed down failed; tried again at its next failed probe");
            }
        }
    }

    /// Nothing takes the message: the tenant's `unmatched` policy dead-letters it
    /// `no_subscriber` (the default) or drops it with a receipt.
    async fn unmatched(
        &self,
        msg: &jetstream::Message,
        envelope: &Envelope,
        reason: String,
        parties: (Option<TenantId>, Option<PlatformId>),
    ) -> Outcome {
        let key = TenantKey {
            tenant: envelope.address.tenant.clone(),
        };
        let policy = match self.tenants.get(&key) {
            Some(Ok(record)) => record.unmatched,
            // Unknown or unreadable: the default, which loses nothing.
            _ => Unmatched::DeadLetter,
        };
        self.metrics
            .count_unmatched(envelope.address.tenant.as_str(), policy.as_str());
        match policy {
            Unmatched::DeadLetter => {
                self.dead_letter(msg, DlqCode::NoSubscriber, reason, parties, 0, Vec::new())
            }
            Unmatched::Drop => {
                tracing::info!(%reason, "no destination takes the message; dropped as the tenant asks");
                if self.settings.receipts {
                    self.publish_receipt(&Receipt::unmatched(envelope), envelope)
                        .await;
                }
                Outcome::Dropped
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
            key: envelope.copy_key(),
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

    /// Holds the message back until the route's breaker half-opens, in its own slot of the
    /// route's queue ([`Breakers::release_at`]), without counting an attempt.
    async fn hold(
        &self,
        msg: &jetstream::Message,
        envelope: &Envelope,
        deadline: &Deadline,
        route: &str,
        until: Instant,
    ) -> Outcome {
        let spread = self.breakers.hold_spread();
        let at = self
            .breakers
            .release_at(route, until, spread, random_unit());
        let wait = at.saturating_duration_since(Instant::now());
        self.defer(msg, envelope, deadline, wait, "breaker_open")
            .await
    }

    /// How long a message that found `route` (or its tenant) busy waits: about [`BUSY_DELAY`],
    /// then its own slot of the route's queue, `spacing` apart.
    fn spread(&self, route: &str, spacing: Duration) -> Duration {
        let earliest = Instant::now() + jitter(BUSY_DELAY, random_unit());
        let spread = Spread {
            spacing,
            max: BUSY_MAX_SPREAD,
        };
        let at = self
            .breakers
            .release_at(route, earliest, spread, random_unit());
        at.saturating_duration_since(Instant::now())
    }

    /// The message is past its delivery deadline: dead-letter it with the attempts it made.
    async fn deadline_exceeded(
        &self,
        msg: &jetstream::Message,
        envelope: &Envelope,
        deadline: &Deadline,
        parties: (Option<TenantId>, Option<PlatformId>),
    ) -> Outcome {
        self.cancel_orphan_schedule(msg, envelope).await;
        let history = history(msg);
        let attempts = envelope.attempt.delivery;
        let mut reason = format!("{}; {attempts} attempts made", deadline_reason(deadline));
        if let Some(last) = history.last().and_then(|a| a.error.as_deref()) {
            reason.push_str("; last: ");
            reason.push_str(last);
        }
        tracing::warn!(attempts, %reason, "delivery deadline exceeded");
        if attempts > 0 {
            self.exhausted(envelope, None, DlqCode::DeadlineExceeded, &reason);
        }
        self.dead_letter(
            msg,
            DlqCode::DeadlineExceeded,
            reason,
            parties,
            attempts,
            history,
        )
    }

    /// Schedules the message to come back after `wait` (never past its deadline) without
    /// counting an attempt.
    async fn defer(
        &self,
        msg: &jetstream::Message,
        envelope: &Envelope,
        deadline: &Deadline,
        wait: Duration,
        reason: &'static str,
    ) -> Outcome {
        let wait = wait.min(deadline.remaining(OffsetDateTime::now_utc()));
        let mut h = Handoff::headers(envelope, msg.headers.as_ref());
        if let Some(stamp) = deadline.stamp() {
            h.insert(DEADLINE_FROM, stamp);
        }
        let now = OffsetDateTime::now_utc();
        let at = now + wait;
        // Unique per deferral (the hand-off id is de-duplicated by the stream): by when it was
        // decided, as two deferrals clamped to the deadline share their `at`.
        let tag = format!(
            "{reason}-{}-{}",
            envelope.attempt.delivery,
            now.unix_timestamp_nanos() / 1_000_000
        );
        let scheduled = self.reenter(envelope, h, msg, (at, &tag), false).await;
        match scheduled {
            Ok(()) => {
                tracing::debug!(reason, ?wait, "deferred");
                self.metrics
                    .count_deferred(envelope.address.tenant.as_str(), reason);
                Outcome::Delayed
            }
            Err(unstored) => unscheduled(
                &unstored,
                matches!(reason, "tenant_busy" | "route_busy"),
                wait,
                format!("deferring ({reason}) failed: {unstored}"),
            ),
        }
    }

    /// Logs and counts a change of this replica's breaker `route`, shares it with the other
    /// replicas, and reports `breaker_opened` / `breaker_closed` when this replica's write
    /// decided it for everyone (or, with KV unreachable, for itself).
    async fn breaker_changed(&self, change: Change, tenant: &TenantId, route: &str) {
        let shared = self.breakers.shared(route, Instant::now());
        match (change, shared) {
            (Change::None, _) => {}
            (Change::Opened { period }, shared) => {
                tracing::warn!(route, ?period, "circuit breaker opened");
                self.metrics.breaker_opened(tenant.as_str(), true);
                let detail = match shared {
                    Some(shared) => match self.shared_breakers.opened(route, shared).await {
                        Ok(true) => {
                            format!("opened for {} s, on every egress replica", period.as_secs())
                        }
                        // Another replica's record holds it: that one reported it.
                        Ok(false) => return,
                        Err(error) => {
                            tracing::warn!(%error, route, "sharing an open breaker failed; it holds on this replica only");
                            format!(
                                "opened for {} s on one egress replica (sharing it failed)",
                                period.as_secs()
                            )
                        }
                    },
                    None => format!("opened for {} s", period.as_secs()),
                };
                self.events
                    .emit(EventKind::BreakerOpened, Some(tenant), Some(route), &detail);
            }
            (Change::Reopened { period }, shared) => {
                tracing::warn!(route, ?period, "probe failed; circuit breaker open again");
                self.metrics.breaker_opened(tenant.as_str(), false);
                if let Some(shared) = shared
                    && let Err(error) = self.shared_breakers.reopened(route, shared).await
                {
                    tracing::warn!(%error, route, "sharing a re-opened breaker failed");
                }
            }
            (Change::Closed, _) => {
                tracing::info!(route, "route recovered; circuit breaker closed");
                self.metrics.breaker_closed(tenant.as_str());
                match self.shared_breakers.closed(route).await {
                    Ok(true) => {}
                    // Closed already by another replica's probe, which reported it.
                    Ok(false) => return,
                    Err(error) => {
                        tracing::warn!(%error, route, "sharing a closed breaker failed");
                    }
                }
                self.events.emit(
                    EventKind::BreakerClosed,
                    Some(tenant),
                    Some(route),
                    "a probe was answered: closed on every egress replica",
                );
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
        self.publish_receipt(
            &Receipt::new(envelope, resolved, attempts, status),
            envelope,
        )
        .await;
    }

    /// Publishes `receipt` (core NATS, best effort: a failure is counted and logged).
    async fn publish_receipt(&self, receipt: &Receipt, envelope: &Envelope) {
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

    /// Schedules a copy of `msg` (its payload, headers `h`) to re-enter egress at `at`; `tag`
    /// makes the schedule's publish id unique, so a try whose ack was lost and a try again store
    /// one schedule.
    ///
    /// A store that failed is tried again here, in place, with progress acks keeping the
    /// message, for as long as the settler holds a transient failure ([`EgressHandler::hold`])
    /// — when the sink was `attempted` in this handling, whatever the failure, since deciding
    /// the message again (an `Outcome::Retry`) would call the sink again; and otherwise once a
    /// try may have been stored (its ack did not come), since a message decided again and
    /// delivered now would leave that schedule to fire beside it. A message not `attempted`
    /// whose tries were all refused above the high-water mark (nothing stored) comes back at
    /// once, [`Unscheduled::nothing_stored`], for the caller to decide it again where that can
    /// help. Otherwise `Err` comes once the hold is over or shutdown began; the caller then
    /// naks (`Outcome::Wait`), and the redelivered copy, delivered more than once, cancels a
    /// schedule left behind when it settles for good.
    async fn reenter(
        &self,
        envelope: &Envelope,
        h: async_nats::HeaderMap,
        msg: &jetstream::Message,
        (at, tag): (OffsetDateTime, &str),
        attempted: bool,
    ) -> Result<(), Unscheduled> {
        let mut hold = self.hold.backoff();
        let mut maybe_stored = false;
        loop {
            let error = match self
                .handoff
                .schedule(
                    InputStage::Egress,
                    envelope,
                    h.clone(),
                    msg.payload.clone(),
                    at,
                    tag,
                )
                .await
            {
                Ok(()) => return Ok(()),
                Err(error) => error,
            };
            maybe_stored |= !matches!(
                error,
                switchyard_service::HandoffError::AboveHighWater { .. }
            );
            if !attempted && !maybe_stored {
                return Err(Unscheduled {
                    error,
                    nothing_stored: true,
                });
            }
            tracing::warn!(%error, tag, "storing a schedule failed; trying again in place");
            if let Err(error) = msg.ack_with(AckKind::Progress).await {
                tracing::debug!(%error, "progress ack failed");
            }
            if !hold.wait(&self.shutdown).await {
                return Err(Unscheduled {
                    error,
                    nothing_stored: !maybe_stored,
                });
            }
        }
    }

    /// Parks a decided dead letter whose tenant holds its share of the DLQ: a copy carrying
    /// the decision (code, reason, attempts, history) re-enters egress after [`PARKED_WAIT`]
    /// and this one is acked, so the sink is not called again and no shared slot is held.
    async fn park(&self, msg: &jetstream::Message, record: &DeadLetter) -> Outcome {
        // The envelope as the message carries it (read once more only on this rare path).
        let envelope = match Envelope::from_headers(msg.headers.as_ref()) {
            Ok(envelope) => envelope,
            Err(error) => {
                return Outcome::Retry {
                    after: PARKED_WAIT,
                    reason: format!("parking a dead letter: {error}"),
                };
            }
        };
        let envelope = &envelope;
        let mut h = Handoff::headers(envelope, msg.headers.as_ref());
        h.insert(PARKED_CODE, record.code.as_str());
        h.insert(PARKED_REASON, record.reason.replace(['\r', '\n'], " "));
        h.insert(PARKED_ATTEMPTS, record.attempts.to_string());
        h.insert(ATTEMPTS_LOG, encode_history(&record.history));
        let now = OffsetDateTime::now_utc();
        let tag = format!("parked-{}", now.unix_timestamp_nanos() / 1_000_000);
        let scheduled = self
            .reenter(envelope, h, msg, (now + PARKED_WAIT, &tag), true)
            .await;
        match scheduled {
            Ok(()) => {
                tracing::warn!(code = %record.code, "the tenant holds its share of the DLQ; the dead letter is parked and tried again");
                self.metrics
                    .count_deferred(envelope.address.tenant.as_str(), "dlq_share");
                Outcome::Delayed
            }
            Err(error) => Outcome::Wait {
                after: PARKED_WAIT,
                reason: format!("parking a dead letter failed: {error}"),
            },
        }
    }

    /// Reports `attempts_exhausted`: `envelope` is dead-lettered `code` after its last
    /// attempt on `route` (its key; `None` when not known here: the destination's name then).
    fn exhausted(&self, envelope: &Envelope, route: Option<&str>, code: DlqCode, reason: &str) {
        let about = route
            .map(str::to_owned)
            .or_else(|| match &envelope.destination {
                Some(Target::Named(id)) => Some(id.to_string()),
                _ => None,
            });
        let mut detail = format!("message {} dead-lettered {code}: {reason}", envelope.id);
        if let Some((cut, _)) = detail.char_indices().nth(EXHAUSTED_DETAIL_CHARS) {
            detail.truncate(cut);
            detail.push('…');
        }
        self.events.emit(
            EventKind::AttemptsExhausted,
            Some(&envelope.address.tenant),
            about.as_deref(),
            &detail,
        );
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

/// The attempt history the message carries (a new one when it is unreadable).
fn history(msg: &jetstream::Message) -> Vec<AttemptRecord> {
    let carried = msg
        .headers
        .as_ref()
        .and_then(|h| h.get(ATTEMPTS_LOG))
        .map(|v| v.as_str());
    decode_history(carried).unwrap_or_else(|error| {
        tracing::warn!(%error, "unreadable attempt history; starting a new one");
        Vec::new()
    })
}

/// A schedule [`EgressHandler::reenter`] could not store.
struct Unscheduled {
    /// The last try's error.
    error: switchyard_service::HandoffError,
    /// Every try was refused above the high-water mark: no schedule was stored.
    nothing_stored: bool,
}

impl std::fmt::Display for Unscheduled {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.error.fmt(f)
    }
}

/// The outcome for a message that made no attempt and whose schedule (`wait` ahead) could not
/// be stored. A busy tenant or route (`retry_helps`) whose schedule was refused above the
/// high-water mark with nothing stored is decided again in place (`Retry`: a slot may free
/// meanwhile, and its delivery drains `EGRESS`); anything else — a breaker, a rate or a
/// disabled destination, which deciding again cannot get past, or a schedule that may have
/// been stored — is nakked after `wait`, at most [`MAX_NAK_DELAY`], freeing its worker slot.
fn unscheduled(
    unstored: &Unscheduled,
    retry_helps: bool,
    wait: Duration,
    reason: String,
) -> Outcome {
    let after = wait.min(MAX_NAK_DELAY);
    if unstored.nothing_stored && retry_helps {
        Outcome::Retry { after, reason }
    } else {
        Outcome::Wait { after, reason }
    }
}

/// Now, in milliseconds since the epoch (the lease arithmetic's clock).
fn now_ms() -> i64 {
    i64::try_from(OffsetDateTime::now_utc().unix_timestamp_nanos() / 1_000_000).unwrap_or(0)
}

/// The slot spacing of a busy route or tenant with `slots` slots: about as many messages come
/// back per second as it has slots.
fn busy_spacing(slots: usize) -> Duration {
    let slots = u32::try_from(slots.max(1)).unwrap_or(u32::MAX);
    Duration::from_secs(1) / slots
}

/// The first words of a `deadline_exceeded` reason.
fn deadline_reason(deadline: &Deadline) -> String {
    let since = deadline
        .from
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_else(|_| deadline.from.to_string());
    let limit = (deadline.at - deadline.from).whole_seconds();
    format!("not delivered within the delivery deadline of {limit} s from {since}")
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

/// Whether deleting a message failed only because it is no longer in the stream
/// ([`switchyard_registry::gone_on_delete`]).
fn already_gone(error: &DeleteMessageError) -> bool {
    match error.kind() {
        DeleteMessageErrorKind::JetStream(error) => switchyard_registry::gone_on_delete(&error),
        _ => false,
    }
}
