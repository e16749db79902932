//! What a producer sends, read from its headers before ingress stamps the envelope.
//!
//! **A message without `Nats-Msg-Id`** cannot be de-duplicated against a producer's retries,
//! so by default ([`MsgIdPolicy::Require`]) ingress dead-letters it with code
//! `missing_msg_id`. A deployment whose producers cannot set one may choose
//! [`MsgIdPolicy::AssignFromSource`]: the id becomes `seq:<stream>:<sequence>`, unique per
//! stored message, so the pipeline still delivers each stored message once, but a producer
//! that publishes the same message twice gets it delivered twice.

use async_nats::HeaderMap;
use switchyard_keys::MsgId;

use crate::envelope::{SourceRef, TraceContext};
use crate::{EnvelopeError, headers};

/// What to do with a producer message that has no `Nats-Msg-Id`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MsgIdPolicy {
    /// Dead-letter it with code `missing_msg_id` (the default).
    #[default]
    Require,
    /// Use `seq:<stream>:<sequence>` as its id.
    AssignFromSource,
}

/// The headers a producer may set, read and validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProducerHeaders {
    /// `Nats-Msg-Id`, if present.
    pub msg_id: Option<MsgId>,
    /// `Switchyard-Tenant`, if present: a claim ingress checks against the subject.
    pub claimed_tenant: Option<String>,
    /// `Content-Type`, if present.
    pub content_type: Option<String>,
    /// W3C trace context, if present.
    pub trace: TraceContext,
}

pub(crate) fn text<'a>(headers: Option<&'a HeaderMap>, name: &'static str) -> Option<&'a str> {
    headers.and_then(|h| h.get(name)).map(|v| v.as_str())
}

impl ProducerHeaders {
    /// Reads a producer's headers (a message may have none).
    pub fn read(headers: Option<&HeaderMap>) -> Result<Self, EnvelopeError> {
        let msg_id = text(headers, headers::NATS_MSG_ID)
            .map(|raw| {
                MsgId::new(raw).map_err(|e| EnvelopeError::invalid(headers::NATS_MSG_ID, raw, e))
            })
            .transpose()?;
        Ok(Self {
            msg_id,
            claimed_tenant: text(headers, headers::TENANT).map(str::to_owned),
            content_type: text(headers, headers::CONTENT_TYPE).map(str::to_owned),
            trace: TraceContext::read(headers),
        })
    }
}

impl MsgIdPolicy {
    /// The message id to use under this policy.
    pub fn resolve(
        self,
        msg_id: Option<MsgId>,
        source: &SourceRef,
    ) -> Result<MsgId, EnvelopeError> {
        match (msg_id, self) {
            (Some(id), _) => Ok(id),
            (None, MsgIdPolicy::Require) => Err(EnvelopeError::MissingHeader(headers::NATS_MSG_ID)),
            (None, MsgIdPolicy::AssignFromSource) => {
                MsgId::new(format!("seq:{}:{}", source.stream, source.sequence))
                    .map_err(|e| EnvelopeError::invalid(headers::SOURCE, &source.to_string(), e))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_what_a_producer_sets() {
        let mut h = HeaderMap::new();
        h.insert(headers::NATS_MSG_ID, "order-1");
        h.insert(headers::TENANT, "acme");
        h.insert(headers::CONTENT_TYPE, "application/json");
        let read = ProducerHeaders::read(Some(&h)).unwrap();
        assert_eq!(read.msg_id.unwrap().as_str(), "order-1");
        assert_eq!(read.claimed_tenant.as_deref(), Some("acme"));
        assert_eq!(read.content_type.as_deref(), Some("application/json"));
    }

    #[test]
    fn missing_id_follows_the_policy() {
        let source = SourceRef {
            stream: "INGRESS".into(),
            sequence: 7,
        };
        let none = ProducerHeaders::read(None).unwrap();
        assert_eq!(
            MsgIdPolicy::Require
                .resolve(none.msg_id.clone(), &source)
                .unwrap_err()
                .to_string(),
            "missing header Nats-Msg-Id"
        );
        assert_eq!(
            MsgIdPolicy::AssignFromSource
                .resolve(None, &source)
                .unwrap()
                .as_str(),
            "seq:INGRESS:7"
        );
    }

    #[test]
    fn oversize_id_is_refused() {
        let mut h = HeaderMap::new();
        h.insert(headers::NATS_MSG_ID, "x".repeat(2000));
        let err = ProducerHeaders::read(Some(&h)).unwrap_err().to_string();
        assert!(
            err.contains("msg id is 2000 bytes long; the limit is 1024"),
            "{err}"
        );
    }
}
