//! `switchyard routes set|get|ls|rm`: the routes in the `routes` bucket, keyed
//! `<tenant>.<team or _>.<platform>`. Routes are validated before they are written (a webhook
//! secret must be `whsec_` + base64). Webhook secrets are never printed, and a webhook URL is
//! shown as `scheme://host[:port]` only ([`Route::redacted`], [`Route::describe`]): user info,
//! path and query may hold credentials.
//!
//! For a tenant with encryption on, `set` and `rotate-secret` store every secret sealed under
//! the tenant's current data key (`commands::sealing`), which needs `--kek-file`; `get` and `ls`
//! show a sealed secret as `enc:v1:<data key id>:***`.

use anstream::{print, println};
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use async_nats::jetstream;
use clap::{ArgGroup, Subcommand};
use serde::Serialize;
use serde_json::{Map, Value, json};
use switchyard_keys::{
    Address, KvKey, PlatformId, RouteKey, RouteTeam, TenantId, kv::tenant_filter,
};
use switchyard_registry::{Route, Store, WebhookSecret, Written};
use switchyard_topology::{BucketName, ResolvedTopology};

use crate::commands::encryption::KekArgs;
use crate::commands::sealing::{opened_old, secret_sealer};
use crate::output::{self, Output, Table, fields};
use crate::{parse, resources};
use switchyard_crypt::SecretPlace;

/// Arguments of `routes`.
#[derive(Debug, clap::Args)]
pub struct RoutesArgs {
    /// The routes command.
    #[command(subcommand)]
    pub command: RoutesCommand,
}

/// The `routes` commands.
#[derive(Debug, Subcommand)]
pub enum RoutesCommand {
    /// Create or replace the route of (tenant, team or `_`, platform).
    Set(SetArgs),
    /// Show the route a message for (tenant, team, platform) would use (secret and URL
    /// credentials redacted).
    Get(KeyArgs),
    /// List routes.
    Ls(LsArgs),
    /// Remove a route.
    Rm(KeyArgs),
    /// Rotate a webhook route's signing secret: the new one signs every delivery from now on,
    /// the current one keeps signing too until the overlap ends (receivers holding either
    /// verify); secrets are never printed, and the key's history is purged of old ones.
    RotateSecret(RotateArgs),
}

/// Arguments of `routes rotate-secret`.
#[derive(Debug, clap::Args)]
#[command(group(ArgGroup::new("what").required(true).multiple(true)
    .args(["secret", "secret_file", "revoke_previous"])))]
pub struct RotateArgs {
    /// Which route (its own key: no fallback to the tenant's default).
    #[command(flatten)]
    pub key: KeyArgs,
    /// The new secret and its overlap.
    #[command(flatten)]
    pub secret: SecretArgs,
    /// The key-encryption key, to seal the secrets of a tenant with encryption on.
    #[command(flatten)]
    pub kek: KekArgs,
}

/// A signing-secret rotation (`routes rotate-secret`, `destinations rotate-secret`).
#[derive(Debug, clap::Args)]
pub struct SecretArgs {
    /// The new Standard Webhooks signing secret (`whsec_` + base64 of at least 16 bytes). On
    /// the command line it shows in `ps` and shell history: prefer --secret-file.
    #[arg(long, value_name = "whsec_…", conflicts_with = "secret_file")]
    pub secret: Option<String>,
    /// Read the new secret from this file (`-`: standard input), whitespace trimmed.
    #[arg(long, value_name = "FILE")]
    pub secret_file: Option<PathBuf>,
    /// How long the current secret keeps signing (an age: 30m, 24h, 7d; at most 30d; `0s`
    /// stops it at once).
    #[arg(long, value_name = "AGE", default_value = "24h", value_parser = overlap)]
    pub overlap: time::Duration,
    /// Stop every previous secret now (one that leaked, an overlap no longer needed); with a
    /// new secret, the current one stops too (no overlap).
    #[arg(long)]
    pub revoke_previous: bool,
}

impl SecretArgs {
    /// The new secret, read from the command line or its file.
    pub(crate) fn new_secret(&self) -> anyhow::Result<Option<String>> {
        read_inline_or_file(
            self.secret.as_ref(),
            self.secret_file.as_ref(),
            "--secret-file",
        )
    }

