//! The `tenant-keys` bucket: one [`TenantKeys`] record per tenant under its
//! [`TenantKey`] (`<tenant>`), read and changed by operators ([`KeyStore`]; the CLI's
//! `switchyard encryption …`) and watched by the services ([`crate::cache::KeyCache`]).
//!
//! **The on/off contract:** a tenant's payloads are encrypted iff it has a record
//! ([`KeyState::On`]). Shredding purges the record, leaving the bucket's purge marker
//! ([`KeyState::Shredded`]): a tenant whose keys were destroyed is told apart from one that
//! never had encryption on ([`KeyState::Off`]). Every change is a compare-and-set on the
//! record's revision, so two operators rotating at once never lose a data key.

use async_nats::HeaderMap;
use async_nats::jetstream::kv;
use bytes::Bytes;
use switchyard_keys::{TenantId, TenantKey};
use switchyard_registry::{Changed, Store, StoreError, Written};
use time::OffsetDateTime;

use crate::cache::{OpenError, Opened, seal_headers};
use crate::error::CryptError;
use crate::id::DekId;
use crate::kek::KekRing;
use crate::record::TenantKeys;
use crate::route_secret::SecretSealer;

/// How many times a compare-and-set change is tried before giving up on a busy record.
const CAS_TRIES: usize = 5;

/// Why an operation on the `tenant-keys` bucket failed.
#[derive(Debug, thiserror::Error)]
pub enum KeyStoreError {
    /// The KV request failed, or a stored record is not valid JSON.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// A key could not be made, wrapped or unwrapped.
    #[error(transparent)]
    Crypt(#[from] CryptError),
    /// The tenant has no key record (encryption is off, or its keys were shredded).
    #[error("tenant {tenant} has no encryption keys: run `switchyard encryption enable {tenant}`")]
    NotEnabled {
        /// The tenant.
        tenant: TenantId,
    },
    /// The tenant has encryption on, so its route and destination secrets are stored sealed,
    /// and the writer holds no key-encryption key to seal them with.
    #[error(
        "tenant {tenant} has encryption on: its route and destination secrets are stored \
         sealed, which needs the key-encryption key: pass --kek-file FILE (or set \
         SWITCHYARD_KEK_FILE); nothing was written"
    )]
    NoKek {
        /// The tenant.
        tenant: TenantId,
    },
    /// The tenant's data keys were shredded: nothing can be sealed for it.
    #[error(
        "tenant {tenant}'s data keys were shredded: its secrets cannot be sealed until \
         `switchyard encryption enable {tenant}` gives it new keys; nothing was written"
    )]
    Shredded {
        /// The tenant.
        tenant: TenantId,
    },
    /// Other writers kept changing the record; nothing was written.
    #[error("tenant {tenant}'s key record kept changing under concurrent writers; try again")]
    Busy {
        /// The tenant.
        tenant: TenantId,
    },
}

/// A tenant's encryption state as the bucket holds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeyState {
    /// Encryption is on: the record and its revision.
    On(Box<TenantKeys>, u64),
    /// The record was purged: the tenant's data keys were destroyed (crypto-shredded).
    Shredded,
    /// The tenant never had encryption on (or its record was deleted without a purge).
    Off,
}

/// What [`KeyStore::enable`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Enabled {
    /// A record with one data key was created (its id).
    Created(DekId),
    /// The tenant already had encryption on (its current key's id); nothing changed.
    AlreadyOn(DekId),
}

/// Reads and changes tenants' key records: what the CLI's `encryption` commands call.
#[derive(Clone)]
pub struct KeyStore {
    store: Store<TenantKey, TenantKeys>,
}

fn key(tenant: &TenantId) -> TenantKey {
    TenantKey {
        tenant: tenant.clone(),
    }
}

/// Reads the tenant's state through one KV read (purge markers included).
///
/// # Errors
/// [`KeyStoreError::Store`] when the read fails or the record is not a valid record.
pub async fn read_state(kv: &kv::Store, tenant: &TenantId) -> Result<KeyState, KeyStoreError> {
    let rendered = tenant.to_string();
    let entry = kv
        .entry(rendered.as_str())
        .await
        .map_err(|e| StoreError::Kv {
            action: "get",
            key: rendered.clone(),
            source: Box::new(e),
        })?;
    Ok(match entry {
        None => KeyState::Off,
        Some(entry) => match entry.operation {
            kv::Operation::Purge => KeyState::Shredded,
            kv::Operation::Delete => KeyState::Off,
            kv::Operation::Put => {
                let record = TenantKeys::from_json(&entry.value)?;
                KeyState::On(Box::new(record), entry.revision)
            }
        },
    })
}

