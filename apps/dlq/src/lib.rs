//! The dlq service, owner of the DLQ stream:
//!
//! - [`safety_net`] and [`sweep`]: a message JetStream gave up on (max deliveries, or
//!   terminated) before its stage dead-lettered it still lands in the DLQ, with code
//!   `exhausted_deliveries` (or `terminated`), and leaves its work queue;
//! - [`jobs`]: durable replay jobs from the `dlq-jobs` bucket, executed at their rate,
//!   resumable after a crash, one instance per job (a KV lease);
//! - [`stats`]: inflow counters per tenant/stage/code in the `dlq-stats` bucket, inflow
//!   alerts on `alerts.v1.<tenant>.dlq-inflow`, and entries about to age out counted and
//!   alerted on `alerts.v1.<tenant>.dlq-expiring`;
//! - [`events_webhook`]: operational events delivered to an operator's endpoint as signed
//!   webhooks, when `[events_webhook] url` is set;
//!
//! plus `/healthz`, `/readyz` and `/metrics`. Everything runs inside the one task returned by
//! [`start`]: aborting it stops the whole instance, as a crash would.

pub mod advisory;
pub mod config;
pub mod events_webhook;
pub mod jobs;
pub mod metrics;
pub mod safety_net;
pub mod stats;
pub mod sweep;

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use switchyard_dlq_ops::{JobStore, Markers, StatsStore};
use switchyard_keys::Stage;
use switchyard_service::{Metrics, Readiness, launch, router};
use switchyard_subjects::{ControlCommand, ControlSubject, SubjectKind};
use switchyard_topology::{BucketName, StreamName};
use tokio_util::sync::CancellationToken;

pub use config::DlqConfig;

/// A started dlq service; `info` is this instance's id, the owner named in the leases it
/// takes.
pub type Running = switchyard_service::Running<String>;

