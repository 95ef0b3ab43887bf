//! Point 6: restart supervision. Timing is checked on tokio's paused clock, where it is exact.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use bus_supervisor::{
    Action, ChildSpec, Exit, Restart, SupervisionEvent, SupervisionOutcome, Supervisor,
};
use common::PATIENCE;
use parking_lot::Mutex;
use tokio::sync::broadcast;

fn drain(events: &mut broadcast::Receiver<SupervisionEvent>) -> Vec<SupervisionEvent> {
    let mut out = Vec::new();
    while let Ok(event) = events.try_recv() {
        out.push(event);
    }
    out
}

fn actions(events: &[SupervisionEvent]) -> Vec<Action> {
    events.iter().map(|e| e.action).collect()
}

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn a_permanent_child_is_restarted_until_its_intensity_escalates() {
    let supervisor = Supervisor::new("app");
    let mut events = supervisor.events();
    let runs = Arc::new(AtomicU32::new(0));
    let counter = Arc::clone(&runs);
    let spec = ChildSpec::permanent().intensity(3, Duration::from_secs(60)).backoff(
        Duration::from_millis(10),
        Duration::from_secs(1),
        1.0,
    );
    let monitor = supervisor
        .root()
        .supervise("job", spec, move |_scope| {
            counter.fetch_add(1, Ordering::SeqCst);
            async { Ok::<(), String>(()) }
        })
        .unwrap();

    let outcome = monitor.await.unwrap();
    assert_eq!(runs.load(Ordering::SeqCst), 4, "the first run and three restarts");
    let escalation = match outcome {
        SupervisionOutcome::Escalated(e) => e,
        other => panic!("expected escalation, got {other:?}"),
    };
    assert_eq!(escalation.path, "app/job");
    assert_eq!(escalation.restarts, 3);
    assert_eq!(*escalation.last_exit, Exit::Completed, "permanent restarts even normal exits");
    let seen = drain(&mut events);
    let restart = Action::Restart { after: Duration::from_millis(10) };
    assert_eq!(actions(&seen), [restart, restart, restart, Action::Escalate]);
    assert_eq!(seen.iter().map(|e| e.incarnation).collect::<Vec<_>>(), [0, 1, 2, 3]);
    // Nothing above absorbed it: the root failed and its tree is cancelled.
    assert_eq!(supervisor.failure(), Some(escalation));
    assert!(supervisor.root().is_cancelled());
    let report = supervisor.shutdown(PATIENCE).await.unwrap();
    assert!(report.failure.is_some());
    assert_eq!(supervisor.live(), 0);
}

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn a_transient_child_is_restarted_after_failures_and_stops_on_completion() {
    let supervisor = Supervisor::new("app");
    let mut events = supervisor.events();
    let runs = Arc::new(AtomicU32::new(0));
    let counter = Arc::clone(&runs);
    let monitor = supervisor
        .root()
        .supervise("job", ChildSpec::transient(), move |_scope| {
            let run = counter.fetch_add(1, Ordering::SeqCst);
            async move { if run < 2 { Err(format!("attempt {run} failed")) } else { Ok(()) } }
        })
        .unwrap();
    assert_eq!(monitor.await.unwrap(), SupervisionOutcome::Stopped(Exit::Completed));
    let seen = drain(&mut events);
    assert_eq!(seen[0].exit, Exit::Failed("attempt 0 failed".into()));
    assert_eq!(seen[1].exit, Exit::Failed("attempt 1 failed".into()));
    assert_eq!(seen[2].exit, Exit::Completed);
    assert_eq!(seen[2].action, Action::Stop);
    assert_eq!(runs.load(Ordering::SeqCst), 3);
    assert!(supervisor.failure().is_none());
}

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn a_temporary_child_is_never_restarted() {
    let supervisor = Supervisor::new("app");
    let monitor = supervisor
        .root()
        .supervise("once", ChildSpec::temporary(), |_scope| async { Err::<(), _>("no luck") })
        .unwrap();
    assert_eq!(monitor.await.unwrap(), SupervisionOutcome::Stopped(Exit::Failed("no luck".into())));
    assert_eq!(supervisor.live(), 0);
}

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn a_panic_is_reported_as_an_exit_with_message_and_spawn_site() {
    let supervisor = Supervisor::new("app");
    let mut events = supervisor.events();
    let line = line!() + 3;
    let monitor = supervisor
        .root()
        .supervise("fragile", ChildSpec::temporary(), |_scope| async {
            if true {
                panic!("fragile broke");
            }
            Ok::<(), String>(())
        })
        .unwrap();
    let outcome = monitor.await.unwrap();
    let SupervisionOutcome::Stopped(Exit::Panicked { message, spawned_at }) = outcome else {
        panic!("expected a panic exit, got {outcome:?}");
    };
    assert_eq!(message, "fragile broke");
    assert_eq!(spawned_at.line(), line);
    let event = drain(&mut events).remove(0);
    assert_eq!(event.path, "app/fragile");
    assert!(matches!(event.exit, Exit::Panicked { .. }));
}

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn restarts_back_off_exponentially_up_to_the_cap() {
    let supervisor = Supervisor::new("app");
    let starts = Arc::new(Mutex::new(Vec::new()));
    let record = Arc::clone(&starts);
    let spec = ChildSpec::permanent().intensity(4, Duration::from_secs(3600)).backoff(
        Duration::from_millis(100),
        Duration::from_millis(300),
        2.0,
    );
    let monitor = supervisor
        .root()
        .supervise("flaky", spec, move |_scope| {
            record.lock().push(tokio::time::Instant::now());
            async { Err::<(), _>("down") }
        })
        .unwrap();
    monitor.await.unwrap();
    let starts = starts.lock();
    let gaps: Vec<Duration> = starts.windows(2).map(|w| w[1] - w[0]).collect();
    let ms = Duration::from_millis;
    assert_eq!(gaps.len(), 4);
    // 100, 200, then capped at 300 (paused clock: exact up to timer granularity of 1 ms).
    for (gap, want) in gaps.iter().zip([ms(100), ms(200), ms(300), ms(300)]) {
        assert!(*gap >= want && *gap <= want + ms(2), "gap {gap:?}, want {want:?}");
    }
}

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn restarts_outside_the_window_do_not_count() {
    let supervisor = Supervisor::new("app");
    let runs = Arc::new(AtomicU32::new(0));
    let counter = Arc::clone(&runs);
    // One restart per second allowed; the child fails every 2 s: it is never escalated.
    let spec = ChildSpec::permanent().intensity(1, Duration::from_secs(1)).backoff(
        Duration::from_millis(10),
        Duration::from_millis(10),
        1.0,
    );
    let monitor = supervisor
        .root()
        .supervise("slow-fail", spec, move |scope| {
            let run = counter.fetch_add(1, Ordering::SeqCst);
            async move {
                if run >= 5 {
                    scope.cancelled().await; // healthy from the sixth run on
                    return Ok(());
                }
                tokio::time::sleep(Duration::from_secs(2)).await;
                Err("periodic failure")
            }
        })
        .unwrap();
    // Five failures 2 s apart, then the healthy sixth run (virtual time).
    let sixth = common::eventually(Duration::from_secs(30), || runs.load(Ordering::SeqCst) >= 6);
    assert!(sixth.await, "only {} runs", runs.load(Ordering::SeqCst));
    assert_eq!(runs.load(Ordering::SeqCst), 6);
    assert!(supervisor.failure().is_none());
    assert!(!monitor.is_finished());
    supervisor.shutdown(PATIENCE).await.unwrap();
    assert_eq!(monitor.await.unwrap(), SupervisionOutcome::ShutDown);
}

