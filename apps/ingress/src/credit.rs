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
//! ([`switchyard_topology::backlog_by_tenant`], [`switchyard_topology::held_by_tenant`]; a
//! held stream too empty for any tenant to be near the bound is not listed but charged to its
//! tenants at the most they can hold there) and opens or closes each tenant's gate; a tenant's
//! gate stays closed until a scan has counted it. Between scans every message is counted
//! against its tenant's bytes as it arrives from the tenant's stream ([`TenantMeter`]), and
//! each fetch brings no more messages than the tenant's bytes left hold at the largest message
//! it may send, so a tenant handing on faster than the scans see is paused as soon as
//! it reaches the bound, not a scan later, and passes it by one message at most — per ingress
//! replica, each of which counts its own. A held stream that cannot be read is charged to its
//! tenants in full (a shard whose stream has no leader pauses its tenants, the others read
//! on; `IDEMPOTENCY` unreadable pauses every tenant), and said in the log when that changes. A scan that fails otherwise (the next stage's
//! stream) leaves the gates as they are; reading resumes with the next good one.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_nats::jetstream;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use switchyard_keys::{RateKey, RateRecord, RateScope, TenantId};
use switchyard_registry::{Admission, KvCache, PressureRecord};
use switchyard_runtime::retry::poll;
use switchyard_service::DlqQuota;
use switchyard_subjects::{Namespace, Shard, SizeClass};
use switchyard_topology::Held;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

/// One tenant's gate: `open` while it has credit.
///
/// Bytes are counted twice over: `spent` when a message arrives from the tenant's stream (its
/// [`TenantMeter`], so the next fetch already sees it) and `settled` once its handling has
/// ended (handed on, dead-lettered or given back). A scan marks `settled` as it begins
/// (`marked`): every message settled by then that was handed on is stored before the scan
/// reads, so it is in the reading; every one spent past the mark — under way at the mark, or
/// fetched since — is counted on top of it (`counted_from`, the mark of the scan applied
/// last). A message the reading also saw is counted twice until the next scan; none is missed.
struct Gate {
    open: watch::Sender<bool>,
    held: AtomicU64,
    spent: AtomicU64,
    settled: AtomicU64,
    marked: AtomicU64,
    counted_from: AtomicU64,
}

impl Gate {
    /// Counts `bytes` against the tenant before its message is handed on, and closes the gate
    /// once what the last scan counted plus what was spent since reaches `limit` (the next
    /// scan opens it again if there is room).
    fn spend(&self, tenant: &TenantId, bytes: u64, limit: u64) {
        self.spent.fetch_add(bytes, Ordering::Relaxed);
        // Decided under the watch's lock, as `Credit::apply` decides: neither undoes the other.
        self.open.send_if_modified(|open| {
            if !*open || self.holding() < limit {
                return false;
            }
            *open = false;
            tracing::info!(%tenant, open = false, over_bytes = true, "tenant gate");
            true
        });
    }

    /// Bytes held as the last scan read them plus those spent since it began.
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
    /// Bytes a tenant may hold in the held streams ([`CreditSettings`]).
    bytes_limit: u64,
    /// What the largest message a producer may send counts once handed on
    /// ([`counted`]): what each fetch is planned at.
    largest: u64,
    /// The held streams the last scan could not read (logged when this changes).
    unreadable: Mutex<Vec<String>>,
    metrics: CreditMetrics,
}

/// What the credit reports.
#[derive(Debug, Clone, Default)]
pub struct CreditMetrics {
    /// Tenants paused now (as of the last scan).
    pub paused: Gauge,
    /// Scans applied to the gates.
    pub scans: Counter,
}

/// Where a tenant's credit is counted and how much it has.
pub struct CreditSettings {
    /// The deployed names of the stream after ingress (one, or a sharded stage's shards).
    pub next_streams: Vec<String>,
    /// Messages a tenant may have waiting there before ingress pauses it (>= 1).
    pub limit: u64,
    /// The deployed names of the streams whose bytes count against a tenant's byte credit:
    /// those of the [sized](switchyard_subjects::InputStage::sized) stages from the next
    /// stage on, each with its shard when it is one shard of a sharded stage (a tenant's
    /// messages sit in the one [`Shard::of`] it). Empty when the next stage is past them.
    pub held_streams: Vec<(String, Option<Shard>)>,
    /// How often the streams are scanned.
    pub every: Duration,
}

