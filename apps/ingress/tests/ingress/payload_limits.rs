//! The server's `max_payload` against the declared sizes: ingress refuses to start on a server
//! whose limit is below them, and a hand-off too large for the next stream is dead-lettered
//! `payload_too_large` at once instead of being retried.

use std::time::Duration;

use async_nats::jetstream;
use switchyard_dlq::DlqCode;
use switchyard_ingress::{IngressConfig, config};
use switchyard_keys::Stage;
use switchyard_runtime::ConfigSource;
use switchyard_testkit::{NatsServer, wait_for};
use tokio_util::sync::CancellationToken;

use super::{Harness, with_id};

/// A nats-server with the stock 1 MiB `max_payload` (the project's configs set 2 MB); the
/// config is written next to the process's temporary files and replaces `single.conf`.
async fn stock_payload_server() -> NatsServer {
    let conf = std::env::temp_dir().join(format!(
        "switchyard-stock-payload-{}.conf",
        std::process::id()
    ));
    std::fs::write(
        &conf,
        "max_payload: 1MB\njetstream {\n  max_memory_store: 256MB\n  max_file_store: 1GB\n}\n",
    )
    .unwrap();
    NatsServer::start_with_args(&["-c", conf.to_str().unwrap()]).await
}

#[tokio::test]
async fn ingress_refuses_to_start_on_a_server_whose_max_payload_is_below_the_stream_sizes() {
    let server = stock_payload_server().await;
    let mut config: IngressConfig = switchyard_runtime::load(&ConfigSource::new(
        config::DEFAULTS,
        "SWITCHYARD_INGRESS_TEST_UNUSED_",
    ))
    .unwrap();
    config.nats.url = server.url();
    config.http.listen = "127.0.0.1:0".parse().unwrap();
    let Err(error) =
        switchyard_ingress::start(config, server.client().await, CancellationToken::new()).await
    else {
        panic!("ingress started on a 1 MiB server");
    };
    let text = format!("{error:#}");
    assert!(
        text.contains(
            "the nats-server's max_payload is 1048576 bytes, but stream INGRESS declares \
             max_msg_size 1064960"
        ),
        "{text}"
    );
    assert!(text.contains("max_payload: 2MB"), "{text}");
}

#[tokio::test]
async fn a_hand_off_too_large_for_the_next_stream_is_dead_lettered_payload_too_large() {
    let harness = Harness::start(1024 * 1024).await;
    // IDEMPOTENCY now takes only small messages: what ingress accepts no longer fits it.
    let mut stream = harness.js.get_stream("IDEMPOTENCY").await.unwrap();
    let mut small = stream.info().await.unwrap().config.clone();
    small.max_message_size = 4096;
    harness.js.update_stream(small).await.unwrap();

    harness
        .publish("ingress.v1.acme.ops.hooks", with_id("big-1"), &[b'x'; 8000])
        .await;
    harness
        .publish("ingress.v1.acme.ops.hooks", with_id("small-1"), b"{}")
        .await;
    let entries = wait_for(
        "the oversized hand-off in the DLQ",
        Duration::from_secs(10),
        || async {
            let entries = harness.dlq().await;
            (!entries.is_empty()).then_some(entries)
        },
    )
    .await;
    harness.settled().await;
    assert_eq!(entries.len(), 1, "{entries:?}");
    let record = &entries[0].record;
    assert_eq!(record.code, DlqCode::PayloadTooLarge);
    assert_eq!(record.stage, Stage::Ingress);
    assert_eq!(record.tenant.as_ref().map(|t| t.as_str()), Some("acme"));
    assert!(
        record.reason.contains("too large to hand on"),
        "{}",
        record.reason
    );
    assert_eq!(entries[0].payload.len(), 8000);
    assert_eq!(entries[0].original_msg_id.as_deref(), Some("big-1"));
    // Dead-lettered on its first delivery, never retried; the small one went on.
    let ingress = harness
        .js
        .get_consumer_from_stream::<jetstream::consumer::pull::Config, _, _>(
            "ingress-worker",
            "INGRESS_acme",
        )
        .await
        .unwrap()
        .info()
        .await
        .unwrap()
        .clone();
    assert_eq!(ingress.num_redelivered, 0);
    assert_eq!(harness.handed_on().await.len(), 1);
    harness.stop().await;
}
