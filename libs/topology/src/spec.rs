//! The declaration file's types (`nats/topology.toml`) and their validation.

use std::collections::BTreeSet;

use serde::{Deserialize, Serialize};

use crate::TopologyError;
use crate::names::{BucketName, ConsumerName, StreamName};

/// The project's declarations, embedded at build time.
pub const EMBEDDED: &str = include_str!("../../../nats/topology.toml");

/// Which subjects a stream or consumer covers: a kind of the subject taxonomy.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SubjectsKind {
    /// `ingress.v1.>`
    Ingress,
    /// `idempotency.v1.>`
    Idempotency,
    /// `backpressure.v1.>`
    Backpressure,
    /// `egress.v1.>`
    Egress,
    /// `dlq.v1.*.*.*`
    Dlq,
    /// JetStream's max-deliveries and terminated advisories of the shared stage streams
    /// (`$JS.EVENT.ADVISORY.CONSUMER.{MAX_DELIVERIES,MSG_TERMINATED}.<stream>.*` for this
    /// deployment's `IDEMPOTENCY`, `BACKPRESSURE`, `EGRESS`); a consumer on it takes them all.
    Advisories,
    /// `attempts.v1.*`: the delivery log, one subject per tenant.
    Attempts,
    /// `events.v1.*.*`: operational events, one subject per (tenant or `_`, kind).
    Events,
}

/// Stream retention.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Retention {
    /// Keep until limits (age, bytes) remove messages.
    Limits,
    /// Each message is removed once acked.
    Workqueue,
}

/// Stream storage.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Storage {
    /// On disk.
    File,
    /// In memory.
    Memory,
}

/// What a full stream does with a new message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Discard {
    /// Drop the oldest messages.
    Old,
    /// Refuse the new message (the publisher gets an error).
    New,
}

/// Whose a resource is: every declaration states it, and what bounds one tenant's share.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Tenancy {
    /// One resource shared by every tenant; its description says what bounds one tenant's
    /// share of it.
    Shared,
    /// One resource per tenant (a template: `INGRESS` → `INGRESS_<tenant>`), created when the
    /// tenant is provisioned; its limits are that tenant's quota.
    PerTenant,
    /// One stream per shard of the tenants (`BACKPRESSURE` → `BACKPRESSURE_00` …
    /// `BACKPRESSURE_15`, `switchyard_subjects::Shard`), all created by provisioning; its
    /// limits are each shard's, so one tenant's share is bounded by its shard's.
    Sharded,
}

/// A declared stream.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StreamSpec {
    /// Base name (upper case; prefixed per deployment; `_<tenant>` appended per tenant).
    pub name: String,
    /// Human description.
    pub description: String,
    /// Shared, or one per tenant.
    pub tenancy: Tenancy,
    /// The subject kind it stores.
    pub subjects: SubjectsKind,
    /// Retention policy.
    pub retention: Retention,
    /// Storage type.
    pub storage: Storage,
    /// Oldest message age, in seconds (must be > 0).
    pub max_age_secs: u64,
    /// Largest total size, in bytes (must be > 0). Per tenant: the default quota of bytes
    /// accepted and not yet consumed. Sharded: each shard stream's.
    pub max_bytes: i64,
    /// Most messages held (per tenant: the default quota of messages accepted and not yet
    /// consumed); unset = no count limit. Required on per-tenant streams.
    #[serde(default)]
    pub max_msgs: Option<i64>,
    /// Largest message, in bytes.
    pub max_msg_size: i32,
    /// Duplicate window for `Nats-Msg-Id`, in milliseconds.
    pub duplicate_window_ms: u64,
    /// What a full stream does.
    pub discard: Discard,
    /// Allow direct gets (the DLQ safety net fetches by sequence).
    #[serde(default)]
    pub allow_direct: bool,
    /// Allow message schedules; the stream then also stores the stage's `delay.v1.<stage>.>`
    /// subjects, through which retries and rate waits re-enter the stage later.
    #[serde(default)]
    pub allow_schedules: bool,
    /// The DLQ only: entries one tenant may hold (the stages then keep a further dead letter
    /// of that tenant where it is, and retry it, instead of taking other tenants' room).
    #[serde(default)]
    pub tenant_max_msgs: Option<i64>,
    /// Messages kept per subject, the oldest evicted first (the delivery log: one subject per
    /// tenant, so this is each tenant's share). Requires `discard = "old"`, limits retention.
    #[serde(default)]
    pub max_msgs_per_subject: Option<i64>,
}

