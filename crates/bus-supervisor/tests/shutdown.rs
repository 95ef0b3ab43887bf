//! Points 2 to 5: shutdown against a deadline, tasks that will not stop, reverse order,
//! idempotence, and dropping a supervisor.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::sync::Arc;
use std::time::Duration;

use bus_supervisor::{Supervisor, TaskKind, TaskState};
use common::{PATIENCE, eventually, runtime_alive};
use parking_lot::Mutex;

async fn shutdown_cancels_and_waits_for_zero() {
    let supervisor = Supervisor::new("app");
    let scope = supervisor.root().child("workers");
    for i in 0..10 {
        let token = scope.token();
        scope
            .spawn(format!("w{i}"), async move {
                token.cancelled().await;
                // Some clean-up work after cancellation, across an await.
                tokio::task::yield_now().await;
            })
            .unwrap()
            .detach();
    }
    assert_eq!(supervisor.live(), 10);
    let report = supervisor.shutdown(PATIENCE).await.unwrap();
    assert_eq!(supervisor.live(), 0);
    assert_eq!(report.live_at_start, 10);
    assert!(report.is_graceful(), "{report}");
    assert_eq!(report.children.len(), 1);
    assert_eq!(report.children[0].path, "app/workers");
}
both_flavors!(cancel_then_zero => shutdown_cancels_and_waits_for_zero);

async fn tasks_ignoring_cancellation_are_aborted_at_the_deadline() {
    let supervisor = Supervisor::new("app");
    let line = line!() + 1;
    supervisor.root().spawn("stubborn", std::future::pending::<()>()).unwrap().detach();
    let token = supervisor.root().token();
    supervisor.root().spawn("polite", async move { token.cancelled().await }).unwrap().detach();
    let report = supervisor.shutdown(Duration::from_millis(100)).await.unwrap();
    assert_eq!(supervisor.live(), 0);
    assert_eq!(report.aborted.len(), 1, "{report}");
    assert_eq!(report.aborted[0].path, "app/stubborn");
    assert_eq!(report.aborted[0].spawned_at.line(), line);
    assert!(!report.is_graceful());
}
both_flavors!(abort_at_deadline => tasks_ignoring_cancellation_are_aborted_at_the_deadline);

/// A task that blocks its worker thread inside `poll` cannot be aborted; shutdown must say so,
/// by name, and must not claim completion. Multi-thread only: on a current-thread runtime the
/// blocked task would block the test itself.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_task_blocking_its_thread_is_named_and_a_later_wait_succeeds() {
    let supervisor = Supervisor::builder("app").abort_grace(Duration::from_millis(50)).build();
    let scope = supervisor.root().child("io");
    let (release, blocked) = std::sync::mpsc::channel::<()>();
    let (entered_tx, entered) = tokio::sync::oneshot::channel::<()>();
    let line = line!() + 2;
    scope
        .spawn("stuck", async move {
            let _ = entered_tx.send(());
            // Blocks the worker thread inside poll: no .await, so abort cannot take effect.
            let _ = blocked.recv();
        })
        .unwrap()
        .detach();
    entered.await.unwrap();

    let error = supervisor.shutdown(Duration::from_millis(100)).await.unwrap_err();
    assert_eq!(error.stuck.len(), 1, "{error}");
    let stuck = &error.stuck[0];
    assert_eq!(stuck.path, "app/io/stuck");
    assert_eq!(stuck.spawned_at.line(), line);
    assert_eq!(stuck.kind, TaskKind::Async);
    assert_eq!(stuck.state, TaskState::AbortRequested);
    assert!(stuck.age >= Duration::from_millis(100));
    assert!(error.to_string().contains("app/io/stuck"));
    assert_eq!(supervisor.live(), 1, "never reported done while it lives");

    // Idempotent: asking again gives the same answer, it does not pretend.
    let again = supervisor.shutdown(PATIENCE).await.unwrap_err();
    assert_eq!(again.stuck, error.stuck);

    release.send(()).unwrap();
    error.wait(PATIENCE).await.unwrap();
    assert_eq!(supervisor.live(), 0);
}

