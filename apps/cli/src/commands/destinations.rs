//! `switchyard destinations set|get|ls|rm|disable|enable`: a tenant's destinations (fan-out subscriptions) in
//! the `destinations` bucket, keyed `<tenant>.<destination>`. A destination's target is a route
//! and is given with the same flags as `routes set` ([`TargetArgs`]); its subscription (platforms,
//! teams, event types, a content filter) is validated before anything is written. Secrets are
//! never printed and a webhook URL is shown as `scheme://host[:port]` only
//! ([`Destination::redacted`]), as for routes. For a tenant with encryption on, `set` and
//! `rotate-secret` store the target's secrets sealed (`commands::sealing`; `--kek-file`).

use anstream::{print, println};
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use async_nats::jetstream;
use clap::Subcommand;
use serde::Serialize;
use switchyard_filter::Filter;
use switchyard_keys::{
    BreakerKey, DestinationId, DestinationKey, KvKey, PlatformId, TeamId, TenantId,
    kv::tenant_filter,
};
use switchyard_registry::destination::MAX_DESTINATIONS;
use switchyard_registry::{
    BreakerRecord, Changed, Destination, Disabled, DisabledBy, RateLimit, Store, StoreError,
    Subscription,
};
use switchyard_service::events::EventLog;
use switchyard_subjects::EventKind;
use switchyard_topology::{BucketName, ResolvedTopology};

use crate::commands::encryption::KekArgs;
use crate::commands::routes::{
    TargetArgs, keep_previous_secrets, public_key, read_inline_or_file, target_fields,
};
use crate::commands::sealing::{opened_old, secret_sealer};
use crate::output::{self, Output, Table, fields};
use crate::resources;
use switchyard_crypt::{SecretPlace, SecretSealer};

/// Arguments of `destinations`.
#[derive(Debug, clap::Args)]
pub struct DestinationsArgs {
    /// The destinations command.
    #[command(subcommand)]
    pub command: DestinationsCommand,
}

/// The `destinations` commands.
#[derive(Debug, Subcommand)]
pub enum DestinationsCommand {
    /// Create or replace a tenant's destination: where its copies go (flags as for `routes
    /// set`) and which of the tenant's messages it takes (every part ANDed; none given: all).
    Set(Box<SetArgs>),
    /// Show a destination (secrets and URL credentials redacted).
    Get(KeyArgs),
    /// List destinations, of every tenant or of one.
    Ls(LsArgs),
    /// Remove a destination.
    Rm(KeyArgs),
    /// Disable a destination: its copies are parked in `EGRESS` (not attempted, not
    /// dead-lettered) until it is enabled again.
    Disable(DisableArgs),
    /// Enable a disabled destination (by an operator, or by egress because it stayed down):
    /// its parked copies are delivered within `[egress] park_recheck_secs`.
    Enable(KeyArgs),
    /// Give a webhook destination a new signing secret; the current one keeps signing too for
    /// --overlap (every delivery carries both signatures), so receivers switch at their pace.
    RotateSecret(RotateArgs),
}

/// Arguments of `destinations rotate-secret`.
#[derive(Debug, clap::Args)]
pub struct RotateArgs {
    /// Which destination.
    #[command(flatten)]
    pub key: KeyArgs,
    /// The new secret and its overlap.
    #[command(flatten)]
    pub secret: crate::commands::routes::SecretArgs,
    /// The key-encryption key, to seal the secrets of a tenant with encryption on.
    #[command(flatten)]
    pub kek: KekArgs,
}

/// Arguments of `destinations disable`.
#[derive(Debug, clap::Args)]
pub struct DisableArgs {
    /// Which destination.
    #[command(flatten)]
    pub key: KeyArgs,
    /// Why, for the people who will read `destinations get` (at most 200 characters).
    #[arg(long, default_value = "disabled by an operator")]
    pub reason: String,
}

