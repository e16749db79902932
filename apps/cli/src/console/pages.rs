//! The console's pages and live streams (see the module page of [`crate::console`]).
//!
//! Every page but the login form, the portal exchange and the static files needs a session
//! ([`super::session`]); every form posts its session's CSRF token. A portal session's tenant
//! scopes everything: a DLQ entry or job of another tenant is "not found", a tenant filter
//! naming another tenant is refused.

use std::collections::{BTreeMap, BTreeSet};
use std::convert::Infallible;
use std::time::Duration;

use axum::extract::rejection::QueryRejection;
use axum::extract::{Form, Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Redirect, Response};
use futures::{Stream, StreamExt};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use subtle::ConstantTimeEq;
use switchyard_dlq_ops::{DlqReader, JobRecord, Selection};
use switchyard_keys::{PlatformId, Stage, TenantId};
use switchyard_registry::Admission;
use time::OffsetDateTime;

use super::session::{LOGIN_COOKIE, SESSION_COOKIE, SESSION_SECS, Session, Who, random_id};
use super::{APP_CSS, APP_JS, ConsoleState, PAGE};
use crate::api::dlq::{ReplayRequest, matching, start_replay, visible};
use crate::commands::dlq::{jobs, show};

/// How often the overview's live stream sends a fresh snapshot.
const OVERVIEW_EVERY: Duration = Duration::from_secs(2);
/// How often the DLQ's live tail looks for new entries.
const TAIL_EVERY: Duration = Duration::from_secs(1);
/// How often a job page's live stream reads the job.
const JOB_EVERY: Duration = Duration::from_millis(500);
/// The most payload bytes an entry page shows as hex.
const HEX_BYTES: usize = 64 * 1024;

fn now() -> i64 {
    OffsetDateTime::now_utc().unix_timestamp()
}

/// The value of cookie `name` in the request.
fn cookie(headers: &HeaderMap, name: &str) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v.to_owned())
}

/// A `Set-Cookie` value: HttpOnly, SameSite=Strict, Path=/ui, `Secure` where configured.
fn set_cookie(state: &ConsoleState, name: &str, value: &str, max_age: i64) -> HeaderValue {
    let secure = if state.console.secure_cookies {
        "; Secure"
    } else {
        ""
    };
    HeaderValue::from_str(&format!(
        "{name}={value}; Max-Age={max_age}; Path=/ui; HttpOnly; SameSite=Strict{secure}"
    ))
    .unwrap_or_else(|_| HeaderValue::from_static(""))
}

fn see_other(to: &str) -> Response {
    Redirect::to(to).into_response()
}

/// A rendered page.
fn page(state: &ConsoleState, status: StatusCode, template: &str, context: Value) -> Response {
    match state.console.render(template, &context) {
        Ok(html) => (
            status,
            [(header::CONTENT_TYPE, "text/html; charset=utf-8")],
            html,
        )
            .into_response(),
        Err(error) => {
            tracing::error!(%error, template, "a console page did not render");
            (StatusCode::INTERNAL_SERVER_ERROR, "the page did not render").into_response()
        }
    }
}

/// The common context of a page shown in a session.
fn base(state: &ConsoleState, session: &Session) -> serde_json::Map<String, Value> {
    let mut context = serde_json::Map::new();
    context.insert("session".into(), true.into());
    context.insert("csrf".into(), state.console.keys.csrf(session).into());
    context.insert(
        "who".into(),
        match &session.who {
            Who::Operator => "operator".into(),
            Who::Tenant(t) => format!("tenant {t}").into(),
        },
    );
    context.insert(
        "portal".into(),
        session.who.tenant().map(ToString::to_string).into(),
    );
    context
}

/// A message page (an error, a refusal), in a session or not.
fn message(
    state: &ConsoleState,
    session: Option<&Session>,
    status: StatusCode,
    title: &str,
    text: &str,
) -> Response {
    let mut context = session.map(|s| base(state, s)).unwrap_or_default();
    context.insert("title".into(), title.into());
    context.insert("text".into(), text.into());
    page(state, status, "message.html", Value::Object(context))
}

/// The session a cookie value names, when it is valid now: signed, not expired, not logged
/// out, and for a portal session, its tenant still enabled (checked on every request, so
/// disabling a tenant ends its portal sessions).
async fn live_session(state: &ConsoleState, cookie: &str) -> Option<Session> {
    let session = state.console.keys.session(cookie, now())?;
    if let Some(tenant) = session.who.tenant() {
        let key = switchyard_keys::TenantKey {
            tenant: tenant.clone(),
        };
        match state.api.tenants.get(&key).await {
            Ok(Some(record)) if record.enabled => {}
            _ => return None,
        }
    }
    Some(session)
}

/// The request's session, or a redirect to the login form.
async fn session(state: &ConsoleState, headers: &HeaderMap) -> Result<Session, Response> {
    match cookie(headers, SESSION_COOKIE) {
        Some(c) => live_session(state, &c).await,
        None => None,
    }
    .ok_or_else(|| see_other("/ui/login"))
}

/// Checks a form's CSRF token against the session.
#[allow(clippy::result_large_err, reason = "the error is the answer itself")]
fn csrf(state: &ConsoleState, session: &Session, given: &str) -> Result<(), Response> {
    if state.console.keys.csrf_ok(session, given) {
        Ok(())
    } else {
        Err(message(
            state,
            Some(session),
            StatusCode::FORBIDDEN,
            "Refused",
            "The form's security token does not match this session: reload the page and try \
             again.",
        ))
    }
}

/// Any other path under `/ui`: not found (with the console's headers).
pub async fn not_found(State(state): State<ConsoleState>) -> Response {
    message(
        &state,
        None,
        StatusCode::NOT_FOUND,
        "Not found",
        "There is no such page.",
    )
}

/// Before a form's body is read: a request without a valid session cookie is sent to the
/// login form (as the API answers `401` before reading a body).
pub async fn posted_in_session(
    State(state): State<ConsoleState>,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let valid = cookie(request.headers(), SESSION_COOKIE)
        .and_then(|c| state.console.keys.session(&c, now()))
        .is_some();
    if valid {
        next.run(request).await
    } else {
        see_other("/ui/login")
    }
}

/// `503`: the system's random number generator failed, so no session or form id is made.
fn no_randomness(state: &ConsoleState) -> Response {
    tracing::error!("the system random number generator failed");
    message(
        state,
        None,
        StatusCode::SERVICE_UNAVAILABLE,
        "Unavailable",
        "The server cannot make a session now (its random number generator failed).",
    )
}

/// The session of a posted form whose CSRF token is that session's; else the answer to give
/// (the login form, or `403`).
async fn form_session(
    state: &ConsoleState,
    headers: &HeaderMap,
    token: &str,
) -> Result<Session, Response> {
    let session = session(state, headers).await?;
    csrf(state, &session, token)?;
    Ok(session)
}

/// The tenant a replay or purge form names, within the session's scope (a portal acts on its
/// own tenant only); else the refusal to show.
#[allow(clippy::result_large_err, reason = "the error is the answer itself")]
fn form_tenant(
    state: &ConsoleState,
    session: &Session,
    raw: &str,
    action: &str,
) -> Result<TenantId, Response> {
    let refuse = |status, text: String| {
        message(
            state,
            Some(session),
            status,
            &format!("{action} refused"),
            &text,
        )
    };
    let tenant = raw.trim().parse::<TenantId>().map_err(|_| {
        refuse(
            StatusCode::BAD_REQUEST,
            format!(
                "Choose a tenant first: a {} covers one tenant's entries.",
                action.to_lowercase()
            ),
        )
    })?;
    if session.who.tenant().is_some_and(|own| *own != tenant) {
        return Err(refuse(
            StatusCode::FORBIDDEN,
            format!(
                "This portal acts on its own tenant's entries only ({}).",
                action.to_lowercase()
            ),
        ));
    }
    Ok(tenant)
}

