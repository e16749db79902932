//! Tenant-scoped KV key schemas, one type per bucket, each rendering to a key and parsing back
//! losslessly, with per-tenant list/watch filters.
//!
//! | bucket (default name) | key | example |
//! |---|---|---|
//! | `idempotency` | `<tenant>.<platform>.<encoded msg id>` | `acme.slack.order=2E42` |
//! | `routes` | `<tenant>.<team or _>.<platform>` | `acme._.slack` (team-less default) |
//! | `destinations` | `<tenant>.<destination>` | `acme.orders-hook` |
//! | `tenants` | `<tenant>` | `acme` |
//! | `rate-limits` | `<tenant or _default>.<record>` | `acme.limit`, `_default.limit`, `acme.quota` |
//! | `dlq-stats` | `<tenant or _>.<stage>.<encoded code>`, `_state` | `acme.egress.no_route` |
//! | `dlq-jobs` | `<job id>` | `0193a1b2-c3d4-7e5f-8a9b-0c1d2e3f4a5b` |
//! | `dlq-replays` | `<tenant or _>.<dlq seq>.<stored ms>` | `acme.42.1765000000123` |
//! | `breakers` | a route's or a destination's key | `acme.ops.slack`, `acme.orders-hook` |
//!
//! Every key starts with the tenant token, so `<tenant>.>` lists or watches exactly one
//! tenant's keys (single-token keys are watched by their own name).

use std::fmt;

use crate::error::{KeyError, shown};
use crate::id::{Address, DestinationId, PlatformId, Stage, TeamId, TenantId};
use crate::token::{MsgId, decode_token, encode_token};

/// A key schema: renders to a KV key and parses back to the same value.
pub trait KvKey: Sized {
    /// The schema's name, used in error messages.
    const SCHEMA: &'static str;
    /// Renders the key; always valid for a NATS KV bucket.
    fn render(&self) -> String;
    /// Parses a key rendered by [`KvKey::render`].
    fn parse(key: &str) -> Result<Self, KeyError>;
}

/// The list/watch filter for every key of one tenant in buckets keyed `<tenant>.…`.
pub fn tenant_filter(tenant: &TenantId) -> String {
    format!("{tenant}.>")
}

fn schema_err<K: KvKey>(key: &str, reason: impl Into<String>) -> KeyError {
    KeyError::KeySchema {
        schema: K::SCHEMA,
        key: shown(key),
        reason: reason.into(),
    }
}

fn split_exact<K: KvKey, const N: usize>(key: &str) -> Result<[&str; N], KeyError> {
    let parts: Vec<&str> = key.split('.').collect();
    parts.try_into().map_err(|parts: Vec<&str>| {
        schema_err::<K>(key, format!("expected {N} tokens, found {}", parts.len()))
    })
}

fn field<K: KvKey, T>(key: &str, parsed: Result<T, KeyError>) -> Result<T, KeyError> {
    parsed.map_err(|e| schema_err::<K>(key, e.to_string()))
}

/// Claim of one producer message in the `idempotency` bucket.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct IdempotencyKey {
    /// The tenant that sent the message.
    pub tenant: TenantId,
    /// The platform it is for (ids are unique per tenant and platform).
    pub platform: PlatformId,
    /// The producer's message id.
    pub msg_id: MsgId,
}

impl IdempotencyKey {
    /// The filter for one tenant's claims on one platform.
    pub fn platform_filter(tenant: &TenantId, platform: &PlatformId) -> String {
        format!("{tenant}.{platform}.>")
    }
}

impl KvKey for IdempotencyKey {
    const SCHEMA: &'static str = "idempotency";

    fn render(&self) -> String {
        format!(
            "{}.{}.{}",
            self.tenant,
            self.platform,
            self.msg_id.to_token()
        )
    }

    fn parse(key: &str) -> Result<Self, KeyError> {
        let [tenant, platform, msg_id] = split_exact::<Self, 3>(key)?;
        Ok(Self {
            tenant: field::<Self, _>(key, tenant.parse())?,
            platform: field::<Self, _>(key, platform.parse())?,
            msg_id: field::<Self, _>(key, MsgId::from_token(msg_id))?,
        })
    }
}

/// The team part of a route key: a specific team, or `_`, the tenant's default for the
/// platform used when a team has no route of its own.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum RouteTeam {
    /// Any team without its own route (rendered `_`).
    Any,
    /// One team.
    Team(TeamId),
}

