//! Declarations resolved for one deployment: concrete JetStream configs with prefixed names,
//! the replica count, and bucket-name overrides. Services look their names up here.

use std::collections::BTreeMap;
use std::time::Duration;

use async_nats::jetstream::{consumer, kv, stream};
use switchyard_subjects::{DlqFilter, InputStage, Namespace};

use switchyard_keys::TenantId;

use crate::names::{BucketName, ConsumerName, StreamName};
use crate::spec::{Discard, Retention, Storage, SubjectsKind, Topology};

/// How to resolve the declarations for one deployment.
#[derive(Debug, Clone)]
pub struct TopologyOptions {
    /// Deployment namespace (subject prefix, stream and bucket name prefix).
    pub namespace: Namespace,
    /// Replicas for every stream and bucket (1 on one node, 3 on a cluster).
    pub replicas: usize,
    /// Bucket base name → bucket name, replacing the prefixed default (from
    /// `JS_KV_NAMESPACE_IDEMPOTENCY` / `JS_KV_NAMESPACE_BACKPRESSURE`).
    pub bucket_overrides: BTreeMap<String, String>,
}

impl Default for TopologyOptions {
    fn default() -> Self {
        Self {
            namespace: Namespace::default(),
            replicas: 1,
            bucket_overrides: BTreeMap::new(),
        }
    }
}

/// A stream ready to create.
#[derive(Debug, Clone)]
pub struct ResolvedStream {
    /// The declared base name (`INGRESS`).
    pub base: String,
    /// The concrete config (name prefixed for the deployment).
    pub config: stream::Config,
}

/// A durable pull consumer ready to create.
#[derive(Debug, Clone)]
pub struct ResolvedConsumer {
    /// Which declared consumer.
    pub name: ConsumerName,
    /// The concrete stream name.
    pub stream: String,
    /// The concrete config (durable name = declared name; for a per-tenant template, the
    /// `{tenant}` placeholders are filled by [`ResolvedTopology::tenant_consumer`]).
    pub config: consumer::pull::Config,
    /// The subject kind it filters on (a per-tenant consumer narrows it to the tenant).
    pub filter: SubjectsKind,
}

/// A KV bucket ready to create.
#[derive(Debug, Clone)]
pub struct ResolvedBucket {
    /// The declared base name (`idempotency`).
    pub base: String,
    /// The concrete config (bucket name prefixed or overridden).
    pub config: kv::Config,
}

/// The whole topology for one deployment.
#[derive(Debug, Clone)]
pub struct ResolvedTopology {
    /// The namespace it was resolved in.
    pub namespace: Namespace,
    /// Streams, in declaration order.
    pub streams: Vec<ResolvedStream>,
    /// Shared consumers, in declaration order (what provisioning creates).
    pub consumers: Vec<ResolvedConsumer>,
    /// Per-tenant consumer templates (created on demand by their service).
    pub tenant_consumers: Vec<ResolvedConsumer>,
    /// Buckets, in declaration order.
    pub buckets: Vec<ResolvedBucket>,
}

/// The subject filter a subject kind stands for in a namespace (what consumers filter on).
pub fn subjects_filter(ns: &Namespace, kind: SubjectsKind) -> String {
    match kind {
        SubjectsKind::Ingress => ns.stage_filter(InputStage::Ingress, None),
        SubjectsKind::Idempotency => ns.stage_filter(InputStage::Idempotency, None),
        SubjectsKind::Backpressure => ns.stage_filter(InputStage::Backpressure, None),
        SubjectsKind::Egress => ns.stage_filter(InputStage::Egress, None),
        SubjectsKind::Dlq => ns.dlq_filter(&DlqFilter::default()),
    }
}

