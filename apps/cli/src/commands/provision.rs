//! `switchyard provision`: create what `nats/topology.toml` declares; report and optionally
//! fix drift. Idempotent: a second run changes nothing and says so. Refuses (exit code 1) when
//! the server's `max_payload` does not fit the declared message sizes.

use anstream::print;
use std::process::ExitCode;

use anyhow::Context;
use async_nats::jetstream;
use switchyard_keys::TenantKey;
use switchyard_registry::{Store, TenantRecord};
use switchyard_topology::{
    BucketName, Outcome, ProvisionReport, ResolvedTopology, TenantQuota, check_server, provision,
    provision_tenant,
};

use crate::EXIT_DRIFT;
use crate::commands::tenants;
use crate::output::{Output, Table, paint, printable, style};
use crate::progress::Progress;
use crate::resources;

/// Arguments of `provision`.
#[derive(Debug, clap::Args)]
pub struct ProvisionArgs {
    /// Update drifted streams, consumers and buckets in place (never deletes anything).
    #[arg(long)]
    pub fix: bool,
    /// Replicas for streams and buckets (overrides `deployment.replicas`; 3 on a cluster).
    #[arg(long)]
    pub replicas: Option<usize>,
}

fn outcome_label(outcome: Outcome) -> &'static str {
    match outcome {
        Outcome::Created => "created",
        Outcome::Unchanged => "unchanged",
        Outcome::Updated => "updated",
        Outcome::Drifted => "drifted",
        Outcome::Unfixable => "drifted (cannot fix in place)",
        Outcome::Retired => "removed (drained, no longer declared)",
        Outcome::Missing => "missing",
    }
}

/// An outcome for a table: green when as declared or made so, yellow when drifted or
/// removed, red when it needs an operator.
pub fn outcome_cell(outcome: Outcome) -> String {
    let style = match outcome {
        Outcome::Created | Outcome::Unchanged | Outcome::Updated => style::GOOD,
        Outcome::Drifted | Outcome::Retired => style::WARN,
        Outcome::Unfixable | Outcome::Missing => style::BAD,
    };
    paint(style, outcome_label(outcome))
}

/// Renders the report as a table plus a one-line verdict.
pub fn render(report: &ProvisionReport) -> String {
    let mut table = Table::new(["KIND", "NAME", "RESULT", "DETAILS"]);
    for item in &report.items {
        let details: Vec<String> = item.changes.iter().map(ToString::to_string).collect();
        table.painted_row(vec![
            item.kind.to_owned(),
            printable(&item.name),
            outcome_cell(item.outcome),
            printable(&details.join("; ")),
        ]);
    }
    let count = |o: Outcome| report.items.iter().filter(|i| i.outcome == o).count();
    let verdict = if !report.changed_anything() && !report.has_drift() {
        format!(
            "nothing to change: all {} declared items exist as declared",
            report.items.len()
        )
    } else {
        let mut parts = Vec::new();
        for (outcome, label) in [
            (Outcome::Created, "created"),
            (Outcome::Updated, "updated"),
            (Outcome::Retired, "removed once drained"),
            (Outcome::Unchanged, "unchanged"),
            (
                Outcome::Drifted,
                "drifted (run `switchyard provision --fix` to update in place)",
            ),
            (
                Outcome::Unfixable,
                "drifted in fields that cannot change in place (recreating loses their data)",
            ),
        ] {
            let n = count(outcome);
            if n > 0 {
                parts.push(format!("{n} {label}"));
            }
        }
        parts.join(", ")
    };
    format!("{}\n{verdict}\n", table.render())
}

/// Runs `provision`.
pub async fn run(
    js: &jetstream::Context,
    topology: &ResolvedTopology,
    args: &ProvisionArgs,
    out: &Output,
) -> anyhow::Result<ExitCode> {
    // Streams the server cannot fill (or a DLQ that cannot hold their records) would accept
    // messages that can be neither handed on nor dead-lettered: refuse before creating any.
    if let Err(error) = check_server(&js.client(), topology) {
        let lines: Vec<String> = error.problems.iter().map(|p| format!("  - {p}")).collect();
        anyhow::bail!(
            "refusing to provision: the server's limits do not fit the declared sizes\n{}",
            lines.join("\n")
        );
    }
    let mut report = Progress::during(
        out,
        "provisioning the shared streams, consumers and buckets",
        provision(js, topology, args.fix),
    )
    .await
    .context("provisioning")?;
    // Every registered tenant's own streams, with its quota.
    let tenants: Store<TenantKey, TenantRecord> =
        Store::new(resources::bucket(js, topology, BucketName::Tenants).await?);
    let registered = tenants.list(">").await?;
    let progress = Progress::bar(out, registered.len() as u64, "provisioning tenants");
    for (key, record) in registered {
        progress.inc(1);
        let quota = match &record {
            Ok(record) => tenants::quota(record),
            Err(error) => {
                progress.warn(format_args!(
                    "warning: tenant {}'s record is unreadable ({error}); its stream gets the default quota",
                    key.tenant
                ));
                TenantQuota::default()
            }
        };
        let own = provision_tenant(js, topology, &key.tenant, quota, args.fix)
            .await
            .with_context(|| format!("provisioning tenant {}", key.tenant))?;
        report.items.extend(own.items);
    }
    progress.finish();
    if out.is_json() {
        out.json(&report)?;
    } else {
        print!("{}", render(&report));
    }
    Ok(if report.has_drift() {
        ExitCode::from(EXIT_DRIFT)
    } else {
        ExitCode::SUCCESS
    })
}
