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
//! - [`breaker`]: per-route circuit breakers, shared by every replica through the `breakers`
//!   bucket ([`shared_breaker`]); [`limiter`]: per-route in-flight limits.
//! - [`receipt`]: delivery receipts; [`attempt_log`]: the delivery log (every attempt);
//!   [`metrics`]: egress's own metrics.
//!
//! [`run`] is what the binary calls; [`start`] returns once the service is consuming, with
//! its bound probe address (through `switchyard_service::launch`, like every service).

pub mod attempt_log;
pub mod backoff;
pub mod breaker;
pub mod classify;
pub mod config;
pub mod fanout;
pub mod handler;
pub mod limiter;
pub mod metrics;
pub mod nats_sink;
pub mod rate;
pub mod receipt;
pub mod routing;
pub mod shared_breaker;
pub mod sink;
pub mod webhook;

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use switchyard_keys::{DestinationKey, RouteKey, Stage, TenantKey};
use switchyard_registry::{Destination, KvCache, Route, Store, TenantRecord};
use switchyard_service::events::EventLog;
use switchyard_service::lease::Leaser;
use switchyard_service::{
    DlqQuota, Handoff, HighWater, Metrics, Readiness, Running, SettleSettings, Worker,
    WorkerSettings, launch,
};
use switchyard_topology::{BucketName, ConsumerName, StreamName};
use tokio_util::sync::CancellationToken;

pub use config::{EgressConfig, EgressSettings};

use crate::attempt_log::AttemptLog;
use crate::backoff::Backoff;
use crate::breaker::{BreakerSettings, Breakers};
use crate::handler::EgressHandler;
use crate::limiter::Limiter;
use crate::metrics::EgressMetrics;
use crate::nats_sink::NatsSink;
use crate::rate::DestinationRates;
use crate::shared_breaker::SharedBreakers;
use crate::sink::Sinks;
use crate::webhook::WebhookClient;

/// How long shutdown waits to flush the last receipts to NATS.
const SHUTDOWN_FLUSH: Duration = Duration::from_secs(5);

/// Runs the service until `shutdown`, then drains.
pub async fn run(
    config: EgressConfig,
    client: async_nats::Client,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    start(config, client, shutdown)
        .await?
        .finished()
        .await
        .context("egress service")
}

