//! The retention export format (`switchyard dlq export` / `dlq import`): NDJSON, one
//! [`ExportLine`] per entry — the entry's JSON view ([`DlqEntryView`]) plus every header as
//! stored, so an import restores the entry with equal headers and payload.
//!
//! A restored entry is republished to the DLQ subject of its tenant, stage and platform in the
//! importing deployment, with its stored headers, except `Nats-Msg-Id`, which becomes
//! `import:<run>/<identity>`: the entry's [`identity`] (its record id `dlq:…`, which an export
//! keeps) behind a token new for each import run, so that the DLQ's duplicate window, which
//! remembers ids of purged entries, never drops a restore; the stats processor does not count
//! restored entries as new inflow. Whether an entry is already stored is decided by identity
//! ([`stored_identities`]), not by that window: importing a file twice, or into the DLQ it was
//! exported from, stores each entry once.

use std::collections::HashSet;

use async_nats::HeaderMap;
use async_nats::header::HeaderName;
use async_nats::jetstream::consumer::DeliverPolicy;
use async_nats::jetstream::message::StreamMessage;
use bytes::Bytes;
use serde::{Deserialize, Serialize};
use switchyard_dlq::{DlqEntry, DlqEntryView, DlqError};
use switchyard_envelope::headers as env_headers;
use switchyard_keys::{KeyError, PlatformId, TenantId};
use switchyard_subjects::{DlqFilter, DlqSubject, Namespace, SubjectKind};

use crate::read::{DlqReader, ReadError};

/// The `format` value of every line this build writes and reads.
pub const EXPORT_FORMAT: &str = "switchyard-dlq-export/1";

/// The `Nats-Msg-Id` prefix of restored entries.
pub const IMPORT_MSG_ID_PREFIX: &str = "import:";

/// One line of an export file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExportLine {
    /// Always [`EXPORT_FORMAT`].
    pub format: String,
    /// The entry as `dlq show --json` prints it (payload included).
    #[serde(flatten)]
    pub entry: DlqEntryView,
    /// Every header as stored, `[name, value]` in order (repeated names repeat), the
    /// `Switchyard-Dlq-*` record headers and `Nats-Msg-Id` included.
    pub stored_headers: Vec<[String; 2]>,
}

