//! Global rate limiting by leasing GCRA slots from KV, shared by the backpressure stage (one
//! limit per tenant) and egress (one per destination with a rate limit).
//!
//! Each limited thing has one record in the `rate-limits` bucket — a tenant's `<tenant>.tokens`,
//! a destination's `<tenant>.<destination>.tokens` — holding `{"tat_ms": T, "rate_per_sec": R}`:
//! the instant from which the next delivery slot is free (GCRA's theoretical arrival time), and
//! `R` (below). A replica that needs `k`
//! tokens leases `k` consecutive slots with one compare-and-swap:
//! `start = max(T, now − burst/rate)`, `T' = start + k/rate`. Slot `i` of the lease may be used
//! from `start + i/rate` on. Slots are disjoint across replicas, so the delivered rate never
//! exceeds `rate` (plus `burst` after a quiet period), whatever the number of replicas (across
//! a raise, within the bounds docs/backpressure.md gives under "Raising and cutting a limit").
//!
//! A replica remembers the record it last wrote (its `T'` and the revision the write got) for
//! [`REMEMBER_FOR`] and leases next by compare-and-swap against that revision without reading
//! first: while no other replica has leased the same record meanwhile, a lease is one KV write,
//! not a read and a write. A record changed by anyone else fails the swap (wrong last revision)
//! and is read again, so the remembered value is only used while it is what the bucket holds.
//! (The one way a swap could succeed against a changed record is a revision reused: the bucket
//! deleted and made again, or restored from a backup, and written up to the same revision; the
//! short memory bounds that window to seconds.)
//!
//! The record also keeps `R`, a bound on the rate of every slot it still owes (`T − now`): the
//! rate of the lease that advanced it when nothing was owed before, else the larger of `R` and
//! the new lease's rate; unknown (absent) in records of earlier releases until they owe nothing.
//! A lease that *carries* ([`Leaser::lease_carrying`], backpressure's tenant limits) and finds
//! its rate above `R` first moves what is owed to the new pace ([`step`]: `T − now` becomes
//! `(T − now) × R / rate`), so a raised limit applies from the next lease instead of after the
//! slots run up under the old one. That is only sound because the holders of those slots move
//! them by the same map when they see the raise (`tenant_loop.rs`); egress, whose held slots do
//! not move, leases without carrying, and so does the KV-down fallback.
//!
//! A replica that dies holding a lease strands at most that lease's slots: the record keeps
//! moving with time, so nothing is lost for longer than the lease (≤ `lease_secs` of rate),
//! and the limit is never exceeded because of it. While KV is unreachable a replica leases
//! from a local record at `rate / N` (N = live replicas last seen) and says so.
//!
//! The arithmetic never overflows: every step saturates (a rate of 0, NaN or a vanishing rate
//! gives the latest representable slot, never a panic), and a persisted `tat_ms` that is
//! unreadable or impossibly far ahead ([`sane_tat`]) is reset with a warning instead of being
//! trusted. Start-up validation refuses the settings that could reach those extremes.

use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use async_nats::jetstream::kv;
use prometheus_client::metrics::counter::Counter;
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
    /// The record's bound on the rate of the slots it owed before this lease (after any carry;
    /// `None`: unknown, a record of an earlier release), for the holder to move the lease's
    /// slots when it sees a raise ([`HeldSlot::moved`]). Set by [`step`]; `None` from [`gcra`].
    pub owed_rate: Option<f64>,
    /// Whether its slots may move on a raise: leases from the KV record only. A lease of the
    /// KV-down fallback is paced at a share of the rate (`rate / N`) that a raise of the
    /// tenant's rate says nothing about.
    pub movable: bool,
}

impl Lease {
    /// Slot `i` as its holder keeps it, to move on a raise ([`HeldSlot::moved`]).
    pub fn held(&self, i: u32) -> HeldSlot {
        HeldSlot {
            slot_ms: self.slot(i),
            start_ms: self.start_ms,
            rate: 1000.0 / self.spacing_ms,
            owed_rate: self.owed_rate,
            movable: self.movable,
        }
    }

    /// When slot `i` may be used (ms since the epoch; saturates at the representable ends).
    pub fn slot(&self, i: u32) -> i64 {
        self.start_ms
            .saturating_add(ms_of(f64::from(i) * self.spacing_ms, f64::floor))
    }
}

