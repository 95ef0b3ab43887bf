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

/// The inodes of this process's sockets.
fn own_socket_inodes() -> BTreeSet<u64> {
    let mut inodes = BTreeSet::new();
    for entry in std::fs::read_dir("/proc/self/fd").unwrap().flatten() {
        let Ok(target) = std::fs::read_link(entry.path()) else { continue };
        let target = target.to_string_lossy().into_owned();
        if let Some(inode) = target.strip_prefix("socket:[").and_then(|t| t.strip_suffix(']')) {
            inodes.insert(inode.parse().unwrap());
        }
    }
    inodes
}

/// This process's established TCP connections to `ports` (on loopback), counted per port.
fn connections_to(ports: &BTreeSet<u16>) -> BTreeMap<u16, usize> {
    let own = own_socket_inodes();
    let mut counted = BTreeMap::new();
    for table in ["/proc/self/net/tcp", "/proc/self/net/tcp6"] {
        let Ok(text) = std::fs::read_to_string(table) else { continue };
        for line in text.lines().skip(1) {
            let fields: Vec<&str> = line.split_whitespace().collect();
            // sl local_address rem_address st tx:rx tr:when retrnsmt uid timeout inode
            let (Some(remote), Some(state), Some(inode)) =
                (fields.get(2), fields.get(3), fields.get(9))
            else {
                continue;
            };
            let established = *state == "01";
            let port = remote.rsplit(':').next().and_then(|p| u16::from_str_radix(p, 16).ok());
            let inode: u64 = inode.parse().unwrap_or(0);
            if let Some(port) = port
                && established
                && ports.contains(&port)
                && own.contains(&inode)
            {
                *counted.entry(port).or_insert(0) += 1;
            }
        }
    }
    counted
}

/// The brokers' client ports, from the bootstrap list.
fn broker_ports() -> BTreeSet<u16> {
    bus_tests::bootstrap()
        .split(',')
        .filter_map(|address| address.rsplit(':').next()?.parse().ok())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_producer_holds_one_connection_per_broker_whatever_the_partitions() {
    let ports = broker_ports();
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

    let held = connections_to(&ports);
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
