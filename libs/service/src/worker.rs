//! The consume loop every stage runs. A service's [`Handler`] decides; this loop settles:
//! [`Outcome`] → ack / nak-with-delay / DLQ record then ack, in exactly one place.
//!
//! Fetches only as many messages as it has free handler slots (so nothing waits in a local
//! buffer holding an ack-pending slot), and on shutdown stops fetching and waits for every
//! in-flight message to settle.

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_nats::jetstream::{self, AckKind, consumer::PullConsumer};
use futures::StreamExt;
use switchyard_dlq::DeadLetter;
use switchyard_keys::TenantId;
use switchyard_subjects::Namespace;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::Metrics;

/// What a handler decided for one message.
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
    /// A transient failure of our own infrastructure (NATS, KV): nak with this delay. The
    /// message's delivery count grows, so this is only for short outages.
    Retry {
        /// How long JetStream should wait before redelivering.
        after: Duration,
        /// Why, for the log.
        reason: String,
    },
    /// Give up: write this DLQ record, then ack.
    DeadLetter(Box<DeadLetter>),
}

impl Outcome {
    fn label(&self) -> &'static str {
        match self {
            Outcome::Forwarded => "forwarded",
            Outcome::Delivered => "delivered",
            Outcome::Duplicate => "duplicate",
            Outcome::Delayed => "delayed",
            Outcome::Retry { .. } => "retry",
            Outcome::DeadLetter(_) => "dead_lettered",
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

/// A stage's logic for one message.
pub trait Handler: Send + Sync + 'static {
    /// Decides what happens to `msg`. Must not panic on any input.
    fn handle(&self, msg: &jetstream::Message) -> impl Future<Output = Handled> + Send;
}

/// How the loop runs.
#[derive(Debug, Clone)]
pub struct WorkerSettings {
    /// Messages handled at once.
    pub concurrency: usize,
    /// How long one fetch waits for messages.
    pub fetch_wait: Duration,
    /// Delay before redelivery when writing a DLQ record fails.
    pub dlq_retry_after: Duration,
    /// How long a transient failure (`Outcome::Retry`) is retried in place — the message
    /// kept with progress acks, the handler run again after each delay — before it is handed
    /// back to JetStream. A NATS leader election or a short outage then costs no delivery
    /// attempt, so it cannot exhaust the consumer's `max_deliver`.
    pub retry_in_place: Duration,
}

impl Default for WorkerSettings {
    fn default() -> Self {
        Self {
            concurrency: 64,
            fetch_wait: Duration::from_secs(1),
            dlq_retry_after: Duration::from_secs(5),
            retry_in_place: Duration::from_secs(60),
        }
    }
}

/// The consume loop of one stage.
pub struct Worker<H> {
    handler: Arc<H>,
    js: jetstream::Context,
    ns: Namespace,
    metrics: Arc<Metrics>,
    settings: WorkerSettings,
}

impl<H: Handler> Worker<H> {
    /// A worker for `handler`, writing DLQ records with `js` in `ns`.
    pub fn new(
        handler: Arc<H>,
        js: jetstream::Context,
        ns: Namespace,
        metrics: Arc<Metrics>,
        settings: WorkerSettings,
    ) -> Self {
        Self {
            handler,
            js,
            ns,
            metrics,
            settings,
        }
    }

    /// Runs until `shutdown` is cancelled, then drains in-flight messages and returns.
    pub async fn run(self, consumer: PullConsumer, shutdown: CancellationToken) {
        let slots = Arc::new(Semaphore::new(self.settings.concurrency.max(1)));
        let shared = Arc::new(self);
        let mut tasks = JoinSet::new();
        let mut backoff = Duration::from_millis(100);
        while !shutdown.is_cancelled() {
            while tasks.try_join_next().is_some() {}
            // Wait for at least one free slot (or shutdown) before fetching.
            let permit = tokio::select! {
                _ = shutdown.cancelled() => break,
                permit = slots.clone().acquire_owned() => match permit { Ok(p) => p, Err(_) => break },
            };
            let free = slots.available_permits() + 1;
            drop(permit);
            let batch = consumer
                .fetch()
                .max_messages(free)
                .expires(shared.settings.fetch_wait)
                .messages()
                .await;
            let mut batch = match batch {
                Ok(batch) => {
                    backoff = Duration::from_millis(100);
                    batch
                }
                Err(error) => {
                    tracing::warn!(%error, ?backoff, "fetch failed; retrying");
                    tokio::select! {
                        _ = shutdown.cancelled() => break,
                        _ = tokio::time::sleep(backoff) => {}
                    }
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                    continue;
                }
            };
            while let Some(next) = batch.next().await {
                let msg = match next {
                    Ok(msg) => msg,
                    Err(error) => {
                        tracing::debug!(%error, "fetch ended");
                        break;
                    }
                };
                let Ok(permit) = slots.clone().acquire_owned().await else {
                    break;
                };
                let worker = shared.clone();
                tasks.spawn(async move {
                    worker.process(msg).await;
                    drop(permit);
                });
            }
        }
        tracing::info!(in_flight = tasks.len(), "draining");
        while tasks.join_next().await.is_some() {}
        tracing::info!("drained");
    }

    async fn process(&self, msg: jetstream::Message) {
        let started = Instant::now();
        self.metrics.in_flight.inc();
        let mut handled = self.handler.handle(&msg).await;
        // Transient failures are retried in place (the handler is idempotent: hand-offs carry
        // deterministic ids), keeping the message with progress acks.
        while let Outcome::Retry { after, reason } = &handled.outcome {
            if started.elapsed() + *after > self.settings.retry_in_place {
                break;
            }
            tracing::warn!(%reason, ?after, subject = %msg.subject, "transient failure; retrying in place");
            if let Err(error) = msg.ack_with(AckKind::Progress).await {
                tracing::debug!(%error, "progress ack failed");
            }
            tokio::time::sleep(*after).await;
            handled = self.handler.handle(&msg).await;
        }
        let tenant = handled
            .tenant
            .as_ref()
            .map_or("_", TenantId::as_str)
            .to_owned();
        self.metrics.count_received(&tenant);
        self.settle(&msg, &tenant, handled.outcome).await;
        self.metrics.in_flight.dec();
        self.metrics
            .latency
            .observe(started.elapsed().as_secs_f64());
    }

    /// The one place outcomes become acknowledgements.
    async fn settle(&self, msg: &jetstream::Message, tenant: &str, outcome: Outcome) {
        let label = outcome.label();
        let result = match outcome {
            Outcome::Forwarded | Outcome::Delivered | Outcome::Duplicate | Outcome::Delayed => {
                msg.ack().await
            }
            Outcome::Retry { after, reason } => {
                tracing::warn!(%reason, ?after, subject = %msg.subject, "transient failure; redelivery requested");
                msg.ack_with(AckKind::Nak(Some(after))).await
            }
            Outcome::DeadLetter(record) => {
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
                        msg.ack().await
                    }
                    Err(error) => {
                        tracing::error!(%error, "writing the dlq record failed; the message will be redelivered");
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
}
