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
    pub fn unavailable(error: &dyn std::error::Error) -> Self {
        let mut message = error.to_string();
        let mut source = error.source();
        while let Some(inner) = source {
            message.push_str(": ");
            message.push_str(&inner.to_string());
            source = inner.source();
        }
        Self::new(StatusCode::SERVICE_UNAVAILABLE, "unavailable", message)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.status, Json(self)).into_response()
    }
}