    /// Applies the rotation to `webhook` at `now` (`new`: from [`SecretArgs::new_secret`]).
    ///
    /// Errors: the new secret is not a secret, is the current or a previous one, or the
    /// overlap is out of range.
    pub(crate) fn apply(
        &self,
        webhook: &mut switchyard_registry::WebhookRoute,
        new: Option<&String>,
        now: time::OffsetDateTime,
    ) -> Result<(), switchyard_registry::RouteError> {
        if let Some(new) = new {
            let overlap = if self.revoke_previous {
                time::Duration::ZERO
            } else {
                self.overlap
            };
            webhook.rotate(WebhookSecret(new.clone()), overlap, now)?;
        }
        if self.revoke_previous {
            webhook.revoke_previous();
        }
        Ok(())
    }
}

/// What a rotation left signing, for people: `rotated the signing secret of` / `revoked the
/// previous signing secrets of`, and `only the new secret signs` / `1 previous secret signs
/// too, until …`.
pub(crate) fn rotation_summary(
    route: &Route,
    rotated: bool,
    now: time::OffsetDateTime,
) -> (&'static str, String) {
    let signing: Vec<time::OffsetDateTime> = match route {
        Route::Webhook(w) => w
            .previous_secrets
            .iter()
            .map(|p| p.expires_at)
            .filter(|at| *at > now)
            .collect(),
        Route::Nats(_) => Vec::new(),
    };
    let also = match signing.iter().max() {
        None => "only the new secret signs".to_owned(),
        Some(last) if signing.len() == 1 => format!(
            "1 previous secret signs too, until {}",
            parse::show_time(*last)
        ),
        Some(last) => format!(
            "{} previous secrets sign too, the last until {}",
            signing.len(),
            parse::show_time(*last)
        ),
    };
    let did = if rotated {
        "rotated the signing secret of"
    } else {
        "revoked the previous signing secrets of"
    };
    (did, also)
}

/// A value (a secret, a filter) given inline or read from a file (`-`: standard input),
/// whitespace trimmed; `flag` names the file's flag in errors.
pub(crate) fn read_inline_or_file(
    inline: Option<&String>,
    file: Option<&PathBuf>,
    flag: &str,
) -> anyhow::Result<Option<String>> {
    let Some(file) = file else {
        return Ok(inline.cloned());
    };
    let text = if file.as_os_str() == "-" {
        std::io::read_to_string(std::io::stdin())
            .with_context(|| format!("reading {flag} from stdin"))?
    } else {
        std::fs::read_to_string(file)
            .with_context(|| format!("reading {flag} {}", file.display()))?
    };
    let text = text.trim();
    anyhow::ensure!(!text.is_empty(), "{flag} {} is empty", file.display());
    Ok(Some(text.to_owned()))
}

/// Parses `--overlap` (an age, `0s` included).
fn overlap(raw: &str) -> Result<time::Duration, String> {
    parse::age(raw)
        .and_then(|age| time::Duration::try_from(age).ok())
        .ok_or_else(|| format!("{raw:?} is not an age such as 30m, 24h or 7d"))
}

/// Which route: tenant, team (or `_`), platform.
#[derive(Debug, Clone, clap::Args)]
pub struct KeyArgs {
    /// Tenant id.
    pub tenant: TenantId,
    /// Team id, or `_` for the tenant's default route for the platform.
    #[arg(value_parser = parse::route_team)]
    pub team: RouteTeam,
    /// Platform id.
    pub platform: PlatformId,
}

impl KeyArgs {
    fn key(&self) -> RouteKey {
        RouteKey {
            tenant: self.tenant.clone(),
            team: self.team.clone(),
            platform: self.platform.clone(),
        }
    }
}

/// Arguments of `routes set`: which route, and its target.
#[derive(Debug, clap::Args)]
pub struct SetArgs {
    /// Which route.
    #[command(flatten)]
    pub key: KeyArgs,
    /// Where it delivers.
    #[command(flatten)]
    pub target: TargetArgs,
    /// The key-encryption key, to seal the secrets of a tenant with encryption on.
    #[command(flatten)]
    pub kek: KekArgs,
}

