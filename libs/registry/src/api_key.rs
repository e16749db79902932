//! Per-tenant API keys for the producer HTTP API, kept in the `api-keys` bucket (JSON at
//! `<key id>`).
//!
//! A key is `sy_<id>_<secret>`: `<id>` is 32 lowercase hex characters (128 random bits, the
//! public half, the record's KV key), `<secret>` 43 characters of unpadded base64url (256
//! random bits). Only a SHA-256 of `switchyard-api-key-v1:<id>:<secret>` is stored; a 256-bit
//! random secret needs no slow password hash, so checking a key costs one SHA-256 and never
//! lets unauthenticated requests burn CPU. The check compares digests in constant time
//! (`subtle`). Randomness comes from the operating system (`getrandom`).

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use switchyard_keys::{ApiKeyKey, TenantId};
use time::OffsetDateTime;

/// The prefix of every key (so leaked keys are recognisable by secret scanners).
pub const TOKEN_PREFIX: &str = "sy_";

/// What a key may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ApiScope {
    /// Publish the tenant's messages through the HTTP API.
    Publish,
    /// Read and change the tenant's own destinations, DLQ and delivery log through the
    /// management API (`switchyard api serve`).
    Manage,
}

/// A key's record (JSON at `<id>` in `api-keys`). Never holds the secret.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApiKeyRecord {
    /// The tenant the key publishes for.
    pub tenant: TenantId,
    /// Hex SHA-256 of `switchyard-api-key-v1:<id>:<secret>`.
    pub hash: String,
    /// What it may do.
    pub scopes: Vec<ApiScope>,
    /// A note for operators (optional).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub label: Option<String>,
    /// When it was issued.
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
    /// After this it is refused (optional).
    #[serde(
        default,
        with = "time::serde::rfc3339::option",
        skip_serializing_if = "Option::is_none"
    )]
    pub expires_at: Option<OffsetDateTime>,
    /// Since this it is refused (revocation keeps the record, for the audit trail).
    #[serde(
        default,
        with = "time::serde::rfc3339::option",
        skip_serializing_if = "Option::is_none"
    )]
    pub revoked_at: Option<OffsetDateTime>,
}

/// A freshly issued key: the token to hand to the producer once, and what to store.
#[derive(Debug, Clone)]
pub struct IssuedKey {
    /// Its id (the KV key).
    pub id: ApiKeyKey,
    /// `sy_<id>_<secret>`: shown once, never stored.
    pub token: String,
    /// The record to store.
    pub record: ApiKeyRecord,
}

/// Why a key was not accepted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ApiKeyError {
    /// Not of the form `sy_<32 hex>_<43 base64url>`.
    #[error("not a Switchyard API key (expected sy_<id>_<secret>)")]
    Malformed,
    /// No such key, or the secret does not match.
    #[error("unknown API key")]
    Unknown,
    /// Revoked by an operator.
    #[error("API key {id} was revoked")]
    Revoked {
        /// The key's id.
        id: String,
    },
    /// Past its expiry.
    #[error("API key {id} expired")]
    Expired {
        /// The key's id.
        id: String,
    },
    /// The operating system's random source failed.
    #[error("no randomness for a new key: {0}")]
    Random(String),
}

