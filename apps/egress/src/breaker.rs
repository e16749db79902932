//! Per-route circuit breakers: stop hammering a route that is down, without burning the retry
//! budget of the messages waiting for it.
//!
//! - **closed**: attempts pass; `threshold` consecutive retryable failures open the breaker,
//!   and so does a failure rate: at least `failure_rate` of the last `window` attempts (once
//!   `window` attempts were seen since the breaker last changed) — a sink that fails every other
//!   request never makes `threshold` failures in a row, yet is down for half the messages.
//! - **open** for a period (`open`, doubling with each consecutive re-open up to `max_open`):
//!   nothing is attempted; messages are rescheduled to come back when it half-opens.
//! - **half-open**: one message is let through as a probe while the others wait a moment. A
//!   probe that delivers (or gets a permanent answer: the route is up) closes the breaker; a
//!   probe that fails opens it again for twice as long.
//!
//! Messages told to wait (held by the breaker, or deferred because the route or the tenant had
//! no free slot) are not all sent back at the same moment: [`Breakers::release_at`] gives each
//! its own slot in a per-route queue, at most one per `spacing`, so a held route costs a bounded
//! number of republishes per second however many messages wait for it.
//!
//! Time is passed in, so the state machine is tested without waiting.

use std::collections::HashMap;
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use tokio::time::Instant;

/// How long other messages wait while a half-open breaker's probe is in flight.
pub const PROBE_WAIT: Duration = Duration::from_secs(1);

/// A probe in flight for longer than this is presumed lost and another one is let through
/// (a route's timeout is at most 300 s; the probe's task reports long before this).
pub const PROBE_STALE: Duration = Duration::from_secs(360);

/// Messages held by a route's open breaker come back at most one per this (per route, per egress
/// replica): 4 a second, 240 a minute, until the queue spans the longest open period.
pub const HOLD_SPACING: Duration = Duration::from_millis(250);

/// A busy route's (or tenant's) deferred messages are spread over at most this much time.
pub const BUSY_MAX_SPREAD: Duration = Duration::from_secs(30);

/// How one kind of wait spreads the messages of a route over time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Spread {
    /// At most one message comes back per this much time.
    pub spacing: Duration,
    /// No message waits more than this past its earliest time; beyond it messages are spread
    /// at random over this span (and come back more often than one per `spacing`).
    pub max: Duration,
}

/// Breaker tuning, shared by every route.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BreakerSettings {
    /// Consecutive retryable failures that open the breaker.
    pub threshold: u32,
    /// The first open period.
    pub open: Duration,
    /// The longest open period.
    pub max_open: Duration,
    /// The share of failures among the last `window` attempts that opens the breaker, in
    /// (0, 1]; 0 turns the rate rule off.
    pub failure_rate: f64,
    /// How many recent attempts the rate is computed over (1 to [`MAX_WINDOW`]).
    pub window: u32,
}

/// The longest window of the failure-rate rule (the attempts are kept as bits of a `u64`).
pub const MAX_WINDOW: u32 = 64;

impl BreakerSettings {
    /// The open period after `reopenings` consecutive re-opens: `open · 2^reopenings`, capped.
    pub fn open_period(&self, reopenings: u32) -> Duration {
        let factor = 2u32.saturating_pow(reopenings.min(31));
        self.open.saturating_mul(factor).min(self.max_open)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Closed { failures: u32 },
    Open { until: Instant },
    HalfOpen { probe_since: Option<Instant> },
}

/// Whether an attempt may go ahead.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admission {
    /// The breaker is closed.
    Pass,
    /// The breaker is half-open and this attempt is its probe: report its result.
    Probe,
    /// Not now: come back at `until`.
    Wait {
        /// When to come back.
        until: Instant,
    },
}

/// A state change worth a log line and a metric.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change {
    /// Nothing changed.
    None,
    /// A closed breaker opened for `period`.
    Opened {
        /// How long it stays open.
        period: Duration,
    },
    /// A failed probe opened the breaker again for `period`.
    Reopened {
        /// How long it stays open.
        period: Duration,
    },
    /// The breaker closed again.
    Closed,
}

/// An open breaker as the `breakers` bucket shows it (another replica's, or this one's own
/// write coming back), its times on this process's clock.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Shared {
    /// Until when nothing is attempted.
    pub until: Instant,
    /// When the route went down.
    pub down_since: Instant,
    /// Failed probes since it opened.
    pub reopenings: u32,
}

