//! The management API's tenant, destination, delivery-log, event and status endpoints, and the
//! helpers every endpoint module shares (who is calling, path and query parsing): the same
//! records and reads the CLI's commands use (the registry's stores, the delivery log's
//! listing), so the API and the CLI always agree. Every path, query and body is read by hand
//! into the API's own errors (never a framework's plain-text rejection), and every record
//! shown is redacted. The DLQ and replay jobs are in [`super::dlq`], API keys in
//! [`super::keys`], rate limits in [`super::limits`].

use std::collections::HashMap;

use axum::Json;
use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use switchyard_envelope::Destination as Copy;
use switchyard_keys::{DestinationId, DestinationKey, KvKey, TenantId, TenantKey};
use switchyard_registry::{Changed, Destination, Disabled, DisabledBy};
use switchyard_subjects::EventKind;
use switchyard_topology::StreamName;
use time::OffsetDateTime;
use utoipa::ToSchema;

use super::ApiState;
use super::auth::{Principal, authenticate};
use super::error::ApiError;
use crate::commands::attempts::{self, LsArgs};
use crate::commands::destinations::{
    CAS_TRIES, opened_target, others, replacing, switch_event, switched,
};

/// The most entries or attempts one listing returns.
pub const MAX_PAGE: usize = 1_000;

/// The most sequences one replay or purge request lists, and the most entries one purge
/// deletes.
pub const MAX_LISTED: usize = 10_000;

pub use switchyard_registry::destination::MAX_DESTINATIONS;

/// A tenant and its registry record.
#[derive(Debug, Serialize, ToSchema)]
pub struct TenantView {
    /// The tenant id.
    pub tenant: String,
    /// Its record (`enabled`, `name`, quotas, `unmatched`, `destination_rate_limit`).
    #[schema(value_type = Object)]
    pub record: Value,
}

