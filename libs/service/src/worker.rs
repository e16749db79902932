//! The consume loop every stage but backpressure runs. A service's [`Handler`] decides; the
//! loop hands each message to the [`Settler`], the one place an [`Outcome`] becomes ack /
//! nak-with-delay / DLQ record then ack.
//!
//! Pulls only as many messages as it has free handler slots (so nothing waits in a local
//! buffer holding an ack-pending slot) and its byte budget has room for ([`crate::budget`]:
//! the service's `max_in_flight_bytes`), and on shutdown stops fetching and waits for every
//! in-flight message to settle. Pulls go through the loop's [`Puller`] (one inbox for all its
//! pulls). How long a pull stays open is [`PullEnds`]: a loop that owns its slots keeps it open
//! until it has brought its count, so a trickle costs one pull per pull's worth of messages;
//! per-tenant loops sharing slots end it when the stream is empty, so each next pull is sized
//! afresh, and at a trickle ask for one message at a time and keep that pull open.

use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::{self, consumer::PullConsumer};
use switchyard_keys::TenantId;
use switchyard_runtime::RetryPolicy;
use switchyard_runtime::retry::Backoff;
use switchyard_subjects::Namespace;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, watch};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::Metrics;
use crate::budget::{ByteBudget, Charge, TenantBudget};
pub use crate::pull::PullEnds;
use crate::pull::Puller;
pub use crate::settle::{Handled, Outcome};
use crate::settle::{SettleSettings, Settler};

/// Most messages one fetch of a stage's shared consumer asks for (32). The topology's streams
/// admit messages up to 1 MiB + 64 KiB (`max_msg_size`), so one fetch brings at most ~34 MiB,
/// below nats-server's `max_pending` per client (64 MiB by default), past which the server cuts
/// the connection as a slow consumer (its unacked messages then come back only after the
/// consumer's `ack_wait`): 256 free slots of 1 MiB messages would otherwise ask for 256 MiB at
/// once. (A pull's own `max_bytes` would bound it by size instead, but on a 3-node cluster
/// pulls with `max_bytes` lost deliveries under load in the benchmark: messages were
/// redelivered until `max_deliver`.) 32 messages a pull keep its fixed cost (a subscription,
/// a pull request, an unsubscribe) small per message.
pub const FETCH_MAX_MESSAGES: usize = 32;

/// Most messages one per-tenant fetch asks for (16, as ingress's default `tenant_batch`):
/// several tenants' pulls run at once on one connection, so each brings less (three tenants'
/// 1 MiB messages: ~51 MiB). Many tenants with large messages pulling at once can still pass
/// `max_pending` (docs/performance.md).
pub const TENANT_FETCH_MAX_MESSAGES: usize = 16;

/// How long a per-tenant pull (ingress's and backpressure's loops, one per tenant) waits for
/// messages before it is renewed. A message that arrives meanwhile is delivered to the waiting
/// pull at once (backpressure's pull then goes on waiting for the rest of its count; ingress's
/// ends, `PullEnds::AtEmpty`), so this bounds only what an idle tenant costs: a pull request
/// (and its timeout status) per tenant per wait, on the stage and on nats-server. At one
/// second, 1,000 idle tenants cost 1,000 pulls a second on each stage (docs/performance.md).
pub const TENANT_FETCH_WAIT: Duration = Duration::from_secs(20);

/// What a gated consume loop ([`Worker::consume_gated`]) checks before each fetch.
pub struct Gate {
    /// `true` while the loop may fetch; it waits while `false`.
    pub open: watch::Receiver<bool>,
    /// What counts the loop's messages and plans its fetches; `None`: nothing counted.
    pub meter: Option<Arc<dyn Meter>>,
}

impl std::fmt::Debug for Gate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Gate")
            .field("open", &*self.open.borrow())
            .field("fetch_max", &self.meter.as_ref().map(|m| m.fetch_max()))
            .finish()
    }
}

