//! What every loop of the service shares: connections, names, caches, the leaser, metrics.

use std::sync::Arc;

use async_nats::jetstream::{self, stream::Stream};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use std::sync::atomic::AtomicU64;
use switchyard_keys::{RateKey, TenantId};
use switchyard_registry::{KvCache, LimitRecord, limit_lookup};
use switchyard_service::lease::Leaser;
use switchyard_service::{Handoff, Metrics, Settler};
use switchyard_subjects::{InputStage, Namespace};
use switchyard_topology::{ResolvedTopology, StreamName};

use crate::config::BackpressureSettings;
use crate::scan::LoopHealth;

/// A per-tenant metric label.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TenantLabel {
    /// The tenant.
    pub tenant: String,
}

/// The service's own metrics (beyond the core set).
#[derive(Clone, Default)]
pub struct BackpressureMetrics {
    /// Tokens (slots) leased, per tenant.
    pub tokens_leased: Family<TenantLabel, Counter>,
    /// Messages waiting for a tenant's tokens (here and at egress), from the last scan.
    pub backlog: Family<TenantLabel, Gauge>,
    /// 1 while a tenant's admission is closed.
    pub admission_closed: Family<TenantLabel, Gauge>,
    /// Live replicas last seen.
    pub replicas: Gauge,
    /// 1 while leases fall back to the local `limit / N` record.
    pub fallback_active: Gauge,
    /// Tenant loops that ended by panicking (each is restarted by the next scan), per tenant.
    pub tenant_loop_panics: Family<TenantLabel, Counter>,
    /// Tenant loops running, from the last scan.
    pub tenant_loops: Gauge,
    /// Each tenant's own ingress stream's fill, in % of its quota (the fuller of bytes and
    /// messages), from the last quota check.
    pub quota_fill_pct: Family<TenantLabel, Gauge<f64, AtomicU64>>,
    /// Quota checks completed (every tenant's stream read).
    pub quota_checks: Counter,
}

impl BackpressureMetrics {
    /// Sets `tenant`'s quota fill gauge.
    pub fn quota_fill(&self, tenant: &str, fill_pct: f64) {
        self.quota_fill_pct
            .get_or_create(&TenantLabel {
                tenant: tenant.to_owned(),
            })
            .set(fill_pct);
    }

    /// Registers the metrics next to the core set.
    pub fn register(metrics: &Metrics, leaser: &Leaser) -> Self {
        let own = Self::default();
        metrics.register(
            "backpressure_tokens_leased",
            "Tokens leased, per tenant",
            own.tokens_leased.clone(),
        );
        metrics.register(
            "backpressure_quota_checks",
            "Quota checks completed (every tenant's own ingress stream compared with its quota)",
            own.quota_checks.clone(),
        );
        metrics.register(
            "backpressure_quota_fill_pct",
            "The tenant's own ingress stream's fill, in % of its quota",
            own.quota_fill_pct.clone(),
        );
        metrics.register(
            "backpressure_backlog",
            "Messages waiting for the tenant's tokens",
            own.backlog.clone(),
        );
        metrics.register(
            "backpressure_admission_closed",
            "1 while the tenant's ingress is refused",
            own.admission_closed.clone(),
        );
        metrics.register(
            "backpressure_replicas",
            "Live replicas last seen",
            own.replicas.clone(),
        );
        metrics.register(
            "backpressure_fallback_active",
            "1 while enforcing limit/N locally (KV unreachable)",
            own.fallback_active.clone(),
        );
        metrics.register(
            "backpressure_tenant_loop_panics",
            "Tenant loops that panicked (restarted by the next scan), per tenant",
            own.tenant_loop_panics.clone(),
        );
        metrics.register(
            "backpressure_tenant_loops",
            "Tenant loops running",
            own.tenant_loops.clone(),
        );
        metrics.register(
            "backpressure_kv_ops",
            "KV reads and writes made for leases",
            leaser.kv_ops.clone(),
        );
        metrics.register(
            "backpressure_fallback_leases",
            "Leases taken locally while KV was unreachable",
            leaser.fallbacks.clone(),
        );
        own
    }
}

/// Shared state.
pub struct Shared {
    /// JetStream.
    pub js: jetstream::Context,
    /// The resolved topology (the per-tenant consumer template).
    pub topology: ResolvedTopology,
    /// The namespace.
    pub ns: Namespace,
    /// The `BACKPRESSURE_<shard>` streams, names and handles, in shard order.
    pub streams: Vec<(String, Stream)>,
    /// Their names, in shard order (what the scan reads).
    pub stream_names: Vec<String>,
    /// The next stage's stream name (`EGRESS`: its backlog counts towards admission).
    pub next_stream_name: String,
    /// Publisher.
    pub handoff: Handoff,
    /// Where messages go with a token.
    pub next: InputStage,
    /// Slot leases.
    pub leaser: Arc<Leaser>,
    /// Limits (`*.limit`), watched.
    pub limits: Arc<KvCache<RateKey, LimitRecord>>,
    /// Settings.
    pub settings: BackpressureSettings,
    /// Core metrics.
    pub metrics: Arc<Metrics>,
    /// Settles each message (the one outcome → ack mapping every stage shares).
    pub settler: Settler,
    /// Own metrics.
    pub own: BackpressureMetrics,
    /// Recent tenant loop panics, for readiness.
    pub loop_health: Arc<LoopHealth>,
    /// Tenants whose admission reopened and whose ingress stream is still to be released
    /// from its hold (`scan`).
    pub release_pending: std::sync::Mutex<std::collections::HashSet<TenantId>>,
    /// Operational events: admission closed and reopened.
    pub events: switchyard_service::events::EventLog,
    /// The bytes of messages every tenant loop together holds (`max_in_flight_bytes`).
    pub budget: Arc<switchyard_service::budget::ByteBudget>,
}

impl Shared {
    /// The stream holding `tenant`'s messages here (its shard's), name and handle; `None`
    /// only if the stream was not opened at start-up (it always is).
    pub fn stream_of(&self, tenant: &TenantId) -> Option<&(String, Stream)> {
        let name = self
            .topology
            .stream_of_tenant(StreamName::Backpressure, tenant);
        self.streams.iter().find(|(n, _)| *n == name)
    }

    /// [`Shared::release_pending`], locked (a poisoned lock still holds a valid set).
    pub fn lock_release(&self) -> std::sync::MutexGuard<'_, std::collections::HashSet<TenantId>> {
        self.release_pending
            .lock()
            .unwrap_or_else(|p| p.into_inner())
    }

    /// The limit in force for `tenant`: its own, else `_default`, else the built-in one. An
    /// unreadable or invalid record is logged and skipped (never a reason to stop delivering).
    pub fn limit_for(&self, tenant: &TenantId) -> LimitRecord {
        for (key, _) in limit_lookup(tenant) {
            match self.limits.get(&key) {
                Some(Ok(limit)) if limit.validate().is_ok() => return limit,
                Some(Ok(limit)) => tracing::warn!(?key, ?limit, "invalid limit record ignored"),
                Some(Err(error)) => tracing::warn!(?key, %error, "unreadable limit record ignored"),
                None => {}
            }
        }
        self.settings.built_in_limit()
    }
}
