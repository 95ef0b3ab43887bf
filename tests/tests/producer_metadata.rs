//! The producer follows a topic's partition count (`metadata.max_age`), on the broker.
//!
//! The topic gains partitions (CreatePartitions) while the bus publishes to it: within a few
//! metadata refreshes, keyed records reach the new partitions.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::time::Duration;

use bus_kafka::Record;

/// How long the test waits for what should happen.
const DEADLINE: Duration = Duration::from_secs(60);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_producer_spreads_over_partitions_a_topic_gained() {
    let topic = bus_tests::unique("producer-grow");
    let admin = bus_kafka::admin::connect(bus_tests::config()).await.unwrap();
    admin.ensure_topic(&topic, 2).await.unwrap();
    let mut config = bus_tests::config();
    config.metadata.max_age = Duration::from_millis(300);
    let bus = bus_kafka::connect(config).await.unwrap();
    // Keys spread over every partition of the topic: with 2 partitions, 0 and 1 only.
    for key in 0..40 {
        let stored = bus.publish(Record::new(&topic, "before").with_key(format!("k{key}"))).await;
        assert!(stored.unwrap().partition < 2);
    }

    admin.add_partitions(&topic, 4).await.unwrap();

    // Within a few refresh periods the same keys reach the partitions the topic gained.
    let deadline = tokio::time::Instant::now() + DEADLINE;
    let mut reached = std::collections::BTreeSet::new();
    while !(reached.contains(&2) && reached.contains(&3)) {
        assert!(
            tokio::time::Instant::now() < deadline,
            "records never reached partitions 2 and 3 (reached {reached:?})"
        );
        for key in 0..40 {
            let record = Record::new(&topic, "after").with_key(format!("k{key}"));
            if let Ok(stored) = bus.publish(record).await {
                reached.insert(stored.partition);
            }
        }
    }
    bus.shutdown(Duration::from_secs(30)).await.unwrap();
    assert_eq!(bus.live_tasks(), 0);
}