/// The tenant a page's `tenant` filter names, within the session's scope: none named is the
/// portal's own tenant (the operator's: none); another tenant named from a portal, or a
/// malformed id, is a `400` "Bad filter" page.
#[allow(clippy::result_large_err, reason = "the error is the answer itself")]
fn filter_tenant(
    state: &ConsoleState,
    session: &Session,
    named: Option<&str>,
) -> Result<Option<TenantId>, Response> {
    let bad = |text: &str| {
        message(
            state,
            Some(session),
            StatusCode::BAD_REQUEST,
            "Bad filter",
            text,
        )
    };
    let named = named.map(str::trim).filter(|t| !t.is_empty());
    match (session.who.tenant(), named) {
        (own, None) => Ok(own.cloned()),
        (own, Some(raw)) => match raw.parse::<TenantId>() {
            Ok(t) if own.is_none_or(|own| *own == t) => Ok(Some(t)),
            Ok(_) => Err(bad("this portal shows its own tenant only")),
            Err(e) => Err(bad(&format!("tenant: {e}"))),
        },
    }
}

/// `/ui`: the overview, or the login form.
pub async fn home() -> Response {
    see_other("/ui/overview")
}

/// `/ui/app.js`.
pub async fn app_js() -> impl IntoResponse {
    (
        [
            (header::CONTENT_TYPE, "text/javascript; charset=utf-8"),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        APP_JS,
    )
}

/// `/ui/app.css`.
pub async fn app_css() -> impl IntoResponse {
    (
        [
            (header::CONTENT_TYPE, "text/css; charset=utf-8"),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        APP_CSS,
    )
}

fn login_page(
    state: &ConsoleState,
    status: StatusCode,
    error: Option<&str>,
    note: Option<&str>,
) -> Response {
    let Ok(nonce) = random_id() else {
        return no_randomness(state);
    };
    let mut response = page(
        state,
        status,
        "login.html",
        json!({"csrf": state.console.keys.login_csrf(&nonce), "error": error, "note": note}),
    );
    response.headers_mut().append(
        header::SET_COOKIE,
        set_cookie(state, LOGIN_COOKIE, &nonce, 600),
    );
    response
}

/// Query of the login form.
#[derive(Deserialize)]
pub struct LoginQuery {
    out: Option<String>,
}

/// `GET /ui/login`.
pub async fn login_form(
    State(state): State<ConsoleState>,
    Query(q): Query<LoginQuery>,
) -> Response {
    let note = q.out.is_some().then_some("You are logged out.");
    login_page(&state, StatusCode::OK, None, note)
}

/// The login form.
#[derive(Deserialize)]
pub struct LoginForm {
    token: String,
    csrf: String,
}

/// `POST /ui/login`: the operator token for a session.
pub async fn login(
    State(state): State<ConsoleState>,
    headers: HeaderMap,
    Form(form): Form<LoginForm>,
) -> Response {
    let nonce = cookie(&headers, LOGIN_COOKIE).unwrap_or_default();
    if nonce.is_empty() || !state.console.keys.login_csrf_ok(&nonce, &form.csrf) {
        return login_page(
            &state,
            StatusCode::FORBIDDEN,
            Some("The form expired: try again."),
            None,
        );
    }
    let token = form.token.trim();
    if !bool::from(token.as_bytes().ct_eq(state.api.operator_token.as_bytes())) {
        tracing::warn!("console login with a wrong operator token");
        return login_page(
            &state,
            StatusCode::UNAUTHORIZED,
            Some("That is not the operator token."),
            None,
        );
    }
    let Ok((value, _)) = state.console.keys.issue(&Who::Operator, now()) else {
        return no_randomness(&state);
    };
    let mut response = see_other("/ui/overview");
    let headers = response.headers_mut();
    headers.append(
        header::SET_COOKIE,
        set_cookie(&state, SESSION_COOKIE, &value, SESSION_SECS),
    );
    headers.append(header::SET_COOKIE, set_cookie(&state, LOGIN_COOKIE, "", 0));
    response
}

/// A form with only its CSRF token.
#[derive(Deserialize)]
pub struct CsrfForm {
    csrf: String,
}

/// `POST /ui/logout`.
pub async fn logout(
    State(state): State<ConsoleState>,
    headers: HeaderMap,
    Form(form): Form<CsrfForm>,
) -> Response {
    let session = match form_session(&state, &headers, &form.csrf).await {
        Ok(s) => s,
        Err(answer) => return answer,
    };
    state.console.keys.revoke(&session, now());
    if let Err(error) = super::logouts::report(&state, &session).await {
        // Logged out here; another replica may still take the cookie until it expires.
        tracing::warn!(%error, "a logout was not reported to the other API replicas");
    }
    let mut response = see_other("/ui/login?out=1");
    response.headers_mut().append(
        header::SET_COOKIE,
        set_cookie(&state, SESSION_COOKIE, "", 0),
    );
    response
}

/// Query of the portal link.
#[derive(Deserialize)]
pub struct PortalQuery {
    token: Option<String>,
}

/// `GET /ui/portal?token=…`: a tenant's portal link for a session of that tenant.
pub async fn portal(
    State(state): State<ConsoleState>,
    headers: HeaderMap,
    Query(q): Query<PortalQuery>,
) -> Response {
    let refused = || {
        message(
            &state,
            None,
            StatusCode::UNAUTHORIZED,
            "Link not valid",
            "This portal link is not valid or has expired: ask your operator for a new one.",
        )
    };
    let Some(tenant) = q
        .token
        .as_deref()
        .and_then(|t| state.console.keys.link_tenant(t, now()))
    else {
        return refused();
    };
    let key = switchyard_keys::TenantKey {
        tenant: tenant.clone(),
    };
    match state.api.tenants.get(&key).await {
        Ok(Some(record)) if record.enabled => {}
        _ => return refused(),
    }
    // A link never replaces a session the browser has (someone could send the operator a
    // link that quietly turns their browser into a tenant's portal).
    if let Ok(current) = session(&state, &headers).await {
        return message(
            &state,
            Some(&current),
            StatusCode::CONFLICT,
            "Already logged in",
            "This browser has a console session: log out first to open a portal link.",
        );
    }
    let Ok((value, _)) = state.console.keys.issue(&Who::Tenant(tenant), now()) else {
        return no_randomness(&state);
    };
    let mut response = see_other("/ui/overview");
    response.headers_mut().append(
        header::SET_COOKIE,
        set_cookie(&state, SESSION_COOKIE, &value, SESSION_SECS),
    );
    response
}

/// One tenant's row on the overview.
#[derive(Debug, Serialize)]
struct TenantRow {
    tenant: String,
    /// Messages accepted per second (`12.5/s`; `-` until two samples exist).
    rate: String,
    /// Its rate limit (`500/s`, `-`).
    limit: String,
    backlog: u64,
    quota_pct: f64,
    admission: &'static str,
    dlq: u64,
    /// DLQ entries stored per minute (`2/min`; `-` until two samples exist).
    dlq_inflow: String,
    /// Its destinations: `3`, `3, 1 failing, 1 disabled` (`-`: none).
    destinations: String,
    /// Whether none of them fails or is disabled.
    destinations_ok: bool,
    charts: super::history::Charts,
    #[serde(skip)]
    reading: super::history::Reading,
}

/// Every tenant's destinations: how many, how many have a circuit breaker that is not closed,
/// how many are disabled (one KV read per destination: read at the history's pace).
async fn destination_health(
    state: &ConsoleState,
) -> Result<BTreeMap<String, super::history::Health>, String> {
    let listed = state
        .api
        .destinations
        .list(">")
        .await
        .map_err(|e| e.to_string())?;
    let breakers = crate::commands::destinations::breakers(&state.api.js, &state.api.topology)
        .await
        .map_err(|e| format!("{e:#}"))?;
    let mut health: BTreeMap<String, super::history::Health> = BTreeMap::new();
    for (key, record) in listed {
        let tripped = breakers
            .get(&switchyard_keys::BreakerKey::Destination(key.clone()))
            .await
            .ok()
            .flatten()
            .is_some();
        // An unreadable record delivers nothing: counted as failing.
        let disabled = record.as_ref().is_ok_and(|r| r.disabled.is_some());
        let entry = health.entry(key.tenant.to_string()).or_default();
        entry.total += 1;
        if disabled {
            entry.disabled += 1;
        } else if tripped || record.is_err() {
            entry.failing += 1;
        }
    }
    Ok(health)
}

/// Every tenant the caller may see, with what the overview shows of it.
async fn overview_rows(state: &ConsoleState, who: &Who) -> Result<Vec<TenantRow>, String> {
    let (report, rates) = crate::commands::status::snapshot(&state.api.js, &state.api.topology)
        .await
        .map_err(|e| format!("{e:#}"))?;
    let at = now();
    let history = &state.console.history;
    if history.health_due(at) {
        let disabled = state.api.tenants.list(">").await.map(|tenants| {
            tenants
                .into_iter()
                .filter(|(_, record)| record.as_ref().is_ok_and(|r| !r.enabled))
                .map(|(key, _)| key.tenant.to_string())
                .collect::<BTreeSet<String>>()
        });
        match (destination_health(state).await, disabled) {
            (Ok(health), Ok(disabled)) => history.set_health(at, health, disabled),
            (Err(error), _) => tracing::warn!(%error, "reading the destinations' health"),
            (_, Err(error)) => tracing::warn!(%error, "reading the tenants"),
        }
    }
    let mut tenants: BTreeSet<String> = report
        .tenant_streams
        .iter()
        .map(|t| t.tenant.clone())
        .collect();
    tenants.extend(
        rates
            .iter()
            .map(|r| r.tenant.clone())
            .filter(|t| t != "_default"),
    );
    tenants.extend(report.tenant_dlq.iter().map(|t| t.tenant.clone()));
    tenants.remove("_");
    let default_rate = rates
        .iter()
        .find(|r| r.tenant == "_default")
        .and_then(|r| r.limit.as_ref());
    let mut rows: Vec<TenantRow> = tenants
        .into_iter()
        .map(|tenant| {
            let rate = rates.iter().find(|r| r.tenant == tenant);
            let limit = rate.and_then(|r| r.limit.as_ref()).or(default_rate);
            let own = report.tenant_streams.iter().find(|s| s.tenant == tenant);
            let reading = super::history::Reading {
                backlog: report
                    .tenant_backlog
                    .iter()
                    .filter(|b| b.tenant == tenant)
                    .map(|b| b.messages)
                    .sum::<u64>()
                    + own.map_or(0, |s| s.messages),
                dlq: report
                    .tenant_dlq
                    .iter()
                    .find(|d| d.tenant == tenant)
                    .map_or(0, |d| d.entries),
                accepted: own.map_or(0, |s| s.accepted),
            };
            let health = history.health(&tenant);
            TenantRow {
                rate: String::new(),
                limit: limit.map_or("-".to_owned(), |l| format!("{}/s", l.rate_per_sec)),
                backlog: reading.backlog,
                quota_pct: own.map_or(0.0, |s| (s.fill_pct * 10.0).round() / 10.0),
                admission: match rate.and_then(|r| r.pressure.as_ref()).map(|p| p.admission) {
                    _ if history.disabled(&tenant) => "disabled",
                    Some(Admission::Closed) => "closed",
                    _ => "open",
                },
                dlq: reading.dlq,
                dlq_inflow: String::new(),
                destinations: health.describe(),
                destinations_ok: health.failing == 0 && health.disabled == 0,
                charts: super::history::Charts::default(),
                reading,
                tenant,
            }
        })
        .collect();
    // Rates against the samples before this one, then every tenant's sample (whoever reads),
    // then each row's charts.
    for row in &mut rows {
        (row.rate, row.dlq_inflow) = match history.rates(&row.tenant, at, row.reading) {
            Some((rate, inflow)) => (format!("{rate}/s"), format!("{inflow}/min")),
            None => ("-".to_owned(), "-".to_owned()),
        };
    }
    history.record(
        at,
        rows.iter()
            .map(|r| (r.tenant.clone(), r.reading))
            .collect::<Vec<_>>(),
    );
    // A portal sees its own tenant's row alone (every tenant is sampled above).
    if let Some(own) = who.tenant() {
        rows.retain(|r| r.tenant == own.as_str());
    }
    for row in &mut rows {
        row.charts = history.charts(&row.tenant, at);
    }
    Ok(rows)
}

/// `GET /ui/overview`.
pub async fn overview(State(state): State<ConsoleState>, headers: HeaderMap) -> Response {
    let session = match session(&state, &headers).await {
        Ok(s) => s,
        Err(to_login) => return to_login,
    };
    let rows = match overview_rows(&state, &session.who).await {
        Ok(rows) => rows,
        Err(error) => {
            return message(
                &state,
                Some(&session),
                StatusCode::SERVICE_UNAVAILABLE,
                "Unavailable",
                &format!("Reading the deployment failed: {error}"),
            );
        }
    };
    let mut context = base(&state, &session);
    context.insert("rows".into(), json!(rows));
    page(
        &state,
        StatusCode::OK,
        "overview.html",
        Value::Object(context),
    )
}

/// An event stream that ends on shutdown, and as soon as its session does (logged out,
/// expired, its tenant disabled: checked before every event), with keep-alives; at most
/// [`super::MAX_LIVE`] streams are open at once (`503` past them).
fn live(
    state: &ConsoleState,
    headers: &HeaderMap,
    events: impl Stream<Item = Result<Event, Infallible>> + Send + 'static,
) -> Response {
    let Ok(permit) = state.console.live_slots.clone().try_acquire_owned() else {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            "too many live streams open",
        )
            .into_response();
    };
    let cookie = cookie(headers, SESSION_COOKIE).unwrap_or_default();
    let checker = state.clone();
    let events = events.take_while(move |_| {
        let (state, cookie) = (checker.clone(), cookie.clone());
        async move { live_session(&state, &cookie).await.is_some() }
    });
    let stop = state.console.stop.clone().cancelled_owned();
    let events = events.take_until(stop).map(move |event| {
        // The slot is held as long as the stream is.
        let _held = &permit;
        event
    });
    let mut response = Sse::new(events)
        .keep_alive(KeepAlive::default())
        .into_response();
    response
        .headers_mut()
        .insert("x-accel-buffering", HeaderValue::from_static("no"));
    response
}

/// `GET /ui/overview/live`: the overview's rows every 2 s (event `tenants`).
pub async fn overview_live(State(state): State<ConsoleState>, headers: HeaderMap) -> Response {
    let session = match session(&state, &headers).await {
        Ok(s) => s,
        Err(_) => return StatusCode::UNAUTHORIZED.into_response(),
    };
    let inner = state.clone();
    let events = futures::stream::unfold(true, move |first| {
        let state = inner.clone();
        let who = session.who.clone();
        async move {
            if !first {
                tokio::time::sleep(OVERVIEW_EVERY).await;
            }
            let event = match overview_rows(&state, &who).await {
                Ok(rows) => Event::default()
                    .event("tenants")
                    .data(serde_json::to_string(&rows).unwrap_or_default()),
                Err(error) => Event::default().event("error").data(error),
            };
            Some((Ok(event), false))
        }
    });
    live(&state, &headers, events)
}

/// The DLQ browser's filters (query parameters; empty ones are no filter; another parameter is
/// refused).
#[derive(Debug, Default, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct DlqQuery {
    #[serde(default)]
    tenant: String,
    /// One destination's copies (a destination id, or `_route`).
    #[serde(default)]
    destination: String,
    #[serde(default)]
    stage: String,
    #[serde(default)]
    platform: String,
    #[serde(default)]
    code: String,
    #[serde(default)]
    since: String,
    #[serde(default)]
    until: String,
    /// Entries after this DLQ sequence (the page's cursor).
    #[serde(default)]
    after: u64,
}

