//! The checks `switchyard doctor` runs, each returning [`Check`]s; a check that cannot run
//! because an earlier one failed (no connection, no JetStream) is left out rather than
//! failed twice.

use std::time::Duration;

use async_nats::ConnectErrorKind;
use async_nats::jetstream;
use async_nats::jetstream::context::AccountErrorKind;
use switchyard_keys::TenantKey;
use switchyard_registry::{Store, TenantRecord};
use switchyard_topology::{
    BucketName, ConsumerName, LimitProblem, MIN_SERVER_VERSION, Outcome, PINNED_SERVER_VERSION,
    ResolvedTopology, SERVER_FIX, TenantQuota, check, check_server_limits, check_tenant,
    parse_server_version, status,
};

use super::{Check, DoctorArgs, Level, permissions};
use crate::commands::tenants;
use crate::config::CliConfig;
use crate::output::{error_chain, truncate};

/// How long one readiness probe may take.
const READY_TIMEOUT: Duration = Duration::from_secs(5);

/// How long a JetStream API request may take before the doctor calls it unanswered.
const JS_TIMEOUT: Duration = Duration::from_secs(3);

/// Every check, in the order the module docs give.
pub async fn all(config: &CliConfig, topology: &ResolvedTopology, args: &DoctorArgs) -> Vec<Check> {
    let mut checks = Vec::new();
    let client = match switchyard_runtime::connect(&config.nats).await {
        Ok(client) => client,
        Err(err) => {
            let fix = match err.connect_kind() {
                Some(
                    ConnectErrorKind::Authentication | ConnectErrorKind::AuthorizationViolation,
                ) => {
                    "check the credentials: nats.user / nats.password, nats.creds_file or \
                      nats.token in the CLI config (or SWITCHYARD_CLI_NATS__*)"
                }
                Some(ConnectErrorKind::Tls) => {
                    "check nats.tls_* in the CLI config against the server's TLS configuration"
                }
                _ => "start nats-server, or point --server (or nats.url in the CLI config) at it",
            };
            checks.push(Check::fail(
                "connection",
                format!("cannot connect: {}", error_chain(&err)),
                fix,
            ));
            checks.extend(readiness(&args.ready).await);
            return checks;
        }
    };
    let info = client.server_info();
    checks.push(Check::ok(
        "connection",
        format!(
                "connected to {} (server {})",
                config
                    .nats
                    .urls()
                    .iter()
                    .map(|raw| url::Url::parse(raw)
                        .map_or_else(|_| "***".to_owned(), |u| shown_url(&u)))
                    .collect::<Vec<_>>()
                    .join(","),
                info.server_name
            ),
    ));
    checks.push(version(&info.version));
    let mut js = switchyard_runtime::jetstream(client.clone(), &config.nats);
    // A refused request (no permission to publish to the JetStream API) gets no answer at
    // all: wait seconds for it, not the configured request timeout.
    js.set_timeout(JS_TIMEOUT);
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
            let (detail, fix) = match err.kind() {
                AccountErrorKind::TimedOut => (
                    format!(
                        "no answer from the JetStream API in {} s",
                        JS_TIMEOUT.as_secs()
                    ),
                    "the user may not publish to $JS.API.> or receive its replies (see the \
                     permission checks below; the server logs a Permissions Violation), or the \
                     server is overloaded",
                ),
                _ => (
                    format!("not available: {}", error_chain(&err)),
                    "enable JetStream in the nats-server config (a `jetstream { … }` block, as \
                     nats/server/*.conf have) and restart the server; with accounts, give the \
                     user's account JetStream limits",
                ),
            };
            checks.push(Check::fail("jetstream", detail, fix));
            false
        }
    };
    let payload = max_payload(info.max_payload, topology);
    let payload_ok = payload.level == Level::Ok;
    checks.push(payload);
    if jetstream_ok {
        checks.extend(declared(&js, topology, payload_ok).await);
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
    let found: Vec<String> = problems.iter().map(LimitProblem::summary).collect();
    Check::fail(
        "max payload",
        found.join("; "),
        format!("{SERVER_FIX} (or lower those streams' max_msg_size in nats/topology.toml)"),
    )
}

