//! Declarations resolved for one deployment: concrete JetStream configs with prefixed names,
//! the replica count, and bucket-name overrides. Services look their names up here.

use std::collections::BTreeMap;
use std::time::Duration;

use async_nats::jetstream::{consumer, kv, stream};
use switchyard_subjects::advisory::{self, AdvisoryKind};
use switchyard_subjects::{DlqFilter, InputStage, Namespace, Shard, SizeClass};

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

/// A tenant's own limits on its per-tenant streams, overriding the declared defaults
/// (`switchyard tenants enable --max-bytes/--max-msgs`; kept in the tenant's registry record).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TenantQuota {
    /// Bytes accepted and not yet consumed; `None`: the declared default.
    pub max_bytes: Option<i64>,
    /// Messages accepted and not yet consumed; `None`: the declared default.
    pub max_msgs: Option<i64>,
}

/// A stream ready to create.
#[derive(Debug, Clone)]
pub struct ResolvedStream {
    /// The declared base name (`INGRESS`).
    pub base: String,
    /// The concrete config (name prefixed for the deployment).
    pub config: stream::Config,
    /// Entries one tenant may hold (the DLQ's `tenant_max_msgs`), when declared.
    pub tenant_max_msgs: Option<i64>,
    /// The shard it holds, for one of a sharded declaration's streams (`BACKPRESSURE_07`).
    pub shard: Option<Shard>,
}

impl ResolvedStream {
    /// Shard `shard` of this sharded declaration: its name (`BACKPRESSURE_07`), subjects
    /// (`backpressure.v1.07.>`) and description; the declared limits are each shard's.
    fn shard(&self, ns: &Namespace, name: StreamName, shard: Shard) -> Self {
        let mut resolved = self.clone();
        resolved.shard = Some(shard);
        resolved.config.name = shard_stream_name(ns, name, shard);
        if let Some(stage) = name.input_stage() {
            resolved.config.subjects = vec![ns.shard_filter(stage, shard)];
        }
        resolved.config.description = self
            .config
            .description
            .as_ref()
            .map(|d| format!("{d} (shard {shard})"));
        resolved
    }
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
    /// Shared streams, in declaration order, a sharded declaration's as one stream per shard
    /// in shard order (what provisioning creates).
    pub streams: Vec<ResolvedStream>,
    /// Per-tenant stream templates (created per tenant by `provision_tenant`): the config's
    /// name and subjects are the template's until [`ResolvedTopology::tenant_stream`] fills
    /// them in.
    pub tenant_streams: Vec<ResolvedStream>,
    /// Shared consumers, in declaration order (what provisioning creates).
    pub consumers: Vec<ResolvedConsumer>,
    /// Per-tenant consumer templates (created on demand by their service).
    pub tenant_consumers: Vec<ResolvedConsumer>,
    /// Buckets, in declaration order.
    pub buckets: Vec<ResolvedBucket>,
}

/// The stream that holds a KV bucket: JetStream names it `KV_<bucket>` (the KV design, ADR-8).
pub fn bucket_stream(bucket: &str) -> String {
    format!("KV_{bucket}")
}

/// The subject filter a subject kind stands for in a namespace (what consumers filter on);
/// empty (every subject of the stream) for the advisories, whose stream stores several.
pub fn subjects_filter(ns: &Namespace, kind: SubjectsKind) -> String {
    match kind {
        SubjectsKind::Ingress => ns.stage_filter(InputStage::Ingress, None),
        SubjectsKind::Idempotency => ns.stage_filter(InputStage::Idempotency, None),
        SubjectsKind::Backpressure => ns.stage_filter(InputStage::Backpressure, None),
        SubjectsKind::Egress => ns.stage_filter(InputStage::Egress, None),
        SubjectsKind::Dlq => ns.dlq_filter(&DlqFilter::default()),
        SubjectsKind::Advisories => String::new(),
        SubjectsKind::Attempts => ns.attempt_filter(None),
        SubjectsKind::Events => ns.event_filter(None, None),
    }
}

/// The concrete name of shard `shard` of the sharded stream `name` (`BACKPRESSURE` →
/// `BACKPRESSURE_07`, `STAGING_BACKPRESSURE_07`).
pub fn shard_stream_name(ns: &Namespace, name: StreamName, shard: Shard) -> String {
    format!("{}_{shard}", ns.stream_name(name.base()))
}