/// What one scan read: messages per tenant in the next stage's stream, and what each tenant
/// holds in the held streams.
#[derive(Debug, Default)]
pub struct Reading {
    /// Messages per tenant in the next stage's stream (streams that cannot hold a tenant at
    /// the credit are not listed, so their tenants are missing here).
    pub backlog: BTreeMap<TenantId, u64>,
    /// Messages and bytes per tenant in the held streams that were listed.
    pub held: BTreeMap<TenantId, Held>,
    /// For the held streams not listed (too little in them for any tenant to be near the
    /// bound): the most bytes any tenant can hold in them, charged to every tenant — in
    /// `unsharded` for the streams every tenant uses, per shard for the shards; for those that
    /// could not be read, the whole bound.
    pub unlisted: Unlisted,
    /// The held streams that could not be read, each with why (`<stream>: <error>`).
    pub unreadable: Vec<String>,
}

/// The most bytes any one tenant can hold in the held streams a scan did not list.
#[derive(Debug, Default)]
pub struct Unlisted {
    /// In the unsharded streams (every tenant's messages may be there).
    pub unsharded: u64,
    /// In each shard not listed (only that shard's tenants' messages are there).
    pub shards: BTreeMap<Shard, u64>,
}

impl Unlisted {
    /// Charges `bytes` to the tenants of `shard`, or to every tenant for an unsharded stream.
    fn charge(&mut self, shard: Option<Shard>, bytes: u64) {
        match shard {
            Some(shard) => {
                let charged = self.shards.entry(shard).or_insert(0);
                *charged = charged.saturating_add(bytes);
            }
            None => self.unsharded = self.unsharded.saturating_add(bytes),
        }
    }
}

impl Reading {
    /// What `tenant` holds as this reading counts it: its bytes in the listed streams plus
    /// the most it can hold in the others it may use.
    fn bytes_of(&self, tenant: &TenantId) -> u64 {
        let listed = self.held.get(tenant).map_or(0, |h| h.bytes);
        let shard = self
            .unlisted
            .shards
            .get(&Shard::of(tenant))
            .copied()
            .unwrap_or(0);
        listed
            .saturating_add(self.unlisted.unsharded)
            .saturating_add(shard)
    }
}

impl Credit {
    /// No gates yet; a tenant may hold `bytes_limit` bytes in the held streams, and the
    /// largest message its own stream can hold counts `largest` bytes once handed on (what
    /// its fetches are planned at, [`fetch_max`]); `metrics` counts the tenants paused and
    /// the scans applied.
    pub fn new(bytes_limit: u64, largest: u64, metrics: CreditMetrics) -> Self {
        Self {
            gates: Mutex::new(HashMap::new()),
            bytes_limit,
            largest,
            unreadable: Mutex::new(Vec::new()),
            metrics,
        }
    }

    /// `tenant`'s gate for its consume loop: closed until the next scan has counted the
    /// tenant (a new tenant, or one read again after an ingress restart, may already hold its
    /// bytes); its [`TenantMeter`] counts each message the loop fetches against the tenant's
    /// bytes as it arrives and plans each fetch by them. The gate outlives the loop: a loop
    /// started again for the same tenant gets the same state.
    pub fn gate(&self, tenant: &TenantId) -> switchyard_service::Gate {
        let mut gates = self.gates.lock().unwrap_or_else(|p| p.into_inner());
        let gate = gates
            .entry(tenant.clone())
            .or_insert_with(|| {
                Arc::new(Gate {
                    open: watch::channel(false).0,
                    held: AtomicU64::new(0),
                    spent: AtomicU64::new(0),
                    settled: AtomicU64::new(0),
                    marked: AtomicU64::new(0),
                    counted_from: AtomicU64::new(0),
                })
            })
            .clone();
        switchyard_service::Gate {
            open: gate.open.subscribe(),
            meter: Some(Arc::new(TenantMeter {
                tenant: tenant.clone(),
                gate,
                limit: self.bytes_limit,
                largest: self.largest,
            })),
        }
    }

    /// Drops `tenant`'s gate (its loop stopped).
    pub fn forget(&self, tenant: &TenantId) {
        let mut gates = self.gates.lock().unwrap_or_else(|p| p.into_inner());
        gates.remove(tenant);
    }

