//! Reading DLQ entries without consuming them: ordered consumers (ephemeral, no acks, no
//! durable state) for ranges, direct gets for single sequences.

use std::time::Duration;

use anyhow::Context;
use async_nats::jetstream::consumer::{DeliverPolicy, ReplayPolicy, pull};
use async_nats::jetstream::stream::{DirectGetErrorKind, Stream};
use async_nats::jetstream::{self, message::StreamMessage};
use futures::StreamExt;
use switchyard_dlq::{DlqCode, DlqEntry};
use switchyard_subjects::Namespace;
use time::OffsetDateTime;

use super::{FilterArgs, TimeArgs};
use crate::parse::show_time;

/// How long a catch-up read waits for the next entry before deciding it has caught up (only
/// reached when entries are deleted while the read is under way).
const IDLE: Duration = Duration::from_secs(5);

/// The entries a filter selects.
#[derive(Debug, Clone)]
pub struct Selection {
    /// Tenant, stage and platform (as given, for messages).
    pub filters: FilterArgs,
    /// The stream subject filter built from them.
    pub subject_filter: String,
    /// Only entries stored at or after this.
    pub since: Option<OffsetDateTime>,
    /// Only entries stored at or before this.
    pub until: Option<OffsetDateTime>,
}

impl Selection {
    /// A selection from the command-line filters.
    pub fn new(ns: &Namespace, filters: &FilterArgs, times: &TimeArgs) -> Self {
        Self {
            filters: filters.clone(),
            subject_filter: ns.dlq_filter(&filters.subjects()),
            since: times.since,
            until: times.until,
        }
    }

    /// Whether an entry read through the subject filter also passes the code and time checks.
    pub fn matches(&self, entry: &DlqEntry) -> bool {
        self.filters.code.is_none_or(|c| c == entry.record.code) && self.in_time(entry.stored_at)
    }

    /// Where an ordered read starts: the first entry, or the first stored at `--since`.
    pub fn start(&self) -> DeliverPolicy {
        self.since.map_or(DeliverPolicy::All, |start_time| {
            DeliverPolicy::ByStartTime { start_time }
        })
    }

    /// Whether a time of storage is inside `--since`/`--until`.
    pub fn in_time(&self, stored_at: OffsetDateTime) -> bool {
        self.since.is_none_or(|t| stored_at >= t) && self.until.is_none_or(|t| stored_at <= t)
    }

    /// `tenant=acme code=no_route …`, or `every entry`.
    pub fn describe(&self) -> String {
        let f = &self.filters;
        let mut parts = Vec::new();
        if let Some(t) = &f.tenant {
            parts.push(format!("tenant={t}"));
        }
        if let Some(s) = f.stage {
            parts.push(format!("stage={s}"));
        }
        if let Some(p) = &f.platform {
            parts.push(format!("platform={p}"));
        }
        if let Some(c) = f.code {
            parts.push(format!("code={c}"));
        }
        if let Some(t) = self.since {
            parts.push(format!("since={}", show_time(t)));
        }
        if let Some(t) = self.until {
            parts.push(format!("until={}", show_time(t)));
        }
        if parts.is_empty() {
            "every entry".to_owned()
        } else {
            parts.join(" ")
        }
    }
}

/// What `replay` and `purge` act on: explicit sequences, or a filter.
#[derive(Debug, Clone)]
pub enum Target {
    /// These sequences (no confirmation needed).
    Seqs(Vec<u64>),
    /// Whatever matches (needs `--yes` or a confirmation).
    Filter(Selection),
}

impl Target {
    /// Sequences or filters, never both; `--all` stands for "no filter" explicitly.
    pub fn new(
        ns: &Namespace,
        seqs: &[u64],
        filters: &FilterArgs,
        times: &TimeArgs,
        all: bool,
    ) -> anyhow::Result<Self> {
        let filtered = filters.any() || times.since.is_some() || times.until.is_some();
        if !seqs.is_empty() {
            if filtered || all {
                anyhow::bail!("give entry sequences or filters (or --all), not both");
            }
            return Ok(Self::Seqs(seqs.to_vec()));
        }
        if !filtered && !all {
            anyhow::bail!(
                "select entries: give sequences, or filters (--tenant, --stage, --platform, --code, --since, --until), or --all for every entry"
            );
        }
        Ok(Self::Filter(Selection::new(ns, filters, times)))
    }
}

/// Entries read by [`collect`].
#[derive(Debug, Default)]
pub struct Collected {
    /// Matching entries, oldest first.
    pub entries: Vec<DlqEntry>,
    /// Whether reading stopped at the limit with more entries left to look at.
    pub truncated: bool,
    /// Sequences of stored messages in the subject and time range that are not valid DLQ
    /// records (so their code is unknown); each was reported on stderr.
    pub malformed: Vec<u64>,
}

/// Reports a stored message that is not a valid DLQ record.
pub fn warn_malformed(seq: u64, err: &anyhow::Error) {
    eprintln!("warning: DLQ entry {seq} is not a valid DLQ record: {err:#}");
}

