//! `Worker` against a real stream: dropping a per-tenant consume loop (aborting the service's
//! task, as a crash would) ends the message tasks it started where they are, leaving their
//! messages unacked for redelivery — whereas a shutdown waits for them to settle, with no pull
//! left open while it does; and a gate that closes while a tenant's loop waits at a trickle
//! lets at most one message through; and a worker holds no more message bytes than its budget,
//! whatever its free slots, while one tenant's held messages never stop another tenant's loop.

use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::{self, consumer};
use switchyard_keys::Stage;
use switchyard_service::worker::Gate;
use switchyard_service::{
    Handled, Handler, Metrics, Outcome, SettleSettings, Worker, WorkerSettings,
};
use switchyard_subjects::Namespace;
use switchyard_testkit::{NatsServer, wait_for};
use tokio::sync::{mpsc, watch};
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

/// `WORK` holding one message, read by a consumer whose `ack_wait` is short (1 s), so an
/// abandoned message comes back within a test.
async fn one_message_consumer(server: &NatsServer) -> (jetstream::Context, consumer::PullConsumer) {
    let (js, consumer) = crate::pull::work_consumer(server, Duration::from_secs(1)).await;
    crate::pull::publish(&js, 1).await;
    (js, consumer)
}

/// A worker for `handler` with `slots` handler slots (each pull asks for at most that many),
/// its pulls waiting 20 s.
fn worker<H: Handler>(js: &jetstream::Context, handler: H, slots: usize) -> Arc<Worker<H>> {
    worker_with(
        js,
        handler,
        slots,
        switchyard_service::budget::DEFAULT_MAX_IN_FLIGHT_BYTES,
        Duration::from_secs(20),
    )
}

