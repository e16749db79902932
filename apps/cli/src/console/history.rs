//! The overview's last hour per tenant: backlog, DLQ entries and messages accepted sampled at
//! most every [`EVERY`] (whenever the overview is read, and by `switchyard api serve`'s own
//! sampler), kept for [`KEEP`], drawn as small SVG polylines (numbers only, computed here:
//! nothing a tenant sends reaches the drawing). Rates are differences of two samples over
//! their interval: the accepted rate from the tenant stream's last sequence, the DLQ inflow
//! from the rise of its entry count (entries replayed or purged in the same interval hide as
//! many new ones, so it is a lower bound). Also the destinations' health per tenant and which
//! tenants are disabled, read at the same pace (it costs a KV read per destination).

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::sync::Mutex;

use serde::Serialize;

/// The shortest time between two samples, seconds.
pub const EVERY: i64 = 10;
/// How far back the charts go, seconds (one hour).
pub const KEEP: i64 = 3600;
/// A chart's size in SVG units.
const WIDTH: f64 = 120.0;
const HEIGHT: f64 = 24.0;

/// One reading of one tenant.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Reading {
    /// Messages waiting (its own stream and the shared stages).
    pub backlog: u64,
    /// DLQ entries stored.
    pub dlq: u64,
    /// Messages accepted since its stream was made (its last sequence).
    pub accepted: u64,
}

/// One sample of one tenant.
#[derive(Debug, Clone, Copy)]
struct Sample {
    at: i64,
    reading: Reading,
}

/// A tenant's destinations: how many, how many fail (circuit breaker not closed) and how many
/// are disabled (on purpose, or by egress after staying down).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Health {
    /// Destinations.
    pub total: usize,
    /// Enabled, with an open (or half-open) breaker.
    pub failing: usize,
    /// Disabled (their messages are parked).
    pub disabled: usize,
}

impl Health {
    /// `-` (none), `3`, `3, 1 failing`, `3, 1 disabled`, `3, 1 failing, 1 disabled`.
    pub fn describe(&self) -> String {
        if self.total == 0 {
            return "-".to_owned();
        }
        let mut out = self.total.to_string();
        if self.failing > 0 {
            out.push_str(&format!(", {} failing", self.failing));
        }
        if self.disabled > 0 {
            out.push_str(&format!(", {} disabled", self.disabled));
        }
        out
    }
}

/// What is read at the sampling pace only: when, the destinations' health per tenant, the
/// disabled tenants.
type SlowReadings = (Option<i64>, BTreeMap<String, Health>, BTreeSet<String>);

/// Every tenant's samples.
#[derive(Default)]
pub struct History {
    samples: Mutex<BTreeMap<String, VecDeque<Sample>>>,
    /// When the last sample was taken (none yet: `None`).
    last: Mutex<Option<i64>>,
    /// Destinations' health per tenant and the disabled tenants, and when they were read.
    health: Mutex<SlowReadings>,
}

/// A tenant's charts: SVG `points` over the last hour of its accepted rate, backlog and DLQ
/// inflow, and their peaks.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Charts {
    /// Accepted messages per second.
    pub rate: String,
    /// Backlog.
    pub backlog: String,
    /// DLQ entries stored per minute.
    pub dlq_inflow: String,
    /// The highest rate in the hour, messages per second.
    pub rate_max: f64,
    /// The highest backlog in the hour.
    pub backlog_max: f64,
    /// The highest DLQ inflow in the hour, entries per minute.
    pub dlq_inflow_max: f64,
}

/// The change of a counter from `a` to `b` per second (a counter that went down, a stream made
/// again, counts as no change).
fn per_second(a: &Sample, b: &Sample, value: fn(&Reading) -> u64) -> f64 {
    let seconds = (b.at - a.at).max(1) as f64;
    value(&b.reading).saturating_sub(value(&a.reading)) as f64 / seconds
}

/// A value rounded to one decimal (what the page shows).
fn tenth(v: f64) -> f64 {
    (v * 10.0).round() / 10.0
}

impl History {
    /// Records each tenant's reading at `now` (Unix seconds), unless the last sample is
    /// younger than [`EVERY`]; drops what is older than [`KEEP`].
    pub fn record(&self, now: i64, rows: impl IntoIterator<Item = (String, Reading)>) {
        let Ok(mut last) = self.last.lock() else {
            return;
        };
        if last.is_some_and(|at| now - at < EVERY) {
            return;
        }
        *last = Some(now);
        let Ok(mut samples) = self.samples.lock() else {
            return;
        };
        for (tenant, reading) in rows {
            let series = samples.entry(tenant).or_default();
            series.push_back(Sample { at: now, reading });
            while series.front().is_some_and(|s| s.at < now - KEEP) {
                series.pop_front();
            }
        }
    }

    /// `tenant`'s accepted rate (messages per second) and DLQ inflow (entries per minute) from
    /// its newest sample at least [`EVERY`] old to `reading` at `now`; `None` before there is
    /// such a sample.
    pub fn rates(&self, tenant: &str, now: i64, reading: Reading) -> Option<(f64, f64)> {
        let samples = self.samples.lock().ok()?;
        let before = samples
            .get(tenant)?
            .iter()
            .rev()
            .find(|s| now - s.at >= EVERY)
            .copied()?;
        let current = Sample { at: now, reading };
        Some((
            tenth(per_second(&before, &current, |r| r.accepted)),
            tenth(60.0 * per_second(&before, &current, |r| r.dlq)),
        ))
    }

    /// Whether the destinations' health is due to be read again at `now`.
    pub fn health_due(&self, now: i64) -> bool {
        self.health
            .lock()
            .map(|h| h.0.is_none_or(|at| now - at >= EVERY))
            .unwrap_or(false)
    }