/// A delivery target given as flags: a webhook, a NATS subject, or the whole route as JSON.
/// Shared by `routes set` and `destinations set` (a destination's target is a route).
#[derive(Debug, clap::Args)]
#[command(group(ArgGroup::new("target").required(true).args(["webhook", "nats", "route_json"])))]
#[command(group(ArgGroup::new("secret_source").args(["secret", "secret_file"])))]
pub struct TargetArgs {
    /// Deliver by HTTP POST to this URL (signed; needs --secret or --secret-file).
    #[arg(long, value_name = "URL", requires = "secret_source")]
    pub webhook: Option<String>,
    /// The Standard Webhooks signing secret (`whsec_` + base64 of at least 16 bytes). On the
    /// command line it shows in `ps` and shell history: prefer --secret-file.
    #[arg(long, value_name = "whsec_…", requires = "webhook")]
    pub secret: Option<String>,
    /// Read the signing secret from this file (`-`: standard input), surrounding whitespace
    /// trimmed.
    #[arg(long, value_name = "FILE", requires = "webhook")]
    pub secret_file: Option<PathBuf>,
    /// Also sign with this Ed25519 private key (`whsk_` + base64 of its 32-byte seed): each
    /// delivery then carries a `v1a` signature receivers verify with the public key alone
    /// (`routes get` shows it, `whpk_…`).
    #[arg(
        long,
        value_name = "whsk_…",
        requires = "webhook",
        conflicts_with = "signing_key_file"
    )]
    pub signing_key: Option<String>,
    /// Read the Ed25519 private key from this file (`-`: standard input).
    #[arg(long, value_name = "FILE", requires = "webhook")]
    pub signing_key_file: Option<PathBuf>,
    /// An extra request header for the webhook, `K=V` (repeatable).
    #[arg(long = "header", value_name = "K=V", value_parser = parse::key_value, requires = "webhook")]
    pub headers: Vec<(String, String)>,
    /// Deliver by publishing to this NATS subject (no wildcards).
    #[arg(long, value_name = "SUBJECT")]
    pub nats: Option<String>,
    /// With --nats: publish through JetStream and wait for the stream's ack.
    #[arg(long, requires = "nats")]
    pub jetstream: bool,
    /// With --nats: publish on core NATS without waiting for a reply (flushed counts as
    /// delivered, even with nobody subscribed).
    #[arg(long, requires = "nats", conflicts_with = "jetstream")]
    pub fire_and_forget: bool,
    /// Per-attempt timeout in milliseconds (default 10000).
    #[arg(long, value_name = "MS")]
    pub timeout_ms: Option<u64>,
    /// Attempts in flight at once for this target (default 16).
    #[arg(long, value_name = "N")]
    pub max_in_flight: Option<usize>,
    /// The whole route as JSON, e.g. '{"type":"nats","subject":"sink.acme"}'. (Named
    /// --route-json because --json is the global output flag.)
    #[arg(long, value_name = "JSON", conflicts_with_all = ["timeout_ms", "max_in_flight"])]
    pub route_json: Option<String>,
}

impl TargetArgs {
    /// The route these arguments describe (defaults filled in by the route's own decoder).
    pub(crate) fn route(&self) -> anyhow::Result<Route> {
        if let Some(raw) = &self.route_json {
            return serde_json::from_str(raw).context("--route-json is not a valid route");
        }
        let mut route = Map::new();
        let secret = read_inline_or_file(
            self.secret.as_ref(),
            self.secret_file.as_ref(),
            "--secret-file",
        )?;
        let signing_key = read_inline_or_file(
            self.signing_key.as_ref(),
            self.signing_key_file.as_ref(),
            "--signing-key-file",
        )?;
        if let (Some(url), Some(secret)) = (&self.webhook, &secret) {
            route.insert("type".into(), json!("webhook"));
            route.insert("url".into(), json!(url));
            route.insert("secret".into(), json!(secret));
            if let Some(key) = &signing_key {
                route.insert("signing_key".into(), json!(key));
            }
            let headers: Map<String, Value> = self
                .headers
                .iter()
                .map(|(k, v)| (k.clone(), json!(v)))
                .collect();
            route.insert("headers".into(), Value::Object(headers));
        } else if let Some(subject) = &self.nats {
            route.insert("type".into(), json!("nats"));
            route.insert("subject".into(), json!(subject));
            route.insert("jetstream".into(), json!(self.jetstream));
            route.insert("fire_and_forget".into(), json!(self.fire_and_forget));
        }
        if let Some(ms) = self.timeout_ms {
            route.insert("timeout_ms".into(), json!(ms));
        }
        if let Some(n) = self.max_in_flight {
            route.insert("max_in_flight".into(), json!(n));
        }
        serde_json::from_value(Value::Object(route)).context("building the route")
    }
}

