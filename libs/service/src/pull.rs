//! A consume loop's pulls from its JetStream pull consumer, one at a time, through one inbox the
//! loop keeps.
//!
//! A pull is a request to `$JS.API.CONSUMER.MSG.NEXT.<stream>.<consumer>` whose reply subject is
//! an inbox the messages are delivered to. The client library's `fetch()` and `batch()`
//! subscribe a new inbox for every pull and unsubscribe it when the pull ends, so a stage reading
//! a trickle (a pull per message or per few) pays a subscription and an unsubscription on itself
//! and on nats-server for each. [`Puller`] keeps its inbox while each pull ends by its count or
//! by nats-server's `404` or `408`, ends after which nothing more of that pull arrives, and
//! replaces it when a pull is left open (its wait passed with no word, a reconnection, shutdown:
//! the loops drop their puller before draining) or ends in an error, so a late message of an
//! abandoned pull never reaches the next one's inbox: nats-server drops a pull whose inbox has
//! no interest. An inbox that holds anything unread when the next pull is sent (a status sent
//! late, as a new consumer leader's `409 Leadership Change` to pulls its predecessor had
//! already ended) is replaced too.
//!
//! How nats-server ends a pull (`server/consumer.go`, `processWaiting` and
//! `processNextMsgRequest`): it sends nothing once the pull has brought its count; `404 No
//! Messages` when a `no_wait` pull finds the stream empty after its first message (on a
//! replicated consumer possibly a `408` after the last delivery is replicated); `408 Request
//! Timeout` (or `Interest Expired`) when its `expires` passes; a `409` (consumer deleted,
//! leadership change, too many waiting pulls) or another status when it cannot serve it. Pulls
//! here ask for neither `max_bytes` (whose `409 Batch Completed` follows a pull that has brought
//! its count) nor idle heartbeats (`100`): with either, a status could follow a pull's end.

use std::time::Duration;

use async_nats::jetstream::consumer::pull::{BatchConfig, BatchRequestError};
use async_nats::jetstream::{self, consumer::PullConsumer};
use async_nats::{StatusCode, Subject, SubscribeError, Subscriber};
use std::future::Future;
use std::pin::Pin;
use std::task::Poll;

use futures::{FutureExt, StreamExt};
use tokio::time::{Instant, Sleep};

/// How long past a pull's `expires` its inbox waits for nats-server's `408` before the pull is
/// taken as lost (5 s, as the client library's own pulls wait).
const STATUS_GRACE: Duration = Duration::from_secs(5);

/// When one pull ends (the JetStream pull request's `no_wait`). Either way it waits up to its
/// `expires` for its first message, and each message is handed out as it comes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PullEnds {
    /// When it has brought what it asked for, or its wait ends (`no_wait` off): a trickle of
    /// messages costs one pull per pull's worth of them. For a loop whose slots are its own,
    /// where the count asked for stays free until the messages come.
    AtCount,
    /// As soon as the stream is empty (`no_wait`): the next pull is sized from the slots, the
    /// gate and the credit as they are then. For per-tenant loops sharing slots: an open pull
    /// sized when slots were free would go on bringing messages (up to its count, for up to its
    /// wait) to wait for slots other tenants took meanwhile, past their `ack_wait`, or past a
    /// gate that closed.
    AtEmpty,
}

/// Why a pull could not be sent or ended in an error.
#[derive(Debug, thiserror::Error)]
pub enum PullError {
    /// The inbox could not be subscribed (the connection is closed).
    #[error("cannot subscribe the pull's inbox: {0}")]
    Subscribe(#[source] SubscribeError),
    /// The pull request could not be published.
    #[error("cannot send the pull request: {0}")]
    Request(#[source] BatchRequestError),
    /// nats-server ended the pull with a status other than `404` or `408`: `409` (the consumer
    /// deleted, a leadership change, too many waiting pulls), `503` (no responders: the consumer
    /// or its stream is gone), or another.
    #[error("the pull ended with status {code}: {description}")]
    Status {
        /// The status code.
        code: StatusCode,
        /// nats-server's description, if any.
        description: String,
    },
    /// The inbox's subscription ended (the client is closed).
    #[error("the pull's inbox was closed")]
    Closed,
}

/// One loop's pulls, one at a time, through an inbox it keeps (module doc).
pub struct Puller {
    js: jetstream::Context,
    inbox: Option<Inbox>,
    /// The pull under way, until it ends.
    open: Option<Open>,
    /// When to stop waiting for nats-server's word on the pull under way: its `expires` plus
    /// [`STATUS_GRACE`]. One timer for all the loop's pulls, reset by each, and registered
    /// only while a pull waits with no message at hand.
    deadline: Pin<Box<Sleep>>,
}

struct Inbox {
    subject: Subject,
    sub: Subscriber,
}

/// A pull under way.
struct Open {
    /// Messages it may still bring.
    left: usize,
}

impl std::fmt::Debug for Puller {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Puller")
            .field("inbox", &self.inbox.as_ref().map(|i| &i.subject))
            .field("open", &self.open.as_ref().map(|o| o.left))
            .finish()
    }
}

impl Puller {
    /// A puller whose messages ack, nak and term through `js`.
    pub fn new(js: jetstream::Context) -> Self {
        Self {
            js,
            inbox: None,
            open: None,
            deadline: Box::pin(tokio::time::sleep(Duration::ZERO)),
        }
    }

