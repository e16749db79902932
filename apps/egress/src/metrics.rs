//! Egress's own metrics, next to the core set every service emits
//! ([`switchyard_service::Metrics`]). Labels stay bounded: tenant, route type (`webhook` or
//! `nats`), and small closed sets of results and reasons; never a route key or URL.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use switchyard_service::Metrics;

/// Labels of one delivery attempt.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct AttemptLabels {
    /// The tenant.
    pub tenant: String,
    /// `webhook` or `nats`.
    pub route_type: &'static str,
    /// `delivered`, `retryable` or `permanent`.
    pub result: &'static str,
}

/// Labels: the tenant.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TenantLabel {
    /// The tenant.
    pub tenant: String,
}

/// Labels of a deferred message.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DeferLabels {
    /// The tenant.
    pub tenant: String,
    /// `breaker_open` (the route's breaker held it back), `route_busy` / `tenant_busy` (no free
    /// slot), `dlq_share`, or `destination_disabled` (parked).
    pub reason: String,
}

/// Labels of a message no destination took.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct UnmatchedLabels {
    /// The tenant.
    pub tenant: String,
    /// What was done: `dead_letter` or `drop`.
    pub policy: String,
}

/// Labels: the route type.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RouteTypeLabel {
    /// `webhook` or `nats`.
    pub route_type: &'static str,
}

/// Egress's metrics, registered in the service's registry.
#[derive(Debug, Clone)]
pub struct EgressMetrics {
    /// `switchyard_egress_attempts_total{tenant,route_type,result}`.
    pub attempts: Family<AttemptLabels, Counter>,
    /// `switchyard_egress_attempt_duration_seconds{route_type}`.
    pub attempt_duration: Family<RouteTypeLabel, Histogram>,
    /// `switchyard_egress_breakers_open{tenant}`: routes whose breaker is open or half-open.
    pub breakers_open: Family<TenantLabel, Gauge>,
    /// `switchyard_egress_breaker_opened_total{tenant}`: breakers opened (re-opens included).
    pub breaker_opened: Family<TenantLabel, Counter>,
    /// `switchyard_egress_deferred_total{tenant,reason}`: messages rescheduled without an attempt.
    pub deferred: Family<DeferLabels, Counter>,
    /// `switchyard_egress_receipts_failed_total`: receipts that could not be published.
    pub receipts_failed: Counter,
    /// `switchyard_egress_fanned_out_total{tenant}`: copies made for the tenant's destinations.
    pub fanned_out: Family<TenantLabel, Counter>,
    /// `switchyard_egress_unmatched_total{tenant,policy}`: messages no destination took.
    pub unmatched: Family<UnmatchedLabels, Counter>,
    /// `switchyard_egress_destinations_disabled_total{tenant}`: destinations egress disabled
    /// because they stayed down.
    pub destinations_disabled: Family<TenantLabel, Counter>,
    /// `switchyard_egress_attempts_logged_total`: delivery log records the stream stored.
    pub attempts_logged: Counter,
    /// `switchyard_egress_attempts_log_failed_total`: delivery log records not stored.
    pub attempts_log_failed: Counter,
}

fn duration_histogram() -> Histogram {
    Histogram::new([
        0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
    ])
}

