//! Typed names for every stream, bucket and consumer `nats/topology.toml` declares. Code names
//! a resource with one of these, never with a string literal; [`Topology::validate`] refuses a
//! declaration file whose names do not match them one to one, so a typed name always resolves.
//!
//! [`Topology::validate`]: crate::Topology::validate

use std::fmt;

use switchyard_keys::{Stage, TenantId};
use switchyard_subjects::InputStage;

/// A declared stream, by its base name (the deployment prefix is applied on resolution).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum StreamName {
    /// `INGRESS_<tenant>`: one tenant's raw producer messages, accepted and not yet read by
    /// the ingress stage (per tenant: its own duplicate window and quota).
    Ingress,
    /// `IDEMPOTENCY`: stamped messages waiting for the idempotency stage.
    Idempotency,
    /// `BACKPRESSURE_<shard>`: first sightings waiting for their tenant's rate tokens, in
    /// [`Shard::COUNT`](switchyard_subjects::Shard::COUNT) streams, each holding the tenants of one [`Shard`](switchyard_subjects::Shard).
    Backpressure,
    /// `EGRESS`: messages ready for delivery (and their scheduled retries).
    Egress,
    /// `DLQ`: dead letters.
    Dlq,
    /// `ADVISORIES`: JetStream's max-deliveries and terminated advisories of the shared stage
    /// streams, kept until the dlq service's safety net has handled them.
    Advisories,
    /// `ATTEMPTS`: the delivery log, every attempt egress makes (limits, per-tenant subjects).
    Attempts,
    /// `EVENTS`: operational events per tenant (limits, one subject per tenant and kind).
    Events,
}

impl StreamName {
    /// Every declared stream.
    pub const ALL: [StreamName; 8] = [
        StreamName::Ingress,
        StreamName::Idempotency,
        StreamName::Backpressure,
        StreamName::Egress,
        StreamName::Dlq,
        StreamName::Advisories,
        StreamName::Attempts,
        StreamName::Events,
    ];

    /// The base name in the declaration file.
    pub const fn base(self) -> &'static str {
        match self {
            StreamName::Ingress => "INGRESS",
            StreamName::Idempotency => "IDEMPOTENCY",
            StreamName::Backpressure => "BACKPRESSURE",
            StreamName::Egress => "EGRESS",
            StreamName::Dlq => "DLQ",
            StreamName::Advisories => "ADVISORIES",
            StreamName::Attempts => "ATTEMPTS",
            StreamName::Events => "EVENTS",
        }
    }

    /// The stream a pipeline stage consumes (a hand-off subject is named after the stage that
    /// consumes it, and so is its stream).
    pub const fn input_of(stage: InputStage) -> Self {
        match stage {
            InputStage::Ingress => StreamName::Ingress,
            InputStage::Idempotency => StreamName::Idempotency,
            InputStage::Backpressure => StreamName::Backpressure,
            InputStage::Egress => StreamName::Egress,
        }
    }

    /// Whether there is one stream per tenant (`INGRESS_<tenant>`).
    pub const fn per_tenant(self) -> bool {
        matches!(self, StreamName::Ingress)
    }

    /// Whether it is spread over [`Shard::COUNT`](switchyard_subjects::Shard::COUNT) streams, one per shard of the tenants
    /// (`BACKPRESSURE` → `BACKPRESSURE_00` … `BACKPRESSURE_15`): its stage's subjects carry
    /// the tenant's shard ([`InputStage::sharded`]).
    pub const fn sharded(self) -> bool {
        match self.input_stage() {
            Some(stage) => stage.sharded(),
            None => false,
        }
    }

    /// The input subjects this stream stores; `None` for the DLQ and the advisories.
    pub const fn input_stage(self) -> Option<InputStage> {
        match self {
            StreamName::Ingress => Some(InputStage::Ingress),
            StreamName::Idempotency => Some(InputStage::Idempotency),
            StreamName::Backpressure => Some(InputStage::Backpressure),
            StreamName::Egress => Some(InputStage::Egress),
            StreamName::Dlq
            | StreamName::Advisories
            | StreamName::Attempts
            | StreamName::Events => None,
        }
    }

    /// The stage that consumes this stream; `None` for the DLQ and the advisories.
    pub const fn stage(self) -> Option<Stage> {
        match self {
            StreamName::Ingress => Some(Stage::Ingress),
            StreamName::Idempotency => Some(Stage::Idempotency),
            StreamName::Backpressure => Some(Stage::Backpressure),
            StreamName::Egress => Some(Stage::Egress),
            StreamName::Dlq
            | StreamName::Advisories
            | StreamName::Attempts
            | StreamName::Events => None,
        }
    }

    /// The stream with this base name (`INGRESS`), if declared.
    pub fn from_base(base: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|s| s.base() == base)
    }
}