/// Tells its [`Meter`] that a message's handling has ended when dropped.
struct Finished(Option<(Arc<dyn Meter>, u64)>);

impl Drop for Finished {
    fn drop(&mut self) {
        if let Some((meter, charged)) = self.0.take() {
            meter.finished(charged);
        }
    }
}

/// Counts what a gated loop takes ([`Gate::meter`]): each message as it arrives from a fetch
/// (before its task starts, so the next fetch is planned with it counted) and again once its
/// handling has ended, whatever the outcome (an aborted task included).
pub trait Meter: Send + Sync {
    /// The most messages the next fetch may bring (at least 1), on top of the free slots and
    /// `max_batch`; read before each fetch.
    fn fetch_max(&self) -> usize;
    /// `msg` arrived from a fetch; returns what was charged for it, handed back to
    /// [`Meter::finished`].
    fn fetched(&self, msg: &jetstream::Message) -> u64;
    /// The handling of a message charged `charged` has ended.
    fn finished(&self, charged: u64);
}

/// Why a per-tenant consume loop ended ([`Worker::consume_gated`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ended {
    /// Shutdown was asked for.
    Shutdown,
    /// The consumer (or its stream) no longer exists on the server: open or create it again.
    ConsumerGone,
}

/// Whether `consumer`, or its stream, no longer exists on the server (JetStream 10014
/// `consumer not found`, 10059 `stream not found`). Asked after a fetch ends in an error: a
/// pull to a consumer that is gone is answered 503 (no responders), or 409 when it is deleted
/// while the pull waits. Any other answer, a timeout included, is not "gone".
pub async fn consumer_gone(consumer: &PullConsumer) -> bool {
    use async_nats::jetstream::ErrorCode;
    use async_nats::jetstream::context::ConsumerInfoErrorKind as Kind;
    match consumer.get_info().await {
        Ok(_) => false,
        Err(error) => match error.kind() {
            Kind::NotFound | Kind::StreamNotFound => true,
            Kind::JetStream(js) => matches!(
                js.error_code(),
                ErrorCode::CONSUMER_NOT_FOUND | ErrorCode::STREAM_NOT_FOUND
            ),
            _ => false,
        },
    }
}

/// A stage's logic for one message.
pub trait Handler: Send + Sync + 'static {
    /// Decides what happens to `msg`. Must not panic on any input.
    fn handle(&self, msg: &jetstream::Message) -> impl Future<Output = Handled> + Send;

    /// The `traceparent` to parent the message's span on when the message carries none
    /// (ingress derives one per envelope); `None` starts a new trace.
    fn trace_fallback(&self, _msg: &jetstream::Message) -> Option<String> {
        None
    }
}

/// How the loop runs.
#[derive(Debug, Clone)]
pub struct WorkerSettings {
    /// Messages handled at once.
    pub concurrency: usize,
    /// Most bytes of messages the worker's loops hold at once (fetched and not yet settled):
    /// fetches wait for room and are sized by it ([`crate::budget`]).
    pub max_in_flight_bytes: usize,
    /// How long one pull waits for the messages it asked for.
    pub fetch_wait: Duration,
    /// Most messages one fetch asks for (the free slots, at most this): with several
    /// consumers sharing the slots (one per tenant), it bounds what one consumer takes at a
    /// time, so the slots go round the tenants that have messages.
    pub max_batch: usize,
    /// How each message is settled (DLQ write retries, the hold for transient failures).
    pub settle: SettleSettings,
}

impl Default for WorkerSettings {
    fn default() -> Self {
        Self {
            concurrency: 64,
            max_in_flight_bytes: crate::budget::DEFAULT_MAX_IN_FLIGHT_BYTES,
            fetch_wait: Duration::from_secs(1),
            max_batch: usize::MAX,
            settle: SettleSettings::default(),
        }
    }
}

