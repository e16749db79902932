//! The management API's tenant registration, through the same functions as `switchyard
//! tenants enable|disable` ([`tenants::enable_tenant`], [`tenants::set_tenant_enabled`]):
//! operator only — a tenant must not raise its own quota, and its keys stop working while it
//! is disabled.

use axum::Json;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use serde::{Deserialize, Deserializer, Serialize};
use serde_json::Value;
use switchyard_keys::TenantKey;
use switchyard_registry::{RateLimit, TenantRecord, Unmatched};
use utoipa::ToSchema;

use super::ApiState;
use super::error::ApiError;
use super::handlers::{TenantView, caller, unavailable};
use crate::commands::tenants::{self, TenantChange, TenantError};

/// What `POST /v1/tenants/{tenant}/enable` changes (`switchyard tenants enable`); a field left
/// out keeps what the tenant's record has (the defaults for a new tenant).
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct EnableRequest {
    /// Ingress quota in bytes: what its own ingress stream may hold accepted and not yet read
    /// (at least the largest message a tenant stream takes; more than the server can reserve
    /// is `422 provisioning_refused`).
    #[schema(minimum = 1)]
    pub max_bytes: Option<i64>,
    /// Ingress quota in messages (at least 1).
    #[schema(minimum = 1)]
    pub max_msgs: Option<i64>,
    /// A display name for people (at most 100 characters, no control characters); `null`
    /// removes it.
    #[serde(default, deserialize_with = "present")]
    #[schema(value_type = Option<String>, nullable)]
    pub name: Option<Option<String>>,
    /// What becomes of a message none of its destinations takes: `dead_letter` (DLQ code
    /// `no_subscriber`) or `drop` (with a receipt).
    #[schema(value_type = Option<String>, pattern = "^(dead_letter|drop)$")]
    pub unmatched: Option<String>,
    /// The rate limit of each of its destinations without one of its own; `null` removes it.
    #[serde(default, deserialize_with = "present")]
    #[schema(value_type = Option<Object>, nullable)]
    pub destination_rate_limit: Option<Option<RateLimit>>,
}

/// A field that is present: `Some(value)`, `null` included (`Some(None)`); absent fields stay
/// `None` through `#[serde(default)]`.
fn present<'de, D, T>(deserializer: D) -> Result<Option<Option<T>>, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de>,
{
    Option::<T>::deserialize(deserializer).map(Some)
}

fn view(tenant: &impl ToString, record: &TenantRecord) -> TenantView {
    TenantView {
        tenant: tenant.to_string(),
        record: serde_json::to_value(record).unwrap_or(Value::Null),
    }
}

/// Registers a tenant, or re-enables it with the settings given (operator only): its own
/// ingress stream is provisioned (a changed quota applied in place) before its record says it
/// is enabled.
#[utoipa::path(post, path = "/v1/tenants/{tenant}/enable", tag = "tenants",
    params(("tenant" = String, Path, description = "tenant id", pattern = "^[a-z0-9][a-z0-9_-]{0,63}$")),
    request_body(content = EnableRequest),
    responses((status = 200, body = TenantView), (status = 400, body = ApiError),
              (status = 401, body = ApiError), (status = 403, body = ApiError),
              (status = 422, body = ApiError), (status = 503, body = ApiError)))]
pub async fn enable_tenant(
    State(state): State<ApiState>,
    headers: HeaderMap,
    Path(tenant): Path<String>,
    body: Bytes,
) -> Result<Json<TenantView>, ApiError> {
    let (principal, tenant) = caller(&state, &headers, &tenant).await?;
    principal.operator()?;
    let request: EnableRequest = if body.is_empty() {
        EnableRequest::default()
    } else {
        serde_json::from_slice(&body).map_err(|e| ApiError::bad_request(e.to_string()))?
    };
    let unmatched = match request.unmatched.as_deref() {
        None => None,
        Some("dead_letter") => Some(Unmatched::DeadLetter),
        Some("drop") => Some(Unmatched::Drop),
        Some(other) => {
            return Err(ApiError::invalid(format!(
                "unmatched {other:?} is neither dead_letter nor drop"
            )));
        }
    };
    let change = TenantChange {
        max_bytes: request.max_bytes,
        max_msgs: request.max_msgs,
        name: request.name,
        unmatched,
        destination_rate: request.destination_rate_limit,
    };
    match tenants::enable_tenant(&state.js, &state.topology, &state.tenants, &tenant, &change).await
    {
        Ok((record, _)) => Ok(Json(view(&tenant, &record))),
        Err(TenantError::Invalid { field, reason }) => {
            Err(ApiError::invalid(format!("{field} {reason}")))
        }
        Err(TenantError::Store(error)) => Err(unavailable(error)),
        // The server refused the stream (its storage cannot hold the quota, say): the
        // request's doing, not an outage.
        Err(error @ TenantError::Provision { .. }) => Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "provisioning_refused",
            crate::output::error_chain(&error),
        )),
    }
}