/// Every concrete stream of a shared or sharded declaration in a namespace (one, or one per
/// shard in shard order); none for a per-tenant one.
pub fn stream_names(ns: &Namespace, name: StreamName) -> Vec<String> {
    if name.per_tenant() {
        Vec::new()
    } else if name.sharded() {
        Shard::all()
            .map(|shard| shard_stream_name(ns, name, shard))
            .collect()
    } else {
        vec![ns.stream_name(name.base())]
    }
}

/// The advisory subjects the `ADVISORIES` stream captures in a namespace: both kinds for each
/// shared stage stream (`IDEMPOTENCY`, every `BACKPRESSURE_<shard>`, `EGRESS`, prefixed).
/// Per-tenant `INGRESS_<tenant>` streams are not covered (a subject cannot match a name
/// prefix); the ingress stage dead-letters on a message's last delivery itself.
pub fn advisory_subjects(ns: &Namespace) -> Vec<String> {
    StreamName::ALL
        .into_iter()
        .filter(|s| s.stage().is_some())
        .flat_map(|s| stream_names(ns, s))
        .flat_map(|name| {
            [AdvisoryKind::MaxDeliveries, AdvisoryKind::Terminated]
                .map(|kind| advisory::filter(kind, Some(&name)))
        })
        .collect()
}

/// Every subject a stream of this kind stores: the kind's filter, plus the stage's delay
/// subjects when the stream allows message schedules (their schedules fire into the stage).
pub fn stream_subjects(ns: &Namespace, kind: SubjectsKind, allow_schedules: bool) -> Vec<String> {
    if kind == SubjectsKind::Advisories {
        return advisory_subjects(ns);
    }
    let mut subjects = vec![subjects_filter(ns, kind)];
    let stage = match kind {
        SubjectsKind::Ingress => Some(InputStage::Ingress),
        SubjectsKind::Idempotency => Some(InputStage::Idempotency),
        SubjectsKind::Backpressure => Some(InputStage::Backpressure),
        SubjectsKind::Egress => Some(InputStage::Egress),
        SubjectsKind::Dlq
        | SubjectsKind::Advisories
        | SubjectsKind::Attempts
        | SubjectsKind::Events => None,
    };
    if let (true, Some(stage)) = (allow_schedules, stage) {
        subjects.push(ns.delay_filter(stage));
    }
    subjects
}

impl ResolvedTopology {
    /// What the largest message a `BACKPRESSURE` shard stores counts as, by size class (its
    /// class's bound, bytes; a shard without a message size limit: the largest class): the
    /// least a bytes mark of admission can be, else one message closes it.
    pub fn largest_shard_message_counted(&self) -> u64 {
        self.streams
            .iter()
            .filter(|s| s.base == StreamName::Backpressure.base())
            // Unlimited (-1): as large as a class goes.
            .map(|s| {
                SizeClass::of(usize::try_from(s.config.max_message_size).unwrap_or(usize::MAX))
            })
            .max()
            .unwrap_or(SizeClass::SMALLEST)
            .bound()
    }

