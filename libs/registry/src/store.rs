//! Typed access to a KV bucket of JSON records keyed by a [`KvKey`] schema: plain reads and
//! writes for configuration records, and revision-aware reads with compare-and-set writes for
//! records that several writers change (replay jobs, DLQ counters, leases).

use std::marker::PhantomData;

use async_nats::jetstream::consumer;
use async_nats::jetstream::kv::{self, CreateErrorKind, UpdateErrorKind};
use futures::{StreamExt, TryStreamExt};
use serde::Serialize;
use serde::de::DeserializeOwned;
use switchyard_keys::{KeyError, KvKey};

/// Whether nats-server's answer to a message delete (`STREAM.MSG.DELETE`) says only that the
/// message was no longer there: 10043 (sequence not found), 10037 (no message found), or its
/// catch-all delete failure 10057 when the store says "no message found"
/// (`jsMsgDeleteRequest`). Any other 10057 — "message delete not permitted" on a stream with
/// `deny_delete`, a store error — is a refusal: the message is still there. The one reading of
/// a delete for every caller (egress's schedules, the DLQ's replayed entries).
pub fn gone_on_delete(error: &async_nats::jetstream::Error) -> bool {
    use async_nats::jetstream::ErrorCode;
    let code = error.error_code();
    code == ErrorCode::SEQUENCE_NOT_FOUND
        || code == ErrorCode::NO_MESSAGE_FOUND
        || (code == ErrorCode::STREAM_MESSAGE_DELETE_FAILED
            && error.to_string().contains("no message found"))
}

/// Why a store operation failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The KV request failed.
    #[error("kv {action} failed for key {key:?}")]
    Kv {
        /// `get`, `put`, `create`, `update`, `delete`, `purge_history`, `list` or `keys`.
        action: &'static str,
        /// The key (or filter).
        key: String,
        /// The client's error (an `async_nats` error carrying its kind, e.g.
        /// [`kv::UpdateError`]).
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// A stored value is not a valid record.
    #[error("key {key:?} holds an invalid record")]
    Invalid {
        /// The key.
        key: String,
        /// The decode (or encode) error.
        #[source]
        source: serde_json::Error,
    },
    /// An id given by a caller does not make a key of the bucket's schema.
    #[error("invalid {what}")]
    InvalidKey {
        /// What the id names (`job id`).
        what: &'static str,
        /// Why it is not a valid key.
        #[source]
        source: KeyError,
    },
    /// A record with this key already exists (for callers to whom [`Written::Conflict`] on
    /// [`Store::create`] is an error).
    #[error("{key:?} already exists")]
    Exists {
        /// The key.
        key: String,
    },
}

impl StoreError {
    fn kv(
        action: &'static str,
        key: &str,
        source: impl std::error::Error + Send + Sync + 'static,
    ) -> Self {
        StoreError::Kv {
            action,
            key: key.to_owned(),
            source: Box::new(source),
        }
    }
}

/// The result of a compare-and-set write.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Written {
    /// Stored; the key's new revision.
    Stored(u64),
    /// Someone else wrote the key since the revision we held (or created it first).
    Conflict,
}

/// What [`Store::change`] did.
#[derive(Debug, Clone, PartialEq)]
pub enum Changed<R> {
    /// The record written, and its revision.
    Stored(R, u64),
    /// The change left the record as it was (`None`: there is none).
    Unchanged(Option<R>),
    /// Someone else wrote the key between each read and write, every time.
    Conflicts,
}

/// Records of type `R` under keys of schema `K` in one bucket. A bucket holding several record
/// types (the rate limits, the DLQ counters and their processor state) is opened once per type.
#[derive(Clone)]
pub struct Store<K, R> {
    /// The bucket.
    kv: kv::Store,
    /// The key schema and record type.
    _types: PhantomData<fn() -> (K, R)>,
}

impl<K: KvKey, R: Serialize + DeserializeOwned> Store<K, R> {
    /// Wraps a bucket.
    pub fn new(kv: kv::Store) -> Self {
        Self {
            kv,
            _types: PhantomData,
        }
    }

    /// The bucket handle (for watches).
    pub fn bucket(&self) -> &kv::Store {
        &self.kv
    }

    fn encode(key: &str, record: &R) -> Result<bytes::Bytes, StoreError> {
        serde_json::to_vec(record)
            .map(Into::into)
            .map_err(|source| StoreError::Invalid {
                key: key.to_owned(),
                source,
            })
    }

    /// Reads a record; `None` when the key does not exist (or was deleted).
    pub async fn get(&self, key: &K) -> Result<Option<R>, StoreError> {
        Ok(self.entry(key).await?.map(|(record, _)| record))
    }

