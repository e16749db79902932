//! Per-route (and per-tenant) in-flight limits: at most a key's `limit` attempts at once, so
//! one slow route or tenant cannot take every worker slot. A message that finds no free slot
//! within `route_wait_ms` is rescheduled instead of holding a worker slot while it waits, and it
//! waits at all only when a slot is expected within that time: the n-th message waiting for a
//! key expects one after about n × the key's mean slot hold ÷ its limit (the mean of the holds
//! that carried an attempt, weighted to the recent ones; for a key with none yet, the age of
//! its oldest slot held). A slow key's messages therefore hold little more than its limit of
//! the worker's slots — with attempts of 1 s and a limit of 16, three wait; with attempts of a
//! minute, none — however many of them the stream holds, while a fast key's burst (or a new
//! key's) waits its few milliseconds rather than being rescheduled. The mean follows a key
//! that turns slow once its first slow attempt ends (within the route's timeout): until then
//! its messages wait as a fast key's do.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;

/// When each of a key's slots now held was taken (how many at that instant).
type Held = Arc<Mutex<BTreeMap<Instant, usize>>>;

/// One slot of a key, released on drop; its hold counts towards the key's mean unless it
/// carried no attempt ([`Slot::unused`]).
#[derive(Debug)]
pub struct Slot {
    _permit: OwnedSemaphorePermit,
    taken: Instant,
    mean_hold_us: Arc<AtomicU64>,
    held: Held,
    counted: bool,
}

impl Slot {
    /// Releases the slot without counting its hold: it carried no attempt (a rate or a
    /// breaker sent the message back), and a quick release would make the key look fast.
    pub fn unused(mut self) {
        self.counted = false;
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        {
            let mut held = self.held.lock().unwrap_or_else(PoisonError::into_inner);
            if let Some(n) = held.get_mut(&self.taken) {
                *n -= 1;
                if *n == 0 {
                    held.remove(&self.taken);
                }
            }
        }
        if !self.counted {
            return;
        }
        let held = u64::try_from(self.taken.elapsed().as_micros())
            .unwrap_or(u64::MAX)
            .max(1);
        // An exponentially weighted mean (1/8 for the newest), 0 while none was counted.
        let _ = self
            .mean_hold_us
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |mean| {
                Some(if mean == 0 {
                    held
                } else {
                    (mean.saturating_mul(7) / 8).saturating_add(held / 8).max(1)
                })
            });
    }
}

/// One key's slots, how many messages wait for one now, and how long slots are held.
#[derive(Debug)]
struct Slots {
    limit: usize,
    semaphore: Arc<Semaphore>,
    waiting: Arc<AtomicUsize>,
    /// The mean hold of a slot that carried an attempt, µs; 0: none yet.
    mean_hold_us: Arc<AtomicU64>,
    /// The slots held now.
    held: Held,
}

/// What [`Limiter::acquire`] works with for one key.
struct Handles {
    semaphore: Arc<Semaphore>,
    waiting: Arc<AtomicUsize>,
    mean_hold_us: Arc<AtomicU64>,
    held: Held,
}

/// Counts a message as waiting for a slot until dropped (a slot taken, the wait over, or the
/// message's task ended).
struct Waiting(Arc<AtomicUsize>);

impl Drop for Waiting {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// The in-flight limits of every route, by route id (the route's KV key).
#[derive(Debug, Default)]
pub struct Limiter {
    routes: Mutex<HashMap<String, Slots>>,
}

impl Limiter {
    /// No routes yet; each gets its slots on first use.
    pub fn new() -> Self {
        Self::default()
    }

    /// The semaphore, waiting count and mean hold for `route` with `limit` slots. When a
    /// route's limit changes, a fresh semaphore replaces the old one; attempts already running
    /// on the old one finish there.
    fn slots(&self, route: &str, limit: usize) -> Handles {
        let limit = limit.clamp(1, Semaphore::MAX_PERMITS);
        let mut routes = self.routes.lock().unwrap_or_else(PoisonError::into_inner);
        if routes.get(route).is_none_or(|slots| slots.limit != limit) {
            let (mean_hold_us, held) = routes.get(route).map_or_else(
                || (Arc::new(AtomicU64::new(0)), Held::default()),
                |s| (s.mean_hold_us.clone(), s.held.clone()),
            );
            let slots = Slots {
                limit,
                semaphore: Arc::new(Semaphore::new(limit)),
                waiting: Arc::new(AtomicUsize::new(0)),
                mean_hold_us,
                held,
            };
            routes.insert(route.to_owned(), slots);
        }
        let slots = &routes[route];
        Handles {
            semaphore: slots.semaphore.clone(),
            waiting: slots.waiting.clone(),
            mean_hold_us: slots.mean_hold_us.clone(),
            held: slots.held.clone(),
        }
    }

