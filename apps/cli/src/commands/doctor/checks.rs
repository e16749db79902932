//! The checks `switchyard doctor` runs, each returning [`Check`]s; a check that cannot run
//! because an earlier one failed (no connection, no JetStream) is left out rather than
//! failed twice.

use std::time::Duration;

use async_nats::jetstream;
use switchyard_keys::TenantKey;
use switchyard_registry::{Store, TenantRecord};
use switchyard_topology::{
    BucketName, MIN_SERVER_VERSION, Outcome, PINNED_SERVER_VERSION, ProvisionItem,
    ResolvedTopology, SERVER_FIX, StreamName, check, check_server_limits, check_tenant,
    parse_server_version, status,
};

use super::{Check, DoctorArgs, permissions};
use crate::commands::tenants;
use crate::config::CliConfig;
use crate::output::{error_chain, truncate};

/// How long one readiness probe may take.
const READY_TIMEOUT: Duration = Duration::from_secs(5);

/// Every check, in the order the module docs give.
pub async fn all(config: &CliConfig, topology: &ResolvedTopology, args: &DoctorArgs) -> Vec<Check> {
    let mut checks = Vec::new();
    let client = match switchyard_runtime::connect(&config.nats).await {
        Ok(client) => client,
        Err(err) => {
            checks.push(Check::fail(
                "connection",
                format!("cannot connect: {}", error_chain(&err)),
                "start nats-server, or point --server (or nats.url in the CLI config) at it",
            ));
            checks.extend(readiness(&args.ready).await);
            return checks;
        }
    };
    let info = client.server_info();
    checks.push(Check::ok(
        "connection",
        format!(
            "connected to {} ({}:{})",
            info.server_name, info.host, info.port
        ),
    ));
    checks.push(version(&info.version));
    let js = switchyard_runtime::jetstream(client.clone(), &config.nats);
    let jetstream_ok = match js.query_account().await {
        Ok(account) => {
            checks.push(Check::ok(
                "jetstream",
                format!(
                    "enabled: {} streams, {} consumers, {} stored",
                    account.streams,
                    account.consumers,
                    crate::commands::status::human_bytes(account.storage)
                ),
            ));
            true
        }
        Err(err) => {
            checks.push(Check::fail(
                "jetstream",
                format!("not available: {}", error_chain(&err)),
                "enable JetStream in the nats-server config (a `jetstream { … }` block, as \
                 nats/server/*.conf have) and restart the server; with accounts, give the \
                 user's account JetStream limits",
            ));
            false
        }
    };
    checks.push(max_payload(info.max_payload, topology));
    if jetstream_ok {
        checks.extend(declared(&js, topology).await);
        checks.extend(fill(&js, topology, args).await);
    }
    let answered = permissions::ask(&client).await;
    checks.push(clock(&answered, args));
    checks.extend(readiness(&args.ready).await);
    checks.extend(permissions::check(
        &answered,
        topology,
        &config.nats.inbox_prefix,
    ));
    checks
}

/// The server's version against the minimum and the pinned one.
fn version(version: &str) -> Check {
    let (major, minor, patch) = MIN_SERVER_VERSION;
    let minimum = format!("{major}.{minor}.{patch}");
    let pinned = PINNED_SERVER_VERSION.trim();
    match parse_server_version(version) {
        None => Check::warn(
            "server version",
            format!("cannot read the server's version {version:?}"),
            format!("run nats-server {pinned} (at least {minimum})"),
        ),
        Some(v) if v < MIN_SERVER_VERSION => Check::fail(
            "server version",
            format!(
                "nats-server {version} is older than {minimum}, which the topology needs \
                 (message schedules, per-key TTLs)"
            ),
            format!("upgrade nats-server to {pinned} (`make nats-server` installs it)"),
        ),
        Some(v) if parse_server_version(pinned).is_some_and(|p| v < p) => Check::warn(
            "server version",
            format!("nats-server {version}; Switchyard is tested with {pinned}"),
            format!("upgrade nats-server to {pinned}"),
        ),
        Some(_) => Check::ok("server version", format!("nats-server {version}")),
    }
}

