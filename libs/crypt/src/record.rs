//! A tenant's key record, [`TenantKeys`]: its data keys, each wrapped by a KEK, and which one
//! seals new data. Stored as JSON (one record per tenant, in a KV bucket); never holds a key in
//! the clear. The record is the whole key lifecycle:
//!
//! - **DEK rotation** ([`TenantKeys::rotate_dek`]): a new current key; older keys stay, so
//!   what they sealed still opens.
//! - **KEK rotation** ([`TenantKeys::rewrap`]): every data key re-wrapped under the ring's
//!   current KEK; no payload or secret is touched.
//! - **Crypto-shredding**: deleting the record destroys the tenant's keys; every byte sealed
//!   under them becomes unreadable. A caller that finds no record maps that to
//!   [`CryptError::Shredded`] with [`keys_or_shredded`].
//!
//! ```json
//! {"tenant":"acme","current":"3f9c0a7de21b4c55",
//!  "keys":{"3f9c0a7de21b4c55":{"kek":"kek-1a2b3c4d","wrapped":"<base64, 60 bytes>",
//!                              "created":"2025-06-01T12:00:00Z"}}}
//! ```

use std::collections::BTreeMap;

use base64::Engine;
use serde::{Deserialize, Serialize};
use switchyard_keys::TenantId;
use time::OffsetDateTime;

use crate::dek::{DataKey, Dek};
use crate::error::CryptError;
use crate::id::DekId;
use crate::kek::{KekRing, KeyEncryptionKey, WrapContext};

/// How many times [`TenantKeys::rotate_dek`] draws a fresh id before giving up on a collision
/// (64 random bits: a second draw is already vanishingly rare).
const ID_DRAWS: usize = 4;

/// One wrapped data key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WrappedDek {
    /// The id of the KEK that wrapped it.
    pub kek: String,
    /// The wrapped key, standard base64 (for [`crate::LocalKek`]: nonce ‖ ciphertext ‖ tag, 60
    /// bytes).
    pub wrapped: String,
    /// When the data key was created (RFC 3339).
    #[serde(with = "time::serde::rfc3339")]
    pub created: OffsetDateTime,
}

/// A tenant's data keys: the current one seals new data; every one opens what it sealed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TenantKeys {
    /// The tenant the keys belong to; bound into every wrapped key.
    pub tenant: TenantId,
    /// The key that seals new payloads and secrets; always one of `keys`.
    pub current: DekId,
    /// Every key the tenant has, by id.
    pub keys: BTreeMap<DekId, WrappedDek>,
}

fn wrap(
    kek: &dyn KeyEncryptionKey,
    dek: &Dek,
    tenant: &TenantId,
    key: &DekId,
    created: OffsetDateTime,
) -> Result<WrappedDek, CryptError> {
    let wrapped = kek.wrap(dek, WrapContext { tenant, key })?;
    Ok(WrappedDek {
        kek: kek.id().to_owned(),
        wrapped: base64::engine::general_purpose::STANDARD.encode(wrapped),
        created,
    })
}

impl TenantKeys {
    /// A record with one fresh data key, wrapped under the ring's current KEK, created `now`.
    ///
    /// # Errors
    /// [`CryptError::Random`] when the system RNG fails; whatever the KEK's wrap returns.
    pub fn create(
        tenant: TenantId,
        ring: &KekRing,
        now: OffsetDateTime,
    ) -> Result<Self, CryptError> {
        let id = DekId::generate()?;
        let entry = wrap(ring.current(), &Dek::generate()?, &tenant, &id, now)?;
        Ok(Self {
            tenant,
            current: id.clone(),
            keys: BTreeMap::from([(id, entry)]),
        })
    }

    /// Adds a fresh data key and makes it current; older keys stay so what they sealed still
    /// opens. Returns the new key's id.
    ///
    /// # Errors
    /// As [`TenantKeys::create`]; [`CryptError::Random`] also when fresh ids keep colliding.
    pub fn rotate_dek(&mut self, ring: &KekRing, now: OffsetDateTime) -> Result<DekId, CryptError> {
        let mut id = DekId::generate()?;
        let mut draws = 1;
        while self.keys.contains_key(&id) {
            if draws == ID_DRAWS {
                return Err(CryptError::Random);
            }
            id = DekId::generate()?;
            draws += 1;
        }
        let entry = wrap(ring.current(), &Dek::generate()?, &self.tenant, &id, now)?;
        self.keys.insert(id.clone(), entry);
        self.current = id.clone();
        Ok(id)
    }