    /// Takes one of `route`'s `limit` slots, waiting at most `wait`; `None` if none freed up,
    /// and at once when none is expected within `wait` (see the module documentation).
    pub async fn acquire(&self, route: &str, limit: usize, wait: Duration) -> Option<Slot> {
        let Handles {
            semaphore,
            waiting,
            mean_hold_us,
            held,
        } = self.slots(route, limit);
        let slot = |permit| {
            let taken = Instant::now();
            *held
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .entry(taken)
                .or_default() += 1;
            Slot {
                _permit: permit,
                taken,
                mean_hold_us: mean_hold_us.clone(),
                held: held.clone(),
                counted: true,
            }
        };
        if let Ok(permit) = semaphore.clone().try_acquire_owned() {
            return Some(slot(permit));
        }
        let ahead = waiting.fetch_add(1, Ordering::Relaxed);
        let _waiting = Waiting(waiting);
        // A slot's hold: the key's mean, or, with none counted yet, its oldest slot's age.
        let hold = match mean_hold_us.load(Ordering::Relaxed) {
            0 => held
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .first_key_value()
                .map_or(Duration::ZERO, |(taken, _)| taken.elapsed()),
            mean => Duration::from_micros(mean),
        };
        let expected = hold.mul_f64((ahead + 1) as f64 / limit.max(1) as f64);
        if expected >= wait {
            return None;
        }
        match tokio::time::timeout(wait, semaphore.acquire_owned()).await {
            Ok(Ok(permit)) => Some(slot(permit)),
            _ => None,
        }
    }