/// What taking the shared state did to this replica's breaker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Adopted {
    /// Its state did not change between closed and open (an open period may have moved).
    Unchanged,
    /// A closed breaker opened: another replica found the route down.
    Opened,
    /// An open breaker closed: another replica's probe was answered.
    Closed,
}

/// One route's breaker.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Breaker {
    state: State,
    reopenings: u32,
    /// When it last opened from closed: the route has been down since (until it closes).
    down_since: Option<Instant>,
    /// The outcomes of the last attempts while closed, newest in bit 0 (1: a failure).
    recent: u64,
    /// How many of `recent`'s bits hold an outcome (at most the window).
    samples: u32,
}

impl Default for Breaker {
    fn default() -> Self {
        Self {
            state: State::Closed { failures: 0 },
            reopenings: 0,
            down_since: None,
            recent: 0,
            samples: 0,
        }
    }
}

impl Breaker {
    /// Whether the breaker is open or half-open.
    pub fn is_open(&self) -> bool {
        !matches!(self.state, State::Closed { .. })
    }

    /// Decides whether an attempt may go ahead at `now`.
    pub fn admit(&mut self, now: Instant) -> Admission {
        match self.state {
            State::Closed { .. } => Admission::Pass,
            State::Open { until } if now < until => Admission::Wait { until },
            State::HalfOpen {
                probe_since: Some(since),
            } if now.saturating_duration_since(since) < PROBE_STALE => Admission::Wait {
                until: now + PROBE_WAIT,
            },
            State::Open { .. } | State::HalfOpen { .. } => {
                self.state = State::HalfOpen {
                    probe_since: Some(now),
                };
                Admission::Probe
            }
        }
    }

    /// When a message arriving at `now` would certainly be told to wait (open, or a probe in
    /// flight), until when; changes nothing. Lets a message skip waiting for a route slot.
    pub fn peek(&self, now: Instant) -> Option<Instant> {
        match self.state {
            State::Open { until } if now < until => Some(until),
            State::HalfOpen {
                probe_since: Some(since),
            } if now.saturating_duration_since(since) < PROBE_STALE => Some(now + PROBE_WAIT),
            _ => None,
        }
    }

    /// How long the route has been down at `now`: since its breaker opened from closed, while
    /// it has not closed again (re-opens keep counting). `None` while closed.
    pub fn down_for(&self, now: Instant) -> Option<Duration> {
        self.down_since
            .map(|since| now.saturating_duration_since(since))
    }

    /// This breaker's state for the other replicas: `Some` while open or half-open (until
    /// when nothing is attempted, since when the route is down, failed probes), `None` while
    /// closed.
    pub fn shared(&self, now: Instant) -> Option<Shared> {
        let down_since = self.down_since?;
        let until = match self.state {
            State::Closed { .. } => return None,
            State::Open { until } => until,
            State::HalfOpen { .. } => now,
        };
        Some(Shared {
            until,
            down_since,
            reopenings: self.reopenings,
        })
    }

    /// Takes the state every replica shares: open until `shared.until` (`Some`), or closed
    /// (`None`: the record was deleted, a probe was answered somewhere). The last write wins,
    /// except that a record whose open period is already over changes nothing: it neither
    /// opens a closed breaker (the next attempt finds out) nor cuts short a probe of this
    /// replica's own in flight (its answer decides, here and everywhere).
    pub fn adopt(&mut self, shared: Option<Shared>, now: Instant) -> Adopted {
        match shared {
            Some(shared) => {
                if shared.until <= now && !matches!(self.state, State::Open { .. }) {
                    return Adopted::Unchanged;
                }
                let opened = !self.is_open();
                self.state = State::Open {
                    until: shared.until,
                };
                self.down_since = Some(
                    self.down_since
                        .map_or(shared.down_since, |own| own.min(shared.down_since)),
                );
                self.reopenings = shared.reopenings;
                if opened {
                    self.forget_recent();
                    Adopted::Opened
                } else {
                    Adopted::Unchanged
                }
            }
            None if self.is_open() => {
                *self = Breaker::default();
                Adopted::Closed
            }
            None => Adopted::Unchanged,
        }
    }

