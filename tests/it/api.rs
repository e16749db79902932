//! The management API (`switchyard api serve`) against a real nats-server: what each scope may
//! reach (keys, limits, the DLQ's purge and jobs included), and the OpenAPI conformance run —
//! schemathesis drives every operation of the description the API serves, and every answer must
//! be documented, JSON, and match its schema, with no server error. Each test serves its own
//! API over its own server, so what the fuzzing purges or revokes is nobody else's data. (The
//! deadline and the access log are tested on a router of their own:
//! `apps/cli/src/api/middleware.rs`.)

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use reqwest::StatusCode;
use serde_json::{Value, json};
use switchyard_cli::api::{ApiState, openapi_json, router};
use switchyard_dlq::DlqCode;
use switchyard_fixtures::{Orders, Provisioned, enable_tenant};
use switchyard_keys::{ApiKeyKey, Stage};
use switchyard_registry::{ApiKeyRecord, ApiScope, Store, TenantRecord, api_key};
use switchyard_subjects::Namespace;
use switchyard_topology::{BucketName, DeploymentConfig};

const OPERATOR: &str = "operator-token-0123456789abcdef0123456789";

/// A provisioned server with tenants acme and globex, a destination and a DLQ entry each, a
/// manage key of acme's, and the API served on a free port.
struct Api {
    provisioned: Provisioned,
    base: String,
    acme_key: String,
}

async fn manage_key(js: &async_nats::jetstream::Context, tenant: &str) -> String {
    stored_key(js, tenant, vec![ApiScope::Manage]).await
}

async fn stored_key(
    js: &async_nats::jetstream::Context,
    tenant: &str,
    scopes: Vec<ApiScope>,
) -> String {
    let topology = DeploymentConfig::default().resolve().unwrap();
    let mut issued = api_key::issue(
        tenant.parse().unwrap(),
        None,
        None,
        time::OffsetDateTime::now_utc(),
    )
    .unwrap();
    issued.record.scopes = scopes;
    let bucket = topology
        .open_bucket(js, BucketName::ApiKeys)
        .await
        .unwrap()
        .1;
    Store::<ApiKeyKey, ApiKeyRecord>::new(bucket)
        .put(&issued.id, &issued.record)
        .await
        .unwrap();
    issued.token
}

async fn start() -> Api {
    switchyard_runtime::init_for_tests();
    let _ = rustls::crypto::ring::default_provider().install_default();
    let provisioned = Provisioned::start().await;
    let js = &provisioned.js;
    let ns = Namespace::default();
    let orders = Orders {
        deliveries: 3,
        text: None,
        failure: (12, "HTTP 503"),
    };
    for (n, tenant) in [(1, "acme"), (2, "globex")] {
        enable_tenant(js, tenant, &TenantRecord::enabled()).await;
        let env = orders.envelope(tenant, n);
        let record = orders.record(&ns, Stage::Egress, DlqCode::RetriesExhausted, n, &env);
        orders.publish(js, &ns, record, n).await.await.unwrap();
    }
    let acme_key = manage_key(js, "acme").await;
    let topology = DeploymentConfig::default().resolve().unwrap();
    let state = ApiState::open(js, &topology, OPERATOR).await.unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, router(state)).await });
    let api = Api {
        provisioned,
        base,
        acme_key,
    };
    for tenant in ["acme", "globex"] {
        let (status, _) = api
            .call(
                "PUT",
                &format!("/v1/tenants/{tenant}/destinations/crm"),
                OPERATOR,
                Some(json!({"target": {"type": "webhook", "url": "https://u:p@crm.example/in?token=t",
                                       "secret": "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"},
                            "subscription": {"platforms": ["slack"]}})),
            )
            .await;
        assert_eq!(status, StatusCode::OK);
    }
    api
}

impl Api {
    async fn call(
        &self,
        method: &str,
        path: &str,
        token: &str,
        body: Option<Value>,
    ) -> (StatusCode, Value) {
        let client = reqwest::Client::new();
        let mut request = client
            .request(method.parse().unwrap(), format!("{}{path}", self.base))
            .bearer_auth(token);
        if let Some(body) = body {
            request = request
                .header("content-type", "application/json")
                .body(body.to_string());
        }
        let response = request.send().await.unwrap();
        let status = response.status();
        let text = response.text().await.unwrap();
        let value = if text.is_empty() {
            Value::Null
        } else {
            serde_json::from_str(&text).unwrap_or_else(|e| panic!("{path}: not JSON ({e}): {text}"))
        };
        (status, value)
    }
}

