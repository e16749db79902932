//! The idempotency stage's handler: claim, then hand on first sightings (and the same message
//! seen again after a crash); drop and count duplicates. A full bucket holds the message in
//! place until a claim fits ([`BucketFull`]): never dead-lettered, never claimed locally.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use async_nats::jetstream::{self, AckKind};
use prometheus_client::metrics::counter::Counter;
use switchyard_envelope::Envelope;
use switchyard_keys::{IdempotencyKey, Stage};
use switchyard_service::probes::ReadinessCheck;
use switchyard_service::{Handled, Handler, Handoff, Outcome};
use switchyard_subjects::InputStage;
use tokio_util::sync::CancellationToken;

use crate::claims::{Claim, ClaimError, KvClaims, LocalClaims};
use crate::config::KvUnavailable;

/// Whether the bucket refused the last new claim for lack of room; `/readyz` fails while it
/// did ([`BucketFull::readiness`]). Set by a refused claim, cleared by the next claim written.
#[derive(Clone, Default)]
pub struct BucketFull {
    full: Arc<AtomicBool>,
}

impl BucketFull {
    /// Whether the last new claim was refused for lack of room.
    pub fn is_full(&self) -> bool {
        self.full.load(Ordering::Relaxed)
    }

    fn set(&self, full: bool) {
        self.full.store(full, Ordering::Relaxed);
    }

    /// The readiness check: not ready while the bucket `bucket` is full.
    pub fn readiness(&self, bucket: String) -> ReadinessCheck {
        let state = self.clone();
        Arc::new(move || {
            if state.is_full() {
                Err(format!(
                    "idempotency bucket {bucket} is full: new claims are refused and messages \
                     are held; raise its max_bytes (switchyard provision --fix with a larger \
                     topology) or shorten ttl_secs"
                ))
            } else {
                Ok(())
            }
        })
    }
}

/// Claims ids and hands first sightings on to `next`.
pub struct IdempotencyHandler {
    /// Claims in KV.
    pub kv: KvClaims,
    /// The in-memory fallback (with `kv_unavailable = "local"`).
    pub local: LocalClaims,
    /// Policy while KV is unreachable.
    pub policy: KvUnavailable,
    /// The publisher.
    pub handoff: Handoff,
    /// Where first sightings go.
    pub next: InputStage,
    /// Claims decided by the local window because KV was unreachable.
    pub fallbacks: Counter,
    /// Duplicates dropped.
    pub duplicates: Counter,
    /// Messages held because the bucket was full (counted once per hold).
    pub bucket_full: Counter,
    /// The bucket-full flag readiness reads.
    pub full: BucketFull,
    /// How often a message held by a full bucket tries its claim again.
    pub full_recheck: Duration,
    /// Ends holds at shutdown (the message is then handed back to JetStream).
    pub shutdown: CancellationToken,
}

/// The claim's result, or why it could not be made (KV unreachable, policy `wait`).
enum Decided {
    Claim(Claim),
    /// Hold the message: the settler retries the whole decision in place for
    /// `kv_wait_max_secs`, then hands it back to JetStream.
    Hold(String),
}

impl IdempotencyHandler {
    /// Claims `key`. KV trouble is the policy's: `local` decides in the in-memory window,
    /// `wait` asks the settler to hold the message and decide again (one hold, bounded by
    /// `kv_wait_max_secs`). A full bucket is not KV trouble: the message is held here until
    /// its claim fits ([`Self::hold_while_full`]).
    async fn claim(
        &self,
        msg: &jetstream::Message,
        key: &IdempotencyKey,
        envelope: &Envelope,
    ) -> Decided {
        match self.kv.claim(key, envelope.id).await {
            Ok(claim) => self.claimed(claim),
            Err(ClaimError::BucketFull(error)) => {
                self.hold_while_full(msg, key, envelope, error).await
            }
            Err(ClaimError::Unavailable(error)) => self.unavailable(key, envelope, error),
        }
    }

    fn claimed(&self, claim: Claim) -> Decided {
        if claim == Claim::First {
            // A claim was written: there is room again.
            self.full.set(false);
        }
        Decided::Claim(claim)
    }

