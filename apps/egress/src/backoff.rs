//! When a failed attempt is tried again: the configured schedule with jitter, or the sink's own
//! `Retry-After` (capped); and when to stop trying: the message's delivery [`Deadline`].
//!
//! Attempt n (1-based) waits `d = backoff_secs[min(n-1, len-1)]`, jittered uniformly within
//! `[d/2, d]` so messages that failed together do not come back together.

use std::collections::hash_map::RandomState;
use std::hash::{BuildHasher, Hasher};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use time::OffsetDateTime;
use time::macros::format_description;

/// The retry schedule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Backoff {
    steps: Vec<Duration>,
    max_retry_after: Duration,
}

impl Backoff {
    /// A schedule of `steps_secs` (an empty list means 1 s), with `Retry-After` capped at
    /// `max_retry_after`.
    pub fn new(steps_secs: &[u64], max_retry_after: Duration) -> Self {
        let mut steps: Vec<Duration> = steps_secs
            .iter()
            .copied()
            .map(Duration::from_secs)
            .collect();
        if steps.is_empty() {
            steps.push(Duration::from_secs(1));
        }
        Self {
            steps,
            max_retry_after,
        }
    }

    /// The un-jittered wait after attempt `attempt` (1-based; 0 counts as 1).
    pub fn base(&self, attempt: u32) -> Duration {
        let index = usize::try_from(attempt.saturating_sub(1)).unwrap_or(usize::MAX);
        self.steps[index.min(self.steps.len() - 1)]
    }

    /// The wait after attempt `attempt`: the sink's `retry_after` (capped) when it gave one,
    /// otherwise the jittered schedule.
    pub fn delay(&self, attempt: u32, retry_after: Option<Duration>) -> Duration {
        match retry_after {
            Some(wait) => wait.min(self.max_retry_after),
            None => jitter(self.base(attempt), random_unit()),
        }
    }
}

/// `d/2 + unit·d/2`: with `unit` uniform in `[0, 1]`, uniform within `[d/2, d]`.
pub fn jitter(d: Duration, unit: f64) -> Duration {
    let half = d / 2;
    half + half.mul_f64(unit.clamp(0.0, 1.0))
}

/// A pseudo-random number in `[0, 1)`: SipHash with the process's random keys over a counter.
/// Good enough to spread retries; not for anything secret.
pub fn random_unit() -> f64 {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let mut hasher = RandomState::new().build_hasher();
    hasher.write_u64(COUNTER.fetch_add(1, Ordering::Relaxed));
    let bits = hasher.finish() >> 11;
    bits as f64 / (1u64 << 53) as f64
}

/// The header a rescheduled copy of a replayed message carries to anchor its deadline (owned
/// by the envelope's header names).
pub use switchyard_envelope::headers::DEADLINE_FROM;

/// When a message must have been delivered by: `delivery_deadline_secs` after its envelope's
/// `received_at`, or, for a replayed copy (`attempt.replay > 0`), after egress first handled
/// that replay. A replay therefore gets a fresh deadline; an entry dead-lettered
/// `deadline_exceeded` can be replayed once its route works again.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Deadline {
    /// When the count started.
    pub from: OffsetDateTime,
    /// When it ends.
    pub at: OffsetDateTime,
    /// The [`DEADLINE_FROM`] value rescheduled copies carry (replays, and parked copies).
    stamp: Option<String>,
}

impl Deadline {
    /// The deadline of a message received at `received_at` and replayed `replay` times that
    /// carried `carried` in [`DEADLINE_FROM`], handled at `now`.
    pub fn new(
        limit: Duration,
        received_at: OffsetDateTime,
        replay: u32,
        carried: Option<&str>,
        now: OffsetDateTime,
    ) -> Self {
        let carried = carried.and_then(|value| parse_stamp(value, replay));
        let (from, stamp) = match (carried, replay) {
            (Some(from), _) => (from, Some(Self::stamp_at(replay, from))),
            (None, 0) => (received_at, None),
            (None, _) => (now, Some(Self::stamp_at(replay, now))),
        };
        let at =
            from.saturating_add(time::Duration::try_from(limit).unwrap_or(time::Duration::MAX));
        Self { from, at, stamp }
    }

    /// The [`DEADLINE_FROM`] value that starts the deadline of a copy replayed `replay` times
    /// over at `from`: written by each replay's first handling, and by parking (a parked copy's
    /// deadline counts from its release, not from its reception).
    pub fn stamp_at(replay: u32, from: OffsetDateTime) -> String {
        format!("{replay};{}", from.unix_timestamp_nanos() / 1_000_000)
    }

    /// Whether the deadline has passed at `now`.
    pub fn passed(&self, now: OffsetDateTime) -> bool {
        now >= self.at
    }

    /// How long is left at `now` (zero once passed).
    pub fn remaining(&self, now: OffsetDateTime) -> Duration {
        Duration::try_from(self.at - now).unwrap_or(Duration::ZERO)
    }

    /// The [`DEADLINE_FROM`] value a rescheduled copy must carry, for a replayed message.
    pub fn stamp(&self) -> Option<&str> {
        self.stamp.as_deref()
    }
}

fn parse_stamp(value: &str, replay: u32) -> Option<OffsetDateTime> {
    let (counter, millis) = value.trim().split_once(';')?;
    if counter.parse::<u32>().ok()? != replay {
        return None;
    }
    let millis: i128 = millis.parse().ok()?;
    OffsetDateTime::from_unix_timestamp_nanos(millis.checked_mul(1_000_000)?).ok()
}

