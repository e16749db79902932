//! Validation of producer input: the checks, in order, and the DLQ code each failure gets.
//! Shared by the NATS path (the worker) and the HTTP API.

use std::sync::Arc;

use async_nats::HeaderMap;
use switchyard_dlq::DlqCode;
use switchyard_envelope::{MsgIdPolicy, ProducerHeaders, SourceRef, TraceContext};
use switchyard_keys::{Address, MsgId, PlatformId, TenantId, TenantKey};
use switchyard_registry::{KvCache, TenantRecord};
use switchyard_subjects::{InputStage, Namespace, StageSubject, SubjectKind};

/// Why input was refused: a DLQ code and a human reason, plus what could be read of the
/// address (for the DLQ subject).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejection {
    /// The code.
    pub code: DlqCode,
    /// The reason.
    pub reason: String,
    /// The tenant, when the subject named a valid one.
    pub tenant: Option<TenantId>,
    /// The platform, when the subject named a valid one.
    pub platform: Option<PlatformId>,
}

/// Input that passed every check.
#[derive(Debug, Clone)]
pub struct Accepted {
    /// Tenant, team and platform.
    pub address: Address,
    /// The producer's id.
    pub msg_id: MsgId,
    /// The payload's media type.
    pub content_type: Option<String>,
    /// The producer's trace context.
    pub trace: TraceContext,
}

/// The checks ingress applies.
pub struct Validator {
    /// The deployment namespace.
    pub ns: Namespace,
    /// The policy for missing `Nats-Msg-Id`.
    pub policy: MsgIdPolicy,
    /// The payload limit.
    pub max_payload_bytes: usize,
    /// Whether unknown tenants are refused.
    pub require_registered_tenant: bool,
    /// The tenant registry.
    pub tenants: Arc<KvCache<TenantKey, TenantRecord>>,
}

fn reject(code: DlqCode, reason: impl Into<String>, address: Option<&Address>) -> Rejection {
    Rejection {
        code,
        reason: reason.into(),
        tenant: address.map(|a| a.tenant.clone()),
        platform: address.map(|a| a.platform.clone()),
    }
}

impl Validator {
    /// Checks a message read from the ingress stream, in this order: subject, headers (a block
    /// the client could not parse is `invalid_header`; a content type must be ASCII,
    /// [`check_content_type`]), tenant claim, msg id, tenant
    /// registry, payload size, payload against its content type.
    pub fn check(
        &self,
        subject: &str,
        headers: Option<&HeaderMap>,
        payload: &[u8],
        source: &SourceRef,
    ) -> Result<Accepted, Rejection> {
        let parsed = StageSubject::parse(&self.ns, subject)
            .map_err(|e| reject(DlqCode::InvalidSubject, e.to_string(), None))?;
        if parsed.stage != InputStage::Ingress {
            return Err(reject(
                DlqCode::InvalidSubject,
                format!("{subject} is not an ingress subject"),
                None,
            ));
        }
        let address = parsed.address;
        if let Some(error) = headers.and_then(|h| h.get(async_nats::connection::HEADER_PARSE_ERROR))
        {
            // The client could not parse the header block (a name outside ASCII 33..=126, a
            // line without a colon, bytes that are not UTF-8); the raw block travels on in the
            // record's `Async-Nats-Unparsed-Headers` header (vendor/async-nats/PATCHED.md).
            return Err(reject(
                DlqCode::InvalidHeader,
                format!("the header block cannot be parsed: {error}"),
                Some(&address),
            ));
        }
        let producer = ProducerHeaders::read(headers)
            .map_err(|e| reject(DlqCode::InvalidHeader, e.to_string(), Some(&address)))?;
        if let Some(ct) = &producer.content_type {
            check_content_type(ct)
                .map_err(|reason| reject(DlqCode::InvalidHeader, reason, Some(&address)))?;
        }
        if let Some(claimed) = &producer.claimed_tenant
            && claimed != address.tenant.as_str()
        {
            return Err(reject(
                DlqCode::TenantMismatch,
                format!(
                    "header Switchyard-Tenant names {claimed:?} but the subject's tenant is {:?}",
                    address.tenant.as_str()
                ),
                Some(&address),
            ));
        }
        let msg_id = self
            .policy
            .resolve(producer.msg_id, source)
            .map_err(|e| reject(DlqCode::MissingMsgId, e.to_string(), Some(&address)))?;
        self.check_tenant_and_payload(&address, producer.content_type.as_deref(), payload)?;
        Ok(Accepted {
            address,
            msg_id,
            content_type: producer.content_type,
            trace: producer.trace,
        })
    }

