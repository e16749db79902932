//! The vendored NATS client's write coalescing (`vendor/async-nats/PATCHED.md`, "Writes
//! coalesced across tasks") against a real nats-server: its connection task yields once before
//! writing what the client's handles queued, and a drain, which the connection task takes as
//! written by the poll that received it, must not wait behind that yield.

use std::time::Duration;

use futures::StreamExt;
use switchyard_testkit::NatsServer;

/// Publishes queued before the drain: fewer than a task's Tokio budget (128), so the test's
/// task queues all of them and the drain without yielding, and the connection task receives
/// them in one poll.
const PUBLISHES: usize = 100;

#[tokio::test(flavor = "current_thread")]
async fn publishes_queued_just_before_a_drain_all_reach_the_server() {
    let server = NatsServer::start().await;
    let reader = server.client().await;
    let mut seen = reader.subscribe("coalesce.>").await.expect("subscribe");
    reader.flush().await.expect("flush");

    let writer = server.client().await;
    for i in 0..PUBLISHES {
        writer
            .publish(format!("coalesce.{i}"), "m".into())
            .await
            .expect("publish queued");
    }
    writer.drain().await.expect("drain queued");

    let mut got = 0;
    while got < PUBLISHES {
        match tokio::time::timeout(Duration::from_secs(10), seen.next()).await {
            Ok(Some(_)) => got += 1,
            Ok(None) | Err(_) => break,
        }
    }
    assert_eq!(
        got, PUBLISHES,
        "every publish queued before the drain was written"
    );
}
