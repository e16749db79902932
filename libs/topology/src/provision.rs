//! Idempotent provisioning: create what is missing, compare what exists with its declaration,
//! report drift, and fix it on request (`--fix`) where JetStream allows the change in place.

use std::fmt::Debug;
use std::time::Duration;

use async_nats::jetstream::context::ConsumerInfoErrorKind;
use async_nats::jetstream::{self, ErrorCode, consumer, stream};
use serde::Serialize;

use crate::TopologyError;
use crate::lookup::stream_info;
use switchyard_keys::TenantId;
use switchyard_runtime::retry::RetryPolicy;
use tokio_util::sync::CancellationToken;

use crate::names::{ConsumerName, StreamName};
use crate::resolve::{
    ResolvedBucket, ResolvedConsumer, ResolvedStream, ResolvedTopology, TenantQuota,
};

/// What provisioning did with one declared item.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// It did not exist and was created.
    Created,
    /// It exists exactly as declared.
    Unchanged,
    /// It had drifted and was updated in place (`--fix`; without it, only `ADVISORIES`'s
    /// subjects in the migration to a sharded `BACKPRESSURE`).
    Updated,
    /// It has drifted; nothing was changed (run with `--fix`).
    Drifted,
    /// It has drifted in a field JetStream cannot change in place; it must be recreated by
    /// an operator (which loses its contents).
    Unfixable,
    /// It is no longer declared and was removed once drained (the legacy shared `INGRESS`, the
    /// unsharded `BACKPRESSURE`).
    Retired,
    /// It does not exist; nothing was created ([`check`], [`check_tenant`]).
    Missing,
}

/// What a provisioning run may change.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Apply {
    /// Change nothing: report what is missing or drifted.
    Nothing,
    /// Create what is missing; report drift.
    Create,
    /// Create what is missing and fix drift in place.
    CreateAndFix,
}

impl Apply {
    fn of(fix: bool) -> Self {
        if fix {
            Self::CreateAndFix
        } else {
            Self::Create
        }
    }
}

/// One field that differs from its declaration.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Change {
    /// The field.
    pub field: &'static str,
    /// The declared value.
    pub declared: String,
    /// The value on the server.
    pub actual: String,
    /// Whether JetStream can change it in place.
    pub fixable: bool,
}

impl std::fmt::Display for Change {
    /// `max_bytes: declared 1073741824 but is 536870912`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}: declared {} but is {}",
            self.field, self.declared, self.actual
        )
    }
}

/// The outcome for one item.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ProvisionItem {
    /// `stream`, `consumer` or `bucket`.
    pub kind: &'static str,
    /// Its concrete name (`STREAM/consumer` for consumers).
    pub name: String,
    /// What happened.
    pub outcome: Outcome,
    /// The fields that differed (empty when created or unchanged).
    pub changes: Vec<Change>,
}

/// The outcome of a provisioning run.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct ProvisionReport {
    /// One entry per declared item, in declaration order.
    pub items: Vec<ProvisionItem>,
}

impl ProvisionItem {
    fn created(kind: &'static str, name: String) -> Self {
        Self {
            kind,
            name,
            outcome: Outcome::Created,
            changes: Vec::new(),
        }
    }

    fn missing(kind: &'static str, name: String) -> Self {
        Self {
            outcome: Outcome::Missing,
            ..Self::created(kind, name)
        }
    }
}

impl ProvisionReport {
    /// Whether anything was created or updated.
    pub fn changed_anything(&self) -> bool {
        self.items.iter().any(|i| {
            matches!(
                i.outcome,
                Outcome::Created | Outcome::Updated | Outcome::Retired
            )
        })
    }

    /// Whether anything is (still) different from its declaration.
    pub fn has_drift(&self) -> bool {
        self.items
            .iter()
            .any(|i| matches!(i.outcome, Outcome::Drifted | Outcome::Unfixable))
    }
}

/// Collects differences between declared and actual values.
#[derive(Default)]
struct Diff(Vec<Change>);