#[tokio::test]
async fn a_tenant_key_reaches_its_own_tenant_only_and_the_operator_every_tenant() {
    let api = start().await;
    let acme = api.acme_key.clone();

    // Its own things.
    let (status, destinations) = api
        .call("GET", "/v1/tenants/acme/destinations", &acme, None)
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(destinations[0]["destination"], "crm");
    let shown = destinations.to_string();
    for secret in ["MfKQ9r8", "token=t", "u:p"] {
        assert!(!shown.contains(secret), "{shown}");
    }
    let (status, page) = api.call("GET", "/v1/tenants/acme/dlq", &acme, None).await;
    assert_eq!(status, StatusCode::OK);
    let entries = page["entries"].as_array().unwrap();
    assert_eq!(entries.len(), 1);
    assert_eq!(entries[0]["tenant"], "acme");
    let acme_seq = entries[0]["seq"].as_u64().unwrap();

    // Nothing of another tenant, whichever path or id it tries.
    for path in [
        "/v1/tenants/globex",
        "/v1/tenants/globex/destinations",
        "/v1/tenants/globex/destinations/crm",
        "/v1/tenants/globex/dlq",
        "/v1/tenants/globex/attempts",
    ] {
        let (status, body) = api.call("GET", path, &acme, None).await;
        assert_eq!(status, StatusCode::FORBIDDEN, "{path}: {body}");
        assert_eq!(body["error"], "tenant_mismatch");
    }
    for (method, path, body) in [
        (
            "PUT",
            "/v1/tenants/globex/destinations/x",
            Some(json!({"target": {"type": "nats", "subject": "sink.x"}})),
        ),
        ("DELETE", "/v1/tenants/globex/destinations/crm", None),
        ("POST", "/v1/tenants/globex/destinations/crm/disable", None),
        ("POST", "/v1/tenants/globex/dlq/replay", Some(json!({}))),
    ] {
        let (status, _) = api.call(method, path, &acme, body).await;
        assert_eq!(status, StatusCode::FORBIDDEN, "{method} {path}");
    }
    // globex's DLQ entry is not acme's, even by its sequence under acme's path.
    let (_, all) = api
        .call("GET", "/v1/tenants/globex/dlq", OPERATOR, None)
        .await;
    let globex_seq = all["entries"][0]["seq"].as_u64().unwrap();
    let (status, _) = api
        .call(
            "GET",
            &format!("/v1/tenants/acme/dlq/{globex_seq}"),
            &acme,
            None,
        )
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, entry) = api
        .call(
            "GET",
            &format!("/v1/tenants/acme/dlq/{acme_seq}"),
            &acme,
            None,
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(entry["code"], "retries_exhausted");
    // Its events, not another tenant's.
    let (status, events) = api
        .call("GET", "/v1/tenants/acme/events?limit=10", &acme, None)
        .await;
    assert_eq!(status, StatusCode::OK, "{events}");
    assert!(events["events"].is_array());
    let (status, _) = api
        .call("GET", "/v1/tenants/globex/events", &acme, None)
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    // A tenant's own targets only: its own sink subjects and public hosts (an operator may
    // point anywhere).
    for target in [
        json!({"type": "nats", "subject": "sink.globex.orders"}),
        json!({"type": "nats", "subject": "ingress.v1.globex.ops.shop"}),
        json!({"type": "webhook", "url": "http://127.0.0.1:9106/v1/status",
               "secret": "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"}),
        json!({"type": "webhook", "url": "http://169.254.169.254/latest/meta-data",
               "secret": "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"}),
    ] {
        let (status, body) = api
            .call(
                "PUT",
                "/v1/tenants/acme/destinations/steal",
                &acme,
                Some(json!({"target": target})),
            )
            .await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{target}: {body}");
    }
    let (status, _) = api
        .call(
            "PUT",
            "/v1/tenants/acme/destinations/own",
            &acme,
            Some(json!({"target": {"type": "nats", "subject": "sink.acme.orders"}})),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    let (status, _) = api
        .call(
            "PUT",
            "/v1/tenants/acme/destinations/internal",
            OPERATOR,
            Some(json!({"target": {"type": "nats", "subject": "sink.shared.audit"}})),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "an operator may");
    // What the framework refuses before a handler runs is answered in the same JSON shape.
    for (method, path, want) in [
        ("PATCH", "/v1/tenants/acme", StatusCode::METHOD_NOT_ALLOWED),
        (
            "GET",
            "/v1/tenants/%FF/destinations",
            StatusCode::BAD_REQUEST,
        ),
        ("GET", "/v1/nowhere", StatusCode::NOT_FOUND),
    ] {
        let (status, body) = api.call(method, path, &acme, None).await;
        assert_eq!(status, want, "{method} {path}: {body}");
        assert!(
            body["error"].is_string() && body["message"].is_string(),
            "{body}"
        );
    }
    // Operator-only paths.
    for path in ["/v1/tenants", "/v1/status"] {
        let (status, _) = api.call("GET", path, &acme, None).await;
        assert_eq!(status, StatusCode::FORBIDDEN, "{path}");
        let (status, _) = api.call("GET", path, OPERATOR, None).await;
        assert_eq!(status, StatusCode::OK, "{path}");
    }
    // No or a wrong token: 401.
    let (status, _) = api.call("GET", "/v1/tenants/acme", "sy_wrong", None).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);

    // A replay job over acme's entry; visible to acme, not to a globex key.
    let (status, job) = api
        .call(
            "POST",
            "/v1/tenants/acme/dlq/replay",
            &acme,
            Some(json!({"dry_run": true})),
        )
        .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{job}");
    let id = job["id"].as_str().unwrap().to_owned();
    assert_eq!(job["job"]["spec"]["total"], 1);
    let (status, _) = api
        .call("GET", &format!("/v1/jobs/{id}"), &acme, None)
        .await;
    assert_eq!(status, StatusCode::OK);
    let globex_key = manage_key(&api.provisioned.js, "globex").await;
    let (status, _) = api
        .call("GET", &format!("/v1/jobs/{id}"), &globex_key, None)
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    // A job listing acme's sequences is acme's too; globex's sequence listed by acme matches
    // nothing.
    let (status, job) = api
        .call(
            "POST",
            "/v1/tenants/acme/dlq/replay",
            &acme,
            Some(json!({"seqs": [acme_seq], "dry_run": true})),
        )
        .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{job}");
    let listed_id = job["id"].as_str().unwrap().to_owned();
    let (status, _) = api
        .call("GET", &format!("/v1/jobs/{listed_id}"), &acme, None)
        .await;
    assert_eq!(status, StatusCode::OK);
    let (status, _) = api
        .call(
            "POST",
            "/v1/tenants/acme/dlq/replay",
            &acme,
            Some(json!({"seqs": [globex_seq], "dry_run": true})),
        )
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);

    // Disable and enable, as the CLI does.
    let (status, disabled) = api
        .call(
            "POST",
            "/v1/tenants/acme/destinations/crm/disable",
            &acme,
            Some(json!({"reason": "maintenance"})),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(disabled["record"]["disabled"]["reason"], "maintenance");
    assert_eq!(disabled["record"]["disabled"]["by"], "tenant");
    let (_, enabled) = api
        .call(
            "POST",
            "/v1/tenants/acme/destinations/crm/enable",
            &acme,
            None,
        )
        .await;
    assert!(enabled["record"].get("disabled").is_none(), "{enabled}");
    // Both are events (stored off the request's path: they may take a moment).
    switchyard_testkit::wait_for(
        "the disabled and enabled events",
        Duration::from_secs(30),
        || async {
            let (_, events) = api
                .call("GET", "/v1/tenants/acme/events", &acme, None)
                .await;
            let kinds: Vec<String> = events["events"]
                .as_array()?
                .iter()
                .filter_map(|e| e["kind"].as_str().map(str::to_owned))
                .collect();
            (kinds.iter().any(|k| k == "destination_disabled")
                && kinds.iter().any(|k| k == "destination_enabled"))
            .then_some(())
        },
    )
    .await;
    // An invalid destination is refused with the reason, and nothing is written.
    let (status, refused) = api
        .call(
            "PUT",
            "/v1/tenants/acme/destinations/bad",
            &acme,
            Some(json!({"target": {"type": "nats", "subject": "a.*"}})),
        )
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    assert!(
        refused["message"].as_str().unwrap().contains("subject"),
        "{refused}"
    );
    let (status, _) = api
        .call("GET", "/v1/tenants/acme/destinations/bad", &acme, None)
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
}

