//! `switchyard api serve|openapi`: the management HTTP API, served by the operator CLI's own
//! binary next to a deployment, over the same NATS connection, records and reads as the CLI's
//! commands (so the two always agree).
//!
//! Operator scope (the operator token: every tenant, `/v1/tenants`, `/v1/status`) and tenant
//! scope (a tenant's API key with the `manage` scope: that tenant's paths only; another tenant's
//! are `403 tenant_mismatch`, another tenant's DLQ entries and jobs `404`). The OpenAPI 3.1
//! description is generated from the handlers ([`ApiDoc`], utoipa), served at
//! `/openapi.json`, written by `switchyard api openapi`, and kept in `docs/openapi.json`, which
//! a test compares with the generated one.

pub mod auth;
pub mod error;
pub mod handlers;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context;
use async_nats::jetstream;
use axum::Router;
use axum::routing::{get, post};
use clap::Subcommand;
use switchyard_dlq_ops::{DlqReader, JobStore};
use switchyard_keys::{ApiKeyKey, DestinationKey, TenantKey};
use switchyard_registry::{ApiKeyRecord, Destination, Store, TenantRecord};
use switchyard_service::events::EventLog;
use switchyard_topology::{BucketName, ResolvedTopology};
use utoipa::OpenApi;

use crate::resources;
use error::ApiError;

/// The OpenAPI description of the management API.
#[derive(OpenApi)]
#[openapi(
    info(
        title = "Switchyard management API",
        description = "Tenants, destinations, the DLQ (list, show, replay jobs), the delivery \
                       log, operational events and status. Authorization: Bearer <operator token>, or a tenant's API \
                       key with the manage scope (its own tenant only)."
    ),
    paths(
        handlers::list_tenants,
        handlers::get_tenant,
        handlers::list_destinations,
        handlers::get_destination,
        handlers::put_destination,
        handlers::delete_destination,
        handlers::switch_destination,
        handlers::list_dlq,
        handlers::get_dlq_entry,
        handlers::replay_dlq,
        handlers::get_job,
        handlers::list_attempts,
        handlers::list_events,
        handlers::status,
    ),
    components(schemas(
        ApiError,
        handlers::TenantView,
        handlers::DestinationView,
        handlers::DlqPage,
        handlers::JobView,
        handlers::AttemptsPage,
        handlers::EventsPage,
        handlers::ReplayRequest,
        handlers::DisableRequest,
    )),
    modifiers(&BearerAuth),
    security(("bearer" = []))
)]
pub struct ApiDoc;

/// Declares the bearer scheme every path uses.
struct BearerAuth;

impl utoipa::Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
        );
    }
}

/// The OpenAPI description as pretty JSON (what `docs/openapi.json` holds).
pub fn openapi_json() -> String {
    let mut text = ApiDoc::openapi()
        .to_pretty_json()
        .unwrap_or_else(|_| "{}".to_owned());
    text.push('\n');
    text
}

/// Arguments of `api`.
#[derive(Debug, clap::Args)]
pub struct ApiArgs {
    /// The api command.
    #[command(subcommand)]
    pub command: ApiCommand,
}

/// The `api` commands.
#[derive(Debug, Subcommand)]
pub enum ApiCommand {
    /// Serve the management HTTP API until Ctrl-C or SIGTERM.
    Serve(ServeArgs),
    /// Print the API's OpenAPI 3.1 description (JSON).
    Openapi,
}

/// Arguments of `api serve`.
#[derive(Debug, clap::Args)]
pub struct ServeArgs {
    /// Where to listen.
    #[arg(long, default_value = "127.0.0.1:9106")]
    pub listen: SocketAddr,
    /// A file holding the operator token (at least 32 bytes, whitespace trimmed); or set
    /// `SWITCHYARD_API_OPERATOR_TOKEN`.
    #[arg(long, value_name = "FILE")]
    pub operator_token_file: Option<PathBuf>,
}

/// What every handler reads.
#[derive(Clone)]
pub struct ApiState {
    /// JetStream.
    pub js: jetstream::Context,
    /// The deployment's topology.
    pub topology: Arc<ResolvedTopology>,
    /// The operator token.
    pub operator_token: Arc<str>,
    /// API keys.
    pub keys: Store<ApiKeyKey, ApiKeyRecord>,
    /// Tenants.
    pub tenants: Store<TenantKey, TenantRecord>,
    /// Destinations.
    pub destinations: Store<DestinationKey, Destination>,
    /// Replay jobs.
    pub jobs: Arc<JobStore>,
    /// Operational events (destinations disabled and enabled through the API).
    pub events: EventLog,
}

