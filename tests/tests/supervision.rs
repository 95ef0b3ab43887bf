//! Restart supervision of the bus's own tasks, under load, against the real broker: a task is
//! made to panic mid-stream through a fault point (`bus_core::fault`, the `fault-injection`
//! feature) and recovers with nothing lost and nothing reported twice; made to panic again and
//! again, it escalates: its subscription (or the producer) fails visibly and the rest of the
//! bus keeps serving.
//!
//! Run with `cargo test -p bus-tests --features fault-injection --test supervision` (the tests
//! package's `fault-injection` feature; `cargo xtask test` does). Each test bounds its waits.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::BTreeSet;
use std::time::Duration;

use bus_core::fault;
use bus_kafka::supervisor::{Action, SupervisionEvent};
use bus_kafka::{Admin, EventBus, PublishError, Record};
use rskafka::client::ClientBuilder;
use rskafka::client::partition::{OffsetAt, UnknownTopicHandling};
use tokio::sync::broadcast;

/// The bound on anything a test waits for.
const DEADLINE: Duration = Duration::from_secs(60);

/// The events seen so far whose path contains `key`.
fn events_at(
    events: &mut broadcast::Receiver<SupervisionEvent>,
    seen: &mut Vec<SupervisionEvent>,
    key: &str,
) -> Vec<SupervisionEvent> {
    while let Ok(event) = events.try_recv() {
        seen.push(event);
    }
    seen.iter().filter(|e| e.path.contains(key)).cloned().collect()
}

/// The partition's high watermark, read with rskafka (independent of the bus).
async fn high_watermark(topic: &str, partition: i32) -> i64 {
    let client = ClientBuilder::new(vec![bus_tests::bootstrap()]).build().await.unwrap();
    let partition =
        client.partition_client(topic, partition, UnknownTopicHandling::Retry).await.unwrap();
    partition.get_offset(OffsetAt::Latest).await.unwrap()
}

async fn kafka_bus(topic: &str, partitions: i32) -> EventBus {
    let config = bus_tests::config();
    Admin::connect(config.clone()).await.unwrap().ensure_topic(topic, partitions).await.unwrap();
    bus_kafka::connect(config).await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panicking_producer_loop_is_restarted_and_every_record_gets_exactly_one_verdict() {
    let topic = bus_tests::unique("heal-producer");
    let bus = kafka_bus(&topic, 2).await;
    let mut events = bus.scope().events();
    let key = format!("producer/{topic}-0");
    const RECORDS: usize = 4000;
    let mut futures = Vec::with_capacity(RECORDS);
    for i in 0..RECORDS {
        if i == RECORDS / 2 {
            fault::arm_panic(&key, 1);
        }
        let partition = i32::try_from(i % 2).unwrap();
        let record = Record::new(topic.as_str(), format!("r{i}")).with_partition(partition);
        futures.push(bus.publish_nowait(record).await.unwrap());
        if i % 64 == 0 {
            tokio::task::yield_now().await;
        }
    }
    let results = tokio::time::timeout(DEADLINE, futures_util::future::join_all(futures))
        .await
        .expect("every delivery future resolves");
    bus_tests::wait_for("the fault to be met", DEADLINE, || fault::met(&key) == 1).await;
    fault::disarm(&key);
    // Every record acknowledged once (a future resolves once), at distinct offsets.
    let mut offsets: [BTreeSet<i64>; 2] = [BTreeSet::new(), BTreeSet::new()];
    for result in results {
        let delivery = result.expect("no record lost to the restart");
        if delivery.offset >= 0 {
            let partition = usize::try_from(delivery.partition).unwrap();
            assert!(offsets[partition].insert(delivery.offset), "offset reported twice");
        }
    }
    // Stored once each: the idempotent producer's resends after the restart were recognised.
    let stored = high_watermark(&topic, 0).await + high_watermark(&topic, 1).await;
    assert_eq!(usize::try_from(stored).unwrap(), RECORDS, "each record stored exactly once");
    let mut seen = Vec::new();
    let restarts = events_at(&mut events, &mut seen, &key);
    assert!(
        restarts.iter().any(|e| matches!(e.action, Action::Restart { .. })),
        "the loop was restarted: {restarts:?}"
    );
    // The restarted loop serves.
    let after = bus.publish(Record::new(topic.as_str(), "after").with_partition(0)).await.unwrap();
    assert!(after.offset >= 0);
    bus.shutdown(Duration::from_secs(10)).await.unwrap();
    assert_eq!(bus.live_tasks(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_producer_loop_panicking_again_and_again_fails_the_producer_visibly() {
    let topic = bus_tests::unique("heal-producer-escalate");
    let bus = kafka_bus(&topic, 1).await;
    let key = format!("producer/{topic}-0");
    bus.publish(Record::new(topic.as_str(), "first")).await.unwrap();
    fault::arm_panic(&key, 100);
    // Each publish gives the loop a turn; it panics at each until its intensity escalates.
    let deadline = tokio::time::Instant::now() + DEADLINE;
    let error = loop {
        assert!(tokio::time::Instant::now() < deadline, "the producer never failed");
        match bus.publish(Record::new(topic.as_str(), "x")).await {
            Err(PublishError::Backend { reason, .. }) if reason.contains("producer failed") => {
                break reason;
            }
            _ => tokio::time::sleep(Duration::from_millis(20)).await,
        }
    };
    fault::disarm(&key);
    assert!(error.contains("exceeded"), "{error}");
    let health = bus.health();
    assert!(format!("{health:?}").contains("the producer failed"), "{health:?}");
    // The failure stayed in the producer: the bus's tree is not failed, it shuts down cleanly.
    assert!(bus.scope().failure().is_none());
    bus.shutdown(Duration::from_secs(10)).await.unwrap();
    assert_eq!(bus.live_tasks(), 0);
}
