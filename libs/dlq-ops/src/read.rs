//! Reading DLQ entries without consuming them, for the CLI and the dlq service alike.
//!
//! The DLQ is a limits stream and reading never removes anything: ranges are read through
//! ordered consumers (ephemeral, no acks, no durable state), single sequences by a get from
//! the stream leader (consistent right after a delete, unlike a direct get from a replica).
//! [`CatchUp`] reads what is stored now and stops once caught up; [`DlqReader::ordered`] is
//! the consumer a live reader (`dlq tail`, the stats processor) follows.

use std::time::Duration;

use async_nats::jetstream::consumer::{self, Consumer, DeliverPolicy, ReplayPolicy, pull};
use async_nats::jetstream::message::StreamMessage;
use async_nats::jetstream::stream::{ConsumerError, LastRawMessageError, LastRawMessageErrorKind};
use async_nats::jetstream::{self, stream::Stream};
use futures::StreamExt;
use switchyard_dlq::{DlqEntry, DlqError};
use switchyard_subjects::Namespace;
use time::OffsetDateTime;

use crate::Selection;

/// How long a catch-up read waits for the next entry before opening a fresh consumer to find
/// out whether anything is left (entries it was told about can be deleted meanwhile).
pub const IDLE: Duration = Duration::from_secs(2);