/// How long a replica trusts the record it last wrote without reading it (10 s): longer than
/// the gap between a busy tenant's leases, short enough that a bucket made again or restored
/// meanwhile is read, not assumed.
pub const REMEMBER_FOR: std::time::Duration = std::time::Duration::from_secs(10);

/// What this replica last wrote to one record.
#[derive(Debug, Clone, Copy)]
struct Written {
    revision: u64,
    state: TokenState,
    at: std::time::Instant,
}

/// Records remembered before the stale ones are dropped (each a key and three numbers).
const REMEMBERED_BEFORE_PRUNING: usize = 1024;

/// How far ahead of now a persisted `tat_ms` may be before it counts as impossible: an hour,
/// or 1,000 slots at the current rate when that is longer. Real records run ahead of now by at
/// most the leases taken and not yet used (replicas × `lease_secs`, seconds at most).
pub const TAT_HORIZON_MS: i64 = 3_600_000;

/// Milliseconds between slots at `rate` per second: `1000 / rate`, or `f64::INFINITY` for a
/// rate that is not a positive finite number (never NaN, never negative).
fn spacing_ms(rate_per_sec: f64) -> f64 {
    if rate_per_sec.is_finite() && rate_per_sec > 0.0 {
        1000.0 / rate_per_sec
    } else {
        f64::INFINITY
    }
}

/// `ms` rounded by `round` as whole milliseconds, saturating (NaN counts as 0; `as` saturates).
fn ms_of(ms: f64, round: fn(f64) -> f64) -> i64 {
    round(ms) as i64
}

/// The `tat_ms` to lease from, given the persisted one: itself when plausible, else `now_ms`
/// (no extra burst is granted from a record that cannot be trusted) and a reason to log.
/// Impossible: further ahead of `now_ms` than [`TAT_HORIZON_MS`] (or 1,000 slots at `limit`'s
/// rate, whichever is longer). A `tat_ms` in the past is always fine (GCRA clamps it).
pub fn sane_tat(tat_ms: i64, now_ms: i64, limit: &LimitRecord) -> Result<i64, String> {
    let horizon = TAT_HORIZON_MS.max(ms_of(1000.0 * spacing_ms(limit.rate_per_sec), f64::ceil));
    if tat_ms.saturating_sub(now_ms) > horizon {
        return Err(format!(
            "tat_ms {tat_ms} is {} ms ahead of now (more than the {horizon} ms any lease can \
             reach)",
            tat_ms.saturating_sub(now_ms)
        ));
    }
    Ok(tat_ms)
}

/// Where a slot leased at `was` per second lies once its holder learns of a raise to `rate`:
/// the time from `now_ms` to it scaled by `was / rate` (rounded up), so the slots a holder owes
/// keep their order and take the new pace; unchanged when `rate` is not above `was` (or either
/// is not a positive finite number) or the slot is not ahead of `now_ms`. The same map moves a
/// token record's `tat_ms` when a lease carries ([`step`]).
pub fn rescaled(slot_ms: i64, was: f64, rate: f64, now_ms: i64) -> i64 {
    let ahead = slot_ms.saturating_sub(now_ms);
    if ahead > 0 && was.is_finite() && was > 0.0 && rate.is_finite() && rate > was {
        now_ms.saturating_add(ms_of(ahead as f64 * was / rate, f64::ceil))
    } else {
        slot_ms
    }
}

/// A slot a holder keeps until it is used, with what moving it on a raise needs: its lease's
/// first slot, the lease's rate, and the record's bound on what it owed before the lease
/// ([`Lease::owed_rate`]).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct HeldSlot {
    /// When the slot may be used (ms since the epoch).
    pub slot_ms: i64,
    /// Its lease's first slot (ms since the epoch).
    pub start_ms: i64,
    /// The pace of its lease's slots (per second).
    pub rate: f64,
    /// The record's bound on the rate of the slots owed before its lease; `None`: unknown.
    pub owed_rate: Option<f64>,
    /// Whether it may move on a raise ([`Lease::movable`]).
    pub movable: bool,
}

