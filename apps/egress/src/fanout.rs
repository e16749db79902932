//! Fan-out: which deliveries one message of a tenant becomes.
//!
//! A tenant without destinations is delivered by its route, in place, as before destinations
//! existed ([`Plan::Route`]). A tenant with destinations gets one copy of the message per
//! destination whose subscription takes it, plus one for its route when a route applies to the
//! message (a route is the one-destination subscription of its (team or `_`, platform), the copy
//! named `_route`). Each copy is published back into `EGRESS` with its `Switchyard-Destination`
//! and its own hop id (`<envelope id>_<destination>:egress:<replay>`), so it is delivered,
//! retried, dead-lettered and replayed on its own, and a crash-redelivered fan-out stores each
//! copy once (the stream's duplicate window). A destination whose stored record is unreadable
//! gets its copy too: the copy is then dead-lettered `invalid_route` with the reason, rather
//! than the message silently skipping it. When nothing takes the message, the tenant's
//! `unmatched` policy decides ([`Plan::Unmatched`]).

use crate::nats_sink::OwnSubjects;
use async_nats::HeaderMap;
use serde_json::Value;
use switchyard_envelope::{Destination as Target, Envelope, headers};
use switchyard_filter::{Budget, HeaderLookup};
use switchyard_keys::{DestinationKey, RouteKey};
use switchyard_registry::{Destination, KvCache, Route};

use crate::routing::{Lookup, lookup};

/// What becomes of a message egress reads for the first time (no `Switchyard-Destination`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Plan {
    /// The tenant has no destinations: deliver it by its route, in place.
    Route,
    /// One copy per target: the matching destinations by id, then the route's `_route`.
    Copies(Vec<Target>),
    /// Neither a destination nor a route takes it; why, for the DLQ record or the log.
    Unmatched(String),
    /// Its destinations' filters would take more than [`FILTER_BUDGET`] comparisons over this
    /// message: it is dead-lettered with the reason, rather than holding egress's threads.
    TooCostly(String),
}

/// The most comparisons all of a tenant's content filters may make over one message (a value
/// of the payload tested against one operand is one): about 10 ms of one core. A filter of
/// 256 `$in` operands over a payload array of 60,000 strings would otherwise take a third of
/// a second, for each of up to 100 destinations.
pub const FILTER_BUDGET: u64 = 1_000_000;

/// A message's headers as a content filter reads them.
pub struct NatsHeaders<'h>(pub Option<&'h HeaderMap>);

impl HeaderLookup for NatsHeaders<'_> {
    fn values<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a str> + 'a {
        self.0
            .into_iter()
            .flat_map(|h| h.iter())
            .filter(move |(key, _)| {
                let key: &str = key.as_ref();
                key.eq_ignore_ascii_case(name)
            })
            .flat_map(|(_, values)| values.iter().map(|v| v.as_str()))
    }
}

/// Decides the fan-out of `envelope` (its headers `h`, its `payload`) from the cached
/// destinations and routes. The payload is parsed as JSON at most once, and only when some
/// destination's filter reads it.
pub fn plan(
    destinations: &KvCache<DestinationKey, Destination>,
    routes: &KvCache<RouteKey, Route>,
    own: &OwnSubjects,
    envelope: &Envelope,
    h: Option<&HeaderMap>,
    payload: &[u8],
) -> Plan {
    if destinations.is_empty() {
        return Plan::Route;
    }
    let tenant = &envelope.address.tenant;
    let mut mine = destinations.select(|key| key.tenant == *tenant);
    if mine.is_empty() {
        return Plan::Route;
    }
    mine.sort_by(|(a, _), (b, _)| a.destination.cmp(&b.destination));
    let needs_body = mine
        .iter()
        .any(|(_, d)| d.as_ref().is_ok_and(|d| d.subscription.needs_body()));
    let body: Option<Value> = if needs_body {
        serde_json::from_slice(payload).ok()
    } else {
        None
    };
    let event_type = h
        .and_then(|h| h.get(headers::EVENT_TYPE))
        .map(|v| v.as_str());
    let headers = NatsHeaders(h);
    let budget = Budget::new(FILTER_BUDGET);
    let mut targets: Vec<Target> = Vec::new();
    for (key, destination) in &mine {
        let takes = match destination {
            Ok(d) => d.subscription.matches_within(
                &envelope.address,
                event_type,
                &headers,
                body.as_ref(),
                &budget,
            ),
            // Unreadable: its copy is dead-lettered with the reason, never skipped unseen.
            Err(_) => Some(true),
        };
        match takes {
            Some(true) => targets.push(Target::Named(key.destination.clone())),
            Some(false) => {}
            None => {
                return Plan::TooCostly(format!(
                    "tenant {tenant}'s destination filters need more than {FILTER_BUDGET} \
                     comparisons over this message ({} bytes; stopped at destination {}): \
                     simplify the filters (fewer $in operands, narrower paths) and replay it",
                    payload.len(),
                    key.destination
                ));
            }
        }
    }
    let route = lookup(routes, own, &envelope.address);
    if !matches!(route, Lookup::Missing(_)) {
        targets.push(Target::Route);
    }
    if targets.is_empty() {
        let event = event_type.map_or_else(
            || "no Event-Type".to_owned(),
            |t| format!("Event-Type {t:?}"),
        );
        return Plan::Unmatched(format!(
            "none of tenant {tenant}'s {} destinations takes the message (team {}, platform {}, \
             {event}), and no route applies",
            mine.len(),
            envelope.address.team,
            envelope.address.platform,
        ));
    }
    Plan::Copies(targets)
}