impl fmt::Display for StreamName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.base())
    }
}

/// A declared KV bucket, by its base name (prefix or override applied on resolution).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum BucketName {
    /// `idempotency`: claims of (tenant, platform, producer msg id).
    Idempotency,
    /// `routes`: where each (tenant, team, platform) is delivered.
    Routes,
    /// `destinations`: each tenant's fan-out destinations and their subscriptions.
    Destinations,
    /// `tenants`: the tenant registry.
    Tenants,
    /// `rate-limits`: limits, token state, admission.
    RateLimits,
    /// `dlq-jobs`: replay jobs.
    DlqJobs,
    /// `dlq-stats`: DLQ inflow counters.
    DlqStats,
    /// `api-keys`: the producer HTTP API's keys, hashed.
    ApiKeys,
    /// `dlq-replays`: replays under way, one per DLQ entry between publishing its copy and
    /// removing it.
    DlqReplays,
    /// `breakers`: open circuit breakers, shared by every egress replica.
    Breakers,
    /// `tenant-keys`: each tenant's data-encryption keys, wrapped by the KEK (a record means
    /// the tenant's payloads are encrypted).
    TenantKeys,
}

impl BucketName {
    /// Every declared bucket.
    pub const ALL: [BucketName; 11] = [
        BucketName::Idempotency,
        BucketName::Routes,
        BucketName::Destinations,
        BucketName::Tenants,
        BucketName::RateLimits,
        BucketName::DlqJobs,
        BucketName::DlqStats,
        BucketName::ApiKeys,
        BucketName::DlqReplays,
        BucketName::Breakers,
        BucketName::TenantKeys,
    ];

    /// The base name in the declaration file.
    pub const fn base(self) -> &'static str {
        match self {
            BucketName::Idempotency => "idempotency",
            BucketName::Routes => "routes",
            BucketName::Destinations => "destinations",
            BucketName::Tenants => "tenants",
            BucketName::RateLimits => "rate-limits",
            BucketName::DlqJobs => "dlq-jobs",
            BucketName::DlqStats => "dlq-stats",
            BucketName::ApiKeys => "api-keys",
            BucketName::DlqReplays => "dlq-replays",
            BucketName::Breakers => "breakers",
            BucketName::TenantKeys => "tenant-keys",
        }
    }

    /// The bucket with this base name (`routes`), if declared.
    pub fn from_base(base: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|b| b.base() == base)
    }
}

impl fmt::Display for BucketName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.base())
    }
}

/// A declared durable consumer. Shared consumers have one name; a per-tenant consumer lives on
/// a per-tenant stream (`ingress-worker` on `INGRESS_<tenant>`) or carries the tenant in its
/// name (`backpressure-<tenant>`, [`ConsumerName::durable`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ConsumerName {
    /// `ingress-worker` on each `INGRESS_<tenant>`, created with the tenant's stream.
    IngressWorker,
    /// `idempotency-worker` on `IDEMPOTENCY`.
    IdempotencyWorker,
    /// `egress-worker` on `EGRESS`.
    EgressWorker,
    /// `backpressure-<tenant>` on `BACKPRESSURE`: one per tenant, created on demand by the
    /// backpressure service and removed by JetStream once idle.
    BackpressureTenant,
    /// `dlq-safety-net` on `ADVISORIES`: the dlq service's safety net.
    DlqSafetyNet,
    /// `events-webhook` on `EVENTS`: the dlq service's delivery of operational events to an
    /// operator's webhook, created by the service when one is configured (and removed by
    /// JetStream once idle).
    EventsWebhook,
}

