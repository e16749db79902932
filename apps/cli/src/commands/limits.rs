//! `switchyard limits set|get|ls`: per-tenant rate limits in the `rate-limits` bucket. Every
//! backpressure replica watches them, so a change applies within a second, no restart.

use anstream::{print, println};
use std::process::ExitCode;

use anyhow::Context;
use async_nats::jetstream;
use clap::Subcommand;
use serde::Serialize;
use switchyard_keys::{KvKey, RateKey, RateRecord, RateScope, TenantId};
use switchyard_registry::{LimitRecord, LimitSource, PressureRecord, Store, limit_lookup};
use switchyard_topology::{BucketName, ResolvedTopology};

use crate::output::{Output, Table};
use crate::resources;

/// Arguments of `limits`.
#[derive(Debug, clap::Args)]
pub struct LimitsArgs {
    /// The limits command.
    #[command(subcommand)]
    pub command: LimitsCommand,
}

/// The `limits` commands.
#[derive(Debug, Subcommand)]
pub enum LimitsCommand {
    /// Set a tenant's limit (or `_default`, for tenants without their own).
    Set(SetArgs),
    /// Show the limit in force for a tenant, and its admission state.
    Get(ScopeArg),
    /// List every limit with each tenant's admission state.
    Ls,
}

/// A tenant id or `_default`.
#[derive(Debug, clap::Args)]
pub struct ScopeArg {
    /// Tenant id, or `_default`.
    pub tenant: String,
}

/// Arguments of `limits set`.
#[derive(Debug, clap::Args)]
pub struct SetArgs {
    /// Tenant id, or `_default`.
    pub tenant: String,
    /// Messages per second, across every replica.
    #[arg(long)]
    pub rate: f64,
    /// Messages that may go at once after a quiet period (default: one second's worth).
    #[arg(long)]
    pub burst: Option<u32>,
    /// Backlog that closes the tenant's admission at the edge.
    #[arg(long)]
    pub backlog_high: Option<u64>,
    /// Backlog below which admission reopens (default: half of --backlog-high).
    #[arg(long)]
    pub backlog_low: Option<u64>,
}

fn scope(raw: &str) -> anyhow::Result<RateScope> {
    if raw == "_default" {
        Ok(RateScope::Default)
    } else {
        Ok(RateScope::Tenant(
            raw.parse::<TenantId>().context("tenant")?,
        ))
    }
}

fn scope_name(scope: &RateScope) -> String {
    match scope {
        RateScope::Default => "_default".to_owned(),
        RateScope::Tenant(t) => t.to_string(),
    }
}

/// One row of `limits ls --json`.
#[derive(Debug, Serialize)]
struct LimitView {
    tenant: String,
    #[serde(flatten)]
    limit: LimitRecord,
    admission: Option<PressureRecord>,
}

fn thresholds(limit: &LimitRecord) -> String {
    match (limit.backlog_high, limit.reopen_below()) {
        (Some(high), Some(low)) => format!("{high}/{low}"),
        _ => "service default".to_owned(),
    }
}

