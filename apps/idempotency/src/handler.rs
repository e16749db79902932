//! The idempotency stage's handler: claim, then hand on first sightings (and the same message
//! seen again after a crash); drop and count duplicates.

use std::time::Duration;

use async_nats::jetstream;
use prometheus_client::metrics::counter::Counter;
use switchyard_envelope::Envelope;
use switchyard_keys::{IdempotencyKey, Stage};
use switchyard_service::{Handled, Handler, Handoff, Outcome};
use switchyard_subjects::InputStage;

use crate::claims::{Claim, KvClaims, LocalClaims};
use crate::config::KvUnavailable;

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
}

/// The claim's result, or why it could not be made (KV unreachable, policy `wait`).
enum Decided {
    Claim(Claim),
    /// Hold the message: the settler retries the whole decision in place for
    /// `kv_wait_max_secs`, then hands it back to JetStream.
    Hold(String),
}

impl IdempotencyHandler {
    /// Claims `key` once. KV trouble is the policy's: `local` decides in the in-memory window,
    /// `wait` asks the settler to hold the message and decide again (one hold, bounded by
    /// `kv_wait_max_secs`).
    async fn claim(&self, key: &IdempotencyKey, envelope: &Envelope) -> Decided {
        let error = match self.kv.claim(key, envelope.id).await {
            Ok(claim) => return Decided::Claim(claim),
            Err(error) => error,
        };
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
                return Handled::invalid_envelope(
                    msg,
                    self.handoff.namespace(),
                    Stage::Idempotency,
                    e.to_string(),
                );
            }
        };
        let tenant = Some(envelope.address.tenant.clone());
        let key = IdempotencyKey {
            tenant: envelope.address.tenant.clone(),
            platform: envelope.address.platform.clone(),
            msg_id: envelope.msg_id.clone(),
        };
        let outcome = match self.claim(&key, &envelope).await {
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
                let h = Handoff::headers(&envelope, msg.headers.as_ref());
                match self
                    .handoff
                    .forward(self.next, &envelope, h, msg.payload.clone())
                    .await
                {
                    Ok(()) => Outcome::Forwarded,
                    Err(e) => Outcome::Retry {
                        after: Duration::from_secs(1),
                        reason: e.to_string(),
                    },
                }
            }
        };
        Handled { tenant, outcome }
    }
}
