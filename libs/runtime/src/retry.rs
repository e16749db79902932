//! Retrying: the one place that decides *how* Switchyard waits between tries. A call site says
//! *what* it retries and which failures are worth another try; the delays — capped exponential
//! backoff with jitter, bounded by an optional wall-clock deadline, cut short by shutdown — come
//! from here, built on the `backon` crate.
//!
//! Two shapes cover every loop in the services:
//! - [`RetryPolicy::run`] retries one fallible call until it succeeds, fails with an error the
//!   call site calls permanent, the deadline passes, or shutdown is requested.
//! - [`Backoff`] is the delay sequence itself, for loops that are not "one call" (a consume loop
//!   whose fetch fails, a watch that ends and is re-created, a message held in place with
//!   progress acks): [`Backoff::wait`] sleeps for the next delay, and [`Backoff::reset`] starts
//!   over after a success.
//! - [`poll`] reads something every interval (a stream's fill, a scan) and retries a read that
//!   fails on [`RetryPolicy::INFRASTRUCTURE`] in between.

use std::future::Future;
use std::time::Duration;

use backon::{BackoffBuilder, ExponentialBackoff, ExponentialBuilder};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// How a failing operation is retried: delays start at `first`, double up to `max` (each with up
/// to 100 % random jitter added, so replicas do not retry in lockstep), and stop once `deadline`
/// has passed since the first try (`None`: until shutdown).
///
/// Invariant: `first` ≤ `max`; a zero `first` is raised to 1 ms so a loop never spins.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    /// The first delay.
    pub first: Duration,
    /// The largest delay (before jitter).
    pub max: Duration,
    /// Wall-clock bound on retrying, counted from the first try; `None` retries until shutdown.
    pub deadline: Option<Duration>,
}

impl RetryPolicy {
    /// Our own infrastructure (a NATS request, a KV write, a fetch, a watch) failing: 100 ms
    /// doubling to 5 s, until shutdown.
    pub const INFRASTRUCTURE: RetryPolicy = RetryPolicy {
        first: Duration::from_millis(100),
        max: Duration::from_secs(5),
        deadline: None,
    };

    /// A policy with these delays and no deadline.
    pub const fn new(first: Duration, max: Duration) -> Self {
        Self {
            first,
            max,
            deadline: None,
        }
    }

    /// The same delays, giving up once `deadline` has passed since the first try.
    pub const fn within(self, deadline: Duration) -> Self {
        Self {
            deadline: Some(deadline),
            ..self
        }
    }

    /// A fresh delay sequence; its deadline counts from now.
    pub fn backoff(&self) -> Backoff {
        Backoff::new(*self)
    }

    /// Runs `op` until it succeeds, or fails with an error `retryable` rejects, or the policy's
    /// deadline passes, or `shutdown` is cancelled; `on_retry` is told each error that will be
    /// tried again and the delay before the next try (for the log).
    ///
    /// Errors: the last error of `op` when giving up, whatever the reason.
    pub async fn run<T, E, F, Fut>(
        &self,
        shutdown: &CancellationToken,
        mut op: F,
        mut retryable: impl FnMut(&E) -> bool,
        mut on_retry: impl FnMut(&E, Duration),
    ) -> Result<T, E>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, E>>,
    {
        let mut backoff = self.backoff();
        loop {
            let error = match op().await {
                Ok(value) => return Ok(value),
                Err(error) => error,
            };
            if !retryable(&error) {
                return Err(error);
            }
            let Some(delay) = backoff.next_delay() else {
                return Err(error);
            };
            on_retry(&error, delay);
            tokio::select! {
                _ = shutdown.cancelled() => return Err(error),
                _ = tokio::time::sleep(delay) => {}
            }
        }
    }
}

/// A sequence of retry delays from a [`RetryPolicy`], with the deadline counted from when it was
/// made (or last [reset](Backoff::reset)).
#[derive(Debug)]
pub struct Backoff {
    policy: RetryPolicy,
    delays: ExponentialBackoff,
    started: Instant,
}

impl Backoff {
    fn new(policy: RetryPolicy) -> Self {
        let first = policy.first.max(Duration::from_millis(1));
        let delays = ExponentialBuilder::new()
            .with_min_delay(first)
            .with_max_delay(policy.max.max(first))
            .with_factor(2.0)
            .with_jitter()
            .without_max_times()
            .build();
        Self {
            policy,
            delays,
            started: Instant::now(),
        }
    }

    /// The next delay, or `None` once the deadline has passed. The last delay is cut so it ends
    /// at the deadline.
    pub fn next_delay(&mut self) -> Option<Duration> {
        let delay = self.delays.next()?;
        match self.policy.deadline {
            None => Some(delay),
            Some(deadline) => {
                let left = deadline.checked_sub(self.started.elapsed())?;
                (!left.is_zero()).then(|| delay.min(left))
            }
        }
    }