    /// Resolves the declarations with the given options.
    pub fn resolve(topology: &Topology, options: &TopologyOptions) -> Self {
        let ns = &options.namespace;
        let replicas = options.replicas.max(1);
        let (tenant_streams, streams): (Vec<_>, Vec<_>) = topology
            .streams
            .iter()
            .map(|s| ResolvedStream {
                base: s.name.clone(),
                tenant_max_msgs: s.tenant_max_msgs,
                shard: None,
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
                    max_messages_per_subject: s.max_msgs_per_subject.unwrap_or(-1),
                    max_messages: s.max_msgs.unwrap_or(-1),
                    ..Default::default()
                },
            })
            .flat_map(
                |s| match StreamName::from_base(&s.base).filter(|n| n.sharded()) {
                    Some(name) => Shard::all().map(|shard| s.shard(ns, name, shard)).collect(),
                    None => vec![s],
                },
            )
            .partition(|s| StreamName::from_base(&s.base).is_some_and(StreamName::per_tenant));
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
                    // A shared consumer made on demand starts from what is new: the events
                    // webhook does not replay the stream's past when it is first configured.
                    deliver_policy: if name.on_demand() && !name.per_tenant() {
                        consumer::DeliverPolicy::New
                    } else {
                        consumer::DeliverPolicy::All
                    },
                    ack_wait: Duration::from_secs(c.ack_wait_secs),
                    max_deliver: c.max_deliver,
                    max_ack_pending: c.max_ack_pending,
                    inactive_threshold: c
                        .inactive_threshold_secs
                        .map(Duration::from_secs)
                        .unwrap_or_default(),
                    num_replicas: 0,
                    memory_storage: c.storage == Some(Storage::Memory),
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
            tenant_streams,
            consumers,
            tenant_consumers,
            buckets,
        }
    }

    /// The concrete name of a declared shared stream (`EGRESS` → `STAGING_EGRESS`). `Some` for
    /// every shared [`StreamName`] of a validated topology; `None` for a per-tenant or a
    /// sharded one (see [`Self::stream_names`], [`Self::stream_of_tenant`]).
    pub fn stream_name(&self, name: StreamName) -> Option<&str> {
        self.streams
            .iter()
            .find(|s| s.base == name.base() && s.shard.is_none())
            .map(|s| s.config.name.as_str())
    }

    /// Every concrete stream of a shared or sharded declaration (one, or one per shard in
    /// shard order); none for a per-tenant one.
    pub fn stream_names(&self, name: StreamName) -> Vec<String> {
        stream_names(&self.namespace, name)
    }

    /// The concrete stream that holds `tenant`'s messages of the declared stream `name`: its
    /// own (`INGRESS_acme`), its shard's (`BACKPRESSURE_15`) or the shared one (`EGRESS`).
    pub fn stream_of_tenant(&self, name: StreamName, tenant: &TenantId) -> String {
        if name.sharded() {
            shard_stream_name(&self.namespace, name, Shard::of(tenant))
        } else if name.per_tenant() {
            format!("{}_{tenant}", self.namespace.stream_name(name.base()))
        } else {
            self.namespace.stream_name(name.base())
        }
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

    /// The concrete name of `tenant`'s own stream `name` (`INGRESS` → `INGRESS_acme`,
    /// `STAGING_INGRESS_acme`); `None` for a shared stream.
    pub fn tenant_stream_name(&self, name: StreamName, tenant: &TenantId) -> Option<String> {
        name.per_tenant()
            .then(|| self.stream_of_tenant(name, tenant))
    }

    /// Which per-tenant stream, of which tenant, a concrete stream name is (`INGRESS_acme` →
    /// (`Ingress`, `acme`)); `None` for any other name, including another deployment's.
    pub fn tenant_of_stream(&self, name: &str) -> Option<(StreamName, TenantId)> {
        StreamName::ALL
            .into_iter()
            .filter(|s| s.per_tenant())
            .find_map(|s| {
                let prefix = format!("{}_", self.namespace.stream_name(s.base()));
                let tenant = name.strip_prefix(&prefix)?.parse::<TenantId>().ok()?;
                Some((s, tenant))
            })
    }

    /// `tenant`'s own stream `name`, ready to create: the template with its name, subjects
    /// (`ingress.v1.<tenant>.>`) and quota filled in.
    pub fn tenant_stream(
        &self,
        name: StreamName,
        tenant: &TenantId,
        quota: TenantQuota,
    ) -> Option<ResolvedStream> {
        let template = self.tenant_streams.iter().find(|s| s.base == name.base())?;
        let stage = name.input_stage()?;
        let mut resolved = template.clone();
        resolved.config.name = self.tenant_stream_name(name, tenant)?;
        resolved.config.subjects = vec![self.namespace.stage_filter(stage, Some(tenant))];
        resolved.config.description = template
            .config
            .description
            .as_ref()
            .map(|d| format!("{d} (tenant {tenant})"));
        if let Some(max_bytes) = quota.max_bytes {
            resolved.config.max_bytes = max_bytes;
        }
        if let Some(max_msgs) = quota.max_msgs {
            resolved.config.max_messages = max_msgs;
        }
        Some(resolved)
    }

    /// The DLQ's deployed name and the entries one tenant may hold in it, when the topology
    /// bounds them (`tenant_max_msgs`).
    pub fn dlq_tenant_quota(&self) -> Option<(String, u64)> {
        let dlq = self
            .streams
            .iter()
            .find(|s| s.base == StreamName::Dlq.base())?;
        let limit = u64::try_from(dlq.tenant_max_msgs?).ok()?;
        Some((dlq.config.name.clone(), limit))
    }

    /// The per-tenant consumer `name` for `tenant`: the template with the durable name,
    /// description and stream filled in (`ingress-worker` on `INGRESS_<tenant>`,
    /// `backpressure-<tenant>` on its shard's `BACKPRESSURE_<shard>`) and the filter narrowed to
    /// the tenant's own subjects.
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
            SubjectsKind::Dlq
            | SubjectsKind::Advisories
            | SubjectsKind::Attempts
            | SubjectsKind::Events => return None,
        };
        let mut resolved = template.clone();
        resolved.config.durable_name = name.durable(Some(tenant));
        resolved.config.description = template
            .config
            .description
            .as_ref()
            .map(|d| d.replace("{tenant}", tenant.as_str()));
        resolved.config.filter_subject = self.namespace.stage_filter(stage, Some(tenant));
        resolved.stream = self.stream_of_tenant(StreamName::input_of(stage), tenant);
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
            None,
            "one per tenant"
        );
        assert_eq!(
            resolved.stream_name(StreamName::Egress),
            Some("STAGING_EGRESS")
        );
        assert_eq!(
            resolved.bucket_name(BucketName::Idempotency),
            Some("dedupe-eu")
        );
        assert_eq!(
            resolved.bucket_name(BucketName::Routes),
            Some("staging_routes")
        );
        let idempotency = &resolved.streams[0].config;
        assert_eq!(idempotency.name, "STAGING_IDEMPOTENCY");
        assert_eq!(idempotency.subjects, ["staging.idempotency.v1.>"]);
        assert_eq!(idempotency.num_replicas, 3);
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
        assert_eq!(per_tenant.stream, "STAGING_BACKPRESSURE_15", "acme's shard");
        assert_eq!(
            per_tenant.config.durable_name.as_deref(),
            Some("backpressure-acme")
        );
        assert_eq!(
            per_tenant.config.filter_subject,
            "staging.backpressure.v1.15.acme.>"
        );
        assert_eq!(
            resolved.stream_name(StreamName::Backpressure),
            None,
            "sharded"
        );
        let shards: Vec<_> = resolved
            .streams
            .iter()
            .filter(|s| s.base == "BACKPRESSURE")
            .collect();
        assert_eq!(shards.len(), usize::from(Shard::COUNT));
        assert_eq!(shards[7].config.name, "STAGING_BACKPRESSURE_07");
        assert_eq!(shards[7].config.subjects, ["staging.backpressure.v1.07.>"]);
        assert_eq!(
            resolved.stream_names(StreamName::Backpressure)[7],
            "STAGING_BACKPRESSURE_07"
        );
        assert_eq!(
            per_tenant.config.inactive_threshold,
            Duration::from_secs(3600)
        );

        let quota = TenantQuota {
            max_bytes: Some(1 << 20),
            max_msgs: None,
        };
        let own = resolved
            .tenant_stream(StreamName::Ingress, &acme, quota)
            .unwrap();
        assert_eq!(own.config.name, "STAGING_INGRESS_acme");
        assert_eq!(own.config.subjects, ["staging.ingress.v1.acme.>"]);
        assert_eq!(own.config.max_bytes, 1 << 20);
        assert_eq!(own.config.max_messages, 100_000, "the declared default");
        assert_eq!(own.config.discard, stream::DiscardPolicy::New);
        assert_eq!(own.config.num_replicas, 3);
        let worker = resolved
            .tenant_consumer(ConsumerName::IngressWorker, &acme)
            .unwrap();
        assert_eq!(worker.stream, "STAGING_INGRESS_acme");
        assert_eq!(
            worker.config.durable_name.as_deref(),
            Some("ingress-worker")
        );
        assert_eq!(worker.config.filter_subject, "staging.ingress.v1.acme.>");
        assert!(
            resolved
                .tenant_stream(StreamName::Egress, &acme, quota)
                .is_none()
        );
        assert_eq!(
            resolved.tenant_of_stream("STAGING_INGRESS_acme"),
            Some((StreamName::Ingress, acme.clone()))
        );
        assert_eq!(
            resolved.tenant_of_stream("INGRESS_acme"),
            None,
            "another deployment's"
        );
        assert_eq!(resolved.tenant_of_stream("STAGING_INGRESS_"), None);
    }
}
