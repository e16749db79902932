//! Operational events delivered to an operator's endpoint as signed webhooks
//! (`[events_webhook]`).
//!
//! The events of the `EVENTS` stream ([`switchyard_service::events::OpEvent`]) are read through
//! the on-demand durable consumer `events-webhook`, created by the first dlq instance that has
//! a `url` (starting from the events stored after it was created: the stream's past is not
//! replayed) and shared by every instance, so each event is delivered by one of them. JetStream
//! removes the consumer a week after the last instance reading it stopped.
//!
//! Each event is POSTed as its stored JSON, unchanged, with the Standard Webhooks headers
//! (<https://github.com/standard-webhooks/standard-webhooks/blob/main/spec/standard-webhooks.md>):
//! `webhook-id` the event's id (`evt_<stream sequence>` for an event stored without one), the
//! same on every retry so receivers de-duplicate; `webhook-timestamp` in seconds;
//! `webhook-signature` `v1,` + HMAC-SHA256 with the `whsec_` secret of `secret_file`
//! ([`switchyard_registry::sign_v1`]). A 2xx answer acks the event; anything else (another
//! status, a timeout, no connection) is retried after 1, 5, 30, 60 s, then every 5 minutes,
//! until the event ages out of `EVENTS` (30 days). Events of kinds not in `kinds`, and stored
//! bytes that are not an event, are acked without a request and counted.

use std::collections::BTreeSet;
use std::time::Duration;

use anyhow::Context;
use async_nats::jetstream::{self, AckKind, consumer::PullConsumer};
use futures::StreamExt;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use switchyard_registry::{WebhookSecret, sign_v1};
use switchyard_service::Metrics;
use switchyard_service::events::OpEvent;
use switchyard_topology::{ConsumerName, ResolvedTopology};
use tokio_util::sync::CancellationToken;

use crate::config::EventsWebhookSettings;

/// The delays before an undelivered event's next attempt, by the attempt that failed (the
/// last repeats).
pub const RETRY_DELAYS: [Duration; 5] = [
    Duration::from_secs(1),
    Duration::from_secs(5),
    Duration::from_secs(30),
    Duration::from_secs(60),
    Duration::from_secs(300),
];

/// Labels of the delivery counters.
#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct Outcome {
    outcome: &'static str,
}

/// Delivers operational events to one endpoint.
pub struct EventsWebhook {
    http: reqwest::Client,
    url: String,
    key: Vec<u8>,
    kinds: BTreeSet<String>,
    timeout: Duration,
    /// `switchyard_dlq_events_webhook_total{outcome="delivered|failed|skipped"}`.
    counts: Family<Outcome, Counter>,
}

impl std::fmt::Debug for EventsWebhook {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EventsWebhook")
            .field("url", &self.url)
            .field("kinds", &self.kinds)
            .finish_non_exhaustive()
    }
}

impl EventsWebhook {
    /// The delivery `settings` describe (validated by `DlqConfig::validate`), its secret read
    /// from `secret_file`; `None` when no `url` is set. Its counters are registered in
    /// `metrics`.
    ///
    /// Errors: the secret file cannot be read or holds no `whsec_` secret; the HTTP client
    /// cannot be built.
    pub fn new(
        settings: &EventsWebhookSettings,
        metrics: &Metrics,
    ) -> anyhow::Result<Option<Self>> {
        if !settings.enabled() {
            return Ok(None);
        }
        let path = &settings.secret_file;
        let text = std::fs::read_to_string(path).with_context(|| {
            format!(
                "invalid setting events_webhook.secret_file: reading {}",
                path.display()
            )
        })?;
        let key = WebhookSecret(text.trim().to_owned())
            .key()
            .with_context(|| {
                format!(
                    "invalid setting events_webhook.secret_file: {} holds no signing secret \
                 (whsec_ + base64)",
                    path.display()
                )
            })?;
        // Every Switchyard binary uses rustls's ring provider; losing a race with another
        // installer is fine.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let http = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(concat!("switchyard-dlq/", env!("CARGO_PKG_VERSION")))
            .build()
            .context("building the events webhook's HTTP client")?;
        let counts = Family::<Outcome, Counter>::default();
        metrics.register(
            "dlq_events_webhook",
            "Operational events by what the events webhook did with them (delivered, failed \
             attempts, skipped)",
            counts.clone(),
        );
        Ok(Some(Self {
            http,
            url: settings.url.clone(),
            key,
            kinds: settings.kinds.iter().cloned().collect(),
            timeout: Duration::from_millis(settings.timeout_ms),
            counts,
        }))
    }

    /// Opens the `events-webhook` consumer, creating it when no instance has yet.
    ///
    /// Errors: the consumer is not declared, or JetStream refused.
    pub async fn consumer(
        js: &jetstream::Context,
        topology: &ResolvedTopology,
    ) -> anyhow::Result<PullConsumer> {
        let declared = topology
            .consumer(ConsumerName::EventsWebhook)
            .context("the topology declares no events-webhook consumer")?;
        let durable = ConsumerName::EventsWebhook.base();
        js.get_stream_no_info(&declared.stream)
            .await
            .with_context(|| format!("opening stream {}", declared.stream))?
            .get_or_create_consumer(durable, declared.config.clone())
            .await
            .with_context(|| format!("opening consumer {}/{durable}", declared.stream))
    }

