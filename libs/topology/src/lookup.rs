//! Looking up streams that may not exist yet.

use async_nats::jetstream::context::GetStreamErrorKind;
use async_nats::jetstream::{self, ErrorCode, stream};

use crate::TopologyError;

/// A stream's info, or `None` if the stream does not exist.
pub(crate) async fn stream_info(
    js: &jetstream::Context,
    name: &str,
) -> Result<Option<stream::Info>, TopologyError> {
    match js.get_stream(name).await {
        Ok(stream) => Ok(Some(stream.cached_info().clone())),
        Err(e) if matches!(e.kind(), GetStreamErrorKind::JetStream(j) if j.error_code() == ErrorCode::STREAM_NOT_FOUND) => {
            Ok(None)
        }
        Err(e) => Err(TopologyError::js(format!("looking up stream {name}"), e)),
    }
}
