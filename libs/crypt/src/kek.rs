//! Key-encryption keys (KEKs): the [`KeyEncryptionKey`] trait that wraps and unwraps data
//! keys, [`LocalKek`] (an AES-256-GCM key from a file or an environment secret, held outside
//! NATS), and [`KekRing`] (the current KEK plus older ones, for KEK rotation).
//!
//! **KEK file format:** one line holding the 32-byte key as 64 hex characters or as standard
//! base64 (44 characters with padding) — what `openssl rand -hex 32` or `openssl rand -base64
//! 32` prints. Surrounding whitespace is ignored. On unix the file must not be writable by
//! group or others: whoever can replace the KEK can make new data keys wrap under a key they
//! know. Readable-by-group files are accepted, because Kubernetes secret volumes and docker
//! secrets are mounted 0644/0444 by default; restrict the directory instead.
//!
//! **KEK ids:** given explicitly ([`LocalKek::with_id`]), or derived from the key as `kek-` +
//! the first 8 hex characters of SHA-256(`switchyard kek id v1` ‖ key) — stable across restarts
//! and replicas, different for different keys, and revealing nothing usable about the key.
//! Every wrapped data key records the id of the KEK that wrapped it.

use std::fmt;
use std::path::Path;

use ring::aead::LessSafeKey;
use zeroize::Zeroizing;

use crate::aead::{self, KEY_LEN, NONCE_BYTES, TAG_LEN};
use crate::dek::Dek;
use crate::error::CryptError;
use crate::id::{DekId, validate_key_id};
use switchyard_keys::TenantId;

/// What a wrapped data key is bound to: its tenant and its id. Unwrapping with another context
/// fails, so a wrapped key cannot be copied into another tenant's record or under another id.
#[derive(Debug, Clone, Copy)]
pub struct WrapContext<'a> {
    /// The tenant whose record holds the key.
    pub tenant: &'a TenantId,
    /// The data key id.
    pub key: &'a DekId,
}

impl WrapContext<'_> {
    /// The associated data for AEAD-based wrapping: the length-prefixed parts
    /// (`switchyard dek v1`, tenant, key id). A KMS implementation would pass the tenant and
    /// key id as its encryption context instead.
    pub fn associated_data(&self) -> Vec<u8> {
        aead::associated_data(&[
            b"switchyard dek v1",
            self.tenant.as_str().as_bytes(),
            self.key.as_str().as_bytes(),
        ])
    }
}

/// A key-encryption key: wraps data keys for storage and unwraps them again.
///
/// Implementations hold their key outside NATS (a file, an environment secret, a KMS). The
/// calls are synchronous: a local key answers in microseconds, and services cache unwrapped
/// data keys, so unwrapping is rare. A KMS-backed implementation would make this trait async
/// (or run its calls on a blocking thread); the callers are few ([`crate::TenantKeys`]).
pub trait KeyEncryptionKey: Send + Sync {
    /// The KEK's id, recorded beside every data key it wraps ([`crate::id::KEY_ID_CHARSET`]).
    fn id(&self) -> &str;