    /// Records an attempt's outcome while closed (the window is kept up to [`MAX_WINDOW`]).
    fn remember(&mut self, failed: bool) {
        self.recent = (self.recent << 1) | u64::from(failed);
        self.samples = self.samples.saturating_add(1).min(MAX_WINDOW);
    }

    fn forget_recent(&mut self) {
        self.recent = 0;
        self.samples = 0;
    }

    /// Whether the last `window` attempts (all of them seen) failed at `failure_rate` or more.
    fn rate_exceeded(&self, settings: &BreakerSettings) -> bool {
        let window = settings.window.clamp(1, MAX_WINDOW);
        if settings.failure_rate <= 0.0 || self.samples < window {
            return false;
        }
        let mask = if window == 64 {
            u64::MAX
        } else {
            (1u64 << window) - 1
        };
        let failures = (self.recent & mask).count_ones();
        f64::from(failures) >= settings.failure_rate * f64::from(window)
    }

    /// The route answered (delivered, or refused for good: either way it is up).
    pub fn succeeded(&mut self) -> Change {
        let was_open = self.is_open();
        self.state = State::Closed { failures: 0 };
        self.reopenings = 0;
        self.down_since = None;
        if was_open {
            self.forget_recent();
        } else {
            self.remember(false);
        }
        if was_open {
            Change::Closed
        } else {
            Change::None
        }
    }

    /// An attempt failed in a way that may pass later.
    pub fn failed(&mut self, now: Instant, settings: &BreakerSettings) -> Change {
        match self.state {
            State::Closed { failures } => {
                let failures = failures.saturating_add(1);
                self.remember(true);
                if failures >= settings.threshold || self.rate_exceeded(settings) {
                    self.forget_recent();
                    let period = settings.open_period(0);
                    self.state = State::Open {
                        until: now + period,
                    };
                    self.reopenings = 0;
                    self.down_since = Some(now);
                    Change::Opened { period }
                } else {
                    self.state = State::Closed { failures };
                    Change::None
                }
            }
            State::HalfOpen { .. } => {
                self.reopenings = self.reopenings.saturating_add(1);
                let period = settings.open_period(self.reopenings);
                self.state = State::Open {
                    until: now + period,
                };
                Change::Reopened { period }
            }
            // An attempt that started before the breaker opened: already accounted for.
            State::Open { .. } => Change::None,
        }
    }
}

/// The breakers of every route, by route id (the route's KV key), and the queue of messages
/// waiting for each.
#[derive(Debug)]
pub struct Breakers {
    settings: BreakerSettings,
    routes: Mutex<HashMap<String, Breaker>>,
    /// Per route: the first free release slot of its waiting messages.
    queues: Mutex<HashMap<String, Instant>>,
}

impl Breakers {
    /// No breakers yet; each route gets one on first use.
    pub fn new(settings: BreakerSettings) -> Self {
        Self {
            settings,
            routes: Mutex::new(HashMap::new()),
            queues: Mutex::new(HashMap::new()),
        }
    }

    /// The spread of messages held by an open breaker: [`HOLD_SPACING`], up to the longest
    /// open period.
    pub fn hold_spread(&self) -> Spread {
        Spread {
            spacing: HOLD_SPACING,
            max: self.settings.max_open,
        }
    }

    /// When a message of `route` that may come back at `earliest` is released: the route's
    /// next free slot at or after `earliest` (slots are `spread.spacing` apart), plus up to one
    /// spacing of jitter (`unit` in `[0, 1)`). Once the queue reaches `spread.max` past
    /// `earliest`, the message gets a random time within `spread.max` instead and the queue
    /// does not grow.
    pub fn release_at(&self, route: &str, earliest: Instant, spread: Spread, unit: f64) -> Instant {
        let unit = unit.clamp(0.0, 1.0);
        let mut queues = self.queues.lock().unwrap_or_else(PoisonError::into_inner);
        let next = queues.entry(route.to_owned()).or_insert(earliest);
        let slot = (*next).max(earliest);
        if slot.saturating_duration_since(earliest) >= spread.max {
            return earliest + spread.max.mul_f64(unit);
        }
        *next = slot + spread.spacing;
        slot + spread.spacing.mul_f64(unit)
    }

