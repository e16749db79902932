//! The pipeline run: ingress, idempotency, backpressure and egress as separate processes (as
//! deployed),
//! routes to a NATS sink, one subscriber measuring end-to-end latency.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use async_nats::HeaderMap;
use async_nats::jetstream;
use futures::StreamExt;
use switchyard_keys::{
    Address, RateKey, RateRecord, RateScope, RouteKey, RouteTeam, TenantId, TenantKey,
};
use switchyard_registry::{LimitRecord, NatsRoute, Route, Store, TenantRecord};
use switchyard_subjects::{InputStage, Namespace, StageSubject, SubjectKind};
use switchyard_testkit::{NatsServer, free_port, wait_for};
use switchyard_topology::{BucketName, DeploymentConfig, TenantQuota, provision, provision_tenant};

use crate::Args;
use crate::raw::{latency_of, publish_all};
use crate::report::{Figures, peak_rss};

/// A service process, killed on drop.
struct Service {
    name: &'static str,
    child: Child,
    port: u16,
}

impl Drop for Service {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `GET path` on a service's probes port, as text.
fn http_get(port: u16, path: &str) -> String {
    let Ok(mut stream) = TcpStream::connect(("127.0.0.1", port)) else {
        return String::new();
    };
    let _ = stream.write_all(format!("GET {path} HTTP/1.0\r\n\r\n").as_bytes());
    let mut response = String::new();
    let _ = stream.read_to_string(&mut response);
    response
}

/// The value of a counter in Prometheus text (summed over its label sets).
fn metric(text: &str, name: &str) -> f64 {
    text.lines()
        .filter(|l| l.starts_with(name))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

fn ready(port: u16) -> bool {
    let Ok(mut stream) = TcpStream::connect(("127.0.0.1", port)) else {
        return false;
    };
    let _ = stream.write_all(b"GET /readyz HTTP/1.0\r\n\r\n");
    let mut response = String::new();
    let _ = stream.read_to_string(&mut response);
    response.starts_with("HTTP/1.0 200") || response.starts_with("HTTP/1.1 200")
}

fn spawn(
    bin_dir: &std::path::Path,
    name: &'static str,
    env_prefix: &str,
    url: &str,
    concurrency_key: &str,
) -> anyhow::Result<Service> {
    let port = free_port();
    let path = bin_dir.join(format!("switchyard-{name}"));
    let mut command = Command::new(&path);
    if name == "ingress" {
        // Ingress serves its probes apart from the producer API, which the bench does not use.
        command
            .env(format!("{env_prefix}HTTP__LISTEN"), "127.0.0.1:0")
            .env(
                format!("{env_prefix}HTTP__PROBES_LISTEN"),
                format!("127.0.0.1:{port}"),
            );
    } else {
        command.env(
            format!("{env_prefix}HTTP__LISTEN"),
            format!("127.0.0.1:{port}"),
        );
    }
    let child = command
        .env(format!("{env_prefix}NATS__URL"), url)
        .env(format!("{env_prefix}TELEMETRY__LOG_FILTER"), "warn")
        .env(format!("{env_prefix}{concurrency_key}"), "256")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .map_err(|e| {
            anyhow::anyhow!(
                "starting {} ({e}); build the binaries first (make bench does)",
                path.display()
            )
        })?;
    Ok(Service { name, child, port })
}

/// A provisioned deployment with every service running as a process (killed on drop).
pub struct Deployment {
    /// The services.
    services: Vec<Service>,
    /// A client of the deployment's server.
    pub client: async_nats::Client,
    /// JetStream on it.
    pub js: jetstream::Context,
    /// The rate-limits bucket.
    pub limits: Store<RateKey, LimitRecord>,
}

impl Deployment {
    /// Provisions the topology, enables `tenants` (each with `quota`, and a core NATS route to
    /// `bench.sink.<tenant>` with up to `max_in_flight` requests at once), sets the default
    /// limit high enough that the run measures the pipeline, not a limit, and starts the four
    /// services.
    pub async fn start(
        server: &NatsServer,
        args: &Args,
        tenants: &[TenantId],
        quota: TenantQuota,
        max_in_flight: usize,
    ) -> anyhow::Result<Self> {
        let client = server.client().await;
        let js = jetstream::new(client.clone());
        let topology = DeploymentConfig::default().resolve()?;
        provision(&js, &topology, false).await?;
        let registry: Store<TenantKey, TenantRecord> =
            Store::new(topology.open_bucket(&js, BucketName::Tenants).await?.1);
        let limits: Store<RateKey, LimitRecord> =
            Store::new(topology.open_bucket(&js, BucketName::RateLimits).await?.1);
        let unlimited = LimitRecord {
            rate_per_sec: 1_000_000.0,
            burst: 100_000,
            backlog_high: None,
            backlog_low: None,
        };
        limits
            .put(
                &RateKey {
                    scope: RateScope::Default,
                    record: RateRecord::Limit,
                },
                &unlimited,
            )
            .await?;
        let routes: Store<RouteKey, Route> =
            Store::new(topology.open_bucket(&js, BucketName::Routes).await?.1);
        for tenant in tenants {
            provision_tenant(&js, &topology, tenant, quota, false).await?;
            registry
                .put(
                    &TenantKey {
                        tenant: tenant.clone(),
                    },
                    &TenantRecord::enabled(),
                )
                .await?;
            let route = Route::Nats(NatsRoute {
                subject: format!("bench.sink.{tenant}"),
                jetstream: false,
                fire_and_forget: false,
                timeout_ms: 10_000,
                max_in_flight,
            });
            routes
                .put(
                    &RouteKey {
                        tenant: tenant.clone(),
                        team: RouteTeam::Any,
                        platform: "bench".parse()?,
                    },
                    &route,
                )
                .await?;
        }

        let bin_dir = match &args.bin_dir {
            Some(dir) => dir.clone(),
            None => std::env::current_exe()?
                .parent()
                .map(PathBuf::from)
                .unwrap_or_default(),
        };
        let url = server.url();
        let services = vec![
            spawn(
                &bin_dir,
                "ingress",
                "SWITCHYARD_INGRESS_",
                &url,
                "INGRESS__CONCURRENCY",
            )?,
            spawn(
                &bin_dir,
                "idempotency",
                "SWITCHYARD_IDEMPOTENCY_",
                &url,
                "IDEMPOTENCY__CONCURRENCY",
            )?,
            spawn(
                &bin_dir,
                "backpressure",
                "SWITCHYARD_BACKPRESSURE_",
                &url,
                "BACKPRESSURE__MAX_BATCH",
            )?,
            spawn(
                &bin_dir,
                "egress",
                "SWITCHYARD_EGRESS_",
                &url,
                "EGRESS__CONCURRENCY",
            )?,
        ];
        for service in &services {
            let port = service.port;
            wait_for(
                &format!("{} to be ready", service.name),
                Duration::from_secs(60),
                || async move {
                    tokio::task::spawn_blocking(move || ready(port))
                        .await
                        .ok()?
                        .then_some(())
                },
            )
            .await;
        }
        Ok(Self {
            services,
            client,
            js,
            limits,
        })
    }
}

/// The ingress subject of `tenant` on the benchmark's team and platform.
pub fn ingress_subject(tenant: &TenantId) -> String {
    StageSubject {
        stage: InputStage::Ingress,
        address: Address::new(
            tenant.clone(),
            "bench".parse().expect("valid team"),
            "bench".parse().expect("valid platform"),
        ),
    }
    .format(&Namespace::default())
}

/// Runs the pipeline measurement.
pub async fn run(server: &NatsServer, args: &Args) -> anyhow::Result<Figures> {
    let tenants: Vec<TenantId> = (0..args.tenants.max(1))
        .map(|i| TenantId::new(format!("tenant{i}")))
        .collect::<Result<_, _>>()?;
    let deployment = Deployment::start(server, args, &tenants, TenantQuota::default(), 256).await?;
    let (client, js) = (deployment.client.clone(), deployment.js.clone());
    let services = &deployment.services;
    let mut sink = client.subscribe("bench.sink.>").await?;
    client.flush().await?;
    // Warm-up: one message per tenant, so every stage has found every tenant (backpressure
    // discovers tenants by scanning, every `scan_interval_ms`) before the measured run.
    for (i, tenant) in tenants.iter().enumerate() {
        let subject = ingress_subject(tenant);
        let mut h = HeaderMap::new();
        h.insert("Nats-Msg-Id", format!("warm-up-{i}"));
        js.publish_with_headers(subject, h, "warm-up".into())
            .await?
            .await?;
    }
    for _ in 0..tenants.len() {
        let msg = tokio::time::timeout(Duration::from_secs(60), sink.next())
            .await
            .map_err(|_| {
                anyhow::anyhow!("the warm-up messages did not come through the pipeline")
            })?;
        // A core NATS route is a request: the sink's reply acknowledges the delivery.
        if let Some(reply) = msg.and_then(|m| m.reply) {
            client.publish(reply, bytes::Bytes::new()).await?;
        }
    }
    let replier = client.clone();
    let count = args.messages;
    let collect = tokio::spawn(async move {
        let mut latencies = Vec::with_capacity(count);
        let mut last = Instant::now();
        while latencies.len() < count {
            let Ok(Some(msg)) = tokio::time::timeout(Duration::from_secs(60), sink.next()).await
            else {
                break;
            };
            if let Some(reply) = msg.reply.clone() {
                let _ = replier.publish(reply, bytes::Bytes::new()).await;
            }
            latencies.push(latency_of(msg.headers.as_ref()).unwrap_or_default());
            last = Instant::now();
        }
        (latencies, last)
    });

    let payload = bytes::Bytes::from(vec![b'x'; args.payload_bytes]);
    let started = Instant::now();
    publish_all(&js, args, payload, |i| {
        let subject = ingress_subject(&tenants[i % tenants.len()]);
        let mut h = HeaderMap::new();
        h.insert("Nats-Msg-Id", format!("bench-{i}"));
        (subject, h)
    })
    .await?;
    let (mut latencies, last) = collect.await?;
    latencies.sort();
    let mut peak = Vec::new();
    for service in services {
        if let Some(bytes) = peak_rss(service.child.id()) {
            peak.push((format!("switchyard-{}", service.name), bytes));
        }
    }
    let mut notes = Vec::new();
    if let Some(backpressure) = services.iter().find(|s| s.name == "backpressure") {
        let text = http_get(backpressure.port, "/metrics");
        let kv_ops = metric(&text, "switchyard_backpressure_kv_ops_total");
        let forwarded = metric(&text, "switchyard_messages_processed_total");
        notes.push(format!(
            "backpressure KV operations per delivered message: {:.4} ({kv_ops} ops / {forwarded} messages; target < 0.1)",
            kv_ops / forwarded.max(1.0)
        ));
    }
    if let Some(egress) = services.iter().find(|s| s.name == "egress") {
        let text = http_get(egress.port, "/metrics");
        let deferred = metric(&text, "switchyard_egress_deferred_total");
        notes.push(format!(
            "egress deferrals (busy route or open breaker): {deferred}"
        ));
    }
    for service in services {
        let text = http_get(service.port, "/metrics");
        let retries = text
            .lines()
            .filter(|l| {
                l.starts_with("switchyard_messages_processed_total")
                    && l.contains("outcome=\"retry\"")
            })
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum::<f64>();
        if retries > 0.0 {
            notes.push(format!(
                "{}: {retries} redelivery requests (transient failures)",
                service.name
            ));
        }
    }
    if let Some(bytes) = server.pid().and_then(peak_rss) {
        peak.push(("nats-server (whole run)".to_owned(), bytes));
    }
    Ok(Figures {
        name: "pipeline: 4 stages, processes".into(),
        received: latencies.len(),
        elapsed: last.duration_since(started),
        latencies,
        peak_rss: peak,
        notes,
    })
}
