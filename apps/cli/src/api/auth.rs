//! Who is calling the management API: an operator (the operator token) or a tenant (one of its
//! API keys with the `manage` scope), and what each may reach.
//!
//! `Authorization: Bearer <token>` (RFC 6750; the scheme compared case-insensitively, RFC 7235
//! §2.1). The operator token is compared in constant time; a tenant key is checked as the
//! producer HTTP API checks it (`switchyard_registry::api_key`: shape, constant-time secret,
//! revocation, expiry), and must carry the `manage` scope.

use axum::http::{HeaderMap, StatusCode};
use subtle::ConstantTimeEq;
use switchyard_keys::{ApiKeyKey, TenantId};
use switchyard_registry::{ApiKeyRecord, ApiScope, Store, api_key};
use time::OffsetDateTime;

use super::error::ApiError;

/// The shortest operator token accepted, in bytes.
pub const MIN_OPERATOR_TOKEN: usize = 32;

/// Who is calling.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Principal {
    /// The operator: every tenant.
    Operator,
    /// A tenant's key: that tenant alone.
    Tenant(TenantId),
}

impl Principal {
    /// Whether it may read and change `tenant`'s things: `403 tenant_mismatch` otherwise, and
    /// nothing of the other tenant is looked at.
    pub fn may(&self, tenant: &TenantId) -> Result<(), ApiError> {
        match self {
            Principal::Operator => Ok(()),
            Principal::Tenant(own) if own == tenant => Ok(()),
            Principal::Tenant(_) => Err(ApiError::new(
                StatusCode::FORBIDDEN,
                "tenant_mismatch",
                "this key belongs to another tenant",
            )),
        }
    }

    /// Whether it is the operator: `403 operator_only` otherwise.
    pub fn operator(&self) -> Result<(), ApiError> {
        match self {
            Principal::Operator => Ok(()),
            Principal::Tenant(_) => Err(ApiError::new(
                StatusCode::FORBIDDEN,
                "operator_only",
                "only the operator token may do this",
            )),
        }
    }
}

/// Reads the caller from the request's headers.
pub async fn authenticate(
    headers: &HeaderMap,
    operator_token: &str,
    keys: &Store<ApiKeyKey, ApiKeyRecord>,
) -> Result<Principal, ApiError> {
    let unauthorized =
        |message: &str| ApiError::new(StatusCode::UNAUTHORIZED, "unauthorized", message);
    let header = headers
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .ok_or_else(|| {
            unauthorized(
                "send `Authorization: Bearer <operator token>` or a tenant key with the manage scope",
            )
        })?;
    let token = header
        .split_once(' ')
        .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
        .map(|(_, token)| token.trim())
        .ok_or_else(|| unauthorized("the token goes in the Bearer scheme"))?;
    if bool::from(token.as_bytes().ct_eq(operator_token.as_bytes())) {
        return Ok(Principal::Operator);
    }
    let Ok((id, secret)) = api_key::parse_token(token) else {
        return Err(unauthorized("unknown token"));
    };
    let record = match keys.get(&id).await {
        Ok(Some(record)) => record,
        Ok(None) => return Err(unauthorized("unknown token")),
        Err(error) => return Err(ApiError::unavailable(&error)),
    };
    record
        .check(&id, secret, OffsetDateTime::now_utc())
        .map_err(|e| unauthorized(&e.to_string()))?;
    if !record.allows(ApiScope::Manage) {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "forbidden",
            "this key has no manage scope (`switchyard keys create <tenant> --scope manage`)",
        ));
    }
    Ok(Principal::Tenant(record.tenant))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_tenant_reaches_its_own_tenant_only_and_the_operator_every_one() {
        let acme: TenantId = "acme".parse().unwrap();
        let globex: TenantId = "globex".parse().unwrap();
        assert!(Principal::Operator.may(&acme).is_ok());
        assert!(Principal::Operator.operator().is_ok());
        let tenant = Principal::Tenant(acme.clone());
        assert!(tenant.may(&acme).is_ok());
        assert_eq!(
            tenant.may(&globex).unwrap_err().status,
            StatusCode::FORBIDDEN
        );
        assert_eq!(tenant.operator().unwrap_err().status, StatusCode::FORBIDDEN);
    }
}
