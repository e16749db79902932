//! The management API's API-key endpoints: list a tenant's keys (never a secret nor a hash),
//! issue one (the key is in the `201` answer, once), revoke one — through the same functions
//! as `switchyard keys` ([`keys::new_key`], [`keys::tenant_keys`], [`keys::revoke`]).
//!
//! Who may do what: listing and revoking are open to the operator and to the tenant's own
//! `manage` keys (revoking only takes rights away, and lets a tenant kill a leaked key without
//! waiting for an operator). Issuing is the operator's alone: a key a tenant could issue would
//! outlive the revocation of the key that issued it, so a leaked `manage` key could keep
//! itself alive; and no key can then be issued with wider rights than its issuer has.

use axum::Json;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::Value;
use switchyard_keys::{ApiKeyKey, TenantKey};
use switchyard_registry::ApiScope;
use time::OffsetDateTime;
use utoipa::ToSchema;

use super::ApiState;
use super::error::ApiError;
use super::handlers::{caller, caller_for, unavailable, values};
use crate::commands::keys::{self, CreatedView, KeyView, Revoked};

/// The longest label a key may carry, in bytes.
pub const MAX_LABEL: usize = 200;

/// What `POST …/keys` issues.
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateKeyRequest {
    /// What the key may do: `publish` (the producer HTTP API) and/or `manage` (this API, for
    /// its tenant); default `["publish"]`.
    #[serde(default)]
    #[schema(value_type = Vec<ScopeName>)]
    pub scopes: Vec<ApiScope>,
    /// A note for operators (who holds the key), at most 200 bytes.
    pub label: Option<String>,
    /// Days until the key expires, 1 to 3650 (default: never).
    #[schema(minimum = 1, maximum = 3650)]
    pub expires_in_days: Option<u32>,
}

/// A key's scope, as the description names it (the stored type is the registry's `ApiScope`).
#[derive(ToSchema)]
#[schema(rename_all = "snake_case")]
#[allow(dead_code)]
pub enum ScopeName {
    /// The producer HTTP API.
    Publish,
    /// This API, for the key's tenant.
    Manage,
}

/// A key id from a path.
fn key_of(raw: &str) -> Result<ApiKeyKey, ApiError> {
    ApiKeyKey::new(raw)
        .map_err(|_| ApiError::bad_request("a key id is 32 lowercase hex characters"))
}

/// A tenant's API keys, oldest first (`switchyard keys ls --json`): id, status, scopes, label,
/// created, expiry and revocation times. Never a key nor its hash.
#[utoipa::path(get, path = "/v1/tenants/{tenant}/keys", tag = "keys",
    params(("tenant" = String, Path, description = "tenant id", pattern = "^[a-z0-9][a-z0-9_-]{0,63}$")),
    responses((status = 200, body = Vec<Object>), (status = 400, body = ApiError),
              (status = 401, body = ApiError), (status = 403, body = ApiError),
              (status = 503, body = ApiError)))]
pub async fn list_keys(
    State(state): State<ApiState>,
    headers: HeaderMap,
    Path(tenant): Path<String>,
) -> Result<Json<Vec<Value>>, ApiError> {
    let tenant = caller_for(&state, &headers, &tenant).await?;
    let rows = keys::tenant_keys(&state.keys, &tenant)
        .await
        .map_err(unavailable)?;
    let now = OffsetDateTime::now_utc();
    let views: Vec<KeyView> = rows
        .iter()
        .map(|(id, record)| KeyView::new(id, record, now))
        .collect();
    Ok(Json(values(&views)))
}

/// Issues a key for a registered tenant (operator only): the answer holds the key itself,
/// `sy_…`, shown this once (`switchyard keys create --json`); only its hash is stored.
#[utoipa::path(post, path = "/v1/tenants/{tenant}/keys", tag = "keys",
    params(("tenant" = String, Path, description = "tenant id", pattern = "^[a-z0-9][a-z0-9_-]{0,63}$")),
    request_body(content = CreateKeyRequest),
    responses((status = 201, body = Object, description = "{\"id\", \"tenant\", \"key\", \"expires_at\"}"),
              (status = 400, body = ApiError), (status = 401, body = ApiError),
              (status = 403, body = ApiError), (status = 404, body = ApiError),
              (status = 503, body = ApiError)))]