impl Diff {
    fn field<T: PartialEq + Debug>(
        &mut self,
        field: &'static str,
        declared: &T,
        actual: &T,
        fixable: bool,
    ) {
        if declared != actual {
            self.0.push(Change {
                field,
                declared: format!("{declared:?}"),
                actual: format!("{actual:?}"),
                fixable,
            });
        }
    }
}

fn stream_diff(declared: &stream::Config, actual: &stream::Config) -> Vec<Change> {
    let mut d = Diff::default();
    d.field("subjects", &declared.subjects, &actual.subjects, true);
    d.field("retention", &declared.retention, &actual.retention, false);
    d.field("storage", &declared.storage, &actual.storage, false);
    d.field(
        "replicas",
        &declared.num_replicas,
        &actual.num_replicas,
        true,
    );
    d.field("max_age", &declared.max_age, &actual.max_age, true);
    d.field("max_bytes", &declared.max_bytes, &actual.max_bytes, true);
    d.field(
        "max_messages",
        &declared.max_messages,
        &actual.max_messages,
        true,
    );
    // A tenant stream held shut by closed admission: the quota it returns to.
    if let Some(held) = declared.metadata.get(HELD_QUOTA_KEY) {
        d.field(
            "held quota (metadata)",
            &Some(held),
            &actual.metadata.get(HELD_QUOTA_KEY),
            true,
        );
    }
    d.field(
        "max_message_size",
        &declared.max_message_size,
        &actual.max_message_size,
        true,
    );
    d.field(
        "duplicate_window",
        &declared.duplicate_window,
        &actual.duplicate_window,
        true,
    );
    d.field("discard", &declared.discard, &actual.discard, true);
    d.field(
        "allow_direct",
        &declared.allow_direct,
        &actual.allow_direct,
        true,
    );
    d.field(
        "allow_message_schedules",
        &declared.allow_message_schedules,
        &actual.allow_message_schedules,
        true,
    );
    d.field(
        "max_messages_per_subject",
        &declared.max_messages_per_subject,
        &actual.max_messages_per_subject,
        true,
    );
    d.field(
        "allow_message_ttl",
        &declared.allow_message_ttl,
        &actual.allow_message_ttl,
        false,
    );
    d.field(
        "subject_delete_marker_ttl",
        &declared.subject_delete_marker_ttl,
        &actual.subject_delete_marker_ttl,
        true,
    );
    d.field(
        "description",
        &declared.description,
        &actual.description,
        true,
    );
    d.0
}

fn consumer_diff(declared: &consumer::pull::Config, actual: &consumer::Config) -> Vec<Change> {
    let mut d = Diff::default();
    d.field(
        "filter_subject",
        &declared.filter_subject,
        &actual.filter_subject,
        true,
    );
    d.field(
        "ack_policy",
        &declared.ack_policy,
        &actual.ack_policy,
        false,
    );
    d.field(
        "deliver_policy",
        &declared.deliver_policy,
        &actual.deliver_policy,
        false,
    );
    d.field("ack_wait", &declared.ack_wait, &actual.ack_wait, true);
    d.field(
        "max_deliver",
        &declared.max_deliver,
        &actual.max_deliver,
        true,
    );
    d.field(
        "max_ack_pending",
        &declared.max_ack_pending,
        &actual.max_ack_pending,
        true,
    );
    d.field(
        "description",
        &declared.description,
        &actual.description,
        true,
    );
    d.0
}

fn settle(kind: &'static str, name: String, changes: Vec<Change>, apply: Apply) -> ProvisionItem {
    let outcome = if changes.is_empty() {
        Outcome::Unchanged
    } else if changes.iter().any(|c| !c.fixable) {
        Outcome::Unfixable
    } else if apply == Apply::CreateAndFix {
        Outcome::Updated
    } else {
        Outcome::Drifted
    };
    ProvisionItem {
        kind,
        name,
        outcome,
        changes,
    }
}

/// nats-server's answer to a replicated stream's creation (or restore) while its meta leader
/// still counts a peer as offline ("no suitable peers for placement"): right after a cluster
/// starts, or a node restarts, it passes within seconds.
pub const NO_SUITABLE_PEERS: ErrorCode = ErrorCode(10005);