/// A restart shuts the old incarnation's own tasks down first: nothing accumulates.
#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn a_restart_leaves_no_task_of_the_previous_run() {
    let supervisor = Supervisor::new("app");
    let peak = Arc::new(AtomicU32::new(0));
    let watch = Arc::clone(&peak);
    let root = supervisor.root().clone();
    let spec = ChildSpec::permanent().intensity(5, Duration::from_secs(60)).backoff(
        Duration::from_millis(1),
        Duration::from_millis(1),
        1.0,
    );
    let monitor = supervisor
        .root()
        .supervise("parent", spec, move |scope| {
            let watch = Arc::clone(&watch);
            let root = root.clone();
            async move {
                // A helper task that would run forever if nobody stopped it.
                scope
                    .spawn("helper", std::future::pending::<()>())
                    .map_err(|e| e.to_string())?
                    .detach();
                watch.fetch_max(u32::try_from(root.live()).unwrap(), Ordering::SeqCst);
                Err::<(), String>("crash".into())
            }
        })
        .unwrap();
    monitor.await.unwrap();
    // At any run: the monitor, this run's main task and its helper. Never an old helper.
    assert_eq!(peak.load(Ordering::SeqCst), 3);
    supervisor.shutdown(PATIENCE).await.unwrap();
}

