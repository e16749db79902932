//! Rate-limit records in the `rate-limits` bucket: the configured limit per tenant (and the
//! `_default`), the global token state the backpressure replicas lease from, and the
//! admission (pressure) state the edge reads.

use serde::{Deserialize, Serialize};
use switchyard_keys::{RateKey, RateRecord, RateScope, TenantId};

/// A tenant's limit (JSON at `<tenant>.limit`, or `_default.limit` for tenants without one).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LimitRecord {
    /// Messages per second delivered, across every replica.
    pub rate_per_sec: f64,
    /// Messages that may go at once after a quiet period.
    pub burst: u32,
    /// Backlog (messages waiting for this tenant's tokens) at which new ingress is refused.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backlog_high: Option<u64>,
    /// Backlog below which ingress reopens (hysteresis; default: half of `backlog_high`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backlog_low: Option<u64>,
    /// Bytes of the tenant's messages in its `BACKPRESSURE` shard (each counted at its size
    /// class's bound) at which new ingress is refused; admission reopens once they are under
    /// half (default: the backpressure service's `default_backlog_high_bytes`, 12 MiB). For a
    /// tenant whose large messages flow fast, whose lease alone can hold more (contracts §15.2).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backlog_high_bytes: Option<u64>,
}

impl LimitRecord {
    /// Checks the values.
    pub fn validate(&self) -> Result<(), String> {
        if !(self.rate_per_sec.is_finite()
            && self.rate_per_sec > 0.0
            && self.rate_per_sec <= 1_000_000.0)
        {
            return Err(format!(
                "rate_per_sec must be in (0, 1000000], not {}",
                self.rate_per_sec
            ));
        }
        if self.burst == 0 {
            return Err("burst must be at least 1".to_owned());
        }
        if let (Some(high), Some(low)) = (self.backlog_high, self.backlog_low)
            && low >= high
        {
            return Err(format!(
                "backlog_low ({low}) must be below backlog_high ({high})"
            ));
        }
        if self.backlog_high_bytes == Some(0) {
            return Err("backlog_high_bytes must be at least 1".to_owned());
        }
        Ok(())
    }

    /// The bytes in its shard that close the tenant's admission: `backlog_high_bytes`, or
    /// `default_high_bytes` when the record has none (it reopens under half).
    pub fn bytes_mark(&self, default_high_bytes: u64) -> u64 {
        self.backlog_high_bytes.unwrap_or(default_high_bytes)
    }

    /// The admission thresholds `(close at, reopen below)`: `backlog_high` (or
    /// `default_high` when the record has none) and `backlog_low` (default: half the high
    /// mark). The one definition the backpressure scan and the CLI share.
    pub fn thresholds(&self, default_high: u64) -> (u64, u64) {
        let high = self.backlog_high.unwrap_or(default_high);
        (high, self.backlog_low.unwrap_or(high / 2))
    }

    /// The reopen threshold, when the record sets a high mark.
    pub fn reopen_below(&self) -> Option<u64> {
        self.backlog_high.map(|high| self.thresholds(high).1)
    }
}

/// Where a tenant's limit comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LimitSource {
    /// The tenant's own record, `<tenant>.limit`.
    Tenant,
    /// The shared record, `_default.limit`.
    Default,
    /// Neither: the backpressure service's configured default.
    BuiltIn,
}

/// The keys a tenant's limit is looked up at, in order: its own record, then `_default`. The
/// first that holds a valid record applies; with neither, the service's built-in default. The
/// one lookup order the backpressure service and the CLI share.
pub fn limit_lookup(tenant: &TenantId) -> [(RateKey, LimitSource); 2] {
    [
        (
            RateKey {
                scope: RateScope::Tenant(tenant.clone()),
                record: RateRecord::Limit,
            },
            LimitSource::Tenant,
        ),
        (
            RateKey {
                scope: RateScope::Default,
                record: RateRecord::Limit,
            },
            LimitSource::Default,
        ),
    ]
}

