//! `switchyard-bench --consumer-layout`: what nats-server spends per message when many
//! tenants' work-queue messages are read by a consumer per tenant, laid out three ways:
//!
//! - **shared**: one stream for every tenant, a filtered durable consumer per tenant (the
//!   layout of `BACKPRESSURE` and its `backpressure-<tenant>` consumers before its shards);
//! - **sharded**: [`SHARDS`] streams, each holding the tenants `t` with `t % SHARDS` its shard,
//!   a consumer per tenant on its shard's stream (the layout of the `BACKPRESSURE_<shard>`
//!   streams, chosen on these measurements);
//! - **per tenant**: one stream per tenant with one consumer on it (the layout of
//!   `INGRESS_<tenant>` and `ingress-worker`).
//!
//! For each count of `--tenants`, the layouts run in that order, each on fresh servers
//! (`--cluster`: R3) on the same filesystem: file streams, consumers whose state is in memory
//! (as Switchyard's per-tenant ones), each keeping a pull of up to 16 messages waiting for 20 s
//! and acking every message as it arrives (a plain ack, as the stages ack a hand-off);
//! `--messages` messages of the first `--payload-bytes` size are published round-robin over the
//! tenants (`--rate`, or as fast as `--in-flight` outstanding acks allow). Reported per layout:
//! messages per second from the first publish until the server has applied the last ack (its
//! account stores no byte), nats-server's CPU µs per message over the same span (each node's,
//! on a cluster), and any redelivery or pull error — a run with one is not comparable. This is JetStream alone, no Switchyard service
//! (`docs/performance.md`, "Which layout nats-server carries cheaper").

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use async_nats::HeaderMap;
use async_nats::jetstream::{self, consumer, stream};
use futures::StreamExt;

use crate::Args;
use crate::report::{Machine, cpu_per_message, cpu_times};
use crate::servers::Servers;
use crate::traffic::{Traffic, jetstream as context, publish_all};

/// Streams of the sharded layout.
pub const SHARDS: usize = 16;

/// How long a consumer's pull waits (as Switchyard's per-tenant pulls).
const PULL_WAIT: Duration = Duration::from_secs(20);

/// Most messages one pull asks for (as Switchyard's per-tenant pulls).
const PULL_MAX: usize = 16;

/// How long every consumer may take to have its first pull waiting.
const READY_WAIT: Duration = Duration::from_secs(120);

/// How long the run may take past its last publish before it is called stuck.
const DRAIN_WAIT: Duration = Duration::from_secs(120);

/// How the tenants' messages are laid out in streams.
#[derive(Debug, Clone, Copy)]
enum LayoutKind {
    /// One stream, a consumer per tenant.
    Shared,
    /// [`SHARDS`] streams, a consumer per tenant on its shard's.
    Sharded,
    /// A stream and a consumer per tenant.
    PerTenant,
}

impl LayoutKind {
    /// The report's name for the layout.
    fn name(self) -> &'static str {
        match self {
            LayoutKind::Shared => "one shared stream, a consumer per tenant",
            LayoutKind::Sharded => "16 shard streams, a consumer per tenant",
            LayoutKind::PerTenant => "a stream and a consumer per tenant",
        }
    }
}

/// Tenant `t`'s messages' subject: `layout.s<shard>.t<t>.m`, the same in every layout.
fn subject(tenant: usize) -> String {
    format!("layout.s{}.t{tenant}.m", tenant % SHARDS)
}

/// Every subject of tenant `t`: its consumer's filter, and its stream's in the per-tenant
/// layout.
fn tenant_subjects(tenant: usize) -> String {
    format!("layout.s{}.t{tenant}.>", tenant % SHARDS)
}

/// Creates the layout's streams and consumers for `tenants` tenants on `replicas` replicas;
/// returns tenant `t`'s consumer at index `t`.
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
        filter_subject: tenant_subjects(tenant),
        memory_storage: true,
        ack_wait: Duration::from_secs(30),
        ..Default::default()
    };
    let create_stream = |name: String, subject: String| async move {
        js.create_stream(stream_config(name.clone(), subject))
            .await
            .with_context(|| format!("creating stream {name}"))
    };
    let mut consumers = Vec::with_capacity(tenants);
    match kind {
        LayoutKind::Shared | LayoutKind::Sharded => {
            let shards = if matches!(kind, LayoutKind::Shared) {
                1
            } else {
                SHARDS
            };
            let mut shard_streams = Vec::with_capacity(shards);
            for k in 0..shards {
                let (name, subject) = if shards == 1 {
                    ("LAYOUT".to_owned(), "layout.>".to_owned())
                } else {
                    (format!("LAYOUT_S{k}"), format!("layout.s{k}.>"))
                };
                shard_streams.push(create_stream(name, subject).await?);
            }
            for t in 0..tenants {
                let durable = format!("tenant-t{t}");
                consumers.push(
                    shard_streams[t % shards]
                        .create_consumer(consumer_config(durable.clone(), t))
                        .await
                        .with_context(|| format!("creating consumer {durable}"))?,
                );
            }
        }
        LayoutKind::PerTenant => {
            for t in 0..tenants {
                let name = format!("LAYOUT_T{t}");
                let stream = create_stream(name.clone(), tenant_subjects(t)).await?;
                consumers.push(
                    stream
                        .create_consumer(consumer_config("worker".into(), t))
                        .await
                        .with_context(|| format!("creating the consumer of {name}"))?,
                );
            }
        }
    }
    Ok(consumers)
}

