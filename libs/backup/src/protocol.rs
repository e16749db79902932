//! JetStream's stream snapshot and restore API, spoken over plain NATS requests (the Rust
//! client has no binding for it).
//!
//! Source: nats-server `server/jetstream_api.go` (`jsStreamSnapshotT`, `streamSnapshot`,
//! `jsStreamRestoreT`, `processStreamRestore`) and ADR-63 (stream backup v2, nats-server 2.15):
//!
//! - **Snapshot:** subscribe to an inbox, then request `$JS.API.STREAM.SNAPSHOT.<stream>` with
//!   `{deliver_subject, no_consumers, chunk_size}`; the answer carries the stream's `config` and
//!   `state`. Chunks arrive on the inbox, each but the last with a reply subject that must be
//!   answered (any body) to free a slot of the server's window (it gives up after 5 s without
//!   one: `408 No Flow Response`). The end is an empty message whose status is absent or
//!   `204`; any other status (`408`, `500 <why>`) is a failure. The bytes are opaque (an S2
//!   stream; the server adds no checksum), so the backup stores them as they come and hashes
//!   them itself.
//! - **Restore:** request `$JS.API.STREAM.RESTORE.<stream>` with `{config, state}` (refused
//!   with `10130` when the stream exists); send the bytes as requests, one at a time (the empty
//!   reply is the only flow control; the server abandons a restore idle for 5 s), then an empty
//!   request, whose reply is the restored stream's info or an error.

use std::time::Duration;

use bytes::Bytes;
use futures::StreamExt;
use serde::Deserialize;
use serde_json::Value;
use sha2::{Digest, Sha256};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use crate::BackupError;

/// Bytes per snapshot chunk asked of the server (its default; it allows 1 KiB–1 MiB).
const SNAPSHOT_CHUNK: usize = 128 * 1024;
/// Bytes per restore chunk (what the reference client sends), bounded by the server's
/// `max_payload`.
const RESTORE_CHUNK: usize = 64 * 1024;
/// How long a snapshot may go without a chunk before it is given up: the server gives up on
/// its side after 5 s without a flow-control answer, so a silence this long means it is gone.
const SNAPSHOT_IDLE: Duration = Duration::from_secs(30);
/// How long one API request or one restore chunk may wait for its answer.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// How long the server may take to finish a restore after its last chunk (it rebuilds the
/// stream's indexes and, in a cluster, catches the followers up).
const RESTORE_FINISH: Duration = Duration::from_secs(30 * 60);

/// A JetStream API error as the server reports it.
#[derive(Debug, Deserialize)]
struct ApiError {
    code: u16,
    #[serde(default)]
    err_code: u16,
    #[serde(default)]
    description: String,
}

#[derive(Debug, Deserialize)]
struct SnapshotResponse {
    error: Option<ApiError>,
    config: Option<Value>,
    state: Option<Value>,
}

#[derive(Debug, Deserialize)]
struct RestoreResponse {
    error: Option<ApiError>,
    deliver_subject: Option<String>,
}

#[derive(Debug, Deserialize)]
struct RestoredResponse {
    error: Option<ApiError>,
    state: Option<Value>,
}

/// JetStream's error code for "stream name already in use, cannot restore".
pub const STREAM_EXISTS: u16 = 10130;

/// What a finished snapshot was.
#[derive(Debug, Clone)]
pub struct Snapshot {
    /// The stream's configuration, as the server sent it.
    pub config: Value,
    /// The stream's state, as the server sent it.
    pub state: Value,
    /// Bytes written.
    pub bytes: u64,
    /// SHA-256 of the bytes written, lowercase hex.
    pub sha256: String,
}

fn api_error(stream: &str, action: &str, e: ApiError) -> BackupError {
    BackupError::Api {
        stream: stream.to_owned(),
        action: action.to_owned(),
        code: e.code,
        err_code: e.err_code,
        description: e.description,
    }
}

async fn request(
    client: &async_nats::Client,
    subject: String,
    payload: Bytes,
    timeout: Duration,
) -> Result<async_nats::Message, async_nats::RequestError> {
    client
        .send_request(
            subject,
            async_nats::Request::new()
                .payload(payload)
                .timeout(Some(timeout)),
        )
        .await
}