/// Carries a replaced webhook target's rotation overlap into its replacement when the secret
/// stays the same (changing the timeout must not cut off receivers still on the old secret); a
/// new secret replaces every old one at once (`routes rotate-secret` gives an overlap).
/// Returns how many earlier secrets stopped signing.
pub(crate) fn keep_previous_secrets(old: Option<Route>, new: &mut Route) -> usize {
    let (Some(Route::Webhook(old)), Route::Webhook(new)) = (old, new) else {
        return 0;
    };
    if old.secret == new.secret && new.previous_secrets.is_empty() {
        new.previous_secrets = old.previous_secrets;
        0
    } else {
        old.previous_secrets.len() + usize::from(old.secret != new.secret)
    }
}

/// Arguments of `routes ls`.
#[derive(Debug, clap::Args)]
pub struct LsArgs {
    /// Only this tenant's routes.
    #[arg(long)]
    pub tenant: Option<TenantId>,
}

/// Runs a `routes` command.
pub async fn run(
    js: &jetstream::Context,
    topology: &ResolvedTopology,
    args: &RoutesArgs,
    out: &Output,
) -> anyhow::Result<ExitCode> {
    let store: Store<RouteKey, Route> =
        Store::new(resources::bucket(js, topology, BucketName::Routes).await?);
    match &args.command {
        RoutesCommand::Set(set) => set_route(js, topology, &store, set, out).await,
        RoutesCommand::Get(key) => get_route(&store, key, out).await,
        RoutesCommand::Ls(ls) => list_routes(&store, ls, out).await,
        RoutesCommand::Rm(key) => remove_route(&store, key, out).await,
        RoutesCommand::RotateSecret(rotate) => {
            rotate_secret(js, topology, &store, rotate, out).await
        }
    }?;
    Ok(ExitCode::SUCCESS)
}

async fn set_route(
    js: &jetstream::Context,
    topology: &ResolvedTopology,
    store: &Store<RouteKey, Route>,
    args: &SetArgs,
    out: &Output,
) -> anyhow::Result<()> {
    let key = args.key.key();
    let refusing = || format!("refusing to write an invalid route to {}", key.render());
    let mut route = args.target.route()?;
    route.validate().with_context(refusing)?;
    let ring = args.kek.ring()?;
    let sealer = secret_sealer(js, topology, &key.tenant, ring.as_ref())
        .await
        .with_context(|| format!("writing route {}", key.render()))?;
    let place = SecretPlace::Route(key.clone());
    let old = opened_old(&sealer, store.get(&key).await?, &place);
    let dropped = keep_previous_secrets(old, &mut route);
    route.validate().with_context(refusing)?;
    sealer.seal(&mut route, &place).with_context(refusing)?;
    let revision = store.put(&key, &route).await?;
    // A replaced route's old secret must not linger in the key's history.
    store.purge_history(&key).await?;
    if out.is_json() {
        out.json(&json!({"key": key.render(), "revision": revision, "route": route.redacted()}))?;
    } else {
        let (kind, target) = route.describe();
        println!(
            "set route {}: {kind} {target} (revision {revision})",
            key.render()
        );
        if dropped > 0 {
            println!(
                "the route's earlier signing secrets stopped signing (`routes rotate-secret` \
                 keeps the old one signing for an overlap)"
            );
        }
    }
    Ok(())
}

