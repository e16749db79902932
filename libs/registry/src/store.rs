//! Typed access to a KV bucket of JSON records keyed by a [`KvKey`] schema.

use std::marker::PhantomData;

use async_nats::jetstream::{consumer, kv};
use futures::StreamExt;
use serde::Serialize;
use serde::de::DeserializeOwned;
use switchyard_keys::KvKey;

/// Why a store operation failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The KV request failed.
    #[error("kv {action} failed for key {key:?}")]
    Kv {
        /// `get`, `put`, `delete` or `list`.
        action: &'static str,
        /// The key (or filter).
        key: String,
        /// The client's error, with its kind.
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
}

/// Records of type `R` under keys of schema `K` in one bucket.
#[derive(Clone)]
pub struct Store<K, R> {
    kv: kv::Store,
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

    /// Reads a record; `None` when the key does not exist (or was deleted).
    pub async fn get(&self, key: &K) -> Result<Option<R>, StoreError> {
        let rendered = key.render();
        let value = self.kv.get(&rendered).await.map_err(|e| StoreError::Kv {
            action: "get",
            key: rendered.clone(),
            source: Box::new(e),
        })?;
        value
            .map(|bytes| {
                serde_json::from_slice(&bytes).map_err(|source| StoreError::Invalid {
                    key: rendered.clone(),
                    source,
                })
            })
            .transpose()
    }

    /// Writes a record; returns the new revision.
    pub async fn put(&self, key: &K, record: &R) -> Result<u64, StoreError> {
        let rendered = key.render();
        let bytes = serde_json::to_vec(record).map_err(|source| StoreError::Invalid {
            key: rendered.clone(),
            source,
        })?;
        self.kv
            .put(&rendered, bytes.into())
            .await
            .map_err(|e| StoreError::Kv {
                action: "put",
                key: rendered,
                source: Box::new(e),
            })
    }

    /// Deletes a record (a delete marker; history keeps the old value).
    pub async fn delete(&self, key: &K) -> Result<(), StoreError> {
        let rendered = key.render();
        self.kv.delete(&rendered).await.map_err(|e| StoreError::Kv {
            action: "delete",
            key: rendered,
            source: Box::new(e),
        })
    }

    /// Every live record whose key matches `filter` (e.g. a tenant filter, or `>`), sorted by
    /// key. Values that do not decode come back as errors in place, so one bad record does not
    /// hide the others. Reads the latest revision per key through an ordered consumer and
    /// stops when it has caught up (at once when nothing matches).
    pub async fn list(&self, filter: &str) -> Result<Vec<(K, Result<R, StoreError>)>, StoreError> {
        let list_err = |e: Box<dyn std::error::Error + Send + Sync>| StoreError::Kv {
            action: "list",
            key: filter.to_owned(),
            source: e,
        };
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
            .map_err(|e| list_err(e.into()))?;
        let mut pending = consumer.cached_info().num_pending;
        let mut messages = consumer.messages().await.map_err(|e| list_err(e.into()))?;
        let mut out = Vec::new();
        while pending > 0 {
            let Some(message) = messages.next().await else {
                break;
            };
            let message = message.map_err(|e| list_err(e.into()))?;
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
