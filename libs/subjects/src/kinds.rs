//! The subject kinds: one typed struct per kind, each with one format and one parse.

use std::fmt;
use std::str::FromStr;

use switchyard_keys::{Address, KeyError, PlatformId, Stage, TenantId};

use crate::{Namespace, Shard, SizeClass, SubjectError};

/// A subject kind: formats to a `String` and parses back to the same value.
pub trait SubjectKind: Sized {
    /// The kind's name, for error messages.
    const KIND: &'static str;
    /// Formats the subject in a namespace.
    fn format(&self, ns: &Namespace) -> String;
    /// Parses a subject of this kind in a namespace.
    fn parse(ns: &Namespace, subject: &str) -> Result<Self, SubjectError>;
}

/// Splits a subject, checks its root and token count, and returns the tokens after `v1`.
fn tokens<'a, K: SubjectKind, const N: usize>(
    ns: &Namespace,
    subject: &'a str,
    accepts_root: impl Fn(&str) -> bool,
) -> Result<(&'a str, [&'a str; N]), SubjectError> {
    let (root, rest) = ns.split(subject)?;
    if !accepts_root(root) {
        return Err(SubjectError::WrongKind {
            subject: subject.to_owned(),
            expected: K::KIND,
        });
    }
    let found = rest.len();
    let rest: [&str; N] = rest.try_into().map_err(|_| SubjectError::TokenCount {
        subject: subject.to_owned(),
        kind: K::KIND,
        expected: N,
        found,
    })?;
    Ok((root, rest))
}

fn token<T: FromStr<Err = KeyError>>(subject: &str, raw: &str) -> Result<T, SubjectError> {
    raw.parse().map_err(|source| SubjectError::InvalidToken {
        subject: subject.to_owned(),
        source,
    })
}

fn address(subject: &str, [tenant, team, platform]: [&str; 3]) -> Result<Address, SubjectError> {
    Ok(Address::new(
        token(subject, tenant)?,
        token(subject, team)?,
        token(subject, platform)?,
    ))
}

/// A stage that consumes a pipeline subject. `Ingress` is what producers publish to; the
/// others are hand-offs between stages.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum InputStage {
    /// `ingress.v1.…`: producers' subjects.
    Ingress,
    /// `idempotency.v1.…`: validated, stamped messages.
    Idempotency,
    /// `backpressure.v1.…`: first sightings, waiting for rate tokens.
    Backpressure,
    /// `egress.v1.…`: ready to deliver.
    Egress,
}

impl InputStage {
    /// Every input stage, in pipeline order.
    pub const ALL: [InputStage; 4] = [
        InputStage::Ingress,
        InputStage::Idempotency,
        InputStage::Backpressure,
        InputStage::Egress,
    ];

    /// The subject root token (also the stage's name).
    pub fn root(self) -> &'static str {
        self.stage().as_str()
    }

    /// The pipeline stage that consumes this subject.
    pub fn stage(self) -> Stage {
        match self {
            InputStage::Ingress => Stage::Ingress,
            InputStage::Idempotency => Stage::Idempotency,
            InputStage::Backpressure => Stage::Backpressure,
            InputStage::Egress => Stage::Egress,
        }
    }

    /// Whether this stage's input is spread over [`Shard::COUNT`] streams, with the tenant's
    /// [`Shard`] as the subject's first token after the version (`BACKPRESSURE`, whose
    /// consumers are one per tenant; see [`Shard`]).
    pub const fn sharded(self) -> bool {
        matches!(self, InputStage::Backpressure)
    }

    /// Whether this stage's subjects end in the message's [`SizeClass`]: the hand-offs into
    /// the streams many tenants share ahead of their rate limit (`IDEMPOTENCY`,
    /// `BACKPRESSURE_<shard>`), whose bytes per tenant ingress's credit counts.
    pub const fn sized(self) -> bool {
        matches!(self, InputStage::Idempotency | InputStage::Backpressure)
    }

    fn from_root(root: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|s| s.root() == root)
    }
}

impl fmt::Display for InputStage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.root())
    }
}

/// `[p.]<stage>.v1.<tenant>.<team>.<platform>`: a message waiting for `stage`; for a
/// [sharded](InputStage::sharded) stage `[p.]<stage>.v1.<shard>.<tenant>.<team>.<platform>`,
/// where `<shard>` is always [`Shard::of`] the tenant (a subject naming another shard does
/// not parse). A [sized](InputStage::sized) stage's subject ends in the message's
/// [`SizeClass`] token (`….<platform>.<class>`, written by [`StageSubject::format_sized`]);
/// one without it parses too (counted as [`SizeClass::SMALLEST`]).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct StageSubject {
    /// The stage that consumes the subject.
    pub stage: InputStage,
    /// Where the message is headed.
    pub address: Address,
}

