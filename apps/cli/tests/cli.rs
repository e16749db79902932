//! The `switchyard` binary against a real nats-server: what it prints and how it exits.

use std::process::{Command, Output};
use std::time::Duration;

use switchyard_testkit::{NatsServer, free_port};

fn switchyard(server: &str, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_switchyard"))
        .args(["--server", server])
        .args(args)
        .env_remove("SWITCHYARD_CLI_NATS__URL")
        .output()
        .expect("run switchyard")
}

fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

#[tokio::test]
async fn provision_twice_then_drift_then_fix() {
    let server = NatsServer::start().await;
    let url = server.url();

    let first = switchyard(&url, &["provision"]);
    assert!(first.status.success(), "{first:?}");
    let text = stdout(&first);
    assert!(text.starts_with("KIND      NAME"), "{text}");
    assert!(text.contains("stream    INGRESS"), "{text}");
    assert!(text.trim_end().ends_with("13 created"), "{text}");

    let second = switchyard(&url, &["provision"]);
    assert!(second.status.success());
    assert!(
        stdout(&second)
            .trim_end()
            .ends_with("nothing to change: all 13 declared items exist as declared"),
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

    let drifted = switchyard(&url, &["provision"]);
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

    let fixed = switchyard(&url, &["provision", "--fix", "--json"]);
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

    let before = switchyard(&url, &["status"]);
    assert!(before.status.success());
    let text = stdout(&before);
    assert!(text.contains("INGRESS       missing"), "{text}");
    assert!(
        text.trim_end()
            .ends_with("13 declared items are missing: run `switchyard provision`"),
        "{text}"
    );

    assert!(switchyard(&url, &["provision"]).status.success());
    let js = async_nats::jetstream::new(server.client().await);
    js.publish("egress.v1.acme.ops.slack", "x".into())
        .await
        .unwrap()
        .await
        .unwrap();

    let after = switchyard(&url, &["status"]);
    let text = stdout(&after);
    assert!(
        text.contains("EGRESS/egress-worker              ok     1"),
        "{text}"
    );
    assert!(
        text.contains("TENANT  WAITING IN  MESSAGES\nacme    EGRESS      1"),
        "{text}"
    );

    let json = switchyard(&url, &["status", "--json"]);
    let report: serde_json::Value = serde_json::from_slice(&json.stdout).unwrap();
    assert_eq!(report["streams"].as_array().unwrap().len(), 5);
    assert_eq!(report["tenant_backlog"][0]["tenant"], "acme");
    assert_eq!(report["consumers"][3]["pending"], 1);
}

#[test]
fn unreachable_nats_is_a_clear_error_not_a_hang() {
    let url = format!("nats://127.0.0.1:{}", free_port());
    let started = std::time::Instant::now();
    let output = switchyard(&url, &["status"]);
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
    let output = switchyard("nats://127.0.0.1:1", &["--prefix", "Prod.EU", "status"]);
    assert_eq!(output.status.code(), Some(1));
    let err = String::from_utf8_lossy(&output.stderr);
    assert!(
        err.contains("--prefix: deployment prefix \"Prod.EU\" has an invalid character 'P'"),
        "{err}"
    );
}
