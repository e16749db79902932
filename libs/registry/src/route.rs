//! Routes: where a tenant's messages for a platform are delivered.
//!
//! JSON, tagged by `type`:
//!
//! ```json
//! {"type":"webhook","url":"https://hooks.example.com/in","secret":"whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
//!  "timeout_ms":10000,"max_in_flight":16,"headers":{"X-Env":"prod"}}
//! {"type":"nats","subject":"sink.acme.billing","jetstream":true,"timeout_ms":5000,"max_in_flight":64}
//! {"type":"nats","subject":"svc.acme.billing","timeout_ms":5000}
//! {"type":"nats","subject":"feed.acme.billing","fire_and_forget":true}
//! ```
//!
//! A webhook route rotated with an overlap also holds `previous_secrets`
//! (`[{"secret":"whsec_…","expires_at":"2026-12-07T12:00:00Z"}]`), which keep signing until
//! they expire ([`crate::rotation`]).
//!
//! For a tenant with encryption on, every secret field (`secret`, each previous `secret`,
//! `signing_key`) holds the secret sealed under the tenant's data key instead:
//! `enc:v1:<data key id>:<base64>` ([`SEALED_SECRET_PREFIX`]; sealed and opened by
//! `switchyard_crypt::route_secret`). Validation checks a sealed value's form only; what it
//! holds is checked before it is sealed and after it is opened.

use std::collections::BTreeMap;

use base64::Engine;
use serde::{Deserialize, Serialize};

/// Why a route is unusable.
#[derive(Debug, thiserror::Error)]
pub enum RouteError {
    /// Not valid route JSON.
    #[error("route is not valid JSON for a route")]
    Json(#[source] serde_json::Error),
    /// The operating system's random source failed while generating a secret.
    #[error("generating a signing secret: the random source failed: {0}")]
    Random(String),
    /// A field is out of range or malformed.
    #[error("route field {field}: {reason}")]
    Field {
        /// The field.
        field: &'static str,
        /// What is wrong.
        reason: String,
    },
}

fn default_timeout_ms() -> u64 {
    10_000
}

fn default_max_in_flight() -> usize {
    16
}

/// Name suffixes a tenant's webhook may not use: reserved for loopback and private networks
/// (`localhost`, `local`, `internal`, `home.arpa`, `lan`, `intranet`, `corp`) or cluster
/// service discovery (`svc`, `cluster.local`, `consul`).
pub const INTERNAL_SUFFIXES: [&str; 10] = [
    "localhost",
    "local",
    "internal",
    "home.arpa",
    "lan",
    "intranet",
    "corp",
    "svc",
    "cluster.local",
    "consul",
];

/// Whether an IPv4 address is not a public host's: loopback, private, link-local, shared
/// (100.64/10), this network (0/8), IETF protocol assignments (192.0.0/24), benchmarking
/// (198.18/15), reserved (240/4), multicast or broadcast.
fn internal_v4(ip: std::net::Ipv4Addr) -> bool {
    let [a, b, c, _] = ip.octets();
    ip.is_loopback()
        || ip.is_private()
        || ip.is_link_local()
        || ip.is_multicast()
        || ip.is_broadcast()
        || a == 0
        || (a == 100 && (b & 0xc0) == 64)
        || (a == 192 && b == 0 && c == 0)
        || (a == 198 && (b & 0xfe) == 18)
        || a >= 240
}

/// The longest webhook URL, in bytes.
pub const MAX_URL_BYTES: usize = 2048;

/// The most extra headers a webhook route sends.
pub const MAX_HEADERS: usize = 32;

/// The longest extra header name, in bytes.
pub const MAX_HEADER_NAME_BYTES: usize = 256;

/// The longest extra header value, in bytes.
pub const MAX_HEADER_VALUE_BYTES: usize = 4096;

/// The longest NATS route subject, in bytes.
pub const MAX_SUBJECT_BYTES: usize = 256;

/// What a sealed secret field starts with (`enc:v1:<data key id>:<base64>`): the form
/// `switchyard_crypt::SealedSecret` writes, defined here because the records that hold it are
/// this crate's (the crypt crate depends on this one and re-exports it as its
/// `SEALED_PREFIX`).
pub const SEALED_SECRET_PREFIX: &str = "enc:v1:";

/// The data key id of a sealed secret field's value (`enc:v1:<id>:…`), `None` when the value
/// is not sealed or names no id.
pub fn sealed_key_id(text: &str) -> Option<&str> {
    let rest = text.strip_prefix(SEALED_SECRET_PREFIX)?;
    rest.split_once(':')
        .map(|(id, _)| id)
        .filter(|id| !id.is_empty())
}

/// Checks the form of a sealed secret field: `enc:v1:<id>:<body>`, both parts non-empty and
/// printable ASCII without spaces (its content is checked when it is opened).
pub(crate) fn check_sealed(field: &'static str, text: &str) -> Result<(), RouteError> {
    let body = text
        .strip_prefix(SEALED_SECRET_PREFIX)
        .and_then(|rest| rest.split_once(':'))
        .map(|(_, body)| body);
    let printable = text.chars().all(|c| c.is_ascii_graphic());
    match (sealed_key_id(text), body) {
        (Some(_), Some(body)) if !body.is_empty() && printable => Ok(()),
        _ => Err(RouteError::Field {
            field,
            reason: format!(
                "starts with {SEALED_SECRET_PREFIX} but is not a sealed secret \
                 ({SEALED_SECRET_PREFIX}<data key id>:<base64>)"
            ),
        }),
    }
}

/// How a sealed secret field is shown: `enc:v1:<data key id>:***`.
fn shown_sealed(text: &str) -> String {
    format!(
        "{SEALED_SECRET_PREFIX}{}:***",
        sealed_key_id(text).unwrap_or("?")
    )
}

/// A Standard Webhooks signing secret: `whsec_` followed by base64 of the key bytes; or, for a
/// tenant with encryption on, that secret sealed ([`SEALED_SECRET_PREFIX`]).
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct WebhookSecret(pub String);

impl std::fmt::Debug for WebhookSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("WebhookSecret(***)")
    }
}

