//! Global rate limiting by leasing GCRA slots from KV.
//!
//! Each tenant has one record, `<tenant>.tokens` = `{"tat_ms": T}`: the instant from which the
//! next delivery slot is free (GCRA's theoretical arrival time). A replica that needs `k`
//! tokens leases `k` consecutive slots with one compare-and-swap:
//! `start = max(T, now − burst/rate)`, `T' = start + k/rate`. Slot `i` of the lease may be used
//! from `start + i/rate` on. Slots are disjoint across replicas, so the delivered rate never
//! exceeds `rate` (plus `burst` after a quiet period), whatever the number of replicas.
//!
//! A replica that dies holding a lease strands at most that lease's slots: the record keeps
//! moving with time, so nothing is lost for longer than the lease (≤ `lease_secs` of rate),
//! and the limit is never exceeded because of it. While KV is unreachable a replica leases
//! from a local record at `rate / N` (N = live replicas last seen) and says so.

use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use async_nats::jetstream::kv;
use prometheus_client::metrics::counter::Counter;
use switchyard_keys::{KvKey, RateKey, RateRecord, RateScope, TenantId};
use switchyard_registry::{LimitRecord, TokenState};

/// A lease: `count` slots from `start_ms`, `spacing_ms` apart.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Lease {
    /// First slot, in ms since the epoch.
    pub start_ms: i64,
    /// Milliseconds between slots (1000 / rate).
    pub spacing_ms: f64,
    /// How many slots.
    pub count: u32,
}

impl Lease {
    /// When slot `i` may be used (ms since the epoch).
    pub fn slot(&self, i: u32) -> i64 {
        self.start_ms + (f64::from(i) * self.spacing_ms) as i64
    }
}

/// GCRA: the lease for `count` slots given the current `tat`, and the new `tat`.
pub fn gcra(tat_ms: i64, now_ms: i64, limit: &LimitRecord, count: u32) -> (Lease, i64) {
    let spacing_ms = 1000.0 / limit.rate_per_sec;
    let tolerance = (f64::from(limit.burst.saturating_sub(1)) * spacing_ms) as i64;
    let start_ms = tat_ms.max(now_ms - tolerance);
    let new_tat = start_ms + (f64::from(count) * spacing_ms).ceil() as i64;
    (
        Lease {
            start_ms,
            spacing_ms,
            count,
        },
        new_tat,
    )
}

/// Leases slots, from KV or (while KV is unreachable) locally.
pub struct Leaser {
    kv: kv::Store,
    local: Mutex<HashMap<TenantId, i64>>,
    /// Live replicas last seen (for the fallback's `rate / N`).
    pub replicas: AtomicUsize,
    /// Whether the last lease fell back to the local record.
    pub in_fallback: AtomicBool,
    /// KV operations made (reads and writes).
    pub kv_ops: Counter,
    /// Leases taken from the local record.
    pub fallbacks: Counter,
}

impl Leaser {
    /// A leaser over the `rate-limits` bucket.
    pub fn new(kv: kv::Store) -> Self {
        Self {
            kv,
            local: Mutex::new(HashMap::new()),
            replicas: AtomicUsize::new(1),
            in_fallback: AtomicBool::new(false),
            kv_ops: Counter::default(),
            fallbacks: Counter::default(),
        }
    }

    /// Leases `count` slots for `tenant` under `limit`.
    pub async fn lease(
        &self,
        tenant: &TenantId,
        count: u32,
        limit: &LimitRecord,
        now_ms: i64,
    ) -> Lease {
        match self.lease_kv(tenant, count, limit, now_ms).await {
            Ok(lease) => {
                if self.in_fallback.swap(false, Ordering::Relaxed) {
                    tracing::info!("kv reachable again: global rate limiting restored");
                }
                lease
            }
            Err(error) => {
                if !self.in_fallback.swap(true, Ordering::Relaxed) {
                    tracing::warn!(%error, "kv unreachable: enforcing limit / live replicas locally");
                }
                self.fallbacks.inc();
                self.lease_local(tenant, count, limit, now_ms)
            }
        }
    }

