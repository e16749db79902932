//! Reading every tenant's own ingress stream. Each registered tenant has a stream
//! `INGRESS_<tenant>` with a durable `ingress-worker` consumer (created by `switchyard tenants
//! enable` / `provision`, and here again when a server restart removed it: its state is kept in
//! nats-server's memory); this supervisor follows the tenant registry and runs one consume loop
//! per tenant, all sharing the worker's handler slots. A tenant with a backlog therefore takes
//! at most `max_batch` slots at a time and the slots go round the tenants with messages: one
//! tenant's burst queues in its own stream, not in front of the others'. Each loop reads only
//! while its tenant has credit at the next stage ([`crate::credit`]).
//!
//! A tenant stream whose tenant is not in the registry (its record deleted by hand, or lost in
//! a partial restore) is read too, once two scans of the server's streams
//! ([`ORPHAN_SCAN_EVERY`] apart) have found it so: its producers' messages were acked by the
//! stream, and unread they would expire there with no trace. Read, they are decided like any
//! other — dead-lettered `unknown_tenant` (replayable once the tenant is registered again), or
//! handed on with `require_registered_tenant = false`. The second scan spares a stream that
//! `switchyard tenants enable` has just created and is about to register.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream;
use prometheus_client::metrics::gauge::Gauge;
use switchyard_keys::{TenantId, TenantKey};
use switchyard_registry::{KvCache, TenantRecord};
use switchyard_service::{Ended, Worker};
use switchyard_topology::{ConsumerName, ResolvedTopology};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::credit::Credit;
use crate::handler::IngressHandler;

/// How long each tenant's pull waits for messages before it is renewed (the shared
/// [`switchyard_service::worker::TENANT_FETCH_WAIT`]).
pub const FETCH_WAIT: Duration = switchyard_service::worker::TENANT_FETCH_WAIT;

/// How often the registry is compared with the running loops (a tenant enabled now is read
/// within this long; its stream holds its messages meanwhile).
const RECONCILE_EVERY: Duration = Duration::from_secs(1);

/// How often the server's streams are listed for tenant streams the registry does not name
/// (one `STREAM.NAMES` request per 1,024 streams).
pub const ORPHAN_SCAN_EVERY: Duration = Duration::from_secs(10);

/// What the supervisor needs: the shared worker, the credit gates, where the tenants' streams
/// are, the registry, and its two gauges (`consumers`: loops running; `missing`: registered
/// tenants whose stream cannot be opened or consumer created, not provisioned: `switchyard
/// provision` creates them).
pub struct Supervisor {
    /// The worker whose slots every loop shares.
    pub worker: Arc<Worker<IngressHandler>>,
    /// The tenants' credit at the next stage.
    pub credit: Arc<Credit>,
    /// JetStream.
    pub js: jetstream::Context,
    /// The resolved topology (tenant stream and consumer names).
    pub topology: ResolvedTopology,
    /// The tenant registry.
    pub tenants: Arc<KvCache<TenantKey, TenantRecord>>,
    /// Loops running.
    pub consumers: Gauge,
    /// Registered tenants not readable.
    pub missing: Gauge,
}