impl StageSubject {
    /// The subject of a message whose stored size (headers and payload) falls in `size`: for
    /// a [sized](InputStage::sized) stage with the class token last, for any other stage the
    /// same as [`SubjectKind::format`]. Every publisher into a sized stage uses this one.
    pub fn format_sized(&self, ns: &Namespace, size: SizeClass) -> String {
        self.format_with(ns, self.stage.sized().then_some(size))
    }

    /// Parses a stage subject and, for a sized stage, its class (`None`: an unsized stage, or
    /// a sized stage's subject without the class token).
    ///
    /// Errors: as [`SubjectKind::parse`]; a last token that is no class, on a sized stage's
    /// subject one token longer than its address, is [`SubjectError::InvalidSizeClass`].
    pub fn parse_sized(
        ns: &Namespace,
        subject: &str,
    ) -> Result<(Self, Option<SizeClass>), SubjectError> {
        let (root, rest) = ns.split(subject)?;
        let stage = InputStage::from_root(root).ok_or_else(|| SubjectError::WrongKind {
            subject: subject.to_owned(),
            expected: Self::KIND,
        })?;
        let ids = if stage.sharded() { 4 } else { 3 };
        let (body, size) = match subject.rsplit_once('.') {
            Some((body, last)) if stage.sized() && rest.len() == ids + 1 => {
                let size =
                    SizeClass::from_token(last).ok_or_else(|| SubjectError::InvalidSizeClass {
                        subject: subject.to_owned(),
                        token: last.to_owned(),
                    })?;
                (body, Some(size))
            }
            _ => (subject, None),
        };
        let parsed = Self::parse_unsized(ns, stage, body).map_err(|e| e.naming(subject))?;
        Ok((parsed, size))
    }

    fn format_with(&self, ns: &Namespace, size: Option<SizeClass>) -> String {
        let a = &self.address;
        let mut tokens = Vec::with_capacity(5);
        if self.stage.sharded() {
            tokens.push(Shard::of(&a.tenant).token());
        }
        tokens.extend([a.tenant.as_str(), a.team.as_str(), a.platform.as_str()]);
        tokens.extend(size.map(SizeClass::token));
        ns.subject(self.stage.root(), &tokens)
    }

    fn parse_unsized(
        ns: &Namespace,
        stage: InputStage,
        subject: &str,
    ) -> Result<Self, SubjectError> {
        if !stage.sharded() {
            let (_, rest) = tokens::<Self, 3>(ns, subject, |_| true)?;
            return Ok(Self {
                stage,
                address: address(subject, rest)?,
            });
        }
        let (_, [shard, tenant, team, platform]) = tokens::<Self, 4>(ns, subject, |_| true)?;
        let address = address(subject, [tenant, team, platform])?;
        let expected = Shard::of(&address.tenant);
        if shard != expected.token() {
            return Err(SubjectError::WrongShard {
                subject: subject.to_owned(),
                expected,
            });
        }
        Ok(Self { stage, address })
    }
}

impl SubjectKind for StageSubject {
    const KIND: &'static str = "pipeline stage";

    /// The subject without a class token (for a sized stage, counted as the smallest class:
    /// publishers into a sized stage use [`StageSubject::format_sized`]).
    fn format(&self, ns: &Namespace) -> String {
        self.format_with(ns, None)
    }

    fn parse(ns: &Namespace, subject: &str) -> Result<Self, SubjectError> {
        Self::parse_sized(ns, subject).map(|(parsed, _)| parsed)
    }
}

/// The token standing for "unknown" in a DLQ subject: input so broken that its tenant or
/// platform could not be read (ids never start with `_`, so it cannot collide).
pub const UNKNOWN_TOKEN: &str = "_";

/// `[p.]dlq.v1.<tenant>.<stage>.<platform>`: a dead-lettered message. Tenant and platform are
/// `_` when the input was too broken to name them (e.g. an invalid ingress subject).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct DlqSubject {
    /// The tenant that owns the message, if known.
    pub tenant: Option<TenantId>,
    /// The stage that gave up on it.
    pub stage: Stage,
    /// Its platform, if known.
    pub platform: Option<PlatformId>,
}

