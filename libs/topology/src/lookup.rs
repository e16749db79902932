//! Looking up streams that may not exist yet.

use async_nats::jetstream::{self, stream};

use crate::TopologyError;
use crate::open::is_stream_not_found;

/// A stream's info, or `None` if the stream does not exist.
pub(crate) async fn stream_info(
    js: &jetstream::Context,
    name: &str,
) -> Result<Option<stream::Info>, TopologyError> {
    match js.get_stream(name).await {
        Ok(stream) => Ok(Some(stream.cached_info().clone())),
        Err(e) if is_stream_not_found(&e) => Ok(None),
        Err(e) => Err(TopologyError::js(format!("looking up stream {name}"), e)),
    }
}