impl WebhookSecret {
    /// Key bytes of a generated secret: 32 (the Standard Webhooks spec asks for 24 to 64,
    /// "Symmetric signatures").
    pub const GENERATED_KEY_BYTES: usize = 32;

    /// A fresh secret: `whsec_` and the standard base64 of [`Self::GENERATED_KEY_BYTES`]
    /// random bytes from the operating system (`getrandom`).
    ///
    /// # Errors
    /// [`RouteError::Random`] when the random source fails.
    pub fn generate() -> Result<Self, RouteError> {
        let mut key = [0u8; Self::GENERATED_KEY_BYTES];
        getrandom::fill(&mut key).map_err(|e| RouteError::Random(e.to_string()))?;
        Ok(Self(format!(
            "whsec_{}",
            base64::engine::general_purpose::STANDARD.encode(key)
        )))
    }

    /// Whether it is sealed (`enc:v1:…`): it must be opened before it signs.
    pub fn is_sealed(&self) -> bool {
        self.0.starts_with(SEALED_SECRET_PREFIX)
    }

    /// Checks it: a valid `whsec_` secret ([`WebhookSecret::key`]), or a well-formed sealed one.
    ///
    /// # Errors
    /// [`RouteError::Field`] naming `secret`.
    pub fn validate(&self) -> Result<(), RouteError> {
        if self.is_sealed() {
            check_sealed("secret", &self.0)
        } else {
            self.key().map(|_| ())
        }
    }

    /// The key bytes (the base64 after `whsec_`). A secret without the `whsec_` prefix is
    /// refused: it is not a Standard Webhooks secret, and guessing how to read it would sign
    /// with a key the receiver does not hold.
    pub fn key(&self) -> Result<Vec<u8>, RouteError> {
        if let Some(id) = sealed_key_id(&self.0) {
            return Err(RouteError::Field {
                field: "secret",
                reason: format!(
                    "is sealed under data key {id}: it signs only once opened with the \
                     tenant's key"
                ),
            });
        }
        let Some(encoded) = self.0.strip_prefix("whsec_") else {
            return Err(RouteError::Field {
                field: "secret",
                reason: "does not start with whsec_ (a Standard Webhooks secret is whsec_ \
                         followed by the standard base64 of at least 16 key bytes)"
                    .into(),
            });
        };
        let key = base64::engine::general_purpose::STANDARD
            .decode(encoded)
            .map_err(|e| RouteError::Field {
                field: "secret",
                reason: format!("not base64 after whsec_: {e}"),
            })?;
        if key.len() < 16 {
            return Err(RouteError::Field {
                field: "secret",
                reason: "shorter than 16 bytes".into(),
            });
        }
        Ok(key)
    }
}

/// A URL as it may be shown, logged or recorded: `scheme://host[:port]` only. User info
/// (`user:password@`), path, query and fragment are dropped, since any of them may carry a
/// credential (`?token=…`, a Slack-style secret path). Works on any string, valid URL or not;
/// without `://` it keeps what stands before the first `/`, `\`, `?` or `#`, less user info.
pub fn redact_url(url: &str) -> String {
    let (scheme, rest) = match url.split_once("://") {
        Some((scheme, rest)) => (Some(scheme), rest),
        None => (None, url),
    };
    // Where the authority ends for an http(s) URL (`\` counts as `/` there).
    let end = rest.find(['/', '\\', '?', '#']).unwrap_or(rest.len());
    let authority = &rest[..end];
    let host = authority
        .rfind('@')
        .map_or(authority, |at| &authority[at + 1..]);
    match scheme {
        Some(scheme) => format!("{scheme}://{host}"),
        None => host.to_owned(),
    }
}

