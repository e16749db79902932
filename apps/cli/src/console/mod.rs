//! The web console: server-rendered pages under `/ui` of the management API's server
//! (`switchyard api serve`), for the operator (logged in with the operator token) and, through
//! a signed link, for one tenant (its portal).
//!
//! - [`session`]: signed session cookies, CSRF tokens, portal links.
//! - [`logouts`]: logouts every replica honours (`session_ended` events).
//! - [`history`]: the overview's last hour and rates.
//! - [`pages`]: the pages — login and logout, the overview (every tenant's accepted rate, rate
//!   limit, backlog, quota fill, admission, DLQ entries and inflow, destinations' health,
//!   updated live, with last-hour charts), the DLQ browser (the CLI's filters, pages of
//!   [`PAGE`] entries by sequence, live tail, export), an entry (record, headers, payload as
//!   text, pretty JSON and hex, attempt history), replay (a dry run first, then a durable job
//!   run by the dlq service, its progress live, cancellable), purge, destinations (recent
//!   attempts, disable / enable, rotate secret), the delivery log, the events feed, and the
//!   portal link exchange.
//! - `templates/`: the pages' HTML (minijinja; `.html` templates are auto-escaped), `app.js`
//!   (the live updates: `EventSource`, DOM built with `textContent` only) and `app.css`.
//!
//! Stack: server-rendered templates with a little JavaScript, no build step — the set-up a
//! fresh clone's two README commands already do is all the console needs, and every page is
//! readable without JavaScript (live updates are the only thing scripts add). Every answer
//! carries a strict Content-Security-Policy (`script-src 'self'`), `X-Frame-Options: DENY`,
//! `Referrer-Policy: no-referrer` and `Cache-Control: no-store`. Data comes from the same code
//! as the API and the CLI (status report, DLQ reader, replay jobs), with the caller's scope:
//! a portal session reaches its tenant's things only, whatever the URL names.

pub mod history;
pub mod logouts;
pub mod pages;
pub mod session;

use std::sync::Arc;

use axum::Router;
use axum::http::{HeaderValue, header};
use minijinja::Environment;
use tokio_util::sync::CancellationToken;

pub use session::{Keys, Session, Who};

/// DLQ entries a page shows.
pub const PAGE: usize = 50;
/// Live streams open at once, over every session (each polls NATS).
pub const MAX_LIVE: usize = 64;
/// The largest form body, in bytes.
pub const MAX_FORM_BYTES: usize = 16 * 1024;

/// What the console keeps: its templates and keys.
pub struct Console {
    env: Environment<'static>,
    /// Session, CSRF and portal-link keys (derived from the operator token).
    pub keys: Keys,
    /// Whether cookies carry `Secure` (off only where the API listens on loopback).
    pub secure_cookies: bool,
    /// Ends live streams on shutdown (an open event stream would otherwise hold the server's
    /// graceful shutdown for ever).
    pub stop: CancellationToken,
    /// Slots for live streams ([`MAX_LIVE`]).
    pub live_slots: Arc<tokio::sync::Semaphore>,
    /// The overview's last hour.
    pub history: history::History,
}

const TEMPLATES: &[(&str, &str)] = &[
    ("base.html", include_str!("templates/base.html")),
    ("login.html", include_str!("templates/login.html")),
    ("overview.html", include_str!("templates/overview.html")),
    ("dlq.html", include_str!("templates/dlq.html")),
    ("entry.html", include_str!("templates/entry.html")),
    ("replay.html", include_str!("templates/replay.html")),
    ("job.html", include_str!("templates/job.html")),
    ("message.html", include_str!("templates/message.html")),
    (
        "destinations.html",
        include_str!("templates/destinations.html"),
    ),
    ("events.html", include_str!("templates/events.html")),
    ("purge.html", include_str!("templates/purge.html")),
    ("attempts.html", include_str!("templates/attempts.html")),
    ("rotated.html", include_str!("templates/rotated.html")),
];

/// The console's script.
pub const APP_JS: &str = include_str!("templates/app.js");
/// The console's style sheet.
pub const APP_CSS: &str = include_str!("templates/app.css");

