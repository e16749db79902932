//! Key ids: [`DekId`] names one of a tenant's data keys (it travels in the `Switchyard-Key`
//! header, so it is validated like any network input), and KEK ids name key-encryption keys.
//!
//! **Charset (documented contract):** both are 1 to 64 bytes of `[a-z0-9_-]`, starting with
//! `[a-z0-9]` — the same charset as tenant ids, so an id is a valid header value, subject token
//! and KV key token, and cannot contain the `:` that separates the parts of a sealed secret.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::aead::{fill_random, hex};
use crate::error::{CryptError, shown};

/// The longest key id, in bytes.
pub const MAX_KEY_ID_LEN: usize = 64;

/// The allowed charset, as shown in error messages.
pub const KEY_ID_CHARSET: &str = "[a-z0-9_-], starting with [a-z0-9]";

/// Checks `value` against the key id charset and length.
pub(crate) fn validate_key_id(kind: &'static str, value: &str) -> Result<(), CryptError> {
    let invalid = |reason: String| CryptError::InvalidId {
        kind,
        value: shown(value),
        reason,
    };
    if value.is_empty() {
        return Err(invalid("must not be empty".to_owned()));
    }
    if value.len() > MAX_KEY_ID_LEN {
        return Err(invalid(format!(
            "is {} bytes long; the limit is {MAX_KEY_ID_LEN}",
            value.len()
        )));
    }
    for (at, c) in value.char_indices() {
        let ok = c.is_ascii_lowercase() || c.is_ascii_digit() || (at > 0 && (c == '_' || c == '-'));
        if !ok {
            return Err(invalid(format!(
                "invalid character {c:?} at byte {at}: allowed are {KEY_ID_CHARSET}"
            )));
        }
    }
    Ok(())
}

/// The id of one of a tenant's data keys (DEKs), e.g. `3f9c0a7de21b4c55`.
///
/// Generated ids are 16 lowercase hex characters (64 random bits), so a tenant deleted and
/// created again never reuses an id: bytes left from before the deletion fail with
/// [`CryptError::UnknownKey`], not with a misleading authentication error.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct DekId(String);

impl DekId {
    /// Validates `value` against the key id charset ([`KEY_ID_CHARSET`], 1..=64 bytes).
    ///
    /// # Errors
    /// [`CryptError::InvalidId`] naming the offending character or length.
    pub fn new(value: impl Into<String>) -> Result<Self, CryptError> {
        let value = value.into();
        validate_key_id("data key id", &value)?;
        Ok(Self(value))
    }

    /// A fresh random id: 16 lowercase hex characters.
    ///
    /// # Errors
    /// [`CryptError::Random`] when the system RNG fails.
    pub fn generate() -> Result<Self, CryptError> {
        let mut bytes = [0u8; 8];
        fill_random(&mut bytes)?;
        Ok(Self(hex(&bytes)))
    }

    /// The id as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for DekId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl FromStr for DekId {
    type Err = CryptError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::new(s)
    }
}

impl TryFrom<String> for DekId {
    type Error = CryptError;
    fn try_from(value: String) -> Result<Self, Self::Error> {
        Self::new(value)
    }
}

impl From<DekId> for String {
    fn from(id: DekId) -> Self {
        id.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_ids_are_valid_and_distinct() {
        let a = DekId::generate().unwrap();
        let b = DekId::generate().unwrap();
        assert_ne!(a, b);
        assert_eq!(a.as_str().len(), 16);
        assert_eq!(DekId::new(a.as_str()).unwrap(), a);
    }

    #[test]
    fn ids_outside_the_charset_are_refused() {
        for bad in [
            "",
            "D1",
            "-d1",
            "d 1",
            "d1:x",
            "d.1",
            "d*",
            "é",
            &"a".repeat(65),
        ] {
            let err = DekId::new(bad).unwrap_err();
            assert!(
                matches!(err, CryptError::InvalidId { .. }),
                "{bad:?}: {err}"
            );
        }
        for good in ["d1", "0", "a_b-c", &"a".repeat(64)] {
            DekId::new(good).unwrap();
        }
    }

    #[test]
    fn serde_validates() {
        assert!(serde_json::from_str::<DekId>(r#""d1""#).is_ok());
        assert!(serde_json::from_str::<DekId>(r#""d:1""#).is_err());
    }
}
