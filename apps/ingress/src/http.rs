//! The producer HTTP API, for producers that do not speak NATS. It writes to the same ingress
//! stream as NATS producers, so every message goes through the same worker and checks.
//!
//! - `POST /v1/messages/{tenant}/{team}/{platform}` — the body is the payload, as is;
//!   `Idempotency-Key` is the producer's message id (its bytes read as UTF-8: `400
//!   invalid_header` when they are not); `Content-Type` (visible ASCII, else `400
//!   invalid_header`) and `traceparent` pass on.
//! - `POST /v1/messages` — JSON: `{"tenant","team","platform","id","content_type"?,
//!   "payload": <any JSON>}` or `"payload_base64": "<bytes>"` instead of `payload`. The
//!   payload stored is exactly the JSON text sent for `payload`, never re-serialised.
//!
//! Every request carries the tenant's API key, `Authorization: Bearer sy_<id>_<secret>`
//! (`switchyard keys create <tenant>`): `401` without a valid one (missing, malformed,
//! unknown, revoked, expired), `403 tenant_mismatch` when the key is another tenant's.
//!
//! `202 {"id","stream","seq","duplicate"}` — `id` is the envelope id the pipeline will use
//! (`null` on a duplicate whose original has already been read), `stream` the tenant's own
//! ingress stream (`INGRESS_<tenant>`); 4xx with `{"error","code"}` for bad input; 429 with
//! `Retry-After` while the tenant's admission is closed (its delivery backlog passed its
//! threshold) or its ingress quota is full (`quota_exceeded`); 503 with `Retry-After` when
//! JetStream refuses otherwise (`tenant_not_provisioned` when the tenant has no stream, and
//! `encryption_unavailable` when the tenant has encryption on but ingress cannot seal: no KEK,
//! an unreadable key record); 408
//! `request_timeout`, 503 `timeout` and 503 `overloaded` from the listener's bounds
//! ([`guard`]). This router is all the public listener serves: the probes have their own.

use std::sync::Arc;

use async_nats::HeaderMap;
use async_nats::jetstream::context::{PublishError, PublishErrorKind};
use async_nats::jetstream::{self, ErrorCode};
use axum::extract::{DefaultBodyLimit, Path, State};
use axum::http::{HeaderMap as HttpHeaders, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Json, Router};
use base64::Engine;
use bytes::Bytes;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use switchyard_crypt::{KeyCache, edge_seal_id, insert_seal_headers};
use switchyard_dlq::DlqCode;
use switchyard_envelope::{EnvelopeId, SourceRef, headers};
use switchyard_keys::{Address, ApiKeyKey, MsgId, RateKey, RateRecord, RateScope, TenantId};
use switchyard_registry::api_key;
use switchyard_registry::{
    Admission, ApiKeyError, ApiKeyRecord, ApiScope, KvCache, PressureRecord,
};
use switchyard_subjects::{InputStage, StageSubject, SubjectKind};

use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use crate::validate::Validator;

pub mod guard;

pub use guard::Guard;

/// What the API needs.
pub struct ApiState {
    /// JetStream.
    pub js: jetstream::Context,
    /// The tenants' API keys (hashed), watched.
    pub keys: Arc<KvCache<ApiKeyKey, ApiKeyRecord>>,
    /// Whether a request needs a tenant's API key (`[ingress] require_api_key`).
    pub require_api_key: bool,
    /// The same checks the worker applies.
    pub validator: Arc<Validator>,
    /// Admission state per tenant, published by the backpressure service.
    pub pressure: Arc<KvCache<RateKey, PressureRecord>>,
    /// The tenants' data keys: a tenant with encryption on has its payload sealed before it is
    /// stored.
    pub sealing: Arc<KeyCache>,
}

/// The JSON request of `POST /v1/messages`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JsonMessage {
    /// Tenant id.
    pub tenant: String,
    /// Team id.
    pub team: String,
    /// Platform id.
    pub platform: String,
    /// The producer's message id (idempotency key).
    pub id: String,
    /// Media type (default `application/json` for `payload`, none for `payload_base64`).
    #[serde(default)]
    pub content_type: Option<String>,
    /// The payload as JSON, kept as the exact text the producer sent for the field (no
    /// re-serialisation: numbers, key order, duplicate keys and whitespace stay as sent);
    /// `null` is a payload too (`None` only when the field is absent).
    #[serde(default, deserialize_with = "present")]
    pub payload: Option<Box<RawValue>>,
    /// The payload as base64 bytes.
    #[serde(default)]
    pub payload_base64: Option<String>,
}

