//! Destinations: a tenant's fan-out subscriptions. One accepted message becomes one delivery per
//! destination whose subscription matches it, each with its own attempts, breaker, DLQ entry and
//! replay.
//!
//! JSON in the `destinations` bucket under [`switchyard_keys::DestinationKey`]
//! (`<tenant>.<destination>`):
//!
//! ```json
//! {"target":{"type":"webhook","url":"https://hooks.example.com/orders","secret":"whsec_…"},
//!  "subscription":{"platforms":["shop"],"event_types":["order.created","order.paid"],
//!                  "filter":{"body":{"amount":{"$gt":100}}}},
//!  "description":"Orders over 100 to the ERP"}
//! {"target":{"type":"nats","subject":"sink.acme.audit","jetstream":true}}
//! ```
//!
//! `target` is exactly a route ([`Route`]: a signed webhook, a core NATS request or a JetStream
//! publish), so everything a route does a destination does. A subscription's parts are ANDed;
//! an empty or absent part matches everything, so `{}` subscribes to every message of the
//! tenant:
//!
//! - `platforms`, `teams`: the message's subject tokens (`ingress.v1.<tenant>.<team>.<platform>`)
//!   must be one of them;
//! - `event_types`: the producer's `Event-Type` header must be exactly one of them (a message
//!   without the header matches no list);
//! - `filter`: a content filter over the JSON payload and the headers ([`switchyard_filter`]).
//!
//! A tenant's routes keep working beside its destinations: a route is the one-destination
//! subscription of its (team or `_`, platform), and the copy it delivers is named `_route`
//! (`switchyard_envelope::Destination::Route`).

use serde::{Deserialize, Serialize};
use switchyard_filter::{Filter, HeaderLookup};
use switchyard_keys::{Address, PlatformId, TeamId};

use crate::route::{Route, RouteError};

/// The most destinations one tenant may have (each matching message is copied once per
/// destination into the shared `EGRESS` stream).
pub const MAX_DESTINATIONS: usize = 100;

/// The largest destination record, as JSON: 16 KiB (a tenant's 100 destinations hold at most
/// 1.6 MiB of the `destinations` bucket; size the bucket for tenants × that).
pub const MAX_DESTINATION_BYTES: usize = 16 * 1024;

/// The most platforms, teams or event types one subscription lists.
pub const MAX_LIST: usize = 100;

/// The longest event type, in bytes.
pub const MAX_EVENT_TYPE_BYTES: usize = 256;

/// The longest description, in characters.
pub const MAX_DESCRIPTION_CHARS: usize = 200;

/// Why a destination is unusable.
#[derive(Debug, thiserror::Error)]
pub enum DestinationError {
    /// Not valid destination JSON (an unknown field, a bad id, an invalid filter…).
    #[error("destination is not valid JSON for a destination")]
    Json(#[source] serde_json::Error),
    /// The target is not a usable route.
    #[error("destination target is not usable")]
    Target(#[source] RouteError),
    /// A subscription field is out of range or malformed.
    #[error("destination field {field}: {reason}")]
    Field {
        /// The field.
        field: &'static str,
        /// What is wrong.
        reason: String,
    },
}

/// Which of a tenant's messages a destination receives. Every part is ANDed; an empty part
/// matches every message.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Subscription {
    /// The platforms (the subject's last token) it takes; empty: all.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub platforms: Vec<PlatformId>,
    /// The teams it takes; empty: all.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub teams: Vec<TeamId>,
    /// The producer `Event-Type` values it takes, compared exactly; empty: all (with or
    /// without the header).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub event_types: Vec<String>,
    /// A content filter over the payload (as JSON) and the headers; absent: match all.
    #[serde(default, skip_serializing_if = "Filter::is_match_all")]
    pub filter: Filter,
}

impl Subscription {
    /// Whether the subscription takes a message for `address` whose `Event-Type` header is
    /// `event_type`, with these headers and this payload parsed as JSON (`None`: not JSON,
    /// and then every `body` clause of the filter fails). Parse the payload once per message,
    /// only when some filter [needs it](Subscription::needs_body).
    pub fn matches<H: HeaderLookup + ?Sized>(
        &self,
        address: &Address,
        event_type: Option<&str>,
        headers: &H,
        body: Option<&serde_json::Value>,
    ) -> bool {
        let unlimited = switchyard_filter::Budget::new(u64::MAX);
        self.matches_within(address, event_type, headers, body, &unlimited)
            .unwrap_or(false)
    }

