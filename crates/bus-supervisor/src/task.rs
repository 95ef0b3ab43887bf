//! One supervised task: its registration, its drop guard, its handle and what is known about it.
//!
//! Owns: [`TaskGuard`] (the registration of a task in its scope, released on drop), the wrapper
//! that runs every task inside its tracing span and captures panics, [`TaskHandle`] (what a
//! caller awaits) and the descriptive types [`TaskId`], [`TaskInfo`], [`TaskKind`], [`TaskState`].
//!
//! Invariants:
//! - A task is registered (entered in its scope's table and counted in the live count of the scope
//!   and every ancestor) *before* its future is handed to the runtime, and the [`TaskGuard`] that
//!   holds the registration is owned by the future itself. Whether the future completes, panics,
//!   or is dropped by an abort or a runtime shutdown, the guard is dropped with it, so the task
//!   always leaves the count. Nothing else removes a registration.
//! - A panic inside a task never unwinds into the runtime: it is caught at the poll boundary,
//!   logged with the task's path and spawn site, and surfaced through [`TaskHandle`] as
//!   [`TaskError::Panicked`].

use std::borrow::Cow;
use std::fmt;
use std::future::Future;
use std::panic::{AssertUnwindSafe, Location, catch_unwind};
use std::pin::{Pin, pin};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use tracing::Span;

use crate::error::TaskError;
use crate::scope::ScopeInner;

/// Identifies a task within one supervisor tree.
///
/// Ids are assigned in spawn order, starting at 1, by a counter that belongs to the tree (not a
/// global), so two supervisors in one process number their tasks independently.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct TaskId(pub(crate) u64);

impl TaskId {
    /// The id as a number.
    pub fn get(self) -> u64 {
        self.0
    }
}

impl fmt::Display for TaskId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "#{}", self.0)
    }
}

/// How a task runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TaskKind {
    /// A future polled by the runtime's workers. It can be aborted at any `.await`.
    Async,
    /// A closure on the runtime's blocking pool. Once started, it cannot be aborted: it ends only
    /// when the closure returns.
    Blocking,
}

/// Where a task is in its life, as the supervisor sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TaskState {
    /// Running (or waiting to be polled); not asked to stop by force.
    Running,
    /// Aborted at a shutdown deadline (or by its handle) and not yet gone. A task that stays in
    /// this state is blocking its thread.
    AbortRequested,
}

/// A description of one live task: what [`Snapshot`](crate::Snapshot), shutdown errors and leak
/// reports list.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TaskInfo {
    /// The task's id in its tree.
    pub id: TaskId,
    /// The full path: the scope's path, a slash, and the task's name.
    pub path: String,
    /// Where `spawn` was called.
    pub spawned_at: &'static Location<'static>,
    /// How long ago it was spawned.
    pub age: Duration,
    /// Async future or blocking closure.
    pub kind: TaskKind,
    /// Running, or asked to abort.
    pub state: TaskState,
}

impl fmt::Display for TaskInfo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let kind = match self.kind {
            TaskKind::Async => "async",
            TaskKind::Blocking => "blocking",
        };
        let state = match self.state {
            TaskState::Running => "running",
            TaskState::AbortRequested => "abort requested",
        };
        write!(
            f,
            "{} [{} {kind}, {state}, age {:.3}s] spawned at {}:{}:{}",
            self.path,
            self.id,
            self.age.as_secs_f64(),
            self.spawned_at.file(),
            self.spawned_at.line(),
            self.spawned_at.column()
        )
    }
}

/// The entry a scope keeps for each of its live tasks.
pub(crate) struct TaskEntry {
    pub(crate) id: u64,
    pub(crate) name: Cow<'static, str>,
    pub(crate) site: &'static Location<'static>,
    pub(crate) started: Instant,
    pub(crate) kind: TaskKind,
}

impl TaskEntry {
    pub(crate) fn info(&self, scope_path: &str, now: Instant, aborted: bool) -> TaskInfo {
        TaskInfo {
            id: TaskId(self.id),
            path: TaskPath { scope: scope_path, name: &self.name }.to_string(),
            spawned_at: self.site,
            age: now.saturating_duration_since(self.started),
            kind: self.kind,
            state: if aborted { TaskState::AbortRequested } else { TaskState::Running },
        }
    }
}

/// Formats a task's path without allocating until someone asks for the text. A task with an
/// empty name (the main task of a supervised child) has its scope's path.
#[derive(Clone, Copy)]
pub(crate) struct TaskPath<'a> {
    pub(crate) scope: &'a str,
    pub(crate) name: &'a str,
}

impl fmt::Display for TaskPath<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.name.is_empty() {
            f.write_str(self.scope)
        } else {
            write!(f, "{}/{}", self.scope, self.name)
        }
    }
}

/// The registration of one task. Dropping it removes the task from its scope's table and
/// decrements the live counts of the scope and all its ancestors.
pub(crate) struct TaskGuard {
    pub(crate) scope: Arc<ScopeInner>,
    pub(crate) key: crate::table::TaskKey,
}

impl Drop for TaskGuard {
    fn drop(&mut self) {
        self.scope.deregister(self.key);
    }
}

/// How a supervised task ended without producing its output.
pub(crate) enum Ended {
    /// It panicked; the panic was caught at the poll boundary.
    Panicked(String),
    /// Its scope's abort switch was thrown (a shutdown deadline or a dropped supervisor).
    Aborted,
}

/// Extracts the text of a panic payload (`&str` or `String`; anything else is described).
pub(crate) fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = payload.downcast_ref::<&'static str>() {
        (*s).to_owned()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "panic with a non-string payload".to_owned()
    }
}

