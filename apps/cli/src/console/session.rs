//! Console sessions and CSRF tokens, signed with keys derived from the operator token.
//!
//! - **Session cookie** `sy_session`: `<base64url JSON {who, sid, exp}>.<base64url HMAC-SHA256>`,
//!   `HttpOnly; SameSite=Strict; Path=/ui` (and `Secure` unless the console listens on a
//!   loopback address). `who` is `operator` or `tenant:<id>` (a portal session). It lasts
//!   [`SESSION_SECS`]; logging out revokes its `sid` in this process and, through a
//!   `session_ended` event every replica follows, in every other; rotating the operator token
//!   revokes every session and portal link at once (the keys derive from it).
//! - **CSRF** (OWASP's HMAC-based synchronizer token): every form carries
//!   `HMAC(key, "csrf" ‖ sid)`; a POST whose field does not verify is refused `403`. The login
//!   form, which has no session yet, pairs a random `sy_login` cookie with
//!   `HMAC(key, "login" ‖ nonce)`.
//! - **Portal links** (`switchyard api portal-link <tenant>`): `<base64url JSON {tenant, exp}>.<tag>`
//!   under a key of their own; exchanged for a tenant session by `GET /ui/portal?token=…`.
//!
//! Tags are compared in constant time (`Mac::verify_slice`).

use std::collections::HashMap;
use std::sync::Mutex;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use sha2::Sha256;
use switchyard_keys::TenantId;

type HmacSha256 = Hmac<Sha256>;

/// How long a session lasts, in seconds (8 hours).
pub const SESSION_SECS: i64 = 8 * 3600;
/// The longest a portal link may live, in seconds (7 days).
pub const MAX_LINK_SECS: i64 = 7 * 24 * 3600;
/// The session cookie's name.
pub const SESSION_COOKIE: &str = "sy_session";
/// The login nonce cookie's name.
pub const LOGIN_COOKIE: &str = "sy_login";

/// Who a session is for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Who {
    /// The operator: every tenant.
    Operator,
    /// One tenant's portal.
    Tenant(TenantId),
}

impl Who {
    fn render(&self) -> String {
        match self {
            Who::Operator => "operator".to_owned(),
            Who::Tenant(t) => format!("tenant:{t}"),
        }
    }

    fn parse(raw: &str) -> Option<Self> {
        match raw {
            "operator" => Some(Who::Operator),
            other => other
                .strip_prefix("tenant:")
                .and_then(|t| t.parse().ok())
                .map(Who::Tenant),
        }
    }

    /// The tenant a portal session is limited to; `None` for the operator.
    pub fn tenant(&self) -> Option<&TenantId> {
        match self {
            Who::Operator => None,
            Who::Tenant(t) => Some(t),
        }
    }
}

#[derive(Serialize, Deserialize)]
struct Claims {
    who: String,
    sid: String,
    exp: i64,
}

#[derive(Serialize, Deserialize)]
struct LinkClaims {
    tenant: String,
    exp: i64,
}

/// A verified session.
#[derive(Debug, Clone)]
pub struct Session {
    /// Who it is for.
    pub who: Who,
    /// Its id (what CSRF tokens and logout name).
    pub sid: String,
    /// When it ends, Unix seconds.
    pub exp: i64,
}

/// The console's keys, and the sessions logged out in this process.
pub struct Keys {
    session: Vec<u8>,
    portal: Vec<u8>,
    /// Logged-out session ids, with when each would have expired (pruned once past it).
    revoked: Mutex<HashMap<String, i64>>,
    /// Tenants disabled within a session's life, with when: their portal sessions opened
    /// before it are ended for good.
    tenants_ended: Mutex<HashMap<String, i64>>,
}

fn derive(secret: &str, label: &str) -> Vec<u8> {
    let mut mac = HmacSha256::new_from_slice(secret.as_bytes()).expect("HMAC takes any key length");
    mac.update(label.as_bytes());
    mac.finalize().into_bytes().to_vec()
}

fn tag(key: &[u8], parts: &[&[u8]]) -> Vec<u8> {
    let mut mac = HmacSha256::new_from_slice(key).expect("HMAC takes any key length");
    for part in parts {
        mac.update(&(part.len() as u64).to_be_bytes());
        mac.update(part);
    }
    mac.finalize().into_bytes().to_vec()
}

fn verify(key: &[u8], parts: &[&[u8]], given: &[u8]) -> bool {
    let mut mac = HmacSha256::new_from_slice(key).expect("HMAC takes any key length");
    for part in parts {
        mac.update(&(part.len() as u64).to_be_bytes());
        mac.update(part);
    }
    mac.verify_slice(given).is_ok()
}

