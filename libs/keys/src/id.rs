//! Validated identifiers: tenant, team, platform, deployment prefix, and the pipeline stages.
//!
//! **Charset (documented contract):** an id is 1 to 64 bytes of `[a-z0-9_-]` and starts with
//! `[a-z0-9]`. That makes every id a valid subject token and KV key token on its own: it cannot
//! contain `.`, `*`, `>`, whitespace or `/`, and cannot be empty. Ids starting with `_` are
//! therefore free for reserved markers (the route key's `_` "any team", the rate key's
//! `_default`).

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::error::{KeyError, shown};

/// The longest id, in bytes.
pub const MAX_ID_LEN: usize = 64;

/// The allowed charset, as shown in error messages.
pub const ID_CHARSET: &str = "[a-z0-9_-], starting with [a-z0-9]";

fn validate_id(kind: &'static str, value: &str) -> Result<(), KeyError> {
    if value.is_empty() {
        return Err(KeyError::Empty { kind });
    }
    if value.len() > MAX_ID_LEN {
        return Err(KeyError::TooLong {
            kind,
            len: value.len(),
            max: MAX_ID_LEN,
        });
    }
    for (at, c) in value.char_indices() {
        let ok = c.is_ascii_lowercase() || c.is_ascii_digit() || (at > 0 && (c == '_' || c == '-'));
        if !ok {
            return Err(KeyError::InvalidChar {
                kind,
                value: shown(value),
                found: c,
                at,
                allowed: ID_CHARSET,
            });
        }
    }
    Ok(())
}

macro_rules! validated_id {
    ($(#[$doc:meta])* $name:ident, $kind:literal) => {
        $(#[$doc])*
        #[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
        #[serde(try_from = "String", into = "String")]
        pub struct $name(String);

        impl $name {
            /// Validates `value` against the id charset.
            pub fn new(value: impl Into<String>) -> Result<Self, KeyError> {
                let value = value.into();
                validate_id($kind, &value)?;
                Ok(Self(value))
            }

            /// The id as text; always a valid subject and KV key token.
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl FromStr for $name {
            type Err = KeyError;
            fn from_str(s: &str) -> Result<Self, Self::Err> {
                Self::new(s)
            }
        }

        impl TryFrom<String> for $name {
            type Error = KeyError;
            fn try_from(value: String) -> Result<Self, Self::Error> {
                Self::new(value)
            }
        }

        impl From<$name> for String {
            fn from(id: $name) -> String {
                id.0
            }
        }

        impl AsRef<str> for $name {
            fn as_ref(&self) -> &str {
                &self.0
            }
        }
    };
}

validated_id!(
    /// A tenant: the unit of isolation, rate limiting and permissions.
    TenantId,
    "tenant id"
);
validated_id!(
    /// A team inside a tenant (routes can be set per team).
    TeamId,
    "team id"
);
validated_id!(
    /// A destination platform (the kind of sink a message is for, e.g. `slack`, `billing`).
    PlatformId,
    "platform id"
);
validated_id!(
    /// One of a tenant's destinations (fan-out subscriptions: `orders-hook`, `audit`), unique
    /// within its tenant.
    DestinationId,
    "destination id"
);
validated_id!(
    /// An optional deployment prefix (e.g. an environment name) put in front of every subject,
    /// upper-cased in front of every stream name, and as is in front of every bucket name.
    DeploymentPrefix,
    "deployment prefix"
);

/// Where a message is headed: the (tenant, team, platform) triple carried by every pipeline
/// subject and used to look up routes.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Address {
    /// The tenant that owns the message.
    pub tenant: TenantId,
    /// The team inside the tenant.
    pub team: TeamId,
    /// The destination platform.
    pub platform: PlatformId,
}

impl Address {
    /// Builds an address from already-validated ids.
    pub fn new(tenant: TenantId, team: TeamId, platform: PlatformId) -> Self {
        Self {
            tenant,
            team,
            platform,
        }
    }

    /// Validates three raw strings into an address.
    pub fn parse(tenant: &str, team: &str, platform: &str) -> Result<Self, KeyError> {
        Ok(Self::new(tenant.parse()?, team.parse()?, platform.parse()?))
    }
}

impl fmt::Display for Address {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}/{}", self.tenant, self.team, self.platform)
    }
}

/// A pipeline stage. Used in DLQ subjects and records (which stage gave up on a message) and
/// in the hop `Nats-Msg-Id` of each hand-off.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Stage {
    /// Validates and stamps producer messages.
    Ingress,
    /// Drops duplicates of (tenant, platform, producer msg id).
    Idempotency,
    /// Enforces per-tenant rate limits and admission.
    Backpressure,
    /// Delivers to sinks.
    Egress,
    /// Owns the DLQ (safety net, replays).
    Dlq,
}

impl Stage {
    /// Every stage, in pipeline order.
    pub const ALL: [Stage; 5] = [
        Stage::Ingress,
        Stage::Idempotency,
        Stage::Backpressure,
        Stage::Egress,
        Stage::Dlq,
    ];

    /// The stage's name, as used in subjects, keys and headers.
    pub fn as_str(self) -> &'static str {
        match self {
            Stage::Ingress => "ingress",
            Stage::Idempotency => "idempotency",
            Stage::Backpressure => "backpressure",
            Stage::Egress => "egress",
            Stage::Dlq => "dlq",
        }
    }
}

impl fmt::Display for Stage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Stage {
    type Err = KeyError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Stage::ALL
            .into_iter()
            .find(|stage| stage.as_str() == s)
            .ok_or_else(|| KeyError::UnknownStage(shown(s)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_documented_charset() {
        for ok in ["a", "acme", "acme-eu_1", "0", &"z".repeat(64)] {
            assert!(TenantId::new(ok).is_ok(), "{ok:?} should be accepted");
        }
    }

    #[test]
    fn refuses_everything_else() {
        for bad in [
            "",
            "Acme",
            "a.b",
            "a*",
            ">",
            "a b",
            "_x",
            "-x",
            "a/b",
            "a:b",
            "é",
            &"z".repeat(65),
        ] {
            assert!(TenantId::new(bad).is_err(), "{bad:?} should be refused");
        }
    }

    #[test]
    fn error_names_the_offending_character() {
        let err = TeamId::new("ops.eu").unwrap_err();
        assert_eq!(
            err.to_string(),
            "team id \"ops.eu\" has an invalid character '.' at byte 3: allowed are [a-z0-9_-], starting with [a-z0-9]"
        );
    }

    #[test]
    fn serde_validates() {
        let ok: PlatformId = serde_json::from_str("\"slack\"").unwrap();
        assert_eq!(ok.as_str(), "slack");
        assert!(serde_json::from_str::<PlatformId>("\"sl.ack\"").is_err());
    }

    #[test]
    fn stage_round_trips() {
        for stage in Stage::ALL {
            assert_eq!(stage.as_str().parse::<Stage>().unwrap(), stage);
        }
        assert!("sink".parse::<Stage>().is_err());
    }
}