/// Whether a route header's value is a credential, hidden wherever a route is shown
/// ([`Route::redacted`]): `Authorization`, `Proxy-Authorization`, `Cookie`, and any name holding
/// `token`, `secret`, `key`, `auth`, `password`, `session` or `signature` (`X-Api-Key`,
/// `X-Auth-Token`), case-insensitively.
pub fn is_credential_header(name: &str) -> bool {
    let name = name.to_ascii_lowercase();
    name == "cookie"
        || [
            "authorization",
            "token",
            "secret",
            "key",
            "auth",
            "password",
            "session",
            "signature",
        ]
        .iter()
        .any(|word| name.contains(word))
}

/// Delivery by HTTP POST, signed in the Standard Webhooks style.
///
/// Its `Debug` shows [`WebhookRoute::display_url`] and the header names only.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WebhookRoute {
    /// `http://` or `https://` URL.
    pub url: String,
    /// Signing secret (`whsec_…`).
    pub secret: WebhookSecret,
    /// Per-attempt timeout, in milliseconds (default 10000).
    #[serde(default = "default_timeout_ms")]
    pub timeout_ms: u64,
    /// Attempts in flight at once for this route (default 16).
    #[serde(default = "default_max_in_flight")]
    pub max_in_flight: usize,
    /// Extra request headers.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub headers: BTreeMap<String, String>,
    /// Secrets rotated out that keep signing every delivery until they expire
    /// ([`crate::rotation`]); at most [`crate::rotation::MAX_PREVIOUS_SECRETS`].
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub previous_secrets: Vec<crate::rotation::RetiringSecret>,
    /// An Ed25519 private key (`whsk_…`): every delivery also carries a `v1a` signature that
    /// receivers verify with its public key alone ([`crate::signing_key`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signing_key: Option<crate::signing_key::SigningKey>,
}

impl WebhookRoute {
    /// The URL as it may be shown, logged or recorded: `scheme://host[:port]` ([`redact_url`]).
    /// Every place that prints, logs or records a webhook URL uses this.
    pub fn display_url(&self) -> String {
        redact_url(&self.url)
    }
}

impl std::fmt::Debug for WebhookRoute {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WebhookRoute")
            .field("url", &self.display_url())
            .field("secret", &self.secret)
            .field("timeout_ms", &self.timeout_ms)
            .field("max_in_flight", &self.max_in_flight)
            .field("headers", &self.headers.keys().collect::<Vec<_>>())
            .field("previous_secrets", &self.previous_secrets)
            .field("signing_key", &self.signing_key)
            .finish()
    }
}

/// Delivery by publishing to a NATS subject. How a delivery is confirmed:
///
/// - `jetstream: true`: published through JetStream; delivered once the stream acks.
/// - core NATS (the default): sent as a request; delivered once any reply arrives (its
///   content is not read). Nobody subscribed (no responders) or no reply within `timeout_ms`
///   is a retryable failure, so a core route never counts as delivered with nobody listening.
/// - `fire_and_forget: true` (core NATS only, explicit opt-out): published and flushed to the
///   server, which counts as delivered even when nobody is subscribed — the message is then
///   lost. For feeds whose subscribers do not reply and where loss is acceptable.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NatsRoute {
    /// The subject (no wildcards).
    pub subject: String,
    /// Publish through JetStream and wait for the stream's ack (default false: core NATS).
    #[serde(default)]
    pub jetstream: bool,
    /// Core NATS only: publish without waiting for a reply; flushed counts as delivered, even
    /// with nobody subscribed (default false: a request that needs a reply).
    #[serde(default, skip_serializing_if = "is_false")]
    pub fire_and_forget: bool,
    /// Per-attempt timeout, in milliseconds (default 10000).
    #[serde(default = "default_timeout_ms")]
    pub timeout_ms: u64,
    /// Attempts in flight at once for this route (default 16).
    #[serde(default = "default_max_in_flight")]
    pub max_in_flight: usize,
}

fn is_false(value: &bool) -> bool {
    !*value
}

/// Where messages of one (tenant, team or `_`, platform) go.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "lowercase")]
pub enum Route {
    /// An HTTP webhook.
    Webhook(WebhookRoute),
    /// A NATS subject.
    Nats(NatsRoute),
}

