//! A service's byte budget: the bytes of messages its consume loops hold at once (fetched and
//! not yet settled: waiting for a slot, a token or a route, or being handled), shared by all
//! its loops. Handler slots bound how many messages a service holds, not how much memory:
//! 64 slots hold 16 KiB of 256-byte messages but 64 MiB of 1 MiB ones, and the per-tenant
//! loops of ingress and backpressure each hold their own fetch. The budget bounds the bytes.
//!
//! - Before each fetch a loop waits until the budget has room ([`ByteBudget::room`]: what is
//!   held is under the limit) and asks for no more messages than the room holds at the size
//!   expected ([`ByteBudget::plan`], at least one), less what other loops' pulls under way
//!   asked for and have not brought yet ([`Planned`], counted until each message arrives or the
//!   pull ends). What is planned shapes the size of fetches only: a pull left open for a
//!   tenant that sends nothing keeps no loop from fetching.
//! - Each message that arrives is charged its size (subject, headers and payload, as read off
//!   the wire: `Message::length`) by [`ByteBudget::charge`]. The [`Charge`] goes with the
//!   message and gives its bytes back when dropped, however its handling ended.
//! - The size expected is the largest message the service's loops saw lately (one for all of
//!   them, so a new tenant's loop plans with what the service reads now): it rises at once to
//!   a larger message and moves a tenth of the way down towards each smaller one. It starts at
//!   1 MiB, the largest payload the hand-off streams admit, so the first fetches ask for few.
//!
//! A message is charged when it has arrived: it is already in memory, so it is never refused.
//! The budget can therefore be passed by messages larger than expected (at most a pull's count
//! of them: 32, or 16 for a tenant's loop), and by one message per loop planning a fetch while
//! the room is taken (each may ask for one): for ingress and backpressure, one per tenant loop
//! fetching at that moment. No loop fetches again until the held bytes are back under the
//! limit.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use prometheus_client::metrics::gauge::Gauge;
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
    /// Woken whenever bytes are given back.
    freed: Notify,
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
            freed: Notify::new(),
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

    /// Waits until what is held is under the limit. Cancel-safe.
    pub async fn room(&self) {
        loop {
            let freed = self.freed.notified();
            if self.held() < self.limit {
                return;
            }
            freed.await;
        }
    }

    /// The size of message expected, in bytes: the largest seen lately (module docs).
    pub fn expected(&self) -> usize {
        self.expected.load(Ordering::Relaxed)
    }

    /// Plans a fetch of at most `most` messages: as many of the expected size as the room holds
    /// that is neither held nor planned by other pulls, at least 1. The returned [`Planned`]
    /// counts them as planned until each arrives ([`Planned::arrived`]) or it is dropped (the
    /// pull has ended).
    pub fn plan(self: &Arc<Self>, most: usize) -> Planned {
        let each = self.expected().max(1);
        let taken = self.held() + self.planned.load(Ordering::Relaxed);
        let count = (self.limit.saturating_sub(taken) / each).clamp(1, most.max(1));
        self.planned.fetch_add(count * each, Ordering::Relaxed);
        Planned {
            budget: self.clone(),
            each,
            left: count,
            count,
        }
    }

    /// Charges an arrived message of `length` bytes (and counts its size in the expected
    /// one); the bytes are given back when the returned [`Charge`] is dropped.
    pub fn charge(self: &Arc<Self>, length: usize) -> Charge {
        // Rises at once to a larger message, moves a tenth of the way down to a smaller one.
        let _ = self
            .expected
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |expected| {
                Some(length.max(expected - expected.saturating_sub(length).div_ceil(10)))
            });
        self.held.inc_by(i64::try_from(length).unwrap_or(i64::MAX));
        Charge {
            budget: self.clone(),
            bytes: length,
        }
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

    /// One of them arrived (it is charged on its own, [`ByteBudget::charge`]).
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

/// One message's bytes held in a [`ByteBudget`], given back on drop.
#[derive(Debug)]
pub struct Charge {
    budget: Arc<ByteBudget>,
    bytes: usize,
}

impl Drop for Charge {
    fn drop(&mut self) {
        let bytes = i64::try_from(self.bytes).unwrap_or(i64::MAX);
        let before = self.budget.held.dec_by(bytes);
        // Only a fall under the limit can end a wait (`room` registers before it checks).
        let limit = i64::try_from(self.budget.limit).unwrap_or(i64::MAX);
        if before >= limit && before - bytes < limit {
            self.budget.freed.notify_waiters();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_plan_fills_the_free_room_at_the_expected_size_and_asks_for_one_at_least() {
        let budget = ByteBudget::new(1000, Gauge::default());
        assert_eq!(
            budget.plan(32).count(),
            1,
            "1 MiB expected before any message"
        );
        for _ in 0..200 {
            drop(budget.charge(100));
        }
        assert_eq!(budget.expected(), 100);
        assert_eq!(budget.plan(32).count(), 10);
        assert_eq!(budget.plan(4).count(), 4);
        let held: Vec<_> = (0..9).map(|_| budget.charge(100)).collect();
        assert_eq!(budget.held(), 900);
        assert_eq!(budget.plan(32).count(), 1);
        let more = budget.charge(500);
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
        let budget = ByteBudget::new(1000, Gauge::default());
        for _ in 0..200 {
            drop(budget.charge(100));
        }
        let mut first = budget.plan(6);
        assert_eq!(first.count(), 6);
        let second = budget.plan(32);
        assert_eq!(second.count(), 4, "the room the first pull did not plan");
        assert_eq!(budget.plan(32).count(), 1, "one at least, all planned");
        // Two of the first pull's arrive (held now), and it ends without the rest.
        let arrived: Vec<_> = (0..2)
            .map(|_| {
                first.arrived();
                budget.charge(100)
            })
            .collect();
        drop(first);
        assert_eq!(budget.plan(32).count(), 4, "1000 - 200 held - 400 planned");
        drop(second);
        drop(arrived);
        assert_eq!(budget.plan(32).count(), 10);
    }

    #[test]
    fn the_expected_size_falls_a_tenth_of_the_way_to_each_smaller_message() {
        let budget = ByteBudget::new(1 << 20, Gauge::default());
        drop(budget.charge(256));
        assert_eq!(
            budget.expected(),
            FIRST_EXPECTED - (FIRST_EXPECTED - 256).div_ceil(10)
        );
        for _ in 0..200 {
            drop(budget.charge(256));
        }
        assert_eq!(budget.expected(), 256);
        assert_eq!(budget.plan(10_000).count(), (1 << 20) / 256);
    }

    #[tokio::test]
    async fn a_full_budget_opens_when_bytes_are_given_back() {
        use futures::FutureExt;
        let budget = ByteBudget::new(100, Gauge::default());
        let charge = budget.charge(150);
        let mut room = std::pin::pin!(budget.room());
        assert!(
            (&mut room).now_or_never().is_none(),
            "room while 150 of 100 bytes are held"
        );
        drop(charge);
        room.await;
        assert!(budget.room().now_or_never().is_some());
    }

    #[test]
    fn a_budget_under_one_largest_message_is_refused_with_the_least_to_set() {
        let error = check_max_in_flight_bytes(1 << 20).unwrap_err();
        assert!(error.contains("1114112"), "{error}");
        assert!(check_max_in_flight_bytes(DEFAULT_MAX_IN_FLIGHT_BYTES).is_ok());
    }
}
