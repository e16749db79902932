//! Header blocks and subjects the Rust client cannot parse, published over raw NATS protocol:
//! nats-server stores them, ingress dead-letters them `invalid_header` with the raw block kept,
//! its connection never drops, and other tenants' messages flow on.

use std::sync::atomic::Ordering;

use switchyard_dlq::DlqCode;
use switchyard_testkit::publish_raw;

use super::{Harness, with_id};

/// Publishes another tenant's good message after the poison and checks it is the only one
/// handed on, once everything has settled.
async fn another_tenant_flows_on(h: &Harness) {
    h.publish("ingress.v1.globex.ops.slack", with_id("g-1"), b"fine")
        .await;
    h.settled().await;
    let forwarded = h.handed_on().await;
    assert_eq!(forwarded.len(), 1, "only globex's message is handed on");
    assert_eq!(&forwarded[0].payload[..], b"fine");
}

#[tokio::test]
async fn a_header_block_the_client_cannot_parse_is_dead_lettered_and_no_connection_drops() {
    let h = Harness::start(1024 * 1024).await;
    let port = h._server.port();
    let connects = h
        .ingress_client
        .statistics()
        .connects
        .load(Ordering::Relaxed);
    let poison: [(&str, &[u8]); 6] = [
        ("non-ascii-name", b"NATS/1.0\r\nX-\xc3\x9cnicode: 1\r\n\r\n"),
        (
            "no-colon",
            b"NATS/1.0\r\nNats-Msg-Id: p-2\r\njust text\r\n\r\n",
        ),
        ("not-utf8", b"NATS/1.0\r\nX-Bad: \xff\xfe\r\n\r\n"),
        ("empty-name", b"NATS/1.0\r\n: v\r\n\r\n"),
        // A carriage return inside a value (the client's header values may not hold one).
        ("lone-cr", b"NATS/1.0\r\nX-Cr: a\rb\r\n\r\n"),
        (
            "lone-cr-in-a-folded-value",
            b"NATS/1.0\r\nX-Fold: a\r\n \rb\r\n\r\n",
        ),
    ];
    for (i, (_, block)) in poison.iter().enumerate() {
        publish_raw(
            port,
            b"ingress.v1.acme.ops.slack",
            block,
            format!("p{i}").as_bytes(),
        )
        .await;
    }
    // A subject that is not UTF-8 (nats-server accepts any bytes in a token).
    publish_raw(
        port,
        b"ingress.v1.acme.ops.sl\xffck",
        b"NATS/1.0\r\nNats-Msg-Id: p-5\r\n\r\n",
        b"s5",
    )
    .await;
    // A subject holding a Unicode space (U+00A0), on a message with headers: the client splits
    // the control line on space and tab only, as nats-server does, so this is one subject.
    publish_raw(
        port,
        "ingress.v1.acme.ops.sl\u{a0}ck".as_bytes(),
        b"NATS/1.0\r\nNats-Msg-Id: p-6\r\n\r\n",
        b"s6",
    )
    .await;
    // Another tenant's message, after the poison, flows on.
    another_tenant_flows_on(&h).await;

    let dlq = h.dlq().await;
    assert_eq!(
        dlq.len(),
        poison.len() + 2,
        "every poison message is dead-lettered"
    );
    let mut unparsed = 0;
    for (i, (what, block)) in poison.iter().enumerate() {
        let entry = dlq
            .iter()
            .find(|e| e.payload[..] == *format!("p{i}").as_bytes())
            .unwrap_or_else(|| panic!("{what} dead-lettered"));
        assert_eq!(entry.record.code, DlqCode::InvalidHeader, "{what}");
        assert_eq!(
            entry.record.tenant.as_ref().map(|t| t.as_str()),
            Some("acme")
        );
        assert!(
            entry
                .record
                .reason
                .starts_with("the header block cannot be parsed"),
            "{what}: {}",
            entry.record.reason
        );
        // The raw block is kept, escaped, for the operator.
        let kept = entry
            .original_headers
            .get(async_nats::connection::UNPARSED_HEADERS)
            .unwrap_or_else(|| panic!("{what}: raw block kept"))
            .as_str()
            .to_owned();
        assert_eq!(kept, block.escape_ascii().to_string(), "{what}");
        unparsed += 1;
    }
    assert_eq!(unparsed, poison.len());
    for payload in [&b"s5"[..], &b"s6"[..]] {
        let odd_subject = dlq.iter().find(|e| e.payload[..] == *payload).unwrap();
        assert_eq!(odd_subject.record.code, DlqCode::InvalidSubject);
        assert_eq!(
            odd_subject.record.tenant.as_ref().map(|t| t.as_str()),
            Some("acme"),
            "read from acme's own stream, so acme's record"
        );
    }

    assert_eq!(
        h.ingress_client
            .statistics()
            .connects
            .load(Ordering::Relaxed),
        connects,
        "ingress's connection never dropped"
    );
    h.stop().await;
}

/// A producer's header block the stream accepts but which Switchyard's envelope headers push
/// over nats-server's 65,535-byte header limit (JetStream error 10097): no retry can carry it,
/// so it is dead-lettered at once — its record keeps no original header, so that it fits — and
/// it holds no slot another tenant's messages need.
#[tokio::test]
async fn a_header_block_too_large_to_carry_on_is_dead_lettered_at_once_without_its_headers() {
    let h = Harness::start(1024 * 1024).await;
    let port = h._server.port();
    let mut block = b"NATS/1.0\r\nNats-Msg-Id: big-1\r\nX-Pad: ".to_vec();
    block.resize(65_300 - 4, b'p');
    block.extend_from_slice(b"\r\n\r\n");
    publish_raw(port, b"ingress.v1.acme.ops.slack", &block, b"big").await;
    another_tenant_flows_on(&h).await;
    let dlq = h.dlq().await;
    assert_eq!(dlq.len(), 1, "the large block is dead-lettered, not lost");
    let entry = &dlq[0];
    assert_eq!(&entry.payload[..], b"big");
    assert_eq!(entry.record.code, DlqCode::PayloadTooLarge);
    assert_eq!(entry.record.attempts, 0, "{}", entry.record.reason);
    assert!(
        entry.record.reason.contains("header size exceeds"),
        "{}",
        entry.record.reason
    );
    assert!(
        entry.original_headers.is_empty(),
        "the original headers are dropped"
    );
    assert_eq!(entry.original_msg_id.as_deref(), Some("big-1"));
    h.stop().await;
}
