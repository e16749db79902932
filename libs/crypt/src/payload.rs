//! Sealing message payloads: [`DataKey::seal`] and [`DataKey::open`], and the two headers that
//! travel with a sealed payload ([`KEY_HEADER`], [`NONCE_HEADER`]).
//!
//! **Associated data** binds the ciphertext to where it belongs: the length-prefixed parts
//! (`switchyard payload v1`, tenant id, envelope id, data key id). A payload copied to another
//! tenant's message, to another message of the same tenant, or relabelled with another key id
//! fails to open with [`CryptError::Tampered`].
//!
//! A sealed payload is its plaintext's length + 16 bytes (the GCM tag); the nonce travels in
//! its header, not in the payload.

use std::fmt;
use std::str::FromStr;

use base64::Engine;
use switchyard_keys::TenantId;

use crate::aead::{self, NONCE_BYTES};
use crate::dek::DataKey;
use crate::error::CryptError;
use crate::id::DekId;

/// Names the data key a payload was sealed with (a [`DekId`]). Its presence means the payload
/// is sealed.
pub const KEY_HEADER: &str = switchyard_envelope::headers::SEAL_KEY;

/// The payload's 96-bit nonce, standard base64 (16 characters).
pub const NONCE_HEADER: &str = switchyard_envelope::headers::SEAL_NONCE;

/// A 96-bit AES-GCM nonce; shown (and carried in [`NONCE_HEADER`]) as standard base64.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Nonce(pub [u8; NONCE_BYTES]);

impl fmt::Display for Nonce {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&base64::engine::general_purpose::STANDARD.encode(self.0))
    }
}

impl FromStr for Nonce {
    type Err = String;
    /// Canonical standard base64 of exactly 12 bytes; the error is a reason.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(s)
            .map_err(|e| format!("is not base64: {e}"))?;
        let bytes: [u8; NONCE_BYTES] = bytes
            .as_slice()
            .try_into()
            .map_err(|_| format!("decodes to {} bytes; a nonce is {NONCE_BYTES}", bytes.len()))?;
        Ok(Self(bytes))
    }
}

/// What a sealed payload's headers say: its key id and nonce.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SealHeaders {
    /// The data key it was sealed with.
    pub key: DekId,
    /// Its nonce.
    pub nonce: Nonce,
}

impl SealHeaders {
    /// The header (name, value) pairs to publish with the payload.
    pub fn render(&self) -> [(&'static str, String); 2] {
        [
            (KEY_HEADER, self.key.to_string()),
            (NONCE_HEADER, self.nonce.to_string()),
        ]
    }

    /// Reads the two header values of a received message: `None` when neither is present (the
    /// payload is not sealed).
    ///
    /// # Errors
    /// [`CryptError::BadHeader`] naming the header when only one is present, the key id is
    /// outside its charset, or the nonce is not base64 of 12 bytes.
    pub fn parse(key: Option<&str>, nonce: Option<&str>) -> Result<Option<Self>, CryptError> {
        let bad = |header: &'static str, reason: String| CryptError::BadHeader { header, reason };
        let (key, nonce) = match (key, nonce) {
            (None, None) => return Ok(None),
            (Some(key), Some(nonce)) => (key, nonce),
            (Some(_), None) => {
                return Err(bad(
                    NONCE_HEADER,
                    format!("missing, but {KEY_HEADER} is present"),
                ));
            }
            (None, Some(_)) => {
                return Err(bad(
                    KEY_HEADER,
                    format!("missing, but {NONCE_HEADER} is present"),
                ));
            }
        };
        let key = DekId::new(key).map_err(|e| bad(KEY_HEADER, e.to_string()))?;
        let nonce = nonce.parse().map_err(|reason| bad(NONCE_HEADER, reason))?;
        Ok(Some(Self { key, nonce }))
    }
}

/// A sealed payload: the headers to publish it with, and the bytes to publish as its payload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sealed {
    /// Key id and nonce, for [`KEY_HEADER`] and [`NONCE_HEADER`].
    pub headers: SealHeaders,
    /// Ciphertext ‖ 16-byte tag: the message's new payload.
    pub ciphertext: Vec<u8>,
}