/// The consume loop of one stage.
pub struct Worker<H> {
    handler: Arc<H>,
    settler: Settler,
    /// What pulls are sent with and messages settled through.
    js: jetstream::Context,
    settings: WorkerSettings,
    /// Handler slots, shared by every consumer this worker reads.
    slots: Arc<Semaphore>,
    /// The bytes its loops hold, shared as the slots are.
    budget: Arc<ByteBudget>,
}

impl<H: Handler> Worker<H> {
    /// A worker for `handler`, writing DLQ records with `js` in `ns`.
    pub fn new(
        handler: Arc<H>,
        js: jetstream::Context,
        ns: Namespace,
        metrics: Arc<Metrics>,
        settings: WorkerSettings,
    ) -> Self {
        let budget = ByteBudget::new(settings.max_in_flight_bytes, metrics.bytes_held.clone());
        let settler = Settler::new(js.clone(), ns, metrics, settings.settle.clone());
        let slots = Arc::new(Semaphore::new(settings.concurrency.max(1)));
        Self {
            handler,
            settler,
            js,
            settings,
            slots,
            budget,
        }
    }

    /// Runs until `shutdown` is cancelled, then drains in-flight messages and returns.
    pub async fn run(self, consumer: PullConsumer, shutdown: CancellationToken) {
        Arc::new(self).consume(consumer, shutdown).await;
    }

    /// Reads `consumer` with this worker's slots until `shutdown`, then drains what it took.
    /// Each pull asks for the free slots (at most `max_batch` and [`FETCH_MAX_MESSAGES`]) and
    /// stays open until they are filled or `fetch_wait` ends (`PullEnds::AtCount`), so the
    /// worker should read this one consumer: several
    /// consumers sharing its slots are read with [`Worker::consume_gated`]. A fetch that ends
    /// in an error (the consumer deleted, say) is followed by a pause, never by a tight loop.
    pub async fn consume(self: Arc<Self>, consumer: PullConsumer, shutdown: CancellationToken) {
        self.consume_until(
            Box::new(consumer),
            None,
            None,
            PullEnds::AtCount,
            false,
            shutdown,
        )
        .await;
    }

    /// Reads a per-tenant consumer with this worker's slots, which several such consumers (one
    /// per tenant stream) share: each fetches at most `max_batch` at a time, its pulls end
    /// when its stream is empty (`PullEnds::AtEmpty`), and the slots' FIFO queue serves the
    /// consumers with messages in turn. At a trickle (the last message fetched was a first
    /// delivery that left the stream empty: its `num_pending` was 0) a pull asks for one message
    /// and stays open for it, until a message shows more behind it or is a redelivery. Fetches only while `gate` is open (a
    /// tenant with credit at the next stage, say) and at most the messages it allows per fetch:
    /// a closed gate stops new fetches (one under way still delivers what its stream holds, up
    /// to what it asked for: at most `max_batch`, at most the gate's [`Meter::fetch_max`], and
    /// one at a trickle),
    /// and the loop waits for it to open. A gate whose sender is gone counts as open.
    /// Ends, after draining, at `shutdown`
    /// ([`Ended::Shutdown`]) or when a failed fetch finds the consumer gone
    /// ([`Ended::ConsumerGone`]: a consumer whose state nats-server keeps in memory does not
    /// survive the server's restart), for the caller to create it again.
    ///
    /// The consumer's messages are `tenant`'s (`None`: no one tenant's): they are charged to
    /// it in the byte budget, and the loop fetches while the service has room or the tenant is
    /// under its fair share ([`crate::budget::TenantBudget`]).
    ///
    /// One such loop runs per tenant, for as long as the tenant is registered, so what it
    /// keeps is kept once per tenant: the consumer (its cached info, over a kilobyte) is boxed
    /// here, before the loop's state is laid out, and the sub-futures the loop awaits only now
    /// and then (a pull's start, a backoff, the consumer check) are boxed while awaited.
    pub fn consume_gated(
        self: Arc<Self>,
        consumer: PullConsumer,
        tenant: Option<TenantId>,
        gate: Option<Gate>,
        shutdown: CancellationToken,
    ) -> impl Future<Output = Ended> + Send {
        let tenant = tenant.map(|tenant| self.budget.tenant(&tenant));
        self.consume_until(
            Box::new(consumer),
            tenant,
            gate,
            PullEnds::AtEmpty,
            true,
            shutdown,
        )
    }

