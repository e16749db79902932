//! One tenant's delivery loop: fetch what is waiting on the tenant's own consumer, take a
//! token (a leased slot) per message, hand each on when its slot comes. Messages beyond the
//! limit simply stay in the stream — they are not fetched, so they hold no ack-pending slot,
//! spend no delivery attempt, and never block another tenant, whose loop is its own task.
//!
//! Up to one lease window of the tenant's rate (at most `max_batch`, and within the service's
//! byte budget, `max_in_flight_bytes`, which every tenant loop shares) of its messages are in
//! flight at once, each in its own task (waiting for its slot, then handed on and settled), so
//! the tenant's throughput is not one hand-off round trip at a time, and a message held by a
//! failing hand-off does not hold the ones behind it; a message is never fetched long before
//! its slot. Hand-offs of one tenant may reach `EGRESS` out of stream order (no stage
//! promises order).

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_nats::jetstream::{self, AckKind, consumer::PullConsumer};
use switchyard_envelope::Envelope;
use switchyard_keys::{KvKey, RateKey, RateRecord, RateScope, Stage, TenantId};
use switchyard_registry::LimitRecord;
use switchyard_runtime::RetryPolicy;
use switchyard_service::lease::HeldSlot;
use switchyard_service::pull::{PullEnds, Puller};
use switchyard_service::{Handled, Handler, Handoff, Outcome};
use switchyard_topology::ConsumerName;
use tokio::sync::{Semaphore, watch};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::replicas::now_ms;
use crate::shared::{Shared, TenantLabel};

/// Creates (or opens) the tenant's consumer: the topology's per-tenant template
/// `backpressure-{tenant}` (shared by every replica, removed by JetStream once idle, and by a
/// server restart: its state is kept in memory, `storage = "memory"` in the topology).
pub async fn ensure_consumer(shared: &Shared, tenant: &TenantId) -> anyhow::Result<PullConsumer> {
    let declared = shared
        .topology
        .tenant_consumer(ConsumerName::BackpressureTenant, tenant)
        .ok_or_else(|| {
            anyhow::anyhow!("the topology declares no backpressure-{{tenant}} consumer")
        })?;
    let name = declared.config.durable_name.clone().unwrap_or_default();
    let (stream_name, stream) = shared
        .stream_of(tenant)
        .ok_or_else(|| anyhow::anyhow!("stream {} was not opened", declared.stream))?;
    stream
        .get_or_create_consumer(&name, declared.config)
        .await
        .map_err(|e| anyhow::anyhow!("consumer {name} on {stream_name}: {e}"))
}

