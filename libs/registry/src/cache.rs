//! An in-memory copy of a bucket of records, kept fresh by a KV watch.
//!
//! Services read routes and tenants on every message; they read this cache, never KV. The
//! cache loads every current value first ([`KvCache::wait_loaded`]), then applies updates as
//! the watch delivers them (typically within milliseconds), and re-creates the watch with
//! backoff if it ends (a NATS outage): until then the last known values stay in force.

use std::collections::HashMap;
use std::hash::Hash;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use async_nats::jetstream::kv;
use futures::StreamExt;
use serde::de::DeserializeOwned;
use switchyard_keys::KvKey;
use switchyard_runtime::RetryPolicy;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

/// A value in the cache: the record, or why the stored bytes are not a valid record (so a
/// service can dead-letter with a precise reason instead of pretending the key is absent).
pub type Cached<R> = Result<R, String>;

/// A watched copy of one bucket.
pub struct KvCache<K, R> {
    entries: RwLock<HashMap<K, Cached<R>>>,
    loaded: watch::Sender<bool>,
    /// Counts the updates applied (see [`KvCache::changes`]).
    version: watch::Sender<u64>,
    filter: Option<String>,
    /// The keys the current watch has handed over, until it has caught up: the cached keys it
    /// did not hand over are then no longer in the bucket (deleted while the watch was down
    /// with no marker left, aged out, or the bucket deleted and made again), and are dropped.
    handed: std::sync::Mutex<Option<std::collections::HashSet<String>>>,
}

impl<K, R> KvCache<K, R>
where
    K: KvKey + Eq + Hash + Send + Sync + 'static,
    R: DeserializeOwned + Clone + Send + Sync + 'static,
{
    /// Starts watching `bucket` until `shutdown`.
    pub fn start(bucket: kv::Store, shutdown: CancellationToken) -> Arc<Self> {
        Self::start_inner(bucket, None, shutdown)
    }

    /// Starts watching only the keys matching `filter` (e.g. `*.pressure`), for buckets that
    /// hold several record types. Such a cache counts as loaded as soon as its watch runs;
    /// current values arrive right after.
    pub fn start_filtered(
        bucket: kv::Store,
        filter: &str,
        shutdown: CancellationToken,
    ) -> Arc<Self> {
        Self::start_inner(bucket, Some(filter.to_owned()), shutdown)
    }

    fn start_inner(
        bucket: kv::Store,
        filter: Option<String>,
        shutdown: CancellationToken,
    ) -> Arc<Self> {
        let cache = Arc::new(Self::empty(filter));
        let task = cache.clone();
        tokio::spawn(async move { task.follow(bucket, shutdown).await });
        cache
    }

    /// A cache holding nothing yet, following nothing.
    fn empty(filter: Option<String>) -> Self {
        let (loaded, _) = watch::channel(false);
        let (version, _) = watch::channel(0);
        Self {
            entries: RwLock::new(HashMap::new()),
            loaded,
            version,
            filter,
            handed: std::sync::Mutex::new(None),
        }
    }

    /// Waits until every value present at start-up has been loaded.
    pub async fn wait_loaded(&self) {
        let mut rx = self.loaded.subscribe();
        let _ = rx.wait_for(|loaded| *loaded).await;
    }

    /// Whether the initial load is complete.
    pub fn is_loaded(&self) -> bool {
        *self.loaded.borrow()
    }

    /// A receiver told of every update applied from now on (a put, a delete; its value counts
    /// them), for a holder of a value read from the cache to notice it may have changed.
    pub fn changes(&self) -> watch::Receiver<u64> {
        self.version.subscribe()
    }

    /// The cached value for `key`.
    pub fn get(&self, key: &K) -> Option<Cached<R>> {
        self.entries.read().ok()?.get(key).cloned()
    }

    /// Every cached key (valid or not).
    pub fn keys(&self) -> Vec<K>
    where
        K: Clone,
    {
        self.entries
            .read()
            .map(|e| e.keys().cloned().collect())
            .unwrap_or_default()
    }

    /// The entries whose keys `pick` selects, cloned: one pass over every key under the read
    /// lock (microseconds for thousands of keys), for the few keys of one tenant.
    pub fn select(&self, mut pick: impl FnMut(&K) -> bool) -> Vec<(K, Cached<R>)>
    where
        K: Clone,
    {
        self.entries
            .read()
            .map(|e| {
                e.iter()
                    .filter(|(k, _)| pick(k))
                    .map(|(k, v)| (k.clone(), v.clone()))
                    .collect()
            })
            .unwrap_or_default()
    }

    /// How many keys are cached.
    pub fn len(&self) -> usize {
        self.entries.read().map(|e| e.len()).unwrap_or(0)
    }

    /// Whether the cache is empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// A watch begins: it will hand over every key the bucket holds (or its filter matches).
    fn started(&self) {
        *self
            .handed
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(Default::default());
    }

    fn apply(&self, entry: &kv::Entry) {
        let caught_up = {
            let mut handed = self
                .handed
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            if let Some(seen) = handed.as_mut() {
                seen.insert(entry.key.clone());
            }
            // Nothing more pending: every key the bucket holds has been handed over.
            if entry.delta == 0 {
                handed.take()
            } else {
                None
            }
        };
        let Ok(mut entries) = self.entries.write() else {
            return;
        };
        match K::parse(&entry.key) {
            Ok(key) => match entry.operation {
                kv::Operation::Put => {
                    let value =
                        serde_json::from_slice::<R>(&entry.value).map_err(|e| e.to_string());
                    entries.insert(key, value);
                }
                kv::Operation::Delete | kv::Operation::Purge => {
                    entries.remove(&key);
                }
            },
            Err(_) => {
                tracing::warn!(key = %entry.key, "ignoring a key outside the bucket's schema");
            }
        }
        if let Some(seen) = caught_up {
            entries.retain(|key, _| seen.contains(&key.render()));
        }
        drop(entries);
        self.version
            .send_modify(|version| *version = version.wrapping_add(1));
    }

    async fn follow(&self, bucket: kv::Store, shutdown: CancellationToken) {
        follow_bucket_from(
            &bucket,
            self.filter.as_deref(),
            &self.loaded,
            &shutdown,
            &|| self.started(),
            &|entry| self.apply(entry),
        )
        .await;
    }
}