    /// Re-wraps every data key not yet under the ring's current KEK, keeping its id, bytes and
    /// creation time; sealed payloads and secrets are untouched. All or nothing: on error the
    /// record is unchanged. Returns how many keys were re-wrapped (0: nothing to store).
    ///
    /// # Errors
    /// [`CryptError::UnknownKek`] when a key is wrapped under a KEK the ring does not hold;
    /// [`CryptError::UnwrapFailed`], [`CryptError::Record`] for a damaged entry; errors of the
    /// current KEK's wrap.
    pub fn rewrap(&mut self, ring: &KekRing) -> Result<usize, CryptError> {
        let current = ring.current();
        let mut rewrapped = Vec::new();
        for (id, entry) in &self.keys {
            if entry.kek == current.id() {
                continue;
            }
            let dek = self.unwrap_entry(id, entry, ring)?;
            rewrapped.push((
                id.clone(),
                wrap(current, &dek, &self.tenant, id, entry.created)?,
            ));
        }
        let count = rewrapped.len();
        self.keys.extend(rewrapped);
        Ok(count)
    }

    /// The data key with this id (typically from a message's `Switchyard-Key` header).
    ///
    /// # Errors
    /// [`CryptError::UnknownKey`] when the record has no such key; [`CryptError::UnknownKek`]
    /// when its KEK is not in the ring; [`CryptError::UnwrapFailed`] or
    /// [`CryptError::Record`] for a damaged or misplaced entry.
    pub fn key(&self, id: &DekId, ring: &KekRing) -> Result<DataKey, CryptError> {
        let entry = self.keys.get(id).ok_or_else(|| CryptError::UnknownKey {
            tenant: self.tenant.to_string(),
            key: id.to_string(),
        })?;
        Ok(DataKey::new(
            id.clone(),
            self.unwrap_entry(id, entry, ring)?,
        ))
    }

    /// The current data key: the one that seals new data.
    ///
    /// # Errors
    /// As [`TenantKeys::key`].
    pub fn current_key(&self, ring: &KekRing) -> Result<DataKey, CryptError> {
        self.key(&self.current, ring)
    }

    fn unwrap_entry(
        &self,
        id: &DekId,
        entry: &WrappedDek,
        ring: &KekRing,
    ) -> Result<Dek, CryptError> {
        let kek = ring.get(&entry.kek)?;
        let wrapped = base64::engine::general_purpose::STANDARD
            .decode(&entry.wrapped)
            .map_err(|e| CryptError::Record {
                reason: format!(
                    "data key {id} of tenant {}: wrapped is not base64: {e}",
                    self.tenant
                ),
            })?;
        kek.unwrap(
            &wrapped,
            WrapContext {
                tenant: &self.tenant,
                key: id,
            },
        )
    }

    /// Parses and validates a stored record.
    ///
    /// # Errors
    /// [`CryptError::Record`] when it is not the record's JSON (unknown fields included) or its
    /// current key is not among its keys.
    pub fn from_json(bytes: &[u8]) -> Result<Self, CryptError> {
        let record: Self = serde_json::from_slice(bytes).map_err(|e| CryptError::Record {
            reason: e.to_string(),
        })?;
        record.validate()?;
        Ok(record)
    }

    /// The record as JSON.
    pub fn to_json(&self) -> Vec<u8> {
        serde_json::to_vec(self).unwrap_or_default()
    }

    /// Checks that the current key is one of the keys.
    ///
    /// # Errors
    /// [`CryptError::Record`] naming the missing key.
    pub fn validate(&self) -> Result<(), CryptError> {
        if !self.keys.contains_key(&self.current) {
            return Err(CryptError::Record {
                reason: format!(
                    "tenant {}: current data key {} is not among its keys",
                    self.tenant, self.current
                ),
            });
        }
        Ok(())
    }
}

