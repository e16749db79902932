//! `Puller` against a real stream: a loop's pulls share one inbox while each ends by its count
//! or nats-server's word (nats-server's own subscription counts show it), an abandoned pull
//! brings nothing to the next one, and a deleted consumer ends a pull with its status.

use std::time::Duration;

use async_nats::StatusCode;
use async_nats::jetstream::{self, consumer, stream};
use switchyard_service::pull::{PullEnds, PullError, Puller};
use switchyard_testkit::{NatsServer, http_get, wait_for};

/// nats-server's default `ack_wait`: nothing in these tests waits for a redelivery.
pub(crate) const ACK_WAIT: Duration = Duration::from_secs(30);

/// A work-queue stream `WORK` (`work.>`) and its durable pull consumer `worker`, whose
/// unacked messages come back after `ack_wait`.
pub(crate) async fn work_consumer(
    server: &NatsServer,
    ack_wait: Duration,
) -> (jetstream::Context, consumer::PullConsumer) {
    let js = jetstream::new(server.client().await);
    let stream = js
        .create_stream(stream::Config {
            name: "WORK".into(),
            subjects: vec!["work.>".into()],
            retention: stream::RetentionPolicy::WorkQueue,
            ..Default::default()
        })
        .await
        .expect("stream");
    let consumer = stream
        .create_consumer(consumer::pull::Config {
            durable_name: Some("worker".into()),
            ack_wait,
            ..Default::default()
        })
        .await
        .expect("consumer");
    (js, consumer)
}

/// Publishes `count` messages to `work.acme`, each stored before the next.
pub(crate) async fn publish(js: &jetstream::Context, count: usize) {
    for i in 0..count {
        js.publish("work.acme", format!("m{i}").into())
            .await
            .expect("publish")
            .await
            .expect("stored");
    }
}

/// nats-server's count of subscriptions made and removed since it started (`/subsz`).
pub(crate) async fn subscriptions_made_and_removed(server: &NatsServer) -> (u64, u64) {
    let addr = ([127, 0, 0, 1], server.monitor_port()).into();
    let response = http_get(addr, "/subsz").await;
    let body = response.split("\r\n\r\n").nth(1).expect("a body");
    let stats: serde_json::Value = serde_json::from_str(body).expect("json");
    let count = |field: &str| stats[field].as_u64().expect(field);
    (count("num_inserts"), count("num_removes"))
}

/// Reads the pull under way to its end; its messages are acked.
async fn read_to_end(puller: &mut Puller) -> usize {
    let mut got = 0;
    while let Some(next) = puller.next().await {
        next.expect("a message").ack().await.expect("ack");
        got += 1;
    }
    got
}

#[tokio::test]
async fn a_loops_pulls_share_one_inbox_while_each_ends_by_its_count_or_the_servers_word() {
    let server = NatsServer::start().await;
    let (js, consumer) = work_consumer(&server, ACK_WAIT).await;
    publish(&js, 3).await;
    let mut puller = Puller::new(js.clone());
    let (made, removed) = subscriptions_made_and_removed(&server).await;

    // Ends at its count: nats-server sends nothing after the second message.
    puller
        .pull(&consumer, 2, PullEnds::AtCount, Duration::from_secs(10))
        .await
        .expect("pull");
    assert_eq!(read_to_end(&mut puller).await, 2);
    // Ends as the stream empties (`404`), long before its wait.
    puller
        .pull(&consumer, 5, PullEnds::AtEmpty, Duration::from_secs(10))
        .await
        .expect("pull");
    let read = tokio::time::timeout(Duration::from_secs(5), read_to_end(&mut puller));
    assert_eq!(read.await.expect("ended at the empty stream"), 1);
    // Ends at its wait (`408`).
    puller
        .pull(&consumer, 5, PullEnds::AtCount, Duration::from_secs(1))
        .await
        .expect("pull");
    assert_eq!(read_to_end(&mut puller).await, 0);
    // And one more, to show the inbox still hears the next pull.
    publish(&js, 1).await;
    puller
        .pull(&consumer, 1, PullEnds::AtCount, Duration::from_secs(10))
        .await
        .expect("pull");
    assert_eq!(read_to_end(&mut puller).await, 1);

    let (made_after, removed_after) = subscriptions_made_and_removed(&server).await;
    assert_eq!(made_after - made, 1, "one inbox for four pulls");
    assert_eq!(removed_after - removed, 0, "the inbox is kept");
}

#[tokio::test]
async fn an_abandoned_pull_brings_nothing_to_the_next_one() {
    let server = NatsServer::start().await;
    let (js, consumer) = work_consumer(&server, ACK_WAIT).await;
    let mut puller = Puller::new(js.clone());
    // A pull for ten, left waiting on the empty stream (as a reconnection or shutdown leaves
    // one), then a pull for one.
    puller
        .pull(&consumer, 10, PullEnds::AtCount, Duration::from_secs(30))
        .await
        .expect("pull");
    puller
        .pull(&consumer, 1, PullEnds::AtCount, Duration::from_secs(30))
        .await
        .expect("pull");
    publish(&js, 3).await;
    let first = puller.next().await.expect("a message").expect("no error");
    assert!(puller.next().await.is_none(), "the pull for one has ended");

    // Had the first pull's inbox been kept, it would have taken all three (it waited first);
    // nats-server dropped it instead, as nothing listened on its inbox any more.
    let info = wait_for("the consumer's counts", Duration::from_secs(5), || {
        let mut consumer = consumer.clone();
        async move {
            let info = consumer.info().await.ok()?.clone();
            (info.num_waiting == 0).then_some(info)
        }
    })
    .await;
    assert_eq!(
        info.num_ack_pending, 1,
        "only the message read was delivered"
    );
    assert_eq!(info.num_pending, 2, "the others wait in the stream");
    first.ack().await.expect("ack");
}

#[tokio::test]
async fn a_pull_whose_consumer_is_deleted_ends_with_its_status() {
    let server = NatsServer::start().await;
    let (js, consumer) = work_consumer(&server, ACK_WAIT).await;
    let mut puller = Puller::new(js.clone());
    puller
        .pull(&consumer, 5, PullEnds::AtCount, Duration::from_secs(30))
        .await
        .expect("pull");
    let stream = js.get_stream("WORK").await.expect("stream");
    stream.delete_consumer("worker").await.expect("deleted");
    let ended = tokio::time::timeout(Duration::from_secs(10), puller.next())
        .await
        .expect("ended before its wait");
    match ended {
        Some(Err(PullError::Status { code, .. })) => {
            assert_eq!(code, StatusCode::REQUEST_TERMINATED, "409 Consumer Deleted")
        }
        other => panic!("expected a 409 status, got {other:?}"),
    }
    // A pull of the consumer that is gone: no responders.
    puller
        .pull(&consumer, 5, PullEnds::AtCount, Duration::from_secs(30))
        .await
        .expect("the request is sent");
    let ended = tokio::time::timeout(Duration::from_secs(10), puller.next())
        .await
        .expect("answered at once");
    match ended {
        Some(Err(PullError::Status { code, .. })) => assert_eq!(code, StatusCode::NO_RESPONDERS),
        other => panic!("expected a 503 status, got {other:?}"),
    }
}
