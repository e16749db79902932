//! Standard Webhooks asymmetric signatures (`v1a`): an Ed25519 key pair per route, its private
//! key serialised `whsk_` + base64 and its public key `whpk_` + base64
//! (<https://github.com/standard-webhooks/standard-webhooks/blob/main/spec/standard-webhooks.md>,
//! "Signature scheme"). The receiver needs only the public key, so it cannot sign: what a
//! consumer that does not control the producer's security should prefer. [`sign_v1`] gives the
//! symmetric `v1` signature (HMAC-SHA256 with a `whsec_` secret), shared by egress's
//! deliveries and the dlq service's operator webhook.

use base64::Engine;
use ring::signature::{Ed25519KeyPair, KeyPair};
use serde::{Deserialize, Serialize};

use crate::route::RouteError;

/// An Ed25519 private key: `whsk_` + base64 of its 32-byte seed (or of the 64 bytes
/// seed ‖ public key that libsodium writes). Its `Debug` never shows it.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct SigningKey(pub String);

impl std::fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SigningKey(***)")
    }
}

fn invalid(reason: &str) -> RouteError {
    RouteError::Field {
        field: "signing_key",
        reason: reason.to_owned(),
    }
}

impl SigningKey {
    /// Whether it is sealed (`enc:v1:…`, [`crate::route::SEALED_SECRET_PREFIX`]): it must be
    /// opened before it signs, and its public key is not known until then.
    pub fn is_sealed(&self) -> bool {
        self.0.starts_with(crate::route::SEALED_SECRET_PREFIX)
    }

    /// Checks it: a valid key pair ([`SigningKey::key_pair`]), or a well-formed sealed key.
    ///
    /// # Errors
    /// [`RouteError::Field`] naming `signing_key`.
    pub fn validate(&self) -> Result<(), RouteError> {
        if self.is_sealed() {
            crate::route::check_sealed("signing_key", &self.0)
        } else {
            self.key_pair().map(|_| ())
        }
    }

    /// The key pair.
    ///
    /// # Errors
    /// [`RouteError::Field`] when it is not `whsk_` + base64 of 32 or 64 bytes, or the 64 bytes'
    /// public half does not belong to the seed.
    pub fn key_pair(&self) -> Result<Ed25519KeyPair, RouteError> {
        if let Some(id) = crate::route::sealed_key_id(&self.0) {
            return Err(invalid(&format!(
                "is sealed under data key {id}: it signs only once opened with the tenant's key"
            )));
        }
        let encoded = self.0.strip_prefix("whsk_").ok_or_else(|| {
            invalid("does not start with whsk_ (a Standard Webhooks signing key)")
        })?;
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(encoded)
            .map_err(|_| invalid("is not base64 after whsk_"))?;
        match bytes.len() {
            32 => Ed25519KeyPair::from_seed_unchecked(&bytes)
                .map_err(|_| invalid("is not an Ed25519 seed")),
            64 => Ed25519KeyPair::from_seed_and_public_key(&bytes[..32], &bytes[32..])
                .map_err(|_| invalid("its public half does not match its seed")),
            n => Err(invalid(&format!(
                "holds {n} bytes; an Ed25519 private key is a 32-byte seed (or 64 bytes with its public key)"
            ))),
        }
    }

    /// The public key receivers verify with: `whpk_` + base64 of its 32 bytes.
    ///
    /// # Errors
    /// As [`SigningKey::key_pair`].
    pub fn public_key(&self) -> Result<String, RouteError> {
        let pair = self.key_pair()?;
        Ok(format!(
            "whpk_{}",
            base64::engine::general_purpose::STANDARD.encode(pair.public_key().as_ref())
        ))
    }
}

/// What a Standard Webhooks signature signs: `{id}.{timestamp}.{payload}`.
fn signed_content(id: &str, timestamp: i64, payload: &[u8]) -> Vec<u8> {
    let mut content = Vec::with_capacity(id.len() + 24 + payload.len());
    content.extend_from_slice(id.as_bytes());
    content.push(b'.');
    content.extend_from_slice(timestamp.to_string().as_bytes());
    content.push(b'.');
    content.extend_from_slice(payload);
    content
}

/// The `v1a` signature of a message: `v1a,` + base64 of the Ed25519 signature over
/// `{id}.{timestamp}.{payload}`.
pub fn sign_v1a(pair: &Ed25519KeyPair, id: &str, timestamp: i64, payload: &[u8]) -> String {
    let content = signed_content(id, timestamp, payload);
    format!(
        "v1a,{}",
        base64::engine::general_purpose::STANDARD.encode(pair.sign(&content).as_ref())
    )
}

/// The symmetric `v1` signature of a message (the `webhook-signature` header's value for one
/// secret): `v1,` + base64 of HMAC-SHA256(`key`, `{id}.{timestamp}.{payload}`), `key` being
/// the bytes of a `whsec_` secret ([`crate::WebhookSecret::key`]).
pub fn sign_v1(key: &[u8], id: &str, timestamp: i64, payload: &[u8]) -> String {
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, key);
    let tag = ring::hmac::sign(&key, &signed_content(id, timestamp, payload));
    format!(
        "v1,{}",
        base64::engine::general_purpose::STANDARD.encode(tag.as_ref())
    )
}

#[cfg(test)]
mod tests {
    use ring::signature::{ED25519, UnparsedPublicKey};

    use super::*;

    const SEED: &str = "whsk_AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=";

    #[test]
    fn a_v1a_signature_verifies_with_the_public_key_only() {
        let key = SigningKey(SEED.into());
        let public = key.public_key().unwrap();
        let signature = sign_v1a(&key.key_pair().unwrap(), "msg_1", 1_674_087_231, b"{}");
        let b64 = base64::engine::general_purpose::STANDARD;
        let raw = b64.decode(signature.strip_prefix("v1a,").unwrap()).unwrap();
        let pk = b64.decode(public.strip_prefix("whpk_").unwrap()).unwrap();
        UnparsedPublicKey::new(&ED25519, &pk)
            .verify(b"msg_1.1674087231.{}", &raw)
            .unwrap();
        assert!(
            UnparsedPublicKey::new(&ED25519, &pk)
                .verify(b"msg_1.1674087231.{\"x\":1}", &raw)
                .is_err()
        );
    }

    #[test]
    fn the_64_byte_form_must_hold_its_own_public_key_and_bad_keys_are_refused() {
        let key = SigningKey(SEED.into());
        let b64 = base64::engine::general_purpose::STANDARD;
        let seed = b64.decode(SEED.strip_prefix("whsk_").unwrap()).unwrap();
        let public = b64
            .decode(key.public_key().unwrap().strip_prefix("whpk_").unwrap())
            .unwrap();
        let full = SigningKey(format!(
            "whsk_{}",
            b64.encode([seed.clone(), public].concat())
        ));
        assert_eq!(full.public_key().unwrap(), key.public_key().unwrap());
        let wrong = SigningKey(format!(
            "whsk_{}",
            b64.encode([seed.clone(), seed].concat())
        ));
        assert!(wrong.key_pair().is_err());
        for bad in ["whsec_AAEC", "whsk_!!", "whsk_AAEC"] {
            let err = SigningKey(bad.into()).key_pair().unwrap_err().to_string();
            assert!(err.starts_with("route field signing_key"), "{bad}: {err}");
        }
        assert_eq!(format!("{key:?}"), "SigningKey(***)");
    }
}