/// The id a payload sealed at the edge, before the ingress stage has stamped its envelope, is
/// bound to: `ingress:<the producer's message id>` (ingress's HTTP API seals with it before it
/// stores a message; the ingress stage opens with it and seals again under the envelope id).
/// Envelope ids are UUIDs, so the two kinds of binding never collide.
pub fn edge_seal_id(msg_id: &str) -> String {
    format!("ingress:{msg_id}")
}

fn payload_aad(tenant: &TenantId, envelope_id: &str, key: &DekId) -> Vec<u8> {
    aead::associated_data(&[
        b"switchyard payload v1",
        tenant.as_str().as_bytes(),
        envelope_id.as_bytes(),
        key.as_str().as_bytes(),
    ])
}

impl DataKey {
    /// Seals `plaintext` for the message `envelope_id` (the envelope id's text, a UUID) of
    /// `tenant`, under a fresh random nonce.
    ///
    /// # Errors
    /// [`CryptError::Random`] when the system RNG fails; [`CryptError::Aead`] for a payload
    /// over AES-GCM's 64 GiB limit.
    pub fn seal(
        &self,
        tenant: &TenantId,
        envelope_id: &str,
        plaintext: &[u8],
    ) -> Result<Sealed, CryptError> {
        let nonce = aead::random_nonce()?;
        let aad = payload_aad(tenant, envelope_id, self.id());
        let ciphertext = aead::seal(&self.aead_key()?, nonce, &aad, plaintext)?;
        Ok(Sealed {
            headers: SealHeaders {
                key: self.id().clone(),
                nonce: Nonce(nonce),
            },
            ciphertext,
        })
    }

