//! Whether the connected NATS user may do what the CLI does: the server tells a connection its
//! own permissions on `$SYS.REQ.USER.INFO` (any user, any account; nats-server 2.10+), and
//! each operation's subjects are matched against them as the server matches them — a subject
//! is allowed when the allow list is empty or one allow pattern matches, and no deny pattern
//! matches (<https://docs.nats.io/running-a-nats-service/configuration/securing_nats/authorization>).
//!
//! Each CLI operation is one [`Check`]: `fail` when reading JetStream itself is refused
//! (nothing works), `warn` for an operation the user may not do (the CLI works for the rest).

use std::time::Duration;

use serde::Deserialize;
use switchyard_subjects::InputStage;
use switchyard_topology::{BucketName, ResolvedTopology, StreamName};

use super::Check;
use crate::output::error_chain;

/// The subject on which nats-server answers a connection with its user, account and
/// permissions.
pub const USER_INFO_SUBJECT: &str = "$SYS.REQ.USER.INFO";

/// How long to wait for the server's answer.
const TIMEOUT: Duration = Duration::from_secs(3);

/// One direction's allow and deny lists (empty allow: everything not denied).
#[derive(Debug, Clone, Default, Deserialize, PartialEq, Eq)]
pub struct SubjectPermission {
    /// Patterns the user may use; empty means "every subject".
    #[serde(default)]
    pub allow: Vec<String>,
    /// Patterns the user may not use, whatever `allow` says.
    #[serde(default)]
    pub deny: Vec<String>,
}

impl SubjectPermission {
    /// Whether `subject` (concrete: no wildcards) passes these lists.
    pub fn allows(&self, subject: &str) -> bool {
        (self.allow.is_empty()
            || self
                .allow
                .iter()
                .any(|p| switchyard_subjects::pattern_matches(p, subject)))
            && !self
                .deny
                .iter()
                .any(|p| switchyard_subjects::pattern_matches(p, subject))
    }
}

/// A user's publish and subscribe permissions (`None` in [`UserInfo`]: no restriction).
#[derive(Debug, Clone, Default, Deserialize, PartialEq, Eq)]
pub struct Permissions {
    /// What it may publish.
    #[serde(default)]
    pub publish: SubjectPermission,
    /// What it may subscribe to.
    #[serde(default)]
    pub subscribe: SubjectPermission,
}

/// The `data` of the server's answer on [`USER_INFO_SUBJECT`].
#[derive(Debug, Clone, Default, Deserialize)]
pub struct UserInfo {
    /// The user name (empty without authentication).
    #[serde(default)]
    pub user: String,
    /// The account.
    #[serde(default)]
    pub account: String,
    /// Its permissions; absent when the user may do everything.
    #[serde(default)]
    pub permissions: Option<Permissions>,
}

/// The server's part of the answer: who answered, and when.
#[derive(Debug, Clone, Deserialize)]
pub struct ServerStamp {
    /// The server's clock when it answered.
    #[serde(with = "time::serde::rfc3339")]
    pub time: time::OffsetDateTime,
}

#[derive(Deserialize)]
struct Answer {
    server: Option<ServerStamp>,
    data: Option<UserInfo>,
    error: Option<serde_json::Value>,
}

/// The server's answer on [`USER_INFO_SUBJECT`]: the user's permissions, and the server's
/// time with the round trip it took (for the clock check).
#[derive(Debug, Clone)]
pub struct Answered {
    /// The user, its account and permissions.
    pub info: Result<UserInfo, String>,
    /// The server's clock, when the answer carried it.
    pub server_time: Option<time::OffsetDateTime>,
    /// This host's clock when the request went out.
    pub sent_at: time::OffsetDateTime,
    /// How long the answer took.
    pub round_trip: Duration,
}

/// What the CLI needs for one operation: subjects to publish to and to subscribe to.
struct Operation {
    what: &'static str,
    commands: &'static str,
    publish: Vec<String>,
    subscribe: Vec<String>,
    /// Without it nothing works (`fail`), else only these commands (`warn`).
    essential: bool,
}