impl DlqQuery {
    /// The selection, the caller's scope applied: a portal session's own tenant, whatever the
    /// query says (another tenant named is refused).
    fn selection(&self, who: &Who) -> Result<Selection, String> {
        let some = |s: &String| (!s.trim().is_empty()).then(|| s.trim().to_owned());
        let mut tenant = some(&self.tenant)
            .map(|t| t.parse::<TenantId>().map_err(|e| format!("tenant: {e}")))
            .transpose()?;
        if let Some(own) = who.tenant() {
            if tenant.as_ref().is_some_and(|t| t != own) {
                return Err("this portal shows its own tenant only".to_owned());
            }
            tenant = Some(own.clone());
        }
        Ok(Selection {
            tenant,
            stage: some(&self.stage)
                .map(|s| s.parse::<Stage>().map_err(|e| format!("stage: {e}")))
                .transpose()?,
            platform: some(&self.platform)
                .map(|p| {
                    p.parse::<PlatformId>()
                        .map_err(|e| format!("platform: {e}"))
                })
                .transpose()?,
            code: some(&self.code)
                .map(|c| crate::parse::dlq_code(&c))
                .transpose()?,
            destination: some(&self.destination)
                .map(|d| d.parse::<switchyard_envelope::Destination>())
                .transpose()
                .map_err(|e| format!("destination: {e}"))?,
            since: some(&self.since)
                .map(|t| crate::parse::time(&t))
                .transpose()?,
            until: some(&self.until)
                .map(|t| crate::parse::time(&t))
                .transpose()?,
            ..Selection::default()
        })
        .and_then(|selection| selection.check_time_range().map(|()| selection))
    }