    /// The tenant registry, payload size and content checks (also run by the HTTP API before
    /// it accepts a message).
    pub fn check_tenant_and_payload(
        &self,
        address: &Address,
        content_type: Option<&str>,
        payload: &[u8],
    ) -> Result<(), Rejection> {
        let mut limit = self.max_payload_bytes;
        match self.tenants.get(&TenantKey {
            tenant: address.tenant.clone(),
        }) {
            None if self.require_registered_tenant => {
                return Err(reject(
                    DlqCode::UnknownTenant,
                    format!(
                        "tenant {:?} is not registered (switchyard tenants enable {})",
                        address.tenant.as_str(),
                        address.tenant
                    ),
                    Some(address),
                ));
            }
            None => {}
            Some(Err(e)) => {
                return Err(reject(
                    DlqCode::UnknownTenant,
                    format!(
                        "tenant {:?} has an unreadable registry entry: {e}",
                        address.tenant.as_str()
                    ),
                    Some(address),
                ));
            }
            Some(Ok(record)) if !record.enabled => {
                return Err(reject(
                    DlqCode::TenantDisabled,
                    format!("tenant {:?} is disabled", address.tenant.as_str()),
                    Some(address),
                ));
            }
            Some(Ok(record)) => {
                limit = record.max_payload_bytes.map_or(limit, |own| own.min(limit));
            }
        }
        if payload.len() > limit {
            return Err(reject(
                DlqCode::PayloadTooLarge,
                format!("payload is {} bytes; the limit is {limit}", payload.len()),
                Some(address),
            ));
        }
        check_content(content_type, payload)
            .map_err(|reason| reject(DlqCode::InvalidPayload, reason, Some(address)))
    }
}

/// A content type is an HTTP field value made of a media type (RFC 9110): visible ASCII,
/// spaces and tabs only. Anything else (a line break, `✓`) is refused with `invalid_header`
/// rather than dropped, over NATS and HTTP alike: a webhook could not send it on.
pub fn check_content_type(content_type: &str) -> Result<(), String> {
    match content_type
        .char_indices()
        .find(|(_, c)| !(c.is_ascii_graphic() || *c == ' ' || *c == '\t'))
    {
        Some((at, found)) => Err(format!(
            "Content-Type {content_type:?} has {found:?} at byte {at}: a content type is visible ASCII"
        )),
        None => Ok(()),
    }
}

/// Text must be UTF-8; JSON must parse.
fn check_content(content_type: Option<&str>, payload: &[u8]) -> Result<(), String> {
    let Some(ct) = content_type else {
        return Ok(());
    };
    let media = ct
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    let is_json = media == "application/json" || media.ends_with("+json");
    if is_json {
        serde_json::from_slice::<serde::de::IgnoredAny>(payload)
            .map(|_| ())
            .map_err(|e| format!("content type {ct} but the payload is not valid JSON: {e}"))
    } else if media.starts_with("text/") {
        std::str::from_utf8(payload)
            .map(|_| ())
            .map_err(|e| format!("content type {ct} but the payload is not valid UTF-8: {e}"))
    } else {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn content_types_are_visible_ascii() {
        assert!(check_content_type("text/plain; charset=utf-8").is_ok());
        assert!(check_content_type("application/json;\tq=1").is_ok());
        for bad in [
            "text/plain ✓",
            "text/plain\r\nX-Evil: 1",
            "text/pl\u{0}ain",
            "tëxt/plain",
        ] {
            let err = check_content_type(bad).unwrap_err();
            assert!(err.contains("visible ASCII"), "{err}");
        }
    }

    #[test]
    fn content_checks() {
        assert!(check_content(None, b"\xff").is_ok());
        assert!(check_content(Some("application/octet-stream"), b"\xff").is_ok());
        assert!(check_content(Some("text/plain; charset=utf-8"), "héllo".as_bytes()).is_ok());
        assert!(
            check_content(Some("text/plain"), b"\xff\xfe")
                .unwrap_err()
                .contains("not valid UTF-8")
        );
        assert!(check_content(Some("application/json"), b"{\"a\":1}").is_ok());
        assert!(
            check_content(Some("application/cloudevents+json"), b"{")
                .unwrap_err()
                .contains("not valid JSON")
        );
        assert!(check_content(Some("application/json"), b"").is_err());
    }
}
