//! Per-tenant credit at the next stages: backpressure that travels back to the tenant's edge.
//!
//! The hand-off streams after ingress (`IDEMPOTENCY`, then the tenant's `BACKPRESSURE_<shard>`)
//! are shared by many tenants. Ingress therefore reads a tenant's own stream only while that
//! tenant
//! - has fewer than `[ingress] next_stage_credit` messages waiting in the next stage's stream
//!   (the most any other tenant waits behind it there),
//! - holds fewer than `[ingress] next_stage_credit_bytes` bytes in the shared streams ahead of
//!   its rate limit (its messages in `IDEMPOTENCY` and its shard, counted by their
//!   [`switchyard_subjects::SizeClass`]: so that a tenant of large messages under a low rate
//!   cannot fill its shard, whose other tenants' hand-offs a full shard would refuse), and
//! - has its admission open (the backpressure service's `<tenant>.pressure` record).
//!
//! A tenant over any bound is *paused*: its consume loop fetches nothing
//! ([`switchyard_service::Worker::consume_gated`]), so its backlog stays in its own
//! `INGRESS_<tenant>` stream, where its quota refuses its producers once full (NATS: a
//! JetStream error; HTTP: `429`). A tenant holding its share of the DLQ is paused as well,
//! until an operator makes room (its refusals cannot be recorded).
//!
//! [`Credit::run`] scans the streams' per-subject counts every `credit_scan_ms`
//! ([`switchyard_topology::backlog_by_tenant`], [`switchyard_topology::held_by_tenant`];
//! a stream is listed only when some tenant could be over a bound with what it stores) and
//! opens or closes each tenant's gate. Between scans every hand-off is counted against its
//! tenant's bytes ([`Credit::spend`]), so a tenant handing on faster than the scans see is
//! paused as soon as it reaches the bound, not a scan later. A scan that fails leaves the
//! gates as they are; reading resumes with the next good one.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_nats::jetstream;
use prometheus_client::metrics::gauge::Gauge;
use switchyard_keys::{RateKey, RateRecord, RateScope, TenantId};
use switchyard_registry::{Admission, KvCache, PressureRecord};
use switchyard_runtime::retry::poll;
use switchyard_service::DlqQuota;
use switchyard_subjects::{Namespace, SizeClass};
use switchyard_topology::Held;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

/// One tenant's gate: `open` while it has credit. `spent` counts every byte the tenant handed
/// on (never reset); `marked` is its value when the scan in progress began, and `held` plus
/// what was spent since `counted_from` (the mark of the scan applied last) is what the tenant
/// holds as far as this replica knows — a hand-off made while a scan was reading is counted on
/// top of it even if the reading saw it too (counted twice until the next scan, never missed).
struct Gate {
    open: watch::Sender<bool>,
    held: AtomicU64,
    spent: AtomicU64,
    marked: AtomicU64,
    counted_from: AtomicU64,
}

impl Gate {
    /// Bytes held as the last scan read them plus those handed on since it began.
    fn holding(&self) -> u64 {
        let since = self
            .spent
            .load(Ordering::Relaxed)
            .saturating_sub(self.counted_from.load(Ordering::Relaxed));
        self.held.load(Ordering::Relaxed).saturating_add(since)
    }
}

/// The gates of every tenant being read: `true` while the tenant has credit.
pub struct Credit {
    gates: Mutex<HashMap<TenantId, Arc<Gate>>>,
    /// Bytes a tenant may hold in the held streams ([`CreditSettings::bytes_limit`]).
    bytes_limit: u64,
    /// Tenants paused now.
    paused: Gauge,
}

/// Where a tenant's credit is counted and how much it has.
pub struct CreditSettings {
    /// The deployed names of the stream after ingress (one, or a sharded stage's shards).
    pub next_streams: Vec<String>,
    /// Messages a tenant may have waiting there before ingress pauses it (>= 1).
    pub limit: u64,
    /// The deployed names of the streams whose bytes count against a tenant's byte credit:
    /// those of the [sized](switchyard_subjects::InputStage::sized) stages from the next
    /// stage on, with whether each is one shard of a sharded stage (a tenant's messages sit
    /// in one shard of it). Empty when the next stage is past them (`egress`).
    pub held_streams: Vec<(String, bool)>,
    /// How often the streams are scanned.
    pub every: Duration,
}

/// What one scan read: messages per tenant in the next stage's stream, and what each tenant
/// holds in the held streams. A stream that cannot hold any tenant over its bound is not
/// listed, so its tenants are missing here.
#[derive(Debug, Default)]
pub struct Reading {
    /// Messages per tenant in the next stage's stream.
    pub backlog: BTreeMap<TenantId, u64>,
    /// Messages and bytes per tenant in the held streams.
    pub held: BTreeMap<TenantId, Held>,
}

