//! Circuit breakers shared by every egress replica, through the `breakers` bucket
//! ([`BreakerRecord`] under [`BreakerKey`], the key of the route or destination).
//!
//! Each replica keeps its breakers in memory ([`Breakers`]) and decides on its own attempts;
//! this module makes one replica's finding everyone's, at a KV operation per change of state
//! (never per message):
//!
//! - a breaker that opens here **creates** the record; the replica whose create succeeds (or
//!   that replaces a record whose open period was long over) reports `breaker_opened`: one
//!   event per outage, not one per replica;
//! - a failed probe **rewrites** it, by revision, with the next open period; when the record
//!   is gone meanwhile (another replica's probe was answered), the answered probe wins and
//!   this replica's breaker closes too;
//! - an answered probe **deletes** it by revision; the replica whose delete succeeds reports
//!   `breaker_closed`;
//! - a destination that is disabled **forgets** its breaker (parking holds its messages): its
//!   record is deleted and every replica's breaker closes;
//! - every replica **watches** the bucket ([`SharedBreakers::start`]): a record opens its own
//!   breaker until the record's time (at most `breaker_max_open_secs` from now, whatever the
//!   record says), a deleted or aged-out record closes it. Revisions at or below the last one
//!   applied for a key are skipped, so a watch that is re-created (replaying the bucket) or
//!   this replica's own writes coming back change nothing.
//!
//! What stays per replica: the counts that open a breaker (consecutive failures and the
//! failure-rate window), and the probe: once an open period ends, each replica that has a
//! message for the route lets one probe through. Times cross replicas as wall-clock time;
//! clocks skewed by seconds shift open periods by as much. Every KV call is bounded by
//! [`KV_TIMEOUT`]; with KV unreachable each replica keeps its own breakers.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use async_nats::jetstream::kv;
use switchyard_keys::{BreakerKey, KvKey};
use switchyard_registry::{BreakerRecord, Store, StoreError, Written};
use time::OffsetDateTime;
use tokio::sync::watch;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::breaker::{Adopted, Breakers, Shared};
use crate::metrics::EgressMetrics;

/// The longest a KV call of this module may take on a delivery's path; past it the change
/// stays this replica's own.
pub const KV_TIMEOUT: Duration = Duration::from_secs(2);

/// What this replica last knew of a key: the revision applied (or written), and whether a
/// record was there.
#[derive(Debug, Clone, Copy)]
struct Known {
    revision: u64,
    present: bool,
}

/// The `breakers` bucket, watched, and the breakers it keeps in step.
pub struct SharedBreakers {
    store: Store<BreakerKey, BreakerRecord>,
    breakers: Arc<Breakers>,
    metrics: EgressMetrics,
    replica: String,
    known: Mutex<HashMap<String, Known>>,
    loaded: watch::Sender<bool>,
}

/// Why sharing a change failed.
#[derive(Debug, thiserror::Error)]
pub enum ShareError {
    /// The bucket refused or failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// It did not answer within [`KV_TIMEOUT`].
    #[error("the breakers bucket did not answer within {KV_TIMEOUT:?}")]
    TimedOut,
}

impl SharedBreakers {
    /// Starts watching `bucket` until `shutdown`, keeping `breakers` (and `metrics`' gauge of
    /// open breakers) in step with it; records written are signed `replica`.
    pub fn start(
        bucket: kv::Store,
        breakers: Arc<Breakers>,
        metrics: EgressMetrics,
        replica: String,
        shutdown: CancellationToken,
    ) -> Arc<Self> {
        let (loaded, _) = watch::channel(false);
        let shared = Arc::new(Self {
            store: Store::new(bucket.clone()),
            breakers,
            metrics,
            replica,
            known: Mutex::new(HashMap::new()),
            loaded,
        });
        let task = shared.clone();
        tokio::spawn(async move { task.follow(bucket, shutdown).await });
        shared
    }