    async fn consume_until(
        self: Arc<Self>,
        consumer: Box<PullConsumer>,
        tenant: Option<TenantBudget>,
        mut gate: Option<Gate>,
        pull_ends: PullEnds,
        end_when_gone: bool,
        shutdown: CancellationToken,
    ) -> Ended {
        let mut ended = Ended::Shutdown;
        let mut reconnected = switchyard_runtime::nats::reconnections();
        let slots = self.slots.clone();
        let max_deliver = consumer.cached_info().config.max_deliver;
        let shared = self;
        // Tracked, not joined: a finished task's memory (its whole future) is freed as it ends,
        // where a `JoinSet` would keep it until joined — and this loop can wait long (for its
        // gate, a slot, a tenant's next message) with up to `max_batch` finished tasks. As with
        // a `JoinSet`, dropping this loop (aborting the service's task, as a crash would) ends
        // every task it started: `abort` is cancelled by the guard, and each task ends at it.
        let tasks = TaskTracker::new();
        let abort = CancellationToken::new();
        let _abort_on_drop = abort.clone().drop_guard();
        let mut backoff = RetryPolicy::INFRASTRUCTURE.backoff();
        // Boxed, as the consumer: one such loop runs per tenant.
        let mut puller = Box::new(Puller::new(shared.js.clone()));
        // A per-tenant loop starts at a trickle (one message asked for) until a message shows
        // more behind it: a tenant that sends nothing keeps a one-message pull open, which
        // takes nothing of the byte budget's room from the others.
        let mut trickle = pull_ends == PullEnds::AtEmpty;
        while !shutdown.is_cancelled() {
            // Room in the service's byte budget (or the tenant's fair share of it) before
            // anything is fetched; then the gate, which may have closed meanwhile.
            let room = async {
                match &tenant {
                    Some(tenant) => tenant.room().await,
                    None => shared.budget.room().await,
                }
            };
            tokio::select! {
                _ = shutdown.cancelled() => break,
                () = room => {}
            }
            if let Some(open) = gate.as_mut().map(|g| &mut g.open) {
                let sender_gone = tokio::select! {
                    _ = shutdown.cancelled() => break,
                    waited = open.wait_for(|open| *open) => waited.is_err(),
                };
                if sender_gone {
                    gate = None;
                }
            }
            // Wait for at least one free slot (or shutdown) before fetching.
            let permit = tokio::select! {
                _ = shutdown.cancelled() => break,
                permit = slots.clone().acquire_owned() => match permit { Ok(p) => p, Err(_) => break },
            };
            let mut free = (slots.available_permits() + 1).min(shared.settings.max_batch.max(1));
            let meter = gate.as_ref().and_then(|g| g.meter.clone());
            if let Some(meter) = &meter {
                free = free.min(meter.fetch_max().max(1));
            }
            drop(permit);
            // At a trickle (the last message left the stream empty) one message is asked for
            // and the pull stays open for it: nats-server then owes no `404` after it, and no
            // more than it waits for a slot or passes a gate that closed meanwhile.
            let (ends, count) = if trickle {
                (PullEnds::AtCount, 1)
            } else {
                (pull_ends, free.min(FETCH_MAX_MESSAGES))
            };
            // As many as the byte budget's room holds (at least one), counted as planned until
            // they arrive or the pull ends.
            let mut planned = match &tenant {
                Some(tenant) => tenant.plan(count),
                None => shared.budget.plan(count),
            };
            let count = planned.count();
            let sent =
                Box::pin(shared.pull(&mut puller, &consumer, count, ends, &mut backoff, &shutdown))
                    .await;
            match sent {
                Pulled::Sent => {}
                Pulled::Retry => continue,
                Pulled::Stop => break,
            }
            let mut failed = false;
            let mut trickle_seen = None;
            loop {
                // A fetch may wait long (`fetch_wait`) for its first message: shutdown does not,
                // nor a reconnection (the server may have forgotten the pull: it ends here, and
                // the next pull finds out whether the consumer is still there).
                let next = tokio::select! {
                    _ = shutdown.cancelled() => break,
                    _ = reconnected.changed() => {
                        failed = true;
                        break;
                    }
                    next = puller.next() => next,
                };
                let msg = match next {
                    Some(Ok(msg)) => msg,
                    Some(Err(error)) => {
                        tracing::debug!(%error, "fetch ended");
                        failed = true;
                        break;
                    }
                    None => break,
                };
                // `num_pending` counts the messages never delivered, not those waiting to be
                // delivered again: a redelivery says nothing of what is behind it. Read only by
                // the loops whose pulls end at an empty stream (the others never trickle).
                if pull_ends == PullEnds::AtEmpty {
                    trickle_seen = msg
                        .info()
                        .ok()
                        .map(|info| info.pending == 0 && info.delivered == 1);
                }
                // Charged as it arrives: it is held from now on, a slot or not.
                planned.arrived();
                let charge = match &tenant {
                    Some(tenant) => tenant.charge(msg.length),
                    None => shared.budget.charge(msg.length, None),
                };
                let Ok(permit) = slots.clone().acquire_owned().await else {
                    break;
                };
                let metered = meter.as_ref().map(|m| (m.clone(), m.fetched(&msg)));
                tasks.spawn(shared.task(
                    (msg, charge),
                    permit,
                    &shutdown,
                    &abort,
                    max_deliver,
                    metered,
                ));
            }
            drop(planned);
            if let Some(seen) = trickle_seen {
                trickle = seen;
            }
            if !failed {
                backoff.reset();
            } else if end_when_gone && Box::pin(consumer_gone(&consumer)).await {
                ended = Ended::ConsumerGone;
                break;
            } else if !Box::pin(backoff.wait(&shutdown)).await {
                break;
            }
        }
        // The pull left open goes with its inbox now, not after the drain: what nats-server
        // would deliver to it meanwhile would wait unread for its `ack_wait`.
        drop(puller);
        tracing::info!(in_flight = tasks.len(), "draining");
        tasks.close();
        tasks.wait().await;
        tracing::info!("drained");
        ended
    }

