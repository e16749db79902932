//! A service's byte budget: the bytes of messages its consume loops hold at once (fetched and
//! not yet settled: waiting for a slot, a token or a route, or being handled), shared by all
//! its loops. Handler slots bound how many messages a service holds, not how much memory:
//! 64 slots hold 16 KiB of 256-byte messages but 64 MiB of 1 MiB ones, and the per-tenant
//! loops of ingress and backpressure each hold their own fetch. The budget bounds the bytes,
//! without letting one tenant's held messages stop another's.
//!
//! - Each message that arrives is charged its size (subject, headers and payload, as read off
//!   the wire: `Message::length`), to its tenant where the loop knows it, by
//!   [`ByteBudget::charge`] or [`TenantBudget::charge`]. The [`Charge`] goes with the message
//!   and gives its bytes back when dropped, however its handling ended.
//! - A tenant's **fair share** is the limit ÷ the tenants holding bytes now. A per-tenant loop
//!   ([`TenantBudget`]: ingress, backpressure) fetches while the service holds less than the
//!   limit, or while its tenant holds less than its fair share, so what other tenants hold
//!   (messages held long: a slow rate's slots) never stops it. A loop reading every tenant's
//!   messages in stream order ([`ByteBudget::room`]: idempotency) fetches while the bytes held
//!   within each tenant's fair share add up to less than the limit and all it holds to less
//!   than twice the limit; it cannot choose whose message comes next, so a tenant that holds
//!   more than that there holds up the others until its messages are handled (at idempotency,
//!   a claim and a hand-off; the bytes any tenant has there are bounded by ingress's credit).
//!   Egress, whose messages can be held long by a tenant's own sinks, is bounded by its slots
//!   instead (`docs/performance.md`, "Memory bounded by bytes").
//! - Each fetch asks for no more messages than the room holds at the size expected, at least
//!   one, less what other pulls under way asked for and have not brought yet ([`Planned`],
//!   counted until each message arrives or the pull ends). A pull of one message is not
//!   counted, nor are backpressure's ([`TenantBudget::fetch_count`]), which stay open up to
//!   20 s whether or not the tenant sends: a tenant that sends nothing takes no room from the
//!   others (ingress's per-tenant loops ask for one message until a message shows more behind
//!   it).
//! - The size expected is the largest message seen lately: it rises at once to a larger
//!   message and moves a tenth of the way down towards each smaller one; a tenant's loop plans
//!   with its tenant's own (starting from the service's when the loop starts), a shared loop
//!   with the service's. The service's starts at 1 MiB, the largest payload the hand-off
//!   streams admit, so the first fetches ask for few.
//!
//! A message is charged when it has arrived: it is already in memory, so it is never refused.
//! What a service holds can therefore pass the limit: by messages larger than the size expected
//! when their pull was planned (a pull asks for at most 32 messages, 16 for a tenant's loop;
//! backpressure's and ingress's per-tenant pulls stay open up to 20 s), by the pulls that were
//! not counted as planned (one message for every loop; at backpressure, each tenant loop's
//! pull), and by the fair shares, which tenants may fill while others' held messages keep the
//! service over the limit. In all: about twice the limit, plus up to one pull for each tenant
//! whose loop fetches at the moment (with many tenants of large messages held long, e.g.
//! throttled to slow rates at backpressure, that term is the larger).

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use prometheus_client::metrics::gauge::Gauge;
use switchyard_keys::TenantId;
use tokio::sync::Notify;

/// The size a loop expects its first messages to have: 1 MiB, the largest payload the
/// hand-off streams admit (`max_msg_size` in `nats/topology.toml` is 1 MiB plus room for
/// headers).
pub const FIRST_EXPECTED: usize = 1024 * 1024;

/// The default budget of a service's held messages: 8 MiB (each stage's `max_in_flight_bytes`,
/// as much as each relay of the benchmark's ideal pipeline keeps in flight).
pub const DEFAULT_MAX_IN_FLIGHT_BYTES: usize = 8 * 1024 * 1024;