/// Which destination: tenant and destination id.
#[derive(Debug, Clone, clap::Args)]
pub struct KeyArgs {
    /// Tenant id.
    pub tenant: TenantId,
    /// Destination id, unique within the tenant (`orders-hook`, `audit`).
    pub destination: DestinationId,
}

impl KeyArgs {
    fn key(&self) -> DestinationKey {
        DestinationKey {
            tenant: self.tenant.clone(),
            destination: self.destination.clone(),
        }
    }
}

/// Arguments of `destinations set`: the target, as for `routes set`, and the subscription.
#[derive(Debug, clap::Args)]
pub struct SetArgs {
    /// Which destination.
    #[command(flatten)]
    pub key: KeyArgs,
    /// A note for people (at most 200 characters).
    #[arg(long, value_name = "TEXT")]
    pub description: Option<String>,
    /// Where its copies go.
    #[command(flatten, next_help_heading = "Target")]
    pub target: TargetArgs,
    /// Take only messages for this platform (repeatable; none: every platform).
    #[arg(
        long = "platform",
        value_name = "PLATFORM",
        help_heading = "Subscription"
    )]
    pub platforms: Vec<PlatformId>,
    /// Take only messages of this team (repeatable; none: every team).
    #[arg(long = "team", value_name = "TEAM", help_heading = "Subscription")]
    pub teams: Vec<TeamId>,
    /// Take only messages whose `Event-Type` header is exactly this (repeatable; none: with
    /// or without the header).
    #[arg(
        long = "event-type",
        value_name = "TYPE",
        help_heading = "Subscription"
    )]
    pub event_types: Vec<String>,
    /// Take only messages this content filter matches, e.g. '{"body":{"amount":{"$gt":100}}}'
    /// (over the JSON payload and the headers).
    #[arg(
        long,
        value_name = "JSON",
        conflicts_with = "filter_file",
        help_heading = "Subscription"
    )]
    pub filter: Option<String>,
    /// Read the content filter from this file (`-`: standard input).
    #[arg(long, value_name = "FILE", help_heading = "Subscription")]
    pub filter_file: Option<PathBuf>,
    /// At most this many attempts a second to this destination, across every egress replica
    /// (default: the tenant's `--destination-rate`, else unlimited).
    #[arg(long, value_name = "PER_SEC", help_heading = "Limits")]
    pub rate: Option<f64>,
    /// Attempts at once after a quiet period, with --rate (default 1).
    #[arg(long, value_name = "N", requires = "rate", help_heading = "Limits")]
    pub burst: Option<u32>,
    /// The key-encryption key, to seal the secrets of a tenant with encryption on.
    #[command(flatten)]
    pub kek: KekArgs,
}

impl SetArgs {
    /// The destination these arguments describe (not yet validated).
    fn destination(&self) -> anyhow::Result<Destination> {
        let filter = match read_inline_or_file(
            self.filter.as_ref(),
            self.filter_file.as_ref(),
            "--filter-file",
        )? {
            Some(text) => {
                Filter::from_slice(text.as_bytes()).context("the content filter is not valid")?
            }
            None => Filter::match_all(),
        };
        Ok(Destination {
            target: self.target.route()?,
            subscription: Subscription {
                platforms: self.platforms.clone(),
                teams: self.teams.clone(),
                event_types: self.event_types.clone(),
                filter,
            },
            description: self.description.clone(),
            disabled: None,
            rate_limit: self.rate.map(|rate_per_sec| RateLimit {
                rate_per_sec,
                burst: self.burst.unwrap_or(1),
            }),
        })
    }
}

/// Arguments of `destinations ls`.
#[derive(Debug, clap::Args)]
pub struct LsArgs {
    /// Only this tenant's destinations.
    pub tenant: Option<TenantId>,
}

