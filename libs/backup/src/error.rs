//! Why a backup or restore failed.

use std::path::PathBuf;

type Source = Box<dyn std::error::Error + Send + Sync>;

/// Why a backup or restore failed.
#[derive(Debug, thiserror::Error)]
pub enum BackupError {
    /// A file of the backup could not be read or written.
    #[error("{action}")]
    Io {
        /// What was being done (`writing DLQ.snapshot`).
        action: String,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The folder has no `manifest.json`: not a backup, or one that did not finish.
    #[error(
        "{} holds no manifest.json: not a backup, or one that did not finish (a backup writes \
         its manifest last)",
        .0.display()
    )]
    NoManifest(PathBuf),
    /// The folder already holds a backup; backups are never overwritten.
    #[error(
        "{} already holds a backup (manifest.json); choose an empty or new folder",
        .0.display()
    )]
    Exists(PathBuf),
    /// The folder is not there, or is a file.
    #[error("{}: {problem}", dir.display())]
    Folder {
        /// The folder named.
        dir: PathBuf,
        /// What is wrong and what to do.
        problem: String,
    },
    /// The deployment has no stream or bucket to back up: another server or prefix than meant,
    /// or one not provisioned.
    #[error(
        "this deployment has no stream or bucket to back up (namespace {namespace:?}): check \
         --server and --prefix, or run `switchyard provision` first"
    )]
    NothingToBackUp {
        /// The namespace looked in (empty: the default one).
        namespace: String,
    },
    /// The backup comes from another deployment namespace than the target's.
    #[error(
        "the backup is of namespace {backup:?} and this deployment's is {target:?}: restore it \
         with the same --prefix it was taken with (streams and subjects are named after it)"
    )]
    NamespaceMismatch {
        /// The backup's namespace (empty: the default one).
        backup: String,
        /// The target's.
        target: String,
    },
    /// A restore failed part-way: what was restored, what was deleted and not put back, and
    /// what was not reached.
    #[error(
        "restoring {stream} failed: {source}. {stream} existed and was deleted first: it is now \
         missing or partial. Restored before it: {}. Not reached (left as they were): {}. Fix \
         the cause and run `switchyard backup restore --force` again with an intact backup",
        list(restored),
        list(untouched)
    )]
    RestoreFailed {
        /// The stream whose restore failed.
        stream: String,
        /// Streams restored before it.
        restored: Vec<String>,
        /// Streams not reached.
        untouched: Vec<String>,
        /// Why it failed.
        #[source]
        source: Box<BackupError>,
    },
    /// A restore of a stream that did not exist before failed: nothing of it was there before.
    #[error(
        "restoring {stream} failed: {source}. Restored before it: {}. Not reached: {}. Fix the \
         cause and run `switchyard backup restore --force` again",
        list(restored),
        list(untouched)
    )]
    RestoreIncomplete {
        /// The stream whose restore failed.
        stream: String,
        /// Streams restored before it.
        restored: Vec<String>,
        /// Streams not reached.
        untouched: Vec<String>,
        /// Why it failed.
        #[source]
        source: Box<BackupError>,
    },
    /// The manifest cannot be parsed or names a file outside the backup folder.
    #[error("invalid manifest: {0}")]
    Manifest(String),
    /// The manifest is of a format this build does not read.
    #[error(
        "the backup's manifest is format {found}; this build reads format {supported}: restore \
         it with the Switchyard version that wrote it (or a newer one)"
    )]
    Format {
        /// The manifest's format.
        found: u32,
        /// The format this build reads.
        supported: u32,
    },
    /// A snapshot file is missing or differs from the manifest (size or SHA-256).
    #[error("{}: {problem}: the backup is damaged; restore another one", file.display())]
    Checksum {
        /// The file.
        file: PathBuf,
        /// What differs.
        problem: String,
    },
    /// The deployment holds data and `--force` was not given.
    #[error(
        "the deployment is not empty: {} hold messages; restoring would replace them \
         (pass --force to replace them with the backup's)",
        streams.join(", ")
    )]
    NotEmpty {
        /// The streams that exist and hold messages.
        streams: Vec<String>,
    },
    /// Services are consuming from the deployment (consumers with pull requests waiting or
    /// acks pending); restoring under them would race their reads and writes.
    #[error(
        "services are running on this deployment ({}): stop them (scale every Switchyard \
         service to zero) before restoring, or pass --force",
        consumers.join(", ")
    )]
    ServicesRunning {
        /// `stream/consumer` of each consumer seen in use.
        consumers: Vec<String>,
    },
    /// JetStream refused or failed a snapshot or restore (`code`/`err_code`/`description`
    /// as the server sent them).
    #[error("{action} of {stream}: {description} (status {code}, error code {err_code})")]
    Api {
        /// The stream.
        stream: String,
        /// `snapshot` or `restore`.
        action: String,
        /// The HTTP-like status.
        code: u16,
        /// JetStream's error code (`10130`: the stream exists).
        err_code: u16,
        /// The server's description.
        description: String,
    },
    /// A request to the server failed or went unanswered.
    #[error("{action} ({stream})")]
    Request {
        /// The stream.
        stream: String,
        /// What was being done.
        action: String,
        /// The client's error.
        #[source]
        source: Source,
    },
    /// The server answered something this client does not understand.
    #[error("{stream}: {problem}")]
    Protocol {
        /// The stream.
        stream: String,
        /// What was wrong.
        problem: String,
    },
    /// A JetStream management call (listing streams, reading or deleting one) failed.
    #[error("{action}")]
    JetStream {
        /// What was being done.
        action: String,
        /// The client's error.
        #[source]
        source: Source,
    },
}

fn list(names: &[String]) -> String {
    if names.is_empty() {
        "none".to_owned()
    } else {
        names.join(", ")
    }
}

impl BackupError {
    pub(crate) fn io(action: impl Into<String>, source: std::io::Error) -> Self {
        Self::Io {
            action: action.into(),
            source,
        }
    }

    pub(crate) fn request(
        stream: &str,
        action: &str,
        source: impl std::error::Error + Send + Sync + 'static,
    ) -> Self {
        Self::Request {
            stream: stream.to_owned(),
            action: action.to_owned(),
            source: Box::new(source),
        }
    }

    pub(crate) fn protocol(stream: &str, problem: impl Into<String>) -> Self {
        Self::Protocol {
            stream: stream.to_owned(),
            problem: problem.into(),
        }
    }

    pub(crate) fn js(
        action: impl Into<String>,
        source: impl std::error::Error + Send + Sync + 'static,
    ) -> Self {
        Self::JetStream {
            action: action.into(),
            source: Box::new(source),
        }
    }
}