    fn lease_local(
        &self,
        tenant: &TenantId,
        count: u32,
        limit: &LimitRecord,
        now_ms: i64,
    ) -> Lease {
        let replicas = self.replicas.load(Ordering::Relaxed).max(1) as f64;
        let share = LimitRecord {
            rate_per_sec: limit.rate_per_sec / replicas,
            burst: ((f64::from(limit.burst) / replicas).ceil() as u32).max(1),
            ..limit.clone()
        };
        let mut local = self.local.lock().unwrap_or_else(|p| p.into_inner());
        let tat = local.entry(tenant.clone()).or_insert(0);
        let (lease, new_tat) = gcra(*tat, now_ms, &share, count);
        *tat = new_tat;
        lease
    }

    async fn lease_kv(
        &self,
        tenant: &TenantId,
        count: u32,
        limit: &LimitRecord,
        now_ms: i64,
    ) -> Result<Lease, String> {
        let key = RateKey {
            scope: RateScope::Tenant(tenant.clone()),
            record: RateRecord::Tokens,
        }
        .render();
        for _ in 0..16 {
            self.kv_ops.inc();
            let entry = self.kv.entry(&key).await.map_err(|e| e.to_string())?;
            let (tat, revision) = match &entry {
                Some(e) if e.operation == kv::Operation::Put => {
                    let state: TokenState = serde_json::from_slice(&e.value).unwrap_or_default();
                    (state.tat_ms, e.revision)
                }
                Some(e) => (0, e.revision),
                None => (0, 0),
            };
            let (lease, new_tat) = gcra(tat, now_ms, limit, count);
            let value = serde_json::to_vec(&TokenState { tat_ms: new_tat }).unwrap_or_default();
            self.kv_ops.inc();
            let written = if revision == 0 {
                self.kv
                    .create(&key, value.into())
                    .await
                    .map(|_| ())
                    .map_err(|e| {
                        (
                            e.kind() == kv::CreateErrorKind::AlreadyExists,
                            e.to_string(),
                        )
                    })
            } else {
                self.kv
                    .update(&key, value.into(), revision)
                    .await
                    .map(|_| ())
                    .map_err(|e| {
                        (
                            e.kind() == kv::UpdateErrorKind::WrongLastRevision,
                            e.to_string(),
                        )
                    })
            };
            match written {
                Ok(()) => return Ok(lease),
                Err((true, _)) => continue, // another replica leased first: read again
                Err((false, error)) => return Err(error),
            }
        }
        Err(format!("lease for {tenant} kept conflicting"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limit(rate: f64, burst: u32) -> LimitRecord {
        LimitRecord {
            rate_per_sec: rate,
            burst,
            backlog_high: None,
            backlog_low: None,
        }
    }

    #[test]
    fn leases_are_disjoint_and_paced() {
        let l = limit(200.0, 1);
        let (a, tat) = gcra(0, 10_000, &l, 100);
        let (b, tat2) = gcra(tat, 10_000, &l, 100);
        assert_eq!(a.start_ms, 10_000);
        assert_eq!(b.start_ms, 10_500);
        assert_eq!(tat2, 11_000);
        assert_eq!(a.slot(99), 10_495);
    }

    #[test]
    fn burst_allows_slots_in_the_past_after_idle() {
        let (lease, _) = gcra(0, 10_000, &limit(100.0, 11), 11);
        assert_eq!(lease.start_ms, 9_900, "10 slots of 10 ms are already due");
    }

    #[test]
    fn a_rate_never_exceeds_its_limit_over_many_leases() {
        let l = limit(200.0, 1);
        let mut tat = 0;
        let mut slots = Vec::new();
        for _ in 0..40 {
            let (lease, next) = gcra(tat, 0, &l, 50);
            tat = next;
            slots.extend((0..lease.count).map(|i| lease.slot(i)));
        }
        // 2000 slots at 200/s span 10 s.
        assert_eq!(slots.len(), 2000);
        assert!(slots.windows(2).all(|w| w[1] >= w[0]));
        assert!(slots.last().unwrap() - slots[0] >= 9_990);
    }
}