/// Runs one consume loop per registered tenant until `shutdown`, then waits for every loop
/// to drain.
pub async fn supervise(s: Supervisor, shutdown: CancellationToken) {
    let Supervisor {
        worker,
        credit,
        js,
        topology,
        tenants,
        consumers,
        missing,
    } = s;
    let mut running: HashMap<TenantId, CancellationToken> = HashMap::new();
    let mut loops = JoinSet::new();
    let mut warned: HashMap<TenantId, String> = HashMap::new();
    // Tenant streams without a registry record: found by the last scan, and by the two last.
    let mut unregistered_once: HashSet<TenantId> = HashSet::new();
    let mut orphans: HashSet<TenantId> = HashSet::new();
    let mut next_scan = tokio::time::Instant::now() + ORPHAN_SCAN_EVERY;
    while !shutdown.is_cancelled() {
        while loops.try_join_next().is_some() {}
        let registered: HashSet<TenantId> = tenants.keys().into_iter().map(|k| k.tenant).collect();
        if tokio::time::Instant::now() >= next_scan {
            next_scan = tokio::time::Instant::now() + ORPHAN_SCAN_EVERY;
            match tenant_streams(&js, &topology).await {
                Ok(streams) => {
                    let unregistered: HashSet<TenantId> =
                        streams.difference(&registered).cloned().collect();
                    orphans = unregistered
                        .intersection(&unregistered_once)
                        .cloned()
                        .collect();
                    for tenant in orphans.iter().filter(|t| !running.contains_key(*t)) {
                        tracing::warn!(%tenant, "the tenant's ingress stream has no registry record: reading it, so its messages are decided (dead-lettered unknown_tenant unless require_registered_tenant is off), not left to expire");
                    }
                    unregistered_once = unregistered;
                }
                Err(error) => {
                    tracing::warn!(%error, "listing the tenants' ingress streams failed; retrying at the next scan")
                }
            }
        }
        orphans.retain(|tenant| !registered.contains(tenant));
        // Tenants removed from the registry (and not read as orphans): stop their loops (their
        // streams stay). A loop that ended on its own is started again below with the same
        // gate (its tenant's bytes counted so far).
        running.retain(|tenant, token| {
            let read = registered.contains(tenant) || orphans.contains(tenant);
            let keep = read && !token.is_cancelled();
            if !keep {
                token.cancel();
            }
            if !read {
                credit.forget(tenant);
            }
            keep
        });
        let mut not_open = 0;
        for tenant in registered.iter().chain(orphans.iter()) {
            if running.contains_key(tenant) {
                continue;
            }
            match open(&js, &topology, tenant).await {
                Ok(consumer) => {
                    warned.remove(tenant);
                    tracing::info!(%tenant, "reading the tenant's ingress stream");
                    let token = shutdown.child_token();
                    running.insert(tenant.clone(), token.clone());
                    let worker = worker.clone();
                    let gate = credit.gate(tenant);
                    let tenant = tenant.clone();
                    // Built here, not inside the task: the task then holds the loop's future
                    // (with its consumer boxed), not a second copy of the consumer.
                    let consume = worker.consume_gated(
                        consumer,
                        Some(tenant.clone()),
                        Some(gate),
                        token.clone(),
                    );
                    loops.spawn(async move {
                        let ended = consume.await;
                        if ended == Ended::ConsumerGone {
                            tracing::info!(%tenant, "the tenant's ingress consumer is gone (its state is kept in nats-server's memory, lost when the server restarts); creating it again");
                        }
                        // Ended on its own (not by shutdown): reopened on the next pass.
                        token.cancel();
                    });
                }
                Err(error) => {
                    not_open += 1;
                    if warned.get(tenant) != Some(&error) {
                        tracing::warn!(%tenant, %error, "cannot read the tenant's ingress stream; retrying");
                        warned.insert(tenant.clone(), error);
                    }
                }
            }
        }
        consumers.set(running.len() as i64);
        missing.set(not_open);
        tokio::select! {
            _ = shutdown.cancelled() => break,
            _ = tokio::time::sleep(RECONCILE_EVERY) => {}
        }
    }
    while loops.join_next().await.is_some() {}
}

/// Every tenant with an ingress stream of this deployment on the server (by the streams'
/// names, [`ResolvedTopology::tenant_of_stream`]).
async fn tenant_streams(
    js: &jetstream::Context,
    topology: &ResolvedTopology,
) -> Result<HashSet<TenantId>, String> {
    use futures::TryStreamExt;
    let names: Vec<String> = js
        .stream_names()
        .try_collect()
        .await
        .map_err(|e| e.to_string())?;
    Ok(names
        .iter()
        .filter_map(|name| topology.tenant_of_stream(name))
        .filter(|(stream, _)| *stream == switchyard_topology::StreamName::Ingress)
        .map(|(_, tenant)| tenant)
        .collect())
}

/// Opens `tenant`'s `ingress-worker` consumer on its own stream, creating it as declared when
/// the stream has none: its state is kept in nats-server's memory (`storage = "memory"` in
/// the topology), so a server restart removes it, and the stream, a work queue, still holds
/// every message it had not acked. The stream itself is never created here.
async fn open(
    js: &jetstream::Context,
    topology: &ResolvedTopology,
    tenant: &TenantId,
) -> Result<jetstream::consumer::PullConsumer, String> {
    let declared = topology
        .tenant_consumer(ConsumerName::IngressWorker, tenant)
        .ok_or("the topology declares no ingress-worker consumer")?;
    let durable = declared.config.durable_name.clone().unwrap_or_default();
    let not_provisioned = |e: &dyn std::fmt::Display| {
        format!(
            "{}/{durable}: {e} (run `switchyard tenants enable {tenant}` or `switchyard provision`)",
            declared.stream
        )
    };
    let stream = js
        .get_stream_no_info(&declared.stream)
        .await
        .map_err(|e| not_provisioned(&e))?;
    stream
        .get_or_create_consumer(&durable, declared.config)
        .await
        .map_err(|e| not_provisioned(&e))
}
