//! The egress service: the last stage of the pipeline. It reads `egress.v1.<tenant>.<team>.<platform>`
//! through the `egress-worker` consumer, looks up each message's route in the `routes` bucket
//! (cached, kept fresh by a KV watch) and delivers it to an HTTP webhook or a NATS subject.
//!
//! - [`config`]: [`EgressConfig`], layered and validated.
//! - [`handler`]: the decision for one message ([`handler::EgressHandler`]).
//! - [`routing`]: which route applies and whether it is usable.
//! - [`sink`]: one attempt over the route's sink: [`webhook`] (the signed POST) or
//!   [`nats_sink`] (the NATS publish).
//! - [`classify`]: the one place deciding delivered / retryable / permanent.
//! - [`backoff`]: the retry schedule with jitter, and `Retry-After`.
//! - [`breaker`]: per-route circuit breakers; [`limiter`]: per-route in-flight limits.
//! - [`receipt`]: delivery receipts; [`metrics`]: egress's own metrics.
//!
//! [`run`] is what the binary calls; [`start`] returns once the service is consuming, with
//! its bound probe address; [`serve`] takes a listener of the caller's.

pub mod backoff;
pub mod breaker;
pub mod classify;
pub mod config;
pub mod handler;
pub mod limiter;
pub mod metrics;
pub mod nats_sink;
pub mod receipt;
pub mod routing;
pub mod sink;
pub mod webhook;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use switchyard_keys::{RouteKey, Stage};
use switchyard_registry::{KvCache, Route};
use switchyard_service::{Handoff, Metrics, Readiness, Worker, WorkerSettings};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

pub use config::{EgressConfig, EgressSettings, HttpConfig};

use crate::backoff::Backoff;
use crate::breaker::{BreakerSettings, Breakers};
use crate::handler::EgressHandler;
use crate::limiter::Limiter;
use crate::metrics::EgressMetrics;
use crate::nats_sink::NatsSink;
use crate::sink::Sinks;
use crate::webhook::WebhookClient;

/// The consumer egress reads from.
pub const CONSUMER: &str = "egress-worker";
/// The declared (base) name of egress's input stream.
pub const STREAM: &str = "EGRESS";
/// The declared (base) name of the DLQ stream.
pub const DLQ_STREAM: &str = "DLQ";
/// The declared (base) name of the routes bucket.
pub const ROUTES_BUCKET: &str = "routes";

/// A started service.
#[derive(Debug)]
pub struct Running {
    /// The bound probe address (useful with `http.listen` on port 0).
    pub http_addr: SocketAddr,
    /// Completes once the service has drained after shutdown.
    pub task: JoinHandle<anyhow::Result<()>>,
}

/// Binds `config.http.listen` and runs the service until `shutdown`, then drains.
pub async fn run(
    config: EgressConfig,
    client: async_nats::Client,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    start(config, client, shutdown)
        .await?
        .task
        .await
        .context("egress task")?
}

/// Runs the service with probes served on `listener` until `shutdown`, then drains in-flight
/// messages and returns. `config.http.listen` is not used.
pub async fn serve(
    config: EgressConfig,
    client: async_nats::Client,
    listener: TcpListener,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    start_on(config, client, listener, shutdown)
        .await?
        .task
        .await
        .context("egress task")?
}

/// Binds `config.http.listen` and starts the service; returns once the routes are loaded,
/// the probes are served and the worker is consuming.
pub async fn start(
    config: EgressConfig,
    client: async_nats::Client,
    shutdown: CancellationToken,
) -> anyhow::Result<Running> {
    let listener = TcpListener::bind(config.http.listen)
        .await
        .with_context(|| format!("binding http.listen {}", config.http.listen))?;
    start_on(config, client, listener, shutdown).await
}

