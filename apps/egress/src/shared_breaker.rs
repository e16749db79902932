//! Circuit breakers shared by every egress replica, through the `breakers` bucket
//! ([`BreakerRecord`] under [`BreakerKey`], the key of the route or destination).
//!
//! Each replica keeps its breakers in memory ([`Breakers`]) and decides on its own attempts;
//! this module makes one replica's finding everyone's, at a KV operation per change of state
//! (never per message):
//!
//! - a breaker that opens here **creates** the record; the replica whose create succeeds is
//!   the one that reports `breaker_opened` (one event per outage, not one per replica);
//! - a failed probe **rewrites** it with the next open period;
//! - an answered probe **deletes** it by revision; the replica whose delete succeeds reports
//!   `breaker_closed`;
//! - every replica **watches** the bucket ([`SharedBreakers::follow`]): a record opens its own
//!   breaker until the record's time (so no replica keeps sending to a route another found
//!   down), a deleted record closes it.
//!
//! What stays per replica: the counts that open a breaker (consecutive failures and the
//! failure-rate window), and the probe: once an open period ends, each replica lets one probe
//! through (at most one per replica per period). Times cross replicas as wall-clock time;
//! clocks skewed by seconds shift open periods by as much. With KV unreachable each replica
//! falls back to its own breakers.

use std::sync::Arc;

use async_nats::jetstream::kv;
use switchyard_keys::{BreakerKey, KvKey};
use switchyard_registry::{BreakerRecord, KvCache, Store, StoreError, Written};
use time::OffsetDateTime;
use tokio::sync::broadcast::error::RecvError;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::breaker::{Adopted, Breakers, Shared};
use crate::metrics::EgressMetrics;

/// The `breakers` bucket, watched.
pub struct SharedBreakers {
    store: Store<BreakerKey, BreakerRecord>,
    cache: Arc<KvCache<BreakerKey, BreakerRecord>>,
    replica: String,
}

impl SharedBreakers {
    /// Starts watching `bucket` until `shutdown`; records written are signed `replica`.
    pub fn start(bucket: kv::Store, replica: String, shutdown: CancellationToken) -> Self {
        Self {
            store: Store::new(bucket.clone()),
            cache: KvCache::start(bucket, shutdown),
            replica,
        }
    }

    /// Waits until every record present at start-up has been read.
    pub async fn wait_loaded(&self) {
        self.cache.wait_loaded().await;
    }

    /// Keeps `breakers` in step with the bucket until `shutdown`: every record present, then
    /// every change, is adopted ([`Breakers::adopt`]); `metrics`' open-breaker gauge follows.
    pub fn follow(
        self: &Arc<Self>,
        breakers: Arc<Breakers>,
        metrics: EgressMetrics,
        shutdown: CancellationToken,
    ) {
        let shared = self.clone();
        tokio::spawn(async move {
            // Subscribed before the first pass, so no change falls between the two.
            let mut changes = shared.cache.changes();
            shared.cache.wait_loaded().await;
            shared.adopt_all(&breakers, &metrics);
            loop {
                let changed = tokio::select! {
                    _ = shutdown.cancelled() => return,
                    changed = changes.recv() => changed,
                };
                match changed {
                    Ok(key) => shared.adopt(&key, &breakers, &metrics),
                    Err(RecvError::Lagged(missed)) => {
                        tracing::debug!(missed, "breaker changes lagged; reading them all");
                        shared.adopt_all(&breakers, &metrics);
                    }
                    Err(RecvError::Closed) => return,
                }
            }
        });
    }

    /// Adopts every record, and closes the breakers open here whose records are gone.
    fn adopt_all(&self, breakers: &Breakers, metrics: &EgressMetrics) {
        let mut keys = self.cache.keys();
        for id in breakers.open_routes() {
            if let Ok(key) = BreakerKey::parse(&id) {
                keys.push(key);
            }
        }
        for key in keys {
            self.adopt(&key, breakers, metrics);
        }
    }

    fn adopt(&self, key: &BreakerKey, breakers: &Breakers, metrics: &EgressMetrics) {
        let shared = match self.cache.get(key) {
            None => None,
            Some(Ok(record)) => Some(from_record(&record, Instant::now(), now())),
            Some(Err(reason)) => {
                tracing::warn!(breaker = %key.render(), %reason, "ignoring an invalid breaker record");
                return;
            }
        };
        let id = key.render();
        match breakers.adopt(&id, shared, Instant::now()) {
            Adopted::Unchanged => {}
            Adopted::Opened => {
                tracing::info!(route = %id, "circuit breaker opened by another replica");
                metrics.breaker_adopted(key.tenant().as_str(), true);
            }
            Adopted::Closed => {
                tracing::info!(route = %id, "circuit breaker closed by another replica");
                metrics.breaker_adopted(key.tenant().as_str(), false);
            }
        }
    }

    /// Shares that this replica's breaker `id` opened (`shared`, from [`Breakers::shared`]).
    /// Returns whether this replica opened it for everyone (it reports the event): its create
    /// succeeded, or the record there was from an open period already over. `false` when
    /// another replica's record holds it (this replica's state follows it through the watch).
    pub async fn opened(&self, id: &str, shared: Shared) -> Result<bool, StoreError> {
        let key = parse(id)?;
        let record = self.record(shared);
        if let Written::Stored(_) = self.store.create(&key, &record).await? {
            return Ok(true);
        }
        match self.store.entry(&key).await? {
            Some((old, revision)) if old.open_until <= now() => Ok(matches!(
                self.store.update(&key, &record, revision).await?,
                Written::Stored(_)
            )),
            Some(_) => Ok(false),
            // Deleted in between (a probe answered elsewhere): open it again.
            None => Ok(matches!(
                self.store.create(&key, &record).await?,
                Written::Stored(_)
            )),
        }
    }

    /// Shares that a probe here failed: the record is rewritten with the next open period.
    pub async fn reopened(&self, id: &str, shared: Shared) -> Result<(), StoreError> {
        self.store
            .put(&parse(id)?, &self.record(shared))
            .await
            .map(|_| ())
    }

    /// Shares that breaker `id` closed here (a probe was answered, or its destination was
    /// disabled). Returns whether this replica closed it for everyone (it reports the event):
    /// the record was there and its delete, by revision, succeeded.
    pub async fn closed(&self, id: &str) -> Result<bool, StoreError> {
        let key = parse(id)?;
        match self.store.entry(&key).await? {
            Some((_, revision)) => self.store.delete_at(&key, revision).await,
            None => Ok(false),
        }
    }

    fn record(&self, shared: Shared) -> BreakerRecord {
        to_record(shared, Instant::now(), now(), &self.replica)
    }
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

/// `at` on the wall clock, given that `now` is `wall`.
fn wall_of(at: Instant, now: Instant, wall: OffsetDateTime) -> OffsetDateTime {
    if at >= now {
        wall + at.duration_since(now)
    } else {
        wall - now.duration_since(at)
    }
}

/// `at` on this process's clock, given that `wall` is `now` (times before this process's
/// clock can tell are taken as `now`).
fn instant_of(at: OffsetDateTime, now: Instant, wall: OffsetDateTime) -> Instant {
    let offset = at - wall;
    match offset.try_into() {
        Ok(ahead) => now + ahead,
        Err(_) => {
            let behind: std::time::Duration = (-offset).try_into().unwrap_or_default();
            now.checked_sub(behind).unwrap_or(now)
        }
    }
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
    use std::time::Duration;

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
    }
}
