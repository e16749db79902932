//! The vendored NATS client's performance patches (`vendor/async-nats/PATCHED.md`) against a
//! real nats-server: its connection task yields once before writing what the client's handles
//! queued, and a drain, which the connection task takes as written by the poll that received
//! it, must not wait behind that yield, nor be lost when the last handle drops; a confirmed
//! ack goes through the client's shared response subscription, and a consumer that is gone is
//! no confirmation.

use std::time::Duration;

use futures::StreamExt;
use switchyard_service::pull::{PullEnds, Puller};
use switchyard_testkit::NatsServer;

use crate::pull::{ACK_WAIT, publish, subscriptions_made_and_removed, work_consumer};

/// Publishes queued before the drain: fewer than a task's Tokio budget (128), so the test's
/// task queues all of them and the drain without yielding, and the connection task receives
/// them in one poll.
const PUBLISHES: usize = 100;

/// A server, a reader subscribed to `subject` (its interest flushed), its subscription, and a
/// second connection to write with.
async fn reader_and_writer(
    subject: &'static str,
) -> (
    NatsServer,
    async_nats::Client,
    async_nats::Subscriber,
    async_nats::Client,
) {
    let server = NatsServer::start().await;
    let reader = server.client().await;
    let seen = reader.subscribe(subject).await.expect("subscribe");
    reader.flush().await.expect("flush");
    let writer = server.client().await;
    (server, reader, seen, writer)
}

#[tokio::test(flavor = "current_thread")]
async fn publishes_queued_just_before_a_drain_all_reach_the_server() {
    let (_server, _reader, mut seen, writer) = reader_and_writer("coalesce.>").await;
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

#[tokio::test(flavor = "current_thread")]
async fn a_publish_right_before_the_last_handle_drops_is_written() {
    let (_server, _reader, mut seen, writer) = reader_and_writer("closing.>").await;
    writer
        .publish("closing.last", "m".into())
        .await
        .expect("publish queued");
    // No flush: the connection task receives the publish and finds every handle gone.
    drop(writer);

    let got = tokio::time::timeout(Duration::from_secs(10), seen.next()).await;
    assert!(
        matches!(got, Ok(Some(_))),
        "the publish queued before the client was dropped reached the server"
    );
}

/// Pulls `count` messages of the `WORK` stream through one inbox, unacked.
async fn pull_unacked(
    js: &async_nats::jetstream::Context,
    consumer: &async_nats::jetstream::consumer::PullConsumer,
    count: usize,
) -> Vec<async_nats::jetstream::Message> {
    let mut puller = Puller::new(js.clone());
    puller
        .pull(consumer, count, PullEnds::AtCount, Duration::from_secs(10))
        .await
        .expect("pull");
    let mut got = Vec::with_capacity(count);
    while let Some(next) = puller.next().await {
        got.push(next.expect("a message"));
    }
    assert_eq!(got.len(), count);
    got
}

#[tokio::test]
async fn confirmed_acks_share_the_clients_response_subscription() {
    let server = NatsServer::start().await;
    let (js, consumer) = work_consumer(&server, ACK_WAIT).await;
    publish(&js, 20).await;
    let messages = pull_unacked(&js, &consumer, 20).await;
    let (made, _) = subscriptions_made_and_removed(&server).await;

    for msg in &messages {
        msg.double_ack().await.expect("the ack is confirmed");
    }

    let (made_after, _) = subscriptions_made_and_removed(&server).await;
    assert!(
        made_after - made <= 1,
        "20 confirmed acks subscribed {} times (at most the client's one response subscription)",
        made_after - made
    );
    let info = consumer.clone().info().await.expect("info").clone();
    assert_eq!(info.num_ack_pending, 0, "every ack reached the consumer");
}

#[tokio::test]
async fn a_confirmed_ack_to_a_consumer_that_is_gone_is_an_error() {
    let server = NatsServer::start().await;
    let (js, consumer) = work_consumer(&server, ACK_WAIT).await;
    publish(&js, 1).await;
    let messages = pull_unacked(&js, &consumer, 1).await;
    js.get_stream("WORK")
        .await
        .expect("stream")
        .delete_consumer("worker")
        .await
        .expect("consumer deleted");

    let error = messages[0]
        .double_ack()
        .await
        .expect_err("nats-server's 'no responders' is no confirmation");
    let kind = error
        .downcast_ref::<async_nats::RequestError>()
        .map(async_nats::RequestError::kind);
    assert_eq!(
        kind,
        Some(async_nats::RequestErrorKind::NoResponders),
        "refused at once, not timed out: {error}"
    );
}
