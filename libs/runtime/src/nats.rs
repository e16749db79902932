//! NATS connection plumbing: [`ConnectOptions`] from a [`NatsConfig`], and a JetStream context.

use std::path::PathBuf;
use std::time::Duration;

use async_nats::{ConnectErrorKind, ConnectOptions, Event};

use crate::config::{InvalidSetting, NatsConfig};

/// Why a NATS connection could not be established.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    /// `nats.url` holds no URL at all.
    #[error("no nats server url configured (nats.url is empty)")]
    NoUrl,
    /// `nats.inbox_prefix` cannot prefix a reply subject.
    #[error("invalid setting nats.inbox_prefix {prefix:?}: {reason}")]
    InvalidInboxPrefix {
        /// The configured prefix.
        prefix: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// A timeout of 0 s: `nats.connect_timeout_secs` would race the connection, and
    /// `nats.request_timeout_secs` would fail every JetStream call.
    #[error(transparent)]
    InvalidSetting(#[from] InvalidSetting),
    /// Only one of `tls_cert_file` and `tls_key_file` is set.
    #[error("nats.tls_cert_file and nats.tls_key_file must be set together")]
    IncompleteClientCertificate,
    /// The credentials file could not be read or parsed.
    #[error("cannot load nats credentials file {}", path.display())]
    CredentialsFile {
        /// The configured `creds_file`.
        path: PathBuf,
        /// The underlying I/O or parse error.
        #[source]
        source: std::io::Error,
    },
    /// The server(s) could not be reached, or refused the connection.
    #[error("cannot connect to nats at {urls}; {hint}")]
    Connect {
        /// The configured URL list, comma-separated, with any user:password@ redacted.
        urls: String,
        /// What to check first, given the kind of failure.
        hint: &'static str,
        /// The client's error.
        #[source]
        source: async_nats::ConnectError,
    },
}

impl ConnectError {
    /// The client's error kind, when the failure happened while connecting.
    pub fn connect_kind(&self) -> Option<ConnectErrorKind> {
        match self {
            Self::Connect { source, .. } => Some(source.kind()),
            _ => None,
        }
    }
}

/// Connects to the server(s) in `config`, failing promptly if none is reachable.
///
/// The initial connection is not retried (so a missing server is reported at start-up);
/// once connected, the client reconnects on its own and logs connection events.
pub async fn connect(config: &NatsConfig) -> Result<async_nats::Client, ConnectError> {
    let urls = config.urls();
    if urls.is_empty() {
        return Err(ConnectError::NoUrl);
    }
    for (key, secs) in [
        ("connect_timeout_secs", config.connect_timeout_secs),
        ("request_timeout_secs", config.request_timeout_secs),
    ] {
        if secs == 0 {
            return Err(InvalidSetting {
                section: "nats",
                key,
                reason: "0 s leaves no time to answer; set at least 1 (the default is 5 or 10)"
                    .into(),
            }
            .into());
        }
    }
    let options = options(config).await?;
    options
        .connect(urls.as_slice())
        .await
        .map_err(|source| ConnectError::Connect {
            urls: urls
                .iter()
                .map(|url| redact(url))
                .collect::<Vec<_>>()
                .join(","),
            hint: hint(source.kind()),
            source,
        })
}

/// A JetStream context whose API calls time out after `config.request_timeout_secs`.
///
/// Call it inside a tokio runtime: the context spawns its ack task.
pub fn jetstream(
    client: async_nats::Client,
    config: &NatsConfig,
) -> async_nats::jetstream::Context {
    let mut context = async_nats::jetstream::new(client);
    context.set_timeout(Duration::from_secs(config.request_timeout_secs));
    context
}

/// Client options from `config`; empty strings count as unset.
async fn options(config: &NatsConfig) -> Result<ConnectOptions, ConnectError> {
    if let Some(reason) = config.inbox_prefix_problem() {
        return Err(ConnectError::InvalidInboxPrefix {
            prefix: config.inbox_prefix.clone(),
            reason,
        });
    }
    let mut options = ConnectOptions::new()
        // Replies (JetStream API, publish acks, pulled messages, KV watches) arrive under this
        // prefix: accounts.conf lets each service user subscribe to its own prefix only.
        .custom_inbox_prefix(&config.inbox_prefix)
        .connection_timeout(Duration::from_secs(config.connect_timeout_secs))
        .request_timeout(Some(Duration::from_secs(config.request_timeout_secs)))
        .require_tls(config.tls_required)
        .event_callback({
            // Whether this client lost its connection since it last connected.
            let dropped = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
            move |event| {
                let dropped = dropped.clone();
                async move { on_event(&event, &dropped) }
            }
        });
    // `retry_on_initial_connect` stays off (the default): unreachable servers fail `connect`.
    if let Some(path) = &config.creds_file {
        options = options.credentials_file(path).await.map_err(|source| {
            ConnectError::CredentialsFile {
                path: path.clone(),
                source,
            }
        })?;
    }
    if let (Some(user), Some(password)) = (non_empty(&config.user), non_empty(&config.password)) {
        options = options.user_and_password(user.to_owned(), password.to_owned());
    }
    if let Some(token) = non_empty(&config.token) {
        options = options.token(token.to_owned());
    }
    // Credentials in the URL (`nats://user:password@host`, `nats://token@host`), the NATS
    // convention, when none are configured otherwise: the client does not read them itself.
    let configured = config.creds_file.is_some()
        || non_empty(&config.user).is_some()
        || non_empty(&config.token).is_some();
    if !configured {
        match config.urls().first().and_then(|url| url_credentials(url)) {
            Some(UrlCredentials::UserPassword(user, password)) => {
                options = options.user_and_password(user, password);
            }
            Some(UrlCredentials::Token(token)) => options = options.token(token),
            None => {}
        }
    }
    if let Some(ca) = &config.tls_ca_file {
        options = options.add_root_certificates(ca.clone());
    }
    match (&config.tls_cert_file, &config.tls_key_file) {
        (Some(cert), Some(key)) => {
            options = options.add_client_certificate(cert.clone(), key.clone());
        }
        (None, None) => {}
        _ => return Err(ConnectError::IncompleteClientCertificate),
    }
    if let Some(name) = non_empty(&config.name) {
        options = options.name(name);
    }
    Ok(options)
}

/// What to check first for a failure of this kind.
fn hint(kind: ConnectErrorKind) -> &'static str {
    match kind {
        ConnectErrorKind::Authentication | ConnectErrorKind::AuthorizationViolation => {
            "check nats.creds_file, nats.user/nats.password or nats.token"
        }
        ConnectErrorKind::Tls => "check nats.tls_* settings and the server's TLS configuration",
        ConnectErrorKind::ServerParse => "check nats.url",
        _ => "is nats-server running? (make run starts one)",
    }
}

