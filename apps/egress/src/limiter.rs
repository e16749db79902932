//! Per-route in-flight limits: at most a route's `max_in_flight` attempts at once, so one slow
//! route cannot take every worker slot. A message that finds no free slot within
//! `route_wait_ms` is rescheduled instead of holding a worker slot while it waits.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// One slot of a route, released on drop.
#[derive(Debug)]
pub struct Slot {
    _permit: OwnedSemaphorePermit,
}

/// The in-flight limits of every route, by route id (the route's KV key).
#[derive(Debug, Default)]
pub struct Limiter {
    routes: Mutex<HashMap<String, (usize, Arc<Semaphore>)>>,
}

impl Limiter {
    /// No routes yet; each gets its slots on first use.
    pub fn new() -> Self {
        Self::default()
    }

    /// The semaphore for `route` with `limit` slots. When a route's limit changes, a fresh
    /// semaphore replaces the old one; attempts already running on the old one finish there.
    fn semaphore(&self, route: &str, limit: usize) -> Arc<Semaphore> {
        let limit = limit.clamp(1, Semaphore::MAX_PERMITS);
        let mut routes = self.routes.lock().unwrap_or_else(PoisonError::into_inner);
        match routes.get(route) {
            Some((current, semaphore)) if *current == limit => semaphore.clone(),
            _ => {
                let semaphore = Arc::new(Semaphore::new(limit));
                routes.insert(route.to_owned(), (limit, semaphore.clone()));
                semaphore
            }
        }
    }

    /// Takes one of `route`'s `limit` slots, waiting at most `wait`; `None` if none freed up.
    pub async fn acquire(&self, route: &str, limit: usize, wait: Duration) -> Option<Slot> {
        let semaphore = self.semaphore(route, limit);
        if let Ok(permit) = semaphore.clone().try_acquire_owned() {
            return Some(Slot { _permit: permit });
        }
        match tokio::time::timeout(wait, semaphore.acquire_owned()).await {
            Ok(Ok(permit)) => Some(Slot { _permit: permit }),
            _ => None,
        }
    }

    /// Slots of `route` free right now (for tests and diagnostics).
    pub fn available(&self, route: &str) -> Option<usize> {
        let routes = self.routes.lock().unwrap_or_else(PoisonError::into_inner);
        routes.get(route).map(|(_, s)| s.available_permits())
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

    #[tokio::test]
    async fn a_changed_limit_takes_effect() {
        let limiter = Limiter::new();
        let _one = limiter.acquire("r", 1, Duration::ZERO).await;
        assert!(limiter.acquire("r", 1, Duration::ZERO).await.is_none());
        let _two = limiter.acquire("r", 3, Duration::ZERO).await;
        assert_eq!(limiter.available("r"), Some(2));
    }
}
