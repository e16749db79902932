//! Which route or destination a message is delivered to, and whether it can be used.
//!
//! The team's own route (`<tenant>.<team>.<platform>`) wins over the tenant's default for the
//! platform (`<tenant>._.<platform>`). The first route found is the one that applies: if it is
//! unusable (bad JSON, a field out of range, a secret that is not base64, a NATS subject inside
//! Switchyard's own subjects), the message is not delivered by the default instead.

use crate::nats_sink::OwnSubjects;
use switchyard_crypt::SecretPlace;
use switchyard_crypt::route_secret::has_sealed;
use switchyard_keys::{Address, DestinationId, DestinationKey, KvKey, RouteKey, TenantId};
use switchyard_registry::{Destination, Disabled, KvCache, LimitRecord, RateLimit, Route};

/// A usable route.
#[derive(Debug, Clone)]
pub struct Resolved {
    /// The route's KV key, rendered (`acme.ops.slack`), or the destination's
    /// (`acme.orders-hook`): identifies its breaker and slots.
    pub id: String,
    /// The record it was found in: the place its sealed secrets are bound to.
    pub place: SecretPlace,
    /// The route (its secrets sealed as stored when [`Resolved::sealed`]: open them with
    /// `Sinks::open_secrets` before an attempt).
    pub route: Route,
    /// Whether some of the route's secrets are sealed (the tenant has encryption on).
    pub sealed: bool,
    /// The webhook signing keys: the current secret's, then each previous secret's still in
    /// its overlap window (empty for NATS routes, and until sealed secrets are opened).
    pub keys: Vec<Vec<u8>>,
    /// Set when a destination is disabled: its copies are parked, not attempted.
    pub disabled: Option<Disabled>,
    /// A destination's rate limit, with the key of its token record in `rate-limits`
    /// (`<tenant>.<destination>.tokens`); `None`: unlimited (routes, and destinations without
    /// a limit of their own or of their tenant).
    pub rate: Option<(String, LimitRecord)>,
}

impl Resolved {
    /// `webhook` or `nats`.
    pub fn kind(&self) -> &'static str {
        match self.route {
            Route::Webhook(_) => "webhook",
            Route::Nats(_) => "nats",
        }
    }
}

/// What the lookup found.
#[derive(Debug, Clone)]
pub enum Lookup {
    /// A usable route.
    Found(Box<Resolved>),
    /// No route at all (the reason names both keys tried).
    Missing(String),
    /// The route that applies cannot be used, and why.
    Invalid(String),
}

/// Looks up the route for `address` in the cache.
pub fn lookup(routes: &KvCache<RouteKey, Route>, own: &OwnSubjects, address: &Address) -> Lookup {
    let keys = RouteKey::lookup_order(address);
    for key in &keys {
        let id = key.render();
        return match routes.get(key) {
            None => continue,
            Some(Err(reason)) => {
                Lookup::Invalid(format!("route {id} is not a valid route: {reason}"))
            }
            Some(Ok(route)) => usable("route", id, SecretPlace::Route(key.clone()), route, own),
        };
    }
    let [own, default] = keys.map(|k| k.render());
    Lookup::Missing(format!("no route {own} nor {default}"))
}

/// Looks up destination `destination` of `tenant` in the cache: the target of a fanned-out
/// copy. Its id (`<tenant>.<destination>`, the destination's KV key) names its breaker and
/// slots apart from any route's (`<tenant>.<team or _>.<platform>`).
///
/// `tenant_rate` is the tenant's `destination_rate_limit`, which applies when the destination
/// has no `rate_limit` of its own.
pub fn lookup_destination(
    destinations: &KvCache<DestinationKey, Destination>,
    own: &OwnSubjects,
    tenant: &TenantId,
    destination: &DestinationId,
    tenant_rate: Option<RateLimit>,
) -> Lookup {
    let key = DestinationKey {
        tenant: tenant.clone(),
        destination: destination.clone(),
    };
    let id = key.render();
    match destinations.get(&key) {
        None => Lookup::Missing(format!(
            "destination {destination} of tenant {tenant} does not exist (deleted since the \
             message was fanned out to it)"
        )),
        Some(Err(reason)) => Lookup::Invalid(format!(
            "destination {id} is not a valid destination: {reason}"
        )),
        Some(Ok(found)) => match found.subscription.validate() {
            Err(error) => Lookup::Invalid(format!("destination {id}: {error}")),
            Ok(()) => match usable(
                "destination",
                id,
                SecretPlace::Destination(key.clone()),
                found.target,
                own,
            ) {
                Lookup::Found(mut resolved) => {
                    resolved.disabled = found.disabled;
                    resolved.rate = found
                        .rate_limit
                        .or(tenant_rate)
                        .map(|limit| (format!("{id}.tokens", id = key.render()), limit.as_limit()));
                    Lookup::Found(resolved)
                }
                other => other,
            },
        },
    }
}

/// Whether `route` (a route's, or a destination's target), called `what` `id`, can be used
/// now: its fields are valid, its signing keys readable (looked up at every attempt: a
/// previous secret past its overlap stops signing; sealed ones once opened), a NATS subject
/// outside Switchyard's own.
fn usable(what: &str, id: String, place: SecretPlace, route: Route, own: &OwnSubjects) -> Lookup {
    if let Err(error) = route.validate() {
        return Lookup::Invalid(format!("{what} {id}: {error}"));
    }
    let sealed = has_sealed(&route);
    let keys = match &route {
        Route::Webhook(_) if sealed => Vec::new(),
        Route::Webhook(w) => match w.signing_keys(time::OffsetDateTime::now_utc()) {
            Ok(keys) => keys,
            Err(error) => return Lookup::Invalid(format!("{what} {id}: {error}")),
        },
        Route::Nats(n) => match own.forbidden(&n.subject) {
            Some(reason) => return Lookup::Invalid(format!("{what} {id}: {reason}")),
            None => Vec::new(),
        },
    };
    Lookup::Found(Box::new(Resolved {
        id,
        place,
        route,
        sealed,
        keys,
        disabled: None,
        rate: None,
    }))
}