impl Console {
    /// The console for an API whose operator token is `operator_token`.
    ///
    /// # Panics
    /// Never for the templates shipped (each is parsed by the tests: a syntax error there is a
    /// bug caught before release).
    pub fn new(operator_token: &str, secure_cookies: bool, stop: CancellationToken) -> Self {
        let mut env = Environment::new();
        for (name, source) in TEMPLATES {
            env.add_template(name, source)
                .unwrap_or_else(|e| panic!("console template {name}: {e}"));
        }
        Self {
            env,
            keys: Keys::new(operator_token),
            secure_cookies,
            stop,
            live_slots: Arc::new(tokio::sync::Semaphore::new(MAX_LIVE)),
            history: history::History::default(),
        }
    }

    /// Renders `template` with `context`.
    ///
    /// # Errors
    /// The template failed to render (a bug: every page is rendered by the tests).
    pub fn render(
        &self,
        template: &str,
        context: &impl serde::Serialize,
    ) -> Result<String, minijinja::Error> {
        self.env
            .get_template(template)?
            .render(minijinja::Value::from(minijinja::value::Serde(context)))
    }
}

/// The console's state: the API's, and the console's own.
#[derive(Clone)]
pub struct ConsoleState {
    /// The management API's state (stores, readers, topology).
    pub api: crate::api::ApiState,
    /// Templates and keys.
    pub console: Arc<Console>,
}

/// Headers every console answer carries.
async fn secure_headers(mut response: axum::response::Response) -> axum::response::Response {
    let headers = response.headers_mut();
    let set = |headers: &mut axum::http::HeaderMap, name, value: &'static str| {
        headers.insert(name, HeaderValue::from_static(value));
    };
    set(
        headers,
        header::CONTENT_SECURITY_POLICY,
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; \
         connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
    );
    set(headers, header::X_FRAME_OPTIONS, "DENY");
    set(headers, header::X_CONTENT_TYPE_OPTIONS, "nosniff");
    set(headers, header::REFERRER_POLICY, "no-referrer");
    if !headers.contains_key(header::CACHE_CONTROL) {
        set(headers, header::CACHE_CONTROL, "no-store");
    }
    response
}

/// Starts what the console runs beside its pages until `state.console.stop`: the overview's
/// sampler ([`pages::sample_history`]) and the follow of every replica's logouts
/// ([`logouts::follow`]). `switchyard api serve` calls it; so do tests serving the router.
pub fn spawn_background(state: &ConsoleState) {
    tokio::spawn(pages::sample_history(state.clone()));
    tokio::spawn(logouts::follow(state.clone()));
}

/// The console's routes (under `/ui`), with the API's state.
pub fn router(state: ConsoleState) -> Router {
    use axum::routing::{any, get, post};
    use pages::*;
    // Forms: a session checked before the body is read, and a small body.
    let forms = Router::new()
        .route("/ui/logout", post(logout))
        .route("/ui/dlq/replay", post(replay))
        .route("/ui/dlq/purge", post(purge))
        .route("/ui/jobs/{job}/cancel", post(cancel))
        .route(
            "/ui/destinations/{tenant}/{destination}/{action}",
            post(switch_destination),
        )
        .route(
            "/ui/destinations/{tenant}/{destination}/rotate-secret",
            post(rotate_destination_secret),
        )
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            posted_in_session,
        ));
    Router::new()
        .merge(forms)
        .route("/ui", get(home))
        .route("/ui/", get(home))
        .route("/ui/login", get(login_form).post(login))
        .route("/ui/portal", get(portal))
        .route("/ui/overview", get(overview))
        .route("/ui/overview/live", get(overview_live))
        .route("/ui/dlq", get(dlq))
        .route("/ui/dlq/live", get(dlq_live))
        .route("/ui/dlq/export", get(dlq_export))
        .route("/ui/dlq/{seq}", get(entry))
        .route("/ui/jobs/{job}", get(job))
        .route("/ui/jobs/{job}/live", get(job_live))
        .route("/ui/destinations", get(destinations))
        .route("/ui/events", get(events))
        .route("/ui/attempts", get(attempts))
        .route("/ui/app.js", get(app_js))
        .route("/ui/app.css", get(app_css))
        .route("/ui/{*rest}", any(not_found))
        .layer(axum::extract::DefaultBodyLimit::max(MAX_FORM_BYTES))
        .layer(axum::middleware::map_response(secure_headers))
        .layer(axum::middleware::from_fn(
            crate::api::middleware::access_log,
        ))
        .with_state(state)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_template_parses() {
        let console = Console::new("x".repeat(32).as_str(), false, CancellationToken::new());
        for (name, _) in TEMPLATES {
            assert!(console.env.get_template(name).is_ok(), "{name}");
        }
    }
}
