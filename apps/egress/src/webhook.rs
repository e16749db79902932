//! Webhook delivery: one HTTP POST per attempt, signed in the Standard Webhooks style.
//!
//! The body is the payload bytes exactly as received. Headers: the route's extra headers, then
//! `content-type` (the envelope's, default `application/octet-stream`), `webhook-id` (the
//! envelope id, stable across retries so the receiver can de-duplicate), `webhook-timestamp`
//! (unix seconds when the attempt starts), `webhook-signature`
//! (`v1,` + base64 of HMAC-SHA256 over `{id}.{timestamp}.{payload}` keyed with the secret's
//! bytes) and the W3C `traceparent` / `tracestate`. Switchyard's headers win over a route's
//! extra header of the same name. Redirects are not followed.
//!
//! Only these headers are sent: a producer's own headers (which travel with the message and
//! reach NATS sinks) are not forwarded to a webhook, a third party that expects the Standard
//! Webhooks headers and could otherwise read a producer's internal ones. A failure names the
//! URL as [`WebhookRoute::display_url`] shows it (`scheme://host[:port]`), never the full URL.

use std::time::Duration;

use bytes::Bytes;
use reqwest::header::{CONTENT_TYPE, HeaderMap, HeaderName, HeaderValue};
use switchyard_registry::WebhookRoute;

use crate::classify::{Attempted, HttpFailure};

/// The content type sent when the envelope has none.
pub const DEFAULT_CONTENT_TYPE: &str = "application/octet-stream";

/// How much of a response body is read (the start goes into the attempt history; reading it
/// lets the connection be reused). Longer bodies are cut off and the connection is dropped.
const MAX_BODY_BYTES: usize = 64 * 1024;

/// How long the answer's body is read, for the attempt log, once its status is in: a body that
/// stalls (or breaks off) changes nothing about the attempt, which its status decides.
const BODY_WAIT: Duration = Duration::from_secs(1);

/// How many characters of a response body the attempt history keeps.
const BODY_SNIPPET_CHARS: usize = 160;

/// Why the webhook client could not be built.
#[derive(Debug, thiserror::Error)]
pub enum WebhookError {
    /// No rustls crypto provider was installed before the client was built.
    #[error(
        "no rustls crypto provider is installed; call rustls::crypto::ring::default_provider().install_default() first"
    )]
    NoCryptoProvider,
    /// The HTTP client could not be built.
    #[error("building the http client failed")]
    Build(#[source] reqwest::Error),
}

/// One message to POST.
#[derive(Debug, Clone)]
pub struct WebhookRequest<'a> {
    /// Where, and with which extra headers.
    pub route: &'a WebhookRoute,
    /// The signing keys (secrets' bytes): the current secret's first, then any previous one
    /// still in its overlap window; each adds one `v1,` signature.
    pub keys: &'a [Vec<u8>],
    /// The `webhook-id`: the envelope id.
    pub id: &'a str,
    /// The payload's media type.
    pub content_type: Option<&'a str>,
    /// W3C `traceparent`.
    pub traceparent: Option<&'a str>,
    /// W3C `tracestate`.
    pub tracestate: Option<&'a str>,
    /// The payload bytes, sent unchanged.
    pub payload: Bytes,
}

/// The service's one HTTP client (rustls, pooled connections).
#[derive(Debug, Clone)]
pub struct WebhookClient {
    http: reqwest::Client,
}

impl WebhookClient {
    /// Builds the client, installing rustls's ring provider as the process default when no
    /// provider is installed yet (the egress process uses ring throughout).
    pub fn new() -> Result<Self, WebhookError> {
        if rustls::crypto::CryptoProvider::get_default().is_none() {
            // Losing a race with another installer is fine: a provider is then installed.
            let _ = rustls::crypto::ring::default_provider().install_default();
        }
        if rustls::crypto::CryptoProvider::get_default().is_none() {
            return Err(WebhookError::NoCryptoProvider);
        }
        let http = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(concat!("switchyard-egress/", env!("CARGO_PKG_VERSION")))
            .pool_idle_timeout(Duration::from_secs(90))
            .build()
            .map_err(WebhookError::Build)?;
        Ok(Self { http })
    }