async fn get_route(
    store: &Store<RouteKey, Route>,
    args: &KeyArgs,
    out: &Output,
) -> anyhow::Result<()> {
    let requested = args.key();
    let candidates: Vec<RouteKey> = match &args.team {
        RouteTeam::Team(team) => RouteKey::lookup_order(&Address::new(
            args.tenant.clone(),
            team.clone(),
            args.platform.clone(),
        ))
        .to_vec(),
        RouteTeam::Any => vec![requested.clone()],
    };
    let mut found = None;
    for key in candidates {
        if let Some(route) = store.get(&key).await? {
            found = Some((key, route));
            break;
        }
    }
    let Some((matched, route)) = found else {
        let tried = match &args.team {
            RouteTeam::Team(_) => format!(
                "{} nor the tenant's default {}._.{}",
                requested.render(),
                args.tenant,
                args.platform
            ),
            RouteTeam::Any => requested.render(),
        };
        anyhow::bail!("no route for {tried}");
    };
    let shown = route.redacted();
    let public_key = public_key(&route)?;
    if out.is_json() {
        let mut view = json!({
            "requested": requested.render(),
            "matched": matched.render(),
            "route": shown,
        });
        if let Some(public) = &public_key {
            view["public_key"] = json!(public);
        }
        return out.json(&view);
    }
    let key_note = if matched == requested {
        matched.render()
    } else {
        format!(
            "{} (the tenant's default: {} has no route of its own)",
            matched.render(),
            requested.render()
        )
    };
    let mut lines = vec![("key".to_owned(), key_note)];
    target_fields(&shown, public_key.as_deref(), &mut lines);
    print!("{}", fields(&lines));
    Ok(())
}

/// The public half of a webhook target's v1a signing key (`whpk_…`): for receivers, so shown,
/// unlike every secret. `None` too while the key is sealed (its public half is not known
/// without the tenant's data key).
pub(crate) fn public_key(route: &Route) -> anyhow::Result<Option<String>> {
    Ok(match route {
        Route::Webhook(w) => w
            .signing_key
            .as_ref()
            .filter(|k| !k.is_sealed())
            .map(|k| k.public_key())
            .transpose()?,
        Route::Nats(_) => None,
    })
}

/// The `get` lines of a target: `shown` is the [redacted](Route::redacted) route,
/// `public_key` its [`public_key`].
pub(crate) fn target_fields(
    shown: &Route,
    public_key: Option<&str>,
    lines: &mut Vec<(String, String)>,
) {
    match shown {
        Route::Webhook(w) => {
            lines.push(("type".into(), "webhook".into()));
            lines.push(("url".into(), w.url.clone()));
            lines.push(("secret".into(), w.secret.0.clone()));
            lines.push(("timeout_ms".into(), w.timeout_ms.to_string()));
            lines.push(("max_in_flight".into(), w.max_in_flight.to_string()));
            for (name, value) in &w.headers {
                lines.push((format!("header {name}"), value.clone()));
            }
            if let Some(key) = &w.signing_key {
                lines.push(("signing key".into(), format!("{} (v1a)", key.0)));
            }
            if let Some(public) = public_key {
                lines.push(("public key".into(), public.to_owned()));
            }
            for previous in &w.previous_secrets {
                lines.push((
                    "previous secret".into(),
                    format!(
                        "{} (signs until {})",
                        previous.secret.0,
                        parse::show_time(previous.expires_at)
                    ),
                ));
            }
        }
        Route::Nats(n) => {
            lines.push(("type".into(), "nats".into()));
            lines.push(("subject".into(), n.subject.clone()));
            lines.push(("jetstream".into(), n.jetstream.to_string()));
            if n.fire_and_forget {
                lines.push(("fire_and_forget".into(), "true".into()));
            }
            lines.push(("timeout_ms".into(), n.timeout_ms.to_string()));
            lines.push(("max_in_flight".into(), n.max_in_flight.to_string()));
        }
    }
}

/// One row of `routes ls --json`.
#[derive(Debug, Serialize)]
struct RouteRow {
    key: String,
    tenant: String,
    team: String,
    platform: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    route: Option<Route>,
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<String>,
}