    /// Sends a pull for up to `max` messages (at least 1) of `consumer`, waiting up to
    /// `expires` for them, ended as `ends` says; read it with [`Puller::next`]. A pull still
    /// under way (left open by its reader: a reconnection, say) is abandoned first, with its
    /// inbox. Errors: [`PullError::Subscribe`], [`PullError::Request`] (the connection is
    /// down or closed).
    pub async fn pull(
        &mut self,
        consumer: &PullConsumer,
        max: usize,
        ends: PullEnds,
        expires: Duration,
    ) -> Result<(), PullError> {
        if self.open.take().is_some() {
            self.inbox = None;
        }
        // Anything already in the kept inbox belongs to no pull: a new inbox, so it is not
        // taken for this pull's.
        let mut kept = self.inbox.take();
        let stray = kept
            .as_mut()
            .is_some_and(|inbox| inbox.sub.next().now_or_never().is_some());
        if stray {
            tracing::debug!("the kept inbox held something of no pull; subscribing a new one");
            kept = None;
        }
        let inbox = match kept {
            Some(inbox) => inbox,
            None => {
                let client = self.js.client();
                let subject = Subject::from(client.new_inbox());
                let sub = client
                    .subscribe(subject.clone())
                    .await
                    .map_err(PullError::Subscribe)?;
                Inbox { subject, sub }
            }
        };
        let max = max.max(1);
        let request = BatchConfig {
            batch: max,
            expires: Some(expires),
            no_wait: ends == PullEnds::AtEmpty,
            ..Default::default()
        };
        let subject = inbox.subject.clone();
        // Kept only once the request is out: a pull that failed to send leaves no inbox that
        // a late answer could reach.
        consumer
            .request_batch(request, subject)
            .await
            .map_err(PullError::Request)?;
        self.inbox = Some(inbox);
        self.open = Some(Open { left: max });
        self.deadline
            .as_mut()
            .reset(Instant::now() + expires + STATUS_GRACE);
        Ok(())
    }

    /// The next message of the pull under way, as it arrives; `None` once the pull has ended
    /// (its count brought, the stream empty for a [`PullEnds::AtEmpty`] pull, its wait passed)
    /// or when no pull is under way. A `PullError` ends the pull too. Cancel-safe: dropped while
    /// waiting, it loses nothing, and the pull stays under way.
    pub async fn next(&mut self) -> Option<Result<jetstream::Message, PullError>> {
        let open = self.open.as_mut()?;
        if open.left == 0 {
            self.open = None;
            return None;
        }
        loop {
            let Some(inbox) = self.inbox.as_mut() else {
                self.open = None;
                return None;
            };
            let deadline = &mut self.deadline;
            // The inbox first: a message at hand is taken without touching the timer.
            let received = std::future::poll_fn(|cx| {
                if let Poll::Ready(message) = inbox.sub.poll_next_unpin(cx) {
                    return Poll::Ready(Ok(message));
                }
                deadline.as_mut().poll(cx).map(Err)
            })
            .await;
            let message = match received {
                Ok(Some(message)) => message,
                Ok(None) => {
                    self.end(true);
                    return Some(Err(PullError::Closed));
                }
                // nats-server's 408 did not come: whatever it still sends must not reach the
                // next pull.
                Err(_) => {
                    self.end(true);
                    return None;
                }
            };
            match message.status {
                None | Some(StatusCode::OK) => {
                    if let Some(open) = self.open.as_mut() {
                        open.left -= 1;
                    }
                    return Some(Ok(jetstream::Message {
                        message,
                        context: self.js.clone(),
                    }));
                }
                Some(StatusCode::IDLE_HEARTBEAT) => continue,
                Some(StatusCode::NOT_FOUND) | Some(StatusCode::TIMEOUT) => {
                    self.end(false);
                    return None;
                }
                Some(code) => {
                    self.end(true);
                    return Some(Err(PullError::Status {
                        code,
                        description: message.description.unwrap_or_default(),
                    }));
                }
            }
        }
    }

    /// Ends the pull under way; `lose_inbox`: the next pull subscribes a new inbox.
    fn end(&mut self, lose_inbox: bool) {
        self.open = None;
        if lose_inbox {
            self.inbox = None;
        }
    }
}
