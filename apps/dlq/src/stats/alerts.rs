//! DLQ inflow alerts: a sliding window of each tenant's recent DLQ entries; when a tenant has
//! more entries in the window than its threshold, one [`InflowAlert`] (then none for that
//! tenant until the cooldown has passed). Pure logic: the caller passes the time, so it is
//! tested without a clock.

use std::collections::{BTreeMap, HashMap, VecDeque};

use serde::Serialize;
use switchyard_keys::TenantId;
use time::{Duration, OffsetDateTime};

/// Entries remembered per tenant at most (beyond this the oldest are forgotten; the count in
/// an alert is then a lower bound).
const MAX_PER_TENANT: usize = 100_000;

/// The event published on `alerts.v1.<tenant>.dlq-inflow`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct InflowAlert {
    /// Always `dlq-inflow`.
    pub kind: &'static str,
    /// The tenant.
    pub tenant: TenantId,
    /// Entries stored for the tenant in the window ending at `at`.
    pub count: u64,
    /// The tenant's threshold (entries per window).
    pub threshold: u64,
    /// The window length, in seconds.
    pub window_secs: u64,
    /// DLQ sequence of the oldest entry in the window.
    pub first_seq: u64,
    /// DLQ sequence of the entry that crossed the threshold.
    pub last_seq: u64,
    /// When the DLQ stored the oldest entry in the window.
    #[serde(with = "time::serde::rfc3339")]
    pub window_start: OffsetDateTime,
    /// When the DLQ stored the entry that crossed the threshold.
    #[serde(with = "time::serde::rfc3339")]
    pub at: OffsetDateTime,
}

#[derive(Debug, Default)]
struct TenantWindow {
    entries: VecDeque<(OffsetDateTime, u64)>,
    last_alert: Option<OffsetDateTime>,
}

/// Every tenant's window.
#[derive(Debug)]
pub struct InflowWindows {
    window: Duration,
    threshold: u64,
    tenant_thresholds: BTreeMap<TenantId, u64>,
    cooldown: Duration,
    tenants: HashMap<TenantId, TenantWindow>,
}

impl InflowWindows {
    /// Windows of `window_secs`, alerting above `threshold` (or a tenant's own threshold; 0 =
    /// never), at most once per `cooldown_secs` per tenant.
    pub fn new(
        window_secs: u64,
        threshold: u64,
        tenant_thresholds: BTreeMap<TenantId, u64>,
        cooldown_secs: u64,
    ) -> Self {
        Self {
            window: Duration::seconds(i64::try_from(window_secs).unwrap_or(i64::MAX)),
            threshold,
            tenant_thresholds,
            cooldown: Duration::seconds(i64::try_from(cooldown_secs).unwrap_or(i64::MAX)),
            tenants: HashMap::new(),
        }
    }

    fn threshold_of(&self, tenant: &TenantId) -> u64 {
        self.tenant_thresholds
            .get(tenant)
            .copied()
            .unwrap_or(self.threshold)
    }

    /// Records one entry of `tenant` (stored at `stored_at`, read at `now`); returns an alert
    /// when it takes the tenant over its threshold. Entries older than the window at `now`
    /// (read while catching up on history) never alert.
    pub fn observe(
        &mut self,
        tenant: &TenantId,
        seq: u64,
        stored_at: OffsetDateTime,
        now: OffsetDateTime,
    ) -> Option<InflowAlert> {
        let threshold = self.threshold_of(tenant);
        if threshold == 0 || stored_at < now - self.window {
            return None;
        }
        let (window, cooldown) = (self.window, self.cooldown);
        let w = self.tenants.entry(tenant.clone()).or_default();
        w.entries.push_back((stored_at, seq));
        while w
            .entries
            .front()
            .is_some_and(|&(at, _)| at <= stored_at - window)
            || w.entries.len() > MAX_PER_TENANT
        {
            w.entries.pop_front();
        }
        let count = w.entries.len() as u64;
        if count <= threshold || w.last_alert.is_some_and(|t| stored_at - t < cooldown) {
            return None;
        }
        w.last_alert = Some(stored_at);
        let &(window_start, first_seq) = w.entries.front()?;
        Some(InflowAlert {
            kind: "dlq-inflow",
            tenant: tenant.clone(),
            count,
            threshold,
            window_secs: window.whole_seconds().unsigned_abs(),
            first_seq,
            last_seq: seq,
            window_start,
            at: stored_at,
        })
    }