/// The least budget a stage accepts: 1 MiB + 64 KiB, one message of the largest size the
/// hand-off streams admit (`max_msg_size` in `nats/topology.toml`).
pub const MIN_MAX_IN_FLIGHT_BYTES: usize = 1024 * 1024 + 64 * 1024;

/// Checks a stage's `max_in_flight_bytes`: `Err` says why, for the service's "invalid
/// setting" message.
pub fn check_max_in_flight_bytes(bytes: usize) -> Result<(), String> {
    if bytes < MIN_MAX_IN_FLIGHT_BYTES {
        Err(format!(
            "{bytes} is below one message of the largest size the streams admit \
             ({MIN_MAX_IN_FLIGHT_BYTES} bytes); set at least that (default \
             {DEFAULT_MAX_IN_FLIGHT_BYTES})"
        ))
    } else {
        Ok(())
    }
}

/// The size expected next: rises at once to a larger message, moves a tenth of the way down
/// to a smaller one.
fn expect(expected: &AtomicUsize, length: usize) {
    let _ = expected.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |expected| {
        Some(length.max(expected - expected.saturating_sub(length).div_ceil(10)))
    });
}

/// What one tenant holds in a [`ByteBudget`].
#[derive(Debug)]
struct TenantHeld {
    /// The tenant's id: its key in [`ByteBudget`]'s map.
    tenant: TenantId,
    bytes: AtomicUsize,
    /// The size of the tenant's messages expected: the largest seen lately.
    expected: AtomicUsize,
    /// Woken whenever the tenant's bytes are given back (what its loop waits on).
    freed: Notify,
}

/// The bytes of messages a service's loops hold, under a limit (module docs).
#[derive(Debug)]
pub struct ByteBudget {
    limit: usize,
    /// The bytes held: the service's `switchyard_message_bytes_held` ([`crate::Metrics`]).
    held: Gauge,
    /// The size of message expected: the largest seen lately (module docs).
    expected: AtomicUsize,
    /// Bytes that pulls under way asked for and have not brought yet, at the size expected
    /// when each was planned.
    planned: AtomicUsize,
    /// What each tenant holds: the tenants holding bytes and those a loop of their own reads
    /// ([`ByteBudget::forget_if_unused`]).
    tenants: Mutex<HashMap<TenantId, Arc<TenantHeld>>>,
    /// Tenants holding bytes now.
    holders: AtomicUsize,
    /// Woken when what is held falls under the limit.
    freed: Notify,
    /// Woken whenever bytes are given back (what a shared loop waits on).
    released: Notify,
}

impl ByteBudget {
    /// A budget of `limit` bytes (at least 1), counting what is held in `held` (the service's
    /// [`crate::Metrics::bytes_held`]; a fresh gauge where nothing reports it).
    pub fn new(limit: usize, held: Gauge) -> Arc<Self> {
        Arc::new(Self {
            limit: limit.max(1),
            held,
            expected: AtomicUsize::new(FIRST_EXPECTED),
            planned: AtomicUsize::new(0),
            tenants: Mutex::new(HashMap::new()),
            holders: AtomicUsize::new(0),
            freed: Notify::new(),
            released: Notify::new(),
        })
    }

    /// The limit, in bytes.
    pub fn limit(&self) -> usize {
        self.limit
    }

    /// The bytes held now (may pass the limit: module docs).
    pub fn held(&self) -> usize {
        usize::try_from(self.held.get()).unwrap_or(0)
    }

    /// The size of message expected, in bytes: the largest seen lately (module docs).
    pub fn expected(&self) -> usize {
        self.expected.load(Ordering::Relaxed)
    }

    /// A tenant's fair share, in bytes: the limit ÷ the tenants holding bytes now.
    pub fn fair_share(&self) -> usize {
        self.limit / self.holders.load(Ordering::Relaxed).max(1)
    }