/// An inner child that exceeds its intensity fails the outer child's incarnation; the outer
/// monitor sees that as an abnormal exit and restarts; when the outer exceeds its own intensity
/// the failure reaches the root.
#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn escalation_goes_to_the_parent_scope_and_upwards() {
    let supervisor = Supervisor::new("app");
    let mut events = supervisor.events();
    let outer_runs = Arc::new(AtomicU32::new(0));
    let counter = Arc::clone(&outer_runs);
    let outer_spec = ChildSpec::permanent().intensity(1, Duration::from_secs(60)).backoff(
        Duration::from_millis(5),
        Duration::from_millis(5),
        1.0,
    );
    supervisor
        .root()
        .supervise("outer", outer_spec, move |scope| {
            counter.fetch_add(1, Ordering::SeqCst);
            async move {
                let inner_spec = ChildSpec::new(Restart::Permanent)
                    .intensity(0, Duration::from_secs(60))
                    .backoff(Duration::from_millis(5), Duration::from_millis(5), 1.0);
                scope
                    .supervise("inner", inner_spec, |_s| async { Err::<(), _>("inner broke") })
                    .map_err(|e| e.to_string())?
                    .detach();
                scope.cancelled().await;
                Ok::<(), String>(())
            }
        })
        .unwrap()
        .detach();

    let escalation = tokio::time::timeout(PATIENCE, supervisor.root().failed()).await.unwrap();
    assert_eq!(escalation.path, "app/outer");
    assert_eq!(outer_runs.load(Ordering::SeqCst), 2, "outer restarted once, then escalated");
    let Exit::Escalated(inner) = *escalation.last_exit else {
        panic!("outer's last exit should be the inner escalation: {escalation}");
    };
    assert_eq!(inner.path, "app/outer/inner");
    assert_eq!(*inner.last_exit, Exit::Failed("inner broke".into()));

    let seen = drain(&mut events);
    let summary: Vec<(&str, Action)> = seen.iter().map(|e| (e.path.as_str(), e.action)).collect();
    let restart = Action::Restart { after: Duration::from_millis(5) };
    assert_eq!(
        summary,
        [
            ("app/outer/inner", Action::Escalate),
            ("app/outer", restart),
            ("app/outer/inner", Action::Escalate),
            ("app/outer", Action::Escalate),
        ]
    );
    supervisor.shutdown(PATIENCE).await.unwrap();
    assert_eq!(supervisor.live(), 0);
}

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn shutdown_ends_supervision_without_restarting() {
    let supervisor = Supervisor::new("app");
    let runs = Arc::new(AtomicU32::new(0));
    let counter = Arc::clone(&runs);
    let monitor = supervisor
        .root()
        .supervise("service", ChildSpec::permanent(), move |scope| {
            counter.fetch_add(1, Ordering::SeqCst);
            async move {
                scope.cancelled().await;
                Ok::<(), String>(())
            }
        })
        .unwrap();
    tokio::task::yield_now().await;
    let report = supervisor.shutdown(PATIENCE).await.unwrap();
    assert!(report.is_graceful(), "{report}");
    assert_eq!(runs.load(Ordering::SeqCst), 1);
    assert_eq!(monitor.await.unwrap(), SupervisionOutcome::ShutDown);
    assert_eq!(supervisor.live(), 0);
}

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn an_isolated_child_contains_an_escalation_and_the_rest_of_the_tree_keeps_running() {
    let supervisor = Supervisor::new("app");
    let sibling = supervisor.root().child("sibling");
    let neighbour = sibling.spawn("serving", std::future::pending::<()>()).unwrap();
    let isolated = supervisor.root().isolated_child("subscription");
    let spec = ChildSpec::permanent().intensity(1, Duration::from_secs(60)).backoff(
        Duration::from_millis(10),
        Duration::from_millis(10),
        1.0,
    );
    let monitor =
        isolated.supervise("fetch", spec, |_scope| async { Err::<(), _>("unreadable") }).unwrap();
    let SupervisionOutcome::Escalated(escalation) = monitor.await.unwrap() else {
        panic!("expected an escalation");
    };
    assert_eq!(isolated.failed().await, escalation);
    assert!(isolated.is_cancelled(), "the isolated scope failed");
    // Without the boundary the escalation climbs to the root and cancels the whole tree.
    assert!(supervisor.failure().is_none(), "the failure went no higher");
    assert!(!supervisor.root().is_cancelled());
    assert!(!sibling.is_cancelled() && !neighbour.is_finished());
    supervisor.shutdown(PATIENCE).await.unwrap();
}

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn a_panicking_incarnation_hands_its_state_to_the_next_through_a_handover() {
    let supervisor = Supervisor::new("app");
    let handover = bus_supervisor::Handover::new(Vec::<u32>::new());
    let seen = Arc::new(Mutex::new(Vec::new()));
    let record = Arc::clone(&seen);
    let monitor = supervisor
        .root()
        .supervise("job", ChildSpec::transient(), move |_scope| {
            let handover = handover.clone();
            let record = Arc::clone(&record);
            async move {
                let mut held = handover.take();
                let restarted = held.restarted();
                let Some(state) = held.get_mut() else { return Err("no state to take over") };
                state.push(state.len() as u32);
                record.lock().push((restarted, state.clone()));
                if state.len() < 3 {
                    panic!("incarnation {} failed", state.len());
                }
                Ok(())
            }
        })
        .unwrap();

    let outcome = monitor.await.unwrap();
    assert!(matches!(outcome, SupervisionOutcome::Stopped(Exit::Completed)), "{outcome:?}");
    assert_eq!(
        *seen.lock(),
        [(false, vec![0]), (true, vec![0, 1]), (true, vec![0, 1, 2])],
        "each restart took over what the panicking incarnation held"
    );
    supervisor.shutdown(PATIENCE).await.unwrap();
    assert_eq!(supervisor.live(), 0);
}
