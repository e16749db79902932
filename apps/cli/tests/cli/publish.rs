//! `publish`: a producer's message onto its tenant's ingress stream, with its `Nats-Msg-Id`.

use std::time::Duration;

use async_nats::jetstream;
use switchyard_fixtures::ingress_stream;
use switchyard_testkit::{NatsServer, workspace_root};

use crate::{fails, ok, stderr, stdout, switchyard_blocking};

/// A config file whose topology gives each tenant's ingress stream a 10-minute duplicate
/// window instead of the declared 2 minutes (see nats/topology.toml), so that no slow run can
/// see a window close between two CLI runs. Tenants enabled with it get that window.
pub(crate) fn long_window_config(dir: &tempfile::TempDir) -> String {
    let declared = std::fs::read_to_string(workspace_root().join("nats/topology.toml")).unwrap();
    assert!(
        declared.contains("duplicate_window_ms = 120000 "),
        "INGRESS window moved"
    );
    let topology = declared.replacen(
        "duplicate_window_ms = 120000 ",
        "duplicate_window_ms = 600000 ",
        1,
    );
    let topology_path = dir.path().join("topology.toml");
    std::fs::write(&topology_path, topology).unwrap();
    let config_path = dir.path().join("cli.toml");
    std::fs::write(
        &config_path,
        format!(
            "[deployment]\ntopology_file = {:?}\n",
            topology_path.display().to_string()
        ),
    )
    .unwrap();
    config_path.display().to_string()
}

#[tokio::test]
async fn publish_prints_the_stored_seq_and_a_duplicate_inside_the_window() {
    let server = NatsServer::start().await;
    let url = server.url();
    let dir = tempfile::tempdir().unwrap();
    let config = long_window_config(&dir);
    ok(&url, &["--config", &config, "provision"]).await;

    // Only an enabled tenant has an ingress stream to publish to.
    let err = fails(
        &url,
        &[
            "--config", &config, "publish", "acme", "ops", "slack", "--data", "x",
        ],
    )
    .await;
    assert!(
        err.contains("no stream stores ingress.v1.acme.ops.slack")
            && err.contains("switchyard tenants enable acme"),
        "{err}"
    );
    ok(&url, &["--config", &config, "tenants", "enable", "acme"]).await;
    let js = jetstream::new(server.client().await);
    assert_eq!(
        js.get_stream(ingress_stream("acme"))
            .await
            .unwrap()
            .cached_info()
            .config
            .duplicate_window,
        Duration::from_secs(600),
        "the config's window"
    );

    let send = [
        "--config",
        &config,
        "publish",
        "acme",
        "ops",
        "slack",
        "--id",
        "order-1",
        "--data",
        r#"{"a":1}"#,
        "--content-type",
        "application/json",
        "--header",
        "X-Trace=t1",
    ];
    assert_eq!(ok(&url, &send).await, "stored in INGRESS_acme seq 1\n");
    assert_eq!(
        ok(&url, &send).await,
        "duplicate of seq 1 (dropped by the stream's duplicate window)\n"
    );
    // The window is the tenant's own: another tenant's message with the same id is stored.
    ok(&url, &["--config", &config, "tenants", "enable", "globex"]).await;
    assert_eq!(
        ok(
            &url,
            &[
                "--config", &config, "publish", "globex", "ops", "slack", "--id", "order-1",
                "--data", "y"
            ]
        )
        .await,
        "stored in INGRESS_globex seq 1\n"
    );

    let json: serde_json::Value = serde_json::from_str(
        &ok(
            &url,
            &[
                "--config",
                &config,
                "publish",
                "acme",
                "ops",
                "slack",
                "--id",
                "order 2 ✓",
                "--data",
                "x",
                "--json",
            ],
        )
        .await,
    )
    .unwrap();
    assert_eq!(json["subject"], "ingress.v1.acme.ops.slack");
    assert_eq!(json["stream"], "INGRESS_acme");
    assert_eq!(json["seq"], 2);
    assert_eq!(json["duplicate"], false);
    assert_eq!(json["msg_id"], "order 2 ✓");

    // Without --id a UUIDv7 is generated and printed; it is the stored Nats-Msg-Id.
    let generated = ok(
        &url,
        &[
            "--config", &config, "publish", "acme", "ops", "slack", "--data", "y",
        ],
    )
    .await;
    let mut lines = generated.lines();
    let id = lines
        .next()
        .and_then(|l| l.strip_prefix("msg id "))
        .and_then(|l| l.strip_suffix(" (generated)"))
        .unwrap_or_else(|| panic!("{generated}"));
    assert_eq!(uuid::Uuid::parse_str(id).unwrap().get_version_num(), 7);
    assert_eq!(lines.next(), Some("stored in INGRESS_acme seq 3"));

    let ingress = js.get_stream(ingress_stream("acme")).await.unwrap();
    let first = ingress.direct_get(1).await.unwrap();
    assert_eq!(first.payload.as_ref(), br#"{"a":1}"#);
    assert_eq!(
        first.headers.get("Nats-Msg-Id").unwrap().as_str(),
        "order-1"
    );
    assert_eq!(
        first.headers.get("Content-Type").unwrap().as_str(),
        "application/json"
    );
    assert_eq!(first.headers.get("X-Trace").unwrap().as_str(), "t1");
    let third = ingress.direct_get(3).await.unwrap();
    assert_eq!(third.headers.get("Nats-Msg-Id").unwrap().as_str(), id);

    // The payload comes from stdin when neither --data nor --file is given.
    let piped = tokio::task::spawn_blocking({
        let (url, config) = (url.clone(), config.clone());
        move || {
            switchyard_blocking(
                &url,
                &[
                    "--config", &config, "publish", "acme", "ops", "slack", "--id", "order-4",
                ],
                Some(b"from stdin\x00\xff"),
            )
        }
    })
    .await
    .unwrap();
    assert!(piped.status.success(), "{}", stderr(&piped));
    assert_eq!(stdout(&piped), "stored in INGRESS_acme seq 4\n");
    assert_eq!(
        ingress.direct_get(4).await.unwrap().payload.as_ref(),
        b"from stdin\x00\xff",
        "bytes as sent"
    );

    let file = dir.path().join("payload.bin");
    std::fs::write(&file, b"from a file").unwrap();
    let file = file.display().to_string();
    assert_eq!(
        ok(
            &url,
            &[
                "--config", &config, "publish", "acme", "ops", "slack", "--id", "order-5",
                "--file", &file
            ]
        )
        .await,
        "stored in INGRESS_acme seq 5\n"
    );

    let err = fails(
        &url,
        &[
            "publish", "acme", "ops", "slack", "--id", " padded", "--data", "x",
        ],
    )
    .await;
    assert!(
        err.contains("--id: msg id \" padded\" starts or ends with whitespace"),
        "{err}"
    );
    let err = fails(
        &url,
        &[
            "publish",
            "acme",
            "ops",
            "slack",
            "--header",
            "Nats-Msg-Id=x",
            "--data",
            "x",
        ],
    )
    .await;
    assert!(err.contains("set the message id with --id"), "{err}");
    let err = fails(
        &url,
        &[
            "publish", "acme", "ops", "slack", "--data", "x", "--file", &file,
        ],
    )
    .await;
    assert!(err.contains("cannot be used with"), "{err}");
}
