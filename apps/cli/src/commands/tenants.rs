//! `switchyard tenants enable|disable|get|ls`: the tenant registry (`tenants` bucket), which
//! ingress consults to accept or dead-letter a tenant's messages.

use std::process::ExitCode;

use async_nats::jetstream;
use clap::Subcommand;
use serde::Serialize;
use switchyard_keys::{TenantId, TenantKey};
use switchyard_registry::{Store, TenantRecord};
use switchyard_topology::{BucketName, ResolvedTopology};

use crate::output::{self, Output, Table};
use crate::resources;

/// Arguments of `tenants`.
#[derive(Debug, clap::Args)]
pub struct TenantsArgs {
    /// The tenants command.
    #[command(subcommand)]
    pub command: TenantsCommand,
}

/// The `tenants` commands.
#[derive(Debug, Subcommand)]
pub enum TenantsCommand {
    /// Register a tenant, or re-enable it (its other settings are kept).
    Enable(TenantArg),
    /// Disable a tenant: ingress dead-letters its messages with `tenant_disabled`.
    Disable(TenantArg),
    /// Show a tenant's record.
    Get(TenantArg),
    /// List every registered tenant.
    Ls,
}

/// One tenant.
#[derive(Debug, clap::Args)]
pub struct TenantArg {
    /// Tenant id.
    pub tenant: TenantId,
}

/// A tenant and its record, as printed by `--json`.
#[derive(Debug, Serialize)]
struct TenantView<'a> {
    tenant: &'a TenantId,
    #[serde(flatten)]
    record: &'a TenantRecord,
}

fn status(record: &TenantRecord) -> &'static str {
    if record.enabled {
        "enabled"
    } else {
        "disabled"
    }
}

fn max_payload(record: &TenantRecord) -> String {
    record
        .max_payload_bytes
        .map_or_else(|| "default".to_owned(), |b| b.to_string())
}

/// Runs a `tenants` command.
pub async fn run(
    js: &jetstream::Context,
    topology: &ResolvedTopology,
    args: &TenantsArgs,
    out: &Output,
) -> anyhow::Result<ExitCode> {
    let store: Store<TenantKey, TenantRecord> =
        Store::new(resources::bucket(js, topology, BucketName::Tenants).await?);
    match &args.command {
        TenantsCommand::Enable(t) => set_enabled(&store, &t.tenant, true, out).await?,
        TenantsCommand::Disable(t) => set_enabled(&store, &t.tenant, false, out).await?,
        TenantsCommand::Get(t) => {
            let key = TenantKey {
                tenant: t.tenant.clone(),
            };
            let Some(record) = store.get(&key).await? else {
                anyhow::bail!("tenant {} is not registered", t.tenant);
            };
            if out.is_json() {
                out.json(&TenantView {
                    tenant: &t.tenant,
                    record: &record,
                })?;
            } else {
                println!(
                    "tenant {}: {} (max payload bytes: {})",
                    t.tenant,
                    status(&record),
                    max_payload(&record)
                );
            }
        }
        TenantsCommand::Ls => list(&store, out).await?,
    }
    Ok(ExitCode::SUCCESS)
}

async fn set_enabled(
    store: &Store<TenantKey, TenantRecord>,
    tenant: &TenantId,
    enabled: bool,
    out: &Output,
) -> anyhow::Result<()> {
    let key = TenantKey {
        tenant: tenant.clone(),
    };
    let mut record = store.get(&key).await?.unwrap_or_else(TenantRecord::enabled);
    record.enabled = enabled;
    store.put(&key, &record).await?;
    if out.is_json() {
        out.json(&TenantView {
            tenant,
            record: &record,
        })
    } else {
        println!("tenant {tenant} {}", status(&record));
        Ok(())
    }
}

async fn list(store: &Store<TenantKey, TenantRecord>, out: &Output) -> anyhow::Result<()> {
    let tenants = store.list(">").await?;
    if out.is_json() {
        let rows: Vec<serde_json::Value> = tenants
            .iter()
            .map(|(key, record)| match record {
                Ok(record) => serde_json::to_value(TenantView {
                    tenant: &key.tenant,
                    record,
                })
                .unwrap_or_default(),
                Err(err) => {
                    serde_json::json!({"tenant": key.tenant, "error": output::error_chain(err)})
                }
            })
            .collect();
        return out.json(&rows);
    }
    if tenants.is_empty() {
        println!("no tenants registered");
        return Ok(());
    }
    let mut table = Table::new(["TENANT", "STATUS", "MAX PAYLOAD"]);
    for (key, record) in &tenants {
        match record {
            Ok(record) => table.row([
                key.tenant.to_string(),
                status(record).into(),
                max_payload(record),
            ]),
            Err(err) => table.row([
                key.tenant.to_string(),
                "invalid".into(),
                output::error_chain(err),
            ]),
        }
    }
    print!("{}", table.render());
    Ok(())
}