fn known<T: FromStr<Err = KeyError>>(subject: &str, raw: &str) -> Result<Option<T>, SubjectError> {
    if raw == UNKNOWN_TOKEN {
        Ok(None)
    } else {
        token(subject, raw).map(Some)
    }
}

impl SubjectKind for DlqSubject {
    const KIND: &'static str = "dlq";

    fn format(&self, ns: &Namespace) -> String {
        let tenant = self.tenant.as_ref().map_or(UNKNOWN_TOKEN, TenantId::as_str);
        let platform = self
            .platform
            .as_ref()
            .map_or(UNKNOWN_TOKEN, PlatformId::as_str);
        ns.subject("dlq", &[tenant, self.stage.as_str(), platform])
    }

    fn parse(ns: &Namespace, subject: &str) -> Result<Self, SubjectError> {
        let (_, [tenant, stage, platform]) = tokens::<Self, 3>(ns, subject, |r| r == "dlq")?;
        Ok(Self {
            tenant: known(subject, tenant)?,
            stage: token(subject, stage)?,
            platform: known(subject, platform)?,
        })
    }
}

/// `[p.]delay.v1.<stage>.<tenant>.<team>.<platform>.<key>`: a message scheduled to re-enter
/// `stage` later (a JetStream message schedule whose target is the stage's subject). Used by
/// egress for retries: a waiting message holds no consumer's ack-pending slot. `key`
/// (an envelope id) makes the schedule unique per message; a newer schedule for the same key
/// replaces the older one.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct DelaySubject {
    /// The stage the message re-enters.
    pub stage: InputStage,
    /// Where the message is headed.
    pub address: Address,
    /// The message's key (envelope id), a single token of `[A-Za-z0-9_-]`.
    pub key: String,
}

impl SubjectKind for DelaySubject {
    const KIND: &'static str = "delay";

    fn format(&self, ns: &Namespace) -> String {
        let a = &self.address;
        ns.subject(
            "delay",
            &[
                self.stage.root(),
                a.tenant.as_str(),
                a.team.as_str(),
                a.platform.as_str(),
                &self.key,
            ],
        )
    }

    fn parse(ns: &Namespace, subject: &str) -> Result<Self, SubjectError> {
        let (_, [stage, tenant, team, platform, key]) =
            tokens::<Self, 5>(ns, subject, |r| r == "delay")?;
        let stage = InputStage::from_root(stage).ok_or_else(|| SubjectError::WrongKind {
            subject: subject.to_owned(),
            expected: Self::KIND,
        })?;
        let valid_key = !key.is_empty()
            && key
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
        if !valid_key {
            return Err(SubjectError::WrongKind {
                subject: subject.to_owned(),
                expected: Self::KIND,
            });
        }
        Ok(Self {
            stage,
            address: address(subject, [tenant, team, platform])?,
            key: key.to_owned(),
        })
    }
}

/// `[p.]delivered.v1.<tenant>.<team>.<platform>`: a delivery receipt from egress.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ReceiptSubject {
    /// The delivered message's address.
    pub address: Address,
}

impl SubjectKind for ReceiptSubject {
    const KIND: &'static str = "delivery receipt";

    fn format(&self, ns: &Namespace) -> String {
        let a = &self.address;
        ns.subject(
            "delivered",
            &[a.tenant.as_str(), a.team.as_str(), a.platform.as_str()],
        )
    }

    fn parse(ns: &Namespace, subject: &str) -> Result<Self, SubjectError> {
        let (_, rest) = tokens::<Self, 3>(ns, subject, |r| r == "delivered")?;
        Ok(Self {
            address: address(subject, rest)?,
        })
    }
}

/// `[p.]attempts.v1.<tenant>`: the delivery log — one record per delivery attempt egress
/// makes for the tenant, delivered or not. One subject per tenant, so the `ATTEMPTS` stream's
/// per-subject limit bounds each tenant's share of the log.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct AttemptSubject {
    /// The tenant whose message was attempted.
    pub tenant: TenantId,
}

impl SubjectKind for AttemptSubject {
    const KIND: &'static str = "delivery attempt";

    fn format(&self, ns: &Namespace) -> String {
        ns.subject("attempts", &[self.tenant.as_str()])
    }

    fn parse(ns: &Namespace, subject: &str) -> Result<Self, SubjectError> {
        let (_, [tenant]) = tokens::<Self, 1>(ns, subject, |r| r == "attempts")?;
        Ok(Self {
            tenant: token(subject, tenant)?,
        })
    }
}