    /// [`Subscription::matches`] within `budget` (shared by every destination one message is
    /// matched against): `None` when the budget ran out before the answer was known.
    pub fn matches_within<H: HeaderLookup + ?Sized>(
        &self,
        address: &Address,
        event_type: Option<&str>,
        headers: &H,
        body: Option<&serde_json::Value>,
        budget: &switchyard_filter::Budget,
    ) -> Option<bool> {
        let listed = |list: &[String], value: Option<&str>| {
            list.is_empty() || value.is_some_and(|v| list.iter().any(|l| l == v))
        };
        if !((self.platforms.is_empty() || self.platforms.contains(&address.platform))
            && (self.teams.is_empty() || self.teams.contains(&address.team))
            && listed(&self.event_types, event_type))
        {
            return Some(false);
        }
        self.filter.matches_within(headers, body, budget)
    }

    /// Whether matching reads the payload.
    pub fn needs_body(&self) -> bool {
        self.filter.needs_body()
    }

    /// Checks list sizes and event types.
    pub fn validate(&self) -> Result<(), DestinationError> {
        let too_long = |field: &'static str, len: usize| {
            (len > MAX_LIST).then(|| DestinationError::Field {
                field,
                reason: format!("{len} entries; at most {MAX_LIST}"),
            })
        };
        if let Some(error) = too_long("subscription.platforms", self.platforms.len())
            .or_else(|| too_long("subscription.teams", self.teams.len()))
            .or_else(|| too_long("subscription.event_types", self.event_types.len()))
        {
            return Err(error);
        }
        for event_type in &self.event_types {
            // What a NATS header value can carry, and what a producer can send.
            let bad = event_type.is_empty()
                || event_type.len() > MAX_EVENT_TYPE_BYTES
                || event_type.trim() != event_type
                || event_type.chars().any(char::is_control);
            if bad {
                return Err(DestinationError::Field {
                    field: "subscription.event_types",
                    reason: format!(
                        "{event_type:?} is not an event type (1 to {MAX_EVENT_TYPE_BYTES} \
                         bytes, no control characters, no surrounding whitespace)"
                    ),
                });
            }
        }
        Ok(())
    }
}

/// One destination of a tenant: where, and which messages.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Destination {
    /// Where its deliveries go: the same JSON as a route.
    pub target: Route,
    /// Which messages it takes (default: all of the tenant's).
    #[serde(default, skip_serializing_if = "is_default")]
    pub subscription: Subscription,
    /// A note for people (optional, at most [`MAX_DESCRIPTION_CHARS`] characters).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// Set while the destination is disabled: its copies are parked (held in `EGRESS`, never
    /// attempted, never dead-lettered for waiting) until it is enabled again.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub disabled: Option<Disabled>,
    /// Its own rate limit, across every egress replica (absent: the tenant's
    /// `destination_rate_limit`, else none).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_limit: Option<RateLimit>,
}

/// A destination's rate limit: at most `rate_per_sec` attempts a second across every egress
/// replica, and `burst` at once after a quiet period (GCRA, leased from the `rate-limits`
/// bucket: `switchyard_service::lease`).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RateLimit {
    /// Attempts per second, in (0, 1 000 000].
    pub rate_per_sec: f64,
    /// Attempts at once after a quiet period, at least 1 (default 1: none ahead of the rate).
    #[serde(default = "one")]
    pub burst: u32,
}

fn one() -> u32 {
    1
}

impl RateLimit {
    /// The slowest rate accepted: one attempt every 1,000 s.
    pub const MIN_RATE: f64 = 0.001;
    /// The fastest rate accepted.
    pub const MAX_RATE: f64 = 1_000_000.0;
    /// The largest burst accepted.
    pub const MAX_BURST: u32 = 10_000;

    /// Checks the values: rate in [[`Self::MIN_RATE`], [`Self::MAX_RATE`]], burst in 1 to
    /// [`Self::MAX_BURST`].
    pub fn validate(&self) -> Result<(), DestinationError> {
        let field = |reason: String| DestinationError::Field {
            field: "rate_limit",
            reason,
        };
        if !(Self::MIN_RATE..=Self::MAX_RATE).contains(&self.rate_per_sec) {
            return Err(field(format!(
                "rate_per_sec must be from {} to {} attempts a second, not {:.3e}",
                Self::MIN_RATE,
                Self::MAX_RATE,
                self.rate_per_sec
            )));
        }
        if !(1..=Self::MAX_BURST).contains(&self.burst) {
            return Err(field(format!(
                "burst must be from 1 to {}, not {}",
                Self::MAX_BURST,
                self.burst
            )));
        }
        Ok(())
    }

    /// The limit as the lease arithmetic takes it.
    pub fn as_limit(&self) -> crate::LimitRecord {
        crate::LimitRecord {
            rate_per_sec: self.rate_per_sec,
            burst: self.burst,
            backlog_high: None,
            backlog_low: None,
            backlog_high_bytes: None,
        }
    }
}

