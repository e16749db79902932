//! `switchyard doctor`: one command that checks what operators get wrong, printing each check
//! as `ok`, `warn` or `fail` with what it found and the fix.
//!
//! In order: the server is reachable; its version is at least the topology's minimum
//! ([`switchyard_topology::MIN_SERVER_VERSION`]; older than the pinned, tested one is a
//! warning); JetStream is enabled; the server's `max_payload` fits every declared message size;
//! every declared stream, consumer and bucket — the shared ones and each registered tenant's —
//! exists without drift (read-only: [`switchyard_topology::check`]); how full streams, buckets
//! and tenants' quotas are; the clock skew between this host and the server; the services'
//! readiness endpoints given with `--ready`; and the NATS user's permissions for what the CLI
//! does ([`permissions`]).
//!
//! Exit code: 0 when every check is `ok`, 1 when the worst is `warn`, 2 when one `fail`s.
//! Nothing is changed on the server.

mod checks;
pub mod permissions;

use std::process::ExitCode;

use anstream::println;
use serde::Serialize;
use switchyard_topology::ResolvedTopology;

use crate::config::CliConfig;
use crate::output::{self, Output, Table, style};
use crate::progress::Progress;

/// Arguments of `doctor`.
#[derive(Debug, clap::Args)]
pub struct DoctorArgs {
    /// A service's readiness URL to probe (repeatable), e.g.
    /// `http://127.0.0.1:9091/readyz`; each must answer 200.
    #[arg(long = "ready", value_name = "URL", value_parser = http_url)]
    pub ready: Vec<url::Url>,
    /// Fill (percent of a stream's, bucket's or tenant quota's limit) from which a check warns.
    #[arg(long, value_name = "PCT", default_value_t = 80.0, value_parser = percent)]
    pub fill_warn: f64,
    /// Fill from which a check fails (at least --fill-warn).
    #[arg(long, value_name = "PCT", default_value_t = 95.0, value_parser = percent)]
    pub fill_fail: f64,
    /// Clock skew between this host and the server, in milliseconds, from which a check warns
    /// (ten times as much fails).
    #[arg(long, value_name = "MS", default_value_t = 1000,
          value_parser = clap::value_parser!(u64).range(1..))]
    pub max_skew_ms: u64,
}

/// Parses `--ready`: an `http://` or `https://` URL.
fn http_url(raw: &str) -> Result<url::Url, String> {
    let url = url::Url::parse(raw).map_err(|err| format!("{raw:?} is not a URL: {err}"))?;
    match url.scheme() {
        "http" | "https" if url.host().is_some() => Ok(url),
        _ => Err(format!(
            "{:?} is not an http(s) URL with a host (a readiness probe is an HTTP GET)",
            checks::shown_url(&url)
        )),
    }
}

/// Parses a percentage: a number from 0 to 100.
fn percent(raw: &str) -> Result<f64, String> {
    match raw.parse::<f64>() {
        Ok(pct) if (0.0..=100.0).contains(&pct) => Ok(pct),
        _ => Err(format!("{raw:?} is not a percentage from 0 to 100")),
    }
}

/// How a check came out, worst last.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Level {
    /// As it should be.
    Ok,
    /// Works, but needs a look.
    Warn,
    /// Broken: the pipeline or the CLI cannot work as configured.
    Fail,
}

impl Level {
    fn cell(self) -> String {
        match self {
            Level::Ok => output::paint(style::GOOD, "ok"),
            Level::Warn => output::paint(style::WARN, "warn"),
            Level::Fail => output::paint(style::BAD, "fail"),
        }
    }
}

/// One check's result.
#[derive(Debug, Clone, Serialize)]
pub struct Check {
    /// What was checked (`server version`, `stream DLQ`, `permission: provision`).
    pub check: String,
    /// How it came out.
    pub level: Level,
    /// What was found.
    pub detail: String,
    /// What to do about it (absent when `ok`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fix: Option<String>,
}

impl Check {
    /// An `ok` check.
    pub fn ok(check: impl Into<String>, detail: impl Into<String>) -> Self {
        Self {
            check: check.into(),
            level: Level::Ok,
            detail: detail.into(),
            fix: None,
        }
    }

    /// A `warn` check with its fix.
    pub fn warn(
        check: impl Into<String>,
        detail: impl Into<String>,
        fix: impl Into<String>,
    ) -> Self {
        Self::with_fix(Level::Warn, check, detail, fix)
    }

    /// A `fail` check with its fix.
    pub fn fail(
        check: impl Into<String>,
        detail: impl Into<String>,
        fix: impl Into<String>,
    ) -> Self {
        Self::with_fix(Level::Fail, check, detail, fix)
    }

    fn with_fix(
        level: Level,
        check: impl Into<String>,
        detail: impl Into<String>,
        fix: impl Into<String>,
    ) -> Self {
        Self {
            level,
            fix: Some(fix.into()),
            ..Self::ok(check, detail)
        }
    }
}

/// `doctor --json`: every check and the worst level.
#[derive(Debug, Serialize)]
struct Report<'a> {
    status: Level,
    checks: &'a [Check],
}

/// Runs every check against the server `config` names (connecting itself: an unreachable
/// server is a failed check, not an error) and prints them; the exit code is the worst level.
pub async fn run(
    config: &CliConfig,
    topology: &ResolvedTopology,
    args: &DoctorArgs,
    out: &Output,
) -> anyhow::Result<ExitCode> {
    anyhow::ensure!(
        args.fill_fail >= args.fill_warn,
        "--fill-fail ({}) is below --fill-warn ({}): a fill would fail before it warns",
        args.fill_fail,
        args.fill_warn
    );
    let checks = Progress::during(out, "checking", checks::all(config, topology, args)).await;
    let worst = checks.iter().map(|c| c.level).max().unwrap_or(Level::Ok);
    if out.is_json() {
        out.json(&Report {
            status: worst,
            checks: &checks,
        })?;
    } else {
        let mut table = Table::new(["CHECK", "RESULT", "DETAIL", "FIX"]);
        for c in &checks {
            table.painted_row(vec![
                output::printable(&c.check),
                c.level.cell(),
                output::printable(&c.detail),
                output::printable(c.fix.as_deref().unwrap_or("")),
            ]);
        }
        let count = |level: Level| checks.iter().filter(|c| c.level == level).count();
        println!(
            "{}\n{} ok, {} warn, {} fail",
            table.render(),
            count(Level::Ok),
            count(Level::Warn),
            count(Level::Fail)
        );
    }
    Ok(ExitCode::from(match worst {
        Level::Ok => 0,
        Level::Warn => 1,
        Level::Fail => 2,
    }))
}