    /// Opens a payload sealed with [`DataKey::seal`]: `headers` as parsed from the message,
    /// `tenant` and `envelope_id` as the message claims them. Pick the key by `headers.key`
    /// ([`crate::TenantKeys::key`]).
    ///
    /// # Errors
    /// [`CryptError::Tampered`] when anything differs from what was sealed: tenant, envelope
    /// id, key id or key, nonce, or a byte of the ciphertext.
    pub fn open(
        &self,
        tenant: &TenantId,
        envelope_id: &str,
        headers: &SealHeaders,
        ciphertext: &[u8],
    ) -> Result<Vec<u8>, CryptError> {
        let aad = payload_aad(tenant, envelope_id, &headers.key);
        aead::open_vec(
            &self.aead_key()?,
            headers.nonce.0,
            &aad,
            ciphertext.to_vec(),
        )
        .ok_or_else(|| CryptError::Tampered {
            what: "payload",
            tenant: tenant.to_string(),
            key: headers.key.to_string(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dek::Dek;
    use crate::kek::{KekRing, LocalKek};
    use crate::record::{TenantKeys, keys_or_shredded};
    use time::macros::datetime;

    const ENVELOPE: &str = "0197a0b4-6c1e-7d3a-9f00-2b9c4e5d6f70";

    fn tenant(name: &str) -> TenantId {
        TenantId::new(name).unwrap()
    }

    fn key(id: &str) -> DataKey {
        DataKey::new(DekId::new(id).unwrap(), Dek::generate().unwrap())
    }

    fn assert_tampered(result: Result<Vec<u8>, CryptError>) {
        match result {
            Err(CryptError::Tampered {
                what: "payload", ..
            }) => {}
            other => panic!("expected Tampered, got {other:?}"),
        }
    }

    #[test]
    fn a_sealed_payload_opens_to_its_plaintext() {
        let acme = tenant("acme");
        let key = key("d1");
        for plaintext in [&b""[..], b"{\"order\":42}", &[0u8; 100_000]] {
            let sealed = key.seal(&acme, ENVELOPE, plaintext).unwrap();
            assert_eq!(sealed.ciphertext.len(), plaintext.len() + 16);
            assert_eq!(sealed.headers.key.as_str(), "d1");
            let opened = key.open(&acme, ENVELOPE, &sealed.headers, &sealed.ciphertext);
            assert_eq!(opened.unwrap(), plaintext);
        }
    }

    #[test]
    fn sealing_twice_uses_fresh_nonces() {
        let key = key("d1");
        let a = key.seal(&tenant("acme"), ENVELOPE, b"same").unwrap();
        let b = key.seal(&tenant("acme"), ENVELOPE, b"same").unwrap();
        assert_ne!(a.headers.nonce, b.headers.nonce);
        assert_ne!(a.ciphertext, b.ciphertext);
    }

    #[test]
    fn any_change_fails_with_tampered() {
        let acme = tenant("acme");
        let key = key("d1");
        let sealed = key.seal(&acme, ENVELOPE, b"secret payload").unwrap();
        let open = |tenant: &TenantId, envelope: &str, headers: &SealHeaders, ct: &[u8]| {
            key.open(tenant, envelope, headers, ct)
        };

        for at in [0, 5, sealed.ciphertext.len() - 1] {
            let mut ct = sealed.ciphertext.clone();
            ct[at] ^= 0x01;
            assert_tampered(open(&acme, ENVELOPE, &sealed.headers, &ct));
        }
        assert_tampered(open(
            &acme,
            ENVELOPE,
            &sealed.headers,
            &sealed.ciphertext[1..],
        ));

        let mut nonce = sealed.headers.clone();
        nonce.nonce.0[0] ^= 0x80;
        assert_tampered(open(&acme, ENVELOPE, &nonce, &sealed.ciphertext));

        let mut relabelled = sealed.headers.clone();
        relabelled.key = DekId::new("d2").unwrap();
        assert_tampered(open(&acme, ENVELOPE, &relabelled, &sealed.ciphertext));

        assert_tampered(open(
            &tenant("other"),
            ENVELOPE,
            &sealed.headers,
            &sealed.ciphertext,
        ));
        let other_envelope = "0197a0b4-6c1e-7d3a-9f00-2b9c4e5d6f71";
        assert_tampered(open(
            &acme,
            other_envelope,
            &sealed.headers,
            &sealed.ciphertext,
        ));

        let wrong_key = self::key("d1");
        assert_tampered(wrong_key.open(&acme, ENVELOPE, &sealed.headers, &sealed.ciphertext));

        let err = open(
            &tenant("other"),
            ENVELOPE,
            &sealed.headers,
            &sealed.ciphertext,
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("other") && err.contains("d1"), "{err}");
        assert!(!err.contains("secret payload"));
    }

    #[test]
    fn headers_render_and_parse_back() {
        let sealed = key("3f9c0a7de21b4c55")
            .seal(&tenant("acme"), ENVELOPE, b"x")
            .unwrap();
        let [(key_name, key), (nonce_name, nonce)] = sealed.headers.render();
        assert_eq!(
            (key_name, nonce_name),
            ("Switchyard-Key", "Switchyard-Nonce")
        );
        assert_eq!(nonce.len(), 16);
        let parsed = SealHeaders::parse(Some(&key), Some(&nonce)).unwrap();
        assert_eq!(parsed, Some(sealed.headers));
        assert_eq!(SealHeaders::parse(None, None).unwrap(), None);
    }

    #[test]
    fn junk_headers_are_refused_naming_the_header() {
        let nonce = Nonce([7; 12]).to_string();
        let cases: [(Option<&str>, Option<&str>, &str); 9] = [
            (Some("d1"), None, NONCE_HEADER),
            (None, Some(&nonce), KEY_HEADER),
            (Some(""), Some(&nonce), KEY_HEADER),
            (Some("d1.>"), Some(&nonce), KEY_HEADER),
            (Some("D1"), Some(&nonce), KEY_HEADER),
            (Some("d1"), Some("not base64!"), NONCE_HEADER),
            (Some("d1"), Some("AAAA"), NONCE_HEADER),
            (Some("d1"), Some("AAAAAAAAAAAAAAAAAAAAAAAA"), NONCE_HEADER),
            (Some("d1"), Some(""), NONCE_HEADER),
        ];
        for (key, nonce, header) in cases {
            match SealHeaders::parse(key, nonce) {
                Err(CryptError::BadHeader {
                    header: named,
                    reason,
                }) => {
                    assert_eq!(named, header, "{key:?} {nonce:?}: {reason}");
                }
                other => panic!("{key:?} {nonce:?}: expected BadHeader, got {other:?}"),
            }
        }
    }

    #[test]
    fn dek_rotation_keeps_old_payloads_readable() {
        let ring = KekRing::new(LocalKek::generate().unwrap());
        let acme = tenant("acme");
        let mut keys =
            TenantKeys::create(acme.clone(), &ring, datetime!(2025-06-01 0:00 UTC)).unwrap();
        let old = keys
            .current_key(&ring)
            .unwrap()
            .seal(&acme, ENVELOPE, b"before")
            .unwrap();
        let new_id = keys
            .rotate_dek(&ring, datetime!(2025-07-01 0:00 UTC))
            .unwrap();
        let new = keys
            .current_key(&ring)
            .unwrap()
            .seal(&acme, ENVELOPE, b"after")
            .unwrap();
        assert_eq!(new.headers.key, new_id);
        assert_ne!(old.headers.key, new_id);
        for (sealed, plaintext) in [(&old, &b"before"[..]), (&new, b"after")] {
            let key = keys.key(&sealed.headers.key, &ring).unwrap();
            let opened = key.open(&acme, ENVELOPE, &sealed.headers, &sealed.ciphertext);
            assert_eq!(opened.unwrap(), plaintext);
        }
    }

    #[test]
    fn kek_rotation_keeps_payloads_readable_without_touching_them() {
        let acme = tenant("acme");
        let ring1 = KekRing::new(LocalKek::from_bytes(&[1; 32]).unwrap());
        let mut keys =
            TenantKeys::create(acme.clone(), &ring1, datetime!(2025-06-01 0:00 UTC)).unwrap();
        let sealed = keys
            .current_key(&ring1)
            .unwrap()
            .seal(&acme, ENVELOPE, b"kept")
            .unwrap();

        let rotating = KekRing::new(LocalKek::from_bytes(&[2; 32]).unwrap())
            .with_previous(LocalKek::from_bytes(&[1; 32]).unwrap())
            .unwrap();
        keys.rewrap(&rotating).unwrap();
        let ring2 = KekRing::new(LocalKek::from_bytes(&[2; 32]).unwrap());
        let key = keys.key(&sealed.headers.key, &ring2).unwrap();
        assert_eq!(
            key.open(&acme, ENVELOPE, &sealed.headers, &sealed.ciphertext)
                .unwrap(),
            b"kept"
        );
    }

    #[test]
    fn after_shredding_a_tenants_payloads_cannot_be_opened() {
        let ring = KekRing::new(LocalKek::generate().unwrap());
        let acme = tenant("acme");
        let mut store =
            Some(TenantKeys::create(acme.clone(), &ring, datetime!(2025-06-01 0:00 UTC)).unwrap());
        let sealed = keys_or_shredded(store.clone(), &acme)
            .unwrap()
            .current_key(&ring)
            .unwrap()
            .seal(&acme, ENVELOPE, b"gone soon")
            .unwrap();

        store = None; // The tenant is deleted: its key record with it.
        let err = keys_or_shredded(store, &acme)
            .and_then(|keys| keys.key(&sealed.headers.key, &ring))
            .unwrap_err();
        assert_eq!(
            err,
            CryptError::Shredded {
                tenant: "acme".into()
            }
        );

        // Created again, the tenant has new keys that do not open the old bytes.
        let again =
            TenantKeys::create(acme.clone(), &ring, datetime!(2025-08-01 0:00 UTC)).unwrap();
        assert!(matches!(
            again.key(&sealed.headers.key, &ring),
            Err(CryptError::UnknownKey { .. })
        ));
    }
}