    /// The query string of these filters with another cursor.
    fn with_after(&self, after: u64) -> String {
        let mut q = self.clone();
        q.after = after;
        query_string(&q)
    }
}

/// `a=1&b=2` of the non-empty filters.
fn query_string(q: &DlqQuery) -> String {
    let pairs = [
        ("tenant", q.tenant.as_str()),
        ("stage", q.stage.as_str()),
        ("platform", q.platform.as_str()),
        ("destination", q.destination.as_str()),
        ("code", q.code.as_str()),
        ("since", q.since.as_str()),
        ("until", q.until.as_str()),
    ];
    let mut out: Vec<String> = pairs
        .iter()
        .filter(|(_, v)| !v.trim().is_empty())
        .map(|(k, v)| {
            format!(
                "{k}={}",
                url::form_urlencoded::byte_serialize(v.as_bytes()).collect::<String>()
            )
        })
        .collect();
    if q.after > 0 {
        out.push(format!("after={}", q.after));
    }
    out.join("&")
}

/// One entry's row in the DLQ table (and in the live tail's events).
#[derive(Debug, Serialize)]
struct EntryRow {
    seq: u64,
    stored_at: String,
    tenant: String,
    stage: String,
    platform: String,
    code: String,
    attempts: u32,
    reason: String,
}

fn row_of(entry: &switchyard_dlq::DlqEntry) -> EntryRow {
    let reason: String = entry.record.reason.chars().take(160).collect();
    EntryRow {
        seq: entry.seq,
        stored_at: switchyard_dlq_ops::show_time(entry.stored_at),
        tenant: entry
            .record
            .tenant
            .as_ref()
            .map_or("_".to_owned(), ToString::to_string),
        stage: entry.record.stage.to_string(),
        platform: entry
            .record
            .platform
            .as_ref()
            .map_or("-".to_owned(), ToString::to_string),
        code: entry.record.code.to_string(),
        attempts: entry.record.attempts,
        reason,
    }
}

/// The most DLQ messages one page reads to fill itself: with a filter the subjects cannot
/// express (a code, a time range), a page that found too few in this many ends early with a
/// cursor to read on from, so no request reads the whole stream.
const SCAN_LIMIT: usize = 5_000;

/// A page of entries.
struct Found {
    /// The entries, oldest first.
    rows: Vec<EntryRow>,
    /// Whether more may follow (matching entries stored, or the scan stopped early).
    more: bool,
    /// Where the next page starts reading: the last sequence read.
    cursor: u64,
}

/// Up to `limit` entries the selection matches after DLQ sequence `after`, oldest first,
/// reading from `after + 1` on and at most [`SCAN_LIMIT`] messages (never the whole stream).
async fn entries_after(
    reader: &DlqReader,
    selection: &Selection,
    after: u64,
    limit: usize,
) -> Result<Found, String> {
    let start = if after == 0 {
        selection.start()
    } else if after == u64::MAX {
        // Nothing can follow the last sequence there is.
        return Ok(Found {
            rows: Vec::new(),
            more: false,
            cursor: after,
        });
    } else {
        async_nats::jetstream::consumer::DeliverPolicy::ByStartSequence {
            start_sequence: after + 1,
        }
    };
    let mut read = reader.catch_up(selection.subject_filter(reader.namespace()), start);
    let mut rows = Vec::new();
    let (mut scanned, mut cursor) = (0, after);
    while let Some((_, delivered)) = read.next().await.map_err(|e| e.to_string())? {
        scanned += 1;
        cursor = delivered.seq;
        if let Ok(entry) = &delivered.entry
            && selection.matches(entry)
        {
            rows.push(row_of(entry));
        }
        if rows.len() >= limit || scanned >= SCAN_LIMIT {
            return Ok(Found {
                rows,
                more: delivered.pending > 0,
                cursor,
            });
        }
    }
    Ok(Found {
        rows,
        more: false,
        cursor,
    })
}

/// What the DLQ page and its export read: the session, its filters, their selection within
/// the session's scope, and the DLQ reader.
struct DlqRead {
    session: Session,
    query: DlqQuery,
    selection: Selection,
    reader: DlqReader,
}

/// The session (else the login form), the filters (malformed, unknown or out of scope: a
/// `400` "Bad filter" page) and the reader (`503` when the DLQ cannot be opened).
#[allow(clippy::result_large_err, reason = "the error is the answer itself")]
async fn dlq_read(
    state: &ConsoleState,
    headers: &HeaderMap,
    query: Result<Query<DlqQuery>, QueryRejection>,
) -> Result<DlqRead, Response> {
    let session = session(state, headers).await?;
    let bad = |text: &str| {
        message(
            state,
            Some(&session),
            StatusCode::BAD_REQUEST,
            "Bad filter",
            text,
        )
    };
    let query = match query {
        Ok(Query(query)) => query,
        Err(rejected) => return Err(bad(&rejected.body_text())),
    };
    let selection = query.selection(&session.who).map_err(|e| bad(&e))?;
    let reader = match state.api.dlq().await {
        Ok(reader) => reader,
        Err(e) => {
            return Err(message(
                state,
                Some(&session),
                StatusCode::SERVICE_UNAVAILABLE,
                "Unavailable",
                &e.message,
            ));
        }
    };
    Ok(DlqRead {
        session,
        query,
        selection,
        reader,
    })
}

/// `GET /ui/dlq`: a page of entries after the cursor, the filters, and the live tail on the
/// last page.
pub async fn dlq(
    State(state): State<ConsoleState>,
    headers: HeaderMap,
    query: Result<Query<DlqQuery>, QueryRejection>,
) -> Response {
    let DlqRead {
        session,
        query,
        selection,
        reader,
    } = match dlq_read(&state, &headers, query).await {
        Ok(read) => read,
        Err(answer) => return answer,
    };
    let Found { rows, more, cursor } =
        match entries_after(&reader, &selection, query.after, PAGE).await {
            Ok(found) => found,
            Err(error) => {
                return message(
                    &state,
                    Some(&session),
                    StatusCode::SERVICE_UNAVAILABLE,
                    "Unavailable",
                    &error,
                );
            }
        };
    let last = cursor;
    let mut context = base(&state, &session);
    context.insert("rows".into(), json!(rows));
    context.insert("filters".into(), json!(query));
    context.insert(
        "tenant_fixed".into(),
        session.who.tenant().map(ToString::to_string).into(),
    );
    context.insert(
        "next".into(),
        more.then(|| format!("/ui/dlq?{}", query.with_after(last)))
            .into(),
    );
    context.insert(
        "first".into(),
        (query.after > 0)
            .then(|| format!("/ui/dlq?{}", query.with_after(0)))
            .into(),
    );
    context.insert(
        "live".into(),
        (!more)
            .then(|| format!("/ui/dlq/live?{}", query.with_after(last)))
            .into(),
    );
    context.insert(
        "replay_tenant".into(),
        selection.tenant.as_ref().map(ToString::to_string).into(),
    );
    context.insert("codes".into(), json!(code_names()));
    context.insert("cursor".into(), cursor.into());
    context.insert(
        "export".into(),
        format!("/ui/dlq/export?{}", query.with_after(0)).into(),
    );
    page(&state, StatusCode::OK, "dlq.html", Value::Object(context))
}

