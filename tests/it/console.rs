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
    switchyard_cli::console::spawn_background(&switchyard_cli::console::ConsoleState {
        api: state.clone(),
        console: state.console.clone(),
    });
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

/// Sets destination `crm` of `tenant` through the API (a webhook to the sink, for a platform no
/// message uses: it changes no delivery of the tests).
async fn put_destination(base: &str, tenant: &str, url: &str) {
    let answer = reqwest::Client::new()
        .put(format!("{base}/v1/tenants/{tenant}/destinations/crm"))
        .bearer_auth(OPERATOR)
        .json(&serde_json::json!({
            "target": {"type": "webhook", "url": url,
                       "secret": "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"},
            "subscription": {"platforms": ["unused"]}}))
        .send()
        .await
        .unwrap();
    assert!(
        answer.status().is_success(),
        "{}",
        answer.text().await.unwrap()
    );
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

/// How many DLQ entries `tenant` has.
async fn entries_of(p: &Pipeline, tenant: &str) -> usize {
    p.dlq()
        .await
        .iter()
        .filter(|e| {
            e.record
                .tenant
                .as_ref()
                .is_some_and(|t| t.as_str() == tenant)
        })
        .count()
}

/// The DLQ page of acme, its purge dry run for the one entry there.
async fn purge_dry_run(browser: &Browser, base: &str) {
    browser.goto(&format!("{base}/ui/dlq?tenant=acme")).await;
    browser
        .wait_for_text("#entries tbody", "permanent_failure", DEADLINE)
        .await;
    click(browser, "purge-all").await;
    browser
        .wait_for_text(
            "#purge-dry-run",
            "1 entry of tenant acme would be deleted",
            DEADLINE,
        )
        .await;
}

/// Types `count` into the purge confirmation and submits it.
async fn type_purge_count(browser: &Browser, count: &str) {
    browser
        .client()
        .find(fantoccini::Locator::Id("purge-count"))
        .await
        .unwrap()
        .send_keys(count)
        .await
        .unwrap();
    click(browser, "purge-confirm").await;
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
    // The last hour's charts have their first sample.
    let points = browser
        .client()
        .find(fantoccini::Locator::Css("polyline[data-chart=backlog]"))
        .await
        .unwrap()
        .attr("points")
        .await
        .unwrap()
        .unwrap_or_default();
    assert!(!points.is_empty(), "no chart sample");

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
    // The export link of these filters: the entry as an NDJSON line of `dlq export`.
    let export = browser
        .client()
        .find(fantoccini::Locator::Id("export"))
        .await
        .unwrap()
        .attr("href")
        .await
        .unwrap()
        .unwrap();
    let cookie = browser
        .client()
        .get_named_cookie("sy_session")
        .await
        .unwrap();
    let exported = reqwest::Client::new()
        .get(format!("{base}{export}"))
        .header("cookie", format!("sy_session={}", cookie.value()))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let lines: Vec<serde_json::Value> = exported
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 1, "{exported}");
    assert_eq!(lines[0]["seq"].to_string(), seq, "{exported}");
    assert_eq!(lines[0]["code"], "permanent_failure", "{exported}");
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

    // A destination disabled and enabled again from its page; the events feed shows it, and
    // the replay job's end.
    put_destination(&base, "acme", &p.sink.url("crm")).await;
    browser.goto(&format!("{base}/ui/destinations")).await;
    browser
        .wait_for_text("#destinations", "enabled", DEADLINE)
        .await;
    browser
        .wait_for_text("#destinations", "closed", DEADLINE)
        .await;
    click(&browser, "disable-acme-crm").await;
    browser
        .wait_for_text("#destinations", "disabled by an operator", DEADLINE)
        .await;
    browser.screenshot(&shot("destinations")).await;
    click(&browser, "enable-acme-crm").await;
    browser
        .wait_for_text("[data-field=state]", "enabled", DEADLINE)
        .await;
    // Its secret rotated: the new one shown on the answer alone, the old one signing 24 h more.
    click(&browser, "rotate-acme-crm").await;
    let secret = browser
        .wait_for_text("#new-secret", "whsec_", DEADLINE)
        .await
        .text()
        .await
        .unwrap();
    browser
        .wait_for_text("#signing", "1 previous secret signs too", DEADLINE)
        .await;
    let stored: serde_json::Value = serde_json::from_slice(
        &p.js
            .get_key_value("destinations")
            .await
            .unwrap()
            .get("acme.crm")
            .await
            .unwrap()
            .unwrap(),
    )
    .unwrap();
    assert_eq!(stored["target"]["secret"], secret.as_str());
    click(&browser, "back").await;
    browser
        .wait_for_text("#destinations", "enabled", DEADLINE)
        .await;
    let page = browser.client().source().await.unwrap();
    assert!(!page.contains(&secret[6..]), "the secret shown again");
    // A leaked old secret stopped at once.
    click(&browser, "revoke-acme-crm").await;
    browser
        .wait_for_text("#signing", "only the new secret signs", DEADLINE)
        .await;
    click(&browser, "back").await;
    browser
        .wait_for_text("#destinations", "enabled", DEADLINE)
        .await;
    // Narrowed to a tenant without destinations: none shown.
    browser
        .goto(&format!("{base}/ui/destinations?tenant=globex"))
        .await;
    browser
        .wait_for_text("#destinations", "No destination", DEADLINE)
        .await;
    browser
        .goto(&format!("{base}/ui/destinations?tenant=acme"))
        .await;
    browser
        .wait_for_text("#destinations", "enabled", DEADLINE)
        .await;
    browser.goto(&format!("{base}/ui/events")).await;
    browser
        .wait_for_text("#events", "secret_rotated", DEADLINE)
        .await;
    browser
        .wait_for_text("#events", "destination_disabled", DEADLINE)
        .await;
    browser
        .wait_for_text("#events", "replay_job_finished", DEADLINE)
        .await;

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

    // The delivery log, searched by the producer's id: the refused attempt, then the delivery.
    browser
        .goto(&format!("{base}/ui/attempts?tenant=acme&message=order-1"))
        .await;
    browser
        .wait_for_text("#attempts", "permanent", DEADLINE)
        .await;
    browser
        .wait_for_text("#attempts", "delivered", DEADLINE)
        .await;
    browser.screenshot(&shot("attempts")).await;

    // A purge: a dry run, then the count typed; a wrong count deletes nothing.
    p.route("acme", None, "hooks", "down").await;
    p.publish("acme", "ops", "hooks", "order-2", b"to be purged")
        .await;
    purge_dry_run(&browser, &base).await;
    type_purge_count(&browser, "2").await;
    browser
        .wait_for_text("#message", "nothing was deleted", DEADLINE)
        .await;
    purge_dry_run(&browser, &base).await;
    type_purge_count(&browser, "1").await;
    browser
        .wait_for_text("#purged", "Deleted 1 entry", DEADLINE)
        .await;
    assert!(p.dlq().await.is_empty(), "purged");

    // The overview after all this: acme's destination counted, its DLQ inflow measured.
    browser.goto(&format!("{base}/ui/overview")).await;
    browser
        .wait_for_text("[data-field=destinations]", "1", DEADLINE)
        .await;
    browser.screenshot(&shot("overview")).await;
    // A disabled tenant says so on the overview.
    let disabled = reqwest::Client::new()
        .post(format!("{base}/v1/tenants/acme/disable"))
        .bearer_auth(OPERATOR)
        .send()
        .await
        .unwrap()
        .status();
    assert!(disabled.is_success(), "{disabled}");
    browser
        .wait_for_text("[data-field=admission]", "disabled", DEADLINE)
        .await;

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

/// The value of the hidden `csrf` field on the browser's page.
async fn page_csrf(browser: &Browser) -> String {
    browser
        .client()
        .find(fantoccini::Locator::Css("input[name=csrf]"))
        .await
        .unwrap()
        .attr("value")
        .await
        .unwrap()
        .unwrap()
}

#[tokio::test]
async fn a_tenants_portal_link_shows_that_tenant_alone_whatever_the_urls_name() {
    let p = Pipeline::start(&["acme", "globex"]).await;
    for tenant in ["acme", "globex"] {
        p.route(tenant, None, "hooks", "down").await;
    }
    p.sink.answer("down", 400);
    let base = serve_api(&p).await;
    p.publish("acme", "ops", "hooks", "a-1", b"acme's order")
        .await;
    p.publish("globex", "ops", "hooks", "g-1", b"globex's secret order")
        .await;
    let dlq = wait_for("both dead letters", DEADLINE, || async {
        let entries = p.dlq().await;
        (entries.len() == 2).then_some(entries)
    })
    .await;
    let seq_of = |tenant: &str| {
        dlq.iter()
            .find(|e| {
                e.record
                    .tenant
                    .as_ref()
                    .is_some_and(|t| t.as_str() == tenant)
            })
            .unwrap()
            .seq
    };
    let globex_seq = seq_of("globex");
    // A job over globex's entries (a dry run), made by the operator through the API.
    let http = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let job: serde_json::Value = http
        .post(format!("{base}/v1/tenants/globex/dlq/replay"))
        .bearer_auth(OPERATOR)
        .json(&serde_json::json!({"dry_run": true}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let globex_job = job["id"].as_str().unwrap().to_owned();
    put_destination(&base, "globex", &p.sink.url("crm")).await;

    // A link that does not verify, or has expired, opens nothing.
    let keys = switchyard_cli::console::Keys::new(OPERATOR);
    let acme: switchyard_keys::TenantId = "acme".parse().unwrap();
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    for bad in [
        keys.link(&acme, now - 1),
        switchyard_cli::console::Keys::new(&OPERATOR.replace('0', "1")).link(&acme, now + 600),
        "garbage".to_owned(),
    ] {
        let answer = http
            .get(format!("{base}/ui/portal?token={bad}"))
            .send()
            .await
            .unwrap();
        assert_eq!(answer.status(), 401);
        assert!(answer.headers().get("set-cookie").is_none());
    }

    let browser = Browser::start().await;
    browser
        .goto(&format!(
            "{base}/ui/portal?token={}",
            keys.link(&acme, now + 600)
        ))
        .await;
    browser.wait_for_text("h1", "Tenant acme", DEADLINE).await;
    browser.wait_for_text("#tenants", "acme", DEADLINE).await;
    browser.goto(&format!("{base}/ui/dlq")).await;
    browser
        .wait_for_text("#entries tbody", "permanent_failure", DEADLINE)
        .await;
    let source = browser.client().source().await.unwrap();
    assert!(
        !source.contains("globex"),
        "the portal shows another tenant: {source}"
    );
    browser.screenshot(&shot("portal-dlq")).await;
    let csrf = page_csrf(&browser).await;
    let cookie = browser
        .client()
        .get_named_cookie("sy_session")
        .await
        .unwrap();
    let cookie = format!("sy_session={}", cookie.value());

    // Every page, stream and form of the portal, asked for globex's things: nothing of them.
    let get = |path: String| {
        let http = http.clone();
        let cookie = cookie.clone();
        let base = base.clone();
        async move {
            let answer = http
                .get(format!("{base}{path}"))
                .header("cookie", cookie)
                .send()
                .await
                .unwrap();
            let status = answer.status().as_u16();
            (status, answer.text().await.unwrap_or_default())
        }
    };
    for (path, status) in [
        ("/ui/dlq?tenant=globex".to_owned(), 400),
        (format!("/ui/dlq/{globex_seq}"), 404),
        ("/ui/dlq/live?tenant=globex".to_owned(), 400),
        ("/ui/attempts?tenant=globex".to_owned(), 400),
        ("/ui/dlq/export?tenant=globex".to_owned(), 400),
        ("/ui/destinations?tenant=globex".to_owned(), 400),
        ("/ui/dlq?foo=1".to_owned(), 400),
        ("/ui/dlq?since=1h&until=2h".to_owned(), 400),
        ("/ui/dlq/export?tenant=acme&foo=1".to_owned(), 400),
        (format!("/ui/jobs/{globex_job}"), 404),
        (format!("/ui/jobs/{globex_job}/live"), 404),
    ] {
        let (got, body) = get(path.clone()).await;
        assert_eq!(got, status, "{path}: {body}");
        assert!(!body.contains("globex's secret"), "{path}: {body}");
    }
    let post = |path: String, form: Vec<(&'static str, String)>| {
        let http = http.clone();
        let cookie = cookie.clone();
        let base = base.clone();
        async move {
            let answer = http
                .post(format!("{base}{path}"))
                .header("cookie", cookie)
                .header("content-type", "application/x-www-form-urlencoded")
                .body(
                    form.iter()
                        .map(|(k, v)| {
                            format!(
                                "{k}={}",
                                url::form_urlencoded::byte_serialize(v.as_bytes())
                                    .collect::<String>()
                            )
                        })
                        .collect::<Vec<_>>()
                        .join("&"),
                )
                .send()
                .await
                .unwrap();
            answer.status().as_u16()
        }
    };
    let replay = post(
        "/ui/dlq/replay".to_owned(),
        vec![("csrf", csrf.clone()), ("tenant", "globex".to_owned())],
    )
    .await;
    assert_eq!(replay, 403);
    let purge = post(
        "/ui/dlq/purge".to_owned(),
        vec![
            ("csrf", csrf.clone()),
            ("tenant", "globex".to_owned()),
            ("confirm", "1".to_owned()),
            ("through", globex_seq.to_string()),
        ],
    )
    .await;
    assert_eq!(purge, 403);
    assert_eq!(entries_of(&p, "globex").await, 1, "globex's entry stays");
    post(
        format!("/ui/jobs/{globex_job}/cancel"),
        vec![("csrf", csrf.clone())],
    )
    .await;
    let job: serde_json::Value = http
        .get(format!("{base}/v1/jobs/{globex_job}"))
        .bearer_auth(OPERATOR)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_ne!(job["job"]["state"], "cancelled", "{job}");
    assert_eq!(
        post(
            "/ui/destinations/globex/crm/disable".to_owned(),
            vec![("csrf", csrf.clone())]
        )
        .await,
        404
    );
    let crm: serde_json::Value = http
        .get(format!("{base}/v1/tenants/globex/destinations/crm"))
        .bearer_auth(OPERATOR)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(crm["record"]["disabled"].is_null(), "{crm}");
    assert_eq!(
        post(
            "/ui/destinations/globex/crm/rotate-secret".to_owned(),
            vec![("csrf", csrf.clone())]
        )
        .await,
        404
    );
    let crm: serde_json::Value = serde_json::from_slice(
        &p.js
            .get_key_value("destinations")
            .await
            .unwrap()
            .get("globex.crm")
            .await
            .unwrap()
            .unwrap(),
    )
    .unwrap();
    assert_eq!(
        crm["target"]["secret"], "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
        "globex's secret rotated from acme's portal"
    );
    let (_, page) = get("/ui/destinations".to_owned()).await;
    assert!(!page.contains("globex"), "{page}");
    // A purge's dry run takes the page's destination filter too: none of acme's entries is
    // crm's.
    let dry_run = http
        .post(format!("{base}/ui/dlq/purge"))
        .header("cookie", cookie.clone())
        .header("content-type", "application/x-www-form-urlencoded")
        .body(format!("csrf={csrf}&tenant=acme&destination=crm"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        dry_run.contains("0 entries of tenant acme for destination crm would be deleted"),
        "{dry_run}"
    );
    // A destination filter is applied (acme's entry is its route's).
    let (status, none) = get("/ui/dlq/export?destination=crm".to_owned()).await;
    assert_eq!((status, none.as_str()), (200, ""));
    // Its export holds its own entry alone.
    let (status, exported) = get("/ui/dlq/export".to_owned()).await;
    assert_eq!(status, 200);
    assert_eq!(exported.lines().count(), 1, "{exported}");
    assert!(
        exported.contains("\"tenant\":\"acme\"") && !exported.contains("globex"),
        "{exported}"
    );
    let (status, page) = get("/ui/attempts".to_owned()).await;
    assert_eq!(status, 200);
    assert!(page.contains("a-1") && !page.contains("g-1"), "{page}");
    // Forms: no session, no body read (sent to the login form); a body over 16 KiB refused.
    let anonymous = http
        .post(format!("{base}/ui/dlq/replay"))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(vec![b'a'; 1 << 20])
        .send()
        .await
        .unwrap();
    assert_eq!(anonymous.status(), 303);
    let big = http
        .post(format!("{base}/ui/dlq/replay"))
        .header("cookie", cookie.clone())
        .header("content-type", "application/x-www-form-urlencoded")
        .body(format!(
            "csrf={csrf}&tenant=acme&pad={}",
            "a".repeat(20 * 1024)
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(big.status(), 413);
    // A form without the session's token is refused.
    let forged = post(
        "/ui/dlq/replay".to_owned(),
        vec![("csrf", "forged".to_owned()), ("tenant", "acme".to_owned())],
    )
    .await;
    assert_eq!(forged, 403);
    // The live overview carries acme's row alone.
    let mut live = http
        .get(format!("{base}/ui/overview/live"))
        .header("cookie", cookie.clone())
        .send()
        .await
        .unwrap();
    let first = live.chunk().await.unwrap().unwrap();
    let first = String::from_utf8_lossy(&first);
    assert!(
        first.contains("\"tenant\":\"acme\"") && !first.contains("globex"),
        "{first}"
    );

    // A confirmed replay whose entries are gone starts no job (it never widens to the tenant's
    // whole DLQ); a cursor past every sequence is an empty page; unknown pages and job ids are
    // "not found", with the console's headers.
    let job_count = || {
        let http = http.clone();
        let base = base.clone();
        async move {
            http.get(format!("{base}/v1/jobs"))
                .bearer_auth(OPERATOR)
                .send()
                .await
                .unwrap()
                .json::<Vec<serde_json::Value>>()
                .await
                .unwrap()
                .len()
        }
    };
    let jobs_before = job_count().await;
    let stale = post(
        "/ui/dlq/replay".to_owned(),
        vec![
            ("csrf", csrf.clone()),
            ("tenant", "acme".to_owned()),
            ("seq", globex_seq.to_string()),
            ("confirm", "yes".to_owned()),
            ("through", "0".to_owned()),
        ],
    )
    .await;
    assert_eq!(stale, 422);
    assert_eq!(job_count().await, jobs_before, "no job started");
    assert_eq!(get(format!("/ui/dlq?after={}", u64::MAX)).await.0, 200);
    for path in ["/ui/nope", "/ui/dlq/1/x"] {
        let answer = http
            .get(format!("{base}{path}"))
            .header("cookie", cookie.clone())
            .send()
            .await
            .unwrap();
        assert_eq!(answer.status(), 404, "{path}");
        assert!(
            answer.headers().contains_key("content-security-policy"),
            "{path}"
        );
    }
    assert_eq!(
        post(
            "/ui/jobs/x%0d%0ay/cancel".to_owned(),
            vec![("csrf", csrf.clone())]
        )
        .await,
        404
    );
    // A link never replaces the session a browser has.
    let again = http
        .get(format!(
            "{base}/ui/portal?token={}",
            keys.link(&acme, now + 600)
        ))
        .header("cookie", cookie.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(again.status(), 409);

    // A second replica of the API takes the session too, until it logs out on the first.
    let replica = serve_api(&p).await;
    assert_eq!(overview_status(&http, &replica, &cookie).await, 200);

    // Logging out ends the live streams the session had open.
    assert_eq!(
        post("/ui/logout".to_owned(), vec![("csrf", csrf.clone())]).await,
        303
    );
    // Every replica refuses it from then on: the running one, and one started afterwards.
    wait_for(
        "the other replica to refuse the session",
        DEADLINE,
        || async { (overview_status(&http, &replica, &cookie).await == 303).then_some(()) },
    )
    .await;
    let late = serve_api(&p).await;
    wait_for("a replica started later to refuse it", DEADLINE, || async {
        (overview_status(&http, &late, &cookie).await == 303).then_some(())
    })
    .await;
    let ended = tokio::time::timeout(DEADLINE, async {
        while let Ok(Some(_)) = live.chunk().await {}
    })
    .await;
    assert!(ended.is_ok(), "the live stream outlived its session");
    assert_eq!(get("/ui/overview".to_owned()).await.0, 303);

    // Disabling the tenant ends its portal sessions.
    let fresh = http
        .get(format!(
            "{base}/ui/portal?token={}",
            keys.link(&acme, now + 600)
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(fresh.status(), 303);
    let fresh_cookie = fresh
        .headers()
        .get_all("set-cookie")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .find(|v| v.starts_with("sy_session="))
        .and_then(|v| v.split(';').next())
        .unwrap()
        .to_owned();
    assert_eq!(overview_status(&http, &base, &fresh_cookie).await, 200);
    let disabled = http
        .post(format!("{base}/v1/tenants/acme/disable"))
        .bearer_auth(OPERATOR)
        .send()
        .await
        .unwrap()
        .status();
    assert!(disabled.is_success(), "{disabled}");
    wait_for("the portal session to end", DEADLINE, || async {
        (overview_status(&http, &base, &fresh_cookie).await == 303).then_some(())
    })
    .await;
    // For good: enabling the tenant again does not bring the session back, on this replica
    // or on another.
    let enabled = http
        .post(format!("{base}/v1/tenants/acme/enable"))
        .bearer_auth(OPERATOR)
        .send()
        .await
        .unwrap()
        .status();
    assert!(enabled.is_success(), "{enabled}");
    assert_eq!(overview_status(&http, &base, &fresh_cookie).await, 303);
    wait_for("the other replica to end it too", DEADLINE, || async {
        (overview_status(&http, &replica, &fresh_cookie).await == 303).then_some(())
    })
    .await;
    // A link opened after the re-enabling works.
    let again = http
        .get(format!(
            "{base}/ui/portal?token={}",
            keys.link(&acme, now + 600)
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(again.status(), 303);

    browser.close().await;
    p.stop().await;
}

/// The status of `GET {base}/ui/overview` with session `cookie` (redirects not followed by the
/// tests' client: 303 is "signed out").
async fn overview_status(http: &reqwest::Client, base: &str, cookie: &str) -> u16 {
    http.get(format!("{base}/ui/overview"))
        .header("cookie", cookie)
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}
