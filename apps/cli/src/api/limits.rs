//! The management API's rate-limit endpoints, through the same functions as `switchyard
//! limits` ([`limits::in_force`], [`limits::set`], [`limits::list`]): a tenant's key reads the
//! limit in force for its own tenant; only the operator sets limits (a tenant must not raise
//! its own rate or backlog threshold), lists every limit, and reads or sets `_default`.

use axum::Json;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::HeaderMap;
use serde::Deserialize;
use serde_json::Value;
use switchyard_keys::RateScope;
use utoipa::ToSchema;

use super::ApiState;
use super::auth::authenticate;
use super::error::ApiError;
use super::handlers::{caller, caller_for, unavailable, values};
use crate::commands::limits::{self, Found, LimitView};

/// What `PUT …/limits` sets (`switchyard limits set`).
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct LimitRequest {
    /// Messages per second delivered, across every backpressure replica: more than 0, at most
    /// 1 000 000.
    pub rate_per_sec: f64,
    /// Messages that may go at once after a quiet period (default: one second's worth).
    #[schema(minimum = 1)]
    pub burst: Option<u32>,
    /// Backlog that closes the tenant's admission at the edge (default: the service's).
    pub backlog_high: Option<u64>,
    /// Backlog below which admission reopens (default: half of `backlog_high`).
    pub backlog_low: Option<u64>,
    /// Bytes of the tenant's messages in its `BACKPRESSURE` shard that close its admission; it
    /// reopens under half (default: the backpressure service's `default_backlog_high_bytes`).
    /// At least what the largest message a shard stores counts (1114112 with the bundled
    /// topology); a mark at or above ingress's `next_stage_credit_bytes` is not reached.
    #[schema(minimum = 1)]
    pub backlog_high_bytes: Option<u64>,
}

/// The limit in force as JSON: `limits get --json`'s object, and `from` (the tenant, or
/// `_default`: where the limit comes from).
fn in_force_view(found: Found) -> Value {
    let mut value = serde_json::to_value(&found.view).unwrap_or(Value::Null);
    if let Value::Object(fields) = &mut value {
        fields.insert("from".to_owned(), Value::String(found.from));
    }
    value
}

/// The limit in force for `scope`: `404` when neither the scope nor `_default` has one.
async fn get_scope(state: &ApiState, scope: &RateScope) -> Result<Json<Value>, ApiError> {
    let lookup = limits::in_force(&state.limits, scope)
        .await
        .map_err(unavailable)?;
    match lookup.found {
        Some(found) => Ok(Json(in_force_view(found))),
        None => Err(ApiError::not_found(format!(
            "no limit for {} and no _default: the backpressure service's built-in default applies",
            limits::scope_name(scope)
        ))),
    }
}

/// Writes `scope`'s limit from a request body.
async fn set_scope(
    state: &ApiState,
    scope: &RateScope,
    body: &Bytes,
) -> Result<Json<Value>, ApiError> {
    let request: LimitRequest =
        serde_json::from_slice(body).map_err(|e| ApiError::bad_request(e.to_string()))?;
    let record = limits::limit_record(
        &state.topology,
        request.rate_per_sec,
        request.burst,
        request.backlog_high,
        request.backlog_low,
        request.backlog_high_bytes,
    )
    .map_err(|e| ApiError::invalid(format!("invalid limit: {e}")))?;
    limits::set(&state.limits, scope, &record)
        .await
        .map_err(unavailable)?;
    let view = LimitView {
        tenant: limits::scope_name(scope),
        limit: record,
        admission: None,
    };
    Ok(Json(serde_json::to_value(&view).unwrap_or(Value::Null)))
}

/// The rate limit in force for a tenant (`switchyard limits get --json`, and `from`: the
/// tenant's own record, or `_default`), with its admission state.
#[utoipa::path(get, path = "/v1/tenants/{tenant}/limits", tag = "limits",
    params(("tenant" = String, Path, description = "tenant id", pattern = "^[a-z0-9][a-z0-9_-]{0,63}$")),
    responses((status = 200, body = Object, description = "{\"tenant\", \"from\", \"rate_per_sec\", \"burst\", \"backlog_high\"?, \"backlog_low\"?, \"backlog_high_bytes\"?, \"admission\"}"),
              (status = 400, body = ApiError), (status = 401, body = ApiError),
              (status = 403, body = ApiError), (status = 404, body = ApiError),
              (status = 503, body = ApiError)))]
pub async fn get_limits(
    State(state): State<ApiState>,
    headers: HeaderMap,
    Path(tenant): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let tenant = caller_for(&state, &headers, &tenant).await?;
    get_scope(&state, &RateScope::Tenant(tenant)).await
}

/// Sets a tenant's rate limit (operator only; `switchyard limits set`): every backpressure
/// replica applies it within a second.
#[utoipa::path(put, path = "/v1/tenants/{tenant}/limits", tag = "limits",
    params(("tenant" = String, Path, description = "tenant id", pattern = "^[a-z0-9][a-z0-9_-]{0,63}$")),
    request_body(content = LimitRequest),
    responses((status = 200, body = Object, description = "the limit written"),
              (status = 400, body = ApiError), (status = 401, body = ApiError),
              (status = 403, body = ApiError), (status = 422, body = ApiError),
              (status = 503, body = ApiError)))]
pub async fn put_limits(
    State(state): State<ApiState>,
    headers: HeaderMap,
    Path(tenant): Path<String>,
    body: Bytes,
) -> Result<Json<Value>, ApiError> {
    let (principal, tenant) = caller(&state, &headers, &tenant).await?;
    principal.operator()?;
    set_scope(&state, &RateScope::Tenant(tenant), &body).await
}

/// Every limit record with each tenant's admission state (operator only; `switchyard limits
/// ls --json`).
#[utoipa::path(get, path = "/v1/limits", tag = "limits",
    responses((status = 200, body = Vec<Object>), (status = 401, body = ApiError),
              (status = 403, body = ApiError), (status = 503, body = ApiError)))]
pub async fn list_limits(
    State(state): State<ApiState>,
    headers: HeaderMap,
) -> Result<Json<Vec<Value>>, ApiError> {
    authenticate(&headers, &state.operator_token, &state.keys)
        .await?
        .operator()?;
    let views = limits::list(&state.limits).await.map_err(unavailable)?;
    Ok(Json(values(&views)))
}

/// The `_default` limit, for tenants without their own (operator only).
#[utoipa::path(get, path = "/v1/limits/_default", tag = "limits",
    responses((status = 200, body = Object), (status = 401, body = ApiError),
              (status = 403, body = ApiError), (status = 404, body = ApiError),
              (status = 503, body = ApiError)))]
pub async fn get_default_limits(
    State(state): State<ApiState>,
    headers: HeaderMap,
) -> Result<Json<Value>, ApiError> {
    authenticate(&headers, &state.operator_token, &state.keys)
        .await?
        .operator()?;
    get_scope(&state, &RateScope::Default).await
}

/// Sets the `_default` limit (operator only).
#[utoipa::path(put, path = "/v1/limits/_default", tag = "limits",
    request_body(content = LimitRequest),
    responses((status = 200, body = Object, description = "the limit written"),
              (status = 400, body = ApiError), (status = 401, body = ApiError),
              (status = 403, body = ApiError), (status = 422, body = ApiError),
              (status = 503, body = ApiError)))]
pub async fn put_default_limits(
    State(state): State<ApiState>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Json<Value>, ApiError> {
    authenticate(&headers, &state.operator_token, &state.keys)
        .await?
        .operator()?;
    set_scope(&state, &RateScope::Default, &body).await
}
