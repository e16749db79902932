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
    /// The bucket revision of the last entry applied. A watch hands entries over in the
    /// bucket's order, and one re-created after an outage hands the bucket over again from its
    /// start, older revisions of every key included (`tenants` keeps 5): those at or below it
    /// were applied already, and applying them again would put a key's older record back for
    /// a while (a disabled tenant enabled again, say).
    applied: std::sync::atomic::AtomicU64,
    /// When the followed bucket's stream was created (see [`KvCache::started`]).
    bucket_created: std::sync::Mutex<Option<time::OffsetDateTime>>,
    /// While a bucket made again is read anew: the keys it has handed over so far. Once the
    /// watch has caught up, the cached keys it did not hand over are dropped.
    reread: std::sync::Mutex<Option<std::collections::HashSet<String>>>,
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
            applied: std::sync::atomic::AtomicU64::new(0),
            bucket_created: std::sync::Mutex::new(None),
            reread: std::sync::Mutex::new(None),
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

    fn apply(&self, entry: &kv::Entry) {
        // Only this cache's follow task applies: a load and a store do not race.
        use std::sync::atomic::Ordering::Relaxed;
        if entry.revision <= self.applied.load(Relaxed) {
            return;
        }
        self.applied.store(entry.revision, Relaxed);
        let Ok(key) = K::parse(&entry.key) else {
            tracing::warn!(key = %entry.key, "ignoring a key outside the bucket's schema");
            return;
        };
        let Ok(mut entries) = self.entries.write() else {
            return;
        };
        let mut reread = self
            .reread
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(seen) = reread.as_mut() {
            seen.insert(entry.key.clone());
        }
        match entry.operation {
            kv::Operation::Put => {
                let value = serde_json::from_slice::<R>(&entry.value).map_err(|e| e.to_string());
                entries.insert(key, value);
            }
            kv::Operation::Delete | kv::Operation::Purge => {
                entries.remove(&key);
            }
        }
        // Caught up with a bucket made again: what it did not hand over is not in it.
        if entry.delta == 0
            && let Some(seen) = reread.take()
        {
            entries.retain(|key, _| seen.contains(&key.render()));
        }
        drop(reread);
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
            &|created, values| self.started(created, values),
            &|entry| self.apply(entry),
        )
        .await;
    }

    /// A watch begins on the bucket created at `created`, holding `values` values: when that
    /// is not the bucket followed so far (it was deleted and made again, its revisions starting
    /// over), its entries are all applied as they come, each replacing the cached one, and once
    /// the watch has caught up the cached keys it did not hand over are dropped — the cache
    /// keeps serving what it had meanwhile rather than nothing. (A filtered cache whose new
    /// bucket holds none of its keys drops its old ones at its next entry.)
    fn started(&self, created: time::OffsetDateTime, values: u64) {
        let mut followed = self
            .bucket_created
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if followed.is_some_and(|was| was != created) {
            tracing::warn!(%created, "the bucket was made again: its entries are read anew");
            self.applied.store(0, std::sync::atomic::Ordering::Relaxed);
            if values == 0 && self.filter.is_none() {
                if let Ok(mut entries) = self.entries.write() {
                    entries.clear();
                }
                self.version
                    .send_modify(|version| *version = version.wrapping_add(1));
            } else {
                *self
                    .reread
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner) =
                    Some(std::collections::HashSet::new());
            }
        }
        *followed = Some(created);
    }
}

/// Follows `bucket` until `shutdown`: every current entry (or, with `filter`, every entry of
/// the matching keys, history included), then each change, handed to `apply` in the bucket's
/// order. A watch that ends (a NATS outage) is re-created with backoff, and the bucket is then
/// handed over again from its start: `apply` must take an entry it has seen as a no-op (a
/// revision check does). `loaded` is set once every value present at the start was handed
/// over (at once for a filtered watch, or an empty bucket).
pub async fn follow_bucket(
    bucket: &kv::Store,
    filter: Option<&str>,
    loaded: &watch::Sender<bool>,
    shutdown: &CancellationToken,
    apply: &(dyn Fn(&kv::Entry) + Sync),
) {
    follow_bucket_from(bucket, filter, loaded, shutdown, &|_, _| {}, apply).await;
}

