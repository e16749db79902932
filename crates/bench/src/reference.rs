//! The references the pipeline is measured against, on the same server(s) in the same
//! invocation: what JetStream itself can do for the same work, written as well as we know how.
//!
//! Both are built from one relay: it reads a work-queue stream through a pull consumer and
//! keeps up to `window` messages in flight, each acked only after its own next step is
//! confirmed — the pipeline's guarantee (every hand-off acknowledged by the next stream before
//! the input is acked), without its features.
//!
//! - [`one_hop`]: publish to A; one relay hands each message on to B; a reader acks B.
//! - [`ideal`]: the **ideal 4-hop pipeline** — the same work Switchyard does per message:
//!   publish to stream 1; relay 1→2; relay 2→3 after one KV create with a TTL (the idempotency
//!   claim); relay 3→4; relay 4 → a core NATS request to the sink, whose reply is awaited, then
//!   a confirmed ack (`double_ack`, as egress acks a delivery). Every hand-off carries a
//!   per-hop `Nats-Msg-Id` into a stream with a 5-minute duplicate window, as the pipeline's
//!   do. Each relay has its own connection, all in this one process.

use std::time::{Duration, Instant};

use async_nats::HeaderMap;
use async_nats::jetstream::{self, consumer::PullConsumer, consumer::pull, kv, stream};
use futures::StreamExt;
use futures::stream::FuturesUnordered;

use crate::report::{Figures, cpu_per_message, cpu_times};
use crate::traffic::{Sink, Traffic, latency_of, publish_all};

/// Where a reference runs.
pub struct Target {
    /// The server URLs (every node of a cluster).
    pub urls: Vec<String>,
    /// Replicas of every stream and bucket (3 on a cluster).
    pub replicas: usize,
    /// Names streams, subjects and buckets apart from other runs on the same server.
    pub run: String,
    /// The server processes (name, pid), whose CPU time is measured with this one's.
    pub processes: Vec<(String, u32)>,
}

impl Target {
    /// A new connection (each relay has its own, as each service does). Its writes are not
    /// coalesced (`ConnectOptions::coalesce_writes(false)`, the client's upstream behaviour):
    /// each relay sends a whole pulled batch before it awaits, so the yield the services'
    /// connections make before writing would only add a scheduler round to every round trip
    /// (measured: docs/performance.md, "Writes coalesced").
    async fn connect(&self) -> anyhow::Result<async_nats::Client> {
        let addrs = self
            .urls
            .iter()
            .map(|u| u.parse::<async_nats::ServerAddr>())
            .collect::<Result<Vec<_>, _>>()?;
        Ok(async_nats::ConnectOptions::new()
            .coalesce_writes(false)
            .connect(addrs)
            .await?)
    }
}

/// Stops `relays`, failing with the first error one of them ended with.
async fn stop(relays: Vec<tokio::task::JoinHandle<anyhow::Result<()>>>) -> anyhow::Result<()> {
    for relay in relays {
        if relay.is_finished() {
            relay.await??;
        } else {
            relay.abort();
        }
    }
    Ok(())
}

/// What a relay does with each message it reads.
enum Step {
    /// Publish to `to` (the subject with prefix `from` replaced), await the stream's ack, then
    /// ack the input; first create the claim key in `claim` when there is one.
    Forward {
        from: String,
        to: String,
        hop: usize,
        claim: Option<Box<kv::Store>>,
    },
    /// Request on `to` (a core NATS sink), await the reply, then a confirmed ack.
    Deliver { from: String, to: String },
}

