//! `switchyard encryption enable|rotate|rewrap|status|shred`: per-tenant payload encryption,
//! kept in the `tenant-keys` bucket (`libs/crypt`: [`KeyStore`]). A tenant has encryption on
//! iff it has a key record; ingress seals its payloads from then on, egress opens them before
//! delivery. The key-encryption key (KEK) that wraps the data keys comes from `--kek-file`
//! (or `SWITCHYARD_KEK_FILE`) and never goes to NATS; `status` and `shred` need none.
//!
//! - `enable <tenant>`: a first data key (idempotent), and the secrets of the tenant's routes and
//!   destinations written before sealed under it (`commands::sealing`; run again, it seals
//!   whatever is still in clear).
//! - `rotate <tenant>`: a new current data key; older ones keep opening what they sealed.
//! - `rewrap`: every tenant's data keys under the current KEK, `--previous-kek-file` naming
//!   the KEK(s) they are wrapped under now. Messages are untouched.
//! - `status [<tenant>]`: on / shredded / off, the current key, the KEKs in use.
//! - `shred <tenant> --yes`: destroys the tenant's data keys: everything sealed for it becomes
//!   unreadable, for good.

use anstream::{print, println};
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use async_nats::jetstream;
use clap::Subcommand;
use serde::Serialize;
use switchyard_crypt::{Enabled, KekRing, KeyState, KeyStore, LocalKek, TenantKeys};
use switchyard_keys::TenantId;
use switchyard_topology::{BucketName, ResolvedTopology};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use crate::commands::sealing;
use crate::output::{Output, Table, fields};
use crate::{prompt, resources};

/// Where the key-encryption keys come from (shared with `dlq show`).
#[derive(Debug, Clone, Default, clap::Args)]
pub struct KekArgs {
    /// The key-encryption key file: one line, 32 bytes as 64 hex characters or base64
    /// (`openssl rand -hex 32`), not readable by others nor writable by group or others.
    #[arg(long, value_name = "FILE", env = "SWITCHYARD_KEK_FILE")]
    pub kek_file: Option<PathBuf>,
    /// An older KEK file, to unwrap data keys not yet re-wrapped under `--kek-file` (repeat
    /// for several): what `rewrap` needs during a KEK rotation.
    #[arg(long = "previous-kek-file", value_name = "FILE")]
    pub previous_kek_files: Vec<PathBuf>,
}

impl KekArgs {
    /// The KEK ring, `None` without `--kek-file`.
    ///
    /// Errors: a file that cannot be read, is writable by others or holds no key (named);
    /// two files holding the same key; `--previous-kek-file` without `--kek-file`.
    pub fn ring(&self) -> anyhow::Result<Option<KekRing>> {
        let Some(current) = &self.kek_file else {
            if !self.previous_kek_files.is_empty() {
                anyhow::bail!("--previous-kek-file needs --kek-file (the current KEK) as well");
            }
            return Ok(None);
        };
        let mut ring = KekRing::new(LocalKek::from_file(current).context("--kek-file")?);
        for path in &self.previous_kek_files {
            ring = ring
                .with_previous(LocalKek::from_file(path).context("--previous-kek-file")?)
                .context("--previous-kek-file")?;
        }
        Ok(Some(ring))
    }

    /// The KEK ring, required.
    ///
    /// Errors: as [`KekArgs::ring`], or no `--kek-file` / `SWITCHYARD_KEK_FILE`.
    pub fn required(&self) -> anyhow::Result<KekRing> {
        self.ring()?.context(
            "this command needs the key-encryption key: pass --kek-file FILE or set \
             SWITCHYARD_KEK_FILE",
        )
    }
}

/// Arguments of `encryption`.
#[derive(Debug, clap::Args)]
pub struct EncryptionArgs {
    /// The encryption command.
    #[command(subcommand)]
    pub command: EncryptionCommand,
}

/// The `encryption` commands.
#[derive(Debug, Subcommand)]
pub enum EncryptionCommand {
    /// Turn payload encryption on for a tenant: a first data key, wrapped by the KEK.
    Enable(KeyedTenant),
    /// A new data key for a tenant's new messages; older ones still open what they sealed.
    Rotate(KeyedTenant),
    /// Re-wrap every tenant's data keys under the current KEK (after a KEK rotation).
    Rewrap(KekOnly),
    /// Show which tenants have encryption on, their current data key and KEKs.
    Status(StatusArgs),
    /// Destroy a tenant's data keys: its encrypted payloads become unreadable for good.
    Shred(ShredArgs),
}

/// A tenant and the KEK.
#[derive(Debug, clap::Args)]
pub struct KeyedTenant {
    /// Tenant id.
    pub tenant: TenantId,
    /// The KEK.
    #[command(flatten)]
    pub kek: KekArgs,
}