/// `GET /ui/dlq/export`: every entry the filters select (within the session's scope) as the
/// NDJSON of `switchyard dlq export`, streamed ([`crate::api::dlq::export`]).
pub async fn dlq_export(
    State(state): State<ConsoleState>,
    headers: HeaderMap,
    query: Result<Query<DlqQuery>, QueryRejection>,
) -> Response {
    let DlqRead {
        selection, reader, ..
    } = match dlq_read(&state, &headers, query).await {
        Ok(read) => read,
        Err(answer) => return answer,
    };
    let name = match &selection.tenant {
        Some(tenant) => format!("dlq-{tenant}.ndjson"),
        None => "dlq.ndjson".to_owned(),
    };
    crate::api::dlq::export(&reader, selection, &name)
}

fn code_names() -> Vec<&'static str> {
    switchyard_dlq::DlqCode::ALL
        .iter()
        .map(|c| c.as_str())
        .collect()
}

/// `GET /ui/dlq/live`: entries stored after the cursor as they come (event `entry`, one row
/// each).
pub async fn dlq_live(
    State(state): State<ConsoleState>,
    headers: HeaderMap,
    query: Result<Query<DlqQuery>, QueryRejection>,
) -> Response {
    let Ok(session) = session(&state, &headers).await else {
        return StatusCode::UNAUTHORIZED.into_response();
    };
    let Ok(Query(query)) = query else {
        return StatusCode::BAD_REQUEST.into_response();
    };
    let Ok(selection) = query.selection(&session.who) else {
        return StatusCode::BAD_REQUEST.into_response();
    };
    let Ok(reader) = state.api.dlq().await else {
        return StatusCode::SERVICE_UNAVAILABLE.into_response();
    };
    let events = futures::stream::unfold(
        (reader, selection, query.after, Vec::<Event>::new()),
        |(reader, selection, mut after, mut queued)| async move {
            loop {
                if let Some(event) = queued.pop() {
                    return Some((Ok(event), (reader, selection, after, queued)));
                }
                tokio::time::sleep(TAIL_EVERY).await;
                if let Ok(found) = entries_after(&reader, &selection, after, PAGE).await {
                    for row in found.rows.iter().rev() {
                        queued.push(
                            Event::default()
                                .event("entry")
                                .id(row.seq.to_string())
                                .data(serde_json::to_string(row).unwrap_or_default()),
                        );
                    }
                    after = found.cursor;
                }
            }
        },
    );
    live(&state, &headers, events)
}

/// The payload of an entry's JSON view in the forms the page shows.
fn payload_forms(view: &Value) -> Value {
    let payload = &view["payload"];
    let bytes: Vec<u8> = match payload["encoding"].as_str() {
        Some("utf8") => payload["data"]
            .as_str()
            .unwrap_or_default()
            .as_bytes()
            .to_vec(),
        Some("base64") => {
            use base64::Engine;
            base64::engine::general_purpose::STANDARD
                .decode(payload["data"].as_str().unwrap_or_default())
                .unwrap_or_default()
        }
        _ => Vec::new(),
    };
    let text = std::str::from_utf8(&bytes).ok().map(str::to_owned);
    let pretty = text
        .as_deref()
        .and_then(|t| serde_json::from_str::<Value>(t).ok())
        .and_then(|v| serde_json::to_string_pretty(&v).ok());
    let hex: Vec<String> = bytes[..bytes.len().min(HEX_BYTES)]
        .chunks(16)
        .enumerate()
        .map(|(i, chunk)| {
            let hex: Vec<String> = chunk.iter().map(|b| format!("{b:02x}")).collect();
            format!("{:08x}  {}", i * 16, hex.join(" "))
        })
        .collect();
    json!({
        "bytes": bytes.len(),
        "text": text,
        "json": pretty,
        "hex": hex.join("\n"),
        "hex_cut": bytes.len() > HEX_BYTES,
    })
}

/// `GET /ui/dlq/{seq}`: one entry.
pub async fn entry(
    State(state): State<ConsoleState>,
    headers: HeaderMap,
    Path(seq): Path<String>,
) -> Response {
    let session = match session(&state, &headers).await {
        Ok(s) => s,
        Err(to_login) => return to_login,
    };
    let not_found = || {
        message(
            &state,
            Some(&session),
            StatusCode::NOT_FOUND,
            "Not found",
            "No such DLQ entry (it may have been replayed or purged).",
        )
    };
    let Ok(seq) = seq.parse::<u64>() else {
        return not_found();
    };
    let Ok(reader) = state.api.dlq().await else {
        return message(
            &state,
            Some(&session),
            StatusCode::SERVICE_UNAVAILABLE,
            "Unavailable",
            "the DLQ cannot be read now",
        );
    };
    let Ok(Some(message_)) = reader.get(seq).await else {
        return not_found();
    };
    let Ok(entry) = reader.entry_of(&message_) else {
        return not_found();
    };
    if let Some(own) = session.who.tenant()
        && entry.record.tenant.as_ref() != Some(own)
    {
        return not_found();
    }
    let keys = state
        .api
        .data_keys
        .as_deref()
        .map(|(store, ring)| (store, ring));
    let sealed = show::unseal(&entry, keys).await;
    let Ok(view) = show::json_view(&entry, &sealed) else {
        return not_found();
    };
    let mut context = base(&state, &session);
    context.insert("payload".into(), payload_forms(&view));
    context.insert("row".into(), json!(row_of(&entry)));
    context.insert("entry".into(), view);
    context.insert(
        "replayable".into(),
        switchyard_dlq_ops::plan_replay(reader.namespace(), &entry)
            .is_ok()
            .into(),
    );
    page(&state, StatusCode::OK, "entry.html", Value::Object(context))
}

/// The replay form: a tenant's entries, listed (`seq`) or by code, a dry run until confirmed.
#[derive(Debug, Deserialize)]
pub struct ReplayForm {
    csrf: String,
    tenant: String,
    #[serde(default)]
    seq: Option<u64>,
    #[serde(default)]
    code: String,
    /// One destination's copies (a destination id, or `_route`).
    #[serde(default)]
    destination: String,
    #[serde(default)]
    rate: Option<u32>,
    /// `yes` once the operator saw the dry run.
    #[serde(default)]
    confirm: String,
    /// The dry run's highest sequence: a confirmed replay takes nothing stored after it.
    #[serde(default)]
    through: Option<u64>,
}

/// `POST /ui/dlq/replay`: without `confirm`, what would be replayed; with it, the job.
pub async fn replay(
    State(state): State<ConsoleState>,
    headers: HeaderMap,
    Form(form): Form<ReplayForm>,
) -> Response {
    let session = match form_session(&state, &headers, &form.csrf).await {
        Ok(s) => s,
        Err(answer) => return answer,
    };
    let refuse =
        |status, text: &str| message(&state, Some(&session), status, "Replay refused", text);
    let tenant = match form_tenant(&state, &session, &form.tenant, "Replay") {
        Ok(t) => t,
        Err(refused) => return refused,
    };
    let code = (!form.code.trim().is_empty()).then(|| form.code.trim().to_owned());
    let destination =
        (!form.destination.trim().is_empty()).then(|| form.destination.trim().to_owned());
    let selection =
        match crate::api::dlq::dlq_selection(&tenant, code.as_ref(), destination.as_ref()) {
            Ok(s) => s,
            Err(e) => return refuse(StatusCode::BAD_REQUEST, &e.message),
        };
    let listed: Vec<u64> = form.seq.into_iter().collect();
    let reader = match state.api.dlq().await {
        Ok(r) => r,
        Err(e) => return refuse(StatusCode::SERVICE_UNAVAILABLE, &e.message),
    };
    let matched = match matching(&reader, &tenant, &selection, &listed, 10_001).await {
        Ok(m) => m,
        Err(e) => return refuse(StatusCode::SERVICE_UNAVAILABLE, &e.message),
    };
    let through = matched.seqs.iter().copied().max().unwrap_or(0);
    if form.confirm != "yes" {
        let mut context = base(&state, &session);
        context.insert("tenant".into(), tenant.to_string().into());
        context.insert("code".into(), code.clone().into());
        context.insert("destination".into(), destination.clone().into());
        context.insert("seq".into(), form.seq.into());
        context.insert("rate".into(), form.rate.unwrap_or(100).into());
        context.insert("matched".into(), matched.seqs.len().into());
        context.insert(
            "shown".into(),
            json!(matched.seqs.iter().take(20).collect::<Vec<_>>()),
        );
        context.insert("through".into(), through.into());
        return page(
            &state,
            StatusCode::OK,
            "replay.html",
            Value::Object(context),
        );
    }
    // Confirmed: exactly what the dry run saw, nothing stored after it; and always as a list
    // (an empty list would mean every entry of the tenant to the API).
    let seqs: Vec<u64> = matched
        .seqs
        .into_iter()
        .filter(|s| form.through.is_some_and(|t| *s <= t))
        .collect();
    if seqs.is_empty() {
        return refuse(
            StatusCode::UNPROCESSABLE_ENTITY,
            "Nothing matches any more (replayed or purged meanwhile): no job was started.",
        );
    }
    let request = ReplayRequest {
        seqs,
        rate: form.rate,
        ..ReplayRequest::default()
    };
    match start_replay(&state.api, &tenant, request).await {
        Ok(job) => see_other(&format!("/ui/jobs/{}", job.id)),
        Err(e) => refuse(e.status, &e.message),
    }
}