/// Every subject a stream of this kind stores: the kind's filter, plus the stage's delay
/// subjects when the stream allows message schedules (their schedules fire into the stage).
pub fn stream_subjects(ns: &Namespace, kind: SubjectsKind, allow_schedules: bool) -> Vec<String> {
    let mut subjects = vec![subjects_filter(ns, kind)];
    let stage = match kind {
        SubjectsKind::Ingress => Some(InputStage::Ingress),
        SubjectsKind::Idempotency => Some(InputStage::Idempotency),
        SubjectsKind::Backpressure => Some(InputStage::Backpressure),
        SubjectsKind::Egress => Some(InputStage::Egress),
        SubjectsKind::Dlq => None,
    };
    if let (true, Some(stage)) = (allow_schedules, stage) {
        subjects.push(ns.delay_filter(stage));
    }
    subjects
}

impl ResolvedTopology {
    /// Resolves the declarations with the given options.
    pub fn resolve(topology: &Topology, options: &TopologyOptions) -> Self {
        let ns = &options.namespace;
        let replicas = options.replicas.max(1);
        let streams = topology
            .streams
            .iter()
            .map(|s| ResolvedStream {
                base: s.name.clone(),
                config: stream::Config {
                    name: ns.stream_name(&s.name),
                    description: Some(s.description.clone()),
                    subjects: stream_subjects(ns, s.subjects, s.allow_schedules),
                    allow_message_schedules: s.allow_schedules,
                    retention: match s.retention {
                        Retention::Limits => stream::RetentionPolicy::Limits,
                        Retention::Workqueue => stream::RetentionPolicy::WorkQueue,
                    },
                    storage: match s.storage {
                        Storage::File => stream::StorageType::File,
                        Storage::Memory => stream::StorageType::Memory,
                    },
                    num_replicas: replicas,
                    max_age: Duration::from_secs(s.max_age_secs),
                    max_bytes: s.max_bytes,
                    max_message_size: s.max_msg_size,
                    duplicate_window: Duration::from_millis(s.duplicate_window_ms),
                    discard: match s.discard {
                        Discard::Old => stream::DiscardPolicy::Old,
                        Discard::New => stream::DiscardPolicy::New,
                    },
                    allow_direct: s.allow_direct,
                    max_messages_per_subject: -1,
                    max_messages: -1,
                    ..Default::default()
                },
            })
            .collect();
        let (tenant_consumers, consumers): (Vec<_>, Vec<_>) = topology
            .consumers
            .iter()
            .filter_map(|c| Some((ConsumerName::from_base(&c.name)?, c)))
            .map(|(name, c)| ResolvedConsumer {
                name,
                filter: c.filter,
                stream: ns.stream_name(&c.stream),
                config: consumer::pull::Config {
                    durable_name: Some(c.name.clone()),
                    description: Some(c.description.clone()),
                    filter_subject: subjects_filter(ns, c.filter),
                    ack_policy: consumer::AckPolicy::Explicit,
                    deliver_policy: consumer::DeliverPolicy::All,
                    ack_wait: Duration::from_secs(c.ack_wait_secs),
                    max_deliver: c.max_deliver,
                    max_ack_pending: c.max_ack_pending,
                    inactive_threshold: c
                        .inactive_threshold_secs
                        .map(Duration::from_secs)
                        .unwrap_or_default(),
                    num_replicas: 0,
                    ..Default::default()
                },
            })
            .partition(|c| c.name.per_tenant());
        let buckets = topology
            .buckets
            .iter()
            .map(|b| ResolvedBucket {
                base: b.name.clone(),
                config: kv::Config {
                    bucket: options
                        .bucket_overrides
                        .get(&b.name)
                        .cloned()
                        .unwrap_or_else(|| ns.bucket_name(&b.name)),
                    description: b.description.clone(),
                    history: b.history,
                    max_age: Duration::from_secs(b.max_age_secs),
                    max_bytes: b.max_bytes,
                    storage: stream::StorageType::File,
                    num_replicas: replicas,
                    limit_markers: b.limit_markers_secs.map(Duration::from_secs),
                    ..Default::default()
                },
            })
            .collect();
        Self {
            namespace: ns.clone(),
            streams,
            consumers,
            tenant_consumers,
            buckets,
        }
    }