impl fmt::Display for RouteTeam {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RouteTeam::Any => f.write_str("_"),
            RouteTeam::Team(team) => team.fmt(f),
        }
    }
}

/// A route in the `routes` bucket.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RouteKey {
    /// The tenant.
    pub tenant: TenantId,
    /// The team, or the tenant-wide default.
    pub team: RouteTeam,
    /// The platform.
    pub platform: PlatformId,
}

impl RouteKey {
    /// The keys to try, in order, for a message's address: the team's own route, then the
    /// tenant's team-less default for the platform.
    pub fn lookup_order(address: &Address) -> [RouteKey; 2] {
        [
            RouteKey {
                tenant: address.tenant.clone(),
                team: RouteTeam::Team(address.team.clone()),
                platform: address.platform.clone(),
            },
            RouteKey {
                tenant: address.tenant.clone(),
                team: RouteTeam::Any,
                platform: address.platform.clone(),
            },
        ]
    }
}

impl KvKey for RouteKey {
    const SCHEMA: &'static str = "route";

    fn render(&self) -> String {
        format!("{}.{}.{}", self.tenant, self.team, self.platform)
    }

    fn parse(key: &str) -> Result<Self, KeyError> {
        let [tenant, team, platform] = split_exact::<Self, 3>(key)?;
        let team = match team {
            "_" => RouteTeam::Any,
            team => RouteTeam::Team(field::<Self, _>(key, team.parse())?),
        };
        Ok(Self {
            tenant: field::<Self, _>(key, tenant.parse())?,
            team,
            platform: field::<Self, _>(key, platform.parse())?,
        })
    }
}

/// A tenant's entry in the `tenants` registry bucket (enabled/disabled and settings).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct TenantKey {
    /// The tenant.
    pub tenant: TenantId,
}

impl KvKey for TenantKey {
    const SCHEMA: &'static str = "tenant";

    fn render(&self) -> String {
        self.tenant.to_string()
    }

    fn parse(key: &str) -> Result<Self, KeyError> {
        let [tenant] = split_exact::<Self, 1>(key)?;
        Ok(Self {
            tenant: field::<Self, _>(key, tenant.parse())?,
        })
    }
}

/// A destination in the `destinations` bucket: `<tenant>.<destination>`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct DestinationKey {
    /// The tenant.
    pub tenant: TenantId,
    /// The destination, unique within the tenant.
    pub destination: DestinationId,
}

impl KvKey for DestinationKey {
    const SCHEMA: &'static str = "destination";

    fn render(&self) -> String {
        format!("{}.{}", self.tenant, self.destination)
    }

    fn parse(key: &str) -> Result<Self, KeyError> {
        let [tenant, destination] = split_exact::<Self, 2>(key)?;
        Ok(Self {
            tenant: field::<Self, _>(key, tenant.parse())?,
            destination: field::<Self, _>(key, destination.parse())?,
        })
    }
}

/// A circuit breaker's key in the `breakers` bucket: the key of the route or destination it
/// guards, as in its own bucket (a route's three tokens, a destination's two), so a record
/// names what it holds back and `<tenant>.>` lists one tenant's open breakers.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum BreakerKey {
    /// A route's breaker (`acme.ops.slack`, `acme._.slack`).
    Route(RouteKey),
    /// A destination's breaker (`acme.orders-hook`).
    Destination(DestinationKey),
}

impl BreakerKey {
    /// The tenant whose route or destination it is.
    pub fn tenant(&self) -> &TenantId {
        match self {
            BreakerKey::Route(key) => &key.tenant,
            BreakerKey::Destination(key) => &key.tenant,
        }
    }
}

impl KvKey for BreakerKey {
    const SCHEMA: &'static str = "breaker";

    fn render(&self) -> String {
        match self {
            BreakerKey::Route(key) => key.render(),
            BreakerKey::Destination(key) => key.render(),
        }
    }

    /// Three tokens make a route's key, two a destination's; anything else is refused.
    fn parse(key: &str) -> Result<Self, KeyError> {
        match key.split('.').count() {
            3 => RouteKey::parse(key).map(BreakerKey::Route),
            2 => DestinationKey::parse(key).map(BreakerKey::Destination),
            n => Err(schema_err::<Self>(
                key,
                format!("expected 3 tokens (a route) or 2 (a destination), found {n}"),
            )),
        }
    }
}