impl Route {
    /// Parses and validates route JSON.
    pub fn from_json(bytes: &[u8]) -> Result<Self, RouteError> {
        let route: Route = serde_json::from_slice(bytes).map_err(RouteError::Json)?;
        route.validate()?;
        Ok(route)
    }

    /// The route as JSON.
    pub fn to_json(&self) -> Vec<u8> {
        serde_json::to_vec(self).unwrap_or_default()
    }

    /// Checks every field: an http(s) URL of at most [`MAX_URL_BYTES`], at most
    /// [`MAX_HEADERS`] headers (names up to [`MAX_HEADER_NAME_BYTES`], values up to
    /// [`MAX_HEADER_VALUE_BYTES`], no control characters), a concrete subject of at most
    /// [`MAX_SUBJECT_BYTES`] without whitespace or control characters, the secrets, the
    /// timeout and the in-flight limit.
    pub fn validate(&self) -> Result<(), RouteError> {
        let (timeout_ms, max_in_flight) = match self {
            Route::Webhook(w) => {
                let scheme_ok = w.url.starts_with("http://") || w.url.starts_with("https://");
                if w.url.len() > MAX_URL_BYTES {
                    return Err(RouteError::Field {
                        field: "url",
                        reason: format!("{} bytes; at most {MAX_URL_BYTES}", w.url.len()),
                    });
                }
                if !scheme_ok || w.url.len() < 10 || w.url.contains(char::is_whitespace) {
                    return Err(RouteError::Field {
                        field: "url",
                        reason: format!("{:?} is not an http(s) URL", redact_url(&w.url)),
                    });
                }
                // What the HTTP client will parse (an unclosed IPv6 bracket, a port over
                // 65535, no host): refused here rather than at every delivery.
                match url::Url::parse(&w.url) {
                    Ok(parsed) if parsed.host().is_some() => {}
                    Ok(_) => {
                        return Err(RouteError::Field {
                            field: "url",
                            reason: format!("{:?} names no host", redact_url(&w.url)),
                        });
                    }
                    Err(error) => {
                        return Err(RouteError::Field {
                            field: "url",
                            reason: format!("{:?} is not a valid URL: {error}", redact_url(&w.url)),
                        });
                    }
                }
                w.secret.validate()?;
                for previous in &w.previous_secrets {
                    previous.secret.validate()?;
                }
                if let Some(key) = &w.signing_key {
                    key.validate()?;
                }
                if w.previous_secrets.len() > crate::rotation::MAX_PREVIOUS_SECRETS {
                    return Err(RouteError::Field {
                        field: "previous_secrets",
                        reason: format!(
                            "{} previous secrets; at most {}",
                            w.previous_secrets.len(),
                            crate::rotation::MAX_PREVIOUS_SECRETS
                        ),
                    });
                }
                if w.headers.len() > MAX_HEADERS {
                    return Err(RouteError::Field {
                        field: "headers",
                        reason: format!("{} headers; at most {MAX_HEADERS}", w.headers.len()),
                    });
                }
                for (name, value) in &w.headers {
                    // HTTP field values allow tab, never other control characters.
                    let bad =
                        |s: &str| s.is_empty() || s.chars().any(|c| c.is_control() && c != '\t');
                    if bad(name)
                        || bad(value)
                        || name.contains([':', ' '])
                        || name.len() > MAX_HEADER_NAME_BYTES
                        || value.len() > MAX_HEADER_VALUE_BYTES
                    {
                        return Err(RouteError::Field {
                            field: "headers",
                            reason: format!("invalid header {name:?}"),
                        });
                    }
                }
                (w.timeout_ms, w.max_in_flight)
            }
            Route::Nats(n) => {
                let valid = !n.subject.is_empty()
                    && n.subject.len() <= MAX_SUBJECT_BYTES
                    && n.subject
                        .split('.')
                        .all(|t| !t.is_empty() && t != "*" && t != ">")
                    && !n
                        .subject
                        .chars()
                        .any(|c| c.is_whitespace() || c.is_control());
                if !valid {
                    return Err(RouteError::Field {
                        field: "subject",
                        reason: format!("{:?} is not a concrete subject", n.subject),
                    });
                }
                if n.jetstream && n.fire_and_forget {
                    return Err(RouteError::Field {
                        field: "fire_and_forget",
                        reason: "is for core NATS routes; a JetStream route always waits for \
                                 the stream's ack"
                            .into(),
                    });
                }
                (n.timeout_ms, n.max_in_flight)
            }
        };
        if !(1..=300_000).contains(&timeout_ms) {
            return Err(RouteError::Field {
                field: "timeout_ms",
                reason: "must be 1..=300000".into(),
            });
        }
        if !(1..=10_000).contains(&max_in_flight) {
            return Err(RouteError::Field {
                field: "max_in_flight",
                reason: "must be 1..=10000".into(),
            });
        }
        Ok(())
    }