/// [`follow_bucket`], telling `started` when each watch begins, before its first entry, when
/// the bucket's stream was created and how many values it holds: a time that changes means the
/// bucket was deleted and made again (a restore after a lost store, say), its revisions
/// starting over at 1, and what was followed before is no longer in it.
pub async fn follow_bucket_from(
    bucket: &kv::Store,
    filter: Option<&str>,
    loaded: &watch::Sender<bool>,
    shutdown: &CancellationToken,
    started: &(dyn Fn(time::OffsetDateTime, u64) + Sync),
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
    started: &(dyn Fn(time::OffsetDateTime, u64) + Sync),
    apply: &(dyn Fn(&kv::Entry) + Sync),
) -> Result<(), String> {
    let status = bucket.status().await.map_err(|e| e.to_string())?;
    let (mut watch, empty) = match filter {
        Some(filter) => (
            bucket
                .watch_with_history(filter)
                .await
                .map_err(|e| e.to_string())?,
            true,
        ),
        None => (
            bucket
                .watch_all_from_revision(1)
                .await
                .map_err(|e| e.to_string())?,
            status.values() == 0,
        ),
    };
    started(status.info.created, status.values());
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

    fn entry(key: &str, revision: u64, value: Option<&str>) -> kv::Entry {
        kv::Entry {
            bucket: "tenants".to_owned(),
            key: key.to_owned(),
            value: value.unwrap_or_default().as_bytes().to_vec().into(),
            revision,
            delta: 0,
            created: time::OffsetDateTime::UNIX_EPOCH,
            operation: if value.is_some() {
                kv::Operation::Put
            } else {
                kv::Operation::Delete
            },
            seen_current: true,
        }
    }

    #[test]
    fn a_bucket_handed_over_again_by_a_re_created_watch_changes_nothing() {
        let cache = KvCache::<TenantKey, serde_json::Value>::empty(None);
        let acme = TenantKey {
            tenant: TenantId::new("acme").unwrap(),
        };
        let globex = TenantKey {
            tenant: TenantId::new("globex").unwrap(),
        };
        let history = [
            entry("acme", 1, Some(r#"{"enabled":true}"#)),
            entry("globex", 2, Some(r#"{"enabled":true}"#)),
            entry("acme", 3, Some(r#"{"enabled":false}"#)),
            entry("globex", 4, None),
        ];
        for e in &history {
            cache.apply(e);
        }
        let disabled = Ok(serde_json::json!({"enabled": false}));
        assert_eq!(cache.get(&acme), Some(disabled.clone()));
        let version = *cache.version.borrow();
        // After an outage the watch starts over at revision 1, older records included: none
        // of them is applied again, not even for a while.
        for e in &history {
            cache.apply(e);
            assert_eq!(cache.get(&acme), Some(disabled.clone()));
            assert_eq!(cache.get(&globex), None);
        }
        assert_eq!(*cache.version.borrow(), version, "nothing applied twice");
        // What changed since is applied.
        cache.apply(&entry("acme", 5, Some(r#"{"enabled":true}"#)));
        assert_eq!(
            cache.get(&acme),
            Some(Ok(serde_json::json!({"enabled": true})))
        );
        assert_eq!(*cache.version.borrow(), version + 1);

        // The bucket deleted and made again (a restore) holding globex alone: its revisions
        // start over, each of its entries applies, and once the watch has caught up acme,
        // which it does not hold, is dropped — served until then, not missing meanwhile.
        let first = time::OffsetDateTime::UNIX_EPOCH;
        cache.started(first, 1);
        cache.started(first, 1);
        cache.apply(&entry("acme", 1, Some(r#"{"enabled":false}"#)));
        assert!(
            cache.get(&acme).is_some(),
            "the same bucket: nothing read anew"
        );
        cache.started(first + time::Duration::seconds(1), 1);
        let mut restored = entry("globex", 1, Some(r#"{"enabled":true}"#));
        restored.delta = 1;
        cache.apply(&restored);
        assert!(
            cache.get(&acme).is_some(),
            "kept until the watch has caught up"
        );
        let mut last = entry("globex", 2, Some(r#"{"enabled":false}"#));
        last.delta = 0;
        cache.apply(&last);
        assert_eq!(cache.get(&acme), None);
        assert_eq!(
            cache.get(&globex),
            Some(Ok(serde_json::json!({"enabled": false})))
        );
        // Made again, empty: nothing is left.
        cache.started(first + time::Duration::seconds(2), 0);
        assert_eq!(cache.len(), 0);
    }
}