    /// Marks where every tenant's settled hand-offs stand as a scan begins: what is spent past
    /// it is counted on top of that scan's [`Reading`].
    pub fn mark(&self) {
        let gates = self.gates.lock().unwrap_or_else(|p| p.into_inner());
        for gate in gates.values() {
            gate.marked
                .store(gate.settled.load(Ordering::Relaxed), Ordering::Relaxed);
        }
    }

    /// Opens or closes every gate from one [`Reading`] (against `limit` messages and the byte
    /// bound: the bytes it counts plus those spent since its [`mark`](Self::mark)) and
    /// admission; returns how many are closed. A gate created after the mark is counted from
    /// its first byte.
    pub fn apply(
        &self,
        reading: &Reading,
        limit: u64,
        admission_closed: impl Fn(&TenantId) -> bool,
    ) -> usize {
        {
            let mut unreadable = self.unreadable.lock().unwrap_or_else(|p| p.into_inner());
            if *unreadable != reading.unreadable {
                if reading.unreadable.is_empty() {
                    tracing::info!("every held stream readable again");
                } else {
                    tracing::warn!(streams = ?reading.unreadable, "held streams cannot be read: their tenants are paused until they can");
                }
                unreadable.clone_from(&reading.unreadable);
            }
        }
        let gates = self.gates.lock().unwrap_or_else(|p| p.into_inner());
        let mut closed = 0;
        for (tenant, gate) in gates.iter() {
            let over = reading.backlog.get(tenant).is_some_and(|n| *n >= limit);
            gate.held.store(reading.bytes_of(tenant), Ordering::Relaxed);
            gate.counted_from
                .store(gate.marked.load(Ordering::Relaxed), Ordering::Relaxed);
            let shut = over || admission_closed(tenant);
            let mut open = false;
            gate.open.send_if_modified(|was| {
                let held = gate.holding();
                let over_bytes = held >= self.bytes_limit;
                open = !shut && !over_bytes;
                let changed = *was != open;
                if changed {
                    tracing::info!(%tenant, open, over_credit = over, over_bytes, held_bytes = held, "tenant gate");
                }
                *was = open;
                changed
            });
            if !open {
                closed += 1;
            }
        }
        self.metrics.paused.set(closed as i64);
        self.metrics.scans.inc();
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

/// What bytes a message read from a tenant's own stream counts once handed on: the class of
/// its headers and payload with room for the envelope's headers ([`ENVELOPE_ROOM`]), which
/// the hand-off adds (its subject's class is that of what is actually sent, usually the same).
pub fn counted(msg: &jetstream::Message) -> u64 {
    let size = match msg.headers.as_ref() {
        Some(h) => switchyard_envelope::headers::message_size(h, &msg.payload),
        None => msg.payload.len(),
    };
    SizeClass::of(size + ENVELOPE_ROOM).bound()
}

/// Bytes a hand-off's envelope headers (ids, times, trace, seal) add to a producer's message,
/// at most, as counted for the credit before the hand-off is built.
pub const ENVELOPE_ROOM: usize = 2048;

/// One tenant's [`switchyard_service::Meter`]: every message its loop fetches is counted
/// against its bytes as it arrives (the gate closes once the tenant reaches its bound, so no
/// further fetch starts), and settled when handled; each fetch brings at most as many messages
/// as its bytes left hold at the largest message it may send ([`fetch_max`]).
struct TenantMeter {
    tenant: TenantId,
    gate: Arc<Gate>,
    limit: u64,
    largest: u64,
}

impl switchyard_service::Meter for TenantMeter {
    fn fetch_max(&self) -> usize {
        let left = self.limit.saturating_sub(self.gate.holding());
        fetch_max(left, self.largest)
    }

    fn fetched(&self, msg: &jetstream::Message) -> u64 {
        let bytes = counted(msg);
        self.gate.spend(&self.tenant, bytes, self.limit);
        bytes
    }

    fn finished(&self, charged: u64) {
        self.gate.settled.fetch_add(charged, Ordering::Relaxed);
    }
}

/// One [`Reading`]. The next stage's streams are listed only when they hold the credit in
/// messages (nobody there can be over it otherwise). A held stream is listed when a tenant
/// with messages in it could hold half the byte bound or more (its messages lie in its one
/// shard and the unsharded held streams; [`most_counted`] bounds what a stream's messages
/// count); one not listed is charged to its tenants at that most ([`Unlisted`]), which leaves
/// each of them at least half its bytes to hand on before the next scan.
async fn scan(
    js: &jetstream::Context,
    ns: &Namespace,
    settings: &CreditSettings,
    bytes_limit: u64,
) -> anyhow::Result<Reading> {
    let mut reading = Reading::default();
    // (bytes, messages) of each stream read, so that one in both lists is asked once.
    let mut states = HashMap::new();
    for name in &settings.next_streams {
        let stream = js.get_stream(name).await?;
        let state = &stream.cached_info().state;
        states.insert(name.as_str(), (state.bytes, state.messages));
        if state.messages < settings.limit {
            continue;
        }
        reading
            .backlog
            .extend(switchyard_topology::backlog_by_tenant(js, ns, name).await?);
    }
    // Each held stream on its own: one that cannot be read is charged in full to the tenants
    // whose messages may be there (see `Unlisted`), the others are read.
    let mut unreadable = Vec::new();
    let mut stored = Vec::with_capacity(settings.held_streams.len());
    for (name, shard) in &settings.held_streams {
        let state = match states.get(name.as_str()) {
            Some(state) => Ok(*state),
            None => js.get_stream(name).await.map(|stream| {
                let state = &stream.cached_info().state;
                (state.bytes, state.messages)
            }),
        };
        match state {
            Ok((bytes, messages)) => stored.push((name, *shard, most_counted(bytes, messages))),
            Err(error) => unreadable.push((name, *shard, error.to_string())),
        }
    }
    let unsharded: u64 = stored.iter().filter(|s| s.1.is_none()).map(|s| s.2).sum();
    let largest_shard = stored
        .iter()
        .filter(|s| s.1.is_some())
        .map(|s| s.2)
        .max()
        .unwrap_or(0);
    for (name, shard, most) in stored {
        let with = unsharded.saturating_add(if shard.is_some() { most } else { largest_shard });
        let listed = if most > 0 && with.saturating_mul(2) >= bytes_limit {
            switchyard_topology::held_by_tenant(js, ns, std::slice::from_ref(name)).await
        } else {
            reading.unlisted.charge(shard, most);
            continue;
        };
        match listed {
            Ok(held) => {
                for (tenant, h) in held {
                    let entry = reading.held.entry(tenant).or_default();
                    entry.messages += h.messages;
                    entry.bytes = entry.bytes.saturating_add(h.bytes);
                }
            }
            Err(error) => {
                unreadable.push((name, shard, error.to_string()));
            }
        }
    }
    for (name, shard, error) in unreadable {
        reading.unlisted.charge(shard, bytes_limit);
        reading.unreadable.push(format!("{name}: {error}"));
    }
    Ok(reading)
}

/// The most messages a tenant's next fetch may bring with `left` bytes of credit: as many of
/// the largest message it may send (`largest`, as [`counted`]) as fit, at least one. Whatever
/// its messages' sizes, all of a fetch but its last message fit what was left, so the tenant
/// passes its credit by one message at most (a message larger than `largest`, which ingress
/// refuses, by that one). With the defaults a fetch brings at most 15 (16 MiB / 1,114,112).
fn fetch_max(left: u64, largest: u64) -> usize {
    usize::try_from(left / largest.max(1))
        .unwrap_or(usize::MAX)
        .max(1)
}

/// The most bytes size classes can count for `messages` messages storing `bytes` bytes: each
/// counts its class's bound, at most twice its size or, when small, the smallest class's.
fn most_counted(bytes: u64, messages: u64) -> u64 {
    bytes
        .saturating_mul(2)
        .saturating_add(messages.saturating_mul(SizeClass::SMALLEST.bound()))
}

#[cfg(test)]
impl Credit {
    /// What a fetched message of `bytes` counts, as its meter counts it.
    fn spend(&self, tenant: &TenantId, bytes: u64) {
        let gates = self.gates.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(gate) = gates.get(tenant) {
            gate.spend(tenant, bytes, self.bytes_limit);
        }
    }

    /// Its handling ended.
    fn settle(&self, tenant: &TenantId, bytes: u64) {
        let gates = self.gates.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(gate) = gates.get(tenant) {
            gate.settled.fetch_add(bytes, Ordering::Relaxed);
        }
    }
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
            unlisted: Unlisted::default(),
            unreadable: Vec::new(),
        }
    }

