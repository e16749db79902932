//! A stream's high-water mark, for streams that must `discard = old` (JetStream refuses
//! message schedules on a `discard = new` stream: "message scheduling cannot use discard new",
//! error 10052). Such a stream drops its *oldest* messages when full, so Switchyard's own
//! writers stop adding to it above [`HIGH_WATER`] of its limits instead: a hand-off or a
//! schedule into it fails with [`crate::HandoffError::AboveHighWater`], which the stages treat
//! as transient (the message stays where it is and is retried), and the stream keeps the rest
//! of its room for writes already under way. Only a writer that ignores the mark (a raw
//! publish, `dlq replay --to egress`) can still make it evict.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_nats::jetstream;
use switchyard_runtime::retry::poll;
use switchyard_subjects::InputStage;
use tokio_util::sync::CancellationToken;

/// The fill (the larger of bytes and messages against their limits) writers stay under.
pub const HIGH_WATER: f64 = 0.9;

/// How often the stream's fill is read.
pub const POLL_EVERY: Duration = Duration::from_millis(500);

/// What this process knows of the stream: the last reading, and what it added since.
#[derive(Debug, Default, Clone, Copy)]
struct Fill {
    bytes: u64,
    messages: u64,
    /// Limits; 0 or below: none (also before the first reading).
    max_bytes: i64,
    max_msgs: i64,
    added_bytes: u64,
    added_msgs: u64,
}

impl Fill {
    fn ratio(&self, bytes: u64, messages: u64) -> f64 {
        let part = |n: u64, max: i64| if max > 0 { n as f64 / max as f64 } else { 0.0 };
        part(bytes, self.max_bytes).max(part(messages, self.max_msgs))
    }

    fn now(&self) -> f64 {
        self.ratio(
            self.bytes + self.added_bytes,
            self.messages + self.added_msgs,
        )
    }
}

/// The fill of one stage's input stream: read every [`POLL_EVERY`], plus what this process
/// added since (so a burst between two readings cannot run past the mark).
#[derive(Debug)]
pub struct HighWater {
    stage: InputStage,
    stream: String,
    fill: Mutex<Fill>,
}

impl HighWater {
    /// Watches `stream`, the input stream of `stage`, until `shutdown`. Until the first
    /// reading no limit is known and nothing is refused; a reading that fails keeps the last.
    pub fn start(
        js: jetstream::Context,
        stage: InputStage,
        stream: String,
        shutdown: CancellationToken,
    ) -> Arc<Self> {
        let watch = Arc::new(Self::new(stage, stream));
        let task = watch.clone();
        tokio::spawn(async move { task.poll(js, shutdown).await });
        watch
    }

    fn new(stage: InputStage, stream: String) -> Self {
        Self {
            stage,
            stream,
            fill: Mutex::new(Fill::default()),
        }
    }

    /// The stage whose input stream this is.
    pub fn stage(&self) -> InputStage {
        self.stage
    }

    /// The stream's deployed name.
    pub fn stream(&self) -> &str {
        &self.stream
    }

    /// The fill as far as this process knows, as a fraction of the limits.
    pub fn fill(&self) -> f64 {
        self.fill.lock().unwrap_or_else(|p| p.into_inner()).now()
    }

    /// Takes room for one message of `bytes` if the stream stays at or under [`HIGH_WATER`]
    /// with it; otherwise leaves everything as it is and returns the fill.
    pub fn reserve(&self, bytes: usize) -> Result<(), f64> {
        self.reserve_all(bytes, 1)
    }

    /// Takes room for `messages` messages of `bytes` in all, at once, if the stream stays at
    /// or under [`HIGH_WATER`] with every one of them; otherwise takes none and returns the
    /// fill (for writes that must all be stored or none: a fan-out's copies).
    pub fn reserve_all(&self, bytes: usize, messages: u64) -> Result<(), f64> {
        let mut fill = self.fill.lock().unwrap_or_else(|p| p.into_inner());
        let after = fill.ratio(
            fill.bytes + fill.added_bytes + bytes as u64,
            fill.messages + fill.added_msgs + messages,
        );
        if after > HIGH_WATER {
            return Err(fill.now());
        }
        fill.added_bytes += bytes as u64;
        fill.added_msgs += messages;
        Ok(())
    }

    /// Records one reading: `bytes`/`messages` stored against `max_bytes`/`max_msgs` (0 or
    /// below: no limit). What this process added before it is included in it.
    pub fn record(&self, bytes: u64, messages: u64, max_bytes: i64, max_msgs: i64) {
        let mut fill = self.fill.lock().unwrap_or_else(|p| p.into_inner());
        let was = fill.now();
        *fill = Fill {
            bytes,
            messages,
            max_bytes,
            max_msgs,
            added_bytes: 0,
            added_msgs: 0,
        };
        let now = fill.now();
        if (was > HIGH_WATER) != (now > HIGH_WATER) {
            if now > HIGH_WATER {
                tracing::warn!(stream = %self.stream, fill = now, "stream above its high-water mark: hand-offs into it wait");
            } else {
                tracing::info!(stream = %self.stream, fill = now, "stream below its high-water mark again");
            }
        }
    }

    async fn poll(&self, js: jetstream::Context, shutdown: CancellationToken) {
        let what = format!("reading the fill of {}", self.stream);
        poll(
            POLL_EVERY,
            &shutdown,
            &what,
            || js.get_stream(&self.stream),
            |stream| {
                let info = stream.cached_info();
                self.record(
                    info.state.bytes,
                    info.state.messages,
                    info.config.max_bytes,
                    info.config.max_messages,
                );
            },
        )
        .await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn room_is_taken_up_to_the_mark_between_readings() {
        let watch = HighWater::new(InputStage::Egress, "EGRESS".into());
        assert!(watch.reserve(1 << 30).is_ok(), "no limits known yet");
        watch.record(0, 0, 1000, 10);
        for _ in 0..9 {
            watch.reserve(10).unwrap();
        }
        assert!(
            watch.reserve(10).is_err(),
            "the 10th of 10 messages would pass 90 %"
        );
        watch.record(100, 5, 1000, 10);
        assert!(
            watch.reserve(10).is_ok(),
            "a reading replaces what was added"
        );
        assert!(watch.reserve(850).is_err(), "bytes count too");
        watch.record(0, 0, 1000, -1);
        assert!(watch.reserve(900).is_ok());
        assert!((watch.fill() - 0.9).abs() < 1e-9);
    }
}