/// Runs a `destinations` command.
pub async fn run(
    js: &jetstream::Context,
    topology: &ResolvedTopology,
    args: &DestinationsArgs,
    out: &Output,
) -> anyhow::Result<ExitCode> {
    let store: Store<DestinationKey, Destination> =
        Store::new(resources::bucket(js, topology, BucketName::Destinations).await?);
    let events = EventLog::new(js.clone(), topology.namespace.clone(), "cli");
    match &args.command {
        DestinationsCommand::Set(set) => {
            let ring = set.kek.ring()?;
            let sealer = secret_sealer(js, topology, &set.key.tenant, ring.as_ref())
                .await
                .with_context(|| format!("writing destination {}", set.key.key().render()))?;
            set_destination(&store, &sealer, set, out).await
        }
        DestinationsCommand::Get(key) => {
            let breakers = breakers(js, topology).await?;
            get_destination(&store, &breakers, key, out).await
        }
        DestinationsCommand::Ls(ls) => {
            let breakers = breakers(js, topology).await?;
            list_destinations(&store, &breakers, ls, out).await
        }
        DestinationsCommand::Rm(key) => remove_destination(&store, key, out).await,
        DestinationsCommand::Disable(args) => {
            let disabled = Disabled {
                at: time::OffsetDateTime::now_utc(),
                by: DisabledBy::Operator,
                reason: args.reason.clone(),
            };
            switch(&store, &events, &args.key, Some(disabled), out).await
        }
        DestinationsCommand::Enable(key) => switch(&store, &events, key, None, out).await,
        DestinationsCommand::RotateSecret(args) => {
            let ring = args.kek.ring()?;
            let sealer = secret_sealer(js, topology, &args.key.tenant, ring.as_ref())
                .await
                .with_context(|| {
                    format!(
                        "rotating the secret of destination {}",
                        args.key.key().render()
                    )
                })?;
            rotate_secret(&store, &sealer, args, out).await
        }
    }?;
    Ok(ExitCode::SUCCESS)
}

/// A destination as `--json` prints it: its key, then the (redacted) record's fields, or why
/// the stored record is unreadable.
#[derive(Debug, Serialize)]
struct DestinationView {
    key: String,
    tenant: String,
    destination: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    revision: Option<u64>,
    #[serde(flatten)]
    record: Option<Destination>,
    #[serde(skip_serializing_if = "Option::is_none")]
    public_key: Option<String>,
    /// Its circuit breaker's shared record while open (egress's `breakers` bucket).
    #[serde(skip_serializing_if = "Option::is_none")]
    breaker: Option<BreakerRecord>,
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<String>,
}

/// The `breakers` bucket: egress's open circuit breakers.
pub(crate) async fn breakers(
    js: &jetstream::Context,
    topology: &ResolvedTopology,
) -> anyhow::Result<Store<BreakerKey, BreakerRecord>> {
    Ok(Store::new(
        resources::bucket(js, topology, BucketName::Breakers).await?,
    ))
}

/// How a breaker reads: `closed`, `open until <time> (down since <time>, <n> failed
/// probes)`, or `half-open: probing since <time>` once its open period is over.
pub(crate) fn breaker_state(record: Option<&BreakerRecord>, now: time::OffsetDateTime) -> String {
    let Some(record) = record else {
        return "closed".to_owned();
    };
    let at = |t: time::OffsetDateTime| {
        t.format(&time::format_description::well_known::Rfc3339)
            .unwrap_or_default()
    };
    let probes = match record.reopenings {
        0 => String::new(),
        1 => ", 1 failed probe".to_owned(),
        n => format!(", {n} failed probes"),
    };
    if record.open_until > now {
        format!(
            "open until {} (down since {}{probes})",
            at(record.open_until),
            at(record.down_since)
        )
    } else {
        format!(
            "half-open: probing since {} (down since {}{probes})",
            at(record.open_until),
            at(record.down_since)
        )
    }
}

impl DestinationView {
    /// The view of a readable record, redacted.
    fn new(key: &DestinationKey, record: &Destination) -> Self {
        Self {
            key: key.render(),
            tenant: key.tenant.to_string(),
            destination: key.destination.to_string(),
            revision: None,
            record: Some(record.redacted()),
            public_key: None,
            breaker: None,
            error: None,
        }
    }
}

