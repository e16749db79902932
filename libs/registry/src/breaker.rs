//! The shared state of an open circuit breaker, JSON in the `breakers` bucket under
//! [`switchyard_keys::BreakerKey`] (the key of the route or destination it holds back).
//!
//! Egress keeps each breaker in memory, per replica; this record makes one replica's decision
//! every replica's. The replica whose breaker opens creates the record (the one whose create
//! succeeds reports `breaker_opened`), a failed probe rewrites it with the next open period,
//! and the probe that is answered deletes it (the one whose delete succeeds reports
//! `breaker_closed`). Every replica watches the bucket: a record appearing opens its own
//! breaker until `open_until`; a record deleted closes it. A key absent means closed.

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

/// An open breaker, as every egress replica should see it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BreakerRecord {
    /// When the route or destination went down: its breaker opened from closed (failed
    /// probes keep this time). Egress disables a destination down for
    /// `[egress] disable_after_secs`.
    #[serde(with = "time::serde::rfc3339")]
    pub down_since: OffsetDateTime,
    /// Until when nothing is attempted; after it, a probe is let through.
    #[serde(with = "time::serde::rfc3339")]
    pub open_until: OffsetDateTime,
    /// Failed probes since it opened (each doubles the open period, up to the longest).
    pub reopenings: u32,
    /// The egress replica that wrote it (`<host>/<process id>`).
    pub by: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_record_round_trips_as_json_with_rfc3339_times() {
        let record = BreakerRecord {
            down_since: time::macros::datetime!(2026-12-06 10:00:00 UTC),
            open_until: time::macros::datetime!(2026-12-06 10:00:30 UTC),
            reopenings: 0,
            by: "egress-0/17".to_owned(),
        };
        let json = serde_json::to_string(&record).unwrap();
        assert!(
            json.contains("\"open_until\":\"2026-12-06T10:00:30Z\""),
            "{json}"
        );
        assert_eq!(
            serde_json::from_str::<BreakerRecord>(&json).unwrap(),
            record
        );
    }
}
