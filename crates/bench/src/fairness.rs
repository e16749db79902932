//! `switchyard-bench --fairness`: does one tenant's traffic slow another's?
//!
//! One deployment, three tenants, each routed to its own core-NATS sink subject. Tenant
//! `quiet` sends `--fairness-quiet-rate` messages per second (default 20) throughout and its
//! end-to-end latency is measured in three phases of `--fairness-secs` each:
//!
//! 1. **alone**: nobody else sends;
//! 2. **flood**: tenant `flood`, limited to 50 messages/s (burst 50, `backlog_high` 2,000) with
//!    a quota of 10,000 messages in its own stream, publishes `--fairness-flood` messages
//!    (default 50,000) as fast as it can over NATS: 100 times its limit; its publishes refused
//!    by its quota are counted;
//! 3. **slow sink**: tenant `slow`, whose sink answers each request after 8 s, sends 500
//!    messages at once through a route allowing 256 requests in flight.
//!
//! The report gives the quiet tenant's p50/p99 per phase and the ratio to phase 1 (the goal:
//! p99 during the flood or the slow sink < 2 × alone).

use std::collections::HashMap;
use std::future::IntoFuture;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_nats::HeaderMap;
use futures::StreamExt;
use switchyard_keys::{RateKey, RateRecord, RateScope, TenantId};
use switchyard_registry::LimitRecord;
use switchyard_topology::TenantQuota;
use tokio::sync::watch;

use crate::Args;
use crate::pipeline::{Deployment, Layout, ingress_subject};
use crate::report::{Machine, percentile_ms};
use crate::servers::Servers;
use crate::traffic::{SENT, latency_of, now_nanos};

/// How long the slow tenant's sink takes to answer.
const SLOW_SINK: Duration = Duration::from_secs(8);

/// The quiet tenant's latencies in one phase, and what else happened.
struct Phase {
    name: &'static str,
    latencies: Vec<Duration>,
    note: String,
}

impl Phase {
    fn percentile(&self, p: f64) -> f64 {
        let mut sorted = self.latencies.clone();
        sorted.sort();
        percentile_ms(&sorted, p)
    }
}

/// Latencies of the quiet tenant's deliveries, collected by the sink while a phase runs.
type Collected = Arc<Mutex<Vec<Duration>>>;

/// Publishes the quiet tenant's messages at `rate` per second for `secs` seconds.
async fn quiet_traffic(
    js: &async_nats::jetstream::Context,
    quiet: &TenantId,
    phase: &str,
    rate: f64,
    secs: u64,
) -> anyhow::Result<usize> {
    let subject = ingress_subject(quiet);
    let started = tokio::time::Instant::now();
    let n = (rate * secs as f64) as usize;
    for i in 0..n {
        tokio::time::sleep_until(started + Duration::from_secs_f64(i as f64 / rate)).await;
        let mut h = HeaderMap::new();
        h.insert("Nats-Msg-Id", format!("quiet-{phase}-{i}"));
        h.insert(SENT, now_nanos().to_string());
        js.publish_with_headers(subject.clone(), h, "q".into())
            .await?
            .await?;
    }
    Ok(n)
}

/// Waits until `collected` holds `n` latencies (or a minute passes) and takes them.
async fn take(collected: &Collected, n: usize) -> Vec<Duration> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let len = collected.lock().unwrap_or_else(|p| p.into_inner()).len();
        if len >= n || Instant::now() >= deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    std::mem::take(&mut *collected.lock().unwrap_or_else(|p| p.into_inner()))
}

