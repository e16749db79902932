//! `switchyard doctor`: every check with ok / warn / fail and its fix; exit 0, 1 or 2.

use async_nats::jetstream;
use serde_json::Value;
use switchyard_testkit::NatsServer;

use crate::fixtures::DlqService;
use crate::{ok, provisioned, stdout, switchyard};

/// Runs `doctor --json` (with `extra` arguments); returns the exit code and the checks.
async fn doctor(url: &str, extra: &[&str]) -> (Option<i32>, Value) {
    let args: Vec<&str> = ["doctor", "--json"]
        .into_iter()
        .chain(extra.iter().copied())
        .collect();
    let output = switchyard(url, &args).await;
    let report: Value = serde_json::from_str(&stdout(&output))
        .unwrap_or_else(|e| panic!("doctor --json: {e}: {}", stdout(&output)));
    (output.status.code(), report)
}

/// The check named `name`.
fn check<'a>(report: &'a Value, name: &str) -> &'a Value {
    report["checks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["check"] == name)
        .unwrap_or_else(|| panic!("no check {name:?} in {report:#}"))
}

#[tokio::test]
async fn doctor_fails_on_a_stock_server_naming_the_max_payload_fix() {
    let (server, _dir) = crate::stock_payload_server().await;
    let url = server.url();

    let (code, report) = doctor(&url, &[]).await;
    assert_eq!(code, Some(2), "a failed check exits 2: {report:#}");
    assert_eq!(report["status"], "fail");
    let payload = check(&report, "max payload");
    assert_eq!(payload["level"], "fail");
    let detail = payload["detail"].as_str().unwrap();
    assert!(
        detail.contains("stream EGRESS: max_msg_size 1114112 > the server's max_payload 1048576"),
        "{payload}"
    );
    assert!(
        !detail.contains("max_payload: 2MB"),
        "the fix is in its own column: {payload}"
    );
    assert!(
        payload["fix"]
            .as_str()
            .unwrap()
            .contains("max_payload: 2MB"),
        "{payload}"
    );
    // Nothing is provisioned on it: one check lists every missing item, with what to do first.
    let topology = check(&report, "topology");
    assert_eq!(topology["level"], "fail");
    let missing = topology["detail"].as_str().unwrap();
    assert!(
        missing.starts_with("36 of 36 declared items are missing: "),
        "{missing}"
    );
    assert!(
        missing.contains("stream DLQ") && missing.contains("bucket routes"),
        "{missing}"
    );
    assert_eq!(
        topology["fix"],
        "fix max payload (above), then run `switchyard provision`"
    );
    assert_eq!(check(&report, "jetstream")["level"], "ok");
    assert_eq!(check(&report, "server version")["level"], "ok");
    assert!(
        server_unchanged(&server).await,
        "the doctor changes nothing on the server"
    );

    // The same for people: one row per check, the fix on it, the totals last.
    let human = switchyard(&url, &["doctor"]).await;
    assert_eq!(human.status.code(), Some(2));
    let text = stdout(&human);
    let row = text
        .lines()
        .find(|l| l.starts_with("max payload"))
        .unwrap_or_else(|| panic!("{text}"));
    assert!(row.contains("  fail  "), "{row}");
    assert!(text.contains("max_payload: 2MB"), "{text}");
    assert!(text.trim_end().ends_with(" fail"), "{text}");
}

/// Whether the server still has no streams.
async fn server_unchanged(server: &NatsServer) -> bool {
    let js = jetstream::new(server.client().await);
    js.query_account().await.unwrap().streams == 0
}