impl Step {
    async fn apply(
        &self,
        js: &jetstream::Context,
        client: &async_nats::Client,
        msg: jetstream::Message,
    ) -> anyhow::Result<()> {
        match self {
            Step::Forward {
                from,
                to,
                hop,
                claim,
            } => {
                let mut h = msg.headers.clone().unwrap_or_default();
                // The producer's id, without an earlier hop's suffix.
                let id = h
                    .get("Nats-Msg-Id")
                    .and_then(|v| v.as_str().split(':').next())
                    .unwrap_or_default()
                    .to_owned();
                if let Some(kv) = claim {
                    let key = format!("{}.{}", msg.subject.rsplit('.').next().unwrap_or("_"), id);
                    // A redelivered message finds its own claim and is handed on again, as the
                    // idempotency stage hands on the same message seen again.
                    match kv
                        .create_with_ttl(key, vec![0u8; 16].into(), Duration::from_secs(86_400))
                        .await
                    {
                        Ok(_) => {}
                        Err(e) if e.kind() == kv::CreateErrorKind::AlreadyExists => {}
                        Err(e) => return Err(e.into()),
                    }
                }
                h.insert("Nats-Msg-Id", format!("{id}:{hop}"));
                let subject = msg.subject.replacen(from.as_str(), to, 1);
                js.publish_with_headers(subject, h, msg.payload.clone())
                    .await?
                    .await?;
                msg.ack().await.map_err(|e| anyhow::anyhow!(e))?;
            }
            Step::Deliver { from, to } => {
                let h = msg.headers.clone().unwrap_or_default();
                let subject = msg.subject.replacen(from.as_str(), to, 1);
                client
                    .request_with_headers(subject, h, msg.payload.clone())
                    .await?;
                confirmed_ack(&msg).await?;
            }
        }
        Ok(())
    }
}

/// Acks `msg` and awaits the server's confirmation (`double_ack`), tried again as egress tries
/// a delivery's confirmed ack: with `SettleSettings::default().confirm_ack`'s delays (100 ms
/// doubling to 1 s, for up to 10 s) and each try bounded by its `confirm_ack_try` (2 s). A
/// `503 No Responders` (the consumer's leader moving on a cluster) or a lost confirmation is
/// tried again; acking twice is harmless, as the server confirms an ack for a message it no
/// longer holds as pending.
///
/// # Errors
/// The last try's error once the 10 s have passed.
async fn confirmed_ack(msg: &jetstream::Message) -> anyhow::Result<()> {
    let settings = switchyard_service::SettleSettings::default();
    let mut backoff = settings.confirm_ack.backoff();
    loop {
        let error = match tokio::time::timeout(settings.confirm_ack_try, msg.double_ack()).await {
            Ok(Ok(())) => return Ok(()),
            Ok(Err(e)) => anyhow::anyhow!(e),
            Err(elapsed) => anyhow::anyhow!(elapsed),
        };
        match backoff.next_delay() {
            Some(delay) => tokio::time::sleep(delay).await,
            None => return Err(error.context("the confirmed ack of a delivery")),
        }
    }
}

/// Reads `consumer` with up to `window` messages in flight, applying `step` to each, until the
/// task is aborted.
async fn relay(
    consumer: PullConsumer,
    client: async_nats::Client,
    step: Step,
    window: usize,
) -> anyhow::Result<()> {
    let js = crate::traffic::jetstream(&client);
    let mut input = consumer
        .stream()
        .max_messages_per_batch(window)
        .max_bytes_per_batch(crate::traffic::IN_FLIGHT_BYTES)
        .messages()
        .await?;
    let mut pending = FuturesUnordered::new();
    loop {
        tokio::select! {
            Some(done) = pending.next(), if !pending.is_empty() => done?,
            next = input.next(), if pending.len() < window => match next {
                Some(msg) => pending.push(step.apply(&js, &client, msg.map_err(|e| anyhow::anyhow!(e))?)),
                None => break,
            },
        }
    }
    Ok(())
}

/// Creates work-queue stream `name` on `subject` (5-minute duplicate window) and a durable
/// pull consumer on it.
async fn stream_and_consumer(
    js: &jetstream::Context,
    name: &str,
    subject: &str,
    replicas: usize,
) -> anyhow::Result<PullConsumer> {
    let stream = js
        .create_stream(stream::Config {
            name: name.into(),
            subjects: vec![subject.into()],
            retention: stream::RetentionPolicy::WorkQueue,
            duplicate_window: Duration::from_secs(300),
            num_replicas: replicas,
            max_message_size: 2 * 1024 * 1024 - 4096,
            ..Default::default()
        })
        .await?;
    Ok(stream
        .create_consumer(pull::Config {
            durable_name: Some("relay".into()),
            max_ack_pending: 4096,
            ..Default::default()
        })
        .await?)
}