/// The server's `max_payload` against the declared message sizes.
fn max_payload(server_max_payload: usize, topology: &ResolvedTopology) -> Check {
    let problems = check_server_limits(server_max_payload, topology);
    if problems.is_empty() {
        return Check::ok(
            "max payload",
            format!(
                "the server's max_payload ({server_max_payload} bytes) fits every declared \
                 message size"
            ),
        );
    }
    let found: Vec<String> = problems.iter().map(ToString::to_string).collect();
    Check::fail("max payload", found.join("; "), SERVER_FIX)
}

/// One check per declared item that is missing or drifted, or one `ok` for all.
async fn declared(js: &jetstream::Context, topology: &ResolvedTopology) -> Vec<Check> {
    let mut items = match check(js, topology).await {
        Ok(report) => report.items,
        Err(err) => {
            return vec![Check::fail(
                "topology",
                format!("cannot read the declared resources: {}", error_chain(&err)),
                "check the user's permissions (below) and the server's health",
            )];
        }
    };
    let mut tenants_seen = 0;
    if let Ok((_, bucket)) = topology.open_bucket(js, BucketName::Tenants).await {
        let store: Store<TenantKey, TenantRecord> = Store::new(bucket);
        for (key, record) in store.list(">").await.unwrap_or_default() {
            tenants_seen += 1;
            let quota = record.as_ref().map(tenants::quota).unwrap_or_default();
            match check_tenant(js, topology, &key.tenant, quota).await {
                Ok(report) => items.extend(report.items),
                Err(err) => items.push(ProvisionItem {
                    kind: "stream",
                    name: format!("{} (tenant {})", StreamName::Ingress.base(), key.tenant),
                    outcome: Outcome::Missing,
                    changes: vec![switchyard_topology::Change {
                        field: "error",
                        declared: String::new(),
                        actual: error_chain(&err),
                        fixable: false,
                    }],
                }),
            }
        }
    }
    let total = items.len();
    let checks: Vec<Check> = items
        .into_iter()
        .filter(|item| item.outcome != Outcome::Unchanged)
        .map(|item| {
            let what = format!("{} {}", item.kind, item.name);
            let changes: Vec<String> = item
                .changes
                .iter()
                .map(|c| format!("{}: declared {} but is {}", c.field, c.declared, c.actual))
                .collect();
            match item.outcome {
                Outcome::Missing => Check::fail(
                    what,
                    "missing",
                    "run `switchyard provision` (creates what is missing, changes nothing else)",
                ),
                Outcome::Unfixable => Check::fail(
                    what,
                    format!("drifted: {}", changes.join("; ")),
                    "these fields cannot change in place: drain it, delete it and run \
                     `switchyard provision` (recreating loses its contents)",
                ),
                _ => Check::warn(
                    what,
                    format!("drifted: {}", changes.join("; ")),
                    "run `switchyard provision --fix` to update it in place",
                ),
            }
        })
        .collect();
    if checks.is_empty() {
        vec![Check::ok(
            "topology",
            format!(
                "all {total} declared streams, consumers and buckets exist as declared \
                 (registered tenants: {tenants_seen})"
            ),
        )]
    } else {
        checks
    }
}

