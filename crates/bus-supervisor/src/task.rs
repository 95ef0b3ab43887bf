//! Running a registered task: the wrapper every task runs in, and the handle that awaits it.
//!
//! Owns: the wrapper (`Supervised` for futures, `run_blocking` for closures) that runs a task
//! inside its tracing span, captures its panics, ends it once its scope's abort switch is thrown
//! and owns its registration; and [`TaskHandle`] (what a caller awaits).
//!
//! Invariants:
//! - The [`TaskGuard`] that holds a task's registration is owned by the task's future (or
//!   closure) itself. Whether the future completes, panics, or is dropped by an abort or a
//!   runtime shutdown, the guard is dropped with it, so the task always leaves the count.
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

use tokio_util::sync::WaitForCancellationFutureOwned;
use tracing::Span;

use crate::error::TaskError;
use crate::info::{TaskId, TaskPath};
use crate::table::TaskGuard;

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
        if this.guard.is_aborted() {
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
                let guard = &*this.guard;
                let waiter = this.aborted.get_or_insert_with(|| {
                    Box::pin(guard.abort_switch().clone().cancelled_owned())
                });
                match waiter.as_mut().poll(cx) {
                    Poll::Ready(()) => Poll::Ready(Err(Ended::Aborted)),
                    Poll::Pending => Poll::Pending,
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

/// Runs a blocking closure as a supervised task, with the same guarantees as `Supervised`. A
/// closure whose scope was aborted before it started is not run.
pub(crate) fn run_blocking<R>(
    guard: TaskGuard,
    span: Span,
    f: impl FnOnce() -> R,
) -> Result<R, Ended> {
    if guard.is_aborted() {
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
    let (name, site) = match guard.name_and_site() {
        Some((name, site)) => (name, Some(site)),
        None => (Cow::Borrowed(""), None),
    };
    tracing::error!(
        target: "bus_supervisor",
        path = %TaskPath { scope: guard.scope_path(), name: &name },
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
    join: tokio::task::JoinHandle<Result<T, Ended>>,
    id: TaskId,
    /// The scope's path (its own `Arc`, not the scope's: the scope's count is what the
    /// workers touch when tasks end).
    scope_path: Arc<str>,
    name: Cow<'static, str>,
    site: &'static Location<'static>,
}

/// What a [`TaskHandle`] carries besides the join handle: known before the task is handed to the
/// runtime, completed by its join handle after.
pub(crate) struct HandleParts {
    pub(crate) id: TaskId,
    pub(crate) scope_path: Arc<str>,
    pub(crate) name: Cow<'static, str>,
    pub(crate) site: &'static Location<'static>,
}

impl HandleParts {
    pub(crate) fn with<T>(self, join: tokio::task::JoinHandle<Result<T, Ended>>) -> TaskHandle<T> {
        let HandleParts { id, scope_path, name, site } = self;
        TaskHandle { join, id, scope_path, name, site }
    }
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