/// An API key's id in the `api-keys` bucket: 32 lowercase hex characters (128 random bits),
/// the public half of a key `sy_<id>_<secret>`. Keyed by id alone, so a request's key is
/// found without trusting the tenant the request names.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ApiKeyKey {
    /// The id.
    pub id: String,
}

impl ApiKeyKey {
    /// Characters in an id.
    pub const LEN: usize = 32;

    /// Validates an id (32 lowercase hex characters).
    pub fn new(id: impl Into<String>) -> Result<Self, KeyError> {
        let id = id.into();
        if id.len() != Self::LEN
            || !id
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        {
            return Err(KeyError::KeySchema {
                schema: Self::SCHEMA,
                key: shown(&id),
                reason: format!("an api key id is {} lowercase hex characters", Self::LEN),
            });
        }
        Ok(Self { id })
    }
}

impl KvKey for ApiKeyKey {
    const SCHEMA: &'static str = "api key";

    fn render(&self) -> String {
        self.id.clone()
    }

    fn parse(key: &str) -> Result<Self, KeyError> {
        Self::new(key)
    }
}

/// Whose rate settings a [`RateKey`] holds: one tenant's, or the default for tenants without
/// their own (rendered `_default`).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum RateScope {
    /// The default for tenants without their own record.
    Default,
    /// One tenant.
    Tenant(TenantId),
}

/// Which record of a tenant a [`RateKey`] names in the `rate-limits` bucket.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RateRecord {
    /// The configured limit (rate per second and burst).
    Limit,
    /// The global token state the replicas lease from.
    Tokens,
    /// The admission (pressure) state published for the edge.
    Pressure,
    /// Whether the tenant's own ingress stream is near its quota (the latch of the
    /// `quota_near_full` event).
    Quota,
}

impl RateRecord {
    const ALL: [RateRecord; 4] = [
        RateRecord::Limit,
        RateRecord::Tokens,
        RateRecord::Pressure,
        RateRecord::Quota,
    ];

    /// The KV filter matching this record of every scope (`*.limit`, `*.pressure`): what a
    /// watch or listing of one record type uses.
    pub const fn filter(self) -> &'static str {
        match self {
            RateRecord::Limit => "*.limit",
            RateRecord::Tokens => "*.tokens",
            RateRecord::Pressure => "*.pressure",
            RateRecord::Quota => "*.quota",
        }
    }

    fn as_str(self) -> &'static str {
        match self {
            RateRecord::Limit => "limit",
            RateRecord::Tokens => "tokens",
            RateRecord::Pressure => "pressure",
            RateRecord::Quota => "quota",
        }
    }
}

/// A record in the `rate-limits` bucket.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct RateKey {
    /// Whose record.
    pub scope: RateScope,
    /// Which record.
    pub record: RateRecord,
}

impl KvKey for RateKey {
    const SCHEMA: &'static str = "rate";

    fn render(&self) -> String {
        match &self.scope {
            RateScope::Default => format!("_default.{}", self.record.as_str()),
            RateScope::Tenant(tenant) => format!("{tenant}.{}", self.record.as_str()),
        }
    }

    fn parse(key: &str) -> Result<Self, KeyError> {
        let [scope, record] = split_exact::<Self, 2>(key)?;
        let scope = match scope {
            "_default" => RateScope::Default,
            tenant => RateScope::Tenant(field::<Self, _>(key, tenant.parse())?),
        };
        let record = RateRecord::ALL
            .into_iter()
            .find(|r| r.as_str() == record)
            .ok_or_else(|| {
                schema_err::<Self>(key, "record must be limit, tokens, pressure or quota")
            })?;
        Ok(Self { scope, record })
    }
}

/// A backpressure replica's heartbeat in the `rate-limits` bucket (`_replicas.<id>`): the
/// live replicas are counted to split a limit while KV is unreachable.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ReplicaKey {
    /// The replica's id: `[A-Za-z0-9_-]`, 1 to 64 characters.
    pub id: String,
}

impl ReplicaKey {
    /// The filter for every replica heartbeat.
    pub const FILTER: &'static str = "_replicas.*";
}

impl KvKey for ReplicaKey {
    const SCHEMA: &'static str = "replica";

    fn render(&self) -> String {
        format!("_replicas.{}", self.id)
    }

    fn parse(key: &str) -> Result<Self, KeyError> {
        let [scope, id] = split_exact::<Self, 2>(key)?;
        let valid = !id.is_empty()
            && id.len() <= 64
            && id
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
        if scope != "_replicas" || !valid {
            return Err(schema_err::<Self>(
                key,
                "expected _replicas.<id> with id of [A-Za-z0-9_-]",
            ));
        }
        Ok(Self { id: id.to_owned() })
    }
}

