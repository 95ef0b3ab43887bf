//! Point 1 (registration and counting) and point 10 (both runtime flavors, no global state).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use bus_supervisor::{SpawnError, Supervisor, TaskError, TaskKind};
use common::{PATIENCE, eventually};

async fn task_is_counted_before_it_starts() {
    let supervisor = Supervisor::new("app");
    let started = Arc::new(AtomicBool::new(false));
    let (release, wait) = tokio::sync::oneshot::channel::<()>();
    let flag = Arc::clone(&started);
    let handle = supervisor
        .root()
        .spawn("worker", async move {
            flag.store(true, Ordering::SeqCst);
            let _ = wait.await;
        })
        .unwrap();
    // Counted at once, whether or not a worker has polled it yet.
    assert_eq!(supervisor.live(), 1);
    let tasks = supervisor.snapshot().tasks();
    assert_eq!(tasks.len(), 1);
    assert_eq!(tasks[0].path, "app/worker");
    assert!(eventually(PATIENCE, || started.load(Ordering::SeqCst)).await);
    release.send(()).unwrap();
    handle.await.unwrap();
    assert_eq!(supervisor.live(), 0, "a completed task leaves the count");
}
both_flavors!(counted_before_start => task_is_counted_before_it_starts);

#[tokio::test(flavor = "current_thread")]
async fn on_current_thread_the_count_precedes_the_first_poll() {
    let supervisor = Supervisor::new("app");
    let started = Arc::new(AtomicBool::new(false));
    let flag = Arc::clone(&started);
    let handle =
        supervisor.root().spawn("worker", async move { flag.store(true, Ordering::SeqCst) });
    let handle = handle.unwrap();
    assert!(!started.load(Ordering::SeqCst), "nothing has yielded yet, so the task has not run");
    assert_eq!(supervisor.live(), 1);
    handle.await.unwrap();
    assert!(started.load(Ordering::SeqCst));
    assert_eq!(supervisor.live(), 0);
}

async fn panicking_task_leaves_the_count_and_reports_its_message() {
    let supervisor = Supervisor::new("app");
    let scope = supervisor.root().child("jobs");
    let line = line!() + 1;
    let handle = scope.spawn("explode", async { panic!("boom at {}", 7) }).unwrap();
    match handle.await {
        Err(TaskError::Panicked { path, spawned_at, message }) => {
            assert_eq!(path, "app/jobs/explode");
            assert_eq!(message, "boom at 7");
            assert_eq!(spawned_at.line(), line);
            assert!(spawned_at.file().ends_with("registration.rs"));
        }
        other => panic!("expected a panic report, got {other:?}"),
    }
    assert!(eventually(PATIENCE, || supervisor.live() == 0).await);
    assert_eq!(scope.live(), 0);
}
both_flavors!(panicking_task => panicking_task_leaves_the_count_and_reports_its_message);

async fn aborted_task_leaves_the_count() {
    let supervisor = Supervisor::new("app");
    let handle = supervisor.root().spawn("forever", std::future::pending::<()>()).unwrap();
    assert_eq!(supervisor.live(), 1);
    handle.abort();
    match handle.await {
        Err(TaskError::Aborted { path }) => assert_eq!(path, "app/forever"),
        other => panic!("expected an abort, got {other:?}"),
    }
    assert!(eventually(PATIENCE, || supervisor.live() == 0).await);
}
both_flavors!(aborted_task => aborted_task_leaves_the_count);

async fn live_counts_include_descendants() {
    let supervisor = Supervisor::new("app");
    let kafka = supervisor.root().child("kafka");
    let group = kafka.child("group");
    let token = supervisor.root().token();
    for scope in [supervisor.root(), &kafka, &group, &group] {
        let token = token.clone();
        scope.spawn("idle", async move { token.cancelled().await }).unwrap().detach();
    }
    assert_eq!(group.live(), 2);
    assert_eq!(kafka.live(), 3);
    assert_eq!(supervisor.live(), 4);
    assert_eq!(group.path(), "app/kafka/group");
    token.cancel();
    assert!(eventually(PATIENCE, || supervisor.live() == 0).await);
    assert_eq!(kafka.live(), 0);
    assert_eq!(group.live(), 0);
}
both_flavors!(descendant_counts => live_counts_include_descendants);