/// [`start`] with probes on `listener` instead of `config.http.listen`.
pub async fn start_on(
    config: EgressConfig,
    client: async_nats::Client,
    listener: TcpListener,
    shutdown: CancellationToken,
) -> anyhow::Result<Running> {
    config.validate()?;
    // (a) Where everything lives in this deployment.
    let topology = config
        .deployment
        .resolve()
        .context("resolving the topology")?;
    let ns = topology.namespace.clone();
    let name = |kind: &str, found: Option<&str>| {
        found
            .map(str::to_owned)
            .with_context(|| format!("the topology declares no {kind}"))
    };
    let stream = name("stream EGRESS", topology.stream_name(STREAM))?;
    let dlq_stream = name("stream DLQ", topology.stream_name(DLQ_STREAM))?;
    let bucket = name("bucket routes", topology.bucket_name(ROUTES_BUCKET))?;
    let consumer_spec = topology
        .consumer(CONSUMER)
        .context("the topology declares no egress-worker consumer")?;
    let ack_wait = consumer_spec.config.ack_wait;
    let js = switchyard_runtime::jetstream(client.clone(), &config.nats);

    // (b) The routes cache, loaded before the first message is handled.
    let kv = js
        .get_key_value(&bucket)
        .await
        .with_context(|| format!("opening bucket {bucket} (run `switchyard provision`)"))?;
    let routes: Arc<KvCache<RouteKey, Route>> = KvCache::start(kv, shutdown.child_token());
    let http_addr = listener.local_addr().context("reading the http address")?;
    tokio::select! {
        _ = routes.wait_loaded() => tracing::info!(bucket = %bucket, routes = routes.len(), "routes loaded"),
        _ = shutdown.cancelled() => {
            return Ok(Running { http_addr, task: tokio::spawn(async { Ok(()) }) });
        }
    }

    // The consumer and the handler, before anything is served.
    let metrics = Arc::new(Metrics::new(Stage::Egress));
    let egress_metrics = EgressMetrics::register(&metrics);
    let consumer: async_nats::jetstream::consumer::PullConsumer = js
        .get_consumer_from_stream(CONSUMER, &stream)
        .await
        .with_context(|| {
            format!("opening consumer {stream}/{CONSUMER} (run `switchyard provision`)")
        })?;
    let settings = config.egress.clone();
    let handler = EgressHandler {
        ns: ns.clone(),
        stream: js
            .get_stream(&stream)
            .await
            .with_context(|| format!("opening stream {stream} (run `switchyard provision`)"))?,
        ack_wait,
        routes,
        handoff: Handoff::new(js.clone(), ns.clone()),
        client: client.clone(),
        sinks: Sinks {
            webhook: WebhookClient::new().context("building the webhook client")?,
            nats: NatsSink::new(client.clone(), js.clone()),
        },
        breakers: Breakers::new(BreakerSettings {
            threshold: settings.breaker_failure_threshold,
            open: Duration::from_secs(settings.breaker_open_secs),
            max_open: Duration::from_secs(settings.breaker_max_open_secs),
        }),
        limiter: Limiter::new(),
        backoff: Backoff::new(
            &settings.backoff_secs,
            Duration::from_secs(settings.max_retry_after_secs),
        ),
        metrics: egress_metrics,
        settings: settings.clone(),
    };

    // (c) Probes and metrics.
    let readiness = Readiness {
        client: client.clone(),
        js: js.clone(),
        streams: vec![stream, dlq_stream],
        buckets: vec![bucket],
    };
    let app = switchyard_service::router(readiness, metrics.clone());
    let http_shutdown = shutdown.clone();
    tracing::info!(addr = %http_addr, "serving /healthz /readyz /metrics");
    let http = tokio::spawn(async move {
        axum::serve(listener, app)
            .with_graceful_shutdown(http_shutdown.cancelled_owned())
            .await
    });

    // (d) The worker, until shutdown.
    let worker = Worker::new(
        Arc::new(handler),
        js,
        ns,
        metrics,
        WorkerSettings {
            concurrency: settings.concurrency,
            ..WorkerSettings::default()
        },
    );
    tracing::info!(concurrency = settings.concurrency, "egress running");
    let task = tokio::spawn(async move {
        worker.run(consumer, shutdown).await;
        // Flush receipts published by the last messages.
        if let Err(error) = client.flush().await {
            tracing::warn!(%error, "flushing on shutdown failed");
        }
        match http.await {
            Ok(Ok(())) => {}
            Ok(Err(error)) => tracing::warn!(%error, "the http server failed"),
            Err(error) => tracing::warn!(%error, "the http server task failed"),
        }
        tracing::info!("egress stopped");
        Ok(())
    });
    Ok(Running { http_addr, task })
}