/// A worker for `handler` with `slots` handler slots, a byte budget of `max_in_flight_bytes`
/// and its pulls waiting `fetch_wait`.
fn worker_with<H: Handler>(
    js: &jetstream::Context,
    handler: H,
    slots: usize,
    max_in_flight_bytes: usize,
    fetch_wait: Duration,
) -> Arc<Worker<H>> {
    Arc::new(Worker::new(
        Arc::new(handler),
        js.clone(),
        Namespace::new(None),
        Arc::new(Metrics::new(Stage::Ingress)),
        WorkerSettings {
            concurrency: slots,
            max_in_flight_bytes,
            fetch_wait,
            max_batch: slots,
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
        4,
    );
    let looping =
        tokio::spawn(first.consume_gated(consumer.clone(), None, None, CancellationToken::new()));
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
        4,
    );
    let again = tokio::spawn(second.consume_gated(consumer, None, None, CancellationToken::new()));
    let delivered = tokio::time::timeout(Duration::from_secs(10), started.recv())
        .await
        .expect("the abandoned message was delivered again")
        .expect("handler alive");
    assert_eq!(delivered, 2, "the same message, its second delivery");
    again.abort();
}

/// Hands each message on at once (acked), reporting it.
struct Counts(mpsc::UnboundedSender<()>);

impl Handler for Counts {
    async fn handle(&self, _msg: &jetstream::Message) -> Handled {
        let _ = self.0.send(());
        Handled {
            tenant: None,
            outcome: Outcome::Forwarded,
        }
    }
}

#[tokio::test]
async fn a_gate_that_closes_while_a_tenant_trickles_lets_at_most_one_message_through() {
    let server = NatsServer::start().await;
    // One message in the stream: the loop reads it, and at the trickle it leaves (nothing
    // behind it) waits for the next with a pull for one.
    let (js, mut consumer) = one_message_consumer(&server).await;
    let (handled_tx, mut handled) = mpsc::unbounded_channel();
    let worker = worker(&js, Counts(handled_tx), 4);
    let (open_tx, open) = watch::channel(true);
    let shutdown = CancellationToken::new();
    let looping = tokio::spawn(worker.consume_gated(
        consumer.clone(),
        None,
        Some(Gate { open, meter: None }),
        shutdown.clone(),
    ));
    tokio::time::timeout(Duration::from_secs(10), handled.recv())
        .await
        .expect("the first message was handled")
        .expect("handler alive");

    // The loop's next pull waits (for one message); then the gate closes (the tenant's credit
    // at the next stage is spent, say), and a burst follows.
    wait_for("the loop's next pull", Duration::from_secs(10), || {
        let mut consumer = consumer.clone();
        async move { (consumer.info().await.ok()?.num_waiting == 1).then_some(()) }
    })
    .await;
    open_tx.send(false).expect("the loop holds the gate");
    // Sent at once (acks awaited after), so the burst is stored faster than it is delivered.
    let mut acks = Vec::new();
    for i in 0..5 {
        acks.push(
            js.publish("work.acme", format!("burst {i}").into())
                .await
                .expect("publish"),
        );
    }
    for ack in acks {
        ack.await.expect("stored");
    }
    // Settled: no pull waits (the loop waits at the gate) and nothing is being handled.
    let info = wait_for(
        "the loop to settle at its gate",
        Duration::from_secs(10),
        || {
            let mut consumer = consumer.clone();
            async move {
                let info = consumer.info().await.ok()?.clone();
                (info.num_waiting == 0 && info.num_ack_pending == 0).then_some(info)
            }
        },
    )
    .await;
    let mut passed = 0;
    while handled.try_recv().is_ok() {
        passed += 1;
    }
    assert!(
        passed <= 1,
        "{passed} messages passed the closed gate (a pull sized for the free slots would have brought 4)"
    );
    assert_eq!(info.num_pending, 5 - passed, "the rest wait in the stream");

    // Open again: the rest are read.
    open_tx.send(true).expect("the loop holds the gate");
    for _ in passed..5 {
        tokio::time::timeout(Duration::from_secs(10), handled.recv())
            .await
            .expect("the rest were handled once the gate opened")
            .expect("handler alive");
    }
    shutdown.cancel();
    assert_eq!(
        looping.await.expect("the loop ended"),
        switchyard_service::worker::Ended::Shutdown
    );
    let info = consumer.info().await.expect("info");
    assert_eq!(info.num_pending, 0);
}

/// Reports each message it starts, then finishes it (acked) when released.
struct Held {
    started: mpsc::UnboundedSender<()>,
    release: Arc<tokio::sync::Semaphore>,
}

impl Handler for Held {
    async fn handle(&self, _msg: &jetstream::Message) -> Handled {
        let _ = self.started.send(());
        let _ = self.release.acquire().await.map(|permit| permit.forget());
        Handled {
            tenant: None,
            outcome: Outcome::Forwarded,
        }
    }
}

#[tokio::test]
async fn a_shutdown_leaves_no_pull_open_while_it_drains() {
    let server = NatsServer::start().await;
    let (js, mut consumer) = one_message_consumer(&server).await;
    let (started_tx, mut started) = mpsc::unbounded_channel();
    let release = Arc::new(tokio::sync::Semaphore::new(0));
    let worker = worker(
        &js,
        Held {
            started: started_tx,
            release: release.clone(),
        },
        2,
    );
    let shutdown = CancellationToken::new();
    let looping = tokio::spawn(worker.consume(consumer.clone(), shutdown.clone()));
    tokio::time::timeout(Duration::from_secs(10), started.recv())
        .await
        .expect("the message reached the handler")
        .expect("handler alive");
    // The loop's pull for its free slot waits; the handler holds the first message.
    wait_for("the loop's next pull", Duration::from_secs(10), || {
        let mut consumer = consumer.clone();
        async move { (consumer.info().await.ok()?.num_waiting == 1).then_some(()) }
    })
    .await;
    let (_, removed) = crate::pull::subscriptions_made_and_removed(&server).await;

    // Shutdown: the loop stops pulling and drains (the handler still holds its message); its
    // open pull goes with its inbox now, not when the drain ends.
    shutdown.cancel();
    wait_for(
        "the open pull's inbox to go",
        Duration::from_secs(10),
        || {
            let server = &server;
            async move {
                let (_, removed_now) = crate::pull::subscriptions_made_and_removed(server).await;
                (removed_now > removed).then_some(())
            }
        },
    )
    .await;
    // A message arriving during the drain stays in the stream for the next replica, instead
    // of waiting unread, delivered to a pull no one reads, for its `ack_wait`.
    js.publish("work.acme", "during the drain".into())
        .await
        .expect("publish")
        .await
        .expect("stored");
    let info = consumer.info().await.expect("info");
    assert_eq!(
        info.num_ack_pending, 1,
        "only the held message is delivered"
    );
    assert_eq!(info.num_pending, 1, "the new one waits in the stream");
    assert!(!looping.is_finished(), "the loop drains the held message");

    release.add_permits(1);
    tokio::time::timeout(Duration::from_secs(10), looping)
        .await
        .expect("drained")
        .expect("the loop ended");
    assert!(
        started.try_recv().is_err(),
        "nothing more was handled after shutdown"
    );
}

/// A worker for `handler` with 16 slots and a byte budget of 2,500 bytes (two messages of
/// [`publish_kib`] fit, a third passes it).
fn budgeted_worker<H: Handler>(js: &jetstream::Context, handler: H) -> Arc<Worker<H>> {
    worker_with(js, handler, 16, 2_500, Duration::from_secs(1))
}

/// Publishes `count` messages of 1,000 bytes to `subject`, each stored before the next.
async fn publish_kib(js: &jetstream::Context, subject: &'static str, count: usize) {
    for _ in 0..count {
        js.publish(subject, vec![b'x'; 1000].into())
            .await
            .expect("publish")
            .await
            .expect("stored");
    }
}

/// Counts the messages it holds at once (and the most it ever held), finishing each (acked)
/// when released.
struct HeldCounts {
    now: std::sync::atomic::AtomicUsize,
    most: std::sync::atomic::AtomicUsize,
    done: std::sync::atomic::AtomicUsize,
    release: tokio::sync::Semaphore,
}

struct Counting(Arc<HeldCounts>);

impl Handler for Counting {
    async fn handle(&self, _msg: &jetstream::Message) -> Handled {
        use std::sync::atomic::Ordering::SeqCst;
        let this = &self.0;
        let now = this.now.fetch_add(1, SeqCst) + 1;
        this.most.fetch_max(now, SeqCst);
        let _ = this.release.acquire().await.map(|permit| permit.forget());
        this.now.fetch_sub(1, SeqCst);
        this.done.fetch_add(1, SeqCst);
        Handled {
            tenant: None,
            outcome: Outcome::Forwarded,
        }
    }
}

/// Ten messages of ~1 KiB through a worker with 16 slots and a budget of 2,500 bytes, read by
/// `consume` (`fair`: `false`) or `consume_fair`: the handler is released one message at a
/// time, and never holds more than three at once (the third is fetched while two, ~2 KiB,
/// leave room; none after it), where the slots alone would let all ten in.
async fn at_most_the_budget_of_bytes_is_held(fair: bool) {
    use std::sync::atomic::Ordering::SeqCst;
    let server = NatsServer::start().await;
    let (js, consumer) = crate::pull::work_consumer(&server, Duration::from_secs(30)).await;
    publish_kib(&js, "work.acme", 10).await;
    let counting = Arc::new(HeldCounts {
        now: Default::default(),
        most: Default::default(),
        done: Default::default(),
        release: tokio::sync::Semaphore::new(0),
    });
    let worker = budgeted_worker(&js, Counting(counting.clone()));
    let shutdown = CancellationToken::new();
    let looping = if fair {
        tokio::spawn(worker.consume_fair(consumer.clone(), 16, |_| None, shutdown.clone()))
    } else {
        tokio::spawn(worker.consume(consumer.clone(), shutdown.clone()))
    };
    for released in 0..10 {
        // The next message is released once the handler holds all the budget lets it.
        wait_for(
            "the handler to fill the budget",
            Duration::from_secs(10),
            || {
                let (counting, released) = (&counting, released);
                async move {
                    let held = counting.now.load(SeqCst);
                    (held == 3.min(10 - released)).then_some(())
                }
            },
        )
        .await;
        counting.release.add_permits(1);
        wait_for(
            "the released message to end",
            Duration::from_secs(10),
            || {
                let counting = &counting;
                async move { (counting.done.load(SeqCst) > released).then_some(()) }
            },
        )
        .await;
    }
    assert_eq!(counting.most.load(SeqCst), 3, "the most held at once");
    shutdown.cancel();
    looping.await.expect("the loop ended");
    let mut consumer = consumer;
    let info = consumer.info().await.expect("info");
    assert_eq!((info.num_pending, info.num_ack_pending), (0, 0));
}

#[tokio::test]
async fn a_worker_holds_no_more_message_bytes_than_its_budget() {
    at_most_the_budget_of_bytes_is_held(false).await;
}

#[tokio::test]
async fn a_fair_worker_holds_no_more_message_bytes_than_its_budget() {
    at_most_the_budget_of_bytes_is_held(true).await;
}

/// Holds every message of `work.held` until the end of the test; finishes the others (acked)
/// at once, counting them.
struct HoldsOne {
    held: std::sync::atomic::AtomicUsize,
    done: std::sync::atomic::AtomicUsize,
}

struct HoldingOne(Arc<HoldsOne>);

impl Handler for HoldingOne {
    async fn handle(&self, msg: &jetstream::Message) -> Handled {
        use std::sync::atomic::Ordering::SeqCst;
        if msg.subject.as_str() == "work.held" {
            self.0.held.fetch_add(1, SeqCst);
            std::future::pending::<()>().await;
        }
        self.0.done.fetch_add(1, SeqCst);
        Handled {
            tenant: None,
            outcome: Outcome::Forwarded,
        }
    }
}

/// Two tenants' loops share a worker whose budget is 2,500 bytes: one tenant's ~1 KiB
/// messages are held (a slow rate's slots, say) until they fill it, and the other tenant's
/// loop still fetches, within its fair share, and its messages are all handled.
#[tokio::test]
async fn one_tenants_held_messages_do_not_stop_another_tenants_loop() {
    use std::sync::atomic::Ordering::SeqCst;
    let server = NatsServer::start().await;
    let js = jetstream::new(server.client().await);
    let stream = js
        .create_stream(jetstream::stream::Config {
            name: "WORK".into(),
            subjects: vec!["work.>".into()],
            retention: jetstream::stream::RetentionPolicy::WorkQueue,
            ..Default::default()
        })
        .await
        .expect("stream");
    let consumer_of = |subject: &'static str, name: &'static str| {
        let stream = stream.clone();
        async move {
            stream
                .create_consumer(consumer::pull::Config {
                    durable_name: Some(name.into()),
                    filter_subject: subject.into(),
                    ack_wait: Duration::from_secs(30),
                    ..Default::default()
                })
                .await
                .expect("consumer")
        }
    };
    let (held_consumer, free_consumer) = (
        consumer_of("work.held", "held").await,
        consumer_of("work.free", "free").await,
    );
    publish_kib(&js, "work.held", 5).await;
    let counts = Arc::new(HoldsOne {
        held: Default::default(),
        done: Default::default(),
    });
    let worker = budgeted_worker(&js, HoldingOne(counts.clone()));
    let shutdown = CancellationToken::new();
    let tenant = |name: &str| switchyard_keys::TenantId::new(name).expect("a tenant id");
    let held_loop = tokio::spawn(worker.clone().consume_gated(
        held_consumer,
        Some(tenant("held")),
        None,
        shutdown.clone(),
    ));
    // Three held messages (~3 KiB) fill the budget; the loop fetches no more.
    wait_for(
        "the held tenant to fill the budget",
        Duration::from_secs(10),
        || {
            let counts = &counts;
            async move { (counts.held.load(SeqCst) >= 3).then_some(()) }
        },
    )
    .await;
    let free_loop = tokio::spawn(worker.clone().consume_gated(
        free_consumer,
        Some(tenant("free")),
        None,
        shutdown.clone(),
    ));
    publish_kib(&js, "work.free", 5).await;
    wait_for(
        "the other tenant's messages to be handled",
        Duration::from_secs(10),
        || {
            let counts = &counts;
            async move { (counts.done.load(SeqCst) == 5).then_some(()) }
        },
    )
    .await;
    assert!(
        counts.held.load(SeqCst) <= 4,
        "the held tenant kept to the budget and its one message more: {}",
        counts.held.load(SeqCst)
    );
    held_loop.abort();
    free_loop.abort();
}
