//! Per-tenant credit at the next stage: backpressure that travels back to the tenant's edge.
//!
//! The hand-off stream after ingress (`IDEMPOTENCY` by default) is one FIFO for every tenant.
//! Ingress therefore reads a tenant's own stream only while that tenant has fewer than
//! `[ingress] next_stage_credit` messages waiting there, and while its admission is open (the
//! backpressure service's `<tenant>.pressure` record). A tenant over either bound is *paused*:
//! its consume loop fetches nothing ([`switchyard_service::Worker::consume_gated`]), so its
//! backlog stays in its own `INGRESS_<tenant>` stream, where its quota refuses its producers
//! once full (NATS: a JetStream error; HTTP: `429`), and no other tenant waits behind more than
//! `next_stage_credit` of its messages at the next stage. A tenant holding its share of the
//! DLQ is paused as well, until an operator makes room (its refusals cannot be recorded).
//!
//! [`Credit::run`] scans the next stream's per-subject counts every `credit_scan_ms`
//! ([`switchyard_topology::backlog_by_tenant`]; skipped while the whole stream holds fewer
//! messages than the credit, when no tenant can be over it) and opens or closes each tenant's
//! gate. A scan that fails leaves the gates as they are; reading resumes with the next good
//! one.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_nats::jetstream;
use prometheus_client::metrics::gauge::Gauge;
use switchyard_keys::{RateKey, RateRecord, RateScope, TenantId};
use switchyard_registry::{Admission, KvCache, PressureRecord};
use switchyard_runtime::retry::poll;
use switchyard_service::DlqQuota;
use switchyard_subjects::Namespace;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

/// The gates of every tenant being read: `true` while the tenant has credit.
pub struct Credit {
    gates: Mutex<HashMap<TenantId, watch::Sender<bool>>>,
    /// Tenants paused now.
    paused: Gauge,
}

/// Where a tenant's credit is counted and how much it has.
pub struct CreditSettings {
    /// The deployed names of the stream after ingress (one, or a sharded stage's shards).
    pub next_streams: Vec<String>,
    /// Messages a tenant may have waiting there before ingress pauses it (>= 1).
    pub limit: u64,
    /// How often the next stream is scanned.
    pub every: Duration,
}

impl Credit {
    /// No gates yet; `paused` counts the tenants paused.
    pub fn new(paused: Gauge) -> Self {
        Self {
            gates: Mutex::new(HashMap::new()),
            paused,
        }
    }

    /// `tenant`'s gate (open until a scan says otherwise).
    pub fn gate(&self, tenant: &TenantId) -> watch::Receiver<bool> {
        let mut gates = self.gates.lock().unwrap_or_else(|p| p.into_inner());
        gates
            .entry(tenant.clone())
            .or_insert_with(|| watch::channel(true).0)
            .subscribe()
    }

    /// Drops `tenant`'s gate (its loop stopped).
    pub fn forget(&self, tenant: &TenantId) {
        let mut gates = self.gates.lock().unwrap_or_else(|p| p.into_inner());
        gates.remove(tenant);
    }

    /// Opens or closes every gate from one view of the next stream (`backlog`, messages per
    /// tenant) and of admission; returns how many are closed.
    pub fn apply(
        &self,
        backlog: &std::collections::BTreeMap<TenantId, u64>,
        limit: u64,
        admission_closed: impl Fn(&TenantId) -> bool,
    ) -> usize {
        let gates = self.gates.lock().unwrap_or_else(|p| p.into_inner());
        let mut closed = 0;
        for (tenant, gate) in gates.iter() {
            let over = backlog.get(tenant).is_some_and(|n| *n >= limit);
            let open = !over && !admission_closed(tenant);
            if !open {
                closed += 1;
            }
            gate.send_if_modified(|was| {
                let changed = *was != open;
                if changed {
                    tracing::info!(%tenant, open, over_credit = over, "tenant gate");
                }
                *was = open;
                changed
            });
        }
        self.paused.set(closed as i64);
        closed
    }

    /// Scans until `shutdown` (see the module docs). A tenant holding its share of the DLQ
    /// (`dlq_quota`) is paused too: its refusals could not be recorded, and a message read
    /// again and again would use up its deliveries.
    pub async fn run(
        self: Arc<Self>,
        js: jetstream::Context,
        ns: Namespace,
        settings: CreditSettings,
        pressure: Arc<KvCache<RateKey, PressureRecord>>,
        dlq_quota: Option<Arc<DlqQuota>>,
        shutdown: CancellationToken,
    ) {
        let admission_closed = |tenant: &TenantId| {
            let key = RateKey {
                scope: RateScope::Tenant(tenant.clone()),
                record: RateRecord::Pressure,
            };
            matches!(pressure.get(&key), Some(Ok(r)) if r.admission == Admission::Closed)
                || dlq_quota
                    .as_ref()
                    .is_some_and(|q| q.holds_share(Some(tenant)))
        };
        let what = format!(
            "scanning the next stage's backlog ({}; gates unchanged)",
            settings.next_streams.join(", ")
        );
        poll(
            settings.every,
            &shutdown,
            &what,
            || scan(&js, &ns, &settings),
            |backlog| {
                self.apply(&backlog, settings.limit, admission_closed);
            },
        )
        .await;
    }
}

/// Messages per tenant in the next stream (or streams: a tenant's messages sit in one of
/// them); a stream holding fewer than the credit in all is skipped (nobody there can be over
/// it, and its per-subject listing is not read).
async fn scan(
    js: &jetstream::Context,
    ns: &Namespace,
    settings: &CreditSettings,
) -> anyhow::Result<std::collections::BTreeMap<TenantId, u64>> {
    let mut backlog = std::collections::BTreeMap::new();
    for name in &settings.next_streams {
        let stream = js.get_stream(name).await?;
        if stream.cached_info().state.messages < settings.limit {
            continue;
        }
        backlog.extend(switchyard_topology::backlog_by_tenant(js, ns, name).await?);
    }
    Ok(backlog)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_tenant_over_its_credit_or_with_closed_admission_is_paused_and_resumes() {
        let credit = Credit::new(Gauge::default());
        let acme = TenantId::new("acme").unwrap();
        let globex = TenantId::new("globex").unwrap();
        let (a, g) = (credit.gate(&acme), credit.gate(&globex));
        assert!(
            *a.borrow() && *g.borrow(),
            "open until a scan says otherwise"
        );

        let backlog = [(acme.clone(), 1000), (globex.clone(), 999)].into();
        assert_eq!(credit.apply(&backlog, 1000, |_| false), 1);
        assert!(!*a.borrow() && *g.borrow());

        assert_eq!(credit.apply(&backlog, 1000, |t| t == &globex), 2);
        assert!(!*g.borrow(), "closed admission pauses too");

        assert_eq!(credit.apply(&Default::default(), 1000, |_| false), 0);
        assert!(*a.borrow() && *g.borrow(), "both resume");
    }
}