/// A record in the `dlq-stats` bucket: the inflow counters of one (tenant, stage, code), or
/// the stats processor's own state (cursor and lease).
///
/// | record | key | example |
/// |---|---|---|
/// | counter | `<tenant or _>.<stage>.<encoded code>` | `acme.egress.no_route`, `_.ingress.invalid_subject` |
/// | processor state | `_state` | `_state` |
///
/// `_` stands for "no valid tenant" (as in DLQ subjects); tenant ids never start with `_`, so
/// neither form can collide with a tenant. [`tenant_filter`] lists one tenant's counters.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum DlqStatsKey {
    /// The counters of one (tenant, stage, code).
    Counter {
        /// The tenant, or `None` for entries without a valid tenant.
        tenant: Option<TenantId>,
        /// The stage that gave up.
        stage: Stage,
        /// The DLQ code (any non-empty text; `=XX`-encoded in the key).
        code: String,
    },
    /// The stats processor's cursor and lease.
    State,
}

impl DlqStatsKey {
    /// The single-token key of the processor state.
    pub const STATE: &'static str = "_state";
    /// The filter for the counters of entries without a valid tenant.
    pub const NO_TENANT_FILTER: &'static str = "_.>";
}

impl KvKey for DlqStatsKey {
    const SCHEMA: &'static str = "dlq stats";

    fn render(&self) -> String {
        match self {
            DlqStatsKey::State => Self::STATE.to_owned(),
            DlqStatsKey::Counter {
                tenant,
                stage,
                code,
            } => format!(
                "{}.{stage}.{}",
                tenant.as_ref().map_or("_", TenantId::as_str),
                encode_token(code)
            ),
        }
    }

    fn parse(key: &str) -> Result<Self, KeyError> {
        if key == Self::STATE {
            return Ok(DlqStatsKey::State);
        }
        let [tenant, stage, code] = split_exact::<Self, 3>(key)?;
        let tenant = match tenant {
            "_" => None,
            tenant => Some(field::<Self, _>(key, tenant.parse())?),
        };
        Ok(DlqStatsKey::Counter {
            tenant,
            stage: field::<Self, _>(key, stage.parse())?,
            code: field::<Self, _>(key, decode_token(code))?,
        })
    }
}

/// A replay job in the `dlq-jobs` bucket, keyed by its id.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct DlqJobKey {
    /// The job id: 1 to 64 characters of `[a-z0-9-]`, starting with `[a-z0-9]` (the CLI uses
    /// lower-case hyphenated UUIDv7s).
    pub job: String,
}

impl DlqJobKey {
    /// Checks a job id.
    pub fn new(job: impl Into<String>) -> Result<Self, KeyError> {
        let job = job.into();
        let valid = !job.is_empty()
            && job.len() <= 64
            && !job.starts_with('-')
            && job
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
        if !valid {
            return Err(schema_err::<Self>(
                &job,
                "a job id is 1 to 64 characters of [a-z0-9-], starting with [a-z0-9]",
            ));
        }
        Ok(Self { job })
    }
}

impl KvKey for DlqJobKey {
    const SCHEMA: &'static str = "dlq job";

    fn render(&self) -> String {
        self.job.clone()
    }

    fn parse(key: &str) -> Result<Self, KeyError> {
        Self::new(key)
    }
}

/// A replay under way of one stored DLQ entry, in the `dlq-replays` bucket: the entry's
/// tenant (`_` without one), DLQ sequence and storage time in ms since the epoch (together
/// unique even when the DLQ is re-created).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct DlqReplayKey {
    /// The entry's tenant.
    pub tenant: Option<TenantId>,
    /// Its DLQ sequence.
    pub seq: u64,
    /// When the DLQ stored it, in ms since the Unix epoch.
    pub stored_ms: i64,
}

impl KvKey for DlqReplayKey {
    const SCHEMA: &'static str = "dlq replay";

    fn render(&self) -> String {
        format!(
            "{}.{}.{}",
            self.tenant.as_ref().map_or("_", TenantId::as_str),
            self.seq,
            self.stored_ms
        )
    }

