//! What wraps every request of the management API: a deadline (past it, `503 timeout` in the
//! API's error shape), one value per query parameter, and an access log, one line per
//! request.
//!
//! The access log (target [`ACCESS_TARGET`], level `info`) has the method, the *route* — the
//! path template (`/v1/tenants/{tenant}/dlq`), never the path itself, nor a query, a header or
//! a token — the status and the latency: what it takes to follow traffic without recording
//! who sent what.

use std::time::{Duration, Instant};

use axum::extract::{MatchedPath, Request, State};
use axum::http::StatusCode;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use super::error::ApiError;

/// The tracing target of the access log (`SWITCHYARD_CLI_TELEMETRY__LOG_FILTER` may name it).
pub const ACCESS_TARGET: &str = "switchyard_cli::api::access";

/// The route of a request that matched none.
pub const UNMATCHED: &str = "<unmatched>";

/// Logs one line per request: `method`, `route`, `status`, `latency_ms`.
pub async fn access_log(request: Request, next: Next) -> Response {
    let method = request.method().clone();
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| UNMATCHED.to_owned(), |p| p.as_str().to_owned());
    let started = Instant::now();
    let response = next.run(request).await;
    let latency_ms = started.elapsed().as_secs_f64() * 1_000.0;
    tracing::info!(
        target: ACCESS_TARGET,
        method = %method,
        route = %route,
        status = response.status().as_u16(),
        latency_ms,
        "request"
    );
    response
}

/// Refuses `400` a query that gives one parameter more than once (`?code=a&code=b`): every
/// endpoint reads one value per name, and silently keeping the last would select other entries
/// than the caller meant.
pub async fn single_parameters(request: Request, next: Next) -> Response {
    if let Some(query) = request.uri().query() {
        let mut seen = std::collections::HashSet::new();
        for (name, _) in url::form_urlencoded::parse(query.as_bytes()) {
            if !seen.insert(name.clone()) {
                return ApiError::bad_request(format!(
                    "parameter {:?} is given more than once: give it once",
                    crate::output::printable(&name)
                ))
                .into_response();
            }
        }
    }
    next.run(request).await
}

/// Lets through only requests with valid credentials (the operator token, or an active API
/// key), answering the others `401` at once — before they wait for a turn under the
/// concurrency limit or their body is read. `/openapi.json` needs none. Which tenant a key may
/// reach is each handler's check.
pub async fn credentials(
    State(state): State<super::ApiState>,
    request: Request,
    next: Next,
) -> Response {
    if request.uri().path() == "/openapi.json" {
        return next.run(request).await;
    }
    match super::auth::authenticate(request.headers(), &state.operator_token, &state.keys).await {
        Ok(_) => next.run(request).await,
        Err(error) => error.into_response(),
    }
}

/// Answers `503 timeout` when the request is not answered within `limit` (waiting for a turn
/// under the concurrency limit included). The handler is stopped where it stands: what it
/// changed before then stays changed (a purge may have deleted part of its entries; a list
/// shows which).
pub async fn deadline(State(limit): State<Duration>, request: Request, next: Next) -> Response {
    match tokio::time::timeout(limit, next.run(request)).await {
        Ok(response) => response,
        Err(_) => ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "timeout",
            format!(
                "no answer within {} ms; anything the request changed before then stays changed",
                limit.as_millis()
            ),
        )
        .into_response(),
    }
}

#[cfg(test)]
mod tests {
    //! The middleware on a router of its own: no NATS needed.

    use std::sync::{Arc, Mutex};

    use axum::Router;
    use axum::body::Body;
    use axum::routing::get;
    use tower::Service;
    use tracing::field::{Field, Visit};
    use tracing::span::{Attributes, Id, Record};
    use tracing::{Event, Metadata, Subscriber};

    use super::*;

    /// A subscriber that keeps every event's target and fields as text.
    #[derive(Clone, Default)]
    struct Captured(Arc<Mutex<Vec<(String, String)>>>);

    struct Fields(String);

