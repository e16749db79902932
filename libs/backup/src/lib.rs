//! Backup and restore of everything a Switchyard deployment keeps in JetStream: every declared
//! stream (tenants' `INGRESS_<tenant>` included) and every KV bucket, each through JetStream's
//! snapshot and restore API, with their consumers and the consumers' ack state.
//!
//! - [`create`]: snapshot every stream of the deployment into a folder, one
//!   `<stream>.snapshot` file each, then write `manifest.json` ([`Manifest`]: versions,
//!   topology hash, each file's size and SHA-256).
//! - [`restore`]: check the manifest and every file's checksum, refuse a deployment that holds
//!   messages (or whose services are running) unless forced, then restore each stream with the
//!   target deployment's replica count.
//! - [`protocol`]: the snapshot/restore wire protocol itself.
//!
//! What a backup does not hold: the key-encryption key (kept outside NATS by design; restoring
//! encrypted tenants needs the KEK ring of the deployment they came from) and nats-server's own
//! configuration (accounts, users). See `docs/operations.md`, "Backup and restore".

mod error;
pub mod manifest;
pub mod plan;
pub mod protocol;

use std::collections::BTreeSet;
use std::path::Path;

use async_nats::jetstream;
use futures::TryStreamExt;
use switchyard_topology::ResolvedTopology;

pub use error::BackupError;
pub use manifest::{Item, ItemKind, MANIFEST_FILE, Manifest};
pub use plan::{Planned, plan, topology_hash};

/// What a long backup or restore reports as it goes (a progress bar, a log).
pub trait Progress {
    /// The work begins: about `bytes` in all (a backup's estimate is the streams' stored
    /// bytes; a restore's is the snapshot files' size).
    fn begin(&self, bytes: u64);
    /// A stream begins.
    fn item(&self, stream: &str);
    /// `bytes` more were written or sent.
    fn advance(&self, bytes: u64);
}

/// A [`Progress`] that reports nothing.
#[derive(Debug, Default, Clone, Copy)]
pub struct Quiet;

impl Progress for Quiet {
    fn begin(&self, _: u64) {}
    fn item(&self, _: &str) {}
    fn advance(&self, _: u64) {}
}

/// What [`restore`] did.
#[derive(Debug, Clone, Default)]
pub struct RestoreReport {
    /// Streams restored, with the messages each holds now.
    pub restored: Vec<(String, u64)>,
    /// Streams that existed and were deleted first (empty ones, or any with `force`).
    pub replaced: Vec<String>,
    /// Streams of the deployment that exist and are not in the backup: left as they are.
    pub left_alone: Vec<String>,
    /// Whether the backup was taken from a deployment of another topology (declarations,
    /// namespace or replicas): run `switchyard provision` after restoring to reconcile.
    pub topology_differs: bool,
}

/// The consumers of `streams` that look in use: pull requests waiting (a service is fetching)
/// or acks pending (a service holds messages), as `stream/consumer`.
async fn consumers_in_use(
    js: &jetstream::Context,
    streams: impl IntoIterator<Item = &str>,
) -> Result<Vec<String>, BackupError> {
    let mut in_use = Vec::new();
    for name in streams {
        let stream = match js.get_stream_no_info(name).await {
            Ok(stream) => stream,
            Err(e) => return Err(BackupError::js(format!("opening stream {name}"), e)),
        };
        let consumers: Vec<_> = match stream.consumers().try_collect().await {
            Ok(consumers) => consumers,
            // A stream deleted since it was listed has no consumers to worry about.
            Err(_) => continue,
        };
        in_use.extend(
            consumers
                .into_iter()
                .filter(|c| c.num_waiting > 0 || c.num_ack_pending > 0)
                .map(|c| format!("{name}/{}", c.name)),
        );
    }
    Ok(in_use)
}

/// Messages and stored bytes of `stream`; `None` when it does not exist.
async fn stream_size(
    js: &jetstream::Context,
    stream: &str,
) -> Result<Option<(u64, u64)>, BackupError> {
    match js.get_stream(stream).await {
        Ok(mut s) => {
            let info = s
                .info()
                .await
                .map_err(|e| BackupError::js(format!("reading stream {stream}"), e))?;
            Ok(Some((info.state.messages, info.state.bytes)))
        }
        Err(e) if switchyard_topology::open::is_stream_not_found(&e) => Ok(None),
        Err(e) => Err(BackupError::js(format!("reading stream {stream}"), e)),
    }
}

/// The deployment's namespace as a manifest records it (empty: the default one).
fn namespace_of(topology: &ResolvedTopology) -> String {
    topology
        .namespace
        .prefix()
        .map(|p| p.as_str().to_owned())
        .unwrap_or_default()
}

/// Checks that every item is a stream of this deployment and names itself: its `stream` is
/// its config's `name`, and is a declared stream, a tenant's own stream or a declared bucket's
/// (a manifest cannot make a restore delete or create any other stream).
fn check_items(manifest: &Manifest, topology: &ResolvedTopology) -> Result<(), BackupError> {
    for item in &manifest.items {
        let named = item.config.get("name").and_then(serde_json::Value::as_str);
        if named != Some(item.stream.as_str()) {
            return Err(BackupError::Manifest(format!(
                "item {} carries the config of stream {}",
                item.stream,
                named.unwrap_or("(none)")
            )));
        }
        if plan::replicas_for(topology, &item.stream).is_none() {
            return Err(BackupError::Manifest(format!(
                "item {} is not a stream or bucket of this deployment",
                item.stream
            )));
        }
    }
    Ok(())
}