/// The KEK alone.
#[derive(Debug, clap::Args)]
pub struct KekOnly {
    /// The KEK.
    #[command(flatten)]
    pub kek: KekArgs,
}

/// Arguments of `encryption status`.
#[derive(Debug, clap::Args)]
pub struct StatusArgs {
    /// Only this tenant, with each of its data keys.
    pub tenant: Option<TenantId>,
}

/// Arguments of `encryption shred`.
#[derive(Debug, clap::Args)]
pub struct ShredArgs {
    /// Tenant id.
    pub tenant: TenantId,
    /// Confirm without asking (needed when stdin is not a terminal).
    #[arg(long)]
    pub yes: bool,
}

/// One data key as `status <tenant> --json` shows it: `{"id", "kek", "created", "current"}`.
#[derive(Debug, Serialize)]
pub struct DataKeyView {
    id: String,
    kek: String,
    created: String,
    current: bool,
}

/// A tenant as `status --json` shows it: `{"tenant", "state": "on"|"shredded"|"off",
/// "current_key", "keks", "keys"}` (`current_key` null and `keys` empty unless on; `error` when
/// the record is unreadable).
#[derive(Debug, Serialize)]
pub struct TenantView {
    tenant: String,
    state: &'static str,
    current_key: Option<String>,
    keks: Vec<String>,
    keys: Vec<DataKeyView>,
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<String>,
}

fn rfc3339(at: OffsetDateTime) -> String {
    at.format(&Rfc3339).unwrap_or_default()
}

impl TenantView {
    fn on(record: &TenantKeys) -> Self {
        let mut keks: Vec<String> = record.keys.values().map(|k| k.kek.clone()).collect();
        keks.sort();
        keks.dedup();
        Self {
            tenant: record.tenant.to_string(),
            state: "on",
            current_key: Some(record.current.to_string()),
            keks,
            keys: record
                .keys
                .iter()
                .map(|(id, k)| DataKeyView {
                    id: id.to_string(),
                    kek: k.kek.clone(),
                    created: rfc3339(k.created),
                    current: *id == record.current,
                })
                .collect(),
            error: None,
        }
    }

    fn other(tenant: &TenantId, state: &'static str, error: Option<String>) -> Self {
        Self {
            tenant: tenant.to_string(),
            state,
            current_key: None,
            keks: Vec::new(),
            keys: Vec::new(),
            error,
        }
    }
}

