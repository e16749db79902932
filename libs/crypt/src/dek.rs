//! Data keys: [`Dek`], the 32 secret bytes of one AES-256-GCM key, and [`DataKey`], a DEK with
//! its id — what payloads ([`crate::payload`]) and secrets ([`crate::secret`]) are sealed with.

use std::fmt;

use zeroize::Zeroizing;

use crate::aead::{self, KEY_LEN};
use crate::error::CryptError;
use crate::id::DekId;

/// A data-encryption key: 32 secret bytes, wiped from memory when dropped. `Debug` never shows
/// them, and the type is deliberately not `Clone` (share one with `Arc`).
pub struct Dek(Zeroizing<[u8; KEY_LEN]>);

impl Dek {
    /// A fresh key from the system RNG.
    ///
    /// # Errors
    /// [`CryptError::Random`] when the system RNG fails.
    pub fn generate() -> Result<Self, CryptError> {
        let mut bytes = Zeroizing::new([0u8; KEY_LEN]);
        aead::fill_random(bytes.as_mut())?;
        Ok(Self(bytes))
    }

    /// A key from its bytes, for [`crate::KeyEncryptionKey`] implementations that unwrap
    /// elsewhere (a KMS). The caller should wipe its own copy.
    ///
    /// # Errors
    /// [`CryptError::KeyLength`] unless `bytes` is 32 bytes long.
    pub fn from_slice(bytes: &[u8]) -> Result<Self, CryptError> {
        let mut key = Zeroizing::new([0u8; KEY_LEN]);
        if bytes.len() != KEY_LEN {
            return Err(CryptError::KeyLength { len: bytes.len() });
        }
        key.copy_from_slice(bytes);
        Ok(Self(key))
    }

    /// The secret bytes, for [`crate::KeyEncryptionKey`] implementations to wrap. Nothing else
    /// needs them.
    pub fn expose_secret(&self) -> &[u8; KEY_LEN] {
        &self.0
    }
}

impl fmt::Debug for Dek {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Dek(***)")
    }
}

/// One of a tenant's data keys with its id: seals payloads ([`DataKey::seal`]) and secrets
/// ([`crate::SealedSecret::seal`]), and opens what was sealed under that id.
///
/// Obtained from a tenant's key record ([`crate::TenantKeys::current_key`],
/// [`crate::TenantKeys::key`]); services may cache it (behind an `Arc`) per (tenant, key id),
/// dropping the cache entry when the record is deleted.
pub struct DataKey {
    id: DekId,
    dek: Dek,
}

impl DataKey {
    /// Binds `dek` to its id.
    pub fn new(id: DekId, dek: Dek) -> Self {
        Self { id, dek }
    }

    /// The key's id: what the `Switchyard-Key` header names.
    pub fn id(&self) -> &DekId {
        &self.id
    }

    /// The key bytes.
    pub fn dek(&self) -> &Dek {
        &self.dek
    }

    /// ring's key.
    pub(crate) fn aead_key(&self) -> Result<ring::aead::LessSafeKey, CryptError> {
        aead::key(self.dek.expose_secret())
    }
}

impl fmt::Debug for DataKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DataKey")
            .field("id", &self.id)
            .field("dek", &self.dek)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_shows_no_key_bytes() {
        let dek = Dek::from_slice(&[0xab; KEY_LEN]).unwrap();
        let shown = format!("{dek:?}");
        assert_eq!(shown, "Dek(***)");
        let key = DataKey::new(DekId::new("d1").unwrap(), dek);
        let shown = format!("{key:?} {key:#?}");
        assert!(!shown.contains("171") && !shown.contains("ab"), "{shown}");
        assert!(shown.contains("d1"), "{shown}");
    }

    #[test]
    fn wrong_lengths_are_refused() {
        assert_eq!(
            Dek::from_slice(&[0; 31]).unwrap_err(),
            CryptError::KeyLength { len: 31 }
        );
        assert!(Dek::from_slice(&[0; 33]).is_err());
    }

    #[test]
    fn generated_keys_differ() {
        let a = Dek::generate().unwrap();
        let b = Dek::generate().unwrap();
        assert_ne!(a.expose_secret(), b.expose_secret());
    }
}