/// Publishes the traffic to `first.<tenant>` (one `Nats-Msg-Id` each) and collects what the
/// `sink` (or, without one, `reader`) receives.
async fn drive(
    target: &Target,
    js: &jetstream::Context,
    traffic: &Traffic,
    tenants: usize,
    first: &str,
    collected: tokio::task::JoinHandle<anyhow::Result<(Vec<Duration>, Instant)>>,
) -> anyhow::Result<(Vec<Duration>, Duration, String)> {
    let processes: Vec<(String, u32)> = target
        .processes
        .iter()
        .cloned()
        .chain([(
            "bench (relays, publisher, sink)".to_owned(),
            std::process::id(),
        )])
        .collect();
    let cpu_before = cpu_times(&processes);
    let started = Instant::now();
    publish_all(js, traffic, |i| {
        let mut h = HeaderMap::new();
        h.insert("Nats-Msg-Id", format!("m{i}"));
        (format!("{first}.t{}", i % tenants.max(1)), h)
    })
    .await?;
    let (mut latencies, last) = collected.await??;
    latencies.sort();
    let cpu = cpu_per_message(&cpu_before, &cpu_times(&processes), latencies.len());
    Ok((latencies, last.duration_since(started), cpu))
}

/// One windowed hop: publish to A, one relay A → B, a reader acking B.
pub async fn one_hop(
    target: &Target,
    traffic: &Traffic,
    tenants: usize,
) -> anyhow::Result<Figures> {
    let window = traffic.window;
    let client = target.connect().await?;
    let js = crate::traffic::jetstream(&client);
    let run = &target.run;
    let (a, b) = (format!("bench_{run}_hop_a"), format!("bench_{run}_hop_b"));
    // The relay and the reader each pull, ack and publish on a connection of their own.
    let relay_client = target.connect().await?;
    let relay_in = stream_and_consumer(
        &crate::traffic::jetstream(&relay_client),
        &format!("BENCH_{run}_HOP_A"),
        &format!("{a}.>"),
        target.replicas,
    )
    .await?;
    let reader = stream_and_consumer(
        &crate::traffic::jetstream(&target.connect().await?),
        &format!("BENCH_{run}_HOP_B"),
        &format!("{b}.>"),
        target.replicas,
    )
    .await?;
    let step = Step::Forward {
        from: a.clone(),
        to: b,
        hop: 1,
        claim: None,
    };
    let relay = tokio::spawn(relay(relay_in, relay_client, step, window));
    let count = traffic.messages;
    let collect = tokio::spawn(async move {
        let mut latencies = Vec::with_capacity(count);
        let mut messages = reader
            .stream()
            .max_messages_per_batch(window)
            .max_bytes_per_batch(crate::traffic::IN_FLIGHT_BYTES)
            .messages()
            .await?;
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
    let result = drive(target, &js, traffic, tenants, &a, collect).await;
    stop(vec![relay]).await?;
    let (latencies, elapsed, cpu) = result?;
    for name in ["A", "B"] {
        let _ = js.delete_stream(format!("BENCH_{run}_HOP_{name}")).await;
    }
    let mut figures = Figures::new(
        "JetStream, 1 hop (windowed relay)",
        traffic,
        latencies,
        elapsed,
    );
    figures.notes.push(format!("{}: {cpu}", figures.name));
    Ok(figures)
}

/// The ideal 4-hop pipeline (see the module documentation).
pub async fn ideal(target: &Target, traffic: &Traffic, tenants: usize) -> anyhow::Result<Figures> {
    let window = traffic.window;
    let client = target.connect().await?;
    let js = crate::traffic::jetstream(&client);
    let run = &target.run;
    let prefix = |hop: usize| format!("bench_{run}_ideal_{hop}");
    let claims = format!("bench_{run}_claims");
    js.create_key_value(kv::Config {
        bucket: claims.clone(),
        history: 1,
        num_replicas: target.replicas,
        limit_markers: Some(Duration::from_secs(60)),
        ..Default::default()
    })
    .await?;
    let sink_subject = format!("bench_{run}_sink");
    // The sink has a connection of its own, as a real one would.
    let sink = Sink::subscribe(&target.connect().await?, &format!("{sink_subject}.>")).await?;
    let mut relays = Vec::new();
    for hop in 1..=4 {
        // Each relay pulls, acks, creates its claims and publishes on a connection of its own.
        let relay_client = target.connect().await?;
        let relay_js = crate::traffic::jetstream(&relay_client);
        let consumer = stream_and_consumer(
            &relay_js,
            &format!("BENCH_{run}_IDEAL_{hop}"),
            &format!("{}.>", prefix(hop)),
            target.replicas,
        )
        .await?;
        let step = if hop == 4 {
            Step::Deliver {
                from: prefix(hop),
                to: sink_subject.clone(),
            }
        } else {
            let claim = match hop {
                2 => Some(Box::new(relay_js.get_key_value(&claims).await?)),
                _ => None,
            };
            Step::Forward {
                from: prefix(hop),
                to: prefix(hop + 1),
                hop,
                claim,
            }
        };
        relays.push(tokio::spawn(relay(consumer, relay_client, step, window)));
    }
    let collect = sink.collect(traffic.messages, Duration::from_secs(60));
    let collect = tokio::spawn(async move { anyhow::Ok(collect.await?) });
    let result = drive(target, &js, traffic, tenants, &prefix(1), collect).await;
    stop(relays).await?;
    let (latencies, elapsed, cpu) = result?;
    for hop in 1..=4 {
        let _ = js.delete_stream(format!("BENCH_{run}_IDEAL_{hop}")).await;
    }
    let _ = js.delete_key_value(&claims).await;
    let mut figures = Figures::new(crate::report::IDEAL, traffic, latencies, elapsed);
    figures.notes.push(format!("{}: {cpu}", figures.name));
    Ok(figures)
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::Ordering;

    use super::*;
    use switchyard_testkit::NatsServer;

    /// The next message `consumer` delivers.
    async fn fetch_one(consumer: &PullConsumer) -> jetstream::Message {
        consumer
            .fetch()
            .max_messages(1)
            .messages()
            .await
            .expect("fetch")
            .next()
            .await
            .expect("one message")
            .expect("a message")
    }

    /// The relay's confirmed ack outlives a consumer that is answered by `503 No Responders` for
    /// a while (as one is while its leader moves on a cluster): it is tried again and confirmed
    /// once the consumer answers, instead of ending the run.
    #[tokio::test]
    async fn a_confirmed_ack_that_meets_no_consumer_is_tried_again_until_confirmed() {
        let server = NatsServer::start().await;
        let relay_client = server.client().await;
        let admin = jetstream::new(server.client().await);
        let stream = admin
            .create_stream(stream::Config {
                name: "RELAYED".into(),
                subjects: vec!["relayed.>".into()],
                retention: stream::RetentionPolicy::WorkQueue,
                ..Default::default()
            })
            .await
            .expect("stream");
        let config = pull::Config {
            durable_name: Some("relay".into()),
            ..Default::default()
        };
        admin
            .publish("relayed.1", "m".into())
            .await
            .expect("publish")
            .await
            .expect("stored");
        let consumer: PullConsumer = crate::traffic::jetstream(&relay_client)
            .get_stream("RELAYED")
            .await
            .expect("stream seen by the relay")
            .create_consumer(config.clone())
            .await
            .expect("consumer");
        let msg = fetch_one(&consumer).await;
        stream
            .delete_consumer("relay")
            .await
            .expect("consumer deleted");

        let received = relay_client
            .statistics()
            .in_messages
            .load(Ordering::Relaxed);
        let ack = tokio::spawn(async move { confirmed_ack(&msg).await });
        // The first try's answer (nats-server's 503: nothing serves the consumer's ack subject).
        tokio::time::timeout(Duration::from_secs(5), async {
            while relay_client
                .statistics()
                .in_messages
                .load(Ordering::Relaxed)
                == received
            {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
        .await
        .expect("the first try was answered");

        // The consumer back, holding the message as delivered (as a new leader holds its
        // replicated state): it confirms the next try. A try that reaches it before it has
        // delivered the message again is ignored by nats-server (an ack past the consumer's
        // next sequence: no reply, the message left alone), and the one after confirms.
        let again: PullConsumer = stream
            .create_consumer(config)
            .await
            .expect("consumer again");
        let redelivered = fetch_one(&again).await;
        assert_eq!(redelivered.subject.as_str(), "relayed.1");
        tokio::time::timeout(Duration::from_secs(10), ack)
            .await
            .expect("confirmed within the retry window")
            .expect("the ack task")
            .expect("confirmed by the consumer made again");
        let info = stream.get_info().await.expect("stream info");
        assert_eq!(
            info.state.messages, 0,
            "the confirmed ack removed the message"
        );
    }
}