/// Runs an `encryption` command.
pub async fn run(
    js: &jetstream::Context,
    topology: &ResolvedTopology,
    args: &EncryptionArgs,
    out: &Output,
) -> anyhow::Result<ExitCode> {
    let store = KeyStore::new(resources::bucket(js, topology, BucketName::TenantKeys).await?);
    let now = OffsetDateTime::now_utc();
    match &args.command {
        EncryptionCommand::Enable(args) => {
            let ring = args.kek.required()?;
            let (created, key) = match store.enable(&args.tenant, &ring, now).await? {
                Enabled::Created(key) => (true, key),
                Enabled::AlreadyOn(key) => (false, key),
            };
            // Secrets written while encryption was off are sealed now.
            let sealer = store
                .secret_sealer(&args.tenant, Some(&ring))
                .await
                .with_context(|| format!("sealing tenant {}'s secrets", args.tenant))?;
            let sealed = sealing::seal_existing(js, topology, &args.tenant, &sealer).await?;
            if out.is_json() {
                out.json(&serde_json::json!({
                    "tenant": args.tenant, "created": created, "current_key": key,
                    "kek": ring.current().id(), "sealed_secrets": sealed,
                }))?;
            } else if created {
                println!(
                    "encryption on for tenant {}: data key {key} (wrapped by KEK {}); ingress \
                     seals its new messages within a second",
                    args.tenant,
                    ring.current().id()
                );
            } else {
                println!(
                    "tenant {} already has encryption on (current data key {key})",
                    args.tenant
                );
            }
            if !out.is_json() {
                println!(
                    "sealed the secrets of {} route(s) and {} destination(s) stored in clear",
                    sealed.routes, sealed.destinations
                );
                for skipped in &sealed.skipped {
                    println!("not sealed: {skipped}");
                }
            }
            if !sealed.skipped.is_empty() {
                anyhow::bail!(
                    "some of tenant {}'s records were not sealed; fix them and run `switchyard \
                     encryption enable {}` again",
                    args.tenant,
                    args.tenant
                );
            }
        }
        EncryptionCommand::Rotate(args) => {
            let ring = args.kek.required()?;
            let key = store.rotate(&args.tenant, &ring, now).await?;
            if out.is_json() {
                out.json(&serde_json::json!({"tenant": args.tenant, "current_key": key}))?;
            } else {
                println!(
                    "tenant {}: new messages are sealed with data key {key}; older keys still \
                     open what they sealed",
                    args.tenant
                );
            }
        }
        EncryptionCommand::Rewrap(args) => {
            let ring = args.kek.required()?;
            let mut rows = Vec::new();
            let mut failed = false;
            for (tenant, record) in store.list().await? {
                let result = match record {
                    Err(reason) => Err(reason),
                    Ok(_) => store
                        .rewrap(&tenant, &ring)
                        .await
                        .map_err(|e| format!("{e:#}")),
                };
                failed |= result.is_err();
                rows.push((tenant, result));
            }
            if out.is_json() {
                let views: Vec<serde_json::Value> = rows
                    .iter()
                    .map(|(tenant, result)| match result {
                        Ok(count) => serde_json::json!({"tenant": tenant, "rewrapped": count}),
                        Err(error) => serde_json::json!({"tenant": tenant, "error": error}),
                    })
                    .collect();
                out.json(&serde_json::json!({"kek": ring.current().id(), "tenants": views}))?;
            } else if rows.is_empty() {
                println!("no tenant has encryption on");
            } else {
                let mut table = Table::new(["TENANT", "RE-WRAPPED", "ERROR"]);
                for (tenant, result) in &rows {
                    match result {
                        Ok(count) => table.row([tenant.to_string(), count.to_string(), "-".into()]),
                        Err(error) => table.row([tenant.to_string(), "-".into(), error.clone()]),
                    }
                }
                print!("{}", table.render());
                println!(
                    "every data key re-wrapped is now under KEK {}",
                    ring.current().id()
                );
            }
            if failed {
                anyhow::bail!(
                    "some tenants were not re-wrapped: keep their previous KEK until they are"
                );
            }
        }
        EncryptionCommand::Status(args) => status(&store, args.tenant.as_ref(), out).await?,
        EncryptionCommand::Shred(args) => {
            prompt::ensure_can_confirm("shred a tenant's keys", args.yes)?;
            if !args.yes
                && !prompt::confirm(&format!(
                    "destroy tenant {}'s data keys? Everything encrypted for it becomes \
                     unreadable, for good",
                    args.tenant
                ))?
            {
                anyhow::bail!("nothing shredded");
            }
            let shredded = store.shred(&args.tenant).await?;
            if out.is_json() {
                out.json(&serde_json::json!({"tenant": args.tenant, "shredded": shredded}))?;
            } else if shredded {
                println!(
                    "tenant {}'s data keys are destroyed: its encrypted payloads can no longer \
                     be decrypted (the services drop their copies within a second)",
                    args.tenant
                );
            } else {
                println!("tenant {} has no data keys: nothing shredded", args.tenant);
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

async fn status(store: &KeyStore, tenant: Option<&TenantId>, out: &Output) -> anyhow::Result<()> {
    let Some(tenant) = tenant else {
        let views: Vec<TenantView> = store
            .list()
            .await?
            .into_iter()
            .map(|(tenant, record)| match record {
                Ok(record) => TenantView::on(&record),
                Err(error) => TenantView::other(&tenant, "on", Some(error)),
            })
            .collect();
        if out.is_json() {
            out.json(&views)?;
        } else if views.is_empty() {
            println!("no tenant has encryption on");
        } else {
            let mut table = Table::new(["TENANT", "CURRENT KEY", "KEYS", "KEKS"]);
            for view in &views {
                table.row([
                    view.tenant.clone(),
                    view.current_key.clone().unwrap_or_else(|| "-".into()),
                    view.error
                        .clone()
                        .unwrap_or_else(|| view.keys.len().to_string()),
                    view.keks.join(","),
                ]);
            }
            print!("{}", table.render());
        }
        return Ok(());
    };
    let view = match store.state(tenant).await? {
        KeyState::On(record, _) => TenantView::on(&record),
        KeyState::Shredded => TenantView::other(tenant, "shredded", None),
        KeyState::Off => TenantView::other(tenant, "off", None),
    };
    if out.is_json() {
        out.json(&view)?;
        return Ok(());
    }
    let state = match view.state {
        "on" => "on",
        "shredded" => "off: its data keys were destroyed (shredded)",
        _ => "off",
    };
    print!(
        "{}",
        fields(&[("tenant", view.tenant.as_str()), ("encryption", state)])
    );
    if !view.keys.is_empty() {
        let mut table = Table::new(["KEY", "KEK", "CREATED", "CURRENT"]);
        for key in &view.keys {
            table.row([
                key.id.clone(),
                key.kek.clone(),
                key.created.clone(),
                if key.current { "yes" } else { "" }.to_owned(),
            ]);
        }
        print!("\n{}", table.render());
    }
    Ok(())
}
