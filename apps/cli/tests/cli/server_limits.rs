//! `provision` on a server whose `max_payload` is below the declared message sizes.

use async_nats::jetstream;

use crate::fails;

#[tokio::test]
async fn provision_refuses_a_server_with_the_stock_1mib_max_payload_naming_the_fix() {
    let (server, _dir) = crate::stock_payload_server().await;
    let err = fails(&server.url(), &["provision"]).await;
    assert!(
        err.contains("refusing to provision: the server's limits do not fit the declared sizes"),
        "{err}"
    );
    for stream in ["INGRESS", "IDEMPOTENCY", "BACKPRESSURE", "EGRESS", "DLQ"] {
        assert!(
            err.contains(&format!("stream {stream} declares max_msg_size")),
            "{err}"
        );
    }
    assert!(err.contains("max_payload is 1048576 bytes"), "{err}");
    assert!(err.contains("max_payload: 2MB"), "{err}");
    // Nothing was created.
    let js = jetstream::new(server.client().await);
    assert!(js.get_stream("IDEMPOTENCY").await.is_err());
}