/// How long a restore chunk is resent while nobody listens on the restore's subject yet.
const INTEREST_WAIT: Duration = Duration::from_secs(5);

/// [`request`] to a restore's deliver subject. In a cluster the server receiving the restore
/// (the meta leader) may be another than the one this client is connected to, and its
/// subscription reaches the others over the routes a moment after the restore answer: until
/// then a chunk finds no responders. Nothing received it, so it is sent again, for at most
/// [`INTEREST_WAIT`].
async fn restore_request(
    client: &async_nats::Client,
    subject: &str,
    payload: Bytes,
    timeout: Duration,
) -> Result<async_nats::Message, async_nats::RequestError> {
    let deadline = tokio::time::Instant::now() + INTEREST_WAIT;
    let mut pause = Duration::from_millis(10);
    loop {
        match request(client, subject.to_owned(), payload.clone(), timeout).await {
            Err(e)
                if e.kind() == async_nats::RequestErrorKind::NoResponders
                    && tokio::time::Instant::now() + pause < deadline =>
            {
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(Duration::from_millis(500));
            }
            answered => return answered,
        }
    }
}

/// Snapshots `stream` (its messages and its consumers with their state) into `out`, calling
/// `progress` with the byte count of each chunk written.
///
/// # Errors
/// [`BackupError::Api`] when the server refuses (`10059` stream not found, …) or ends the
/// snapshot with a failure status; [`BackupError::Request`] when it does not answer (in a
/// cluster, a stream without a leader); [`BackupError::Io`] when `out` fails.
pub async fn snapshot(
    client: &async_nats::Client,
    stream: &str,
    out: &mut (impl AsyncWrite + Unpin),
    mut progress: impl FnMut(u64),
) -> Result<Snapshot, BackupError> {
    let inbox = client.new_inbox();
    let mut chunks = client
        .subscribe(inbox.clone())
        .await
        .map_err(|e| BackupError::request(stream, "subscribing to the snapshot inbox", e))?;
    let body = serde_json::json!({
        "deliver_subject": inbox,
        "no_consumers": false,
        "chunk_size": SNAPSHOT_CHUNK,
    });
    let answer = request(
        client,
        format!("$JS.API.STREAM.SNAPSHOT.{stream}"),
        Bytes::from(body.to_string()),
        REQUEST_TIMEOUT,
    )
    .await
    .map_err(|e| BackupError::request(stream, "asking for a snapshot", e))?;
    let answer: SnapshotResponse = serde_json::from_slice(&answer.payload)
        .map_err(|e| BackupError::protocol(stream, format!("snapshot answer: {e}")))?;
    if let Some(e) = answer.error {
        return Err(api_error(stream, "snapshot", e));
    }
    let (Some(config), Some(state)) = (answer.config, answer.state) else {
        return Err(BackupError::protocol(
            stream,
            "snapshot answer without config or state",
        ));
    };
    let mut hasher = Sha256::new();
    let mut bytes = 0u64;
    loop {
        let chunk = tokio::time::timeout(SNAPSHOT_IDLE, chunks.next())
            .await
            .map_err(|_| {
                BackupError::protocol(
                    stream,
                    format!("no snapshot chunk for {}s", SNAPSHOT_IDLE.as_secs()),
                )
            })?
            .ok_or_else(|| BackupError::protocol(stream, "the connection closed mid-snapshot"))?;
        if chunk.payload.is_empty() {
            return match chunk.status {
                None => Ok(()),
                Some(status) if status.as_u16() == 204 => Ok(()),
                Some(status) => Err(BackupError::Api {
                    stream: stream.to_owned(),
                    action: "snapshot".to_owned(),
                    code: status.as_u16(),
                    err_code: 0,
                    description: chunk.description.unwrap_or_default(),
                }),
            }
            .map(|()| Snapshot {
                config,
                state,
                bytes,
                sha256: format!("{:x}", hasher.finalize()),
            });
        }
        out.write_all(&chunk.payload)
            .await
            .map_err(|e| BackupError::io(format!("writing the snapshot of {stream}"), e))?;
        hasher.update(&chunk.payload);
        bytes += chunk.payload.len() as u64;
        progress(chunk.payload.len() as u64);
        if let Some(reply) = chunk.reply {
            client
                .publish(reply, Bytes::new())
                .await
                .map_err(|e| BackupError::request(stream, "answering a snapshot chunk", e))?;
        }
    }
}