/// A destination, its secrets redacted.
#[derive(Debug, Serialize, ToSchema)]
pub struct DestinationView {
    /// The tenant.
    pub tenant: String,
    /// The destination id.
    pub destination: String,
    /// The record (`target`, `subscription`, `description`, `disabled`, `rate_limit`), with
    /// webhook secrets as `whsec_***` (sealed ones as `enc:v1:<data key id>:***`) and URLs as
    /// `scheme://host[:port]`; absent when the stored record is unreadable.
    #[schema(value_type = Option<Object>)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub record: Option<Value>,
    /// Why the stored record is unreadable.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// A page of the delivery log, oldest first.
#[derive(Debug, Serialize, ToSchema)]
pub struct AttemptsPage {
    /// The attempts (the JSON of `switchyard attempts ls --json`).
    #[schema(value_type = Vec<Object>)]
    pub attempts: Vec<Value>,
}

/// A page of a tenant's operational events, oldest first.
#[derive(Debug, Serialize, ToSchema)]
pub struct EventsPage {
    /// The events (the JSON of `switchyard events ls --json`).
    #[schema(value_type = Vec<Object>)]
    pub events: Vec<Value>,
}

/// What `POST …/disable` may say.
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct DisableRequest {
    /// Why (shown by `switchyard destinations get`).
    pub reason: Option<String>,
}

pub(super) fn tenant_of(raw: &str) -> Result<TenantId, ApiError> {
    raw.parse()
        .map_err(|e| ApiError::bad_request(format!("tenant: {e}")))
}

fn destination_of(raw: &str) -> Result<DestinationId, ApiError> {
    raw.parse()
        .map_err(|e| ApiError::bad_request(format!("destination: {e}")))
}

/// The caller, allowed to reach `tenant` ([`caller`]), and the destination the path names.
///
/// Errors: those of [`caller`]; `400` a malformed destination id.
async fn destination_caller(
    state: &ApiState,
    headers: &HeaderMap,
    tenant: &str,
    destination: &str,
) -> Result<(Principal, DestinationKey), ApiError> {
    let (principal, tenant) = caller(state, headers, tenant).await?;
    let key = DestinationKey {
        tenant,
        destination: destination_of(destination)?,
    };
    Ok((principal, key))
}

/// The caller, allowed to reach `tenant`: the operator, or a key of `tenant` whose tenant is
/// registered and enabled (a disabled tenant manages nothing: `403 tenant_disabled`).
pub(super) async fn caller_for(
    state: &ApiState,
    headers: &HeaderMap,
    tenant: &str,
) -> Result<TenantId, ApiError> {
    Ok(caller(state, headers, tenant).await?.1)
}

/// [`caller_for`], with who it is.
pub(super) async fn caller(
    state: &ApiState,
    headers: &HeaderMap,
    tenant: &str,
) -> Result<(Principal, TenantId), ApiError> {
    let principal = authenticate(headers, &state.operator_token, &state.keys).await?;
    let tenant = tenant_of(tenant)?;
    principal.may(&tenant)?;
    enabled(state, &principal).await?;
    Ok((principal, tenant))
}

/// The caller, for paths that name no tenant (`/v1/jobs`): the operator, or a key of a
/// registered and enabled tenant (`403 tenant_disabled` otherwise).
pub(super) async fn principal(
    state: &ApiState,
    headers: &HeaderMap,
) -> Result<Principal, ApiError> {
    let principal = authenticate(headers, &state.operator_token, &state.keys).await?;
    enabled(state, &principal).await?;
    Ok(principal)
}

/// `403 tenant_disabled` for a key of a tenant that is not registered and enabled.
async fn enabled(state: &ApiState, principal: &Principal) -> Result<(), ApiError> {
    if let Principal::Tenant(own) = principal {
        let key = TenantKey {
            tenant: own.clone(),
        };
        let record = state.tenants.get(&key).await.map_err(unavailable)?;
        if !record.is_some_and(|r| r.enabled) {
            return Err(ApiError::new(
                StatusCode::FORBIDDEN,
                "tenant_disabled",
                "the tenant is not enabled: its keys manage nothing",
            ));
        }
    }
    Ok(())
}

pub(super) fn unavailable(error: impl std::error::Error + 'static) -> ApiError {
    ApiError::unavailable(&error)
}

pub(super) fn anyhow_unavailable(error: &anyhow::Error) -> ApiError {
    ApiError::new(
        StatusCode::SERVICE_UNAVAILABLE,
        "unavailable",
        format!("{error:#}"),
    )
}

/// A destination named in a query parameter (a destination id, or `_route`).
pub(super) fn copy_of(raw: Option<&String>) -> Result<Option<Copy>, ApiError> {
    raw.map(|d| d.parse::<Copy>())
        .transpose()
        .map_err(|e| ApiError::bad_request(format!("destination: {e}")))
}

/// One of the log streams (`ATTEMPTS`, `EVENTS`).
async fn log_stream(
    state: &ApiState,
    name: StreamName,
) -> Result<async_nats::jetstream::stream::Stream, ApiError> {
    Ok(state
        .topology
        .open_stream(&state.js, name)
        .await
        .map_err(unavailable)?
        .1)
}

/// Records as the JSON the CLI's `--json` prints for them.
pub(super) fn values<T: Serialize>(items: &[T]) -> Vec<Value> {
    items
        .iter()
        .map(|item| serde_json::to_value(item).unwrap_or(Value::Null))
        .collect()
}

/// `400` naming a query parameter that is not one of `known` (a typo must not widen a
/// listing silently).
pub(super) fn known_parameters(
    query: &HashMap<String, String>,
    known: &[&str],
) -> Result<(), ApiError> {
    match query.keys().find(|name| !known.contains(&name.as_str())) {
        Some(name) => Err(ApiError::bad_request(format!(
            "unknown query parameter {:?}: one of {}",
            crate::output::printable(name),
            known.join(", ")
        ))),
        None => Ok(()),
    }
}

/// A query parameter as a number in `range`.
pub(super) fn number(
    query: &HashMap<String, String>,
    name: &str,
    default: usize,
    max: usize,
) -> Result<usize, ApiError> {
    match query.get(name) {
        None => Ok(default),
        Some(raw) => match raw.parse::<usize>() {
            Ok(n) if (1..=max).contains(&n) => Ok(n),
            _ => Err(ApiError::bad_request(format!(
                "{name} must be a whole number from 1 to {max}"
            ))),
        },
    }
}

fn view(tenant: &TenantId, id: &DestinationId, record: &Destination) -> DestinationView {
    DestinationView {
        tenant: tenant.to_string(),
        destination: id.to_string(),
        record: Some(serde_json::to_value(record.redacted()).unwrap_or(Value::Null)),
        error: None,
    }
}

/// Lists every tenant (operator only).
#[utoipa::path(get, path = "/v1/tenants", tag = "tenants",
    responses((status = 200, body = Vec<TenantView>), (status = 401, body = ApiError),
              (status = 403, body = ApiError), (status = 503, body = ApiError)))]
pub async fn list_tenants(
    State(state): State<ApiState>,
    headers: HeaderMap,
) -> Result<Json<Vec<TenantView>>, ApiError> {
    authenticate(&headers, &state.operator_token, &state.keys)
        .await?
        .operator()?;
    let listed = state.tenants.list(">").await.map_err(unavailable)?;
    Ok(Json(
        listed
            .into_iter()
            .map(|(key, record)| TenantView {
                tenant: key.tenant.to_string(),
                record: match record {
                    Ok(record) => serde_json::to_value(record).unwrap_or(Value::Null),
                    Err(error) => serde_json::json!({"error": error.to_string()}),
                },
            })
            .collect(),
    ))
}