/// A concrete subject under a filter: each wildcard token becomes `doctor`.
fn sample(filter: &str) -> String {
    filter
        .split('.')
        .map(|t| if t == "*" || t == ">" { "doctor" } else { t })
        .collect::<Vec<_>>()
        .join(".")
}

fn operations(topology: &ResolvedTopology, inbox_prefix: &str) -> Vec<Operation> {
    let ns = &topology.namespace;
    let stream = |name: StreamName| topology.stream_name(name).unwrap_or("-").to_owned();
    let bucket = |name: BucketName| topology.bucket_name(name).unwrap_or("-").to_owned();
    let inbox = format!("{inbox_prefix}.doctor");
    let dlq = stream(StreamName::Dlq);
    vec![
        Operation {
            what: "read JetStream",
            commands: "every command",
            publish: vec![
                "$JS.API.INFO".into(),
                format!("$JS.API.STREAM.INFO.{dlq}"),
                format!("$JS.API.DIRECT.GET.{dlq}"),
            ],
            subscribe: vec![inbox.clone()],
            essential: true,
        },
        Operation {
            what: "provision",
            commands: "provision, tenants enable",
            publish: vec![
                format!("$JS.API.STREAM.CREATE.{}", stream(StreamName::Egress)),
                format!("$JS.API.STREAM.UPDATE.{}", stream(StreamName::Egress)),
                format!(
                    "$JS.API.CONSUMER.CREATE.{}.doctor",
                    stream(StreamName::Egress)
                ),
            ],
            subscribe: vec![inbox.clone()],
            essential: false,
        },
        Operation {
            what: "write the registry",
            commands: "routes, destinations, tenants, limits, keys",
            publish: [
                BucketName::Routes,
                BucketName::Destinations,
                BucketName::Tenants,
                BucketName::RateLimits,
                BucketName::ApiKeys,
            ]
            .into_iter()
            .map(|b| format!("$KV.{}.doctor", bucket(b)))
            .collect(),
            subscribe: vec![inbox.clone()],
            essential: false,
        },
        Operation {
            what: "publish test messages",
            commands: "publish",
            publish: vec![sample(&ns.stage_filter(InputStage::Ingress, None))],
            subscribe: vec![inbox.clone()],
            essential: false,
        },
        Operation {
            what: "replay and purge the DLQ",
            commands: "dlq replay, dlq purge, dlq import",
            publish: [
                InputStage::Ingress,
                InputStage::Idempotency,
                InputStage::Backpressure,
                InputStage::Egress,
            ]
            .into_iter()
            .map(|s| sample(&ns.stage_filter(s, None)))
            .chain([
                format!("$JS.API.STREAM.MSG.DELETE.{dlq}"),
                format!("$KV.{}.doctor", bucket(BucketName::DlqReplays)),
                sample(&ns.dlq_filter(&Default::default())),
            ])
            .collect(),
            subscribe: vec![inbox.clone()],
            essential: false,
        },
        Operation {
            what: "read the delivery log",
            commands: "attempts ls, attempts show",
            publish: vec![
                format!("$JS.API.CONSUMER.CREATE.{}", stream(StreamName::Attempts)),
                format!("$JS.API.DIRECT.GET.{}", stream(StreamName::Attempts)),
            ],
            subscribe: vec![inbox.clone()],
            essential: false,
        },
        Operation {
            what: "durable replay jobs",
            commands: "dlq replay --job, dlq jobs",
            publish: vec![
                format!("$KV.{}.doctor", bucket(BucketName::DlqJobs)),
                sample(&ns.control_filter()),
            ],
            subscribe: vec![inbox],
            essential: false,
        },
    ]
}