impl Credit {
    /// No gates yet; a tenant may hold `bytes_limit` bytes in the held streams; `paused`
    /// counts the tenants paused.
    pub fn new(bytes_limit: u64, paused: Gauge) -> Self {
        Self {
            gates: Mutex::new(HashMap::new()),
            bytes_limit,
            paused,
        }
    }

    /// `tenant`'s gate (open until a scan or a hand-off says otherwise).
    pub fn gate(&self, tenant: &TenantId) -> watch::Receiver<bool> {
        let mut gates = self.gates.lock().unwrap_or_else(|p| p.into_inner());
        gates
            .entry(tenant.clone())
            .or_insert_with(|| {
                Arc::new(Gate {
                    open: watch::channel(true).0,
                    held: AtomicU64::new(0),
                    spent: AtomicU64::new(0),
                    marked: AtomicU64::new(0),
                    counted_from: AtomicU64::new(0),
                })
            })
            .open
            .subscribe()
    }

    /// Counts a hand-off of `bytes` (its size class's bound) against `tenant`'s byte credit,
    /// and pauses the tenant once what the last scan counted plus what it handed on since
    /// reaches the bound (the next scan opens it again if it has room).
    pub fn spend(&self, tenant: &TenantId, bytes: u64) {
        let gate = {
            let gates = self.gates.lock().unwrap_or_else(|p| p.into_inner());
            gates.get(tenant).cloned()
        };
        let Some(gate) = gate else { return };
        gate.spent.fetch_add(bytes, Ordering::Relaxed);
        if gate.holding() >= self.bytes_limit {
            gate.open.send_if_modified(|open| {
                let was = std::mem::replace(open, false);
                if was {
                    tracing::info!(%tenant, open = false, over_bytes = true, "tenant gate");
                }
                was
            });
        }
    }

    /// Drops `tenant`'s gate (its loop stopped).
    pub fn forget(&self, tenant: &TenantId) {
        let mut gates = self.gates.lock().unwrap_or_else(|p| p.into_inner());
        gates.remove(tenant);
    }

    /// Marks where every tenant's count of bytes handed on stands as a scan begins: what is
    /// handed on from here is counted on top of that scan's [`Reading`].
    pub fn mark(&self) {
        let gates = self.gates.lock().unwrap_or_else(|p| p.into_inner());
        for gate in gates.values() {
            gate.marked
                .store(gate.spent.load(Ordering::Relaxed), Ordering::Relaxed);
        }
    }

