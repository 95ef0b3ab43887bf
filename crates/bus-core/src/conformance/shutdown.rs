//! Shutdown: its report, one report for every caller, a closed bus refusing work.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use tokio::sync::Notify;

use crate::error::{PublishError, SubscribeError};
use crate::record::{Message, Record};

use super::harness::*;

/// Shutdown reports what it did and returns only when no task of the bus is left.
pub async fn shutdown_reports_and_leaves_nothing(h: &impl Harness) {
    let bus = h.bus().await;
    let topic = h.topic(&bus, "shutdown", 3).await;
    let release = Arc::new(Notify::new());
    let slow_started = Arc::new(AtomicBool::new(false));
    let (r, started) = (release.clone(), slow_started.clone());
    let _sub = bus
        .subscribe(&topic, options("shutdown").with_concurrency(3), move |m: Message| {
            let (release, started) = (r.clone(), started.clone());
            async move {
                if value_text(&m.value) == "slow" {
                    started.store(true, Ordering::SeqCst);
                    release.notified().await;
                }
                Ok(())
            }
        })
        .await
        .expect("subscribed");
    publish_all(&bus, vec![keyed(&topic, "x", "slow".into()), keyed(&topic, "y", "ok".into())])
        .await;
    // The keys may land on different partitions, read by different fetch loops: wait for both.
    eventually("fast one handled and slow one started", || {
        bus.metrics().handled >= 1 && slow_started.load(Ordering::SeqCst)
    })
    .await;
    assert!(bus.live_tasks() > 0);
    // Long enough for a loaded machine to commit and leave the group after the drain.
    let report = bus.shutdown(Duration::from_secs(2)).await.expect("clean shutdown");
    assert_eq!(report.handlers_abandoned, 1, "{report}");
    assert_eq!(bus.live_tasks(), 0);
    assert_eq!(report.subscriptions.len(), 1);
    assert!(report.subscriptions[0].left_group);
    assert!(report.to_string().contains("1 handler(s) abandoned"));
}

/// Concurrent and later shutdown callers all get the one report.
pub async fn concurrent_shutdown_callers_get_one_report(h: &impl Harness) {
    let bus = h.bus().await;
    let topic = h.topic(&bus, "concurrent", 1).await;
    let _sub = bus
        .subscribe(&topic, options("concurrent"), |_m: Message| async { Ok(()) })
        .await
        .expect("subscribed");
    let other = bus.clone();
    let (a, b, c) = tokio::join!(
        bus.shutdown(PATIENCE),
        bus.shutdown(PATIENCE),
        other.shutdown(Duration::from_secs(1))
    );
    let (a, b, c) = (a.expect("a"), b.expect("b"), c.expect("c"));
    assert_eq!(format!("{a:?}"), format!("{b:?}"));
    assert_eq!(format!("{a:?}"), format!("{c:?}"));
    let later = bus.shutdown(PATIENCE).await.expect("later");
    assert_eq!(format!("{a:?}"), format!("{later:?}"));
    assert_eq!(bus.live_tasks(), 0);
}

/// A bus that is shut down refuses new records and subscriptions with `Closed`.
pub async fn closed_bus_refuses_work(h: &impl Harness) {
    let bus = h.bus().await;
    let topic = h.topic(&bus, "closed", 1).await;
    bus.shutdown(PATIENCE).await.expect("clean shutdown");
    assert!(matches!(bus.publish(Record::new(&topic, "x")).await, Err(PublishError::Closed)));
    let refused =
        bus.subscribe(&topic, options("closed"), |_m: Message| async { Ok(()) }).await.err();
    assert!(matches!(refused, Some(SubscribeError::Closed)), "{refused:?}");
    assert_eq!(bus.health(), crate::health::Health::Closed);
}