    /// The concrete name of a declared stream (`INGRESS` → `STAGING_INGRESS`). `Some` for every
    /// [`StreamName`] of a validated topology.
    pub fn stream_name(&self, name: StreamName) -> Option<&str> {
        self.streams
            .iter()
            .find(|s| s.base == name.base())
            .map(|s| s.config.name.as_str())
    }

    /// The concrete name of a declared bucket (after prefix and overrides).
    pub fn bucket_name(&self, name: BucketName) -> Option<&str> {
        self.buckets
            .iter()
            .find(|b| b.base == name.base())
            .map(|b| b.config.bucket.as_str())
    }

    /// A shared consumer (`None` for a per-tenant template: see [`Self::tenant_consumer`]).
    pub fn consumer(&self, name: ConsumerName) -> Option<&ResolvedConsumer> {
        self.consumers.iter().find(|c| c.name == name)
    }

    /// The per-tenant consumer `name` for `tenant`: the template with the durable name and
    /// description filled in and the filter narrowed to the tenant's own subjects.
    pub fn tenant_consumer(
        &self,
        name: ConsumerName,
        tenant: &TenantId,
    ) -> Option<ResolvedConsumer> {
        let template = self.tenant_consumers.iter().find(|c| c.name == name)?;
        let stage = match template.filter {
            SubjectsKind::Ingress => InputStage::Ingress,
            SubjectsKind::Idempotency => InputStage::Idempotency,
            SubjectsKind::Backpressure => InputStage::Backpressure,
            SubjectsKind::Egress => InputStage::Egress,
            SubjectsKind::Dlq => return None,
        };
        let mut resolved = template.clone();
        resolved.config.durable_name = name.durable(Some(tenant));
        resolved.config.description = template
            .config
            .description
            .as_ref()
            .map(|d| d.replace("{tenant}", tenant.as_str()));
        resolved.config.filter_subject = self.namespace.stage_filter(stage, Some(tenant));
        Some(resolved)
    }
}

#[cfg(test)]
mod tests {
    use switchyard_keys::DeploymentPrefix;

    use super::*;

    #[test]
    fn prefix_and_overrides_apply() {
        let options = TopologyOptions {
            namespace: Namespace::new(Some(DeploymentPrefix::new("staging").unwrap())),
            replicas: 3,
            bucket_overrides: [("idempotency".to_owned(), "dedupe-eu".to_owned())].into(),
        };
        let resolved = ResolvedTopology::resolve(&Topology::embedded().unwrap(), &options);
        assert_eq!(
            resolved.stream_name(StreamName::Ingress),
            Some("STAGING_INGRESS")
        );
        assert_eq!(
            resolved.bucket_name(BucketName::Idempotency),
            Some("dedupe-eu")
        );
        assert_eq!(
            resolved.bucket_name(BucketName::Routes),
            Some("staging_routes")
        );
        let ingress = &resolved.streams[0].config;
        assert_eq!(ingress.subjects, ["staging.ingress.v1.>"]);
        assert_eq!(ingress.num_replicas, 3);
        let worker = resolved.consumer(ConsumerName::EgressWorker).unwrap();
        assert_eq!(worker.stream, "STAGING_EGRESS");
        assert_eq!(worker.config.filter_subject, "staging.egress.v1.>");
        assert!(
            resolved
                .consumer(ConsumerName::BackpressureTenant)
                .is_none()
        );
        let acme = TenantId::new("acme").unwrap();
        let per_tenant = resolved
            .tenant_consumer(ConsumerName::BackpressureTenant, &acme)
            .unwrap();
        assert_eq!(per_tenant.stream, "STAGING_BACKPRESSURE");
        assert_eq!(
            per_tenant.config.durable_name.as_deref(),
            Some("backpressure-acme")
        );
        assert_eq!(
            per_tenant.config.filter_subject,
            "staging.backpressure.v1.acme.>"
        );
        assert_eq!(
            per_tenant.config.inactive_threshold,
            Duration::from_secs(3600)
        );
    }
}
