//! The dlq service's own metrics, registered next to the core set every service emits
//! ([`switchyard_service::Metrics`]): safety-net rescues, replays, jobs, stats lag, alerts.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use switchyard_service::Metrics;

/// Labels: the stream and what happened.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RescueLabels {
    /// The watched stream.
    pub stream: String,
    /// `rescued`, `already_dead_lettered`, `gone`, `ignored` or `failed`.
    pub result: String,
}

/// Labels: a replay's outcome.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReplayLabels {
    /// `replayed`, `would_replay`, `kept` or `missing`.
    pub outcome: String,
}

/// Labels: a tenant.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct AlertLabels {
    /// The tenant alerted on.
    pub tenant: String,
}

/// The service's own metrics (cheap to clone: every field is a shared handle).
#[derive(Clone, Default)]
pub struct DlqMetrics {
    /// Advisories and sweep findings handled, by stream and result.
    pub rescues: Family<RescueLabels, Counter>,
    /// Messages the last sweep left unexamined because their consumer had deliveries in
    /// flight (stored below its delivered sequence: in flight, or stranded).
    pub sweep_deferred: Gauge,
    /// Replay job entries handled, by outcome.
    pub replays: Family<ReplayLabels, Counter>,
    /// Jobs this instance executes now.
    pub jobs_running: Gauge,
    /// DLQ entries not yet counted into the stats (as of the last batch).
    pub stats_lag: Gauge,
    /// Inflow alerts published, by tenant.
    pub alerts: Family<AlertLabels, Counter>,
    /// Entries that age out within `alerts.expiring_within_secs`, by tenant (`_`: none), as of
    /// the last check by the counting instance.
    pub expiring: Family<AlertLabels, Gauge>,
    /// Entries removed past their tenant's own retention (`[retention] tenants`), by tenant.
    pub retention_removed: Family<AlertLabels, Counter>,
}

impl DlqMetrics {
    /// Creates the metrics and registers them in `core`'s registry.
    pub fn register(core: &Metrics) -> Self {
        let m = Self::default();
        core.register(
            "dlq_safety_net",
            "Max-deliveries and terminated advisories and sweep findings, by result",
            m.rescues.clone(),
        );
        core.register(
            "dlq_sweep_deferred",
            "Messages the last sweep left unexamined because their consumer was busy (in flight or stranded)",
            m.sweep_deferred.clone(),
        );
        core.register(
            "dlq_replays",
            "Replay job entries handled, by outcome",
            m.replays.clone(),
        );
        core.register(
            "dlq_jobs_running",
            "Replay jobs executing on this instance",
            m.jobs_running.clone(),
        );
        core.register(
            "dlq_stats_lag",
            "DLQ entries not yet counted into dlq-stats",
            m.stats_lag.clone(),
        );
        core.register(
            "dlq_inflow_alerts",
            "DLQ inflow alerts published, by tenant",
            m.alerts.clone(),
        );
        core.register(
            "dlq_expiring_entries",
            "DLQ entries that age out within alerts.expiring_within_secs, by tenant",
            m.expiring.clone(),
        );
        core.register(
            "dlq_retention_removed",
            "DLQ entries removed past their tenant's own retention, by tenant",
            m.retention_removed.clone(),
        );
        m
    }

    /// Counts one safety-net result.
    pub fn rescue(&self, stream: &str, result: &str) {
        self.rescues
            .get_or_create(&RescueLabels {
                stream: stream.to_owned(),
                result: result.to_owned(),
            })
            .inc();
    }

    /// Counts one replay outcome.
    pub fn replay(&self, outcome: &str) {
        self.replays
            .get_or_create(&ReplayLabels {
                outcome: outcome.to_owned(),
            })
            .inc();
    }
}
