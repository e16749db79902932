//! Reading every tenant's own ingress stream. Each registered tenant has a stream
//! `INGRESS_<tenant>` with a durable `ingress-worker` consumer (created by `switchyard tenants
//! enable` / `provision`, and here again when a server restart removed it: its state is kept in
//! nats-server's memory); this supervisor follows the tenant registry and runs one consume loop
//! per tenant, all sharing the worker's handler slots. A tenant with a backlog therefore takes
//! at most `max_batch` slots at a time and the slots go round the tenants with messages: one
//! tenant's burst queues in its own stream, not in front of the others'. Each loop reads only
//! while its tenant has credit at the next stage ([`crate::credit`]).

use std::collections::HashMap;
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
    while !shutdown.is_cancelled() {
        while loops.try_join_next().is_some() {}
        let registered: Vec<TenantId> = tenants.keys().into_iter().map(|k| k.tenant).collect();
        // Tenants removed from the registry: stop their loops (their streams stay).
        // A loop that ended on its own is started again below with the same gate (its
        // tenant's bytes counted so far).
        running.retain(|tenant, token| {
            let registered = registered.contains(tenant);
            let keep = registered && !token.is_cancelled();
            if !keep {
                token.cancel();
            }
            if !registered {
                credit.forget(tenant);
            }
            keep
        });
        let mut not_open = 0;
        for tenant in registered {
            if running.contains_key(&tenant) {
                continue;
            }
            match open(&js, &topology, &tenant).await {
                Ok(consumer) => {
                    warned.remove(&tenant);
                    tracing::info!(%tenant, "reading the tenant's ingress stream");
                    let token = shutdown.child_token();
                    running.insert(tenant.clone(), token.clone());
                    let worker = worker.clone();
                    let gate = credit.gate(&tenant);
                    let tenant = tenant.clone();
                    // Built here, not inside the task: the task then holds the loop's future
                    // (with its consumer boxed), not a second copy of the consumer.
                    let consume = worker.consume_gated(consumer, Some(gate), token.clone());
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
                    if warned.get(&tenant) != Some(&error) {
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
