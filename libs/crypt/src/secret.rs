//! Sealing short secrets kept in configuration records (a destination's webhook secret,
//! bearer token, signing key) under the tenant's data key: [`SealedSecret`], stored as the
//! compact string `enc:v1:<data key id>:<base64 of nonce ‖ ciphertext ‖ tag>`.
//!
//! **Associated data:** the length-prefixed parts (`switchyard secret v1`, tenant id, label,
//! data key id), where the label is chosen by the caller and names the secret's place (e.g.
//! `destination/orders/secret`), so a sealed secret copied to another tenant, another
//! destination or another field does not open.

use std::fmt;
use std::str::FromStr;

use base64::Engine;
use serde::{Deserialize, Serialize};
use switchyard_keys::TenantId;
use zeroize::Zeroizing;

use crate::aead::{self, NONCE_BYTES, TAG_LEN};
use crate::dek::DataKey;
use crate::error::CryptError;
use crate::id::DekId;

/// What every sealed secret string starts with (defined beside the records that hold it:
/// [`switchyard_registry::SEALED_SECRET_PREFIX`]).
pub const SEALED_PREFIX: &str = switchyard_registry::SEALED_SECRET_PREFIX;

/// A secret sealed under one of a tenant's data keys.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct SealedSecret {
    key: DekId,
    nonce: [u8; NONCE_BYTES],
    ciphertext: Vec<u8>,
}

fn secret_aad(tenant: &TenantId, label: &str, key: &DekId) -> Vec<u8> {
    aead::associated_data(&[
        b"switchyard secret v1",
        tenant.as_str().as_bytes(),
        label.as_bytes(),
        key.as_str().as_bytes(),
    ])
}

impl SealedSecret {
    /// Whether `text` looks like a sealed secret (starts with [`SEALED_PREFIX`]), to tell
    /// sealed values from plaintext ones in records written before encryption was on.
    pub fn is_sealed(text: &str) -> bool {
        text.starts_with(SEALED_PREFIX)
    }

    /// Seals `secret` for `tenant` at `label` under `key`.
    ///
    /// # Errors
    /// [`CryptError::Random`] when the system RNG fails.
    pub fn seal(
        key: &DataKey,
        tenant: &TenantId,
        label: &str,
        secret: &str,
    ) -> Result<Self, CryptError> {
        let nonce = aead::random_nonce()?;
        let aad = secret_aad(tenant, label, key.id());
        let ciphertext = aead::seal(&key.aead_key()?, nonce, &aad, secret.as_bytes())?;
        Ok(Self {
            key: key.id().clone(),
            nonce,
            ciphertext,
        })
    }

    /// The data key it was sealed with: pick the key to open it with by this id.
    pub fn key(&self) -> &DekId {
        &self.key
    }

    /// Opens the secret for `tenant` at `label`; the text is wiped when dropped.
    ///
    /// # Errors
    /// [`CryptError::Tampered`] when the tenant, label or key differs from sealing, or the
    /// sealed bytes were changed.
    pub fn open(
        &self,
        key: &DataKey,
        tenant: &TenantId,
        label: &str,
    ) -> Result<Zeroizing<String>, CryptError> {
        let tampered = || CryptError::Tampered {
            what: "secret",
            tenant: tenant.to_string(),
            key: self.key.to_string(),
        };
        let aad = secret_aad(tenant, label, &self.key);
        let plain = aead::open(&key.aead_key()?, self.nonce, &aad, &self.ciphertext)
            .ok_or_else(tampered)?;
        // Authenticated bytes were sealed from a `&str`, so this only fails on a forged key.
        let text = std::str::from_utf8(&plain).map_err(|_| tampered())?;
        Ok(Zeroizing::new(text.to_owned()))
    }
}

impl fmt::Display for SealedSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut bytes = Vec::with_capacity(NONCE_BYTES + self.ciphertext.len());
        bytes.extend_from_slice(&self.nonce);
        bytes.extend_from_slice(&self.ciphertext);
        write!(
            f,
            "{SEALED_PREFIX}{}:{}",
            self.key,
            base64::engine::general_purpose::STANDARD.encode(bytes)
        )
    }
}

impl fmt::Debug for SealedSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SealedSecret")
            .field("key", &self.key)
            .field("len", &self.ciphertext.len())
            .finish()
    }
}