async fn set_destination(
    store: &Store<DestinationKey, Destination>,
    sealer: &SecretSealer<'_>,
    args: &SetArgs,
    out: &Output,
) -> anyhow::Result<()> {
    let key = args.key.key();
    let refusing = || {
        format!(
            "refusing to write an invalid destination to {}",
            key.render()
        )
    };
    let given = args.destination().with_context(refusing)?;
    // The target first, so that its error reads as a route's (`route field url: …`).
    given.target.validate().with_context(refusing)?;
    let others = others(store, &key).await?;
    if others >= MAX_DESTINATIONS {
        anyhow::bail!(
            "tenant {} has {others} destinations, the most a tenant may have \
             ({MAX_DESTINATIONS}); remove one first",
            key.tenant
        );
    }
    // Compare-and-set: egress disabling the destination meanwhile is re-read, never undone.
    let place = SecretPlace::Destination(key.clone());
    let mut dropped = 0;
    let changed = store
        .change(&key, CAS_TRIES, |old| {
            let mut next;
            let old = opened_target(sealer, old, &place);
            (next, dropped) = replacing(&given, old.as_ref());
            next.validate().with_context(refusing)?;
            sealer
                .seal(&mut next.target, &place)
                .with_context(refusing)?;
            anyhow::Ok(Some(next))
        })
        .await?;
    let Changed::Stored(destination, revision) = changed else {
        anyhow::bail!(
            "destination {} kept changing under this command ({CAS_TRIES} tries); run it again",
            key.render()
        );
    };
    // A replaced destination's old secret must not linger in the key's history.
    store.purge_history(&key).await?;
    if out.is_json() {
        let view = DestinationView {
            revision: Some(revision),
            ..DestinationView::new(&key, &destination)
        };
        return out.json(&view);
    }
    let (kind, target) = destination.target.describe();
    println!(
        "set destination {}: {kind} {target}, {} (revision {revision})",
        key.render(),
        summary(&destination.subscription)
    );
    if dropped > 0 {
        println!("the destination's earlier signing secrets stopped signing");
    }
    Ok(())
}

async fn get_destination(
    store: &Store<DestinationKey, Destination>,
    breakers: &Store<BreakerKey, BreakerRecord>,
    args: &KeyArgs,
    out: &Output,
) -> anyhow::Result<()> {
    let key = args.key();
    let Some(destination) = store.get(&key).await? else {
        anyhow::bail!("no destination at {}", key.render());
    };
    let public_key = public_key(&destination.target)?;
    let breaker = breakers
        .get(&BreakerKey::Destination(key.clone()))
        .await
        .context("reading the destination's circuit breaker")?;
    if out.is_json() {
        let view = DestinationView {
            public_key,
            breaker,
            ..DestinationView::new(&key, &destination)
        };
        return out.json(&view);
    }
    let shown = destination.redacted();
    let mut lines = vec![
        ("key".to_owned(), key.render()),
        ("state".to_owned(), state(&shown)),
        (
            "breaker".to_owned(),
            breaker_state(breaker.as_ref(), time::OffsetDateTime::now_utc()),
        ),
    ];
    if let Some(description) = &shown.description {
        lines.push(("description".into(), description.clone()));
    }
    target_fields(&shown.target, public_key.as_deref(), &mut lines);
    let subscription = &shown.subscription;
    if *subscription == Subscription::default() {
        lines.push(("subscription".into(), "all of the tenant's messages".into()));
    }
    for (name, items) in [
        ("platforms", joined(&subscription.platforms, ", ")),
        ("teams", joined(&subscription.teams, ", ")),
        ("event types", joined(&subscription.event_types, ", ")),
    ] {
        if !items.is_empty() {
            lines.push((name.to_owned(), items));
        }
    }
    if !subscription.filter.is_match_all() {
        let filter = serde_json::to_string(&subscription.filter).context("showing the filter")?;
        lines.push(("filter".into(), filter));
    }
    if let Some(limit) = &shown.rate_limit {
        lines.push((
            "rate limit".into(),
            format!("{}/s, burst {}", limit.rate_per_sec, limit.burst),
        ));
    }
    print!("{}", fields(&lines));
    Ok(())
}