/// A declared durable pull consumer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConsumerSpec {
    /// The stream's base name.
    pub stream: String,
    /// Durable name, prefixed with the owning service.
    pub name: String,
    /// Human description.
    pub description: String,
    /// The subject kind it filters on.
    pub filter: SubjectsKind,
    /// Ack wait, in seconds.
    pub ack_wait_secs: u64,
    /// Deliveries before JetStream gives up (and advises the dlq service).
    pub max_deliver: i64,
    /// Unacked messages in flight across every replica of the service.
    pub max_ack_pending: i64,
    /// Idle time after which JetStream removes the consumer, in seconds (per-tenant consumers,
    /// created on demand; shared consumers are durable and leave it unset).
    #[serde(default)]
    pub inactive_threshold_secs: Option<u64>,
    /// Where nats-server keeps the consumer's state (delivered and ack floor, pending and
    /// redelivery counts): `file` (the default, and the stream's own storage) or `memory`.
    /// nats-server writes a file consumer's state to a new file, renamed into place, up to ten
    /// times a second per consumer (`consumerFileStore.flushLoop`), so per-tenant consumers that
    /// each see a message now and then cost the server file creations in proportion to the
    /// messages. Allowed only on a work-queue stream, whose messages are removed when acked:
    /// what a consumer held unacked is still in the stream, so one lost with its server's
    /// restart (memory state is not kept) is created again and delivers it again, with its
    /// delivery counts started afresh. Set only on per-tenant consumers, which the services
    /// create again when they find them gone.
    #[serde(default)]
    pub storage: Option<Storage>,
}

/// A declared KV bucket.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BucketSpec {
    /// Base name (prefixed per deployment unless overridden).
    pub name: String,
    /// Human description.
    pub description: String,
    /// Buckets are shared; their keys are tenant-scoped (`<tenant>.…`).
    pub tenancy: Tenancy,
    /// Revisions kept per key.
    pub history: i64,
    /// Key age limit in seconds (0 = never expires; allowed only without per-key TTLs).
    pub max_age_secs: u64,
    /// Largest total size, in bytes (must be > 0).
    pub max_bytes: i64,
    /// When set, per-key TTLs are allowed and delete markers live this long, in seconds.
    #[serde(default)]
    pub limit_markers_secs: Option<u64>,
}

/// The whole declaration file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Topology {
    /// Streams.
    #[serde(rename = "stream")]
    pub streams: Vec<StreamSpec>,
    /// Consumers.
    #[serde(rename = "consumer")]
    pub consumers: Vec<ConsumerSpec>,
    /// KV buckets.
    #[serde(rename = "bucket")]
    pub buckets: Vec<BucketSpec>,
}

fn invalid(msg: String) -> TopologyError {
    TopologyError::Invalid(msg)
}

fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

impl Topology {
    /// The declarations shipped with this build (`nats/topology.toml`).
    pub fn embedded() -> Result<Self, TopologyError> {
        Self::from_toml(EMBEDDED)
    }

    /// Parses and validates a declaration file.
    pub fn from_toml(text: &str) -> Result<Self, TopologyError> {
        let topology: Topology = toml::from_str(text)?;
        topology.validate()?;
        Ok(topology)
    }

    /// The declared stream with this base name.
    pub fn stream(&self, name: &str) -> Option<&StreamSpec> {
        self.streams.iter().find(|s| s.name == name)
    }

