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
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio_util::sync::WaitForCancellationFutureOwned;
use tracing::Span;

use crate::error::TaskError;
use crate::table::Shard;

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
///
/// Kept small (every live task has one): the start time is nanoseconds since the tree's epoch.
pub(crate) struct TaskEntry {
    pub(crate) id: u64,
    pub(crate) name: Cow<'static, str>,
    pub(crate) site: &'static Location<'static>,
    pub(crate) started_ns: u64,
    pub(crate) kind: TaskKind,
}

impl TaskEntry {
    /// Describes the entry; `now_ns` is nanoseconds since the tree's epoch.
    pub(crate) fn info(&self, scope_path: &str, now_ns: u64, aborted: bool) -> TaskInfo {
        TaskInfo {
            id: TaskId(self.id),
            path: TaskPath { scope: scope_path, name: &self.name }.to_string(),
            spawned_at: self.site,
            age: Duration::from_nanos(now_ns.saturating_sub(self.started_ns)),
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
    pub(crate) shard: Arc<Shard>,
    pub(crate) slot: u32,
}

impl Drop for TaskGuard {
    fn drop(&mut self) {
        self.shard.remove(self.slot);
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

pin_project_lite::pin_project! {
    /// A supervised task's future: runs the inner future inside its span on every poll, catches
    /// panics at the poll boundary, ends at the next poll once the scope's abort switch is
    /// thrown, and owns the task's registration.
    ///
    /// Kept small on purpose (a task's state is moved into its allocation at spawn): the span is
    /// boxed only when a subscriber wants it, and the abort waiter is made only when the task
    /// first waits. Fields drop in order, so the inner future (and whatever it owns) is gone
    /// before the guard deregisters the task.
    pub(crate) struct Supervised<F> {
        #[pin]
        inner: F,
        aborted: Option<Pin<Box<WaitForCancellationFutureOwned>>>,
        span: Option<Box<Span>>,
        guard: TaskGuard,
    }
}

impl<F: Future> Supervised<F> {
    pub(crate) fn new(guard: TaskGuard, span: Span, inner: F) -> Self {
        let span = if span.is_disabled() { None } else { Some(Box::new(span)) };
        Supervised { inner, aborted: None, span, guard }
    }
}

impl<F: Future> Future for Supervised<F> {
    type Output = Result<F::Output, Ended>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        if this.guard.shard.is_aborted() {
            return Poll::Ready(Err(Ended::Aborted));
        }
        let inner = this.inner;
        let polled = {
            let _entered = this.span.as_deref().map(Span::enter);
            catch_unwind(AssertUnwindSafe(|| inner.poll(cx)))
        };
        match polled {
            Ok(Poll::Ready(value)) => Poll::Ready(Ok(value)),
            Ok(Poll::Pending) => {
                if this.aborted.is_none() {
                    // The shard holds its scope while this task is registered.
                    if let Some(scope) = this.guard.shard.scope() {
                        *this.aborted =
                            Some(Box::pin(scope.abort_switch().clone().cancelled_owned()));
                    }
                }
                match this.aborted.as_mut().map(|waiter| waiter.as_mut().poll(cx)) {
                    Some(Poll::Ready(())) => Poll::Ready(Err(Ended::Aborted)),
                    _ => Poll::Pending,
                }
            }
            Err(payload) => {
                let message = panic_message(payload.as_ref());
                report_panic(this.guard, &message);
                Poll::Ready(Err(Ended::Panicked(message)))
            }
        }
    }
}

/// Runs a blocking closure as a supervised task, with the same guarantees as [`run_async`]. A
/// closure whose scope was aborted before it started is not run.
pub(crate) fn run_blocking<R>(
    guard: TaskGuard,
    span: Span,
    f: impl FnOnce() -> R,
) -> Result<R, Ended> {
    if guard.shard.is_aborted() {
        return Err(Ended::Aborted);
    }
    let _entered = span.enter();
    catch_unwind(AssertUnwindSafe(f)).map_err(|payload| {
        let message = panic_message(payload.as_ref());
        report_panic(&guard, &message);
        Ended::Panicked(message)
    })
}

fn report_panic(guard: &TaskGuard, message: &str) {
    let (name, site) = match guard.shard.name_and_site(guard.slot) {
        Some((name, site)) => (name, Some(site)),
        None => (Cow::Borrowed(""), None),
    };
    let scope_path =
        guard.shard.scope().map_or_else(|| Arc::from("?"), |scope| Arc::clone(&scope.path));
    tracing::error!(
        target: "bus_supervisor",
        path = %TaskPath { scope: &scope_path, name: &name },
        spawned_at = %DisplaySite(site),
        panic = %message,
        "supervised task panicked"
    );
}

struct DisplaySite(Option<&'static Location<'static>>);

impl fmt::Display for DisplaySite {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            Some(site) => write!(f, "{site}"),
            None => f.write_str("unknown"),
        }
    }
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
    /// The scope's path (its own `Arc`, not the scope's: the scope's count is what the
    /// workers touch when tasks end).
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
