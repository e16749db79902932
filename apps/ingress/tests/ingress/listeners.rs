//! Ingress's two listeners and the public one's bounds: probes and metrics answer only on the
//! probe listener and the producer API only on the public one; a producer that is too slow
//! (headers, body) or a request ingress cannot answer in time gets a bounded answer; requests
//! beyond `http.max_concurrent_requests` are refused at once; unworkable settings refuse to
//! start, naming the key.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use switchyard_fixtures::Provisioned;
use switchyard_ingress::{IngressConfig, config};
use switchyard_runtime::ConfigSource;
use switchyard_testkit::wait_for;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;

use super::{Harness, reqwest_client};

/// How long a test waits for an answer that must come: far beyond any deadline under test, so
/// only a hang fails it.
const ANSWER_WITHIN: Duration = Duration::from_secs(15);

/// Ingress with `http.request_timeout_ms` and `http.max_concurrent_requests` set.
async fn bounded(request_timeout_ms: u64, max_concurrent_requests: usize) -> Harness {
    Harness::launch_with(Harness::prepare().await, |config| {
        config.http.request_timeout_ms = request_timeout_ms;
        config.http.max_concurrent_requests = max_concurrent_requests;
        // NATS requests cut short too, so a drain after a NATS restart is quick.
        config.nats.request_timeout_secs = 2;
    })
    .await
}

/// The head of `POST /v1/messages/acme/ops/slack` announcing `length` body bytes.
fn post_head(key: &str, id: &str, length: usize) -> String {
    format!(
        "POST /v1/messages/acme/ops/slack HTTP/1.1\r\nHost: ingress\r\nAuthorization: Bearer \
         {key}\r\nIdempotency-Key: {id}\r\nContent-Type: text/plain\r\nContent-Length: \
         {length}\r\n\r\n"
    )
}

/// A connection to `addr` that has sent `bytes` and is left open.
async fn sent(addr: SocketAddr, bytes: &[u8]) -> TcpStream {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    stream.write_all(bytes).await.unwrap();
    stream
}

/// Everything the server sends until it closes the connection; panics if it has not closed
/// it within [`ANSWER_WITHIN`].
async fn until_closed(stream: &mut TcpStream) -> String {
    let mut out = Vec::new();
    tokio::time::timeout(ANSWER_WITHIN, stream.read_to_end(&mut out))
        .await
        .expect("the server answers and closes the connection")
        .unwrap();
    String::from_utf8(out).unwrap()
}

/// The JSON body of a raw HTTP/1.1 response.
fn json_body(response: &str) -> serde_json::Value {
    let (_, body) = response
        .split_once("\r\n\r\n")
        .expect("a complete response");
    serde_json::from_str(body).unwrap_or_else(|e| panic!("{e}: {response}"))
}

#[tokio::test]
async fn probes_answer_only_on_the_probe_listener_and_the_api_only_on_the_public_one() {
    let h = Harness::start(1024).await;
    let running = h.service.running();
    assert_ne!(running.http_addr, running.probes_addr);
    let http = reqwest_client();

    for path in ["/healthz", "/readyz", "/metrics"] {
        let probe = http
            .get(format!("{}{path}", h.probes()))
            .send()
            .await
            .unwrap();
        assert_eq!(probe.status(), 200, "{path} on the probe listener");
        let public = http
            .get(format!("{}{path}", h.http()))
            .send()
            .await
            .unwrap();
        assert_eq!(public.status(), 404, "{path} on the public listener");
    }

    let post = |base: String, id: &str| {
        http.post(format!("{base}/v1/messages/acme/ops/slack"))
            .bearer_auth(h.key("acme"))
            .header("Idempotency-Key", id)
            .body("hello")
            .send()
    };
    assert_eq!(post(h.probes(), "probe-1").await.unwrap().status(), 404);
    assert_eq!(post(h.http(), "public-1").await.unwrap().status(), 202);
    h.stop().await;
}

