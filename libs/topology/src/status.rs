//! What is on the server now: streams, consumers (lag), buckets, and per-tenant backlog in
//! front of each pipeline stage.

use std::collections::BTreeMap;

use async_nats::jetstream::{self, stream};
use futures::TryStreamExt;
use serde::Serialize;
use switchyard_keys::TenantId;
use switchyard_subjects::{Namespace, Subject};

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
        let info = stream_info(js, &format!("KV_{}", b.config.bucket)).await?;
        buckets.push(BucketStatus {
            name: b.config.bucket.clone(),
            base: b.base.clone(),
            present: info.is_some(),
            values: info.as_ref().map_or(0, |i| i.state.messages),
            bytes: info.as_ref().map_or(0, |i| i.state.bytes),
        });
    }
    Ok(StatusReport {
        streams,
        consumers,
        buckets,
        tenant_backlog,
    })
}

/// Messages stored in stream `name` per tenant: its per-subject counts summed by the tenant of
/// each stage or delay (scheduled re-entry) subject; other subjects are not counted. The one
/// definition of "a tenant's backlog in a hand-off stream", used by `status` and by the
/// backpressure service's admission scan.
///
/// Errors: the stream cannot be read (`TopologyError::JetStream`).
pub async fn backlog_by_tenant(
    js: &jetstream::Context,
    ns: &Namespace,
    name: &str,
) -> Result<BTreeMap<TenantId, u64>, TopologyError> {
    let stream = js
        .get_stream_no_info(name)
        .await
        .map_err(|e| TopologyError::js(format!("reading stream {name}"), e))?;
    let mut subjects = stream
        .info_with_subjects(">")
        .await
        .map_err(|e| TopologyError::js(format!("reading subjects of {name}"), e))?;
    let mut per_tenant = BTreeMap::new();
    while let Some((subject, count)) = subjects
        .try_next()
        .await
        .map_err(|e| TopologyError::js(format!("reading subjects of {name}"), e))?
    {
        let tenant = match Subject::parse(ns, &subject) {
            Ok(Subject::Stage(s)) => s.address.tenant,
            Ok(Subject::Delay(s)) => s.address.tenant,
            _ => continue,
        };
        *per_tenant.entry(tenant).or_insert(0) += count as u64;
    }
    Ok(per_tenant)
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
