//! The pipeline run: ingress, idempotency, backpressure and egress as separate processes (as
//! deployed, optionally several of each), routes to a NATS sink, one subscriber measuring
//! end-to-end latency; the CPU each process used per delivered message.

use std::future::IntoFuture;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use async_nats::HeaderMap;
use async_nats::jetstream;
use futures::StreamExt;
use switchyard_crypt::{KekRing, KeyStore, LocalKek};
use switchyard_keys::{
    Address, RateKey, RateRecord, RateScope, RouteKey, RouteTeam, TenantId, TenantKey,
};
use switchyard_registry::{LimitRecord, NatsRoute, Route, Store, TenantRecord};
use switchyard_subjects::{InputStage, Namespace, StageSubject, SubjectKind};
use switchyard_testkit::{free_port, wait_for};
use switchyard_topology::{BucketName, DeploymentConfig, TenantQuota, provision, provision_tenant};

use crate::Args;
use crate::report::{Figures, cpu_per_message, cpu_times, peak_rss};
use crate::servers::Servers;
use crate::stages::StageClock;
use crate::traffic::{Sink, Traffic, publish_all};

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
pub fn http_get(port: u16, path: &str) -> String {
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

/// Settings of one stage's process.
struct Stage {
    name: &'static str,
    env_prefix: &'static str,
    /// The setting sized to the run (handler slots, or backpressure's batch).
    concurrency_key: &'static str,
}

const STAGES: [Stage; 4] = [
    Stage {
        name: "ingress",
        env_prefix: "SWITCHYARD_INGRESS_",
        concurrency_key: "INGRESS__CONCURRENCY",
    },
    Stage {
        name: "idempotency",
        env_prefix: "SWITCHYARD_IDEMPOTENCY_",
        concurrency_key: "IDEMPOTENCY__CONCURRENCY",
    },
    Stage {
        name: "backpressure",
        env_prefix: "SWITCHYARD_BACKPRESSURE_",
        concurrency_key: "BACKPRESSURE__MAX_BATCH",
    },
    Stage {
        name: "egress",
        env_prefix: "SWITCHYARD_EGRESS_",
        concurrency_key: "EGRESS__CONCURRENCY",
    },
];

/// Starts one process of `stage`, with its default settings but for the NATS URLs, the
/// replicas, its listeners, its concurrency (256) and the OTLP endpoint; its log (the default
/// filter, `info`) goes to `<log_dir>/<name>-<port>.log`.
fn spawn(
    bin_dir: &std::path::Path,
    stage: &Stage,
    urls: &str,
    replicas: usize,
    otlp_endpoint: Option<&str>,
    kek_file: Option<&std::path::Path>,
    log_dir: &std::path::Path,
) -> anyhow::Result<Service> {
    let Stage {
        name,
        env_prefix,
        concurrency_key,
    } = *stage;
    let port = free_port();
    let path = bin_dir.join(format!("switchyard-{name}"));
    let log = std::fs::File::create(log_dir.join(format!("{name}-{port}.log")))?;
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
        .env(format!("{env_prefix}NATS__URL"), urls)
        .env(
            format!("{env_prefix}DEPLOYMENT__REPLICAS"),
            replicas.to_string(),
        )
        .envs(otlp_endpoint.map(|url| (format!("{env_prefix}TELEMETRY__OTLP_ENDPOINT"), url)))
        // Only the stages that seal and open payloads hold the KEK.
        .envs(
            kek_file
                .filter(|_| matches!(name, "ingress" | "egress"))
                .map(|path| (format!("{env_prefix}ENCRYPTION__KEK_FILE"), path)),
        )
        .env(format!("{env_prefix}{concurrency_key}"), "256")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .map_err(|e| {
            anyhow::anyhow!(
                "starting {} ({e}); build the binaries first (make bench does)",
                path.display()
            )
        })?;
    Ok(Service { name, child, port })
}

/// How a deployment is laid out.
pub struct Layout<'a> {
    /// The tenants, each enabled with `quota` and routed to `bench.sink.<tenant>`.
    pub tenants: &'a [TenantId],
    /// Each tenant's quota.
    pub quota: TenantQuota,
    /// Requests in flight at once per route.
    pub max_in_flight: usize,
    /// Processes per stage.
    pub stage_replicas: usize,
    /// Where the service binaries are (default: next to this binary).
    pub bin_dir: Option<PathBuf>,
    /// Where the services export spans (OTLP/HTTP); `None`: no span is recorded.
    pub otlp_endpoint: Option<String>,
    /// A KEK file: every tenant gets payload encryption on (a data key wrapped by it) and
    /// ingress and egress are given the file; `None`: encryption off.
    pub kek_file: Option<PathBuf>,
}

