//! What is on the server now: streams, consumers (lag), buckets, and per-tenant backlog in
//! front of each pipeline stage.

use std::collections::BTreeMap;

use async_nats::jetstream::{self, stream};
use futures::TryStreamExt;
use serde::Serialize;
use switchyard_keys::TenantId;
use switchyard_subjects::{DelaySubject, Namespace, SizeClass, StageSubject, Subject, SubjectKind};

use crate::TopologyError;
use crate::lookup::stream_info;
use crate::resolve::ResolvedTopology;

/// One declared stream's state (`present: false` when it has not been provisioned).
#[derive(Debug, Clone, Serialize)]
pub struct StreamStatus {
    /// Concrete name.
    pub name: String,
    /// Whether it exists.
    pub present: bool,
    /// Messages stored.
    pub messages: u64,
    /// Bytes stored.
    pub bytes: u64,
    /// First stored sequence.
    pub first_seq: u64,
    /// Last stored sequence.
    pub last_seq: u64,
    /// Consumers on it.
    pub consumers: usize,
    /// Replicas.
    pub replicas: usize,
    /// The cluster leader's name (clustered servers only).
    pub leader: Option<String>,
    /// Its byte limit (`-1`: none).
    pub max_bytes: i64,
    /// Its message limit (`-1`: none).
    pub max_msgs: i64,
    /// The fuller of bytes and messages, in percent of the limits that are set.
    pub fill_pct: f64,
}

/// One declared consumer's state.
#[derive(Debug, Clone, Serialize)]
pub struct ConsumerStatus {
    /// Concrete stream name.
    pub stream: String,
    /// Durable name.
    pub name: String,
    /// Whether it exists.
    pub present: bool,
    /// Messages not yet delivered (lag).
    pub pending: u64,
    /// Delivered, not yet acked.
    pub ack_pending: usize,
    /// Delivered more than once and not yet acked.
    pub redelivered: usize,
    /// Pull requests waiting.
    pub waiting: usize,
}

/// One declared bucket's state.
#[derive(Debug, Clone, Serialize)]
pub struct BucketStatus {
    /// Concrete bucket name.
    pub name: String,
    /// Declared base name.
    pub base: String,
    /// Whether it exists.
    pub present: bool,
    /// Stored revisions (values, history and markers).
    pub values: u64,
    /// Bytes stored.
    pub bytes: u64,
    /// Its byte limit (`-1`: none).
    pub max_bytes: i64,
    /// Its value limit (`-1`: none).
    pub max_msgs: i64,
    /// The fuller of bytes and values, in percent of the limits that are set.
    pub fill_pct: f64,
    /// Buckets whose values expire (the idempotency claims): hours until `max_bytes` is
    /// reached at the write rate of the values stored now (their count over the time between
    /// the oldest and the newest), ignoring expiries. `None` without a byte limit, or with too
    /// few values to tell a rate.
    pub headroom_hours: Option<f64>,
}

/// `used` in percent of `max` (0 when `max` is not a limit).
fn pct(used: u64, max: i64) -> f64 {
    if max > 0 {
        used as f64 * 100.0 / max as f64
    } else {
        0.0
    }
}

/// The fuller of a stream's bytes and messages, in percent of its limits.
fn fill(state: &stream::State, config: &stream::Config) -> f64 {
    pct(state.messages, config.max_messages).max(pct(state.bytes, config.max_bytes))
}

/// Hours until `info`'s stream reaches `max_bytes` at the rate its stored messages were
/// written (their count over the span between the first and the last), ignoring expiries.
fn headroom_hours(info: &stream::Info) -> Option<f64> {
    let (state, max) = (&info.state, info.config.max_bytes);
    if max <= 0 || state.messages < 2 {
        return None;
    }
    let span = (state.last_timestamp - state.first_timestamp).as_seconds_f64();
    if span <= 0.0 {
        return None;
    }
    let bytes_per_sec = state.bytes as f64 / span;
    let free = (max as f64 - state.bytes as f64).max(0.0);
    Some(free / bytes_per_sec / 3600.0)
}

/// Messages waiting in one work-queue stream for one tenant.
#[derive(Debug, Clone, Serialize)]
pub struct TenantBacklog {
    /// Tenant id.
    pub tenant: String,
    /// Concrete stream name (the stage the messages wait for).
    pub stream: String,
    /// Messages waiting.
    pub messages: u64,
}