#[tokio::test]
async fn doctor_passes_on_the_bundled_config_then_flags_drift_a_full_quota_and_a_dead_service() {
    let server = provisioned().await;
    let url = server.url();
    let js = jetstream::new(server.client().await);
    ok(&url, &["tenants", "enable", "acme", "--max-msgs", "2"]).await;
    let dlq = DlqService::start(&url).await;
    let ready = format!("http://{}/readyz", dlq.probes_addr());

    let (code, report) = doctor(&url, &["--ready", &ready]).await;
    assert_eq!(code, Some(0), "{report:#}");
    assert_eq!(report["status"], "ok");
    for c in report["checks"].as_array().unwrap() {
        assert_eq!(c["level"], "ok", "{c}");
    }
    for name in [
        "connection",
        "server version",
        "jetstream",
        "max payload",
        "topology",
        "fill",
        "clock",
        "permissions",
    ] {
        check(&report, name);
    }
    assert_eq!(
        check(&report, &format!("ready {ready}"))["detail"],
        "200 OK"
    );
    assert!(
        check(&report, "topology")["detail"]
            .as_str()
            .unwrap()
            .contains("registered tenants: 1"),
        "{report:#}"
    );

    // A tenant's consumer whose state is in memory, gone (as after a server restart): the
    // services create it again, so a warning saying so, not a missing-topology failure.
    js.delete_consumer_from_stream("ingress-worker", "INGRESS_acme")
        .await
        .unwrap();
    let (code, report) = doctor(&url, &[]).await;
    assert_eq!(code, Some(1), "the worst is a warning: {report:#}");
    let consumers = check(&report, "tenant consumers");
    assert_eq!(consumers["level"], "warn");
    assert!(
        consumers["detail"]
            .as_str()
            .unwrap()
            .starts_with("1 missing: consumer INGRESS_acme/ingress-worker (their state is kept in nats-server's memory"),
        "{consumers}"
    );
    assert!(
        report["checks"]
            .as_array()
            .unwrap()
            .iter()
            .all(|c| c["level"] != "fail"),
        "not a missing-topology failure: {report:#}"
    );
    ok(&url, &["provision"]).await;

    // Drift in a shared stream: a warning with the fix.
    crate::drift_egress(&js).await;
    let (code, report) = doctor(&url, &[]).await;
    assert_eq!(code, Some(1), "the worst is a warning: {report:#}");
    let drift = check(&report, "stream EGRESS");
    assert_eq!(drift["level"], "warn");
    assert!(
        drift["detail"]
            .as_str()
            .unwrap()
            .contains("max_bytes: declared 1073741824 but is 536870912"),
        "{drift}"
    );
    assert!(drift["fix"].as_str().unwrap().contains("provision --fix"));
    ok(&url, &["provision", "--fix"]).await;

    // A tenant whose quota is full (its publishes are refused): a failure.
    for n in 0..2 {
        ok(
            &url,
            &[
                "publish",
                "acme",
                "ops",
                "slack",
                "--data",
                &format!("{{\"n\":{n}}}"),
            ],
        )
        .await;
    }
    let (code, report) = doctor(&url, &[]).await;
    assert_eq!(code, Some(2), "{report:#}");
    let quota = check(&report, "tenant acme quota");
    assert_eq!(quota["level"], "fail");
    assert_eq!(quota["detail"], "100.0% full");

    // A service that stopped answering its readiness probe.
    dlq.stop().await;
    let (code, report) = doctor(&url, &["--ready", &ready]).await;
    assert_eq!(code, Some(2));
    let probe = check(&report, &format!("ready {ready}"));
    assert_eq!(probe["level"], "fail");
    assert!(
        probe["detail"].as_str().unwrap().starts_with("no answer"),
        "{probe}"
    );
}

#[tokio::test]
async fn doctor_on_an_unreachable_server_is_one_failed_check_not_an_error() {
    let output = switchyard("nats://127.0.0.1:1", &["doctor"]).await;
    assert_eq!(output.status.code(), Some(2));
    let text = stdout(&output);
    assert!(text.starts_with("CHECK"), "{text}");
    assert!(text.contains("connection  fail"), "{text}");
    assert!(text.contains("start nats-server"), "{text}");

    // Arguments it cannot use exit 2 as well (1 would read as "warnings").
    for bad in [
        &["doctor", "--ready", "ftp://host/x"][..],
        &["doctor", "--fill-warn", "nan"],
        &["doctor", "--fill-warn", "90", "--fill-fail", "50"],
    ] {
        let output = switchyard("nats://127.0.0.1:1", bad).await;
        assert_eq!(
            output.status.code(),
            Some(2),
            "{bad:?}: {}",
            crate::stderr(&output)
        );
    }
}

