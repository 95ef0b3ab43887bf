//! A stop while the subscription's control task is inside a long step is seen at once (issue 24,
//! item 5): a member whose revocation waits on a handler that runs for 10 s, shut down with
//! `shutdown(1 s)`, reports what it did (the handler abandoned, the group left) instead of an
//! empty report with the final commit and LeaveGroup lost.
//!
//! Shown to fail before (the step not interruptible): the control task was still draining at
//! the deadline, the report came back empty (`left_group` false, nothing abandoned) and the
//! task was aborted.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod group_support;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use bus_kafka::health::GroupState;
use bus_kafka::{HandlerError, Message, Record};
use group_support::{DEADLINE, config_with, options, wait_for};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stop_during_a_revocation_drain_keeps_its_deadline_and_reports_truly() {
    let topic = bus_tests::unique("stop-in-rebalance");
    let group = bus_tests::unique("stop-in-rebalance-group");
    let admin = bus_kafka::admin::connect(config_with(&["range"])).await.unwrap();
    admin.ensure_topic(&topic, 1).await.unwrap();
    let a = bus_kafka::connect(config_with(&["range"])).await.unwrap();
    let started = Arc::new(AtomicBool::new(false));
    let running = Arc::clone(&started);
    let _subscription = a
        .subscribe(&topic, options(&group), move |_message: Message| {
            let running = Arc::clone(&running);
            async move {
                running.store(true, Ordering::Release);
                tokio::time::sleep(Duration::from_secs(10)).await;
                Ok::<(), HandlerError>(())
            }
        })
        .await
        .unwrap();
    a.publish(Record::new(&topic, "slow")).await.unwrap();
    wait_for("the slow handler to start", DEADLINE, || started.load(Ordering::Acquire)).await;

    // A second member: the eager rebalance revokes A's partition, whose drain waits for the
    // handler (up to the rebalance timeout, 20 s).
    let b = bus_kafka::connect(config_with(&["range"])).await.unwrap();
    let _other = b
        .subscribe(&topic, options(&group), |_m: Message| async { Ok::<(), HandlerError>(()) })
        .await
        .unwrap();
    wait_for("A to be draining its revocation", DEADLINE, || {
        a.health_report()
            .subscriptions
            .iter()
            .any(|s| s.topic == topic && s.state == GroupState::Rebalancing)
    })
    .await;

    let report = a.shutdown(Duration::from_secs(1)).await.unwrap();
    assert_eq!(report.subscriptions.len(), 1, "{report:?}");
    let subscription = &report.subscriptions[0];
    assert_eq!(subscription.abandoned, 1, "the slow handler abandoned: {report:?}");
    assert!(subscription.left_group, "the group left: {report:?}");
    assert_eq!(a.live_tasks(), 0);
    b.shutdown(Duration::from_secs(30)).await.unwrap();
}
