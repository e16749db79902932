//! `Worker` against a real stream: dropping a per-tenant consume loop (aborting the service's
//! task, as a crash would) ends the message tasks it started where they are, leaving their
//! messages unacked for redelivery — whereas a shutdown waits for them to settle.

use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::{self, consumer, stream};
use switchyard_keys::Stage;
use switchyard_service::{
    Handled, Handler, Metrics, Outcome, SettleSettings, Worker, WorkerSettings,
};
use switchyard_subjects::Namespace;
use switchyard_testkit::NatsServer;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// Reports each message it starts (with its delivery count), then never finishes; reports
/// when its work is dropped.
struct Stuck {
    started: mpsc::UnboundedSender<i64>,
    dropped: mpsc::UnboundedSender<()>,
}

struct ReportDrop(mpsc::UnboundedSender<()>);

impl Drop for ReportDrop {
    fn drop(&mut self) {
        let _ = self.0.send(());
    }
}

impl Handler for Stuck {
    async fn handle(&self, msg: &jetstream::Message) -> Handled {
        let _report = ReportDrop(self.dropped.clone());
        let delivered = msg.info().map_or(0, |info| info.delivered);
        let _ = self.started.send(delivered);
        std::future::pending::<()>().await;
        Handled {
            tenant: None,
            outcome: Outcome::Forwarded,
        }
    }
}

async fn one_message_consumer(server: &NatsServer) -> (jetstream::Context, consumer::PullConsumer) {
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
            // Short, so the abandoned message comes back within the test.
            ack_wait: Duration::from_secs(1),
            ..Default::default()
        })
        .await
        .expect("consumer");
    js.publish("work.acme", "one".into())
        .await
        .expect("publish")
        .await
        .expect("stored");
    (js, consumer)
}

fn worker(js: &jetstream::Context, handler: Stuck) -> Arc<Worker<Stuck>> {
    Arc::new(Worker::new(
        Arc::new(handler),
        js.clone(),
        Namespace::new(None),
        Arc::new(Metrics::new(Stage::Ingress)),
        WorkerSettings {
            concurrency: 4,
            fetch_wait: Duration::from_secs(20),
            max_batch: 4,
            settle: SettleSettings::default(),
        },
    ))
}

#[tokio::test]
async fn dropping_a_consume_loop_ends_its_message_tasks_and_leaves_the_message_unacked() {
    let server = NatsServer::start().await;
    let (js, consumer) = one_message_consumer(&server).await;
    let (started_tx, mut started) = mpsc::unbounded_channel();
    let (dropped_tx, mut dropped) = mpsc::unbounded_channel();
    let first = worker(
        &js,
        Stuck {
            started: started_tx.clone(),
            dropped: dropped_tx.clone(),
        },
    );
    let looping =
        tokio::spawn(first.consume_gated(consumer.clone(), None, CancellationToken::new()));
    let delivered = tokio::time::timeout(Duration::from_secs(10), started.recv())
        .await
        .expect("the message reached the handler")
        .expect("handler alive");
    assert_eq!(delivered, 1);
    looping.abort();
    assert!(looping.await.unwrap_err().is_cancelled());
    tokio::time::timeout(Duration::from_secs(5), dropped.recv())
        .await
        .expect("the message's task ended with its loop, as under a JoinSet")
        .expect("a drop report");

    // Neither acked nor nak'd: another loop (a restarted service) gets it again once its
    // ack_wait has passed, as after a crash.
    let second = worker(
        &js,
        Stuck {
            started: started_tx,
            dropped: dropped_tx,
        },
    );
    let again = tokio::spawn(second.consume_gated(consumer, None, CancellationToken::new()));
    let delivered = tokio::time::timeout(Duration::from_secs(10), started.recv())
        .await
        .expect("the abandoned message was delivered again")
        .expect("handler alive");
    assert_eq!(delivered, 2, "the same message, its second delivery");
    again.abort();
}
