//! JSON records in a KV bucket, changed only by compare-and-set on the key's revision: the
//! storage under replay jobs ([`crate::JobStore`]) and inflow counters
//! ([`crate::StatsStore`]), and what makes a [`crate::Lease`] fence other instances.

use async_nats::jetstream::kv::{self, CreateErrorKind, Operation, UpdateErrorKind};
use futures::TryStreamExt;
use serde::Serialize;
use serde::de::DeserializeOwned;

/// Why a record operation failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The id does not make a valid key.
    #[error("invalid {kind} id")]
    InvalidId {
        /// What the id names (`job`).
        kind: &'static str,
        /// Why it is not a valid key.
        #[source]
        source: switchyard_keys::KeyError,
    },
    /// Reading a key failed.
    #[error("kv get of {key:?} failed")]
    Get {
        /// The key.
        key: String,
        /// The client's error.
        #[source]
        source: kv::EntryError,
    },
    /// Creating a key failed (for a reason other than its existing).
    #[error("kv create of {key:?} failed")]
    Create {
        /// The key.
        key: String,
        /// The client's error.
        #[source]
        source: kv::CreateError,
    },
    /// Updating a key failed (for a reason other than a newer revision).
    #[error("kv update of {key:?} failed")]
    Update {
        /// The key.
        key: String,
        /// The client's error.
        #[source]
        source: kv::UpdateError,
    },
    /// Listing the bucket's keys could not start.
    #[error("listing the bucket's keys failed")]
    List(#[source] kv::WatchError),
    /// Listing the bucket's keys failed part way.
    #[error("listing the bucket's keys failed")]
    Listing(#[source] kv::WatcherError),
    /// A stored value does not decode (or a record does not encode).
    #[error("{key:?} holds an invalid record")]
    Invalid {
        /// The key.
        key: String,
        /// The decode error.
        #[source]
        source: serde_json::Error,
    },
    /// A record with this key already exists.
    #[error("{key:?} already exists")]
    Exists {
        /// The key.
        key: String,
    },
}

/// The result of a compare-and-set write.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Written {
    /// Stored; the key's new revision.
    Stored(u64),
    /// Someone else wrote the key since the revision we held (or created it first).
    Conflict,
}

/// JSON records in one bucket.
#[derive(Clone)]
pub struct Records {
    /// The bucket.
    kv: kv::Store,
}

impl Records {
    /// Wraps a bucket.
    pub fn new(kv: kv::Store) -> Self {
        Self { kv }
    }

    fn encode<T: Serialize>(key: &str, value: &T) -> Result<bytes::Bytes, StoreError> {
        serde_json::to_vec(value)
            .map(Into::into)
            .map_err(|source| StoreError::Invalid {
                key: key.to_owned(),
                source,
            })
    }

    /// The record under `key` and its revision; `None` when there is none (or it was deleted).
    pub async fn get<T: DeserializeOwned>(
        &self,
        key: &str,
    ) -> Result<Option<(T, u64)>, StoreError> {
        let entry = self.kv.entry(key).await.map_err(|source| StoreError::Get {
            key: key.to_owned(),
            source,
        })?;
        let Some(entry) = entry.filter(|e| e.operation == Operation::Put) else {
            return Ok(None);
        };
        let value = serde_json::from_slice(&entry.value).map_err(|source| StoreError::Invalid {
            key: key.to_owned(),
            source,
        })?;
        Ok(Some((value, entry.revision)))
    }

    /// Stores a new record; [`Written::Conflict`] when the key exists.
    pub async fn create<T: Serialize>(&self, key: &str, value: &T) -> Result<Written, StoreError> {
        match self.kv.create(key, Self::encode(key, value)?).await {
            Ok(revision) => Ok(Written::Stored(revision)),
            Err(e) if e.kind() == CreateErrorKind::AlreadyExists => Ok(Written::Conflict),
            Err(source) => Err(StoreError::Create {
                key: key.to_owned(),
                source,
            }),
        }
    }

    /// Replaces a record if its revision is still `revision`.
    pub async fn update<T: Serialize>(
        &self,
        key: &str,
        value: &T,
        revision: u64,
    ) -> Result<Written, StoreError> {
        match self
            .kv
            .update(key, Self::encode(key, value)?, revision)
            .await
        {
            Ok(revision) => Ok(Written::Stored(revision)),
            Err(e) if e.kind() == UpdateErrorKind::WrongLastRevision => Ok(Written::Conflict),
            Err(source) => Err(StoreError::Update {
                key: key.to_owned(),
                source,
            }),
        }
    }

    /// Replaces a record held at `revision`, or creates it (`None`).
    pub async fn write<T: Serialize>(
        &self,
        key: &str,
        value: &T,
        revision: Option<u64>,
    ) -> Result<Written, StoreError> {
        match revision {
            Some(revision) => self.update(key, value, revision).await,
            None => self.create(key, value).await,
        }
    }

    /// Every key in the bucket, sorted.
    pub async fn keys(&self) -> Result<Vec<String>, StoreError> {
        let mut keys: Vec<String> = self
            .kv
            .keys()
            .await
            .map_err(StoreError::List)?
            .try_collect()
            .await
            .map_err(StoreError::Listing)?;
        keys.sort();
        Ok(keys)
    }
}
