//! Reading what a stream holds, for assertions (without consuming anything).

use async_nats::jetstream::{self, message::StreamMessage};

/// Every message a stream holds now, in sequence order (direct gets, so nothing is consumed;
/// the stream needs `allow_direct`).
pub async fn stored_messages(js: &jetstream::Context, stream: &str) -> Vec<StreamMessage> {
    let mut handle = js
        .get_stream(stream)
        .await
        .unwrap_or_else(|e| panic!("stream {stream}: {e}"));
    let state = handle
        .info()
        .await
        .unwrap_or_else(|e| panic!("stream {stream} info: {e}"))
        .state
        .clone();
    let mut out = Vec::new();
    if state.messages == 0 {
        return out;
    }
    for seq in state.first_sequence..=state.last_sequence {
        if let Ok(msg) = handle.direct_get(seq).await {
            out.push(msg);
        }
    }
    out
}

/// How many messages a stream holds now.
pub async fn stored_count(js: &jetstream::Context, stream: &str) -> u64 {
    let mut handle = js
        .get_stream(stream)
        .await
        .unwrap_or_else(|e| panic!("stream {stream}: {e}"));
    handle.info().await.map(|i| i.state.messages).unwrap_or(0)
}
