//! `provision`, `status`, and the errors every command shares.

use std::time::Duration;

use async_nats::jetstream::{self, stream};
use switchyard_fixtures::ingress_stream;
use switchyard_testkit::{NatsServer, free_port};

use crate::fixtures::cells;
use crate::{fails, ok, stderr, stdout, switchyard, switchyard_blocking};

#[tokio::test]
async fn provision_twice_then_drift_then_fix() {
    let server = NatsServer::start().await;
    let url = server.url();
    let js = jetstream::new(server.client().await);

    // A legacy shared INGRESS (one stream for every tenant) goes, but only once drained.
    let legacy = js
        .create_stream(stream::Config {
            name: "INGRESS".into(),
            subjects: vec!["ingress.v1.>".into()],
            ..Default::default()
        })
        .await
        .unwrap();
    js.publish("ingress.v1.acme.ops.slack", "x".into())
        .await
        .unwrap()
        .await
        .unwrap();
    let refused = switchyard(&url, &["provision"]).await;
    assert_eq!(refused.status.code(), Some(1), "{refused:?}");
    let err = stderr(&refused);
    assert!(
        err.contains("the shared stream INGRESS (ingress.v1.>) still holds 1 messages"),
        "{err}"
    );
    assert!(
        js.get_stream("INGRESS").await.is_ok(),
        "kept while undrained"
    );
    legacy.purge().await.unwrap();

    let first = switchyard(&url, &["provision"]).await;
    assert!(first.status.success(), "{first:?}");
    let text = stdout(&first);
    assert!(text.starts_with("KIND      NAME"), "{text}");
    let rows: Vec<Vec<&str>> = text.lines().map(cells).collect();
    assert!(
        rows.contains(&vec![
            "stream",
            "INGRESS",
            "removed (drained, no longer declared)"
        ]),
        "{text}"
    );
    assert!(
        rows.contains(&vec!["stream", "IDEMPOTENCY", "created"]),
        "{text}"
    );
    assert!(
        text.trim_end()
            .ends_with("36 created, 1 removed once drained"),
        "{text}"
    );
    assert!(js.get_stream("INGRESS").await.is_err(), "retired");

    let second = switchyard(&url, &["provision"]).await;
    assert!(second.status.success());
    assert!(
        stdout(&second)
            .trim_end()
            .ends_with("nothing to change: all 36 declared items exist as declared"),
        "{}",
        stdout(&second)
    );

    // Registered tenants' streams are provisioned too, with their quota.
    ok(&url, &["tenants", "enable", "acme", "--max-msgs", "50"]).await;
    let third = switchyard(&url, &["provision"]).await;
    assert!(third.status.success());
    let text = stdout(&third);
    let rows: Vec<Vec<&str>> = text.lines().map(cells).collect();
    assert!(
        rows.contains(&vec!["stream", "INGRESS_acme", "unchanged"]),
        "{text}"
    );
    assert!(
        rows.contains(&vec![
            "consumer",
            "INGRESS_acme/ingress-worker",
            "unchanged"
        ]),
        "{text}"
    );
    assert!(
        text.trim_end()
            .ends_with("nothing to change: all 38 declared items exist as declared"),
        "{text}"
    );

    // Drift in a shared stream and in the tenant's (whose declaration is its quota).
    crate::drift_egress(&js).await;
    let mut own = js
        .get_stream(ingress_stream("acme"))
        .await
        .unwrap()
        .cached_info()
        .config
        .clone();
    own.max_bytes = 1 << 20;
    own.max_messages = 1000;
    js.update_stream(own).await.unwrap();

    let drifted = switchyard(&url, &["provision"]).await;
    assert_eq!(drifted.status.code(), Some(3), "drift exits with 3");
    let text = stdout(&drifted);
    assert!(
        text.contains("drifted    max_bytes: declared 1073741824 but is 536870912"),
        "{text}"
    );
    assert!(
        text.contains(
            "drifted    max_bytes: declared 67108864 but is 1048576; \
             max_messages: declared 50 but is 1000"
        ),
        "{text}"
    );
    assert!(
        text.contains("2 drifted (run `switchyard provision --fix` to update in place)"),
        "{text}"
    );

    let fixed = switchyard(&url, &["provision", "--fix", "--json"]).await;
    assert!(fixed.status.success());
    let report: serde_json::Value = serde_json::from_slice(&fixed.stdout).unwrap();
    let item = |name: &str| {
        report["items"]
            .as_array()
            .unwrap()
            .iter()
            .find(|i| i["name"] == name)
            .unwrap_or_else(|| panic!("no {name} in {report}"))
            .clone()
    };
    let egress = item("EGRESS");
    assert_eq!(egress["outcome"], "updated");
    assert_eq!(egress["changes"][0]["field"], "max_bytes");
    let own = item("INGRESS_acme");
    assert_eq!(own["outcome"], "updated");
    assert_eq!(own["changes"][0]["field"], "max_bytes");
    assert_eq!(own["changes"][1]["field"], "max_messages");
    let own = js
        .get_stream(ingress_stream("acme"))
        .await
        .unwrap()
        .cached_info()
        .config
        .clone();
    assert_eq!((own.max_bytes, own.max_messages), (67_108_864, 50));
}

