//! DLQ inflow counters per (tenant, stage, code), kept in the `dlq-stats` bucket by the dlq
//! service and read by the CLI (`switchyard dlq stats`) and dashboards.
//!
//! Each counter record carries a watermark (`last_seq`): the DLQ sequence of the newest entry
//! it counts. The dlq service reads the DLQ in sequence order and adds to a counter only the
//! entries above its watermark, with a compare-and-set on the key's revision, so an entry is
//! counted exactly once even when a batch is re-read after a crash or two instances overlap.
//! The processor's cursor (every entry at or below it is counted everywhere) and lease live
//! in the `_state` record ([`StatsState`]).

use async_nats::jetstream::kv;
use serde::{Deserialize, Serialize};
use switchyard_dlq::DlqCode;
use switchyard_keys::kv::DlqStatsKey;
use switchyard_keys::{KvKey, Stage, TenantId};
use time::OffsetDateTime;

use switchyard_registry::{Store, StoreError, Written};

use crate::Lease;

/// One (tenant, stage, code) counter.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StatsRecord {
    /// The tenant (`null` for entries without a valid tenant).
    pub tenant: Option<TenantId>,
    /// The stage that gave up.
    pub stage: Stage,
    /// The code.
    pub code: DlqCode,
    /// Entries counted.
    pub count: u64,
    /// When the DLQ stored the first counted entry.
    #[serde(with = "time::serde::rfc3339")]
    pub first_seen: OffsetDateTime,
    /// When the DLQ stored the newest counted entry.
    #[serde(with = "time::serde::rfc3339")]
    pub last_seen: OffsetDateTime,
    /// The DLQ sequence of the first counted entry.
    pub first_seq: u64,
    /// The DLQ sequence of the newest counted entry (the watermark).
    pub last_seq: u64,
}

impl StatsRecord {
    /// The record's key.
    pub fn key(&self) -> DlqStatsKey {
        DlqStatsKey::Counter {
            tenant: self.tenant.clone(),
            stage: self.stage,
            code: self.code.as_str().to_owned(),
        }
    }

    /// Adds the entries above the watermark; returns how many were added. `entries` are
    /// `(DLQ sequence, stored at)` in ascending sequence order.
    pub fn add(&mut self, entries: &[(u64, OffsetDateTime)]) -> u64 {
        let mut added = 0;
        for &(seq, at) in entries {
            if seq <= self.last_seq {
                continue;
            }
            if self.count == 0 {
                self.first_seen = at;
                self.first_seq = seq;
            }
            self.count += 1;
            self.last_seen = at;
            self.last_seq = seq;
            added += 1;
        }
        added
    }
}

/// The stats processor's state: how far it has counted, and who is counting.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StatsState {
    /// Every DLQ entry at or below this sequence is counted.
    pub cursor: u64,
    /// Stored messages that are not valid DLQ records (not counted anywhere else).
    pub malformed: u64,
    /// Restored entries (`dlq import`) skipped: they are not new inflow.
    pub imported: u64,
    /// The instance counting now.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lease: Option<Lease>,
}

/// The `dlq-stats` bucket: counters and the processor state, two record types under one key
/// schema.
#[derive(Clone)]
pub struct StatsStore {
    /// The counters ([`DlqStatsKey::Counter`]).
    counters: Store<DlqStatsKey, StatsRecord>,
    /// The processor state ([`DlqStatsKey::State`]).
    state: Store<DlqStatsKey, StatsState>,
}

impl StatsStore {
    /// Wraps the bucket.
    pub fn new(kv: kv::Store) -> Self {
        Self {
            counters: Store::new(kv.clone()),
            state: Store::new(kv),
        }
    }

    /// The processor state and its revision (`None`: nothing counted yet).
    pub async fn state(&self) -> Result<Option<(StatsState, u64)>, StoreError> {
        self.state.entry(&DlqStatsKey::State).await
    }

    /// Writes the processor state if its revision is still `revision` (`None`: create it).
    pub async fn put_state(
        &self,
        state: &StatsState,
        revision: Option<u64>,
    ) -> Result<Written, StoreError> {
        self.state.write(&DlqStatsKey::State, state, revision).await
    }

    /// Adds `entries` (ascending `(seq, stored at)`) to the counter `template` names, above
    /// its watermark, retrying on concurrent writes. Returns how many were added.
    pub async fn add(
        &self,
        template: &StatsRecord,
        entries: &[(u64, OffsetDateTime)],
    ) -> Result<u64, StoreError> {
        let key = template.key();
        loop {
            let (mut record, revision) = match self.counters.entry(&key).await? {
                Some((record, revision)) => (record, Some(revision)),
                None => (
                    StatsRecord {
                        count: 0,
                        last_seq: 0,
                        ..template.clone()
                    },
                    None,
                ),
            };
            let added = record.add(entries);
            if added == 0 {
                return Ok(0);
            }
            if let Written::Stored(_) = self.counters.write(&key, &record, revision).await? {
                return Ok(added);
            }
        }
    }

    /// Every counter matching a key filter (`>` for all, `acme.>` for one tenant), sorted by
    /// key. A value that does not decode comes back as an error in place.
    pub async fn counters(
        &self,
        filter: &str,
    ) -> Result<Vec<Result<StatsRecord, StoreError>>, StoreError> {
        let entries = self
            .counters
            .entries(|key| {
                matches!(key, DlqStatsKey::Counter { .. })
                    && switchyard_subjects::pattern_matches(filter, &key.render())
            })
            .await?;
        Ok(entries
            .into_iter()
            .map(|(_, found)| found.map(|(record, _)| record))
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_only_add_above_the_watermark() {
        let t0 = OffsetDateTime::from_unix_timestamp(1_700_000_000).unwrap();
        let at = |s: i64| t0 + time::Duration::seconds(s);
        let mut record = StatsRecord {
            tenant: Some(TenantId::new("acme").unwrap()),
            stage: Stage::Egress,
            code: DlqCode::NoRoute,
            count: 0,
            first_seen: t0,
            last_seen: t0,
            first_seq: 0,
            last_seq: 0,
        };
        assert_eq!(record.add(&[(3, at(3)), (5, at(5))]), 2);
        // A re-read batch overlapping what was counted adds only the new entry.
        assert_eq!(record.add(&[(3, at(3)), (5, at(5)), (9, at(9))]), 1);
        assert_eq!(record.count, 3);
        assert_eq!((record.first_seq, record.last_seq), (3, 9));
        assert_eq!((record.first_seen, record.last_seen), (at(3), at(9)));
        assert_eq!(record.key().render(), "acme.egress.no_route");
    }

    #[test]
    fn key_filters_match_whole_tokens() {
        assert!(switchyard_subjects::pattern_matches(
            ">",
            "acme.egress.no_route"
        ));
        assert!(switchyard_subjects::pattern_matches(
            "acme.>",
            "acme.egress.no_route"
        ));
        assert!(!switchyard_subjects::pattern_matches(
            "acme.>",
            "acme-eu.egress.no_route"
        ));
        assert!(switchyard_subjects::pattern_matches(
            "*.egress.*",
            "_.egress.no_route"
        ));
        assert!(!switchyard_subjects::pattern_matches(
            "*.egress",
            "acme.egress.no_route"
        ));
    }
}