    #[test]
    fn a_tenant_over_its_credit_or_with_closed_admission_is_paused_and_resumes() {
        let credit = Credit::new(u64::MAX, 100, CreditMetrics::default());
        let acme = TenantId::new("acme").unwrap();
        let globex = TenantId::new("globex").unwrap();
        let (a, g) = (credit.gate(&acme).open, credit.gate(&globex).open);
        assert!(
            !*a.borrow() && !*g.borrow(),
            "closed until a scan has counted them"
        );
        assert_eq!(credit.apply(&Reading::default(), 1000, |_| false), 0);
        assert!(*a.borrow() && *g.borrow());

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
        let credit = Credit::new(1000, 100, CreditMetrics::default());
        let acme = TenantId::new("acme").unwrap();
        let globex = TenantId::new("globex").unwrap();
        let (a, g) = (credit.gate(&acme).open, credit.gate(&globex).open);

        // A fetch brings as many of the largest message (100 here) as the bytes left hold,
        // at least one.
        let fetch = |tenant: &TenantId| credit.gate(tenant).meter.unwrap().fetch_max();
        assert_eq!(fetch(&acme), 10, "nothing held: ten of 100 fit 1000");
        credit.spend(&acme, 30);
        credit.settle(&acme, 30);
        assert_eq!(fetch(&acme), 9, "970 left");
        credit.mark();
        let partly = reading(&[], &[(&acme, 950), (&globex, 200)]);
        assert_eq!(credit.apply(&partly, 10, |_| false), 0);
        assert_eq!(fetch(&acme), 1, "50 left: still one");
        assert_eq!(fetch(&globex), 8);

        // Between scans, hand-offs count as they start: globex reaches the bound with one
        // more byte.
        assert_eq!(
            credit.apply(&reading(&[], &[(&acme, 1000), (&globex, 999)]), 10, |_| {
                false
            }),
            1
        );
        assert!(!*a.borrow() && *g.borrow(), "held bytes at the bound pause");
        credit.spend(&globex, 1);
        assert!(!*g.borrow(), "paused by its own hand-off, not a scan later");
        credit.settle(&globex, 1);

        // A scan counts what was settled before it began in its reading, and what is spent
        // past its mark on top: here 100 bytes under way as it began, settled after it read.
        credit.spend(&globex, 100);
        credit.mark();
        credit.settle(&globex, 100);
        assert_eq!(
            credit.apply(&reading(&[], &[(&globex, 400)]), 10, |_| false),
            0
        );
        assert!(*a.borrow() && *g.borrow(), "400 read, 100 under way");
        credit.spend(&globex, 499);
        assert!(*g.borrow(), "400 held and 599 handed on is below 1000");
        credit.spend(&globex, 1);
        assert!(!*g.borrow());
        credit.settle(&globex, 500);
        credit.mark();
        assert_eq!(
            credit.apply(&reading(&[], &[(&globex, 999)]), 10, |_| false),
            0
        );
        assert!(
            *g.borrow(),
            "a scan after the hand-offs counts what is stored"
        );
    }

    #[test]
    fn streams_not_listed_are_charged_to_their_tenants_at_the_most_they_can_hold() {
        let credit = Credit::new(1000, 100, CreditMetrics::default());
        let acme = TenantId::new("acme").unwrap();
        let globex = TenantId::new("globex").unwrap();
        let (a, g) = (credit.gate(&acme).open, credit.gate(&globex).open);
        let mut reading = reading(&[], &[]);
        reading.unlisted.unsharded = 300;
        reading.unlisted.shards.insert(Shard::of(&acme), 400);
        assert_eq!(credit.apply(&reading, 10, |_| false), 0);
        credit.spend(&globex, 699);
        assert!(
            *g.borrow(),
            "globex's shard was listed: 300 charged and 699 spent"
        );
        credit.spend(&acme, 299);
        assert!(*a.borrow(), "300 + 400 charged and 299 spent");
        credit.spend(&acme, 1);
        assert!(!*a.borrow(), "acme's own shard counts, not globex's");
        assert_eq!(
            most_counted(1000, 2),
            2000 + 2 * SizeClass::SMALLEST.bound()
        );
    }
}