/// How long creating (or restoring) a stream or bucket waits out [`NO_SUITABLE_PEERS`] before
/// failing.
pub const PLACEMENT_WAIT: Duration = Duration::from_secs(30);

/// Runs `create` (a stream's or a bucket's creation or restore), trying again while the
/// cluster cannot place its replicas yet (`placing` says whether an error is
/// [`NO_SUITABLE_PEERS`], or another worth creating again for), every 250 ms to 2 s for up to
/// [`PLACEMENT_WAIT`], logging each retry with `what`. Any other error is returned at once.
pub async fn while_placing<T, E, Fut>(
    what: &str,
    create: impl FnMut() -> Fut,
    placing: impl Fn(&E) -> bool,
) -> Result<T, E>
where
    E: std::fmt::Display,
    Fut: std::future::Future<Output = Result<T, E>>,
{
    RetryPolicy::new(Duration::from_millis(250), Duration::from_secs(2))
        .within(PLACEMENT_WAIT)
        .run(
            &CancellationToken::new(),
            create,
            placing,
            |error, after| {
                tracing::warn!(%error, ?after, "{what}: the cluster cannot place its replicas yet; trying again");
            },
        )
        .await
}

/// Whether creating again is the answer to `error` (or an error it wraps): the cluster cannot
/// place the replicas yet ([`NO_SUITABLE_PEERS`]), or no answer came within the request's
/// timeout (a creation lost in a meta leader change, or still under way on a loaded cluster).
/// Creating again is safe: nats-server takes a creation equal to one it already has (or has in
/// flight) as that one (`jsClusteredStreamRequest`, "an equal assignment"), and refuses a
/// different one.
fn awaits_placement<E: std::error::Error + 'static>(error: &E) -> bool {
    let error: &(dyn std::error::Error + 'static) = error;
    std::iter::successors(Some(error), |e| e.source()).any(|e| {
        e.downcast_ref::<jetstream::context::CreateStreamError>()
            .is_some_and(|e| match e.kind() {
                jetstream::context::CreateStreamErrorKind::JetStream(j) => {
                    j.error_code() == NO_SUITABLE_PEERS
                }
                jetstream::context::CreateStreamErrorKind::TimedOut => true,
                _ => false,
            })
    })
}

async fn provision_stream(
    js: &jetstream::Context,
    s: &ResolvedStream,
    apply: Apply,
) -> Result<ProvisionItem, TopologyError> {
    let name = s.config.name.clone();
    let Some(actual) = stream_info(js, &name).await?.map(|i| i.config) else {
        if apply == Apply::Nothing {
            return Ok(ProvisionItem::missing("stream", name));
        }
        while_placing(
            &name,
            || js.create_stream(s.config.clone()),
            awaits_placement,
        )
        .await
        .map_err(|e| TopologyError::js(format!("creating stream {name}"), e))?;
        return Ok(ProvisionItem::created("stream", name));
    };
    let item = settle(
        "stream",
        name.clone(),
        stream_diff(&s.config, &actual),
        apply,
    );
    if item.outcome == Outcome::Updated {
        js.update_stream(s.config.clone())
            .await
            .map_err(|e| TopologyError::js(format!("updating stream {name}"), e))?;
    }
    Ok(item)
}