/// Reads a `Retry-After` value: delay-seconds (`120`) or an HTTP date
/// (`Wed, 21 Oct 2015 07:28:00 GMT`), relative to `now`. A date in the past means "now".
pub fn parse_retry_after(value: &str, now: OffsetDateTime) -> Option<Duration> {
    let value = value.trim();
    if let Ok(secs) = value.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    let imf_fixdate = format_description!(
        "[weekday repr:short], [day] [month repr:short] [year] [hour]:[minute]:[second] GMT"
    );
    let at = time::PrimitiveDateTime::parse(value, imf_fixdate)
        .map(time::PrimitiveDateTime::assume_utc)
        .or_else(|_| OffsetDateTime::parse(value, &time::format_description::well_known::Rfc2822))
        .ok()?;
    Some(Duration::try_from(at - now).unwrap_or(Duration::ZERO))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secs(s: u64) -> Duration {
        Duration::from_secs(s)
    }

    #[test]
    fn attempt_n_uses_step_n_and_the_last_step_after_that() {
        let backoff = Backoff::new(&[1, 5, 30], secs(3600));
        assert_eq!(backoff.base(1), secs(1));
        assert_eq!(backoff.base(2), secs(5));
        assert_eq!(backoff.base(3), secs(30));
        assert_eq!(backoff.base(4), secs(30));
        assert_eq!(backoff.base(0), secs(1));
        assert_eq!(backoff.base(u32::MAX), secs(30));
    }

    #[test]
    fn jitter_stays_within_half_and_full() {
        assert_eq!(jitter(secs(10), 0.0), secs(5));
        assert_eq!(jitter(secs(10), 1.0), secs(10));
        assert_eq!(jitter(secs(10), 0.5), Duration::from_millis(7500));
        let backoff = Backoff::new(&[10], secs(3600));
        for _ in 0..1000 {
            let d = backoff.delay(1, None);
            assert!(d >= secs(5) && d <= secs(10), "{d:?}");
        }
    }

    #[test]
    fn random_units_are_in_range_and_vary() {
        let draws: Vec<f64> = (0..200).map(|_| random_unit()).collect();
        assert!(draws.iter().all(|u| (0.0..1.0).contains(u)));
        let low = draws.iter().filter(|u| **u < 0.5).count();
        assert!((40..=160).contains(&low), "{low} of 200 below 0.5");
    }

    #[test]
    fn retry_after_overrides_the_schedule_and_is_capped() {
        let backoff = Backoff::new(&[1], secs(60));
        assert_eq!(backoff.delay(1, Some(secs(2))), secs(2));
        assert_eq!(backoff.delay(1, Some(secs(7200))), secs(60));
    }

    #[test]
    fn the_deadline_counts_from_receipt_and_a_replay_from_its_first_handling() {
        let received = OffsetDateTime::from_unix_timestamp(1_700_000_000).unwrap();
        let now = received + secs(100_000);
        let day = secs(86_400);

        let first = Deadline::new(day, received, 0, None, now);
        assert_eq!(first.at, received + day);
        assert!(first.passed(now));
        assert_eq!(first.remaining(now), Duration::ZERO);
        assert_eq!(first.stamp(), None);
        // A stamp for this replay counter (0: written only when a parked copy is held) moves
        // the start, and is carried on.
        let stamped = Deadline::new(day, received, 0, Some("0;1700050000000"), now);
        assert_eq!(stamped.at, received + secs(50_000) + day);
        assert_eq!(stamped.stamp(), Some("0;1700050000000"));
        assert_eq!(
            Deadline::stamp_at(0, received + secs(50_000)),
            "0;1700050000000"
        );

        // A replay starts counting when egress first handles it, and its copies carry that.
        let replay = Deadline::new(day, received, 1, None, now);
        assert_eq!(replay.from, now);
        assert!(!replay.passed(now));
        assert_eq!(replay.remaining(now), day);
        let later = now + secs(3600);
        let again = Deadline::new(day, received, 1, replay.stamp(), later);
        assert_eq!(again, replay);
        assert_eq!(again.remaining(later), secs(86_400 - 3600));

        // The stamp of an earlier replay (kept by the DLQ record) does not count for this one;
        // nor does a garbled one.
        let second = Deadline::new(day, received, 2, replay.stamp(), later);
        assert_eq!(second.from, later);
        for garbled in ["", "2", "2;", "x;1", "2;abc", "2;99999999999999999999999"] {
            assert_eq!(
                Deadline::new(day, received, 2, Some(garbled), later).from,
                later,
                "{garbled:?}"
            );
        }
    }

    #[test]
    fn retry_after_reads_seconds_and_http_dates() {
        let now = OffsetDateTime::from_unix_timestamp(1_445_412_480).unwrap(); // 07:28:00
        assert_eq!(parse_retry_after("120", now), Some(secs(120)));
        assert_eq!(parse_retry_after(" 0 ", now), Some(secs(0)));
        assert_eq!(
            parse_retry_after("Wed, 21 Oct 2015 07:28:30 GMT", now),
            Some(secs(30))
        );
        assert_eq!(
            parse_retry_after("Wed, 21 Oct 2015 07:00:00 GMT", now),
            Some(Duration::ZERO)
        );
        assert_eq!(parse_retry_after("soon", now), None);
        assert_eq!(parse_retry_after("-5", now), None);
    }
}
