//! OFFSET_OUT_OF_RANGE follows `auto_offset_reset`, on the test cluster: a group whose committed
//! offset is beyond the partition's end (committed by the peer client, as after a topic was
//! recreated or a broker lost its records but kept the offsets) has its fetch answered with
//! OFFSET_OUT_OF_RANGE by Apache Kafka; the position moves to the earliest offset under
//! `earliest` and to the end under `latest`.
//!
//! Shown to fail without the change (by hand, on the scripted peer this test replaced): before,
//! every reset went to the earliest offset, and the `latest` subscription redelivered the whole
//! partition.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::sync::{Arc, Mutex};
use std::time::Duration;

use bus_kafka::{Message, Record, SubscribeOptions, subscription::OffsetReset};
use bus_tests::wait_for;

const PATIENCE: Duration = Duration::from_secs(60);

/// What the subscription handled: (offset, value), in order (one partition, one key).
async fn consume(reset: OffsetReset) -> Vec<(i64, String)> {
    let topic = bus_tests::unique("offset-reset");
    let group = bus_tests::unique("offset-reset-g");
    let bus = bus_kafka::connect(bus_tests::config()).await.expect("connected");
    bus.admin().ensure_topic(&topic, 1).await.unwrap();
    for _ in 0..10 {
        bus.publish(Record::new(topic.as_str(), "old").with_key("k")).await.unwrap();
    }
    bus_tests::peer_commit(&topic, &group, 0, 1000);
    let seen: Arc<Mutex<Vec<(i64, String)>>> = Arc::default();
    let sink = Arc::clone(&seen);
    let options = SubscribeOptions::new(&group).with_concurrency(1).with_auto_offset_reset(reset);
    let subscription = bus
        .subscribe(&topic, options, move |m: Message| {
            let sink = Arc::clone(&sink);
            async move {
                sink.lock().unwrap().push((m.offset, String::from_utf8_lossy(m.payload()).into()));
                Ok(())
            }
        })
        .await
        .expect("subscribed");
    // The reset happened when the partition's position is no longer the committed 1,000.
    let expected_position = match reset {
        OffsetReset::Latest => 10,
        OffsetReset::Earliest => 0,
    };
    wait_for("the reset", PATIENCE, || {
        bus.health_report()
            .subscriptions
            .iter()
            .flat_map(|s| &s.partitions)
            .any(|p| p.position.is_some_and(|at| (expected_position..=10).contains(&at)))
    })
    .await;
    for _ in 0..2 {
        bus.publish(Record::new(topic.as_str(), "new").with_key("k")).await.unwrap();
    }
    wait_for("the new records", PATIENCE, || {
        seen.lock().unwrap().iter().filter(|(_, v)| v == "new").count() == 2
    })
    .await;
    subscription.unsubscribe(Duration::from_secs(5)).await.expect("unsubscribed");
    bus.shutdown(Duration::from_secs(5)).await.expect("clean shutdown");
    seen.lock().unwrap().clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn out_of_range_with_latest_moves_to_the_end() {
    let seen = consume(OffsetReset::Latest).await;
    assert_eq!(seen, vec![(10, "new".to_owned()), (11, "new".to_owned())]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn out_of_range_with_earliest_moves_to_the_start() {
    let seen = consume(OffsetReset::Earliest).await;
    let offsets: Vec<i64> = seen.iter().map(|(o, _)| *o).collect();
    assert_eq!(offsets, (0..12).collect::<Vec<i64>>());
}
