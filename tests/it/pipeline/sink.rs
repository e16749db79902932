//! A real HTTP webhook sink for the pipeline tests: records every request and answers with
//! the status scripted for its path (200 unless told otherwise), or fails one request in n on
//! a path with a retryable status.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use base64::Engine;
use hmac::{Hmac, Mac};
use sha2::Sha256;

/// One request the sink received.
#[derive(Debug, Clone)]
pub struct Received {
    pub path: String,
    pub webhook_id: String,
    pub timestamp: String,
    pub signature: String,
    pub traceparent: String,
    pub body: Bytes,
    /// The status the sink answered.
    pub status: u16,
}

impl Received {
    /// Whether the sink accepted this request (a 2xx answer): the message was delivered.
    pub fn delivered(&self) -> bool {
        (200..300).contains(&self.status)
    }
}

/// A path failing one request in every `every` with `status`, but never the same webhook id
/// twice: when the request due to fail carries an id that failed before, the next request with
/// a fresh id fails in its place. Every message fails at most once, so its retry budget never
/// decides its fate. At most one such failure is owed at a time (a debt carried further would
/// come due as a run of failures and open the route's circuit breaker), so a little less than
/// one request in `every` fails when many retries arrive together.
struct FailEvery {
    every: u64,
    status: u16,
    /// Requests this path received so far.
    seen: u64,
    /// A failure is due (an `every`-th request came, and no fresh id has taken it yet).
    owed: bool,
    /// Webhook ids already failed once.
    failed: HashSet<String>,
}

#[derive(Default)]
struct Inner {
    received: Vec<Received>,
    statuses: HashMap<String, u16>,
    failing: HashMap<String, FailEvery>,
}

impl Inner {
    /// The status to answer a request for `webhook_id` on `path`.
    fn status(&mut self, path: &str, webhook_id: &str) -> u16 {
        if let Some(f) = self.failing.get_mut(path) {
            f.seen += 1;
            f.owed |= f.seen % f.every == 0;
            if f.owed && f.failed.insert(webhook_id.to_owned()) {
                f.owed = false;
                return f.status;
            }
        }
        self.statuses.get(path).copied().unwrap_or(200)
    }
}

/// The sink.
#[derive(Clone)]
pub struct Sink {
    pub addr: SocketAddr,
    inner: Arc<Mutex<Inner>>,
}

async fn receive(
    State(inner): State<Arc<Mutex<Inner>>>,
    Path(path): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> StatusCode {
    let header = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned()
    };
    let mut inner = inner.lock().unwrap();
    let webhook_id = header("webhook-id");
    let status = inner.status(&path, &webhook_id);
    inner.received.push(Received {
        path,
        webhook_id,
        timestamp: header("webhook-timestamp"),
        signature: header("webhook-signature"),
        traceparent: header("traceparent"),
        body,
        status,
    });
    StatusCode::from_u16(status).unwrap()
}

impl Sink {
    pub async fn start() -> Self {
        let inner = Arc::new(Mutex::new(Inner::default()));
        let app = Router::new()
            .route("/{*path}", post(receive))
            .with_state(inner.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await });
        Self { addr, inner }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}/{path}", self.addr)
    }

    /// Answers `status` on `path` from now on.
    pub fn answer(&self, path: &str, status: u16) {
        self.inner
            .lock()
            .unwrap()
            .statuses
            .insert(path.to_owned(), status);
    }

    /// Fails one request in every `every` on `path` with `status` from now on, never the same
    /// webhook id twice (see [`FailEvery`]); other requests get what [`Sink::answer`] scripted.
    pub fn fail_every(&self, path: &str, every: u64, status: u16) {
        assert!(every > 0, "every must be at least 1");
        self.inner.lock().unwrap().failing.insert(
            path.to_owned(),
            FailEvery {
                every,
                status,
                seen: 0,
                owed: false,
                failed: HashSet::new(),
            },
        );
    }

    /// Every request received so far, whatever the sink answered.
    pub fn received(&self) -> Vec<Received> {
        self.inner.lock().unwrap().received.clone()
    }
}

/// Checks a Standard Webhooks signature.
pub fn signature_is_valid(secret: &str, r: &Received) -> bool {
    let b64 = base64::engine::general_purpose::STANDARD;
    let key = b64.decode(secret.trim_start_matches("whsec_")).unwrap();
    let mut mac = Hmac::<Sha256>::new_from_slice(&key).unwrap();
    mac.update(format!("{}.{}.", r.webhook_id, r.timestamp).as_bytes());
    mac.update(&r.body);
    let expected = format!("v1,{}", b64.encode(mac.finalize().into_bytes()));
    r.signature.split(' ').any(|s| s == expected)
}
