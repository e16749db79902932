//! One delivery attempt over the route's sink (webhook or NATS), bounded by the route's
//! timeout, while the message's ack deadline is kept alive; and the payload a sink (and a
//! fan-out filter) reads: opened first when the tenant's payloads are encrypted
//! ([`Sinks::open`]).

use std::future::Future;
use std::time::Duration;

use std::sync::Arc;

use async_nats::jetstream::{self, AckKind};
use bytes::Bytes;
use switchyard_crypt::{CryptError, KeyCache, OpenError, Opened};
use switchyard_dlq::DlqCode;
use switchyard_envelope::Envelope;
use switchyard_registry::Route;
use tokio::time::Instant;

use crate::classify::Attempted;
use crate::nats_sink::NatsSink;
use crate::routing::Resolved;
use crate::webhook::{WebhookClient, WebhookRequest};

/// Both sinks.
#[derive(Clone)]
pub struct Sinks {
    /// Delivers to webhooks.
    pub webhook: WebhookClient,
    /// Delivers to NATS subjects.
    pub nats: NatsSink,
    /// The tenants' data keys, to open encrypted payloads.
    pub keys: Arc<KeyCache>,
}

/// How long a message whose payload cannot be opened now (no KEK, KV unreachable, a key that
/// does not unwrap) waits before it is handled again.
pub const OPEN_RETRY: Duration = Duration::from_secs(10);

/// Why a payload cannot be delivered in clear.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Unopened {
    /// Never: dead-letter it with this code and reason (the entry keeps the encrypted bytes).
    DeadLetter(DlqCode, String),
    /// Not now: handle it again after `after`.
    Retry {
        /// How long to wait.
        after: Duration,
        /// Why.
        reason: String,
    },
}

impl Sinks {
    /// The payload of `msg` in clear: as it is ([`Opened::Plain`]), or opened with its tenant's
    /// data key when it is sealed ([`Opened::Decrypted`]; bound to the envelope's tenant and id: a payload moved to another tenant or
    /// message, or whose key id or bytes were changed, does not open).
    ///
    /// Errors: [`Unopened::DeadLetter`] with `payload_tampered`, `unknown_data_key` or
    /// `tenant_shredded`; [`Unopened::Retry`] while it cannot be opened now.
    pub async fn open(
        &self,
        msg: &jetstream::Message,
        envelope: &Envelope,
    ) -> Result<Opened, Unopened> {
        let tenant = &envelope.address.tenant;
        match self
            .keys
            .open(
                tenant,
                &envelope.id.to_string(),
                msg.headers.as_ref(),
                &msg.payload,
            )
            .await
        {
            Ok(opened) => Ok(opened),
            Err(error) => Err(match error.dlq_code() {
                Some(code) => Unopened::DeadLetter(code, error.to_string()),
                None => {
                    if let OpenError::Unavailable(reason) = &error {
                        tracing::error!(%reason, %tenant, "an encrypted payload cannot be opened now: the message is held");
                    }
                    Unopened::Retry {
                        after: OPEN_RETRY,
                        reason: error.to_string(),
                    }
                }
            }),
        }
    }