/// An ordered consumer over `filter` (no acks, nothing removed).
pub async fn ordered(
    stream: &Stream,
    filter: &str,
    deliver_policy: DeliverPolicy,
) -> anyhow::Result<jetstream::consumer::Consumer<pull::OrderedConfig>> {
    stream
        .create_consumer(pull::OrderedConfig {
            filter_subject: filter.to_owned(),
            deliver_policy,
            replay_policy: ReplayPolicy::Instant,
            ..Default::default()
        })
        .await
        .context("creating an ordered consumer on the DLQ stream")
}

/// A delivered message read as an entry (or why it is not one), with its stream sequence.
#[derive(Debug)]
pub struct Delivered {
    /// The DLQ stream sequence.
    pub seq: u64,
    /// When the stream stored it.
    pub stored_at: OffsetDateTime,
    /// The entry, or why the message is not a valid DLQ record.
    pub entry: anyhow::Result<DlqEntry>,
}

/// Reads a delivered message as an entry.
pub fn entry(ns: &Namespace, message: &jetstream::Message) -> anyhow::Result<Delivered> {
    let info = message
        .info()
        .map_err(|e| anyhow::anyhow!("reading a DLQ message's metadata: {e}"))?;
    let (seq, stored_at) = (info.stream_sequence, info.published);
    let entry = DlqEntry::from_message(
        ns,
        seq,
        stored_at,
        message.subject.as_str(),
        message.headers.as_ref(),
        message.payload.clone(),
    )
    .map_err(anyhow::Error::new);
    Ok(Delivered {
        seq,
        stored_at,
        entry,
    })
}

/// Reads every stored message the selection's subject filter (and `--since`) covers, oldest
/// first, handing each to `f` with its entry (or why it is not one); stops once caught up
/// (the consumer has nothing pending; at once on an empty stream) or when `f` returns `false`.
pub async fn visit<F>(
    stream: &Stream,
    ns: &Namespace,
    selection: &Selection,
    mut f: F,
) -> anyhow::Result<()>
where
    F: FnMut(&jetstream::Message, Delivered) -> anyhow::Result<bool>,
{
    let consumer = ordered(stream, &selection.subject_filter, selection.start()).await?;
    let mut pending = consumer.cached_info().num_pending;
    if pending == 0 {
        return Ok(());
    }
    let mut messages = consumer
        .messages()
        .await
        .context("reading the DLQ stream")?;
    while pending > 0 {
        let Ok(next) = tokio::time::timeout(IDLE, messages.next()).await else {
            break;
        };
        let Some(message) = next else { break };
        let message = message.context("reading the DLQ stream")?;
        pending = message.info().map(|i| i.pending).unwrap_or(0);
        let delivered = entry(ns, &message)?;
        if !f(&message, delivered)? {
            break;
        }
    }
    Ok(())
}

/// Reads every entry the selection matches as stored now, oldest first, stopping once caught
/// up or after `limit` entries.
pub async fn collect(
    stream: &Stream,
    ns: &Namespace,
    selection: &Selection,
    limit: Option<usize>,
) -> anyhow::Result<Collected> {
    let mut collected = Collected::default();
    if limit == Some(0) {
        let consumer = ordered(stream, &selection.subject_filter, selection.start()).await?;
        collected.truncated = consumer.cached_info().num_pending > 0;
        return Ok(collected);
    }
    visit(stream, ns, selection, |message, delivered| {
        match delivered.entry {
            Ok(entry) if selection.matches(&entry) => {
                collected.entries.push(entry);
                if limit.is_some_and(|l| collected.entries.len() >= l) {
                    collected.truncated = message.info().map(|i| i.pending).unwrap_or(0) > 0;
                    return Ok(false);
                }
            }
            Ok(_) => {}
            Err(err) => {
                warn_malformed(delivered.seq, &err);
                if selection.in_time(delivered.stored_at) {
                    collected.malformed.push(delivered.seq);
                }
            }
        }
        Ok(true)
    })
    .await?;
    Ok(collected)
}

/// The stored message at `seq`, or `None` when there is none (never stored, or removed).
pub async fn get(stream: &Stream, seq: u64) -> anyhow::Result<Option<StreamMessage>> {
    match stream.direct_get(seq).await {
        Ok(message) => Ok(Some(message)),
        Err(err) if matches!(err.kind(), DirectGetErrorKind::NotFound) => Ok(None),
        Err(err) => Err(err).with_context(|| format!("reading DLQ entry {seq}")),
    }
}

/// Reads a stored message as an entry.
pub fn entry_of(ns: &Namespace, message: &StreamMessage) -> anyhow::Result<DlqEntry> {
    DlqEntry::from_message(
        ns,
        message.sequence,
        message.time,
        message.subject.as_str(),
        Some(&message.headers),
        message.payload.clone(),
    )
    .map_err(anyhow::Error::new)
}

/// `true` for the codes whose entries replay can fix once the cause is fixed (shown in colour).
pub fn retryable(code: DlqCode) -> bool {
    matches!(
        code,
        DlqCode::RetriesExhausted
            | DlqCode::ExhaustedDeliveries
            | DlqCode::Terminated
            | DlqCode::NoRoute
            | DlqCode::InvalidRoute
            | DlqCode::UnknownTenant
            | DlqCode::TenantDisabled
    )
}