/// Starts the service; returns once it is subscribed and listening.
pub async fn start(
    config: DlqConfig,
    client: async_nats::Client,
    shutdown: CancellationToken,
) -> anyhow::Result<Running> {
    config.validate()?;
    let topology = config
        .deployment
        .resolve()
        .context("resolving the topology")?;
    switchyard_topology::check_server(&client, &topology)?;
    let js = switchyard_runtime::jetstream(client.clone(), &config.nats);
    let ns = topology.namespace.clone();
    let (dlq_name, dlq) = topology.open_stream(&js, StreamName::Dlq).await?;
    let (jobs_bucket, jobs_kv) = topology.open_bucket(&js, BucketName::DlqJobs).await?;
    let (stats_bucket, stats_kv) = topology.open_bucket(&js, BucketName::DlqStats).await?;
    let (replays_bucket, replays_kv) = topology.open_bucket(&js, BucketName::DlqReplays).await?;
    let instance = uuid::Uuid::now_v7().to_string();

    let metrics = Arc::new(Metrics::new(Stage::Dlq));
    let dlq_metrics = metrics::DlqMetrics::register(&metrics);
    // The events webhook's consumer is opened now: events stored from here on are delivered.
    let events_webhook = match events_webhook::EventsWebhook::new(&config.events_webhook, &metrics)?
    {
        Some(webhook) => Some((
            webhook,
            events_webhook::EventsWebhook::consumer(&js, &topology).await?,
        )),
        None => None,
    };

    let safety = &config.safety_net;
    let net = Arc::new(
        safety_net::SafetyNet::open(
            js.clone(),
            &topology,
            if safety.enabled { &safety.streams } else { &[] },
            safety.rescue_delay(),
            metrics.clone(),
            dlq_metrics.clone(),
        )
        .await?,
    );
    let advisories = if safety.enabled {
        Some(safety_net::SafetyNet::advisories(&js, &topology).await?)
    } else {
        None
    };

    let control_subject = ControlSubject {
        command: ControlCommand::Replay,
    }
    .format(&ns);
    let control = client
        .subscribe(control_subject.clone())
        .await
        .with_context(|| format!("subscribing to {control_subject}"))?;
    let runner = Arc::new(jobs::JobRunner {
        store: JobStore::new(jobs_kv),
        dlq: dlq.clone(),
        js: js.clone(),
        markers: Markers::new(replays_kv),
        ns: ns.clone(),
        owner: instance.clone(),
        settings: config.jobs.clone(),
        metrics: dlq_metrics.clone(),
        events: switchyard_service::events::EventLog::new(js.clone(), ns.clone(), "dlq"),
    });
    let alerts = &config.alerts;
    let processor = stats::StatsProcessor {
        store: StatsStore::new(stats_kv),
        dlq: dlq.clone(),
        client: client.clone(),
        ns: ns.clone(),
        events: switchyard_service::events::EventLog::new(js.clone(), ns.clone(), "dlq"),
        owner: instance.clone(),
        settings: config.stats.clone(),
        alerts: alerts.enabled.then(|| {
            stats::alerts::InflowWindows::new(
                alerts.window_secs,
                alerts.threshold,
                alerts.tenant_thresholds.clone(),
                alerts.cooldown_secs,
            )
        }),
        expiry: expiry_check(alerts, &config.retention, dlq.cached_info().config.max_age)?,
        metrics: dlq_metrics,
    };
    client.flush().await.context("flushing subscriptions")?;

    let mut streams = vec![dlq_name];
    if safety.enabled {
        streams.push(topology.open_stream(&js, StreamName::Advisories).await?.0);
    }
    streams.extend(net.watched().iter().map(|w| w.name.clone()));
    let readiness = Readiness {
        client: client.clone(),
        js,
        streams,
        buckets: vec![jobs_bucket, stats_bucket, replays_bucket],
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
    let app = router(readiness, metrics);

    let sweep_every = safety.sweep_interval_secs;
    let sweep_max = safety.sweep_max_per_stream;
    let (jobs_on, stats_on, safety_on) =
        (config.jobs.enabled, config.stats.enabled, safety.enabled);
    tracing::info!(instance = %instance, "dlq starting");
    let http_shutdown = shutdown.clone();
    // Everything runs in the one task `launch` spawns (no detached tasks), so aborting it is a
    // crash.
    let work = async move {
        let advisories = async {
            if let Some(advisories) = advisories {
                net.clone().run(advisories, shutdown.clone()).await;
            }
        };
        let sweep = async {
            if safety_on && sweep_every > 0 {
                sweep::run(
                    net.clone(),
                    Duration::from_secs(sweep_every),
                    sweep_max,
                    shutdown.clone(),
                )
                .await;
            }
        };
        let jobs = async {
            if jobs_on {
                runner.run(control, shutdown.clone()).await;
            }
        };
        let stats = async {
            if stats_on {
                processor.run(shutdown.clone()).await;
            }
        };
        let webhook = async {
            if let Some((webhook, consumer)) = events_webhook {
                webhook.run(consumer, shutdown.clone()).await;
            }
        };
        tokio::join!(advisories, sweep, jobs, stats, webhook);
        tracing::info!("dlq drained");
    };
    let running = launch("dlq", config.http.listen, app, http_shutdown, work).await?;
    Ok(running.with_info(instance))
}

/// The expiry check ([`stats::expiry`]) for the DLQ's `max_age`: none when alerts are off,
/// `expiring_within_secs` is 0, or the DLQ keeps entries for ever. A window not below the
/// DLQ's `max_age` is refused (every entry would be "expiring").
fn expiry_check(
    alerts: &config::AlertSettings,
    retention: &config::RetentionSettings,
    max_age: Duration,
) -> anyhow::Result<Option<stats::ExpiryCheck>> {
    if !alerts.enabled || alerts.expiring_within_secs == 0 || max_age.is_zero() {
        anyhow::ensure!(
            retention.tenants.is_empty(),
            "invalid setting retention.tenants: a tenant's retention is applied by the expiry \
             check, which needs alerts.enabled and alerts.expiring_within_secs > 0"
        );
        return Ok(None);
    }
    let mut tenants = std::collections::BTreeMap::new();
    for (tenant, secs) in &retention.tenants {
        anyhow::ensure!(
            *secs > alerts.expiring_within_secs,
            "invalid setting retention.tenants.{tenant}: {secs} s is not above \
             alerts.expiring_within_secs ({} s), so its entries would be alerted on as soon as \
             stored; keep them longer or shorten the look-ahead",
            alerts.expiring_within_secs
        );
        tenants.insert(
            tenant.clone(),
            time::Duration::seconds(i64::try_from(*secs)?),
        );
    }
    anyhow::ensure!(
        alerts.expiring_within_secs < max_age.as_secs(),
        "invalid setting alerts.expiring_within_secs: {} is not below the DLQ's max_age ({} s); \
         set less, or 0 for no expiry alerts",
        alerts.expiring_within_secs,
        max_age.as_secs()
    );
    Ok(Some(stats::ExpiryCheck {
        max_age: time::Duration::try_from(max_age)?,
        within: time::Duration::seconds(i64::try_from(alerts.expiring_within_secs)?),
        every: Duration::from_secs(alerts.expiry_check_secs),
        cooldown: time::Duration::seconds(i64::try_from(alerts.cooldown_secs)?),
        cooldowns: stats::expiry::Cooldowns::default(),
        gauged: Default::default(),
        last: None,
        retention: tenants,
    }))
}

/// Runs the service until `shutdown`, then drains.
pub async fn run(
    config: DlqConfig,
    client: async_nats::Client,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    start(config, client, shutdown)
        .await?
        .finished()
        .await
        .context("dlq service")
}