/// A subscription in one line: `platforms=shop,blog teams=eu events=order.created filter`,
/// or `all`.
fn summary(subscription: &Subscription) -> String {
    let mut parts = Vec::new();
    for (name, items) in [
        ("platforms", joined(&subscription.platforms, ",")),
        ("teams", joined(&subscription.teams, ",")),
        ("events", joined(&subscription.event_types, ",")),
    ] {
        if !items.is_empty() {
            parts.push(format!("{name}={items}"));
        }
    }
    if !subscription.filter.is_match_all() {
        parts.push("filter".to_owned());
    }
    if parts.is_empty() {
        "all".to_owned()
    } else {
        parts.join(" ")
    }
}

/// `items` joined by `separator`.
fn joined<T: ToString>(items: &[T], separator: &str) -> String {
    items
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(separator)
}

async fn list_destinations(
    store: &Store<DestinationKey, Destination>,
    breakers: &Store<BreakerKey, BreakerRecord>,
    args: &LsArgs,
    out: &Output,
) -> anyhow::Result<()> {
    let filter = args.tenant.as_ref().map_or(">".to_owned(), tenant_filter);
    let destinations = store.list(&filter).await?;
    // Open breakers of the same tenants (routes' too: only destinations' are shown).
    let open: std::collections::HashMap<String, BreakerRecord> = breakers
        .list(&filter)
        .await
        .context("reading the circuit breakers")?
        .into_iter()
        .filter_map(|(key, record)| Some((key.render(), record.ok()?)))
        .collect();
    let breaker_of = |key: &DestinationKey| open.get(&key.render()).cloned();
    let now = time::OffsetDateTime::now_utc();
    if out.is_json() {
        let rows: Vec<DestinationView> = destinations
            .iter()
            .map(|(key, record)| match record {
                Ok(record) => DestinationView {
                    breaker: breaker_of(key),
                    ..DestinationView::new(key, record)
                },
                Err(err) => DestinationView {
                    key: key.render(),
                    tenant: key.tenant.to_string(),
                    destination: key.destination.to_string(),
                    revision: None,
                    record: None,
                    public_key: None,
                    breaker: None,
                    error: Some(output::error_chain(err)),
                },
            })
            .collect();
        return out.json(&rows);
    }
    if destinations.is_empty() {
        match &args.tenant {
            Some(tenant) => println!("no destinations for tenant {tenant}"),
            None => println!("no destinations"),
        }
        return Ok(());
    }
    let mut table = Table::new([
        "TENANT",
        "DESTINATION",
        "STATE",
        "TYPE",
        "TARGET",
        "SUBSCRIPTION",
    ]);
    for (key, record) in &destinations {
        let (state, kind, target, subscription) = match record {
            Ok(destination) => {
                let (kind, target) = destination.target.describe();
                let state = match (destination.disabled.is_some(), breaker_of(key)) {
                    (true, _) => "disabled",
                    (false, Some(record)) if record.open_until > now => "enabled, breaker open",
                    (false, Some(_)) => "enabled, breaker half-open",
                    (false, None) => "enabled",
                };
                (
                    state,
                    kind.to_owned(),
                    target,
                    summary(&destination.subscription),
                )
            }
            Err(err) => (
                "-",
                "invalid".to_owned(),
                output::error_chain(err),
                String::new(),
            ),
        };
        table.row([
            key.tenant.to_string(),
            key.destination.to_string(),
            state.to_owned(),
            kind,
            target,
            subscription,
        ]);
    }
    print!("{}", table.render());
    Ok(())
}

