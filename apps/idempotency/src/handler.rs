//! The idempotency stage's handler: claim, then hand on first sightings (and the same message
//! seen again after a crash); drop and count duplicates.

use std::time::{Duration, Instant};

use async_nats::jetstream::{self, AckKind};
use prometheus_client::metrics::counter::Counter;
use switchyard_dlq::{DeadLetter, DlqCode};
use switchyard_envelope::{Envelope, headers};
use switchyard_keys::{IdempotencyKey, PlatformId, Stage, TenantId};
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
    /// With `Wait`: the longest hold of one message.
    pub wait_max: Duration,
    /// The publisher.
    pub handoff: Handoff,
    /// Where first sightings go.
    pub next: InputStage,
    /// Claims decided by the local window because KV was unreachable.
    pub fallbacks: Counter,
    /// Duplicates dropped.
    pub duplicates: Counter,
}

enum Decided {
    Claim(Claim),
    GiveBack(String),
}

impl IdempotencyHandler {
    async fn claim(
        &self,
        key: &IdempotencyKey,
        envelope: &Envelope,
        msg: &jetstream::Message,
    ) -> Decided {
        let started = Instant::now();
        let mut pause = Duration::from_millis(100);
        loop {
            let error = match self.kv.claim(key, envelope.id).await {
                Ok(claim) => return Decided::Claim(claim),
                Err(error) => error,
            };
            match self.policy {
                KvUnavailable::Local => {
                    self.fallbacks.inc();
                    tracing::warn!(%error, tenant = %key.tenant, "kv unreachable: claiming in the local window");
                    return Decided::Claim(self.local.claim(key, envelope.id));
                }
                KvUnavailable::Wait if started.elapsed() >= self.wait_max => {
                    return Decided::GiveBack(format!(
                        "kv unreachable for {:?}: {error}",
                        self.wait_max
                    ));
                }
                KvUnavailable::Wait => {
                    tracing::warn!(%error, ?pause, "kv unreachable: holding the message and retrying the claim");
                    // Keep the message ours while we wait.
                    let _ = msg.ack_with(AckKind::Progress).await;
                    tokio::time::sleep(pause).await;
                    pause = (pause * 2).min(Duration::from_secs(2));
                }
            }
        }
    }
}

impl Handler for IdempotencyHandler {
    async fn handle(&self, msg: &jetstream::Message) -> Handled {
        let envelope = match Envelope::from_headers(msg.headers.as_ref()) {
            Ok(envelope) => envelope,
            Err(e) => return invalid_envelope(msg, e.to_string()),
        };
        let tenant = Some(envelope.address.tenant.clone());
        let key = IdempotencyKey {
            tenant: envelope.address.tenant.clone(),
            platform: envelope.address.platform.clone(),
            msg_id: envelope.msg_id.clone(),
        };
        let outcome = match self.claim(&key, &envelope, msg).await {
            Decided::GiveBack(reason) => Outcome::Retry {
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

/// A message whose envelope cannot be read: dead-letter it (it never came from ingress intact).
fn invalid_envelope(msg: &jetstream::Message, reason: String) -> Handled {
    let text = |name| {
        msg.headers
            .as_ref()
            .and_then(|h| h.get(name))
            .map(|v| v.as_str().to_owned())
    };
    let tenant: Option<TenantId> = text(headers::TENANT).and_then(|t| t.parse().ok());
    let platform: Option<PlatformId> = text(headers::PLATFORM).and_then(|p| p.parse().ok());
    let record = DeadLetter::for_message(
        msg,
        Stage::Idempotency,
        DlqCode::InvalidEnvelope,
        reason,
        tenant.clone(),
        platform,
    );
    Handled {
        tenant,
        outcome: Outcome::DeadLetter(Box::new(record)),
    }
}
