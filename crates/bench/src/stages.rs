//! `--stage-latency`: when each measured message reached each stage's input subjects, since
//! the publisher stamped it ([`crate::traffic::SENT`]), so a pipeline run's latency splits into
//! the stages' shares.
//!
//! A core subscription of the benchmark's own on every stage's input filter
//! (`ingress.v1.>` … `egress.v1.>`) sees each hand-off as nats-server routes its publish, before
//! the stream stores it; the hand-offs carry the producer's headers, the stamp among them.
//! What it does not see: the time a message waits in a stream for its consumer's pull and a
//! stage's handling of it are one share (from one stage's input to the next's). The
//! subscription costs nats-server one more copy of every hand-off and the benchmark one more
//! message to read each, so a run measured with it is a little slower than one without. A time
//! is taken when the copy is read: in an unpaced run it includes the benchmark's own lag in
//! reading them. On a cluster, the first messages may pass before the subscription's interest
//! has reached the other nodes.

use std::time::Duration;

use futures::StreamExt;
use switchyard_subjects::{InputStage, Namespace};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use crate::report::percentile_ms;
use crate::traffic::latency_of;

/// The subscription timing the stages' inputs; [`StageClock::stop`] ends it.
pub struct StageClock {
    stop: oneshot::Sender<()>,
    task: JoinHandle<[Vec<Duration>; 4]>,
}

impl StageClock {
    /// Subscribes `client` to every stage's input in `ns` (flushed, so nothing published after
    /// this is missed) and times what comes until stopped. Messages without the stamp (the
    /// warm-up's) are not timed.
    pub async fn start(client: &async_nats::Client, ns: &Namespace) -> anyhow::Result<Self> {
        let mut subscriptions = Vec::new();
        for (index, stage) in InputStage::ALL.into_iter().enumerate() {
            let subscription = client.subscribe(ns.stage_filter(stage, None)).await?;
            subscriptions.push(subscription.map(move |msg| (index, msg)).boxed());
        }
        client.flush().await?;
        let (stop, mut stopped) = oneshot::channel();
        let task = tokio::spawn(async move {
            let mut arrivals: [Vec<Duration>; 4] = Default::default();
            let mut all = futures::stream::select_all(subscriptions);
            loop {
                tokio::select! {
                    _ = &mut stopped => break,
                    next = all.next() => match next {
                        Some((index, msg)) => {
                            if let Some(latency) = latency_of(msg.headers.as_ref()) {
                                arrivals[index].push(latency);
                            }
                        }
                        None => break,
                    },
                }
            }
            arrivals
        });
        Ok(Self { stop, task })
    }

    /// Stops timing; one line of the report: the p50 / p99 latency, since sent, at which the
    /// messages reached each stage's input, and each stage's share at the median (from its
    /// input to the next stage's; the last, egress's, to the sink, `delivered`: the run's
    /// sorted end-to-end latencies).
    pub async fn stop(self, delivered: &[Duration]) -> anyhow::Result<String> {
        let _ = self.stop.send(());
        let mut arrivals = self.task.await?;
        let mut reached = Vec::new();
        let mut medians = Vec::new();
        for (stage, times) in InputStage::ALL.iter().zip(arrivals.iter_mut()) {
            times.sort();
            let (p50, p99) = (percentile_ms(times, 0.5), percentile_ms(times, 0.99));
            reached.push(format!(
                "{} {p50:.2} / {p99:.2} ({} seen)",
                stage.root(),
                times.len()
            ));
            medians.push(p50);
        }
        medians.push(percentile_ms(delivered, 0.5));
        let shares = InputStage::ALL
            .iter()
            .zip(medians.windows(2))
            .map(|(stage, pair)| format!("{} {:+.2}", stage.root(), pair[1] - pair[0]))
            .collect::<Vec<_>>();
        Ok(format!(
            "stage inputs reached, ms since sent, p50 / p99: {}; each stage's share of the median (its input to the next, egress's to the sink), ms: {}",
            reached.join(", "),
            shares.join(", ")
        ))
    }
}