/// Where schemathesis is: `SWITCHYARD_SCHEMATHESIS`, else the one `make api-tools` installs.
fn schemathesis() -> PathBuf {
    if let Ok(path) = std::env::var("SWITCHYARD_SCHEMATHESIS") {
        return PathBuf::from(path);
    }
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../.tools/api-venv/bin/st");
    assert!(
        path.exists(),
        "schemathesis is not installed at {}: run `make api-tools` (make test does)",
        path.display()
    );
    path
}

#[tokio::test]
async fn the_running_api_conforms_to_its_openapi_description() {
    let api = start().await;
    let st = schemathesis();
    let base = api.base.clone();
    let out = tokio::task::spawn_blocking(move || {
        Command::new(st)
            .args([
                "run",
                &format!("{base}/openapi.json"),
                "--checks",
                "not_a_server_error,status_code_conformance,content_type_conformance,response_schema_conformance",
                "--header",
                &format!("Authorization: Bearer {OPERATOR}"),
                "--max-examples",
                "25",
                "--seed",
                "20261206",
                "--generation-deterministic",
                "--request-timeout",
                "20",
                "--workers",
                "1",
                "--no-color",
            ])
            // Its crash cache goes to the temporary folder, not into the repository.
            .current_dir(std::env::temp_dir())
            .env("SCHEMATHESIS_HOOKS", "")
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "schemathesis found problems:\n{text}");
    // The description the API serves is the one in the repository.
    let served = reqwest::get(format!("{}/openapi.json", api.base))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert_eq!(served, openapi_json());
}

#[test]
fn docs_openapi_json_is_the_generated_description() {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../docs/openapi.json");
    let committed = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        committed == openapi_json(),
        "docs/openapi.json is not what the code generates: run \
         `cargo run -p switchyard-cli -- api openapi > docs/openapi.json`"
    );
}

#[tokio::test]
async fn a_disabled_tenant_manages_nothing() {
    let api = start().await;
    let acme = api.acme_key.clone();
    let (status, _) = api
        .call("GET", "/v1/tenants/acme/destinations", &acme, None)
        .await;
    assert_eq!(status, StatusCode::OK);
    enable_tenant(
        &api.provisioned.js,
        "acme",
        &TenantRecord {
            enabled: false,
            ..TenantRecord::enabled()
        },
    )
    .await;
    for (method, path) in [
        ("GET", "/v1/tenants/acme/destinations"),
        ("PUT", "/v1/tenants/acme/destinations/after"),
        ("POST", "/v1/tenants/acme/dlq/replay"),
        ("POST", "/v1/tenants/acme/dlq/purge"),
        ("GET", "/v1/tenants/acme/keys"),
        ("GET", "/v1/tenants/acme/limits"),
        ("GET", "/v1/jobs"),
    ] {
        let (status, body) = api
            .call(
                method,
                path,
                &acme,
                Some(json!({"target": {"type": "nats", "subject": "sink.acme.x"}})),
            )
            .await;
        assert_eq!(status, StatusCode::FORBIDDEN, "{method} {path}: {body}");
        assert_eq!(body["error"], "tenant_disabled");
    }
    // The operator still may.
    let (status, _) = api
        .call("GET", "/v1/tenants/acme/destinations", OPERATOR, None)
        .await;
    assert_eq!(status, StatusCode::OK);
}

