//! The idempotency service: drops duplicates of (tenant, platform, producer msg id) inside a
//! TTL window kept in the `idempotency` KV bucket ([`claims`]), crash-safely: a message
//! redelivered after a crash between claiming and acking is recognised as itself and handed on
//! ([`handler`]). The policy while KV is unreachable is explicit ([`config::KvUnavailable`]).

pub mod claims;
pub mod config;
pub mod handler;

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use prometheus_client::metrics::counter::Counter;
use switchyard_keys::Stage;
use switchyard_runtime::RetryPolicy;
use switchyard_service::probes::router_with_check;
use switchyard_service::{DlqQuota, Handoff, Metrics, Readiness, Worker, WorkerSettings, launch};
use switchyard_subjects::{StageSubject, SubjectKind};
use switchyard_topology::{BucketName, ConsumerName, StreamName};
use tokio_util::sync::CancellationToken;

pub use config::IdempotencyConfig;

/// How often a message held by a full bucket tries its claim again.
const FULL_RECHECK: Duration = Duration::from_secs(2);

/// Starts the service; returns once it is consuming and listening.
pub async fn start(
    config: IdempotencyConfig,
    client: async_nats::Client,
    shutdown: CancellationToken,
) -> anyhow::Result<switchyard_service::Running> {
    let topology = config
        .deployment
        .resolve()
        .context("resolving the topology")?;
    switchyard_topology::check_server(&client, &topology)?;
    config.idempotency.validate(&topology)?;
    let js = switchyard_runtime::jetstream(client.clone(), &config.nats);
    let (bucket, kv) = topology.open_bucket(&js, BucketName::Idempotency).await?;
    let (stream_name, _) = topology.open_stream(&js, StreamName::Idempotency).await?;
    // The next stage's streams must exist before any hand-off: a hand-off's subject with no
    // stream of this build's layout would be refused or, beside an unsharded `BACKPRESSURE`
    // not yet retired by `switchyard provision`, stored where no stage reads it.
    topology
        .open_streams(&js, StreamName::input_of(config.idempotency.next_stage))
        .await?;
    let consumer = topology
        .open_consumer(&js, ConsumerName::IdempotencyWorker)
        .await?;

    let settings = &config.idempotency;
    let ttl = Duration::from_secs(settings.ttl_secs);
    let metrics = Arc::new(Metrics::new(Stage::Idempotency));
    let fallbacks = Counter::default();
    let duplicates = Counter::default();
    let bucket_full = Counter::default();
    metrics.register(
        "idempotency_local_fallbacks",
        "Claims decided by the local window while KV was unreachable",
        fallbacks.clone(),
    );
    metrics.register(
        "idempotency_duplicates",
        "Duplicates dropped",
        duplicates.clone(),
    );
    metrics.register(
        "idempotency_bucket_full",
        "Messages held because the idempotency bucket was full (its max_bytes or max_msgs)",
        bucket_full.clone(),
    );
    let full = handler::BucketFull::default();
    let handler = Arc::new(handler::IdempotencyHandler {
        kv: claims::KvClaims::new(js.clone(), kv, ttl),
        local: claims::LocalClaims::new(ttl, settings.local_window_max_keys),
        policy: settings.kv_unavailable,
        handoff: Handoff::new(js.clone(), topology.namespace.clone()),
        next: settings.next_stage,
        fallbacks,
        duplicates,
        bucket_full,
        full: full.clone(),
        full_recheck: FULL_RECHECK,
        shutdown: shutdown.clone(),
    });
    let readiness = Readiness {
        client: client.clone(),
        js: js.clone(),
        streams: vec![stream_name],
        buckets: vec![bucket.clone()],
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
    let app = router_with_check(readiness, metrics.clone(), full.readiness(bucket));
    // One hold for everything transient here: a claim while KV is unreachable (policy
    // `wait`) or a failed hand-off is retried in place for exactly `kv_wait_max_secs`.
    let mut worker_settings = WorkerSettings {
        concurrency: settings.concurrency,
        max_in_flight_bytes: settings.max_in_flight_bytes,
        ..WorkerSettings::default()
    };
    worker_settings.settle.dlq_quota = DlqQuota::start_declared(
        &js,
        &topology.namespace,
        topology.dlq_tenant_quota(),
        &shutdown,
    );
    worker_settings.settle.hold =
        RetryPolicy::new(Duration::from_millis(100), Duration::from_secs(2))
            .within(Duration::from_secs(settings.kv_wait_max_secs));
    // Fair across tenants: up to the consumer's max_ack_pending fetched, served per tenant in
    // turn (a burst of one tenant, bounded by ingress's credit, is not a queue for the others).
    let window = usize::try_from(consumer.cached_info().config.max_ack_pending).unwrap_or(1);
    let ns = topology.namespace.clone();
    let worker = Arc::new(Worker::new(
        handler,
        js,
        topology.namespace,
        metrics,
        worker_settings,
    ));
    let listen = config.http.listen;
    Ok(
        launch("idempotency", listen, app, shutdown.clone(), async move {
            let tenant_of = move |msg: &async_nats::jetstream::Message| {
                StageSubject::parse(&ns, msg.subject.as_str())
                    .ok()
                    .map(|s| s.address.tenant)
            };
            worker
                .consume_fair(consumer, window, tenant_of, shutdown)
                .await;
        })
        .await?,
    )
}

/// Runs the service until `shutdown`, then drains.
pub async fn run(
    config: IdempotencyConfig,
    client: async_nats::Client,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    start(config, client, shutdown)
        .await?
        .finished()
        .await
        .context("idempotency service")
}
