//! Reading and writing [`JobRecord`]s in the `dlq-jobs` bucket. Every change after creation is
//! a compare-and-set on the key's revision ([`Records`]), so a lease taken by one dlq service
//! instance fences every other: a writer holding an old revision gets [`Written::Conflict`]
//! and must re-read before doing anything else.

use async_nats::jetstream::kv;
use switchyard_keys::KvKey;
use switchyard_keys::kv::DlqJobKey;

use crate::JobRecord;
use crate::records::{Records, StoreError, Written};

/// Job records in one bucket.
#[derive(Clone)]
pub struct JobStore {
    /// The records.
    records: Records,
}

impl JobStore {
    /// Wraps the `dlq-jobs` bucket.
    pub fn new(kv: kv::Store) -> Self {
        Self {
            records: Records::new(kv),
        }
    }

    fn key(id: &str) -> Result<String, StoreError> {
        DlqJobKey::new(id)
            .map(|key| key.render())
            .map_err(|source| StoreError::InvalidId {
                kind: "job",
                source,
            })
    }

    /// Stores a new job; fails with [`StoreError::Exists`] if the id exists.
    pub async fn create(&self, record: &JobRecord) -> Result<u64, StoreError> {
        let key = Self::key(&record.id)?;
        match self.records.create(&key, record).await? {
            Written::Stored(revision) => Ok(revision),
            Written::Conflict => Err(StoreError::Exists { key }),
        }
    }

    /// Reads a job and its revision; `None` when there is no such job.
    pub async fn get(&self, id: &str) -> Result<Option<(JobRecord, u64)>, StoreError> {
        self.records.get(&Self::key(id)?).await
    }

    /// Replaces a job if its revision is still `revision`.
    pub async fn update(&self, record: &JobRecord, revision: u64) -> Result<Written, StoreError> {
        let key = Self::key(&record.id)?;
        self.records.update(&key, record, revision).await
    }

    /// Every job with its revision, oldest first (ids are UUIDv7s). A record that does not
    /// decode comes back as an error in place, so one bad record hides no others.
    pub async fn list(&self) -> Result<Vec<Result<(JobRecord, u64), StoreError>>, StoreError> {
        let keys = self.records.keys().await?;
        let mut out = Vec::with_capacity(keys.len());
        for key in keys {
            if DlqJobKey::parse(&key).is_err() {
                continue;
            }
            match self.records.get(&key).await {
                Ok(Some(found)) => out.push(Ok(found)),
                Ok(None) => {}
                Err(e @ StoreError::Invalid { .. }) => out.push(Err(e)),
                Err(e) => return Err(e),
            }
        }
        Ok(out)
    }
}