async fn provision_consumer(
    js: &jetstream::Context,
    c: &ResolvedConsumer,
    apply: Apply,
) -> Result<ProvisionItem, TopologyError> {
    let durable = c.config.durable_name.clone().unwrap_or_default();
    let name = format!("{}/{durable}", c.stream);
    let stream = js
        .get_stream_no_info(&c.stream)
        .await
        .map_err(|e| TopologyError::js(format!("looking up stream {}", c.stream), e))?;
    let actual = match stream.consumer_info(&durable).await {
        Ok(info) => info.config,
        Err(e)
            if matches!(e.kind(), ConsumerInfoErrorKind::NotFound)
                || matches!(e.kind(), ConsumerInfoErrorKind::JetStream(j) if j.error_code() == ErrorCode::CONSUMER_NOT_FOUND) =>
        {
            if apply == Apply::Nothing {
                return Ok(ProvisionItem::missing("consumer", name));
            }
            stream
                .create_consumer(c.config.clone())
                .await
                .map_err(|e| TopologyError::js(format!("creating consumer {name}"), e))?;
            return Ok(ProvisionItem::created("consumer", name));
        }
        // Checking, a consumer whose stream is missing is missing too.
        Err(e)
            if apply == Apply::Nothing
                && (matches!(e.kind(), ConsumerInfoErrorKind::StreamNotFound)
                    || matches!(e.kind(), ConsumerInfoErrorKind::JetStream(j) if j.error_code() == ErrorCode::STREAM_NOT_FOUND)) =>
        {
            return Ok(ProvisionItem::missing("consumer", name));
        }
        Err(e) => return Err(TopologyError::js(format!("looking up consumer {name}"), e)),
    };
    let item = settle(
        "consumer",
        name.clone(),
        consumer_diff(&c.config, &actual),
        apply,
    );
    if item.outcome == Outcome::Updated {
        // Where nats-server keeps the state cannot change in place (it refuses: "storage type
        // can not be updated"), and is not drift: a consumer created on file before a
        // declaration moved it to memory keeps its file state and is updated as it is.
        let config = consumer::pull::Config {
            memory_storage: actual.memory_storage,
            ..c.config.clone()
        };
        js.update_consumer_on_stream(config, &c.stream)
            .await
            .map_err(|e| TopologyError::js(format!("updating consumer {name}"), e))?;
    }
    Ok(item)
}

async fn provision_bucket(
    js: &jetstream::Context,
    b: &ResolvedBucket,
    apply: Apply,
) -> Result<ProvisionItem, TopologyError> {
    let name = b.config.bucket.clone();
    let Some(actual) = stream_info(js, &crate::resolve::bucket_stream(&name))
        .await?
        .map(|i| i.config)
    else {
        if apply == Apply::Nothing {
            return Ok(ProvisionItem::missing("bucket", name));
        }
        while_placing(
            &name,
            || js.create_key_value(b.config.clone()),
            awaits_placement,
        )
        .await
        .map_err(|e| TopologyError::js(format!("creating bucket {name}"), e))?;
        return Ok(ProvisionItem::created("bucket", name));
    };
    let mut d = Diff::default();
    d.field(
        "history",
        &b.config.history,
        &actual.max_messages_per_subject,
        true,
    );
    d.field("max_age", &b.config.max_age, &actual.max_age, true);
    d.field("max_bytes", &b.config.max_bytes, &actual.max_bytes, true);
    d.field(
        "replicas",
        &b.config.num_replicas,
        &actual.num_replicas,
        true,
    );
    d.field("storage", &b.config.storage, &actual.storage, false);
    d.field(
        "per_key_ttl",
        &b.config.limit_markers.is_some(),
        &actual.allow_message_ttl,
        false,
    );
    d.field(
        "limit_markers",
        &b.config.limit_markers,
        &actual.subject_delete_marker_ttl,
        true,
    );
    d.field(
        "description",
        &Some(b.config.description.clone()),
        &actual.description,
        true,
    );
    let item = settle("bucket", name.clone(), d.0, apply);
    if item.outcome == Outcome::Updated {
        js.update_key_value(b.config.clone())
            .await
            .map_err(|e| TopologyError::js(format!("updating bucket {name}"), e))?;
    }
    Ok(item)
}

