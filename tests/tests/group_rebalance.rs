//! Consumer groups on the broker, our consumers only: two members split a topic's partitions,
//! a third joins, one leaves; every record is handled at least once, none is lost, and per-key
//! order holds across the rebalances (see `group_support::check_order` for the precise rule).
//! Every revocation here is clean (handlers finish in a millisecond, offsets are committed
//! before the partitions move), so nothing may be handled twice either.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod group_support;

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use group_support::{
    DEADLINE, Log, Source, check_order, config, even_split, note, subscribe, wait_for,
};

const PARTITIONS: i32 = 6;
const KEYS: usize = 24;
const WORK: Duration = Duration::from_millis(1);

/// Produces one round at a time until a round is handled with its partitions split exactly
/// between `expected`, without overlap and evenly (the range assignor over 6 partitions).
async fn until_split(
    source: &mut Source,
    log: &Log,
    expected: &[&str],
) -> BTreeMap<String, BTreeSet<i32>> {
    let deadline = tokio::time::Instant::now() + DEADLINE;
    let expected: BTreeSet<String> = expected.iter().map(|s| (*s).to_owned()).collect();
    loop {
        let round = source.rounds(1).await;
        wait_for(&format!("round {round} to be handled"), DEADLINE, || log.has_round(KEYS, round))
            .await;
        let owners = log.owners_in_round(round);
        if let Some(split) = even_split(&owners, PARTITIONS, &expected) {
            note(&format!("round {round}: partitions split {split:?}"));
            return split;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no round split the partitions between {expected:?} within {DEADLINE:?}; the last \
             round's owners: {owners:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn members_split_join_and_leave_without_loss_or_reordering() {
    let topic = bus_tests::unique("group-rebalance");
    let group = bus_tests::unique("group-rebalance-g");
    let mut source = Source::new(&topic, PARTITIONS, KEYS).await;
    let log = Log::default();

    source.rounds(20).await;
    let bus_a = bus_kafka::connect(config()).await.unwrap();
    let bus_b = bus_kafka::connect(config()).await.unwrap();
    let sub_a = subscribe(&bus_a, &topic, &group, &log, "A", WORK).await;
    let sub_b = subscribe(&bus_b, &topic, &group, &log, "B", WORK).await;
    let two = until_split(&mut source, &log, &["A", "B"]).await;
    assert_eq!(two.len(), 2);

    // A third member joins while records are in flight.
    source.rounds(20).await;
    let bus_c = bus_kafka::connect(config()).await.unwrap();
    let sub_c = subscribe(&bus_c, &topic, &group, &log, "C", WORK).await;
    until_split(&mut source, &log, &["A", "B", "C"]).await;

    // A leaves while records are in flight.
    source.rounds(20).await;
    let left = sub_a.unsubscribe(Duration::from_secs(30)).await.unwrap();
    assert!(left.subscription.left_group, "A did not leave the group cleanly: {left:?}");
    assert_eq!(left.subscription.abandoned, 0, "{left:?}");
    let report = bus_a.shutdown(Duration::from_secs(30)).await.unwrap();
    assert_eq!(bus_a.live_tasks(), 0, "bus A left tasks behind: {report:?}");
    until_split(&mut source, &log, &["B", "C"]).await;

    source.rounds(10).await;
    let produced = source.produced();
    wait_for("every record to be handled", DEADLINE, || log.distinct().is_superset(&produced))
        .await;
    let (duplicates, rewinds) = check_order(&log.snapshot(), &produced);
    note(&format!(
        "{} records produced, {} handled, {duplicates} duplicates, {rewinds} rewinds",
        produced.len(),
        log.len()
    ));
    assert_eq!(
        duplicates, 0,
        "clean revocations commit before the partitions move: nothing should be handled twice"
    );

    for (bus, sub) in [(&bus_b, sub_b), (&bus_c, sub_c)] {
        let unsubscribed = sub.unsubscribe(Duration::from_secs(30)).await.unwrap();
        assert!(unsubscribed.subscription.left_group, "{unsubscribed:?}");
        bus.shutdown(Duration::from_secs(30)).await.unwrap();
        assert_eq!(bus.live_tasks(), 0, "tasks left behind:\n{}", bus.snapshot());
    }
}