    /// Reads one consumer shared by every tenant (a hand-off stream) fairly: it keeps up to
    /// `window` messages fetched (buffered or being handled), queues the buffered ones per
    /// tenant (`tenant_of`, from the subject), and hands free slots to the tenants in turn, so
    /// a message of a quiet tenant waits behind at most one message of each other tenant with
    /// messages buffered, not behind a whole burst of one of them. Stream order is kept within
    /// a tenant. `window` should stay within the consumer's `max_ack_pending`, and small enough
    /// that a buffered message is handled before its `ack_wait` (else it is delivered again,
    /// which the stages absorb as a duplicate). Each message is charged to its tenant in the
    /// byte budget, buffered or handled, and the loop fetches while what is held within each
    /// tenant's fair share is under the limit ([`ByteBudget::room`]). Each pull asks for the
    /// window's room (within the budget's) and stays open until it has brought that many
    /// (`PullEnds::AtCount`). Runs until `shutdown`, then drains what it took (buffered
    /// messages are left unacked: JetStream redelivers them).
    pub async fn consume_fair(
        self: Arc<Self>,
        consumer: PullConsumer,
        window: usize,
        tenant_of: impl Fn(&jetstream::Message) -> Option<TenantId>,
        shutdown: CancellationToken,
    ) {
        let window = window.max(1);
        let slots = self.slots.clone();
        let max_deliver = consumer.cached_info().config.max_deliver;
        let mut queues = FairQueues::default();
        // A `JoinSet` ends its tasks when it is dropped: they need no abort token.
        let never_aborted = CancellationToken::new();
        let mut tasks = JoinSet::new();
        let mut backoff = RetryPolicy::INFRASTRUCTURE.backoff();
        let mut reconnected = switchyard_runtime::nats::reconnections();
        let mut puller = Puller::new(self.js.clone());
        let start = |tasks: &mut JoinSet<()>, held: Held, permit: OwnedSemaphorePermit| {
            tasks.spawn(self.task(held, permit, &shutdown, &never_aborted, max_deliver, None));
        };
        let dispatch = |queues: &mut FairQueues, tasks: &mut JoinSet<()>| {
            while !queues.is_empty() {
                let Ok(permit) = slots.clone().try_acquire_owned() else {
                    break;
                };
                let Some(held) = queues.pop() else {
                    break;
                };
                start(tasks, held, permit);
            }
        };
        'outer: while !shutdown.is_cancelled() {
            while tasks.try_join_next().is_some() {}
            dispatch(&mut queues, &mut tasks);
            let room = window.saturating_sub(queues.len() + tasks.len());
            if room == 0 || !self.budget.has_room() {
                // The window is full, or the byte budget: a settled message makes room.
                tokio::select! {
                    _ = shutdown.cancelled() => break,
                    Some(_) = tasks.join_next(), if !tasks.is_empty() => continue,
                    () = self.budget.room(), if room > 0 => continue,
                }
            }
            let mut planned = self.budget.plan(room.min(FETCH_MAX_MESSAGES));
            let room = planned.count();
            let sent = self
                .pull(
                    &mut puller,
                    &consumer,
                    room,
                    PullEnds::AtCount,
                    &mut backoff,
                    &shutdown,
                )
                .await;
            match sent {
                Pulled::Sent => {}
                Pulled::Retry => continue,
                Pulled::Stop => break,
            }
            let mut failed = false;
            loop {
                tokio::select! {
                    _ = shutdown.cancelled() => break 'outer,
                    // The server may have forgotten the pull: pull again.
                    _ = reconnected.changed() => {
                        failed = true;
                        break;
                    }
                    next = puller.next() => match next {
                        Some(Ok(msg)) => {
                            planned.arrived();
                            let tenant = tenant_of(&msg);
                            let charge = self.budget.charge(msg.length, tenant.as_ref());
                            // Nobody waits for a slot, so nobody is passed over: the message
                            // takes a free slot at once, without a turn through the queues
                            // (which would make and drop its tenant's queue, room for 4
                            // messages, every time).
                            let free = if queues.is_empty() {
                                slots.clone().try_acquire_owned().ok()
                            } else {
                                None
                            };
                            if let Some(permit) = free {
                                start(&mut tasks, (msg, charge), permit);
                            } else {
                                queues.push(tenant, (msg, charge));
                                dispatch(&mut queues, &mut tasks);
                            }
                        }
                        Some(Err(error)) => {
                            tracing::debug!(%error, "fetch ended");
                            failed = true;
                            break;
                        }
                        None => break,
                    },
                    Some(_) = tasks.join_next(), if !tasks.is_empty() => {
                        dispatch(&mut queues, &mut tasks);
                    }
                }
            }
            drop(planned);
            // A pull the server answered with an error (the consumer deleted, say) is retried
            // after a growing pause, never at once.
            if !failed {
                backoff.reset();
            } else if !backoff.wait(&shutdown).await {
                break;
            }
        }
        // As in `consume_until`: no pull left open through the drain.
        drop(puller);
        tracing::info!(
            in_flight = tasks.len(),
            buffered = queues.len(),
            "draining (buffered messages are left for redelivery)"
        );
        while tasks.join_next().await.is_some() {}
        tracing::info!("drained");
    }
}

