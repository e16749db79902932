//! The overview's last hour per tenant: backlog and DLQ entries sampled at most every
//! [`EVERY`] (whenever the overview is read, and by `switchyard api serve`'s own sampler), kept
//! for [`KEEP`], drawn as small SVG polylines (numbers only, computed here: nothing a tenant
//! sends reaches the drawing).

use std::collections::{BTreeMap, VecDeque};
use std::sync::Mutex;

use serde::Serialize;

/// The shortest time between two samples, seconds.
pub const EVERY: i64 = 10;
/// How far back the charts go, seconds (one hour).
pub const KEEP: i64 = 3600;
/// A chart's size in SVG units.
const WIDTH: f64 = 120.0;
const HEIGHT: f64 = 24.0;

/// One sample of one tenant.
#[derive(Debug, Clone, Copy)]
struct Sample {
    at: i64,
    backlog: u64,
    dlq: u64,
}

/// Every tenant's samples.
#[derive(Default)]
pub struct History {
    samples: Mutex<BTreeMap<String, VecDeque<Sample>>>,
    /// When the last sample was taken (none yet: `None`).
    last: Mutex<Option<i64>>,
}

/// A tenant's charts: SVG `points` of its backlog and DLQ entries over the last hour, and
/// their peaks.
#[derive(Debug, Clone, Serialize)]
pub struct Charts {
    /// Backlog polyline points.
    pub backlog: String,
    /// DLQ entries polyline points.
    pub dlq: String,
    /// The highest backlog in the hour.
    pub backlog_max: u64,
    /// The most DLQ entries in the hour.
    pub dlq_max: u64,
}

impl History {
    /// Records `(tenant, backlog, dlq)` for each tenant at `now` (Unix seconds), unless the
    /// last sample is younger than [`EVERY`]; drops what is older than [`KEEP`].
    pub fn record(&self, now: i64, rows: impl IntoIterator<Item = (String, u64, u64)>) {
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
        for (tenant, backlog, dlq) in rows {
            let series = samples.entry(tenant).or_default();
            series.push_back(Sample {
                at: now,
                backlog,
                dlq,
            });
            while series.front().is_some_and(|s| s.at < now - KEEP) {
                series.pop_front();
            }
        }
    }

    /// The charts of `tenant` at `now`.
    pub fn charts(&self, tenant: &str, now: i64) -> Charts {
        let samples = self
            .samples
            .lock()
            .ok()
            .and_then(|s| s.get(tenant).cloned())
            .unwrap_or_default();
        let line = |value: fn(&Sample) -> u64| -> (String, u64) {
            let max = samples.iter().map(value).max().unwrap_or(0);
            let points = samples
                .iter()
                .map(|s| {
                    let x = WIDTH * (1.0 - (now - s.at).clamp(0, KEEP) as f64 / KEEP as f64);
                    let y = if max == 0 {
                        HEIGHT
                    } else {
                        HEIGHT - HEIGHT * value(s) as f64 / max as f64
                    };
                    format!("{x:.1},{y:.1}")
                })
                .collect::<Vec<_>>()
                .join(" ");
            (points, max)
        };
        let (backlog, backlog_max) = line(|s| s.backlog);
        let (dlq, dlq_max) = line(|s| s.dlq);
        Charts {
            backlog,
            dlq,
            backlog_max,
            dlq_max,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn samples_are_spaced_kept_for_an_hour_and_scaled_to_their_peak() {
        let history = History::default();
        history.record(0, [("acme".to_owned(), 10, 0)]);
        // Too soon: not recorded.
        history.record(5, [("acme".to_owned(), 99, 0)]);
        history.record(10, [("acme".to_owned(), 20, 4)]);
        let charts = history.charts("acme", 10);
        assert_eq!((charts.backlog_max, charts.dlq_max), (20, 4));
        // The newest point is at the right edge and the top.
        assert!(charts.backlog.ends_with("120.0,0.0"), "{}", charts.backlog);
        assert_eq!(charts.backlog.split(' ').count(), 2);
        history.record(KEEP + 20, [("acme".to_owned(), 1, 0)]);
        assert_eq!(
            history.charts("acme", KEEP + 20).backlog.split(' ').count(),
            1
        );
        assert_eq!(history.charts("globex", 0).backlog, "");
    }
}
