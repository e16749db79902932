//! `provision`, `status`, and the errors every command shares.

use std::time::Duration;

use switchyard_testkit::{NatsServer, free_port};

use crate::{fails, stdout, switchyard, switchyard_blocking};

#[tokio::test]
async fn provision_twice_then_drift_then_fix() {
    let server = NatsServer::start().await;
    let url = server.url();

    let first = switchyard(&url, &["provision"]).await;
    assert!(first.status.success(), "{first:?}");
    let text = stdout(&first);
    assert!(text.starts_with("KIND      NAME"), "{text}");
    assert!(text.contains("stream    INGRESS"), "{text}");
    assert!(text.trim_end().ends_with("14 created"), "{text}");

    let second = switchyard(&url, &["provision"]).await;
    assert!(second.status.success());
    assert!(
        stdout(&second)
            .trim_end()
            .ends_with("nothing to change: all 14 declared items exist as declared"),
        "{}",
        stdout(&second)
    );

    let js = async_nats::jetstream::new(server.client().await);
    let mut ingress = js
        .get_stream("INGRESS")
        .await
        .unwrap()
        .cached_info()
        .config
        .clone();
    ingress.max_bytes = 1 << 30;
    js.update_stream(ingress).await.unwrap();

    let drifted = switchyard(&url, &["provision"]).await;
    assert_eq!(drifted.status.code(), Some(3), "drift exits with 3");
    let text = stdout(&drifted);
    assert!(
        text.contains("drifted    max_bytes: declared 4294967296 but is 1073741824"),
        "{text}"
    );
    assert!(
        text.contains("1 drifted (run `switchyard provision --fix` to update in place)"),
        "{text}"
    );

    let fixed = switchyard(&url, &["provision", "--fix", "--json"]).await;
    assert!(fixed.status.success());
    let report: serde_json::Value = serde_json::from_slice(&fixed.stdout).unwrap();
    let ingress = report["items"]
        .as_array()
        .unwrap()
        .iter()
        .find(|i| i["name"] == "INGRESS")
        .unwrap();
    assert_eq!(ingress["outcome"], "updated");
    assert_eq!(ingress["changes"][0]["field"], "max_bytes");
}

#[tokio::test]
async fn status_tables_and_json() {
    let server = NatsServer::start().await;
    let url = server.url();

    let before = switchyard(&url, &["status"]).await;
    assert!(before.status.success());
    let text = stdout(&before);
    assert!(text.contains("INGRESS       missing"), "{text}");
    assert!(
        text.trim_end()
            .ends_with("14 declared items are missing: run `switchyard provision`"),
        "{text}"
    );

    assert!(switchyard(&url, &["provision"]).await.status.success());
    let js = async_nats::jetstream::new(server.client().await);
    js.publish("egress.v1.acme.ops.slack", "x".into())
        .await
        .unwrap()
        .await
        .unwrap();

    let after = switchyard(&url, &["status"]).await;
    let text = stdout(&after);
    let egress_line = text
        .lines()
        .find(|l| l.starts_with("EGRESS/egress-worker"))
        .expect("egress consumer row");
    assert_eq!(
        egress_line.split_whitespace().collect::<Vec<_>>()[..3],
        ["EGRESS/egress-worker", "ok", "1"],
        "{text}"
    );
    assert!(
        text.contains("TENANT  WAITING IN  MESSAGES\nacme    EGRESS      1"),
        "{text}"
    );

    let json = switchyard(&url, &["status", "--json"]).await;
    let report: serde_json::Value = serde_json::from_slice(&json.stdout).unwrap();
    assert_eq!(report["streams"].as_array().unwrap().len(), 5);
    assert_eq!(report["tenant_backlog"][0]["tenant"], "acme");
    let egress = report["consumers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == "egress-worker")
        .unwrap();
    assert_eq!(egress["pending"], 1);
}

#[tokio::test]
async fn commands_on_an_unprovisioned_server_say_to_provision() {
    let server = NatsServer::start().await;
    let url = server.url();
    let dlq_missing = "error: the DLQ stream DLQ does not exist: run `switchyard provision`";
    for args in [
        &["dlq", "ls"][..],
        &["dlq", "tail", "--all", "--limit", "1"],
        &["dlq", "show", "1"],
        &["dlq", "replay", "--all", "--yes"],
        &["dlq", "purge", "--all", "--yes"],
    ] {
        let err = fails(&url, args).await;
        assert!(err.contains(dlq_missing), "{args:?}: {err}");
    }
    let err = fails(&url, &["routes", "ls"]).await;
    assert!(
        err.contains("error: the routes bucket routes does not exist: run `switchyard provision`"),
        "{err}"
    );
    let err = fails(&url, &["tenants", "ls"]).await;
    assert!(
        err.contains("the tenants bucket tenants does not exist"),
        "{err}"
    );
    let err = fails(&url, &["publish", "acme", "ops", "slack", "--data", "x"]).await;
    assert!(
        err.contains("no stream stores ingress.v1.acme.ops.slack: run `switchyard provision`"),
        "{err}"
    );
}

#[test]
fn unreachable_nats_is_a_clear_error_not_a_hang() {
    let url = format!("nats://127.0.0.1:{}", free_port());
    let started = std::time::Instant::now();
    let output = switchyard_blocking(&url, &["status"], None);
    assert_eq!(output.status.code(), Some(1));
    let err = String::from_utf8_lossy(&output.stderr);
    assert!(
        err.contains(&format!(
            "error: cannot connect to nats at {url}; is nats-server running?"
        )),
        "{err}"
    );
    // Not a timing assertion on speed: only that it returns instead of retrying forever.
    assert!(started.elapsed() < Duration::from_secs(60));
}

#[test]
fn bad_prefix_is_refused_before_connecting() {
    let output = switchyard_blocking(
        "nats://127.0.0.1:1",
        &["--prefix", "Prod.EU", "status"],
        None,
    );
    assert_eq!(output.status.code(), Some(1));
    let err = String::from_utf8_lossy(&output.stderr);
    assert!(
        err.contains("--prefix: deployment prefix \"Prod.EU\" has an invalid character 'P'"),
        "{err}"
    );
}

#[test]
fn bad_ids_are_usage_errors_with_exit_code_1() {
    let output = switchyard_blocking(
        "nats://127.0.0.1:1",
        &["dlq", "ls", "--tenant", "Acme"],
        None,
    );
    assert_eq!(output.status.code(), Some(1));
    let err = String::from_utf8_lossy(&output.stderr);
    assert!(
        err.contains("tenant id \"Acme\" has an invalid character 'A'"),
        "{err}"
    );
    let output = switchyard_blocking(
        "nats://127.0.0.1:1",
        &["dlq", "ls", "--since", "yesterday"],
        None,
    );
    assert_eq!(output.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&output.stderr).contains("or an age like 30s, 15m"));
}