/// What the readers saw: messages acked, redeliveries, pulls that failed.
#[derive(Default)]
struct Seen {
    acked: AtomicUsize,
    redelivered: AtomicUsize,
    pull_errors: AtomicUsize,
}

/// Reads `consumer` until aborted: a pull waiting, each message acked as it comes.
async fn read(consumer: consumer::PullConsumer, seen: Arc<Seen>) {
    loop {
        let batch = consumer
            .fetch()
            .max_messages(PULL_MAX)
            .expires(PULL_WAIT)
            .messages()
            .await;
        let Ok(mut batch) = batch else {
            seen.pull_errors.fetch_add(1, Ordering::Relaxed);
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        };
        while let Some(next) = batch.next().await {
            let Ok(msg) = next else {
                seen.pull_errors.fetch_add(1, Ordering::Relaxed);
                break;
            };
            if msg.info().is_ok_and(|info| info.delivered > 1) {
                seen.redelivered.fetch_add(1, Ordering::Relaxed);
            }
            if msg.ack().await.is_ok() {
                seen.acked.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
}

/// Waits until every consumer has a pull waiting (`num_waiting`), within [`READY_WAIT`].
async fn wait_for_pulls(consumers: &[consumer::PullConsumer]) -> anyhow::Result<()> {
    let deadline = Instant::now() + READY_WAIT;
    for consumer in consumers {
        loop {
            let info = consumer
                .get_info()
                .await
                .context("reading a consumer's info")?;
            if info.num_waiting > 0 {
                break;
            }
            anyhow::ensure!(
                Instant::now() < deadline,
                "consumer {} has no pull waiting after {} s",
                info.name,
                READY_WAIT.as_secs()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    Ok(())
}

/// One layout on fresh servers: its line of the report (name, msgs/s, nats-server CPU µs per
/// message, and what went wrong, if anything).
async fn measure(
    args: &Args,
    traffic: &Traffic,
    kind: LayoutKind,
    tenants: usize,
) -> anyhow::Result<String> {
    let servers = Servers::start(args.cluster).await;
    let js = context(&servers.client().await);
    let consumers = provision(&js, kind, tenants, servers.replicas()).await?;
    let seen = Arc::new(Seen::default());
    let readers: Vec<_> = consumers
        .iter()
        .cloned()
        .map(|c| tokio::spawn(read(c, seen.clone())))
        .collect();
    wait_for_pulls(&consumers).await?;
    let processes = servers.processes();
    let before = cpu_times(&processes);
    let started = Instant::now();
    publish_all(&js, traffic, |i| (subject(i % tenants), HeaderMap::new()))
        .await
        .context("publishing")?;
    let drained_by = Instant::now() + DRAIN_WAIT;
    while seen.acked.load(Ordering::Relaxed) < traffic.messages {
        anyhow::ensure!(
            Instant::now() < drained_by,
            "{}: {} of {} messages acked {} s after the last publish",
            kind.name(),
            seen.acked.load(Ordering::Relaxed),
            traffic.messages,
            DRAIN_WAIT.as_secs()
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    // Acks are not confirmed: the server may still be applying the last ones. The span ends
    // when it has (the account stores no byte: every stream is a work queue).
    while js
        .query_account()
        .await
        .context("reading the account's usage")?
        .storage
        > 0
    {
        anyhow::ensure!(
            Instant::now() < drained_by,
            "{}: the streams still hold messages {} s after the last publish",
            kind.name(),
            DRAIN_WAIT.as_secs()
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let elapsed = started.elapsed();
    let cpu = cpu_per_message(&before, &cpu_times(&processes), traffic.messages);
    for reader in readers {
        reader.abort();
    }
    let (redelivered, pull_errors) = (
        seen.redelivered.load(Ordering::Relaxed),
        seen.pull_errors.load(Ordering::Relaxed),
    );
    let trouble = if redelivered + pull_errors == 0 {
        String::new()
    } else {
        format!("  NOT COMPARABLE: {redelivered} redelivered, {pull_errors} pull errors")
    };
    Ok(format!(
        "{:<42} {:>8.0} msgs/s  {cpu}{trouble}",
        kind.name(),
        traffic.messages as f64 / elapsed.as_secs_f64()
    ))
}

/// Runs the three layouts for each tenant count, printing each line as it is measured.
pub async fn run(args: &Args) -> anyhow::Result<()> {
    let payload_bytes = args.payload_bytes.first().copied().unwrap_or(256);
    let traffic = Traffic::of(args, payload_bytes);
    let machine = Machine::detect(Servers::description(args.cluster));
    for &tenants in &args.tenants {
        let tenants = tenants.max(1);
        let pace = if traffic.rate > 0.0 {
            format!("paced at {}/s", traffic.rate)
        } else {
            format!("unpaced, {} publishes in flight", traffic.in_flight)
        };
        println!(
            "Consumer layouts: {} messages of {payload_bytes} bytes over {tenants} tenants, {pace}\n{machine}",
            traffic.messages
        );
        for kind in [
            LayoutKind::Shared,
            LayoutKind::Sharded,
            LayoutKind::PerTenant,
        ] {
            println!("{}", measure(args, &traffic, kind, tenants).await?);
        }
    }
    Ok(())
}