    fn validate(&self) -> Result<(), TopologyError> {
        self.validate_names()?;
        let mut names = BTreeSet::new();
        for s in &self.streams {
            if !valid_name(&s.name) || !names.insert(s.name.as_str()) {
                return Err(invalid(format!(
                    "stream name {:?} is invalid or declared twice",
                    s.name
                )));
            }
            if s.max_age_secs == 0 || s.max_bytes <= 0 {
                return Err(invalid(format!(
                    "stream {} must bound retention (max_age_secs and max_bytes > 0)",
                    s.name
                )));
            }
            if s.tenancy == Tenancy::PerTenant
                && (s.discard != Discard::New
                    || s.retention != Retention::Workqueue
                    || s.max_msgs.is_none_or(|n| n <= 0)
                    || s.allow_schedules
                    || matches!(
                        s.subjects,
                        SubjectsKind::Dlq
                            | SubjectsKind::Advisories
                            | SubjectsKind::Attempts
                            | SubjectsKind::Events
                    ))
            {
                return Err(invalid(format!(
                    "per-tenant stream {} must be a work queue with discard = \"new\" and \
                     max_msgs > 0 (its limits are the tenant's quota: a full one refuses the \
                     tenant's publishes, never evicts), without schedules, and not the DLQ or the \
                     advisories",
                    s.name
                )));
            }
            let sharded = StreamName::from_base(&s.name).is_some_and(StreamName::sharded);
            if (s.tenancy == Tenancy::Sharded) != sharded
                || (sharded && (s.allow_schedules || s.retention != Retention::Workqueue))
            {
                return Err(invalid(format!(
                    "stream {}: tenancy = \"sharded\" is the declaration of a stream whose \
                     subjects carry the tenant's shard (BACKPRESSURE, one stream per shard), a \
                     work queue without schedules, and of no other: {}",
                    s.name,
                    if sharded {
                        "declare it tenancy = \"sharded\", retention = \"workqueue\", \
                         allow_schedules = false, with each shard's limits"
                    } else {
                        "declare it \"shared\" or \"per_tenant\""
                    }
                )));
            }
            if s.tenant_max_msgs.is_some()
                && (s.subjects != SubjectsKind::Dlq || s.tenant_max_msgs.is_some_and(|n| n <= 0))
            {
                return Err(invalid(format!(
                    "stream {}: tenant_max_msgs is a per-tenant share of the DLQ (> 0), \
                     declared on the DLQ only",
                    s.name
                )));
            }
            if s.max_msgs_per_subject.is_some_and(|n| n <= 0)
                || (s.max_msgs_per_subject.is_some()
                    && (s.retention != Retention::Limits || s.discard != Discard::Old))
            {
                return Err(invalid(format!(
                    "stream {}: max_msgs_per_subject (> 0) evicts the oldest of a subject: it \
                     needs limits retention with discard = \"old\"",
                    s.name
                )));
            }
            if matches!(s.subjects, SubjectsKind::Attempts | SubjectsKind::Events)
                && (s.retention != Retention::Limits || s.max_msgs_per_subject.is_none())
            {
                return Err(invalid(format!(
                    "stream {} holds a per-tenant log (delivery attempts or events): limits \
                     retention, and max_msgs_per_subject to bound each tenant's share",
                    s.name
                )));
            }
            if s.subjects == SubjectsKind::Dlq && s.retention == Retention::Workqueue {
                return Err(invalid(format!(
                    "stream {} holds the DLQ and must not be a work queue",
                    s.name
                )));
            }
        }
        let mut consumers = BTreeSet::new();
        for c in &self.consumers {
            let stream = self.stream(&c.stream).ok_or_else(|| {
                invalid(format!(
                    "consumer {} names unknown stream {}",
                    c.name, c.stream
                ))
            })?;
            if !consumers.insert((c.stream.as_str(), c.name.as_str())) {
                return Err(invalid(format!(
                    "consumer name {:?} is invalid or declared twice",
                    c.name
                )));
            }
            // Per tenant: on a per-tenant stream, or a `{tenant}` template on a shared one.
            let declared_per_tenant =
                stream.tenancy == Tenancy::PerTenant || c.name.contains("{tenant}");
            if ConsumerName::from_base(&c.name)
                .is_some_and(|n| n.per_tenant() != declared_per_tenant)
            {
                return Err(invalid(format!(
                    "consumer {} on stream {}: its tenancy does not match the stream's",
                    c.name, c.stream
                )));
            }
            if c.filter != stream.subjects {
                return Err(invalid(format!(
                    "consumer {} filters {:?} outside stream {}",
                    c.name, c.filter, c.stream
                )));
            }
        }
        let mut buckets = BTreeSet::new();
        for b in &self.buckets {
            if !valid_name(&b.name) || !buckets.insert(b.name.as_str()) {
                return Err(invalid(format!(
                    "bucket name {:?} is invalid or declared twice",
                    b.name
                )));
            }
            if b.tenancy != Tenancy::Shared {
                return Err(invalid(format!(
                    "bucket {}: buckets are shared (their keys are tenant-scoped)",
                    b.name
                )));
            }
            if b.max_bytes <= 0 || b.history < 1 {
                return Err(invalid(format!(
                    "bucket {} must bound its size (max_bytes > 0, history >= 1)",
                    b.name
                )));
            }
        }
        Ok(())
    }