async fn spawn_site_is_recorded() {
    let supervisor = Supervisor::new("app");
    let (release, wait) = tokio::sync::oneshot::channel::<()>();
    let line = line!() + 1;
    let handle = supervisor.root().spawn("site", async move { wait.await.ok() }).unwrap();
    assert_eq!(handle.spawned_at().line(), line);
    assert!(handle.spawned_at().file().ends_with("registration.rs"));
    // Still alive (it waits for `release`), so the snapshot lists it.
    let snapshot_site = supervisor.snapshot().tasks()[0].spawned_at;
    assert_eq!(snapshot_site.line(), line);
    release.send(()).unwrap();
    handle.await.unwrap();
}
both_flavors!(spawn_site => spawn_site_is_recorded);

async fn blocking_closures_are_registered() {
    let supervisor = Supervisor::new("app");
    let (release, wait) = std::sync::mpsc::channel::<()>();
    let line = line!() + 1;
    let handle = supervisor.root().spawn_blocking("disk", move || wait.recv().is_ok()).unwrap();
    assert_eq!(supervisor.live(), 1);
    let task = supervisor.snapshot().tasks().remove(0);
    assert_eq!(task.kind, TaskKind::Blocking);
    assert_eq!(task.path, "app/disk");
    assert_eq!(task.spawned_at.line(), line);
    release.send(()).unwrap();
    assert!(handle.await.unwrap());
    assert!(eventually(PATIENCE, || supervisor.live() == 0).await);
}
both_flavors!(blocking_registered => blocking_closures_are_registered);

async fn a_blocking_panic_is_caught_and_reported() {
    let supervisor = Supervisor::new("app");
    let handle = supervisor.root().spawn_blocking("disk", || -> () { panic!("disk on fire") });
    match handle.unwrap().await {
        Err(TaskError::Panicked { message, path, .. }) => {
            assert_eq!(message, "disk on fire");
            assert_eq!(path, "app/disk");
        }
        other => panic!("expected a panic report, got {other:?}"),
    }
    assert!(eventually(PATIENCE, || supervisor.live() == 0).await);
}
both_flavors!(blocking_panic => a_blocking_panic_is_caught_and_reported);

async fn a_closed_scope_admits_no_task() {
    let supervisor = Supervisor::new("app");
    let scope = supervisor.root().child("done");
    scope.shutdown(PATIENCE).await.unwrap();
    assert!(scope.is_closed());
    match scope.spawn("late", async {}) {
        Err(SpawnError::Closed { scope }) => assert_eq!(scope, "app/done"),
        other => panic!("expected Closed, got {other:?}"),
    }
    assert!(matches!(scope.spawn_blocking("late", || ()), Err(SpawnError::Closed { .. })));
    // A child created under a closed scope is born closed.
    let born_closed = scope.child("later");
    assert!(born_closed.spawn("late", async {}).is_err());
    assert_eq!(supervisor.live(), 0);
    // The rest of the tree is unaffected.
    supervisor.root().spawn("ok", async {}).unwrap().await.unwrap();
}
both_flavors!(closed_scope => a_closed_scope_admits_no_task);

#[test]
fn spawning_without_a_runtime_is_an_error_not_a_panic() {
    let supervisor = Supervisor::new("app");
    match supervisor.root().spawn("nowhere", async {}) {
        Err(SpawnError::NoRuntime { scope }) => assert_eq!(scope, "app"),
        other => panic!("expected NoRuntime, got {other:?}"),
    }
    assert_eq!(supervisor.live(), 0);
}

#[test]
fn a_supervisor_built_with_a_handle_spawns_there_from_any_thread() {
    let runtime =
        tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().unwrap();
    let supervisor = Supervisor::builder("app").runtime(runtime.handle().clone()).build();
    let handle = supervisor.root().spawn("elsewhere", async { 5 }).unwrap();
    assert_eq!(runtime.block_on(handle).unwrap(), 5);
    runtime.block_on(async {
        supervisor.shutdown(PATIENCE).await.unwrap();
    });
}

async fn two_supervisors_in_one_runtime_are_independent() {
    let first = Supervisor::new("first");
    let second = Supervisor::new("second");
    let a = first.root().spawn("a", std::future::pending::<()>()).unwrap();
    let b = second.root().spawn("b", std::future::pending::<()>()).unwrap();
    // Ids come from each tree's own counter.
    assert_eq!(a.id().get(), 1);
    assert_eq!(b.id().get(), 1);
    assert_eq!(first.live(), 1);
    second.shutdown(Duration::from_millis(50)).await.unwrap();
    assert_eq!(second.live(), 0);
    assert_eq!(first.live(), 1, "shutting one tree down leaves the other alone");
    assert!(!first.root().is_cancelled());
    first.shutdown(Duration::from_millis(50)).await.unwrap();
}
both_flavors!(independent_trees => two_supervisors_in_one_runtime_are_independent);
