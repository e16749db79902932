//! `nats::connect` and `nats::jetstream` against real nats-server processes.

use std::time::Duration;

use async_nats::ConnectErrorKind;
use switchyard_runtime::config::NatsConfig;
use switchyard_runtime::nats::{self, ConnectError};
use switchyard_testkit::{NatsServer, free_port};

const TOKEN: &str = "s3cret-token";
/// Guards against a hang; not a speed assertion.
const NO_HANG: Duration = Duration::from_secs(30);

fn config(url: String) -> NatsConfig {
    NatsConfig {
        url,
        token: Some(TOKEN.to_owned()),
        name: Some("runtime-test".to_owned()),
        ..NatsConfig::default()
    }
}

async fn connect(config: &NatsConfig) -> Result<async_nats::Client, ConnectError> {
    tokio::time::timeout(NO_HANG, nats::connect(config))
        .await
        .expect("connect must not hang")
}

#[tokio::test]
async fn connects_with_token_and_reaches_jetstream() {
    let server = NatsServer::start_with_args(&["--auth", TOKEN]).await;
    let config = config(server.url());
    let client = connect(&config).await.expect("connect");
    let js = nats::jetstream(client, &config);
    js.query_account().await.expect("jetstream account info");
}

#[tokio::test]
async fn url_list_falls_over_to_a_reachable_server() {
    let server = NatsServer::start_with_args(&["--auth", TOKEN]).await;
    let dead = format!("nats://127.0.0.1:{}", free_port());
    let config = config(format!("{dead}, {}", server.url()));
    let client = connect(&config).await.expect("connect via the live url");
    client.flush().await.expect("flush");
}

#[tokio::test]
async fn unreachable_server_is_reported_with_url_and_hint() {
    let url = format!("nats://127.0.0.1:{}", free_port());
    let err = connect(&config(url.clone()))
        .await
        .expect_err("nothing listens there");
    let message = err.to_string();
    assert!(message.contains(&url), "{message}");
    assert!(
        message.contains("is nats-server running? (make run starts one)"),
        "{message}"
    );
}

#[tokio::test]
async fn wrong_token_is_reported_as_an_auth_failure() {
    let server = NatsServer::start_with_args(&["--auth", TOKEN]).await;
    let config = NatsConfig {
        token: Some("wrong".to_owned()),
        ..config(server.url())
    };
    let err = connect(&config).await.expect_err("the token is wrong");
    assert!(
        matches!(
            err.connect_kind(),
            Some(ConnectErrorKind::AuthorizationViolation | ConnectErrorKind::Authentication)
        ),
        "{err:?}"
    );
    let message = err.to_string();
    assert!(message.contains(&server.url()), "{message}");
    assert!(message.contains("nats.token"), "{message}");
}

#[tokio::test]
async fn half_a_client_certificate_is_rejected() {
    let config = NatsConfig {
        tls_cert_file: Some("client.pem".into()),
        ..NatsConfig::default()
    };
    let err = connect(&config).await.expect_err("the key is missing");
    assert!(
        matches!(err, ConnectError::IncompleteClientCertificate),
        "{err}"
    );
}

#[tokio::test]
async fn missing_credentials_file_is_named() {
    let config = NatsConfig {
        creds_file: Some("/nonexistent/app.creds".into()),
        ..NatsConfig::default()
    };
    let err = connect(&config).await.expect_err("the file does not exist");
    assert!(err.to_string().contains("/nonexistent/app.creds"), "{err}");
}

#[tokio::test]
async fn empty_url_is_rejected() {
    let err = connect(&config(" , ".to_owned()))
        .await
        .expect_err("no url");
    assert!(matches!(err, ConnectError::NoUrl), "{err}");
}
