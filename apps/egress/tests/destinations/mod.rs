//! Destinations at egress: a destination's rate limit holds across replicas.

use std::time::Duration;

use bytes::Bytes;
use switchyard_keys::DestinationKey;
use switchyard_registry::{Destination, RateLimit, Store, Subscription};
use switchyard_testkit::wait_for;
use tokio::time::Instant;

use crate::support::{Harness, Sink, address, progress_acks, webhook};

/// A destination limited to `rate` with `burst`, and egress started.
async fn limited(sink: &Sink, rate: f64, burst: u32) -> Harness {
    let mut h = Harness::new().await;
    let store: Store<DestinationKey, Destination> =
        Store::new(h.js.get_key_value("destinations").await.unwrap());
    let key = DestinationKey {
        tenant: "acme".parse().unwrap(),
        destination: "crm".parse().unwrap(),
    };
    let destination = Destination {
        target: webhook(sink, "/crm"),
        subscription: Subscription::default(),
        description: None,
        disabled: None,
        rate_limit: Some(RateLimit {
            rate_per_sec: rate,
            burst,
        }),
    };
    store.put(&key, &destination).await.unwrap();
    h.start(|config| config.egress.concurrency = 64).await;
    h
}

#[tokio::test]
async fn after_a_quiet_period_a_destination_takes_its_burst_at_once_then_its_rate() {
    let sink = Sink::start().await;
    let h = limited(&sink, 1.0, 10).await;
    let started = Instant::now();
    for i in 0..12 {
        h.publish(
            &address("acme", "ops", "shop"),
            Bytes::from(format!("{{\"n\":{i}}}")),
            Some("application/json"),
        )
        .await;
    }
    wait_for("twelve deliveries", Duration::from_secs(30), || async {
        (sink.count("/crm") >= 12).then_some(())
    })
    .await;
    let mut times: Vec<Duration> = sink
        .requests("/crm")
        .iter()
        .map(|r| r.at.saturating_duration_since(started))
        .collect();
    times.sort();
    // The burst of ten goes at once; the next two wait for the rate (1/s).
    assert!(times[9] < Duration::from_secs(2), "{times:?}");
    assert!(times[11] >= Duration::from_millis(1500), "{times:?}");
    h.stop().await;
}

#[tokio::test]
async fn a_destination_limited_to_5_per_second_gets_at_most_that_across_three_replicas() {
    const RATE: f64 = 5.0;
    const MESSAGES: usize = 110;
    let sink = Sink::start().await;
    let mut h = limited(&sink, RATE, 1).await;
    h.start_replicas(2, |config| config.egress.concurrency = 64)
        .await;

    let started = Instant::now();
    for i in 0..MESSAGES {
        h.publish(
            &address("acme", "ops", "shop"),
            Bytes::from(format!("{{\"n\":{i}}}")),
            Some("application/json"),
        )
        .await;
    }
    wait_for(
        "every message delivered",
        Duration::from_secs(90),
        || async { (sink.count("/crm") >= MESSAGES).then_some(()) },
    )
    .await;
    let times: Vec<Duration> = sink
        .requests("/crm")
        .iter()
        .map(|r| r.at.saturating_duration_since(started))
        .collect();
    assert_eq!(times.len(), MESSAGES, "each message delivered once");
    // Every 10-second window (sliding, from each delivery): at most 5/s + 10 %.
    let mut worst = 0;
    for (i, start) in times.iter().enumerate() {
        let within = times[i..]
            .iter()
            .take_while(|t| **t < *start + Duration::from_secs(10))
            .count();
        worst = worst.max(within);
    }
    assert!(worst <= 55, "{worst} deliveries in one 10 s window");
    // And the limit is not a trickle: the whole run took about MESSAGES / RATE.
    let span = times.last().unwrap().saturating_sub(times[0]);
    assert!(
        span >= Duration::from_secs_f64((MESSAGES as f64 - 1.0) / RATE * 0.9),
        "{span:?}"
    );
    // A bound against a stalled limit (slots stranded by replicas that leased them and had
    // no message), loose enough for a loaded machine.
    assert!(
        span <= Duration::from_secs_f64(MESSAGES as f64 / RATE * 1.5),
        "{span:?}: the three replicas together delivered well under the limit"
    );
    eprintln!("{MESSAGES} deliveries over {span:?}; the busiest 10 s window held {worst}");
    h.stop().await;
}

#[tokio::test]
async fn a_fan_out_without_room_for_every_copy_stores_none_then_all_once_there_is_room() {
    let sink = Sink::start().await;
    let mut h = Harness::new().await;
    let store: Store<DestinationKey, Destination> =
        Store::new(h.js.get_key_value("destinations").await.unwrap());
    for id in ["one", "two"] {
        let key = DestinationKey {
            tenant: "acme".parse().unwrap(),
            destination: id.parse().unwrap(),
        };
        let destination = Destination {
            target: webhook(&sink, &format!("/{id}")),
            subscription: Subscription::default(),
            description: None,
            disabled: None,
            rate_limit: None,
        };
        store.put(&key, &destination).await.unwrap();
    }
    // EGRESS limited to 20 messages, 17 of them fillers no consumer reads: room under the
    // 90 % mark (18) for one copy, not for both, as egress read the fill when it started. (Its
    // next reading, 500 ms on, also counts the message itself, and leaves room for none; the
    // first handling comes well before it, so a fan-out that stored copies one by one would
    // store and deliver the first.)
    h.fill_egress(20, 17).await;
    let mut acks = h.client.subscribe("$JS.ACK.EGRESS.>").await.unwrap();
    h.start(|c| c.storage.max_fill_pct = 100.0).await;
    h.publish(
        &address("acme", "ops", "slack"),
        Bytes::from_static(b"both or none"),
        None,
    )
    .await;
    // The fan-out is held in place (a progress ack before each try): neither copy is stored,
    // so neither is delivered.
    progress_acks(&mut acks, 2).await;
    assert_eq!(
        (sink.count("/one"), sink.count("/two")),
        (0, 0),
        "no copy goes while another has no room"
    );
    h.remove_fillers().await;
    wait_for("both copies delivered", Duration::from_secs(30), || async {
        (sink.count("/one") == 1 && sink.count("/two") == 1).then_some(())
    })
    .await;
    h.stop().await;
}
