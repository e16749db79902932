//! `switchyard api serve|openapi`: the management HTTP API, served by the operator CLI's own
//! binary next to a deployment, over the same NATS connection, records and reads as the CLI's
//! commands (so the two always agree).
//!
//! Operator scope (the operator token: every tenant, `/v1/tenants`, `/v1/status`, `/v1/limits`,
//! issuing keys and setting limits) and tenant scope (a tenant's API key with the `manage`
//! scope: that tenant's paths only; another tenant's are `403 tenant_mismatch`, another
//! tenant's DLQ entries, jobs and keys `404`). The OpenAPI 3.1 description is generated from
//! the handlers ([`ApiDoc`], utoipa), served at `/openapi.json`, written by `switchyard api
//! openapi`, and kept in `docs/openapi.json`, which a test compares with the generated one.
//!
//! Every request has a deadline (`--request-timeout-secs`, `503 timeout` past it), shows valid
//! credentials before anything else (`401` without reading its body), waits for one of
//! [`MAX_CONCURRENT_REQUESTS`] turns, carries at most [`MAX_BODY_BYTES`], and is one line of the
//! access log ([`middleware`]); a client must send its headers within the service default
//! (`switchyard_service::launch`). `/healthz` and `/readyz` (NATS connected, the streams and buckets the API
//! uses exist) answer Kubernetes probes, outside all three and without a token.

pub mod auth;
pub mod dlq;
pub mod error;
pub mod handlers;
pub mod keys;
pub mod limits;
pub mod middleware;
pub mod tenants;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use async_nats::jetstream::{self, kv};
use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::{get, post};
use clap::Subcommand;
use switchyard_dlq_ops::{DlqReader, JobStore};
use switchyard_keys::{ApiKeyKey, DestinationKey, TenantKey};
use switchyard_registry::{ApiKeyRecord, Destination, Store, TenantRecord};
use switchyard_service::events::EventLog;
use switchyard_service::probes::Readiness;
use switchyard_topology::{BucketName, ResolvedTopology, StreamName};
use utoipa::OpenApi;

use crate::commands::limits::LimitStores;
use error::ApiError;

/// The OpenAPI description of the management API.
#[derive(OpenApi)]
#[openapi(
    info(
        title = "Switchyard management API",
        description = "Tenants, API keys, destinations, rate limits, the DLQ (list, show, \
                       replay, purge, replay jobs), the delivery log, operational events and \
                       status. Authorization: Bearer <operator token>, or a tenant's API key with \
                       the manage scope (its own tenant only; issuing keys and setting limits \
                       are the operator's). Every request has a deadline: past it, 503 timeout."
    ),
    paths(
        handlers::list_tenants,
        handlers::get_tenant,
        tenants::enable_tenant,
        tenants::portal_link,
        tenants::disable_tenant,
        handlers::list_destinations,
        handlers::get_destination,
        handlers::put_destination,
        handlers::delete_destination,
        handlers::switch_destination,
        handlers::rotate_destination_secret,
        keys::list_keys,
        keys::create_key,
        keys::revoke_key,
        limits::get_limits,
        limits::put_limits,
        limits::list_limits,
        limits::get_default_limits,
        limits::put_default_limits,
        dlq::list_dlq,
        dlq::export_dlq,
        dlq::get_dlq_entry,
        dlq::replay_dlq,
        dlq::purge_dlq,
        dlq::list_jobs,
        dlq::get_job,
        dlq::cancel_job,
        handlers::list_attempts,
        handlers::list_events,
        handlers::status,
    ),
    components(schemas(
        ApiError,
        handlers::TenantView,
        handlers::DestinationView,
        dlq::DlqPage,
        dlq::JobView,
        dlq::PurgeResult,
        handlers::AttemptsPage,
        handlers::EventsPage,
        dlq::ReplayRequest,
        dlq::PurgeRequest,
        handlers::DisableRequest,
        handlers::RotateRequest,
        handlers::RotateAnswer,
        keys::CreateKeyRequest,
        keys::ScopeName,
        limits::LimitRequest,
        tenants::EnableRequest,
        tenants::PortalLinkRequest,
        tenants::PortalLink,
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
    /// Print a signed link to one tenant's portal in the console (that tenant alone).
    PortalLink(PortalLinkArgs),
}

/// Arguments of `api portal-link`.
#[derive(Debug, clap::Args)]
pub struct PortalLinkArgs {
    /// The tenant.
    pub tenant: switchyard_keys::TenantId,
    /// The console's base URL, as the tenant reaches it.
    #[arg(long, default_value = "http://127.0.0.1:9106")]
    pub url: String,
    /// How long the link may be used to open a portal session, in seconds (the session then
    /// lasts 8 hours at most).
    #[arg(long, value_name = "SECS", default_value_t = 3600,
          value_parser = clap::value_parser!(u64).range(60..=604_800))]
    pub ttl_secs: u64,
    /// The operator token file (the link is signed with a key derived from it: rotating the
    /// token revokes every link); or set `SWITCHYARD_API_OPERATOR_TOKEN`.
    #[arg(long, value_name = "FILE")]
    pub operator_token_file: Option<PathBuf>,
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
    /// The most seconds a request may take (waiting for its turn included); past it the answer
    /// is `503 timeout`.
    #[arg(long, value_name = "SECS", default_value_t = DEFAULT_REQUEST_TIMEOUT.as_secs(),
          value_parser = clap::value_parser!(u64).range(1..=3600))]
    pub request_timeout_secs: u64,
    /// The key-encryption key, to show encrypted tenants' DLQ payloads decrypted (without it
    /// they show sealed, with `"encryption": {"decrypted": false}`), and to seal the
    /// destination secrets of tenants with encryption on (without it, writing one is refused
    /// with `503 kek_required`).
    #[command(flatten)]
    pub kek: crate::commands::encryption::KekArgs,
}

