//! The backup's manifest (`manifest.json`): what was backed up, from which deployment and
//! versions, and each snapshot file's size and SHA-256.
//!
//! The manifest is written last, so a folder without one is an unfinished backup; restore
//! checks every file against it before it changes anything on the server.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use tokio::io::AsyncReadExt;

use crate::BackupError;

/// The manifest's file name inside a backup folder.
pub const MANIFEST_FILE: &str = "manifest.json";

/// The manifest format this build writes and reads.
pub const FORMAT: u32 = 1;

/// What a backed-up item is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ItemKind {
    /// A stream (`IDEMPOTENCY`, `DLQ`, a tenant's `INGRESS_<tenant>`, …).
    Stream,
    /// A KV bucket (its stream is `KV_<bucket>`).
    Bucket,
}

/// One stream or bucket in the backup.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Item {
    /// Stream or bucket.
    pub kind: ItemKind,
    /// The JetStream stream name (`KV_<bucket>` for a bucket).
    pub stream: String,
    /// The snapshot file, relative to the backup folder (the stream name and `.snapshot`).
    pub file: String,
    /// Size of the snapshot file, bytes.
    pub bytes: u64,
    /// SHA-256 of the snapshot file, lowercase hex.
    pub sha256: String,
    /// Messages the stream held when its snapshot was taken.
    pub messages: u64,
    /// Consumers the stream had (their configs and ack state are in the snapshot).
    pub consumers: u64,
    /// The stream's configuration as the server reported it with the snapshot (sent back
    /// verbatim on restore, but for `num_replicas`, which the target deployment decides).
    pub config: serde_json::Value,
    /// The stream's state as the server reported it with the snapshot.
    pub state: serde_json::Value,
}

/// A backup's manifest.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    /// The manifest format ([`FORMAT`]).
    pub format: u32,
    /// When the backup started, RFC 3339 UTC.
    pub created_at: String,
    /// The Switchyard version that wrote it.
    pub switchyard_version: String,
    /// The envelope schema version that build writes (`Switchyard-Schema`).
    pub envelope_schema: u16,
    /// The nats-server version of the server the backup was taken from.
    pub server_version: String,
    /// The deployment's namespace (empty for the default one).
    pub namespace: String,
    /// SHA-256 of the resolved topology (streams, consumers, buckets), lowercase hex: a
    /// restore into a deployment whose topology differs says so.
    pub topology_hash: String,
    /// Whether the services were seen running (consumers with clients or acks pending) while
    /// the backup was taken: such a backup is at-least-once (see `docs/operations.md`).
    pub online: bool,
    /// Every stream and bucket, in the order they were snapshotted.
    pub items: Vec<Item>,
}

impl Manifest {
    /// Total bytes of all snapshot files.
    pub fn total_bytes(&self) -> u64 {
        self.items.iter().map(|i| i.bytes).sum()
    }

    /// Reads and checks `dir/manifest.json`.
    ///
    /// # Errors
    /// [`BackupError::NoManifest`] when the folder has none (not a backup, or an unfinished
    /// one); [`BackupError::Io`] / [`BackupError::Manifest`] when it cannot be read or parsed;
    /// [`BackupError::Format`] for a format this build does not read; [`BackupError::Manifest`]
    /// when an item names a file outside the folder.
    pub async fn read(dir: &Path) -> Result<Self, BackupError> {
        match tokio::fs::metadata(dir).await {
            Ok(meta) if !meta.is_dir() => {
                return Err(BackupError::Folder {
                    dir: dir.to_owned(),
                    problem: "is a file, not a backup folder".to_owned(),
                });
            }
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(BackupError::Folder {
                    dir: dir.to_owned(),
                    problem: "does not exist: name the folder `backup create` wrote".to_owned(),
                });
            }
            Err(e) => return Err(BackupError::io(format!("reading {}", dir.display()), e)),
        }
        let path = dir.join(MANIFEST_FILE);
        let text = match tokio::fs::read(&path).await {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(BackupError::NoManifest(dir.to_owned()));
            }
            Err(e) => return Err(BackupError::io(format!("reading {}", path.display()), e)),
        };
        let manifest: Manifest = serde_json::from_slice(&text)
            .map_err(|e| BackupError::Manifest(format!("{}: {e}", path.display())))?;
        if manifest.format != FORMAT {
            return Err(BackupError::Format {
                found: manifest.format,
                supported: FORMAT,
            });
        }
        for item in &manifest.items {
            if !is_plain_file_name(&item.file) {
                return Err(BackupError::Manifest(format!(
                    "item {} names the file {:?}, which is not a plain file name in the backup \
                     folder",
                    item.stream, item.file
                )));
            }
        }
        Ok(manifest)
    }

    /// Writes `dir/manifest.json` (through a temporary file and a rename, so a manifest is
    /// either whole or absent).
    ///
    /// # Errors
    /// [`BackupError::Io`] when the file cannot be written.
    pub async fn write(&self, dir: &Path) -> Result<(), BackupError> {
        let path = dir.join(MANIFEST_FILE);
        let partial = dir.join(format!("{MANIFEST_FILE}.partial"));
        let text = serde_json::to_vec_pretty(self)
            .map_err(|e| BackupError::Manifest(format!("serializing the manifest: {e}")))?;
        let mut file = create_private(&partial).await?;
        use tokio::io::AsyncWriteExt;
        file.write_all(&text)
            .await
            .map_err(|e| BackupError::io(format!("writing {}", partial.display()), e))?;
        file.sync_all()
            .await
            .map_err(|e| BackupError::io(format!("writing {}", partial.display()), e))?;
        tokio::fs::rename(&partial, &path)
            .await
            .map_err(|e| BackupError::io(format!("writing {}", path.display()), e))
    }

    /// Checks every snapshot file against its size and SHA-256.
    ///
    /// # Errors
    /// [`BackupError::Checksum`] naming the first file that is missing, of another size or of
    /// another digest.
    pub async fn verify(&self, dir: &Path) -> Result<(), BackupError> {
        for item in &self.items {
            let path = dir.join(&item.file);
            let (bytes, sha256) = file_digest(&path)
                .await
                .map_err(|e| BackupError::Checksum {
                    file: path.clone(),
                    problem: e.to_string(),
                })?;
            if bytes != item.bytes || sha256 != item.sha256 {
                return Err(BackupError::Checksum {
                    file: path,
                    problem: format!(
                        "{bytes} bytes with SHA-256 {sha256}; the manifest says {} bytes with \
                         SHA-256 {}",
                        item.bytes, item.sha256
                    ),
                });
            }
        }
        Ok(())
    }
}