#[tokio::test]
async fn keys_are_issued_by_the_operator_listed_without_secrets_and_revoked_by_their_tenant() {
    let api = start().await;
    let acme = api.acme_key.clone();

    // The operator issues a manage key; the key is in the answer, once, and works at once.
    let (status, created) = api
        .call(
            "POST",
            "/v1/tenants/acme/keys",
            OPERATOR,
            Some(json!({"scopes": ["manage"], "label": "portal", "expires_in_days": 30})),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{created}");
    assert_eq!(created["tenant"], "acme");
    let token = created["key"].as_str().unwrap().to_owned();
    let id = created["id"].as_str().unwrap().to_owned();
    assert!(token.starts_with(&format!("sy_{id}_")), "{created}");
    assert!(created["expires_at"].is_string(), "{created}");
    let (status, _) = api
        .call("GET", "/v1/tenants/acme/destinations", &token, None)
        .await;
    assert_eq!(status, StatusCode::OK, "the new key manages acme");
    let (status, _) = api
        .call("GET", "/v1/tenants/globex/destinations", &token, None)
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN, "and acme only");

    // Listed for the tenant: ids, scopes, labels, status; never a secret or a hash.
    let (status, listed) = api.call("GET", "/v1/tenants/acme/keys", &acme, None).await;
    assert_eq!(status, StatusCode::OK, "{listed}");
    let keys = listed.as_array().unwrap();
    assert_eq!(keys.len(), 2, "{listed}");
    let new = keys.iter().find(|k| k["id"] == id.as_str()).unwrap();
    assert_eq!(new["status"], "active");
    assert_eq!(new["label"], "portal");
    assert_eq!(new["scopes"], json!(["manage"]));
    let shown = listed.to_string();
    // The secret is all after `sy_<id>_` (it may hold `_` itself: base64url).
    let secret = token.strip_prefix(&format!("sy_{id}_")).unwrap();
    assert!(
        !shown.contains(secret) && !shown.contains("hash"),
        "{shown}"
    );

    // Issuing is the operator's: not even for the key's own tenant.
    let (status, body) = api
        .call("POST", "/v1/tenants/acme/keys", &acme, Some(json!({})))
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    assert_eq!(body["error"], "operator_only");
    // Another tenant's keys are out of reach, by its path or by a key id under one's own.
    let globex_key = stored_key(&api.provisioned.js, "globex", vec![ApiScope::Publish]).await;
    let (globex_id, _) = api_key::parse_token(&globex_key).unwrap();
    for (method, path) in [
        ("GET", "/v1/tenants/globex/keys".to_owned()),
        ("POST", "/v1/tenants/globex/keys".to_owned()),
        (
            "POST",
            format!("/v1/tenants/globex/keys/{}/revoke", globex_id.id),
        ),
    ] {
        let (status, body) = api.call(method, &path, &acme, Some(json!({}))).await;
        assert_eq!(status, StatusCode::FORBIDDEN, "{method} {path}: {body}");
        assert_eq!(body["error"], "tenant_mismatch");
    }
    let (status, _) = api
        .call(
            "POST",
            &format!("/v1/tenants/acme/keys/{}/revoke", globex_id.id),
            &acme,
            None,
        )
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND, "globex's key is not acme's");
    let (status, _) = api
        .call(
            "POST",
            &format!("/v1/tenants/acme/keys/{}/revoke", globex_id.id),
            OPERATOR,
            None,
        )
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND, "not even for the operator");
    // Refusals that change nothing.
    for (path, body, want) in [
        ("/v1/tenants/nobody/keys", json!({}), StatusCode::NOT_FOUND),
        (
            "/v1/tenants/acme/keys",
            json!({"scopes": ["admin"]}),
            StatusCode::BAD_REQUEST,
        ),
        (
            "/v1/tenants/acme/keys",
            json!({"expires_in_days": 0}),
            StatusCode::BAD_REQUEST,
        ),
    ] {
        let (status, answer) = api.call("POST", path, OPERATOR, Some(body)).await;
        assert_eq!(status, want, "{path}: {answer}");
    }
    let (status, _) = api
        .call(
            "POST",
            "/v1/tenants/acme/keys/not-a-key/revoke",
            &acme,
            None,
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    // A publish key (the default scope) does not manage.
    let (_, publish) = api
        .call("POST", "/v1/tenants/acme/keys", OPERATOR, Some(json!({})))
        .await;
    let (status, body) = api
        .call(
            "GET",
            "/v1/tenants/acme/keys",
            publish["key"].as_str().unwrap(),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");

    // The tenant revokes the new key: refused from then on, kept in the listing as revoked.
    let (status, revoked) = api
        .call(
            "POST",
            &format!("/v1/tenants/acme/keys/{id}/revoke"),
            &acme,
            None,
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{revoked}");
    assert_eq!(revoked["status"], "revoked");
    let (status, _) = api
        .call("GET", "/v1/tenants/acme/destinations", &token, None)
        .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "a revoked key is refused");
    let (status, again) = api
        .call(
            "POST",
            &format!("/v1/tenants/acme/keys/{id}/revoke"),
            OPERATOR,
            None,
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(again["revoked_at"], revoked["revoked_at"], "revoked once");
    let (_, listed) = api
        .call("GET", "/v1/tenants/acme/keys", OPERATOR, None)
        .await;
    let new = listed
        .as_array()
        .unwrap()
        .iter()
        .find(|k| k["id"] == id.as_str())
        .unwrap();
    assert_eq!(new["status"], "revoked");
}

#[tokio::test]
async fn a_tenant_reads_its_own_limit_and_only_the_operator_sets_limits() {
    let api = start().await;
    let acme = api.acme_key.clone();

    let (status, set) = api
        .call(
            "PUT",
            "/v1/tenants/acme/limits",
            OPERATOR,
            Some(json!({"rate_per_sec": 20.0, "backlog_high": 1000})),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{set}");
    assert_eq!(set["tenant"], "acme");
    assert_eq!(set["burst"], 20, "one second's worth, as the CLI sets it");
    let (status, own) = api
        .call("GET", "/v1/tenants/acme/limits", &acme, None)
        .await;
    assert_eq!(status, StatusCode::OK, "{own}");
    assert_eq!(own["rate_per_sec"], 20.0);
    assert_eq!(own["backlog_high"], 1000);
    assert_eq!(own["from"], "acme");

    // A tenant cannot raise its own limit, nor read or set anyone else's.
    let (status, body) = api
        .call(
            "PUT",
            "/v1/tenants/acme/limits",
            &acme,
            Some(json!({"rate_per_sec": 100000.0})),
        )
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    assert_eq!(body["error"], "operator_only");
    for (method, path) in [
        ("GET", "/v1/tenants/globex/limits"),
        ("PUT", "/v1/tenants/globex/limits"),
    ] {
        let (status, body) = api
            .call(method, path, &acme, Some(json!({"rate_per_sec": 1.0})))
            .await;
        assert_eq!(status, StatusCode::FORBIDDEN, "{method} {path}: {body}");
        assert_eq!(body["error"], "tenant_mismatch");
    }
    for (method, path) in [
        ("GET", "/v1/limits"),
        ("GET", "/v1/limits/_default"),
        ("PUT", "/v1/limits/_default"),
    ] {
        let (status, body) = api
            .call(method, path, &acme, Some(json!({"rate_per_sec": 1.0})))
            .await;
        assert_eq!(status, StatusCode::FORBIDDEN, "{method} {path}: {body}");
    }
    let (_, own) = api
        .call("GET", "/v1/tenants/acme/limits", &acme, None)
        .await;
    assert_eq!(own["rate_per_sec"], 20.0, "unchanged");

    // Invalid limits are refused with the reason; a tenant without a limit of its own gets
    // `_default`'s, as the backpressure service does.
    for (body, want) in [
        (
            json!({"rate_per_sec": 0.0}),
            StatusCode::UNPROCESSABLE_ENTITY,
        ),
        (
            json!({"rate_per_sec": 5.0, "backlog_high": 10, "backlog_low": 10}),
            StatusCode::UNPROCESSABLE_ENTITY,
        ),
        (json!({"rate": 5.0}), StatusCode::BAD_REQUEST),
    ] {
        let (status, answer) = api
            .call("PUT", "/v1/tenants/globex/limits", OPERATOR, Some(body))
            .await;
        assert_eq!(status, want, "{answer}");
    }
    let (status, _) = api
        .call("GET", "/v1/tenants/globex/limits", OPERATOR, None)
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND, "no limit, no _default");
    let (status, _) = api
        .call(
            "PUT",
            "/v1/limits/_default",
            OPERATOR,
            Some(json!({"rate_per_sec": 5.0, "burst": 10})),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    let (status, globex) = api
        .call("GET", "/v1/tenants/globex/limits", OPERATOR, None)
        .await;
    assert_eq!(status, StatusCode::OK, "{globex}");
    assert_eq!(globex["from"], "_default");
    assert_eq!(globex["burst"], 10);
    let (status, all) = api.call("GET", "/v1/limits", OPERATOR, None).await;
    assert_eq!(status, StatusCode::OK);
    let scopes: Vec<&str> = all
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|l| l["tenant"].as_str())
        .collect();
    assert!(
        scopes.contains(&"acme") && scopes.contains(&"_default"),
        "{all}"
    );
}

#[tokio::test]
async fn a_purge_runs_dry_then_with_its_confirmed_count_and_only_over_the_tenants_entries() {
    let api = start().await;
    let acme = api.acme_key.clone();
    let seq_of = |page: &Value| page["entries"][0]["seq"].as_u64().unwrap();
    let (_, page) = api.call("GET", "/v1/tenants/acme/dlq", &acme, None).await;
    let acme_seq = seq_of(&page);
    let (_, page) = api
        .call("GET", "/v1/tenants/globex/dlq", OPERATOR, None)
        .await;
    let globex_seq = seq_of(&page);
    let purge = |body: Value| {
        let api = &api;
        let acme = acme.clone();
        async move {
            api.call("POST", "/v1/tenants/acme/dlq/purge", &acme, Some(body))
                .await
        }
    };

    // Jobs first, while the entries are there: listed and cancelled by their own tenant only.
    let (status, job) = api
        .call(
            "POST",
            "/v1/tenants/acme/dlq/replay",
            &acme,
            Some(json!({"dry_run": true})),
        )
        .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{job}");
    let job_id = job["id"].as_str().unwrap().to_owned();
    let globex = manage_key(&api.provisioned.js, "globex").await;
    let ids = |jobs: &Value| -> Vec<String> {
        jobs.as_array()
            .unwrap()
            .iter()
            .filter_map(|j| j["id"].as_str().map(str::to_owned))
            .collect()
    };
    let (status, jobs) = api.call("GET", "/v1/jobs", &acme, None).await;
    assert_eq!(status, StatusCode::OK, "{jobs}");
    assert_eq!(ids(&jobs), vec![job_id.clone()]);
    let (_, jobs) = api.call("GET", "/v1/jobs", &globex, None).await;
    assert!(ids(&jobs).is_empty(), "{jobs}");
    let (_, jobs) = api.call("GET", "/v1/jobs", OPERATOR, None).await;
    assert_eq!(ids(&jobs), vec![job_id.clone()]);
    let cancel = format!("/v1/jobs/{job_id}/cancel");
    let (status, _) = api.call("POST", &cancel, &globex, None).await;
    assert_eq!(status, StatusCode::NOT_FOUND, "another tenant's job");
    let (status, cancelled) = api.call("POST", &cancel, &acme, None).await;
    assert_eq!(status, StatusCode::OK, "{cancelled}");
    assert_eq!(cancelled["job"]["state"], "cancelled");
    let (status, again) = api.call("POST", &cancel, &acme, None).await;
    assert_eq!(status, StatusCode::CONFLICT, "{again}");
    assert_eq!(again["error"], "finished");
    let (status, _) = api
        .call("POST", "/v1/jobs/Not_A_Job/cancel", &acme, None)
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);

    // A dry run says what would go.
    let (status, dry) = purge(json!({"dry_run": true})).await;
    assert_eq!(status, StatusCode::OK, "{dry}");
    assert_eq!(dry["matched"], 1);
    assert_eq!(dry["selected"], json!([acme_seq]));
    assert_eq!(dry["through"], acme_seq);
    assert_eq!(dry["removed"], json!([]));
    // Without the confirmation, or with another count, nothing goes.
    let (status, body) = purge(json!({})).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    assert_eq!(body["error"], "confirmation_required");
    let (status, body) = purge(json!({"confirm": 1})).await;
    assert_eq!(
        status,
        StatusCode::UNPROCESSABLE_ENTITY,
        "without through: {body}"
    );
    assert_eq!(body["error"], "confirmation_required");
    let (status, body) = purge(json!({"confirm": 2, "through": acme_seq})).await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
    assert_eq!(body["error"], "count_mismatch");
    // Below the entry: it is not selected, so the count differs and nothing goes.
    let (status, body) = purge(json!({"confirm": 1, "through": acme_seq - 1})).await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
    let (status, _) = purge(json!({"seqs": [acme_seq], "code": "retries_exhausted"})).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "seqs or filters");
    // Another tenant's entries: out of reach by its path, and by sequence under one's own.
    let (status, body) = api
        .call(
            "POST",
            "/v1/tenants/globex/dlq/purge",
            &acme,
            Some(json!({"confirm": 1})),
        )
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    assert_eq!(body["error"], "tenant_mismatch");
    let (status, listed) = purge(json!({"seqs": [globex_seq], "confirm": 0})).await;
    assert_eq!(status, StatusCode::OK, "{listed}");
    assert_eq!(listed["matched"], 0);
    assert_eq!(listed["removed"], json!([]));
    assert_eq!(listed["not_found"], json!([globex_seq]));
    let (status, _) = api
        .call(
            "GET",
            &format!("/v1/tenants/acme/dlq/{acme_seq}"),
            &acme,
            None,
        )
        .await;
    assert_eq!(status, StatusCode::OK, "still there after every refusal");

    // Confirmed: exactly the tenant's entry goes.
    let (status, done) = purge(json!({"code": "retries_exhausted", "confirm": 1,
                                      "through": acme_seq}))
    .await;
    assert_eq!(status, StatusCode::OK, "{done}");
    assert_eq!(done["dry_run"], false);
    assert_eq!(done["removed"], json!([acme_seq]));
    let (_, page) = api.call("GET", "/v1/tenants/acme/dlq", &acme, None).await;
    assert_eq!(page["entries"], json!([]), "{page}");
    let (status, _) = api
        .call(
            "GET",
            &format!("/v1/tenants/globex/dlq/{globex_seq}"),
            OPERATOR,
            None,
        )
        .await;
    assert_eq!(status, StatusCode::OK, "globex's entry is untouched");
    // Nothing left: a purge of nothing deletes nothing.
    let (status, empty) = purge(json!({"confirm": 0, "through": 0})).await;
    assert_eq!(status, StatusCode::OK, "{empty}");
    assert_eq!(empty["matched"], 0);
}

