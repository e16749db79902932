//! The one error type of this crate: why a key could not be made, loaded, wrapped or unwrapped,
//! or why a payload or secret could not be sealed or opened.

use std::path::PathBuf;

/// Why a cryptographic operation or the parsing of its inputs failed.
///
/// Messages never contain key material or plaintext; they name tenants, key ids and KEK ids,
/// which are not secret.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CryptError {
    /// Authentication failed while opening a payload or secret: the tenant, the envelope id (or
    /// secret label) or the key id differs from the ones it was sealed with, the wrong key was
    /// used, or a byte of the ciphertext, tag or nonce was changed. Nothing is decrypted.
    #[error(
        "{what} of tenant {tenant} does not authenticate under data key {key}: it was sealed \
         for another tenant, message or key, or its ciphertext or nonce was modified"
    )]
    Tampered {
        /// What was being opened (`payload`, `secret`).
        what: &'static str,
        /// The tenant the caller opened it for.
        tenant: String,
        /// The data key id the caller opened it with.
        key: String,
    },
    /// The tenant's key record has no data key with this id (it was never created, or it was
    /// retired), so what was sealed under it cannot be opened.
    #[error("tenant {tenant} has no data key {key}")]
    UnknownKey {
        /// The tenant.
        tenant: String,
        /// The data key id asked for.
        key: String,
    },
    /// The tenant's key record is gone: the tenant was deleted and its data keys destroyed
    /// (crypto-shredded), so none of its remaining encrypted bytes can be decrypted.
    #[error(
        "tenant {tenant} has no data keys: it was deleted and its data crypto-shredded, so its \
         encrypted payloads and secrets can no longer be decrypted"
    )]
    Shredded {
        /// The tenant.
        tenant: String,
    },
    /// A wrapped data key names a key-encryption key the ring does not hold.
    #[error(
        "key-encryption key {id} is not loaded: add it to the key ring (as a previous key) to \
         unwrap the data keys still wrapped under it"
    )]
    UnknownKek {
        /// The KEK id the wrapped data key names.
        id: String,
    },
    /// Two key-encryption keys with the same id in one ring.
    #[error("key-encryption key {id} is in the key ring twice; KEK ids must be unique")]
    DuplicateKek {
        /// The duplicated KEK id.
        id: String,
    },
    /// A wrapped data key does not unwrap under the KEK its record names.
    #[error(
        "data key {key} of tenant {tenant} does not unwrap under key-encryption key {kek}: the \
         wrapped key was altered or copied from another tenant, or the KEK loaded under that id \
         holds different key bytes"
    )]
    UnwrapFailed {
        /// The tenant whose record holds the wrapped key.
        tenant: String,
        /// The data key id.
        key: String,
        /// The KEK id.
        kek: String,
    },
    /// A `Switchyard-Key` or `Switchyard-Nonce` header that is missing or malformed.
    #[error("header {header}: {reason}")]
    BadHeader {
        /// The header name.
        header: &'static str,
        /// What is wrong with it.
        reason: String,
    },
    /// A sealed secret string that is not `enc:v1:<key id>:<base64>`.
    #[error("malformed sealed secret: {reason}")]
    BadSecret {
        /// What is wrong with it.
        reason: String,
    },
    /// A route or destination secret that cannot be sealed or opened as it stands: its clear
    /// value is not a valid secret (the reason names the field, never the value), it is sealed
    /// where a clear one was expected, or sealed for a tenant with encryption off.
    #[error("{reason}")]
    InvalidSecret {
        /// What is wrong with it.
        reason: String,
    },
    /// A data key id or KEK id outside its charset or length.
    #[error("invalid {kind} {value:?}: {reason}")]
    InvalidId {
        /// What was being validated (`data key id`, `KEK id`).
        kind: &'static str,
        /// The refused value (truncated to 80 characters).
        value: String,
        /// What is wrong with it.
        reason: String,
    },
    /// Key bytes of the wrong length.
    #[error("an AES-256 key is 32 bytes; got {len}")]
    KeyLength {
        /// The length seen, in bytes.
        len: usize,
    },
    /// The KEK file could not be read or does not hold a key.
    #[error("KEK file {}: {reason}", path.display())]
    KekFile {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// The KEK environment variable is unset or does not hold a key.
    #[error("KEK environment variable {var}: {reason}")]
    KekEnv {
        /// The variable's name.
        var: String,
        /// What is wrong with it.
        reason: String,
    },
    /// A tenant key record that does not parse or is inconsistent.
    #[error("tenant key record: {reason}")]
    Record {
        /// What is wrong with it.
        reason: String,
    },
    /// The operating system's random number generator failed.
    #[error("the system random number generator failed")]
    Random,
    /// ring refused an AES-256-GCM operation that cannot fail on valid input (for sealing: an
    /// input over AES-GCM's 64 GiB limit).
    #[error("AES-256-GCM {operation} failed")]
    Aead {
        /// `key setup` or `seal`.
        operation: &'static str,
    },
}

/// Truncates a refused value for an error message, so errors stay readable with long inputs.
pub(crate) fn shown(value: &str) -> String {
    const MAX: usize = 80;
    match value.char_indices().nth(MAX) {
        Some((at, _)) => format!("{}…", &value[..at]),
        None => value.to_owned(),
    }
}