    /// The fair share of a tenant holding `own` bytes: one holding nothing counts itself among
    /// the holders, as it will once it fetches.
    fn share_of(&self, own: usize) -> usize {
        let holders = self.holders.load(Ordering::Relaxed) + usize::from(own == 0);
        self.limit / holders.max(1)
    }

    /// The handle a loop reading one tenant's messages charges and waits with.
    pub fn tenant(self: &Arc<Self>, tenant: &TenantId) -> TenantBudget {
        TenantBudget {
            budget: self.clone(),
            tenant: self.held_by(tenant),
        }
    }

    fn held_by(&self, tenant: &TenantId) -> Arc<TenantHeld> {
        let mut tenants = self.tenants.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(held) = tenants.get(tenant) {
            return held.clone();
        }
        let held = Arc::new(TenantHeld {
            tenant: tenant.clone(),
            bytes: AtomicUsize::new(0),
            expected: AtomicUsize::new(self.expected()),
            freed: Notify::new(),
        });
        tenants.insert(tenant.clone(), held.clone());
        held
    }

    /// Drops `tenant`'s entry when it holds nothing and nothing else refers to it (no tenant
    /// loop's [`TenantBudget`], no other [`Charge`]): a shared loop's tenants come and go, as
    /// do per-tenant loops, and the map keeps those holding bytes or read by a loop. Called by
    /// a dropping charge or loop handle, which holds the one reference besides the map's. (Two
    /// references dropped at once on two threads, two charges or a loop's handle and its last
    /// charge, may each see the other and leave the entry, holding nothing, until the tenant's
    /// next charge ends: a few bytes; nothing is counted from it.)
    fn forget_if_unused(&self, tenant: &Arc<TenantHeld>) {
        let mut tenants = self.tenants.lock().unwrap_or_else(|e| e.into_inner());
        // Under the lock no new reference can be taken (`held_by` clones under it).
        if Arc::strong_count(tenant) == 2 && tenant.bytes.load(Ordering::Acquire) == 0 {
            tenants.remove(&tenant.tenant);
        }
    }

    /// The bytes held within each tenant's fair share (what a tenant holds beyond its share
    /// left out), with those charged to no tenant.
    pub fn fair_held(&self) -> usize {
        let held = self.held();
        if held < self.limit {
            // Nothing left out can matter: under the limit as it is.
            return held;
        }
        let share = self.fair_share();
        let tenants = self.tenants.lock().unwrap_or_else(|e| e.into_inner());
        let beyond: usize = tenants
            .values()
            .map(|t| t.bytes.load(Ordering::Relaxed).saturating_sub(share))
            .sum();
        held.saturating_sub(beyond)
    }

    /// Whether a loop reading every tenant's messages may fetch now: the bytes held within
    /// each tenant's fair share are under the limit, and all that is held under twice it.
    pub fn has_room(&self) -> bool {
        self.held() < self.limit.saturating_mul(2) && self.fair_held() < self.limit
    }

    /// Waits until a loop reading every tenant's messages may fetch
    /// ([`ByteBudget::has_room`]). Cancel-safe.
    pub async fn room(&self) {
        loop {
            let released = self.released.notified();
            if self.has_room() {
                return;
            }
            released.await;
        }
    }

    /// Plans a shared loop's fetch of at most `most` messages: as many of the expected size as
    /// the room holds that is neither held (within the fair shares) nor planned by other
    /// pulls, at least 1. The returned [`Planned`] counts them as planned until each arrives
    /// ([`Planned::arrived`]) or it is dropped (the pull has ended).
    pub fn plan(self: &Arc<Self>, most: usize) -> Planned {
        let each = self.expected().max(1);
        let room = self
            .limit
            .saturating_sub(self.fair_held())
            .min(self.limit.saturating_mul(2).saturating_sub(self.held()));
        self.plan_with(each, most, |planned| room.saturating_sub(planned) / each)
    }

