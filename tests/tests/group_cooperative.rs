//! Incremental cooperative rebalancing (KIP-429) on the broker.
//!
//! - Our members with `cooperative-sticky` join and leave a group: each rebalance revokes only
//!   the partitions that move (counted by the bus's `partitions_revoked`), and a member that
//!   only gains revokes nothing; the same scenario with the eager `range` protocol revokes
//!   everything each time (the contrast that shows the count measures something).
//! - The eager `sticky` assignor revokes everything but gives each member back what it held as
//!   far as balance allows (what it held travels in its subscription's user data).
//! - Ours and librdkafka's `cooperative-sticky` members (confluent-kafka, run by
//!   `tests/peer/group_peer.py`) share a group whichever leads: a join makes the first member
//!   give up exactly the partitions that move, on either side.
//! - The upgrade path: an eager member offering `cooperative-sticky, range`, a librdkafka
//!   cooperative member and our cooperative member share one group, then the eager one is
//!   rolled to cooperative.
//!
//! Every scenario checks that no record is lost and per-key order holds (see
//! `group_support::check_order`).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod group_support;

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use bus_kafka::{EventBus, Subscription, health::MetricsSnapshot};
use group_support::{
    DEADLINE, Log, PeerConsumer, PeerEvent, Source, check_order, config_with, even_split, handler,
    note, options, wait_for,
};

const PARTITIONS: i32 = 6;
const KEYS: usize = 24;
const WORK: Duration = Duration::from_millis(1);
const COOPERATIVE: &[&str] = &["cooperative-sticky"];

/// Produces one round at a time until a round is handled with its partitions split evenly
/// between exactly `expected` (each partition by one of them), copying the peer's records into
/// `log` as it goes. Returns the split.
async fn until_even(
    source: &mut Source,
    log: &Log,
    peer: Option<&PeerConsumer>,
    drained: &mut usize,
    expected: &[&str],
) -> BTreeMap<String, BTreeSet<i32>> {
    let deadline = tokio::time::Instant::now() + DEADLINE;
    let expected: BTreeSet<String> = expected.iter().map(|s| (*s).to_owned()).collect();
    loop {
        let round = source.rounds(1).await;
        wait_for(&format!("round {round} to be handled"), DEADLINE, || {
            if let Some(peer) = peer {
                *drained = peer.drain_into(log, *drained);
            }
            log.has_round(KEYS, round)
        })
        .await;
        let owners = log.owners_in_round(round);
        if let Some(split) = even_split(&owners, PARTITIONS, &expected) {
            note(&format!("round {round}: partitions split {split:?}"));
            return split;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no round split the partitions evenly between {expected:?} within {DEADLINE:?}; the \
             last round's owners: {owners:?}; the peer's events: {:?}",
            peer.map(|p| p
                .events()
                .into_iter()
                .filter(|e| !matches!(e, PeerEvent::Record { .. }))
                .collect::<Vec<_>>())
        );
    }
}

/// (partitions assigned, partitions revoked) so far on `bus`.
fn moved(bus: &EventBus) -> (u64, u64) {
    let MetricsSnapshot { partitions_assigned, partitions_revoked, .. } = bus.metrics();
    (partitions_assigned, partitions_revoked)
}

struct Ours {
    bus: EventBus,
    subscription: Subscription,
}

async fn ours(topic: &str, group: &str, log: &Log, name: &str, assignors: &[&str]) -> Ours {
    let bus = bus_kafka::connect(config_with(assignors)).await.unwrap();
    let subscription =
        bus.subscribe(topic, options(group), handler(log, name, WORK)).await.unwrap();
    Ours { bus, subscription }
}

impl Ours {
    async fn stop(self) {
        let report = self.subscription.unsubscribe(Duration::from_secs(30)).await.unwrap();
        assert!(report.subscription.left_group, "{report:?}");
        assert_eq!(report.subscription.abandoned, 0, "{report:?}");
        self.bus.shutdown(Duration::from_secs(30)).await.unwrap();
        assert_eq!(self.bus.live_tasks(), 0, "tasks left behind:\n{}", self.bus.snapshot());
    }
}

