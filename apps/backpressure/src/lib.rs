//! The backpressure service: per-tenant rate limits enforced globally across replicas
//! ([`lease`]: GCRA slots leased from KV), one delivery loop per tenant so a flooding tenant
//! never blocks another ([`tenant_loop`]), and lag-aware admission state for the edge
//! ([`scan`]). Limits live in the `rate-limits` bucket and are watched, so a change applies
//! to the next lease on every replica. [`quota`] reports each tenant's own ingress stream
//! near its quota (event `quota_near_full`, once per crossing across replicas). Settings are validated at start-up against the topology
//! ([`config::BackpressureSettings::validate`]); a tenant loop that dies is restarted by the next
//! scan, and `/readyz` fails while one keeps dying ([`scan::LoopHealth`]).

pub mod config;
pub mod quota;
pub mod replicas;
pub mod scan;
pub mod shared;
pub mod tenant_loop;

use std::sync::Arc;

use anyhow::Context;
use switchyard_keys::{RateRecord, Stage};
use switchyard_registry::{KvCache, Store};
use switchyard_service::{
    DlqQuota, Handoff, HighWater, Metrics, Readiness, SettleSettings, Settler, launch, probes,
};
use switchyard_topology::{BucketName, StreamName};
use tokio_util::sync::CancellationToken;

pub use config::BackpressureConfig;

/// Starts the service; returns once it is scanning and listening.
pub async fn start(
    config: BackpressureConfig,
    client: async_nats::Client,
    shutdown: CancellationToken,
) -> anyhow::Result<switchyard_service::Running> {
    let topology = config
        .deployment
        .resolve()
        .context("resolving the topology")?;
    switchyard_topology::check_server(&client, &topology)?;
    config.backpressure.validate(&topology)?;
    let js = switchyard_runtime::jetstream(client.clone(), &config.nats);
    let streams = topology.open_streams(&js, StreamName::Backpressure).await?;
    let stream_names: Vec<String> = streams.iter().map(|(name, _)| name.clone()).collect();
    let next = StreamName::input_of(config.backpressure.next_stage);
    let (next_stream_name, _) = topology.open_stream(&js, next).await?;
    let (bucket, kv) = topology.open_bucket(&js, BucketName::RateLimits).await?;

    let limits = KvCache::start_filtered(kv.clone(), RateRecord::Limit.filter(), shutdown.clone());
    let pressure =
        KvCache::start_filtered(kv.clone(), RateRecord::Pressure.filter(), shutdown.clone());
    limits.wait_loaded().await;
    let metrics = Arc::new(Metrics::new(Stage::Backpressure));
    let leaser = Arc::new(switchyard_service::lease::Leaser::new(kv.clone()));
    let own = shared::BackpressureMetrics::register(&metrics, &leaser);
    let loop_health = Arc::new(scan::LoopHealth::default());
    let shared = Arc::new(shared::Shared {
        js: js.clone(),
        topology: topology.clone(),
        ns: topology.namespace.clone(),
        streams,
        stream_names: stream_names.clone(),
        next_stream_name: next_stream_name.clone(),
        // Never make a discard-old next stream (EGRESS: its schedules) evict: wait above its
        // high-water mark instead.
        handoff: Handoff::new(js.clone(), topology.namespace.clone()).with_high_water(
            HighWater::start(
                js.clone(),
                config.backpressure.next_stage,
                next_stream_name.clone(),
                shutdown.clone(),
            ),
        ),
        next: config.backpressure.next_stage,
        leaser,
        limits,
        settings: config.backpressure.clone(),
        budget: switchyard_service::budget::ByteBudget::new(
            config.backpressure.max_in_flight_bytes,
            metrics.bytes_held.clone(),
        ),
        metrics: metrics.clone(),
        own,
        loop_health: loop_health.clone(),
        release_pending: Default::default(),
        events: switchyard_service::events::EventLog::new(
            js.clone(),
            topology.namespace.clone(),
            "backpressure",
        ),
        settler: Settler::new(
            js.clone(),
            topology.namespace.clone(),
            metrics.clone(),
            SettleSettings {
                dlq_quota: DlqQuota::start_declared(
                    &js,
                    &topology.namespace,
                    topology.dlq_tenant_quota(),
                    &shutdown,
                ),
                ..SettleSettings::default()
            },
        ),
    });

    let readiness = Readiness {
        client,
        js,
        streams: stream_names.into_iter().chain([next_stream_name]).collect(),
        buckets: vec![bucket],
        storage: None,
    }
    .measured(
        config.storage.clone(),
        &topology.namespace,
        topology.stream_name(StreamName::Dlq).map(str::to_owned),
        &metrics,
        shutdown.clone(),
    )
    .await;
    // Ready only while no tenant loop keeps dying (see `scan::LoopHealth`).
    let app = probes::router_with_check(
        readiness,
        metrics,
        Arc::new(move || loop_health.check(std::time::Instant::now())),
    );
    let listen = config.http.listen;
    Ok(
        launch("backpressure", listen, app, shutdown.clone(), async move {
            let heartbeat =
                tokio::spawn(replicas::run(shared.clone(), kv.clone(), shutdown.clone()));
            let quota = quota::run(&shared, Store::new(kv.clone()), shutdown.clone());
            let scan = scan::run(shared.clone(), pressure, kv, shutdown);
            tokio::join!(quota, scan);
            let _ = heartbeat.await;
        })
        .await?,
    )
}

/// Runs the service until `shutdown`, then drains.
pub async fn run(
    config: BackpressureConfig,
    client: async_nats::Client,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    start(config, client, shutdown)
        .await?
        .finished()
        .await
        .context("backpressure service")
}