#[tokio::test]
async fn a_body_that_never_finishes_is_answered_408_within_the_request_timeout() {
    let h = bounded(500, 64).await;
    let addr = h.service.running().http_addr;

    let started = Instant::now();
    let head = post_head(h.key("acme"), "slow-body", 100);
    let mut slow = sent(addr, format!("{head}only ten b").as_bytes()).await;
    let response = until_closed(&mut slow).await;
    assert!(
        started.elapsed() >= Duration::from_millis(500),
        "{:?}",
        started.elapsed()
    );
    assert!(response.starts_with("HTTP/1.1 408 "), "{response}");
    assert!(
        response
            .to_ascii_lowercase()
            .contains("connection: close\r\n"),
        "{response}"
    );
    let body = json_body(&response);
    assert_eq!(body["code"], "request_timeout", "{body}");
    assert!(
        body["error"]
            .as_str()
            .unwrap()
            .contains("http.request_timeout_ms")
    );
    assert_eq!(
        h.metric("switchyard_ingress_http_requests_refused_total{reason=\"request_timeout\"}")
            .await
            .as_deref(),
        Some("1")
    );

    // The listener still serves the producers that keep up.
    let ok = reqwest_client()
        .post(format!("{}/v1/messages/acme/ops/slack", h.http()))
        .bearer_auth(h.key("acme"))
        .header("Idempotency-Key", "quick")
        .body("hello")
        .send()
        .await
        .unwrap();
    assert_eq!(ok.status(), 202);
    h.stop().await;
}

#[tokio::test]
async fn headers_that_never_finish_close_the_connection_within_the_request_timeout() {
    let h = bounded(500, 64).await;
    let addr = h.service.running().http_addr;

    let started = Instant::now();
    let mut slow = sent(
        addr,
        b"POST /v1/messages/acme/ops/slack HTTP/1.1\r\nHost: ingress\r\nIdempot",
    )
    .await;
    let response = until_closed(&mut slow).await;
    assert!(
        started.elapsed() >= Duration::from_millis(500),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(
        response, "",
        "a request without complete headers gets no answer"
    );
    // A connection that never says anything is closed the same way.
    let mut silent = sent(addr, b"").await;
    assert_eq!(until_closed(&mut silent).await, "");
    h.stop().await;
}

#[tokio::test]
async fn an_answer_ingress_cannot_give_in_time_is_503_timeout_with_retry_after() {
    let mut h = bounded(500, 64).await;
    // Without NATS, the publish waits for an ack that cannot come before the deadline.
    h._server.kill();
    let response = reqwest_client()
        .post(format!("{}/v1/messages/acme/ops/slack", h.http()))
        .bearer_auth(h.key("acme"))
        .header("Idempotency-Key", "no-nats")
        .body("hello")
        .timeout(ANSWER_WITHIN)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 503);
    assert_eq!(response.headers()["retry-after"], "1");
    let body: serde_json::Value = response.json().await.unwrap();
    assert_eq!(body["code"], "timeout", "{body}");
    assert!(body["error"].as_str().unwrap().contains("Idempotency-Key"));
    h._server.start_again().await;
    h.stop().await;
}