/// One tenant's registry record.
#[utoipa::path(get, path = "/v1/tenants/{tenant}", tag = "tenants",
    params(("tenant" = String, Path, description = "tenant id", pattern = "^[a-z0-9][a-z0-9_-]{0,63}$")),
    responses((status = 200, body = TenantView), (status = 400, body = ApiError),
              (status = 401, body = ApiError), (status = 403, body = ApiError),
              (status = 404, body = ApiError), (status = 503, body = ApiError)))]
pub async fn get_tenant(
    State(state): State<ApiState>,
    headers: HeaderMap,
    Path(tenant): Path<String>,
) -> Result<Json<TenantView>, ApiError> {
    let tenant = caller_for(&state, &headers, &tenant).await?;
    let key = TenantKey {
        tenant: tenant.clone(),
    };
    match state.tenants.get(&key).await.map_err(unavailable)? {
        Some(record) => Ok(Json(TenantView {
            tenant: tenant.to_string(),
            record: serde_json::to_value(record).unwrap_or(Value::Null),
        })),
        None => Err(ApiError::not_found(format!("no tenant {tenant}"))),
    }
}

/// A tenant's destinations.
#[utoipa::path(get, path = "/v1/tenants/{tenant}/destinations", tag = "destinations",
    params(("tenant" = String, Path, description = "tenant id", pattern = "^[a-z0-9][a-z0-9_-]{0,63}$")),
    responses((status = 200, body = Vec<DestinationView>), (status = 400, body = ApiError),
              (status = 401, body = ApiError), (status = 403, body = ApiError),
              (status = 503, body = ApiError)))]
pub async fn list_destinations(
    State(state): State<ApiState>,
    headers: HeaderMap,
    Path(tenant): Path<String>,
) -> Result<Json<Vec<DestinationView>>, ApiError> {
    let tenant = caller_for(&state, &headers, &tenant).await?;
    let filter = switchyard_keys::kv::tenant_filter(&tenant);
    let listed = state
        .destinations
        .list(&filter)
        .await
        .map_err(unavailable)?;
    Ok(Json(
        listed
            .into_iter()
            .map(|(key, record)| match record {
                Ok(record) => view(&key.tenant, &key.destination, &record),
                Err(error) => DestinationView {
                    tenant: key.tenant.to_string(),
                    destination: key.destination.to_string(),
                    record: None,
                    error: Some(error.to_string()),
                },
            })
            .collect(),
    ))
}

/// One destination.
#[utoipa::path(get, path = "/v1/tenants/{tenant}/destinations/{destination}", tag = "destinations",
    params(("tenant" = String, Path, description = "tenant id", pattern = "^[a-z0-9][a-z0-9_-]{0,63}$"),
           ("destination" = String, Path, description = "destination id", pattern = "^[a-z0-9][a-z0-9_-]{0,63}$")),
    responses((status = 200, body = DestinationView), (status = 400, body = ApiError),
              (status = 401, body = ApiError), (status = 403, body = ApiError),
              (status = 404, body = ApiError), (status = 503, body = ApiError)))]
pub async fn get_destination(
    State(state): State<ApiState>,
    headers: HeaderMap,
    Path((tenant, destination)): Path<(String, String)>,
) -> Result<Json<DestinationView>, ApiError> {
    let (_, key) = destination_caller(&state, &headers, &tenant, &destination).await?;
    match state.destinations.get(&key).await.map_err(unavailable)? {
        Some(record) => Ok(Json(view(&key.tenant, &key.destination, &record))),
        None => Err(ApiError::not_found(format!(
            "no destination {}",
            key.render()
        ))),
    }
}

/// Creates or replaces a destination (the JSON of `destinations` records); a stored
/// `disabled` state is kept, and so are a webhook's previous secrets when its secret is
/// unchanged. For a tenant with encryption on, the target's secrets are stored sealed under its
/// current data key: an API started without `--kek-file` refuses with `503 kek_required`.
#[utoipa::path(put, path = "/v1/tenants/{tenant}/destinations/{destination}", tag = "destinations",
    params(("tenant" = String, Path, description = "tenant id", pattern = "^[a-z0-9][a-z0-9_-]{0,63}$"),
           ("destination" = String, Path, description = "destination id", pattern = "^[a-z0-9][a-z0-9_-]{0,63}$")),
    request_body(content = Object, description = "a destination: {\"target\": {…route…}, \"subscription\": {…}}"),
    responses((status = 200, body = DestinationView), (status = 400, body = ApiError),
              (status = 401, body = ApiError), (status = 403, body = ApiError),
              (status = 422, body = ApiError), (status = 503, body = ApiError)))]