/// One `fail` listing every missing declared item, one check per drifted item, a `warn` per
/// unreadable tenant record; or one `ok` for all. `payload_ok`: whether `provision` can run
/// now (it refuses while the server's `max_payload` is too small).
async fn declared(
    js: &jetstream::Context,
    topology: &ResolvedTopology,
    payload_ok: bool,
) -> Vec<Check> {
    let mut items = match check(js, topology).await {
        Ok(report) => report.items,
        Err(err) => return vec![cannot_read("topology", "the declared resources", &err)],
    };
    let mut checks = Vec::new();
    let mut tenants_seen = 0;
    // Per-tenant consumers whose state nats-server keeps in memory: a server restart removes
    // them, and the stages create them again when they next read the tenant.
    let mut recreated_by_services: Vec<String> = Vec::new();
    if let Ok((_, bucket)) = topology.open_bucket(js, BucketName::Tenants).await {
        let store: Store<TenantKey, TenantRecord> = Store::new(bucket);
        let registered = match store.list(">").await {
            Ok(registered) => registered,
            Err(err) => return vec![cannot_read("topology", "the tenant registry", &err)],
        };
        for (key, record) in registered {
            tenants_seen += 1;
            let quota = match &record {
                Ok(record) => tenants::quota(record),
                Err(err) => {
                    checks.push(Check::warn(
                        format!("tenant {}", key.tenant),
                        format!("its record is unreadable: {}", error_chain(err)),
                        format!(
                            "rewrite it: `switchyard tenants enable {}` (its stream is checked \
                             with the default quota)",
                            key.tenant
                        ),
                    ));
                    TenantQuota::default()
                }
            };
            match check_tenant(js, topology, &key.tenant, quota).await {
                Ok(report) => {
                    items.extend(report.items);
                    recreated_by_services.extend(
                        ConsumerName::ALL
                            .iter()
                            .filter_map(|&name| topology.tenant_consumer(name, &key.tenant))
                            .filter(|c| c.config.memory_storage)
                            .map(|c| {
                                let durable = c.config.durable_name.unwrap_or_default();
                                format!("{}/{durable}", c.stream)
                            }),
                    );
                }
                Err(err) => {
                    return vec![cannot_read(
                        "topology",
                        &format!("tenant {}'s streams", key.tenant),
                        &err,
                    )];
                }
            }
        }
    }
    let total = items.len();
    let (mut recreated, mut missing) = (Vec::new(), Vec::new());
    for item in items.iter().filter(|item| item.outcome == Outcome::Missing) {
        let shown = format!("{} {}", item.kind, item.name);
        if item.kind == "consumer" && recreated_by_services.contains(&item.name) {
            recreated.push(shown);
        } else {
            missing.push(shown);
        }
    }
    if !recreated.is_empty() {
        checks.push(Check::warn(
            "tenant consumers",
            format!(
                "{} missing: {} (their state is kept in nats-server's memory, so a server \
                 restart removes them; the services create them again as soon as they \
                 reconnect)",
                recreated.len(),
                recreated.join(", ")
            ),
            "nothing, right after a server restart; if they stay missing, check that ingress \
             (and backpressure, for a backlog) is running, or run `switchyard provision`",
        ));
    }
    if !missing.is_empty() {
        checks.push(Check::fail(
            "topology",
            format!(
                "{} of {total} declared items are missing: {}",
                missing.len(),
                missing.join(", ")
            ),
            if payload_ok {
                "run `switchyard provision` (creates what is missing; beyond that it only retires \
                 an emptied stream of an earlier layout, docs/operations.md)"
            } else {
                "fix max payload (above), then run `switchyard provision`"
            },
        ));
    }
    for item in items
        .iter()
        .filter(|item| matches!(item.outcome, Outcome::Drifted | Outcome::Unfixable))
    {
        let what = format!("{} {}", item.kind, item.name);
        let changes: Vec<String> = item.changes.iter().map(ToString::to_string).collect();
        let detail = format!("drifted: {}", changes.join("; "));
        checks.push(if item.outcome == Outcome::Unfixable {
            Check::fail(
                what,
                detail,
                "these fields cannot change in place: drain it, delete it and run \
                 `switchyard provision` (recreating loses its contents)",
            )
        } else {
            Check::warn(
                what,
                detail,
                "run `switchyard provision --fix` to update it in place",
            )
        });
    }
    if checks.is_empty() {
        checks.push(Check::ok(
            "topology",
            format!(
                "all {total} declared streams, consumers and buckets exist as declared \
                 (registered tenants: {tenants_seen})"
            ),
        ));
    }
    checks
}

/// A check that could not read what it checks.
fn cannot_read(check: &str, what: &str, err: &(dyn std::error::Error + 'static)) -> Check {
    Check::fail(
        check,
        format!("cannot read {what}: {}", error_chain(err)),
        "check the user's permissions (below) and the server's health",
    )
}

/// How full every stream, bucket and tenant quota is.
async fn fill(
    js: &jetstream::Context,
    topology: &ResolvedTopology,
    args: &DoctorArgs,
) -> Vec<Check> {
    let report = match status(js, topology).await {
        Ok(report) => report,
        Err(err) => return vec![cannot_read("fill", "the streams' state", &err)],
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

/// The most of a readiness answer's body that is read (it names what the service waits for).
const READY_BODY_BYTES: usize = 4096;

/// `url` as it may be shown: without user, password, query or fragment (a probe URL may carry
/// a token, as route URLs may).
pub fn shown_url(url: &url::Url) -> String {
    let mut shown = url.clone();
    let _ = shown.set_username("");
    let _ = shown.set_password(None);
    shown.set_query(None);
    shown.set_fragment(None);
    shown.to_string()
}

/// Each `--ready` URL must answer 200 itself (redirects are not followed).
async fn readiness(urls: &[url::Url]) -> Vec<Check> {
    if urls.is_empty() {
        return Vec::new();
    }
    // reqwest is built without a default TLS provider (the workspace picks ring).
    let _ = rustls::crypto::ring::default_provider().install_default();
    let client = match reqwest::Client::builder()
        .timeout(READY_TIMEOUT)
        .redirect(reqwest::redirect::Policy::none())
        .build()
    {
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
        let what = format!("ready {}", shown_url(url));
        let fix = "see the service's log; its readiness body names what it waits for";
        match client.get(url.clone()).send().await {
            Ok(response) if response.status() == reqwest::StatusCode::OK => {
                checks.push(Check::ok(what, "200 OK"));
            }
            Ok(mut response) => {
                let status = response.status();
                let mut body = Vec::new();
                while body.len() < READY_BODY_BYTES {
                    match response.chunk().await {
                        Ok(Some(chunk)) => body.extend_from_slice(&chunk),
                        _ => break,
                    }
                }
                body.truncate(READY_BODY_BYTES);
                let body = String::from_utf8_lossy(&body);
                checks.push(Check::fail(
                    what,
                    format!("{status}: {}", truncate(body.trim(), 200)),
                    fix,
                ));
            }
            Err(err) => checks.push(Check::fail(
                what,
                format!("no answer: {}", error_chain(&err.without_url())),
                "is the service running, and is this its probes address (`http.listen`, \
                 ingress's `http.probes_listen`)?",
            )),
        }
    }
    checks
}