/// Disables (`Some`) or enables (`None`) a destination by compare-and-set on its record, so a
/// concurrent change (an edit, egress disabling it) is never overwritten: retried on conflict.
async fn switch(
    store: &Store<DestinationKey, Destination>,
    events: &EventLog,
    args: &KeyArgs,
    disabled: Option<Disabled>,
    out: &Output,
) -> anyhow::Result<()> {
    let key = args.key();
    let verb = if disabled.is_some() {
        "disabled"
    } else {
        "enabled"
    };
    let changed = store
        .change(&key, CAS_TRIES, |old| {
            let Some(old) = old else {
                anyhow::bail!("no destination at {}", key.render());
            };
            let next = switched(old, &disabled);
            if let Some(next) = &next {
                next.validate()
                    .with_context(|| format!("refusing to write destination {}", key.render()))?;
            }
            Ok(next)
        })
        .await?;
    let changed = match changed {
        Changed::Stored(..) => true,
        Changed::Unchanged(_) => false,
        Changed::Conflicts => anyhow::bail!(
            "destination {} kept changing under this command ({CAS_TRIES} tries); run it again",
            key.render()
        ),
    };
    if changed {
        let (kind, detail) = switch_event(&disabled, "enabled by an operator");
        // Reported, never undone: the change is made whether or not the event is stored.
        if let Err(error) = events
            .emit_and_wait(
                kind,
                Some(&key.tenant),
                Some(key.destination.as_str()),
                detail,
            )
            .await
        {
            eprintln!("warning: the {kind} event was not stored: {error}");
        }
    }
    if out.is_json() {
        return out.json(&serde_json::json!({
            "key": key.render(), verb: true, "changed": changed,
        }));
    }
    if changed {
        println!("{verb} destination {}", key.render());
    } else {
        println!("destination {} is {verb} already", key.render());
    }
    Ok(())
}

/// `record` disabled (`Some`) or enabled (`None`); `None` when it is so already.
pub(crate) fn switched(record: &Destination, disabled: &Option<Disabled>) -> Option<Destination> {
    (record.disabled.is_some() != disabled.is_some()).then(|| Destination {
        disabled: disabled.clone(),
        ..record.clone()
    })
}

/// The event a switch is reported as: its kind, and the reason (or `enabled` for enabling).
pub(crate) fn switch_event<'a>(
    disabled: &'a Option<Disabled>,
    enabled: &'a str,
) -> (EventKind, &'a str) {
    match disabled {
        Some(d) => (EventKind::DestinationDisabled, &d.reason),
        None => (EventKind::DestinationEnabled, enabled),
    }
}

/// How many destinations `key`'s tenant has besides `key` (a tenant has at most
/// [`MAX_DESTINATIONS`]).
pub(crate) async fn others(
    store: &Store<DestinationKey, Destination>,
    key: &DestinationKey,
) -> Result<usize, StoreError> {
    Ok(store
        .keys()
        .await?
        .iter()
        .filter(|k| k.tenant == key.tenant && *k != key)
        .count())
}

/// `given` as it replaces `old`: the stored `disabled` kept (replacing a destination never
/// enables it), a webhook's previous secrets kept while its secret is unchanged; and how many
/// earlier secrets stopped signing.
pub(crate) fn replacing(given: &Destination, old: Option<&Destination>) -> (Destination, usize) {
    let mut next = given.clone();
    next.disabled = old.and_then(|d| d.disabled.clone());
    let dropped = keep_previous_secrets(old.map(|d| d.target.clone()), &mut next.target);
    (next, dropped)
}

/// A stored destination with its target's secrets opened ([`opened_old`]), for [`replacing`];
/// one whose secrets do not open stays as stored (its sealed secrets then differ from any new
/// one, so none of them is kept).
pub(crate) fn opened_target(
    sealer: &SecretSealer<'_>,
    old: Option<&Destination>,
    place: &SecretPlace,
) -> Option<Destination> {
    let old = old?;
    let mut opened = old.clone();
    if let Some(target) = opened_old(sealer, Some(old.target.clone()), place) {
        opened.target = target;
    }
    Some(opened)
}