/// Disables a registered tenant (operator only): ingress dead-letters its messages with
/// `tenant_disabled` and its API keys are refused; its settings are kept for re-enabling.
#[utoipa::path(post, path = "/v1/tenants/{tenant}/disable", tag = "tenants",
    params(("tenant" = String, Path, description = "tenant id", pattern = "^[a-z0-9][a-z0-9_-]{0,63}$")),
    responses((status = 200, body = TenantView), (status = 400, body = ApiError),
              (status = 401, body = ApiError), (status = 403, body = ApiError),
              (status = 404, body = ApiError), (status = 503, body = ApiError)))]
pub async fn disable_tenant(
    State(state): State<ApiState>,
    headers: HeaderMap,
    Path(tenant): Path<String>,
) -> Result<Json<TenantView>, ApiError> {
    let (principal, tenant) = caller(&state, &headers, &tenant).await?;
    principal.operator()?;
    let Some(record) = tenants::set_tenant_enabled(&state.tenants, &tenant, false)
        .await
        .map_err(unavailable)?
    else {
        return Err(ApiError::not_found(format!("no tenant {tenant}")));
    };
    // Its portal sessions end here at once, and on every other replica through the event.
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    state.console.keys.end_tenant_sessions(&tenant, now, now);
    if let Err(error) = state
        .events
        .emit_and_wait(
            switchyard_subjects::EventKind::TenantDisabled,
            Some(&tenant),
            None,
            tenants::DISABLED_DETAIL,
        )
        .await
    {
        tracing::warn!(%error, %tenant, "the tenant_disabled event was not stored");
    }
    Ok(Json(view(&tenant, &record)))
}

/// What `POST /v1/tenants/{tenant}/portal-link` takes: how long the link may be used.
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PortalLinkRequest {
    /// Seconds the link may be used to open a portal session (60 to 604800; default 3600).
    /// The session it opens then lasts 8 hours at most.
    #[schema(minimum = 60, maximum = 604_800)]
    pub ttl_secs: Option<u64>,
}

/// A signed link to one tenant's portal.
#[derive(Debug, Serialize, ToSchema)]
pub struct PortalLink {
    /// The tenant.
    pub tenant: String,
    /// The link's path on this server (`/ui/portal?token=…`): prefix it with the console's
    /// base URL as the tenant reaches it.
    pub path: String,
    /// Until when it may be used (RFC 3339).
    pub expires_at: String,
}

/// The shortest and longest life of a portal link, seconds.
const LINK_SECS: std::ops::RangeInclusive<u64> = 60..=604_800;

/// A signed, short-lived link to a registered, enabled tenant's portal in the console
/// (operator only: what `switchyard api portal-link` prints). It is signed with a key derived
/// from the operator token, so rotating the token revokes every link; disabling the tenant
/// ends the sessions links opened.
#[utoipa::path(post, path = "/v1/tenants/{tenant}/portal-link", tag = "tenants",
    params(("tenant" = String, Path, description = "tenant id", pattern = "^[a-z0-9][a-z0-9_-]{0,63}$")),
    request_body(content = Option<PortalLinkRequest>),
    responses((status = 200, body = PortalLink), (status = 400, body = ApiError),
              (status = 401, body = ApiError), (status = 403, body = ApiError),
              (status = 404, body = ApiError), (status = 422, body = ApiError),
              (status = 503, body = ApiError)))]
pub async fn portal_link(
    State(state): State<ApiState>,
    headers: HeaderMap,
    Path(tenant): Path<String>,
    body: Bytes,
) -> Result<Json<PortalLink>, ApiError> {
    let (principal, tenant) = caller(&state, &headers, &tenant).await?;
    principal.operator()?;
    let request: PortalLinkRequest = if super::handlers::empty_body(&body) {
        PortalLinkRequest::default()
    } else {
        serde_json::from_slice(&body).map_err(|e| ApiError::bad_request(e.to_string()))?
    };
    let ttl = request.ttl_secs.unwrap_or(3600);
    if !LINK_SECS.contains(&ttl) {
        return Err(ApiError::invalid(format!(
            "ttl_secs {ttl} is outside {} to {}",
            LINK_SECS.start(),
            LINK_SECS.end()
        )));
    }
    let record = state
        .tenants
        .get(&TenantKey {
            tenant: tenant.clone(),
        })
        .await
        .map_err(unavailable)?;
    match record {
        None => {
            return Err(ApiError::not_found(format!(
                "tenant {tenant} is not registered (`switchyard tenants enable {tenant}`)"
            )));
        }
        Some(record) if !record.enabled => {
            return Err(ApiError::invalid(format!(
                "tenant {tenant} is disabled: its portal would open nothing"
            )));
        }
        Some(_) => {}
    }
    let expires = time::OffsetDateTime::now_utc() + time::Duration::seconds(ttl as i64);
    let token = state.console.keys.link(&tenant, expires.unix_timestamp());
    Ok(Json(PortalLink {
        tenant: tenant.to_string(),
        path: format!("/ui/portal?token={token}"),
        expires_at: expires
            .format(&time::format_description::well_known::Rfc3339)
            .unwrap_or_default(),
    }))
}
