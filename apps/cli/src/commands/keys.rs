//! `switchyard keys create|ls|revoke`: the API keys HTTP producers authenticate with, one or
//! more per tenant, kept hashed in the `api-keys` bucket (`libs/registry/src/api_key.rs`).
//! Ingress watches the bucket, so a new or revoked key applies within a second. The key itself
//! is shown once, by `create`; nothing can show it again. The management API issues, lists and
//! revokes keys through the same functions ([`new_key`], [`tenant_keys`], [`revoke`]).

use anstream::{print, println};
use std::process::ExitCode;

use anyhow::Context;
use async_nats::jetstream;
use clap::Subcommand;
use serde::Serialize;
use switchyard_keys::{ApiKeyKey, TenantId, TenantKey};
use switchyard_registry::api_key::IssuedKey;
use switchyard_registry::{
    ApiKeyRecord, ApiScope, Changed, Store, StoreError, TenantRecord, api_key,
};
use switchyard_topology::{BucketName, ResolvedTopology};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use crate::output::{Output, Table};
use crate::resources;

/// Arguments of `keys`.
#[derive(Debug, clap::Args)]
pub struct KeysArgs {
    /// The keys command.
    #[command(subcommand)]
    pub command: KeysCommand,
}

/// The `keys` commands.
#[derive(Debug, Subcommand)]
pub enum KeysCommand {
    /// Issue a key for a registered tenant; prints it once.
    Create(CreateArgs),
    /// List a tenant's keys (ids, labels, expiry, status; never the keys).
    Ls(TenantArg),
    /// Revoke one of a tenant's keys: refused from then on (the record stays, for the audit).
    Revoke(RevokeArgs),
}

/// Arguments of `keys create`.
#[derive(Debug, clap::Args)]
pub struct CreateArgs {
    /// Tenant id.
    pub tenant: TenantId,
    /// Days until the key expires (default: never; rotate by creating a new key and revoking
    /// the old one once producers use the new one).
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..=3650))]
    pub expires_in_days: Option<u32>,
    /// A note for operators (who holds the key).
    #[arg(long)]
    pub label: Option<String>,
    /// What the key may do: `publish` (the producer HTTP API, the default) and/or `manage`
    /// (the tenant's own destinations, DLQ and delivery log through the management API).
    /// Services of an earlier version do not know `manage`.
    #[arg(long = "scope", value_name = "SCOPE", value_parser = scope)]
    pub scopes: Vec<switchyard_registry::ApiScope>,
}

/// Parses `--scope`: `publish` or `manage`.
fn scope(raw: &str) -> Result<switchyard_registry::ApiScope, String> {
    match raw {
        "publish" => Ok(switchyard_registry::ApiScope::Publish),
        "manage" => Ok(switchyard_registry::ApiScope::Manage),
        other => Err(format!("unknown scope {other:?}: publish or manage")),
    }
}

/// One tenant.
#[derive(Debug, clap::Args)]
pub struct TenantArg {
    /// Tenant id.
    pub tenant: TenantId,
}

/// Arguments of `keys revoke`.
#[derive(Debug, clap::Args)]
pub struct RevokeArgs {
    /// Tenant id.
    pub tenant: TenantId,
    /// The key's id (the 32 hex characters after `sy_`).
    pub id: String,
}

/// A key as `keys ls --json` (and the management API) shows it: everything but its hash.
/// `{"id", "status": "active"|"expired"|"revoked", "tenant", "scopes", "label", "created_at",
/// "expires_at", "revoked_at"}`, times as RFC 3339 or `-`.
#[derive(Debug, Serialize)]
pub struct KeyView<'a> {
    id: &'a str,
    status: &'static str,
    tenant: &'a TenantId,
    scopes: &'a [ApiScope],
    label: Option<&'a str>,
    created_at: String,
    /// RFC 3339; `null`: never expires.
    expires_at: Option<String>,
    /// RFC 3339; `null`: not revoked.
    revoked_at: Option<String>,
}