/// How many times a write of a destination tries its compare-and-set.
pub(crate) const CAS_TRIES: usize = 5;

/// How a destination's state reads: `enabled`, or `disabled by egress since <time>: <reason>`.
/// `enabled`, or `disabled by <who> since <time>: <reason>`.
pub(crate) fn state(destination: &Destination) -> String {
    match &destination.disabled {
        None => "enabled".to_owned(),
        Some(disabled) => format!(
            "disabled by {} since {}: {}",
            match disabled.by {
                DisabledBy::Operator => "an operator",
                DisabledBy::Egress => "egress (it stayed down)",
                DisabledBy::Tenant => "the tenant",
            },
            disabled
                .at
                .format(&time::format_description::well_known::Rfc3339)
                .unwrap_or_default(),
            output::printable(&disabled.reason)
        ),
    }
}

async fn remove_destination(
    store: &Store<DestinationKey, Destination>,
    args: &KeyArgs,
    out: &Output,
) -> anyhow::Result<()> {
    let key = args.key();
    // An unreadable record still exists and may be removed; only a missing one is an error.
    if let Ok(None) = store.get(&key).await {
        anyhow::bail!("no destination at {}", key.render());
    }
    store.delete(&key).await?;
    // Keep the delete marker only: the removed destination's secret does not linger in history.
    store.purge_history(&key).await?;
    if out.is_json() {
        out.json(&serde_json::json!({"key": key.render(), "removed": true}))
    } else {
        println!("removed destination {}", key.render());
        Ok(())
    }
}

/// `destinations rotate-secret`: the rotation of `routes rotate-secret`, on a destination's
/// webhook target, by compare-and-set (its `disabled` state and everything else kept); the
/// retired secrets' history is purged.
async fn rotate_secret(
    store: &Store<DestinationKey, Destination>,
    sealer: &SecretSealer<'_>,
    args: &RotateArgs,
    out: &Output,
) -> anyhow::Result<()> {
    let key = args.key.key();
    let new = args.secret.new_secret()?;
    let now = time::OffsetDateTime::now_utc();
    let place = SecretPlace::Destination(key.clone());
    let changed = store
        .change(&key, 10, |old| {
            let Some(old) = old else {
                anyhow::bail!("no destination at {}", key.render());
            };
            let mut next = old.clone();
            // The rotation compares and keeps secrets in clear; sealed again below.
            sealer
                .open(&mut next.target, &place)
                .with_context(|| format!("opening the secrets of destination {}", key.render()))?;
            let switchyard_registry::Route::Webhook(webhook) = &mut next.target else {
                anyhow::bail!(
                    "destination {} delivers over NATS: it has no signing secret",
                    key.render()
                );
            };
            args.secret
                .apply(webhook, new.as_ref(), now)
                .with_context(|| format!("rotating the secret of destination {}", key.render()))?;
            let refusing = || {
                format!(
                    "refusing to write an invalid destination to {}",
                    key.render()
                )
            };
            next.validate().with_context(refusing)?;
            sealer
                .seal(&mut next.target, &place)
                .with_context(refusing)?;
            Ok(Some(next))
        })
        .await?;
    let Changed::Stored(destination, revision) = changed else {
        anyhow::bail!("destination {} keeps changing; try again", key.render());
    };
    store.purge_history(&key).await?;
    if out.is_json() {
        let view = DestinationView {
            revision: Some(revision),
            ..DestinationView::new(&key, &destination)
        };
        return out.json(&view);
    }
    let (did, also) =
        crate::commands::routes::rotation_summary(&destination.target, new.is_some(), now);
    println!(
        "{did} destination {} (revision {revision}); {also}",
        key.render()
    );
    Ok(())
}
