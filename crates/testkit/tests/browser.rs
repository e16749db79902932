//! The browser harness: a page that changes after load is waited on, a form is filled and
//! submitted, and a screenshot is written as PNG.

use std::net::SocketAddr;
use std::time::Duration;

use fantoccini::Locator;
use switchyard_testkit::Browser;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

/// A page whose `#live` text changes 300 ms after load, and whose button greets the name typed
/// into the input.
const PAGE: &str = r#"<!doctype html>
<html>
<head><meta charset="utf-8"><title>testkit browser</title></head>
<body>
<p id="live">loading</p>
<input id="name" type="text">
<button id="greet" type="button">Greet</button>
<p id="greeting"></p>
<script>
setTimeout(() => { document.getElementById("live").textContent = "ready"; }, 300);
document.getElementById("greet").addEventListener("click", () => {
  document.getElementById("greeting").textContent =
    "hello, " + document.getElementById("name").value;
});
</script>
</body>
</html>
"#;

/// Serves [`PAGE`] at `/` (and 404 elsewhere) on a free loopback port until the test ends.
async fn serve_page() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((mut stream, _)) = listener.accept().await else {
                return;
            };
            tokio::spawn(async move {
                let mut request = Vec::new();
                let mut buf = [0u8; 1024];
                while !request.windows(4).any(|w| w == b"\r\n\r\n") {
                    match stream.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => request.extend_from_slice(&buf[..n]),
                    }
                }
                let response = if request.starts_with(b"GET / ") {
                    format!(
                        "HTTP/1.1 200 OK\r\nContent-Type: text/html; charset=utf-8\r\n\
                         Content-Length: {}\r\nConnection: close\r\n\r\n{PAGE}",
                        PAGE.len()
                    )
                } else {
                    "HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
                        .to_owned()
                };
                let _ = stream.write_all(response.as_bytes()).await;
                let _ = stream.shutdown().await;
            });
        }
    });
    addr
}

#[tokio::test]
async fn browser_waits_for_page_text_fills_a_form_and_takes_a_png_screenshot() {
    let addr = serve_page().await;
    let browser = Browser::start().await;
    browser.goto(&format!("http://{addr}/")).await;

    browser
        .wait_for_text("#live", "ready", Duration::from_secs(10))
        .await;

    let client = browser.client();
    client
        .find(Locator::Css("#name"))
        .await
        .unwrap()
        .send_keys("switchyard")
        .await
        .unwrap();
    client
        .find(Locator::Css("#greet"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    browser
        .wait_for_text("#greeting", "hello, switchyard", Duration::from_secs(10))
        .await;

    let shots = tempfile::tempdir().unwrap();
    let path = shots.path().join("nested/page.png");
    browser.screenshot(&path).await;
    let png = std::fs::read(&path).unwrap();
    assert!(
        png.starts_with(b"\x89PNG\r\n\x1a\n"),
        "not a PNG: {:?}",
        &png[..png.len().min(16)]
    );

    browser.close().await;
}

#[tokio::test]
#[should_panic(expected = "waiting for \"#live\" to contain \"never\"")]
async fn browser_wait_for_text_names_the_url_and_what_the_page_says_on_timeout() {
    let addr = serve_page().await;
    let browser = Browser::start().await;
    browser.goto(&format!("http://{addr}/")).await;
    browser
        .wait_for_text("#live", "never", Duration::from_millis(500))
        .await;
}