/// An operator command to the dlq service.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ControlCommand {
    /// A replay job request.
    Replay,
}

impl ControlCommand {
    fn as_str(self) -> &'static str {
        match self {
            ControlCommand::Replay => "replay",
        }
    }
}

/// `[p.]control.v1.dlq.<command>`: operator commands (replay jobs) for the dlq service.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ControlSubject {
    /// The command.
    pub command: ControlCommand,
}

impl SubjectKind for ControlSubject {
    const KIND: &'static str = "control";

    fn format(&self, ns: &Namespace) -> String {
        ns.subject("control", &["dlq", self.command.as_str()])
    }

    fn parse(ns: &Namespace, subject: &str) -> Result<Self, SubjectError> {
        match tokens::<Self, 2>(ns, subject, |r| r == "control")? {
            (_, ["dlq", "replay"]) => Ok(Self {
                command: ControlCommand::Replay,
            }),
            _ => Err(SubjectError::WrongKind {
                subject: subject.to_owned(),
                expected: Self::KIND,
            }),
        }
    }
}

/// An alert the dlq service raises.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum AlertKind {
    /// A tenant's DLQ inflow passed its threshold.
    DlqInflow,
    /// Some of a tenant's DLQ entries will age out (the DLQ's `max_age`) soon.
    DlqExpiring,
}

impl AlertKind {
    fn as_str(self) -> &'static str {
        match self {
            AlertKind::DlqInflow => "dlq-inflow",
            AlertKind::DlqExpiring => "dlq-expiring",
        }
    }
}

/// `[p.]alerts.v1.<tenant>.<alert>`: alert events for dashboards and pagers.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct AlertSubject {
    /// The tenant the alert is about.
    pub tenant: TenantId,
    /// What happened.
    pub kind: AlertKind,
}

impl SubjectKind for AlertSubject {
    const KIND: &'static str = "alert";

    fn format(&self, ns: &Namespace) -> String {
        ns.subject("alerts", &[self.tenant.as_str(), self.kind.as_str()])
    }

    fn parse(ns: &Namespace, subject: &str) -> Result<Self, SubjectError> {
        match tokens::<Self, 2>(ns, subject, |r| r == "alerts")? {
            (_, [tenant, "dlq-inflow"]) => Ok(Self {
                tenant: token(subject, tenant)?,
                kind: AlertKind::DlqInflow,
            }),
            (_, [tenant, "dlq-expiring"]) => Ok(Self {
                tenant: token(subject, tenant)?,
                kind: AlertKind::DlqExpiring,
            }),
            _ => Err(SubjectError::WrongKind {
                subject: subject.to_owned(),
                expected: Self::KIND,
            }),
        }
    }
}

/// What an operational event says happened (`[p.]events.v1.<tenant or _>.<kind>`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum EventKind {
    /// A destination was disabled (by an operator, or by egress because it stayed down).
    DestinationDisabled,
    /// A destination was enabled again.
    DestinationEnabled,
    /// A route's or destination's circuit breaker opened (on one egress replica).
    BreakerOpened,
    /// It closed again: the route or destination answered.
    BreakerClosed,
    /// A tenant's DLQ inflow passed its threshold (the `dlq-inflow` alert, made durable).
    DlqInflow,
    /// A replay job ended (done, failed or cancelled).
    ReplayJobFinished,
    /// A tenant's admission closed: its backlog passed its high mark, its producers are refused.
    AdmissionClosed,
    /// It reopened: the backlog fell below the low mark.
    AdmissionReopened,
    /// A message was dead-lettered after its last attempt (`retries_exhausted`, or its
    /// delivery deadline passed): a destination or route is failing a tenant's messages.
    AttemptsExhausted,
    /// Some of a tenant's DLQ entries age out soon (the `dlq-expiring` alert, made durable).
    DlqExpiring,
    /// A tenant's own ingress stream reached `quota_near_full_pct` of its quota: once full,
    /// its producers are refused.
    QuotaNearFull,
    /// A shared stream or bucket of the deployment (the DLQ, a stage's stream, a KV bucket)
    /// reached `quota_near_full_pct` of its limits (an event of the deployment: no tenant).
    StorageNearFull,
    /// A destination's signing secret was rotated (or its previous secrets revoked) through
    /// the management API or the console.
    SecretRotated,
    /// A console session was logged out (`about`: its session id, not a credential), so every
    /// management API replica refuses its cookie from then on.
    SessionEnded,
    /// A tenant was disabled by an operator: its producers and keys are refused, and its
    /// portal sessions end for good (enabling it again does not bring them back).
    TenantDisabled,
}

