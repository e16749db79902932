//! What bounds the producer API's requests, so that slow or too many producers cannot hold
//! ingress's memory and connections: at most `http.max_concurrent_requests` at once (one more
//! is answered `503 overloaded` at once, never queued), and a deadline of
//! `http.request_timeout_ms` on each one's body and answer (`408 request_timeout` when the
//! body had not arrived, `503 timeout` when ingress had not answered). The deadline on the
//! headers is the listener's (`switchyard_service::HttpServer::header_read_timeout`).

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::Router;
use axum::body::{Body, Bytes, HttpBody};
use axum::error_handling::HandleErrorLayer;
use axum::extract::{Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use http_body::{Frame, SizeHint};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use switchyard_service::Metrics;
use tower::ServiceBuilder;
use tower::limit::GlobalConcurrencyLimitLayer;
use tower::load_shed::LoadShedLayer;

use super::ApiError;

/// The API's bounds (`[http] request_timeout_ms`, `max_concurrent_requests`) and what they
/// count.
#[derive(Clone)]
pub struct Guard {
    /// Body and answer deadline of one request.
    pub request_timeout: Duration,
    /// Most requests at once.
    pub max_concurrent_requests: usize,
    /// API requests being handled now (inside the concurrency limit).
    pub in_flight: Gauge,
    /// Requests refused by these bounds, by reason (`overloaded`, `request_timeout`,
    /// `timeout`).
    pub refused: Family<RefusedLabels, Counter>,
}

/// Label of `ingress_http_requests_refused_total`.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RefusedLabels {
    /// The error code the producer got.
    pub reason: &'static str,
}

impl Guard {
    /// The bounds, their metrics registered with `metrics`.
    pub fn new(
        request_timeout: Duration,
        max_concurrent_requests: usize,
        metrics: &Metrics,
    ) -> Self {
        let guard = Self {
            request_timeout,
            max_concurrent_requests,
            in_flight: Gauge::default(),
            refused: Family::default(),
        };
        metrics.register(
            "ingress_http_requests_in_flight",
            "Producer API requests being handled (at most http.max_concurrent_requests)",
            guard.in_flight.clone(),
        );
        metrics.register(
            "ingress_http_requests_refused",
            "Producer API requests refused by the listener's bounds, by reason",
            guard.refused.clone(),
        );
        guard
    }

    /// `routes` with the bounds around them: the concurrency limit outermost (a refused
    /// request costs nothing more), then the deadline.
    pub fn apply(self, routes: Router) -> Router {
        let refused = self.refused.clone();
        let limit = ServiceBuilder::new()
            .layer(HandleErrorLayer::new(move |_: tower::BoxError| {
                let refused = refused.clone();
                async move {
                    refused
                        .get_or_create(&RefusedLabels {
                            reason: "overloaded",
                        })
                        .inc();
                    ApiError::new(
                        StatusCode::SERVICE_UNAVAILABLE,
                        "overloaded",
                        "ingress is handling as many requests as it may (http.max_concurrent_requests); retry later",
                    )
                }
            }))
            .layer(LoadShedLayer::new())
            .layer(GlobalConcurrencyLimitLayer::new(self.max_concurrent_requests));
        routes
            .layer(middleware::from_fn_with_state(Arc::new(self), deadline))
            .layer(limit)
    }

    fn count(&self, reason: &'static str) {
        self.refused.get_or_create(&RefusedLabels { reason }).inc();
    }
}

/// Runs the request under its deadline. Which answer a late request gets depends on whether
/// its body had arrived: the producer was slow (`408`), or ingress was (`503`).
async fn deadline(State(guard): State<Arc<Guard>>, request: Request, next: Next) -> Response {
    guard.in_flight.inc();
    let _in_flight = InFlight(&guard.in_flight);
    // Nothing to read (no body, or an empty one) is all there is.
    let received = Arc::new(AtomicBool::new(request.body().is_end_stream()));
    let request = request.map(|body| {
        Body::new(Received {
            inner: body,
            received: received.clone(),
        })
    });
    match tokio::time::timeout(guard.request_timeout, next.run(request)).await {
        Ok(response) => response,
        Err(_) if received.load(Ordering::Acquire) => {
            guard.count("timeout");
            ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "timeout",
                format!(
                    "ingress did not answer within {} ms (http.request_timeout_ms); retrying \
                     with the same Idempotency-Key is safe",
                    guard.request_timeout.as_millis()
                ),
            )
            .into_response()
        }
        Err(_) => {
            guard.count("request_timeout");
            let mut response = ApiError::new(
                StatusCode::REQUEST_TIMEOUT,
                "request_timeout",
                format!(
                    "the request body did not arrive within {} ms (http.request_timeout_ms)",
                    guard.request_timeout.as_millis()
                ),
            )
            .into_response();
            // The rest of the body is not read: the connection cannot carry another request.
            response
                .headers_mut()
                .insert(header::CONNECTION, HeaderValue::from_static("close"));
            response
        }
    }
}

/// Takes one off the in-flight gauge when the request is done, however it ends.
struct InFlight<'a>(&'a Gauge);

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.dec();
    }
}

/// A request body that records when it has all arrived (its end, or nothing to read).
struct Received {
    inner: Body,
    received: Arc<AtomicBool>,
}

impl HttpBody for Received {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        if matches!(polled, Poll::Ready(None)) || self.inner.is_end_stream() {
            self.received.store(true, Ordering::Release);
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