    /// Every declared name is one of the typed names the code uses ([`StreamName`],
    /// [`BucketName`], [`ConsumerName`]), and every typed name is declared: the services open
    /// resources by typed name, so a file that renames or drops one must fail here, not at
    /// run time.
    fn validate_names(&self) -> Result<(), TopologyError> {
        fn check<T: Copy + Eq + std::fmt::Display>(
            kind: &str,
            declared: impl Iterator<Item = String>,
            all: &[T],
            parse: impl Fn(&str) -> Option<T>,
        ) -> Result<(), TopologyError> {
            let mut seen = Vec::new();
            for name in declared {
                let typed = parse(&name).ok_or_else(|| {
                    let known: Vec<String> = all.iter().map(ToString::to_string).collect();
                    invalid(format!(
                        "unknown {kind} name {name:?}: the services know {}",
                        known.join(", ")
                    ))
                })?;
                seen.push(typed);
            }
            if let Some(missing) = all.iter().find(|t| !seen.contains(t)) {
                return Err(invalid(format!(
                    "{kind} {missing} is not declared: every service relies on it"
                )));
            }
            Ok(())
        }
        check(
            "stream",
            self.streams.iter().map(|s| s.name.clone()),
            &StreamName::ALL,
            StreamName::from_base,
        )?;
        check(
            "bucket",
            self.buckets.iter().map(|b| b.name.clone()),
            &BucketName::ALL,
            BucketName::from_base,
        )?;
        check(
            "consumer",
            self.consumers.iter().map(|c| c.name.clone()),
            &ConsumerName::ALL,
            ConsumerName::from_base,
        )?;
        for c in &self.consumers {
            if c.storage == Some(Storage::Memory) {
                let work_queue = self
                    .streams
                    .iter()
                    .any(|s| s.name == c.stream && s.retention == Retention::Workqueue);
                let per_tenant =
                    ConsumerName::from_base(&c.name).is_some_and(ConsumerName::per_tenant);
                if !work_queue || !per_tenant {
                    return Err(invalid(format!(
                        "consumer {}: storage = \"memory\" is allowed only on a per-tenant \
                         consumer of a work-queue stream (its state is lost when nats-server \
                         restarts; only there does the stream still hold what it had not acked, \
                         and a service create it again); remove the line",
                        c.name
                    )));
                }
            }
            let on_demand = ConsumerName::from_base(&c.name).is_some_and(ConsumerName::on_demand);
            if on_demand != c.inactive_threshold_secs.is_some() {
                return Err(invalid(format!(
                    "consumer {}: inactive_threshold_secs is required on consumers created on \
                     demand (removed when idle) and refused on the others",
                    c.name
                )));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn embedded_declarations_are_valid() {
        let t = Topology::embedded().unwrap();
        assert!(
            t.stream("DLQ")
                .is_some_and(|s| s.retention == Retention::Limits)
        );
        assert!(
            t.buckets
                .iter()
                .any(|b| b.name == "idempotency" && b.limit_markers_secs.is_some())
        );
    }

    #[test]
    fn a_work_queue_dlq_is_refused() {
        let text = EMBEDDED.replace(
            "retention = \"limits\"            # never a work queue",
            "retention = \"workqueue\"            # never a work queue",
        );
        let err = Topology::from_toml(&text).unwrap_err().to_string();
        assert!(err.contains("DLQ and must not be a work queue"), "{err}");
    }

    #[test]
    fn unbounded_streams_and_unknown_fields_are_refused() {
        let text = EMBEDDED.replacen(
            "max_age_secs = 604800           # 7 days",
            "max_age_secs = 0",
            1,
        );
        assert!(
            Topology::from_toml(&text)
                .unwrap_err()
                .to_string()
                .contains("must bound retention")
        );
        let text = EMBEDDED.replacen("allow_direct = true", "allow_direkt = true", 1);
        assert!(
            Topology::from_toml(&text)
                .unwrap_err()
                .to_string()
                .contains("unknown field")
        );
    }

    #[test]
    fn every_typed_name_must_be_declared_and_nothing_else() {
        let renamed = EMBEDDED.replace("name = \"routes\"", "name = \"routez\"");
        let err = Topology::from_toml(&renamed).unwrap_err().to_string();
        assert!(err.contains("unknown bucket name \"routez\""), "{err}");

        let dropped = EMBEDDED.replace("name = \"egress-worker\"", "name = \"ingress-worker\"");
        let err = Topology::from_toml(&dropped).unwrap_err().to_string();
        assert!(
            err.contains("consumer egress-worker is not declared"),
            "{err}"
        );

        let shared = EMBEDDED.replace("inactive_threshold_secs = 3600", "");
        let err = Topology::from_toml(&shared).unwrap_err().to_string();
        assert!(err.contains("inactive_threshold_secs is required"), "{err}");
    }

    #[test]
    fn memory_consumer_state_only_on_per_tenant_consumers_of_work_queues() {
        let topology = Topology::from_toml(EMBEDDED).unwrap();
        let memory: Vec<&str> = topology
            .consumers
            .iter()
            .filter(|c| c.storage == Some(Storage::Memory))
            .map(|c| c.name.as_str())
            .collect();
        assert_eq!(memory, ["ingress-worker", "backpressure-{tenant}"]);

        // A shared consumer of a work queue (no service creates it again) and one of a limits
        // stream (which keeps what was acked too) are refused.
        let shared = EMBEDDED.replacen(
            "filter = \"egress\"\n",
            "filter = \"egress\"\nstorage = \"memory\"\n",
            1,
        );
        let err = Topology::from_toml(&shared).unwrap_err().to_string();
        assert!(
            err.contains("consumer egress-worker: storage = \"memory\""),
            "{err}"
        );
        let limits = EMBEDDED.replacen(
            "filter = \"events\"\n",
            "filter = \"events\"\nstorage = \"memory\"\n",
            1,
        );
        let err = Topology::from_toml(&limits).unwrap_err().to_string();
        assert!(err.contains("consumer events-webhook: storage"), "{err}");
    }
}