    /// Holds `msg` (progress acks, so it costs no delivery and never reaches `max_deliver`)
    /// while the bucket is full, trying the claim again every `full_recheck`. Counted, logged
    /// as an error and reported by readiness; nothing is claimed locally, nothing is
    /// dead-lettered. Upstream then fills and refuses producers at the edge. At shutdown the
    /// message goes back to JetStream.
    async fn hold_while_full(
        &self,
        msg: &jetstream::Message,
        key: &IdempotencyKey,
        envelope: &Envelope,
        error: String,
    ) -> Decided {
        self.bucket_full.inc();
        self.full.set(true);
        tracing::error!(
            %error,
            tenant = %key.tenant,
            platform = %key.platform,
            envelope_id = %envelope.id,
            "idempotency bucket full: holding the message until a claim fits"
        );
        loop {
            if let Err(error) = msg.ack_with(AckKind::Progress).await {
                tracing::debug!(%error, "progress ack failed");
            }
            tokio::select! {
                () = self.shutdown.cancelled() => {
                    return Decided::Hold("idempotency bucket full (shutting down)".to_owned());
                }
                () = tokio::time::sleep(self.full_recheck) => {}
            }
            match self.kv.claim(key, envelope.id).await {
                Ok(claim) => {
                    tracing::info!(envelope_id = %envelope.id, "idempotency bucket has room again: claim written");
                    return self.claimed(claim);
                }
                Err(ClaimError::BucketFull(_)) => self.full.set(true),
                Err(ClaimError::Unavailable(error)) => {
                    return self.unavailable(key, envelope, error);
                }
            }
        }
    }

    /// KV did not answer: the `kv_unavailable` policy decides.
    fn unavailable(&self, key: &IdempotencyKey, envelope: &Envelope, error: String) -> Decided {
        match self.policy {
            KvUnavailable::Local => {
                self.fallbacks.inc();
                tracing::warn!(%error, tenant = %key.tenant, "kv unreachable: claiming in the local window");
                Decided::Claim(self.local.claim(key, envelope.id))
            }
            KvUnavailable::Wait => Decided::Hold(format!("kv unreachable: {error}")),
        }
    }
}

impl Handler for IdempotencyHandler {
    async fn handle(&self, msg: &jetstream::Message) -> Handled {
        let envelope = match Envelope::from_headers(msg.headers.as_ref()) {
            Ok(envelope) => envelope,
            Err(e) => {
                return Handled::unreadable_envelope(
                    msg,
                    self.handoff.namespace(),
                    Stage::Idempotency,
                    &e,
                );
            }
        };
        let tenant = Some(envelope.address.tenant.clone());
        let key = IdempotencyKey {
            tenant: envelope.address.tenant.clone(),
            platform: envelope.address.platform.clone(),
            msg_id: envelope.msg_id.clone(),
        };
        let outcome = match self.claim(msg, &key, &envelope).await {
            Decided::Hold(reason) => Outcome::Retry {
                after: Duration::from_secs(5),
                reason,
            },
            Decided::Claim(Claim::Duplicate { first }) => {
                self.duplicates.inc();
                tracing::info!(
                    tenant = %key.tenant,
                    platform = %key.platform,
                    msg_id = %key.msg_id,
                    envelope_id = %envelope.id,
                    first_envelope_id = %first,
                    "duplicate dropped"
                );
                Outcome::Duplicate
            }
            Decided::Claim(claim) => {
                if claim == Claim::SameMessage {
                    tracing::info!(envelope_id = %envelope.id, "same message seen again (redelivery): handing on");
                }
                let h = Handoff::pass_on_headers(msg.headers.as_ref());
                match self
                    .handoff
                    .forward(self.next, &envelope, h, msg.payload.clone())
                    .await
                {
                    Ok(()) => Outcome::Forwarded,
                    // Too large for the next stream: permanent (`payload_too_large`).
                    Err(e) => e.outcome(msg, Stage::Idempotency, &envelope),
                }
            }
        };
        Handled { tenant, outcome }
    }
}