/// Logs a connection event: routine ones at info, trouble at warn.
fn on_event(event: &Event, dropped: &std::sync::atomic::AtomicBool) {
    use std::sync::atomic::Ordering;
    match event {
        Event::Connected => {
            tracing::info!(%event, "nats connection event");
            if dropped.swap(false, Ordering::Relaxed) {
                reconnected().send_modify(|count| *count += 1);
            }
        }
        Event::Disconnected => {
            dropped.store(true, Ordering::Relaxed);
            tracing::warn!(%event, "nats connection event");
        }
        Event::Closed => tracing::info!(%event, "nats connection event"),
        _ => tracing::warn!(%event, "nats connection event"),
    }
}

/// Counts the reconnections (a connection again after one was lost; not first connections) of
/// every client [`connect`] made in this process.
fn reconnected() -> &'static tokio::sync::watch::Sender<u64> {
    static RECONNECTED: std::sync::OnceLock<tokio::sync::watch::Sender<u64>> =
        std::sync::OnceLock::new();
    RECONNECTED.get_or_init(|| tokio::sync::watch::Sender::new(0))
}

/// Changes each time a client of this process connects again after losing its connection. A
/// pull waiting when the connection dropped is lost if the server restarted (it keeps pull
/// requests in memory), and the client would wait out the pull's whole expiry (20 s for a
/// tenant's) for nothing: consume loops select on `changed()` to end such a pull at once and
/// pull again — finding, if so, that a consumer whose state was in memory is gone. Returned
/// marked seen.
pub fn reconnections() -> tokio::sync::watch::Receiver<u64> {
    let mut receiver = reconnected().subscribe();
    receiver.mark_unchanged();
    receiver
}