/// The user's permissions as the server stated them, checked for every CLI operation.
pub fn check(answered: &Answered, topology: &ResolvedTopology, inbox_prefix: &str) -> Vec<Check> {
    let info = match &answered.info {
        Ok(info) => info,
        Err(reason) => {
            return vec![Check::warn(
                "permissions",
                format!("cannot read the user's permissions: {reason}"),
                format!(
                    "allow the user to publish to {USER_INFO_SUBJECT} (nats-server 2.10+), or \
                     compare its permissions with nats/server/accounts.conf's admin user by hand"
                ),
            )];
        }
    };
    evaluate(info, topology, inbox_prefix)
}

/// [`check`] for permissions already read.
pub fn evaluate(info: &UserInfo, topology: &ResolvedTopology, inbox_prefix: &str) -> Vec<Check> {
    let who = if info.user.is_empty() {
        format!("account {}", info.account)
    } else {
        format!("user {} in account {}", info.user, info.account)
    };
    let Some(permissions) = &info.permissions else {
        return vec![Check::ok(
            "permissions",
            format!("{who} may publish and subscribe to every subject"),
        )];
    };
    let mut checks = Vec::new();
    for op in operations(topology, inbox_prefix) {
        let denied: Vec<String> = op
            .publish
            .iter()
            .filter(|s| !permissions.publish.allows(s))
            .map(|s| format!("publish {s}"))
            .chain(
                op.subscribe
                    .iter()
                    .filter(|s| !permissions.subscribe.allows(s))
                    .map(|s| format!("subscribe {s}")),
            )
            .collect();
        let check = format!("permission: {}", op.what);
        if denied.is_empty() {
            checks.push(Check::ok(check, format!("{who} may ({})", op.commands)));
            continue;
        }
        let detail = format!(
            "{who} may not {} — needed by {}",
            denied.join(", "),
            op.commands
        );
        let fix = "grant the user these subjects (nats/server/accounts.conf's admin user has \
                   what the CLI needs), or run the CLI as that user";
        checks.push(if op.essential {
            Check::fail(check, detail, fix)
        } else {
            Check::warn(check, detail, fix)
        });
    }
    checks
}

/// Asks the server who this connection is ([`USER_INFO_SUBJECT`]).
pub async fn ask(client: &async_nats::Client) -> Answered {
    let sent_at = time::OffsetDateTime::now_utc();
    let started = std::time::Instant::now();
    let answer = tokio::time::timeout(TIMEOUT, client.request(USER_INFO_SUBJECT, "".into())).await;
    let round_trip = started.elapsed();
    let answer = match answer {
        Err(_) => Err(format!("no answer in {} s", TIMEOUT.as_secs())),
        Ok(Err(err)) => Err(error_chain(&err)),
        Ok(Ok(message)) => serde_json::from_slice::<Answer>(&message.payload)
            .map_err(|err| format!("unreadable answer: {err}")),
    };
    let (info, server_time) = match answer {
        Err(reason) => (Err(reason), None),
        Ok(answer) => (
            match (answer.data, answer.error) {
                (Some(data), _) => Ok(data),
                (None, Some(error)) => Err(format!("the server answered {error}")),
                (None, None) => Err("the server's answer holds no user".to_owned()),
            },
            answer.server.map(|s| s.time),
        ),
    };
    Answered {
        info,
        server_time,
        sent_at,
        round_trip,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deny_wins_over_allow_and_an_empty_allow_list_allows_the_rest() {
        let p = SubjectPermission {
            allow: vec!["$JS.API.>".into()],
            deny: vec!["$JS.API.STREAM.DELETE.>".into()],
        };
        assert!(p.allows("$JS.API.STREAM.INFO.DLQ"));
        assert!(!p.allows("$JS.API.STREAM.DELETE.DLQ"));
        assert!(!p.allows("ingress.v1.acme.x"));
        let open = SubjectPermission {
            allow: vec![],
            deny: vec!["control.>".into()],
        };
        assert!(open.allows("anything.at.all"));
        assert!(!open.allows("control.v1.dlq.replay"));
    }
}