/// The tenant's key record, or [`CryptError::Shredded`] when there is none: what a service
/// does with a KV read before opening a payload that carries a `Switchyard-Key` header. (A
/// record that exists but belongs to another tenant is refused as [`CryptError::Record`].)
///
/// # Errors
/// [`CryptError::Shredded`] when `record` is `None`; [`CryptError::Record`] when it names
/// another tenant.
pub fn keys_or_shredded(
    record: Option<TenantKeys>,
    tenant: &TenantId,
) -> Result<TenantKeys, CryptError> {
    let record = record.ok_or_else(|| CryptError::Shredded {
        tenant: tenant.to_string(),
    })?;
    if record.tenant != *tenant {
        return Err(CryptError::Record {
            reason: format!(
                "record of tenant {} was read for tenant {tenant}",
                record.tenant
            ),
        });
    }
    Ok(record)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kek::LocalKek;

    fn now() -> OffsetDateTime {
        time::macros::datetime!(2025-06-01 12:00 UTC)
    }

    fn ring(id: &str) -> KekRing {
        KekRing::new(LocalKek::generate().unwrap().with_id(id).unwrap())
    }

    fn tenant(name: &str) -> TenantId {
        TenantId::new(name).unwrap()
    }

    #[test]
    fn a_created_record_round_trips_through_json_and_unwraps() {
        let ring = ring("k1");
        let keys = TenantKeys::create(tenant("acme"), &ring, now()).unwrap();
        assert_eq!(keys.keys.len(), 1);
        assert_eq!(keys.keys[&keys.current].kek, "k1");
        let json = String::from_utf8(keys.to_json()).unwrap();
        assert!(
            json.contains(r#""created":"2025-06-01T12:00:00Z""#),
            "{json}"
        );
        let back = TenantKeys::from_json(json.as_bytes()).unwrap();
        assert_eq!(back, keys);
        let a = keys.current_key(&ring).unwrap();
        let b = back.current_key(&ring).unwrap();
        assert_eq!(a.dek().expose_secret(), b.dek().expose_secret());
    }

    #[test]
    fn inconsistent_or_unknown_records_are_refused() {
        let ring = ring("k1");
        let mut keys = TenantKeys::create(tenant("acme"), &ring, now()).unwrap();
        keys.current = DekId::new("nope").unwrap();
        let err = TenantKeys::from_json(&keys.to_json()).unwrap_err();
        assert!(err.to_string().contains("nope"), "{err}");
        let err = TenantKeys::from_json(br#"{"tenant":"acme","current":"d1","keys":{},"x":1}"#)
            .unwrap_err();
        assert!(matches!(err, CryptError::Record { .. }), "{err}");
        assert!(TenantKeys::from_json(br#"{"tenant":"acme","current":"D:1","keys":{}}"#).is_err());
    }

    #[test]
    fn rotating_the_dek_adds_a_current_key_and_keeps_the_old_one() {
        let ring = ring("k1");
        let mut keys = TenantKeys::create(tenant("acme"), &ring, now()).unwrap();
        let old = keys.current.clone();
        let old_bytes = *keys.key(&old, &ring).unwrap().dek().expose_secret();
        let new = keys.rotate_dek(&ring, now()).unwrap();
        assert_ne!(old, new);
        assert_eq!(keys.current, new);
        assert_eq!(keys.keys.len(), 2);
        assert_eq!(
            keys.key(&old, &ring).unwrap().dek().expose_secret(),
            &old_bytes
        );
        assert_ne!(
            keys.current_key(&ring).unwrap().dek().expose_secret(),
            &old_bytes
        );
    }

    fn kek(bytes: u8, id: &str) -> LocalKek {
        LocalKek::from_bytes(&[bytes; 32])
            .unwrap()
            .with_id(id)
            .unwrap()
    }

    #[test]
    fn rewrapping_moves_every_key_to_the_current_kek_and_keeps_the_bytes() {
        let ring1 = KekRing::new(kek(1, "k1"));
        let mut keys = TenantKeys::create(tenant("acme"), &ring1, now()).unwrap();
        let first = keys.current.clone();
        let second = keys.rotate_dek(&ring1, now()).unwrap();
        let bytes = |keys: &TenantKeys, ring: &KekRing| -> Vec<[u8; 32]> {
            [&first, &second]
                .iter()
                .map(|id| *keys.key(id, ring).unwrap().dek().expose_secret())
                .collect()
        };
        let before = bytes(&keys, &ring1);

        let rotating = KekRing::new(kek(2, "k2"))
            .with_previous(kek(1, "k1"))
            .unwrap();
        let unchanged = keys.clone();
        assert_eq!(keys.rewrap(&rotating).unwrap(), 2);
        assert!(keys.keys.values().all(|entry| entry.kek == "k2"));
        assert_eq!(keys.current, unchanged.current);
        for (id, entry) in &keys.keys {
            assert_eq!(entry.created, unchanged.keys[id].created);
        }
        assert_eq!(
            keys.rewrap(&rotating).unwrap(),
            0,
            "re-wrapping again is a no-op"
        );

        // The old KEK is gone from the ring; every key still unwraps, with the same bytes.
        let ring2 = KekRing::new(kek(2, "k2"));
        assert_eq!(bytes(&keys, &ring2), before);
        // The record not yet re-wrapped needs the old KEK.
        assert_eq!(
            unchanged.current_key(&ring2).unwrap_err(),
            CryptError::UnknownKek { id: "k1".into() }
        );
    }

    #[test]
    fn a_kek_with_the_same_id_but_other_bytes_cannot_unwrap() {
        let keys = TenantKeys::create(tenant("acme"), &KekRing::new(kek(1, "k1")), now()).unwrap();
        let err = keys.current_key(&KekRing::new(kek(3, "k1"))).unwrap_err();
        assert!(matches!(err, CryptError::UnwrapFailed { .. }), "{err}");
    }

    #[test]
    fn a_failed_rewrap_leaves_the_record_unchanged() {
        let ring1 = KekRing::new(kek(1, "k1"));
        let mut keys = TenantKeys::create(tenant("acme"), &ring1, now()).unwrap();
        keys.rotate_dek(&KekRing::new(kek(2, "k2")), now()).unwrap();
        let before = keys.clone();
        // Holds k1 but not k2: the first key re-wraps, the second fails, nothing is stored.
        let ring3 = KekRing::new(kek(3, "k3"))
            .with_previous(kek(1, "k1"))
            .unwrap();
        assert_eq!(
            keys.rewrap(&ring3).unwrap_err(),
            CryptError::UnknownKek { id: "k2".into() }
        );
        assert_eq!(keys, before);
    }

    #[test]
    fn a_record_under_a_kek_the_ring_lacks_fails_with_unknown_kek() {
        let keys = TenantKeys::create(tenant("acme"), &ring("k1"), now()).unwrap();
        let err = keys.current_key(&ring("k2")).unwrap_err();
        assert_eq!(err, CryptError::UnknownKek { id: "k1".into() });
        assert!(err.to_string().contains("k1"));
        let mut keys = keys;
        assert_eq!(
            keys.rewrap(&ring("k2")).unwrap_err(),
            CryptError::UnknownKek { id: "k1".into() }
        );
    }

    #[test]
    fn a_wrapped_key_moved_into_another_tenants_record_does_not_unwrap() {
        let ring = ring("k1");
        let acme = TenantKeys::create(tenant("acme"), &ring, now()).unwrap();
        let mut other = TenantKeys::create(tenant("other"), &ring, now()).unwrap();
        let (id, entry) = acme.keys.iter().next().unwrap();
        other.keys.insert(id.clone(), entry.clone());
        other.current = id.clone();
        let err = other.current_key(&ring).unwrap_err();
        assert_eq!(
            err,
            CryptError::UnwrapFailed {
                tenant: "other".into(),
                key: id.to_string(),
                kek: "k1".into()
            }
        );
    }

    #[test]
    fn an_unknown_key_id_is_named() {
        let ring = ring("k1");
        let keys = TenantKeys::create(tenant("acme"), &ring, now()).unwrap();
        let err = keys.key(&DekId::new("d9").unwrap(), &ring).unwrap_err();
        assert_eq!(
            err,
            CryptError::UnknownKey {
                tenant: "acme".into(),
                key: "d9".into()
            }
        );
    }

    #[test]
    fn a_missing_record_means_shredded_and_a_foreign_one_is_refused() {
        let acme = tenant("acme");
        let err = keys_or_shredded(None, &acme).unwrap_err();
        assert_eq!(
            err,
            CryptError::Shredded {
                tenant: "acme".into()
            }
        );
        assert!(err.to_string().contains("crypto-shredded"), "{err}");
        let other = TenantKeys::create(tenant("other"), &ring("k1"), now()).unwrap();
        assert!(matches!(
            keys_or_shredded(Some(other), &acme),
            Err(CryptError::Record { .. })
        ));
    }
}
