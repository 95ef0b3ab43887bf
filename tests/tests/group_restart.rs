//! Restarting a consumer: the next member of its group resumes from the committed offsets.
//!
//! - After a clean stop (drain, commit, leave), nothing is redelivered: the new member starts at
//!   exactly the offsets the old one reported as committed, which are the ends of what it read.
//! - After a crash (the bus dropped without shutdown, mid-stream), the new member starts exactly
//!   at the committed offsets as the peer client reads them; the old member had handled every
//!   record below them (only handled records are committed), so what is redelivered is at most
//!   the uncommitted tail, and nothing is lost.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod group_support;

use std::collections::BTreeMap;
use std::time::Duration;

use bus_kafka::{Message, TopicPartition};
use group_support::{
    DEADLINE, Handled, Log, Source, committed, config, handler, note, options, subscribe, wait_for,
};

const PARTITIONS: i32 = 6;
const KEYS: usize = 12;
/// Records handled (of the 1,200) after which the crash test's first member stalls.
const STALL_AFTER: usize = 600;

/// Per partition: the lowest offset `consumer` handled (where it started: the keys of a
/// partition are handled in parallel, so the first logged need not be the lowest).
fn first_offsets(log: &[Handled], consumer: &str) -> BTreeMap<i32, i64> {
    let mut first: BTreeMap<i32, i64> = BTreeMap::new();
    for h in log.iter().filter(|h| h.consumer == consumer) {
        let lowest = first.entry(h.partition).or_insert(h.offset);
        *lowest = (*lowest).min(h.offset);
    }
    first
}