pub async fn put_destination(
    State(state): State<ApiState>,
    headers: HeaderMap,
    Path((tenant, destination)): Path<(String, String)>,
    body: Bytes,
) -> Result<Json<DestinationView>, ApiError> {
    let (principal, key) = destination_caller(&state, &headers, &tenant, &destination).await?;
    let value: Value = serde_json::from_slice(&body)
        .map_err(|e| ApiError::bad_request(format!("the body is not JSON: {e}")))?;
    if !value.is_object() {
        return Err(ApiError::bad_request("the body must be a JSON object"));
    }
    let given: Destination =
        serde_json::from_value(value).map_err(|e| ApiError::invalid(e.to_string()))?;
    if let Principal::Tenant(own) = &principal {
        given
            .target
            .check_tenant_scope(own.as_str())
            .map_err(|e| ApiError::invalid(e.to_string()))?;
    }
    let sealer = sealer_for(&state, &key.tenant).await?;
    let place = switchyard_crypt::SecretPlace::Destination(key.clone());
    let existed = state
        .destinations
        .get(&key)
        .await
        .map_err(unavailable)?
        .is_some();
    let count = others(&state.destinations, &key).await?;
    if count >= MAX_DESTINATIONS {
        return Err(ApiError::invalid(format!(
            "tenant {} has {count} destinations, the most a tenant may have",
            key.tenant
        )));
    }
    // Compare-and-set: a concurrent change (egress disabling it, another edit) is re-read.
    let changed = state
        .destinations
        .change(&key, CAS_TRIES, |old| {
            let old = opened_target(&sealer, old, &place);
            let (mut next, _) = replacing(&given, old.as_ref());
            next.validate()
                .map_err(|e| ApiError::invalid(crate::output::error_chain(&e)))?;
            sealer
                .seal(&mut next.target, &place)
                .map_err(|e| ApiError::invalid(e.to_string()))?;
            Ok::<_, ApiError>(Some(next))
        })
        .await?;
    let Changed::Stored(record, _) = changed else {
        return Err(conflict());
    };
    // Concurrent creates each counted the others before writing: counted again now, the
    // one that went over the limit is taken back (a replaced destination never is).
    if !existed && others(&state.destinations, &key).await? >= MAX_DESTINATIONS {
        state.destinations.delete(&key).await.map_err(unavailable)?;
        state
            .destinations
            .purge_history(&key)
            .await
            .map_err(unavailable)?;
        return Err(ApiError::invalid(format!(
            "tenant {} has {MAX_DESTINATIONS} destinations, the most a tenant may have",
            key.tenant
        )));
    }
    state
        .destinations
        .purge_history(&key)
        .await
        .map_err(unavailable)?;
    Ok(Json(view(&key.tenant, &key.destination, &record)))
}

/// Whether a request body says nothing: empty, whitespace, or JSON `null` (what the OpenAPI
/// description allows for an optional body).
pub(crate) fn empty_body(body: &[u8]) -> bool {
    let trimmed = body.trim_ascii();
    trimmed.is_empty() || trimmed == b"null"
}

/// The sealer of `tenant`'s destination secrets: sealing under its current data key when its
/// encryption is on, a pass-through when off.
///
/// Errors: `503 kek_required` (encryption on, this API has no KEK), `422` (the tenant's keys
/// were shredded), `503` (the `tenant-keys` bucket unreachable).
async fn sealer_for<'a>(
    state: &'a ApiState,
    tenant: &TenantId,
) -> Result<switchyard_crypt::SecretSealer<'a>, ApiError> {
    let ring = state.data_keys.as_ref().map(|keys| &keys.1);
    match state.tenant_keys.secret_sealer(tenant, ring).await {
        Ok(sealer) => Ok(sealer),
        Err(error @ switchyard_crypt::KeyStoreError::NoKek { .. }) => Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "kek_required",
            format!("{error} (this API was started without it: `switchyard api serve --kek-file`)"),
        )),
        Err(error @ switchyard_crypt::KeyStoreError::Shredded { .. }) => {
            Err(ApiError::invalid(error.to_string()))
        }
        Err(error) => Err(unavailable(error)),
    }
}

/// The longest secret a rotation takes, in bytes.
const MAX_SECRET_BYTES: usize = 256;

/// A signing-secret rotation (`POST …/rotate-secret`; every field optional, an empty body
/// rotates to a generated secret with a 24 h overlap).
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RotateRequest {
    /// The new Standard Webhooks secret (`whsec_` + base64 of at least 16 bytes); absent: one
    /// is generated (32 random bytes) and returned once in the answer.
    pub secret: Option<String>,
    /// How long the current secret keeps signing beside the new one: an age (`30m`, `24h`,
    /// `7d`; at most 30 days; `0s` stops it at once). Default `24h`.
    pub overlap: Option<String>,
    /// Stop every previous secret now (one that leaked); with a rotation the current secret
    /// stops too (no overlap). With `"rotate": false`, this alone.
    #[serde(default)]
    pub revoke_previous: bool,
    /// Whether to rotate at all (default `true`; `false` with `revoke_previous` only revokes).
    pub rotate: Option<bool>,
}

/// The answer to a rotation.
#[derive(Debug, Serialize, ToSchema)]
pub struct RotateAnswer {
    /// The destination as stored now (redacted).
    pub destination: DestinationView,
    /// The generated secret: shown this once, never again (absent when the request gave one
    /// or only revoked).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub secret: Option<String>,
    /// What signs now: `only the new secret signs` or `1 previous secret signs too, until …`.
    pub signing: String,
}

