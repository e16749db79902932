//! The reference: raw JetStream, one hop (publish to A; a relay consumes A and republishes to
//! B; a consumer reads B) — the least any JetStream pipeline stage can cost.

use std::future::IntoFuture;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use async_nats::HeaderMap;
use async_nats::jetstream::{self, consumer::pull, stream};
use futures::StreamExt;

use crate::Args;
use crate::report::{Figures, peak_rss};

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

/// Publishes `args.messages` messages with up to `args.in_flight` acks outstanding, paced at
/// `args.rate` per second when it is set.
pub async fn publish_all(
    js: &jetstream::Context,
    args: &Args,
    payload: bytes::Bytes,
    message: impl Fn(usize) -> (String, HeaderMap),
) -> anyhow::Result<()> {
    let (count, in_flight) = (args.messages, args.in_flight);
    let mut pending = futures::stream::FuturesUnordered::new();
    let started = tokio::time::Instant::now();
    for i in 0..count {
        if args.rate > 0.0 {
            tokio::time::sleep_until(started + Duration::from_secs_f64(i as f64 / args.rate)).await;
        }
        let (subject, mut h) = message(i);
        h.insert(SENT, now_nanos().to_string());
        pending.push(
            js.publish_with_headers(subject, h, payload.clone())
                .await?
                .into_future(),
        );
        while pending.len() >= in_flight {
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

/// Runs the raw reference.
pub async fn run(server: &switchyard_testkit::NatsServer, args: &Args) -> anyhow::Result<Figures> {
    let client = server.client().await;
    let js = jetstream::new(client.clone());
    for (name, subject) in [("BENCH_A", "bench.a.>"), ("BENCH_B", "bench.b.>")] {
        js.create_stream(stream::Config {
            name: name.into(),
            subjects: vec![subject.into()],
            retention: stream::RetentionPolicy::WorkQueue,
            ..Default::default()
        })
        .await?;
    }
    let a = js.get_stream("BENCH_A").await?;
    let relay_consumer = a
        .create_consumer(pull::Config {
            durable_name: Some("relay".into()),
            ..Default::default()
        })
        .await?;
    let relay_js = js.clone();
    let relay = tokio::spawn(async move {
        let mut messages = relay_consumer.messages().await?;
        while let Some(msg) = messages.next().await {
            let msg = msg?;
            let subject = msg.subject.replacen("bench.a.", "bench.b.", 1);
            let headers = msg.headers.clone().unwrap_or_default();
            relay_js
                .publish_with_headers(subject, headers, msg.payload.clone())
                .await?
                .await?;
            msg.ack().await.map_err(|e| anyhow::anyhow!(e))?;
        }
        anyhow::Ok(())
    });
    let b = js.get_stream("BENCH_B").await?;
    let reader = b
        .create_consumer(pull::Config {
            durable_name: Some("reader".into()),
            ..Default::default()
        })
        .await?;
    let count = args.messages;
    let collect = tokio::spawn(async move {
        let mut latencies = Vec::with_capacity(count);
        let mut messages = reader.messages().await?;
        let mut last = Instant::now();
        while latencies.len() < count {
            let Ok(Some(msg)) =
                tokio::time::timeout(Duration::from_secs(30), messages.next()).await
            else {
                break;
            };
            let msg = msg?;
            latencies.push(latency_of(msg.headers.as_ref()).unwrap_or_default());
            msg.ack().await.map_err(|e| anyhow::anyhow!(e))?;
            last = Instant::now();
        }
        anyhow::Ok((latencies, last))
    });

    let payload = bytes::Bytes::from(vec![b'x'; args.payload_bytes]);
    let started = Instant::now();
    publish_all(&js, args, payload, |i| {
        (
            format!("bench.a.{}", i % args.tenants.max(1)),
            HeaderMap::new(),
        )
    })
    .await?;
    let (mut latencies, last) = collect.await??;
    relay.abort();
    latencies.sort();
    Ok(Figures {
        name: "raw JetStream, 1 hop".into(),
        received: latencies.len(),
        elapsed: last.duration_since(started),
        latencies,
        peak_rss: server
            .pid()
            .and_then(peak_rss)
            .map(|b| vec![("nats-server (raw run)".to_owned(), b)])
            .unwrap_or_default(),
        notes: Vec::new(),
    })
}