/// Provisions every declared shared stream, consumer and bucket (per-tenant resources are
/// [`provision_tenant`]'s). Running it twice changes nothing the second time; drift is
/// reported, and fixed in place when `fix` is set and JetStream allows it. Deletes nothing but
/// a drained legacy shared `INGRESS` stream (see [`retire_shared_ingress`]) and an emptied
/// unsharded `BACKPRESSURE` stream (see [`retire_unsharded_backpressure`]); changes without
/// `fix` only the `ADVISORIES` subjects that still name the latter
/// ([`advisories_follow_the_shards`]).
pub async fn provision(
    js: &jetstream::Context,
    topology: &ResolvedTopology,
    fix: bool,
) -> Result<ProvisionReport, TopologyError> {
    let mut report = ProvisionReport::default();
    if let Some(item) = retire_shared_ingress(js, topology).await? {
        report.items.push(item);
    }
    if let Some(item) = retire_unsharded_backpressure(js, topology).await? {
        report.items.push(item);
    }
    let mut migrated = advisories_follow_the_shards(js, topology).await?;
    // The migrated stream is reported once, in its place: updated, or, when it drifts in
    // something else too, as that says, with the migrated subjects among its changes.
    for mut item in shared(js, topology, Apply::of(fix)).await?.items {
        if let Some(m) = migrated.take_if(|m| m.name == item.name) {
            if item.outcome == Outcome::Unchanged {
                item = m;
            } else {
                item.changes.splice(0..0, m.changes);
            }
        }
        report.items.push(item);
    }
    Ok(report)
}

/// [`provision`] without changing anything: every declared shared stream, consumer and bucket
/// as [`Outcome::Unchanged`], [`Outcome::Drifted`], [`Outcome::Unfixable`] or
/// [`Outcome::Missing`] (what `switchyard doctor` reports). Needs only read access to the
/// JetStream API.
pub async fn check(
    js: &jetstream::Context,
    topology: &ResolvedTopology,
) -> Result<ProvisionReport, TopologyError> {
    shared(js, topology, Apply::Nothing).await
}

async fn shared(
    js: &jetstream::Context,
    topology: &ResolvedTopology,
    apply: Apply,
) -> Result<ProvisionReport, TopologyError> {
    let mut report = ProvisionReport::default();
    for s in &topology.streams {
        report.items.push(provision_stream(js, s, apply).await?);
    }
    // Consumers made on demand are their service's to create (and JetStream's to remove).
    for c in topology.consumers.iter().filter(|c| !c.name.on_demand()) {
        report.items.push(provision_consumer(js, c, apply).await?);
    }
    for b in &topology.buckets {
        report.items.push(provision_bucket(js, b, apply).await?);
    }
    Ok(report)
}

/// Provisions `tenant`'s own resources: each per-tenant stream (`INGRESS_<tenant>`, with the
/// tenant's `quota` over the declared defaults) and the consumers declared on it
/// (`ingress-worker`). Idempotent like [`provision`]; `fix` applies drift — a changed quota —
/// in place.
///
/// Errors: JetStream refuses (e.g. `insufficient storage resources available`, 10047, when the
/// server cannot reserve the quota's `max_bytes`; `subjects overlap with an existing stream`
/// while a legacy shared `INGRESS` still exists).
pub async fn provision_tenant(
    js: &jetstream::Context,
    topology: &ResolvedTopology,
    tenant: &TenantId,
    quota: TenantQuota,
    fix: bool,
) -> Result<ProvisionReport, TopologyError> {
    tenant_resources(js, topology, tenant, quota, Apply::of(fix)).await
}

/// [`provision_tenant`] without changing anything (see [`check`]).
pub async fn check_tenant(
    js: &jetstream::Context,
    topology: &ResolvedTopology,
    tenant: &TenantId,
    quota: TenantQuota,
) -> Result<ProvisionReport, TopologyError> {
    tenant_resources(js, topology, tenant, quota, Apply::Nothing).await
}