/// Who disabled a destination.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DisabledBy {
    /// An operator (`switchyard destinations disable`).
    Operator,
    /// Egress, because the destination stayed down (its breaker open) for
    /// `[egress] disable_after_secs`.
    Egress,
    /// The tenant itself, through the management API with its own key.
    Tenant,
}

/// Why and since when a destination is disabled.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Disabled {
    /// When it was disabled.
    #[serde(with = "time::serde::rfc3339")]
    pub at: time::OffsetDateTime,
    /// Who disabled it.
    pub by: DisabledBy,
    /// Why, for people (at most [`MAX_DESCRIPTION_CHARS`] characters; no control characters).
    pub reason: String,
}

fn is_default(subscription: &Subscription) -> bool {
    *subscription == Subscription::default()
}

impl Destination {
    /// Parses and validates destination JSON.
    pub fn from_json(bytes: &[u8]) -> Result<Self, DestinationError> {
        let destination: Destination =
            serde_json::from_slice(bytes).map_err(DestinationError::Json)?;
        destination.validate()?;
        Ok(destination)
    }

    /// The destination as JSON.
    pub fn to_json(&self) -> Vec<u8> {
        serde_json::to_vec(self).unwrap_or_default()
    }

    /// Checks the target, the subscription and the description, and that the record stays
    /// within [`MAX_DESTINATION_BYTES`] as JSON (one tenant's destinations cannot fill the
    /// bucket every tenant shares).
    pub fn validate(&self) -> Result<(), DestinationError> {
        self.target.validate().map_err(DestinationError::Target)?;
        let size = self.to_json().len();
        if size > MAX_DESTINATION_BYTES {
            return Err(DestinationError::Field {
                field: "destination",
                reason: format!("{size} bytes as JSON; at most {MAX_DESTINATION_BYTES}"),
            });
        }
        self.subscription.validate()?;
        let note = |field: &'static str, text: &str| {
            let bad = text.chars().count() > MAX_DESCRIPTION_CHARS
                || text
                    .chars()
                    .any(|c| c.is_control() || switchyard_keys::display::is_invisible_format(c));
            if bad {
                return Err(DestinationError::Field {
                    field,
                    reason: format!(
                        "at most {MAX_DESCRIPTION_CHARS} characters, none of them control or \
                         invisible formatting characters"
                    ),
                });
            }
            Ok(())
        };
        if let Some(description) = &self.description {
            note("description", description)?;
        }
        if let Some(disabled) = &self.disabled {
            note("disabled.reason", &disabled.reason)?;
        }
        if let Some(limit) = &self.rate_limit {
            limit.validate()?;
        }
        Ok(())
    }

    /// The destination as it may be shown: the target [redacted](Route::redacted).
    pub fn redacted(&self) -> Self {
        Self {
            target: self.target.redacted(),
            ..self.clone()
        }
    }
}

/// What egress does with a message of a tenant that has destinations when none of them (and no
/// route) takes it. Set per tenant ([`crate::TenantRecord::unmatched`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Unmatched {
    /// Dead-letter it `no_subscriber` (the default: nothing is dropped unless asked).
    #[default]
    DeadLetter,
    /// Drop it, counted (`egress_unmatched_total`), with a receipt on `delivered.v1.…` whose
    /// `result` is `unmatched`.
    Drop,
}

impl Unmatched {
    /// `dead_letter` or `drop`.
    pub fn as_str(self) -> &'static str {
        match self {
            Unmatched::DeadLetter => "dead_letter",
            Unmatched::Drop => "drop",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn address(team: &str, platform: &str) -> Address {
        Address::parse("acme", team, platform).unwrap()
    }

    #[test]
    fn destination_json_round_trips_and_an_empty_subscription_is_not_written() {
        let json = br#"{"target":{"type":"nats","subject":"sink.acme.audit","jetstream":true}}"#;
        let destination = Destination::from_json(json).unwrap();
        assert_eq!(destination.subscription, Subscription::default());
        let written = String::from_utf8(destination.to_json()).unwrap();
        assert!(!written.contains("subscription"), "{written}");
        assert_eq!(
            Destination::from_json(written.as_bytes()).unwrap(),
            destination
        );

        let json = br#"{"target":{"type":"nats","subject":"sink.x"},
            "subscription":{"platforms":["shop"],"event_types":["order.created"],
                            "filter":{"body":{"amount":{"$gt":100}}}}}"#;
        let destination = Destination::from_json(json).unwrap();
        let again = Destination::from_json(&destination.to_json()).unwrap();
        assert_eq!(again, destination);
    }