impl EgressMetrics {
    /// Creates the metrics and registers them with `core`.
    pub fn register(core: &Metrics) -> Self {
        let metrics = Self {
            attempts: Family::default(),
            attempt_duration: Family::new_with_constructor(duration_histogram),
            breakers_open: Family::default(),
            breaker_opened: Family::default(),
            deferred: Family::default(),
            receipts_failed: Counter::default(),
            fanned_out: Family::default(),
            unmatched: Family::default(),
            destinations_disabled: Family::default(),
            attempts_logged: Counter::default(),
            attempts_log_failed: Counter::default(),
        };
        core.register(
            "egress_attempts",
            "Delivery attempts, by result (delivered, retryable, permanent)",
            metrics.attempts.clone(),
        );
        core.register(
            "egress_attempt_duration_seconds",
            "Time one delivery attempt took",
            metrics.attempt_duration.clone(),
        );
        core.register(
            "egress_breakers_open",
            "Routes whose circuit breaker is open or half-open",
            metrics.breakers_open.clone(),
        );
        core.register(
            "egress_breaker_opened",
            "Circuit breakers opened, re-opens after a failed probe included",
            metrics.breaker_opened.clone(),
        );
        core.register(
            "egress_deferred",
            "Messages rescheduled without an attempt (breaker open, route busy)",
            metrics.deferred.clone(),
        );
        core.register(
            "egress_receipts_failed",
            "Delivery receipts that could not be published",
            metrics.receipts_failed.clone(),
        );
        core.register(
            "egress_fanned_out",
            "Copies of messages made for the tenant's destinations (one per matching destination)",
            metrics.fanned_out.clone(),
        );
        core.register(
            "egress_unmatched",
            "Messages of tenants with destinations that none took, by policy (dead_letter, drop)",
            metrics.unmatched.clone(),
        );
        core.register(
            "egress_destinations_disabled",
            "Destinations disabled because they stayed down (their messages are parked)",
            metrics.destinations_disabled.clone(),
        );
        core.register(
            "egress_attempts_logged",
            "Delivery log records the ATTEMPTS stream stored",
            metrics.attempts_logged.clone(),
        );
        core.register(
            "egress_attempts_log_failed",
            "Delivery log records that could not be stored",
            metrics.attempts_log_failed.clone(),
        );
        metrics
    }

    /// Counts one attempt.
    pub fn count_attempt(
        &self,
        tenant: &str,
        route_type: &'static str,
        result: &'static str,
        seconds: f64,
    ) {
        self.attempts
            .get_or_create(&AttemptLabels {
                tenant: tenant.to_owned(),
                route_type,
                result,
            })
            .inc();
        self.attempt_duration
            .get_or_create(&RouteTypeLabel { route_type })
            .observe(seconds);
    }

    /// Counts `copies` copies made for `tenant`'s destinations.
    pub fn count_fanned_out(&self, tenant: &str, copies: usize) {
        self.fanned_out
            .get_or_create(&TenantLabel {
                tenant: tenant.to_owned(),
            })
            .inc_by(u64::try_from(copies).unwrap_or(u64::MAX));
    }

    /// Counts one message of `tenant` that no destination took, handled by `policy`.
    pub fn count_unmatched(&self, tenant: &str, policy: &str) {
        self.unmatched
            .get_or_create(&UnmatchedLabels {
                tenant: tenant.to_owned(),
                policy: policy.to_owned(),
            })
            .inc();
    }

    /// Counts one destination of `tenant` disabled because it stayed down.
    pub fn count_disabled(&self, tenant: &str) {
        self.destinations_disabled
            .get_or_create(&TenantLabel {
                tenant: tenant.to_owned(),
            })
            .inc();
    }

    /// Counts one deferral.
    pub fn count_deferred(&self, tenant: &str, reason: &str) {
        self.deferred
            .get_or_create(&DeferLabels {
                tenant: tenant.to_owned(),
                reason: reason.to_owned(),
            })
            .inc();
    }

    /// A breaker of `tenant` opened (`fresh`: it was closed before) or re-opened.
    pub fn breaker_opened(&self, tenant: &str, fresh: bool) {
        let label = TenantLabel {
            tenant: tenant.to_owned(),
        };
        self.breaker_opened.get_or_create(&label).inc();
        if fresh {
            self.breakers_open.get_or_create(&label).inc();
        }
    }

    /// A breaker of `tenant` opened (`true`) or closed here because another replica's did:
    /// only the gauge of open breakers follows (the counter counts this replica's own).
    pub fn breaker_adopted(&self, tenant: &str, opened: bool) {
        let gauge = self.breakers_open.get_or_create(&TenantLabel {
            tenant: tenant.to_owned(),
        });
        if opened {
            gauge.inc();
        } else {
            gauge.dec();
        }
    }

    /// A breaker of `tenant` closed.
    pub fn breaker_closed(&self, tenant: &str) {
        self.breakers_open
            .get_or_create(&TenantLabel {
                tenant: tenant.to_owned(),
            })
            .dec();
    }
}