impl ConsumerName {
    /// Every declared consumer (templates included).
    pub const ALL: [ConsumerName; 6] = [
        ConsumerName::IngressWorker,
        ConsumerName::IdempotencyWorker,
        ConsumerName::EgressWorker,
        ConsumerName::BackpressureTenant,
        ConsumerName::DlqSafetyNet,
        ConsumerName::EventsWebhook,
    ];

    /// The name in the declaration file (`{tenant}` marks a per-tenant template).
    pub const fn base(self) -> &'static str {
        match self {
            ConsumerName::IngressWorker => "ingress-worker",
            ConsumerName::IdempotencyWorker => "idempotency-worker",
            ConsumerName::EgressWorker => "egress-worker",
            ConsumerName::BackpressureTenant => "backpressure-{tenant}",
            ConsumerName::DlqSafetyNet => "dlq-safety-net",
            ConsumerName::EventsWebhook => "events-webhook",
        }
    }

    /// Whether there is one consumer per tenant.
    pub const fn per_tenant(self) -> bool {
        matches!(
            self,
            ConsumerName::IngressWorker | ConsumerName::BackpressureTenant
        )
    }

    /// Whether its service creates it on demand (and JetStream removes it once idle), rather
    /// than provisioning.
    pub const fn on_demand(self) -> bool {
        matches!(
            self,
            ConsumerName::BackpressureTenant | ConsumerName::EventsWebhook
        )
    }

    /// The concrete durable name: the base name, with `{tenant}` replaced for a per-tenant
    /// template. `None` when a per-tenant template is asked for without a tenant, or a shared
    /// consumer with one.
    pub fn durable(self, tenant: Option<&TenantId>) -> Option<String> {
        match (self.per_tenant(), tenant) {
            (false, None) => Some(self.base().to_owned()),
            (true, Some(tenant)) => Some(self.base().replace("{tenant}", tenant.as_str())),
            // (`ingress-worker` keeps its name: its stream is the tenant's.)
            _ => None,
        }
    }

    /// The consumer declared under this name (`egress-worker`, `backpressure-{tenant}`).
    pub fn from_base(base: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|c| c.base() == base)
    }
}

impl fmt::Display for ConsumerName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.base())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_through_their_base() {
        for s in StreamName::ALL {
            assert_eq!(StreamName::from_base(s.base()), Some(s));
        }
        for b in BucketName::ALL {
            assert_eq!(BucketName::from_base(b.base()), Some(b));
        }
        for c in ConsumerName::ALL {
            assert_eq!(ConsumerName::from_base(c.base()), Some(c));
        }
    }

    #[test]
    fn per_tenant_consumers_need_a_tenant_and_shared_ones_refuse_one() {
        let acme = TenantId::new("acme").unwrap();
        assert_eq!(
            ConsumerName::BackpressureTenant
                .durable(Some(&acme))
                .as_deref(),
            Some("backpressure-acme")
        );
        assert_eq!(ConsumerName::BackpressureTenant.durable(None), None);
        assert_eq!(ConsumerName::EgressWorker.durable(Some(&acme)), None);
        assert_eq!(
            ConsumerName::IngressWorker.durable(Some(&acme)).as_deref(),
            Some("ingress-worker")
        );
        assert_eq!(
            ConsumerName::EgressWorker.durable(None).as_deref(),
            Some("egress-worker")
        );
    }
}