async fn tenant_resources(
    js: &jetstream::Context,
    topology: &ResolvedTopology,
    tenant: &TenantId,
    quota: TenantQuota,
    apply: Apply,
) -> Result<ProvisionReport, TopologyError> {
    let mut report = ProvisionReport::default();
    // A tenant's streams are replicated like the deployment's shared ones (what `provision
    // --replicas` chose), whatever the caller's own replica setting.
    let replicas = match topology.stream_name(StreamName::Idempotency) {
        Some(shared) => stream_info(js, shared)
            .await?
            .map(|i| i.config.num_replicas),
        None => None,
    };
    for name in StreamName::ALL.into_iter().filter(|s| s.per_tenant()) {
        let Some(mut stream) = topology.tenant_stream(name, tenant, quota) else {
            continue;
        };
        if let Some(replicas) = replicas {
            stream.config.num_replicas = replicas;
        }
        // A stream held shut by closed admission ([`hold_tenant_ingress`]) keeps its hold;
        // the quota it returns to on release is the one declared now.
        if let Some(actual) = stream_info(js, &stream.config.name).await?
            && actual.config.metadata.contains_key(HELD_QUOTA_KEY)
        {
            stream.config.metadata.insert(
                HELD_QUOTA_KEY.to_owned(),
                stream.config.max_messages.to_string(),
            );
            stream.config.max_messages = actual.config.max_messages;
        }
        report
            .items
            .push(provision_stream(js, &stream, apply).await?);
        for consumer in ConsumerName::ALL
            .into_iter()
            .filter(|c| c.per_tenant() && !c.on_demand())
            .filter_map(|c| topology.tenant_consumer(c, tenant))
            .filter(|c| c.stream == stream.config.name)
        {
            report
                .items
                .push(provision_consumer(js, &consumer, apply).await?);
        }
    }
    Ok(report)
}

/// Metadata key on a tenant's ingress stream held shut by closed admission: its message quota
/// to return to on release.
pub const HELD_QUOTA_KEY: &str = "switchyard.held_quota_msgs";

/// Holds `tenant`'s ingress stream shut to new publishes (`hold`), or releases it: held, its
/// `max_msgs` is lowered to what it stores now (at least 1), so with `discard = new` every
/// further publish is refused with JetStream's 10077 "maximum messages exceeded", and the quota
/// is kept in the stream's metadata ([`HELD_QUOTA_KEY`]); released, the quota is restored.
/// Returns whether the stream changed (`false`: already so, or no such stream). Used by the
/// backpressure service on admission changes; provisioning keeps a hold in place.
///
/// Errors: the stream cannot be read or updated (`TopologyError::JetStream`).
pub async fn hold_tenant_ingress(
    js: &jetstream::Context,
    topology: &ResolvedTopology,
    tenant: &TenantId,
    hold: bool,
) -> Result<bool, TopologyError> {
    let Some(name) = topology.tenant_stream_name(StreamName::Ingress, tenant) else {
        return Ok(false);
    };
    let Some(info) = stream_info(js, &name).await? else {
        return Ok(false);
    };
    let mut config = info.config.clone();
    config.metadata.retain(|key, _| !key.starts_with("_nats."));
    match (hold, config.metadata.get(HELD_QUOTA_KEY).cloned()) {
        (true, None) => {
            config
                .metadata
                .insert(HELD_QUOTA_KEY.to_owned(), config.max_messages.to_string());
            config.max_messages = i64::try_from(info.state.messages.max(1)).unwrap_or(i64::MAX);
        }
        (false, Some(quota)) => {
            config.max_messages = quota.parse().unwrap_or(-1);
            config.metadata.remove(HELD_QUOTA_KEY);
        }
        _ => return Ok(false),
    }
    js.update_stream(config)
        .await
        .map_err(|e| TopologyError::js(format!("updating stream {name}"), e))?;
    Ok(true)
}