    /// Waits until every record present at start-up has been adopted.
    pub async fn wait_loaded(&self) {
        let mut rx = self.loaded.subscribe();
        let _ = rx.wait_for(|loaded| *loaded).await;
    }

    async fn follow(&self, bucket: kv::Store, shutdown: CancellationToken) {
        switchyard_registry::cache::follow_bucket(
            &bucket,
            None,
            &self.loaded,
            &shutdown,
            &|entry| self.apply(entry),
        )
        .await;
    }

    /// Adopts one change of the bucket, unless this replica has seen a later one of its key.
    fn apply(&self, entry: &kv::Entry) {
        let present = entry.operation == kv::Operation::Put;
        if !self.note(&entry.key, entry.revision, present) {
            return;
        }
        let Ok(key) = BreakerKey::parse(&entry.key) else {
            tracing::warn!(key = %entry.key, "ignoring a key outside the breakers bucket's schema");
            return;
        };
        let shared = if present {
            match serde_json::from_slice::<BreakerRecord>(&entry.value) {
                Ok(record) => Some(from_record(&record, Instant::now(), now())),
                Err(error) => {
                    tracing::warn!(key = %entry.key, %error, "ignoring an invalid breaker record");
                    return;
                }
            }
        } else {
            None
        };
        self.adopt(&key, shared);
    }

    fn adopt(&self, key: &BreakerKey, shared: Option<Shared>) {
        let id = key.render();
        match self.breakers.adopt(&id, shared, Instant::now()) {
            Adopted::Unchanged => {}
            Adopted::Opened => {
                tracing::info!(route = %id, "circuit breaker opened by another replica");
                self.metrics.breaker_adopted(key.tenant().as_str(), true);
            }
            Adopted::Closed => {
                tracing::info!(route = %id, "circuit breaker closed by another replica");
                self.metrics.breaker_adopted(key.tenant().as_str(), false);
            }
        }
    }

    /// Records that `key` is at `revision`; `false` (and nothing recorded) when this replica
    /// knows a later or equal one.
    fn note(&self, key: &str, revision: u64, present: bool) -> bool {
        let mut known = self.known.lock().unwrap_or_else(PoisonError::into_inner);
        if known.get(key).is_some_and(|k| k.revision >= revision) {
            return false;
        }
        known.insert(key.to_owned(), Known { revision, present });
        true
    }

    fn known(&self, key: &str) -> Option<Known> {
        let known = self.known.lock().unwrap_or_else(PoisonError::into_inner);
        known.get(key).copied()
    }

    /// Shares that this replica's breaker `id` opened (`shared`, from [`Breakers::shared`]).
    /// Returns whether this replica opened it for everyone (it reports the event): its create
    /// succeeded, or the record there (unreadable, or its open period over) was replaced.
    /// `false` when another replica's current record holds it.
    pub async fn opened(&self, id: &str, shared: Shared) -> Result<bool, ShareError> {
        bounded(self.open_record(id, shared)).await
    }

    async fn open_record(&self, id: &str, shared: Shared) -> Result<bool, ShareError> {
        let key = parse(id)?;
        let record = self.record(shared);
        for _ in 0..2 {
            if let Written::Stored(revision) = self.store.create(&key, &record).await? {
                self.note(id, revision, true);
                return Ok(true);
            }
            match self.raw_entry(&key).await? {
                Some((Some(old), _)) if old.open_until > now() => return Ok(false),
                // Unreadable, or its period over: this outage is a new one.
                Some((_, revision)) => {
                    return match self.store.update(&key, &record, revision).await? {
                        Written::Stored(revision) => {
                            self.note(id, revision, true);
                            Ok(true)
                        }
                        Written::Conflict => Ok(false),
                    };
                }
                // Deleted in between (a probe answered elsewhere): create it again.
                None => continue,
            }
        }
        Ok(false)
    }

