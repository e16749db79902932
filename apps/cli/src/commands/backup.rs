//! `switchyard backup create|restore|verify`: everything the deployment keeps in JetStream
//! (every stream, tenants' own included, every KV bucket, consumers and their ack state),
//! through JetStream's snapshot and restore API (`libs/backup`).
//!
//! - `create --dir D`: one `<stream>.snapshot` file per stream and bucket, then
//!   `manifest.json` (versions, topology hash, each file's size and SHA-256). Never overwrites
//!   a backup.
//! - `restore --dir D [--force]`: checks every file against the manifest first; refuses a
//!   deployment holding messages or with its services running unless `--force`.
//! - `verify --dir D`: the checksums alone; changes nothing.
//!
//! The KEK is never in a backup: encrypted tenants' payloads restore sealed and need the KEK
//! ring of the deployment they came from.

use std::path::PathBuf;
use std::process::ExitCode;

use anstream::println;
use async_nats::jetstream;
use clap::Subcommand;
use switchyard_backup::{Manifest, RestoreReport};
use switchyard_topology::ResolvedTopology;

use crate::commands::status::human_bytes;
use crate::output::{Output, Table, fields};
use crate::progress::Progress;

/// Arguments of `backup`.
#[derive(Debug, clap::Args)]
pub struct BackupArgs {
    /// The backup command.
    #[command(subcommand)]
    pub command: BackupCommand,
}

/// The `backup` commands.
#[derive(Debug, Subcommand)]
pub enum BackupCommand {
    /// Snapshot every stream and bucket of the deployment into a new folder.
    ///
    /// Safe while the services run (a message moving on during the backup is in it at least
    /// once); for a backup that restores each message exactly once, stop the services first.
    Create(DirArgs),
    /// Restore a backup into the deployment (stop its services first).
    ///
    /// Every file is checked against the manifest before anything changes. Streams that exist
    /// and are empty are replaced; a deployment holding messages, or with consumers in use, is
    /// refused unless --force.
    Restore(RestoreArgs),
    /// Check a backup's files against its manifest; changes nothing.
    Verify(DirArgs),
}

/// A backup folder.
#[derive(Debug, clap::Args)]
pub struct DirArgs {
    /// The backup folder.
    #[arg(long, value_name = "DIR")]
    pub dir: PathBuf,
}

/// Arguments of `backup restore`.
#[derive(Debug, clap::Args)]
pub struct RestoreArgs {
    /// The backup folder.
    #[arg(long, value_name = "DIR")]
    pub dir: PathBuf,
    /// Replace streams that hold messages, even with consumers in use.
    #[arg(long)]
    pub force: bool,
}

/// A byte bar on stderr for the backup library's progress.
struct Bar(Progress);

impl switchyard_backup::Progress for Bar {
    fn begin(&self, bytes: u64) {
        self.0.set(0, bytes);
    }
    fn item(&self, stream: &str) {
        self.0.set_message(stream.to_owned());
    }
    fn advance(&self, bytes: u64) {
        self.0.inc(bytes);
    }
}