/// Credentials carried by a server URL's user information.
#[derive(Debug, PartialEq, Eq)]
enum UrlCredentials {
    /// `nats://user:password@host`.
    UserPassword(String, String),
    /// `nats://token@host`.
    Token(String),
}

/// The credentials in `raw`'s user information, percent-decoded; `None` without any.
fn url_credentials(raw: &str) -> Option<UrlCredentials> {
    let url = url::Url::parse(raw).ok()?;
    let decode = |text: &str| {
        percent_encoding::percent_decode_str(text)
            .decode_utf8_lossy()
            .into_owned()
    };
    let user = decode(url.username());
    match url.password() {
        Some(password) if !user.is_empty() => {
            Some(UrlCredentials::UserPassword(user, decode(password)))
        }
        None if !user.is_empty() => Some(UrlCredentials::Token(user)),
        _ => None,
    }
}

/// `url` with any `user:password@` replaced by `***@`, fit for logs and error messages.
fn redact(url: &str) -> String {
    let authority_start = url.find("://").map_or(0, |i| i + 3);
    let authority_end = url[authority_start..]
        .find('/')
        .map_or(url.len(), |i| authority_start + i);
    match url[authority_start..authority_end].rfind('@') {
        Some(at) => format!(
            "{}***{}",
            &url[..authority_start],
            &url[authority_start + at..]
        ),
        None => url.to_owned(),
    }
}

/// The string in `value`, unless it is missing or empty.
fn non_empty(value: &Option<String>) -> Option<&str> {
    value.as_deref().filter(|s| !s.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credentials_in_a_url_are_read_percent_decoded() {
        assert_eq!(
            url_credentials("nats://admin:p%40ss%3Aword@127.0.0.1:4222"),
            Some(UrlCredentials::UserPassword(
                "admin".into(),
                "p@ss:word".into()
            ))
        );
        assert_eq!(
            url_credentials("nats://s3cr3t-token@host:4222"),
            Some(UrlCredentials::Token("s3cr3t-token".into()))
        );
        assert_eq!(url_credentials("nats://127.0.0.1:4222"), None);
        assert_eq!(url_credentials("127.0.0.1:4222"), None);
    }

    #[test]
    fn credentials_in_urls_are_redacted() {
        assert_eq!(redact("nats://u:p@host:4222"), "nats://***@host:4222");
        assert_eq!(redact("tls://tok@host:4222/x@y"), "tls://***@host:4222/x@y");
        assert_eq!(redact("u:p@host:4222"), "***@host:4222");
        assert_eq!(redact("nats://127.0.0.1:4222"), "nats://127.0.0.1:4222");
    }

    #[test]
    fn unreachable_servers_get_the_make_run_hint() {
        assert_eq!(
            hint(ConnectErrorKind::Io),
            "is nats-server running? (make run starts one)"
        );
        assert!(hint(ConnectErrorKind::AuthorizationViolation).contains("nats.token"));
    }

    #[tokio::test]
    async fn an_unusable_inbox_prefix_or_a_zero_timeout_is_refused_before_connecting() {
        for prefix in [
            "",
            "_INBOX_a.",
            "._INBOX",
            "_INBOX..a",
            "_INBOX.*",
            "_INBOX_>",
            "a b",
        ] {
            let config = NatsConfig {
                inbox_prefix: prefix.to_owned(),
                ..NatsConfig::default()
            };
            let error = connect(&config).await.expect_err(prefix);
            assert!(
                matches!(error, ConnectError::InvalidInboxPrefix { .. }),
                "{prefix:?}: {error}"
            );
            assert!(error.to_string().contains("nats.inbox_prefix"), "{error}");
        }
        for zero in [
            NatsConfig {
                connect_timeout_secs: 0,
                ..NatsConfig::default()
            },
            NatsConfig {
                request_timeout_secs: 0,
                ..NatsConfig::default()
            },
        ] {
            let error = connect(&zero).await.expect_err("a zero timeout");
            assert!(
                error.to_string().starts_with("invalid setting nats.")
                    && error.to_string().contains("_timeout_secs"),
                "{error}"
            );
        }
        for prefix in ["_INBOX", "_INBOX_ingress", "staging._INBOX_egress"] {
            let config = NatsConfig {
                inbox_prefix: prefix.to_owned(),
                ..NatsConfig::default()
            };
            assert_eq!(config.inbox_prefix_problem(), None, "{prefix}");
        }
    }
}
