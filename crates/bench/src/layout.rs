//! `switchyard-bench --consumer-layout`: what nats-server spends per message when many
//! tenants' work-queue messages are read by a consumer per tenant, laid out two ways:
//!
//! - **shared**: one stream for every tenant, a filtered durable consumer per tenant (the
//!   layout of `BACKPRESSURE` and its `backpressure-<tenant>` consumers);
//! - **per tenant**: one stream per tenant with one consumer on it (the layout of
//!   `INGRESS_<tenant>` and `ingress-worker`).
//!
//! For each count of `--tenants`, each layout runs on fresh servers (`--cluster`: R3): file
//! streams, consumers whose state is in memory (as Switchyard's per-tenant ones), each keeping a
//! pull of up to 16 messages waiting for 20 s and acking every message as it arrives (double
//! ack); `--messages` messages of the first `--payload-bytes` size are published round-robin
//! over the tenants (`--rate`, or as fast as `--in-flight` outstanding acks allow). Reported:
//! throughput and nats-server's CPU per message. This is JetStream alone, no Switchyard
//! service: it tells which layout nats-server carries more cheaply (`docs/performance.md`,
//! "Which layout nats-server carries cheaper").

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use async_nats::HeaderMap;
use async_nats::jetstream::{self, consumer, stream};
use futures::StreamExt;

use crate::Args;
use crate::report::{Machine, cpu_per_message, cpu_times};
use crate::servers::Servers;
use crate::traffic::{Traffic, jetstream as context, publish_all};

/// How long a consumer's pull waits (as Switchyard's per-tenant pulls).
const PULL_WAIT: Duration = Duration::from_secs(20);

/// Most messages one pull asks for (as Switchyard's per-tenant pulls).
const PULL_MAX: usize = 16;

/// How long the run may take past its last publish before it is called stuck.
const DRAIN_WAIT: Duration = Duration::from_secs(120);

/// The two layouts.
#[derive(Debug, Clone, Copy)]
enum LayoutKind {
    Shared,
    PerTenant,
}

impl LayoutKind {
    fn name(self) -> &'static str {
        match self {
            LayoutKind::Shared => "one shared stream, a consumer per tenant",
            LayoutKind::PerTenant => "a stream and a consumer per tenant",
        }
    }
}

/// Creates the layout's streams and consumers for `tenants` tenants on `replicas` replicas.
async fn provision(
    js: &jetstream::Context,
    kind: LayoutKind,
    tenants: usize,
    replicas: usize,
) -> anyhow::Result<Vec<consumer::PullConsumer>> {
    let stream_config = |name: String, subject: String| stream::Config {
        name,
        subjects: vec![subject],
        retention: stream::RetentionPolicy::WorkQueue,
        storage: stream::StorageType::File,
        num_replicas: replicas,
        ..Default::default()
    };
    let consumer_config = |durable: String, tenant: usize| consumer::pull::Config {
        durable_name: Some(durable),
        filter_subject: format!("layout.t{tenant}.>"),
        memory_storage: true,
        ack_wait: Duration::from_secs(30),
        ..Default::default()
    };
    let mut consumers = Vec::with_capacity(tenants);
    match kind {
        LayoutKind::Shared => {
            let stream = js
                .create_stream(stream_config("LAYOUT".into(), "layout.>".into()))
                .await?;
            for t in 0..tenants {
                consumers.push(
                    stream
                        .create_consumer(consumer_config(format!("tenant-t{t}"), t))
                        .await?,
                );
            }
        }
        LayoutKind::PerTenant => {
            for t in 0..tenants {
                let stream = js
                    .create_stream(stream_config(
                        format!("LAYOUT_t{t}"),
                        format!("layout.t{t}.>"),
                    ))
                    .await?;
                consumers.push(
                    stream
                        .create_consumer(consumer_config("worker".into(), t))
                        .await?,
                );
            }
        }
    }
    Ok(consumers)
}

/// Reads `consumer` until the process ends: a pull waiting, each message acked as it comes.
async fn read(consumer: consumer::PullConsumer, acked: Arc<AtomicUsize>) {
    loop {
        let batch = consumer
            .fetch()
            .max_messages(PULL_MAX)
            .expires(PULL_WAIT)
            .messages()
            .await;
        let Ok(mut batch) = batch else {
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        };
        while let Some(Ok(msg)) = batch.next().await {
            if msg.double_ack().await.is_ok() {
                acked.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
}

/// One layout on fresh servers: its line of the report.
async fn measure(
    args: &Args,
    traffic: &Traffic,
    kind: LayoutKind,
    tenants: usize,
) -> anyhow::Result<String> {
    let servers = Servers::start(args.cluster).await;
    let js = context(&servers.client().await);
    let consumers = provision(&js, kind, tenants, servers.replicas()).await?;
    let acked = Arc::new(AtomicUsize::new(0));
    let readers: Vec<_> = consumers
        .into_iter()
        .map(|c| tokio::spawn(read(c, acked.clone())))
        .collect();
    // Every pull is waiting before the first message.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let processes = servers.processes();
    let before = cpu_times(&processes);
    let started = Instant::now();
    publish_all(&js, traffic, |i| {
        (format!("layout.t{}.m", i % tenants), HeaderMap::new())
    })
    .await?;
    let drained_by = Instant::now() + DRAIN_WAIT;
    while acked.load(Ordering::Relaxed) < traffic.messages {
        anyhow::ensure!(
            Instant::now() < drained_by,
            "{}: {} of {} messages acked {} s after the last publish",
            kind.name(),
            acked.load(Ordering::Relaxed),
            traffic.messages,
            DRAIN_WAIT.as_secs()
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let elapsed = started.elapsed();
    let cpu = cpu_per_message(&before, &cpu_times(&processes), traffic.messages);
    for reader in readers {
        reader.abort();
    }
    Ok(format!(
        "{:<44} {:>8.0} msgs/s  {cpu}",
        kind.name(),
        traffic.messages as f64 / elapsed.as_secs_f64()
    ))
}

/// Runs both layouts for each tenant count, printing each line as it is measured.
pub async fn run(args: &Args) -> anyhow::Result<()> {
    let payload_bytes = args.payload_bytes.first().copied().unwrap_or(256);
    let traffic = Traffic::of(args, payload_bytes);
    let machine = Machine::detect(if args.cluster {
        "3-node cluster on this machine, file storage, R3"
    } else {
        "one node, file storage, R1"
    });
    for &tenants in &args.tenants {
        let pace = if traffic.rate > 0.0 {
            format!("paced at {}/s", traffic.rate)
        } else {
            format!("unpaced, {} publishes in flight", traffic.in_flight)
        };
        println!(
            "Consumer layouts: {} messages of {payload_bytes} bytes over {tenants} tenants, {pace}\n{machine}",
            traffic.messages
        );
        for kind in [LayoutKind::Shared, LayoutKind::PerTenant] {
            println!("{}", measure(args, &traffic, kind, tenants).await?);
        }
    }
    Ok(())
}