async fn list_routes(
    store: &Store<RouteKey, Route>,
    args: &LsArgs,
    out: &Output,
) -> anyhow::Result<()> {
    let filter = args.tenant.as_ref().map_or(">".to_owned(), tenant_filter);
    let routes = store.list(&filter).await?;
    if out.is_json() {
        let rows: Vec<RouteRow> = routes
            .into_iter()
            .map(|(key, route)| RouteRow {
                key: key.render(),
                tenant: key.tenant.to_string(),
                team: key.team.to_string(),
                platform: key.platform.to_string(),
                error: route.as_ref().err().map(ToString::to_string),
                route: route.ok().map(|r| r.redacted()),
            })
            .collect();
        return out.json(&rows);
    }
    if routes.is_empty() {
        match &args.tenant {
            Some(tenant) => println!("no routes for tenant {tenant}"),
            None => println!("no routes"),
        }
        return Ok(());
    }
    let mut table = Table::new(["TENANT", "TEAM", "PLATFORM", "TYPE", "TARGET"]);
    for (key, route) in &routes {
        let (kind, target) = match route {
            Ok(route) => {
                let (kind, target) = route.describe();
                (kind.to_owned(), target)
            }
            Err(err) => ("invalid".to_owned(), output::error_chain(err)),
        };
        table.row([
            key.tenant.to_string(),
            key.team.to_string(),
            key.platform.to_string(),
            kind,
            target,
        ]);
    }
    print!("{}", table.render());
    Ok(())
}

async fn remove_route(
    store: &Store<RouteKey, Route>,
    args: &KeyArgs,
    out: &Output,
) -> anyhow::Result<()> {
    let key = args.key();
    // An unreadable record still exists and may be removed; only a missing one is an error.
    if let Ok(None) = store.get(&key).await {
        anyhow::bail!("no route at {}", key.render());
    }
    store.delete(&key).await?;
    // Keep the delete marker only: the removed route's secret does not linger in history.
    store.purge_history(&key).await?;
    if out.is_json() {
        out.json(&json!({"key": key.render(), "removed": true}))?;
    } else {
        println!("removed route {}", key.render());
    }
    Ok(())
}

async fn rotate_secret(
    js: &jetstream::Context,
    topology: &ResolvedTopology,
    store: &Store<RouteKey, Route>,
    args: &RotateArgs,
    out: &Output,
) -> anyhow::Result<()> {
    let key = args.key.key();
    let new = args.secret.new_secret()?;
    let ring = args.kek.ring()?;
    let sealer = secret_sealer(js, topology, &key.tenant, ring.as_ref())
        .await
        .with_context(|| format!("rotating the secret of route {}", key.render()))?;
    let place = SecretPlace::Route(key.clone());
    // Compare-and-set: a route changed meanwhile is read again, never overwritten blindly.
    for _ in 0..10 {
        let Some((route, revision)) = store.entry(&key).await? else {
            anyhow::bail!(
                "no route at {} (rotate-secret names a route's own key)",
                key.render()
            );
        };
        let Route::Webhook(webhook) = route else {
            anyhow::bail!(
                "route {} delivers over NATS: it has no signing secret",
                key.render()
            );
        };
        // The rotation compares and keeps secrets in clear; the record is sealed again below.
        let mut opened = Route::Webhook(webhook);
        sealer
            .open(&mut opened, &place)
            .with_context(|| format!("opening the secrets of route {}", key.render()))?;
        let Route::Webhook(mut webhook) = opened else {
            unreachable!("opening secrets keeps the route's kind")
        };
        let now = time::OffsetDateTime::now_utc();
        args.secret
            .apply(&mut webhook, new.as_ref(), now)
            .with_context(|| format!("rotating the secret of route {}", key.render()))?;
        let mut route = Route::Webhook(webhook);
        route
            .validate()
            .with_context(|| format!("refusing to write an invalid route to {}", key.render()))?;
        sealer
            .seal(&mut route, &place)
            .with_context(|| format!("refusing to write an invalid route to {}", key.render()))?;
        let Written::Stored(revision) = store.update(&key, &route, revision).await? else {
            continue;
        };
        store.purge_history(&key).await?;
        if out.is_json() {
            return out.json(
                &json!({"key": key.render(), "revision": revision, "route": route.redacted()}),
            );
        }
        let (did, also) = rotation_summary(&route, new.is_some(), now);
        println!("{did} route {} (revision {revision}); {also}", key.render());
        return Ok(());
    }
    anyhow::bail!("route {} keeps changing; try again", key.render())
}