    #[test]
    fn every_part_of_a_subscription_must_hold() {
        let subscription: Subscription = serde_json::from_value(serde_json::json!({
            "platforms": ["shop"], "teams": ["eu"], "event_types": ["order.created"],
            "filter": {"body": {"amount": {"$gt": 100}}}
        }))
        .unwrap();
        let big = serde_json::json!({"amount": 250});
        let small = serde_json::json!({"amount": 5});
        let h: [(&str, &str); 0] = [];
        let m = |team, platform, event: Option<&str>, body: Option<&serde_json::Value>| {
            subscription.matches(&address(team, platform), event, &h[..], body)
        };
        assert!(m("eu", "shop", Some("order.created"), Some(&big)));
        assert!(!m("us", "shop", Some("order.created"), Some(&big)), "team");
        assert!(
            !m("eu", "blog", Some("order.created"), Some(&big)),
            "platform"
        );
        assert!(
            !m("eu", "shop", Some("order.paid"), Some(&big)),
            "event type"
        );
        assert!(!m("eu", "shop", None, Some(&big)), "no event type header");
        assert!(
            !m("eu", "shop", Some("order.created"), Some(&small)),
            "filter"
        );
        assert!(!m("eu", "shop", Some("order.created"), None), "not JSON");
        let all = Subscription::default();
        assert!(all.matches(&address("x", "y"), None, &h[..], None));
        assert!(!all.needs_body() && subscription.needs_body());
    }

    #[test]
    fn invalid_destinations_are_refused_with_the_field_named() {
        for (json, field) in [
            (r#"{"target":{"type":"nats","subject":"a.*"}}"#, "subject"),
            (
                r#"{"target":{"type":"nats","subject":"a"},"subscription":{"event_types":[" x"]}}"#,
                "event_types",
            ),
            (
                r#"{"target":{"type":"nats","subject":"a"},"subscription":{"event_types":[""]}}"#,
                "event_types",
            ),
            (
                r#"{"target":{"type":"nats","subject":"a"},"description":"a\u001b[31m"}"#,
                "description",
            ),
        ] {
            let error = Destination::from_json(json.as_bytes()).unwrap_err();
            let text = format!(
                "{error}: {}",
                std::error::Error::source(&error)
                    .map(ToString::to_string)
                    .unwrap_or_default()
            );
            assert!(text.contains(field), "{json}: {text}");
        }
        for json in [
            r#"{"target":{"type":"nats","subject":"a"},"subscription":{"platforms":["Shop"]}}"#,
            r#"{"target":{"type":"nats","subject":"a"},"subscription":{"filter":{"body":{}}}}"#,
            r#"{"target":{"type":"nats","subject":"a"},"subscription":{"colour":"red"}}"#,
            r#"{"target":{"type":"nats","subject":"a"},"owner":"x"}"#,
        ] {
            assert!(
                matches!(
                    Destination::from_json(json.as_bytes()),
                    Err(DestinationError::Json(_))
                ),
                "{json}"
            );
        }
        for limit in [
            r#"{"rate_per_sec":0}"#,
            r#"{"rate_per_sec":5,"burst":0}"#,
            r#"{"rate_per_sec":1e-300}"#,
            r#"{"rate_per_sec":1e300}"#,
            r#"{"rate_per_sec":5,"burst":4294967295}"#,
        ] {
            let json =
                format!(r#"{{"target":{{"type":"nats","subject":"a"}},"rate_limit":{limit}}}"#);
            let error = Destination::from_json(json.as_bytes())
                .unwrap_err()
                .to_string();
            assert!(error.contains("rate_limit"), "{limit}: {error}");
        }
        let json = br#"{"target":{"type":"nats","subject":"a"},"rate_limit":{"rate_per_sec":5}}"#;
        let limited = Destination::from_json(json).unwrap();
        assert_eq!(limited.rate_limit.map(|l| l.burst), Some(1));
        let many: Vec<String> = (0..=MAX_LIST).map(|i| format!("t{i}")).collect();
        let json = serde_json::json!({"target":{"type":"nats","subject":"a"},
                                      "subscription":{"event_types": many}});
        assert!(Destination::from_json(json.to_string().as_bytes()).is_err());
    }

    #[test]
    fn a_redacted_destination_shows_no_secret() {
        let json = br#"{"target":{"type":"webhook","url":"https://u:p@h.example/x?token=t",
            "secret":"whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"}}"#;
        let shown =
            String::from_utf8(Destination::from_json(json).unwrap().redacted().to_json()).unwrap();
        for secret in ["MfKQ9r8", "token=t", "u:p"] {
            assert!(!shown.contains(secret), "{shown}");
        }
    }
}