impl KeyStore {
    /// Wraps the opened `tenant-keys` bucket.
    pub fn new(kv: kv::Store) -> Self {
        Self {
            store: Store::new(kv),
        }
    }

    /// The tenant's state: on (with its record), shredded or off.
    ///
    /// # Errors
    /// [`KeyStoreError::Store`] when the read fails or the record does not parse.
    pub async fn state(&self, tenant: &TenantId) -> Result<KeyState, KeyStoreError> {
        read_state(self.store.bucket(), tenant).await
    }

    /// Turns encryption on for `tenant`: a record with one fresh data key wrapped under the
    /// ring's current KEK. Idempotent: a tenant that has one keeps it. A tenant whose keys were
    /// shredded gets new keys (its old bytes stay unreadable: the ids never repeat).
    ///
    /// # Errors
    /// [`KeyStoreError::Crypt`] when a key cannot be made or wrapped; [`KeyStoreError::Store`].
    pub async fn enable(
        &self,
        tenant: &TenantId,
        ring: &KekRing,
        now: OffsetDateTime,
    ) -> Result<Enabled, KeyStoreError> {
        for _ in 0..CAS_TRIES {
            if let KeyState::On(record, _) = self.state(tenant).await? {
                return Ok(Enabled::AlreadyOn(record.current.clone()));
            }
            let record = TenantKeys::create(tenant.clone(), ring, now)?;
            // `create` also replaces a delete or purge marker.
            if let Written::Stored(_) = self.store.create(&key(tenant), &record).await? {
                return Ok(Enabled::Created(record.current));
            }
        }
        Err(KeyStoreError::Busy {
            tenant: tenant.clone(),
        })
    }

    /// Rotates the tenant's data key: a fresh key becomes current (new messages are sealed
    /// with it once each service's watch sees the record, within about a second); older keys
    /// stay, so what they sealed still opens. Returns the new key's id.
    ///
    /// # Errors
    /// [`KeyStoreError::NotEnabled`] when the tenant has no record; [`KeyStoreError::Busy`]
    /// after repeated conflicts; [`KeyStoreError::Crypt`]; [`KeyStoreError::Store`].
    pub async fn rotate(
        &self,
        tenant: &TenantId,
        ring: &KekRing,
        now: OffsetDateTime,
    ) -> Result<DekId, KeyStoreError> {
        let mut new_id = None;
        let changed = self
            .store
            .change(&key(tenant), CAS_TRIES, |stored| {
                let Some(stored) = stored else {
                    return Err(KeyStoreError::NotEnabled {
                        tenant: tenant.clone(),
                    });
                };
                let mut record = stored.clone();
                new_id = Some(record.rotate_dek(ring, now)?);
                Ok(Some(record))
            })
            .await?;
        match (changed, new_id) {
            (Changed::Stored(..), Some(id)) => Ok(id),
            _ => Err(KeyStoreError::Busy {
                tenant: tenant.clone(),
            }),
        }
    }

    /// Re-wraps the tenant's data keys under the ring's current KEK (the ring must also hold
    /// the KEKs they are wrapped under now). Payloads are untouched. Returns how many keys were
    /// re-wrapped (0: the record was already under the current KEK; nothing is written).
    ///
    /// # Errors
    /// [`KeyStoreError::NotEnabled`]; [`KeyStoreError::Crypt`] (e.g.
    /// [`CryptError::UnknownKek`] naming a KEK the ring lacks); [`KeyStoreError::Busy`];
    /// [`KeyStoreError::Store`].
    pub async fn rewrap(&self, tenant: &TenantId, ring: &KekRing) -> Result<usize, KeyStoreError> {
        let mut count = 0;
        let changed = self
            .store
            .change(&key(tenant), CAS_TRIES, |stored| {
                let Some(stored) = stored else {
                    return Err(KeyStoreError::NotEnabled {
                        tenant: tenant.clone(),
                    });
                };
                let mut record = stored.clone();
                count = record.rewrap(ring)?;
                Ok((count > 0).then_some(record))
            })
            .await?;
        match changed {
            Changed::Stored(..) | Changed::Unchanged(_) => Ok(count),
            Changed::Conflicts => Err(KeyStoreError::Busy {
                tenant: tenant.clone(),
            }),
        }
    }