    /// Slots of `route` free right now (for tests and diagnostics).
    pub fn available(&self, route: &str) -> Option<usize> {
        let routes = self.routes.lock().unwrap_or_else(PoisonError::into_inner);
        routes.get(route).map(|s| s.semaphore.available_permits())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_full_route_makes_the_next_message_wait_then_give_up() {
        let limiter = Limiter::new();
        let wait = Duration::from_millis(200);
        let a = limiter.acquire("acme.ops.slack", 2, wait).await;
        let b = limiter.acquire("acme.ops.slack", 2, wait).await;
        assert!(a.is_some() && b.is_some());
        let started = tokio::time::Instant::now();
        assert!(limiter.acquire("acme.ops.slack", 2, wait).await.is_none());
        assert_eq!(started.elapsed(), wait);
        // Other routes are not affected.
        assert!(limiter.acquire("acme._.slack", 2, wait).await.is_some());
        drop(a);
        assert!(limiter.acquire("acme.ops.slack", 2, wait).await.is_some());
    }

    #[tokio::test(start_paused = true)]
    async fn a_slot_freed_while_waiting_is_taken() {
        let limiter = Arc::new(Limiter::new());
        let held = limiter.acquire("r", 1, Duration::ZERO).await;
        assert!(held.is_some());
        let waiter = {
            let limiter = limiter.clone();
            tokio::spawn(async move { limiter.acquire("r", 1, Duration::from_secs(1)).await })
        };
        tokio::time::sleep(Duration::from_millis(300)).await;
        drop(held);
        assert!(waiter.await.unwrap().is_some());
    }

    /// Holds `n` slots of `route` (limit `limit`) for `held`, then releases them counted.
    async fn hold_for(limiter: &Limiter, route: &str, limit: usize, n: usize, held: Duration) {
        let mut slots = Vec::new();
        for _ in 0..n {
            slots.push(limiter.acquire(route, limit, Duration::ZERO).await.unwrap());
        }
        tokio::time::sleep(held).await;
        drop(slots);
    }

    #[tokio::test(start_paused = true)]
    async fn a_key_whose_slots_are_held_long_has_messages_rescheduled_at_once() {
        let limiter = Arc::new(Limiter::new());
        let wait = Duration::from_millis(200);
        // Attempts of a minute: no message can expect a slot within the wait.
        hold_for(&limiter, "slow", 2, 2, Duration::from_secs(60)).await;
        let _held = [
            limiter.acquire("slow", 2, wait).await,
            limiter.acquire("slow", 2, wait).await,
        ];
        let started = tokio::time::Instant::now();
        assert!(limiter.acquire("slow", 2, wait).await.is_none());
        assert_eq!(
            started.elapsed(),
            Duration::ZERO,
            "rescheduled without waiting"
        );
        // Attempts of 160 ms with 2 slots: a slot about every 80 ms, so two wait (80 and
        // 160 ms expected), a third (240 ms) does not.
        hold_for(&limiter, "steady", 2, 2, Duration::from_millis(160)).await;
        let _held = [
            limiter.acquire("steady", 2, wait).await,
            limiter.acquire("steady", 2, wait).await,
        ];
        let waiters: Vec<_> = (0..2)
            .map(|_| {
                let limiter = limiter.clone();
                tokio::spawn(async move { limiter.acquire("steady", 2, wait).await.is_some() })
            })
            .collect();
        tokio::task::yield_now().await;
        let started = tokio::time::Instant::now();
        assert!(limiter.acquire("steady", 2, wait).await.is_none());
        assert_eq!(started.elapsed(), Duration::ZERO);
        for waiter in waiters {
            assert!(!waiter.await.unwrap(), "no slot freed within the wait");
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_burst_waits_for_a_fast_key_or_one_with_no_history() {
        let limiter = Arc::new(Limiter::new());
        let wait = Duration::from_millis(200);
        for (route, held) in [("new", None), ("fast", Some(Duration::from_millis(5)))] {
            if let Some(held) = held {
                hold_for(&limiter, route, 1, 1, held).await;
            }
            let _held = limiter.acquire(route, 1, wait).await;
            let waiters: Vec<_> = (0..5)
                .map(|_| {
                    let limiter = limiter.clone();
                    tokio::spawn(async move { limiter.acquire(route, 1, wait).await.is_some() })
                })
                .collect();
            tokio::task::yield_now().await;
            let waiting = limiter.routes.lock().unwrap()[route]
                .waiting
                .load(Ordering::Relaxed);
            assert_eq!(waiting, 5, "{route}: the whole burst waits");
            for waiter in waiters {
                waiter.await.unwrap();
            }
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_new_key_whose_first_attempts_hang_has_messages_rescheduled() {
        let limiter = Limiter::new();
        let wait = Duration::from_millis(200);
        let _held = limiter.acquire("hung", 2, wait).await;
        let _held2 = limiter.acquire("hung", 2, wait).await;
        // No hold counted yet, but both slots held for 10 s: none expected soon.
        tokio::time::sleep(Duration::from_secs(10)).await;
        let started = tokio::time::Instant::now();
        assert!(limiter.acquire("hung", 2, wait).await.is_none());
        assert_eq!(started.elapsed(), Duration::ZERO);
    }

    #[tokio::test(start_paused = true)]
    async fn a_slot_released_unused_does_not_make_a_key_look_fast() {
        let limiter = Limiter::new();
        let wait = Duration::from_millis(200);
        hold_for(&limiter, "r", 1, 1, Duration::from_secs(60)).await;
        for _ in 0..20 {
            limiter
                .acquire("r", 1, Duration::ZERO)
                .await
                .unwrap()
                .unused();
        }
        let _held = limiter.acquire("r", 1, wait).await;
        let started = tokio::time::Instant::now();
        assert!(limiter.acquire("r", 1, wait).await.is_none());
        assert_eq!(started.elapsed(), Duration::ZERO);
    }

    #[tokio::test]
    async fn a_changed_limit_takes_effect() {
        let limiter = Limiter::new();
        let _one = limiter.acquire("r", 1, Duration::ZERO).await;
        assert!(limiter.acquire("r", 1, Duration::ZERO).await.is_none());
        let _two = limiter.acquire("r", 3, Duration::ZERO).await;
        assert_eq!(limiter.available("r"), Some(2));
    }
}
