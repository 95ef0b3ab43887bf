//! Static membership (KIP-345) on the broker: members with a group instance id.
//!
//! - Three static members; one restarts (stops without leaving, and a new bus subscribes with
//!   the same instance id within the session timeout): it gets its partitions back with no
//!   rebalance, and the other two see no revocation and no new assignment (the bus's
//!   `partitions_revoked` and `partitions_assigned`), whether the group is eager or
//!   cooperative.
//! - A second instance started with an id that a running member holds takes the place over:
//!   the first is fenced and stops consuming, without joining again (which would fence the new
//!   one in turn).
//!
//! Both check that no record is lost and per-key order holds (see `group_support::check_order`).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod group_support;

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use bus_kafka::{EventBus, Subscription};
use group_support::{
    DEADLINE, Log, Source, check_order, config_with, even_split, handler, note, options, wait_for,
};

const PARTITIONS: i32 = 6;
const KEYS: usize = 24;
const WORK: Duration = Duration::from_millis(1);

/// Produces rounds until one is handled with its partitions split evenly between exactly
/// `expected`; returns the split.
async fn until_even(
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
            "no round split the partitions evenly between {expected:?} within {DEADLINE:?}; the \
             last round's owners: {owners:?}"
        );
    }
}

struct Member {
    bus: EventBus,
    subscription: Subscription,
}

async fn member(
    topic: &str,
    group: &str,
    log: &Log,
    name: &str,
    instance: &str,
    assignors: &[&str],
) -> Member {
    let bus = bus_kafka::connect(config_with(assignors)).await.unwrap();
    let subscription = bus
        .subscribe(topic, options(group).with_group_instance_id(instance), handler(log, name, WORK))
        .await
        .unwrap();
    Member { bus, subscription }
}

impl Member {
    /// (partitions assigned, partitions revoked, group failures) so far.
    fn counts(&self) -> (u64, u64, u64) {
        let m = self.bus.metrics();
        (m.partitions_assigned, m.partitions_revoked, m.group_failures)
    }

    async fn stop(self) {
        self.stop_expecting(true).await;
    }

    /// Stops it; `clean`: whether it ended its membership cleanly (a fenced member did not).
    async fn stop_expecting(self, clean: bool) {
        let report = self.subscription.unsubscribe(Duration::from_secs(30)).await.unwrap();
        assert_eq!(report.subscription.left_group, clean, "{report:?}");
        self.bus.shutdown(Duration::from_secs(30)).await.unwrap();
        assert_eq!(self.bus.live_tasks(), 0, "tasks left behind:\n{}", self.bus.snapshot());
    }
}

async fn restart_without_rebalance(assignors: &[&str]) {
    let topic = bus_tests::unique("group-static");
    let group = bus_tests::unique("group-static-g");
    let mut source = Source::new(&topic, PARTITIONS, KEYS).await;
    let log = Log::default();
    source.rounds(10).await;
    let s1 = member(&topic, &group, &log, "S1", &format!("{group}-1"), assignors).await;
    let s2 = member(&topic, &group, &log, "S2", &format!("{group}-2"), assignors).await;
    let s3 = member(&topic, &group, &log, "S3", &format!("{group}-3"), assignors).await;
    let before = until_even(&mut source, &log, &["S1", "S2", "S3"]).await;
    // Once more, so that every member's counts are settled.
    assert_eq!(until_even(&mut source, &log, &["S1", "S2", "S3"]).await, before);
    let (s1_counts, s2_counts) = (s1.counts(), s2.counts());

    // S3 restarts: a new bus, the same instance id, within the session timeout (10 s).
    source.rounds(10).await;
    s3.stop().await;
    let s3 = member(&topic, &group, &log, "S3", &format!("{group}-3"), assignors).await;
    let after = until_even(&mut source, &log, &["S1", "S2", "S3"]).await;
    assert_eq!(after, before, "every member keeps its partitions, the restarted one included");
    assert_eq!(s1.counts(), s1_counts, "S1 saw no revocation and no assignment");
    assert_eq!(s2.counts(), s2_counts, "S2 saw no revocation and no assignment");
    let (restarted_assigned, restarted_revoked, _) = s3.counts();
    assert_eq!((restarted_assigned, restarted_revoked), (2, 0), "the new S3 got its 2 back");

    source.rounds(5).await;
    let produced = source.produced();
    wait_for("every record to be handled", DEADLINE, || log.distinct().is_superset(&produced))
        .await;
    let (duplicates, rewinds) = check_order(&log.snapshot(), &produced);
    note(&format!(
        "{assignors:?}: {} records produced, {} handled, {duplicates} duplicates, {rewinds} \
         rewinds",
        produced.len(),
        log.len()
    ));
    assert_eq!(
        duplicates,
        0,
        "S3 committed before it stopped: nothing is handled twice; handled twice: {}",
        group_support::describe_duplicates(&log.snapshot())
    );
    for m in [s1, s2, s3] {
        m.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_static_member_restarts_without_a_rebalance_eager() {
    restart_without_rebalance(&["range"]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_static_member_restarts_without_a_rebalance_cooperative() {
    restart_without_rebalance(&["cooperative-sticky"]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_instance_with_the_same_id_fences_the_first() {
    let topic = bus_tests::unique("group-fenced");
    let group = bus_tests::unique("group-fenced-g");
    let instance = format!("{group}-1");
    let mut source = Source::new(&topic, PARTITIONS, KEYS).await;
    let log = Log::default();
    source.rounds(5).await;
    let first = member(&topic, &group, &log, "first", &instance, &["range"]).await;
    until_even(&mut source, &log, &["first"]).await;

    let second = member(&topic, &group, &log, "second", &instance, &["range"]).await;
    wait_for("the first to be fenced", DEADLINE, || first.counts().2 >= 1).await;
    let fenced = first.counts();
    // The second holds everything from now on, round after round; the first never comes back
    // (it would fence the second, which would then count a group failure).
    for _ in 0..3 {
        until_even(&mut source, &log, &["second"]).await;
    }
    assert_eq!(first.counts(), fenced, "the fenced member did not join again");
    assert_eq!(second.counts(), (6, 0, 0), "the second was never fenced back");

    let produced = source.produced();
    wait_for("every record to be handled", DEADLINE, || log.distinct().is_superset(&produced))
        .await;
    let (duplicates, rewinds) = check_order(&log.snapshot(), &produced);
    note(&format!(
        "{} records produced, {} handled, {duplicates} duplicates, {rewinds} rewinds",
        produced.len(),
        log.len()
    ));
    first.stop_expecting(false).await;
    second.stop().await;
}