/// Rotates a webhook destination's signing secret, keeping the current one signing for an
/// overlap, in the Standard Webhooks way (receivers accept any of the signatures); or revokes
/// its previous secrets. A generated secret is returned once. Reported as a `secret_rotated`
/// event (never with the secret).
#[utoipa::path(post, path = "/v1/tenants/{tenant}/destinations/{destination}/rotate-secret", tag = "destinations",
    params(("tenant" = String, Path, description = "tenant id", pattern = "^[a-z0-9][a-z0-9_-]{0,63}$"),
           ("destination" = String, Path, description = "destination id", pattern = "^[a-z0-9][a-z0-9_-]{0,63}$")),
    request_body(content = Option<RotateRequest>, description = "the new secret (else generated), the overlap, revoke_previous"),
    responses((status = 200, body = RotateAnswer), (status = 400, body = ApiError),
              (status = 401, body = ApiError), (status = 403, body = ApiError),
              (status = 404, body = ApiError), (status = 409, body = ApiError),
              (status = 422, body = ApiError), (status = 503, body = ApiError)))]
pub async fn rotate_destination_secret(
    State(state): State<ApiState>,
    headers: HeaderMap,
    Path((tenant, destination)): Path<(String, String)>,
    body: Bytes,
) -> Result<Json<RotateAnswer>, ApiError> {
    let (principal, key) = destination_caller(&state, &headers, &tenant, &destination).await?;
    let request: RotateRequest = if empty_body(&body) {
        RotateRequest::default()
    } else {
        serde_json::from_slice(&body).map_err(|e| ApiError::bad_request(e.to_string()))?
    };
    Ok(Json(
        rotate_secret(&state, &principal, &key, &request).await?,
    ))
}

/// Rotates `key`'s signing secret as `principal` (what `POST …/rotate-secret` and the
/// console's rotate form do): by compare-and-set, the secrets opened and sealed again for a
/// tenant with encryption on, the retired secrets' history purged, a `secret_rotated` event.
///
/// Errors: `400` a bad overlap or nothing to do, `404` no such destination, `409` it kept
/// changing, `422` not a webhook destination or a refused secret (reused, malformed, too many
/// previous secrets), `503` as [`sealer_for`] or KV unreachable.
pub(crate) async fn rotate_secret(
    state: &ApiState,
    principal: &Principal,
    key: &DestinationKey,
    request: &RotateRequest,
) -> Result<RotateAnswer, ApiError> {
    let overlap = match request.overlap.as_deref().map(str::trim) {
        None => time::Duration::hours(24),
        Some(raw) => crate::parse::age(raw)
            .and_then(|age| time::Duration::try_from(age).ok())
            .ok_or_else(|| {
                ApiError::bad_request(format!(
                    "overlap {:?} is not an age such as 30m, 24h or 7d",
                    crate::output::printable(raw)
                ))
            })?,
    };
    if overlap > switchyard_registry::MAX_OVERLAP {
        return Err(ApiError::invalid(format!(
            "overlap {} is over 30 days, the longest an old secret may keep signing",
            request.overlap.as_deref().unwrap_or_default().trim()
        )));
    }
    let rotate = request.rotate.unwrap_or(true);
    if !rotate && !request.revoke_previous {
        return Err(ApiError::bad_request(
            "nothing to do: rotate, revoke_previous, or both",
        ));
    }
    if !rotate && request.overlap.is_some() {
        return Err(ApiError::bad_request(
            "overlap applies to a rotation: with \"rotate\": false nothing new signs",
        ));
    }
    let (new, generated) = match (rotate, &request.secret) {
        (false, Some(_)) => {
            return Err(ApiError::bad_request(
                "a secret was given with \"rotate\": false",
            ));
        }
        (false, None) => (None, false),
        (true, Some(given)) if given.len() > MAX_SECRET_BYTES => {
            return Err(ApiError::invalid(format!(
                "secret: {} bytes, at most {MAX_SECRET_BYTES} (whsec_ and the base64 of 16 to 64 \
                 key bytes)",
                given.len()
            )));
        }
        (true, Some(given)) => (Some(given.trim().to_owned()), false),
        (true, None) => (
            Some(
                switchyard_registry::WebhookSecret::generate()
                    .map_err(unavailable)?
                    .0,
            ),
            true,
        ),
    };
    let rotation = crate::commands::routes::SecretArgs {
        secret: new.clone(),
        secret_file: None,
        overlap,
        revoke_previous: request.revoke_previous,
    };
    let sealer = sealer_for(state, &key.tenant).await?;
    let place = switchyard_crypt::SecretPlace::Destination(key.clone());
    let now = OffsetDateTime::now_utc();
    let changed = state
        .destinations
        .change(key, CAS_TRIES, |old| {
            let Some(old) = old else {
                return Err(ApiError::not_found(format!(
                    "no destination {}",
                    key.render()
                )));
            };
            let mut next = old.clone();
            sealer
                .open(&mut next.target, &place)
                .map_err(|e| ApiError::invalid(format!("the stored secrets do not open: {e}")))?;
            let switchyard_registry::Route::Webhook(webhook) = &mut next.target else {
                return Err(ApiError::invalid(format!(
                    "destination {} delivers over NATS: it has no signing secret",
                    key.render()
                )));
            };
            rotation
                .apply(webhook, new.as_ref(), now)
                .map_err(|e| ApiError::invalid(crate::output::error_chain(&e)))?;
            next.validate()
                .map_err(|e| ApiError::invalid(crate::output::error_chain(&e)))?;
            sealer
                .seal(&mut next.target, &place)
                .map_err(|e| ApiError::invalid(e.to_string()))?;
            Ok::<_, ApiError>(Some(next))
        })
        .await?;
    let Changed::Stored(record, _) = changed else {
        return Err(conflict());
    };
    state
        .destinations
        .purge_history(key)
        .await
        .map_err(unavailable)?;
    let (did, signing) =
        crate::commands::routes::rotation_summary(&record.target, new.is_some(), now);
    let who = match principal {
        Principal::Operator => "an operator",
        Principal::Tenant(_) => "the tenant",
    };
    state.events.emit(
        EventKind::SecretRotated,
        Some(&key.tenant),
        Some(key.destination.as_str()),
        &format!("{did} destination {} ({who}); {signing}", key.destination),
    );
    Ok(RotateAnswer {
        destination: view(&key.tenant, &key.destination, &record),
        secret: generated.then_some(new).flatten(),
        signing,
    })
}

