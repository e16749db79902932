//! Reading and writing [`JobRecord`]s in the `dlq-jobs` bucket. Every change after creation is
//! a compare-and-set on the key's revision, so a lease taken by one dlq service instance
//! fences every other: a writer holding an old revision gets [`Written::Conflict`] and must
//! re-read before doing anything else.

use async_nats::jetstream::kv::{self, CreateErrorKind, Operation, UpdateErrorKind};
use futures::TryStreamExt;
use switchyard_keys::KvKey;
use switchyard_keys::kv::DlqJobKey;

use crate::JobRecord;

/// Why a job store operation failed.
#[derive(Debug, thiserror::Error)]
pub enum JobStoreError {
    /// The id is not a valid job id.
    #[error("invalid job id: {0}")]
    InvalidId(#[from] switchyard_keys::KeyError),
    /// The KV request failed.
    #[error("kv {action} of job {job} failed: {message}")]
    Kv {
        /// `get`, `create`, `update` or `list`.
        action: &'static str,
        /// The job id (or `*` for a listing).
        job: String,
        /// The client's error.
        message: String,
    },
    /// A stored value is not a valid job record.
    #[error("job {job} holds an invalid record: {message}")]
    Invalid {
        /// The job id.
        job: String,
        /// The decode error.
        message: String,
    },
    /// A job with this id already exists.
    #[error("job {0} already exists")]
    Exists(String),
}

/// The result of a compare-and-set write.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Written {
    /// Stored; the key's new revision.
    Stored(u64),
    /// Someone else wrote the key since the revision we held.
    Conflict,
}

/// Job records in one bucket.
#[derive(Clone)]
pub struct JobStore {
    kv: kv::Store,
}

impl JobStore {
    /// Wraps the `dlq-jobs` bucket.
    pub fn new(kv: kv::Store) -> Self {
        Self { kv }
    }

    fn key(id: &str) -> Result<String, JobStoreError> {
        Ok(DlqJobKey::new(id)?.render())
    }

    fn encode(record: &JobRecord) -> Result<bytes::Bytes, JobStoreError> {
        serde_json::to_vec(record)
            .map(Into::into)
            .map_err(|e| JobStoreError::Invalid {
                job: record.id.clone(),
                message: e.to_string(),
            })
    }

    /// Stores a new job; fails if the id exists.
    pub async fn create(&self, record: &JobRecord) -> Result<u64, JobStoreError> {
        let key = Self::key(&record.id)?;
        match self.kv.create(&key, Self::encode(record)?).await {
            Ok(revision) => Ok(revision),
            Err(e) if e.kind() == CreateErrorKind::AlreadyExists => {
                Err(JobStoreError::Exists(record.id.clone()))
            }
            Err(e) => Err(JobStoreError::Kv {
                action: "create",
                job: record.id.clone(),
                message: e.to_string(),
            }),
        }
    }

    /// Reads a job and its revision; `None` when there is no such job.
    pub async fn get(&self, id: &str) -> Result<Option<(JobRecord, u64)>, JobStoreError> {
        let key = Self::key(id)?;
        let entry = self.kv.entry(&key).await.map_err(|e| JobStoreError::Kv {
            action: "get",
            job: id.to_owned(),
            message: e.to_string(),
        })?;
        let Some(entry) = entry.filter(|e| e.operation == Operation::Put) else {
            return Ok(None);
        };
        let record = serde_json::from_slice(&entry.value).map_err(|e| JobStoreError::Invalid {
            job: id.to_owned(),
            message: e.to_string(),
        })?;
        Ok(Some((record, entry.revision)))
    }

    /// Replaces a job if its revision is still `revision`.
    pub async fn update(
        &self,
        record: &JobRecord,
        revision: u64,
    ) -> Result<Written, JobStoreError> {
        let key = Self::key(&record.id)?;
        match self.kv.update(&key, Self::encode(record)?, revision).await {
            Ok(revision) => Ok(Written::Stored(revision)),
            Err(e) if e.kind() == UpdateErrorKind::WrongLastRevision => Ok(Written::Conflict),
            Err(e) => Err(JobStoreError::Kv {
                action: "update",
                job: record.id.clone(),
                message: e.to_string(),
            }),
        }
    }

    /// Every job with its revision, oldest first (ids are UUIDv7s). A record that does not
    /// decode comes back as an error in place, so one bad record hides no others.
    pub async fn list(
        &self,
    ) -> Result<Vec<Result<(JobRecord, u64), JobStoreError>>, JobStoreError> {
        let list_err = |e: &dyn std::fmt::Display| JobStoreError::Kv {
            action: "list",
            job: "*".to_owned(),
            message: e.to_string(),
        };
        let mut keys: Vec<String> = match self.kv.keys().await {
            Ok(keys) => keys.try_collect().await.map_err(|e| list_err(&e))?,
            Err(e) => return Err(list_err(&e)),
        };
        keys.sort();
        let mut out = Vec::with_capacity(keys.len());
        for key in keys {
            if DlqJobKey::parse(&key).is_err() {
                continue;
            }
            match self.get(&key).await {
                Ok(Some(found)) => out.push(Ok(found)),
                Ok(None) => {}
                Err(e @ JobStoreError::Invalid { .. }) => out.push(Err(e)),
                Err(e) => return Err(e),
            }
        }
        Ok(out)
    }
}