    /// Forgets tenants with no entry in the window at `now` and no cooldown running.
    pub fn prune(&mut self, now: OffsetDateTime) {
        let (window, cooldown) = (self.window, self.cooldown);
        self.tenants.retain(|_, w| {
            let recent = w.entries.back().is_some_and(|&(at, _)| at > now - window);
            let cooling = w.last_alert.is_some_and(|t| now - t < cooldown);
            recent || cooling
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tenant(name: &str) -> TenantId {
        TenantId::new(name).unwrap()
    }

    #[test]
    fn alerts_once_over_the_threshold_and_only_for_that_tenant() {
        let t0 = OffsetDateTime::from_unix_timestamp(1_700_000_000).unwrap();
        let at = |ms: i64| t0 + Duration::milliseconds(ms);
        let mut windows = InflowWindows::new(60, 3, BTreeMap::new(), 300);
        let (acme, globex) = (tenant("acme"), tenant("globex"));
        let mut alerts = Vec::new();
        for i in 0..10 {
            alerts.extend(windows.observe(&acme, i + 1, at(i as i64 * 100), at(1000)));
            if i < 3 {
                alerts.extend(windows.observe(&globex, 100 + i, at(i as i64 * 100), at(1000)));
            }
        }
        assert_eq!(alerts.len(), 1, "{alerts:?}");
        let alert = &alerts[0];
        assert_eq!(alert.tenant, acme);
        assert_eq!((alert.count, alert.threshold), (4, 3));
        assert_eq!((alert.first_seq, alert.last_seq), (1, 4));
        // After the cooldown, a new burst alerts again.
        let later = 400_000;
        let again: Vec<_> = (0..4)
            .filter_map(|i| windows.observe(&acme, 50 + i, at(later + i as i64), at(later + 10)))
            .collect();
        assert_eq!(again.len(), 1);
        assert_eq!(again[0].count, 4, "the old burst left the window");
    }

    #[test]
    fn the_window_slides_and_history_never_alerts() {
        let t0 = OffsetDateTime::from_unix_timestamp(1_700_000_000).unwrap();
        let s = |secs: i64| t0 + Duration::seconds(secs);
        let mut windows = InflowWindows::new(10, 2, BTreeMap::new(), 0);
        let acme = tenant("acme");
        // One entry every 6 s: never more than 2 within 10 s.
        for i in 0..10 {
            assert!(
                windows
                    .observe(&acme, i, s(i as i64 * 6), s(i as i64 * 6))
                    .is_none()
            );
        }
        // Entries read long after they were stored (catching up) do not alert.
        for i in 0..10 {
            assert!(windows.observe(&acme, 100 + i, s(100), s(1000)).is_none());
        }
    }

    #[test]
    fn tenant_thresholds_replace_the_default_and_zero_silences() {
        let t0 = OffsetDateTime::from_unix_timestamp(1_700_000_000).unwrap();
        let mut thresholds = BTreeMap::new();
        thresholds.insert(tenant("big"), 5);
        thresholds.insert(tenant("quiet"), 0);
        let mut windows = InflowWindows::new(60, 1, thresholds, 300);
        let count = |w: &mut InflowWindows, name: &str| {
            (0..6)
                .filter_map(|i| w.observe(&tenant(name), i, t0, t0))
                .count()
        };
        assert_eq!(count(&mut windows, "small"), 1);
        assert_eq!(count(&mut windows, "big"), 1);
        assert_eq!(count(&mut windows, "quiet"), 0);
        windows.prune(t0 + Duration::seconds(3600));
        assert!(windows.tenants.is_empty());
    }
}
