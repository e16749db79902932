//! What a service holds to seal and open its tenants' payloads: [`KeyCache`], the
//! `tenant-keys` bucket watched with the data keys it has unwrapped, cached per (tenant, key
//! id) and dropped within [`SWEEP`] of their record's deletion or of the key's removal from it
//! (a shredded tenant's keys leave memory too; a re-wrap keeps them).
//!
//! A shredded tenant (its record purged: the purge marker stays) is not a tenant without
//! encryption: its new payloads are never passed on in clear. Sealing fails for it
//! ([`SealError`]) until `switchyard encryption enable` gives it new keys.
//!
//! A message naming a key the watched record lacks (a rotation the watch has not delivered
//! yet), or of a tenant without a record, is looked up in KV once more before the answer is
//! final, so a service never dead-letters a message because its watch lags.

use std::collections::HashMap;
use std::sync::{Arc, PoisonError, RwLock};
use std::time::Duration;

use async_nats::HeaderMap;
use async_nats::jetstream::kv;
use bytes::Bytes;
use switchyard_dlq::DlqCode;
use switchyard_keys::{KvKey, TenantId, TenantKey};
use switchyard_registry::Store;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::dek::DataKey;
use crate::error::CryptError;
use crate::id::DekId;
use crate::kek::KekRing;
use crate::payload::{KEY_HEADER, NONCE_HEADER, SealHeaders, Sealed};
use crate::record::TenantKeys;
use crate::store::{KeyState, read_state};

/// How often unwrapped data keys are checked against the watched records.
pub const SWEEP: Duration = Duration::from_secs(1);

/// The longest [`KeyCache::wait_loaded`] waits for the watch to deliver the listed keys.
pub const LOAD_WAIT: Duration = Duration::from_secs(10);

/// How often [`KeyCache::wait_loaded`] looks whether they have arrived.
const LOAD_POLL: Duration = Duration::from_millis(10);

/// A payload as a service reads it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Opened {
    /// It carries no `Switchyard-Key`: it was never sealed; the bytes as they are.
    Plain(Bytes),
    /// It was sealed: the plaintext, and the data key that opened it.
    Decrypted {
        /// The plaintext.
        payload: Bytes,
        /// The key it was sealed with.
        key: DekId,
    },
}

impl Opened {
    /// The readable bytes.
    pub fn payload(&self) -> &Bytes {
        match self {
            Opened::Plain(payload) | Opened::Decrypted { payload, .. } => payload,
        }
    }
}

/// Why a payload could not be opened.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OpenError {
    /// It never will be: tampered with, sealed under a key the tenant does not have, the
    /// tenant's keys were shredded, or its seal headers are malformed. Dead-letter it
    /// ([`OpenError::dlq_code`]).
    #[error(transparent)]
    Refused(CryptError),
    /// The message claims a seal, but the tenant has no keys and never had (encryption was
    /// never on for it): for egress a forgery (dead-letter `unknown_data_key`); ingress takes a
    /// producer's own `Switchyard-*` headers for noise and drops them.
    #[error(
        "the payload names data key {key}, but tenant {tenant} has no encryption keys \
         (encryption was never enabled for it)"
    )]
    NotEncrypted {
        /// The tenant.
        tenant: TenantId,
        /// The key id the message names.
        key: DekId,
    },
    /// Not now: this service has no KEK, the KV read failed, the tenant's record or KEK is not
    /// usable. Retry later (an operator must fix what the reason says).
    #[error("{0}")]
    Unavailable(String),
}

impl OpenError {
    /// The DLQ code for a permanent failure; `None` when the message should be retried.
    pub fn dlq_code(&self) -> Option<DlqCode> {
        match self {
            OpenError::Refused(CryptError::Tampered { .. }) => Some(DlqCode::PayloadTampered),
            OpenError::Refused(CryptError::UnknownKey { .. }) | OpenError::NotEncrypted { .. } => {
                Some(DlqCode::UnknownDataKey)
            }
            OpenError::Refused(CryptError::Shredded { .. }) => Some(DlqCode::TenantShredded),
            OpenError::Refused(CryptError::BadHeader { .. }) => Some(DlqCode::PayloadTampered),
            OpenError::Refused(_) | OpenError::Unavailable(_) => None,
        }
    }
}