/// How full every stream, bucket and tenant quota is.
async fn fill(
    js: &jetstream::Context,
    topology: &ResolvedTopology,
    args: &DoctorArgs,
) -> Vec<Check> {
    let report = match status(js, topology).await {
        Ok(report) => report,
        Err(err) => {
            return vec![Check::fail(
                "fill",
                format!("cannot read the streams' state: {}", error_chain(&err)),
                "check the user's permissions (below) and the server's health",
            )];
        }
    };
    let mut levels: Vec<(String, f64, &'static str)> = Vec::new();
    for s in report.streams.iter().filter(|s| s.present) {
        levels.push((
            format!("stream {}", s.name),
            s.fill_pct,
            "raise its max_bytes / max_msgs in nats/topology.toml and run `switchyard provision \
             --fix`, or find what stops its consumer (`switchyard status`)",
        ));
    }
    for b in report.buckets.iter().filter(|b| b.present) {
        levels.push((
            format!("bucket {}", b.name),
            b.fill_pct,
            "raise its max_bytes in nats/topology.toml and run `switchyard provision --fix`",
        ));
    }
    for t in &report.tenant_streams {
        levels.push((
            format!("tenant {} quota", t.tenant),
            t.fill_pct,
            "the tenant's publishes are refused once full: raise its quota (`switchyard \
             tenants enable <tenant> --max-bytes … --max-msgs …`) or find what stops its \
             ingress",
        ));
    }
    let mut checks: Vec<Check> = levels
        .iter()
        .filter(|(_, pct, _)| *pct >= args.fill_warn)
        .map(|(what, pct, fix)| {
            let detail = format!("{pct:.1}% full");
            if *pct >= args.fill_fail {
                Check::fail(what.clone(), detail, *fix)
            } else {
                Check::warn(what.clone(), detail, *fix)
            }
        })
        .collect();
    if checks.is_empty() {
        let fullest = levels
            .iter()
            .max_by(|a, b| a.1.total_cmp(&b.1))
            .map_or("nothing stored".to_owned(), |(what, pct, _)| {
                format!("fullest: {what} at {pct:.1}%")
            });
        checks.push(Check::ok(
            "fill",
            format!("everything under {:.0}% ({fullest})", args.fill_warn),
        ));
    }
    checks
}

/// The server's clock against this host's: the server stamps its answer on
/// `$SYS.REQ.USER.INFO` with its time; the host's is taken half-way through the round trip.
fn clock(answered: &permissions::Answered, args: &DoctorArgs) -> Check {
    let fix = "synchronise the clocks of this host and the servers (chrony or \
               systemd-timesyncd): ages in `dlq ls --since`, replay markers and job leases \
               compare them";
    let Some(server) = answered.server_time else {
        return Check::warn(
            "clock",
            match &answered.info {
                Err(reason) => format!("cannot ask the server for its time: {reason}"),
                Ok(_) => "the server's answer carries no time".to_owned(),
            },
            fix,
        );
    };
    let host = answered.sent_at + answered.round_trip / 2;
    let skew = server - host;
    let skew_ms = skew.whole_milliseconds().unsigned_abs();
    let detail = format!(
        "the server's clock is {} ms {} this host's (round trip {} ms)",
        skew_ms,
        if skew.is_negative() {
            "behind"
        } else {
            "ahead of"
        },
        answered.round_trip.as_millis()
    );
    let warn = u128::from(args.max_skew_ms);
    if skew_ms >= warn.saturating_mul(10) {
        Check::fail("clock", detail, fix)
    } else if skew_ms >= warn {
        Check::warn("clock", detail, fix)
    } else {
        Check::ok("clock", detail)
    }
}

/// Each `--ready` URL must answer 200.
async fn readiness(urls: &[url::Url]) -> Vec<Check> {
    if urls.is_empty() {
        return Vec::new();
    }
    // reqwest is built without a default TLS provider (the workspace picks ring).
    let _ = rustls::crypto::ring::default_provider().install_default();
    let client = match reqwest::Client::builder().timeout(READY_TIMEOUT).build() {
        Ok(client) => client,
        Err(err) => {
            return vec![Check::fail(
                "readiness",
                format!("cannot build an HTTP client: {}", error_chain(&err)),
                "report this as a bug",
            )];
        }
    };
    let mut checks = Vec::new();
    for url in urls {
        let what = format!("ready {url}");
        let fix = "see the service's log; its readiness body names what it waits for";
        match client.get(url.clone()).send().await {
            Ok(response) if response.status() == reqwest::StatusCode::OK => {
                checks.push(Check::ok(what, "200 OK"));
            }
            Ok(response) => {
                let status = response.status();
                let body = response.text().await.unwrap_or_default();
                checks.push(Check::fail(
                    what,
                    format!("{status}: {}", truncate(body.trim(), 200)),
                    fix,
                ));
            }
            Err(err) => checks.push(Check::fail(
                what,
                format!("no answer: {}", error_chain(&err)),
                "is the service running, and is this its `http.listen` address?",
            )),
        }
    }
    checks
}