    fn parse(key: &str) -> Result<Self, KeyError> {
        let [tenant, seq, stored_ms] = split_exact::<Self, 3>(key)?;
        let tenant = match tenant {
            "_" => None,
            tenant => Some(field::<Self, _>(key, tenant.parse())?),
        };
        let number = |raw: &str| {
            raw.parse::<i64>()
                .ok()
                .filter(|n| *n >= 0 && n.to_string() == raw)
                .ok_or_else(|| schema_err::<Self>(key, "sequence and time are decimal numbers"))
        };
        Ok(Self {
            tenant,
            seq: number(seq)?.unsigned_abs(),
            stored_ms: number(stored_ms)?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn id_strategy() -> impl Strategy<Value = String> {
        "[a-z0-9][a-z0-9_-]{0,63}"
    }

    /// What NATS accepts as a KV key (the server-side rule mirrored by async-nats).
    fn is_valid_kv_key(key: &str) -> bool {
        !key.is_empty()
            && !key.starts_with('.')
            && !key.ends_with('.')
            && !key.contains("..")
            && key
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-/_=.".contains(&b))
    }

    #[test]
    fn route_lookup_prefers_the_team() {
        let address = Address::parse("acme", "ops", "slack").unwrap();
        let [own, default] = RouteKey::lookup_order(&address);
        assert_eq!(own.render(), "acme.ops.slack");
        assert_eq!(default.render(), "acme._.slack");
        assert_eq!(RouteKey::parse("acme._.slack").unwrap(), default);
    }

    #[test]
    fn breaker_keys_are_a_route_or_a_destination_key_and_nothing_else() {
        for key in ["acme.ops.slack", "acme._.slack"] {
            let parsed = BreakerKey::parse(key).unwrap();
            assert!(matches!(parsed, BreakerKey::Route(_)), "{key}");
            assert_eq!(parsed.render(), key);
            assert_eq!(parsed.tenant().as_str(), "acme");
        }
        let parsed = BreakerKey::parse("acme.orders-hook").unwrap();
        assert!(matches!(parsed, BreakerKey::Destination(_)));
        assert_eq!(parsed.render(), "acme.orders-hook");
        for junk in ["acme", "a.b.c.d", "acme..x", "Acme.ops.slack", ""] {
            assert!(BreakerKey::parse(junk).is_err(), "{junk:?}");
        }
    }

    #[test]
    fn destination_keys_round_trip_and_cannot_be_confused_with_route_keys() {
        let key = DestinationKey {
            tenant: "acme".parse().unwrap(),
            destination: "orders-hook".parse().unwrap(),
        };
        assert_eq!(key.render(), "acme.orders-hook");
        assert_eq!(DestinationKey::parse("acme.orders-hook").unwrap(), key);
        assert!(DestinationKey::parse("acme.ops.slack").is_err());
        assert!(DestinationKey::parse("acme._hidden").is_err());
        assert!(RouteKey::parse("acme.orders-hook").is_err());
    }

    #[test]
    fn replica_keys_round_trip() {
        let key = ReplicaKey {
            id: "0193a1b2c3".into(),
        };
        assert_eq!(key.render(), "_replicas.0193a1b2c3");
        assert_eq!(ReplicaKey::parse(&key.render()).unwrap(), key);
        assert!(ReplicaKey::parse("_replicas.a.b").is_err());
        assert!(ReplicaKey::parse("acme.limit").is_err());
    }

    #[test]
    fn rate_keys_render() {
        let default = RateKey {
            scope: RateScope::Default,
            record: RateRecord::Limit,
        };
        assert_eq!(default.render(), "_default.limit");
        assert_eq!(RateKey::parse("_default.limit").unwrap(), default);
        assert!(RateKey::parse("acme.speed").is_err());
    }

    #[test]
    fn malformed_keys_are_refused_with_the_schema_named() {
        let err = IdempotencyKey::parse("acme.slack").unwrap_err();
        assert!(
            err.to_string()
                .contains("idempotency schema: expected 3 tokens, found 2"),
            "{err}"
        );
        assert!(IdempotencyKey::parse("acme.slack.a.b").is_err());
        assert!(IdempotencyKey::parse("ACME.slack.x").is_err());
        assert!(TenantKey::parse("a.b").is_err());
    }

    #[test]
    fn dlq_stats_and_job_keys_render() {
        let key = DlqStatsKey::Counter {
            tenant: Some(TenantId::new("acme").unwrap()),
            stage: Stage::Egress,
            code: "no_route".into(),
        };
        assert_eq!(key.render(), "acme.egress.no_route");
        let unknown = DlqStatsKey::Counter {
            tenant: None,
            stage: Stage::Ingress,
            code: "invalid_subject".into(),
        };
        assert_eq!(unknown.render(), "_.ingress.invalid_subject");
        assert_eq!(DlqStatsKey::parse("_state").unwrap(), DlqStatsKey::State);
        assert!(DlqStatsKey::parse("acme.nowhere.no_route").is_err());
        assert!(DlqStatsKey::parse("acme.egress").is_err());
        assert!(DlqJobKey::new("0193a1b2-c3d4-7e5f-8a9b-0c1d2e3f4a5b").is_ok());
        for bad in ["", "-x", "A", "a.b", "a_b", &"a".repeat(65)] {
            assert!(DlqJobKey::new(bad).is_err(), "{bad:?}");
        }
    }

    proptest! {
        #[test]
        fn idempotency_keys_round_trip(
            tenant in id_strategy(),
            platform in id_strategy(),
            msg_id in "[^\\s\\p{Cc}]([^\\p{Cc}]{0,298}[^\\s\\p{Cc}])?",
        ) {
            let key = IdempotencyKey {
                tenant: TenantId::new(tenant).unwrap(),
                platform: PlatformId::new(platform).unwrap(),
                msg_id: MsgId::new(msg_id).unwrap(),
            };
            let rendered = key.render();
            prop_assert!(is_valid_kv_key(&rendered), "{}", rendered);
            prop_assert_eq!(rendered.split('.').count(), 3);
            prop_assert!(rendered.starts_with(&tenant_filter(&key.tenant)[..key.tenant.as_str().len() + 1]));
            prop_assert_eq!(IdempotencyKey::parse(&rendered).unwrap(), key);
        }

        #[test]
        fn route_keys_round_trip(tenant in id_strategy(), team in proptest::option::of(id_strategy()), platform in id_strategy()) {
            let key = RouteKey {
                tenant: TenantId::new(tenant).unwrap(),
                team: team.map_or(RouteTeam::Any, |t| RouteTeam::Team(TeamId::new(t).unwrap())),
                platform: PlatformId::new(platform).unwrap(),
            };
            let rendered = key.render();
            prop_assert!(is_valid_kv_key(&rendered));
            prop_assert_eq!(RouteKey::parse(&rendered).unwrap(), key);
        }

        #[test]
        fn rate_and_tenant_keys_round_trip(tenant in id_strategy()) {
            let tenant = TenantId::new(tenant).unwrap();
            for record in RateRecord::ALL {
                let key = RateKey { scope: RateScope::Tenant(tenant.clone()), record };
                prop_assert!(is_valid_kv_key(&key.render()));
                prop_assert_eq!(RateKey::parse(&key.render()).unwrap(), key);
            }
            let key = TenantKey { tenant };
            prop_assert_eq!(TenantKey::parse(&key.render()).unwrap(), key);
        }

        #[test]
        fn dlq_stats_keys_round_trip(
            tenant in proptest::option::of(id_strategy()),
            stage in 0usize..5,
            code in "[^\\p{Cc}]{1,40}",
        ) {
            let key = DlqStatsKey::Counter {
                tenant: tenant.map(|t| TenantId::new(t).unwrap()),
                stage: Stage::ALL[stage],
                code,
            };
            let rendered = key.render();
            prop_assert!(is_valid_kv_key(&rendered), "{}", rendered);
            prop_assert_eq!(rendered.split('.').count(), 3);
            prop_assert_eq!(DlqStatsKey::parse(&rendered).unwrap(), key);
        }

        #[test]
        fn dlq_job_keys_round_trip(job in "[a-z0-9][a-z0-9-]{0,63}") {
            let key = DlqJobKey::new(job).unwrap();
            prop_assert!(is_valid_kv_key(&key.render()));
            prop_assert_eq!(DlqJobKey::parse(&key.render()).unwrap(), key);
        }

        #[test]
        fn dlq_replay_keys_round_trip(
            tenant in proptest::option::of(id_strategy()),
            seq in 0u64..(i64::MAX as u64),
            stored_ms in 0i64..i64::MAX,
        ) {
            let key = DlqReplayKey {
                tenant: tenant.map(|t| TenantId::new(t).unwrap()),
                seq,
                stored_ms,
            };
            let rendered = key.render();
            prop_assert!(is_valid_kv_key(&rendered), "{}", rendered);
            prop_assert_eq!(DlqReplayKey::parse(&rendered).unwrap(), key);
        }
    }
}