/// Before per-tenant ingress streams, one shared `INGRESS` stream stored `ingress.v1.>`; it
/// overlaps every `INGRESS_<tenant>`, so it must go before they can be created. It is deleted
/// only once drained — its `ingress-worker` consumer has nothing pending or unacknowledged
/// (what it still holds is history, already handed on) — and reported as `retired`; while it
/// still holds unprocessed messages provisioning stops with an error saying so.
pub async fn retire_shared_ingress(
    js: &jetstream::Context,
    topology: &ResolvedTopology,
) -> Result<Option<ProvisionItem>, TopologyError> {
    let name = topology.namespace.stream_name(StreamName::Ingress.base());
    let Some(info) = stream_info(js, &name).await? else {
        return Ok(None);
    };
    let shared = topology
        .namespace
        .stage_filter(switchyard_subjects::InputStage::Ingress, None);
    if !info.config.subjects.contains(&shared) {
        return Ok(None);
    }
    let stream = js
        .get_stream_no_info(&name)
        .await
        .map_err(|e| TopologyError::js(format!("looking up stream {name}"), e))?;
    let worker = ConsumerName::IngressWorker.base();
    let pending = match stream.consumer_info(worker).await {
        Ok(info) => info.num_pending + info.num_ack_pending as u64,
        Err(e)
            if matches!(e.kind(), ConsumerInfoErrorKind::NotFound)
                || matches!(e.kind(), ConsumerInfoErrorKind::JetStream(j) if j.error_code() == ErrorCode::CONSUMER_NOT_FOUND) =>
        {
            info.state.messages
        }
        Err(e) => {
            return Err(TopologyError::js(
                format!("looking up consumer {name}/{worker}"),
                e,
            ));
        }
    };
    if pending > 0 {
        return Err(TopologyError::Invalid(format!(
            "the shared stream {name} (ingress.v1.>) still holds {pending} messages the ingress \
             stage has not handed on; ingress streams are now one per tenant: run the previous \
             ingress service until `{worker}` has nothing pending, then provision again"
        )));
    }
    js.delete_stream(&name)
        .await
        .map_err(|e| TopologyError::js(format!("deleting the drained stream {name}"), e))?;
    Ok(Some(ProvisionItem {
        kind: "stream",
        name,
        outcome: Outcome::Retired,
        changes: Vec::new(),
    }))
}

/// Before its shards, one `BACKPRESSURE` stream stored `backpressure.v1.>`; it overlaps every
/// `BACKPRESSURE_<shard>` (`backpressure.v1.<shard>.>`), so it must go before they can be
/// created. It is a work queue: what it still stores, the backpressure stage has not handed
/// on, and its subjects (without a shard) are not read by this build. While it holds messages
/// provisioning stops with an error saying how to empty it. Once empty, it first stops storing
/// its subjects (a dead subject, `backpressure.v1.retiring`, in their place), so a hand-off a
/// previous build's stage still publishes is refused — and retried by that stage; after
/// [`RETIRE_SETTLE`] (for a publish taken just before to land) it is checked again — empty, and
/// its last sequence unchanged — else its subjects are restored and provisioning stops as
/// above; then it is deleted, reported as `retired`. A stream left closed by a retirement that
/// stopped half-way is picked up again the same way. The
/// `ADVISORIES` subjects that named it are then brought to the shards' in place
/// ([`advisories_follow_the_shards`]).
pub async fn retire_unsharded_backpressure(
    js: &jetstream::Context,
    topology: &ResolvedTopology,
) -> Result<Option<ProvisionItem>, TopologyError> {
    let ns = &topology.namespace;
    let name = ns.stream_name(StreamName::Backpressure.base());
    let Some(info) = stream_info(js, &name).await? else {
        return Ok(None);
    };
    let unsharded = ns.stage_filter(switchyard_subjects::InputStage::Backpressure, None);
    let retiring = format!("{}retiring", unsharded.trim_end_matches('>'));
    // Open on the old subjects, or closed by a retirement that stopped half-way (its next
    // steps are made again here).
    let open = info.config.subjects.contains(&unsharded);
    if !open && info.config.subjects != [retiring.clone()] {
        return Ok(None);
    }
    let idempotency = ns.stream_name(StreamName::Idempotency.base());
    let holds_work = |messages: u64| {
        TopologyError::Invalid(format!(
            "the stream {name} ({unsharded}) still holds {messages} messages the backpressure \
             stage has not handed on; it is now sharded (one stream per shard of the tenants): \
             stop the previous build's idempotency service (messages wait in {idempotency}), \
             run its backpressure service until {name} is empty, then provision again and \
             start this build"
        ))
    };
    // Back on its old subjects, so the previous build's stage can go on emptying it.
    let reopen = |messages: u64| {
        let mut reopened = info.config.clone();
        reopened.subjects = vec![unsharded.clone()];
        let refused = holds_work(messages);
        let what = format!("reopening the stream {name}");
        async move {
            js.update_stream(reopened)
                .await
                .map_err(|e| TopologyError::js(what, e))?;
            Err::<Option<ProvisionItem>, _>(refused)
        }
    };
    if info.state.messages > 0 {
        return if open {
            Err(holds_work(info.state.messages))
        } else {
            reopen(info.state.messages).await
        };
    }
    if open {
        let mut closed = info.config.clone();
        closed.subjects = vec![retiring];
        js.update_stream(closed)
            .await
            .map_err(|e| TopologyError::js(format!("closing the emptied stream {name}"), e))?;
        // A publish the server took before the update may still be on its way into the
        // stream (queued, or being replicated): give it time to land, then look again.
        tokio::time::sleep(RETIRE_SETTLE).await;
    }
    let after = stream_info(js, &name).await?.map(|i| i.state);
    if let Some(state) = after
        && (state.messages > 0 || state.last_sequence != info.state.last_sequence)
    {
        return reopen(state.messages).await;
    }
    js.delete_stream(&name)
        .await
        .map_err(|e| TopologyError::js(format!("deleting the emptied stream {name}"), e))?;
    Ok(Some(ProvisionItem {
        kind: "stream",
        name,
        outcome: Outcome::Retired,
        changes: Vec::new(),
    }))
}