    /// Wraps `dek` bound to `context`.
    ///
    /// # Errors
    /// Implementation-specific; [`LocalKek`] fails only with [`CryptError::Random`].
    fn wrap(&self, dek: &Dek, context: WrapContext<'_>) -> Result<Vec<u8>, CryptError>;

    /// Unwraps what [`KeyEncryptionKey::wrap`] returned for the same `context`.
    ///
    /// # Errors
    /// [`CryptError::UnwrapFailed`] when `wrapped` is not a key wrapped by this KEK for
    /// `context` (altered, copied from another tenant or id, or another key under this id).
    fn unwrap(&self, wrapped: &[u8], context: WrapContext<'_>) -> Result<Dek, CryptError>;
}

/// A KEK held locally: AES-256-GCM; a wrapped key is nonce (12 bytes) ‖ ciphertext (32) ‖ tag
/// (16), 60 bytes in all, with [`WrapContext::associated_data`] as associated data.
pub struct LocalKek {
    id: String,
    key: LessSafeKey,
}

impl LocalKek {
    /// A KEK from its 32 bytes, its id derived from them (see the module docs).
    ///
    /// # Errors
    /// [`CryptError::KeyLength`] unless `bytes` is 32 bytes long.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, CryptError> {
        let bytes: &[u8; KEY_LEN] = bytes
            .try_into()
            .map_err(|_| CryptError::KeyLength { len: bytes.len() })?;
        let mut input = Zeroizing::new(b"switchyard kek id v1".to_vec());
        input.extend_from_slice(bytes);
        let digest = ring::digest::digest(&ring::digest::SHA256, &input);
        Ok(Self {
            id: format!("kek-{}", aead::hex(&digest.as_ref()[..4])),
            key: aead::key(bytes)?,
        })
    }

    /// A fresh random KEK (for tests and for a `kek generate` command; write it out with
    /// care — this type never shows its bytes, so generate the file with `openssl` instead
    /// when the key must be kept).
    ///
    /// # Errors
    /// [`CryptError::Random`] when the system RNG fails.
    pub fn generate() -> Result<Self, CryptError> {
        let mut bytes = Zeroizing::new([0u8; KEY_LEN]);
        aead::fill_random(bytes.as_mut())?;
        Self::from_bytes(bytes.as_ref())
    }

    /// Replaces the derived id with `id` (e.g. `kek-2025-06`).
    ///
    /// # Errors
    /// [`CryptError::InvalidId`] when `id` is outside [`crate::id::KEY_ID_CHARSET`] or longer
    /// than 64 bytes.
    pub fn with_id(mut self, id: impl Into<String>) -> Result<Self, CryptError> {
        let id = id.into();
        validate_key_id("KEK id", &id)?;
        self.id = id;
        Ok(self)
    }

    /// Parses the key text of a KEK file or variable: 64 hex characters or standard base64 of
    /// 32 bytes, surrounding whitespace ignored. The error is a reason for the caller to put in
    /// [`CryptError::KekFile`] or [`CryptError::KekEnv`]; it never quotes the text.
    fn parse(text: &str) -> Result<Self, String> {
        const FORMAT: &str = "expected one line holding a 32-byte key as 64 hex characters \
                              (`openssl rand -hex 32`) or base64 (`openssl rand -base64 32`)";
        let text = text.trim();
        if text.is_empty() {
            return Err(format!("is empty; {FORMAT}"));
        }
        let bytes = match decode_hex(text) {
            Some(bytes) => bytes,
            None => {
                use base64::Engine;
                Zeroizing::new(
                    base64::engine::general_purpose::STANDARD
                        .decode(text)
                        .map_err(|_| format!("is neither hex nor base64; {FORMAT}"))?,
                )
            }
        };
        if bytes.len() != KEY_LEN {
            return Err(format!("holds {} bytes, not 32; {FORMAT}", bytes.len()));
        }
        Self::from_bytes(&bytes).map_err(|e| e.to_string())
    }

    /// Loads the KEK from a file (format in the module docs), deriving its id.
    ///
    /// # Errors
    /// [`CryptError::KekFile`] naming the file when it cannot be read, is writable by group or
    /// others (unix), or does not hold a 32-byte key in hex or base64.
    pub fn from_file(path: impl AsRef<Path>) -> Result<Self, CryptError> {
        let path = path.as_ref();
        let failed = |reason: String| CryptError::KekFile {
            path: path.to_owned(),
            reason,
        };
        let metadata = std::fs::metadata(path).map_err(|e| failed(format!("cannot read: {e}")))?;
        if !metadata.is_file() {
            return Err(failed("is not a regular file".to_owned()));
        }
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = metadata.permissions().mode();
            // Group read stays allowed: Kubernetes adds it to a secret volume's files when the
            // pod sets `fsGroup`.
            if mode & 0o026 != 0 {
                return Err(failed(format!(
                    "is readable by others or writable by group or others (mode {:03o}); run \
                     `chmod 600` on it",
                    mode & 0o777
                )));
            }
        }
        let text = Zeroizing::new(
            std::fs::read_to_string(path).map_err(|e| failed(format!("cannot read: {e}")))?,
        );
        Self::parse(&text).map_err(failed)
    }