    /// Delivers events from `consumer` until `shutdown`, one at a time: each is fetched only
    /// when the one before was answered, so none waits in a buffer past the consumer's ack
    /// wait while a slow endpoint answers (it would be delivered again). A read that fails is
    /// tried again after a pause.
    pub async fn run(&self, consumer: PullConsumer, shutdown: CancellationToken) {
        loop {
            let fetched = tokio::select! {
                _ = shutdown.cancelled() => return,
                fetched = next_event(&consumer) => fetched,
            };
            match fetched {
                Ok(Some(message)) => self.handle(&message).await,
                // Nothing new within the fetch's wait.
                Ok(None) => {}
                Err(error) => {
                    tracing::warn!(%error, "reading events for the events webhook failed; retried");
                    if !pause(&shutdown).await {
                        return;
                    }
                }
            }
        }
    }

    async fn handle(&self, message: &jetstream::Message) {
        let (sequence, delivered) = message
            .info()
            .map(|i| (i.stream_sequence, i.delivered))
            .unwrap_or((0, 1));
        let event = match serde_json::from_slice::<OpEvent>(&message.payload) {
            Ok(event) => event,
            Err(error) => {
                tracing::warn!(%error, sequence, subject = %message.subject, "not an operational event; skipped by the events webhook");
                self.count("skipped");
                return settle(message, AckKind::Ack).await;
            }
        };
        if !self.kinds.is_empty() && !self.kinds.contains(&event.kind) {
            self.count("skipped");
            return settle(message, AckKind::Ack).await;
        }
        let id = if event.id.is_empty() {
            format!("evt_{sequence}")
        } else {
            event.id.clone()
        };
        match self.post(&id, &message.payload).await {
            Ok(()) => {
                tracing::debug!(%id, kind = %event.kind, "event delivered to the events webhook");
                self.count("delivered");
                settle(message, AckKind::Ack).await;
            }
            Err(reason) => {
                let attempt = usize::try_from(delivered).unwrap_or(usize::MAX).max(1);
                let delay = RETRY_DELAYS[(attempt - 1).min(RETRY_DELAYS.len() - 1)];
                tracing::warn!(%id, kind = %event.kind, attempt, ?delay, %reason, "the events webhook did not take an event; retried");
                self.count("failed");
                settle(message, AckKind::Nak(Some(delay))).await;
            }
        }
    }

    /// One signed POST; `Err` says why it was not taken.
    async fn post(&self, id: &str, payload: &[u8]) -> Result<(), String> {
        let timestamp = time::OffsetDateTime::now_utc().unix_timestamp();
        let sent = self
            .http
            .post(&self.url)
            .timeout(self.timeout)
            .header("content-type", "application/json")
            .header("webhook-id", id)
            .header("webhook-timestamp", timestamp.to_string())
            .header(
                "webhook-signature",
                sign_v1(&self.key, id, timestamp, payload),
            )
            .body(payload.to_vec())
            .send()
            .await;
        match sent {
            Ok(response) if response.status().is_success() => Ok(()),
            Ok(response) => Err(format!("answered {}", response.status())),
            // Without the URL: it may carry credentials.
            Err(error) => Err(error.without_url().to_string()),
        }
    }

    fn count(&self, outcome: &'static str) {
        self.counts.get_or_create(&Outcome { outcome }).inc();
    }
}

/// The next event, waiting up to [`FETCH_WAIT`]; `None` when none came.
async fn next_event(consumer: &PullConsumer) -> anyhow::Result<Option<jetstream::Message>> {
    let mut batch = consumer
        .batch()
        .max_messages(1)
        .expires(FETCH_WAIT)
        .messages()
        .await
        .map_err(|e| anyhow::anyhow!(e))?;
    match batch.next().await {
        Some(Ok(message)) => Ok(Some(message)),
        Some(Err(error)) => Err(anyhow::anyhow!(error)),
        None => Ok(None),
    }
}

/// How long one fetch waits for an event.
pub const FETCH_WAIT: Duration = Duration::from_secs(5);

/// Acks or naks; a failure leaves the event to be redelivered after the ack wait.
async fn settle(message: &jetstream::Message, kind: AckKind) {
    if let Err(error) = message.ack_with(kind).await {
        tracing::warn!(%error, "settling an event of the events webhook failed; it comes back");
    }
}

/// Waits a moment before reading again; `false` on shutdown.
async fn pause(shutdown: &CancellationToken) -> bool {
    tokio::select! {
        _ = shutdown.cancelled() => false,
        _ = tokio::time::sleep(Duration::from_secs(1)) => true,
    }
}