    /// Destroys the tenant's data keys: the record and every revision of it are purged, and
    /// the purge marker stays ([`KeyState::Shredded`]). Every payload and secret sealed for the
    /// tenant becomes unreadable. Returns `false` when the tenant had no record.
    ///
    /// The purge removes the record from the bucket and its API at once; the wrapped (never
    /// clear) key bytes may stay in the server's block files until it compacts them, and are
    /// useless without the KEK: rotating the KEK afterwards makes them useless for good.
    ///
    /// # Errors
    /// [`KeyStoreError::Store`] when the read or the purge fails.
    pub async fn shred(&self, tenant: &TenantId) -> Result<bool, KeyStoreError> {
        if !matches!(self.state(tenant).await?, KeyState::On(..)) {
            return Ok(false);
        }
        let rendered = tenant.to_string();
        self.store
            .bucket()
            .purge(rendered.as_str())
            .await
            .map_err(|e| StoreError::Kv {
                action: "purge",
                key: rendered,
                source: Box::new(e),
            })?;
        Ok(true)
    }

    /// Opens one stored payload for an operator holding the KEK (`dlq show`): `headers` are
    /// the message's, `aad_id` what it was sealed for (its envelope id, or
    /// [`crate::edge_seal_id`]). A payload without seal headers comes back as it is. One KV
    /// read; nothing is cached.
    ///
    /// # Errors
    /// [`OpenError::Refused`] when tampered with, sealed under a key the tenant lacks, or the
    /// tenant was shredded; [`OpenError::NotEncrypted`] for a tenant that never had keys;
    /// [`OpenError::Unavailable`] when the read fails or the key does not unwrap under `ring`
    /// (another KEK, a damaged record).
    pub async fn open(
        &self,
        ring: &KekRing,
        tenant: &TenantId,
        aad_id: &str,
        headers: Option<&HeaderMap>,
        payload: &Bytes,
    ) -> Result<Opened, OpenError> {
        let Some(seal) = seal_headers(headers).map_err(OpenError::Refused)? else {
            return Ok(Opened::Plain(payload.clone()));
        };
        let record = match self.state(tenant).await {
            Err(e) => return Err(OpenError::Unavailable(e.to_string())),
            Ok(KeyState::On(record, _)) => record,
            Ok(KeyState::Shredded) => {
                return Err(OpenError::Refused(CryptError::Shredded {
                    tenant: tenant.to_string(),
                }));
            }
            Ok(KeyState::Off) => {
                return Err(OpenError::NotEncrypted {
                    tenant: tenant.clone(),
                    key: seal.key,
                });
            }
        };
        let key = record.key(&seal.key, ring).map_err(|e| match e {
            CryptError::UnknownKey { .. } => OpenError::Refused(e),
            other => OpenError::Unavailable(other.to_string()),
        })?;
        let plaintext = key
            .open(tenant, aad_id, &seal, payload)
            .map_err(OpenError::Refused)?;
        Ok(Opened::Decrypted {
            payload: Bytes::from(plaintext),
            key: seal.key,
        })
    }

    /// What a writer of `tenant`'s route and destination records seals their secrets with
    /// ([`SecretSealer`]): clear for a tenant with encryption off; its record, `ring` and its
    /// current data key for one with encryption on.
    ///
    /// # Errors
    /// [`KeyStoreError::NoKek`] when the tenant has encryption on and `ring` is `None` (never
    /// write such a secret in clear); [`KeyStoreError::Shredded`]; [`KeyStoreError::Crypt`]
    /// when the current key does not unwrap under `ring`; [`KeyStoreError::Store`].
    pub async fn secret_sealer<'a>(
        &self,
        tenant: &TenantId,
        ring: Option<&'a KekRing>,
    ) -> Result<SecretSealer<'a>, KeyStoreError> {
        match self.state(tenant).await? {
            KeyState::Off => Ok(SecretSealer::Clear(tenant.clone())),
            KeyState::Shredded => Err(KeyStoreError::Shredded {
                tenant: tenant.clone(),
            }),
            KeyState::On(record, _) => {
                let ring = ring.ok_or_else(|| KeyStoreError::NoKek {
                    tenant: tenant.clone(),
                })?;
                let current = std::sync::Arc::new(record.current_key(ring)?);
                Ok(SecretSealer::Sealing {
                    record,
                    ring,
                    current,
                })
            }
        }
    }

    /// Every tenant with encryption on, sorted, with its record (or why it does not parse).
    ///
    /// # Errors
    /// [`KeyStoreError::Store`] when listing fails.
    pub async fn list(&self) -> Result<Vec<(TenantId, Result<TenantKeys, String>)>, KeyStoreError> {
        let listed = self.store.list(">").await?;
        Ok(listed
            .into_iter()
            .map(|(key, record)| {
                let record = record
                    .map_err(|e| e.to_string())
                    .and_then(|r| r.validate().map(|()| r).map_err(|e| e.to_string()));
                (key.tenant, record)
            })
            .collect())
    }
}