    /// Loads the KEK from the environment variable `var` (same format as the file), deriving
    /// its id. Services call this from their config module, the one place that reads the
    /// environment.
    ///
    /// # Errors
    /// [`CryptError::KekEnv`] naming the variable when it is unset, not UTF-8, or does not
    /// hold a 32-byte key in hex or base64.
    pub fn from_env(var: &str) -> Result<Self, CryptError> {
        let failed = |reason: String| CryptError::KekEnv {
            var: var.to_owned(),
            reason,
        };
        let text = Zeroizing::new(std::env::var(var).map_err(|e| failed(e.to_string()))?);
        Self::parse(&text).map_err(failed)
    }
}

/// Decodes exactly 64 hex digits (either case) into a key; `None` for anything else.
fn decode_hex(text: &str) -> Option<Zeroizing<Vec<u8>>> {
    if text.len() != 2 * KEY_LEN {
        return None;
    }
    let digit = |c: u8| char::from(c).to_digit(16);
    let mut out = Zeroizing::new(Vec::with_capacity(KEY_LEN));
    for pair in text.as_bytes().chunks(2) {
        let (hi, lo) = (digit(pair[0])?, digit(pair[1])?);
        out.push(u8::try_from(hi * 16 + lo).ok()?);
    }
    Some(out)
}

impl KeyEncryptionKey for LocalKek {
    fn id(&self) -> &str {
        &self.id
    }

    fn wrap(&self, dek: &Dek, context: WrapContext<'_>) -> Result<Vec<u8>, CryptError> {
        let nonce = aead::random_nonce()?;
        let sealed = aead::seal(
            &self.key,
            nonce,
            &context.associated_data(),
            dek.expose_secret(),
        )?;
        let mut out = Vec::with_capacity(NONCE_BYTES + sealed.len());
        out.extend_from_slice(&nonce);
        out.extend_from_slice(&sealed);
        Ok(out)
    }

    fn unwrap(&self, wrapped: &[u8], context: WrapContext<'_>) -> Result<Dek, CryptError> {
        let failed = || CryptError::UnwrapFailed {
            tenant: context.tenant.to_string(),
            key: context.key.to_string(),
            kek: self.id.clone(),
        };
        if wrapped.len() != NONCE_BYTES + KEY_LEN + TAG_LEN {
            return Err(failed());
        }
        let (nonce, sealed) = wrapped.split_at(NONCE_BYTES);
        let nonce: [u8; NONCE_BYTES] = nonce.try_into().map_err(|_| failed())?;
        let plain =
            aead::open(&self.key, nonce, &context.associated_data(), sealed).ok_or_else(failed)?;
        Dek::from_slice(&plain)
    }
}

impl fmt::Debug for LocalKek {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LocalKek")
            .field("id", &self.id)
            .field("key", &"***")
            .finish()
    }
}

/// The KEKs a service holds: the current one, which wraps every new or re-wrapped data key,
/// and previous ones, kept only to unwrap data keys not yet re-wrapped
/// ([`crate::TenantKeys::rewrap`]). Once every record is re-wrapped, drop the previous KEKs.
pub struct KekRing {
    current: Box<dyn KeyEncryptionKey>,
    previous: Vec<Box<dyn KeyEncryptionKey>>,
}

impl KekRing {
    /// A ring holding only `current`.
    pub fn new(current: impl KeyEncryptionKey + 'static) -> Self {
        Self {
            current: Box::new(current),
            previous: Vec::new(),
        }
    }

    /// Adds an older KEK, used only to unwrap.
    ///
    /// # Errors
    /// [`CryptError::DuplicateKek`] when the ring already holds a KEK with its id.
    pub fn with_previous(
        mut self,
        kek: impl KeyEncryptionKey + 'static,
    ) -> Result<Self, CryptError> {
        if self.ids().any(|id| id == kek.id()) {
            return Err(CryptError::DuplicateKek {
                id: kek.id().to_owned(),
            });
        }
        self.previous.push(Box::new(kek));
        Ok(self)
    }

