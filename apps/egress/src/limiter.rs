//! Per-route (and per-tenant) in-flight limits: at most a key's `limit` attempts at once, so
//! one slow route or tenant cannot take every worker slot. A message that finds no free slot
//! within `route_wait_ms` is rescheduled instead of holding a worker slot while it waits. More
//! than `limit` messages wait for a key's slots at once only while its slots turn over (one
//! was released within the last wait): a slow key's messages — whose waits would end without a
//! slot — hold at most twice its limit of the worker's slots, attempting and waiting together,
//! however many of them the stream holds, while a fast key's burst waits its few milliseconds
//! rather than being rescheduled.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;

/// One slot of a route, released on drop.
#[derive(Debug)]
pub struct Slot {
    _permit: OwnedSemaphorePermit,
    released: Arc<Mutex<Option<Instant>>>,
}

impl Drop for Slot {
    fn drop(&mut self) {
        *self.released.lock().unwrap_or_else(PoisonError::into_inner) = Some(Instant::now());
    }
}

/// One key's slots and how many messages wait for one now.
#[derive(Debug)]
struct Slots {
    limit: usize,
    semaphore: Arc<Semaphore>,
    waiting: Arc<AtomicUsize>,
    /// When a slot was last released.
    released: Arc<Mutex<Option<Instant>>>,
}

/// What [`Limiter::acquire`] works with for one key.
struct Handles {
    semaphore: Arc<Semaphore>,
    waiting: Arc<AtomicUsize>,
    released: Arc<Mutex<Option<Instant>>>,
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

    /// The semaphore, waiting count and last release for `route` with `limit` slots. When a
    /// route's limit changes, a fresh semaphore replaces the old one; attempts already running
    /// on the old one finish there.
    fn slots(&self, route: &str, limit: usize) -> Handles {
        let limit = limit.clamp(1, Semaphore::MAX_PERMITS);
        let mut routes = self.routes.lock().unwrap_or_else(PoisonError::into_inner);
        if routes.get(route).is_none_or(|slots| slots.limit != limit) {
            let slots = Slots {
                limit,
                semaphore: Arc::new(Semaphore::new(limit)),
                waiting: Arc::new(AtomicUsize::new(0)),
                released: Arc::new(Mutex::new(None)),
            };
            routes.insert(route.to_owned(), slots);
        }
        let slots = &routes[route];
        Handles {
            semaphore: slots.semaphore.clone(),
            waiting: slots.waiting.clone(),
            released: slots.released.clone(),
        }
    }

    /// Takes one of `route`'s `limit` slots, waiting at most `wait`; `None` if none freed up,
    /// and at once when `limit` messages already wait for one and no slot was released within
    /// the last `wait` (the slots are held long: this wait would end without one too, and it
    /// holds a worker slot meanwhile).
    pub async fn acquire(&self, route: &str, limit: usize, wait: Duration) -> Option<Slot> {
        let Handles {
            semaphore,
            waiting,
            released,
        } = self.slots(route, limit);
        if let Ok(permit) = semaphore.clone().try_acquire_owned() {
            return Some(Slot {
                _permit: permit,
                released,
            });
        }
        let turning_over = released
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .is_some_and(|at| at.elapsed() < wait);
        if waiting.fetch_add(1, Ordering::Relaxed) >= limit.max(1) && !turning_over {
            waiting.fetch_sub(1, Ordering::Relaxed);
            return None;
        }
        let _waiting = Waiting(waiting);
        match tokio::time::timeout(wait, semaphore.acquire_owned()).await {
            Ok(Ok(permit)) => Some(Slot {
                _permit: permit,
                released,
            }),
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

    #[tokio::test(start_paused = true)]
    async fn no_more_messages_wait_for_a_routes_slots_than_it_has() {
        let limiter = Arc::new(Limiter::new());
        let wait = Duration::from_millis(200);
        let _held = [
            limiter.acquire("r", 2, wait).await,
            limiter.acquire("r", 2, wait).await,
        ];
        let waiters: Vec<_> = (0..2)
            .map(|_| {
                let limiter = limiter.clone();
                tokio::spawn(async move { limiter.acquire("r", 2, wait).await.is_some() })
            })
            .collect();
        tokio::task::yield_now().await;
        // Two wait already: a third gives up at once, without waiting.
        let started = tokio::time::Instant::now();
        assert!(limiter.acquire("r", 2, wait).await.is_none());
        assert_eq!(started.elapsed(), Duration::ZERO);
        for waiter in waiters {
            assert!(!waiter.await.unwrap(), "no slot freed within the wait");
        }
        // The waits over, a message may wait again.
        let started = tokio::time::Instant::now();
        assert!(limiter.acquire("r", 2, wait).await.is_none());
        assert_eq!(started.elapsed(), wait);
    }

    #[tokio::test(start_paused = true)]
    async fn while_a_routes_slots_turn_over_more_may_wait_for_them() {
        let limiter = Arc::new(Limiter::new());
        let wait = Duration::from_millis(200);
        let first = limiter.acquire("r", 1, wait).await;
        drop(first);
        let _held = limiter.acquire("r", 1, wait).await;
        // A slot was released just now: a burst waits, beyond the one waiter a slow key gets.
        let waiters: Vec<_> = (0..3)
            .map(|_| {
                let limiter = limiter.clone();
                tokio::spawn(async move { limiter.acquire("r", 1, wait).await })
            })
            .collect();
        tokio::task::yield_now().await;
        assert_eq!(limiter.slots("r", 1).waiting.load(Ordering::Relaxed), 3);
        for waiter in waiters {
            assert!(waiter.await.unwrap().is_none());
        }
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