/// Removes a destination.
#[utoipa::path(delete, path = "/v1/tenants/{tenant}/destinations/{destination}", tag = "destinations",
    params(("tenant" = String, Path, description = "tenant id", pattern = "^[a-z0-9][a-z0-9_-]{0,63}$"),
           ("destination" = String, Path, description = "destination id", pattern = "^[a-z0-9][a-z0-9_-]{0,63}$")),
    responses((status = 204, description = "removed"), (status = 400, body = ApiError),
              (status = 401, body = ApiError), (status = 403, body = ApiError),
              (status = 404, body = ApiError), (status = 503, body = ApiError)))]
pub async fn delete_destination(
    State(state): State<ApiState>,
    headers: HeaderMap,
    Path((tenant, destination)): Path<(String, String)>,
) -> Result<StatusCode, ApiError> {
    let (principal, key) = destination_caller(&state, &headers, &tenant, &destination).await?;
    match state.destinations.get(&key).await.map_err(unavailable)? {
        None => {
            return Err(ApiError::not_found(format!(
                "no destination {}",
                key.render()
            )));
        }
        // Deleting and creating it again would enable what an operator disabled.
        Some(found)
            if matches!(principal, Principal::Tenant(_))
                && found
                    .disabled
                    .as_ref()
                    .is_some_and(|d| d.by == DisabledBy::Operator) =>
        {
            return Err(ApiError::new(
                StatusCode::FORBIDDEN,
                "operator_only",
                format!(
                    "destination {} was disabled by an operator; only an operator removes it",
                    key.render()
                ),
            ));
        }
        Some(_) => {}
    }
    state.destinations.delete(&key).await.map_err(unavailable)?;
    state
        .destinations
        .purge_history(&key)
        .await
        .map_err(unavailable)?;
    Ok(StatusCode::NO_CONTENT)
}

/// Disables (`disable`) or enables (`enable`) a destination, by compare-and-set.
#[utoipa::path(post, path = "/v1/tenants/{tenant}/destinations/{destination}/{action}", tag = "destinations",
    params(("tenant" = String, Path, description = "tenant id", pattern = "^[a-z0-9][a-z0-9_-]{0,63}$"),
           ("destination" = String, Path, description = "destination id", pattern = "^[a-z0-9][a-z0-9_-]{0,63}$"),
           ("action" = String, Path, description = "`disable` or `enable`", pattern = "^(disable|enable)$")),
    request_body(content = Option<DisableRequest>, description = "for disable: an optional reason"),
    responses((status = 200, body = DestinationView), (status = 400, body = ApiError),
              (status = 401, body = ApiError), (status = 403, body = ApiError),
              (status = 404, body = ApiError), (status = 409, body = ApiError),
              (status = 422, body = ApiError), (status = 503, body = ApiError)))]