    /// Adds `count(planned now)` messages of `each` bytes (clamped to [1, `most`]) to what is
    /// planned, in one step, so loops planning at once do not count the same room twice. A
    /// pull of one message is not counted: every loop may have one (module docs), and one
    /// left open for a tenant that sends nothing must take no room from the others.
    fn plan_with(
        self: &Arc<Self>,
        each: usize,
        most: usize,
        count: impl Fn(usize) -> usize,
    ) -> Planned {
        let mut planned_count = 1;
        let counted = self
            .planned
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |planned| {
                planned_count = count(planned).clamp(1, most.max(1));
                (planned_count > 1).then_some(planned + planned_count * each)
            })
            .is_ok();
        Planned {
            budget: self.clone(),
            each: if counted { each } else { 0 },
            left: planned_count,
            count: planned_count,
        }
    }

    /// Charges an arrived message of `length` bytes to `tenant` (`None`: a message whose
    /// tenant is unknown, counted in the total only), and counts its size in the expected one;
    /// the bytes are given back when the returned [`Charge`] is dropped.
    pub fn charge(self: &Arc<Self>, length: usize, tenant: Option<&TenantId>) -> Charge {
        let tenant = tenant.map(|tenant| self.held_by(tenant));
        self.charge_to(length, tenant)
    }

    fn charge_to(self: &Arc<Self>, length: usize, tenant: Option<Arc<TenantHeld>>) -> Charge {
        expect(&self.expected, length);
        if let Some(tenant) = &tenant {
            expect(&tenant.expected, length);
            if tenant.bytes.fetch_add(length, Ordering::AcqRel) == 0 {
                self.holders.fetch_add(1, Ordering::AcqRel);
            }
        }
        self.held.inc_by(i64::try_from(length).unwrap_or(i64::MAX));
        Charge {
            budget: self.clone(),
            tenant,
            bytes: length,
        }
    }
}

/// A [`ByteBudget`] as one tenant's loop uses it (ingress's and backpressure's per-tenant
/// loops).
#[derive(Debug, Clone)]
pub struct TenantBudget {
    budget: Arc<ByteBudget>,
    tenant: Arc<TenantHeld>,
}

impl TenantBudget {
    /// Whether the tenant's loop may fetch now: the service holds less than the limit, or the
    /// tenant less than its fair share.
    pub fn has_room(&self) -> bool {
        let own = self.tenant.bytes.load(Ordering::Acquire);
        self.budget.held() < self.budget.limit || own < self.budget.share_of(own)
    }

    /// Waits until the tenant's loop may fetch ([`TenantBudget::has_room`]). Cancel-safe.
    pub async fn room(&self) {
        loop {
            let freed = self.budget.freed.notified();
            let own_freed = self.tenant.freed.notified();
            if self.has_room() {
                return;
            }
            // Waiting means the tenant holds at least its share, so bytes of its own are
            // still held and their release wakes this wait.
            tokio::select! {
                () = freed => {}
                () = own_freed => {}
            }
        }
    }

    /// How many messages the tenant's next fetch may ask for, without counting them as
    /// planned: for loops whose pulls stay open long whether or not the tenant sends
    /// (backpressure's, up to 20 s, for up to `tenant_idle_secs` after its last message), which
    /// must not take room from the others meanwhile. As many of the size its messages have
    /// lately as the service's room holds, less what others planned, at least 1.
    pub fn fetch_count(&self, most: usize) -> usize {
        let each = self.tenant.expected.load(Ordering::Relaxed).max(1);
        let taken = self.budget.held() + self.budget.planned.load(Ordering::Relaxed);
        (self.budget.limit.saturating_sub(taken) / each).clamp(1, most.max(1))
    }