impl<'a> KeyView<'a> {
    /// The view of key `id` at `now`.
    pub fn new(id: &'a str, record: &'a ApiKeyRecord, now: OffsetDateTime) -> Self {
        Self {
            id,
            status: status(record, now),
            tenant: &record.tenant,
            scopes: &record.scopes,
            label: record.label.as_deref(),
            created_at: shown(Some(record.created_at)),
            expires_at: rfc3339(record.expires_at),
            revoked_at: rfc3339(record.revoked_at),
        }
    }
}

/// What `keys create --json` (and the management API's `201`) shows of a new key, the key
/// itself included, once: `{"id", "tenant", "key": "sy_…", "expires_at"}`.
#[derive(Debug, Serialize)]
pub struct CreatedView<'a> {
    /// RFC 3339; `null`: never expires.
    expires_at: Option<String>,
    id: &'a str,
    key: &'a str,
    tenant: &'a TenantId,
}

impl<'a> CreatedView<'a> {
    /// The view of a key just issued.
    pub fn new(issued: &'a IssuedKey) -> Self {
        Self {
            expires_at: rfc3339(issued.record.expires_at),
            id: &issued.id.id,
            key: &issued.token,
            tenant: &issued.record.tenant,
        }
    }
}

fn status(record: &ApiKeyRecord, now: OffsetDateTime) -> &'static str {
    if record.revoked_at.is_some_and(|at| at <= now) {
        "revoked"
    } else if record.expires_at.is_some_and(|at| at <= now) {
        "expired"
    } else {
        "active"
    }
}

/// A time as JSON shows it: RFC 3339, `None` (`null`) when absent.
fn rfc3339(at: Option<OffsetDateTime>) -> Option<String> {
    at.and_then(|at| at.format(&Rfc3339).ok())
}

/// A time as a table shows it: RFC 3339, `-` when absent.
fn shown(at: Option<OffsetDateTime>) -> String {
    rfc3339(at).unwrap_or_else(|| "-".to_owned())
}

/// A new key for `tenant` (not stored yet): expiring `expires_in_days` from `now` if given,
/// with `scopes` (duplicates dropped; none: `publish`). The tenant must be registered: the
/// caller checks.
///
/// Errors: [`api_key::ApiKeyError::Random`] when the system has no randomness to give.
pub fn new_key(
    tenant: TenantId,
    expires_in_days: Option<u32>,
    label: Option<String>,
    scopes: &[ApiScope],
    now: OffsetDateTime,
) -> Result<IssuedKey, api_key::ApiKeyError> {
    let expires_at = expires_in_days.map(|days| now + time::Duration::days(i64::from(days)));
    let mut issued = api_key::issue(tenant, expires_at, label, now)?;
    if !scopes.is_empty() {
        issued.record.scopes.clear();
        for scope in scopes {
            if !issued.record.scopes.contains(scope) {
                issued.record.scopes.push(*scope);
            }
        }
    }
    Ok(issued)
}

/// `tenant`'s keys (id and record), oldest first; unreadable records are left out.
///
/// Errors: the bucket's listing failed.
pub async fn tenant_keys(
    keys: &Store<ApiKeyKey, ApiKeyRecord>,
    tenant: &TenantId,
) -> Result<Vec<(String, ApiKeyRecord)>, StoreError> {
    let mut rows: Vec<(String, ApiKeyRecord)> = keys
        .list(">")
        .await?
        .into_iter()
        .filter_map(|(key, record)| Some((key.id, record.ok()?)))
        .filter(|(_, record)| &record.tenant == tenant)
        .collect();
    rows.sort_by_key(|(_, record)| record.created_at);
    Ok(rows)
}

/// What [`revoke`] did.
#[derive(Debug)]
pub enum Revoked {
    /// The key is revoked (now, or already before: its first revocation time is kept).
    Revoked(ApiKeyRecord),
    /// The tenant has no such key (an id of another tenant's key included).
    NoSuchKey,
    /// The record kept changing under the compare-and-set; nothing was written.
    KeptChanging,
}