    /// POSTs one message and reports what happened: the answer's status within `timeout` (the
    /// route's `timeout_ms`; else [`Attempted::TimedOut`]), then up to [`MAX_BODY_BYTES`] of
    /// its body within [`BODY_WAIT`] more. A receiver that sends `200` and never finishes the
    /// body has the message: it is delivered, not retried.
    pub async fn post(&self, request: WebhookRequest<'_>, timeout: Duration) -> Attempted {
        let timestamp = time::OffsetDateTime::now_utc().unix_timestamp();
        let headers = match headers(&request, timestamp) {
            Ok(headers) => headers,
            Err(error) => {
                return Attempted::HttpFailed {
                    kind: HttpFailure::Request,
                    error,
                };
            }
        };
        let sent = self
            .http
            .post(&request.route.url)
            .headers(headers)
            .body(request.payload)
            .send();
        let mut response = match tokio::time::timeout(timeout, sent).await {
            Ok(Ok(response)) => response,
            Ok(Err(error)) => return failed(error, &request.route.display_url()),
            Err(_) => return Attempted::TimedOut { after: timeout },
        };
        let status = response.status().as_u16();
        let retry_after = response
            .headers()
            .get(reqwest::header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let mut body = Vec::new();
        let read = async {
            while body.len() < MAX_BODY_BYTES {
                match response.chunk().await {
                    Ok(Some(chunk)) => body.extend_from_slice(&chunk),
                    // The status is what counts; a body that breaks off does not change it.
                    Ok(None) | Err(_) => break,
                }
            }
        };
        // Nor does one that stalls: what came within the wait is kept.
        let _ = tokio::time::timeout(BODY_WAIT, read).await;
        Attempted::HttpResponse {
            status,
            retry_after,
            body: snippet(&body),
        }
    }
}

/// The `webhook-signature` value: `v1,` + base64(HMAC-SHA256(key, "{id}.{timestamp}.{payload}"))
/// ([`switchyard_registry::sign_v1`]).
pub fn sign(key: &[u8], id: &str, timestamp: i64, payload: &[u8]) -> String {
    switchyard_registry::sign_v1(key, id, timestamp, payload)
}

/// The request headers, or why one cannot be sent.
fn headers(request: &WebhookRequest<'_>, timestamp: i64) -> Result<HeaderMap, String> {
    let mut h = HeaderMap::new();
    for (name, value) in &request.route.headers {
        let name = HeaderName::from_bytes(name.as_bytes())
            .map_err(|_| format!("route header name {name:?} is not a valid HTTP header name"))?;
        let value = HeaderValue::from_str(value)
            .map_err(|_| format!("route header {name} has a value that is not valid in HTTP"))?;
        h.insert(name, value);
    }
    let value = |name: &str, v: &str| {
        HeaderValue::from_str(v).map_err(|_| format!("{name} {v:?} is not valid in an HTTP header"))
    };
    let content_type = request.content_type.unwrap_or(DEFAULT_CONTENT_TYPE);
    h.insert(CONTENT_TYPE, value("content type", content_type)?);
    h.insert("webhook-id", value("webhook id", request.id)?);
    h.insert("webhook-timestamp", HeaderValue::from(timestamp));
    // Standard Webhooks: space-separated signatures; a receiver accepts any that verifies.
    let mut signatures: Vec<String> = request
        .keys
        .iter()
        .map(|key| sign(key, request.id, timestamp, &request.payload))
        .collect();
    // And the asymmetric `v1a` one, when the route has an Ed25519 key.
    if let Some(key) = &request.route.signing_key {
        let pair = key.key_pair().map_err(|e| e.to_string())?;
        signatures.push(switchyard_registry::sign_v1a(
            &pair,
            request.id,
            timestamp,
            &request.payload,
        ));
    }
    let signature = signatures.join(" ");
    h.insert("webhook-signature", value("signature", &signature)?);
    if let Some(tp) = request.traceparent {
        h.insert("traceparent", value("traceparent", tp)?);
    }
    if let Some(ts) = request.tracestate {
        h.insert("tracestate", value("tracestate", ts)?);
    }
    Ok(h)
}

/// What a request that got no response reports. The client's error names the full URL, which
/// may carry credentials (`user:password@`, `?token=…`): it is dropped
/// ([`reqwest::Error::without_url`]) and the URL as it may be shown (`scheme://host[:port]`)
/// is named instead, so neither the attempt history, the DLQ reason nor a log line holds it.
fn failed(error: reqwest::Error, shown_url: &str) -> Attempted {
    let kind = if error.is_connect() {
        HttpFailure::Connect
    } else if error.is_timeout() {
        HttpFailure::Timeout
    } else if error.is_builder() {
        HttpFailure::Request
    } else {
        HttpFailure::Transport
    };
    let error = error.without_url();
    // The source chain says what actually went wrong ("connection refused", …).
    let mut text = format!("POST {shown_url}: {error}");
    let mut source = std::error::Error::source(&error);
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    Attempted::HttpFailed { kind, error: text }
}

fn snippet(body: &[u8]) -> String {
    let text = String::from_utf8_lossy(body);
    let text = text.trim();
    match text.char_indices().nth(BODY_SNIPPET_CHARS) {
        Some((at, _)) => format!("{}…", &text[..at]),
        None => text.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use switchyard_registry::WebhookSecret;

    use super::*;

    #[test]
    fn signature_matches_the_standard_webhooks_example() {
        // The example from the Standard Webhooks specification.
        let secret = WebhookSecret("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw".into());
        let key = secret.key().unwrap();
        let signature = sign(
            &key,
            "msg_p5jXN8AQM9LWM0D4loKWxJek",
            1_614_265_330,
            br#"{"test": 2432232314}"#,
        );
        assert_eq!(signature, "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=");
    }

    #[test]
    fn switchyard_headers_win_over_route_headers() {
        let route = WebhookRoute {
            url: "http://127.0.0.1:9/h".into(),
            secret: WebhookSecret("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw".into()),
            timeout_ms: 1000,
            max_in_flight: 1,
            headers: BTreeMap::from([
                ("X-Env".to_owned(), "prod".to_owned()),
                ("webhook-id".to_owned(), "spoofed".to_owned()),
            ]),
            previous_secrets: Vec::new(),
            signing_key: None,
        };
        let request = WebhookRequest {
            route: &route,
            keys: &[b"0123456789abcdef".to_vec()],
            id: "0190-id",
            content_type: None,
            traceparent: Some("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"),
            tracestate: None,
            payload: Bytes::from_static(b"\x00\xffraw"),
        };
        let h = headers(&request, 1_700_000_000).unwrap();
        assert_eq!(h["x-env"], "prod");
        assert_eq!(h["webhook-id"], "0190-id");
        assert_eq!(h["content-type"], DEFAULT_CONTENT_TYPE);
        assert_eq!(h["webhook-timestamp"], "1700000000");
        assert_eq!(
            h["webhook-signature"].to_str().unwrap(),
            sign(
                b"0123456789abcdef",
                "0190-id",
                1_700_000_000,
                b"\x00\xffraw"
            )
        );
        assert!(h.contains_key("traceparent"));
    }

    #[tokio::test]
    async fn a_failed_request_names_neither_the_credentials_nor_the_path_of_its_url() {
        let client = WebhookClient::new().unwrap();
        // Port 1 refuses the connection; the second URL cannot even be parsed.
        for (url, shown) in [
            (
                "http://u:pw@127.0.0.1:1/h/P4TH?token=T0KEN",
                "http://127.0.0.1:1",
            ),
            ("http://u:pw@[::1/h/P4TH?token=T0KEN", "http://[::1"),
        ] {
            let route = WebhookRoute {
                url: url.into(),
                secret: WebhookSecret("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw".into()),
                timeout_ms: 1000,
                max_in_flight: 1,
                headers: BTreeMap::new(),
                previous_secrets: Vec::new(),
                signing_key: None,
            };
            let attempted = client
                .post(
                    WebhookRequest {
                        route: &route,
                        keys: &[b"0123456789abcdef".to_vec()],
                        id: "0190-id",
                        content_type: None,
                        traceparent: None,
                        tracestate: None,
                        payload: Bytes::from_static(b"x"),
                    },
                    Duration::from_secs(5),
                )
                .await;
            let Attempted::HttpFailed { error, .. } = attempted else {
                panic!("{attempted:?}");
            };
            assert!(error.starts_with(&format!("POST {shown}: ")), "{error}");
            for secret in ["pw", "T0KEN", "P4TH"] {
                assert!(!error.contains(secret), "{error}");
            }
        }
    }

    #[test]
    fn long_bodies_are_cut_for_the_history() {
        assert_eq!(snippet(b"  oops \n"), "oops");
        let long = "x".repeat(500);
        assert_eq!(
            snippet(long.as_bytes()).chars().count(),
            BODY_SNIPPET_CHARS + 1
        );
    }
}