    /// Per-attempt timeout.
    pub fn timeout(&self) -> std::time::Duration {
        std::time::Duration::from_millis(match self {
            Route::Webhook(w) => w.timeout_ms,
            Route::Nats(n) => n.timeout_ms,
        })
    }

    /// Attempts in flight at once.
    pub fn max_in_flight(&self) -> usize {
        match self {
            Route::Webhook(w) => w.max_in_flight,
            Route::Nats(n) => n.max_in_flight,
        }
    }

    /// Whether a tenant may set this target for itself (the management API with a tenant's
    /// key; operators are not held to it): a NATS subject under `sink.<tenant>.` only — egress
    /// may publish anywhere under `sink.>`, so another tenant's sink subjects would be reachable
    /// otherwise — and a webhook whose host is not `localhost` nor a loopback, private,
    /// link-local, shared, unspecified or multicast IP address (egress's own network).
    ///
    /// A host name that resolves to such an address is not caught here (the check does not
    /// resolve names): egress's network policy must stop that.
    ///
    /// Errors: [`RouteError::Field`] naming `subject` or `url`.
    pub fn check_tenant_scope(&self, tenant: &str) -> Result<(), RouteError> {
        match self {
            Route::Nats(n) => {
                let own = format!("sink.{tenant}.");
                if !n.subject.starts_with(&own) || n.subject.len() == own.len() {
                    return Err(RouteError::Field {
                        field: "subject",
                        reason: format!("a tenant's NATS destinations are under {own}>"),
                    });
                }
                Ok(())
            }
            Route::Webhook(w) => {
                let internal = || RouteError::Field {
                    field: "url",
                    reason: format!(
                        "{} is an internal address; a tenant's webhooks go to public hosts",
                        w.display_url()
                    ),
                };
                let parsed = url::Url::parse(&w.url).map_err(|_| internal())?;
                match parsed.host() {
                    Some(url::Host::Domain(host)) => {
                        let host = host.trim_end_matches('.').to_ascii_lowercase();
                        // A single label (`nats`, `kubernetes`) resolves through the search
                        // domains of egress's own network; the suffixes are reserved for
                        // private networks and service discovery (RFC 6761, 6762, 8375, and
                        // cluster DNS). Names of public zones that resolve to internal
                        // addresses are egress's network policy to stop.
                        let internal_suffix = INTERNAL_SUFFIXES
                            .iter()
                            .any(|suffix| host == *suffix || host.ends_with(&format!(".{suffix}")));
                        if !host.contains('.') || internal_suffix {
                            return Err(internal());
                        }
                        Ok(())
                    }
                    Some(url::Host::Ipv4(ip)) => {
                        if internal_v4(ip) {
                            return Err(internal());
                        }
                        Ok(())
                    }
                    Some(url::Host::Ipv6(ip)) => {
                        let s = ip.segments();
                        let unique_local = (s[0] & 0xfe00) == 0xfc00;
                        let link_local = (s[0] & 0xffc0) == 0xfe80;
                        // IPv4 inside IPv6: mapped (::ffff:a.b.c.d), compatible (::a.b.c.d),
                        // NAT64 (64:ff9b::/96) and 6to4 (2002::/16) all reach IPv4 hosts.
                        let compatible = s[..6] == [0; 6];
                        let nat64 = s[..6] == [0x64, 0xff9b, 0, 0, 0, 0];
                        let six_to_four = s[0] == 0x2002;
                        if ip.is_loopback()
                            || ip.is_unspecified()
                            || ip.is_multicast()
                            || unique_local
                            || link_local
                            || ip.to_ipv4_mapped().is_some()
                            || compatible
                            || nat64
                            || six_to_four
                        {
                            return Err(internal());
                        }
                        Ok(())
                    }
                    None => Err(internal()),
                }
            }
        }
    }

    /// The route as it may be shown: the secrets hidden (`whsec_***`, `whsk_***`; a sealed
    /// one as `enc:v1:<data key id>:***`), the URL reduced to `scheme://host[:port]`
    /// ([`WebhookRoute::display_url`]).
    pub fn redacted(&self) -> Route {
        let hide = |text: &str, clear: &str| {
            if text.starts_with(SEALED_SECRET_PREFIX) {
                shown_sealed(text)
            } else {
                clear.to_owned()
            }
        };
        let mut route = self.clone();
        if let Route::Webhook(w) = &mut route {
            w.secret = WebhookSecret(hide(&w.secret.0, "whsec_***"));
            for previous in &mut w.previous_secrets {
                previous.secret = WebhookSecret(hide(&previous.secret.0, "whsec_***"));
            }
            if let Some(key) = &mut w.signing_key {
                key.0 = hide(&key.0, "whsk_***");
            }
            for (name, value) in &mut w.headers {
                if is_credential_header(name) {
                    *value = "***".into();
                }
            }
            w.url = w.display_url();
        }
        route
    }