/// Revokes `tenant`'s key `id` at `now`, by compare-and-set.
///
/// Errors: a read or write of the bucket failed.
pub async fn revoke(
    keys: &Store<ApiKeyKey, ApiKeyRecord>,
    tenant: &TenantId,
    id: &ApiKeyKey,
    now: OffsetDateTime,
) -> Result<Revoked, StoreError> {
    let changed = keys
        .change(id, REVOKE_TRIES, |stored| {
            Ok::<_, StoreError>(match stored {
                Some(record) if &record.tenant == tenant && record.revoked_at.is_none() => {
                    Some(ApiKeyRecord {
                        revoked_at: Some(now),
                        ..record.clone()
                    })
                }
                _ => None,
            })
        })
        .await?;
    Ok(match changed {
        Changed::Stored(record, _) => Revoked::Revoked(record),
        Changed::Unchanged(Some(record)) if &record.tenant == tenant => Revoked::Revoked(record),
        Changed::Unchanged(_) => Revoked::NoSuchKey,
        Changed::Conflicts => Revoked::KeptChanging,
    })
}

/// Compare-and-set rounds of [`revoke`].
const REVOKE_TRIES: usize = 10;

/// Runs a `keys` command.
pub async fn run(
    js: &jetstream::Context,
    topology: &ResolvedTopology,
    args: &KeysArgs,
    out: &Output,
) -> anyhow::Result<ExitCode> {
    let keys: Store<ApiKeyKey, ApiKeyRecord> =
        Store::new(resources::bucket(js, topology, BucketName::ApiKeys).await?);
    let now = OffsetDateTime::now_utc();
    match &args.command {
        KeysCommand::Create(args) => {
            let tenants: Store<TenantKey, TenantRecord> =
                Store::new(resources::bucket(js, topology, BucketName::Tenants).await?);
            let key = TenantKey {
                tenant: args.tenant.clone(),
            };
            if tenants.get(&key).await?.is_none() {
                anyhow::bail!(
                    "tenant {} is not registered: run `switchyard tenants enable {}` first",
                    args.tenant,
                    args.tenant
                );
            }
            let issued = new_key(
                args.tenant.clone(),
                args.expires_in_days,
                args.label.clone(),
                &args.scopes,
                now,
            )
            .context("issuing a key")?;
            keys.put(&issued.id, &issued.record).await?;
            if out.is_json() {
                out.json(&CreatedView::new(&issued))?;
            } else {
                println!("{}", issued.token);
                eprintln!(
                    "key {} for tenant {} (expires: {}); shown once: store it now",
                    issued.id.id,
                    args.tenant,
                    shown(issued.record.expires_at)
                );
            }
        }
        KeysCommand::Ls(args) => {
            let rows = tenant_keys(&keys, &args.tenant).await?;
            if out.is_json() {
                let views: Vec<KeyView> = rows
                    .iter()
                    .map(|(id, record)| KeyView::new(id, record, now))
                    .collect();
                out.json(&views)?;
            } else if rows.is_empty() {
                println!("tenant {} has no API keys", args.tenant);
            } else {
                let mut table = Table::new(["ID", "STATUS", "LABEL", "CREATED", "EXPIRES"]);
                for (id, record) in &rows {
                    table.row([
                        id.clone(),
                        status(record, now).to_owned(),
                        record.label.clone().unwrap_or_else(|| "-".to_owned()),
                        shown(Some(record.created_at)),
                        shown(record.expires_at),
                    ]);
                }
                print!("{}", table.render());
            }
        }
        KeysCommand::Revoke(args) => {
            let id = ApiKeyKey::new(args.id.clone()).context("key id")?;
            let record = match revoke(&keys, &args.tenant, &id, now).await? {
                Revoked::Revoked(record) => record,
                Revoked::NoSuchKey => {
                    anyhow::bail!("tenant {} has no key {}", args.tenant, args.id)
                }
                Revoked::KeptChanging => {
                    anyhow::bail!("key {} kept changing; try again", args.id)
                }
            };
            if out.is_json() {
                out.json(&KeyView::new(&id.id, &record, now))?;
            } else {
                println!("key {} of tenant {} revoked", id.id, args.tenant);
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}