impl EventKind {
    /// Every kind.
    pub const ALL: [EventKind; 15] = [
        EventKind::DestinationDisabled,
        EventKind::DestinationEnabled,
        EventKind::BreakerOpened,
        EventKind::BreakerClosed,
        EventKind::DlqInflow,
        EventKind::ReplayJobFinished,
        EventKind::AdmissionClosed,
        EventKind::AdmissionReopened,
        EventKind::AttemptsExhausted,
        EventKind::DlqExpiring,
        EventKind::QuotaNearFull,
        EventKind::StorageNearFull,
        EventKind::SecretRotated,
        EventKind::SessionEnded,
        EventKind::TenantDisabled,
    ];

    /// The subject token and JSON name: `destination_disabled`, ….
    pub fn as_str(self) -> &'static str {
        match self {
            EventKind::DestinationDisabled => "destination_disabled",
            EventKind::DestinationEnabled => "destination_enabled",
            EventKind::BreakerOpened => "breaker_opened",
            EventKind::BreakerClosed => "breaker_closed",
            EventKind::DlqInflow => "dlq_inflow",
            EventKind::ReplayJobFinished => "replay_job_finished",
            EventKind::AdmissionClosed => "admission_closed",
            EventKind::AdmissionReopened => "admission_reopened",
            EventKind::AttemptsExhausted => "attempts_exhausted",
            EventKind::DlqExpiring => "dlq_expiring",
            EventKind::QuotaNearFull => "quota_near_full",
            EventKind::StorageNearFull => "storage_near_full",
            EventKind::SecretRotated => "secret_rotated",
            EventKind::SessionEnded => "session_ended",
            EventKind::TenantDisabled => "tenant_disabled",
        }
    }
}

impl std::fmt::Display for EventKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for EventKind {
    type Err = String;

    fn from_str(raw: &str) -> Result<Self, Self::Err> {
        Self::ALL
            .into_iter()
            .find(|k| k.as_str() == raw)
            .ok_or_else(|| {
                let all: Vec<&str> = Self::ALL.iter().map(|k| k.as_str()).collect();
                format!("unknown event kind {raw:?}: one of {}", all.join(", "))
            })
    }
}

/// `[p.]events.v1.<tenant or _>.<kind>`: a durable operational event (stream `EVENTS`), about
/// one tenant or, with `_`, the deployment. One subject per (tenant, kind), so the stream's
/// per-subject limit bounds each tenant's share.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct EventSubject {
    /// The tenant it is about; `None` for the deployment.
    pub tenant: Option<TenantId>,
    /// What happened.
    pub kind: EventKind,
}

impl SubjectKind for EventSubject {
    const KIND: &'static str = "operational event";

    fn format(&self, ns: &Namespace) -> String {
        let tenant = self.tenant.as_ref().map_or("_", TenantId::as_str);
        ns.subject("events", &[tenant, self.kind.as_str()])
    }

    fn parse(ns: &Namespace, subject: &str) -> Result<Self, SubjectError> {
        let (_, [tenant, kind]) = tokens::<Self, 2>(ns, subject, |r| r == "events")?;
        let kind = kind.parse().map_err(|_| SubjectError::WrongKind {
            subject: subject.to_owned(),
            expected: Self::KIND,
        })?;
        let tenant = match tenant {
            "_" => None,
            tenant => Some(token(subject, tenant)?),
        };
        Ok(Self { tenant, kind })
    }
}

/// Any Switchyard subject, parsed by its root token.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Subject {
    /// A pipeline stage's input.
    Stage(StageSubject),
    /// A DLQ entry.
    Dlq(DlqSubject),
    /// A delivery receipt.
    Receipt(ReceiptSubject),
    /// A delivery attempt in the delivery log.
    Attempt(AttemptSubject),
    /// An operational event.
    Event(EventSubject),
    /// An operator command.
    Control(ControlSubject),
    /// An alert.
    Alert(AlertSubject),
    /// A scheduled re-entry.
    Delay(DelaySubject),
}

