//! A broker's fetch session (`bus/kafka/fetch/broker-<node id>`) that panics mid-stream is
//! restarted by its supervisor with its job channel handed over: the readers whose requests it
//! held fail once and ask again, nothing is lost, and the bus stays `Ready` and shuts down
//! clean. Alone in its binary: fault keys match any task path in the process.
//!
//! Run with `cargo test -p bus-tests --features fault-injection --test fetch_session_restart`.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bus_core::fault;
use bus_kafka::supervisor::{Action, SupervisionEvent};
use bus_kafka::{Message, Record, SubscribeOptions, health::Health};
use tokio::sync::broadcast;

const DEADLINE: Duration = Duration::from_secs(60);
const PARTITIONS: i32 = 6;
const ROUND: usize = 300;

async fn restarted(events: &mut broadcast::Receiver<SupervisionEvent>, key: &str) {
    let deadline = tokio::time::Instant::now() + DEADLINE;
    loop {
        match tokio::time::timeout_at(deadline, events.recv()).await {
            Ok(Ok(event))
                if event.path.contains(key) && matches!(event.action, Action::Restart { .. }) =>
            {
                return;
            }
            Ok(Ok(_) | Err(broadcast::error::RecvError::Lagged(_))) => {}
            Ok(Err(broadcast::error::RecvError::Closed)) | Err(_) => {
                panic!("no restart of {key} was published")
            }
        }
    }
}

async fn all_handled(seen: &Arc<Mutex<Vec<String>>>, count: usize) {
    bus_tests::wait_for(&format!("{count} records handled"), DEADLINE, || {
        let seen = seen.lock().unwrap();
        seen.iter().collect::<BTreeSet<_>>().len() >= count
    })
    .await;
    let seen = seen.lock().unwrap();
    let distinct: BTreeSet<&String> = seen.iter().collect();
    for i in 0..count {
        assert!(distinct.contains(&format!("r{i}")), "r{i} was lost");
    }
}

async fn publish_range(bus: &bus_kafka::EventBus, topic: &str, from: usize, to: usize) {
    let mut futures = Vec::new();
    for i in from..to {
        let record = Record::new(topic, format!("r{i}")).with_key(format!("k{}", i % 13));
        futures.push(bus.publish_nowait(record).await.unwrap());
    }
    for future in futures {
        future.await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fetch_session_panicking_mid_stream_is_restarted_and_nothing_is_lost() {
    let topic = bus_tests::unique("fetch-session-heal");
    let group = bus_tests::unique("fetch-session-heal-g");
    let config = bus_tests::config();
    bus_kafka::admin::connect(config.clone())
        .await
        .unwrap()
        .ensure_topic(&topic, PARTITIONS)
        .await
        .unwrap();
    let bus = bus_kafka::connect(config).await.unwrap();
    let mut events = bus.scope().events();
    let seen: Arc<Mutex<Vec<String>>> = Arc::default();
    let log = Arc::clone(&seen);
    let options = SubscribeOptions::new(&group)
        .with_commit_interval(Duration::from_millis(100))
        .with_rebalance_timeout(Duration::from_secs(20));
    let subscription = bus
        .subscribe(&topic, options, move |message: Message| {
            let log = Arc::clone(&log);
            async move {
                log.lock().unwrap().push(String::from_utf8_lossy(message.payload()).into_owned());
                Ok(())
            }
        })
        .await
        .unwrap();
    publish_range(&bus, &topic, 0, ROUND).await;
    all_handled(&seen, ROUND).await;

    let key = "kafka/fetch/broker-";
    fault::arm_panic(key, 2);
    publish_range(&bus, &topic, ROUND, 2 * ROUND).await;
    bus_tests::wait_for("the fault to be met twice", DEADLINE, || fault::met(key) == 2).await;
    fault::disarm(key);
    restarted(&mut events, key).await;
    all_handled(&seen, 2 * ROUND).await;
    publish_range(&bus, &topic, 2 * ROUND, 3 * ROUND).await;
    all_handled(&seen, 3 * ROUND).await;

    let health = bus.health();
    assert_eq!(health, Health::Ready, "{health:?}");
    subscription.unsubscribe(Duration::from_secs(10)).await.unwrap();
    let report = bus.shutdown(Duration::from_secs(10)).await.unwrap();
    assert_eq!(bus.live_tasks(), 0, "{report:?}");
}