/// `202 Accepted` body.
#[derive(Debug, Serialize, Deserialize)]
pub struct AcceptedBody {
    /// The envelope id; on a duplicate, the original's while it still waits in the stream
    /// (`null` once the ingress stage has read it).
    pub id: Option<String>,
    /// The tenant's ingress stream.
    pub stream: String,
    /// Its sequence there.
    pub seq: u64,
    /// Whether the stream recognised a duplicate publish (inside the tenant's own window).
    pub duplicate: bool,
}

/// An API error: status, message and (for validation failures) the DLQ code it corresponds to.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    code: &'static str,
    message: String,
    /// `Retry-After` of a 429 or 503, in seconds (default 1).
    retry_after_secs: u64,
}

impl ApiError {
    fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
            retry_after_secs: 1,
        }
    }

    /// The same error, telling the producer to retry after `secs` (at least 1).
    fn retry_after(mut self, secs: u64) -> Self {
        self.retry_after_secs = secs.max(1);
        self
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut response = (
            self.status,
            Json(serde_json::json!({"error": self.message, "code": self.code})),
        )
            .into_response();
        if self.status == StatusCode::UNAUTHORIZED {
            response.headers_mut().insert(
                "www-authenticate",
                axum::http::HeaderValue::from_static("Bearer"),
            );
        }
        if self.status == StatusCode::SERVICE_UNAVAILABLE
            || self.status == StatusCode::TOO_MANY_REQUESTS
        {
            response
                .headers_mut()
                .insert("retry-after", self.retry_after_secs.into());
        }
        response
    }
}

fn status_for(code: DlqCode) -> StatusCode {
    match code {
        DlqCode::PayloadTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
        DlqCode::UnknownTenant => StatusCode::NOT_FOUND,
        DlqCode::TenantDisabled => StatusCode::FORBIDDEN,
        _ => StatusCode::BAD_REQUEST,
    }
}

/// The API routes, bounded by `guard` (bodies by twice `max_payload_bytes`, room for base64).
pub fn router(state: Arc<ApiState>, max_payload_bytes: usize, guard: Guard) -> Router {
    let routes = Router::new()
        .route("/v1/messages", post(post_json))
        .route("/v1/messages/{tenant}/{team}/{platform}", post(post_raw))
        .layer(DefaultBodyLimit::max(
            max_payload_bytes.saturating_mul(2).max(64 * 1024),
        ));
    guard.apply(routes.with_state(state))
}

/// The key a request presents (`Authorization: Bearer sy_…`), checked: `401 unauthorized`
/// when it is missing, malformed, unknown, revoked or expired (one message for all but the
/// last two, so a caller learns nothing about keys it does not hold); `403 forbidden` when it
/// lacks the `publish` scope. `None` when keys are not required.
fn authenticate(state: &ApiState, headers: &HttpHeaders) -> Result<Option<ApiKeyRecord>, ApiError> {
    if !state.require_api_key {
        return Ok(None);
    }
    let unauthorized =
        |message: String| ApiError::new(StatusCode::UNAUTHORIZED, "unauthorized", message);
    let header = headers
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .ok_or_else(|| {
            unauthorized("missing API key: send `Authorization: Bearer sy_…` (`switchyard keys create <tenant>`)".into())
        })?;
    // The scheme is case-insensitive (RFC 7235 §2.1).
    let token = header
        .split_once(' ')
        .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
        .map(|(_, token)| token)
        .ok_or_else(|| {
            unauthorized(
                "the API key goes in the Bearer scheme: `Authorization: Bearer sy_…`".into(),
            )
        })?;
    let (id, secret) =
        api_key::parse_token(token.trim()).map_err(|e| unauthorized(e.to_string()))?;
    let record = match state.keys.get(&id) {
        Some(Ok(record)) => record,
        _ => return Err(unauthorized(ApiKeyError::Unknown.to_string())),
    };
    record
        .check(&id, secret, OffsetDateTime::now_utc())
        .map_err(|e| unauthorized(e.to_string()))?;
    if !record.allows(ApiScope::Publish) {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "forbidden",
            "this API key may not publish",
        ));
    }
    Ok(Some(record))
}

/// A key publishes for its own tenant only: `403 tenant_mismatch` otherwise (nothing of the
/// other tenant is looked at).
fn authorize(key: Option<&ApiKeyRecord>, tenant: &str) -> Result<(), ApiError> {
    match key {
        Some(record) if record.tenant.as_str() != tenant => Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "tenant_mismatch",
            format!(
                "this API key publishes for tenant {}, not {tenant:?}",
                record.tenant
            ),
        )),
        _ => Ok(()),
    }
}

