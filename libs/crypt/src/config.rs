//! The `[encryption]` section shared by every service that seals or opens payloads (ingress,
//! egress): where its key-encryption keys are, loaded and checked at start-up.
//!
//! ```toml
//! [encryption]
//! kek_file = "/run/secrets/switchyard-kek"          # the current KEK (unset: no KEK)
//! previous_kek_files = ["/run/secrets/kek-2025-06"] # older KEKs, only during a KEK rotation
//! ```
//!
//! A service without `kek_file` runs as before for tenants without encryption; a message of a
//! tenant that has encryption on is then held (retried), never passed on or delivered in
//! clear, and the service logs why.

use std::path::PathBuf;

use serde::Deserialize;
use switchyard_runtime::InvalidSetting;

use crate::error::CryptError;
use crate::kek::{KekRing, LocalKek};

/// The `[encryption]` section.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EncryptionConfig {
    /// The key-encryption key file: one line, the 32-byte key as 64 hex characters or base64
    /// (`openssl rand -hex 32`), not readable by others nor writable by group or others. Default: unset (no KEK).
    #[serde(default)]
    pub kek_file: Option<PathBuf>,
    /// Older KEK files, kept during a KEK rotation so data keys not yet re-wrapped
    /// (`switchyard encryption rewrap`) still unwrap. Default: none. Needs `kek_file`.
    #[serde(default)]
    pub previous_kek_files: Vec<PathBuf>,
}

fn invalid(key: &'static str, error: &CryptError) -> InvalidSetting {
    InvalidSetting {
        section: "encryption",
        key,
        reason: error.to_string(),
    }
}

impl EncryptionConfig {
    /// Loads the KEK ring: `None` when `kek_file` is unset.
    ///
    /// # Errors
    /// [`InvalidSetting`] naming `encryption.kek_file` or `encryption.previous_kek_files` when
    /// a file cannot be read, is readable by others or writable by group or others, or holds no key; naming
    /// `encryption.previous_kek_files` when previous files are given without `kek_file`, or
    /// when two files hold the same key.
    pub fn load_ring(&self) -> Result<Option<KekRing>, InvalidSetting> {
        let Some(current) = &self.kek_file else {
            if self.previous_kek_files.is_empty() {
                return Ok(None);
            }
            return Err(InvalidSetting {
                section: "encryption",
                key: "previous_kek_files",
                reason: "previous KEKs only unwrap during a KEK rotation; set kek_file to the \
                         current KEK as well"
                    .to_owned(),
            });
        };
        let current = LocalKek::from_file(current).map_err(|e| invalid("kek_file", &e))?;
        let mut ring = KekRing::new(current);
        for path in &self.previous_kek_files {
            let kek = LocalKek::from_file(path).map_err(|e| invalid("previous_kek_files", &e))?;
            ring = ring
                .with_previous(kek)
                .map_err(|e| invalid("previous_kek_files", &e))?;
        }
        Ok(Some(ring))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn key_file(text: &str) -> tempfile::NamedTempFile {
        let mut file = tempfile::NamedTempFile::new().unwrap();
        file.write_all(text.as_bytes()).unwrap();
        file
    }

    #[test]
    fn no_kek_file_means_no_ring() {
        assert!(EncryptionConfig::default().load_ring().unwrap().is_none());
    }

    #[test]
    fn a_ring_holds_the_current_and_previous_keks() {
        let current = key_file(&"11".repeat(32));
        let previous = key_file(&"22".repeat(32));
        let config = EncryptionConfig {
            kek_file: Some(current.path().to_owned()),
            previous_kek_files: vec![previous.path().to_owned()],
        };
        let ring = config.load_ring().unwrap().unwrap();
        assert_eq!(ring.ids().count(), 2);
    }

    #[test]
    fn bad_files_are_refused_naming_the_setting() {
        let junk = key_file("not a key");
        let config = EncryptionConfig {
            kek_file: Some(junk.path().to_owned()),
            previous_kek_files: Vec::new(),
        };
        let err = config.load_ring().unwrap_err().to_string();
        assert!(
            err.starts_with("invalid setting encryption.kek_file:"),
            "{err}"
        );

        let good = key_file(&"11".repeat(32));
        let same = key_file(&"11".repeat(32));
        let config = EncryptionConfig {
            kek_file: Some(good.path().to_owned()),
            previous_kek_files: vec![same.path().to_owned()],
        };
        let err = config.load_ring().unwrap_err().to_string();
        assert!(
            err.starts_with("invalid setting encryption.previous_kek_files:"),
            "{err}"
        );

        let config = EncryptionConfig {
            kek_file: None,
            previous_kek_files: vec![good.path().to_owned()],
        };
        let err = config.load_ring().unwrap_err().to_string();
        assert!(err.contains("set kek_file"), "{err}");
    }
}
