//! The core metric set every service emits (received, processed by outcome, dead-lettered by
//! code, in flight, handler latency), labelled by stage and tenant, plus room for a service's
//! own metrics. Rendered in Prometheus text by [`crate::probes`].

use std::sync::Mutex;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::{Metric, Registry};
use switchyard_keys::Stage;

/// Labels: stage and tenant (`_` when the message has no valid tenant).
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TenantLabels {
    /// The stage.
    pub stage: &'static str,
    /// The tenant.
    pub tenant: String,
}

/// Labels: stage, tenant and outcome.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutcomeLabels {
    /// The stage.
    pub stage: &'static str,
    /// The tenant.
    pub tenant: String,
    /// `forwarded`, `delivered`, `duplicate`, `delayed`, `retry` or `dead_lettered`.
    pub outcome: &'static str,
}

/// Labels: stage, tenant and DLQ code.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DlqLabels {
    /// The stage.
    pub stage: &'static str,
    /// The tenant.
    pub tenant: String,
    /// The DLQ code.
    pub code: String,
}

/// One service's metrics.
pub struct Metrics {
    stage: Stage,
    registry: Mutex<Registry>,
    /// Messages read from the stage's consumer.
    pub received: Family<TenantLabels, Counter>,
    /// Messages settled, by outcome.
    pub processed: Family<OutcomeLabels, Counter>,
    /// Messages dead-lettered, by code.
    pub dead_lettered: Family<DlqLabels, Counter>,
    /// Confirmed acks (delivered, dead-lettered) the server did not confirm in time: each such
    /// message may be redelivered, and is then handled again under the same ids.
    pub acks_unconfirmed: Family<TenantLabels, Counter>,
    /// Messages being handled now.
    pub in_flight: Gauge,
    /// Bytes of the messages the stage holds now (fetched and not yet settled): ingress,
    /// idempotency and backpressure keep it near their `max_in_flight_bytes`
    /// ([`crate::budget::ByteBudget`]); egress counts it without a limit.
    pub bytes_held: Gauge,
    /// Handler latency, in seconds.
    pub latency: Histogram,
}

impl Metrics {
    /// The core metric set for `stage`, registered under `switchyard_*`.
    pub fn new(stage: Stage) -> Self {
        let mut registry = Registry::with_prefix("switchyard");
        let received = Family::<TenantLabels, Counter>::default();
        let processed = Family::<OutcomeLabels, Counter>::default();
        let dead_lettered = Family::<DlqLabels, Counter>::default();
        let acks_unconfirmed = Family::<TenantLabels, Counter>::default();
        let in_flight = Gauge::default();
        let bytes_held = Gauge::default();
        let latency = Histogram::new([
            0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
        ]);
        registry.register(
            "messages_received",
            "Messages read from the stage's consumer",
            received.clone(),
        );
        registry.register(
            "messages_processed",
            "Messages settled, by outcome",
            processed.clone(),
        );
        registry.register(
            "messages_dead_lettered",
            "Messages written to the DLQ, by code",
            dead_lettered.clone(),
        );
        registry.register(
            "acks_unconfirmed",
            "Acks of delivered or dead-lettered messages the server did not confirm in time (each may be redelivered)",
            acks_unconfirmed.clone(),
        );
        registry.register(
            "messages_in_flight",
            "Messages being handled now",
            in_flight.clone(),
        );
        registry.register(
            "message_bytes_held",
            "Bytes of the messages the stage holds (fetched, not yet settled); ingress, idempotency and backpressure keep it near their max_in_flight_bytes",
            bytes_held.clone(),
        );
        registry.register(
            "handler_latency_seconds",
            "Time from receipt to settlement",
            latency.clone(),
        );
        Self {
            stage,
            registry: Mutex::new(registry),
            received,
            processed,
            dead_lettered,
            acks_unconfirmed,
            in_flight,
            bytes_held,
            latency,
        }
    }

    /// The stage these metrics are for.
    pub fn stage(&self) -> Stage {
        self.stage
    }

    /// Registers a service-specific metric (`switchyard_<name>`).
    pub fn register(&self, name: &str, help: &str, metric: impl Metric) {
        if let Ok(mut registry) = self.registry.lock() {
            registry.register(name, help, metric);
        }
    }

    /// Counts a received message.
    pub fn count_received(&self, tenant: &str) {
        self.received
            .get_or_create(&TenantLabels {
                stage: self.stage.as_str(),
                tenant: tenant.to_owned(),
            })
            .inc();
    }

    /// Counts a settled message.
    pub fn count_processed(&self, tenant: &str, outcome: &'static str) {
        self.processed
            .get_or_create(&OutcomeLabels {
                stage: self.stage.as_str(),
                tenant: tenant.to_owned(),
                outcome,
            })
            .inc();
    }

    /// Counts a dead-lettered message.
    pub fn count_dead_lettered(&self, tenant: &str, code: &str) {
        self.dead_lettered
            .get_or_create(&DlqLabels {
                stage: self.stage.as_str(),
                tenant: tenant.to_owned(),
                code: code.to_owned(),
            })
            .inc();
    }

    /// Counts an ack the server did not confirm.
    pub fn count_ack_unconfirmed(&self, tenant: &str) {
        self.acks_unconfirmed
            .get_or_create(&TenantLabels {
                stage: self.stage.as_str(),
                tenant: tenant.to_owned(),
            })
            .inc();
    }

    /// Prometheus text exposition.
    pub fn render(&self) -> String {
        let mut out = String::new();
        if let Ok(registry) = self.registry.lock() {
            let _ = prometheus_client::encoding::text::encode(&mut out, &registry);
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_the_core_set() {
        let metrics = Metrics::new(Stage::Egress);
        metrics.count_received("acme");
        metrics.count_processed("acme", "delivered");
        metrics.count_dead_lettered("acme", "no_route");
        let text = metrics.render();
        assert!(
            text.contains("switchyard_messages_received_total{stage=\"egress\",tenant=\"acme\"} 1"),
            "{text}"
        );
        assert!(text.contains("outcome=\"delivered\"} 1"), "{text}");
        assert!(text.contains("code=\"no_route\"} 1"), "{text}");
        assert!(
            text.contains("switchyard_handler_latency_seconds_bucket"),
            "{text}"
        );
    }
}
