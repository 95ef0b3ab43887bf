//! The group plane when the broker goes away. Each test runs a private single-node Apache Kafka
//! (records, committed offsets and group membership survive its restart); the shared test
//! cluster is never touched.
//!
//! - A coordinator restart is ridden out: the member reconnects (finding the coordinator again)
//!   and carries on; nothing is lost and per-key order holds.
//! - A member cut off from its coordinator for longer than its session timeout gives its
//!   partitions up on its own (the coordinator has expelled it by then, as librdkafka assumes
//!   too), and when the broker is back it joins again and resumes from the committed offsets:
//!   nothing is lost and per-key order holds.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod group_support;
#[path = "producer_support/mod.rs"]
mod producer_support;

use std::time::Duration;

use bus_kafka::EventBus;
use group_support::{
    DEADLINE, Log, Source, check_order, config_at, handler, note, options, wait_for,
};
use producer_support::OwnBroker;

const PARTITIONS: i32 = 3;
const KEYS: usize = 9;

async fn member(broker: &OwnBroker, topic: &str, group: &str, log: &Log) -> EventBus {
    let mut config = config_at(&broker.bootstrap());
    config.request_timeout = Duration::from_secs(3);
    config.consumer.session_timeout = Duration::from_secs(6);
    let bus = bus_kafka::connect(config).await.unwrap();
    let subscription = bus
        .subscribe(topic, options(group), handler(log, "member", Duration::from_millis(1)))
        .await
        .unwrap();
    drop(subscription); // it runs until the bus shuts down
    bus
}

/// A private broker with 20 rounds of records, and a member that has handled them.
async fn started(name: &str) -> (OwnBroker, Source, Log, EventBus) {
    let broker = OwnBroker::start();
    let topic = bus_tests::unique(name);
    let group = bus_tests::unique(&format!("{name}-g"));
    let mut source = Source::at(&broker.bootstrap(), &topic, PARTITIONS, KEYS).await;
    let log = Log::default();
    source.rounds(20).await;
    let bus = member(&broker, &topic, &group, &log).await;
    let produced = source.produced();
    wait_for("the first records", DEADLINE, || log.distinct().is_superset(&produced)).await;
    (broker, source, log, bus)
}

async fn finish(bus: EventBus, log: &Log, source: &Source) {
    let produced = source.produced();
    wait_for("every record", DEADLINE * 2, || log.distinct().is_superset(&produced)).await;
    let (duplicates, rewinds) = check_order(&log.snapshot(), &produced);
    note(&format!(
        "{} produced, {} handled, {duplicates} duplicates, {rewinds} rewinds; {:?}",
        produced.len(),
        log.len(),
        bus.metrics()
    ));
    let report = bus.shutdown(Duration::from_secs(30)).await.unwrap();
    assert!(report.subscriptions.iter().all(|s| s.left_group), "{report:?}");
    assert_eq!(bus.live_tasks(), 0, "tasks left behind:\n{}", bus.snapshot());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_rides_out_a_coordinator_restart() {
    let (mut broker, mut source, log, bus) = started("group-fault-restart").await;

    broker.restart();
    source.rounds(20).await;
    finish(bus, &log, &source).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_cut_off_past_its_session_gives_up_its_partitions_and_rejoins() {
    let (mut broker, mut source, log, bus) = started("group-fault-cut").await;
    let rebalances = bus.metrics().rebalances;

    broker.stop();
    wait_for("the member to give its partitions up", DEADLINE, || {
        bus.metrics().rebalances > rebalances
    })
    .await;
    broker.restart();
    source.rounds(20).await;
    finish(bus, &log, &source).await;
}