/// Per partition: the offsets `consumer` handled, sorted.
fn offsets(log: &[Handled], consumer: &str) -> BTreeMap<i32, Vec<i64>> {
    let mut all: BTreeMap<i32, Vec<i64>> = BTreeMap::new();
    for h in log.iter().filter(|h| h.consumer == consumer) {
        all.entry(h.partition).or_default().push(h.offset);
    }
    for list in all.values_mut() {
        list.sort_unstable();
    }
    all
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_clean_restart_resumes_at_the_committed_offsets_without_redelivery() {
    let topic = bus_tests::unique("group-restart-clean");
    let group = bus_tests::unique("group-restart-clean-g");
    let mut source = Source::new(&topic, PARTITIONS, KEYS).await;
    let log = Log::default();
    source.rounds(50).await;

    let first = bus_kafka::connect(config()).await.unwrap();
    let subscription = subscribe(&first, &topic, &group, &log, "first", Duration::ZERO).await;
    let produced = source.produced();
    wait_for("the first member to handle everything", DEADLINE, || {
        log.distinct().is_superset(&produced)
    })
    .await;
    let stopped = subscription.unsubscribe(Duration::from_secs(30)).await.unwrap();
    first.shutdown(Duration::from_secs(30)).await.unwrap();
    assert!(stopped.subscription.left_group, "{stopped:?}");
    // 50 rounds of 12 keys over 6 partitions: 100 records per partition, all committed.
    let expected: Vec<(TopicPartition, i64)> =
        (0..PARTITIONS).map(|p| (TopicPartition::new(topic.as_str(), p), 100)).collect();
    assert_eq!(stopped.subscription.committed, expected);
    let stored = committed(&topic, &group, PARTITIONS);
    assert!(stored.values().all(|o| *o == Some(100)), "the peer reads {stored:?}");

    source.rounds(25).await;
    let second = bus_kafka::connect(config()).await.unwrap();
    let subscription = subscribe(&second, &topic, &group, &log, "second", Duration::ZERO).await;
    let produced = source.produced();
    wait_for("the second member to handle the new records", DEADLINE, || {
        log.distinct().is_superset(&produced)
    })
    .await;
    let snapshot = log.snapshot();
    let resumed = first_offsets(&snapshot, "second");
    assert_eq!(
        resumed,
        (0..PARTITIONS).map(|p| (p, 100)).collect::<BTreeMap<_, _>>(),
        "the second member must start at the committed offsets"
    );
    let handled_twice = snapshot.len() - log.distinct().len();
    assert_eq!(handled_twice, 0, "a clean restart redelivers nothing");
    subscription.unsubscribe(Duration::from_secs(30)).await.unwrap();
    second.shutdown(Duration::from_secs(30)).await.unwrap();
    assert_eq!(second.live_tasks(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crashed_member_is_replaced_from_the_committed_offsets() {
    let topic = bus_tests::unique("group-restart-crash");
    let group = bus_tests::unique("group-restart-crash-g");
    let mut source = Source::new(&topic, PARTITIONS, KEYS).await;
    let log = Log::default();
    source.rounds(100).await;

    let first = bus_kafka::connect(config()).await.unwrap();
    // The first member stalls (its handlers never finish) once half the records are handled, so
    // that the crash always comes mid-stream, however fast or slow the machine is.
    let handle = handler(&log, "first", Duration::from_millis(5));
    let seen = log.clone();
    let _subscription = first
        .subscribe(&topic, options(&group), move |message: Message| {
            let handled = if seen.len() < STALL_AFTER { Some(handle(message)) } else { None };
            async move {
                match handled {
                    Some(handled) => handled.await,
                    None => std::future::pending().await,
                }
            }
        })
        .await
        .unwrap();
    // Mid-stream, after some commits (every 200 ms): at least a third handled, not all.
    wait_for("the first member to be a third of the way through", DEADLINE, || log.len() >= 400)
        .await;
    wait_for("a first commit", DEADLINE, || {
        committed(&topic, &group, PARTITIONS).values().any(Option::is_some)
    })
    .await;
    // No shutdown: dropping the bus cancels and aborts its tree. Once its last task has ended,
    // the old member can commit nothing more.
    let tree = first.scope().clone();
    drop(first);
    let crashed_at = log.len();
    wait_for("the crashed member's tasks to end", DEADLINE, || tree.live() == 0).await;
    let stored = committed(&topic, &group, PARTITIONS);
    note(&format!("crashed after {crashed_at} records; committed: {stored:?}"));
    assert!(crashed_at < 1200, "the first member finished before the crash");

    // Only handled records were committed: every offset below the committed one was handled.
    let before = offsets(&log.snapshot(), "first");
    for (partition, offset) in &stored {
        let Some(offset) = offset else { continue };
        let handled = before.get(partition).cloned().unwrap_or_default();
        let below: Vec<i64> = handled.iter().copied().filter(|o| o < offset).collect();
        assert_eq!(
            below,
            (0..*offset).collect::<Vec<_>>(),
            "partition {partition}: committed {offset} but not every earlier offset was handled"
        );
    }

    let second = bus_kafka::connect(config()).await.unwrap();
    let subscription = subscribe(&second, &topic, &group, &log, "second", Duration::ZERO).await;
    let produced = source.produced();
    wait_for("every record to be handled", DEADLINE, || log.distinct().is_superset(&produced))
        .await;
    let snapshot = log.snapshot();
    let resumed = first_offsets(&snapshot, "second");
    for partition in 0..PARTITIONS {
        let from = stored.get(&partition).copied().flatten().unwrap_or(0);
        // The partition's end: every record is in the log by now.
        let end = snapshot
            .iter()
            .filter(|h| h.partition == partition)
            .map(|h| h.offset + 1)
            .max()
            .unwrap_or(0);
        if from >= end {
            continue; // the first member finished this partition: nothing left on it
        }
        assert_eq!(
            resumed.get(&partition),
            Some(&from),
            "partition {partition}: the second member must resume at the committed offset"
        );
    }
    let redelivered = snapshot.len() - log.distinct().len();
    let tail: usize = before
        .iter()
        .map(|(p, handled)| {
            let from = stored.get(p).copied().flatten().unwrap_or(0);
            handled.iter().filter(|o| **o >= from).count()
        })
        .sum();
    note(&format!("redelivered {redelivered}; the uncommitted tail was {tail}"));
    assert_eq!(redelivered, tail, "exactly the uncommitted tail is redelivered");
    subscription.unsubscribe(Duration::from_secs(30)).await.unwrap();
    second.shutdown(Duration::from_secs(30)).await.unwrap();
    assert_eq!(second.live_tasks(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_committed_offset_beyond_the_end_resets_to_the_earliest() {
    let topic = bus_tests::unique("group-restart-beyond");
    let group = bus_tests::unique("group-restart-beyond-g");
    let mut source = Source::new(&topic, PARTITIONS, KEYS).await;
    let log = Log::default();
    source.rounds(5).await;
    // Partition 0 holds 10 records; the group's committed offset for it is 1,000 (as after a
    // broker lost its records but kept the offsets, or a topic was recreated).
    bus_tests::peer_commit(&topic, &group, 0, 1000);

    let bus = bus_kafka::connect(config()).await.unwrap();
    let subscription = subscribe(&bus, &topic, &group, &log, "member", Duration::ZERO).await;
    let produced = source.produced();
    wait_for("every record, partition 0 from its start", DEADLINE, || {
        log.distinct().is_superset(&produced)
    })
    .await;
    assert_eq!(first_offsets(&log.snapshot(), "member").get(&0), Some(&0));
    subscription.unsubscribe(Duration::from_secs(30)).await.unwrap();
    bus.shutdown(Duration::from_secs(30)).await.unwrap();
}