/// One tenant's own stream (`INGRESS_<tenant>`) and how full its quota is.
#[derive(Debug, Clone, Serialize)]
pub struct TenantStreamStatus {
    /// The tenant.
    pub tenant: String,
    /// Concrete stream name.
    pub name: String,
    /// Messages accepted and not yet read.
    pub messages: u64,
    /// Messages accepted since the stream was made (its last sequence): the difference of two
    /// readings over their interval is the tenant's accepted rate.
    pub accepted: u64,
    /// Their bytes.
    pub bytes: u64,
    /// The tenant's message quota (`-1`: none).
    pub max_msgs: i64,
    /// The tenant's byte quota.
    pub max_bytes: i64,
    /// The fuller of the two, in percent of the quota.
    pub fill_pct: f64,
}

/// Everything `switchyard status` shows.
#[derive(Debug, Clone, Serialize)]
pub struct StatusReport {
    /// Declared streams.
    pub streams: Vec<StreamStatus>,
    /// Declared consumers.
    pub consumers: Vec<ConsumerStatus>,
    /// Declared buckets.
    pub buckets: Vec<BucketStatus>,
    /// Per-tenant backlog in the hand-off (work-queue) streams.
    pub tenant_backlog: Vec<TenantBacklog>,
    /// Every tenant's own streams, with quota fill.
    pub tenant_streams: Vec<TenantStreamStatus>,
    /// What each tenant holds of the DLQ, with its share (when the topology declares one).
    pub tenant_dlq: Vec<TenantDlqShare>,
}

/// One tenant's entries in the DLQ.
#[derive(Debug, Clone, Serialize)]
pub struct TenantDlqShare {
    /// The tenant (`_` for records without one).
    pub tenant: String,
    /// Entries stored.
    pub entries: u64,
    /// Its share (`tenant_max_msgs`), when declared.
    pub share: Option<u64>,
}

impl StatusReport {
    /// Names of declared items that do not exist (provisioning needed).
    pub fn missing(&self) -> Vec<String> {
        let streams = self
            .streams
            .iter()
            .filter(|s| !s.present)
            .map(|s| format!("stream {}", s.name));
        let consumers = self
            .consumers
            .iter()
            .filter(|c| !c.present)
            .map(|c| format!("consumer {}/{}", c.stream, c.name));
        let buckets = self
            .buckets
            .iter()
            .filter(|b| !b.present)
            .map(|b| format!("bucket {}", b.name));
        streams.chain(consumers).chain(buckets).collect()
    }
}