/// Runs `fut` as a supervised task: inside `span` on every poll, with panics caught at the poll
/// boundary, with `guard` owned (and so dropped) by the task itself, and ended at its next poll
/// once the scope's abort switch is thrown.
///
/// The abort switch is one token per scope, not an abort handle per task: a task that completes
/// on its first poll never touches it, and one that waits registers with it once.
pub(crate) async fn run_async<F: Future>(
    guard: TaskGuard,
    span: Span,
    site: &'static Location<'static>,
    fut: F,
) -> Result<F::Output, Ended> {
    // The abort switch is borrowed from the scope the guard holds: no per-task clone.
    let abort = guard.scope.abort_switch();
    // The future lives in this inner block, so it is dropped (with whatever it owns) before the
    // guard: a task leaves the count only once its state is gone. When the runtime drops the
    // whole task instead, the same order holds (the guard, a parameter, is dropped last).
    let outcome = {
        let mut fut = pin!(fut);
        let mut aborted = pin!(abort.cancelled());
        std::future::poll_fn(|cx| {
            if abort.is_cancelled() {
                return Poll::Ready(Err(Ended::Aborted));
            }
            let polled = {
                let _entered = span.enter();
                catch_unwind(AssertUnwindSafe(|| fut.as_mut().poll(cx)))
            };
            match polled {
                Ok(Poll::Ready(value)) => Poll::Ready(Ok(value)),
                Ok(Poll::Pending) => match aborted.as_mut().poll(cx) {
                    Poll::Ready(()) => Poll::Ready(Err(Ended::Aborted)),
                    Poll::Pending => Poll::Pending,
                },
                Err(payload) => Poll::Ready(Err(Ended::Panicked(panic_message(payload.as_ref())))),
            }
        })
        .await
    };
    if let Err(Ended::Panicked(message)) = &outcome {
        report_panic(&guard, site, message);
    }
    drop(guard);
    outcome
}

/// Runs a blocking closure as a supervised task, with the same guarantees as [`run_async`]. A
/// closure whose scope was aborted before it started is not run.
pub(crate) fn run_blocking<R>(
    guard: TaskGuard,
    span: Span,
    site: &'static Location<'static>,
    f: impl FnOnce() -> R,
) -> Result<R, Ended> {
    if guard.scope.abort_switch().is_cancelled() {
        return Err(Ended::Aborted);
    }
    let _entered = span.enter();
    catch_unwind(AssertUnwindSafe(f)).map_err(|payload| {
        let message = panic_message(payload.as_ref());
        report_panic(&guard, site, &message);
        Ended::Panicked(message)
    })
}

fn report_panic(guard: &TaskGuard, site: &'static Location<'static>, message: &str) {
    let name = guard.scope.task_name(guard.key);
    tracing::error!(
        target: "bus_supervisor",
        path = %TaskPath { scope: &guard.scope.path, name: &name },
        spawned_at = %site,
        panic = %message,
        "supervised task panicked"
    );
}

/// The handle to a supervised task: await it for the task's output.
///
/// Dropping the handle detaches the task; it stays registered and supervised. Awaiting it yields
/// `Ok(output)`, or [`TaskError::Panicked`] (with the panic message and spawn site) or
/// [`TaskError::Aborted`].
#[must_use = "dropping a TaskHandle detaches the task (it stays supervised); await it to join"]
pub struct TaskHandle<T> {
    pub(crate) join: tokio::task::JoinHandle<Result<T, Ended>>,
    pub(crate) id: TaskId,
    pub(crate) scope_path: Arc<str>,
    pub(crate) name: Cow<'static, str>,
    pub(crate) site: &'static Location<'static>,
}

impl<T> TaskHandle<T> {
    /// The task's id in its tree.
    pub fn id(&self) -> TaskId {
        self.id
    }

    /// The task's full path.
    pub fn path(&self) -> String {
        TaskPath { scope: &self.scope_path, name: &self.name }.to_string()
    }

    /// Where the task was spawned.
    pub fn spawned_at(&self) -> &'static Location<'static> {
        self.site
    }

    /// Whether the task has ended (its guard may still be dropping).
    pub fn is_finished(&self) -> bool {
        self.join.is_finished()
    }

    /// Lets the task run on without a handle. It stays registered and supervised: its scope's
    /// shutdown still stops and joins it. (Dropping the handle does the same; this says so.)
    pub fn detach(self) {}

    /// Asks the runtime to abort the task at its next `.await`. Awaiting the handle afterwards
    /// yields [`TaskError::Aborted`] unless the task had already finished. A blocking task that
    /// has started cannot be aborted.
    pub fn abort(&self) {
        self.join.abort();
    }
}

impl<T> fmt::Debug for TaskHandle<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TaskHandle").field("id", &self.id).field("path", &self.path()).finish()
    }
}

impl<T> Future for TaskHandle<T> {
    type Output = Result<T, TaskError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.get_mut();
        let joined = match Pin::new(&mut this.join).poll(cx) {
            Poll::Ready(joined) => joined,
            Poll::Pending => return Poll::Pending,
        };
        Poll::Ready(match joined {
            Ok(Ok(value)) => Ok(value),
            Ok(Err(Ended::Panicked(message))) => {
                Err(TaskError::Panicked { path: this.path(), spawned_at: this.site, message })
            }
            Ok(Err(Ended::Aborted)) => Err(TaskError::Aborted { path: this.path() }),
            Err(err) if err.is_panic() => Err(TaskError::Panicked {
                path: this.path(),
                spawned_at: this.site,
                message: panic_message(err.into_panic().as_ref()),
            }),
            Err(_) => Err(TaskError::Aborted { path: this.path() }),
        })
    }
}