    /// Plans the tenant's fetch of at most `most` messages: as many of the size its messages
    /// have lately as the service's room holds, less what other pulls planned, at least 1
    /// ([`ByteBudget::plan`]). Where only its fair share has room (others hold the rest),
    /// that one: it fetches into its share one message a pull, each after the last arrived.
    pub fn plan(&self, most: usize) -> Planned {
        let each = self.tenant.expected.load(Ordering::Relaxed).max(1);
        let held = self.budget.held();
        let limit = self.budget.limit;
        self.budget.plan_with(each, most, |planned| {
            limit.saturating_sub(held + planned) / each
        })
    }

    /// Charges an arrived message of the tenant's of `length` bytes ([`ByteBudget::charge`]).
    pub fn charge(&self, length: usize) -> Charge {
        self.budget.charge_to(length, Some(self.tenant.clone()))
    }
}

/// The messages one pull asked for, counted in its [`ByteBudget`] until they arrive or the
/// pull ends (dropped).
#[derive(Debug)]
pub struct Planned {
    budget: Arc<ByteBudget>,
    /// The size each was planned at.
    each: usize,
    /// Those not arrived yet.
    left: usize,
    count: usize,
}

impl Planned {
    /// How many messages the pull may ask for (at least 1).
    pub fn count(&self) -> usize {
        self.count
    }

    /// One of them arrived (it is charged on its own).
    pub fn arrived(&mut self) {
        if self.left > 0 {
            self.left -= 1;
            self.budget.planned.fetch_sub(self.each, Ordering::Relaxed);
        }
    }
}

impl Drop for Planned {
    fn drop(&mut self) {
        self.budget
            .planned
            .fetch_sub(self.left * self.each, Ordering::Relaxed);
    }
}

impl Drop for TenantBudget {
    /// The last handle of an ended loop whose tenant holds nothing drops the tenant's entry.
    fn drop(&mut self) {
        if self.tenant.bytes.load(Ordering::Acquire) == 0 {
            self.budget.forget_if_unused(&self.tenant);
        }
    }
}

/// One message's bytes held in a [`ByteBudget`], given back on drop.
#[derive(Debug)]
pub struct Charge {
    budget: Arc<ByteBudget>,
    tenant: Option<Arc<TenantHeld>>,
    bytes: usize,
}