/// A provisioned deployment with every service running as a process (killed on drop).
pub struct Deployment {
    /// The services.
    services: Vec<Service>,
    /// Where the services' logs are written.
    pub log_dir: PathBuf,
    /// A client of the deployment's server.
    pub client: async_nats::Client,
    /// JetStream on it.
    pub js: jetstream::Context,
    /// The rate-limits bucket.
    pub limits: Store<RateKey, LimitRecord>,
}

impl Deployment {
    /// Provisions the topology (replicated as `servers` wants), enables the layout's tenants
    /// (each with its quota and a core NATS route to `bench.sink.<tenant>`), sets the default
    /// limit high enough that the run measures the pipeline, not a limit, and starts
    /// `stage_replicas` processes of each of the four services.
    pub async fn start(servers: &Servers, layout: &Layout<'_>) -> anyhow::Result<Self> {
        let client = servers.client().await;
        let js = crate::traffic::jetstream(&client);
        let topology = DeploymentConfig {
            replicas: Some(servers.replicas()),
            ..Default::default()
        }
        .resolve()?;
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
            backlog_high_bytes: None,
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
        let keys = match &layout.kek_file {
            Some(path) => Some((
                KeyStore::new(topology.open_bucket(&js, BucketName::TenantKeys).await?.1),
                KekRing::new(LocalKek::from_file(path)?),
            )),
            None => None,
        };
        for tenant in layout.tenants {
            provision_tenant(&js, &topology, tenant, layout.quota, false).await?;
            if let Some((store, ring)) = &keys {
                store
                    .enable(tenant, ring, time::OffsetDateTime::now_utc())
                    .await?;
            }
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
                max_in_flight: layout.max_in_flight,
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

        let bin_dir = match &layout.bin_dir {
            Some(dir) => dir.clone(),
            None => std::env::current_exe()?
                .parent()
                .map(PathBuf::from)
                .unwrap_or_default(),
        };
        let urls = servers.urls().join(",");
        let log_dir = std::env::temp_dir().join(format!("switchyard-bench-{}", std::process::id()));
        std::fs::create_dir_all(&log_dir)?;
        let mut services = Vec::new();
        for stage in &STAGES {
            for _ in 0..layout.stage_replicas.max(1) {
                services.push(spawn(
                    &bin_dir,
                    stage,
                    &urls,
                    servers.replicas(),
                    layout.otlp_endpoint.as_deref(),
                    layout.kek_file.as_deref(),
                    &log_dir,
                )?);
            }
        }
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
            log_dir,
            client,
            js,
            limits,
        })
    }

    /// Each service process's name and id.
    fn processes(&self) -> impl Iterator<Item = (&'static str, u32)> + '_ {
        self.services.iter().map(|s| (s.name, s.child.id()))
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

/// The stream-leader placement on a cluster: how many of the deployment's streams each node
/// leads.
async fn leader_placement(js: &jetstream::Context) -> anyhow::Result<String> {
    let mut leaders: std::collections::BTreeMap<String, usize> = Default::default();
    let mut streams = js.streams();
    while let Some(info) = streams.next().await {
        if let Some(leader) = info?.cluster.and_then(|c| c.leader) {
            *leaders.entry(leader).or_default() += 1;
        }
    }
    Ok(leaders
        .iter()
        .map(|(node, n)| format!("{node}: {n}"))
        .collect::<Vec<_>>()
        .join(", "))
}

/// A quota that holds a tenant's whole share of `traffic` with room to spare (the publisher
/// may outrun the pipeline by all of it): twice the share, at least 4 MiB, and no more than
/// 8 GiB over all the tenants together (the server reserves each tenant stream's `max_bytes`
/// up front, within `max_file_store`: 16 GB in the bundled config).
fn quota_for(traffic: &Traffic, tenants: usize) -> TenantQuota {
    let tenants = tenants.max(1);
    let share = traffic.messages * (traffic.payload_bytes + 1024) / tenants;
    let most = (8usize << 30) / tenants;
    TenantQuota {
        max_bytes: Some((2 * share).max(4 << 20).min(most) as i64),
        max_msgs: None,
    }
}

/// Writes a fresh KEK (32 random bytes as hex, mode 0600) into a new file under the temporary
/// folder; returns its path.
fn fresh_kek_file() -> anyhow::Result<PathBuf> {
    let mut key = [0u8; 32];
    std::fs::File::open("/dev/urandom")?.read_exact(&mut key)?;
    let path = std::env::temp_dir().join(format!(
        "switchyard-bench-kek-{}-{}",
        std::process::id(),
        free_port()
    ));
    let hex: String = key.iter().map(|b| format!("{b:02x}")).collect();
    std::fs::write(&path, hex)?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))?;
    }
    Ok(path)
}