    /// Shares that a probe here failed (`shared`: the next open period), by revision over the
    /// record this replica last knew. When that record was deleted meanwhile — another
    /// replica's probe was answered — the answered probe wins: this replica's breaker closes
    /// and nothing is written.
    pub async fn reopened(&self, id: &str, shared: Shared) -> Result<(), ShareError> {
        bounded(self.reopen_record(id, shared)).await
    }

    async fn reopen_record(&self, id: &str, shared: Shared) -> Result<(), ShareError> {
        let key = parse(id)?;
        let record = self.record(shared);
        let revision = match self.known(id) {
            Some(Known {
                revision,
                present: true,
            }) => revision,
            // No record known here: it is read, as a failed update would.
            _ => match self.raw_entry(&key).await? {
                Some((_, revision)) => revision,
                None => return self.answered_elsewhere(&key),
            },
        };
        match self.store.update(&key, &record, revision).await? {
            Written::Stored(revision) => {
                self.note(id, revision, true);
                Ok(())
            }
            Written::Conflict => match self.raw_entry(&key).await? {
                None => self.answered_elsewhere(&key),
                // Another replica's newer record (its own failed probe): adopted by the watch.
                Some(_) => Ok(()),
            },
        }
    }

    fn answered_elsewhere(&self, key: &BreakerKey) -> Result<(), ShareError> {
        tracing::info!(route = %key.render(), "a probe elsewhere was answered; closing");
        self.adopt(key, None);
        Ok(())
    }

    /// Shares that a probe here was answered. Returns whether this replica closed it for
    /// everyone (it reports the event): the record was there and its delete, by revision,
    /// succeeded.
    pub async fn closed(&self, id: &str) -> Result<bool, ShareError> {
        bounded(async {
            let key = parse(id)?;
            match self.raw_entry(&key).await? {
                Some((_, revision)) => Ok(self.store.delete_at(&key, revision).await?),
                None => Ok(false),
            }
        })
        .await
    }

    /// Forgets `id`'s breaker everywhere (its destination is disabled: parking holds its
    /// messages): this replica's breaker closes, and the record, when one is known, is
    /// deleted whatever its revision.
    pub async fn forget(&self, id: &str) -> Result<(), ShareError> {
        let key = parse(id)?;
        if self.breakers.reset(id) {
            self.metrics.breaker_closed(key.tenant().as_str());
        }
        if let Some(known) = self.known(id).filter(|k| k.present) {
            bounded(async { Ok(self.store.delete(&key).await?) }).await?;
            // Not deleted again by the next parked message before the watch tells.
            let mut all = self.known.lock().unwrap_or_else(PoisonError::into_inner);
            all.insert(
                id.to_owned(),
                Known {
                    revision: known.revision,
                    present: false,
                },
            );
        }
        Ok(())
    }

    /// The record under `key` and its revision; an unreadable record is `(None, revision)`.
    async fn raw_entry(
        &self,
        key: &BreakerKey,
    ) -> Result<Option<(Option<BreakerRecord>, u64)>, StoreError> {
        let rendered = key.render();
        let entry = self
            .store
            .bucket()
            .entry(rendered.as_str())
            .await
            .map_err(|e| StoreError::Kv {
                action: "get",
                key: rendered.clone(),
                source: Box::new(e),
            })?;
        Ok(entry
            .filter(|e| e.operation == kv::Operation::Put)
            .map(|e| (serde_json::from_slice(&e.value).ok(), e.revision)))
    }

    fn record(&self, shared: Shared) -> BreakerRecord {
        to_record(shared, Instant::now(), now(), &self.replica)
    }
}

async fn bounded<T>(call: impl Future<Output = Result<T, ShareError>>) -> Result<T, ShareError> {
    tokio::time::timeout(KV_TIMEOUT, call)
        .await
        .unwrap_or(Err(ShareError::TimedOut))
}