#[tokio::test]
async fn the_probes_answer_without_a_token() {
    let api = start().await;
    for path in ["/healthz", "/readyz"] {
        let response = reqwest::get(format!("{}{path}", api.base)).await.unwrap();
        assert_eq!(response.status(), StatusCode::OK, "{path}");
    }
}

#[tokio::test]
async fn the_operator_registers_and_disables_tenants_and_a_tenant_key_cannot() {
    let api = start().await;
    let js = &api.provisioned.js;
    // A new tenant, with a quota and a name: its ingress stream exists with that quota.
    let (status, body) = api
        .call(
            "POST",
            "/v1/tenants/initech/enable",
            OPERATOR,
            Some(
                json!({"max_msgs": 500, "name": "Initech", "unmatched": "drop",
                        "destination_rate_limit": {"rate_per_sec": 5.0, "burst": 2}}),
            ),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["tenant"], "initech");
    assert_eq!(body["record"]["enabled"], true);
    assert_eq!(body["record"]["name"], "Initech");
    assert_eq!(body["record"]["unmatched"], "drop");
    let stream = js.get_stream("INGRESS_initech").await.unwrap();
    assert_eq!(stream.cached_info().config.max_messages, 500);
    // Re-enabling keeps what is not given; null removes a name.
    let (status, body) = api
        .call(
            "POST",
            "/v1/tenants/initech/enable",
            OPERATOR,
            Some(json!({"name": null})),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert!(body["record"].get("name").is_none(), "{body}");
    assert_eq!(body["record"]["unmatched"], "drop");
    assert_eq!(
        body["record"]["destination_rate_limit"]["rate_per_sec"],
        5.0
    );

    // Bad settings are refused by name, before anything changes.
    for (request, field) in [
        (
            json!({"max_bytes": 300}),
            "max_bytes 300 is below the largest message",
        ),
        (json!({"max_msgs": 0}), "max_msgs 0 is below 1"),
        (json!({"name": "a\u{1b}[31m"}), "name "),
        (json!({"unmatched": "keep"}), "unmatched \"keep\""),
        (
            json!({"destination_rate_limit": {"rate_per_sec": 0.0, "burst": 1}}),
            "destination_rate ",
        ),
    ] {
        let (status, body) = api
            .call(
                "POST",
                "/v1/tenants/initech/enable",
                OPERATOR,
                Some(request),
            )
            .await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
        assert!(
            body["message"].as_str().unwrap().starts_with(field),
            "{field}: {body}"
        );
    }
    let (status, _) = api
        .call(
            "POST",
            "/v1/tenants/initech/enable",
            OPERATOR,
            Some(json!({"quota": 1})),
        )
        .await;
    assert_eq!(
        status,
        StatusCode::BAD_REQUEST,
        "unknown fields are refused"
    );
    // More than the server can reserve: refused by it, and the tenant is not registered.
    let (status, body) = api
        .call(
            "POST",
            "/v1/tenants/hooli/enable",
            OPERATOR,
            Some(json!({"max_bytes": 1_125_899_906_842_624_i64})),
        )
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    assert_eq!(body["error"], "provisioning_refused");
    let (status, _) = api.call("GET", "/v1/tenants/hooli", OPERATOR, None).await;
    assert_eq!(status, StatusCode::NOT_FOUND);

    // A tenant's key can neither register tenants nor raise its own quota, nor disable.
    let acme = api.acme_key.clone();
    for path in [
        "/v1/tenants/acme/enable",
        "/v1/tenants/acme/disable",
        "/v1/tenants/initech/enable",
    ] {
        let (status, body) = api
            .call("POST", path, &acme, Some(json!({"max_msgs": 1_000_000})))
            .await;
        assert!(status == StatusCode::FORBIDDEN, "{path}: {status} {body}");
    }

    // Disabled: its record says so, and its keys are refused.
    let initech = manage_key(js, "initech").await;
    let (status, _) = api.call("GET", "/v1/tenants/initech", &initech, None).await;
    assert_eq!(status, StatusCode::OK);
    let (status, body) = api
        .call("POST", "/v1/tenants/initech/disable", OPERATOR, None)
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["record"]["enabled"], false);
    let (status, body) = api.call("GET", "/v1/tenants/initech", &initech, None).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    assert_eq!(body["error"], "tenant_disabled");
    let (status, _) = api
        .call("POST", "/v1/tenants/nobody/disable", OPERATOR, None)
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn what_a_hostile_tenant_or_a_stranger_sends_is_refused_before_it_costs_anything() {
    let api = start().await;
    let acme = api.acme_key.clone();
    let client = reqwest::Client::new();
    // No credentials: 401 at once, body unread (a large one too); the description needs none.
    let response = client
        .post(format!("{}/v1/tenants/acme/dlq/purge", api.base))
        .body(vec![b'x'; 200_000])
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
    let response = client
        .get(format!("{}/openapi.json", api.base))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    // A body over 256 KiB: 413.
    let response = client
        .put(format!("{}/v1/tenants/acme/destinations/big", api.base))
        .bearer_auth(&acme)
        .body(vec![b' '; 300 * 1024])
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::PAYLOAD_TOO_LARGE);
    // A destination that would take more than its share of the bucket every tenant shares.
    let headers: serde_json::Map<String, Value> = (0..16)
        .map(|i| (format!("x-pad-{i}"), Value::String("v".repeat(2000))))
        .collect();
    let (status, body) = api
        .call(
            "PUT",
            "/v1/tenants/acme/destinations/fat",
            &acme,
            Some(
                json!({"target": {"type": "webhook", "url": "https://hooks.example.com/in",
                                   "secret": "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
                                   "headers": headers}}),
            ),
        )
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    assert!(
        body["message"].as_str().unwrap().contains("at most 16384"),
        "{body}"
    );
    // What an operator disabled, the tenant cannot enable.
    let (status, _) = api
        .call(
            "POST",
            "/v1/tenants/acme/destinations/crm/disable",
            OPERATOR,
            Some(json!({"reason": "abuse report"})),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    let (status, body) = api
        .call(
            "POST",
            "/v1/tenants/acme/destinations/crm/enable",
            &acme,
            None,
        )
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    assert_eq!(body["error"], "operator_only");
    // Nor delete it to create it again, enabled.
    let (status, body) = api
        .call("DELETE", "/v1/tenants/acme/destinations/crm", &acme, None)
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    assert_eq!(body["error"], "operator_only");
    let (status, _) = api
        .call(
            "POST",
            "/v1/tenants/acme/destinations/crm/enable",
            OPERATOR,
            None,
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    // At most ten replay jobs pending at once (no dlq service runs here: they stay pending).
    for n in 0..10 {
        let (status, body) = api
            .call(
                "POST",
                "/v1/tenants/acme/dlq/replay",
                &acme,
                Some(json!({"dry_run": true})),
            )
            .await;
        assert_eq!(status, StatusCode::ACCEPTED, "job {n}: {body}");
    }
    let (status, body) = api
        .call(
            "POST",
            "/v1/tenants/acme/dlq/replay",
            &acme,
            Some(json!({"dry_run": true})),
        )
        .await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS, "{body}");
    assert_eq!(body["error"], "too_many_jobs");
    // Another tenant's jobs do not count against globex.
    let globex = manage_key(&api.provisioned.js, "globex").await;
    let (status, body) = api
        .call(
            "POST",
            "/v1/tenants/globex/dlq/replay",
            &globex,
            Some(json!({"dry_run": true})),
        )
        .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
}

#[tokio::test]
async fn listings_take_the_clis_filters_and_refuse_unknown_parameters() {
    let api = start().await;
    let acme = api.acme_key.clone();
    for path in [
        "/v1/tenants/acme/attempts?message=order-1&since=2h&until=2099-01-01T00:00:00Z&result=permanent&limit=1000",
        "/v1/tenants/acme/attempts?failed=true&destination=crm",
        "/v1/tenants/acme/events?kind=breaker_opened&limit=5",
        "/v1/tenants/acme/dlq?code=retries_exhausted&limit=5",
    ] {
        let (status, body) = api.call("GET", path, &acme, None).await;
        assert_eq!(status, StatusCode::OK, "{path}: {body}");
    }
    for (path, says) in [
        (
            "/v1/tenants/acme/attempts?mesage=order-1",
            "unknown query parameter \"mesage\"",
        ),
        ("/v1/tenants/acme/attempts?since=yesterday", "since: "),
        (
            "/v1/tenants/acme/attempts?failed=true&result=delivered",
            "result must be",
        ),
        (
            "/v1/tenants/acme/events?tenant=globex",
            "unknown query parameter \"tenant\"",
        ),
        (
            "/v1/tenants/acme/dlq?stage=egress",
            "unknown query parameter \"stage\"",
        ),
    ] {
        let (status, body) = api.call("GET", path, &acme, None).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{path}: {body}");
        assert!(
            body["message"].as_str().unwrap().contains(says),
            "{path}: {body}"
        );
    }
}

#[tokio::test]
async fn an_api_without_the_kek_refuses_an_encrypted_tenants_destination_secret() {
    let api = start().await;
    let js = &api.provisioned.js;
    let keys = switchyard_crypt::KeyStore::new(js.get_key_value("tenant-keys").await.unwrap());
    let ring = switchyard_crypt::KekRing::new(switchyard_crypt::LocalKek::generate().unwrap());
    keys.enable(
        &"acme".parse().unwrap(),
        &ring,
        time::OffsetDateTime::now_utc(),
    )
    .await
    .unwrap();
    let body = json!({"target": {"type": "webhook", "url": "https://crm.example/in",
                                 "secret": "whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD"}});
    let (status, answer) = api
        .call(
            "PUT",
            "/v1/tenants/acme/destinations/erp",
            OPERATOR,
            Some(body.clone()),
        )
        .await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{answer}");
    assert_eq!(answer["error"], "kek_required", "{answer}");
    let message = answer["message"].as_str().unwrap();
    assert!(message.contains("--kek-file"), "{message}");
    assert!(!message.contains("C2FVsBQ"), "{message}");
    let destinations = js.get_key_value("destinations").await.unwrap();
    assert!(destinations.get("acme.erp").await.unwrap().is_none());
    // A tenant with encryption off is written as before.
    let (status, _) = api
        .call(
            "PUT",
            "/v1/tenants/globex/destinations/erp",
            OPERATOR,
            Some(body),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
}

#[tokio::test]
async fn a_destination_secret_rotates_to_a_generated_one_shown_once_and_within_its_tenant() {
    let api = start().await;
    let js = &api.provisioned.js;
    let destinations = js.get_key_value("destinations").await.unwrap();
    let stored = || async {
        let raw = destinations.get("acme.crm").await.unwrap().unwrap();
        serde_json::from_slice::<Value>(&raw).unwrap()
    };
    // An empty body: a generated secret, returned once; the old one signs for 24 h more.
    let (status, answer) = api
        .call(
            "POST",
            "/v1/tenants/acme/destinations/crm/rotate-secret",
            &api.acme_key,
            None,
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    let secret = answer["secret"].as_str().unwrap().to_owned();
    assert!(
        secret.starts_with("whsec_") && secret.len() > 40,
        "{answer}"
    );
    assert!(
        answer["signing"]
            .as_str()
            .unwrap()
            .contains("1 previous secret signs too"),
        "{answer}"
    );
    let record = stored().await;
    assert_eq!(record["target"]["secret"], secret.as_str());
    assert_eq!(
        record["target"]["previous_secrets"][0]["secret"],
        "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
    );
    // Never shown again: the destination reads redacted.
    let (_, shown) = api
        .call("GET", "/v1/tenants/acme/destinations/crm", OPERATOR, None)
        .await;
    assert!(!shown.to_string().contains(&secret[6..]), "{shown}");
    // A given secret with no overlap: not returned, and the current one stops at once.
    let given = "whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD";
    let (status, answer) = api
        .call(
            "POST",
            "/v1/tenants/acme/destinations/crm/rotate-secret",
            OPERATOR,
            Some(json!({"secret": given, "overlap": "0s"})),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    assert!(answer.get("secret").is_none(), "{answer}");
    let record = stored().await;
    assert_eq!(record["target"]["secret"], given);
    // The 24 h overlap of the first rotation still runs; revoking stops it.
    assert_eq!(
        record["target"]["previous_secrets"]
            .as_array()
            .unwrap()
            .len(),
        1
    );
    let (status, answer) = api
        .call(
            "POST",
            "/v1/tenants/acme/destinations/crm/rotate-secret",
            OPERATOR,
            Some(json!({"rotate": false, "revoke_previous": true})),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    assert!(
        stored().await["target"]["previous_secrets"]
            .as_array()
            .is_none_or(Vec::is_empty)
    );
    // Refused, nothing written: a reused secret, a bad overlap, an unknown field, nothing to
    // do, another tenant's destination, an absent one.
    for (path, body, expected) in [
        ("acme/destinations/crm", json!({"secret": given}), 422),
        ("acme/destinations/crm", json!({"overlap": "31d"}), 422),
        ("acme/destinations/crm", json!({"overlap": "soon"}), 400),
        ("acme/destinations/crm", json!({"secrets": given}), 400),
        ("acme/destinations/crm", json!({"rotate": false}), 400),
        ("acme/destinations/crm", json!({"overlap": ""}), 400),
        (
            "acme/destinations/crm",
            json!({"secret": format!("whsec_{}", "A".repeat(100_000))}),
            422,
        ),
        (
            "acme/destinations/crm",
            json!({"rotate": false, "revoke_previous": true, "overlap": "1h"}),
            400,
        ),
        ("globex/destinations/crm", json!({}), 403),
        ("acme/destinations/nope", json!({}), 404),
    ] {
        let (status, answer) = api
            .call(
                "POST",
                &format!("/v1/tenants/{path}/rotate-secret"),
                &api.acme_key,
                Some(body.clone()),
            )
            .await;
        assert_eq!(status.as_u16(), expected, "{path} {body}: {answer}");
    }
    assert_eq!(stored().await["target"]["secret"], given);
    // Reported, without the secret.
    let (_, events) = api
        .call(
            "GET",
            "/v1/tenants/acme/events?kind=secret_rotated",
            OPERATOR,
            None,
        )
        .await;
    let events = events["events"].as_array().unwrap();
    assert_eq!(events.len(), 3, "{events:?}");
    assert!(!Value::from(events.clone()).to_string().contains("whsec_"));
}

#[tokio::test]
async fn a_tenants_dlq_exports_as_ndjson_that_names_its_own_entries_only() {
    let api = start().await;
    let export = |path: &str, token: &str| {
        let url = format!("{}{path}", api.base);
        let token = token.to_owned();
        async move {
            let answer = reqwest::Client::new()
                .get(url)
                .bearer_auth(token)
                .send()
                .await
                .unwrap();
            let status = answer.status();
            let kind = answer
                .headers()
                .get("content-type")
                .map(|v| v.to_str().unwrap().to_owned());
            (status, kind, answer.text().await.unwrap())
        }
    };
    let (status, kind, body) = export("/v1/tenants/acme/dlq/export", &api.acme_key).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(kind.as_deref(), Some("application/x-ndjson"));
    let lines: Vec<Value> = body
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 1, "{body}");
    assert_eq!(lines[0]["tenant"], "acme", "{body}");
    assert!(lines[0]["stored_headers"].is_array(), "{body}");
    // Filters narrow it; another tenant's export and bad filters are refused.
    let (_, _, none) = export("/v1/tenants/acme/dlq/export?code=no_route", &api.acme_key).await;
    assert_eq!(none, "");
    let (_, _, recent) = export("/v1/tenants/acme/dlq/export?since=1h", OPERATOR).await;
    assert_eq!(recent.lines().count(), 1);
    for (path, expected) in [
        ("/v1/tenants/globex/dlq/export", 403),
        ("/v1/tenants/acme/dlq/export?since=soon", 400),
        ("/v1/tenants/acme/dlq/export?limit=1", 400),
        ("/v1/tenants/acme/dlq/export?since=1h&until=2h", 400),
        (
            "/v1/tenants/acme/dlq/export?code=no_route&code=retries_exhausted",
            400,
        ),
    ] {
        let (status, _, body) = export(path, &api.acme_key).await;
        assert_eq!(status.as_u16(), expected, "{path}: {body}");
    }
}

#[tokio::test]
async fn the_operator_makes_portal_links_for_registered_enabled_tenants_only() {
    let api = start().await;
    let (status, link) = api
        .call(
            "POST",
            "/v1/tenants/acme/portal-link",
            OPERATOR,
            Some(json!({"ttl_secs": 600})),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{link}");
    let path = link["path"].as_str().unwrap();
    assert!(path.starts_with("/ui/portal?token="), "{link}");
    // The link opens a portal session of acme.
    let opened = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap()
        .get(format!("{}{path}", api.base))
        .send()
        .await
        .unwrap();
    assert_eq!(opened.status(), StatusCode::SEE_OTHER);
    assert!(
        opened
            .headers()
            .get_all("set-cookie")
            .iter()
            .any(|c| c.to_str().unwrap().starts_with("sy_session=")),
        "no session"
    );
    api.call("POST", "/v1/tenants/globex/disable", OPERATOR, None)
        .await;
    for (path, token, body, expected) in [
        ("acme", api.acme_key.as_str(), json!({}), 403),
        ("nobody", OPERATOR, json!({}), 404),
        ("globex", OPERATOR, json!({}), 422),
        ("acme", OPERATOR, json!({"ttl_secs": 10}), 422),
        ("acme", OPERATOR, json!({"ttl": 600}), 400),
    ] {
        let (status, answer) = api
            .call(
                "POST",
                &format!("/v1/tenants/{path}/portal-link"),
                token,
                Some(body.clone()),
            )
            .await;
        assert_eq!(status.as_u16(), expected, "{path} {body}: {answer}");
        assert!(answer.get("path").is_none(), "{answer}");
    }
}