/// Runs the loop until `shutdown` or `tenant_idle_secs` without messages.
pub async fn run(shared: Arc<Shared>, tenant: TenantId, shutdown: CancellationToken) {
    // One loop runs per tenant with messages waiting, so its state is kept once per tenant:
    // the consumer (its cached info, over a kilobyte) is boxed, and so is every sub-future the
    // loop awaits only now and then (opening the consumer, a pull's start, a lease, a backoff).
    let consumer = match Box::pin(ensure_consumer(&shared, &tenant)).await {
        Ok(consumer) => Box::new(consumer),
        Err(error) => {
            tracing::warn!(%error, %tenant, "cannot open the tenant's consumer; will retry on the next scan");
            return;
        }
    };
    let label = TenantLabel {
        tenant: tenant.to_string(),
    };
    // The settings were validated at start-up; these fall-backs only keep a loop from panicking
    // on a value validation would have refused.
    let lease_window = Duration::try_from_secs_f64(shared.settings.lease_secs)
        .unwrap_or(Duration::from_millis(500));
    let max_batch = shared.settings.max_batch.max(1);
    let idle_after = Duration::from_secs(shared.settings.tenant_idle_secs);
    let mut tokens: VecDeque<HeldSlot> = VecDeque::new();
    // What a raised limit moves (`Raise`): word of limit changes, the tenant's rate last seen,
    // and the signal to this loop's messages waiting for their slots.
    let mut raise = Raise {
        rate: f64::NAN,
        changes: shared.limits.changes(),
        to_waiting: watch::Sender::new(0.0),
    };
    let mut last_activity = Instant::now();
    let mut recent_rate = 0.0_f64;
    let mut arrivals = Arrivals::default();
    let mut fetch_backoff = RetryPolicy::INFRASTRUCTURE.backoff();
    let forward = Forward(shared.clone());
    let max_deliver = consumer.cached_info().config.max_deliver;
    // Messages fetched and not yet settled: at most `max_batch`.
    let room = Arc::new(Semaphore::new(max_batch));
    let mut in_flight = JoinSet::new();
    let mut reconnected = switchyard_runtime::nats::reconnections();
    // Boxed: one such loop runs per tenant.
    let mut puller = Box::new(Puller::new(shared.js.clone()));
    // The tenant's part of the service's byte budget, which every tenant loop shares.
    let budget = shared.budget.tenant(&tenant);
    while !shutdown.is_cancelled() {
        while in_flight.try_join_next().is_some() {}
        let max_block = max_block_of(&shared.limit_for(&tenant), lease_window, max_batch);
        // In flight at most one lease window of the tenant's rate (`max_block`): every fetched
        // message's slot is near, none is hoarded for a later window.
        let in_flight_now = max_batch - room.available_permits();
        let free = max_block.saturating_sub(in_flight_now);
        // The service's byte budget (every tenant loop's messages together) must have room
        // too, or the tenant be under its fair share of it.
        let budget_full = !budget.has_room();
        if free == 0 || budget_full {
            tokio::select! {
                _ = shutdown.cancelled() => break,
                Some(_) = in_flight.join_next(), if !in_flight.is_empty() => continue,
                () = budget.room(), if budget_full => continue,
                Ok(()) = raise.changes.changed() => {
                    raise.apply(shared.limit_for(&tenant).rate_per_sec, &mut tokens);
                    continue;
                }
            }
        }
        // As many as the byte budget's room holds (at least one). Not counted as planned: this
        // pull stays open up to 20 s whether or not the tenant sends.
        let count =
            budget.fetch_count(free.min(switchyard_service::worker::TENANT_FETCH_MAX_MESSAGES));
        let sent = tokio::select! {
            _ = shutdown.cancelled() => break,
            // Open until it has brought `count` messages or its wait ends: a trickle costs one
            // pull per `count` messages (the room is this loop's own, so none waits for it).
            sent = Box::pin(puller.pull(
                &consumer,
                count,
                PullEnds::AtCount,
                switchyard_service::worker::TENANT_FETCH_WAIT,
            )) => sent,
        };
        if let Err(error) = sent {
            tracing::warn!(%error, %tenant, "fetch failed; retrying");
            if !Box::pin(fetch_backoff.wait(&shutdown)).await {
                break;
            }
            continue;
        }
        // Each message is handled as it arrives (never held until the batch completes). The
        // pull stays open until it has brought `free` messages or its wait ends (20 s), so it
        // can span a trickle: what sizes a lease is the messages of the last two lease windows
        // (`arrivals`: a token's life), not all the pull has brought.
        let mut got = 0usize;
        let mut failed = false;
        loop {
            // A pull waits long for its messages (`TENANT_FETCH_WAIT`): shutdown does not, nor
            // a reconnection (a restarted server forgot the pull, and maybe the consumer).
            // Settled messages' tasks are reaped meanwhile (a finished task keeps its future's
            // memory until joined).
            let next = tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = reconnected.changed() => {
                    failed = true;
                    break;
                }
                Some(_) = in_flight.join_next(), if !in_flight.is_empty() => continue,
                Ok(()) = raise.changes.changed() => {
                    raise.apply(shared.limit_for(&tenant).rate_per_sec, &mut tokens);
                    continue;
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
            got += 1;
            let charge = budget.charge(msg.length);
            arrivals.count(Instant::now(), lease_window);
            // Tokens older than two lease windows are dropped: a replica never hoards a burst.
            let stale = now_ms().saturating_sub(2 * lease_window.as_millis() as i64);
            while tokens.front().is_some_and(|held| held.slot_ms < stale) {
                tokens.pop_front();
            }
            if tokens.is_empty() {
                // The limit as it is now: a pull can stay open for a while (20 s); a cut
                // applies from the next lease, a raise to held slots too (`Raise`).
                let limit = shared.limit_for(&tenant);
                let max_block = max_block_of(&limit, lease_window, max_batch);
                // Lease for the demand seen: the recent rate over one window, or (growing
                // geometrically within a burst) what came within a token's life so far, so
                // a lease holds what is likely used before its tokens go stale.
                let ahead = (recent_rate * lease_window.as_secs_f64()).ceil() as usize;
                let count = ahead.max(arrivals.recent()).clamp(1, max_block) as u32;
                let key = RateKey {
                    scope: RateScope::Tenant(tenant.clone()),
                    record: RateRecord::Tokens,
                }
                .render();
                // Carrying: what the record owes under a lower rate moves to this one, as
                // every holder's slots do when it sees the raise (`Raise::apply`) — this
                // loop's own first, should the raise be read here before its word came.
                raise.apply(limit.rate_per_sec, &mut tokens);
                let lease =
                    Box::pin(shared.leaser.lease_carrying(&key, count, &limit, now_ms())).await;
                shared.own.fallback_active.set(i64::from(
                    shared
                        .leaser
                        .in_fallback
                        .load(std::sync::atomic::Ordering::Relaxed),
                ));
                shared
                    .own
                    .tokens_leased
                    .get_or_create(&label)
                    .inc_by(u64::from(count));
                tokens.extend((0..lease.count).map(|i| lease.held(i)));
            }
            let held = tokens.pop_front().unwrap_or_else(|| {
                let now = now_ms();
                HeldSlot {
                    slot_ms: now,
                    start_ms: now,
                    rate: f64::INFINITY,
                    owed_rate: None,
                    movable: false,
                }
            });
            // The fetch asked for no more than the free room; waiting here is only a guard.
            let Ok(permit) = room.clone().acquire_owned().await else {
                break;
            };
            let (forward, shutdown) = (forward.clone(), shutdown.clone());
            let raised = raise.to_waiting.subscribe();
            in_flight.spawn(async move {
                // The message's bytes are held until its task ends, however it ends.
                let _charge = charge;
                if !wait_for_slot(held, raised, &shutdown).await {
                    // Shutdown does not wait for a slow tenant's slot (up to 1 / its rate
                    // away): the message goes back to its stream at once, for whichever
                    // replica runs next (a delivery attempt spent).
                    if let Err(error) = msg.ack_with(AckKind::Nak(None)).await {
                        tracing::debug!(%error, "nak at shutdown failed; redelivered after ack_wait");
                    }
                    return;
                }
                forward
                    .0
                    .settler
                    .process(msg, &shutdown, &forward, max_deliver)
                    .await;
                drop(permit);
            });
        }
        // Sending a pull succeeds even while the server answers each with an error: the
        // backoff is reset only by a pull that ended without one, so the pause grows.
        if !failed {
            fetch_backoff.reset();
        } else if Box::pin(switchyard_service::worker::consumer_gone(&consumer)).await {
            // Gone: its state is kept in nats-server's memory and a server restart removes it.
            // The loop ends; the next scan that sees the tenant's messages creates it again.
            tracing::info!(%tenant, "the tenant's consumer is gone (nats-server restarted?); the next scan creates it again");
            break;
        } else if !Box::pin(fetch_backoff.wait(&shutdown)).await {
            break;
        }
        if got == 0 {
            if last_activity.elapsed() >= idle_after {
                break;
            }
            continue;
        }
        let elapsed = last_activity.elapsed().as_secs_f64().max(0.001);
        recent_rate = 0.7 * recent_rate + 0.3 * (got as f64 / elapsed);
        last_activity = Instant::now();
    }
    // The pull left open goes with its inbox before the drain (what nats-server would deliver
    // to it meanwhile would wait unread for its `ack_wait`). Whatever was fetched is settled
    // before the loop ends (a hold ends at shutdown; a message still waiting for its slot is
    // given back).
    drop(puller);
    // Its waiting messages still move on a raise meanwhile (a slow rate's slot can be seconds
    // away, and other replicas carry).
    loop {
        tokio::select! {
            next = in_flight.join_next() => if next.is_none() { break },
            Ok(()) = raise.changes.changed() => {
                raise.apply(shared.limit_for(&tenant).rate_per_sec, &mut tokens);
            }
        }
    }
}

/// What a raised limit moves in one tenant's loop. The slots this replica holds — `tokens`
/// not yet given to a message, and those of messages waiting for them — each move, when the
/// tenant's rate rises, by `HeldSlot::moved`: its lease's start as the record moves what it
/// owed before that lease, the slot at the new pace within it — so every holder's slots keep
/// their order and end before the first slot of the next carrying lease (`lease::step`). A
/// lowered limit moves nothing (it applies from the next lease). Any limit record's change
/// wakes the loop; only a change of this tenant's rate wakes its waiting messages.
struct Raise {
    /// The tenant's rate last applied (NaN before the first).
    rate: f64,
    /// Word of any change of a limit record (`KvCache::changes`).
    changes: watch::Receiver<u64>,
    /// The tenant's rate, for messages waiting for their slots (each moves its own).
    to_waiting: watch::Sender<f64>,
}

impl Raise {
    /// Applies the tenant's rate as read now: when it changed, moves `tokens` (if it rose
    /// above their lease's) and tells the waiting messages.
    fn apply(&mut self, rate: f64, tokens: &mut VecDeque<HeldSlot>) {
        if rate == self.rate {
            return;
        }
        self.rate = rate;
        let now = now_ms();
        for held in tokens.iter_mut() {
            *held = held.moved(rate, now);
        }
        self.to_waiting.send_replace(rate);
    }
}

/// Waits until `held`'s slot, moving it when the loop tells of the tenant's rate rising
/// (`Raise`). `false`: shutdown came first.
async fn wait_for_slot(
    mut held: HeldSlot,
    mut raised: watch::Receiver<f64>,
    shutdown: &CancellationToken,
) -> bool {
    let mut watching = true;
    loop {
        let wait = held.slot_ms.saturating_sub(now_ms());
        if wait <= 0 {
            return true;
        }
        tokio::select! {
            _ = shutdown.cancelled() => return false,
            _ = tokio::time::sleep(Duration::from_millis(wait as u64)) => return true,
            changed = raised.changed(), if watching => {
                if changed.is_err() {
                    // The loop is gone (its task set aborts this one too): the slot as held.
                    watching = false;
                    continue;
                }
                let to = *raised.borrow_and_update();
                held = held.moved(to, now_ms());
            }
        }
    }
}

/// The most messages a tenant loop has in flight, and leases at once: one lease window of the
/// tenant's rate, within 1 ..= `max_batch` (docs/backpressure.md).
fn max_block_of(limit: &LimitRecord, lease_window: Duration, max_batch: usize) -> usize {
    ((limit.rate_per_sec * lease_window.as_secs_f64()).ceil() as usize).clamp(1, max_batch)
}

/// The messages a tenant loop received within about the last two lease windows (a leased
/// token's life: older tokens are dropped), counted in two fixed windows — the current one
/// and the one before — so a loop keeps two counters, not a time per message.
#[derive(Debug, Default)]
struct Arrivals {
    /// When the current window began (`None`: nothing counted yet).
    since: Option<Instant>,
    /// Messages in the current window.
    current: usize,
    /// Messages in the window before it (0 when it ended over a window ago).
    previous: usize,
}

impl Arrivals {
    /// Counts a message received at `now`, windows being `window` long.
    fn count(&mut self, now: Instant, window: Duration) {
        let since = *self.since.get_or_insert(now);
        // Whole windows passed since the current one began: the windows stay aligned, so the
        // two counted never reach back more than two windows.
        let passed = now.saturating_duration_since(since).as_nanos() / window.as_nanos().max(1);
        if passed >= 1 {
            self.previous = if passed == 1 { self.current } else { 0 };
            self.current = 0;
            let passed = u32::try_from(passed).unwrap_or(u32::MAX);
            self.since = Some(since + window.saturating_mul(passed));
        }
        self.current += 1;
    }

    /// Messages of the current window and the one before.
    fn recent(&self) -> usize {
        self.current + self.previous
    }
}

/// What a tenant loop does with a message whose slot has come: hand it on to the next stage,
/// hold it in place when the hand-off fails (the settler retries), or dead-letter it when its
/// envelope is unreadable or it is too large for the next stage (`payload_too_large`). Settling is the shared [`Settler`](switchyard_service::Settler)'s.
#[derive(Clone)]
pub struct Forward(pub Arc<Shared>);

impl Handler for Forward {
    async fn handle(&self, msg: &jetstream::Message) -> Handled {
        forward(&self.0, msg).await
    }
}

async fn forward(shared: &Shared, msg: &jetstream::Message) -> Handled {
    let envelope = match Envelope::from_headers(msg.headers.as_ref()) {
        Ok(envelope) => envelope,
        Err(error) => {
            return Handled::unreadable_envelope(msg, &shared.ns, Stage::Backpressure, &error);
        }
    };
    let tenant = Some(envelope.address.tenant.clone());
    let h = Handoff::pass_on_headers(msg.headers.as_ref());
    let outcome = match shared
        .handoff
        .forward(shared.next, &envelope, h, msg.payload.clone())
        .await
    {
        Ok(()) => Outcome::Forwarded,
        Err(error) => error.outcome(msg, Stage::Backpressure, &envelope),
    };
    Handled { tenant, outcome }
}

#[cfg(test)]
mod tests {
    use super::*;

    const WINDOW: Duration = Duration::from_millis(500);

    /// Counts a message at each of `offsets` (ms from `start`), returning `recent()` after each.
    fn recent_after(arrivals: &mut Arrivals, start: Instant, offsets: &[u64]) -> Vec<usize> {
        offsets
            .iter()
            .map(|&ms| {
                arrivals.count(start + Duration::from_millis(ms), WINDOW);
                arrivals.recent()
            })
            .collect()
    }

    #[test]
    fn a_trickle_sizes_leases_at_one_whatever_the_pull_has_brought() {
        // One message a second with half-second windows: each finds the window before it
        // empty, so a lease is one token, however long the pull that brought them has been
        // open.
        let mut arrivals = Arrivals::default();
        let offsets: Vec<u64> = (0..16).map(|i| i * 1_000).collect();
        assert_eq!(
            recent_after(&mut arrivals, Instant::now(), &offsets),
            vec![1; 16]
        );
    }

    #[test]
    fn a_burst_counts_the_current_window_and_the_one_before() {
        let mut arrivals = Arrivals::default();
        let start = Instant::now();
        // Four in the first window, then three in the next: 4 + 3 seen within a token's life.
        assert_eq!(
            recent_after(&mut arrivals, start, &[0, 10, 20, 30, 600, 610, 620]),
            vec![1, 2, 3, 4, 5, 6, 7]
        );
        // The window after that forgets the first four.
        assert_eq!(recent_after(&mut arrivals, start, &[1_200]), vec![4]);
        // A pause of two windows or more forgets everything before it.
        assert_eq!(recent_after(&mut arrivals, start, &[2_300]), vec![1]);
    }

    #[test]
    fn the_windows_stay_aligned_so_nothing_older_than_two_windows_is_counted() {
        // Messages just under a window apart: the fourth, at 1,497 ms, counts the windows
        // beginning at 1,000 and 500 ms (itself and the one at 998 ms), not those at 0 and
        // 499 ms, which a window that began at the third message's arrival would still count.
        let mut arrivals = Arrivals::default();
        assert_eq!(
            recent_after(&mut arrivals, Instant::now(), &[0, 499, 998, 1_497]),
            vec![1, 2, 3, 2]
        );
    }
}