    /// Reads a record and its revision (what [`Store::update`] compares against); `None` when
    /// the key does not exist (or was deleted).
    pub async fn entry(&self, key: &K) -> Result<Option<(R, u64)>, StoreError> {
        let rendered = key.render();
        let entry = self
            .kv
            .entry(rendered.as_str())
            .await
            .map_err(|e| StoreError::kv("get", &rendered, e))?;
        let Some(entry) = entry.filter(|e| e.operation == kv::Operation::Put) else {
            return Ok(None);
        };
        let record =
            serde_json::from_slice(&entry.value).map_err(|source| StoreError::Invalid {
                key: rendered,
                source,
            })?;
        Ok(Some((record, entry.revision)))
    }

    /// Writes a record whatever is stored; returns the new revision.
    pub async fn put(&self, key: &K, record: &R) -> Result<u64, StoreError> {
        let rendered = key.render();
        let bytes = Self::encode(&rendered, record)?;
        self.kv
            .put(rendered.as_str(), bytes)
            .await
            .map_err(|e| StoreError::kv("put", &rendered, e))
    }

    /// Stores a new record; [`Written::Conflict`] when the key exists.
    pub async fn create(&self, key: &K, record: &R) -> Result<Written, StoreError> {
        let rendered = key.render();
        match self
            .kv
            .create(rendered.as_str(), Self::encode(&rendered, record)?)
            .await
        {
            Ok(revision) => Ok(Written::Stored(revision)),
            Err(e) if e.kind() == CreateErrorKind::AlreadyExists => Ok(Written::Conflict),
            Err(e) => Err(StoreError::kv("create", &rendered, e)),
        }
    }

    /// Stores a new record that the server removes after `ttl` (a per-key TTL: the bucket
    /// must allow them, `limit_markers`; nats-server 2.11+); [`Written::Conflict`] when the
    /// key exists.
    pub async fn create_with_ttl(
        &self,
        key: &K,
        record: &R,
        ttl: std::time::Duration,
    ) -> Result<Written, StoreError> {
        let rendered = key.render();
        match self
            .kv
            .create_with_ttl(rendered.as_str(), Self::encode(&rendered, record)?, ttl)
            .await
        {
            Ok(revision) => Ok(Written::Stored(revision)),
            Err(e) if e.kind() == CreateErrorKind::AlreadyExists => Ok(Written::Conflict),
            Err(e) => Err(StoreError::kv("create", &rendered, e)),
        }
    }

    /// Removes a key and every revision of it; the purge marker itself goes after `ttl`, so
    /// nothing of the key stays in the bucket (per-key TTLs, as [`Store::create_with_ttl`]).
    pub async fn purge_with_ttl(
        &self,
        key: &K,
        ttl: std::time::Duration,
    ) -> Result<(), StoreError> {
        let rendered = key.render();
        self.kv
            .purge_with_ttl(rendered.as_str(), ttl)
            .await
            .map_err(|e| StoreError::kv("purge", &rendered, e))
    }

    /// Replaces a record if its revision is still `revision`; [`Written::Conflict`] when
    /// someone wrote it since.
    pub async fn update(&self, key: &K, record: &R, revision: u64) -> Result<Written, StoreError> {
        let rendered = key.render();
        match self
            .kv
            .update(
                rendered.as_str(),
                Self::encode(&rendered, record)?,
                revision,
            )
            .await
        {
            Ok(revision) => Ok(Written::Stored(revision)),
            Err(e) if e.kind() == UpdateErrorKind::WrongLastRevision => Ok(Written::Conflict),
            Err(e) => Err(StoreError::kv("update", &rendered, e)),
        }
    }

    /// Replaces a record held at `revision` ([`Store::update`]), or creates it (`None`,
    /// [`Store::create`]).
    pub async fn write(
        &self,
        key: &K,
        record: &R,
        revision: Option<u64>,
    ) -> Result<Written, StoreError> {
        match revision {
            Some(revision) => self.update(key, record, revision).await,
            None => self.create(key, record).await,
        }
    }

    /// Changes a record by compare-and-set, reading it again after a conflict, at most `tries`
    /// rounds: `change` gets the stored record (`None`: absent) and returns the record to
    /// write, or `None` to leave it as it is. A concurrent writer's change is never overwritten.
    ///
    /// Errors: `change`'s own, or a [`StoreError`] of a read or write.
    pub async fn change<E: From<StoreError>>(
        &self,
        key: &K,
        tries: usize,
        mut change: impl FnMut(Option<&R>) -> Result<Option<R>, E>,
    ) -> Result<Changed<R>, E> {
        for _ in 0..tries {
            let stored = self.entry(key).await?;
            let Some(next) = change(stored.as_ref().map(|(record, _)| record))? else {
                return Ok(Changed::Unchanged(stored.map(|(record, _)| record)));
            };
            if let Written::Stored(revision) = self
                .write(key, &next, stored.map(|(_, revision)| revision))
                .await?
            {
                return Ok(Changed::Stored(next, revision));
            }
        }
        Ok(Changed::Conflicts)
    }

