//! Reading and writing [`JobRecord`]s in the `dlq-jobs` bucket. Every change after creation is
//! a compare-and-set on the key's revision ([`Store::update`]), so a lease taken by one dlq
//! service instance fences every other: a writer holding an old revision gets
//! [`Written::Conflict`] and must re-read before doing anything else.

use async_nats::jetstream::kv;
use switchyard_keys::kv::DlqJobKey;
use switchyard_registry::{Store, StoreError, Written};

use crate::JobRecord;

/// Job records in one bucket.
#[derive(Clone)]
pub struct JobStore {
    /// The records, keyed by job id.
    store: Store<DlqJobKey, JobRecord>,
}

impl JobStore {
    /// Wraps the `dlq-jobs` bucket.
    pub fn new(kv: kv::Store) -> Self {
        Self {
            store: Store::new(kv),
        }
    }

    fn key(id: &str) -> Result<DlqJobKey, StoreError> {
        DlqJobKey::new(id).map_err(|source| StoreError::InvalidKey {
            what: "job id",
            source,
        })
    }

    /// Stores a new job; fails with [`StoreError::Exists`] if the id exists.
    pub async fn create(&self, record: &JobRecord) -> Result<u64, StoreError> {
        let key = Self::key(&record.id)?;
        match self.store.create(&key, record).await? {
            Written::Stored(revision) => Ok(revision),
            Written::Conflict => Err(StoreError::Exists { key: key.job }),
        }
    }

    /// Reads a job and its revision; `None` when there is no such job.
    pub async fn get(&self, id: &str) -> Result<Option<(JobRecord, u64)>, StoreError> {
        self.store.entry(&Self::key(id)?).await
    }

    /// Replaces a job if its revision is still `revision`.
    pub async fn update(&self, record: &JobRecord, revision: u64) -> Result<Written, StoreError> {
        let key = Self::key(&record.id)?;
        self.store.update(&key, record, revision).await
    }

    /// Every job with its revision, oldest first (ids are UUIDv7s). A record that does not
    /// decode comes back as an error in place, so one bad record hides no others.
    pub async fn list(&self) -> Result<Vec<Result<(JobRecord, u64), StoreError>>, StoreError> {
        let entries = self.store.entries(|_| true).await?;
        Ok(entries.into_iter().map(|(_, found)| found).collect())
    }
}
