//! One connection per broker: a producer writing to every partition of a 24-partition topic on
//! the three-broker cluster holds one connection per broker, not one per partition (issue 22).
//!
//! The connections are counted from the process's own sockets (`/proc/self/fd`), matched with
//! the kernel's TCP table (`/proc/self/net/tcp`) to those established to the cluster's brokers.
//! This file holds one test so that no other test's sockets are counted.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use bus_kafka::Record;

/// Partitions of the topic: eight per broker.
const PARTITIONS: i32 = 24;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_producer_holds_one_connection_per_broker_whatever_the_partitions() {
    let ports: BTreeSet<u16> = bus_tests::broker_ports().into_iter().collect();
    let topic = bus_tests::unique("one-link");
    let admin = bus_kafka::admin::connect(bus_tests::config()).await.unwrap();
    admin.ensure_topic(&topic, PARTITIONS).await.unwrap();
    drop(admin);
    let bus = bus_kafka::connect(bus_tests::config()).await.unwrap();

    // Every partition written to, several rounds, all acknowledged.
    let mut reached = BTreeMap::new();
    for round in 0..5 {
        let mut deliveries = Vec::new();
        for partition in 0..PARTITIONS {
            let record = Record::new(&topic, format!("r{round}")).with_partition(partition);
            deliveries.push(bus.publish_nowait(record).await.unwrap());
        }
        for delivery in deliveries {
            let stored = delivery.await.unwrap();
            *reached.entry(stored.partition).or_insert(0) += 1;
        }
    }
    assert_eq!(reached.len(), PARTITIONS as usize, "partitions reached: {reached:?}");

    let mut held = bus_tests::connections_by_port();
    held.retain(|port, _| ports.contains(port));
    let total: usize = held.values().sum();
    // One per broker for the producer; a lookup's connection may be closing.
    assert!(
        total <= ports.len() + 1,
        "the producer holds {total} connections to the {} brokers for {PARTITIONS} partitions \
         (per broker port: {held:?}); one per broker was expected",
        ports.len()
    );
    bus.shutdown(Duration::from_secs(30)).await.unwrap();
    assert_eq!(bus.live_tasks(), 0);
}