/// Creates the backup folder (owner only: `0700`) if it is missing; refuses a file.
///
/// # Errors
/// [`BackupError::Folder`] when `dir` is a file or cannot be created (the reason and the fix).
pub(crate) async fn create_folder(dir: &Path) -> Result<(), BackupError> {
    let folder = |problem: String| BackupError::Folder {
        dir: dir.to_owned(),
        problem,
    };
    match tokio::fs::metadata(dir).await {
        Ok(meta) if meta.is_dir() => return Ok(()),
        Ok(_) => return Err(folder("is a file: name a new or empty folder".to_owned())),
        Err(_) => {}
    }
    let mut builder = tokio::fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    builder.mode(0o700);
    builder.create(dir).await.map_err(|e| {
        folder(format!(
            "cannot be created ({e}): choose a folder you may write to"
        ))
    })
}

/// Creates a new file readable by its owner only (`0600`: a backup holds payloads, and the
/// secrets of tenants without encryption), refusing one that exists (or a link planted in its
/// place).
///
/// # Errors
/// [`BackupError::Folder`] naming the file when it exists or cannot be created.
pub(crate) async fn create_private(path: &Path) -> Result<tokio::fs::File, BackupError> {
    let mut options = tokio::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    options.mode(0o600);
    options.open(path).await.map_err(|e| {
        let problem = if e.kind() == std::io::ErrorKind::AlreadyExists {
            "exists already (left by an interrupted backup, or planted): remove it, or back up \
             into a new folder"
                .to_owned()
        } else {
            format!("cannot be created ({e}): choose a folder you may write to")
        };
        BackupError::Folder {
            dir: path.to_owned(),
            problem,
        }
    })
}

/// The snapshot file name of a stream.
pub(crate) fn snapshot_file(stream: &str) -> String {
    format!("{stream}.snapshot")
}

/// Whether `name` is one path component without separators or dots of its own (what
/// [`snapshot_file`] writes): a manifest cannot point a restore at another folder.
fn is_plain_file_name(name: &str) -> bool {
    !name.is_empty()
        && name != "."
        && name != ".."
        && !name.starts_with('.')
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'))
}

/// Size and SHA-256 (lowercase hex) of a file.
pub(crate) async fn file_digest(path: &PathBuf) -> std::io::Result<(u64, String)> {
    let mut file = tokio::fs::File::open(path).await?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 256 * 1024];
    let mut total = 0u64;
    loop {
        let n = file.read(&mut buf).await?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        total += n as u64;
    }
    Ok((total, format!("{:x}", hasher.finalize())))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_names_stay_in_the_folder() {
        assert!(is_plain_file_name("INGRESS_acme.snapshot"));
        assert!(is_plain_file_name("KV_tenant-keys.snapshot"));
        for bad in [
            "",
            ".",
            "..",
            "../x",
            "a/b",
            "/etc/passwd",
            ".hidden",
            "a\\b",
            "a b",
        ] {
            assert!(!is_plain_file_name(bad), "{bad:?} accepted");
        }
    }
}
