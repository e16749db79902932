//! The stranded-message sweep: what the safety net does for advisories it never heard.
//!
//! Advisories are kept in the `ADVISORIES` stream until handled, but a full stream drops new
//! ones (the server publishes them without an ack): the message such an advisory pointed at
//! stays in its work-queue stream, delivered `max_deliver` times and never again. The sweep finds such messages by positive evidence:
//! for each consumer of a watched work-queue stream, when the consumer has **nothing in
//! flight** (`num_ack_pending` = 0), every message still stored under its filter at or below
//! its last delivered stream sequence has been given up on (acked ones are removed from a work
//! queue; un-acked and nak'd ones would be pending). A candidate is rescued only if a second
//! sweep, one interval later, finds it again under the same conditions, which rules out a
//! message whose removal had not yet reached the node that answered.
//!
//! Limits: a consumer that always has deliveries in flight is never swept (its candidates are
//! counted in `switchyard_dlq_sweep_deferred`), and limits streams (`INGRESS`) cannot be swept
//! at all, because there an acked message stays stored too. See `docs/dlq-wire-format.md`.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::consumer;
use async_nats::jetstream::stream::LastRawMessageErrorKind;
use futures::StreamExt;
use switchyard_subjects::advisory::AdvisoryKind;
use tokio_util::sync::CancellationToken;

use crate::safety_net::{Rescue, SafetyNet};

/// `(stream, consumer, seq)` candidates of one sweep.
type Candidates = BTreeSet<(String, String, u64)>;

/// Runs the sweep every `interval` until `shutdown` (the first one at once).
pub async fn run(
    net: Arc<SafetyNet>,
    interval: Duration,
    max_per_stream: usize,
    shutdown: CancellationToken,
) {
    let mut previous = Candidates::new();
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = ticker.tick() => {}
        }
        let found = match sweep_once(&net, max_per_stream).await {
            Ok(found) => found,
            Err(error) => {
                tracing::warn!(
                    error = format!("{error:#}"),
                    "sweep failed; retrying next interval"
                );
                continue;
            }
        };
        for (stream, consumer, seq) in found.intersection(&previous) {
            if shutdown.is_cancelled() {
                return;
            }
            let deliveries = max_deliver(&net, stream, consumer).await.unwrap_or(0);
            net.handle(Rescue {
                kind: AdvisoryKind::MaxDeliveries,
                stream: stream.clone(),
                consumer: consumer.clone(),
                seq: *seq,
                deliveries,
                term_reason: None,
                swept: true,
            })
            .await;
        }
        previous = found;
    }
}

async fn max_deliver(net: &SafetyNet, stream: &str, name: &str) -> Option<u64> {
    let w = net.watched().iter().find(|w| w.name == stream)?;
    let info = w.stream.consumer_info(name).await.ok()?;
    u64::try_from(info.config.max_deliver).ok()
}

/// One pass over every watched work-queue stream; returns the candidates found.
pub async fn sweep_once(net: &SafetyNet, max_per_stream: usize) -> anyhow::Result<Candidates> {
    let mut found = Candidates::new();
    let mut deferred = 0i64;
    for w in net.watched().iter().filter(|w| w.work_queue) {
        let mut consumers = w.stream.consumers();
        let mut infos: Vec<consumer::Info> = Vec::new();
        while let Some(info) = consumers.next().await {
            infos.push(info?);
        }
        let mut budget = max_per_stream;
        for info in infos {
            let filters: Vec<String> = if !info.config.filter_subjects.is_empty() {
                info.config.filter_subjects.clone()
            } else if !info.config.filter_subject.is_empty() {
                vec![info.config.filter_subject.clone()]
            } else {
                w.stream.cached_info().config.subjects.clone()
            };
            let delivered = info.delivered.stream_sequence;
            let busy = info.num_ack_pending > 0;
            for filter in filters {
                let mut next = 1;
                while budget > 0 && next <= delivered {
                    let message = w
                        .stream
                        .raw_message_builder()
                        .sequence(next)
                        .next_by_subject(filter.clone())
                        .send()
                        .await;
                    let message = match message {
                        Ok(message) => message,
                        Err(err)
                            if matches!(err.kind(), LastRawMessageErrorKind::NoMessageFound) =>
                        {
                            break;
                        }
                        Err(err) => return Err(err.into()),
                    };
                    if message.sequence > delivered {
                        break;
                    }
                    budget -= 1;
                    if busy {
                        deferred += 1;
                    } else {
                        found.insert((w.name.clone(), info.name.clone(), message.sequence));
                    }
                    next = message.sequence + 1;
                }
            }
        }
    }
    net_deferred(net, deferred);
    Ok(found)
}

fn net_deferred(net: &SafetyNet, deferred: i64) {
    net.metrics().sweep_deferred.set(deferred);
}