/// A joins alone, B joins, C joins, A leaves; returns each step's (assigned, revoked) counts
/// of A, B and C after the group settled.
async fn join_and_leave(assignors: &[&str]) -> Vec<[(u64, u64); 3]> {
    let topic = bus_tests::unique("group-coop");
    let group = bus_tests::unique("group-coop-g");
    let mut source = Source::new(&topic, PARTITIONS, KEYS).await;
    let log = Log::default();
    let mut drained = 0;
    source.rounds(10).await;

    let a = ours(&topic, &group, &log, "A", assignors).await;
    until_even(&mut source, &log, None, &mut drained, &["A"]).await;
    let b = ours(&topic, &group, &log, "B", assignors).await;
    until_even(&mut source, &log, None, &mut drained, &["A", "B"]).await;
    let mut steps = vec![[moved(&a.bus), moved(&b.bus), (0, 0)]];
    source.rounds(10).await;
    let c = ours(&topic, &group, &log, "C", assignors).await;
    until_even(&mut source, &log, None, &mut drained, &["A", "B", "C"]).await;
    steps.push([moved(&a.bus), moved(&b.bus), moved(&c.bus)]);
    source.rounds(10).await;
    let a_moved = moved(&a.bus);
    a.stop().await;
    until_even(&mut source, &log, None, &mut drained, &["B", "C"]).await;
    steps.push([a_moved, moved(&b.bus), moved(&c.bus)]);

    source.rounds(5).await;
    let produced = source.produced();
    wait_for("every record to be handled", DEADLINE, || log.distinct().is_superset(&produced))
        .await;
    let (duplicates, rewinds) = check_order(&log.snapshot(), &produced);
    note(&format!(
        "{assignors:?}: {} records produced, {} handled, {duplicates} duplicates, {rewinds} \
         rewinds; (assigned, revoked) of A, B, C per step: {steps:?}",
        produced.len(),
        log.len()
    ));
    assert_eq!(
        duplicates,
        0,
        "clean revocations commit before the partitions move; handled twice: {}",
        group_support::describe_duplicates(&log.snapshot())
    );
    b.stop().await;
    c.stop().await;
    steps
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cooperative_members_revoke_only_what_moves() {
    let steps = join_and_leave(COOPERATIVE).await;
    // B joins: A gives up the 3 that move, keeps 3; B gets 3 (in the follow-up rebalance).
    assert_eq!(steps[0], [(6, 3), (3, 0), (0, 0)], "after B joined");
    // C joins: A and B give up one each; C gets 2.
    assert_eq!(steps[1], [(6, 4), (3, 1), (2, 0)], "after C joined");
    // A leaves: B and C only gain (one each); nothing is revoked.
    assert_eq!(steps[2], [(6, 4), (4, 1), (3, 0)], "after A left");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn eager_members_revoke_everything_at_each_rebalance() {
    let steps = join_and_leave(&["range"]).await;
    // The contrast: every rebalance revokes every partition of every member.
    let [(_, a_revoked), (_, b_revoked), _] = steps[0];
    assert!(a_revoked >= 6 && b_revoked == 0, "after B joined: {steps:?}");
    let [(_, a_revoked), (_, b_revoked), _] = steps[1];
    assert!(a_revoked >= 9 && b_revoked >= 3, "after C joined: {steps:?}");
    let [_, (_, b_revoked), (_, c_revoked)] = steps[2];
    assert!(b_revoked >= 5 && c_revoked >= 2, "after A left: {steps:?}");
}

/// The eager `sticky` assignor: every rebalance revokes everything, but each member gets back
/// what it held as far as balance allows (its subscription owns nothing: what it held travels
/// in its user data).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn eager_sticky_members_get_their_partitions_back() {
    let topic = bus_tests::unique("group-sticky");
    let group = bus_tests::unique("group-sticky-g");
    let mut source = Source::new(&topic, PARTITIONS, KEYS).await;
    let log = Log::default();
    let mut drained = 0;
    source.rounds(5).await;
    let a = ours(&topic, &group, &log, "A", &["sticky"]).await;
    let b = ours(&topic, &group, &log, "B", &["sticky"]).await;
    let two = until_even(&mut source, &log, None, &mut drained, &["A", "B"]).await;
    let c = ours(&topic, &group, &log, "C", &["sticky"]).await;
    let three = until_even(&mut source, &log, None, &mut drained, &["A", "B", "C"]).await;
    for member in ["A", "B"] {
        assert!(
            three[member].is_subset(&two[member]),
            "{member} kept its own: {two:?} then {three:?}"
        );
    }
    assert!(moved(&a.bus).1 >= 3 && moved(&b.bus).1 >= 3, "eager: everything was revoked");
    let produced = source.produced();
    wait_for("every record to be handled", DEADLINE, || log.distinct().is_superset(&produced))
        .await;
    check_order(&log.snapshot(), &produced);
    for member in [a, b, c] {
        member.stop().await;
    }
}

/// One of ours and one librdkafka member, both `cooperative-sticky`; the first alone, then the
/// second joins, then the peer leaves.
async fn share_with_librdkafka(peer_first: bool) {
    let topic = bus_tests::unique("group-coop-interop");
    let group = bus_tests::unique("group-coop-interop-g");
    let mut source = Source::new(&topic, PARTITIONS, KEYS).await;
    let log = Log::default();
    let mut drained = 0;
    source.rounds(10).await;

    let (mut peer, mine) = if peer_first {
        let peer = PeerConsumer::start(&topic, &group, "peer", "cooperative-sticky");
        until_even(&mut source, &log, Some(&peer), &mut drained, &["peer"]).await;
        let mine = ours(&topic, &group, &log, "ours", COOPERATIVE).await;
        (peer, mine)
    } else {
        let mine = ours(&topic, &group, &log, "ours", COOPERATIVE).await;
        until_even(&mut source, &log, None, &mut drained, &["ours"]).await;
        (PeerConsumer::start(&topic, &group, "peer", "cooperative-sticky"), mine)
    };
    until_even(&mut source, &log, Some(&peer), &mut drained, &["ours", "peer"]).await;
    // Stable: a few more rounds keep the split.
    for _ in 0..2 {
        until_even(&mut source, &log, Some(&peer), &mut drained, &["ours", "peer"]).await;
    }
    let (ours_assigned, ours_revoked) = moved(&mine.bus);
    let (peer_assigned, peer_revoked) = peer.assigned_and_revoked();
    note(&format!(
        "peer first: {peer_first}: ours assigned {ours_assigned}, revoked {ours_revoked}; the \
         peer assigned {peer_assigned}, revoked {peer_revoked}"
    ));
    if peer_first {
        assert_eq!((peer_assigned, peer_revoked), (6, 3), "the peer gave up only what moved");
        assert_eq!((ours_assigned, ours_revoked), (3, 0));
    } else {
        assert_eq!((ours_assigned, ours_revoked), (6, 3), "ours gave up only what moved");
        assert_eq!((peer_assigned, peer_revoked), (3, 0));
    }

    // The peer leaves: ours takes everything, revoking nothing.
    peer.stop().await;
    assert!(peer.events().contains(&PeerEvent::Closed), "the peer did not close cleanly");
    drained = peer.drain_into(&log, drained);
    until_even(&mut source, &log, Some(&peer), &mut drained, &["ours"]).await;
    assert_eq!(moved(&mine.bus).1, ours_revoked, "gaining partitions revokes nothing");

    let produced = source.produced();
    wait_for("every record to be handled", DEADLINE, || log.distinct().is_superset(&produced))
        .await;
    let (duplicates, rewinds) = check_order(&log.snapshot(), &produced);
    note(&format!(
        "{} records produced, {} handled, {duplicates} duplicates, {rewinds} rewinds",
        produced.len(),
        log.len()
    ));
    mine.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cooperative_with_librdkafka_leading() {
    share_with_librdkafka(true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cooperative_with_us_leading() {
    share_with_librdkafka(false).await;
}

/// KIP-429's upgrade path in one group: an eager member offering `cooperative-sticky` first
/// (it forms the group, so the group's protocol is `cooperative-sticky`), a librdkafka
/// cooperative member, our cooperative member; then the eager member is rolled to cooperative.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn eager_and_cooperative_members_share_a_group_through_the_upgrade() {
    let topic = bus_tests::unique("group-coop-mixed");
    let group = bus_tests::unique("group-coop-mixed-g");
    let mut source = Source::new(&topic, PARTITIONS, KEYS).await;
    let log = Log::default();
    let mut drained = 0;
    source.rounds(10).await;

    let eager = ours(&topic, &group, &log, "A", &["cooperative-sticky", "range"]).await;
    until_even(&mut source, &log, None, &mut drained, &["A"]).await;
    let peer = PeerConsumer::start(&topic, &group, "B", "cooperative-sticky");
    until_even(&mut source, &log, Some(&peer), &mut drained, &["A", "B"]).await;
    let c = ours(&topic, &group, &log, "C", COOPERATIVE).await;
    until_even(&mut source, &log, Some(&peer), &mut drained, &["A", "B", "C"]).await;
    let (a_assigned, a_revoked) = moved(&eager.bus);
    note(&format!("the eager member: assigned {a_assigned}, revoked {a_revoked}"));
    assert_eq!(a_assigned, a_revoked + 2, "it holds 2");

    // The second step of the upgrade: A comes back with `cooperative-sticky` alone.
    source.rounds(10).await;
    eager.stop().await;
    until_even(&mut source, &log, Some(&peer), &mut drained, &["B", "C"]).await;
    let upgraded = ours(&topic, &group, &log, "A2", COOPERATIVE).await;
    until_even(&mut source, &log, Some(&peer), &mut drained, &["A2", "B", "C"]).await;
    let (c_assigned, c_revoked) = moved(&c.bus);
    note(&format!("the cooperative member C: assigned {c_assigned}, revoked {c_revoked}"));
    assert_eq!(c_assigned, c_revoked + 2, "it holds 2");
    assert!(c_revoked <= 2, "C only ever gave up partitions that moved: {c_revoked}");

    source.rounds(5).await;
    let produced = source.produced();
    wait_for("every record to be handled", DEADLINE, || {
        drained = peer.drain_into(&log, drained);
        log.distinct().is_superset(&produced)
    })
    .await;
    let (duplicates, rewinds) = check_order(&log.snapshot(), &produced);
    note(&format!(
        "{} records produced, {} handled, {duplicates} duplicates, {rewinds} rewinds",
        produced.len(),
        log.len()
    ));
    let mut peer = peer;
    peer.stop().await;
    upgraded.stop().await;
    c.stop().await;
}