/// 16 random bytes, hex.
///
/// # Errors
/// The system's random number generator failed (the page answers `503`: no session or form
/// is made with a weak id).
pub fn random_id() -> Result<String, getrandom::Error> {
    let mut bytes = [0u8; 16];
    getrandom::fill(&mut bytes)?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

impl Keys {
    /// Keys derived from the operator token.
    pub fn new(operator_token: &str) -> Self {
        Self {
            session: derive(operator_token, "switchyard/console/session/v1"),
            portal: derive(operator_token, "switchyard/console/portal/v1"),
            revoked: Mutex::new(HashMap::new()),
            tenants_ended: Mutex::new(HashMap::new()),
        }
    }

    /// A new session cookie value for `who`, valid from `now` (Unix seconds).
    ///
    /// # Errors
    /// The system's random number generator failed ([`random_id`]).
    pub fn issue(&self, who: &Who, now: i64) -> Result<(String, Session), getrandom::Error> {
        let session = Session {
            who: who.clone(),
            sid: random_id()?,
            exp: now + SESSION_SECS,
        };
        let claims = Claims {
            who: who.render(),
            sid: session.sid.clone(),
            exp: session.exp,
        };
        let body = B64.encode(serde_json::to_vec(&claims).unwrap_or_default());
        let sig = B64.encode(tag(&self.session, &[b"session", body.as_bytes()]));
        Ok((format!("{body}.{sig}"), session))
    }

    /// The session a cookie value names, when its tag verifies, it has not expired at `now`
    /// and was not logged out.
    pub fn session(&self, cookie: &str, now: i64) -> Option<Session> {
        let (body, sig) = cookie.split_once('.')?;
        let sig = B64.decode(sig).ok()?;
        if !verify(&self.session, &[b"session", body.as_bytes()], &sig) {
            return None;
        }
        let claims: Claims = serde_json::from_slice(&B64.decode(body).ok()?).ok()?;
        if claims.exp <= now {
            return None;
        }
        if self.revoked.lock().ok()?.contains_key(&claims.sid) {
            return None;
        }
        // A portal session opened before its tenant was last disabled stays ended.
        if let Some(tenant) = claims.who.strip_prefix("tenant:") {
            let opened = claims.exp - SESSION_SECS;
            if self
                .tenants_ended
                .lock()
                .ok()?
                .get(tenant)
                .is_some_and(|&at| at >= opened)
            {
                return None;
            }
        }
        Some(Session {
            who: Who::parse(&claims.who)?,
            sid: claims.sid,
            exp: claims.exp,
        })
    }

    /// Ends a session in this process (logout); ids of sessions that have expired anyway are
    /// forgotten, so the list stays as long as the sessions logged out within 8 hours.
    pub fn revoke(&self, session: &Session, now: i64) {
        self.revoke_sid(&session.sid, session.exp, now);
    }

    /// Ends session `sid` (which would have expired at `exp`, Unix seconds) in this process: a
    /// logout here, or one another replica reported (`session_ended`).
    pub fn revoke_sid(&self, sid: &str, exp: i64, now: i64) {
        if exp <= now {
            return;
        }
        if let Ok(mut revoked) = self.revoked.lock() {
            revoked.retain(|_, exp| *exp > now);
            revoked.insert(sid.to_owned(), exp);
        }
    }

    /// Ends every portal session of `tenant` opened at or before `at` (Unix seconds; the
    /// tenant was disabled then), for good; forgotten once no such session can be alive.
    pub fn end_tenant_sessions(&self, tenant: &TenantId, at: i64, now: i64) {
        if at + SESSION_SECS <= now {
            return;
        }
        if let Ok(mut ended) = self.tenants_ended.lock() {
            ended.retain(|_, at| *at + SESSION_SECS > now);
            let last = ended.entry(tenant.to_string()).or_insert(at);
            *last = (*last).max(at);
        }
    }

    /// The CSRF token of a session's forms.
    pub fn csrf(&self, session: &Session) -> String {
        B64.encode(tag(&self.session, &[b"csrf", session.sid.as_bytes()]))
    }

    /// Whether `given` is the session's CSRF token.
    pub fn csrf_ok(&self, session: &Session, given: &str) -> bool {
        B64.decode(given)
            .is_ok_and(|g| verify(&self.session, &[b"csrf", session.sid.as_bytes()], &g))
    }

    /// The login form's token for the nonce in its `sy_login` cookie.
    pub fn login_csrf(&self, nonce: &str) -> String {
        B64.encode(tag(&self.session, &[b"login", nonce.as_bytes()]))
    }

    /// Whether `given` is the login token of `nonce`.
    pub fn login_csrf_ok(&self, nonce: &str, given: &str) -> bool {
        B64.decode(given)
            .is_ok_and(|g| verify(&self.session, &[b"login", nonce.as_bytes()], &g))
    }

    /// A portal link token for `tenant`, valid until `exp` (Unix seconds).
    pub fn link(&self, tenant: &TenantId, exp: i64) -> String {
        let claims = LinkClaims {
            tenant: tenant.to_string(),
            exp,
        };
        let body = B64.encode(serde_json::to_vec(&claims).unwrap_or_default());
        let sig = B64.encode(tag(&self.portal, &[b"portal", body.as_bytes()]));
        format!("{body}.{sig}")
    }

    /// The tenant a portal link token is for, when it verifies and has not expired at `now`.
    pub fn link_tenant(&self, token: &str, now: i64) -> Option<TenantId> {
        let (body, sig) = token.split_once('.')?;
        let sig = B64.decode(sig).ok()?;
        if !verify(&self.portal, &[b"portal", body.as_bytes()], &sig) {
            return None;
        }
        let claims: LinkClaims = serde_json::from_slice(&B64.decode(body).ok()?).ok()?;
        (claims.exp > now && claims.exp - now <= MAX_LINK_SECS)
            .then(|| claims.tenant.parse().ok())?
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_disabled_tenants_portal_sessions_end_for_good_and_later_ones_live() {
        let keys = Keys::new("an-operator-token-of-at-least-32-bytes-0123");
        let acme: TenantId = "acme".parse().unwrap();
        let before = keys.issue(&Who::Tenant(acme.clone()), 1_000).unwrap().0;
        let operator = keys.issue(&Who::Operator, 1_000).unwrap().0;
        keys.end_tenant_sessions(&acme, 1_500, 1_600);
        assert!(keys.session(&before, 1_700).is_none());
        assert!(keys.session(&operator, 1_700).is_some());
        let after = keys.issue(&Who::Tenant(acme.clone()), 2_000).unwrap().0;
        assert!(keys.session(&after, 2_100).is_some());
        // A disabling older than any session's life is not kept.
        keys.end_tenant_sessions(&acme, 0, SESSION_SECS + 1);
        assert!(keys.session(&after, 2_100).is_some());
    }

    const TOKEN: &str = "0123456789abcdef0123456789abcdef";

    #[test]
    fn a_session_verifies_until_it_expires_or_is_revoked() {
        let keys = Keys::new(TOKEN);
        let (cookie, session) = keys.issue(&Who::Operator, 1_000).unwrap();
        assert_eq!(keys.session(&cookie, 1_001).unwrap().who, Who::Operator);
        assert!(keys.session(&cookie, 1_000 + SESSION_SECS).is_none());
        // Another operator token's keys, or a changed body, do not verify.
        assert!(
            Keys::new(&TOKEN.replace('0', "1"))
                .session(&cookie, 1_001)
                .is_none()
        );
        let (body, sig) = cookie.split_once('.').unwrap();
        let forged = B64.encode(
            String::from_utf8(B64.decode(body).unwrap())
                .unwrap()
                .replace("operator", "tenant:acme"),
        );
        assert!(keys.session(&format!("{forged}.{sig}"), 1_001).is_none());
        keys.revoke(&session, 1_001);
        assert!(keys.session(&cookie, 1_001).is_none());
    }

    #[test]
    fn csrf_tokens_belong_to_their_session_and_links_to_their_tenant() {
        let keys = Keys::new(TOKEN);
        let (_, a) = keys.issue(&Who::Operator, 0).unwrap();
        let (_, b) = keys.issue(&Who::Operator, 0).unwrap();
        assert!(keys.csrf_ok(&a, &keys.csrf(&a)));
        assert!(!keys.csrf_ok(&b, &keys.csrf(&a)));
        assert!(!keys.csrf_ok(&a, "garbage"));
        assert!(keys.login_csrf_ok("n1", &keys.login_csrf("n1")));
        assert!(!keys.login_csrf_ok("n2", &keys.login_csrf("n1")));
        let acme: TenantId = "acme".parse().unwrap();
        let link = keys.link(&acme, 100);
        assert_eq!(keys.link_tenant(&link, 99), Some(acme.clone()));
        assert_eq!(keys.link_tenant(&link, 100), None);
        // No link lives longer than the cap, whoever signed it.
        assert_eq!(
            keys.link_tenant(&keys.link(&acme, MAX_LINK_SECS + 10), 1),
            None
        );
        // A session cookie is not a link, nor the other way round (separate keys).
        let (cookie, _) = keys.issue(&Who::Operator, 0).unwrap();
        assert_eq!(keys.link_tenant(&cookie, 1), None);
        assert!(keys.session(&link, 1).is_none());
    }
}