async fn a_blocking_closure_is_named_and_a_later_wait_succeeds() {
    let supervisor = Supervisor::builder("app").abort_grace(Duration::from_millis(50)).build();
    let (release, blocked) = std::sync::mpsc::channel::<()>();
    let (entered_tx, entered) = std::sync::mpsc::channel::<()>();
    supervisor
        .root()
        .spawn_blocking("fsync", move || {
            entered_tx.send(()).unwrap();
            let _ = blocked.recv();
        })
        .unwrap()
        .detach();
    assert!(eventually(PATIENCE, || entered.try_recv().is_ok()).await);

    let error = supervisor.shutdown(Duration::from_millis(50)).await.unwrap_err();
    assert_eq!(error.stuck.len(), 1);
    assert_eq!(error.stuck[0].path, "app/fsync");
    assert_eq!(error.stuck[0].kind, TaskKind::Blocking);
    assert_eq!(supervisor.live(), 1);
    // Waiting without releasing it times out and still names it.
    let timeout = error.wait(Duration::from_millis(20)).await.unwrap_err();
    assert_eq!(timeout.still_running[0].path, "app/fsync");

    release.send(()).unwrap();
    error.wait(PATIENCE).await.unwrap();
    assert_eq!(supervisor.live(), 0);
}
both_flavors!(blocking_stuck => a_blocking_closure_is_named_and_a_later_wait_succeeds);

/// Children stop newest first, then the parent's own tasks.
async fn children_shut_down_in_reverse_creation_order() {
    let supervisor = Supervisor::new("app");
    let order = Arc::new(Mutex::new(Vec::new()));
    let record = |scope: &bus_supervisor::Scope, label: &'static str| {
        let token = scope.token();
        let order = Arc::clone(&order);
        scope
            .spawn(label, async move {
                token.cancelled().await;
                order.lock().push(label);
            })
            .unwrap()
            .detach();
    };
    record(supervisor.root(), "root-task");
    let first = supervisor.root().child("first");
    record(&first, "first");
    let second = supervisor.root().child("second");
    record(&second, "second");
    record(&second.child("grandchild"), "second/grandchild");
    let third = supervisor.root().child("third");
    record(&third, "third");

    let report = supervisor.shutdown(PATIENCE).await.unwrap();
    assert_eq!(
        *order.lock(),
        vec!["third", "second/grandchild", "second", "first", "root-task"],
        "children newest first, each subtree bottom-up, the parent's own tasks last"
    );
    let children: Vec<_> = report.children.iter().map(|c| c.path.as_str()).collect();
    assert_eq!(children, ["app/third", "app/second", "app/first"]);
}
both_flavors!(reverse_order => children_shut_down_in_reverse_creation_order);

/// Each child gets what remains of the parent's deadline, not a fresh one: with virtual time, a
/// child that eats the whole deadline leaves the others none, and the total stays within the
/// deadline: the abort grace comes out of it (plus the minimal wait for tasks aborted with no
/// time left).
#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn children_share_the_parents_deadline() {
    let grace = Duration::from_millis(250);
    let supervisor = Supervisor::builder("app").abort_grace(grace).build();
    let polite = supervisor.root().child("polite");
    let token = polite.token();
    let _ = polite.spawn("slow-cleanup", async move {
        token.cancelled().await;
        tokio::time::sleep(Duration::from_millis(400)).await;
    });
    let stubborn = supervisor.root().child("stubborn");
    stubborn.spawn("ignores-cancel", std::future::pending::<()>()).unwrap().detach();

    let deadline = Duration::from_secs(1);
    let started = tokio::time::Instant::now();
    let report = supervisor.shutdown(deadline).await.unwrap();
    let elapsed = started.elapsed();
    assert!(elapsed <= deadline + bus_supervisor::MIN_ABORT_WAIT, "took {elapsed:?}");
    // The stubborn child (newest) went first and used the whole second; the polite one then had
    // no time left for its 400 ms clean-up and was aborted too.
    assert_eq!(report.children[0].path, "app/stubborn");
    assert_eq!(report.children[0].aborted[0].path, "app/stubborn/ignores-cancel");
    assert_eq!(report.children[1].path, "app/polite");
    assert_eq!(report.children[1].aborted[0].path, "app/polite/slow-cleanup");
    assert_eq!(supervisor.live(), 0);
}

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn a_child_finishing_early_leaves_its_time_to_the_next() {
    let supervisor = Supervisor::new("app");
    let first = supervisor.root().child("first");
    let token = first.token();
    let _ = first.spawn("cleanup-300ms", async move {
        token.cancelled().await;
        tokio::time::sleep(Duration::from_millis(300)).await;
    });
    let second = supervisor.root().child("second");
    let token = second.token();
    let _ = second.spawn("cleanup-300ms", async move {
        token.cancelled().await;
        tokio::time::sleep(Duration::from_millis(300)).await;
    });
    let report = supervisor.shutdown(Duration::from_secs(1)).await.unwrap();
    assert!(report.is_graceful(), "600 ms of clean-up fit in 1 s: {report}");
    assert!(report.elapsed >= Duration::from_millis(600), "sequential: {:?}", report.elapsed);
}

