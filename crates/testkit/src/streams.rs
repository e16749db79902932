//! Reading what a stream holds, for assertions (without consuming anything), and shrinking a
//! stream's limit to bring it to its high-water mark in a test.

use std::time::{Duration, Instant};

use async_nats::jetstream::stream::{DirectGetErrorKind, Info};
use async_nats::jetstream::{self, message::StreamMessage};

/// How long a read of a stream's info keeps trying: in a cluster, a request made while the
/// stream's leader is being elected again (a node killed) times out, and the next one is
/// answered.
const INFO_DEADLINE: Duration = Duration::from_secs(30);

/// The stream and its info, asked again while the server does not answer (up to
/// [`INFO_DEADLINE`]); panics naming the stream and the last error after it.
async fn stream_info(js: &jetstream::Context, stream: &str) -> (jetstream::stream::Stream, Info) {
    let deadline = Instant::now() + INFO_DEADLINE;
    loop {
        let error = match js.get_stream(stream).await {
            Ok(mut handle) => match handle.info().await {
                Ok(info) => {
                    let info = info.clone();
                    return (handle, info);
                }
                Err(e) => format!("info: {e}"),
            },
            Err(e) => e.to_string(),
        };
        if Instant::now() >= deadline {
            panic!("stream {stream}: {error} (for {INFO_DEADLINE:?})");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Every message a stream holds now, in sequence order (direct gets, so nothing is consumed;
/// the stream needs `allow_direct`).
pub async fn stored_messages(js: &jetstream::Context, stream: &str) -> Vec<StreamMessage> {
    let (handle, info) = stream_info(js, stream).await;
    let state = info.state;
    let mut out = Vec::new();
    if state.messages == 0 {
        return out;
    }
    let deadline = Instant::now() + INFO_DEADLINE;
    for seq in state.first_sequence..=state.last_sequence {
        // A sequence deleted meanwhile is skipped; a get the server did not answer (a leader
        // being elected) is made again.
        loop {
            match handle.direct_get(seq).await {
                Ok(msg) => out.push(msg),
                Err(e) if e.kind() == DirectGetErrorKind::NotFound => {}
                Err(_) if Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    continue;
                }
                Err(e) => panic!("stream {stream} message {seq}: {e} (for {INFO_DEADLINE:?})"),
            }
            break;
        }
    }
    out
}

/// How many messages a stream holds now.
pub async fn stored_count(js: &jetstream::Context, stream: &str) -> u64 {
    stream_info(js, stream).await.1.state.messages
}

/// The `BACKPRESSURE` shard stream that holds `tenant`'s hand-offs in a deployment without a
/// prefix (`BACKPRESSURE_15` for `acme`): `switchyard_topology::shard_stream_name` of the
/// tenant's `Shard`.
///
/// Panics: `tenant` is not a valid tenant id.
pub fn backpressure_stream(tenant: &str) -> String {
    let tenant = switchyard_keys::TenantId::new(tenant).expect("a valid tenant id");
    format!("BACKPRESSURE_{}", switchyard_subjects::Shard::of(&tenant))
}

/// Every `BACKPRESSURE` shard stream of a deployment without a prefix, in shard order.
pub fn backpressure_streams() -> Vec<String> {
    switchyard_subjects::Shard::all()
        .map(|shard| format!("BACKPRESSURE_{shard}"))
        .collect()
}

/// Messages stored now in all of `streams` (the `BACKPRESSURE` shards).
pub async fn stored_count_in(js: &jetstream::Context, streams: &[String]) -> u64 {
    let mut total = 0;
    for stream in streams {
        total += stored_count(js, stream).await;
    }
    total
}

/// Sets `stream`'s `max_messages` (a stream that must discard old, `EGRESS`, has its high-water
/// mark at 90 % of it); panics if the server refuses.
pub async fn set_max_messages(js: &jetstream::Context, stream: &str, max_messages: i64) {
    let (_, info) = stream_info(js, stream).await;
    let mut config = info.config;
    config.max_messages = max_messages;
    js.update_stream(config)
        .await
        .unwrap_or_else(|e| panic!("stream {stream}: max_messages {max_messages}: {e}"));
}
