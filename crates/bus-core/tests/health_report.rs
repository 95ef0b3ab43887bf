//! The health report on the in-memory backend: a subscription's group state, its assigned
//! partitions with their lag (high watermark from each read of the log, committed offset,
//! position), its backlog while a handler holds messages back and once it lets them through;
//! and the roll-up's order (the worst state wins, reasons joined).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use bus_core::{EventBus, Message, Record, SubscribeOptions, health::GroupState, health::Health};

const PATIENCE: Duration = Duration::from_secs(30);

async fn eventually(what: &str, mut condition: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + PATIENCE;
    while !condition() {
        assert!(tokio::time::Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_report_shows_the_group_state_the_lag_and_the_backlog() {
    let bus = EventBus::in_memory();
    bus.memory_backend().unwrap().create_topic("orders", 2).unwrap();
    let open = Arc::new(AtomicBool::new(false));
    let gate = Arc::clone(&open);
    let options = SubscribeOptions::new("billing").with_commit_interval(Duration::from_millis(20));
    let subscription = bus
        .subscribe("orders", options, move |_m: Message| {
            let gate = Arc::clone(&gate);
            async move {
                while !gate.load(Ordering::Acquire) {
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
                Ok(())
            }
        })
        .await
        .unwrap();
    for i in 0..10 {
        let record = Record::new("orders", format!("{i}")).with_partition(i % 2);
        bus.publish(record).await.unwrap();
    }
    // Held back by the handler: everything fetched, nothing committed.
    eventually("the partitions fetched to their end", || {
        let report = bus.health_report();
        report.subscriptions.first().is_some_and(|s| {
            s.partitions.len() == 2
                && s.partitions.iter().all(|p| p.high_watermark == Some(5))
                && s.backlog == 10
        })
    })
    .await;
    let report = bus.health_report();
    let status = &report.subscriptions[0];
    assert_eq!(status.state, GroupState::Stable, "{report:?}");
    assert_eq!((status.topic.as_str(), status.group.as_str()), ("orders", "billing"));
    assert!(status.partitions.iter().all(|p| p.lag == Some(5) && p.committed.unwrap_or(0) == 0));
    assert!(status.since_progress.is_some());
    assert_eq!(report.health, Health::Ready);

    open.store(true, Ordering::Release);
    eventually("the backlog drained", || {
        let report = bus.health_report();
        report.subscriptions[0].backlog == 0
            && report.subscriptions[0].partitions.iter().all(|p| p.committed == Some(5))
    })
    .await;
    subscription.unsubscribe(Duration::from_secs(5)).await.unwrap();
    assert!(bus.health_report().subscriptions.is_empty());
    bus.shutdown(Duration::from_secs(5)).await.unwrap();
    assert_eq!(bus.health_report().health, Health::Closed);
}

#[test]
fn the_roll_up_keeps_the_worst_state_and_every_reason() {
    let degraded = Health::Degraded { reason: "a partition stuck".into() };
    let unhealthy = Health::Unhealthy { reason: "a subscription failed".into() };
    assert_eq!(Health::Ready.and(Health::Ready), Health::Ready);
    assert_eq!(Health::Ready.and(degraded.clone()), degraded);
    assert_eq!(
        degraded.clone().and(unhealthy.clone()),
        Health::Unhealthy { reason: "a partition stuck; a subscription failed".into() }
    );
    assert_eq!(unhealthy.and(Health::Closed), Health::Closed);
    assert!(Health::Ready.is_ready() && degraded.reason().is_some());
}