    /// Drops every earlier revision of `key` from the bucket's history, keeping only the
    /// current one (a JetStream purge of the key's subject with `keep: 1`): for records whose
    /// old values must not linger, such as a route's rotated-out signing secrets. The KV and
    /// its API no longer hold them; their bytes may stay in the store's block files until
    /// nats-server compacts or removes the block (a bucket denies single-message deletes, the
    /// only way JetStream overwrites a message): encryption at rest is what covers the disk.
    pub async fn purge_history(&self, key: &K) -> Result<(), StoreError> {
        let rendered = key.render();
        self.kv
            .stream
            .purge()
            .filter(format!("{}{rendered}", self.kv.prefix))
            .keep(1)
            .await
            .map(|_| ())
            .map_err(|e| StoreError::kv("purge_history", &rendered, e))
    }

    /// Deletes a record (a delete marker; history keeps the old value).
    pub async fn delete(&self, key: &K) -> Result<(), StoreError> {
        let rendered = key.render();
        self.kv
            .delete(rendered.as_str())
            .await
            .map_err(|e| StoreError::kv("delete", &rendered, e))
    }

    /// Deletes a record if its revision is still `revision` (a delete marker): `true`, or
    /// `false` when someone wrote or deleted it since.
    pub async fn delete_at(&self, key: &K, revision: u64) -> Result<bool, StoreError> {
        let rendered = key.render();
        match self
            .kv
            .delete_expect_revision(rendered.as_str(), Some(revision))
            .await
        {
            Ok(()) => Ok(true),
            Err(e) if e.kind() == UpdateErrorKind::WrongLastRevision => Ok(false),
            Err(e) => Err(StoreError::kv("delete", &rendered, e)),
        }
    }

    /// Every live key of the schema in the bucket, sorted; keys of other schemas are skipped.
    /// Reads no values ([`Store::entries`] reads them with their revisions).
    pub async fn keys(&self) -> Result<Vec<K>, StoreError> {
        let mut keys: Vec<String> = self
            .kv
            .keys()
            .await
            .map_err(|e| StoreError::kv("keys", ">", e))?
            .try_collect()
            .await
            .map_err(|e| StoreError::kv("keys", ">", e))?;
        keys.sort();
        Ok(keys.iter().filter_map(|key| K::parse(key).ok()).collect())
    }

    /// Every live record whose key is `wanted`, with its revision, sorted by key: the keys are
    /// listed first ([`Store::keys`]), then each record is read ([`Store::entry`]), so every
    /// revision is one a compare-and-set can be made against. A value that does not decode
    /// comes back as an error in place, so one bad record hides no others; a key deleted in
    /// between is skipped.
    pub async fn entries(
        &self,
        wanted: impl Fn(&K) -> bool,
    ) -> Result<Vec<(K, Result<(R, u64), StoreError>)>, StoreError> {
        let mut out = Vec::new();
        for key in self.keys().await?.into_iter().filter(|key| wanted(key)) {
            match self.entry(&key).await {
                Ok(Some(found)) => out.push((key, Ok(found))),
                Ok(None) => {}
                Err(e @ StoreError::Invalid { .. }) => out.push((key, Err(e))),
                Err(e) => return Err(e),
            }
        }
        Ok(out)
    }

    /// Every live record whose key matches `filter` (e.g. a tenant filter, or `>`), sorted by
    /// key. Values that do not decode come back as errors in place, so one bad record does not
    /// hide the others. Reads the latest revision per key through an ordered consumer and
    /// stops when it has caught up (at once when nothing matches).
    pub async fn list(&self, filter: &str) -> Result<Vec<(K, Result<R, StoreError>)>, StoreError> {
        let consumer = self
            .kv
            .stream
            .create_consumer(consumer::pull::OrderedConfig {
                filter_subject: format!("{}{filter}", self.kv.prefix),
                deliver_policy: consumer::DeliverPolicy::LastPerSubject,
                replay_policy: consumer::ReplayPolicy::Instant,
                ..Default::default()
            })
            .await
            .map_err(|e| StoreError::kv("list", filter, e))?;
        let mut pending = consumer.cached_info().num_pending;
        let mut messages = consumer
            .messages()
            .await
            .map_err(|e| StoreError::kv("list", filter, e))?;
        let mut out = Vec::new();
        while pending > 0 {
            let Some(message) = messages.next().await else {
                break;
            };
            let message = message.map_err(|e| StoreError::kv("list", filter, e))?;
            pending = message.info().map(|i| i.pending).unwrap_or(0);
            let deleted = message
                .headers
                .as_ref()
                .and_then(|h| h.get("KV-Operation"))
                .is_some_and(|op| op.as_str() == "DEL" || op.as_str() == "PURGE");
            let Some(key) = message.subject.strip_prefix(self.kv.prefix.as_str()) else {
                continue;
            };
            let Ok(parsed_key) = K::parse(key) else {
                continue;
            };
            if deleted {
                continue;
            }
            let record =
                serde_json::from_slice(&message.payload).map_err(|source| StoreError::Invalid {
                    key: key.to_owned(),
                    source,
                });
            out.push((parsed_key, record));
        }
        out.sort_by_key(|(k, _)| k.render());
        Ok(out)
    }
}