impl HeldSlot {
    /// Where the slot lies once its holder learns of a raise to `to` per second, at `now_ms`:
    /// its lease's start moves as the record moves what it owed before it (a carrying lease:
    /// [`rescaled`] with the bound, so not at all when the bound is already `to` or more, or
    /// unknown), and the slot keeps its place in the lease at the new pace. Leases moved so
    /// keep their order and end before the record's carried `T` ([`step`]), whichever holder
    /// holds them and whether or not another lease carried first. A lease that began before
    /// `now_ms` (its first slots used, or a burst's slots in the past) is anchored at `now_ms`
    /// instead, so its pending slots keep the new pace from now rather than falling due at
    /// once. A slot already due, or of a lease that is not [`HeldSlot::movable`], stays. Never
    /// later than it was.
    pub fn moved(self, to: f64, now_ms: i64) -> HeldSlot {
        let faster = to > self.rate || self.owed_rate.is_some_and(|owed| to > owed);
        if !self.movable || !faster || self.slot_ms <= now_ms {
            return self;
        }
        let start_ms = match self.owed_rate {
            Some(owed) => rescaled(self.start_ms, owed, to, now_ms),
            None => self.start_ms,
        };
        // Where the lease's pending slots count from: its (moved) start, or now if that passed.
        let anchor = start_ms.max(now_ms);
        let into = self
            .slot_ms
            .saturating_sub(anchor.max(self.start_ms))
            .max(0);
        let into = if to.is_finite() && to > self.rate && self.rate > 0.0 {
            ms_of(into as f64 * self.rate / to, f64::ceil)
        } else {
            into
        };
        HeldSlot {
            slot_ms: anchor.saturating_add(into).min(self.slot_ms),
            start_ms: anchor,
            rate: if to > self.rate { to } else { self.rate },
            owed_rate: self.owed_rate.map(|owed| if to > owed { to } else { owed }),
            movable: true,
        }
    }
}

/// One lease of `count` slots under `limit` from the token state `state` (module doc): with
/// `carry` and `limit`'s rate above the state's bound `R`, what is owed is first moved to the
/// new pace ([`rescaled`]). Returns the lease and the state to write: its `tat_ms` advanced
/// (GCRA, [`gcra`]) and its bound `R` kept true (the lease's rate when nothing was owed, else
/// the larger of the two; unknown stays unknown while anything is owed).
pub fn step(
    state: TokenState,
    now_ms: i64,
    limit: &LimitRecord,
    count: u32,
    carry: bool,
) -> (Lease, TokenState) {
    let rate = limit.rate_per_sec;
    let owed = state.tat_ms > now_ms;
    let (tat_ms, bound) = match state.rate_per_sec {
        Some(was) if carry && owed => {
            let moved = rescaled(state.tat_ms, was, rate, now_ms);
            (moved, if moved == state.tat_ms { was } else { rate })
        }
        bound => (state.tat_ms, bound.unwrap_or(rate)),
    };
    let (mut lease, new_tat) = gcra(tat_ms, now_ms, limit, count);
    lease.owed_rate = if owed {
        state.rate_per_sec.map(|_| bound)
    } else {
        Some(rate)
    };
    let rate_per_sec = if !owed {
        Some(rate)
    } else {
        state.rate_per_sec.map(|_| bound.max(rate))
    };
    (
        lease,
        TokenState {
            tat_ms: new_tat,
            rate_per_sec,
        },
    )
}

/// GCRA: the lease for `count` slots given the current `tat`, and the new `tat`. Saturating
/// throughout: no input (extreme times, a zero, NaN or vanishing rate, any burst) panics.
pub fn gcra(tat_ms: i64, now_ms: i64, limit: &LimitRecord, count: u32) -> (Lease, i64) {
    let spacing_ms = spacing_ms(limit.rate_per_sec);
    let tolerance = ms_of(
        f64::from(limit.burst.saturating_sub(1)) * spacing_ms,
        f64::floor,
    );
    let start_ms = tat_ms.max(now_ms.saturating_sub(tolerance));
    let new_tat = start_ms.saturating_add(ms_of(f64::from(count) * spacing_ms, f64::ceil));
    (
        Lease {
            start_ms,
            spacing_ms,
            count,
            owed_rate: None,
            movable: false,
        },
        new_tat,
    )
}

