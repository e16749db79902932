//! The backpressure service: per-tenant rate limits enforced globally across replicas
//! ([`lease`]: GCRA slots leased from KV), one delivery loop per tenant so a flooding tenant
//! never blocks another ([`tenant_loop`]), and lag-aware admission state for the edge
//! ([`scan`]). Limits live in the `rate-limits` bucket and are watched, so a change applies
//! to the next lease on every replica.

pub mod config;
pub mod lease;
pub mod replicas;
pub mod scan;
pub mod shared;
pub mod tenant_loop;

use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::Context;
use switchyard_keys::Stage;
use switchyard_registry::KvCache;
use switchyard_service::{Handoff, Metrics, Readiness, router};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

pub use config::BackpressureConfig;

/// A started service.
pub struct Running {
    /// The bound probes address.
    pub http_addr: SocketAddr,
    /// Completes when the service has drained after shutdown.
    pub task: JoinHandle<anyhow::Result<()>>,
}

/// Starts the service; returns once it is scanning and listening.
pub async fn start(
    config: BackpressureConfig,
    client: async_nats::Client,
    shutdown: CancellationToken,
) -> anyhow::Result<Running> {
    let topology = config
        .deployment
        .resolve()
        .context("resolving the topology")?;
    let js = switchyard_runtime::jetstream(client.clone(), &config.nats);
    let stream_name = topology
        .stream_name("BACKPRESSURE")
        .context("no BACKPRESSURE stream declared")?
        .to_owned();
    let next_stream_name = topology
        .stream_name(&config.backpressure.next_stage.root().to_ascii_uppercase())
        .context("the next stage has no stream declared")?
        .to_owned();
    let bucket = topology
        .bucket_name("rate-limits")
        .context("no rate-limits bucket declared")?
        .to_owned();
    let kv = js
        .get_key_value(&bucket)
        .await
        .with_context(|| format!("opening bucket {bucket} (run `switchyard provision`)"))?;
    let stream = js
        .get_stream(&stream_name)
        .await
        .with_context(|| format!("opening stream {stream_name} (run `switchyard provision`)"))?;

    let limits = KvCache::start_filtered(kv.clone(), "*.limit", shutdown.clone());
    let pressure = KvCache::start_filtered(kv.clone(), "*.pressure", shutdown.clone());
    limits.wait_loaded().await;
    let metrics = Arc::new(Metrics::new(Stage::Backpressure));
    let leaser = Arc::new(lease::Leaser::new(kv.clone()));
    let own = shared::BackpressureMetrics::register(&metrics, &leaser);
    let shared = Arc::new(shared::Shared {
        js: js.clone(),
        ns: topology.namespace.clone(),
        stream,
        stream_name: stream_name.clone(),
        next_stream_name: next_stream_name.clone(),
        handoff: Handoff::new(js.clone(), topology.namespace.clone()),
        next: config.backpressure.next_stage,
        leaser,
        limits,
        settings: config.backpressure.clone(),
        metrics: metrics.clone(),
        own,
    });

    let readiness = Readiness {
        client,
        js,
        streams: vec![stream_name, next_stream_name],
        buckets: vec![bucket],
    };
    let app = router(readiness, metrics);
    let listener = tokio::net::TcpListener::bind(config.http.listen)
        .await
        .with_context(|| format!("binding {}", config.http.listen))?;
    let http_addr = listener.local_addr()?;
    let task = tokio::spawn(async move {
        let server = tokio::spawn(
            axum::serve(listener, app)
                .with_graceful_shutdown(shutdown.clone().cancelled_owned())
                .into_future(),
        );
        let heartbeat = tokio::spawn(replicas::run(shared.clone(), kv.clone(), shutdown.clone()));
        tracing::info!(%http_addr, "backpressure running");
        scan::run(shared, pressure, kv, shutdown).await;
        heartbeat.await.context("heartbeat task")?;
        server
            .await
            .context("http server task")?
            .context("http server")?;
        Ok(())
    });
    Ok(Running { http_addr, task })
}

/// Runs the service until `shutdown`, then drains.
pub async fn run(
    config: BackpressureConfig,
    client: async_nats::Client,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    start(config, client, shutdown)
        .await?
        .task
        .await
        .context("backpressure task")?
}
