//! The AES-256-GCM primitive every other module seals and opens with (ring's AEAD, random
//! 96-bit nonces from the system RNG), and the unambiguous encoding of associated data.
//!
//! **Nonces are random**, so one key must not seal more than about 2³² messages (NIST SP
//! 800-38D, §8.3); rotating a tenant's data key resets the count. Nothing here is hand-written
//! cryptography: ring does the cipher, the tag and the constant-time tag check.

use ring::aead::{AES_256_GCM, Aad, LessSafeKey, NONCE_LEN, UnboundKey};
use ring::rand::{SecureRandom, SystemRandom};
use zeroize::Zeroizing;

use crate::error::CryptError;

/// AES-256 key length, in bytes.
pub const KEY_LEN: usize = 32;

/// The GCM nonce length, in bytes (96 bits).
pub const NONCE_BYTES: usize = NONCE_LEN;

/// The GCM tag length, in bytes; a sealed value is this much longer than its plaintext.
pub const TAG_LEN: usize = 16;

/// Fills `out` from the operating system's random number generator.
pub(crate) fn fill_random(out: &mut [u8]) -> Result<(), CryptError> {
    SystemRandom::new()
        .fill(out)
        .map_err(|_| CryptError::Random)
}

/// A fresh random nonce.
pub(crate) fn random_nonce() -> Result<[u8; NONCE_BYTES], CryptError> {
    let mut nonce = [0u8; NONCE_BYTES];
    fill_random(&mut nonce)?;
    Ok(nonce)
}

/// ring's key for `bytes`.
pub(crate) fn key(bytes: &[u8; KEY_LEN]) -> Result<LessSafeKey, CryptError> {
    UnboundKey::new(&AES_256_GCM, bytes)
        .map(LessSafeKey::new)
        .map_err(|_| CryptError::Aead {
            operation: "key setup",
        })
}

/// Seals `plaintext`: returns ciphertext ‖ 16-byte tag.
pub(crate) fn seal(
    key: &LessSafeKey,
    nonce: [u8; NONCE_BYTES],
    aad: &[u8],
    plaintext: &[u8],
) -> Result<Vec<u8>, CryptError> {
    let mut out = Vec::with_capacity(plaintext.len() + TAG_LEN);
    out.extend_from_slice(plaintext);
    key.seal_in_place_append_tag(
        ring::aead::Nonce::assume_unique_for_key(nonce),
        Aad::from(aad),
        &mut out,
    )
    .map_err(|_| CryptError::Aead { operation: "seal" })?;
    Ok(out)
}

/// Opens ciphertext ‖ tag in place; `None` when it does not authenticate. For payloads: the
/// buffer is not wiped (on failure ring may leave partly decrypted bytes in it; it is dropped).
pub(crate) fn open_vec(
    key: &LessSafeKey,
    nonce: [u8; NONCE_BYTES],
    aad: &[u8],
    mut sealed: Vec<u8>,
) -> Option<Vec<u8>> {
    let len = key
        .open_in_place(
            ring::aead::Nonce::assume_unique_for_key(nonce),
            Aad::from(aad),
            &mut sealed,
        )
        .ok()?
        .len();
    sealed.truncate(len);
    Some(sealed)
}

/// Opens ciphertext ‖ tag; `None` when it does not authenticate. For key material and
/// secrets: the buffer is wiped when dropped, whether it authenticated or not.
pub(crate) fn open(
    key: &LessSafeKey,
    nonce: [u8; NONCE_BYTES],
    aad: &[u8],
    sealed: &[u8],
) -> Option<Zeroizing<Vec<u8>>> {
    let mut buffer = Zeroizing::new(sealed.to_vec());
    let len = key
        .open_in_place(
            ring::aead::Nonce::assume_unique_for_key(nonce),
            Aad::from(aad),
            &mut buffer,
        )
        .ok()?
        .len();
    buffer.truncate(len);
    Some(buffer)
}

/// Associated data: each part as its length (8 bytes, big-endian) followed by its bytes, so
/// distinct part lists never encode the same (`("ab", "c")` ≠ `("a", "bc")`). The first part
/// is by convention a versioned domain label (`switchyard payload v1`, …), so data sealed for
/// one purpose never opens as another.
pub(crate) fn associated_data(parts: &[&[u8]]) -> Vec<u8> {
    let mut out = Vec::with_capacity(parts.iter().map(|p| p.len() + 8).sum());
    for part in parts {
        out.extend_from_slice(&(part.len() as u64).to_be_bytes());
        out.extend_from_slice(part);
    }
    out
}

/// Lowercase hex of `bytes`.
pub(crate) fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        out.push(char::from(DIGITS[usize::from(b >> 4)]));
        out.push(char::from(DIGITS[usize::from(b & 0x0f)]));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn associated_data_is_unambiguous() {
        assert_ne!(
            associated_data(&[b"ab", b"c"]),
            associated_data(&[b"a", b"bc"])
        );
        assert_ne!(associated_data(&[b"", b"a"]), associated_data(&[b"a", b""]));
        assert_ne!(associated_data(&[b"a"]), associated_data(&[b"a", b""]));
    }

    #[test]
    fn seal_then_open_round_trips_and_a_changed_aad_fails() {
        let key = key(&[7u8; KEY_LEN]).unwrap();
        let nonce = random_nonce().unwrap();
        let sealed = seal(&key, nonce, b"aad", b"hello").unwrap();
        assert_eq!(sealed.len(), 5 + TAG_LEN);
        assert_eq!(
            open(&key, nonce, b"aad", &sealed).unwrap().as_slice(),
            b"hello"
        );
        assert!(open(&key, nonce, b"aae", &sealed).is_none());
        assert!(open(&key, nonce, b"aad", &sealed[..4]).is_none());
        assert_eq!(
            open_vec(&key, nonce, b"aad", sealed.clone()).unwrap(),
            b"hello"
        );
        assert!(open_vec(&key, nonce, b"aae", sealed).is_none());
    }

    #[test]
    fn hex_is_lowercase_two_digits_per_byte() {
        assert_eq!(hex(&[0x00, 0x0f, 0xa5, 0xff]), "000fa5ff");
    }
}