/// A job as its page and live stream show it.
fn job_json(job: &JobRecord) -> Value {
    let p = &job.progress;
    let total = job.spec.total.max(1);
    json!({
        "id": job.id,
        "state": job.state.to_string(),
        "finished": job.state.is_finished(),
        "total": job.spec.total,
        "handled": p.handled,
        "replayed": p.replayed,
        "kept": p.kept.values().sum::<u64>(),
        "kept_by": p.kept,
        "missing": p.missing,
        "pct": (p.handled.min(job.spec.total) * 100 / total),
        "selection": job.spec.selection.describe(),
        "rate": job.spec.rate,
        "error": job.error,
    })
}

/// Whether `id` has the shape of a job id (a UUID: hex digits and dashes).
fn job_id_ok(id: &str) -> bool {
    !id.is_empty() && id.len() <= 64 && id.bytes().all(|b| b.is_ascii_hexdigit() || b == b'-')
}

/// The job, when the session may see it.
async fn visible_job(state: &ConsoleState, who: &Who, id: &str) -> Option<JobRecord> {
    if !job_id_ok(id) {
        return None;
    }
    let principal = principal_of(who);
    match state.api.jobs.get(id).await {
        Ok(Some((job, _))) if visible(&principal, &job) => Some(job),
        _ => None,
    }
}