    fn with<T>(&self, route: &str, f: impl FnOnce(&mut Breaker) -> T) -> T {
        let mut routes = self.routes.lock().unwrap_or_else(PoisonError::into_inner);
        match routes.get_mut(route) {
            Some(breaker) => f(breaker),
            None => f(routes.entry(route.to_owned()).or_default()),
        }
    }

    /// [`Breaker::admit`] for `route`.
    pub fn admit(&self, route: &str, now: Instant) -> Admission {
        self.with(route, |b| b.admit(now))
    }

    /// [`Breaker::peek`] for `route`.
    pub fn peek(&self, route: &str, now: Instant) -> Option<Instant> {
        self.with(route, |b| b.peek(now))
    }

    /// [`Breaker::down_for`] for `route`.
    pub fn down_for(&self, route: &str, now: Instant) -> Option<Duration> {
        self.with(route, |b| b.down_for(now))
    }

    /// Forgets `route`'s breaker (closed, no failures): for a destination that was disabled,
    /// whose parked messages must not wait for an old open period once it is enabled again.
    /// Returns whether it was open.
    pub fn reset(&self, route: &str) -> bool {
        self.with(route, |b| {
            let was_open = b.is_open();
            *b = Breaker::default();
            was_open
        })
    }

    /// [`Breaker::shared`] for `route`.
    pub fn shared(&self, route: &str, now: Instant) -> Option<Shared> {
        self.with(route, |b| b.shared(now))
    }

    /// [`Breaker::adopt`] for `route`, the shared state bounded first: open at most the
    /// longest open period from `now`, down since no later than `now` (a record from a skewed
    /// clock or written by hand cannot hold a route longer than a breaker of this replica's
    /// own would). A route this replica never saw gets a breaker only when the shared state
    /// is open.
    pub fn adopt(&self, route: &str, shared: Option<Shared>, now: Instant) -> Adopted {
        let shared = shared.map(|s| Shared {
            until: s.until.min(now + self.settings.max_open),
            down_since: s.down_since.min(now),
            reopenings: s.reopenings,
        });
        let mut routes = self.routes.lock().unwrap_or_else(PoisonError::into_inner);
        match (routes.get_mut(route), shared) {
            (Some(breaker), shared) => breaker.adopt(shared, now),
            (None, None) => Adopted::Unchanged,
            (None, Some(shared)) => routes
                .entry(route.to_owned())
                .or_default()
                .adopt(Some(shared), now),
        }
    }

    /// The routes whose breakers are open or half-open here.
    pub fn open_routes(&self) -> Vec<String> {
        let routes = self.routes.lock().unwrap_or_else(PoisonError::into_inner);
        routes
            .iter()
            .filter(|(_, b)| b.is_open())
            .map(|(id, _)| id.clone())
            .collect()
    }

    /// [`Breaker::succeeded`] for `route`.
    pub fn succeeded(&self, route: &str) -> Change {
        self.with(route, Breaker::succeeded)
    }