impl FromStr for SealedSecret {
    type Err = CryptError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = |reason: String| CryptError::BadSecret { reason };
        let rest = s
            .strip_prefix(SEALED_PREFIX)
            .ok_or_else(|| bad(format!("does not start with {SEALED_PREFIX}")))?;
        let (key, body) = rest
            .split_once(':')
            .ok_or_else(|| bad(format!("expected {SEALED_PREFIX}<key id>:<base64>")))?;
        let key = DekId::new(key).map_err(|e| bad(e.to_string()))?;
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(body)
            .map_err(|e| bad(format!("sealed bytes are not base64: {e}")))?;
        if bytes.len() < NONCE_BYTES + TAG_LEN {
            return Err(bad(format!(
                "sealed bytes are {} long; at least {} (nonce and tag)",
                bytes.len(),
                NONCE_BYTES + TAG_LEN
            )));
        }
        let (nonce, ciphertext) = bytes.split_at(NONCE_BYTES);
        let nonce = nonce
            .try_into()
            .map_err(|_| bad("nonce is not 12 bytes".to_owned()))?;
        Ok(Self {
            key,
            nonce,
            ciphertext: ciphertext.to_vec(),
        })
    }
}

impl TryFrom<String> for SealedSecret {
    type Error = CryptError;
    fn try_from(value: String) -> Result<Self, Self::Error> {
        value.parse()
    }
}

impl From<SealedSecret> for String {
    fn from(secret: SealedSecret) -> Self {
        secret.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dek::Dek;

    const LABEL: &str = "destination/orders/secret";

    fn key(id: &str) -> DataKey {
        DataKey::new(DekId::new(id).unwrap(), Dek::generate().unwrap())
    }

    fn acme() -> TenantId {
        TenantId::new("acme").unwrap()
    }

    #[test]
    fn a_sealed_secret_round_trips_through_its_string() {
        let key = key("d1");
        let sealed = SealedSecret::seal(&key, &acme(), LABEL, "whsec_MfKQ9r8GKYqrTwjU").unwrap();
        let text = sealed.to_string();
        assert!(text.starts_with("enc:v1:d1:"), "{text}");
        assert!(SealedSecret::is_sealed(&text));
        assert!(!text.contains("whsec_"));
        let parsed: SealedSecret = text.parse().unwrap();
        assert_eq!(parsed, sealed);
        assert_eq!(parsed.key().as_str(), "d1");
        assert_eq!(
            parsed.open(&key, &acme(), LABEL).unwrap().as_str(),
            "whsec_MfKQ9r8GKYqrTwjU"
        );
        let json = serde_json::to_string(&sealed).unwrap();
        assert_eq!(json, format!("{text:?}"));
        assert_eq!(serde_json::from_str::<SealedSecret>(&json).unwrap(), sealed);
        assert!(!format!("{sealed:?}").contains(&text[10..]));
    }

    #[test]
    fn a_sealed_secret_moved_or_changed_does_not_open() {
        let key = key("d1");
        let sealed = SealedSecret::seal(&key, &acme(), LABEL, "token").unwrap();
        let tampered = |r: Result<Zeroizing<String>, CryptError>| {
            assert!(matches!(
                r,
                Err(CryptError::Tampered { what: "secret", .. })
            ));
        };
        tampered(sealed.open(&key, &TenantId::new("other").unwrap(), LABEL));
        tampered(sealed.open(&key, &acme(), "destination/other/secret"));
        tampered(sealed.open(&self::key("d1"), &acme(), LABEL));

        let text = sealed.to_string();
        let (head, body) = text.rsplit_once(':').unwrap();
        let mut bytes = base64::engine::general_purpose::STANDARD
            .decode(body)
            .unwrap();
        for at in [0, NONCE_BYTES, bytes.len() - 1] {
            bytes[at] ^= 1;
            let changed = format!(
                "{head}:{}",
                base64::engine::general_purpose::STANDARD.encode(&bytes)
            );
            tampered(
                changed
                    .parse::<SealedSecret>()
                    .unwrap()
                    .open(&key, &acme(), LABEL),
            );
            bytes[at] ^= 1;
        }
        let relabelled: SealedSecret = text
            .replacen("enc:v1:d1:", "enc:v1:d2:", 1)
            .parse()
            .unwrap();
        tampered(relabelled.open(&key, &acme(), LABEL));
    }

    #[test]
    fn malformed_sealed_secrets_are_refused() {
        for bad in [
            "whsec_plain",
            "enc:v2:d1:AAAA",
            "enc:v1:d1",
            "enc:v1::AAAA",
            "enc:v1:D1:AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA",
            "enc:v1:d1:not base64",
            "enc:v1:d1:AAAA",
        ] {
            let err = bad.parse::<SealedSecret>().unwrap_err();
            assert!(matches!(err, CryptError::BadSecret { .. }), "{bad}: {err}");
        }
    }
}
