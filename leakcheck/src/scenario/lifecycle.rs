//! Lifecycle scenarios: stuck handlers at shutdown, and a bus dropped without shutdown.
//!
//! Owns: [`stuck_handlers`] and [`drop_without_shutdown`]. Both run on whatever bus the caller
//! makes (Kafka when a broker is there, so that sockets are part of the check).

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use bus_core::{EventBus, HandlerError, Message, Record, SubscribeOptions};
use tokio::sync::Notify;

use super::{Run, wait_until};

/// The shutdown deadline of the stuck-handler scenario.
const DEADLINE: Duration = Duration::from_secs(2);
/// What shutdown may take beyond its deadline: scheduling only (the graces of its stages come out
/// of the deadline: a subscription's report grace of 20 ms and the supervisor's wait of 5 ms for
/// tasks aborted with no time left are the most it can add, on a loaded machine a little more).
const MARGIN: Duration = Duration::from_millis(100);

/// One handler never completes, another blocks its thread. Shutdown must return within its
/// deadline plus a small margin and name both; once they are released, everything must return
/// to the baseline (checked by the caller).
pub(crate) async fn stuck_handlers(bus: EventBus, topics: [String; 2], mut run: Run) -> Run {
    let started = Arc::new(AtomicUsize::new(0));
    let never = Arc::new(Notify::new());
    let (release_blocked, blocked) = std::sync::mpsc::channel::<()>();
    let blocked = Arc::new(parking_lot::Mutex::new(blocked));

    let (s, n) = (Arc::clone(&started), Arc::clone(&never));
    let never_completes = bus
        .subscribe(&topics[0], SubscribeOptions::new("stuck-async"), move |_m: Message| {
            let (started, never) = (Arc::clone(&s), Arc::clone(&n));
            async move {
                started.fetch_add(1, Ordering::SeqCst);
                never.notified().await; // never notified during the shutdown
                Ok::<(), HandlerError>(())
            }
        })
        .await;
    let (s, b) = (Arc::clone(&started), Arc::clone(&blocked));
    let blocks_thread = bus
        .subscribe(&topics[1], SubscribeOptions::new("stuck-blocking"), move |_m: Message| {
            let (started, blocked) = (Arc::clone(&s), Arc::clone(&b));
            async move {
                started.fetch_add(1, Ordering::SeqCst);
                // Blocks the worker thread inside poll until released: no await, no abort.
                let _ = blocked.lock().recv();
                Ok::<(), HandlerError>(())
            }
        })
        .await;
    let (never_completes, blocks_thread) = match (never_completes, blocks_thread) {
        (Ok(a), Ok(b)) => (a, b),
        (a, b) => {
            run.problems.push(format!("cannot subscribe: {:?} {:?}", a.err(), b.err()));
            return run;
        }
    };
    for topic in &topics {
        match bus.publish(Record::new(topic.as_str(), "stuck").with_key("k")).await {
            Ok(_) => run.messages += 1,
            Err(error) => run.problems.push(format!("publish failed: {error}")),
        }
    }
    if !wait_until(Duration::from_secs(60), || started.load(Ordering::SeqCst) >= 2).await {
        run.problems.push("the handlers never started".into());
    }

    let began = Instant::now();
    let outcome = bus.shutdown(DEADLINE).await;
    let took = began.elapsed();
    run.shutdown = Some(took);
    run.shutdown_deadline = Some(DEADLINE);
    if took > DEADLINE + MARGIN {
        run.problems.push(format!(
            "shutdown took {took:?}, more than its deadline {DEADLINE:?} + {MARGIN:?}"
        ));
    }
    match &outcome {
        Ok(report) => run
            .problems
            .push(format!("shutdown reported clean while a handler blocks its thread:\n{report}")),
        Err(error) => {
            run.stuck.extend(error.stuck.iter().map(ToString::to_string));
            let abandoned = error.report.handlers_abandoned;
            let named_async = error
                .report
                .subscriptions
                .iter()
                .any(|s| s.group == "stuck-async" && s.abandoned_offsets.len() == 1);
            if !named_async {
                run.problems.push(format!(
                    "the never-completing handler was not reported abandoned ({abandoned} abandoned)"
                ));
            }
            let named_blocking = error.stuck.iter().any(|t| t.path.contains("stuck-blocking"));
            if !named_blocking {
                run.problems.push(format!(
                    "the thread-blocking handler's task was not named: {:?}",
                    error.stuck
                ));
            }
            let abandoned_at: Vec<String> = error
                .report
                .subscriptions
                .iter()
                .flat_map(|s| {
                    s.abandoned_offsets.iter().map(move |(p, o)| format!("{} {p}@{o}", s.group))
                })
                .collect();
            run.notes.push(format!(
                "abandoned: {}; stuck: {}",
                abandoned_at.join(", "),
                error.stuck.iter().map(ToString::to_string).collect::<Vec<_>>().join(", ")
            ));
        }
    }
    // Release both; the blocked thread returns, and its task ends.
    let _ = release_blocked.send(());
    never.notify_waiters();
    if let Err(error) = &outcome
        && let Err(still) = error.wait(Duration::from_secs(10)).await
    {
        run.problems.push(format!("tasks still alive after release: {still}"));
    }
    run.live_after_shutdown = bus.live_tasks();
    drop((never_completes, blocks_thread));
    drop(bus);
    run
}

/// A bus with a subscription, some traffic, then dropped without `shutdown`: its tree must be
/// aborted and everything return to the baseline (checked by the caller).
pub(crate) async fn drop_without_shutdown(bus: EventBus, topic: String, mut run: Run) -> Run {
    let handled = Arc::new(AtomicUsize::new(0));
    let h = Arc::clone(&handled);
    let subscription = bus
        .subscribe(&topic, SubscribeOptions::new("dropped"), move |_m: Message| {
            h.fetch_add(1, Ordering::SeqCst);
            async { Ok::<(), HandlerError>(()) }
        })
        .await;
    let subscription = match subscription {
        Ok(s) => s,
        Err(error) => {
            run.problems.push(format!("cannot subscribe: {error}"));
            return run;
        }
    };
    for i in 0..100 {
        match bus
            .publish(Record::new(topic.as_str(), format!("{i}")).with_key(format!("k{i}")))
            .await
        {
            Ok(_) => run.messages += 1,
            Err(error) => run.problems.push(format!("publish failed: {error}")),
        }
    }
    let expected = usize::try_from(run.messages).unwrap_or(usize::MAX);
    if !wait_until(Duration::from_secs(60), || handled.load(Ordering::SeqCst) >= expected).await {
        run.problems.push("not every message was handled before the drop".into());
    }
    let live = bus.live_tasks();
    run.notes.push(format!("{live} task(s) live when the bus was dropped"));
    let scope = bus.scope().clone();
    drop(subscription);
    drop(bus);
    // The tree is aborted by the drop; its tasks end at their next poll.
    if !wait_until(Duration::from_secs(10), || scope.live() == 0).await {
        run.problems.push(format!("tasks alive after the drop:\n{}", scope.snapshot()));
    }
    run.live_after_shutdown = scope.live();
    run
}
