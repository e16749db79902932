use proptest::prelude::*;
use time::macros::datetime;

use super::*;

fn sample() -> Envelope {
    let source = SourceRef {
        stream: "INGRESS".into(),
        sequence: 42,
    };
    let received_at = datetime!(2026-11-23 10:00:00.123 UTC);
    Envelope {
        id: EnvelopeId::derive(&source, received_at),
        address: Address::parse("acme", "ops", "slack").unwrap(),
        msg_id: MsgId::new("order 42 ✓").unwrap(),
        received_at,
        content_type: Some("application/json".into()),
        trace: TraceContext {
            traceparent: Some("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01".into()),
            tracestate: None,
        },
        schema_version: crate::SCHEMA_VERSION,
        attempt: Attempt {
            delivery: 2,
            replay: 1,
        },
        source,
        destination: None,
    }
}

#[test]
fn headers_round_trip() {
    let envelope = sample();
    let mut h = HeaderMap::new();
    envelope.write_headers(&mut h);
    assert_eq!(Envelope::from_headers(Some(&h)).unwrap(), envelope);
}

#[test]
fn ids_are_deterministic_uuid_v7() {
    let a = sample();
    let b = sample();
    assert_eq!(a.id, b.id);
    assert_eq!(a.id.0.get_version_num(), 7);
    let other = EnvelopeId::derive(
        &SourceRef {
            stream: "INGRESS".into(),
            sequence: 43,
        },
        a.received_at,
    );
    assert_ne!(a.id, other);
    let (secs, _) = a.id.0.get_timestamp().unwrap().to_unix();
    assert_eq!(i64::try_from(secs).unwrap(), a.received_at.unix_timestamp());
}

#[test]
fn hop_ids_differ_per_stage_and_replay() {
    let mut envelope = sample();
    let egress = envelope.hop_msg_id(Stage::Egress);
    assert_ne!(egress, envelope.hop_msg_id(Stage::Idempotency));
    envelope.attempt.replay += 1;
    assert_ne!(egress, envelope.hop_msg_id(Stage::Egress));
}

#[test]
fn missing_and_malformed_headers_are_named() {
    let envelope = sample();
    let mut h = HeaderMap::new();
    envelope.write_headers(&mut h);

    let mut missing = h.clone();
    missing.insert(headers::TEAM, "");
    let err = Envelope::from_headers(Some(&missing))
        .unwrap_err()
        .to_string();
    assert!(
        err.starts_with("header Switchyard-Team has an invalid value"),
        "{err}"
    );

    let mut bad_time = h.clone();
    bad_time.insert(headers::RECEIVED_AT, "yesterday");
    let err = Envelope::from_headers(Some(&bad_time))
        .unwrap_err()
        .to_string();
    assert!(
        err.starts_with("header Switchyard-Received-At has an invalid value \"yesterday\""),
        "{err}"
    );

    let mut future = h.clone();
    future.insert(headers::SCHEMA, "9");
    let err = Envelope::from_headers(Some(&future)).unwrap_err();
    assert_eq!(
        err,
        EnvelopeError::UnsupportedSchema(crate::UnsupportedSchema { found: 9 })
    );
    assert_eq!(
        err.to_string(),
        "envelope schema version 9 is not one this build reads (it reads versions 1..=2)"
    );
    let mut ancient = h.clone();
    ancient.insert(headers::SCHEMA, "0");
    assert!(matches!(
        Envelope::from_headers(Some(&ancient)),
        Err(EnvelopeError::UnsupportedSchema(_))
    ));
    for readable in ["1", "2"] {
        let mut ok = h.clone();
        ok.insert(headers::SCHEMA, readable);
        assert!(Envelope::from_headers(Some(&ok)).is_ok(), "{readable}");
    }

    assert_eq!(
        Envelope::from_headers(None).unwrap_err(),
        EnvelopeError::MissingHeader(headers::SCHEMA)
    );
}

#[test]
fn json_view_shape() {
    let envelope = sample();
    let view = serde_json::to_value(envelope.view(b"{\"a\":1}")).unwrap();
    assert_eq!(view["envelope"]["tenant"], "acme");
    assert_eq!(view["envelope"]["msg_id"], "order 42 ✓");
    assert_eq!(view["envelope"]["received_at"], "2026-11-23T10:00:00.123Z");
    assert_eq!(view["payload"]["encoding"], "utf8");
    assert_eq!(view["payload"]["data"], "{\"a\":1}");
    let back: Envelope = serde_json::from_value(view["envelope"].clone()).unwrap();
    assert_eq!(back, envelope);
}

proptest! {
    #[test]
    fn payload_view_is_lossless(payload in proptest::collection::vec(any::<u8>(), 0..512)) {
        prop_assert_eq!(PayloadView::of(&payload).decode().unwrap(), payload);
    }

    #[test]
    fn any_msg_id_survives_headers(msg_id in "[^\\s\\p{Cc}]([^\\p{Cc}]{0,298}[^\\s\\p{Cc}])?") {
        let mut envelope = sample();
        envelope.msg_id = MsgId::new(msg_id).unwrap();
        let mut h = HeaderMap::new();
        envelope.write_headers(&mut h);
        prop_assert_eq!(Envelope::from_headers(Some(&h)).unwrap(), envelope);
    }
}

#[test]
fn a_fanned_out_copy_carries_its_destination_and_has_its_own_keys() {
    let original = sample();
    let mut copies = Vec::new();
    for raw in ["orders-hook", "audit", "_route"] {
        let mut copy = sample();
        copy.destination = Some(raw.parse().unwrap());
        let mut h = HeaderMap::new();
        copy.write_headers(&mut h);
        assert_eq!(h.get(headers::DESTINATION).unwrap().as_str(), raw);
        assert_eq!(Envelope::from_headers(Some(&h)).unwrap(), copy);
        copies.push(copy);
    }
    assert_eq!(copies[2].destination, Some(Destination::Route));
    let mut keys: Vec<String> = copies.iter().map(Envelope::copy_key).collect();
    keys.push(original.copy_key());
    assert_eq!(original.copy_key(), original.id.to_string());
    assert_eq!(keys[0], format!("{}_orders-hook", original.id));
    let mut hops: Vec<String> = copies
        .iter()
        .chain([&original])
        .map(|c| c.hop_msg_id(Stage::Egress))
        .collect();
    keys.sort();
    keys.dedup();
    hops.sort();
    hops.dedup();
    assert_eq!(
        (keys.len(), hops.len()),
        (4, 4),
        "every copy has its own keys"
    );
    for key in &keys {
        assert!(
            key.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'),
            "{key} is one subject token"
        );
    }
}

#[test]
fn an_invalid_destination_header_is_a_precise_envelope_error() {
    let mut h = HeaderMap::new();
    sample().write_headers(&mut h);
    for bad in ["Orders", "_other", "a.b", ""] {
        h.insert(headers::DESTINATION, bad);
        let error = Envelope::from_headers(Some(&h)).unwrap_err().to_string();
        assert!(error.contains(headers::DESTINATION), "{bad:?}: {error}");
    }
}
