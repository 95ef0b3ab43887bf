//! Interop: one of our consumers and one librdkafka consumer (confluent-kafka, run by
//! `tests/peer/group_peer.py`) in the same group share the partitions without overlap while the
//! group is stable, whichever of them leads (computes the assignment), with the `range` and the
//! `roundrobin` assignor; and the split is exactly the one the Java algorithms give (our member
//! ids, `bus-…`, sort before librdkafka's, `group-peer-…`). When the peer leaves, ours takes
//! every partition; no record is lost.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod group_support;

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use group_support::{
    DEADLINE, Log, PeerConsumer, PeerEvent, Source, config, handler, note, options, split_of,
    wait_for,
};

const PARTITIONS: i32 = 6;
const KEYS: usize = 12;

/// Produces rounds until one is handled with the partitions split exactly as `expected`
/// (consumer -> partitions); copies the peer's records into `log` as it goes.
async fn until_split(
    source: &mut Source,
    log: &Log,
    peer: Option<&PeerConsumer>,
    drained: &mut usize,
    expected: &BTreeMap<String, BTreeSet<i32>>,
) {
    let deadline = tokio::time::Instant::now() + DEADLINE;
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
        let split = split_of(&owners);
        let overlap = owners.values().any(|o| o.len() > 1);
        if !overlap && &split == expected {
            note(&format!("round {round}: partitions split {split:?}"));
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no round split the partitions as {expected:?} within {DEADLINE:?}; the last round's \
             owners: {owners:?}; the peer's events: {:?}",
            peer.map(|p| p
                .events()
                .into_iter()
                .filter(|e| !matches!(e, PeerEvent::Record { .. }))
                .collect::<Vec<_>>())
        );
    }
}

fn split(ours: &[i32], peer: &[i32]) -> BTreeMap<String, BTreeSet<i32>> {
    let mut split = BTreeMap::new();
    split.insert("ours".to_owned(), ours.iter().copied().collect());
    split.insert("peer".to_owned(), peer.iter().copied().collect());
    split
}

async fn share_with_librdkafka(assignor: &str, peer_leads: bool) {
    let topic = bus_tests::unique(&format!("group-interop-{assignor}"));
    let group = bus_tests::unique(&format!("group-interop-{assignor}-g"));
    let mut source = Source::new(&topic, PARTITIONS, KEYS).await;
    let log = Log::default();
    let mut drained = 0;
    source.rounds(10).await;

    let mut config = config();
    config.consumer.assignors = vec![assignor.to_owned()];
    let bus = bus_kafka::connect(config).await.unwrap();
    let all: Vec<i32> = (0..PARTITIONS).collect();

    let (mut peer, subscription) = if peer_leads {
        // The peer forms the group alone (and so leads it), then ours joins.
        let peer = PeerConsumer::start(&topic, &group, "peer", assignor);
        wait_for("the peer's first assignment", DEADLINE, || {
            peer.events().iter().any(|e| matches!(e, PeerEvent::Assign(p) if p.len() == all.len()))
        })
        .await;
        let subscription = bus
            .subscribe(&topic, options(&group), handler(&log, "ours", Duration::ZERO))
            .await
            .unwrap();
        (peer, subscription)
    } else {
        let subscription = bus
            .subscribe(&topic, options(&group), handler(&log, "ours", Duration::ZERO))
            .await
            .unwrap();
        let alone: BTreeMap<String, BTreeSet<i32>> =
            [("ours".to_owned(), all.iter().copied().collect())].into();
        until_split(&mut source, &log, None, &mut drained, &alone).await;
        (PeerConsumer::start(&topic, &group, "peer", assignor), subscription)
    };

    let expected = match assignor {
        "range" => split(&[0, 1, 2], &[3, 4, 5]),
        _ => split(&[0, 2, 4], &[1, 3, 5]),
    };
    until_split(&mut source, &log, Some(&peer), &mut drained, &expected).await;
    // Stable: a few more rounds keep the same split.
    for _ in 0..3 {
        until_split(&mut source, &log, Some(&peer), &mut drained, &expected).await;
    }

    // The peer leaves: ours takes everything.
    peer.stop().await;
    assert!(peer.events().contains(&PeerEvent::Closed), "the peer did not close cleanly");
    drained = peer.drain_into(&log, drained);
    let alone: BTreeMap<String, BTreeSet<i32>> =
        [("ours".to_owned(), all.iter().copied().collect())].into();
    until_split(&mut source, &log, Some(&peer), &mut drained, &alone).await;

    let produced = source.produced();
    wait_for("every record to be handled", DEADLINE, || log.distinct().is_superset(&produced))
        .await;
    note(&format!(
        "{assignor}, peer leads: {peer_leads}: {} records produced, {} handled",
        produced.len(),
        log.len()
    ));

    let unsubscribed = subscription.unsubscribe(Duration::from_secs(30)).await.unwrap();
    assert!(unsubscribed.subscription.left_group, "{unsubscribed:?}");
    bus.shutdown(Duration::from_secs(30)).await.unwrap();
    assert_eq!(bus.live_tasks(), 0, "tasks left behind:\n{}", bus.snapshot());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn range_with_librdkafka_leading() {
    share_with_librdkafka("range", true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn range_with_us_leading() {
    share_with_librdkafka("range", false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn roundrobin_with_librdkafka_leading() {
    share_with_librdkafka("roundrobin", true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn roundrobin_with_us_leading() {
    share_with_librdkafka("roundrobin", false).await;
}