pub async fn switch_destination(
    State(state): State<ApiState>,
    headers: HeaderMap,
    Path((tenant, destination, action)): Path<(String, String, String)>,
    body: Bytes,
) -> Result<Json<DestinationView>, ApiError> {
    let (principal, key) = destination_caller(&state, &headers, &tenant, &destination).await?;
    let request: DisableRequest = if body.iter().all(u8::is_ascii_whitespace) {
        DisableRequest::default()
    } else {
        serde_json::from_slice(&body).map_err(|e| ApiError::bad_request(e.to_string()))?
    };
    let disabled = match action.as_str() {
        "disable" => Some(Disabled {
            at: OffsetDateTime::now_utc(),
            by: match principal {
                Principal::Operator => DisabledBy::Operator,
                Principal::Tenant(_) => DisabledBy::Tenant,
            },
            reason: request
                .reason
                .unwrap_or_else(|| "disabled through the management API".to_owned()),
        }),
        "enable" => None,
        other => {
            return Err(ApiError::not_found(format!(
                "no action {:?}: disable or enable",
                crate::output::printable(other)
            )));
        }
    };
    let record = switch(&state, &principal, &key, disabled).await?;
    Ok(Json(view(&key.tenant, &key.destination, &record)))
}

/// Disables (`Some`) or enables (`None`) a destination as `principal`, by compare-and-set, and
/// reports the change as an operational event (what `POST …/disable|enable` and the console
/// do). What an operator disabled, only an operator enables.
///
/// Errors: `404` no such destination, `403 operator_only`, `422` an invalid record, `409` it
/// kept changing, `503`.
pub(crate) async fn switch(
    state: &ApiState,
    principal: &Principal,
    key: &DestinationKey,
    disabled: Option<Disabled>,
) -> Result<Destination, ApiError> {
    let changed = state
        .destinations
        .change(key, CAS_TRIES, |old| {
            let Some(old) = old else {
                return Err(ApiError::not_found(format!(
                    "no destination {}",
                    key.render()
                )));
            };
            // What an operator disabled, only an operator enables.
            if let (Principal::Tenant(_), None, Some(current)) =
                (principal, &disabled, &old.disabled)
                && current.by == DisabledBy::Operator
            {
                return Err(ApiError::new(
                    StatusCode::FORBIDDEN,
                    "operator_only",
                    format!(
                        "destination {} was disabled by an operator; only an operator enables it",
                        key.render()
                    ),
                ));
            }
            let next = switched(old, &disabled);
            if let Some(next) = &next {
                next.validate()
                    .map_err(|e| ApiError::invalid(crate::output::error_chain(&e)))?;
            }
            Ok(next)
        })
        .await?;
    let record = match changed {
        Changed::Stored(record, _) => {
            let (kind, detail) = switch_event(&disabled, "enabled through the management API");
            state.events.emit(
                kind,
                Some(&key.tenant),
                Some(key.destination.as_str()),
                detail,
            );
            record
        }
        Changed::Unchanged(Some(record)) => record,
        Changed::Unchanged(None) | Changed::Conflicts => return Err(conflict()),
    };
    Ok(record)
}

/// `409 conflict`: the record kept changing under the request.
fn conflict() -> ApiError {
    ApiError::new(
        StatusCode::CONFLICT,
        "conflict",
        "the destination kept changing; try again",
    )
}

/// A tenant's delivery log, the most recent `limit` (1 to 1000, default 100) attempts that
/// match, oldest first.
#[utoipa::path(get, path = "/v1/tenants/{tenant}/attempts", tag = "attempts",
    params(("tenant" = String, Path, description = "tenant id", pattern = "^[a-z0-9][a-z0-9_-]{0,63}$"),
           ("limit" = Option<u32>, Query, description = "at most this many (1 to 1000, default 100)", minimum = 1, maximum = 1000),
           ("failed" = Option<bool>, Query, description = "only attempts that did not deliver"),
           ("result" = Option<String>, Query, description = "only attempts with this result: delivered, retryable or permanent", pattern = "^(delivered|retryable|permanent)$"),
           ("destination" = Option<String>, Query, description = "only this destination's copies"),
           ("message" = Option<String>, Query, description = "only this message's attempts (its envelope id or producer message id)"),
           ("since" = Option<String>, Query, description = "only attempts at or after this time (RFC 3339, or an age: 30s, 15m, 2h, 3d)"),
           ("until" = Option<String>, Query, description = "only attempts before this time (RFC 3339, or an age)")),
    responses((status = 200, body = AttemptsPage), (status = 400, body = ApiError),
              (status = 401, body = ApiError), (status = 403, body = ApiError),
              (status = 503, body = ApiError)))]
pub async fn list_attempts(
    State(state): State<ApiState>,
    headers: HeaderMap,
    Path(tenant): Path<String>,
    Query(query): Query<HashMap<String, String>>,
) -> Result<Json<AttemptsPage>, ApiError> {
    let tenant = caller_for(&state, &headers, &tenant).await?;
    Ok(Json(AttemptsPage {
        attempts: attempts_of(&state, &tenant, &query).await?,
    }))
}

