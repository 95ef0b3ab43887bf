//! Metadata refresh (`metadata.max_age`) in consumer groups, on the broker.
//!
//! The group's leader reads the partition counts of the group's topics every `max_age`, and
//! rebalances when one changed, so that partitions added to a topic (CreatePartitions) are
//! read. (Pattern subscriptions following new topics are a conformance check, run on this
//! broker too.)

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod group_support;

use std::collections::BTreeSet;
use std::time::Duration;

use group_support::{DEADLINE, Log, Source, config_with, handler, note, options, wait_for};

const KEYS: usize = 24;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_leader_rebalances_when_a_topic_gains_partitions() {
    let topic = bus_tests::unique("group-grow");
    let group = bus_tests::unique("group-grow-g");
    let mut source = Source::new(&topic, 4, KEYS).await;
    let log = Log::default();
    source.rounds(2).await;
    let mut config = config_with(&["cooperative-sticky"]);
    config.metadata.max_age = Duration::from_millis(500);
    let bus = bus_kafka::connect(config).await.unwrap();
    let subscription =
        bus.subscribe(&topic, options(&group), handler(&log, "A", Duration::ZERO)).await.unwrap();
    wait_for("the first records", DEADLINE, || log.has_round(KEYS, 2)).await;
    let assigned = bus.metrics().partitions_assigned;
    assert_eq!(assigned, 4);

    grow(&topic, 6).await;
    // Records on every partition of the grown topic, the two new ones included.
    let mut grown = Source::new(&topic, 6, KEYS).await;
    let before = log.len();
    grown.rounds(1).await;
    wait_for("records of the new partitions to be handled", DEADLINE, || {
        let partitions: BTreeSet<i32> =
            log.snapshot().iter().skip(before).map(|h| h.partition).collect();
        partitions.contains(&4) && partitions.contains(&5)
    })
    .await;
    note(&format!("partitions assigned: {} then {}", assigned, bus.metrics().partitions_assigned));
    assert!(bus.metrics().partitions_assigned >= 6, "the two new partitions were assigned");
    subscription.unsubscribe(Duration::from_secs(30)).await.unwrap();
    bus.shutdown(Duration::from_secs(30)).await.unwrap();
}

/// Grows `topic` to `partitions` (CreatePartitions) and waits until every broker leads them.
async fn grow(topic: &str, partitions: i32) {
    let admin = bus_kafka::admin::connect(bus_tests::config()).await.unwrap();
    admin.add_partitions(topic, partitions).await.unwrap();
    bus_tests::settle_topic(topic, usize::try_from(partitions).unwrap()).await;
}