    /// The KEK that wraps new data keys.
    pub fn current(&self) -> &dyn KeyEncryptionKey {
        self.current.as_ref()
    }

    /// The KEK with this id, current or previous.
    ///
    /// # Errors
    /// [`CryptError::UnknownKek`] naming `id` when the ring does not hold it.
    pub fn get(&self, id: &str) -> Result<&dyn KeyEncryptionKey, CryptError> {
        std::iter::once(&self.current)
            .chain(&self.previous)
            .find(|kek| kek.id() == id)
            .map(|kek| kek.as_ref())
            .ok_or_else(|| CryptError::UnknownKek { id: id.to_owned() })
    }

    /// The ids of every KEK in the ring, the current one first.
    pub fn ids(&self) -> impl Iterator<Item = &str> {
        std::iter::once(&self.current)
            .chain(&self.previous)
            .map(|kek| kek.id())
    }
}

impl fmt::Debug for KekRing {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KekRing")
            .field("current", &self.current.id())
            .field(
                "previous",
                &self.previous.iter().map(|k| k.id()).collect::<Vec<_>>(),
            )
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    const HEX: &str = "000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f";
    // The same 32 bytes in base64.
    const B64: &str = "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=";

    fn key_file(text: &str) -> tempfile::NamedTempFile {
        let mut file = tempfile::NamedTempFile::new().unwrap();
        file.write_all(text.as_bytes()).unwrap();
        file
    }

    fn context<'a>(tenant: &'a TenantId, key: &'a DekId) -> WrapContext<'a> {
        WrapContext { tenant, key }
    }

    #[test]
    fn a_kek_file_holds_hex_or_base64_and_both_give_the_same_key() {
        let from_hex = LocalKek::from_file(key_file(&format!("{HEX}\n")).path()).unwrap();
        let from_b64 = LocalKek::from_file(key_file(&format!("  {B64}\n")).path()).unwrap();
        let upper = LocalKek::from_file(key_file(&HEX.to_uppercase()).path()).unwrap();
        assert_eq!(from_hex.id(), from_b64.id());
        assert_eq!(from_hex.id(), upper.id());
        assert!(from_hex.id().starts_with("kek-") && from_hex.id().len() == 12);

        let tenant = TenantId::new("acme").unwrap();
        let id = DekId::new("d1").unwrap();
        let dek = Dek::generate().unwrap();
        let wrapped = from_hex.wrap(&dek, context(&tenant, &id)).unwrap();
        assert_eq!(wrapped.len(), 60);
        let back = from_b64.unwrap(&wrapped, context(&tenant, &id)).unwrap();
        assert_eq!(back.expose_secret(), dek.expose_secret());
    }

    #[test]
    fn a_kek_file_with_the_wrong_length_or_junk_is_refused_naming_the_file_and_format() {
        for text in [
            &HEX[..62],
            "",
            "not a key!",
            "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwd",
        ] {
            let file = key_file(text);
            let err = LocalKek::from_file(file.path()).unwrap_err();
            let message = err.to_string();
            assert!(matches!(err, CryptError::KekFile { .. }), "{message}");
            assert!(
                message.contains(&file.path().display().to_string()),
                "{message}"
            );
            assert!(message.contains("64 hex characters"), "{message}");
        }
        let err = LocalKek::from_file(key_file(&HEX[..62]).path())
            .unwrap_err()
            .to_string();
        assert!(
            !err.contains(&HEX[..20]),
            "the key text is never quoted: {err}"
        );
    }

    #[test]
    fn a_missing_kek_file_is_refused_naming_it() {
        let err = LocalKek::from_file("/nonexistent/switchyard.kek").unwrap_err();
        let message = err.to_string();
        assert!(message.contains("/nonexistent/switchyard.kek"), "{message}");
        assert!(message.contains("cannot read"), "{message}");
    }