/// `tenant`'s delivery log as `GET …/attempts` lists it for `query` (`limit`, `failed`,
/// `result`, `destination`, `message`, `since`, `until`; others refused): the most recent that
/// match, oldest first, as the JSON of `switchyard attempts ls --json`. The console's
/// attempts page reads the same.
///
/// Errors: `400` a bad or unknown parameter, `503`.
pub(crate) async fn attempts_of(
    state: &ApiState,
    tenant: &TenantId,
    query: &HashMap<String, String>,
) -> Result<Vec<Value>, ApiError> {
    known_parameters(
        query,
        &[
            "limit",
            "failed",
            "result",
            "destination",
            "message",
            "since",
            "until",
        ],
    )?;
    let limit = number(query, "limit", 100, MAX_PAGE)?;
    let failed = match query.get("failed").map(String::as_str) {
        None | Some("false") => false,
        Some("true") => true,
        Some(_) => return Err(ApiError::bad_request("failed must be true or false")),
    };
    let result = match query.get("result").map(String::as_str) {
        None => None,
        Some(r @ ("delivered" | "retryable" | "permanent")) if !failed => Some(r.to_owned()),
        Some(_) => {
            return Err(ApiError::bad_request(
                "result must be delivered, retryable or permanent (and not with failed)",
            ));
        }
    };
    let time = |name: &str| -> Result<Option<OffsetDateTime>, ApiError> {
        query
            .get(name)
            .map(|raw| {
                crate::parse::time(raw).map_err(|e| ApiError::bad_request(format!("{name}: {e}")))
            })
            .transpose()
    };
    let mut args = LsArgs::everything();
    args.tenant = Some(tenant.clone());
    args.failed = failed;
    args.result = result;
    args.destination = copy_of(query.get("destination"))?;
    args.message = query.get("message").cloned();
    args.since = time("since")?;
    args.until = time("until")?;
    if let (Some(since), Some(until)) = (args.since, args.until)
        && since > until
    {
        return Err(ApiError::bad_request(
            "since is after until: nothing can match",
        ));
    }
    args.limit = u64::try_from(limit).unwrap_or(100);
    let stream = log_stream(state, StreamName::Attempts).await?;
    let filter = state.topology.namespace.attempt_filter(Some(tenant));
    let listed = attempts::list(&stream, &filter, &args, |_| {})
        .await
        .map_err(|e| anyhow_unavailable(&e))?;
    Ok(values(&listed))
}

/// A tenant's operational events, the most recent `limit` (1 to 1000, default 100) that match,
/// oldest first.
#[utoipa::path(get, path = "/v1/tenants/{tenant}/events", tag = "events",
    params(("tenant" = String, Path, description = "tenant id", pattern = "^[a-z0-9][a-z0-9_-]{0,63}$"),
           ("limit" = Option<u32>, Query, description = "at most this many (1 to 1000, default 100)", minimum = 1, maximum = 1000),
           ("kind" = Option<String>, Query, description = "only this kind (destination_disabled, …)")),
    responses((status = 200, body = EventsPage), (status = 400, body = ApiError),
              (status = 401, body = ApiError), (status = 403, body = ApiError),
              (status = 503, body = ApiError)))]
pub async fn list_events(
    State(state): State<ApiState>,
    headers: HeaderMap,
    Path(tenant): Path<String>,
    Query(query): Query<HashMap<String, String>>,
) -> Result<Json<EventsPage>, ApiError> {
    let tenant = caller_for(&state, &headers, &tenant).await?;
    known_parameters(&query, &["limit", "kind"])?;
    let limit = number(&query, "limit", 100, MAX_PAGE)?;
    let kind = query
        .get("kind")
        .map(|k| k.parse::<EventKind>())
        .transpose()
        .map_err(ApiError::bad_request)?;
    let stream = log_stream(&state, StreamName::Events).await?;
    let args = crate::commands::events::LsArgs {
        tenant: Some(tenant),
        kind,
        since: None,
        limit: u64::try_from(limit).unwrap_or(100),
    };
    let listed = crate::commands::events::list(&stream, &state.topology, &args)
        .await
        .map_err(|e| anyhow_unavailable(&e))?;
    Ok(Json(EventsPage {
        events: values(&listed),
    }))
}

/// Streams, consumers, buckets and per-tenant backlog (operator only): `switchyard status
/// --json`.
#[utoipa::path(get, path = "/v1/status", tag = "status",
    responses((status = 200, body = Object), (status = 401, body = ApiError),
              (status = 403, body = ApiError), (status = 503, body = ApiError)))]
pub async fn status(
    State(state): State<ApiState>,
    headers: HeaderMap,
) -> Result<Json<Value>, ApiError> {
    authenticate(&headers, &state.operator_token, &state.keys)
        .await?
        .operator()?;
    let report = switchyard_topology::status(&state.js, &state.topology)
        .await
        .map_err(unavailable)?;
    Ok(Json(serde_json::to_value(report).unwrap_or(Value::Null)))
}
