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
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bus_core::fault;
use bus_kafka::supervisor::{Action, SupervisionEvent};
use bus_kafka::{
    EventBus, KafkaConfig, Message, Record, SubscribeOptions, Subscription, errors::PublishError,
    health::GroupState, health::Health,
};
use rskafka::client::ClientBuilder;
use rskafka::client::partition::{OffsetAt, UnknownTopicHandling};
use tokio::sync::broadcast;

/// The bound on anything a test waits for.
const DEADLINE: Duration = Duration::from_secs(60);

/// Waits until a restart of the task at `key` was published (events seen are kept in `seen`).
async fn restarted(
    events: &mut broadcast::Receiver<SupervisionEvent>,
    seen: &mut Vec<SupervisionEvent>,
    key: &str,
) {
    let deadline = tokio::time::Instant::now() + DEADLINE;
    loop {
        let found =
            seen.iter().any(|e| e.path.contains(key) && matches!(e.action, Action::Restart { .. }));
        if found {
            return;
        }
        match tokio::time::timeout_at(deadline, events.recv()).await {
            Ok(Ok(event)) => seen.push(event),
            Ok(Err(broadcast::error::RecvError::Lagged(_))) => {}
            Ok(Err(broadcast::error::RecvError::Closed)) | Err(_) => {
                panic!("no restart of {key} was published: {seen:?}")
            }
        }
    }
}

/// The partition's high watermark, read with rskafka (independent of the bus).
async fn high_watermark(topic: &str, partition: i32) -> i64 {
    let client = ClientBuilder::new(bus_tests::bootstrap().split(',').map(str::to_owned).collect())
        .build()
        .await
        .unwrap();
    let partition =
        client.partition_client(topic, partition, UnknownTopicHandling::Retry).await.unwrap();
    partition.get_offset(OffsetAt::Latest).await.unwrap()
}

/// Quick heartbeats and metadata checks: the member's tasks take turns often.
fn config() -> KafkaConfig {
    let mut config = bus_tests::config();
    config.consumer.heartbeat_interval = Duration::from_millis(300);
    config.consumer.session_timeout = Duration::from_secs(10);
    config.metadata.max_age = Duration::from_millis(300);
    config
}

/// Frequent commits (the control task's turns), a bounded rebalance.
fn options(group: &str) -> SubscribeOptions {
    SubscribeOptions::new(group)
        .with_commit_interval(Duration::from_millis(100))
        .with_rebalance_timeout(Duration::from_secs(20))
}

/// Subscribes `group` to `topic`, recording every value handled.
async fn recording(
    bus: &EventBus,
    topic: &str,
    group: &str,
) -> (Subscription, Arc<Mutex<Vec<String>>>) {
    let seen: Arc<Mutex<Vec<String>>> = Arc::default();
    let log = Arc::clone(&seen);
    let subscription = bus
        .subscribe(topic, options(group), move |message: Message| {
            let log = Arc::clone(&log);
            async move {
                log.lock().unwrap().push(String::from_utf8_lossy(message.payload()).into_owned());
                Ok(())
            }
        })
        .await
        .unwrap();
    (subscription, seen)
}

/// Publishes `r<from>`..`r<to>`, spread over the partitions by key.
async fn publish_range(bus: &EventBus, topic: &str, from: usize, to: usize) {
    let mut futures = Vec::new();
    for i in from..to {
        let record = Record::new(topic, format!("r{i}")).with_key(format!("k{}", i % 13));
        futures.push(bus.publish_nowait(record).await.unwrap());
    }
    for future in futures {
        future.await.unwrap();
    }
}

/// Waits until every value `r<0>`..`r<count>` was handled (at least once).
async fn all_handled(seen: &Arc<Mutex<Vec<String>>>, count: usize) {
    bus_tests::wait_for(&format!("{count} records handled"), DEADLINE, || {
        let seen = seen.lock().unwrap();
        let distinct: BTreeSet<&String> = seen.iter().collect();
        distinct.len() >= count
    })
    .await;
    let seen = seen.lock().unwrap();
    let distinct: BTreeSet<&String> = seen.iter().collect();
    for i in 0..count {
        assert!(distinct.contains(&format!("r{i}")), "r{i} was lost");
    }
}