/// Errors a data key lookup gives that mean "not now" rather than "never".
fn unavailable(error: CryptError) -> OpenError {
    match error {
        CryptError::Tampered { .. }
        | CryptError::UnknownKey { .. }
        | CryptError::Shredded { .. }
        | CryptError::BadHeader { .. }
        | CryptError::BadSecret { .. }
        | CryptError::InvalidSecret { .. } => OpenError::Refused(error),
        other => OpenError::Unavailable(other.to_string()),
    }
}

/// Sorted as a data key lookup's errors are: never ([`OpenError::Refused`]) or not now.
impl From<CryptError> for OpenError {
    fn from(error: CryptError) -> Self {
        unavailable(error)
    }
}

/// Why a payload could not be sealed: always "not now" (no KEK, an unusable record); the
/// message must be retried, never passed on in clear.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("tenant {tenant} has encryption on, but its payload cannot be sealed: {reason}")]
pub struct SealError {
    /// The tenant.
    pub tenant: TenantId,
    /// Why.
    pub reason: String,
}

/// An unwrapped data key.
struct Unwrapped {
    /// The key.
    key: Arc<DataKey>,
}

/// What the watch last saw of one tenant's record.
#[derive(Debug, Clone)]
enum Seen {
    /// A record (or why its bytes are not one).
    Record(Result<TenantKeys, String>),
    /// Purged: the tenant was shredded.
    Shredded,
}

/// The watched records, by tenant, with the revision each was seen at.
#[derive(Default)]
struct Records {
    seen: RwLock<HashMap<TenantId, (u64, Seen)>>,
}

impl Records {
    /// Applies one change of the bucket (a revision already applied is skipped: a re-created
    /// watch hands the bucket over again).
    fn apply(&self, entry: &kv::Entry) {
        let Ok(key) = TenantKey::parse(&entry.key) else {
            tracing::warn!(key = %entry.key, "ignoring a key outside the tenant-keys schema");
            return;
        };
        let mut seen = self.seen.write().unwrap_or_else(PoisonError::into_inner);
        if seen
            .get(&key.tenant)
            .is_some_and(|(revision, _)| *revision >= entry.revision)
        {
            return;
        }
        let now = match entry.operation {
            kv::Operation::Put => {
                Seen::Record(TenantKeys::from_json(&entry.value).map_err(|e| e.to_string()))
            }
            kv::Operation::Purge => Seen::Shredded,
            kv::Operation::Delete => {
                seen.remove(&key.tenant);
                return;
            }
        };
        seen.insert(key.tenant, (entry.revision, now));
    }

    fn get(&self, tenant: &TenantId) -> Option<Seen> {
        let seen = self.seen.read().unwrap_or_else(PoisonError::into_inner);
        seen.get(tenant).map(|(_, seen)| seen.clone())
    }

    /// The tenant's record, when it has one.
    fn record(&self, tenant: &TenantId) -> Option<Result<TenantKeys, String>> {
        match self.get(tenant)? {
            Seen::Record(record) => Some(record),
            Seen::Shredded => None,
        }
    }
}

/// The tenants' key records, watched, and the data keys unwrapped from them.
pub struct KeyCache {
    records: Arc<Records>,
    loaded: watch::Sender<bool>,
    kv: kv::Store,
    ring: Option<Arc<KekRing>>,
    unwrapped: RwLock<HashMap<(TenantId, DekId), Unwrapped>>,
}

/// The header names of a seal, removed from a copy that carries the plaintext.
pub const SEAL_HEADERS: [&str; 2] = [KEY_HEADER, NONCE_HEADER];

/// Writes a seal's headers onto `h`, replacing any there.
pub fn insert_seal_headers(h: &mut HeaderMap, seal: &SealHeaders) {
    for (name, value) in seal.render() {
        h.insert(name, value);
    }
}