/// Runs the three phases and returns the report.
pub async fn run(servers: &Servers, args: &Args) -> anyhow::Result<String> {
    let quiet = TenantId::new("quiet")?;
    let flood = TenantId::new("flood")?;
    let slow = TenantId::new("slow")?;
    let tenants = [quiet.clone(), flood.clone(), slow.clone()];
    let quota = TenantQuota {
        max_bytes: None,
        max_msgs: Some(10_000),
    };
    let deployment = Deployment::start(
        servers,
        &Layout {
            tenants: &tenants,
            quota,
            max_in_flight: 256,
            stage_replicas: args.replicas,
            bin_dir: args.bin_dir.clone(),
            otlp_endpoint: args.otlp_endpoint.clone(),
            kek_file: None,
        },
    )
    .await?;
    let limited = LimitRecord {
        rate_per_sec: 50.0,
        burst: 50,
        backlog_high: Some(2_000),
        backlog_low: None,
        backlog_high_bytes: None,
    };
    deployment
        .limits
        .put(
            &RateKey {
                scope: RateScope::Tenant(flood.clone()),
                record: RateRecord::Limit,
            },
            &limited,
        )
        .await?;
    let (client, js) = (deployment.client.clone(), deployment.js.clone());

    // The sink: the quiet tenant's latencies are kept; the slow tenant's requests are
    // answered after SLOW_SINK; everything else at once.
    let collected: Collected = Arc::default();
    let delivered: Arc<Mutex<HashMap<String, usize>>> = Arc::default();
    let mut sink = client.subscribe("bench.sink.>").await?;
    client.flush().await?;
    let (stop_tx, mut stop_rx) = watch::channel(false);
    let sink_task = {
        let (client, collected, delivered) = (client.clone(), collected.clone(), delivered.clone());
        tokio::spawn(async move {
            loop {
                let msg = tokio::select! {
                    _ = stop_rx.changed() => break,
                    msg = sink.next() => match msg { Some(m) => m, None => break },
                };
                let tenant = msg
                    .subject
                    .as_str()
                    .rsplit('.')
                    .next()
                    .unwrap_or("")
                    .to_owned();
                *delivered
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .entry(tenant.clone())
                    .or_default() += 1;
                if tenant == "quiet"
                    && let Some(latency) = latency_of(msg.headers.as_ref())
                {
                    collected
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .push(latency);
                }
                let Some(reply) = msg.reply.clone() else {
                    continue;
                };
                if tenant == "slow" {
                    let client = client.clone();
                    tokio::spawn(async move {
                        tokio::time::sleep(SLOW_SINK).await;
                        let _ = client.publish(reply, bytes::Bytes::new()).await;
                    });
                } else {
                    let _ = client.publish(reply, bytes::Bytes::new()).await;
                }
            }
        })
    };

    // Warm-up: one message per tenant through the whole pipeline.
    for tenant in &tenants {
        let mut h = HeaderMap::new();
        h.insert("Nats-Msg-Id", format!("warm-up-{tenant}"));
        js.publish_with_headers(ingress_subject(tenant), h, "w".into())
            .await?
            .await?;
    }
    let warm = Instant::now() + Duration::from_secs(60);
    while delivered.lock().unwrap_or_else(|p| p.into_inner()).len() < 3 {
        anyhow::ensure!(
            Instant::now() < warm,
            "the warm-up messages did not come through the pipeline"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    collected.lock().unwrap_or_else(|p| p.into_inner()).clear();

    let (rate, secs) = (args.fairness_quiet_rate, args.fairness_secs);
    let mut phases = Vec::new();

    // 1. Alone.
    let n = quiet_traffic(&js, &quiet, "alone", rate, secs).await?;
    phases.push(Phase {
        name: "alone",
        latencies: take(&collected, n).await,
        note: String::new(),
    });

    // 2. The flood, as fast as the publisher goes, with its refusals counted.
    let flood_task = {
        let js = js.clone();
        let subject = ingress_subject(&flood);
        let count = args.fairness_flood;
        tokio::spawn(async move {
            let mut pending = futures::stream::FuturesUnordered::new();
            let (mut accepted, mut refused) = (0usize, 0usize);
            let started = Instant::now();
            for i in 0..count {
                let mut h = HeaderMap::new();
                h.insert("Nats-Msg-Id", format!("flood-{i}"));
                match js
                    .publish_with_headers(subject.clone(), h, "f".into())
                    .await
                {
                    Ok(ack) => pending.push(ack.into_future()),
                    Err(_) => refused += 1,
                }
                while pending.len() >= 512 {
                    match pending.next().await {
                        Some(Ok(_)) => accepted += 1,
                        Some(Err(_)) => refused += 1,
                        None => break,
                    }
                }
            }
            while let Some(ack) = pending.next().await {
                match ack {
                    Ok(_) => accepted += 1,
                    Err(_) => refused += 1,
                }
            }
            (accepted, refused, started.elapsed())
        })
    };
    let n = quiet_traffic(&js, &quiet, "flood", rate, secs).await?;
    let latencies = take(&collected, n).await;
    let (accepted, refused, took) = flood_task.await?;
    phases.push(Phase {
        name: "during the flood",
        latencies,
        note: format!(
            "flood: {} published in {:.1} s ({:.0}/s, limit 50/s): {accepted} accepted, {refused} refused by its quota",
            args.fairness_flood,
            took.as_secs_f64(),
            args.fairness_flood as f64 / took.as_secs_f64().max(1e-9)
        ),
    });

    // 3. The slow sink.
    for i in 0..500 {
        let mut h = HeaderMap::new();
        h.insert("Nats-Msg-Id", format!("slow-{i}"));
        js.publish_with_headers(ingress_subject(&slow), h, "s".into())
            .await?
            .await?;
    }
    let n = quiet_traffic(&js, &quiet, "slow", rate, secs).await?;
    phases.push(Phase {
        name: "slow sink (8 s) busy",
        latencies: take(&collected, n).await,
        note: format!(
            "slow: 500 sent, {} answered by its sink so far",
            delivered
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .get("slow")
                .copied()
                .unwrap_or(0)
                .saturating_sub(1)
        ),
    });
    let _ = stop_tx.send(true);
    let _ = sink_task.await;
    drop(deployment);
    Ok(render(args, &Machine::detect(servers.describe()), &phases))
}

fn render(args: &Args, machine: &Machine, phases: &[Phase]) -> String {
    let mut out = format!(
        "Switchyard fairness: tenant quiet at {}/s for {} s per phase\n{machine}\n\n",
        args.fairness_quiet_rate, args.fairness_secs,
    );
    out.push_str(&format!(
        "{:<26} {:>9} {:>8} {:>8} {:>8} {:>12}\n",
        "quiet tenant", "received", "p50 ms", "p99 ms", "max ms", "p99 / alone"
    ));
    let alone = phases.first().map_or(f64::NAN, |p| p.percentile(0.99));
    for phase in phases {
        out.push_str(&format!(
            "{:<26} {:>9} {:>8.1} {:>8.1} {:>8.1} {:>12.2}\n",
            phase.name,
            phase.latencies.len(),
            phase.percentile(0.5),
            phase.percentile(0.99),
            phase.percentile(1.0),
            phase.percentile(0.99) / alone
        ));
    }
    for phase in phases.iter().filter(|p| !p.note.is_empty()) {
        out.push_str(&format!("{}\n", phase.note));
    }
    out
}
