//! The ingress service: reads every tenant's own ingress stream ([`tenants`]), validates every
//! producer message ([`validate`]), stamps the envelope and hands it on ([`handler`]) — or
//! dead-letters it with a precise code — and serves the producer HTTP API ([`http`]) on the
//! public listener, with probes and metrics on a listener of their own. A tenant with
//! encryption on (`tenant-keys` bucket) has its payloads sealed at this edge: by the HTTP API
//! before it stores them, by the stage before it hands them on ([`handler`]).

pub mod config;
pub mod credit;
pub mod handler;
pub mod http;
pub mod tenants;
pub mod validate;

use std::sync::Arc;

use anyhow::Context;
use prometheus_client::metrics::gauge::Gauge;
use switchyard_crypt::KeyCache;
use switchyard_keys::{RateRecord, Stage};
use switchyard_registry::KvCache;
use switchyard_service::{
    DlqQuota, Handoff, HttpServer, Metrics, Readiness, Worker, WorkerSettings, launch_with, router,
};
use switchyard_subjects::{InputStage, SizeClass};
use switchyard_topology::{BucketName, StreamName};
use tokio_util::sync::CancellationToken;

pub use config::IngressConfig;

/// Starts the service; returns once it is consuming and listening.
pub async fn start(
    config: IngressConfig,
    client: async_nats::Client,
    shutdown: CancellationToken,
) -> anyhow::Result<switchyard_service::Running> {
    let topology = config
        .deployment
        .resolve()
        .context("resolving the topology")?;
    switchyard_topology::check_server(&client, &topology)?;
    config.http.validate()?;
    config.ingress.validate(&topology)?;
    let ring = config.encryption.load_ring()?;
    let js = switchyard_runtime::jetstream(client.clone(), &config.nats);
    let (tenants_bucket, tenants_kv) = topology.open_bucket(&js, BucketName::Tenants).await?;
    let tenants = KvCache::start(tenants_kv, shutdown.clone());
    tenants.wait_loaded().await;
    let (limits_bucket, limits_kv) = topology.open_bucket(&js, BucketName::RateLimits).await?;
    let pressure =
        KvCache::start_filtered(limits_kv, RateRecord::Pressure.filter(), shutdown.clone());
    let (keys_bucket, keys_kv) = topology.open_bucket(&js, BucketName::ApiKeys).await?;
    let keys = KvCache::start(keys_kv, shutdown.clone());
    keys.wait_loaded().await;
    // Tenants with encryption on: their payloads are sealed before they are stored (HTTP) or
    // handed on (NATS producers).
    let (sealing_bucket, sealing_kv) = topology.open_bucket(&js, BucketName::TenantKeys).await?;
    let sealing = KeyCache::start(sealing_kv, ring, shutdown.clone());
    sealing.wait_loaded().await;

    let validator = Arc::new(validate::Validator {
        ns: topology.namespace.clone(),
        policy: config.ingress.msg_id_policy,
        max_payload_bytes: config.ingress.max_payload_bytes,
        require_registered_tenant: config.ingress.require_registered_tenant,
        tenants: tenants.clone(),
    });
    let metrics = Arc::new(Metrics::new(Stage::Ingress));
    let readiness = Readiness {
        client: client.clone(),
        js: js.clone(),
        streams: Vec::new(),
        // The first is the storage check's KV probe: one this user may read by direct get.
        buckets: vec![sealing_bucket, tenants_bucket, limits_bucket, keys_bucket],
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
    let api = Arc::new(http::ApiState {
        js: js.clone(),
        keys,
        require_api_key: config.ingress.require_api_key,
        validator: validator.clone(),
        pressure: pressure.clone(),
        sealing: sealing.clone(),
    });
    let pressure_for_credit = pressure;
    let guard = http::Guard::new(
        config.http.request_timeout(),
        config.http.max_concurrent_requests,
        &metrics,
    );
    let public = HttpServer::new(
        config.http.listen,
        http::router(api, config.ingress.max_payload_bytes, guard),
    )
    .header_read_timeout(config.http.request_timeout());
    let probes = HttpServer::new(
        config.http.probes_addr(),
        router(readiness, metrics.clone()),
    );

    let gauges = credit::CreditMetrics::default();
    metrics.register(
        "ingress_tenants_paused",
        "Tenants not read now: over their credit at the next stages, or admission closed",
        gauges.paused.clone(),
    );
    metrics.register(
        "ingress_credit_scans",
        "Scans of the next stages' streams applied to the tenants' gates (stalls while scans fail)",
        gauges.scans.clone(),
    );
    // What the largest message a producer may send counts once handed on (its payload, its
    // headers, the envelope's): what each fetch is planned at.
    let largest = SizeClass::of(
        config.ingress.max_payload_bytes + config::PRODUCER_HEADER_ROOM + credit::ENVELOPE_ROOM,
    )
    .bound();
    let credit = Arc::new(credit::Credit::new(
        config.ingress.next_stage_credit_bytes,
        largest,
        gauges,
    ));
    let handler = Arc::new(handler::IngressHandler {
        validator,
        handoff: Handoff::new(js.clone(), topology.namespace.clone()),
        next: config.ingress.next_stage,
        topology: topology.clone(),
        sealing,
    });
    let mut settings = WorkerSettings {
        concurrency: config.ingress.concurrency,
        max_in_flight_bytes: config.ingress.max_in_flight_bytes,
        max_batch: config.ingress.tenant_batch,
        // One pull waits per tenant; a long wait keeps an idle tenant's cost low (a message
        // arriving is delivered to the waiting pull at once).
        fetch_wait: tenants::FETCH_WAIT,
        ..WorkerSettings::default()
    };
    settings.settle.dlq_quota = DlqQuota::start_declared(
        &js,
        &topology.namespace,
        topology.dlq_tenant_quota(),
        &shutdown,
    );
    let dlq_quota = settings.settle.dlq_quota.clone();
    let consumers = Gauge::default();
    let missing = Gauge::default();
    metrics.register(
        "ingress_tenant_consumers",
        "Tenant ingress streams being read",
        consumers.clone(),
    );
    metrics.register(
        "ingress_tenant_streams_missing",
        "Registered tenants whose ingress stream or consumer cannot be opened (not provisioned)",
        missing.clone(),
    );
    // The sized stages from the next one on: where a tenant's bytes count against its credit.
    let mut held_streams = Vec::new();
    for stage in InputStage::ALL
        .into_iter()
        .skip_while(|s| *s != config.ingress.next_stage)
        .filter(|s| s.sized())
    {
        // Opened, not only named: they must exist to be counted.
        topology
            .open_streams(&js, StreamName::input_of(stage))
            .await?;
        let base = StreamName::input_of(stage).base();
        held_streams.extend(
            topology
                .streams
                .iter()
                .filter(|s| s.base == base)
                .map(|s| (s.config.name.clone(), s.shard)),
        );
    }
    let credit_settings = credit::CreditSettings {
        // Opened, not only named: the next stage's streams must exist before any hand-off.
        next_streams: topology
            .open_streams(&js, StreamName::input_of(config.ingress.next_stage))
            .await?
            .into_iter()
            .map(|(name, _)| name)
            .collect(),
        limit: config.ingress.next_stage_credit,
        held_streams,
        every: config.ingress.credit_scan(),
    };

    let worker = Arc::new(Worker::new(
        handler,
        js.clone(),
        topology.namespace.clone(),
        metrics,
        settings,
    ));

    let http_shutdown = shutdown.clone();
    let work = async move {
        let scan = credit.clone().run(
            js.clone(),
            topology.namespace.clone(),
            credit_settings,
            pressure_for_credit,
            dlq_quota,
            shutdown.clone(),
        );
        let supervisor = tenants::Supervisor {
            worker,
            credit,
            js,
            topology,
            tenants,
            consumers,
            missing,
        };
        let read = tenants::supervise(supervisor, shutdown);
        tokio::join!(scan, read);
    };
    Ok(launch_with("ingress", public, Some(probes), http_shutdown, work).await?)
}

/// Runs the service until `shutdown`, then drains.
pub async fn run(
    config: IngressConfig,
    client: async_nats::Client,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    start(config, client, shutdown)
        .await?
        .finished()
        .await
        .context("ingress service")
}