    #[cfg(unix)]
    #[test]
    fn a_kek_file_readable_by_others_or_writable_by_group_or_others_is_refused() {
        use std::os::unix::fs::PermissionsExt;
        let file = key_file(HEX);
        for mode in [0o666, 0o644, 0o604, 0o620, 0o602] {
            std::fs::set_permissions(file.path(), std::fs::Permissions::from_mode(mode)).unwrap();
            let message = LocalKek::from_file(file.path()).unwrap_err().to_string();
            assert!(
                message.contains("readable by others or writable by group or others")
                    && message.contains("chmod 600"),
                "{mode:o}: {message}"
            );
        }
        // Owner read (Helm's 0400), and group read (what `fsGroup` adds), are fine.
        for mode in [0o400, 0o600, 0o440] {
            std::fs::set_permissions(file.path(), std::fs::Permissions::from_mode(mode)).unwrap();
            LocalKek::from_file(file.path()).unwrap();
        }
    }

    #[test]
    fn an_unset_kek_variable_is_refused_naming_it() {
        let err = LocalKek::from_env("SWITCHYARD_TEST_KEK_THAT_IS_NEVER_SET").unwrap_err();
        assert!(matches!(err, CryptError::KekEnv { .. }));
        assert!(
            err.to_string()
                .contains("SWITCHYARD_TEST_KEK_THAT_IS_NEVER_SET")
        );
    }

    #[test]
    fn explicit_ids_are_validated() {
        let kek = LocalKek::generate()
            .unwrap()
            .with_id("kek-2025-06")
            .unwrap();
        assert_eq!(kek.id(), "kek-2025-06");
        assert!(matches!(
            LocalKek::generate().unwrap().with_id("KEK 1"),
            Err(CryptError::InvalidId { .. })
        ));
    }

    #[test]
    fn a_wrapped_key_is_bound_to_its_tenant_and_id() {
        let kek = LocalKek::generate().unwrap();
        let (acme, other) = (
            TenantId::new("acme").unwrap(),
            TenantId::new("other").unwrap(),
        );
        let (d1, d2) = (DekId::new("d1").unwrap(), DekId::new("d2").unwrap());
        let wrapped = kek
            .wrap(&Dek::generate().unwrap(), context(&acme, &d1))
            .unwrap();
        for (tenant, key) in [(&other, &d1), (&acme, &d2)] {
            let err = kek.unwrap(&wrapped, context(tenant, key)).unwrap_err();
            assert!(matches!(err, CryptError::UnwrapFailed { .. }), "{err}");
        }
        let mut flipped = wrapped.clone();
        flipped[20] ^= 1;
        assert!(kek.unwrap(&flipped, context(&acme, &d1)).is_err());
        assert!(kek.unwrap(&wrapped[..59], context(&acme, &d1)).is_err());
        let stranger = LocalKek::generate().unwrap().with_id(kek.id()).unwrap();
        assert!(stranger.unwrap(&wrapped, context(&acme, &d1)).is_err());
    }

    #[test]
    fn debug_of_a_kek_and_a_ring_shows_no_key_bytes() {
        let kek = LocalKek::from_bytes(&[0xab; 32]).unwrap();
        let id = kek.id().to_owned();
        let shown = format!("{kek:?}");
        assert_eq!(shown, format!("LocalKek {{ id: {id:?}, key: \"***\" }}"));
        let ring = KekRing::new(kek);
        let shown = format!("{ring:#?}");
        assert!(shown.contains(&id) && !shown.contains("171"), "{shown}");
    }

    #[test]
    fn a_ring_finds_keks_by_id_and_refuses_duplicates() {
        let old = LocalKek::generate().unwrap().with_id("old").unwrap();
        let ring = KekRing::new(LocalKek::generate().unwrap().with_id("new").unwrap())
            .with_previous(old)
            .unwrap();
        assert_eq!(ring.current().id(), "new");
        assert_eq!(ring.get("old").unwrap().id(), "old");
        assert_eq!(ring.ids().collect::<Vec<_>>(), ["new", "old"]);
        assert_eq!(
            ring.get("gone").err().unwrap(),
            CryptError::UnknownKek { id: "gone".into() }
        );
        let dup = ring.with_previous(LocalKek::generate().unwrap().with_id("new").unwrap());
        assert_eq!(
            dup.err().unwrap(),
            CryptError::DuplicateKek { id: "new".into() }
        );
    }
}