    impl Visit for Fields {
        fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
            self.0.push_str(&format!("{}={:?} ", field.name(), value));
        }
    }

    impl Subscriber for Captured {
        fn enabled(&self, _: &Metadata<'_>) -> bool {
            true
        }
        fn new_span(&self, _: &Attributes<'_>) -> Id {
            Id::from_u64(1)
        }
        fn record(&self, _: &Id, _: &Record<'_>) {}
        fn record_follows_from(&self, _: &Id, _: &Id) {}
        fn event(&self, event: &Event<'_>) {
            let mut fields = Fields(String::new());
            event.record(&mut fields);
            self.0
                .lock()
                .unwrap()
                .push((event.metadata().target().to_owned(), fields.0));
        }
        fn enter(&self, _: &Id) {}
        fn exit(&self, _: &Id) {}
    }

    fn app(limit: Duration) -> Router {
        Router::new()
            .route("/v1/tenants/{tenant}/dlq", get(|| async { "ok" }))
            .route(
                "/slow",
                get(|| async {
                    tokio::time::sleep(Duration::from_secs(30)).await;
                    "late"
                }),
            )
            .layer(axum::middleware::from_fn_with_state(limit, deadline))
            .layer(axum::middleware::from_fn(access_log))
    }

    async fn send(app: &mut Router, path: &str) -> (StatusCode, String) {
        let request = Request::builder()
            .uri(path)
            .header("authorization", "Bearer sy_secret-token-never-logged")
            .body(Body::empty())
            .unwrap();
        std::future::poll_fn(|cx| Service::<Request>::poll_ready(app, cx))
            .await
            .unwrap();
        let response = app.call(request).await.unwrap();
        let status = response.status();
        let body = axum::body::to_bytes(response.into_body(), 1 << 16)
            .await
            .unwrap();
        (status, String::from_utf8_lossy(&body).into_owned())
    }

    #[tokio::test]
    async fn each_request_is_one_line_with_its_route_never_its_path_query_or_token() {
        let captured = Captured::default();
        let _guard = tracing::subscriber::set_default(captured.clone());
        let mut app = app(Duration::from_secs(10));
        let (status, _) = send(&mut app, "/v1/tenants/acme/dlq?code=secret-query").await;
        assert_eq!(status, StatusCode::OK);
        let (status, _) = send(&mut app, "/v1/nowhere/acme").await;
        assert_eq!(status, StatusCode::NOT_FOUND);
        let lines = captured.0.lock().unwrap().clone();
        let access: Vec<&String> = lines
            .iter()
            .filter(|(target, _)| target == ACCESS_TARGET)
            .map(|(_, fields)| fields)
            .collect();
        assert_eq!(access.len(), 2, "{lines:?}");
        for field in ["method=GET", "status=", "latency_ms="] {
            assert!(access.iter().all(|line| line.contains(field)), "{access:?}");
        }
        assert!(
            access[0].contains("route=/v1/tenants/{tenant}/dlq"),
            "{access:?}"
        );
        assert!(access[0].contains("status=200"), "{access:?}");
        assert!(
            access[1].contains(&format!("route={UNMATCHED}")),
            "{access:?}"
        );
        assert!(access[1].contains("status=404"), "{access:?}");
        let everything = format!("{lines:?}");
        for secret in ["acme", "secret-query", "sy_secret", "Bearer"] {
            assert!(
                !everything.contains(secret),
                "{secret} logged: {everything}"
            );
        }
    }

    #[tokio::test]
    async fn a_request_past_its_deadline_is_answered_503_timeout_in_the_error_shape() {
        let captured = Captured::default();
        let _guard = tracing::subscriber::set_default(captured.clone());
        let mut app = app(Duration::from_millis(50));
        let started = Instant::now();
        let (status, body) = send(&mut app, "/slow").await;
        assert!(started.elapsed() < Duration::from_secs(10));
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
        let body: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(body["error"], "timeout", "{body}");
        assert!(body["message"].is_string(), "{body}");
        let lines = captured.0.lock().unwrap().clone();
        assert!(
            lines.iter().any(|(target, fields)| target == ACCESS_TARGET
                && fields.contains("route=/slow")
                && fields.contains("status=503")),
            "{lines:?}"
        );
    }
}
