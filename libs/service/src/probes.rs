//! `/healthz` (the process is alive), `/readyz` (NATS is connected, the stage's streams and
//! buckets exist, the last storage measurement is within its bounds — [`crate::storage`] — and
//! any check of the service's own — [`router_with_check`] — passes) and `/metrics`
//! (Prometheus text).

use std::sync::Arc;

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;

use crate::Metrics;

/// What readiness checks: the connection, then each stream and bucket the service needs.
#[derive(Clone)]
pub struct Readiness {
    /// The service's client.
    pub client: async_nats::Client,
    /// Its JetStream context.
    pub js: async_nats::jetstream::Context,
    /// Streams that must exist.
    pub streams: Vec<String>,
    /// KV buckets that must exist.
    pub buckets: Vec<String>,
    /// The service's storage measurement, whose last verdict readiness reports
    /// ([`crate::storage`]); `None`: not measured.
    pub storage: Option<crate::StorageProbe>,
}

impl Readiness {
    /// Adds the storage measurement ([`crate::storage`]): measured once here (so readiness
    /// answers from the start), then every interval until `shutdown`: KV reads from the first of the readiness's buckets, fill of its streams, its
    /// buckets and `also` (the DLQ, say), with `config`'s interval and bounds; metrics in
    /// `metrics`. Without buckets, only publishes and fill are measured.
    pub async fn measured(
        mut self,
        config: switchyard_runtime::config::StorageConfig,
        ns: &switchyard_subjects::Namespace,
        also: impl IntoIterator<Item = String>,
        metrics: &Metrics,
        shutdown: tokio_util::sync::CancellationToken,
    ) -> Self {
        let mut streams: Vec<String> = self.streams.clone();
        streams.extend(
            self.buckets
                .iter()
                .map(|b| switchyard_topology::bucket_stream(b)),
        );
        for stream in also {
            if !streams.contains(&stream) {
                streams.push(stream);
            }
        }
        let probe = crate::StorageProbe::new(
            self.js.clone(),
            ns,
            metrics.stage(),
            config,
            self.buckets.first().cloned(),
            streams,
            metrics,
        );
        probe.record(probe.measure().await);
        tokio::spawn(probe.clone().run(shutdown));
        self.storage = Some(probe);
        self
    }

    /// `Ok` when ready; otherwise what is missing.
    pub async fn check(&self) -> Result<(), String> {
        if self.client.connection_state() != async_nats::connection::State::Connected {
            return Err("not connected to nats".to_owned());
        }
        for stream in &self.streams {
            self.js
                .get_stream(stream)
                .await
                .map_err(|e| format!("stream {stream}: {e}"))?;
        }
        for bucket in &self.buckets {
            self.js
                .get_stream(switchyard_topology::bucket_stream(bucket))
                .await
                .map_err(|e| format!("bucket {bucket}: {e}"))?;
        }
        if let Some(storage) = &self.storage {
            storage.verdict()?;
        }
        Ok(())
    }
}

/// A service's own readiness condition, checked after [`Readiness::check`]: `Err` says why the
/// service is not ready (e.g. the backpressure service while a tenant loop keeps dying). Cheap
/// and synchronous: it reads state the service keeps, it does not probe anything.
pub type ReadinessCheck = Arc<dyn Fn() -> Result<(), String> + Send + Sync>;

#[derive(Clone)]
struct ProbeState {
    readiness: Readiness,
    metrics: Arc<Metrics>,
    own: Option<ReadinessCheck>,
}

async fn healthz() -> &'static str {
    "ok\n"
}

async fn readyz(State(state): State<ProbeState>) -> (StatusCode, String) {
    let checked = match state.readiness.check().await {
        Ok(()) => state.own.as_ref().map_or(Ok(()), |own| own()),
        failed => failed,
    };
    match checked {
        Ok(()) => (StatusCode::OK, "ready\n".to_owned()),
        Err(reason) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("not ready: {reason}\n"),
        ),
    }
}

async fn metrics(State(state): State<ProbeState>) -> ([(&'static str, &'static str); 1], String) {
    (
        [(
            "content-type",
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        state.metrics.render(),
    )
}

/// The probe routes, to serve alone or merged with a service's own routes.
pub fn router(readiness: Readiness, metrics_: Arc<Metrics>) -> Router {
    routes(readiness, metrics_, None)
}

/// The probe routes, with `/readyz` also failing while `own` says the service is not ready.
pub fn router_with_check(
    readiness: Readiness,
    metrics_: Arc<Metrics>,
    own: ReadinessCheck,
) -> Router {
    routes(readiness, metrics_, Some(own))
}

fn routes(readiness: Readiness, metrics_: Arc<Metrics>, own: Option<ReadinessCheck>) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .with_state(ProbeState {
            readiness,
            metrics: metrics_,
            own,
        })
}