async fn kafka_bus(topic: &str, partitions: i32) -> EventBus {
    let config = config();
    bus_kafka::admin::connect(config.clone())
        .await
        .unwrap()
        .ensure_topic(topic, partitions)
        .await
        .unwrap();
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
    restarted(&mut events, &mut Vec::new(), &key).await;
    bus_tests::wait_for("the restart to be counted", DEADLINE, || bus.metrics().task_restarts >= 1)
        .await;
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consumer_tasks_panicking_mid_stream_are_restarted_and_nothing_is_lost() {
    let topic = bus_tests::unique("heal-consumer");
    let group = bus_tests::unique("heal-group");
    let bus = kafka_bus(&topic, 2).await;
    let mut events = bus.scope().events();
    let (subscription, seen) = recording(&bus, &topic, &group).await;
    const ROUND: usize = 500;
    publish_range(&bus, &topic, 0, ROUND).await;
    all_handled(&seen, ROUND).await;
    // Each kind of task, in turn, mid-stream: a fetch loop, the control task (commits), the
    // member's heartbeat and coordinator tasks.
    let label = format!("{group}/{topic}");
    let keys = [
        format!("{label}/fetch/{topic}-0/fetch"),
        format!("{label}/control"),
        format!("{label}/member/heartbeat"),
        format!("{label}/member/coordinator"),
    ];
    let mut seen_events = Vec::new();
    for (round, key) in keys.iter().enumerate() {
        fault::arm_panic(key, 1);
        let from = ROUND * (round + 1);
        publish_range(&bus, &topic, from, from + ROUND).await;
        bus_tests::wait_for(&format!("the fault at {key}"), DEADLINE, || fault::met(key) == 1)
            .await;
        fault::disarm(key);
        all_handled(&seen, from + ROUND).await;
        restarted(&mut events, &mut seen_events, key).await;
    }
    let status = bus.health_report();
    assert_eq!(status.health, Health::Ready, "{status:?}");
    let subscription_status = &status.subscriptions[0];
    assert_eq!(subscription_status.state, GroupState::Stable, "{status:?}");
    assert_eq!(subscription_status.partitions.len(), 2, "{status:?}");
    // Lag: the committed offsets reach the high watermark once everything is handled.
    bus_tests::wait_for("the backlog to drain", DEADLINE, || {
        bus.health_report().subscriptions[0].backlog == 0
    })
    .await;
    subscription.unsubscribe(Duration::from_secs(10)).await.unwrap();
    bus.shutdown(Duration::from_secs(10)).await.unwrap();
    assert_eq!(bus.live_tasks(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fetch_loop_panicking_again_and_again_fails_its_subscription_and_the_rest_goes_on() {
    let topic = bus_tests::unique("heal-escalate");
    let other_topic = bus_tests::unique("heal-bystander");
    let group = bus_tests::unique("heal-group");
    let bus = kafka_bus(&topic, 1).await;
    bus_kafka::admin::connect(config()).await.unwrap().ensure_topic(&other_topic, 1).await.unwrap();
    let (failing, _) = recording(&bus, &topic, &group).await;
    let (bystander, bystander_seen) = recording(&bus, &other_topic, &group).await;
    publish_range(&bus, &other_topic, 0, 50).await;
    all_handled(&bystander_seen, 50).await;

    let key = format!("{group}/{topic}/fetch/{topic}-0/fetch");
    fault::arm_panic(&key, 100);
    bus_tests::wait_for("the subscription to fail", DEADLINE, || {
        matches!(bus.health(), Health::Unhealthy { .. })
    })
    .await;
    fault::disarm(&key);
    let report = bus.health_report();
    let status = report.subscriptions.iter().find(|s| s.topic == topic).unwrap();
    assert_eq!(status.state, GroupState::Failed, "{report:?}");
    let failure = status.failure.as_deref().unwrap_or_default();
    assert!(failure.contains("exceeded") && failure.contains(&topic), "{failure}");
    assert!(report.health.reason().unwrap_or_default().contains(&topic), "{report:?}");
    assert!(bus.metrics().subscriptions_failed >= 1);
    // The rest of the bus keeps serving: the other subscription consumes, the producer
    // produces, and nothing escalated past the failed subscription.
    publish_range(&bus, &other_topic, 50, 100).await;
    all_handled(&bystander_seen, 100).await;
    assert!(bus.scope().failure().is_none());
    let bystander_status = report.subscriptions.iter().find(|s| s.topic == other_topic).unwrap();
    assert_ne!(bystander_status.state, GroupState::Failed);

    failing.unsubscribe(Duration::from_secs(10)).await.unwrap();
    bystander.unsubscribe(Duration::from_secs(10)).await.unwrap();
    bus.shutdown(Duration::from_secs(10)).await.unwrap();
    assert_eq!(bus.live_tasks(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_fetch_loop_shows_in_the_lag_and_goes_on_when_released() {
    let topic = bus_tests::unique("heal-stall");
    let group = bus_tests::unique("heal-group");
    let bus = kafka_bus(&topic, 1).await;
    let (subscription, seen) = recording(&bus, &topic, &group).await;
    publish_range(&bus, &topic, 0, 10).await;
    all_handled(&seen, 10).await;
    let key = format!("{group}/{topic}/fetch/{topic}-0/fetch");
    fault::arm_stall(&key);
    bus_tests::wait_for("the fetch loop to stall", DEADLINE, || fault::met(&key) == 1).await;
    publish_range(&bus, &topic, 10, 20).await;
    // Nothing more is read, and the report says how long since the subscription progressed
    // (its only partition stalled: no fetch moves it, none finds it caught up).
    bus_tests::wait_for("the time since progress to grow", DEADLINE, || {
        let report = bus.health_report();
        report.subscriptions[0].since_progress.is_some_and(|d| d >= Duration::from_millis(500))
    })
    .await;
    assert_eq!(seen.lock().unwrap().len(), 10, "a stalled loop reads nothing");
    fault::disarm(&key);
    all_handled(&seen, 20).await;
    bus_tests::wait_for("the lag to drain", DEADLINE, || {
        let report = bus.health_report();
        let partition = &report.subscriptions[0].partitions[0];
        partition.high_watermark == Some(20) && partition.lag == Some(0)
    })
    .await;
    subscription.unsubscribe(Duration::from_secs(10)).await.unwrap();
    bus.shutdown(Duration::from_secs(10)).await.unwrap();
    assert_eq!(bus.live_tasks(), 0);
}

/// `shutdown(d)` returns within `d` (and a margin for a loaded machine, well under the second
/// the flush used to wait past its deadline, twice) while a partition loop cannot fail back
/// its records itself (stalled here; between restarts after a panic is the same case), and its
/// report counts every record failed back, those failed by the loop's state dropped at the
/// deadline included (issue 24, item 6). Shown to fail before: 2.2 s, and `failed` 0.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shutdown_while_a_producer_loop_is_stuck_keeps_its_deadline_and_counts_every_record() {
    let topic = bus_tests::unique("heal-producer-shutdown");
    let bus = kafka_bus(&topic, 1).await;
    let key = format!("producer/{topic}-0");
    bus.publish(Record::new(topic.as_str(), "first")).await.unwrap();
    // The loop stops at its next turn, until disarmed (or aborted).
    fault::arm_stall(&key);
    const RECORDS: usize = 100;
    let mut futures = Vec::with_capacity(RECORDS);
    for i in 0..RECORDS {
        let record = Record::new(topic.as_str(), format!("r{i}")).with_partition(0);
        futures.push(bus.publish_nowait(record).await.unwrap());
    }
    bus_tests::wait_for("the loop to stall", DEADLINE, || fault::met(&key) >= 1).await;
    let limit = Duration::from_millis(200);
    let started = tokio::time::Instant::now();
    let report = bus.shutdown(limit).await.unwrap();
    let elapsed = started.elapsed();
    fault::disarm(&key);
    let results = tokio::time::timeout(DEADLINE, futures_util::future::join_all(futures))
        .await
        .expect("every delivery future resolves");
    let failed = results.iter().filter(|r| r.is_err()).count();
    let acked = results.len() - failed;
    assert_eq!(report.failed, failed, "the report counts every record failed back: {report:?}");
    assert_eq!(report.flushed, acked, "{report:?}");
    assert!(
        elapsed < limit + Duration::from_millis(800),
        "shutdown({limit:?}) took {elapsed:?} (the flush used to wait 1 s past its deadline, twice)"
    );
    assert_eq!(bus.live_tasks(), 0);
}
