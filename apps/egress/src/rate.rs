//! Per-destination rate limits, held across every egress replica.
//!
//! A destination with a rate limit (its own `rate_limit`, else its tenant's
//! `destination_rate_limit`) has a GCRA token record `<tenant>.<destination>.tokens` in the
//! `rate-limits` bucket, leased exactly as the backpressure stage leases a tenant's
//! ([`switchyard_service::lease`]): each replica takes a lease of a quarter second of slots by
//! one compare-and-set, and slots are disjoint across replicas, so the attempts of all replicas
//! together never pass the rate (plus the burst after a quiet period). A slot is used at or
//! after its time — a burst slot, already due when the lease is taken, from then — and at most
//! [`MAX_LATE`] after it (an unused slot is dropped, never saved up); a message that finds no slot within `route_wait_ms` is rescheduled without an attempt
//! (deferral reason `rate_limited`). The cost: one KV read and one write per lease, about four
//! leases a second per busy destination and replica.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use switchyard_registry::LimitRecord;
use switchyard_service::lease::{Lease, Leaser};
use tokio::sync::Mutex;

/// How much time one lease covers: a quarter second of slots (at least one slot).
pub const LEASE_WINDOW: Duration = Duration::from_millis(250);

/// The latest a slot may be used after its time; older unused slots are dropped, so no replica
/// ever spends saved-up slots as a burst the limit does not allow.
pub const MAX_LATE: Duration = Duration::from_millis(200);

/// The most slots one lease takes (a very high rate).
const MAX_LEASE: u32 = 1_000;

/// One replica's current lease of a destination.
#[derive(Debug, Clone, Copy)]
struct Local {
    lease: Lease,
    /// The next unused slot.
    next: u32,
    /// When the lease was taken (ms since the epoch): a slot before it — a burst slot, due
    /// already — counts as due from then.
    taken_ms: i64,
}

/// The slots this replica holds, per token record.
pub struct DestinationRates {
    leaser: Leaser,
    /// One lock per token record: a slow lease of one destination never holds up another's.
    leases: std::sync::Mutex<HashMap<String, Arc<Mutex<Option<Local>>>>>,
}

impl DestinationRates {
    /// Rates leased through `leaser` (over the `rate-limits` bucket).
    pub fn new(leaser: Leaser) -> Self {
        Self {
            leaser,
            leases: std::sync::Mutex::new(HashMap::new()),
        }
    }

    /// The leaser (its KV operation and fallback counters).
    pub fn leaser(&self) -> &Leaser {
        &self.leaser
    }

    /// Takes a slot of token record `key` under `limit` at `now_ms` (ms since the epoch):
    /// `Ok(wait)` when one is due within `max_wait` (the attempt may go after `wait`), else
    /// `Err(())` (nothing is taken).
    pub async fn take(
        &self,
        key: &str,
        limit: &LimitRecord,
        now_ms: i64,
        max_wait: Duration,
    ) -> Result<Duration, ()> {
        let max_wait_ms = i64::try_from(max_wait.as_millis()).unwrap_or(i64::MAX);
        let late_ms = i64::try_from(MAX_LATE.as_millis()).unwrap_or(0);
        let slot = {
            let mut leases = self
                .leases
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            leases.entry(key.to_owned()).or_default().clone()
        };
        let mut held = slot.lock().await;
        for fresh in [false, true] {
            if fresh {
                let lease = self
                    .leaser
                    .lease(key, lease_size(limit), limit, now_ms)
                    .await;
                *held = Some(Local {
                    lease,
                    next: 0,
                    taken_ms: now_ms,
                });
            }
            let Some(local) = held.as_mut() else {
                continue;
            };
            while local.next < local.lease.count
                && local.lease.slot(local.next).max(local.taken_ms) < now_ms.saturating_sub(late_ms)
            {
                local.next += 1;
            }
            if local.next < local.lease.count {
                let wait_ms = local.lease.slot(local.next).saturating_sub(now_ms).max(0);
                if wait_ms > max_wait_ms {
                    return Err(());
                }
                local.next += 1;
                return Ok(Duration::from_millis(u64::try_from(wait_ms).unwrap_or(0)));
            }
        }
        Err(())
    }
}

/// Slots in one lease: [`LEASE_WINDOW`] of the rate, plus the burst beyond the first slot (a
/// lease after a quiet period starts `burst − 1` slots in the past: those are the burst), at
/// least 1, at most [`MAX_LEASE`].
fn lease_size(limit: &LimitRecord) -> u32 {
    let slots = (limit.rate_per_sec * LEASE_WINDOW.as_secs_f64()).ceil();
    let window = if slots.is_finite() && slots >= 1.0 {
        // `as` saturates; the bound keeps a lease small.
        (slots as u32).min(MAX_LEASE)
    } else {
        1
    };
    window
        .saturating_add(limit.burst.saturating_sub(1))
        .min(MAX_LEASE)
}

/// The spacing of a destination's slots: `1 / rate` (for spreading the messages it defers).
pub fn spacing(limit: &LimitRecord) -> Duration {
    if limit.rate_per_sec.is_finite() && limit.rate_per_sec > 0.0 {
        Duration::from_secs_f64((1.0 / limit.rate_per_sec).min(3600.0))
    } else {
        Duration::from_secs(3600)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limit(rate: f64) -> LimitRecord {
        limit_burst(rate, 1)
    }

    fn limit_burst(rate: f64, burst: u32) -> LimitRecord {
        LimitRecord {
            rate_per_sec: rate,
            burst,
            backlog_high: None,
            backlog_low: None,
            backlog_high_bytes: None,
        }
    }

    #[test]
    fn a_lease_covers_a_quarter_second_of_slots() {
        assert_eq!(lease_size(&limit(5.0)), 2);
        assert_eq!(lease_size(&limit(0.1)), 1);
        assert_eq!(lease_size(&limit(1000.0)), 250);
        assert_eq!(lease_size(&limit(1e12)), MAX_LEASE);
        assert_eq!(lease_size(&limit(f64::NAN)), 1);
        assert_eq!(
            lease_size(&limit_burst(5.0, 20)),
            21,
            "the burst rides on the lease"
        );
        assert_eq!(lease_size(&limit_burst(5.0, u32::MAX)), MAX_LEASE);
        assert_eq!(spacing(&limit(5.0)), Duration::from_millis(200));
        assert_eq!(spacing(&limit(0.0)), Duration::from_secs(3600));
    }
}
