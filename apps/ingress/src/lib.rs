//! The ingress service: consumes the ingress stream, validates every producer message
//! ([`validate`]), stamps the envelope and hands it on ([`handler`]) — or dead-letters it with
//! a precise code — and serves the producer HTTP API ([`http`]) plus probes on one listener.

pub mod config;
pub mod handler;
pub mod http;
pub mod validate;

use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::Context;
use switchyard_keys::Stage;
use switchyard_registry::KvCache;
use switchyard_service::{Handoff, Metrics, Readiness, Worker, WorkerSettings, router};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

pub use config::IngressConfig;

/// The ingress consumer's durable name (declared in `nats/topology.toml`).
pub const CONSUMER: &str = "ingress-worker";

/// A started service: where its HTTP listener is, and the task running it.
pub struct Running {
    /// The bound HTTP address (useful with port 0).
    pub http_addr: SocketAddr,
    /// Completes when the service has drained after shutdown.
    pub task: JoinHandle<anyhow::Result<()>>,
}

/// Starts the service; returns once it is consuming and listening.
pub async fn start(
    config: IngressConfig,
    client: async_nats::Client,
    shutdown: CancellationToken,
) -> anyhow::Result<Running> {
    let topology = config
        .deployment
        .resolve()
        .context("resolving the topology")?;
    let js = switchyard_runtime::jetstream(client.clone(), &config.nats);
    let stream_name = topology
        .stream_name("INGRESS")
        .context("no INGRESS stream declared")?
        .to_owned();
    let tenants_bucket = topology
        .bucket_name("tenants")
        .context("no tenants bucket declared")?
        .to_owned();

    let tenants_kv = js
        .get_key_value(&tenants_bucket)
        .await
        .with_context(|| format!("opening bucket {tenants_bucket} (run `switchyard provision`)"))?;
    let tenants = KvCache::start(tenants_kv, shutdown.clone());
    tenants.wait_loaded().await;
    let limits_bucket = topology
        .bucket_name("rate-limits")
        .context("no rate-limits bucket declared")?
        .to_owned();
    let limits_kv = js
        .get_key_value(&limits_bucket)
        .await
        .with_context(|| format!("opening bucket {limits_bucket} (run `switchyard provision`)"))?;
    let pressure = KvCache::start_filtered(limits_kv, "*.pressure", shutdown.clone());

    let stream = js
        .get_stream(&stream_name)
        .await
        .with_context(|| format!("opening stream {stream_name} (run `switchyard provision`)"))?;
    let consumer: async_nats::jetstream::consumer::PullConsumer = stream
        .get_consumer(CONSUMER)
        .await
        .map_err(|e| anyhow::anyhow!("opening consumer {stream_name}/{CONSUMER}: {e}"))?;

    let validator = Arc::new(validate::Validator {
        ns: topology.namespace.clone(),
        policy: config.ingress.msg_id_policy,
        max_payload_bytes: config.ingress.max_payload_bytes,
        require_registered_tenant: config.ingress.require_registered_tenant,
        tenants,
    });
    let metrics = Arc::new(Metrics::new(Stage::Ingress));
    let readiness = Readiness {
        client: client.clone(),
        js: js.clone(),
        streams: vec![stream_name.clone()],
        buckets: vec![tenants_bucket, limits_bucket],
    };
    let api = Arc::new(http::ApiState {
        js: js.clone(),
        stream,
        stream_name,
        validator: validator.clone(),
        pressure,
    });
    let app = router(readiness, metrics.clone())
        .merge(http::router(api, config.ingress.max_payload_bytes));
    let listener = tokio::net::TcpListener::bind(config.http.listen)
        .await
        .with_context(|| format!("binding {}", config.http.listen))?;
    let http_addr = listener.local_addr()?;

    let handler = Arc::new(handler::IngressHandler {
        validator,
        handoff: Handoff::new(js.clone(), topology.namespace.clone()),
        next: config.ingress.next_stage,
    });
    let settings = WorkerSettings {
        concurrency: config.ingress.concurrency,
        ..WorkerSettings::default()
    };
    let worker = Worker::new(handler, js, topology.namespace, metrics, settings);

    let task = tokio::spawn(async move {
        let server = tokio::spawn(
            axum::serve(listener, app)
                .with_graceful_shutdown(shutdown.clone().cancelled_owned())
                .into_future(),
        );
        tracing::info!(%http_addr, "ingress running");
        worker.run(consumer, shutdown).await;
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
    config: IngressConfig,
    client: async_nats::Client,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    start(config, client, shutdown)
        .await?
        .task
        .await
        .context("ingress task")?
}