/// Runs the pipeline measurement: `traffic` spread over `tenants` tenants, `stage_replicas`
/// processes per stage; with `encrypted`, every tenant has payload encryption on (sealed at
/// ingress, opened at egress: `libs/crypt`).
pub async fn run(
    servers: &Servers,
    args: &Args,
    traffic: &Traffic,
    tenants: usize,
    encrypted: bool,
) -> anyhow::Result<Figures> {
    // Message ids differ between the runs of one comparison: they share the servers, whose
    // duplicate windows and idempotency claims would drop a second run's messages.
    let run_id = if encrypted { "enc" } else { "plain" };
    let kek_file = encrypted.then(fresh_kek_file).transpose()?;
    let tenants: Vec<TenantId> = (0..tenants.max(1))
        .map(|i| TenantId::new(format!("tenant{i}")))
        .collect::<Result<_, _>>()?;
    let deployment = Deployment::start(
        servers,
        &Layout {
            tenants: &tenants,
            quota: quota_for(traffic, tenants.len()),
            max_in_flight: 256,
            stage_replicas: args.replicas,
            bin_dir: args.bin_dir.clone(),
            otlp_endpoint: args.otlp_endpoint.clone(),
            kek_file: kek_file.clone(),
        },
    )
    .await?;
    let js = deployment.js.clone();
    let services = &deployment.services;
    // The sink has a connection of its own, as a real one would.
    let mut sink = Sink::subscribe(&servers.client().await, "bench.sink.>").await?;
    // Warm-up: one message per tenant, so every stage has found every tenant (backpressure
    // discovers tenants by scanning, every `scan_interval_ms`) before the measured run.
    let mut warm_up = futures::stream::FuturesUnordered::new();
    for (i, tenant) in tenants.iter().enumerate() {
        let mut h = HeaderMap::new();
        h.insert("Nats-Msg-Id", format!("warm-up-{run_id}-{i}"));
        warm_up.push(
            js.publish_with_headers(ingress_subject(tenant), h, "warm-up".into())
                .await?
                .into_future(),
        );
    }
    while let Some(ack) = warm_up.next().await {
        ack?;
    }
    sink.skip(tenants.len(), Duration::from_secs(120))
        .await
        .with_context(|| {
            format!(
                "warming up; the services' logs: {}",
                deployment.log_dir.display()
            )
        })?;
    let clock = if args.stage_latency {
        Some(StageClock::start(&servers.client().await, &Namespace::default()).await?)
    } else {
        None
    };
    let collect = sink.collect(traffic.messages, Duration::from_secs(60));

    let processes: Vec<(String, u32)> = deployment
        .processes()
        .map(|(name, pid)| (name.to_owned(), pid))
        .chain(servers.processes())
        .chain([("bench (publisher, sink)".to_owned(), std::process::id())])
        .collect();
    let cpu_before = cpu_times(&processes);
    let messages_before = servers.messages_by_client();
    let started = Instant::now();
    publish_all(&js, traffic, |i| {
        let subject = ingress_subject(&tenants[i % tenants.len()]);
        let mut h = HeaderMap::new();
        h.insert("Nats-Msg-Id", format!("bench-{run_id}-{i}"));
        (subject, h)
    })
    .await?;
    let (mut latencies, last) = collect.await?;
    latencies.sort();
    let cpu_after = cpu_times(&processes);
    let messages_after = servers.messages_by_client();
    let mut figures = Figures::new(
        &format!(
            "{}{}{}",
            crate::report::PIPELINE,
            if encrypted { ", encryption on" } else { "" },
            if args.replicas > 1 {
                format!(", {} replicas per stage", args.replicas)
            } else {
                String::new()
            }
        ),
        traffic,
        latencies,
        last.duration_since(started),
    );
    figures.notes.push(format!(
        "{}: {}",
        figures.name,
        cpu_per_message(&cpu_before, &cpu_after, figures.received)
    ));
    figures.notes.push(messages_per_delivery(
        &messages_before,
        &messages_after,
        figures.received,
    ));
    if let Some(clock) = clock {
        let line = clock.stop(&figures.latencies).await?;
        figures.notes.push(line);
    }
    for (name, pid) in deployment.processes() {
        if let Some(bytes) = peak_rss(pid) {
            figures.peak_rss.push((format!("switchyard-{name}"), bytes));
        }
    }
    let notes = &mut figures.notes;
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
        // `max` turns the empty sum's -0 into 0.
        let deferred = metric(&text, "switchyard_egress_deferred_total").max(0.0);
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
    notes.push(format!(
        "service logs: {} (kept after the run)",
        deployment.log_dir.display()
    ));
    for (name, bytes) in servers.resident() {
        notes.push(format!(
            "{name} resident memory at the end: {:.1} MiB",
            bytes as f64 / 1048576.0
        ));
    }
    if servers.replicas() > 1 {
        notes.push(format!(
            "stream leaders per node: {}",
            leader_placement(&js).await?
        ));
    }
    Ok(figures)
}

/// NATS messages each service's connection sent and received per delivered message, between
/// two [`Servers::messages_by_client`] samples (the benchmark's own connections, and services
/// that exchanged none, left out).
pub fn messages_per_delivery(
    before: &[(String, u64, u64)],
    after: &[(String, u64, u64)],
    delivered: usize,
) -> String {
    let per = |n: u64| n as f64 / delivered.max(1) as f64;
    let parts: Vec<String> = after
        .iter()
        .filter(|(name, _, _)| name.starts_with("switchyard-"))
        .filter_map(|(name, sent, received)| {
            let (s0, r0) = before
                .iter()
                .find(|(n, _, _)| n == name)
                .map_or((0, 0), |(_, s, r)| (*s, *r));
            let (sent, received) = (sent.saturating_sub(s0), received.saturating_sub(r0));
            (sent + received > 0)
                .then(|| format!("{name} {:.2} out / {:.2} in", per(sent), per(received)))
        })
        .collect();
    format!(
        "NATS messages per delivered message, sent / received by each service: {}",
        parts.join(", ")
    )
}