/// Leases slots, from KV or (while KV is unreachable) locally.
pub struct Leaser {
    kv: kv::Store,
    /// The fallback's token state, by record key.
    local: Mutex<HashMap<String, TokenState>>,
    /// What this replica last wrote, by record key, for [`REMEMBER_FOR`]. Valid for as long as
    /// the record's revision is still that one, which the compare-and-swap checks.
    written: Mutex<HashMap<String, Written>>,
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
            written: Mutex::new(HashMap::new()),
            replicas: AtomicUsize::new(1),
            in_fallback: AtomicBool::new(false),
            kv_ops: Counter::default(),
            fallbacks: Counter::default(),
        }
    }

    /// Leases `count` slots under `limit` from the token record `key` (rendered:
    /// `RateKey { scope: Tenant(acme), record: Tokens }` → `acme.tokens`, or a destination's
    /// `acme.crm.tokens`).
    pub async fn lease(&self, key: &str, count: u32, limit: &LimitRecord, now_ms: i64) -> Lease {
        self.lease_with(key, count, limit, now_ms, false).await
    }

    /// As [`Leaser::lease`], carrying what the record owes over to a raised rate first (module
    /// doc): for a caller whose held slots move by [`rescaled`] when it sees the raise.
    pub async fn lease_carrying(
        &self,
        key: &str,
        count: u32,
        limit: &LimitRecord,
        now_ms: i64,
    ) -> Lease {
        self.lease_with(key, count, limit, now_ms, true).await
    }

    async fn lease_with(
        &self,
        key: &str,
        count: u32,
        limit: &LimitRecord,
        now_ms: i64,
        carry: bool,
    ) -> Lease {
        match self.lease_kv(key, count, limit, now_ms, carry).await {
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
                self.lease_local(key, count, limit, now_ms)
            }
        }
    }

    fn lease_local(&self, key: &str, count: u32, limit: &LimitRecord, now_ms: i64) -> Lease {
        let replicas = self.replicas.load(Ordering::Relaxed).max(1) as f64;
        let share = LimitRecord {
            rate_per_sec: limit.rate_per_sec / replicas,
            burst: ((f64::from(limit.burst) / replicas).ceil() as u32).max(1),
            ..limit.clone()
        };
        let mut local = self.local.lock().unwrap_or_else(|p| p.into_inner());
        // Never carries: the live replicas' count changes the share without its holders
        // moving their slots.
        let state = local.entry(key.to_owned()).or_default();
        let (lease, next) = step(*state, now_ms, &share, count, false);
        *state = next;
        lease
    }

    async fn lease_kv(
        &self,
        key: &str,
        count: u32,
        limit: &LimitRecord,
        now_ms: i64,
        carry: bool,
    ) -> Result<Lease, String> {
        // The first try swaps against what this replica last wrote, unread; any later one
        // (and the first, when nothing is remembered) reads the record first.
        let mut remembered = self.remembered(key);
        for _ in 0..16 {
            let (state, revision) = match remembered.take() {
                Some(known) => known,
                None => self.read(key, limit, now_ms).await?,
            };
            let (mut lease, new_state) = step(state, now_ms, limit, count, carry);
            lease.movable = true;
            let value = serde_json::to_vec(&new_state).unwrap_or_default();
            self.kv_ops.inc();
            let written = if revision == 0 {
                self.kv.create(key, value.into()).await.map_err(|e| {
                    (
                        e.kind() == kv::CreateErrorKind::AlreadyExists,
                        e.to_string(),
                    )
                })
            } else {
                self.kv
                    .update(key, value.into(), revision)
                    .await
                    .map_err(|e| {
                        (
                            e.kind() == kv::UpdateErrorKind::WrongLastRevision,
                            e.to_string(),
                        )
                    })
            };
            match written {
                Ok(new_revision) => {
                    self.remember(key, Some((new_revision, new_state)));
                    return Ok(lease);
                }
                // Another replica leased first (or the record changed): read it again.
                Err((true, _)) => self.remember(key, None),
                Err((false, error)) => {
                    self.remember(key, None);
                    return Err(error);
                }
            }
        }
        Err(format!("lease of {key} kept conflicting"))
    }

    /// The record `key` as stored, and its revision (0 when there is none). An unreadable
    /// or impossible `tat_ms` reads as `now_ms` (its rate unknown), with a warning.
    async fn read(
        &self,
        key: &str,
        limit: &LimitRecord,
        now_ms: i64,
    ) -> Result<(TokenState, u64), String> {
        self.kv_ops.inc();
        let entry = self.kv.entry(key).await.map_err(|e| e.to_string())?;
        Ok(match &entry {
            Some(e) if e.operation == kv::Operation::Put => {
                let state = serde_json::from_slice::<TokenState>(&e.value)
                    .map_err(|error| format!("unreadable token state: {error}"))
                    .and_then(|state| sane_tat(state.tat_ms, now_ms, limit).map(|_| state))
                    .unwrap_or_else(|problem| {
                        tracing::warn!(%key, %problem, "token state reset to now");
                        TokenState {
                            tat_ms: now_ms,
                            rate_per_sec: None,
                        }
                    });
                (state, e.revision)
            }
            Some(e) => (TokenState::default(), e.revision),
            None => (TokenState::default(), 0),
        })
    }

    /// What this replica wrote to `key` within [`REMEMBER_FOR`], and its revision.
    fn remembered(&self, key: &str) -> Option<(TokenState, u64)> {
        let written = self.written.lock().unwrap_or_else(|p| p.into_inner());
        written
            .get(key)
            .filter(|w| w.at.elapsed() < REMEMBER_FOR)
            .map(|w| (w.state, w.revision))
    }

    /// Records (or, with `None`, forgets) what this replica wrote to `key`: a write that got
    /// an older revision than one remembered (two leases of one record at once) is not kept.
    fn remember(&self, key: &str, write: Option<(u64, TokenState)>) {
        let mut written = self.written.lock().unwrap_or_else(|p| p.into_inner());
        let Some((revision, state)) = write else {
            written.remove(key);
            return;
        };
        let now = std::time::Instant::now();
        match written.get_mut(key) {
            Some(known) => {
                if revision > known.revision || known.at.elapsed() >= REMEMBER_FOR {
                    *known = Written {
                        revision,
                        state,
                        at: now,
                    };
                }
            }
            None => {
                if written.len() >= REMEMBERED_BEFORE_PRUNING {
                    written.retain(|_, w| w.at.elapsed() < REMEMBER_FOR);
                }
                written.insert(
                    key.to_owned(),
                    Written {
                        revision,
                        state,
                        at: now,
                    },
                );
            }
        }
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
            backlog_high_bytes: None,
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
    fn a_carrying_lease_moves_what_is_owed_to_a_raised_pace_and_keeps_its_bound_true() {
        let now = 1_000_000;
        let state = |tat_ms, rate_per_sec| TokenState {
            tat_ms,
            rate_per_sec,
        };
        // At 0.1/s, two slots leased from nothing owed: the bound is that rate, and the next
        // slot is free 20 s from now.
        let (_, owed) = step(TokenState::default(), now, &limit(0.1, 1), 2, true);
        assert_eq!(owed, state(now + 20_000, Some(0.1)));
        // Raised to 1,000/s: those two slots take 2 ms at the new pace, not 20 s.
        let (lease, after) = step(owed, now, &limit(1000.0, 1), 1, true);
        assert_eq!(lease.start_ms, now + 2);
        assert_eq!(after, state(now + 3, Some(1000.0)));
        // Without carrying (egress, the KV-down fallback): the record as it is, its bound the
        // larger rate.
        let (lease, kept) = step(owed, now, &limit(1000.0, 1), 1, false);
        assert_eq!(lease.start_ms, now + 20_000);
        assert_eq!(kept.rate_per_sec, Some(1000.0));
        // Cut while slots are owed: nothing moves, the bound stays the old (larger) rate, so
        // a later raise moves the slots owed at both rates no further than the faster allows.
        let (_, cut) = step(owed, now, &limit(0.05, 1), 1, true);
        assert_eq!(cut, state(now + 40_000, Some(0.1)));
        let (lease, _) = step(cut, now, &limit(1000.0, 1), 1, true);
        assert_eq!(lease.start_ms, now + 4);
        // A record of an earlier release (bound unknown) carries nothing while it owes
        // anything; once it owes nothing, the lease's rate is its bound.
        let (lease, unknown) = step(state(now + 20_000, None), now, &limit(1000.0, 1), 1, true);
        assert_eq!(lease.start_ms, now + 20_000);
        assert_eq!(unknown.rate_per_sec, None);
        let (_, known) = step(state(now - 5, None), now, &limit(1000.0, 1), 1, true);
        assert_eq!(known.rate_per_sec, Some(1000.0));
        // A holder's slot moves by the same map; never later, never before now.
        assert_eq!(rescaled(now + 10_000, 0.1, 1000.0, now), now + 1);
        assert_eq!(rescaled(now + 10_000, 1000.0, 0.1, now), now + 10_000);
        assert_eq!(rescaled(now - 7, 0.1, 1000.0, now), now - 7);
    }

    /// Leases `count` slots from `record` at `rate` (carrying or not), as a holder keeps them.
    fn take(
        record: &mut TokenState,
        now: i64,
        rate: f64,
        count: u32,
        carry: bool,
    ) -> Vec<HeldSlot> {
        let (mut lease, next) = step(*record, now, &limit(rate, 1), count, carry);
        *record = next;
        lease.movable = true;
        (0..count).map(|i| lease.held(i)).collect()
    }

    /// Every slot at least `gap_ms` after the one before it (the pace holds across holders).
    fn assert_paced(mut slots: Vec<i64>, gap_ms: i64, what: &str) {
        slots.sort_unstable();
        for pair in slots.windows(2) {
            assert!(pair[1] - pair[0] >= gap_ms, "{what}: {pair:?} in {slots:?}");
        }
    }

    /// [`assert_paced`] for `slots` and the next lease's first slot, which comes after them all.
    fn assert_paced_before(mut slots: Vec<i64>, next: i64, gap_ms: i64, what: &str) {
        assert!(
            slots.iter().all(|&slot| slot < next),
            "{what}: the next lease comes after"
        );
        slots.push(next);
        assert_paced(slots, gap_ms, what);
    }

    /// The slots of `held` not yet due at `told`, moved there to `to`.
    fn moved_pending(held: &[HeldSlot], to: f64, told: i64) -> Vec<i64> {
        held.iter()
            .filter(|h| h.slot_ms > told)
            .map(|h| h.moved(to, told).slot_ms)
            .collect()
    }

    #[test]
    fn held_slots_moved_on_a_raise_keep_the_new_pace_with_every_holder_and_the_next_lease() {
        let now = 1_000_000;
        // Replica B holds 20 slots at 40/s; replica A sees the raise to 80/s first and leases
        // carrying; B, not yet told, leases 20 more at 40/s after it; then B is told (at the
        // same moment here: a later one places B's pending slots that much later, scaled by
        // 1 − 40/80, the documented lag).
        let mut record = TokenState::default();
        let b_first = take(&mut record, now - 1, 40.0, 20, true);
        let a = take(&mut record, now, 80.0, 40, true);
        let b_late = take(&mut record, now, 40.0, 20, true);
        let told = now;
        let mut slots: Vec<i64> = a.iter().map(|h| h.slot_ms).collect();
        slots.extend(
            b_first
                .iter()
                .chain(&b_late)
                .map(|h| h.moved(80.0, told).slot_ms),
        );
        let next = take(&mut record, told, 80.0, 1, true)[0].slot_ms;
        assert_paced_before(slots, next, 12, "a late lease at the old rate");

        // A cut (100/s to 10/s) with slots owed, then a raise to 200/s: the slots leased at
        // both rates move to 200/s without overlapping, and the next lease after them.
        let mut record = TokenState::default();
        let fast = take(&mut record, now, 100.0, 50, true);
        let slow = take(&mut record, now, 10.0, 5, true);
        let slots: Vec<i64> = fast
            .iter()
            .chain(&slow)
            .map(|h| h.moved(200.0, now).slot_ms)
            .collect();
        let next = take(&mut record, now, 200.0, 1, true)[0].slot_ms;
        assert_paced_before(slots, next, 5, "a cut then a raise");

        // Two raises in turn (10/s to 20/s to 40/s), held slots moved at each.
        let mut record = TokenState::default();
        let held = take(&mut record, now, 10.0, 10, true);
        let mid = take(&mut record, now + 1, 20.0, 1, true);
        let slots: Vec<i64> = held
            .iter()
            .map(|h| h.moved(20.0, now + 1).moved(40.0, now + 2).slot_ms)
            .chain(mid.iter().map(|h| h.moved(40.0, now + 2).slot_ms))
            .collect();
        let next = take(&mut record, now + 2, 40.0, 1, true)[0].slot_ms;
        assert_paced_before(slots, next, 25, "two raises");

        // Told halfway through a lease (its first half used): the pending half keeps the new
        // pace from now, none falls due at once; holders told at different moments stay apart.
        let mut record = TokenState::default();
        let first = take(&mut record, now, 40.0, 20, true);
        let second = take(&mut record, now, 40.0, 20, true);
        let (first_told, second_told) = (now + 250, now + 260);
        let mut slots = moved_pending(&first, 80.0, first_told);
        assert!(
            slots.iter().all(|&slot| slot > first_told),
            "none in the past"
        );
        slots.extend(moved_pending(&second, 80.0, second_told));
        let next = take(&mut record, second_told, 80.0, 1, true)[0].slot_ms;
        assert_paced_before(slots, next, 12, "told mid-lease, at different moments");

        // Told in the other order (the later lease's holder first, the earlier one's 10 ms
        // after): the earlier one's pending slots land 10 × (1 − 40/80) = 5 ms late at most.
        let mut record = TokenState::default();
        let first = take(&mut record, now, 40.0, 20, true);
        let second = take(&mut record, now, 40.0, 20, true);
        let (second_told, first_told) = (now + 250, now + 260);
        let mut slots = moved_pending(&second, 80.0, second_told);
        slots.extend(moved_pending(&first, 80.0, first_told));
        assert_paced(slots, 12 - 5, "told in the other order, within the lag");

        // Only leases from the KV record move: `gcra` and `step` leave a lease unmovable (the
        // fallback's), and a held slot keeps what its lease says.
        let (lease, _) = step(TokenState::default(), now, &limit(40.0, 1), 2, true);
        assert!(!lease.movable && !lease.held(1).movable);
        let movable = Lease {
            movable: true,
            ..lease
        };
        assert!(movable.held(1).movable);

        // Never later; a cut moves nothing; a slot already due stays; a lease of the KV-down
        // fallback (paced at a share of the rate) never moves.
        for h in b_first.iter().chain(&fast) {
            assert!(h.moved(1_000.0, now).slot_ms <= h.slot_ms);
            assert_eq!(h.moved(1.0, now), *h);
            assert_eq!(h.moved(1_000.0, h.slot_ms), *h);
            let fallback = HeldSlot {
                movable: false,
                ..*h
            };
            assert_eq!(fallback.moved(1_000.0, now), fallback);
        }
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

    #[test]
    fn extreme_rates_bursts_and_times_neither_overflow_nor_panic() {
        let rates = [
            0.0,
            -1.0,
            f64::NAN,
            f64::INFINITY,
            f64::MIN_POSITIVE,
            1e-300,
            1e-9,
            1.0,
            1_000_000.0,
            f64::MAX,
        ];
        let bursts = [0, 1, 1000, u32::MAX];
        let times = [i64::MIN, -1, 0, 1_700_000_000_000, i64::MAX];
        let counts = [0, 1, u32::MAX];
        for rate in rates {
            for burst in bursts {
                let l = limit(rate, burst);
                for tat in times {
                    for now in times {
                        for count in counts {
                            let (lease, new_tat) = gcra(tat, now, &l, count);
                            assert!(new_tat >= lease.start_ms, "{rate} {burst} {tat} {now}");
                            assert!(lease.slot(count) >= lease.start_ms);
                            assert!(!lease.spacing_ms.is_nan() && lease.spacing_ms >= 0.0);
                            let _ = sane_tat(tat, now, &l);
                            for was in rates {
                                let moved = rescaled(tat, was, rate, now);
                                assert!(moved <= tat.max(now), "{was} {rate} {tat} {now}");
                                let state = TokenState {
                                    tat_ms: tat,
                                    rate_per_sec: Some(was),
                                };
                                let (lease, next) = step(state, now, &l, count, true);
                                assert!(next.tat_ms >= lease.start_ms, "{was} {rate} {tat} {now}");
                            }
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn a_tat_far_in_the_future_is_refused_and_a_plausible_one_kept() {
        let now = 1_700_000_000_000;
        let l = limit(1000.0, 1000);
        assert_eq!(sane_tat(now + 5_000, now, &l), Ok(now + 5_000));
        assert_eq!(sane_tat(0, now, &l), Ok(0), "the past is always fine");
        assert_eq!(sane_tat(i64::MIN, now, &l), Ok(i64::MIN));
        assert!(sane_tat(i64::MAX, now, &l).is_err());
        assert!(sane_tat(now + TAT_HORIZON_MS + 1, now, &l).is_err());
        // A slow rate legitimately runs further ahead: 1,000 slots of 10 s.
        assert!(sane_tat(now + 2 * TAT_HORIZON_MS, now, &limit(0.1, 1)).is_ok());
    }

    #[test]
    fn a_zero_rate_gives_the_latest_slot_not_a_panic() {
        let (lease, tat) = gcra(0, 10_000, &limit(0.0, 1), 3);
        assert_eq!(lease.start_ms, 10_000);
        assert_eq!(tat, i64::MAX);
        assert_eq!(lease.slot(1), i64::MAX);
    }
}