impl ApiState {
    /// Opens what the API reads and writes.
    pub async fn open(
        js: &jetstream::Context,
        topology: &ResolvedTopology,
        operator_token: &str,
    ) -> anyhow::Result<Self> {
        let bucket = |name| resources::bucket(js, topology, name);
        Ok(Self {
            js: js.clone(),
            topology: Arc::new(topology.clone()),
            operator_token: operator_token.into(),
            keys: Store::new(bucket(BucketName::ApiKeys).await?),
            tenants: Store::new(bucket(BucketName::Tenants).await?),
            destinations: Store::new(bucket(BucketName::Destinations).await?),
            jobs: Arc::new(handlers::job_store(bucket(BucketName::DlqJobs).await?)),
            events: EventLog::new(js.clone(), topology.namespace.clone(), "api"),
        })
    }

    /// The DLQ reader.
    pub async fn dlq(&self) -> Result<DlqReader, ApiError> {
        handlers::dlq_reader(self).await
    }
}

/// The API's routes.
pub fn router(state: ApiState) -> Router {
    use handlers::*;
    Router::new()
        .route("/openapi.json", get(|| async { openapi_json() }))
        .route("/v1/tenants", get(list_tenants))
        .route("/v1/tenants/{tenant}", get(get_tenant))
        .route("/v1/tenants/{tenant}/destinations", get(list_destinations))
        .route(
            "/v1/tenants/{tenant}/destinations/{destination}",
            get(get_destination)
                .put(put_destination)
                .delete(delete_destination),
        )
        .route(
            "/v1/tenants/{tenant}/destinations/{destination}/{action}",
            post(switch_destination),
        )
        .route("/v1/tenants/{tenant}/dlq", get(list_dlq))
        .route("/v1/tenants/{tenant}/dlq/replay", post(replay_dlq))
        .route("/v1/tenants/{tenant}/dlq/{seq}", get(get_dlq_entry))
        .route("/v1/tenants/{tenant}/attempts", get(list_attempts))
        .route("/v1/tenants/{tenant}/events", get(list_events))
        .route("/v1/jobs/{job}", get(get_job))
        .route("/v1/status", get(status))
        .fallback(|| async { ApiError::not_found("no such path") })
        .layer(axum::middleware::map_response(error::json_errors))
        .layer(tower::limit::ConcurrencyLimitLayer::new(
            MAX_CONCURRENT_REQUESTS,
        ))
        .with_state(state)
}

/// Requests handled at once; more wait their turn.
pub const MAX_CONCURRENT_REQUESTS: usize = 64;

/// The operator token from `--operator-token-file` or `SWITCHYARD_API_OPERATOR_TOKEN`.
pub fn operator_token(args: &ServeArgs) -> anyhow::Result<String> {
    let token = match &args.operator_token_file {
        Some(path) => std::fs::read_to_string(path)
            .with_context(|| format!("reading the operator token from {}", path.display()))?,
        None => std::env::var("SWITCHYARD_API_OPERATOR_TOKEN").context(
            "no operator token: pass --operator-token-file FILE or set SWITCHYARD_API_OPERATOR_TOKEN",
        )?,
    };
    let token = token.trim().to_owned();
    if token.len() < auth::MIN_OPERATOR_TOKEN || token.contains(char::is_whitespace) {
        anyhow::bail!(
            "the operator token must be at least {} bytes without whitespace (e.g. `openssl rand \
             -hex 32`)",
            auth::MIN_OPERATOR_TOKEN
        );
    }
    Ok(token)
}

/// `switchyard api openapi`: prints the description.
pub fn openapi_json_command() -> ExitCode {
    anstream::print!("{}", openapi_json());
    ExitCode::SUCCESS
}

/// Runs an `api` command.
pub async fn run(
    js: &jetstream::Context,
    topology: &ResolvedTopology,
    args: &ApiArgs,
) -> anyhow::Result<ExitCode> {
    match &args.command {
        ApiCommand::Openapi => Ok(openapi_json_command()),
        ApiCommand::Serve(serve) => {
            let token = operator_token(serve)?;
            let state = ApiState::open(js, topology, &token).await?;
            let listener = tokio::net::TcpListener::bind(serve.listen)
                .await
                .with_context(|| format!("listening on {}", serve.listen))?;
            eprintln!(
                "management API on http://{} (OpenAPI: /openapi.json)",
                listener.local_addr().unwrap_or(serve.listen)
            );
            axum::serve(listener, router(state))
                .with_graceful_shutdown(async {
                    let _ = tokio::signal::ctrl_c().await;
                })
                .await
                .context("serving the management API")?;
            Ok(ExitCode::SUCCESS)
        }
    }
}