#[tokio::test]
async fn doctor_shows_readiness_urls_without_their_credentials() {
    let server = provisioned().await;
    let url = server.url();
    let dlq = DlqService::start(&url).await;
    let ready = format!(
        "http://probe:s3cret@{}/readyz?token=T0KEN",
        dlq.probes_addr()
    );
    let output = switchyard(&url, &["doctor", "--ready", &ready]).await;
    let text = format!("{}{}", stdout(&output), crate::stderr(&output));
    assert!(
        text.contains(&format!("ready http://{}/readyz", dlq.probes_addr())),
        "{text}"
    );
    for secret in ["s3cret", "T0KEN", "probe:"] {
        assert!(!text.contains(secret), "{secret} in {text}");
    }
    dlq.stop().await;
}

#[tokio::test]
async fn doctor_names_each_cli_operation_a_restricted_user_may_not_do() {
    let dir = tempfile::tempdir().unwrap();
    let conf = dir.path().join("restricted.conf");
    // An operator account with two users: admin (everything) and ops, who may read and write
    // JetStream and KV but neither the routes bucket nor the DLQ's deletes, nor any pipeline
    // subject.
    std::fs::write(
        &conf,
        r#"max_payload: 2MB
jetstream { max_memory_store: 256MB, max_file_store: 16GB }
accounts {
  OPS {
    jetstream: enabled
    users: [
      { user: admin, password: admin-pass }
      { user: nojs, password: nojs-pass, permissions: { publish: { allow: ["nothing.>"] } } }
      {
        user: ops, password: ops-pass
        permissions: {
          publish: {
            allow: ["$JS.API.>", "$KV.>", "$SYS.REQ.USER.INFO"]
            deny: ["$KV.routes.>", "$JS.API.STREAM.MSG.DELETE.>"]
          }
          subscribe: { allow: ["_INBOX.>"] }
        }
      }
    ]
  }
}
"#,
    )
    .unwrap();
    let server = NatsServer::start_with_args(&["-c", conf.to_str().unwrap()]).await;
    let url = server.url();
    // Each user's credentials in a CLI config file (`nats.user`, `nats.password`).
    let config = |user: &str, password: &str| {
        let path = dir.path().join(format!("{user}.toml"));
        std::fs::write(
            &path,
            format!("[nats]\nuser = \"{user}\"\npassword = \"{password}\"\n"),
        )
        .unwrap();
        path.to_str().unwrap().to_owned()
    };
    // Credentials may also ride in the server URL (`nats://user:password@host`).
    let as_admin = url.replacen("nats://", "nats://admin:admin-pass@", 1);
    ok(&as_admin, &["provision"]).await;

    let ops = config("ops", "ops-pass");
    let (code, report) = doctor(&url, &["--config", &ops]).await;
    assert_eq!(code, Some(1), "only warnings: {report:#}");
    let read = check(&report, "permission: read JetStream");
    assert_eq!(read["level"], "ok", "{read}");
    assert!(
        read["detail"]
            .as_str()
            .unwrap()
            .starts_with("user ops in account OPS may"),
        "{read}"
    );
    for (operation, denied) in [
        ("write the registry", "publish $KV.routes.doctor"),
        (
            "replay and purge the DLQ",
            "publish $JS.API.STREAM.MSG.DELETE.DLQ",
        ),
        ("replay and purge the DLQ", "publish backpressure.v1.doctor"),
        ("publish test messages", "publish ingress.v1.doctor"),
    ] {
        let c = check(&report, &format!("permission: {operation}"));
        assert_eq!(c["level"], "warn", "{c}");
        assert!(
            c["detail"].as_str().unwrap().contains(denied),
            "{denied}: {c}"
        );
    }
    assert_eq!(check(&report, "permission: provision")["level"], "ok");
    assert_eq!(check(&report, "clock")["level"], "ok");

    // Any command whose request the server refuses times out; the error says where to look.
    let path = dir.path().join("nojs.toml");
    std::fs::write(
        &path,
        "[nats]\nuser = \"nojs\"\npassword = \"nojs-pass\"\nrequest_timeout_secs = 1\n",
    )
    .unwrap();
    let err = crate::fails(&url, &["--config", path.to_str().unwrap(), "status"]).await;
    assert!(err.contains("timed out"), "{err}");
    assert!(
        err.contains(
            "hint: a request that gets no answer may be refused by the NATS user's permissions"
        ),
        "{err}"
    );
}