#[tokio::test]
async fn one_request_beyond_max_concurrent_requests_is_refused_503_at_once() {
    // A long deadline: the held requests stay held for the whole test.
    let h = bounded(60_000, 2).await;
    let addr = h.service.running().http_addr;
    let in_flight = "switchyard_ingress_http_requests_in_flight";

    // Two requests whose bodies never finish hold both slots.
    let mut held = Vec::new();
    for i in 0..2 {
        let head = post_head(h.key("acme"), &format!("held-{i}"), 100);
        held.push(sent(addr, format!("{head}partial").as_bytes()).await);
    }
    wait_for("both slots held", ANSWER_WITHIN, || async {
        (h.metric(in_flight).await.as_deref() == Some("2")).then_some(())
    })
    .await;

    let refused = reqwest_client()
        .post(format!("{}/v1/messages/acme/ops/slack", h.http()))
        .bearer_auth(h.key("acme"))
        .header("Idempotency-Key", "third")
        .body("hello")
        .timeout(ANSWER_WITHIN)
        .send()
        .await
        .expect("answered while both slots are still held: not queued");
    assert_eq!(refused.status(), 503);
    assert_eq!(refused.headers()["retry-after"], "1");
    let body: serde_json::Value = refused.json().await.unwrap();
    assert_eq!(body["code"], "overloaded", "{body}");
    assert!(
        body["error"]
            .as_str()
            .unwrap()
            .contains("http.max_concurrent_requests")
    );
    assert_eq!(
        h.metric("switchyard_ingress_http_requests_refused_total{reason=\"overloaded\"}")
            .await
            .as_deref(),
        Some("1")
    );
    assert_eq!(h.metric(in_flight).await.as_deref(), Some("2"));

    // Producers that hang up give their slots back.
    drop(held);
    wait_for("the slots given back", ANSWER_WITHIN, || async {
        (h.metric(in_flight).await.as_deref() == Some("0")).then_some(())
    })
    .await;
    let accepted = reqwest_client()
        .post(format!("{}/v1/messages/acme/ops/slack", h.http()))
        .bearer_auth(h.key("acme"))
        .header("Idempotency-Key", "after")
        .body("hello")
        .send()
        .await
        .unwrap();
    assert_eq!(accepted.status(), 202);
    h.stop().await;
}

#[tokio::test]
async fn unworkable_http_settings_refuse_to_start_naming_the_key() {
    let Provisioned { server, client, .. } = Provisioned::start().await;
    let defaults = || {
        let mut config: IngressConfig = switchyard_runtime::load(&ConfigSource::new(
            config::DEFAULTS,
            "SWITCHYARD_INGRESS_TEST_UNUSED_",
        ))
        .unwrap();
        config.nats.url = server.url();
        config.http.listen = "127.0.0.1:0".parse().unwrap();
        config
    };
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let taken_addr = taken.local_addr().unwrap();
    type Change = Box<dyn FnOnce(&mut IngressConfig)>;
    let cases: Vec<(&str, Change)> = vec![
        (
            "invalid setting http.request_timeout_ms: 0 is outside [10, 600000]",
            Box::new(|c| c.http.request_timeout_ms = 0),
        ),
        (
            "invalid setting http.max_concurrent_requests: 0 is outside [1, 65536]",
            Box::new(|c| c.http.max_concurrent_requests = 0),
        ),
        (
            "invalid setting http.probes_listen: 127.0.0.1:19101 takes the producer API's port",
            Box::new(|c| {
                c.http.listen = "127.0.0.1:19101".parse().unwrap();
                c.http.probes_listen = Some("127.0.0.1:19101".parse().unwrap());
            }),
        ),
        (
            "invalid setting http.probes_listen: 0.0.0.0:9111 takes the producer API's port",
            Box::new(|c| c.http.listen = "0.0.0.0:9111".parse().unwrap()),
        ),
    ];
    for (expected, change) in cases {
        let mut config = defaults();
        change(&mut config);
        let Err(error) =
            switchyard_ingress::start(config, client.clone(), CancellationToken::new()).await
        else {
            panic!("ingress started despite: {expected}");
        };
        let text = format!("{error:#}");
        assert!(text.contains(expected), "{text}");
    }

    // A probe port already taken stops the start too, naming the address.
    let mut config = defaults();
    config.http.probes_listen = Some(taken_addr);
    let Err(error) =
        switchyard_ingress::start(config, client.clone(), CancellationToken::new()).await
    else {
        panic!("ingress started on a taken probe port");
    };
    let text = format!("{error:#}");
    assert!(text.contains(&format!("binding {taken_addr}")), "{text}");
}