#[tokio::test]
async fn status_tables_and_json() {
    let server = NatsServer::start().await;
    let url = server.url();

    let before = switchyard(&url, &["status"]).await;
    assert_eq!(
        before.status.code(),
        Some(3),
        "missing items exit 3, like drift"
    );
    let text = stdout(&before);
    assert!(text.contains("IDEMPOTENCY      missing"), "{text}");
    assert!(
        !text.contains("INGRESS"),
        "no tenant, no ingress stream: {text}"
    );
    assert!(
        text.trim_end()
            .ends_with("36 declared items are missing: run `switchyard provision`"),
        "{text}"
    );

    assert!(switchyard(&url, &["provision"]).await.status.success());
    ok(&url, &["tenants", "enable", "acme", "--max-msgs", "10"]).await;
    let js = jetstream::new(server.client().await);
    js.publish("egress.v1.acme.ops.slack", "x".into())
        .await
        .unwrap()
        .await
        .unwrap();
    js.publish("ingress.v1.acme.ops.slack", "x".into())
        .await
        .unwrap()
        .await
        .unwrap();
    let ingress_bytes = js
        .get_stream(ingress_stream("acme"))
        .await
        .unwrap()
        .cached_info()
        .state
        .bytes;

    // Two claims, written a moment apart: enough to tell the bucket's write rate.
    let claims = js.get_key_value("idempotency").await.unwrap();
    claims.put("acme.slack.a", "x".into()).await.unwrap();
    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    claims.put("acme.slack.b", "y".into()).await.unwrap();

    let after = switchyard(&url, &["status"]).await;
    let text = stdout(&after);
    // Fill of every stream and bucket against its limit; headroom for the claims.
    let header = text.lines().find(|l| l.starts_with("BUCKET")).unwrap();
    assert_eq!(
        cells(header),
        [
            "BUCKET",
            "STATE",
            "VALUES",
            "BYTES",
            "MAX BYTES",
            "FILL",
            "HEADROOM"
        ]
    );
    let claims_row = cells(
        text.lines()
            .find(|l| l.starts_with("idempotency "))
            .unwrap(),
    );
    assert_eq!(claims_row[..3], ["idempotency", "ok", "2"], "{text}");
    assert_eq!(claims_row[4], "4.0 GiB", "{text}");
    assert_eq!(claims_row[5], "0.0%", "{text}");
    assert!(claims_row[6].ends_with(" h"), "{text}");
    let routes_row = cells(text.lines().find(|l| l.starts_with("routes ")).unwrap());
    assert_eq!(routes_row[4..], ["64.0 MiB", "0.0%", "-"], "{text}");
    let egress_stream = cells(text.lines().find(|l| l.starts_with("EGRESS ")).unwrap());
    assert_eq!(egress_stream[4..6], ["1.0 GiB", "0.0%"], "{text}");
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
    let quotas: Vec<Vec<&str>> = text
        .lines()
        .skip_while(|l| !l.starts_with("TENANT  INGRESS STREAM"))
        .map(cells)
        .take(2)
        .collect();
    assert_eq!(
        quotas,
        [
            vec![
                "TENANT",
                "INGRESS STREAM",
                "MESSAGES",
                "BYTES",
                "QUOTA FILL"
            ],
            vec![
                "acme",
                "INGRESS_acme",
                "1/10",
                &format!("{ingress_bytes}/67108864"),
                "10.0%"
            ],
        ],
        "{text}"
    );

    let json = switchyard(&url, &["status", "--json"]).await;
    let report: serde_json::Value = serde_json::from_slice(&json.stdout).unwrap();
    assert_eq!(
        report["streams"].as_array().unwrap().len(),
        22,
        "6 shared, 16 shards"
    );
    assert_eq!(report["tenant_backlog"][0]["tenant"], "acme");
    let egress = report["consumers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == "egress-worker")
        .unwrap();
    assert_eq!(egress["pending"], 1);
    let stream = |name: &str| {
        report["streams"]
            .as_array()
            .unwrap()
            .iter()
            .find(|s| s["name"] == name)
            .unwrap()
            .clone()
    };
    assert_eq!(stream("EGRESS")["max_bytes"], 1073741824);
    assert!(stream("EGRESS")["fill_pct"].as_f64().unwrap() > 0.0);
    let bucket = report["buckets"]
        .as_array()
        .unwrap()
        .iter()
        .find(|b| b["name"] == "idempotency")
        .unwrap();
    assert_eq!(bucket["max_bytes"], 4294967296_u64);
    assert!(bucket["fill_pct"].as_f64().unwrap() > 0.0);
    assert!(bucket["headroom_hours"].as_f64().unwrap() > 0.0);
    let routes = report["buckets"]
        .as_array()
        .unwrap()
        .iter()
        .find(|b| b["name"] == "routes")
        .unwrap();
    assert_eq!(routes["headroom_hours"], serde_json::Value::Null);
    assert_eq!(
        report["tenant_streams"],
        serde_json::json!([{
            "tenant": "acme",
            "name": "INGRESS_acme",
            "messages": 1,
            "accepted": 1,
            "bytes": ingress_bytes,
            "max_msgs": 10,
            "max_bytes": 67108864,
            "fill_pct": 10.0
        }])
    );
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
    let err = fails(&url, &["tenants", "enable", "acme"]).await;
    assert!(
        err.contains("the tenants bucket tenants does not exist"),
        "{err}"
    );
    let js = jetstream::new(server.client().await);
    assert!(
        js.get_stream(ingress_stream("acme")).await.is_err(),
        "no stream for a tenant that could not be registered"
    );
    let err = fails(&url, &["publish", "acme", "ops", "slack", "--data", "x"]).await;
    assert!(
        err.contains("no stream stores ingress.v1.acme.ops.slack")
            && err.contains("run `switchyard provision` first"),
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

#[tokio::test]
async fn status_shows_what_each_tenant_holds_of_its_dlq_share() {
    let server = crate::provisioned().await;
    let url = server.url();
    let js = jetstream::new(server.client().await);
    for n in [1, 2] {
        crate::fixtures::dead_letter(
            &js,
            &crate::fixtures::Entry::egress("acme", switchyard_dlq::DlqCode::NoRoute, n),
        )
        .await;
    }
    crate::fixtures::dead_letter(
        &js,
        &crate::fixtures::Entry::egress("globex", switchyard_dlq::DlqCode::NoRoute, 3),
    )
    .await;
    let text = ok(&url, &["status"]).await;
    let rows: Vec<Vec<&str>> = text.lines().map(cells).collect();
    assert!(
        rows.contains(&vec!["TENANT", "DLQ ENTRIES", "OF ITS SHARE"]),
        "{text}"
    );
    assert!(rows.contains(&vec!["acme", "2", "0.0% of 10000"]), "{text}");
    let report: serde_json::Value =
        serde_json::from_str(&ok(&url, &["status", "--json"]).await).unwrap();
    assert_eq!(
        report["tenant_dlq"],
        serde_json::json!([
            {"tenant": "acme", "entries": 2, "share": 10000},
            {"tenant": "globex", "entries": 1, "share": 10000},
        ])
    );
    // The round trips `status` measured itself, as the services' storage checks do; the
    // publish probe stores nothing.
    assert!(text.contains("round trips (from here): KV read "), "{text}");
    assert!(!text.contains("failed:"), "{text}");
    assert!(
        report["round_trips"]["kv_ms"].as_f64().unwrap() > 0.0,
        "{report}"
    );
    assert!(
        report["round_trips"]["publish_ms"].as_f64().unwrap() > 0.0,
        "{report}"
    );
    let entries = ok(&url, &["--json", "dlq", "ls"]).await;
    assert!(!entries.contains("_readiness"), "{entries}");
}