pub async fn create_key(
    State(state): State<ApiState>,
    headers: HeaderMap,
    Path(tenant): Path<String>,
    body: Bytes,
) -> Result<Response, ApiError> {
    let (principal, tenant) = caller(&state, &headers, &tenant).await?;
    principal.operator()?;
    let request: CreateKeyRequest =
        serde_json::from_slice(&body).map_err(|e| ApiError::bad_request(e.to_string()))?;
    if request
        .expires_in_days
        .is_some_and(|days| !(1..=3650).contains(&days))
    {
        return Err(ApiError::bad_request(
            "expires_in_days must be from 1 to 3650",
        ));
    }
    if let Some(label) = &request.label
        && (label.len() > MAX_LABEL || label.chars().any(char::is_control))
    {
        return Err(ApiError::bad_request(format!(
            "label: at most {MAX_LABEL} bytes, no control characters"
        )));
    }
    let registered = state
        .tenants
        .get(&TenantKey {
            tenant: tenant.clone(),
        })
        .await
        .map_err(unavailable)?;
    if registered.is_none() {
        return Err(ApiError::not_found(format!(
            "tenant {tenant} is not registered (`switchyard tenants enable {tenant}`)"
        )));
    }
    let issued = keys::new_key(
        tenant,
        request.expires_in_days,
        request.label,
        &request.scopes,
        OffsetDateTime::now_utc(),
    )
    .map_err(unavailable)?;
    state
        .keys
        .put(&issued.id, &issued.record)
        .await
        .map_err(unavailable)?;
    let created = serde_json::to_value(CreatedView::new(&issued)).unwrap_or(Value::Null);
    Ok((StatusCode::CREATED, Json(created)).into_response())
}

/// Revokes one of a tenant's keys (`switchyard keys revoke`): refused from then on (within a
/// second, by ingress and this API), its record kept for the audit. Revoking a revoked key
/// changes nothing. Another tenant's key id is `404`.
#[utoipa::path(post, path = "/v1/tenants/{tenant}/keys/{key}/revoke", tag = "keys",
    params(("tenant" = String, Path, description = "tenant id", pattern = "^[a-z0-9][a-z0-9_-]{0,63}$"),
           ("key" = String, Path, description = "key id (the 32 hex characters after `sy_`)", pattern = "^[0-9a-f]{32}$")),
    responses((status = 200, body = Object, description = "the key, as in the listing"),
              (status = 400, body = ApiError), (status = 401, body = ApiError),
              (status = 403, body = ApiError), (status = 404, body = ApiError),
              (status = 409, body = ApiError), (status = 503, body = ApiError)))]
pub async fn revoke_key(
    State(state): State<ApiState>,
    headers: HeaderMap,
    Path((tenant, key)): Path<(String, String)>,
) -> Result<Json<Value>, ApiError> {
    let tenant = caller_for(&state, &headers, &tenant).await?;
    let id = key_of(&key)?;
    let now = OffsetDateTime::now_utc();
    match keys::revoke(&state.keys, &tenant, &id, now)
        .await
        .map_err(unavailable)?
    {
        Revoked::Revoked(record) => Ok(Json(
            serde_json::to_value(KeyView::new(&id.id, &record, now)).unwrap_or(Value::Null),
        )),
        Revoked::NoSuchKey => Err(ApiError::not_found(format!(
            "tenant {tenant} has no key {}",
            id.id
        ))),
        Revoked::KeptChanging => Err(ApiError::new(
            StatusCode::CONFLICT,
            "conflict",
            "the key kept changing; try again",
        )),
    }
}