/// How long [`retire_unsharded_backpressure`] waits, after closing the old stream to its
/// subjects, for a publish the server took just before to land, before it looks again.
const RETIRE_SETTLE: Duration = Duration::from_secs(1);

/// `ADVISORIES` as a previous build declared it captures the advisories of the unsharded
/// `BACKPRESSURE`, none of its shards': left so, the dlq safety net would hear of no message
/// the backpressure stage gives up on (only its sweep would find them). Part of the migration
/// to shards, its subjects are set to the declared ones in place (`updated`), without `--fix`;
/// any other drift of it is still only reported. `None` when it is missing or already follows
/// the shards.
pub async fn advisories_follow_the_shards(
    js: &jetstream::Context,
    topology: &ResolvedTopology,
) -> Result<Option<ProvisionItem>, TopologyError> {
    let Some(declared) = topology
        .streams
        .iter()
        .find(|s| s.base == StreamName::Advisories.base())
    else {
        return Ok(None);
    };
    let name = declared.config.name.clone();
    let Some(info) = stream_info(js, &name).await? else {
        return Ok(None);
    };
    let unsharded = topology
        .namespace
        .stream_name(StreamName::Backpressure.base());
    let old = switchyard_subjects::advisory::filter(
        switchyard_subjects::advisory::AdvisoryKind::MaxDeliveries,
        Some(&unsharded),
    );
    if !info.config.subjects.contains(&old) {
        return Ok(None);
    }
    let mut config = info.config.clone();
    config.subjects = declared.config.subjects.clone();
    js.update_stream(config)
        .await
        .map_err(|e| TopologyError::js(format!("updating stream {name}'s subjects"), e))?;
    Ok(Some(ProvisionItem {
        kind: "stream",
        name,
        outcome: Outcome::Updated,
        changes: vec![Change {
            field: "subjects",
            declared: declared.config.subjects.join(", "),
            actual: info.config.subjects.join(", "),
            fixable: true,
        }],
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use jetstream::context::{CreateStreamError, CreateStreamErrorKind};

    #[test]
    fn a_creation_with_no_answer_is_made_again_and_a_refused_one_is_not() {
        assert!(awaits_placement(&CreateStreamError::new(
            CreateStreamErrorKind::TimedOut
        )));
        assert!(!awaits_placement(&CreateStreamError::new(
            CreateStreamErrorKind::InvalidStreamName
        )));
        // Wrapped, as provisioning reports it.
        let wrapped = TopologyError::js(
            "creating stream X",
            CreateStreamError::new(CreateStreamErrorKind::TimedOut),
        );
        assert!(awaits_placement(&wrapped));
    }
}