/// This process's name in the records it writes: `<host>/<process id>` (the host from
/// `HOSTNAME`, which Kubernetes and Docker set to the pod or container name).
pub fn replica_name() -> String {
    let host = std::env::var("HOSTNAME").unwrap_or_else(|_| "egress".to_owned());
    format!("{host}/{}", std::process::id())
}

fn parse(id: &str) -> Result<BreakerKey, StoreError> {
    BreakerKey::parse(id).map_err(|source| StoreError::InvalidKey {
        what: "breaker id",
        source,
    })
}

fn now() -> OffsetDateTime {
    OffsetDateTime::now_utc()
}

/// `at` on the wall clock, given that `now` is `wall` (saturating at the calendar's ends).
fn wall_of(at: Instant, now: Instant, wall: OffsetDateTime) -> OffsetDateTime {
    let moved = if at >= now {
        wall.checked_add(
            time::Duration::try_from(at.duration_since(now)).unwrap_or(time::Duration::MAX),
        )
    } else {
        wall.checked_sub(
            time::Duration::try_from(now.duration_since(at)).unwrap_or(time::Duration::MAX),
        )
    };
    moved.unwrap_or(wall)
}

/// `at` on this process's clock, given that `wall` is `now` (times this process's clock
/// cannot hold are taken as `now`; [`Breakers::adopt`] bounds them anyway).
fn instant_of(at: OffsetDateTime, now: Instant, wall: OffsetDateTime) -> Instant {
    let offset = at - wall;
    let instant = if offset.is_negative() {
        std::time::Duration::try_from(-offset)
            .ok()
            .and_then(|behind| now.checked_sub(behind))
    } else {
        std::time::Duration::try_from(offset)
            .ok()
            .and_then(|ahead| now.checked_add(ahead))
    };
    instant.unwrap_or(now)
}

fn to_record(shared: Shared, now: Instant, wall: OffsetDateTime, by: &str) -> BreakerRecord {
    BreakerRecord {
        down_since: wall_of(shared.down_since, now, wall),
        open_until: wall_of(shared.until, now, wall),
        reopenings: shared.reopenings,
        by: by.to_owned(),
    }
}

fn from_record(record: &BreakerRecord, now: Instant, wall: OffsetDateTime) -> Shared {
    Shared {
        until: instant_of(record.open_until, now, wall),
        down_since: instant_of(record.down_since, now, wall),
        reopenings: record.reopenings,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn open_periods_cross_replicas_as_wall_clock_time_and_come_back_the_same() {
        let now = Instant::now() + Duration::from_secs(3600);
        let wall = time::macros::datetime!(2026-12-06 10:00:00 UTC);
        let shared = Shared {
            until: now + Duration::from_secs(30),
            down_since: now - Duration::from_secs(600),
            reopenings: 3,
        };
        let record = to_record(shared, now, wall, "egress-0/7");
        assert_eq!(
            record.open_until,
            time::macros::datetime!(2026-12-06 10:00:30 UTC)
        );
        assert_eq!(
            record.down_since,
            time::macros::datetime!(2026-12-06 09:50:00 UTC)
        );
        assert_eq!(record.by, "egress-0/7");
        assert_eq!(from_record(&record, now, wall), shared);
        // Read by a replica whose clock reads 10 s later: 10 s less to wait.
        let later = from_record(&record, now, wall + Duration::from_secs(10));
        assert_eq!(later.until, now + Duration::from_secs(20));
        // The calendar's ends neither panic nor wrap.
        let far = BreakerRecord {
            open_until: time::macros::datetime!(9999-12-31 23:59:59 UTC),
            down_since: time::macros::datetime!(-9999-01-01 00:00:00 UTC),
            ..record
        };
        let shared = from_record(&far, now, wall);
        assert!(shared.until > now && shared.down_since <= now);
        let _ = to_record(
            shared,
            now,
            time::macros::datetime!(9999-12-31 23:59:59 UTC),
            "x",
        );
    }
}
