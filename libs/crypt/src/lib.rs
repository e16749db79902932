//! Per-tenant envelope encryption of payloads and secrets at rest.
//!
//! Each tenant that has encryption on owns data keys (DEKs, AES-256-GCM); its key record
//! ([`TenantKeys`]) holds them wrapped by a key-encryption key (KEK) that lives outside NATS
//! ([`LocalKek`]: a file or an environment secret, behind the [`KeyEncryptionKey`] trait so a
//! KMS can take its place). A sealed payload carries its key id and nonce in the
//! [`KEY_HEADER`] and [`NONCE_HEADER`] headers; its associated data binds it to its tenant and
//! envelope id. Route and destination secrets are sealed with the same keys
//! ([`SealedSecret`]).
//!
//! - [`dek`]: [`Dek`] (32 secret bytes, wiped on drop) and [`DataKey`] (a DEK with its id).
//! - [`kek`]: [`KeyEncryptionKey`], [`LocalKek`], [`KekRing`] (current + previous KEKs).
//! - [`record`]: [`TenantKeys`] — create, rotate the DEK, re-wrap under a new KEK, unwrap;
//!   [`keys_or_shredded`] for a deleted tenant.
//! - [`payload`]: [`DataKey::seal`] / [`DataKey::open`], [`SealHeaders`].
//! - [`secret`]: [`SealedSecret`], `enc:v1:<key id>:<base64>`.
//! - [`route_secret`]: the secrets of route and destination records sealed in place
//!   ([`SecretPlace`] and its labels, [`SecretSealer`] for writers).
//! - [`id`]: [`DekId`] and the key id charset.
//! - [`config`]: [`EncryptionConfig`], the services' `[encryption]` section (KEK files).
//! - [`store`]: [`KeyStore`], the `tenant-keys` bucket as operators change it (enable, rotate,
//!   re-wrap, shred) and [`KeyState`] (on, shredded, off).
//! - [`cache`]: [`KeyCache`], the bucket as services watch it, with the data keys they have
//!   unwrapped; seals and opens messages' payloads ([`Opened`], [`OpenError`], [`SealError`]).
//!
//! All cryptography is ring's (AES-256-GCM, the system RNG, SHA-256); nothing is hand-written.
//! Random 96-bit nonces limit one data key to about 2³² seals: rotate DEKs well before that.

mod aead;
pub mod cache;
pub mod config;
pub mod dek;
pub mod error;
pub mod id;
pub mod kek;
pub mod payload;
pub mod record;
pub mod route_secret;
pub mod secret;
pub mod store;

pub use aead::{KEY_LEN, NONCE_BYTES, TAG_LEN};
pub use cache::{KeyCache, OpenError, Opened, SealError, insert_seal_headers, seal_headers};
pub use config::EncryptionConfig;
pub use dek::{DataKey, Dek};
pub use error::CryptError;
pub use id::DekId;
pub use kek::{KekRing, KeyEncryptionKey, LocalKek, WrapContext};
pub use payload::{KEY_HEADER, NONCE_HEADER, Nonce, SealHeaders, Sealed, edge_seal_id};
pub use record::{TenantKeys, WrappedDek, keys_or_shredded};
pub use route_secret::{SecretField, SecretPlace, SecretSealer};
pub use secret::{SEALED_PREFIX, SealedSecret};
pub use store::{Enabled, KeyState, KeyStore, KeyStoreError};