/// Starts the service on `config.http.listen`; returns once the routes are loaded, the probes
/// are served and the worker is consuming.
pub async fn start(
    config: EgressConfig,
    client: async_nats::Client,
    shutdown: CancellationToken,
) -> anyhow::Result<Running> {
    config.validate()?;
    // (a) Where everything lives in this deployment.
    let topology = config
        .deployment
        .resolve()
        .context("resolving the topology")?;
    switchyard_topology::check_server(&client, &topology)?;
    let ns = topology.namespace.clone();
    let ack_wait = topology
        .consumer(ConsumerName::EgressWorker)
        .context("the topology declares no egress-worker consumer")?
        .config
        .ack_wait;
    let dlq_stream = topology
        .stream_name(StreamName::Dlq)
        .context("the topology declares no DLQ stream")?
        .to_owned();
    let js = switchyard_runtime::jetstream(client.clone(), &config.nats);
    let (stream, stream_handle) = topology.open_stream(&js, StreamName::Egress).await?;
    let consumer = topology
        .open_consumer(&js, ConsumerName::EgressWorker)
        .await?;

    // (b) The routes cache, loaded before the first message is handled.
    let (bucket, kv) = topology.open_bucket(&js, BucketName::Routes).await?;
    let routes: Arc<KvCache<RouteKey, Route>> = KvCache::start(kv, shutdown.child_token());
    tokio::select! {
        _ = routes.wait_loaded() => tracing::info!(bucket = %bucket, routes = routes.len(), "routes loaded"),
        // Stopped before it started: nothing to serve, nothing to drain.
        _ = shutdown.cancelled() => {
            return Ok(launch("egress", config.http.listen, axum::Router::new(), shutdown, async {}).await?);
        }
    }

    // Destinations and tenant records (the unmatched policy), loaded the same way: a message
    // handled before they are would skip a destination.
    let (destinations_bucket, kv) = topology.open_bucket(&js, BucketName::Destinations).await?;
    let destination_store = Store::new(kv.clone());
    let destinations: Arc<KvCache<DestinationKey, Destination>> =
        KvCache::start(kv, shutdown.child_token());
    let (_, rate_kv) = topology.open_bucket(&js, BucketName::RateLimits).await?;
    let (tenants_bucket, kv) = topology.open_bucket(&js, BucketName::Tenants).await?;
    let tenants: Arc<KvCache<TenantKey, TenantRecord>> = KvCache::start(kv, shutdown.child_token());
    tokio::select! {
        _ = async { tokio::join!(destinations.wait_loaded(), tenants.wait_loaded()) } => {
            tracing::info!(destinations = destinations.len(), tenants = tenants.len(), "destinations and tenants loaded");
        }
        _ = shutdown.cancelled() => {
            return Ok(launch("egress", config.http.listen, axum::Router::new(), shutdown, async {}).await?);
        }
    }

    // The handler, before anything is served.
    let metrics = Arc::new(Metrics::new(Stage::Egress));
    let leaser = Leaser::new(rate_kv);
    metrics.register(
        "egress_rate_kv_ops",
        "KV operations of destinations' rate-limit leases (reads and writes)",
        leaser.kv_ops.clone(),
    );
    metrics.register(
        "egress_rate_fallbacks",
        "Destination rate-limit leases taken from the local record while KV was unreachable",
        leaser.fallbacks.clone(),
    );

    let egress_metrics = EgressMetrics::register(&metrics);
    let settings = config.egress.clone();
    let dlq_quota = DlqQuota::start_declared(
        &js,
        &ns,
        topology.dlq_tenant_quota(),
        &shutdown.child_token(),
    );
    let breakers = Arc::new(Breakers::new(BreakerSettings {
        threshold: settings.breaker_failure_threshold,
        open: Duration::from_secs(settings.breaker_open_secs),
        max_open: Duration::from_secs(settings.breaker_max_open_secs),
        failure_rate: settings.breaker_failure_rate,
        window: settings.breaker_window,
    }));
    // The open breakers of every replica, adopted before the first message, so no replica
    // starts by hammering a route the others hold back.
    // The tenants' data keys: encrypted payloads are opened before fan-out and delivery.
    let ring = config.encryption.load_ring()?;
    let (keys_bucket, kv) = topology.open_bucket(&js, BucketName::TenantKeys).await?;
    let keys = switchyard_crypt::KeyCache::start(kv, ring, shutdown.child_token());
    let (breakers_bucket, kv) = topology.open_bucket(&js, BucketName::Breakers).await?;
    let shared_breakers = SharedBreakers::start(
        kv,
        breakers.clone(),
        egress_metrics.clone(),
        shared_breaker::replica_name(),
        shutdown.child_token(),
    );
    tokio::select! {
        _ = async { tokio::join!(shared_breakers.wait_loaded(), keys.wait_loaded()) } => {}
        _ = shutdown.cancelled() => {
            return Ok(launch("egress", config.http.listen, axum::Router::new(), shutdown, async {}).await?);
        }
    }
    let settle = SettleSettings {
        dlq_quota: dlq_quota.clone(),
        ..SettleSettings::default()
    };
    let handler = EgressHandler {
        ns: ns.clone(),
        own_subjects: nats_sink::OwnSubjects::of(&ns),
        stream: stream_handle,
        ack_wait,
        routes,
        destinations,
        destination_store,
        rates: DestinationRates::new(leaser),
        tenants,
        // Retries and deferrals are schedules in EGRESS, which must discard old: none is added
        // above its high-water mark, so none evicts another tenant's messages.
        handoff: Handoff::new(js.clone(), ns.clone()).with_high_water(HighWater::start(
            js.clone(),
            switchyard_subjects::InputStage::Egress,
            stream.clone(),
            shutdown.child_token(),
        )),
        client: client.clone(),
        sinks: Sinks {
            webhook: WebhookClient::new().context("building the webhook client")?,
            nats: NatsSink::new(client.clone(), js.clone()),
            keys,
        },
        breakers: breakers.clone(),
        shared_breakers: shared_breakers.clone(),
        limiter: Limiter::new(),
        tenant_limiter: Limiter::new(),
        backoff: Backoff::new(
            &settings.backoff_secs,
            Duration::from_secs(settings.max_retry_after_secs),
        ),
        attempt_log: AttemptLog {
            js: js.clone(),
            ns: ns.clone(),
            enabled: settings.attempt_log,
            metrics: egress_metrics.clone(),
        },
        events: {
            let events = EventLog::new(js.clone(), ns.clone(), "egress");
            metrics.register(
                "egress_events_failed",
                "Operational events the EVENTS stream did not confirm",
                events.failed.clone(),
            );
            events
        },
        metrics: egress_metrics,
        settings: settings.clone(),
        dlq_quota: dlq_quota.clone(),
        hold: settle.hold,
        shutdown: shutdown.clone(),
    };

    // (c) Probes and metrics.
    let readiness = Readiness {
        client: client.clone(),
        js: js.clone(),
        streams: vec![stream, dlq_stream],
        // The first is the storage check's KV probe: one this user may read by direct get.
        buckets: vec![
            destinations_bucket,
            bucket,
            tenants_bucket,
            breakers_bucket,
            keys_bucket,
        ],
        storage: None,
    }
    .measured(
        config.storage.clone(),
        &ns,
        None,
        &metrics,
        shutdown.clone(),
    )
    .await;
    let app = switchyard_service::router(readiness, metrics.clone());

    // (d) The worker, until shutdown. Its slots, not a byte budget, bound what it holds: its
    // one consume loop reads every tenant's messages in stream order, so a budget would let
    // one tenant's attempts held long (large messages to a sink that never answers) stop the
    // fetches of every other tenant (docs/performance.md, "Memory bounded by bytes").
    let worker = Worker::new(
        Arc::new(handler),
        js,
        ns,
        metrics,
        WorkerSettings {
            concurrency: settings.concurrency,
            max_in_flight_bytes: usize::MAX,
            settle,
            ..WorkerSettings::default()
        },
    );
    tracing::info!(concurrency = settings.concurrency, "egress running");
    let listen = config.http.listen;
    Ok(launch("egress", listen, app, shutdown.clone(), async move {
        worker.run(consumer, shutdown).await;
        // Flush receipts published by the last messages — bounded: with NATS gone, a flush
        // would wait for a reconnection that never comes, and the process would never exit.
        match tokio::time::timeout(SHUTDOWN_FLUSH, client.flush()).await {
            Ok(Ok(())) => {}
            Ok(Err(error)) => tracing::warn!(%error, "flushing receipts on shutdown failed"),
            Err(_) => tracing::warn!(
                ?SHUTDOWN_FLUSH,
                "NATS unreachable: receipts not yet flushed are dropped on shutdown"
            ),
        }
    })
    .await?)
}