/// `GET /ui/jobs/{job}`.
pub async fn job(
    State(state): State<ConsoleState>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Response {
    let session = match session(&state, &headers).await {
        Ok(s) => s,
        Err(to_login) => return to_login,
    };
    let Some(job) = visible_job(&state, &session.who, &id).await else {
        return message(
            &state,
            Some(&session),
            StatusCode::NOT_FOUND,
            "Not found",
            "No such job.",
        );
    };
    let mut context = base(&state, &session);
    context.insert("job".into(), job_json(&job));
    page(&state, StatusCode::OK, "job.html", Value::Object(context))
}

/// `GET /ui/jobs/{job}/live`: the job every 500 ms (event `job`) until it is finished.
pub async fn job_live(
    State(state): State<ConsoleState>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Response {
    let Ok(session) = session(&state, &headers).await else {
        return StatusCode::UNAUTHORIZED.into_response();
    };
    if visible_job(&state, &session.who, &id).await.is_none() {
        return StatusCode::NOT_FOUND.into_response();
    }
    let inner = state.clone();
    let events = futures::stream::unfold(Some(()), move |go| {
        let state = inner.clone();
        let who = session.who.clone();
        let id = id.clone();
        async move {
            go?;
            tokio::time::sleep(JOB_EVERY).await;
            let job = visible_job(&state, &who, &id).await?;
            let finished = job.state.is_finished();
            let event = Event::default()
                .event("job")
                .data(job_json(&job).to_string());
            Some((Ok(event), (!finished).then_some(())))
        }
    });
    live(&state, &headers, events)
}

/// `POST /ui/jobs/{job}/cancel`.
pub async fn cancel(
    State(state): State<ConsoleState>,
    headers: HeaderMap,
    Path(id): Path<String>,
    Form(form): Form<CsrfForm>,
) -> Response {
    let session = match form_session(&state, &headers, &form.csrf).await {
        Ok(s) => s,
        Err(answer) => return answer,
    };
    let principal = principal_of(&session.who);
    if !job_id_ok(&id) {
        return message(
            &state,
            Some(&session),
            StatusCode::NOT_FOUND,
            "Not found",
            "No such job.",
        );
    }
    let refused =
        |status, text: &str| message(&state, Some(&session), status, "Cancel refused", text);
    match jobs::cancel_job(&state.api.jobs, &id, |record| visible(&principal, record)).await {
        Ok(jobs::Cancelled::Cancelled(_)) => see_other(&format!("/ui/jobs/{id}")),
        Ok(jobs::Cancelled::NoSuchJob) => refused(StatusCode::NOT_FOUND, "No such job."),
        Ok(jobs::Cancelled::Finished(_)) => {
            refused(StatusCode::CONFLICT, "The job has ended already.")
        }
        Ok(jobs::Cancelled::KeptChanging) => refused(
            StatusCode::CONFLICT,
            "The job kept changing while it was being cancelled; try again.",
        ),
        Err(error) => refused(StatusCode::SERVICE_UNAVAILABLE, &error.to_string()),
    }
}

/// The principal a session acts as (the API's scope rules).
fn principal_of(who: &Who) -> crate::api::auth::Principal {
    match who {
        Who::Operator => crate::api::auth::Principal::Operator,
        Who::Tenant(t) => crate::api::auth::Principal::Tenant(t.clone()),
    }
}

/// One destination's row.
#[derive(Debug, Serialize)]
struct DestinationRow {
    tenant: String,
    destination: String,
    kind: &'static str,
    target: String,
    state: String,
    enabled: bool,
    breaker: String,
    rate: String,
    /// Whether this session may enable or disable it (a portal may not enable what an
    /// operator disabled).
    switchable: bool,
    /// Whether it delivers over HTTP (it has a signing secret to rotate).
    webhook: bool,
    /// Its recent attempts: `18 of 20 delivered`, or empty when none is in the tenant's last
    /// [`RECENT_ATTEMPTS`].
    recent: String,
    /// Its last attempt: `<time> delivered (200)`.
    last: String,
    /// Whether its last attempt delivered.
    last_ok: bool,
}

/// How many of a tenant's most recent attempts the destinations page summarises.
const RECENT_ATTEMPTS: usize = 200;

/// The most tenants whose recent attempts one destinations page reads.
const RECENT_TENANTS: usize = 20;

/// A page narrowed to one tenant (`?tenant=`).
#[derive(Debug, Default, Deserialize)]
pub struct TenantQuery {
    #[serde(default)]
    tenant: Option<String>,
}

/// One destination's summary of its tenant's recent attempts (oldest first): how many
/// delivered, and the last one.
fn recent_of(attempts: &[Value], destination: &str) -> (String, String, bool) {
    let mine: Vec<&Value> = attempts
        .iter()
        .filter(|a| a.get("destination").and_then(Value::as_str) == Some(destination))
        .collect();
    let Some(last) = mine.last() else {
        return (String::new(), String::new(), false);
    };
    let delivered = |a: &Value| a.get("result").and_then(Value::as_str) == Some("delivered");
    let ok = mine.iter().filter(|a| delivered(a)).count();
    let field = |name: &str| {
        last.get(name)
            .map(|v| v.as_str().map_or_else(|| v.to_string(), str::to_owned))
            .unwrap_or_default()
    };
    let status = match last.get("status") {
        Some(Value::Number(n)) => format!(" ({n})"),
        _ => String::new(),
    };
    (
        format!("{ok} of {} delivered", mine.len()),
        format!("{} {}{status}", field("at"), field("result")),
        delivered(last),
    )
}

/// `GET /ui/destinations`: every destination the session may see, its state, circuit breaker
/// and rate limit, with enable / disable.
pub async fn destinations(
    State(state): State<ConsoleState>,
    headers: HeaderMap,
    Query(query): Query<TenantQuery>,
) -> Response {
    let session = match session(&state, &headers).await {
        Ok(s) => s,
        Err(to_login) => return to_login,
    };
    // The operator may narrow the page to one tenant; a portal sees its own anyway.
    let named = match filter_tenant(&state, &session, query.tenant.as_deref()) {
        Ok(named) => named,
        Err(refused) => return refused,
    };
    let unavailable = |e: String| {
        message(
            &state,
            Some(&session),
            StatusCode::SERVICE_UNAVAILABLE,
            "Unavailable",
            &e,
        )
    };
    let filter = match &named {
        Some(t) => switchyard_keys::kv::tenant_filter(t),
        None => ">".to_owned(),
    };
    let listed = match state.api.destinations.list(&filter).await {
        Ok(listed) => listed,
        Err(e) => return unavailable(e.to_string()),
    };
    let breakers =
        match crate::commands::destinations::breakers(&state.api.js, &state.api.topology).await {
            Ok(b) => b,
            Err(e) => return unavailable(format!("{e:#}")),
        };
    let now = OffsetDateTime::now_utc();
    let mut rows = Vec::new();
    // Each tenant's recent attempts, read once for all its destinations (one read of the
    // delivery log per tenant: past RECENT_TENANTS tenants, only once narrowed to one).
    let tenants: BTreeSet<&TenantId> = listed.iter().map(|(key, _)| &key.tenant).collect();
    let read_recent = tenants.len() <= RECENT_TENANTS;
    let mut recent: BTreeMap<TenantId, Vec<Value>> = BTreeMap::new();
    for (key, record) in listed {
        let Ok(record) = record else { continue };
        if read_recent && !recent.contains_key(&key.tenant) {
            let query = std::collections::HashMap::from([(
                "limit".to_owned(),
                RECENT_ATTEMPTS.to_string(),
            )]);
            // An unreadable delivery log leaves the column empty, not the page.
            let attempts = crate::api::handlers::attempts_of(&state.api, &key.tenant, &query)
                .await
                .unwrap_or_default();
            recent.insert(key.tenant.clone(), attempts);
        }
        let (summary, last, last_ok) = recent_of(
            recent.get(&key.tenant).map_or(&[][..], Vec::as_slice),
            key.destination.as_str(),
        );
        let breaker = breakers
            .get(&switchyard_keys::BreakerKey::Destination(key.clone()))
            .await
            .ok()
            .flatten();
        let (kind, target) = record.redacted().target.describe();
        rows.push(DestinationRow {
            tenant: key.tenant.to_string(),
            destination: key.destination.to_string(),
            kind,
            target,
            state: crate::commands::destinations::state(&record),
            enabled: record.disabled.is_none(),
            breaker: crate::commands::destinations::breaker_state(breaker.as_ref(), now),
            rate: record
                .rate_limit
                .as_ref()
                .map_or("-".to_owned(), |r| format!("{}/s", r.rate_per_sec)),
            switchable: session.who.tenant().is_none()
                || !record
                    .disabled
                    .as_ref()
                    .is_some_and(|d| d.by == switchyard_registry::DisabledBy::Operator),
            webhook: matches!(record.target, switchyard_registry::Route::Webhook(_)),
            recent: summary,
            last,
            last_ok,
        });
    }
    let mut context = base(&state, &session);
    context.insert("rows".into(), json!(rows));
    context.insert("read_recent".into(), read_recent.into());
    context.insert(
        "tenant".into(),
        named.as_ref().map(ToString::to_string).into(),
    );
    page(
        &state,
        StatusCode::OK,
        "destinations.html",
        Value::Object(context),
    )
}

/// `POST /ui/destinations/{tenant}/{destination}/{action}`: disable or enable.
pub async fn switch_destination(
    State(state): State<ConsoleState>,
    headers: HeaderMap,
    Path((tenant, destination, action)): Path<(String, String, String)>,
    Form(form): Form<CsrfForm>,
) -> Response {
    let session = match form_session(&state, &headers, &form.csrf).await {
        Ok(s) => s,
        Err(answer) => return answer,
    };
    let not_found = || no_destination(&state, &session);
    let Some(key) = form_destination(&session, &tenant, &destination) else {
        return not_found();
    };
    let principal = principal_of(&session.who);
    let disabled = match action.as_str() {
        "disable" => Some(switchyard_registry::Disabled {
            at: OffsetDateTime::now_utc(),
            by: match session.who {
                Who::Operator => switchyard_registry::DisabledBy::Operator,
                Who::Tenant(_) => switchyard_registry::DisabledBy::Tenant,
            },
            reason: "disabled in the console".to_owned(),
        }),
        "enable" => None,
        _ => return not_found(),
    };
    match crate::api::handlers::switch(&state.api, &principal, &key, disabled).await {
        Ok(_) => see_other("/ui/destinations"),
        Err(e) if e.status == StatusCode::NOT_FOUND => not_found(),
        Err(e) => message(&state, Some(&session), e.status, "Refused", &e.message),
    }
}

/// The destination a form's path names, when the session may act on it: a malformed id or
/// another tenant's destination from a portal is `None` (answered "not found", as an absent
/// one is, so a portal learns nothing of what exists elsewhere).
fn form_destination(
    session: &Session,
    tenant: &str,
    destination: &str,
) -> Option<switchyard_keys::DestinationKey> {
    let tenant = tenant.parse::<TenantId>().ok()?;
    let destination = destination.parse::<switchyard_keys::DestinationId>().ok()?;
    if session.who.tenant().is_some_and(|own| *own != tenant) {
        return None;
    }
    Some(switchyard_keys::DestinationKey {
        tenant,
        destination,
    })
}

/// The "no such destination" page.
fn no_destination(state: &ConsoleState, session: &Session) -> Response {
    message(
        state,
        Some(session),
        StatusCode::NOT_FOUND,
        "Not found",
        "No such destination.",
    )
}

/// The rotate-secret form: its CSRF token and the overlap (an age).
#[derive(Deserialize)]
pub struct RotateForm {
    csrf: String,
    #[serde(default)]
    overlap: String,
    /// `previous`: revoke every previous secret instead of rotating.
    #[serde(default)]
    revoke: String,
}

/// `POST /ui/destinations/{tenant}/{destination}/rotate-secret`: rotates to a generated secret
/// (the current one signing for the chosen overlap) and shows the new secret on this answer
/// alone (`no-store`; no page shows it again).
pub async fn rotate_destination_secret(
    State(state): State<ConsoleState>,
    headers: HeaderMap,
    Path((tenant, destination)): Path<(String, String)>,
    Form(form): Form<RotateForm>,
) -> Response {
    let session = match form_session(&state, &headers, &form.csrf).await {
        Ok(s) => s,
        Err(answer) => return answer,
    };
    let not_found = || no_destination(&state, &session);
    let Some(key) = form_destination(&session, &tenant, &destination) else {
        return not_found();
    };
    let request = if form.revoke == "previous" {
        crate::api::handlers::RotateRequest {
            rotate: Some(false),
            revoke_previous: true,
            ..Default::default()
        }
    } else {
        crate::api::handlers::RotateRequest {
            overlap: Some(form.overlap),
            ..Default::default()
        }
    };
    match crate::api::handlers::rotate_secret(
        &state.api,
        &principal_of(&session.who),
        &key,
        &request,
    )
    .await
    {
        Ok(answer) => {
            let mut context = base(&state, &session);
            context.insert("tenant".into(), key.tenant.to_string().into());
            context.insert("destination".into(), key.destination.to_string().into());
            context.insert("secret".into(), answer.secret.into());
            context.insert("signing".into(), answer.signing.into());
            page(
                &state,
                StatusCode::OK,
                "rotated.html",
                Value::Object(context),
            )
        }
        Err(e) if e.status == StatusCode::NOT_FOUND => not_found(),
        Err(e) => message(&state, Some(&session), e.status, "Refused", &e.message),
    }
}

/// Filters of the events feed.
#[derive(Debug, Default, Deserialize)]
pub struct EventsQuery {
    #[serde(default)]
    kind: String,
}

/// `GET /ui/events`: the operational events the session may see, newest first (the last 200).
pub async fn events(
    State(state): State<ConsoleState>,
    headers: HeaderMap,
    Query(query): Query<EventsQuery>,
) -> Response {
    let session = match session(&state, &headers).await {
        Ok(s) => s,
        Err(to_login) => return to_login,
    };
    let kind = match query.kind.trim() {
        "" => None,
        raw => match raw.parse::<switchyard_subjects::EventKind>() {
            Ok(kind) => Some(kind),
            Err(e) => {
                return message(
                    &state,
                    Some(&session),
                    StatusCode::BAD_REQUEST,
                    "Bad filter",
                    &e,
                );
            }
        },
    };
    let stream = match state
        .api
        .topology
        .open_stream(&state.api.js, switchyard_topology::StreamName::Events)
        .await
    {
        Ok((_, stream)) => stream,
        Err(e) => {
            return message(
                &state,
                Some(&session),
                StatusCode::SERVICE_UNAVAILABLE,
                "Unavailable",
                &e.to_string(),
            );
        }
    };
    let args = crate::commands::events::LsArgs {
        tenant: session.who.tenant().cloned(),
        kind,
        since: None,
        limit: 200,
    };
    let listed = match crate::commands::events::list(&stream, &state.api.topology, &args).await {
        Ok(listed) => listed,
        Err(e) => {
            return message(
                &state,
                Some(&session),
                StatusCode::SERVICE_UNAVAILABLE,
                "Unavailable",
                &format!("{e:#}"),
            );
        }
    };
    let rows: Vec<Value> = listed
        .iter()
        .rev()
        .map(|e| {
            json!({
                "at": switchyard_dlq_ops::show_time(e.event.at),
                "kind": e.event.kind,
                "tenant": e.event.tenant.clone().unwrap_or_else(|| "_".to_owned()),
                "about": e.event.about.clone().unwrap_or_default(),
                "source": e.event.source,
                "detail": e.event.detail,
            })
        })
        .collect();
    let mut context = base(&state, &session);
    context.insert("rows".into(), json!(rows));
    context.insert("kind".into(), query.kind.trim().into());
    context.insert(
        "kinds".into(),
        json!(
            switchyard_subjects::EventKind::ALL
                .iter()
                .map(|k| k.as_str())
                .collect::<Vec<_>>()
        ),
    );
    page(
        &state,
        StatusCode::OK,
        "events.html",
        Value::Object(context),
    )
}

/// The purge form: a tenant's entries by code, a dry run until the count is typed.
#[derive(Debug, Deserialize)]
pub struct PurgeForm {
    csrf: String,
    tenant: String,
    #[serde(default)]
    code: String,
    /// One destination's copies (a destination id, or `_route`).
    #[serde(default)]
    destination: String,
    /// The number the operator typed: what the dry run counted.
    #[serde(default)]
    confirm: String,
    /// The dry run's highest sequence.
    #[serde(default)]
    through: Option<u64>,
}

/// `POST /ui/dlq/purge`: without `confirm`, what would be deleted and a field to type its
/// count; with the count typed, the deletion of exactly those entries (the API's purge:
/// nothing deleted when the count differs now).
pub async fn purge(
    State(state): State<ConsoleState>,
    headers: HeaderMap,
    Form(form): Form<PurgeForm>,
) -> Response {
    let session = match form_session(&state, &headers, &form.csrf).await {
        Ok(s) => s,
        Err(answer) => return answer,
    };
    let refuse =
        |status, text: &str| message(&state, Some(&session), status, "Purge refused", text);
    let tenant = match form_tenant(&state, &session, &form.tenant, "Purge") {
        Ok(t) => t,
        Err(refused) => return refused,
    };
    let code = (!form.code.trim().is_empty()).then(|| form.code.trim().to_owned());
    let destination =
        (!form.destination.trim().is_empty()).then(|| form.destination.trim().to_owned());
    let typed = form.confirm.trim();
    let request = if typed.is_empty() {
        crate::api::dlq::PurgeRequest {
            code: code.clone(),
            destination: destination.clone(),
            dry_run: true,
            ..Default::default()
        }
    } else {
        let Ok(confirm) = typed.parse::<u64>() else {
            return refuse(
                StatusCode::BAD_REQUEST,
                "Type the number of entries to delete.",
            );
        };
        crate::api::dlq::PurgeRequest {
            code: code.clone(),
            destination: destination.clone(),
            confirm: Some(confirm),
            through: Some(form.through.unwrap_or(0)),
            ..Default::default()
        }
    };
    let dry_run = request.dry_run;
    let result = match crate::api::dlq::purge_entries(&state.api, &tenant, request).await {
        Ok(result) => result,
        Err(e) => return refuse(e.status, &e.message),
    };
    let mut context = base(&state, &session);
    context.insert("tenant".into(), tenant.to_string().into());
    context.insert("code".into(), code.into());
    context.insert("destination".into(), destination.into());
    context.insert("dry_run".into(), dry_run.into());
    context.insert("matched".into(), result.matched.into());
    context.insert("through".into(), result.through.into());
    context.insert(
        "shown".into(),
        json!(result.selected.iter().take(20).collect::<Vec<_>>()),
    );
    context.insert("removed".into(), result.removed.len().into());
    page(&state, StatusCode::OK, "purge.html", Value::Object(context))
}

/// `GET /ui/attempts?tenant=…&result=…&destination=…&message=…&since=…&until=…`: the delivery
/// log of one tenant (a portal's own), the most recent 200 attempts that match, newest first.
pub async fn attempts(
    State(state): State<ConsoleState>,
    headers: HeaderMap,
    Query(query): Query<std::collections::HashMap<String, String>>,
) -> Response {
    let session = match session(&state, &headers).await {
        Ok(s) => s,
        Err(to_login) => return to_login,
    };
    let mut query: std::collections::HashMap<String, String> = query
        .into_iter()
        .filter(|(_, v)| !v.trim().is_empty())
        .map(|(k, v)| (k, v.trim().to_owned()))
        .collect();
    let tenant = match filter_tenant(&state, &session, query.remove("tenant").as_deref()) {
        Ok(tenant) => tenant,
        Err(refused) => return refused,
    };
    let mut context = base(&state, &session);
    let mut shown: Vec<Value> = Vec::new();
    if let Some(tenant) = &tenant {
        query.insert("limit".into(), "200".into());
        match crate::api::handlers::attempts_of(&state.api, tenant, &query).await {
            Ok(mut listed) => {
                listed.reverse();
                shown = listed;
            }
            Err(e) => {
                return message(&state, Some(&session), e.status, "Bad filter", &e.message);
            }
        }
    }
    query.remove("limit");
    context.insert("rows".into(), json!(shown));
    context.insert("filters".into(), json!(query));
    context.insert(
        "tenant".into(),
        tenant.as_ref().map(ToString::to_string).into(),
    );
    context.insert(
        "tenant_fixed".into(),
        session.who.tenant().map(ToString::to_string).into(),
    );
    page(
        &state,
        StatusCode::OK,
        "attempts.html",
        Value::Object(context),
    )
}

/// Samples every tenant for the overview's charts every [`super::history::EVERY`] seconds until
/// shutdown (what `switchyard api serve` runs, so the last hour is there before anyone looks).
pub async fn sample_history(state: ConsoleState) {
    let every = Duration::from_secs(super::history::EVERY.unsigned_abs());
    let stop = state.console.stop.clone();
    loop {
        if let Err(error) = overview_rows(&state, &Who::Operator).await {
            tracing::debug!(%error, "sampling the overview failed; tried again");
        }
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(every) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_destinations_recent_attempts_are_counted_apart_from_its_tenants_others() {
        let attempts = [
            json!({"destination": "crm", "result": "retryable", "status": 503, "at": "t1"}),
            json!({"destination": "erp", "result": "delivered", "status": 200, "at": "t2"}),
            json!({"destination": "crm", "result": "delivered", "status": 200, "at": "t3"}),
        ];
        assert_eq!(
            recent_of(&attempts, "crm"),
            (
                "1 of 2 delivered".to_owned(),
                "t3 delivered (200)".to_owned(),
                true
            )
        );
        let failed = [json!({"destination": "crm", "result": "permanent", "at": "t4"})];
        assert_eq!(
            recent_of(&failed, "crm"),
            (
                "0 of 1 delivered".to_owned(),
                "t4 permanent".to_owned(),
                false
            )
        );
        assert_eq!(
            recent_of(&attempts, "nope"),
            (String::new(), String::new(), false)
        );
    }
}