    /// Sleeps for the next delay. Returns `false` without sleeping once the deadline has passed,
    /// and `false` as soon as `shutdown` is cancelled; `true` when the caller should try again.
    pub async fn wait(&mut self, shutdown: &CancellationToken) -> bool {
        let Some(delay) = self.next_delay() else {
            return false;
        };
        tokio::select! {
            _ = shutdown.cancelled() => false,
            _ = tokio::time::sleep(delay) => true,
        }
    }

    /// How long since the sequence started (or was last reset).
    pub fn elapsed(&self) -> Duration {
        self.started.elapsed()
    }

    /// Starts over (after a success): the next delay is the first again, the deadline counts
    /// from now.
    pub fn reset(&mut self) {
        *self = Self::new(self.policy);
    }
}

/// Reads with `read` every `every` until `shutdown`, handing each result to `apply`. A read
/// that fails is logged (`what` says what was read) and tried again after the next delay of
/// [`RetryPolicy::INFRASTRUCTURE`] rather than `every`; a success resets that sequence.
pub async fn poll<T, E, F, Fut>(
    every: Duration,
    shutdown: &CancellationToken,
    what: &str,
    mut read: F,
    mut apply: impl FnMut(T),
) where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, E>>,
    E: std::fmt::Display,
{
    let mut backoff = RetryPolicy::INFRASTRUCTURE.backoff();
    loop {
        match read().await {
            Ok(value) => {
                backoff.reset();
                apply(value);
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = tokio::time::sleep(every) => {}
                }
            }
            Err(error) => {
                tracing::warn!(%error, "{what} failed; retrying");
                if !backoff.wait(shutdown).await {
                    return;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn delays_double_up_to_the_cap_with_at_most_full_jitter() {
        let mut backoff = RetryPolicy::new(100 * MS, 800 * MS).backoff();
        let bases = [100, 200, 400, 800, 800, 800];
        for base in bases {
            let delay = backoff.next_delay().expect("no deadline");
            assert!(
                delay >= base * MS && delay <= 2 * base * MS,
                "{delay:?} for base {base} ms"
            );
        }
    }

    #[tokio::test(start_paused = true)]
    async fn the_deadline_is_wall_clock_and_the_last_delay_ends_on_it() {
        let policy = RetryPolicy::new(Duration::from_secs(1), Duration::from_secs(1))
            .within(Duration::from_millis(2500));
        let shutdown = CancellationToken::new();
        let started = Instant::now();
        let mut backoff = policy.backoff();
        let mut waits = 0;
        while backoff.wait(&shutdown).await {
            waits += 1;
        }
        assert!(waits >= 2, "{waits}");
        assert_eq!(started.elapsed(), Duration::from_millis(2500));
        backoff.reset();
        assert!(
            backoff.next_delay().is_some(),
            "reset starts a new deadline"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn run_stops_on_success_on_a_permanent_error_and_at_the_deadline() {
        let shutdown = CancellationToken::new();
        let policy = RetryPolicy::new(10 * MS, 10 * MS).within(Duration::from_secs(1));

        let mut tries = 0;
        let ok: Result<u32, &str> = policy
            .run(
                &shutdown,
                || {
                    tries += 1;
                    let result = if tries < 3 {
                        Err("transient")
                    } else {
                        Ok(tries)
                    };
                    async move { result }
                },
                |_| true,
                |_, _| {},
            )
            .await;
        assert_eq!(ok, Ok(3));

        let mut tries = 0;
        let permanent: Result<(), &str> = policy
            .run(
                &shutdown,
                || {
                    tries += 1;
                    async { Err("permanent") }
                },
                |e| *e != "permanent",
                |_, _| {},
            )
            .await;
        assert_eq!((permanent, tries), (Err("permanent"), 1));

        let started = Instant::now();
        let mut retried = 0;
        let gave_up: Result<(), &str> = policy
            .run(
                &shutdown,
                || async { Err("down") },
                |_| true,
                |_, _| retried += 1,
            )
            .await;
        assert_eq!(gave_up, Err("down"));
        assert!(retried > 10, "{retried}");
        assert!(
            started.elapsed() <= Duration::from_millis(1001),
            "{:?}",
            started.elapsed()
        );
    }

    #[tokio::test(start_paused = true)]
    async fn shutdown_ends_the_wait_at_once() {
        let shutdown = CancellationToken::new();
        shutdown.cancel();
        let started = Instant::now();
        let mut backoff = RetryPolicy::INFRASTRUCTURE.backoff();
        assert!(!backoff.wait(&shutdown).await);
        assert_eq!(started.elapsed(), Duration::ZERO);
    }
}