    /// Keeps the destinations' health and the disabled tenants read at `now`.
    pub fn set_health(
        &self,
        now: i64,
        health: BTreeMap<String, Health>,
        disabled: BTreeSet<String>,
    ) {
        if let Ok(mut h) = self.health.lock() {
            *h = (Some(now), health, disabled);
        }
    }

    /// Whether `tenant` was disabled when last read.
    pub fn disabled(&self, tenant: &str) -> bool {
        self.health
            .lock()
            .map(|h| h.2.contains(tenant))
            .unwrap_or(false)
    }

    /// `tenant`'s destinations' health as last read (no destination: zero).
    pub fn health(&self, tenant: &str) -> Health {
        self.health
            .lock()
            .ok()
            .and_then(|h| h.1.get(tenant).copied())
            .unwrap_or_default()
    }

    /// The charts of `tenant` at `now`.
    pub fn charts(&self, tenant: &str, now: i64) -> Charts {
        let samples: Vec<Sample> = self
            .samples
            .lock()
            .ok()
            .and_then(|s| s.get(tenant).map(|q| q.iter().copied().collect()))
            .unwrap_or_default();
        let line = |points: Vec<(i64, f64)>| -> (String, f64) {
            let max = points.iter().map(|p| p.1).fold(0.0, f64::max);
            let drawn = points
                .iter()
                .map(|&(at, value)| {
                    let x = WIDTH * (1.0 - (now - at).clamp(0, KEEP) as f64 / KEEP as f64);
                    let y = if max <= 0.0 {
                        HEIGHT
                    } else {
                        HEIGHT - HEIGHT * value / max
                    };
                    format!("{x:.1},{y:.1}")
                })
                .collect::<Vec<_>>()
                .join(" ");
            (drawn, tenth(max))
        };
        let levels = samples
            .iter()
            .map(|s| (s.at, s.reading.backlog as f64))
            .collect();
        let change = |value: fn(&Reading) -> u64, scale: f64| {
            samples
                .windows(2)
                .map(|w| (w[1].at, scale * per_second(&w[0], &w[1], value)))
                .collect::<Vec<_>>()
        };
        let (rate, rate_max) = line(change(|r| r.accepted, 1.0));
        let (backlog, backlog_max) = line(levels);
        let (dlq_inflow, dlq_inflow_max) = line(change(|r| r.dlq, 60.0));
        Charts {
            rate,
            backlog,
            dlq_inflow,
            rate_max,
            backlog_max,
            dlq_inflow_max,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reading(backlog: u64, dlq: u64, accepted: u64) -> Reading {
        Reading {
            backlog,
            dlq,
            accepted,
        }
    }

    #[test]
    fn samples_are_spaced_kept_for_an_hour_and_scaled_to_their_peak() {
        let history = History::default();
        history.record(0, [("acme".to_owned(), reading(10, 0, 0))]);
        // Too soon: not recorded.
        history.record(5, [("acme".to_owned(), reading(99, 0, 0))]);
        history.record(10, [("acme".to_owned(), reading(20, 4, 100))]);
        let charts = history.charts("acme", 10);
        assert_eq!(charts.backlog_max, 20.0);
        // 100 accepted in 10 s; 4 entries in 10 s = 24 a minute.
        assert_eq!((charts.rate_max, charts.dlq_inflow_max), (10.0, 24.0));
        // The newest point is at the right edge and the top.
        assert!(charts.backlog.ends_with("120.0,0.0"), "{}", charts.backlog);
        assert_eq!(charts.backlog.split(' ').count(), 2);
        // Rates are drawn between samples: one point for two samples.
        assert_eq!(charts.rate.split(' ').count(), 1);
        history.record(KEEP + 20, [("acme".to_owned(), reading(1, 0, 0))]);
        assert_eq!(
            history.charts("acme", KEEP + 20).backlog.split(' ').count(),
            1
        );
        assert_eq!(history.charts("globex", 0).backlog, "");
    }

    #[test]
    fn rates_come_from_a_sample_at_least_one_interval_old() {
        let history = History::default();
        assert_eq!(history.rates("acme", 0, reading(0, 0, 0)), None);
        history.record(0, [("acme".to_owned(), reading(0, 10, 1_000))]);
        // Too recent a sample to measure over.
        assert_eq!(history.rates("acme", 5, reading(0, 10, 1_050)), None);
        // 500 accepted in 20 s; 2 new entries in 20 s = 6 a minute.
        assert_eq!(
            history.rates("acme", 20, reading(0, 12, 1_500)),
            Some((25.0, 6.0))
        );
        // Entries replayed (fewer than before) and a stream made again count as nothing.
        assert_eq!(
            history.rates("acme", 20, reading(0, 3, 7)),
            Some((0.0, 0.0))
        );
    }

    #[test]
    fn health_is_read_again_once_an_interval_has_passed() {
        let history = History::default();
        assert!(history.health_due(0));
        let failing = Health {
            total: 3,
            failing: 1,
            disabled: 0,
        };
        assert_eq!(failing.describe(), "3, 1 failing");
        let parked = Health {
            total: 2,
            failing: 0,
            disabled: 2,
        };
        assert_eq!(parked.describe(), "2, 2 disabled");
        assert_eq!(Health::default().describe(), "-");
        history.set_health(
            0,
            BTreeMap::from([("acme".to_owned(), failing)]),
            BTreeSet::from(["globex".to_owned()]),
        );
        assert!(history.disabled("globex") && !history.disabled("acme"));
        assert!(!history.health_due(EVERY - 1));
        assert!(history.health_due(EVERY));
        assert_eq!(history.health("acme"), failing);
        assert_eq!(history.health("globex"), Health::default());
    }
}
