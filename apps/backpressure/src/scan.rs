//! The scan: every `scan_interval_ms`, read each tenant's backlog (waiting here, plus waiting
//! at the next stage), start a loop for every tenant with messages waiting, and publish each
//! tenant's admission state to KV when it changes: closed at `backlog_high`, open again below
//! `backlog_low` (hysteresis). Every replica scans; writes happen only on a change.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use switchyard_keys::{KvKey, RateKey, RateRecord, RateScope, TenantId};
use switchyard_registry::{Admission, KvCache, PressureRecord};
use switchyard_topology::backlog_by_tenant;
use time::format_description::well_known::Rfc3339;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::shared::{Shared, TenantLabel};
use crate::tenant_loop;

/// Runs the scan until `shutdown`, then waits for the tenant loops to finish.
pub async fn run(
    shared: Arc<Shared>,
    pressure: Arc<KvCache<RateKey, PressureRecord>>,
    kv: async_nats::jetstream::kv::Store,
    shutdown: CancellationToken,
) {
    let running: Arc<Mutex<HashSet<TenantId>>> = Arc::default();
    let mut loops = JoinSet::new();
    let mut admission: HashMap<TenantId, Admission> = HashMap::new();
    let interval = Duration::from_millis(shared.settings.scan_interval_ms);
    while !shutdown.is_cancelled() {
        while loops.try_join_next().is_some() {}
        match scan_once(&shared, &pressure, &kv, &mut admission).await {
            Ok(waiting) => {
                for tenant in waiting {
                    let fresh = running
                        .lock()
                        .map(|mut r| r.insert(tenant.clone()))
                        .unwrap_or(false);
                    if fresh {
                        let (shared, running, token) =
                            (shared.clone(), running.clone(), shutdown.clone());
                        loops.spawn(async move {
                            tenant_loop::run(shared, tenant.clone(), token).await;
                            if let Ok(mut r) = running.lock() {
                                r.remove(&tenant);
                            }
                        });
                    }
                }
            }
            Err(error) => tracing::warn!(%error, "backlog scan failed"),
        }
        tokio::select! {
            _ = shutdown.cancelled() => break,
            _ = tokio::time::sleep(interval) => {}
        }
    }
    while loops.join_next().await.is_some() {}
}

/// One scan; returns the tenants with messages waiting here.
async fn scan_once(
    shared: &Shared,
    pressure: &KvCache<RateKey, PressureRecord>,
    kv: &async_nats::jetstream::kv::Store,
    admission: &mut HashMap<TenantId, Admission>,
) -> anyhow::Result<Vec<TenantId>> {
    let here = backlog_by_tenant(&shared.js, &shared.ns, &shared.stream_name).await?;
    let next = backlog_by_tenant(&shared.js, &shared.ns, &shared.next_stream_name).await?;
    let mut tenants: HashSet<TenantId> = here.keys().chain(next.keys()).cloned().collect();
    tenants.extend(
        admission
            .iter()
            .filter(|(_, a)| **a == Admission::Closed)
            .map(|(t, _)| t.clone()),
    );
    for tenant in tenants {
        let backlog =
            here.get(&tenant).copied().unwrap_or(0) + next.get(&tenant).copied().unwrap_or(0);
        let label = TenantLabel {
            tenant: tenant.to_string(),
        };
        shared.own.backlog.get_or_create(&label).set(backlog as i64);
        let key = RateKey {
            scope: RateScope::Tenant(tenant.clone()),
            record: RateRecord::Pressure,
        };
        let current =
            *admission
                .entry(tenant.clone())
                .or_insert_with(|| match pressure.get(&key) {
                    Some(Ok(record)) => record.admission,
                    _ => Admission::Open,
                });
        let (high, low) = shared
            .limit_for(&tenant)
            .thresholds(shared.settings.default_backlog_high);

        let wanted = match current {
            Admission::Open if backlog >= high => Admission::Closed,
            Admission::Closed if backlog < low => Admission::Open,
            same => same,
        };
        shared
            .own
            .admission_closed
            .get_or_create(&label)
            .set(i64::from(wanted == Admission::Closed));
        if wanted != current || pressure.get(&key).is_none() && wanted == Admission::Closed {
            let record = PressureRecord {
                admission: wanted,
                backlog,
                updated_at: time::OffsetDateTime::now_utc()
                    .format(&Rfc3339)
                    .unwrap_or_default(),
            };
            kv.put(key.render(), serde_json::to_vec(&record)?.into())
                .await?;
            tracing::info!(%tenant, backlog, high, low, admission = ?wanted, "admission changed");
            admission.insert(tenant, wanted);
        }
    }
    Ok(here
        .into_iter()
        .filter(|(_, n)| *n > 0)
        .map(|(t, _)| t)
        .collect())
}