/// The reply to a restore chunk: empty when the server took it, else its error.
fn chunk_refused(stream: &str, reply: &[u8]) -> Option<BackupError> {
    if reply.is_empty() {
        return None;
    }
    match serde_json::from_slice::<RestoredResponse>(reply) {
        Ok(RestoredResponse { error: Some(e), .. }) => Some(api_error(stream, "restore", e)),
        _ => Some(BackupError::protocol(
            stream,
            format!(
                "restore chunk refused: {}",
                String::from_utf8_lossy(reply).trim()
            ),
        )),
    }
}

/// Restores `stream` from the snapshot bytes read from `input`, created with `config` (as the
/// snapshot's answer gave it; the caller may have changed `num_replicas`), calling `progress`
/// with the byte count of each chunk sent. Returns the restored stream's state.
///
/// # Errors
/// [`BackupError::Api`] when the server refuses: code [`STREAM_EXISTS`] when the stream
/// exists, `10062` when the bytes cannot be restored; [`BackupError::Request`] when it stops
/// answering; [`BackupError::Io`] when `input` fails.
pub async fn restore(
    client: &async_nats::Client,
    stream: &str,
    config: &Value,
    state: &Value,
    input: &mut (impl AsyncRead + Unpin),
    mut progress: impl FnMut(u64),
) -> Result<Value, BackupError> {
    let body = serde_json::json!({ "config": config, "state": state });
    let answer = request(
        client,
        format!("$JS.API.STREAM.RESTORE.{stream}"),
        Bytes::from(body.to_string()),
        REQUEST_TIMEOUT,
    )
    .await
    .map_err(|e| BackupError::request(stream, "asking to restore", e))?;
    let answer: RestoreResponse = serde_json::from_slice(&answer.payload)
        .map_err(|e| BackupError::protocol(stream, format!("restore answer: {e}")))?;
    if let Some(e) = answer.error {
        return Err(api_error(stream, "restore", e));
    }
    let Some(deliver) = answer.deliver_subject else {
        return Err(BackupError::protocol(
            stream,
            "restore answer without a deliver subject",
        ));
    };
    let max_payload = client.server_info().max_payload;
    let mut buf = vec![0u8; RESTORE_CHUNK.min(max_payload.max(1024))];
    loop {
        let n = read_full(input, &mut buf)
            .await
            .map_err(|e| BackupError::io(format!("reading the snapshot of {stream}"), e))?;
        if n == 0 {
            break;
        }
        let reply = restore_request(
            client,
            &deliver,
            Bytes::copy_from_slice(&buf[..n]),
            REQUEST_TIMEOUT,
        )
        .await
        .map_err(|e| BackupError::request(stream, "sending a restore chunk", e))?;
        if let Some(e) = chunk_refused(stream, &reply.payload) {
            return Err(e);
        }
        progress(n as u64);
    }
    let done = restore_request(client, &deliver, Bytes::new(), RESTORE_FINISH)
        .await
        .map_err(|e| BackupError::request(stream, "finishing the restore", e))?;
    let done: RestoredResponse = serde_json::from_slice(&done.payload).map_err(|e| {
        BackupError::protocol(
            stream,
            format!(
                "restore result: {e}: {}",
                String::from_utf8_lossy(&done.payload)
            ),
        )
    })?;
    if let Some(e) = done.error {
        return Err(api_error(stream, "restore", e));
    }
    Ok(done.state.unwrap_or(Value::Null))
}

/// Reads until `buf` is full or the input ends; returns the bytes read.
async fn read_full(input: &mut (impl AsyncRead + Unpin), buf: &mut [u8]) -> std::io::Result<usize> {
    let mut filled = 0;
    while filled < buf.len() {
        let n = input.read(&mut buf[filled..]).await?;
        if n == 0 {
            break;
        }
        filled += n;
    }
    Ok(filled)
}
