//! Publishing over the raw NATS protocol, for input the Rust client cannot produce: header
//! blocks it cannot parse, subjects that are not UTF-8.

use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

/// Publishes `HPUB subject <header block> payload` on a fresh raw connection to the server on
/// `port` and waits for the server's `PONG`, so the server has processed the publish when this
/// returns. There is no reply subject, so no JetStream ack comes back: a stream capturing
/// `subject` has stored the message unless it refused it (check the stream if that matters).
///
/// `header_block` is sent as is (it should start `NATS/1.0\r\n` and end `\r\n\r\n`); panics if
/// the server does not answer `PONG`.
pub async fn publish_raw(port: u16, subject: &[u8], header_block: &[u8], payload: &[u8]) {
    let stream = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    let mut stream = BufReader::new(stream);
    let mut info = String::new();
    stream.read_line(&mut info).await.unwrap();
    assert!(info.starts_with("INFO "), "{info}");
    let mut out = Vec::new();
    out.extend_from_slice(b"CONNECT {\"verbose\":false,\"pedantic\":false,\"headers\":true}\r\n");
    out.extend_from_slice(b"HPUB ");
    out.extend_from_slice(subject);
    out.extend_from_slice(
        format!(
            " {} {}\r\n",
            header_block.len(),
            header_block.len() + payload.len()
        )
        .as_bytes(),
    );
    out.extend_from_slice(header_block);
    out.extend_from_slice(payload);
    out.extend_from_slice(b"\r\nPING\r\n");
    stream.get_mut().write_all(&out).await.unwrap();
    let mut line = String::new();
    stream.read_line(&mut line).await.unwrap();
    assert_eq!(line, "PONG\r\n", "the server refused the publish");
}