    /// `(type, target)` for one-line displays: `webhook` and the URL as it may be shown, or
    /// `nats` and the subject.
    pub fn describe(&self) -> (&'static str, String) {
        match self {
            Route::Webhook(w) => ("webhook", w.display_url()),
            Route::Nats(n) => ("nats", n.subject.clone()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_secrets_are_valid_and_distinct() {
        let (a, b) = (
            WebhookSecret::generate().unwrap(),
            WebhookSecret::generate().unwrap(),
        );
        assert_eq!(a.key().unwrap().len(), WebhookSecret::GENERATED_KEY_BYTES);
        assert!(a.0.starts_with("whsec_"));
        assert_ne!(a, b);
    }

    #[test]
    fn oversized_urls_headers_and_subjects_are_refused_by_field() {
        let webhook = |url: String, headers: Vec<(String, String)>| {
            serde_json::json!({"type": "webhook", "url": url,
                "secret": "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
                "headers": headers.into_iter().collect::<BTreeMap<_, _>>()})
        };
        let refused = |value: serde_json::Value| {
            Route::from_json(value.to_string().as_bytes())
                .unwrap_err()
                .to_string()
        };
        let base = "https://hooks.example.com/";
        assert!(
            refused(webhook(
                format!("{base}{}", "a".repeat(MAX_URL_BYTES)),
                vec![]
            ))
            .contains("url")
        );
        let many = (0..=MAX_HEADERS)
            .map(|i| (format!("x-h{i}"), "v".to_owned()))
            .collect();
        assert!(refused(webhook(base.into(), many)).contains("headers"));
        let long_value = vec![("x-big".to_owned(), "v".repeat(MAX_HEADER_VALUE_BYTES + 1))];
        assert!(refused(webhook(base.into(), long_value)).contains("headers"));
        let nats = |subject: &str| serde_json::json!({"type": "nats", "subject": subject});
        assert!(refused(nats(&"a".repeat(MAX_SUBJECT_BYTES + 1))).contains("subject"));
        for control in ["sink.acme.\u{0}", "sink.acme.\u{1b}]0;x\u{7}"] {
            assert!(refused(nats(control)).contains("subject"), "{control:?}");
        }
        // At the bounds: accepted.
        let fits = (0..MAX_HEADERS)
            .map(|i| (format!("x-h{i}"), "v".repeat(64)))
            .collect();
        Route::from_json(webhook(base.into(), fits).to_string().as_bytes()).unwrap();
        Route::from_json(nats(&"a".repeat(MAX_SUBJECT_BYTES)).to_string().as_bytes()).unwrap();
    }

    #[test]
    fn parses_both_kinds_with_defaults() {
        let w = Route::from_json(br#"{"type":"webhook","url":"http://127.0.0.1:9/h","secret":"whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"}"#).unwrap();
        assert_eq!(w.timeout(), std::time::Duration::from_secs(10));
        assert_eq!(w.max_in_flight(), 16);
        let n =
            Route::from_json(br#"{"type":"nats","subject":"sink.acme","jetstream":true}"#).unwrap();
        assert!(matches!(
            n,
            Route::Nats(NatsRoute {
                jetstream: true,
                ..
            })
        ));
        assert_eq!(Route::from_json(&n.to_json()).unwrap(), n);
    }

    #[test]
    fn a_core_nats_route_needs_a_reply_unless_it_opts_out() {
        let core = Route::from_json(br#"{"type":"nats","subject":"svc.acme"}"#).unwrap();
        let Route::Nats(n) = &core else {
            panic!("{core:?}")
        };
        assert!(!n.jetstream && !n.fire_and_forget);
        // The default is not written out, so stored routes read back unchanged.
        assert_eq!(
            core.to_json(),
            br#"{"type":"nats","subject":"svc.acme","jetstream":false,"timeout_ms":10000,"max_in_flight":16}"#
        );
        let feed =
            Route::from_json(br#"{"type":"nats","subject":"feed.acme","fire_and_forget":true}"#)
                .unwrap();
        assert!(matches!(
            &feed,
            Route::Nats(NatsRoute {
                fire_and_forget: true,
                ..
            })
        ));
        assert_eq!(Route::from_json(&feed.to_json()).unwrap(), feed);
    }

    #[test]
    fn refuses_bad_routes_precisely() {
        let cases: [(&[u8], &str); 8] = [
            (br#"{"type":"ftp"}"#, "not valid JSON for a route"),
            (br#"{"type":"webhook","url":"ftp://x/y/z/w","secret":"whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"}"#, "route field url"),
            (br#"{"type":"webhook","url":"http://u:pw@[::1/h?token=T","secret":"whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"}"#, "is not a valid URL: invalid IPv6 address"),
            (br#"{"type":"webhook","url":"http://127.0.0.1:99999/h","secret":"whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"}"#, "is not a valid URL: invalid port number"),
            (br#"{"type":"webhook","url":"http://127.0.0.1:9/h","secret":"whsec_!!"}"#, "route field secret"),
            (br#"{"type":"nats","subject":"sink.*"}"#, "route field subject"),
            (br#"{"type":"nats","subject":"a","timeout_ms":0}"#, "route field timeout_ms"),
            (br#"{"type":"nats","subject":"a","jetstream":true,"fire_and_forget":true}"#, "route field fire_and_forget"),
        ];
        for (json, expected) in cases {
            let err = Route::from_json(json).unwrap_err().to_string();
            assert!(err.contains(expected), "{err}");
        }
    }

    #[test]
    fn a_secret_without_the_whsec_prefix_is_refused() {
        // Valid base64 of 24 bytes, but not a Standard Webhooks secret.
        let err = Route::from_json(br#"{"type":"webhook","url":"http://127.0.0.1:9/h","secret":"MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"}"#)
            .unwrap_err()
            .to_string();
        assert!(err.contains("route field secret"), "{err}");
        assert!(err.contains("does not start with whsec_"), "{err}");
        assert!(!err.contains("MfKQ"), "{err}");
        let short = Route::from_json(
            br#"{"type":"webhook","url":"http://127.0.0.1:9/h","secret":"whsec_YWJj"}"#,
        )
        .unwrap_err()
        .to_string();
        assert!(short.contains("shorter than 16 bytes"), "{short}");
    }

    #[test]
    fn urls_are_shown_as_scheme_host_and_port_only() {
        let cases = [
            ("http://u:pw@host/h?token=T", "http://host"),
            (
                "https://hooks.example.com:8443/services/T0/B0/XXXX",
                "https://hooks.example.com:8443",
            ),
            (
                "https://user@hooks.example.com?token=T#frag",
                "https://hooks.example.com",
            ),
            ("http://a:b@c@host:81\\@evil/p", "http://host:81"),
            ("http://[::1]:9/h", "http://[::1]:9"),
            ("u:pw@host/path?x", "host"),
            ("https://hooks.example.com", "https://hooks.example.com"),
        ];
        for (url, shown) in cases {
            assert_eq!(redact_url(url), shown, "{url}");
        }
    }

    #[test]
    fn credentials_in_a_route_url_are_never_shown() {
        let w = Route::from_json(br#"{"type":"webhook","url":"http://u:pw@127.0.0.1:9/h?token=T0KEN","secret":"whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"}"#).unwrap();
        let shown = String::from_utf8(w.redacted().to_json()).unwrap();
        assert!(shown.contains(r#""url":"http://127.0.0.1:9""#), "{shown}");
        assert_eq!(w.describe(), ("webhook", "http://127.0.0.1:9".to_owned()));
        let debug = format!("{w:?}");
        for secret in ["pw", "T0KEN", "/h"] {
            assert!(!shown.contains(secret), "{shown}");
            assert!(!debug.contains(secret), "{debug}");
        }
        // An invalid URL is named without its credentials too.
        let err = Route::from_json(br#"{"type":"webhook","url":"ftp://u:pw@x/y?token=T0KEN","secret":"whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"}"#)
            .unwrap_err()
            .to_string();
        assert!(err.contains("\"ftp://x\""), "{err}");
        assert!(!err.contains("pw") && !err.contains("T0KEN"), "{err}");
    }

    #[test]
    fn credential_headers_are_hidden_and_control_characters_refused() {
        let w = Route::from_json(br#"{"type":"webhook","url":"http://127.0.0.1:9/h","secret":"whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw","headers":{"Authorization":"Bearer sk_live_X","X-Api-Key":"k1","X-Env":"prod"}}"#).unwrap();
        let shown = serde_json::to_string(&w.redacted()).unwrap();
        assert!(
            !shown.contains("sk_live_X") && !shown.contains("k1"),
            "{shown}"
        );
        assert!(shown.contains(r#""X-Env":"prod""#), "{shown}");
        let bell = Route::from_json(
            "{\"type\":\"webhook\",\"url\":\"http://127.0.0.1:9/h\",\"secret\":\"whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw\",\"headers\":{\"X-Env\":\"a\\u0007b\"}}".as_bytes(),
        );
        assert!(bell.is_err(), "{bell:?}");
    }

    #[test]
    fn sealed_secrets_pass_validation_by_form_and_show_their_key_id_only() {
        let sealed = "enc:v1:d1:AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA";
        let json = format!(
            r#"{{"type":"webhook","url":"http://127.0.0.1:9/h","secret":"{sealed}",
                "signing_key":"{sealed}",
                "previous_secrets":[{{"secret":"{sealed}","expires_at":"2030-01-01T00:00:00Z"}}]}}"#
        );
        let route = Route::from_json(json.as_bytes()).unwrap();
        let Route::Webhook(w) = &route else {
            panic!("{route:?}")
        };
        assert!(w.secret.is_sealed() && w.signing_key.as_ref().unwrap().is_sealed());
        let err = w.secret.key().unwrap_err().to_string();
        assert!(err.contains("sealed under data key d1"), "{err}");
        assert!(w.signing_keys(time::OffsetDateTime::now_utc()).is_err());
        let shown = String::from_utf8(route.redacted().to_json()).unwrap();
        assert!(!shown.contains("AAAA"), "{shown}");
        assert_eq!(shown.matches("enc:v1:d1:***").count(), 3, "{shown}");
        for bad in [
            "enc:v1:",
            "enc:v1:d1",
            "enc:v1::AAAA",
            "enc:v1:d1:",
            "enc:v1:d1:AA AA",
        ] {
            let json =
                format!(r#"{{"type":"webhook","url":"http://127.0.0.1:9/h","secret":"{bad}"}}"#);
            let err = Route::from_json(json.as_bytes()).unwrap_err().to_string();
            assert!(err.contains("route field secret"), "{bad}: {err}");
        }
    }

    #[test]
    fn redaction_hides_the_secret() {
        let w = Route::from_json(br#"{"type":"webhook","url":"http://127.0.0.1:9/h","secret":"whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"}"#).unwrap();
        let shown = String::from_utf8(w.redacted().to_json()).unwrap();
        assert!(!shown.contains("MfKQ"), "{shown}");
        assert!(!format!("{w:?}").contains("MfKQ"));
    }

    #[test]
    fn a_tenant_may_target_its_own_sink_subjects_and_public_hosts_only() {
        let nats = |subject: &str| {
            Route::Nats(NatsRoute {
                subject: subject.into(),
                jetstream: false,
                fire_and_forget: false,
                timeout_ms: 1000,
                max_in_flight: 1,
            })
        };
        assert!(nats("sink.acme.orders").check_tenant_scope("acme").is_ok());
        for other in [
            "sink.globex.orders",
            "sink.acme",
            "sink.acme-eu.x",
            "ingress.v1.acme.a.b",
            "sink.acme.",
        ] {
            assert!(nats(other).check_tenant_scope("acme").is_err(), "{other}");
        }
        let hook = |url: &str| {
            Route::Webhook(WebhookRoute {
                url: url.into(),
                secret: WebhookSecret("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw".into()),
                timeout_ms: 1000,
                max_in_flight: 1,
                headers: BTreeMap::new(),
                previous_secrets: Vec::new(),
                signing_key: None,
            })
        };
        for public in [
            "https://hooks.example.com/in",
            "http://203.0.113.7:8080/x",
            "https://[2001:db8::1]/x",
        ] {
            assert!(hook(public).check_tenant_scope("acme").is_ok(), "{public}");
        }
        for internal in [
            "http://127.0.0.1:9105/v1/status",
            "http://localhost/x",
            "http://api.localhost/x",
            "http://10.0.0.5/x",
            "http://172.16.0.1/x",
            "http://192.168.1.1/x",
            "http://169.254.169.254/latest/meta-data",
            "http://100.64.0.1/x",
            "http://0.0.0.0/x",
            "http://[::1]/x",
            "http://[fd00::1]/x",
            "http://[fe80::1]/x",
            "http://[::ffff:127.0.0.1]/x",
            "http://2130706433/x",
            "https://nats:8222/",
            "https://kubernetes.default.svc/",
            "https://api.default.svc.cluster.local/",
            "https://metadata.google.internal/",
            "https://printer.local/",
            "https://router.home.arpa/",
            "https://NATS./x",
            "http://0.1.2.3/x",
            "http://192.0.0.8/x",
            "http://198.18.0.1/x",
            "http://240.0.0.1/x",
            "http://[::127.0.0.1]/x",
            "http://[64:ff9b::7f00:1]/x",
            "http://[2002:7f00:1::]/x",
        ] {
            let error = hook(internal)
                .check_tenant_scope("acme")
                .unwrap_err()
                .to_string();
            assert!(error.contains("url"), "{internal}: {error}");
        }
    }
}