/// The default of `--request-timeout-secs`.
pub const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

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
    /// Rate limits and admission states.
    pub limits: Arc<LimitStores>,
    /// Operational events (destinations disabled and enabled through the API).
    pub events: EventLog,
    /// What `/readyz` checks.
    pub readiness: Readiness,
    /// How long a request may take ([`DEFAULT_REQUEST_TIMEOUT`] unless set).
    pub request_timeout: Duration,
    /// The `tenant-keys` bucket: whether a tenant's destination secrets are written sealed.
    pub tenant_keys: switchyard_crypt::KeyStore,
    /// The tenants' data keys and the KEK ring that unwraps them, when the API was given a KEK
    /// ([`ApiState::with_kek`]): encrypted DLQ payloads are then shown decrypted.
    pub data_keys: Option<Arc<(switchyard_crypt::KeyStore, switchyard_crypt::KekRing)>>,
    /// The web console served beside the API under `/ui` (its keys derive from the operator
    /// token; see [`crate::console`]).
    pub console: Arc<crate::console::Console>,
}

impl ApiState {
    /// Opens what the API reads and writes.
    pub async fn open(
        js: &jetstream::Context,
        topology: &ResolvedTopology,
        operator_token: &str,
    ) -> anyhow::Result<Self> {
        // Each bucket's name, for `/readyz`.
        let mut names = Vec::new();
        let mut open = async |name: BucketName| -> anyhow::Result<kv::Store> {
            let (bucket, store) = topology.open_bucket(js, name).await?;
            names.push(bucket);
            Ok(store)
        };
        let keys = Store::new(open(BucketName::ApiKeys).await?);
        let tenants = Store::new(open(BucketName::Tenants).await?);
        let destinations = Store::new(open(BucketName::Destinations).await?);
        let jobs = Arc::new(dlq::job_store(open(BucketName::DlqJobs).await?));
        let limits = Arc::new(LimitStores::new(open(BucketName::RateLimits).await?));
        let (dlq, _) = topology.open_stream(js, StreamName::Dlq).await?;
        let tenant_keys = switchyard_crypt::KeyStore::new(
            topology.open_bucket(js, BucketName::TenantKeys).await?.1,
        );
        Ok(Self {
            js: js.clone(),
            topology: Arc::new(topology.clone()),
            operator_token: operator_token.into(),
            keys,
            tenants,
            destinations,
            jobs,
            limits,
            events: EventLog::new(js.clone(), topology.namespace.clone(), "api"),
            readiness: Readiness {
                client: js.client(),
                js: js.clone(),
                streams: vec![dlq],
                buckets: names,
                storage: None,
            },
            request_timeout: DEFAULT_REQUEST_TIMEOUT,
            tenant_keys,
            data_keys: None,
            console: Arc::new(crate::console::Console::new(
                operator_token,
                false,
                tokio_util::sync::CancellationToken::new(),
            )),
        })
    }