/// Reads the state of every declared item.
pub async fn status(
    js: &jetstream::Context,
    topology: &ResolvedTopology,
) -> Result<StatusReport, TopologyError> {
    let mut streams = Vec::new();
    let mut tenant_backlog = Vec::new();
    for s in &topology.streams {
        let name = &s.config.name;
        let info = stream_info(js, name).await?;
        if s.config.retention == stream::RetentionPolicy::WorkQueue
            && info.as_ref().is_some_and(|i| i.state.messages > 0)
        {
            tenant_backlog.extend(backlog(js, topology, name).await?);
        }
        streams.push(match info {
            Some(i) => StreamStatus {
                name: name.clone(),
                present: true,
                messages: i.state.messages,
                bytes: i.state.bytes,
                first_seq: i.state.first_sequence,
                last_seq: i.state.last_sequence,
                consumers: i.state.consumer_count,
                replicas: i.config.num_replicas,
                max_bytes: i.config.max_bytes,
                max_msgs: i.config.max_messages,
                fill_pct: fill(&i.state, &i.config),
                leader: i.cluster.and_then(|c| c.leader),
            },
            None => StreamStatus {
                name: name.clone(),
                present: false,
                messages: 0,
                bytes: 0,
                first_seq: 0,
                last_seq: 0,
                consumers: 0,
                replicas: 0,
                leader: None,
                max_bytes: s.config.max_bytes,
                max_msgs: s.config.max_messages,
                fill_pct: 0.0,
            },
        });
    }
    let mut consumers = Vec::new();
    for c in &topology.consumers {
        let durable = c.config.durable_name.clone().unwrap_or_default();
        let info = match js.get_stream_no_info(&c.stream).await {
            Ok(stream) => stream.consumer_info(&durable).await.ok(),
            Err(_) => None,
        };
        // One made on demand is shown while it exists, never missed.
        if c.name.on_demand() && info.is_none() {
            continue;
        }
        consumers.push(ConsumerStatus {
            stream: c.stream.clone(),
            name: durable,
            present: info.is_some(),
            pending: info.as_ref().map_or(0, |i| i.num_pending),
            ack_pending: info.as_ref().map_or(0, |i| i.num_ack_pending),
            redelivered: info.as_ref().map_or(0, |i| i.num_redelivered),
            waiting: info.as_ref().map_or(0, |i| i.num_waiting),
        });
    }
    let mut buckets = Vec::new();
    for b in &topology.buckets {
        let info = stream_info(js, &crate::resolve::bucket_stream(&b.config.bucket)).await?;
        buckets.push(BucketStatus {
            name: b.config.bucket.clone(),
            base: b.base.clone(),
            present: info.is_some(),
            values: info.as_ref().map_or(0, |i| i.state.messages),
            bytes: info.as_ref().map_or(0, |i| i.state.bytes),
            max_bytes: info
                .as_ref()
                .map_or(b.config.max_bytes, |i| i.config.max_bytes),
            max_msgs: info.as_ref().map_or(-1, |i| i.config.max_messages),
            fill_pct: info.as_ref().map_or(0.0, |i| fill(&i.state, &i.config)),
            headroom_hours: info
                .as_ref()
                .filter(|_| b.config.max_age > std::time::Duration::ZERO)
                .and_then(headroom_hours),
        });
    }
    let tenant_streams = tenant_streams(js, topology).await?;
    let mut tenant_dlq = Vec::new();
    let dlq = topology
        .streams
        .iter()
        .find(|s| s.base == crate::StreamName::Dlq.base());
    if let Some(dlq) = dlq
        && streams
            .iter()
            .any(|s| s.name == dlq.config.name && s.present && s.messages > 0)
    {
        let share = dlq.tenant_max_msgs.and_then(|n| u64::try_from(n).ok());
        for (tenant, entries) in
            dlq_entries_by_tenant(js, &topology.namespace, &dlq.config.name).await?
        {
            tenant_dlq.push(TenantDlqShare {
                tenant: tenant.map_or("_".to_owned(), |t| t.to_string()),
                entries,
                share,
            });
        }
    }
    Ok(StatusReport {
        streams,
        consumers,
        buckets,
        tenant_backlog,
        tenant_streams,
        tenant_dlq,
    })
}

/// Every existing per-tenant stream of this deployment, found by name
/// (`ResolvedTopology::tenant_of_stream`).
async fn tenant_streams(
    js: &jetstream::Context,
    topology: &ResolvedTopology,
) -> Result<Vec<TenantStreamStatus>, TopologyError> {
    let mut names = js.stream_names();
    let mut found = Vec::new();
    while let Some(name) = names
        .try_next()
        .await
        .map_err(|e| TopologyError::js("listing streams".to_owned(), e))?
    {
        if let Some((_, tenant)) = topology.tenant_of_stream(&name) {
            found.push((tenant, name));
        }
    }
    found.sort();
    let mut out = Vec::new();
    for (tenant, name) in found {
        let Some(info) = stream_info(js, &name).await? else {
            continue;
        };
        out.push(TenantStreamStatus {
            tenant: tenant.to_string(),
            name,
            messages: info.state.messages,
            accepted: info.state.last_sequence,
            bytes: info.state.bytes,
            max_msgs: info.config.max_messages,
            max_bytes: info.config.max_bytes,
            fill_pct: fill(&info.state, &info.config),
        });
    }
    Ok(out)
}

/// Calls `each` with every subject stream `name` stores and its count of messages.
async fn per_subject(
    js: &jetstream::Context,
    name: &str,
    mut each: impl FnMut(&str, u64),
) -> Result<(), TopologyError> {
    let stream = js
        .get_stream_no_info(name)
        .await
        .map_err(|e| TopologyError::js(format!("reading stream {name}"), e))?;
    let mut subjects = stream
        .info_with_subjects(">")
        .await
        .map_err(|e| TopologyError::js(format!("reading subjects of {name}"), e))?;
    while let Some((subject, count)) = subjects
        .try_next()
        .await
        .map_err(|e| TopologyError::js(format!("reading subjects of {name}"), e))?
    {
        each(&subject, count as u64);
    }
    Ok(())
}