/// Why reading the DLQ failed.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    /// The ordered consumer could not be created.
    #[error("creating an ordered consumer on the DLQ stream")]
    Consumer(#[source] ConsumerError),
    /// The consumer's messages could not be requested.
    #[error("reading the DLQ stream")]
    Messages(#[source] consumer::StreamError),
    /// A delivery failed.
    #[error("reading the DLQ stream")]
    Delivery(#[source] pull::OrderedError),
    /// The consumer's message stream ended.
    #[error("the DLQ reader ended")]
    Ended,
    /// A delivered message has no JetStream metadata.
    #[error("reading a DLQ message's metadata")]
    Metadata(#[source] async_nats::Error),
    /// Getting one entry by sequence failed.
    #[error("reading DLQ entry {seq}")]
    Get {
        /// The sequence.
        seq: u64,
        /// The client's error.
        #[source]
        source: LastRawMessageError,
    },
}

/// A delivered message read as an entry (or why it is not one), with where it sits.
#[derive(Debug)]
pub struct Delivered {
    /// The DLQ stream sequence.
    pub seq: u64,
    /// When the stream stored it.
    pub stored_at: OffsetDateTime,
    /// Messages left after it in the consumer's filter.
    pub pending: u64,
    /// The entry, or why the message is not a valid DLQ record.
    pub entry: Result<DlqEntry, DlqError>,
}

impl Delivered {
    /// Reads a message delivered from the DLQ stream of namespace `ns` as an entry.
    ///
    /// Errors: the message carries no JetStream metadata ([`ReadError::Metadata`]); a message
    /// that is not a valid record is `Ok` with `entry` holding why.
    pub fn read(ns: &Namespace, message: &jetstream::Message) -> Result<Self, ReadError> {
        let info = message.info().map_err(ReadError::Metadata)?;
        let (seq, stored_at, pending) = (info.stream_sequence, info.published, info.pending);
        let entry = DlqEntry::from_message(
            ns,
            seq,
            stored_at,
            message.subject.as_str(),
            message.headers.as_ref(),
            message.payload.clone(),
        );
        Ok(Self {
            seq,
            stored_at,
            pending,
            entry,
        })
    }
}

/// Entries read by [`DlqReader::collect`].
#[derive(Debug, Default)]
pub struct Collected {
    /// Matching entries, oldest first.
    pub entries: Vec<DlqEntry>,
    /// Whether reading stopped at the limit with more entries left to look at.
    pub truncated: bool,
    /// Sequences of stored messages in the subject and time range that are not valid DLQ
    /// records (so their code is unknown).
    pub malformed: Vec<u64>,
}

/// The DLQ stream of one deployment, read without consuming.
#[derive(Clone)]
pub struct DlqReader {
    /// The DLQ stream.
    stream: Stream,
    /// The deployment namespace (to parse entries' subjects).
    ns: Namespace,
}

impl DlqReader {
    /// A reader of `stream` in `ns`.
    pub fn new(stream: Stream, ns: Namespace) -> Self {
        Self { stream, ns }
    }

    /// The DLQ stream.
    pub fn stream(&self) -> &Stream {
        &self.stream
    }

    /// The deployment namespace.
    pub fn namespace(&self) -> &Namespace {
        &self.ns
    }

    /// An ordered consumer over `filter` from `start` (no acks, nothing removed).
    pub async fn ordered(
        &self,
        filter: &str,
        start: DeliverPolicy,
    ) -> Result<Consumer<pull::OrderedConfig>, ReadError> {
        self.stream
            .create_consumer(pull::OrderedConfig {
                filter_subject: filter.to_owned(),
                deliver_policy: start,
                replay_policy: ReplayPolicy::Instant,
                ..Default::default()
            })
            .await
            .map_err(ReadError::Consumer)
    }

    /// How many stored messages `filter` covers from `start`.
    pub async fn pending(&self, filter: &str, start: DeliverPolicy) -> Result<u64, ReadError> {
        Ok(self.ordered(filter, start).await?.cached_info().num_pending)
    }

    /// Reads a delivered message as an entry ([`Delivered::read`] in this reader's namespace).
    pub fn delivered(&self, message: &jetstream::Message) -> Result<Delivered, ReadError> {
        Delivered::read(&self.ns, message)
    }

    /// Reads a stored message as an entry.
    pub fn entry_of(&self, message: &StreamMessage) -> Result<DlqEntry, DlqError> {
        DlqEntry::from_message(
            &self.ns,
            message.sequence,
            message.time,
            message.subject.as_str(),
            Some(&message.headers),
            message.payload.clone(),
        )
    }

    /// The stored message at `seq`, or `None` when there is none (never stored, or removed).
    pub async fn get(&self, seq: u64) -> Result<Option<StreamMessage>, ReadError> {
        match self.stream.raw_message_builder().sequence(seq).send().await {
            Ok(message) => Ok(Some(message)),
            Err(e) if matches!(e.kind(), LastRawMessageErrorKind::NoMessageFound) => Ok(None),
            Err(source) => Err(ReadError::Get { seq, source }),
        }
    }

    /// Reads every message stored now under `filter` from `start`, oldest first.
    pub fn catch_up(&self, filter: String, start: DeliverPolicy) -> CatchUp {
        CatchUp {
            reader: self.clone(),
            filter,
            start,
            messages: None,
            done: false,
        }
    }

    /// Reads every message the selection's subject filter (and `since`) covers now; the
    /// caller checks [`Selection::matches`]. Not for listed selections.
    pub fn select(&self, selection: &Selection) -> CatchUp {
        self.catch_up(selection.subject_filter(&self.ns), selection.start())
    }

    /// Every entry the selection matches as stored now, oldest first, stopping once caught up
    /// or after `limit` entries. Each stored message that is not a valid record goes to
    /// `malformed` (and, when inside the time range, into [`Collected::malformed`]).
    pub async fn collect(
        &self,
        selection: &Selection,
        limit: Option<usize>,
        mut malformed: impl FnMut(u64, &DlqError),
    ) -> Result<Collected, ReadError> {
        let mut collected = Collected::default();
        if limit == Some(0) {
            let filter = selection.subject_filter(&self.ns);
            collected.truncated = self.pending(&filter, selection.start()).await? > 0;
            return Ok(collected);
        }
        let mut read = self.select(selection);
        while let Some((_, delivered)) = read.next().await? {
            match delivered.entry {
                Ok(entry) if selection.matches(&entry) => {
                    collected.entries.push(entry);
                    if limit.is_some_and(|l| collected.entries.len() >= l) {
                        collected.truncated = delivered.pending > 0;
                        break;
                    }
                }
                Ok(_) => {}
                Err(err) => {
                    malformed(delivered.seq, &err);
                    if selection.in_time(delivered.stored_at) {
                        collected.malformed.push(delivered.seq);
                    }
                }
            }
        }
        Ok(collected)
    }
}

/// A read of what is stored now (see [`DlqReader::catch_up`]). After an error, calling
/// [`CatchUp::next`] again resumes after the last message it returned.
pub struct CatchUp {
    /// The reader.
    reader: DlqReader,
    /// The subject filter.
    filter: String,
    /// Where the next consumer starts (after the last message returned).
    start: DeliverPolicy,
    /// The open consumer's messages.
    messages: Option<pull::Ordered>,
    /// Caught up.
    done: bool,
}

impl CatchUp {
    /// The next stored message with its entry, or `None` once caught up (at once when nothing
    /// is stored).
    pub async fn next(&mut self) -> Result<Option<(jetstream::Message, Delivered)>, ReadError> {
        loop {
            if self.done {
                return Ok(None);
            }
            let messages = match &mut self.messages {
                Some(messages) => messages,
                None => {
                    let consumer = self.reader.ordered(&self.filter, self.start).await?;
                    if consumer.cached_info().num_pending == 0 {
                        self.done = true;
                        return Ok(None);
                    }
                    let messages = consumer.messages().await.map_err(ReadError::Messages)?;
                    self.messages.insert(messages)
                }
            };
            let message = match tokio::time::timeout(IDLE, messages.next()).await {
                // Idle: start over from where we are, which finds out whether anything is left.
                Err(_) => {
                    self.messages = None;
                    continue;
                }
                Ok(None) => {
                    self.messages = None;
                    return Err(ReadError::Ended);
                }
                Ok(Some(Err(e))) => {
                    self.messages = None;
                    return Err(ReadError::Delivery(e));
                }
                Ok(Some(Ok(message))) => message,
            };
            let delivered = self.reader.delivered(&message)?;
            self.start = DeliverPolicy::ByStartSequence {
                start_sequence: delivered.seq + 1,
            };
            self.done = delivered.pending == 0;
            return Ok(Some((message, delivered)));
        }
    }
}