    /// The same state, decrypting encrypted tenants' DLQ payloads with `ring` (the tenants'
    /// data keys read from the `tenant-keys` bucket).
    ///
    /// Errors: the bucket cannot be opened.
    pub async fn with_kek(mut self, ring: switchyard_crypt::KekRing) -> anyhow::Result<Self> {
        let (_, bucket) = self
            .topology
            .open_bucket(&self.js, BucketName::TenantKeys)
            .await?;
        self.data_keys = Some(Arc::new((switchyard_crypt::KeyStore::new(bucket), ring)));
        Ok(self)
    }

    /// The DLQ reader.
    pub async fn dlq(&self) -> Result<DlqReader, ApiError> {
        dlq::dlq_reader(self).await
    }
}

/// The API's routes, each behind the access log, the request deadline and the shared
/// concurrency limit; then the probes, outside them.
pub fn router(state: ApiState) -> Router {
    use handlers::*;
    let timeout = state.request_timeout;
    let api = Router::new()
        .route("/openapi.json", get(|| async { openapi_json() }))
        .route("/v1/tenants", get(list_tenants))
        .route("/v1/tenants/{tenant}", get(get_tenant))
        .route("/v1/tenants/{tenant}/enable", post(tenants::enable_tenant))
        .route(
            "/v1/tenants/{tenant}/disable",
            post(tenants::disable_tenant),
        )
        .route(
            "/v1/tenants/{tenant}/portal-link",
            post(tenants::portal_link),
        )
        .route(
            "/v1/tenants/{tenant}/keys",
            get(keys::list_keys).post(keys::create_key),
        )
        .route(
            "/v1/tenants/{tenant}/keys/{key}/revoke",
            post(keys::revoke_key),
        )
        .route(
            "/v1/tenants/{tenant}/limits",
            get(limits::get_limits).put(limits::put_limits),
        )
        .route("/v1/limits", get(limits::list_limits))
        .route(
            "/v1/limits/_default",
            get(limits::get_default_limits).put(limits::put_default_limits),
        )
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
        .route(
            "/v1/tenants/{tenant}/destinations/{destination}/rotate-secret",
            post(rotate_destination_secret),
        )
        .route("/v1/tenants/{tenant}/dlq", get(dlq::list_dlq))
        .route("/v1/tenants/{tenant}/dlq/replay", post(dlq::replay_dlq))
        .route("/v1/tenants/{tenant}/dlq/purge", post(dlq::purge_dlq))
        .route("/v1/tenants/{tenant}/dlq/export", get(dlq::export_dlq))
        .route("/v1/tenants/{tenant}/dlq/{seq}", get(dlq::get_dlq_entry))
        .route("/v1/tenants/{tenant}/attempts", get(list_attempts))
        .route("/v1/tenants/{tenant}/events", get(list_events))
        .route("/v1/jobs", get(dlq::list_jobs))
        .route("/v1/jobs/{job}", get(dlq::get_job))
        .route("/v1/jobs/{job}/cancel", post(dlq::cancel_job))
        .route("/v1/status", get(status))
        .fallback(|| async { ApiError::not_found("no such path") })
        .layer(axum::middleware::map_response(error::json_errors))
        .layer(axum::middleware::from_fn(middleware::single_parameters))
        .layer(axum::extract::DefaultBodyLimit::max(MAX_BODY_BYTES))
        // One limit for the whole API (a `ConcurrencyLimitLayer` would give each route its own).
        .layer(tower::limit::GlobalConcurrencyLimitLayer::new(
            MAX_CONCURRENT_REQUESTS,
        ))
        // Outside the limit: a request without valid credentials is answered 401 before it
        // takes a turn or its body is read.
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            middleware::credentials,
        ))
        .layer(axum::middleware::from_fn_with_state(
            timeout,
            middleware::deadline,
        ))
        .layer(axum::middleware::from_fn(middleware::access_log));
    let probes = Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz));
    // The console answers its own paths (`/ui…`) outside the API's bearer-token layers: its
    // pages authenticate by session cookie.
    let console = crate::console::router(crate::console::ConsoleState {
        api: state.clone(),
        console: state.console.clone(),
    });
    console.merge(api.merge(probes).with_state(state))
}

/// `/readyz`: `200` when NATS is connected and the DLQ stream and the API's buckets exist,
/// `503` with the reason otherwise.
async fn readyz(State(state): State<ApiState>) -> (StatusCode, String) {
    match state.readiness.check().await {
        Ok(()) => (StatusCode::OK, "ready\n".to_owned()),
        Err(reason) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("not ready: {reason}\n"),
        ),
    }
}