/// Stream `name`'s per-subject counts summed by the key `key_of` gives each parsed subject
/// (subjects it gives none, or that do not parse, are not counted).
async fn counts_by<K: Ord>(
    js: &jetstream::Context,
    ns: &Namespace,
    name: &str,
    key_of: impl Fn(Subject) -> Option<K>,
) -> Result<BTreeMap<K, u64>, TopologyError> {
    let mut counts = BTreeMap::new();
    per_subject(js, name, |subject, count| {
        if let Some(key) = Subject::parse(ns, subject).ok().and_then(&key_of) {
            *counts.entry(key).or_insert(0) += count;
        }
    })
    .await?;
    Ok(counts)
}

/// What one tenant holds in hand-off streams: its messages, and their bytes as their
/// [`SizeClass`] tokens count them (each message at its class's bound, so never less than it
/// holds and at most about twice; a message without a class token at [`SizeClass::SMALLEST`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Held {
    /// Messages stored.
    pub messages: u64,
    /// Their bytes, counted by size class.
    pub bytes: u64,
}

/// [`Held`] per tenant in the streams `names` (a tenant's holdings summed over them): the
/// tenant of each stage or delay subject, with the bytes its size class says; other subjects
/// are not counted. What ingress's byte credit reads (`IDEMPOTENCY` and the
/// `BACKPRESSURE_<shard>` streams).
///
/// Errors: a stream cannot be read (`TopologyError::JetStream`).
pub async fn held_by_tenant(
    js: &jetstream::Context,
    ns: &Namespace,
    names: &[String],
) -> Result<BTreeMap<TenantId, Held>, TopologyError> {
    let mut held: BTreeMap<TenantId, Held> = BTreeMap::new();
    for name in names {
        per_subject(js, name, |subject, count| {
            let (tenant, size) = match StageSubject::parse_sized(ns, subject) {
                Ok((stage, size)) => (stage.address.tenant, size),
                Err(_) => match DelaySubject::parse(ns, subject) {
                    Ok(delay) => (delay.address.tenant, None),
                    Err(_) => return,
                },
            };
            let bound = size.unwrap_or(SizeClass::SMALLEST).bound();
            let entry = held.entry(tenant).or_default();
            entry.messages += count;
            entry.bytes = entry.bytes.saturating_add(count.saturating_mul(bound));
        })
        .await?;
    }
    Ok(held)
}

/// Messages stored in stream `name` per tenant: its per-subject counts summed by the tenant of
/// each stage or delay (scheduled re-entry) subject; other subjects are not counted. The one
/// definition of "a tenant's backlog in a hand-off stream", used by `status`, by the
/// backpressure service's admission scan and by ingress's credit.
///
/// Errors: the stream cannot be read (`TopologyError::JetStream`).
pub async fn backlog_by_tenant(
    js: &jetstream::Context,
    ns: &Namespace,
    name: &str,
) -> Result<BTreeMap<TenantId, u64>, TopologyError> {
    counts_by(js, ns, name, |subject| match subject {
        Subject::Stage(s) => Some(s.address.tenant),
        Subject::Delay(s) => Some(s.address.tenant),
        _ => None,
    })
    .await
}

/// Entries stored in the DLQ `name` per tenant (`None`: records without one), from its
/// per-subject counts (`dlq.v1.<tenant>.<stage>.<platform>`): what each tenant holds of its
/// share (`tenant_max_msgs`). The one definition, used by `status` and by the stages' share
/// check.
///
/// Errors: the stream cannot be read (`TopologyError::JetStream`).
pub async fn dlq_entries_by_tenant(
    js: &jetstream::Context,
    ns: &Namespace,
    name: &str,
) -> Result<BTreeMap<Option<TenantId>, u64>, TopologyError> {
    counts_by(js, ns, name, |subject| match subject {
        Subject::Dlq(dlq) => Some(dlq.tenant),
        _ => None,
    })
    .await
}

/// [`backlog_by_tenant`] as status rows.
async fn backlog(
    js: &jetstream::Context,
    topology: &ResolvedTopology,
    name: &str,
) -> Result<Vec<TenantBacklog>, TopologyError> {
    Ok(backlog_by_tenant(js, &topology.namespace, name)
        .await?
        .into_iter()
        .map(|(tenant, messages)| TenantBacklog {
            tenant: tenant.to_string(),
            stream: name.to_owned(),
            messages,
        })
        .collect())
}