/// Follows `bucket` until `shutdown`: every key's current entry (with `filter`, of the matching
/// keys; JetStream's last-per-subject delivery), then each change, handed to `apply` in the
/// bucket's order. A watch that ends (a NATS outage) is re-created with backoff, and each key's
/// current entry is then handed over again — never an older one, so a cache never goes back to
/// a key's earlier record while it catches up (a re-created watch that replayed the history
/// would hand over, say, a tenant's `enabled` record before the `disabled` one that replaced
/// it): `apply` must take an entry it has seen as a no-op. `loaded` is set once every value
/// present at the start was handed over (at once for a filtered watch, or an empty bucket).
pub async fn follow_bucket(
    bucket: &kv::Store,
    filter: Option<&str>,
    loaded: &watch::Sender<bool>,
    shutdown: &CancellationToken,
    apply: &(dyn Fn(&kv::Entry) + Sync),
) {
    follow_bucket_from(bucket, filter, loaded, shutdown, &|| {}, apply).await;
}

/// [`follow_bucket`], calling `started` as each watch begins, before its first entry (the
/// watch then hands over every key the bucket holds, until an entry with nothing pending).
pub async fn follow_bucket_from(
    bucket: &kv::Store,
    filter: Option<&str>,
    loaded: &watch::Sender<bool>,
    shutdown: &CancellationToken,
    started: &(dyn Fn() + Sync),
    apply: &(dyn Fn(&kv::Entry) + Sync),
) {
    let mut backoff = RetryPolicy::INFRASTRUCTURE.backoff();
    loop {
        let began = tokio::time::Instant::now();
        match watch_once(bucket, filter, loaded, shutdown, started, apply).await {
            Ok(()) => return,
            Err(error) => {
                tracing::warn!(bucket = %bucket.name, %error, "kv watch ended; re-creating")
            }
        }
        // A watch that ran for a while was healthy: start the delays over.
        if began.elapsed() > Duration::from_secs(30) {
            backoff.reset();
        }
        if !backoff.wait(shutdown).await {
            return;
        }
    }
}

/// Runs one watch until it ends (error) or shutdown (Ok).
async fn watch_once(
    bucket: &kv::Store,
    filter: Option<&str>,
    loaded: &watch::Sender<bool>,
    shutdown: &CancellationToken,
    started: &(dyn Fn() + Sync),
    apply: &(dyn Fn(&kv::Entry) + Sync),
) -> Result<(), String> {
    // A filtered watch counts as loaded at once (the bucket's count is of every key); an
    // unfiltered one once its last present entry is handed over, or at once when empty.
    let empty = match filter {
        Some(_) => true,
        None => bucket.status().await.map_err(|e| e.to_string())?.values() == 0,
    };
    let mut watch = bucket
        .watch_with_history(filter.unwrap_or(">"))
        .await
        .map_err(|e| e.to_string())?;
    started();
    if empty {
        loaded.send_replace(true);
    }
    loop {
        let next = tokio::select! {
            _ = shutdown.cancelled() => return Ok(()),
            next = watch.next() => next,
        };
        let entry = match next {
            Some(Ok(entry)) => entry,
            Some(Err(e)) => return Err(e.to_string()),
            None => return Err("watch closed".to_owned()),
        };
        apply(&entry);
        if entry.delta == 0 && !*loaded.borrow() {
            loaded.send_replace(true);
        }
    }
}

#[cfg(test)]
mod tests {
    use switchyard_keys::{TenantId, TenantKey};

    use super::*;

    fn entry(key: &str, value: &str, delta: u64) -> kv::Entry {
        kv::Entry {
            bucket: "tenants".to_owned(),
            key: key.to_owned(),
            value: value.as_bytes().to_vec().into(),
            revision: 1,
            delta,
            created: time::OffsetDateTime::UNIX_EPOCH,
            operation: kv::Operation::Put,
            seen_current: delta == 0,
        }
    }

    fn key(tenant: &str) -> TenantKey {
        TenantKey {
            tenant: TenantId::new(tenant).unwrap(),
        }
    }

    #[test]
    fn a_key_a_watch_started_again_does_not_hand_over_is_dropped_once_it_has_caught_up() {
        let cache = KvCache::<TenantKey, serde_json::Value>::empty(None);
        cache.started();
        cache.apply(&entry("acme", "1", 1));
        cache.apply(&entry("globex", "1", 0));
        assert_eq!(cache.len(), 2);
        // The watch ends (an outage) meanwhile globex leaves the bucket with no marker (the
        // bucket deleted and made again, a value aged out); the new watch hands over acme.
        cache.started();
        cache.apply(&entry("initech", "1", 1));
        assert!(
            cache.get(&key("globex")).is_some(),
            "served until the watch has caught up"
        );
        cache.apply(&entry("acme", "2", 0));
        assert_eq!(cache.get(&key("globex")), None);
        assert_eq!(cache.get(&key("acme")), Some(Ok(serde_json::json!(2))));
        assert_eq!(cache.len(), 2);
        // Live changes afterwards drop nothing.
        cache.apply(&entry("hooli", "1", 0));
        assert_eq!(cache.len(), 3);
    }
}