async fn post_raw(
    State(state): State<Arc<ApiState>>,
    Path((tenant, team, platform)): Path<(String, String, String)>,
    http_headers: HttpHeaders,
    body: Bytes,
) -> Result<(StatusCode, Json<AcceptedBody>), ApiError> {
    let key = authenticate(&state, &http_headers)?;
    authorize(key.as_ref(), &tenant)?;
    let id = utf8_header(&http_headers, "Idempotency-Key")?.ok_or_else(|| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "missing_msg_id",
            "missing header Idempotency-Key",
        )
    })?;
    let content_type = utf8_header(&http_headers, "Content-Type")?;
    // W3C: a traceparent that cannot be read is ignored (a new trace starts).
    let traceparent = http_headers
        .get("traceparent")
        .and_then(|v| v.to_str().ok());
    accept(
        &state,
        &tenant,
        &team,
        &platform,
        id,
        content_type.map(str::to_owned),
        traceparent.map(str::to_owned),
        body,
    )
    .await
}

/// A request header as text: its bytes read as UTF-8 (ids are UTF-8 by contract, and HTTP
/// carries them as raw bytes). `None` when absent; `400 invalid_header` when not UTF-8.
fn utf8_header<'a>(headers: &'a HttpHeaders, name: &str) -> Result<Option<&'a str>, ApiError> {
    headers
        .get(name)
        .map(|value| {
            std::str::from_utf8(value.as_bytes()).map_err(|e| {
                ApiError::new(
                    StatusCode::BAD_REQUEST,
                    DlqCode::InvalidHeader.as_str(),
                    format!("header {name} is not UTF-8: {e}"),
                )
            })
        })
        .transpose()
}

/// A field that is present is `Some`, `null` included (serde reads `null` as `None` for an
/// `Option`; with `#[serde(default)]` an absent field is still `None`).
fn present<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<Box<RawValue>>, D::Error> {
    Box::<RawValue>::deserialize(d).map(Some)
}

async fn post_json(
    State(state): State<Arc<ApiState>>,
    http_headers: HttpHeaders,
    body: Result<Json<JsonMessage>, axum::extract::rejection::JsonRejection>,
) -> Result<(StatusCode, Json<AcceptedBody>), ApiError> {
    let key = authenticate(&state, &http_headers)?;
    let Json(m) =
        body.map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, "invalid_request", e.body_text()))?;
    authorize(key.as_ref(), &m.tenant)?;
    let (payload, default_ct) = match (m.payload, m.payload_base64) {
        (Some(raw), None) => (
            Bytes::from(String::from(Box::<str>::from(raw))),
            Some("application/json"),
        ),
        (None, Some(b64)) => {
            let bytes = base64::engine::general_purpose::STANDARD
                .decode(b64)
                .map_err(|e| {
                    ApiError::new(
                        StatusCode::BAD_REQUEST,
                        "invalid_payload",
                        format!("payload_base64: {e}"),
                    )
                })?;
            (Bytes::from(bytes), None)
        }
        _ => {
            return Err(ApiError::new(
                StatusCode::BAD_REQUEST,
                "invalid_payload",
                "exactly one of payload and payload_base64 is required",
            ));
        }
    };
    let content_type = m.content_type.or(default_ct.map(str::to_owned));
    accept(
        &state,
        &m.tenant,
        &m.team,
        &m.platform,
        &m.id,
        content_type,
        None,
        payload,
    )
    .await
}