/// Requests handled at once; more wait their turn.
pub const MAX_CONCURRENT_REQUESTS: usize = 64;

/// The largest request body, in bytes (a destination is at most 16 KiB of JSON; a purge of
/// 10,000 listed sequences about 80 KiB).
pub const MAX_BODY_BYTES: usize = 256 * 1024;

/// The operator token from `--operator-token-file` or `SWITCHYARD_API_OPERATOR_TOKEN`.
pub fn operator_token(args: &ServeArgs) -> anyhow::Result<String> {
    read_operator_token(args.operator_token_file.as_deref())
}

/// `switchyard api portal-link`: prints the link (needs no server).
pub fn portal_link_command(args: &PortalLinkArgs) -> anyhow::Result<ExitCode> {
    let token = read_operator_token(args.operator_token_file.as_deref())?;
    let keys = crate::console::Keys::new(&token);
    let exp = time::OffsetDateTime::now_utc().unix_timestamp()
        + i64::try_from(args.ttl_secs).unwrap_or(3600);
    let link = keys.link(&args.tenant, exp);
    anstream::println!("{}/ui/portal?token={link}", console_base(&args.url)?);
    eprintln!(
        "the link opens tenant {}'s portal once it is registered and enabled (checked when \
         opened; POST /v1/tenants/{}/portal-link checks now)",
        args.tenant, args.tenant
    );
    Ok(ExitCode::SUCCESS)
}

/// The console's base URL from `--url`: `http` or `https`, without a trailing `/` or `/ui`.
///
/// Errors: not an http(s) URL, or one with a query or fragment.
fn console_base(raw: &str) -> anyhow::Result<String> {
    let url = url::Url::parse(raw.trim())
        .with_context(|| format!("--url {raw:?} is not a URL such as https://console.example"))?;
    anyhow::ensure!(
        matches!(url.scheme(), "http" | "https") && url.host().is_some(),
        "--url {raw:?} is not an http or https URL with a host"
    );
    anyhow::ensure!(
        url.query().is_none() && url.fragment().is_none(),
        "--url {raw:?} has a query or fragment: give the console's base URL"
    );
    let base = url.as_str().trim_end_matches('/');
    Ok(base.strip_suffix("/ui").unwrap_or(base).to_owned())
}

/// The operator token from a file or `SWITCHYARD_API_OPERATOR_TOKEN`, checked.
fn read_operator_token(file: Option<&std::path::Path>) -> anyhow::Result<String> {
    let token = match file {
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
        ApiCommand::PortalLink(args) => portal_link_command(args),
        ApiCommand::Serve(serve) => {
            let token = operator_token(serve)?;
            let mut state = ApiState::open(js, topology, &token).await?;
            state.request_timeout = Duration::from_secs(serve.request_timeout_secs);
            if let Some(ring) = serve.kek.ring()? {
                state = state.with_kek(ring).await?;
            }
            // SIGTERM or Ctrl-C: stop accepting, finish the requests in flight. Served like
            // every service's listener: a client that does not send its headers in time is
            // closed, so none holds a connection (or the shutdown) for ever.
            let stop = switchyard_service::shutdown::on_signal();
            // The console's cookies are `Secure` unless the API listens on loopback only (a
            // local run over plain HTTP); its live streams end on the same signal.
            state.console = Arc::new(crate::console::Console::new(
                &token,
                !serve.listen.ip().is_loopback(),
                stop.clone(),
            ));
            crate::console::spawn_background(&crate::console::ConsoleState {
                api: state.clone(),
                console: state.console.clone(),
            });
            // Bound here, so a taken address names this command's own setting.
            let listener = tokio::net::TcpListener::bind(serve.listen)
                .await
                .with_context(|| {
                    format!(
                        "binding {} (--listen): another process may hold it; choose a free \
                         address with --listen",
                        serve.listen
                    )
                })?;
            let running =
                switchyard_service::launch("api", listener, router(state), stop, async {})
                    .await
                    .with_context(|| format!("serving on {}", serve.listen))?;
            eprintln!(
                "management API on http://{} (OpenAPI: /openapi.json; console: /ui)",
                running.http_addr
            );
            running
                .finished()
                .await
                .context("serving the management API")?;
            Ok(ExitCode::SUCCESS)
        }
    }
}