    /// [`Breaker::failed`] for `route`.
    pub fn failed(&self, route: &str, now: Instant) -> Change {
        self.with(route, |b| b.failed(now, &self.settings))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SETTINGS: BreakerSettings = BreakerSettings {
        threshold: 3,
        open: Duration::from_secs(30),
        max_open: Duration::from_secs(100),
        failure_rate: 0.0,
        window: 20,
    };

    #[test]
    fn a_failure_rate_over_the_window_opens_a_breaker_no_run_of_failures_would() {
        let settings = BreakerSettings {
            failure_rate: 0.5,
            window: 10,
            ..SETTINGS
        };
        let t0 = Instant::now();
        let mut b = Breaker::default();
        // Every other attempt fails: never three in a row, but half of every ten.
        let mut opened = None;
        for i in 0..20 {
            let change = if i % 2 == 0 {
                b.failed(t0, &settings)
            } else {
                b.succeeded()
            };
            if change != Change::None {
                opened = Some((i, change));
                break;
            }
        }
        assert_eq!(
            opened,
            Some((10, Change::Opened { period: secs(30) })),
            "the first failure with ten attempts seen, five of them failed"
        );
        // One in three failing stays closed, however long it runs.
        let mut b = Breaker::default();
        for i in 0..200 {
            let change = if i % 3 == 0 {
                b.failed(t0, &settings)
            } else {
                b.succeeded()
            };
            assert_eq!(change, Change::None, "attempt {i}");
        }
        // Off: the same alternation never opens it.
        let mut b = Breaker::default();
        for i in 0..100 {
            if i % 2 == 0 {
                assert_eq!(b.failed(t0, &SETTINGS), Change::None);
            } else {
                b.succeeded();
            }
        }
        // A window of 64 works too.
        let wide = BreakerSettings {
            failure_rate: 1.0,
            window: MAX_WINDOW,
            threshold: 1000,
            ..SETTINGS
        };
        let mut b = Breaker::default();
        for _ in 0..63 {
            assert_eq!(b.failed(t0, &wide), Change::None);
        }
        assert_eq!(b.failed(t0, &wide), Change::Opened { period: secs(30) });
    }

    fn secs(s: u64) -> Duration {
        Duration::from_secs(s)
    }

    #[test]
    fn open_periods_double_up_to_the_cap() {
        assert_eq!(SETTINGS.open_period(0), secs(30));
        assert_eq!(SETTINGS.open_period(1), secs(60));
        assert_eq!(SETTINGS.open_period(2), secs(100));
        assert_eq!(SETTINGS.open_period(40), secs(100));
    }

    #[test]
    fn a_route_is_down_from_its_first_opening_through_reopenings_until_it_closes() {
        let t0 = Instant::now();
        let b = Breakers::new(SETTINGS);
        for _ in 0..3 {
            b.failed("acme.crm", t0);
        }
        assert_eq!(b.down_for("acme.crm", t0 + secs(5)), Some(secs(5)));
        assert_eq!(b.admit("acme.crm", t0 + secs(30)), Admission::Probe);
        assert_eq!(
            b.failed("acme.crm", t0 + secs(31)),
            Change::Reopened { period: secs(60) }
        );
        assert_eq!(b.down_for("acme.crm", t0 + secs(40)), Some(secs(40)));
        assert_eq!(b.down_for("acme.other", t0), None);
        b.reset("acme.crm");
        assert_eq!(b.down_for("acme.crm", t0 + secs(41)), None);
        assert_eq!(b.admit("acme.crm", t0 + secs(41)), Admission::Pass);
        for _ in 0..3 {
            b.failed("acme.crm", t0 + secs(50));
        }
        assert_eq!(b.succeeded("acme.crm"), Change::Closed);
        assert_eq!(b.down_for("acme.crm", t0 + secs(60)), None);
    }

    #[test]
    fn opens_after_the_threshold_of_consecutive_failures() {
        let t0 = Instant::now();
        let mut b = Breaker::default();
        assert_eq!(b.failed(t0, &SETTINGS), Change::None);
        assert_eq!(b.failed(t0, &SETTINGS), Change::None);
        assert_eq!(b.admit(t0), Admission::Pass);
        assert_eq!(b.peek(t0), None);
        assert_eq!(b.failed(t0, &SETTINGS), Change::Opened { period: secs(30) });
        assert!(b.is_open());
        assert_eq!(b.peek(t0), Some(t0 + secs(30)));
        assert_eq!(
            b.admit(t0 + secs(29)),
            Admission::Wait {
                until: t0 + secs(30)
            }
        );
        // A late failure of an attempt that started before the breaker opened changes nothing.
        assert_eq!(b.failed(t0 + secs(1), &SETTINGS), Change::None);
        assert_eq!(
            b.admit(t0 + secs(29)),
            Admission::Wait {
                until: t0 + secs(30)
            }
        );
    }

    #[test]
    fn a_success_resets_the_failure_count() {
        let t0 = Instant::now();
        let mut b = Breaker::default();
        b.failed(t0, &SETTINGS);
        b.failed(t0, &SETTINGS);
        assert_eq!(b.succeeded(), Change::None);
        b.failed(t0, &SETTINGS);
        b.failed(t0, &SETTINGS);
        assert!(!b.is_open());
    }

    #[test]
    fn half_open_lets_one_probe_through_and_a_failed_probe_reopens_for_longer() {
        let t0 = Instant::now();
        let mut b = Breaker::default();
        for _ in 0..3 {
            b.failed(t0, &SETTINGS);
        }
        let t1 = t0 + secs(30);
        assert_eq!(b.peek(t1), None);
        assert_eq!(b.admit(t1), Admission::Probe);
        assert_eq!(b.peek(t1), Some(t1 + PROBE_WAIT));
        assert_eq!(
            b.admit(t1),
            Admission::Wait {
                until: t1 + PROBE_WAIT
            }
        );
        assert_eq!(
            b.failed(t1, &SETTINGS),
            Change::Reopened { period: secs(60) }
        );
        assert_eq!(
            b.admit(t1 + secs(59)),
            Admission::Wait {
                until: t1 + secs(60)
            }
        );
        let t2 = t1 + secs(60);
        assert_eq!(b.admit(t2), Admission::Probe);
        assert_eq!(
            b.failed(t2, &SETTINGS),
            Change::Reopened { period: secs(100) }
        );
        let t3 = t2 + secs(100);
        assert_eq!(b.admit(t3), Admission::Probe);
        assert_eq!(b.succeeded(), Change::Closed);
        assert_eq!(b.admit(t3), Admission::Pass);
        // After closing, the next open period starts from the beginning again.
        for _ in 0..3 {
            b.failed(t3, &SETTINGS);
        }
        assert_eq!(
            b.admit(t3 + secs(29)),
            Admission::Wait {
                until: t3 + secs(30)
            }
        );
    }

    #[test]
    fn a_lost_probe_lets_another_message_probe() {
        let t0 = Instant::now();
        let mut b = Breaker::default();
        for _ in 0..3 {
            b.failed(t0, &SETTINGS);
        }
        let t1 = t0 + secs(30);
        assert_eq!(b.admit(t1), Admission::Probe);
        assert!(matches!(b.admit(t1 + secs(10)), Admission::Wait { .. }));
        assert_eq!(b.admit(t1 + PROBE_STALE), Admission::Probe);
    }

    #[test]
    fn held_messages_get_their_own_slots_at_most_one_per_spacing() {
        let t0 = Instant::now();
        let breakers = Breakers::new(SETTINGS);
        let spread = Spread {
            spacing: Duration::from_millis(250),
            max: secs(100),
        };
        let until = t0 + secs(30);
        // 40 messages held at once until the half-open time: one slot each, 250 ms apart.
        let mut at: Vec<Instant> = (0..40)
            .map(|i| breakers.release_at("acme.ops.slack", until, spread, f64::from(i) / 40.0))
            .collect();
        at.sort();
        assert!(at[0] >= until && at[39] < until + secs(10) + Duration::from_millis(250));
        for second in 0..11 {
            let from = until + secs(second);
            let within = at
                .iter()
                .filter(|t| **t >= from && **t < from + secs(1))
                .count();
            assert!(within <= 5, "{within} released in second {second}");
        }
        // A message re-held while a probe is in flight joins the end of the queue.
        let again = breakers.release_at("acme.ops.slack", until + secs(1), spread, 0.0);
        assert_eq!(again, until + secs(10));
        // Another route has its own queue.
        assert_eq!(
            breakers.release_at("acme._.slack", until, spread, 0.0),
            until
        );
        // Once a queue is past its span, messages are spread over the span instead.
        let short = Spread {
            spacing: secs(1),
            max: secs(5),
        };
        for _ in 0..5 {
            breakers.release_at("globex.ops.slack", t0, short, 0.5);
        }
        assert_eq!(
            breakers.release_at("globex.ops.slack", t0, short, 0.5),
            t0 + Duration::from_millis(2500)
        );
        // A queue whose slots are all past starts again from the earliest time.
        assert_eq!(
            breakers.release_at("globex.ops.slack", t0 + secs(60), short, 0.0),
            t0 + secs(60)
        );
    }

    #[test]
    fn routes_have_separate_breakers() {
        let t0 = Instant::now();
        let breakers = Breakers::new(SETTINGS);
        for _ in 0..3 {
            breakers.failed("acme.ops.slack", t0);
        }
        assert!(matches!(
            breakers.admit("acme.ops.slack", t0),
            Admission::Wait { .. }
        ));
        assert_eq!(breakers.admit("acme._.slack", t0), Admission::Pass);
    }

    #[test]
    fn another_replicas_open_breaker_holds_here_until_its_time_and_its_close_closes_here() {
        let t0 = Instant::now();
        let breakers = Breakers::new(SETTINGS);
        let route = "acme.crm";
        // Never seen here, closed elsewhere: nothing to adopt, no breaker made.
        assert_eq!(breakers.adopt(route, None, t0), Adopted::Unchanged);
        assert!(breakers.open_routes().is_empty());
        // Opened by another replica: held here too, until its time, with its down time.
        let shared = Shared {
            until: t0 + secs(30),
            down_since: t0 - secs(100),
            reopenings: 2,
        };
        assert_eq!(breakers.adopt(route, Some(shared), t0), Adopted::Opened);
        assert_eq!(
            breakers.admit(route, t0 + secs(1)),
            Admission::Wait {
                until: t0 + secs(30)
            }
        );
        assert_eq!(breakers.down_for(route, t0), Some(secs(100)));
        assert_eq!(breakers.shared(route, t0), Some(shared));
        assert_eq!(breakers.open_routes(), vec![route.to_owned()]);
        // This replica's own write coming back changes nothing.
        assert_eq!(breakers.adopt(route, Some(shared), t0), Adopted::Unchanged);
        // After it, this replica probes; a failed probe doubles from the shared re-openings.
        assert_eq!(breakers.admit(route, t0 + secs(30)), Admission::Probe);
        // A stale record (its period over) does not cut this replica's probe short.
        assert_eq!(
            breakers.adopt(route, Some(shared), t0 + secs(31)),
            Adopted::Unchanged
        );
        assert_eq!(
            breakers.failed(route, t0 + secs(31)),
            Change::Reopened {
                period: secs(100) // 30 · 2^3, capped at the longest period
            }
        );
        // Another replica's probe was answered: the record is gone, closed here.
        assert_eq!(breakers.adopt(route, None, t0 + secs(40)), Adopted::Closed);
        assert_eq!(breakers.admit(route, t0 + secs(40)), Admission::Pass);
        assert_eq!(breakers.shared(route, t0 + secs(40)), None);
        assert_eq!(breakers.down_for(route, t0 + secs(40)), None);
        // A record replacing another (a failed probe elsewhere) moves the open period here.
        let again = Shared {
            until: t0 + secs(50),
            ..shared
        };
        assert_eq!(
            breakers.adopt(route, Some(again), t0 + secs(41)),
            Adopted::Opened
        );
        let later = Shared {
            until: t0 + secs(90),
            ..shared
        };
        assert_eq!(
            breakers.adopt(route, Some(later), t0 + secs(42)),
            Adopted::Unchanged
        );
        assert_eq!(
            breakers.admit(route, t0 + secs(60)),
            Admission::Wait {
                until: t0 + secs(90)
            }
        );
        // Reset (a disabled destination) reports that it was open.
        assert!(breakers.reset(route));
        assert!(!breakers.reset(route));
        // A record whose period is over does not open a closed breaker (start-up, a replay).
        let t1 = t0 + secs(200);
        assert_eq!(breakers.adopt(route, Some(shared), t1), Adopted::Unchanged);
        assert_eq!(breakers.admit(route, t1), Admission::Pass);
        // A record holding for a year (a skewed clock, a hand-written one) holds at most the
        // longest open period, and its route down since no later than now.
        let forever = Shared {
            until: t1 + secs(365 * 86_400),
            down_since: t1 + secs(60),
            reopenings: 0,
        };
        assert_eq!(breakers.adopt(route, Some(forever), t1), Adopted::Opened);
        assert_eq!(
            breakers.admit(route, t1),
            Admission::Wait {
                until: t1 + secs(100)
            }
        );
        assert_eq!(breakers.down_for(route, t1), Some(Duration::ZERO));
    }

    #[test]
    fn a_breaker_shares_nothing_while_closed_and_its_open_period_while_open() {
        let t0 = Instant::now();
        let mut b = Breaker::default();
        assert_eq!(b.shared(t0), None);
        b.failed(t0, &SETTINGS);
        b.failed(t0, &SETTINGS);
        assert_eq!(b.shared(t0), None);
        assert_eq!(b.failed(t0, &SETTINGS), Change::Opened { period: secs(30) });
        assert_eq!(
            b.shared(t0),
            Some(Shared {
                until: t0 + secs(30),
                down_since: t0,
                reopenings: 0
            })
        );
    }
}