impl Subject {
    /// Parses any subject of the taxonomy.
    pub fn parse(ns: &Namespace, subject: &str) -> Result<Self, SubjectError> {
        let (root, _) = ns.split(subject)?;
        match root {
            "dlq" => DlqSubject::parse(ns, subject).map(Subject::Dlq),
            "delivered" => ReceiptSubject::parse(ns, subject).map(Subject::Receipt),
            "attempts" => AttemptSubject::parse(ns, subject).map(Subject::Attempt),
            "events" => EventSubject::parse(ns, subject).map(Subject::Event),
            "control" => ControlSubject::parse(ns, subject).map(Subject::Control),
            "alerts" => AlertSubject::parse(ns, subject).map(Subject::Alert),
            "delay" => DelaySubject::parse(ns, subject).map(Subject::Delay),
            _ => StageSubject::parse(ns, subject).map(Subject::Stage),
        }
    }

    /// Formats the subject.
    pub fn format(&self, ns: &Namespace) -> String {
        match self {
            Subject::Stage(s) => s.format(ns),
            Subject::Dlq(s) => s.format(ns),
            Subject::Receipt(s) => s.format(ns),
            Subject::Attempt(s) => s.format(ns),
            Subject::Event(s) => s.format(ns),
            Subject::Control(s) => s.format(ns),
            Subject::Alert(s) => s.format(ns),
            Subject::Delay(s) => s.format(ns),
        }
    }
}

/// Which DLQ entries a filter selects; `None` is a wildcard.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DlqFilter {
    /// Only this tenant's entries.
    pub tenant: Option<TenantId>,
    /// Only entries dead-lettered by this stage.
    pub stage: Option<Stage>,
    /// Only this platform's entries.
    pub platform: Option<PlatformId>,
}

impl Namespace {
    /// The filter for a stage's input: every tenant (`…ingress.v1.>`) or one tenant
    /// (`…ingress.v1.<tenant>.>`; `…backpressure.v1.<shard>.<tenant>.>` for a sharded stage).
    pub fn stage_filter(&self, stage: InputStage, tenant: Option<&TenantId>) -> String {
        match tenant {
            Some(t) if stage.sharded() => {
                self.subject(stage.root(), &[Shard::of(t).token(), t.as_str(), ">"])
            }
            Some(t) => self.subject(stage.root(), &[t.as_str(), ">"]),
            None => self.subject(stage.root(), &[">"]),
        }
    }

    /// The filter for one shard of a [sharded](InputStage::sharded) stage's input
    /// (`…backpressure.v1.07.>`): what that shard's stream stores.
    pub fn shard_filter(&self, stage: InputStage, shard: Shard) -> String {
        self.subject(stage.root(), &[shard.token(), ">"])
    }

    /// The filter for DLQ entries: `…dlq.v1.<tenant|*>.<stage|*>.<platform|*>`.
    pub fn dlq_filter(&self, filter: &DlqFilter) -> String {
        let tenant = filter.tenant.as_ref().map_or("*", TenantId::as_str);
        let stage = filter.stage.map_or("*", Stage::as_str);
        let platform = filter.platform.as_ref().map_or("*", PlatformId::as_str);
        self.subject("dlq", &[tenant, stage, platform])
    }

    /// The filter for delivery receipts of every tenant or one.
    pub fn receipt_filter(&self, tenant: Option<&TenantId>) -> String {
        match tenant {
            Some(t) => self.subject("delivered", &[t.as_str(), ">"]),
            None => self.subject("delivered", &[">"]),
        }
    }

    /// The filter for the delivery log of every tenant (`…attempts.v1.*`) or one.
    pub fn attempt_filter(&self, tenant: Option<&TenantId>) -> String {
        self.subject("attempts", &[tenant.map_or("*", TenantId::as_str)])
    }

    /// The filter for operational events: of every tenant and the deployment
    /// (`…events.v1.*.*`), or of one tenant, of one kind or both.
    pub fn event_filter(&self, tenant: Option<&TenantId>, kind: Option<EventKind>) -> String {
        self.subject(
            "events",
            &[
                tenant.map_or("*", TenantId::as_str),
                kind.map_or("*", EventKind::as_str),
            ],
        )
    }

    /// The filter for messages scheduled to re-enter `stage`.
    pub fn delay_filter(&self, stage: InputStage) -> String {
        self.subject("delay", &[stage.root(), ">"])
    }

    /// The filter for every operator command.
    pub fn control_filter(&self) -> String {
        self.subject("control", &[">"])
    }

    /// The filter for alerts of every tenant or one.
    pub fn alert_filter(&self, tenant: Option<&TenantId>) -> String {
        self.subject("alerts", &[tenant.map_or("*", TenantId::as_str), "*"])
    }
}

#[cfg(test)]
mod tests;