fn digest(id: &str, secret: &str) -> [u8; 32] {
    let mut hasher = Sha256::new();
    hasher.update(b"switchyard-api-key-v1:");
    hasher.update(id.as_bytes());
    hasher.update(b":");
    hasher.update(secret.as_bytes());
    hasher.finalize().into()
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Issues a key for `tenant` (scope `publish`), expiring at `expires_at` if given.
///
/// Errors: [`ApiKeyError::Random`] when the operating system has no randomness to give.
pub fn issue(
    tenant: TenantId,
    expires_at: Option<OffsetDateTime>,
    label: Option<String>,
    now: OffsetDateTime,
) -> Result<IssuedKey, ApiKeyError> {
    let mut raw = [0u8; 16 + 32];
    getrandom::fill(&mut raw).map_err(|e| ApiKeyError::Random(e.to_string()))?;
    let id = ApiKeyKey::new(hex(&raw[..16])).map_err(|_| ApiKeyError::Malformed)?;
    let secret = URL_SAFE_NO_PAD.encode(&raw[16..]);
    let record = ApiKeyRecord {
        tenant,
        hash: hex(&digest(&id.id, &secret)),
        scopes: vec![ApiScope::Publish],
        label,
        created_at: now,
        expires_at,
        revoked_at: None,
    };
    Ok(IssuedKey {
        token: format!("{TOKEN_PREFIX}{}_{secret}", id.id),
        id,
        record,
    })
}

/// Splits a presented token into its id and secret, checking their shape only.
///
/// Errors: [`ApiKeyError::Malformed`].
pub fn parse_token(token: &str) -> Result<(ApiKeyKey, &str), ApiKeyError> {
    let rest = token
        .strip_prefix(TOKEN_PREFIX)
        .ok_or(ApiKeyError::Malformed)?;
    let (id, secret) = rest.split_once('_').ok_or(ApiKeyError::Malformed)?;
    let id = ApiKeyKey::new(id).map_err(|_| ApiKeyError::Malformed)?;
    let well_formed = secret.len() == 43
        && secret
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    if !well_formed {
        return Err(ApiKeyError::Malformed);
    }
    Ok((id, secret))
}

impl ApiKeyRecord {
    /// Whether `secret` is this key's, compared in constant time; then whether the key is
    /// usable at `now` (not revoked, not expired).
    ///
    /// Errors: [`ApiKeyError::Unknown`] for a wrong secret, [`ApiKeyError::Revoked`],
    /// [`ApiKeyError::Expired`].
    pub fn check(
        &self,
        id: &ApiKeyKey,
        secret: &str,
        now: OffsetDateTime,
    ) -> Result<(), ApiKeyError> {
        let presented = hex(&digest(&id.id, secret));
        if !bool::from(presented.as_bytes().ct_eq(self.hash.as_bytes())) {
            return Err(ApiKeyError::Unknown);
        }
        if self.revoked_at.is_some_and(|at| at <= now) {
            return Err(ApiKeyError::Revoked { id: id.id.clone() });
        }
        if self.expires_at.is_some_and(|at| at <= now) {
            return Err(ApiKeyError::Expired { id: id.id.clone() });
        }
        Ok(())
    }

    /// Whether it grants `scope`.
    pub fn allows(&self, scope: ApiScope) -> bool {
        self.scopes.contains(&scope)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn now() -> OffsetDateTime {
        OffsetDateTime::from_unix_timestamp(1_800_000_000).unwrap()
    }

    #[test]
    fn an_issued_key_checks_and_nothing_else_does() {
        let issued = issue(TenantId::new("acme").unwrap(), None, None, now()).unwrap();
        assert!(issued.token.starts_with("sy_"));
        assert!(
            !issued.record.hash.contains(&issued.token[36..]),
            "the secret is not stored"
        );
        let (id, secret) = parse_token(&issued.token).unwrap();
        assert_eq!(id, issued.id);
        issued.record.check(&id, secret, now()).unwrap();
        assert!(issued.record.allows(ApiScope::Publish));

        let mut wrong = secret.to_owned();
        wrong.replace_range(0..1, if wrong.starts_with('A') { "B" } else { "A" });
        assert_eq!(
            issued.record.check(&id, &wrong, now()),
            Err(ApiKeyError::Unknown)
        );
        let other = issue(TenantId::new("acme").unwrap(), None, None, now()).unwrap();
        assert_ne!(other.token, issued.token);
        assert_eq!(
            other.record.check(&id, secret, now()),
            Err(ApiKeyError::Unknown)
        );
    }

    #[test]
    fn revoked_and_expired_keys_are_refused() {
        let expires = now() + time::Duration::days(1);
        let mut issued = issue(TenantId::new("acme").unwrap(), Some(expires), None, now()).unwrap();
        let (id, secret) = parse_token(&issued.token).unwrap();
        let secret = secret.to_owned();
        issued.record.check(&id, &secret, now()).unwrap();
        assert!(matches!(
            issued.record.check(&id, &secret, expires),
            Err(ApiKeyError::Expired { .. })
        ));
        issued.record.revoked_at = Some(now());
        assert!(matches!(
            issued.record.check(&id, &secret, now()),
            Err(ApiKeyError::Revoked { .. })
        ));
    }

    #[test]
    fn malformed_tokens_are_refused_before_any_lookup() {
        for token in [
            "",
            "sy_",
            "Bearer x",
            "sy_0123_abc",
            "sy_0123456789abcdef0123456789ABCDEF_aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa",
            "sy_0123456789abcdef0123456789abcdef_short",
            "sy_0123456789abcdef0123456789abcdef_aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa.",
        ] {
            assert_eq!(
                parse_token(token).err(),
                Some(ApiKeyError::Malformed),
                "{token:?}"
            );
        }
    }
}