/// Runs a `limits` command.
pub async fn run(
    js: &jetstream::Context,
    topology: &ResolvedTopology,
    args: &LimitsArgs,
    out: &Output,
) -> anyhow::Result<ExitCode> {
    let bucket = resources::bucket(js, topology, BucketName::RateLimits).await?;
    let limits: Store<RateKey, LimitRecord> = Store::new(bucket.clone());
    let pressure: Store<RateKey, PressureRecord> = Store::new(bucket);
    match &args.command {
        LimitsCommand::Set(set) => {
            let scope = scope(&set.tenant)?;
            let record = LimitRecord {
                rate_per_sec: set.rate,
                burst: set.burst.unwrap_or_else(|| set.rate.ceil().max(1.0) as u32),
                backlog_high: set.backlog_high,
                backlog_low: set.backlog_low,
            };
            record
                .validate()
                .map_err(|e| anyhow::anyhow!("invalid limit: {e}"))?;
            let key = RateKey {
                scope: scope.clone(),
                record: RateRecord::Limit,
            };
            let revision = limits.put(&key, &record).await?;
            if out.is_json() {
                out.json(&LimitView {
                    tenant: scope_name(&scope),
                    limit: record,
                    admission: None,
                })?;
            } else {
                println!(
                    "set limit {}: {}/s, burst {}, backlog {} (revision {revision})",
                    scope_name(&scope),
                    record.rate_per_sec,
                    record.burst,
                    thresholds(&record)
                );
            }
        }
        LimitsCommand::Get(arg) => {
            let scope = scope(&arg.tenant)?;
            // The service's lookup order: the tenant's own valid record, then `_default`.
            let lookup = match &scope {
                RateScope::Tenant(tenant) => limit_lookup(tenant).to_vec(),
                RateScope::Default => vec![(
                    RateKey {
                        scope: RateScope::Default,
                        record: RateRecord::Limit,
                    },
                    LimitSource::Default,
                )],
            };
            let mut limit = None;
            let mut from = String::new();
            for (key, source) in lookup {
                match limits.get(&key).await? {
                    Some(record) if record.validate().is_ok() => {
                        limit = Some(record);
                        from = match source {
                            LimitSource::Tenant => scope_name(&scope),
                            _ => "_default".to_owned(),
                        };
                        break;
                    }
                    Some(record) => eprintln!(
                        "warning: the limit at {} is invalid and ignored by the service: {}",
                        key.render(),
                        record.validate().err().unwrap_or_default()
                    ),
                    None => {}
                }
            }
            let admission = match &scope {
                RateScope::Tenant(_) => {
                    pressure
                        .get(&RateKey {
                            scope: scope.clone(),
                            record: RateRecord::Pressure,
                        })
                        .await?
                }
                RateScope::Default => None,
            };
            let Some(limit) = limit else {
                anyhow::bail!(
                    "no limit for {} and no _default: the backpressure service's built-in default applies",
                    arg.tenant
                );
            };
            if out.is_json() {
                out.json(&LimitView {
                    tenant: scope_name(&scope),
                    limit,
                    admission,
                })?;
            } else {
                println!("tenant     {}", scope_name(&scope));
                println!("limit from {from}");
                println!("rate       {}/s", limit.rate_per_sec);
                println!("burst      {}", limit.burst);
                println!("backlog    {} (close/reopen)", thresholds(&limit));
                if let Some(p) = admission {
                    println!(
                        "admission  {:?} (backlog {} at {})",
                        p.admission, p.backlog, p.updated_at
                    );
                }
            }
        }
        LimitsCommand::Ls => {
            let mut views = Vec::new();
            for (key, record) in limits.list(RateRecord::Limit.filter()).await? {
                let Ok(limit) = record else { continue };
                let admission = match &key.scope {
                    RateScope::Tenant(_) => {
                        pressure
                            .get(&RateKey {
                                scope: key.scope.clone(),
                                record: RateRecord::Pressure,
                            })
                            .await?
                    }
                    RateScope::Default => None,
                };
                views.push(LimitView {
                    tenant: scope_name(&key.scope),
                    limit,
                    admission,
                });
            }
            if out.is_json() {
                out.json(&views)?;
            } else if views.is_empty() {
                println!(
                    "no limits: the backpressure service's built-in default applies to every tenant"
                );
            } else {
                let mut table = Table::new([
                    "TENANT",
                    "RATE/S",
                    "BURST",
                    "BACKLOG CLOSE/REOPEN",
                    "ADMISSION",
                ]);
                for v in &views {
                    let admission = v.admission.as_ref().map_or("open".to_owned(), |p| {
                        format!("{:?}", p.admission).to_lowercase()
                    });
                    table.row([
                        v.tenant.clone(),
                        v.limit.rate_per_sec.to_string(),
                        v.limit.burst.to_string(),
                        thresholds(&v.limit),
                        admission,
                    ]);
                }
                print!("{}", table.render());
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}