/// The global token state of one tenant (JSON at `<tenant>.tokens`): the GCRA "theoretical
/// arrival time", the instant (ms since the epoch) from which the next slot is free, and a
/// bound on the rate of the slots it owes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct TokenState {
    /// Next free slot, in milliseconds since the epoch.
    pub tat_ms: i64,
    /// A bound on the rate (per second) of every slot still owed before `tat_ms`; absent while
    /// unknown (records written before it was kept, until they owe nothing). With it, a
    /// carrying lease under a higher rate moves what is owed to its own pace
    /// (`switchyard_service::lease::step`), so a raised limit applies at once.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_per_sec: Option<f64>,
}

/// Whether a tenant's new ingress is admitted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Admission {
    /// New ingress is accepted.
    Open,
    /// New ingress is refused until the backlog drains below the low threshold.
    Closed,
}

/// Whether a tenant's own ingress stream is near its quota (JSON at `<tenant>.quota`), written
/// by the backpressure service's quota check when it crosses a bound, by compare-and-set: the
/// replica whose write sets `near_full` reports the `quota_near_full` event, once per crossing.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct QuotaRecord {
    /// Whether its fill reached `quota_near_full_pct` (and has not yet fallen 10 points below).
    pub near_full: bool,
    /// The fill when it was written: the fuller of bytes and messages, in % of the quota.
    pub fill_pct: f64,
    /// When it was written.
    #[serde(with = "time::serde::rfc3339")]
    pub at: time::OffsetDateTime,
}

/// A tenant's admission state (JSON at `<tenant>.pressure`), written by the backpressure
/// service when it changes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PressureRecord {
    /// Open or closed.
    pub admission: Admission,
    /// The backlog when the state was written.
    pub backlog: u64,
    /// When it was written (RFC 3339).
    pub updated_at: String,
    /// For a closed admission: about how long until it reopens, in seconds, as estimated when
    /// it closed (the backlog above `backlog_low` at the tenant's rate). Producers are told to
    /// retry after this (HTTP `Retry-After`). Absent in records of earlier versions.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reopen_in_secs: Option<u64>,
}

impl PressureRecord {
    /// The estimate for [`PressureRecord::reopen_in_secs`]: the backlog above `low` drained at
    /// `rate_per_sec`, rounded up, at least 1 s and at most an hour.
    pub fn estimate_reopen_secs(backlog: u64, low: u64, rate_per_sec: f64) -> u64 {
        let above = backlog.saturating_sub(low) as f64;
        let secs = if rate_per_sec > 0.0 && rate_per_sec.is_finite() {
            (above / rate_per_sec).ceil()
        } else {
            3600.0
        };
        (secs as u64).clamp(1, 3600)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_tenants_bytes_mark_is_optional_and_never_zero() {
        // Records written before the field existed still read, and fall back to the default.
        let old: LimitRecord =
            serde_json::from_str(r#"{"rate_per_sec": 50.0, "burst": 50}"#).unwrap();
        assert_eq!(old.backlog_high_bytes, None);
        assert_eq!(old.bytes_mark(12_582_912), 12_582_912);
        assert!(
            !serde_json::to_string(&old)
                .unwrap()
                .contains("backlog_high_bytes")
        );
        let own = LimitRecord {
            backlog_high_bytes: Some(33_554_432),
            ..old.clone()
        };
        assert_eq!(own.validate(), Ok(()));
        assert_eq!(own.bytes_mark(12_582_912), 33_554_432);
        let text = serde_json::to_string(&own).unwrap();
        assert_eq!(serde_json::from_str::<LimitRecord>(&text).unwrap(), own);
        let zero = LimitRecord {
            backlog_high_bytes: Some(0),
            ..old
        };
        assert_eq!(
            zero.validate(),
            Err("backlog_high_bytes must be at least 1".to_owned())
        );
    }

    #[test]
    fn reopening_is_estimated_from_the_backlog_above_low_and_the_rate() {
        assert_eq!(PressureRecord::estimate_reopen_secs(5_000, 2_500, 50.0), 50);
        assert_eq!(PressureRecord::estimate_reopen_secs(101, 100, 1_000.0), 1);
        assert_eq!(PressureRecord::estimate_reopen_secs(10, 100, 1.0), 1);
        assert_eq!(
            PressureRecord::estimate_reopen_secs(1_000_000, 0, 1.0),
            3600
        );
        assert_eq!(PressureRecord::estimate_reopen_secs(5, 0, 0.0), 3600);
    }
}
