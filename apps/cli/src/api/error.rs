//! The management API's one error shape: a status and `{"error": "<code>", "message": "…"}`.

use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use utoipa::ToSchema;

/// An error answer: `{"error": "not_found", "message": "no destination acme.crm"}`.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct ApiError {
    /// The HTTP status (not in the body).
    #[serde(skip)]
    pub status: StatusCode,
    /// A stable code: `bad_request`, `unauthorized`, `forbidden`, `tenant_mismatch`,
    /// `operator_only`, `not_found`, `invalid`, `nothing_matches`, `unavailable`.
    pub error: String,
    /// What went wrong, for people.
    pub message: String,
}

impl ApiError {
    /// An error with `status`, `code` and `message`.
    pub fn new(status: StatusCode, code: &str, message: impl Into<String>) -> Self {
        Self {
            status,
            error: code.to_owned(),
            message: message.into(),
        }
    }

    /// `400 bad_request`: a malformed path, query or body.
    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "bad_request", message)
    }

    /// `404 not_found`.
    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, "not_found", message)
    }

    /// `422 invalid`: well-formed, but not a valid record.
    pub fn invalid(message: impl Into<String>) -> Self {
        Self::new(StatusCode::UNPROCESSABLE_ENTITY, "invalid", message)
    }

    /// `503 unavailable`: NATS or a bucket did not answer; the message names the cause.
    pub fn unavailable(error: &(dyn std::error::Error + 'static)) -> Self {
        Self::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "unavailable",
            crate::output::error_chain(error),
        )
    }
}

impl From<switchyard_registry::StoreError> for ApiError {
    fn from(error: switchyard_registry::StoreError) -> Self {
        Self::unavailable(&error)
    }
}

/// Turns an error answer that is not the API's own JSON (a rejection the framework answers
/// before a handler runs: a path that is not UTF-8, a method the path does not take, a body
/// over the limit) into [`ApiError`]'s shape, keeping its status and text.
pub async fn json_errors(response: Response) -> Response {
    let status = response.status();
    let is_json = response
        .headers()
        .get(axum::http::header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/json"));
    if !(status.is_client_error() || status.is_server_error()) || is_json {
        return response;
    }
    let code = match status {
        StatusCode::METHOD_NOT_ALLOWED => "method_not_allowed",
        StatusCode::PAYLOAD_TOO_LARGE => "too_large",
        StatusCode::UNSUPPORTED_MEDIA_TYPE => "unsupported_media_type",
        StatusCode::NOT_FOUND => "not_found",
        s if s.is_server_error() => "unavailable",
        _ => "bad_request",
    };
    let text = axum::body::to_bytes(response.into_body(), 4096)
        .await
        .map(|b| String::from_utf8_lossy(&b).trim().to_owned())
        .unwrap_or_default();
    let message = if text.is_empty() {
        status
            .canonical_reason()
            .unwrap_or("request refused")
            .to_owned()
    } else {
        text
    };
    ApiError::new(status, code, message).into_response()
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.status, Json(self)).into_response()
    }
}