    /// Opens `resolved`'s sealed secrets (a tenant with encryption on stores its route and
    /// destination secrets sealed) with the tenant's data keys, and makes its signing keys from
    /// them; a route in clear is left as it is. The plaintext lives in this attempt's copy of
    /// the route only.
    ///
    /// Errors: [`Unopened::DeadLetter`] with `tenant_shredded` when the tenant's keys were
    /// shredded (its secrets can never be opened again), or `invalid_route` when a secret does
    /// not open (sealed for another record, tenant or field, changed, malformed, under a key
    /// the tenant does not have) or opens to an invalid secret — never an attempt signed with
    /// anything else; [`Unopened::Retry`] while it cannot be opened now (no KEK on this
    /// replica, KV unreachable).
    pub async fn open_secrets(&self, resolved: &mut Resolved) -> Result<(), Unopened> {
        if !resolved.sealed {
            return Ok(());
        }
        let invalid = |reason: String| {
            Unopened::DeadLetter(
                DlqCode::InvalidRoute,
                format!(
                    "{}'s sealed secrets cannot be used: {reason}",
                    resolved.place.describe()
                ),
            )
        };
        if let Err(error) = self
            .keys
            .open_secrets(&mut resolved.route, &resolved.place)
            .await
        {
            let tenant = resolved.place.tenant();
            return Err(match error {
                OpenError::Refused(CryptError::Shredded { .. }) => {
                    Unopened::DeadLetter(DlqCode::TenantShredded, error.to_string())
                }
                OpenError::Refused(_) | OpenError::NotEncrypted { .. } => {
                    invalid(error.to_string())
                }
                OpenError::Unavailable(reason) => {
                    tracing::error!(%reason, %tenant, route = %resolved.id, "a route's sealed secrets cannot be opened now: the message is held");
                    Unopened::Retry {
                        after: OPEN_RETRY,
                        reason: format!(
                            "{}'s sealed secrets cannot be opened now: {reason}",
                            resolved.place.describe()
                        ),
                    }
                }
            });
        }
        if let Route::Webhook(w) = &resolved.route {
            if let Some(key) = &w.signing_key {
                key.key_pair().map_err(|e| invalid(e.to_string()))?;
            }
            resolved.keys = w
                .signing_keys(time::OffsetDateTime::now_utc())
                .map_err(|e| invalid(e.to_string()))?;
        }
        resolved.sealed = false;
        Ok(())
    }

    /// Delivers `payload` (the message's, in clear: [`Sinks::open`]) once over `resolved`'s
    /// sink; a route's timeout ends the attempt (a webhook's: until its status is in, then its
    /// body is read briefly, [`WebhookClient::post`](crate::webhook::WebhookClient::post)).
    pub async fn attempt(
        &self,
        msg: &jetstream::Message,
        envelope: &Envelope,
        resolved: &Resolved,
        payload: Bytes,
    ) -> Attempted {
        let timeout = resolved.route.timeout();
        match &resolved.route {
            Route::Webhook(route) => {
                let id = envelope.id.to_string();
                // The sink's request is a child of this delivery's span (same trace).
                let traceparent = switchyard_runtime::telemetry::current_traceparent()
                    .or_else(|| envelope.trace.traceparent.clone());
                let request = WebhookRequest {
                    route,
                    keys: &resolved.keys,
                    id: &id,
                    content_type: envelope.content_type.as_deref(),
                    traceparent: traceparent.as_deref(),
                    tracestate: envelope.trace.tracestate.as_deref(),
                    payload: payload.clone(),
                };
                self.webhook.post(request, timeout).await
            }
            Route::Nats(route) => {
                let sent =
                    self.nats
                        .publish(route, envelope, msg.headers.as_ref(), payload.clone());
                tokio::time::timeout(timeout, sent)
                    .await
                    .unwrap_or(Attempted::TimedOut { after: timeout })
            }
        }
    }
}

/// Runs `work`, telling JetStream every third of `ack_wait` that `msg` is still being worked
/// on, so a long attempt (a route's timeout may exceed the consumer's ack wait) is not
/// redelivered and delivered twice.
pub async fn with_progress<T>(
    msg: &jetstream::Message,
    ack_wait: Duration,
    work: impl Future<Output = T>,
) -> T {
    let period = (ack_wait / 3).max(Duration::from_secs(1));
    let mut ticker = tokio::time::interval_at(Instant::now() + period, period);
    let mut work = std::pin::pin!(work);
    loop {
        tokio::select! {
            out = &mut work => return out,
            _ = ticker.tick() => {
                if let Err(error) = msg.ack_with(AckKind::Progress).await {
                    tracing::debug!(%error, "progress ack failed");
                }
            }
        }
    }
}