/// Runs a `backup` command.
pub async fn run(
    js: &jetstream::Context,
    topology: &ResolvedTopology,
    args: &BackupArgs,
    out: &Output,
) -> anyhow::Result<ExitCode> {
    let client = js.client();
    match &args.command {
        BackupCommand::Create(args) => {
            let bar = Bar(Progress::bytes(out, "backing up"));
            let manifest = switchyard_backup::create(&client, js, topology, &args.dir, &bar).await;
            bar.0.finish();
            let manifest = manifest?;
            if out.is_json() {
                out.json(&manifest_view(&manifest))?;
            } else {
                print_items(&manifest);
                println!(
                    "backed up {} streams and buckets ({}) to {}",
                    manifest.items.len(),
                    human_bytes(manifest.total_bytes()),
                    args.dir.display()
                );
                if manifest.online {
                    println!(
                        "the services were running: a message that moved on during the backup \
                         may be in it twice (delivered at least once after a restore); stop \
                         them first for an exact backup"
                    );
                }
            }
        }
        BackupCommand::Verify(args) => return verify(topology, args, out).await,
        BackupCommand::Restore(args) => {
            let bar = Bar(Progress::bytes(out, "restoring"));
            let report =
                switchyard_backup::restore(&client, js, topology, &args.dir, args.force, &bar)
                    .await;
            bar.0.finish();
            let report = report?;
            print_restore(&report, out)?;
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// `backup verify`: the manifest and every file's size and SHA-256, with no NATS connection
/// (a backup can be checked where it is kept, before any server is up); whether its topology
/// matches this deployment's comes from the configuration alone.
///
/// Errors: what [`Manifest::read`] and [`Manifest::verify`] return.
pub async fn verify(
    topology: &ResolvedTopology,
    args: &DirArgs,
    out: &Output,
) -> anyhow::Result<ExitCode> {
    let manifest = Manifest::read(&args.dir).await?;
    Progress::during(out, "checking", manifest.verify(&args.dir)).await?;
    if out.is_json() {
        out.json(&manifest_view(&manifest))?;
    } else {
        print!(
            "{}",
            fields(&[
                ("created", manifest.created_at.clone()),
                ("switchyard", manifest.switchyard_version.clone()),
                ("nats-server", manifest.server_version.clone()),
                ("envelope schema", manifest.envelope_schema.to_string()),
                ("topology", short(&manifest.topology_hash)),
                (
                    "matches this deployment",
                    yes_no(manifest.topology_hash == switchyard_backup::topology_hash(topology))
                        .to_owned()
                ),
            ])
        );
        print_items(&manifest);
        println!(
            "every file matches the manifest ({} files, {})",
            manifest.items.len(),
            human_bytes(manifest.total_bytes())
        );
    }
    Ok(ExitCode::SUCCESS)
}

fn yes_no(value: bool) -> &'static str {
    if value {
        "yes"
    } else {
        "no (run `switchyard provision` after restoring)"
    }
}

/// The first 12 hex digits of a hash.
fn short(hash: &str) -> String {
    hash.chars().take(12).collect()
}

fn manifest_view(manifest: &Manifest) -> serde_json::Value {
    serde_json::json!({
        "format": manifest.format,
        "created_at": manifest.created_at,
        "switchyard_version": manifest.switchyard_version,
        "envelope_schema": manifest.envelope_schema,
        "server_version": manifest.server_version,
        "namespace": manifest.namespace,
        "topology_hash": manifest.topology_hash,
        "online": manifest.online,
        "bytes": manifest.total_bytes(),
        "items": manifest.items.iter().map(|i| serde_json::json!({
            "kind": i.kind, "stream": i.stream, "file": i.file, "bytes": i.bytes,
            "sha256": i.sha256, "messages": i.messages, "consumers": i.consumers,
        })).collect::<Vec<_>>(),
    })
}

fn print_items(manifest: &Manifest) {
    let mut table = Table::new(["STREAM", "KIND", "MESSAGES", "CONSUMERS", "SIZE", "SHA-256"]);
    for item in &manifest.items {
        table.row([
            item.stream.clone(),
            format!("{:?}", item.kind).to_lowercase(),
            item.messages.to_string(),
            item.consumers.to_string(),
            human_bytes(item.bytes),
            short(&item.sha256),
        ]);
    }
    anstream::print!("{}", table.render());
}

fn print_restore(report: &RestoreReport, out: &Output) -> anyhow::Result<()> {
    if out.is_json() {
        return out.json(&serde_json::json!({
            "restored": report.restored.iter().map(|(stream, messages)| {
                serde_json::json!({"stream": stream, "messages": messages})
            }).collect::<Vec<_>>(),
            "replaced": report.replaced,
            "left_alone": report.left_alone,
            "topology_differs": report.topology_differs,
        }));
    }
    let mut table = Table::new(["STREAM", "MESSAGES", "REPLACED"]);
    for (stream, messages) in &report.restored {
        table.row([
            stream.clone(),
            messages.to_string(),
            if report.replaced.contains(stream) {
                "yes"
            } else {
                "-"
            }
            .to_owned(),
        ]);
    }
    anstream::print!("{}", table.render());
    println!("restored {} streams and buckets", report.restored.len());
    if !report.left_alone.is_empty() {
        println!(
            "not in the backup, left as they are: {}",
            report.left_alone.join(", ")
        );
    }
    if report.topology_differs {
        println!(
            "the backup comes from a deployment of another topology (declarations, namespace \
             or replicas): run `switchyard provision` to reconcile it"
        );
    }
    println!("start the services again: they carry on from the restored state");
    Ok(())
}