    /// Opens or closes every gate from one [`Reading`] (against `limit` messages and the byte
    /// bound: the bytes it read plus those handed on since its [`mark`](Self::mark)) and
    /// admission; returns how many are closed.
    pub fn apply(
        &self,
        reading: &Reading,
        limit: u64,
        admission_closed: impl Fn(&TenantId) -> bool,
    ) -> usize {
        let gates = self.gates.lock().unwrap_or_else(|p| p.into_inner());
        let mut closed = 0;
        for (tenant, gate) in gates.iter() {
            let over = reading.backlog.get(tenant).is_some_and(|n| *n >= limit);
            gate.held.store(
                reading.held.get(tenant).map_or(0, |h| h.bytes),
                Ordering::Relaxed,
            );
            gate.counted_from
                .store(gate.marked.load(Ordering::Relaxed), Ordering::Relaxed);
            let held = gate.holding();
            let over_bytes = held >= self.bytes_limit;
            let open = !over && !over_bytes && !admission_closed(tenant);
            if !open {
                closed += 1;
            }
            gate.open.send_if_modified(|was| {
                let changed = *was != open;
                if changed {
                    tracing::info!(%tenant, open, over_credit = over, over_bytes, held_bytes = held, "tenant gate");
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
            "scanning the next stages' backlog ({}; gates unchanged)",
            settings.next_streams.join(", ")
        );
        poll(
            settings.every,
            &shutdown,
            &what,
            || {
                self.mark();
                scan(&js, &ns, &settings, self.bytes_limit)
            },
            |reading| {
                self.apply(&reading, settings.limit, admission_closed);
            },
        )
        .await;
    }
}

/// One [`Reading`]. The next stage's streams are listed only when they hold the credit in
/// messages (nobody there can be over it otherwise); a held stream only when some tenant with
/// messages in it could be over the byte bound: a tenant's messages lie in its one shard and
/// the unsharded held streams, and each message counts at most twice its bytes or the smallest
/// class's bound ([`most_counted`]).
async fn scan(
    js: &jetstream::Context,
    ns: &Namespace,
    settings: &CreditSettings,
    bytes_limit: u64,
) -> anyhow::Result<Reading> {
    let mut reading = Reading::default();
    for name in &settings.next_streams {
        let stream = js.get_stream(name).await?;
        if stream.cached_info().state.messages < settings.limit {
            continue;
        }
        reading
            .backlog
            .extend(switchyard_topology::backlog_by_tenant(js, ns, name).await?);
    }
    let mut stored = Vec::with_capacity(settings.held_streams.len());
    for (name, shard) in &settings.held_streams {
        let stream = js.get_stream(name).await?;
        let state = &stream.cached_info().state;
        stored.push((
            name.clone(),
            *shard,
            most_counted(state.bytes, state.messages),
        ));
    }
    let unsharded: u64 = stored.iter().filter(|s| !s.1).map(|s| s.2).sum();
    let largest_shard = stored
        .iter()
        .filter(|s| s.1)
        .map(|s| s.2)
        .max()
        .unwrap_or(0);
    let listed: Vec<String> = stored
        .into_iter()
        .filter(|(_, shard, most)| {
            let with = if *shard {
                unsharded + most
            } else {
                unsharded + largest_shard
            };
            *most > 0 && with >= bytes_limit
        })
        .map(|(name, ..)| name)
        .collect();
    reading.held = switchyard_topology::held_by_tenant(js, ns, &listed).await?;
    Ok(reading)
}

/// The most bytes size classes can count for `messages` messages storing `bytes` bytes: each
/// counts its class's bound, at most twice its size or, when small, the smallest class's.
fn most_counted(bytes: u64, messages: u64) -> u64 {
    bytes
        .saturating_mul(2)
        .saturating_add(messages.saturating_mul(SizeClass::SMALLEST.bound()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reading(backlog: &[(&TenantId, u64)], held: &[(&TenantId, u64)]) -> Reading {
        Reading {
            backlog: backlog.iter().map(|(t, n)| ((*t).clone(), *n)).collect(),
            held: held
                .iter()
                .map(|(t, bytes)| {
                    let held = Held {
                        messages: 1,
                        bytes: *bytes,
                    };
                    ((*t).clone(), held)
                })
                .collect(),
        }
    }

    #[test]
    fn a_tenant_over_its_credit_or_with_closed_admission_is_paused_and_resumes() {
        let credit = Credit::new(u64::MAX, Gauge::default());
        let acme = TenantId::new("acme").unwrap();
        let globex = TenantId::new("globex").unwrap();
        let (a, g) = (credit.gate(&acme), credit.gate(&globex));
        assert!(
            *a.borrow() && *g.borrow(),
            "open until a scan says otherwise"
        );

        let backlog = reading(&[(&acme, 1000), (&globex, 999)], &[]);
        assert_eq!(credit.apply(&backlog, 1000, |_| false), 1);
        assert!(!*a.borrow() && *g.borrow());

        assert_eq!(credit.apply(&backlog, 1000, |t| t == &globex), 2);
        assert!(!*g.borrow(), "closed admission pauses too");

        assert_eq!(credit.apply(&Reading::default(), 1000, |_| false), 0);
        assert!(*a.borrow() && *g.borrow(), "both resume");
    }

    #[test]
    fn a_tenant_over_its_bytes_by_a_scan_or_by_its_hand_offs_since_is_paused_until_a_scan_finds_room()
     {
        let credit = Credit::new(1000, Gauge::default());
        let acme = TenantId::new("acme").unwrap();
        let globex = TenantId::new("globex").unwrap();
        let (a, g) = (credit.gate(&acme), credit.gate(&globex));

        assert_eq!(
            credit.apply(&reading(&[], &[(&acme, 1000), (&globex, 999)]), 10, |_| {
                false
            }),
            1
        );
        assert!(!*a.borrow() && *g.borrow(), "held bytes at the bound pause");

        // Between scans, hand-offs count: globex reaches the bound with one more byte.
        credit.spend(&globex, 1);
        assert!(
            !*g.borrow(),
            "paused by its own hand-offs, not a scan later"
        );

        // A scan counts from what the streams hold when it began: what was handed on before
        // is in its reading, what is handed on while it reads is counted on top.
        credit.mark();
        credit.spend(&globex, 100);
        assert_eq!(
            credit.apply(&reading(&[], &[(&globex, 400)]), 10, |_| false),
            0
        );
        assert!(
            *a.borrow() && *g.borrow(),
            "400 read and 100 handed on since"
        );
        credit.spend(&globex, 499);
        assert!(*g.borrow(), "400 held and 599 handed on is below 1000");
        credit.spend(&globex, 1);
        assert!(!*g.borrow());
        credit.mark();
        assert_eq!(
            credit.apply(&reading(&[], &[(&globex, 999)]), 10, |_| false),
            0
        );
        assert!(
            *g.borrow(),
            "a scan after the hand-offs counts what is stored"
        );
        credit.spend(&TenantId::new("initech").unwrap(), 5000);
        assert!(*a.borrow(), "a tenant not read has no gate to close");
    }
}
