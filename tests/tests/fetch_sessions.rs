//! The fetch plane keeps one connection per broker (issue 22): a consumer of a topic of 24
//! partitions spread over the three-broker cluster reads every record while its bus holds, per
//! broker, at most its fetch session's connection and the group coordinator's links — not a
//! connection per partition.
//!
//! Connections are counted from outside the library: this process's open TCP sockets
//! (`/proc/self/fd` -> `/proc/self/net/tcp{,6}`) established to each broker's port, minus those
//! the test's own producer (rskafka) holds, sampled while records are being consumed. The test
//! is alone in its binary, so nothing else in the process opens connections.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod group_support;

use std::collections::BTreeMap;
use std::time::Duration;

use group_support::{DEADLINE, Log, Source, check_order, config, note, subscribe, wait_for};

const PARTITIONS: i32 = 24;
const KEYS: usize = 96;
const WORK: Duration = Duration::from_micros(100);
/// The group coordinator's links a member keeps on the coordinator's broker (the membership
/// task's, the heartbeat task's, and the offset commits').
const COORDINATOR_LINKS: usize = 3;
/// Short-lived connections a sample may catch: a Metadata lookup of the leader directory or
/// of the cluster client (closed once answered).
const TRANSIENT: usize = 2;

/// Connections to each broker beyond `baseline`.
fn bus_connections(ports: &[u16], baseline: &BTreeMap<u16, usize>) -> BTreeMap<u16, usize> {
    let now = bus_tests::connections_by_port();
    ports
        .iter()
        .map(|p| {
            let count = now.get(p).copied().unwrap_or(0);
            (*p, count.saturating_sub(baseline.get(p).copied().unwrap_or(0)))
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_consumer_of_24_partitions_holds_one_fetch_connection_per_broker() {
    let ports = bus_tests::broker_ports();
    assert!(ports.len() >= 3, "the three-broker cluster is expected, got {ports:?}");
    let topic = bus_tests::unique("fetch-sessions");
    let group = bus_tests::unique("fetch-sessions-g");
    let mut source = Source::new(&topic, PARTITIONS, KEYS).await;
    let log = Log::default();
    source.rounds(20).await;
    // The producer has written to every partition, so it is connected to every broker.
    let baseline = bus_tests::connections_by_port();

    let bus = bus_kafka::connect(config()).await.unwrap();
    let subscription = subscribe(&bus, &topic, &group, &log, "A", WORK).await;
    let mut peak: BTreeMap<u16, usize> = BTreeMap::new();
    let sample = |peak: &mut BTreeMap<u16, usize>| {
        for (port, count) in bus_connections(&ports, &baseline) {
            let top = peak.entry(port).or_insert(0);
            *top = (*top).max(count);
        }
    };
    wait_for("the first rounds to be handled", DEADLINE, || {
        sample(&mut peak);
        log.has_round(KEYS, 20)
    })
    .await;
    // More records while every partition is being read.
    source.rounds(20).await;
    let produced = source.produced();
    wait_for("every record to be handled", DEADLINE, || {
        sample(&mut peak);
        log.distinct().is_superset(&produced)
    })
    .await;
    sample(&mut peak);
    let (duplicates, _) = check_order(&log.snapshot(), &produced);
    note(&format!("connections per broker port beyond the producer's, at most: {peak:?}"));

    let total: usize = peak.values().sum();
    let allowed = ports.len() + COORDINATOR_LINKS + TRANSIENT;
    assert!(
        total <= allowed,
        "the bus held up to {total} connections to the brokers ({peak:?}) while reading \
         {PARTITIONS} partitions: more than one fetch connection per broker ({}) plus the \
         coordinator's links ({COORDINATOR_LINKS}) and {TRANSIENT} lookups",
        ports.len()
    );
    for (port, count) in &peak {
        assert!(
            *count <= 1 + COORDINATOR_LINKS + TRANSIENT,
            "broker port {port}: {count} connections ({peak:?})"
        );
    }
    assert_eq!(duplicates, 0, "a clean run handles nothing twice");

    // Reads through the same sessions whose futures are dropped again and again (a deadline
    // of a millisecond or two, as a `select!` would): no record is lost or repeated, and the
    // shared connections are not disturbed (the group keeps reading below).
    let admin = bus.admin();
    let per_partition = (KEYS / PARTITIONS as usize) as i64 * 40;
    let mut cursors = Vec::new();
    for partition in 0..6 {
        let tp = bus_kafka::TopicPartition::new(topic.as_str(), partition);
        cursors.push(admin.read(&tp, bus_kafka::StartAt::Earliest).await.unwrap());
    }
    let mut offsets: Vec<Vec<i64>> = vec![Vec::new(); cursors.len()];
    let mut dropped = 0u32;
    let deadline = tokio::time::Instant::now() + DEADLINE;
    for attempt in 0u64.. {
        if offsets.iter().all(|o| o.len() as i64 >= per_partition) {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "cursors stuck at {offsets:?}");
        for (cursor, seen) in cursors.iter_mut().zip(offsets.iter_mut()) {
            // Mostly too short for an answer; now and then long enough for one (a read may wait
            // for the long poll in flight on its broker's connection, `fetch_max_wait`).
            let patience = Duration::from_millis([0, 1, 3, 1000][(attempt % 4) as usize]);
            match tokio::time::timeout(patience, cursor.next(usize::MAX)).await {
                Ok(batch) => seen.extend(batch.unwrap().iter().map(|m| m.offset)),
                Err(_) => dropped += 1,
            }
        }
        sample(&mut peak);
    }
    note(&format!("{dropped} reads dropped before their answer"));
    assert!(dropped > 0, "no read was dropped: the test proves nothing");
    for (partition, seen) in offsets.iter().enumerate() {
        let expected: Vec<i64> = (0..per_partition).collect();
        assert_eq!(seen, &expected, "partition {partition}: records lost or repeated");
    }
    source.rounds(5).await;
    let produced = source.produced();
    wait_for("the group to read on after the dropped reads", DEADLINE, || {
        sample(&mut peak);
        log.distinct().is_superset(&produced)
    })
    .await;
    let total: usize = peak.values().sum();
    assert!(total <= allowed, "{total} connections after the dropped reads ({peak:?})");

    let stopped = subscription.unsubscribe(Duration::from_secs(30)).await.unwrap();
    assert!(stopped.subscription.left_group, "{stopped:?}");
    let report = bus.shutdown(Duration::from_secs(30)).await.unwrap();
    assert_eq!(bus.live_tasks(), 0, "the bus left tasks behind: {report:?}");
    drop(bus);
    let left = bus_connections(&ports, &baseline);
    assert!(
        left.values().all(|c| *c == 0),
        "connections left open after the bus shut down: {left:?}"
    );
}