impl Drop for Charge {
    fn drop(&mut self) {
        let budget = &self.budget;
        if let Some(tenant) = &self.tenant {
            if tenant.bytes.fetch_sub(self.bytes, Ordering::AcqRel) == self.bytes {
                budget.holders.fetch_sub(1, Ordering::AcqRel);
                budget.forget_if_unused(tenant);
            }
            tenant.freed.notify_waiters();
        }
        let bytes = i64::try_from(self.bytes).unwrap_or(i64::MAX);
        let before = budget.held.dec_by(bytes);
        // A per-tenant wait for room (it registers before it checks) ends at its tenant's own
        // release (above) or when the service falls under the limit. Not when another tenant
        // stops holding, although every share grows then: that would wake every waiting loop
        // at each message's end, and with many tenants waiting almost none would find room.
        // A shared loop's wait depends on every tenant's share.
        let limit = i64::try_from(budget.limit).unwrap_or(i64::MAX);
        if before >= limit && before - bytes < limit {
            budget.freed.notify_waiters();
        }
        budget.released.notify_waiters();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tenant(name: &str) -> TenantId {
        TenantId::new(name).expect("a valid tenant id")
    }

    /// A budget of `limit` whose expected size has come down to `size`.
    fn settled_at(limit: usize, size: usize) -> Arc<ByteBudget> {
        let budget = ByteBudget::new(limit, Gauge::default());
        for _ in 0..200 {
            drop(budget.charge(size, None));
        }
        assert_eq!(budget.expected(), size);
        budget
    }

    #[test]
    fn the_plan_fills_the_free_room_at_the_expected_size_and_asks_for_one_at_least() {
        let budget = ByteBudget::new(1000, Gauge::default());
        assert_eq!(
            budget.plan(32).count(),
            1,
            "1 MiB expected before any message"
        );
        let budget = settled_at(1000, 100);
        assert_eq!(budget.plan(32).count(), 10);
        assert_eq!(budget.plan(4).count(), 4);
        let held: Vec<_> = (0..9).map(|_| budget.charge(100, None)).collect();
        assert_eq!(budget.held(), 900);
        assert_eq!(budget.plan(32).count(), 1);
        let more = budget.charge(500, None);
        assert_eq!(budget.expected(), 500, "rises at once to a larger message");
        assert_eq!(
            budget.held(),
            1400,
            "an arrived message is charged past the limit"
        );
        assert_eq!(budget.plan(32).count(), 1);
        drop(more);
        drop(held);
        assert_eq!(budget.held(), 0);
        assert_eq!(budget.plan(32).count(), 2);
        assert_eq!(budget.plan(1).count(), 1);
    }

    #[test]
    fn what_other_pulls_planned_is_not_planned_again_until_it_arrives_or_they_end() {
        let budget = settled_at(1000, 100);
        let mut first = budget.plan(6);
        assert_eq!(first.count(), 6);
        let second = budget.plan(32);
        assert_eq!(second.count(), 4, "the room the first pull did not plan");
        assert_eq!(budget.plan(32).count(), 1, "one at least, all planned");
        // Two of the first pull's arrive (held now), and it ends without the rest.
        let arrived: Vec<_> = (0..2)
            .map(|_| {
                first.arrived();
                budget.charge(100, None)
            })
            .collect();
        drop(first);
        assert_eq!(budget.plan(32).count(), 4, "1000 - 200 held - 400 planned");
        drop(second);
        drop(arrived);
        assert_eq!(budget.plan(32).count(), 10);
    }

    #[test]
    fn a_one_message_pull_takes_no_room_from_the_others() {
        let budget = settled_at(1000, 100);
        let open: Vec<_> = (0..50).map(|_| budget.plan(1)).collect();
        assert!(open.iter().all(|pull| pull.count() == 1));
        assert_eq!(
            budget.plan(32).count(),
            10,
            "fifty one-message pulls left open"
        );
        let tenant = budget.tenant(&tenant("quiet"));
        assert_eq!(tenant.fetch_count(32), 10);
        let counted = budget.plan(4);
        assert_eq!(tenant.fetch_count(32), 6, "a counted plan is seen");
        drop((open, counted));
    }

    #[test]
    fn the_expected_size_falls_a_tenth_of_the_way_to_each_smaller_message() {
        let budget = ByteBudget::new(1 << 20, Gauge::default());
        drop(budget.charge(256, None));
        assert_eq!(
            budget.expected(),
            FIRST_EXPECTED - (FIRST_EXPECTED - 256).div_ceil(10)
        );
        for _ in 0..200 {
            drop(budget.charge(256, None));
        }
        assert_eq!(budget.expected(), 256);
        assert_eq!(budget.plan(10_000).count(), (1 << 20) / 256);
    }

    #[tokio::test]
    async fn a_full_budget_opens_when_bytes_are_given_back() {
        use futures::FutureExt;
        let budget = ByteBudget::new(100, Gauge::default());
        let charge = budget.charge(150, None);
        let mut room = std::pin::pin!(budget.room());
        assert!(
            (&mut room).now_or_never().is_none(),
            "room while 150 of 100 bytes are held"
        );
        drop(charge);
        room.await;
        assert!(budget.room().now_or_never().is_some());
    }

    #[tokio::test]
    async fn a_tenant_holding_the_whole_budget_keeps_no_other_tenant_from_fetching() {
        use futures::FutureExt;
        let budget = settled_at(1000, 100);
        let (slow, fast) = (
            budget.tenant(&tenant("slow")),
            budget.tenant(&tenant("fast")),
        );
        // The slow tenant's messages are held long, past the limit.
        let held: Vec<_> = (0..12).map(|_| slow.charge(100)).collect();
        assert_eq!(budget.held(), 1200);
        assert!(
            slow.room().now_or_never().is_none(),
            "the slow tenant holds more than the limit"
        );
        // The fast tenant holds nothing: under its fair share (1000 ÷ 1 holder).
        assert!(fast.room().now_or_never().is_some());
        assert_eq!(
            fast.plan(32).count(),
            1,
            "within its share only: one a pull"
        );
        let fast_held: Vec<_> = (0..4).map(|_| fast.charge(100)).collect();
        assert_eq!(budget.fair_share(), 500, "two tenants hold bytes");
        assert!(fast.room().now_or_never().is_some(), "400 of its 500");
        // A loop reading every tenant's messages counts the slow tenant's bytes within its
        // share only: 500 + 400 < 1000.
        assert_eq!(budget.fair_held(), 900);
        assert!(budget.room().now_or_never().is_some());
        let one_more = fast.charge(100);
        assert!(
            fast.room().now_or_never().is_none(),
            "the fast tenant at its share"
        );
        assert!(budget.room().now_or_never().is_none(), "500 + 500 fair");
        // The slow tenant's messages end: it stops holding, the budget is free again.
        drop(held);
        assert_eq!(budget.fair_share(), 1000);
        assert!(slow.room().now_or_never().is_some());
        drop((fast_held, one_more));
        assert_eq!(budget.held(), 0);
    }

    #[test]
    fn a_tenant_is_forgotten_once_it_holds_nothing_and_has_no_loop() {
        let budget = settled_at(1000, 100);
        let entries = |budget: &ByteBudget| budget.tenants.lock().map(|t| t.len()).unwrap_or(0);
        // A shared loop's tenants: an entry while their messages are held.
        let first = budget.charge(100, Some(&tenant("a")));
        let second = budget.charge(100, Some(&tenant("a")));
        let other = budget.charge(100, Some(&tenant("b")));
        assert_eq!(entries(&budget), 2);
        drop(first);
        assert_eq!(entries(&budget), 2, "a still holds 100");
        drop((second, other));
        assert_eq!(entries(&budget), 0, "neither holds anything");
        assert_eq!(budget.fair_share(), 1000);
        // A tenant with a loop of its own keeps its entry (and what it expects) while idle.
        let own = budget.tenant(&tenant("c"));
        drop(own.charge(100));
        drop(budget.charge(100, Some(&tenant("c"))));
        assert_eq!(entries(&budget), 1);
        let copy = own.clone();
        drop(own);
        assert_eq!(entries(&budget), 1, "a handle of its loop is left");
        drop(copy);
        assert_eq!(entries(&budget), 0, "its loop ended");
        assert_eq!(budget.held(), 0);
    }

    #[tokio::test]
    async fn a_tenant_waiting_at_its_share_is_woken_by_its_own_messages_ending() {
        use futures::FutureExt;
        let budget = settled_at(1000, 100);
        let (slow, other) = (
            budget.tenant(&tenant("slow")),
            budget.tenant(&tenant("other")),
        );
        let others: Vec<_> = (0..6).map(|_| other.charge(100)).collect();
        let mut own: Vec<_> = (0..6).map(|_| slow.charge(100)).collect();
        // 1,200 held of 1,000; the slow tenant holds 600 of its 500 share.
        let mut room = std::pin::pin!(slow.room());
        assert!((&mut room).now_or_never().is_none());
        own.pop();
        own.pop();
        // 400 of its share now, though the service still holds 1,000 (no fall under the
        // limit to wake it): its own release does.
        tokio::time::timeout(std::time::Duration::from_secs(10), room)
            .await
            .expect("woken by its own release");
        drop((own, others));
    }

    #[test]
    fn a_budget_under_one_largest_message_is_refused_with_the_least_to_set() {
        let error = check_max_in_flight_bytes(1 << 20).unwrap_err();
        assert!(error.contains("1114112"), "{error}");
        assert!(check_max_in_flight_bytes(DEFAULT_MAX_IN_FLIGHT_BYTES).is_ok());
    }
}