/// A fetched message with its bytes charged to the worker's budget.
type Held = (jetstream::Message, Charge);

/// What sending one pull gave.
enum Pulled {
    /// It is under way: read it with [`Puller::next`].
    Sent,
    /// It could not be sent; its backoff has been waited: pull again.
    Retry,
    /// Shutdown came while waiting.
    Stop,
}

impl<H: Handler> Worker<H> {
    /// The task that settles `msg`, holding its slot (`permit`) and its bytes until done, or
    /// ending where it is (the message neither acked nor nak'd, as in a crash) once `abort` is
    /// cancelled. The race is written inside the task, not as a wrapper around it: a wrapping
    /// `async fn` would hold the task's future twice (its argument, and the moved copy it
    /// awaits).
    fn task(
        self: &Arc<Self>,
        (msg, charge): Held,
        permit: OwnedSemaphorePermit,
        shutdown: &CancellationToken,
        abort: &CancellationToken,
        max_deliver: i64,
        metered: Option<(Arc<dyn Meter>, u64)>,
    ) -> impl Future<Output = ()> + Send + 'static {
        let worker = self.clone();
        let shutdown = shutdown.clone();
        let abort = abort.clone();
        // Told when the task ends, however it ends (a panic, an abort, or dropped unpolled).
        let finished = Finished(metered);
        async move {
            let _finished = finished;
            tokio::select! {
                biased;
                () = abort.cancelled() => {}
                () = worker
                    .settler
                    .process(msg, &shutdown, worker.handler.as_ref(), max_deliver) => {}
            }
            drop(permit);
            drop(charge);
        }
    }

    /// Sends `puller` a pull of `consumer` for up to `max` messages (at most
    /// [`FETCH_MAX_MESSAGES`]) within `fetch_wait`, ending as `ends` says; a failure waits the
    /// next delay of `backoff` (shared by the loop, which resets it once a pull ends without an
    /// error: sending the pull succeeds even while the server answers every pull with one).
    async fn pull(
        &self,
        puller: &mut Puller,
        consumer: &PullConsumer,
        max: usize,
        ends: PullEnds,
        backoff: &mut Backoff,
        shutdown: &CancellationToken,
    ) -> Pulled {
        let max = max.min(FETCH_MAX_MESSAGES);
        match puller
            .pull(consumer, max, ends, self.settings.fetch_wait)
            .await
        {
            Ok(()) => Pulled::Sent,
            Err(error) => {
                tracing::warn!(%error, "fetch failed; retrying");
                if backoff.wait(shutdown).await {
                    Pulled::Retry
                } else {
                    Pulled::Stop
                }
            }
        }
    }
}

/// Fetched messages waiting for a slot, one FIFO queue per tenant (`None`: a subject that
/// names none), served in turn.
#[derive(Default)]
struct FairQueues {
    queues: HashMap<Option<TenantId>, VecDeque<Held>>,
    /// Tenants with messages, in the order they are served next.
    turn: VecDeque<Option<TenantId>>,
    len: usize,
}

impl FairQueues {
    fn push(&mut self, tenant: Option<TenantId>, msg: Held) {
        let queue = self.queues.entry(tenant.clone()).or_default();
        if queue.is_empty() {
            self.turn.push_back(tenant);
        }
        queue.push_back(msg);
        self.len += 1;
    }

    /// The next tenant's oldest message.
    fn pop(&mut self) -> Option<Held> {
        let tenant = self.turn.pop_front()?;
        let queue = self.queues.get_mut(&tenant)?;
        let msg = queue.pop_front()?;
        if queue.is_empty() {
            self.queues.remove(&tenant);
        } else {
            self.turn.push_back(tenant);
        }
        self.len -= 1;
        Some(msg)
    }

    fn len(&self) -> usize {
        self.len
    }

    fn is_empty(&self) -> bool {
        self.len == 0
    }
}