fn number(value: &serde_json::Value, key: &str) -> u64 {
    value
        .get(key)
        .and_then(serde_json::Value::as_u64)
        .unwrap_or(0)
}

/// Backs the deployment up into `dir` (created if missing; refused if it already holds a
/// backup): one snapshot file per stream and bucket, then `manifest.json`.
///
/// Safe while the services run: streams are taken upstream first and buckets last (see
/// [`plan`]), so a message moving on during the backup is in it at least once; the manifest's
/// `online` says whether services were seen running. For a backup that restores each message
/// exactly once, stop the services first.
///
/// # Errors
/// [`BackupError::Exists`] when `dir` holds a backup; [`BackupError::Io`] for the folder and
/// files; what [`protocol::snapshot`] returns for a stream.
pub async fn create(
    client: &async_nats::Client,
    js: &jetstream::Context,
    topology: &ResolvedTopology,
    dir: &Path,
    progress: &dyn Progress,
) -> Result<Manifest, BackupError> {
    if tokio::fs::try_exists(dir.join(MANIFEST_FILE))
        .await
        .unwrap_or(false)
    {
        return Err(BackupError::Exists(dir.to_owned()));
    }
    let planned = plan(js, topology).await?;
    if planned.is_empty() {
        return Err(BackupError::NothingToBackUp {
            namespace: namespace_of(topology),
        });
    }
    manifest::create_folder(dir).await?;
    let created_at = time::OffsetDateTime::now_utc()
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default();
    let online = !consumers_in_use(js, planned.iter().map(|p| p.stream.as_str()))
        .await?
        .is_empty();
    let mut estimate = 0;
    for p in &planned {
        estimate += stream_size(js, &p.stream)
            .await?
            .map_or(0, |(_, bytes)| bytes);
    }
    progress.begin(estimate);
    let mut items = Vec::new();
    for p in planned {
        progress.item(&p.stream);
        let file = manifest::snapshot_file(&p.stream);
        let partial = dir.join(format!("{file}.partial"));
        let mut out = tokio::io::BufWriter::new(manifest::create_private(&partial).await?);
        let snapshot = protocol::snapshot(client, &p.stream, &mut out, |n| progress.advance(n))
            .await
            .inspect_err(|_| {
                let _ = std::fs::remove_file(&partial);
            })?;
        use tokio::io::AsyncWriteExt;
        out.flush()
            .await
            .map_err(|e| BackupError::io(format!("writing {}", partial.display()), e))?;
        out.into_inner()
            .sync_all()
            .await
            .map_err(|e| BackupError::io(format!("writing {}", partial.display()), e))?;
        tokio::fs::rename(&partial, dir.join(&file))
            .await
            .map_err(|e| BackupError::io(format!("writing {file}"), e))?;
        items.push(Item {
            kind: p.kind,
            messages: number(&snapshot.state, "messages"),
            consumers: number(&snapshot.state, "consumer_count"),
            stream: p.stream,
            file,
            bytes: snapshot.bytes,
            sha256: snapshot.sha256,
            config: snapshot.config,
            state: snapshot.state,
        });
    }
    let manifest = Manifest {
        format: manifest::FORMAT,
        created_at,
        switchyard_version: env!("CARGO_PKG_VERSION").to_owned(),
        envelope_schema: switchyard_envelope::SCHEMA_VERSION,
        server_version: client.server_info().version,
        namespace: namespace_of(topology),
        topology_hash: topology_hash(topology),
        online,
        items,
    };
    manifest.write(dir).await?;
    Ok(manifest)
}