/// Reads a message's seal headers: `None` when it is not sealed.
///
/// # Errors
/// [`CryptError::BadHeader`] naming a missing or malformed header.
pub fn seal_headers(h: Option<&HeaderMap>) -> Result<Option<SealHeaders>, CryptError> {
    let value = |name: &str| h.and_then(|h| h.get(name)).map(|v| v.as_str());
    SealHeaders::parse(value(KEY_HEADER), value(NONCE_HEADER))
}

impl KeyCache {
    /// Watches the opened `tenant-keys` bucket until `shutdown`; `ring` is the service's KEKs
    /// (`None`: it has none, and holds the messages of tenants with encryption on).
    pub fn start(kv: kv::Store, ring: Option<KekRing>, shutdown: CancellationToken) -> Arc<Self> {
        let records = Arc::new(Records::default());
        let (loaded, _) = watch::channel(false);
        {
            let (records, loaded, kv, shutdown) = (
                records.clone(),
                loaded.clone(),
                kv.clone(),
                shutdown.clone(),
            );
            tokio::spawn(async move {
                switchyard_registry::cache::follow_bucket(
                    &kv,
                    None,
                    &loaded,
                    &shutdown,
                    &|entry| records.apply(entry),
                )
                .await;
            });
        }
        let cache = Arc::new(Self {
            records,
            loaded,
            kv,
            ring: ring.map(Arc::new),
            unwrapped: RwLock::new(HashMap::new()),
        });
        let sweeper = Arc::downgrade(&cache);
        tokio::spawn(async move {
            let mut every = tokio::time::interval(SWEEP);
            loop {
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = every.tick() => {}
                }
                let Some(cache) = sweeper.upgrade() else {
                    return;
                };
                cache.sweep();
            }
        });
        cache
    }

    /// Waits until every record present at start-up is loaded: the watch's initial load, then
    /// every key the bucket lists (a bucket's stream can report no values right after a purge
    /// and a new record, which the watch alone would take for an empty bucket). A service must
    /// not seal or pass on anything before — a tenant whose record it has not seen yet would be
    /// taken for one without encryption — so this waits as long as it takes: a listing that
    /// fails is tried again, and a watch that lags is waited for (both said every
    /// [`LOAD_WAIT`]).
    pub async fn wait_loaded(&self) {
        let mut loaded = self.loaded.subscribe();
        let _ = loaded.wait_for(|loaded| *loaded).await;
        let store: Store<TenantKey, TenantKeys> = Store::new(self.kv.clone());
        let keys = loop {
            match store.keys().await {
                Ok(keys) => break keys,
                Err(error) => {
                    tracing::warn!(%error, "listing the tenant-keys bucket failed; tried again");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
            }
        };
        let mut warn_at = tokio::time::Instant::now() + LOAD_WAIT;
        while keys
            .iter()
            .any(|key| self.records.get(&key.tenant).is_none())
        {
            if tokio::time::Instant::now() >= warn_at {
                tracing::warn!(
                    "the tenant-keys watch has not delivered every listed key yet; waiting"
                );
                warn_at += LOAD_WAIT;
            }
            tokio::time::sleep(LOAD_POLL).await;
        }
    }

    /// Whether this service holds a KEK.
    pub fn has_kek(&self) -> bool {
        self.ring.is_some()
    }

    /// Whether the tenant has encryption on (or was shredded: its payloads are never passed on
    /// in clear either), as the watch last saw it.
    pub fn is_on(&self, tenant: &TenantId) -> bool {
        self.records.get(tenant).is_some()
    }

    /// How many data keys are unwrapped in memory now.
    pub fn unwrapped_len(&self) -> usize {
        self.unwrapped.read().map(|u| u.len()).unwrap_or(0)
    }

    /// Drops every unwrapped key whose record is gone (shredded, deleted) or no longer holds
    /// its id. A re-wrap (the same keys under another KEK) keeps them: the keys did not change,
    /// and a service that has not received the new KEK yet keeps working.
    pub fn sweep(&self) {
        let Ok(mut unwrapped) = self.unwrapped.write() else {
            return;
        };
        unwrapped.retain(|(tenant, id), _| match self.records.record(tenant) {
            Some(Ok(record)) => record.keys.contains_key(id),
            _ => false,
        });
    }

    /// The data key `id` of `record`, unwrapped once and then cached.
    fn data_key(&self, record: &TenantKeys, id: &DekId) -> Result<Arc<DataKey>, CryptError> {
        if !record.keys.contains_key(id) {
            return Err(CryptError::UnknownKey {
                tenant: record.tenant.to_string(),
                key: id.to_string(),
            });
        }
        let cache_key = (record.tenant.clone(), id.clone());
        // Cached under its id: a re-wrap changes how it is stored, never the key.
        if let Ok(unwrapped) = self.unwrapped.read()
            && let Some(found) = unwrapped.get(&cache_key)
        {
            return Ok(found.key.clone());
        }
        let Some(ring) = &self.ring else {
            return Err(CryptError::Record {
                reason: format!(
                    "tenant {} has encryption on, but this service has no key-encryption key: \
                     set [encryption] kek_file",
                    record.tenant
                ),
            });
        };
        let key = Arc::new(record.key(id, ring)?);
        if let Ok(mut unwrapped) = self.unwrapped.write() {
            unwrapped.insert(cache_key, Unwrapped { key: key.clone() });
        }
        Ok(key)
    }

    /// The key a tenant's new payloads are sealed with: `None` when the tenant has encryption
    /// off.
    ///
    /// # Errors
    /// [`SealError`] when the tenant has encryption on but its record is unreadable, this
    /// service has no KEK, or the current key does not unwrap.
    pub fn sealing_key(&self, tenant: &TenantId) -> Result<Option<Arc<DataKey>>, SealError> {
        let failed = |reason: String| SealError {
            tenant: tenant.clone(),
            reason,
        };
        match self.records.get(tenant) {
            None => Ok(None),
            Some(Seen::Shredded) => Err(failed(
                "its data keys were shredded (`switchyard encryption shred`): its messages are \
                 not passed on until `switchyard encryption enable` gives it new keys"
                    .to_owned(),
            )),
            Some(Seen::Record(Err(reason))) => {
                Err(failed(format!("its key record is invalid: {reason}")))
            }
            Some(Seen::Record(Ok(record))) => self
                .data_key(&record, &record.current)
                .map(Some)
                .map_err(|e| failed(e.to_string())),
        }
    }

    /// Seals `plaintext` for `tenant` bound to `aad_id` (the envelope id, or
    /// [`crate::edge_seal_id`] before there is one): `None` when the tenant has encryption off.
    ///
    /// # Errors
    /// [`SealError`] as [`KeyCache::sealing_key`], or when the RNG fails.
    pub fn seal(
        &self,
        tenant: &TenantId,
        aad_id: &str,
        plaintext: &[u8],
    ) -> Result<Option<Sealed>, SealError> {
        let Some(key) = self.sealing_key(tenant)? else {
            return Ok(None);
        };
        key.seal(tenant, aad_id, plaintext)
            .map(Some)
            .map_err(|e| SealError {
                tenant: tenant.clone(),
                reason: e.to_string(),
            })
    }

    /// The data key `id` of `tenant`, for opening: from the watched record, or — when the
    /// record is missing or lacks the key — from one KV read.
    ///
    /// # Errors
    /// [`OpenError::Refused`] with [`CryptError::UnknownKey`] or [`CryptError::Shredded`];
    /// [`OpenError::NotEncrypted`] for a tenant that never had keys;
    /// [`OpenError::Unavailable`] when the KV read fails, the record is invalid, the service
    /// has no KEK or the key does not unwrap.
    pub async fn opening_key(
        &self,
        tenant: &TenantId,
        id: &DekId,
    ) -> Result<Arc<DataKey>, OpenError> {
        if let Some(Ok(record)) = self.records.record(tenant)
            && record.keys.contains_key(id)
        {
            return self.data_key(&record, id).map_err(unavailable);
        }
        match read_state(&self.kv, tenant).await {
            Err(e) => Err(OpenError::Unavailable(format!(
                "reading tenant {tenant}'s key record: {e}"
            ))),
            Ok(KeyState::On(record, _)) => self.data_key(&record, id).map_err(unavailable),
            Ok(KeyState::Shredded) => Err(OpenError::Refused(CryptError::Shredded {
                tenant: tenant.to_string(),
            })),
            Ok(KeyState::Off) => Err(OpenError::NotEncrypted {
                tenant: tenant.clone(),
                key: id.clone(),
            }),
        }
    }

    /// Opens the sealed secrets of `route` (a route's or a destination's target, found at
    /// `place`) in place, with the tenant's data keys as for payloads
    /// ([`KeyCache::opening_key`]). Returns how many were opened (0 for a route in clear).
    ///
    /// # Errors
    /// As [`KeyCache::opening_key`]; [`OpenError::Refused`] with [`CryptError::Tampered`] for a
    /// secret sealed for another record, tenant or field (or changed), or
    /// [`CryptError::BadSecret`] for a malformed one.
    pub async fn open_secrets(
        &self,
        route: &mut switchyard_registry::Route,
        place: &crate::route_secret::SecretPlace,
    ) -> Result<usize, OpenError> {
        let ids = crate::route_secret::sealed_key_ids(route).map_err(OpenError::Refused)?;
        let mut keys = HashMap::new();
        for id in ids {
            let key = self.opening_key(place.tenant(), &id).await?;
            keys.insert(id, key);
        }
        crate::route_secret::open_secrets(route, place, |id| {
            keys.get(id).cloned().ok_or_else(|| {
                OpenError::Refused(CryptError::UnknownKey {
                    tenant: place.tenant().to_string(),
                    key: id.to_string(),
                })
            })
        })
    }

    /// Opens a received message's payload for `tenant`, bound to `aad_id` (the envelope id, or
    /// [`crate::edge_seal_id`] for a payload sealed at the edge): a payload without seal
    /// headers comes back as it is, and so does one whose seal headers are malformed (half a
    /// pair, say) when the tenant never had encryption on — a producer's own headers, not a
    /// seal (a well-formed pair for such a tenant is [`OpenError::NotEncrypted`]).
    ///
    /// # Errors
    /// As [`KeyCache::opening_key`]; [`OpenError::Refused`] with [`CryptError::Tampered`] when
    /// anything bound into the seal differs, or [`CryptError::BadHeader`] for malformed seal
    /// headers of a tenant that has (or had) encryption on; [`OpenError::Unavailable`] when
    /// that cannot be told (the key record unreadable).
    pub async fn open(
        &self,
        tenant: &TenantId,
        aad_id: &str,
        headers: Option<&HeaderMap>,
        payload: &Bytes,
    ) -> Result<Opened, OpenError> {
        let seal = match seal_headers(headers) {
            Ok(Some(seal)) => seal,
            Ok(None) => return Ok(Opened::Plain(payload.clone())),
            Err(error) => {
                if self.records.get(tenant).is_some() {
                    return Err(OpenError::Refused(error));
                }
                return match read_state(&self.kv, tenant).await {
                    Ok(KeyState::Off) => Ok(Opened::Plain(payload.clone())),
                    Ok(KeyState::On(..) | KeyState::Shredded) => Err(OpenError::Refused(error)),
                    Err(e) => Err(OpenError::Unavailable(format!(
                        "reading tenant {tenant}'s key record: {e}"
                    ))),
                };
            }
        };
        let key = self.opening_key(tenant, &seal.key).await?;
        let plaintext = key
            .open(tenant, aad_id, &seal, payload)
            .map_err(OpenError::Refused)?;
        Ok(Opened::Decrypted {
            payload: Bytes::from(plaintext),
            key: seal.key,
        })
    }
}
