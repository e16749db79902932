//! One delivery attempt over the route's sink (webhook or NATS), bounded by the route's
//! timeout, while the message's ack deadline is kept alive.

use std::future::Future;
use std::time::Duration;

use async_nats::jetstream::{self, AckKind};
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
}

impl Sinks {
    /// Delivers `msg` once over `resolved`'s sink; a route's timeout ends the attempt.
    pub async fn attempt(
        &self,
        msg: &jetstream::Message,
        envelope: &Envelope,
        resolved: &Resolved,
    ) -> Attempted {
        let timeout = resolved.route.timeout();
        let sent = async {
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
                        payload: msg.payload.clone(),
                    };
                    self.webhook.post(request).await
                }
                Route::Nats(route) => {
                    self.nats
                        .publish(route, envelope, msg.headers.as_ref(), msg.payload.clone())
                        .await
                }
            }
        };
        tokio::time::timeout(timeout, sent)
            .await
            .unwrap_or(Attempted::TimedOut { after: timeout })
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