/// Restores the backup in `dir` into the deployment.
///
/// Every file is checked against the manifest before anything changes. A deployment whose
/// streams hold messages, or whose consumers are in use, is refused unless `force`; with it,
/// those streams are deleted and replaced by the backup's. Streams that exist but are empty
/// (a freshly provisioned deployment) are replaced without `force`. Each stream is restored
/// with the replica count this deployment's topology gives it.
///
/// # Errors
/// What [`Manifest::read`] and [`Manifest::verify`] return; [`BackupError::NotEmpty`],
/// [`BackupError::ServicesRunning`]; what [`protocol::restore`] returns for a stream.
pub async fn restore(
    client: &async_nats::Client,
    js: &jetstream::Context,
    topology: &ResolvedTopology,
    dir: &Path,
    force: bool,
    progress: &dyn Progress,
) -> Result<RestoreReport, BackupError> {
    let manifest = Manifest::read(dir).await?;
    let target = namespace_of(topology);
    if manifest.namespace != target {
        return Err(BackupError::NamespaceMismatch {
            backup: manifest.namespace.clone(),
            target,
        });
    }
    check_items(&manifest, topology)?;
    manifest.verify(dir).await?;
    let mut existing = Vec::new();
    let mut holding = Vec::new();
    for item in &manifest.items {
        if let Some((messages, _)) = stream_size(js, &item.stream).await? {
            existing.push(item.stream.clone());
            if messages > 0 {
                holding.push(item.stream.clone());
            }
        }
    }
    if !force {
        let in_use = consumers_in_use(js, existing.iter().map(String::as_str)).await?;
        if !in_use.is_empty() {
            return Err(BackupError::ServicesRunning { consumers: in_use });
        }
        if !holding.is_empty() {
            return Err(BackupError::NotEmpty { streams: holding });
        }
    }
    let in_backup: BTreeSet<&str> = manifest.items.iter().map(|i| i.stream.as_str()).collect();
    let left_alone = plan(js, topology)
        .await?
        .into_iter()
        .map(|p| p.stream)
        .filter(|s| !in_backup.contains(s.as_str()))
        .collect();
    let mut report = RestoreReport {
        left_alone,
        topology_differs: manifest.topology_hash != topology_hash(topology),
        ..Default::default()
    };
    progress.begin(manifest.total_bytes());
    for (i, item) in manifest.items.iter().enumerate() {
        progress.item(&item.stream);
        let deleted = existing.contains(&item.stream);
        let restored = restore_one(client, js, topology, dir, item, deleted, progress).await;
        if let Err(source) = restored {
            let restored = report.restored.iter().map(|(s, _)| s.clone()).collect();
            let untouched = manifest.items[i + 1..]
                .iter()
                .map(|item| item.stream.clone())
                .collect();
            let source = Box::new(source);
            return Err(if deleted {
                BackupError::RestoreFailed {
                    stream: item.stream.clone(),
                    restored,
                    untouched,
                    source,
                }
            } else {
                BackupError::RestoreIncomplete {
                    stream: item.stream.clone(),
                    restored,
                    untouched,
                    source,
                }
            });
        }
        if deleted {
            report.replaced.push(item.stream.clone());
        }
        report
            .restored
            .push((item.stream.clone(), restored.unwrap_or(0)));
    }
    Ok(report)
}

/// Restores one item (deleting the stream first when it exists); returns the messages it
/// holds now.
async fn restore_one(
    client: &async_nats::Client,
    js: &jetstream::Context,
    topology: &ResolvedTopology,
    dir: &Path,
    item: &Item,
    exists: bool,
    progress: &dyn Progress,
) -> Result<u64, BackupError> {
    if exists {
        js.delete_stream(&item.stream)
            .await
            .map_err(|e| BackupError::js(format!("deleting stream {}", item.stream), e))?;
    }
    let mut config = item.config.clone();
    if let (Some(replicas), Some(obj)) = (
        plan::replicas_for(topology, &item.stream),
        config.as_object_mut(),
    ) {
        obj.insert("num_replicas".to_owned(), replicas.into());
    }
    let path = dir.join(&item.file);
    // Right after a cluster's stores were wiped or a node restarted, the meta leader may still
    // count a peer as offline and refuse to place the stream: waited out as provisioning does
    // (the refusal comes before any of the snapshot is sent).
    let state = switchyard_topology::provision::while_placing(
        &item.stream,
        || async {
            let mut input = tokio::io::BufReader::new(
                tokio::fs::File::open(&path)
                    .await
                    .map_err(|e| BackupError::io(format!("opening {}", path.display()), e))?,
            );
            protocol::restore(
                client,
                &item.stream,
                &config,
                &item.state,
                &mut input,
                |n| progress.advance(n),
            )
            .await
        },
        awaits_placement,
    )
    .await?;
    Ok(number(&state, "messages"))
}

/// Whether `error` is nats-server refusing to place a stream's replicas for now
/// ([`switchyard_topology::provision::NO_SUITABLE_PEERS`]).
fn awaits_placement(error: &BackupError) -> bool {
    matches!(error, BackupError::Api { err_code, .. }
        if u64::from(*err_code) == switchyard_topology::provision::NO_SUITABLE_PEERS.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refused(err_code: u16) -> BackupError {
        BackupError::Api {
            stream: "ADVISORIES".into(),
            action: "restore".into(),
            code: 400,
            err_code,
            description: "no suitable peers for placement, peer offline".into(),
        }
    }

    #[test]
    fn only_a_placement_refusal_is_waited_out() {
        assert!(awaits_placement(&refused(10005)));
        assert!(
            !awaits_placement(&refused(10130)),
            "the stream exists: final"
        );
        assert!(!awaits_placement(&BackupError::io(
            "opening",
            std::io::Error::other("gone")
        )));
    }

    #[tokio::test]
    async fn a_restore_refused_for_placement_is_tried_again_and_succeeds() {
        let mut tries = 0;
        let restored = switchyard_topology::provision::while_placing(
            "ADVISORIES",
            || {
                tries += 1;
                let outcome = if tries < 3 {
                    Err(refused(10005))
                } else {
                    Ok(tries)
                };
                async move { outcome }
            },
            awaits_placement,
        )
        .await;
        assert_eq!(restored.unwrap(), 3);
    }
}
