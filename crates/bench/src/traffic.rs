//! What every run shares: the send-time header, the paced or unpaced publisher, and the sink
//! that answers deliveries and measures their end-to-end latency.

use std::future::IntoFuture;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use async_nats::HeaderMap;
use async_nats::jetstream;
use futures::StreamExt;

use crate::Args;

/// The header carrying the send time (nanoseconds since the epoch).
pub const SENT: &str = "Bench-Sent";

/// Nanoseconds since the epoch.
pub fn now_nanos() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0)
}

/// The latency of a message stamped with [`SENT`].
pub fn latency_of(headers: Option<&HeaderMap>) -> Option<Duration> {
    let sent: u128 = headers?.get(SENT)?.as_str().parse().ok()?;
    Some(Duration::from_nanos(now_nanos().saturating_sub(sent) as u64))
}

/// Bytes of payload a publisher keeps awaiting acks, or a relay in flight, at most, whatever
/// `--in-flight` and `--window` say (512 messages of 1 MiB would outlast any ack timeout).
pub const IN_FLIGHT_BYTES: usize = 8 * 1024 * 1024;

/// JetStream on `client`, with a publish-ack timeout long enough for large messages (30 s).
pub fn jetstream(client: &async_nats::Client) -> jetstream::Context {
    jetstream::ContextBuilder::new()
        .timeout(Duration::from_secs(30))
        .build(client.clone())
}

/// What a run publishes: how many messages, how big, how fast.
#[derive(Debug, Clone)]
pub struct Traffic {
    /// Messages.
    pub messages: usize,
    /// Payload bytes of each.
    pub payload_bytes: usize,
    /// Publishes awaiting their ack at once.
    pub in_flight: usize,
    /// Messages per second (0: as fast as acks come back).
    pub rate: f64,
    /// Messages each reference relay keeps in flight.
    pub window: usize,
}

impl Traffic {
    /// The traffic `args` asks for, with `payload_bytes` per message.
    pub fn of(args: &Args, payload_bytes: usize) -> Self {
        Self {
            messages: args.messages_for(payload_bytes),
            payload_bytes,
            in_flight: args
                .in_flight
                .min(IN_FLIGHT_BYTES / payload_bytes.max(1))
                .max(1),
            rate: args.rate,
            window: args
                .window
                .min(IN_FLIGHT_BYTES / payload_bytes.max(1))
                .max(1),
        }
    }

    /// The payload every message carries.
    pub fn payload(&self) -> bytes::Bytes {
        bytes::Bytes::from(vec![b'x'; self.payload_bytes])
    }
}

/// Publishes `traffic.messages` messages with up to `traffic.in_flight` acks outstanding,
/// paced at `traffic.rate` per second when it is set. `message(i)` gives the i-th subject and
/// headers; the send time is added.
pub async fn publish_all(
    js: &jetstream::Context,
    traffic: &Traffic,
    message: impl Fn(usize) -> (String, HeaderMap),
) -> anyhow::Result<()> {
    let payload = traffic.payload();
    let mut pending = futures::stream::FuturesUnordered::new();
    let started = tokio::time::Instant::now();
    for i in 0..traffic.messages {
        if traffic.rate > 0.0 {
            tokio::time::sleep_until(started + Duration::from_secs_f64(i as f64 / traffic.rate))
                .await;
        }
        let (subject, mut h) = message(i);
        h.insert(SENT, now_nanos().to_string());
        pending.push(
            js.publish_with_headers(subject, h, payload.clone())
                .await?
                .into_future(),
        );
        while pending.len() >= traffic.in_flight.max(1) {
            if let Some(ack) = pending.next().await {
                ack?;
            }
        }
    }
    while let Some(ack) = pending.next().await {
        ack?;
    }
    Ok(())
}

/// A sink on core NATS: answers every request on its subscription (a delivery's reply is its
/// acknowledgement) and records each message's latency.
pub struct Sink {
    subscription: async_nats::Subscriber,
    client: async_nats::Client,
}

impl Sink {
    /// Subscribes to `subject` (flushed, so nothing published after this is missed).
    pub async fn subscribe(client: &async_nats::Client, subject: &str) -> anyhow::Result<Self> {
        let subscription = client.subscribe(subject.to_owned()).await?;
        client.flush().await?;
        Ok(Self {
            subscription,
            client: client.clone(),
        })
    }

    /// Answers and drops `n` messages (warm-up), failing after `wait` without one (the error
    /// says how many had come, and which subject came last: a stall of one tenant shows as
    /// all but a few).
    pub async fn skip(&mut self, n: usize, wait: Duration) -> anyhow::Result<()> {
        let mut last: Option<String> = None;
        for got in 0..n {
            let msg = tokio::time::timeout(wait, self.subscription.next())
                .await
                .ok()
                .flatten()
                .ok_or_else(|| {
                    anyhow::anyhow!(
                        "the warm-up messages did not come through: {got} of {n} came, then none \
                         for {} s (last on {})",
                        wait.as_secs(),
                        last.as_deref().unwrap_or("nothing")
                    )
                })?;
            last = Some(msg.subject.to_string());
            if let Some(reply) = msg.reply {
                self.client.publish(reply, bytes::Bytes::new()).await?;
            }
        }
        Ok(())
    }

    /// Collects `count` messages in a task (or stops after `idle` without one): their
    /// latencies, and when the last came.
    pub fn collect(
        mut self,
        count: usize,
        idle: Duration,
    ) -> tokio::task::JoinHandle<(Vec<Duration>, Instant)> {
        tokio::spawn(async move {
            let mut latencies = Vec::with_capacity(count);
            let mut last = Instant::now();
            while latencies.len() < count {
                let Ok(Some(msg)) = tokio::time::timeout(idle, self.subscription.next()).await
                else {
                    break;
                };
                if let Some(reply) = msg.reply.clone() {
                    let _ = self.client.publish(reply, bytes::Bytes::new()).await;
                }
                latencies.push(latency_of(msg.headers.as_ref()).unwrap_or_default());
                last = Instant::now();
            }
            (latencies, last)
        })
    }
}