async fn concurrent_callers_all_get_the_same_report() {
    let supervisor = Supervisor::new("app");
    for i in 0..5 {
        let token = supervisor.root().token();
        supervisor
            .root()
            .spawn(format!("t{i}"), async move {
                token.cancelled().await;
                tokio::time::sleep(Duration::from_millis(20)).await;
            })
            .unwrap()
            .detach();
    }
    supervisor.root().spawn("stubborn", std::future::pending::<()>()).unwrap().detach();
    let timeout = Duration::from_millis(200);
    let (a, b, c) = tokio::join!(
        supervisor.shutdown(timeout),
        supervisor.shutdown(timeout),
        supervisor.root().shutdown(Duration::from_secs(30)),
    );
    let (a, b, c) = (a.unwrap(), b.unwrap(), c.unwrap());
    assert_eq!(a, b);
    assert_eq!(a, c, "one shutdown ran; later deadlines are not used");
    assert_eq!(a.aborted.len(), 1);
    // And a caller long after gets it too.
    assert_eq!(supervisor.shutdown(PATIENCE).await.unwrap(), a);
    assert_eq!(supervisor.live(), 0);
}
both_flavors!(concurrent_callers => concurrent_callers_all_get_the_same_report);

async fn dropping_a_supervisor_aborts_its_whole_tree() {
    let baseline = runtime_alive();
    let supervisor = Supervisor::new("app");
    let deep = supervisor.root().child("a").child("b");
    for i in 0..5 {
        supervisor.root().spawn(format!("top{i}"), std::future::pending::<()>()).unwrap().detach();
        deep.spawn(format!("deep{i}"), std::future::pending::<()>()).unwrap().detach();
    }
    assert_eq!(runtime_alive(), baseline + 10);
    let token = deep.token();
    drop(supervisor);
    assert!(token.is_cancelled(), "the whole tree is cancelled");
    assert!(
        eventually(PATIENCE, || runtime_alive() == baseline).await,
        "runtime still has {} tasks over its baseline",
        runtime_alive() - baseline
    );
    assert_eq!(deep.live(), 0);
    assert!(deep.is_closed());
    assert!(deep.spawn("after", async {}).is_err(), "a dropped tree admits nothing");
}
both_flavors!(drop_aborts => dropping_a_supervisor_aborts_its_whole_tree);

async fn a_scope_can_be_shut_down_alone() {
    let supervisor = Supervisor::new("app");
    let a = supervisor.root().child("a");
    let b = supervisor.root().child("b");
    a.spawn("x", std::future::pending::<()>()).unwrap().detach();
    let token = b.token();
    b.spawn("y", async move { token.cancelled().await }).unwrap().detach();
    let report = a.shutdown(Duration::from_millis(50)).await.unwrap();
    assert_eq!(report.aborted.len(), 1);
    assert_eq!(a.live(), 0);
    assert_eq!(b.live(), 1);
    assert!(!b.is_cancelled());
    // The parent's later shutdown reuses the child's stored result.
    let report = supervisor.shutdown(PATIENCE).await.unwrap();
    assert_eq!(supervisor.live(), 0);
    assert!(report.children.iter().any(|c| c.path == "app/a" && c.aborted.len() == 1));
}
both_flavors!(scope_alone => a_scope_can_be_shut_down_alone);