#[allow(clippy::too_many_arguments)]
async fn accept(
    state: &ApiState,
    tenant: &str,
    team: &str,
    platform: &str,
    id: &str,
    content_type: Option<String>,
    traceparent: Option<String>,
    payload: Bytes,
) -> Result<(StatusCode, Json<AcceptedBody>), ApiError> {
    let address = Address::parse(tenant, team, platform).map_err(|e| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            DlqCode::InvalidSubject.as_str(),
            e.to_string(),
        )
    })?;
    let msg_id = MsgId::new(id).map_err(|e| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            DlqCode::InvalidHeader.as_str(),
            format!("Idempotency-Key: {e}"),
        )
    })?;
    if let Some(ct) = &content_type {
        crate::validate::check_content_type(ct).map_err(|reason| {
            ApiError::new(
                StatusCode::BAD_REQUEST,
                DlqCode::InvalidHeader.as_str(),
                reason,
            )
        })?;
    }
    let pressure_key = RateKey {
        scope: RateScope::Tenant(address.tenant.clone()),
        record: RateRecord::Pressure,
    };
    if let Some(Ok(record)) = state.pressure.get(&pressure_key)
        && record.admission == Admission::Closed
    {
        return Err(ApiError::new(
            StatusCode::TOO_MANY_REQUESTS,
            "admission_closed",
            format!(
                "tenant {} had {} messages waiting for delivery when its admission closed; new messages are refused until the backlog drains (retry later)",
                address.tenant, record.backlog
            ),
        )
        .retry_after(record.reopen_in_secs.unwrap_or(1)));
    }
    state
        .validator
        .check_tenant_and_payload(&address, content_type.as_deref(), &payload)
        .map_err(|r| ApiError::new(status_for(r.code), r.code.as_str(), r.reason))?;

    let received_at = OffsetDateTime::now_utc();
    let mut h = HeaderMap::new();
    h.insert(headers::NATS_MSG_ID, msg_id.as_str());
    h.insert(
        headers::RECEIVED_AT,
        received_at.format(&Rfc3339).unwrap_or_default(),
    );
    if let Some(ct) = &content_type {
        h.insert(headers::CONTENT_TYPE, ct.as_str());
    }
    if let Some(tp) = traceparent.filter(|t| !t.contains(['\r', '\n'])) {
        h.insert(headers::TRACEPARENT, tp);
    }
    // A tenant with encryption on: the payload is sealed before it is stored, bound to the
    // tenant and the producer's message id (the ingress stage opens it and seals it again
    // under the envelope id).
    let payload =
        match state
            .sealing
            .seal(&address.tenant, &edge_seal_id(msg_id.as_str()), &payload)
        {
            Ok(None) => payload,
            Ok(Some(sealed)) => {
                insert_seal_headers(&mut h, &sealed.headers);
                Bytes::from(sealed.ciphertext)
            }
            Err(error) => {
                // The reason (a missing KEK, a shredded tenant) is the operator's: logged,
                // not told to the producer.
                tracing::error!(%error, "a producer's payload cannot be sealed: refused with 503");
                return Err(ApiError::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "encryption_unavailable",
                    "the tenant's payloads are encrypted and cannot be sealed now; retry later",
                )
                .retry_after(5));
            }
        };
    let address_tenant = address.tenant.clone();
    let subject = StageSubject {
        stage: InputStage::Ingress,
        address,
    }
    .format(&state.validator.ns);
    let tenant = address_tenant;
    let ack = match state.js.publish_with_headers(subject, h, payload).await {
        Ok(ack) => ack.await,
        Err(e) => Err(e),
    }
    .map_err(|e| refused(&tenant, &e))?;
    // The envelope id is derived from where the stream stored the message and when it was
    // received, exactly as the ingress worker will derive it (`handler::received_at`).
    let id = if ack.duplicate {
        original_id(state, &ack.stream, ack.sequence).await
    } else {
        Some(
            EnvelopeId::derive(
                &SourceRef {
                    stream: ack.stream.clone(),
                    sequence: ack.sequence,
                },
                received_at,
            )
            .to_string(),
        )
    };
    Ok((
        StatusCode::ACCEPTED,
        Json(AcceptedBody {
            id,
            stream: ack.stream,
            seq: ack.sequence,
            duplicate: ack.duplicate,
        }),
    ))
}

/// The original's envelope id for a duplicate publish, while the original still waits in the
/// tenant's stream; `None` once the ingress stage has read (and removed) it.
async fn original_id(state: &ApiState, stream: &str, sequence: u64) -> Option<String> {
    let stream_handle = state.js.get_stream_no_info(stream).await.ok()?;
    let stored = stream_handle.direct_get(sequence).await.ok()?;
    let at = crate::handler::received_at(Some(&stored.headers), stored.time);
    Some(
        EnvelopeId::derive(
            &SourceRef {
                stream: stream.to_owned(),
                sequence,
            },
            at,
        )
        .to_string(),
    )
}

/// What the producer hears when JetStream refuses the message: the message can never fit
/// (`413 payload_too_large`: over the server's `max_payload`, the stream's `max_msg_size`
/// (10054) or the 65,535-byte header block (10097); the one rule,
/// [`switchyard_service::handoff::too_large`]), the tenant's quota is full (`429
/// quota_exceeded`, the stream's `discard: new` limit, error 10077), the tenant has no ingress
/// stream (`503 tenant_not_provisioned`), or anything else (`503 unavailable`).
fn refused(tenant: &TenantId, error: &PublishError) -> ApiError {
    if switchyard_service::handoff::too_large(error) {
        return ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            DlqCode::PayloadTooLarge.as_str(),
            format!("the message is larger than the ingress stream or the server accepts: {error}"),
        );
    }
    let jetstream =
        std::error::Error::source(error).and_then(|s| s.downcast_ref::<jetstream::Error>());
    match (error.kind(), jetstream) {
        (PublishErrorKind::StreamNotFound, _) => ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "tenant_not_provisioned",
            format!(
                "tenant {tenant} has no ingress stream (run `switchyard tenants enable {tenant}`)"
            ),
        ),
        (_, Some(js)) if js.error_code() == ErrorCode::STREAM_STORE_FAILED => ApiError::new(
            StatusCode::TOO_MANY_REQUESTS,
            "quota_exceeded",
            format!(
                "tenant {tenant}'s ingress quota is full ({js}): its accepted messages wait for \
                 delivery; retry later"
            ),
        ),
        _ => ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "unavailable",
            format!("jetstream refused the message: {error}"),
        ),
    }
}