/// Why a line cannot be imported.
#[derive(Debug, thiserror::Error)]
pub enum ImportError {
    /// Not a JSON export line.
    #[error("not an export line: {0}")]
    Json(#[from] serde_json::Error),
    /// Another format version.
    #[error("format {found:?} is not {EXPORT_FORMAT:?}")]
    Format {
        /// The line's format.
        found: String,
    },
    /// A field does not make a valid record.
    #[error("{0}")]
    Invalid(String),
    /// The tenant or platform is not a valid id.
    #[error(transparent)]
    Key(#[from] KeyError),
    /// The restored message would not be a valid DLQ record.
    #[error("the restored entry is not a valid dlq record: {0}")]
    Record(#[from] DlqError),
}

impl ExportLine {
    /// The line for a message read from the DLQ ([`DlqReader`]: the message and where it was
    /// stored); fails when it is not a valid record.
    pub fn of_read(
        ns: &Namespace,
        message: &async_nats::jetstream::Message,
        delivered: &crate::read::Delivered,
    ) -> Result<Self, DlqError> {
        Self::of(
            ns,
            &StreamMessage {
                subject: message.subject.clone(),
                sequence: delivered.seq,
                headers: message.headers.clone().unwrap_or_default(),
                payload: message.payload.clone(),
                time: delivered.stored_at,
            },
        )
    }

    /// The line for a stored DLQ message; fails when it is not a valid record.
    pub fn of(ns: &Namespace, message: &StreamMessage) -> Result<Self, DlqError> {
        let entry = DlqEntry::from_message(
            ns,
            message.sequence,
            message.time,
            message.subject.as_str(),
            Some(&message.headers),
            message.payload.clone(),
        )?;
        let mut stored_headers = Vec::new();
        for (name, values) in message.headers.iter() {
            let name: &str = name.as_ref();
            for value in values {
                stored_headers.push([name.to_owned(), value.as_str().to_owned()]);
            }
        }
        Ok(Self {
            format: EXPORT_FORMAT.to_owned(),
            entry: entry.view(),
            stored_headers,
        })
    }
}

/// A restored entry, ready to publish.
#[derive(Debug, Clone)]
pub struct Restore {
    /// The DLQ subject in the importing deployment.
    pub subject: String,
    /// The stored headers, with `Nats-Msg-Id` = `import:<run>/<identity>`.
    pub headers: HeaderMap,
    /// The entry's [`identity`]: the same for the stored original, its export and every
    /// restore of it.
    pub identity: String,
    /// The payload, byte for byte.
    pub payload: Bytes,
    /// The entry's sequence in the exporting DLQ.
    pub exported_seq: u64,
}

/// Reads one line of an export file into what to publish in import run `run` (a token without
/// `/`, new for each run), checking that the result is a valid DLQ record in `ns`.
pub fn restore(ns: &Namespace, line: &str, run: &str) -> Result<Restore, ImportError> {
    let line: ExportLine = serde_json::from_str(line)?;
    if line.format != EXPORT_FORMAT {
        return Err(ImportError::Format { found: line.format });
    }
    let view = &line.entry;
    let tenant = view.tenant.as_deref().map(TenantId::new).transpose()?;
    let platform = view.platform.as_deref().map(PlatformId::new).transpose()?;
    let subject = DlqSubject {
        tenant,
        stage: view.stage,
        platform,
    }
    .format(ns);
    let payload = Bytes::from(view.payload.decode().map_err(ImportError::Invalid)?);
    let mut headers = HeaderMap::new();
    let mut stored_id = None;
    for [name, value] in &line.stored_headers {
        if name.eq_ignore_ascii_case(env_headers::NATS_MSG_ID) {
            stored_id = Some(value.clone());
        }
        if name
            .get(..env_headers::SERVER_PREFIX.len())
            .is_some_and(|p| p.eq_ignore_ascii_case(env_headers::SERVER_PREFIX))
        {
            continue;
        }
        let parsed: HeaderName = name
            .parse()
            .map_err(|_| ImportError::Invalid(format!("invalid header name {name:?}")))?;
        if value.contains(['\r', '\n']) {
            return Err(ImportError::Invalid(format!(
                "header {name} has a line break in its value"
            )));
        }
        headers.append(parsed, value.as_str());
    }
    let identity = stored_id.as_deref().map_or_else(
        || format!("dlq:{}:{}", view.source_stream, view.source_seq),
        identity_of,
    );
    let id = format!("{IMPORT_MSG_ID_PREFIX}{run}/{identity}");
    headers.insert(env_headers::NATS_MSG_ID, id.as_str());
    DlqEntry::from_message(
        ns,
        view.seq,
        time::OffsetDateTime::now_utc(),
        &subject,
        Some(&headers),
        payload.clone(),
    )?;
    Ok(Restore {
        subject,
        headers,
        payload,
        identity,
        exported_seq: view.seq,
    })
}

/// The identity of a stored `Nats-Msg-Id`: the record id itself (`dlq:…`), or for a restored
/// entry the identity it was restored under (`import:<run>/<identity>`; an older restore's
/// `import:<identity>`).
fn identity_of(msg_id: &str) -> String {
    match msg_id.strip_prefix(IMPORT_MSG_ID_PREFIX) {
        None => msg_id.to_owned(),
        Some(rest) => rest
            .split_once('/')
            .map_or(rest, |(_, identity)| identity)
            .to_owned(),
    }
}

/// An entry's identity, from its stored headers (`None` without a `Nats-Msg-Id`).
pub fn identity(headers: Option<&HeaderMap>) -> Option<String> {
    headers
        .and_then(|h| h.get(env_headers::NATS_MSG_ID))
        .map(|id| identity_of(id.as_str()))
}

/// The identities of every entry the DLQ stores now (read through `reader`, nothing removed).
pub async fn stored_identities(reader: &DlqReader) -> Result<HashSet<String>, ReadError> {
    let mut read = reader.catch_up(
        reader.namespace().dlq_filter(&DlqFilter::default()),
        DeliverPolicy::All,
    );
    let mut identities = HashSet::new();
    while let Some((message, _)) = read.next().await? {
        if let Some(id) = identity(message.headers.as_ref()) {
            identities.insert(id);
        }
    }
    Ok(identities)
}

/// Whether a stored entry is a restored one (its `Nats-Msg-Id` starts with `import:`).
pub fn is_restored(headers: Option<&HeaderMap>) -> bool {
    headers
        .and_then(|h| h.get(env_headers::NATS_MSG_ID))
        .is_some_and(|id| id.as_str().starts_with(IMPORT_MSG_ID_PREFIX))
}
