//! Logouts every replica of the management API honours (and tenants disabled, whose portal
//! sessions end for good). A session cookie is verified by its
//! signature alone, so a logout must reach every replica that could be handed the cookie: the
//! replica that logs a session out stores a `session_ended` operational event (`about`: the
//! session id) before it answers, and every replica follows those events in the `EVENTS`
//! stream — from [`SESSION_SECS`] back when it starts (no session logged out earlier can still
//! be alive), then as they are stored — revoking each id until it would have expired.

use std::time::Duration;

use async_nats::jetstream::consumer::{DeliverPolicy, pull};
use futures::StreamExt;
use switchyard_service::events::OpEvent;
use switchyard_subjects::EventKind;
use switchyard_topology::StreamName;
use time::OffsetDateTime;

use super::ConsoleState;
use super::session::{SESSION_SECS, Session};

/// How long a broken follow waits before it starts again.
const RETRY: Duration = Duration::from_secs(1);

/// Reports `session`'s logout to every replica (stored before this returns).
///
/// Errors: the event was not stored (this replica has revoked it already; others have not).
pub async fn report(
    state: &ConsoleState,
    session: &Session,
) -> Result<(), async_nats::jetstream::context::PublishError> {
    state
        .api
        .events
        .emit_and_wait(
            EventKind::SessionEnded,
            session.who.tenant(),
            Some(&session.sid),
            "logged out of the console",
        )
        .await
}

/// Follows every replica's logouts until shutdown, revoking each session here; started
/// again after [`RETRY`] when the stream cannot be read.
pub async fn follow(state: ConsoleState) {
    let stop = state.console.stop.clone();
    loop {
        // Started again, it reads from SESSION_SECS back again: revoking twice is harmless.
        let error = tokio::select! {
            _ = stop.cancelled() => return,
            error = follow_once(&state) => error,
        };
        tracing::warn!(%error, "following console logouts failed; starting again");
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(RETRY) => {}
        }
    }
}

/// Reads `session_ended` and `tenant_disabled` events from [`SESSION_SECS`] back on; returns
/// why it stopped.
async fn follow_once(state: &ConsoleState) -> String {
    let topology = &state.api.topology;
    let stream = match topology
        .open_stream(&state.api.js, StreamName::Events)
        .await
    {
        Ok((_, stream)) => stream,
        Err(e) => return e.to_string(),
    };
    let start = OffsetDateTime::now_utc() - time::Duration::seconds(SESSION_SECS);
    let consumer = match stream
        .create_consumer(pull::OrderedConfig {
            filter_subjects: vec![
                topology
                    .namespace
                    .event_filter(None, Some(EventKind::SessionEnded)),
                topology
                    .namespace
                    .event_filter(None, Some(EventKind::TenantDisabled)),
            ],
            deliver_policy: DeliverPolicy::ByStartTime { start_time: start },
            ..Default::default()
        })
        .await
    {
        Ok(consumer) => consumer,
        Err(e) => return e.to_string(),
    };
    let mut messages = match consumer.messages().await {
        Ok(messages) => messages,
        Err(e) => return e.to_string(),
    };
    while let Some(message) = messages.next().await {
        let message = match message {
            Ok(message) => message,
            Err(e) => return e.to_string(),
        };
        let Ok(event) = serde_json::from_slice::<OpEvent>(&message.payload) else {
            continue;
        };
        let now = OffsetDateTime::now_utc().unix_timestamp();
        let at = event.at.unix_timestamp();
        if event.kind == EventKind::TenantDisabled.as_str() {
            if let Some(tenant) = event.tenant.as_deref().and_then(|t| t.parse().ok()) {
                state.console.keys.end_tenant_sessions(&tenant, at, now);
            }
        } else if let Some(sid) = &event.about {
            state.console.keys.revoke_sid(sid, at + SESSION_SECS, now);
        }
    }
    "the stream of logouts ended".to_owned()
}
