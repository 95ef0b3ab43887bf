//! Shutting a subtree down against a deadline.
//!
//! Owns: [`Scope::shutdown`], the procedure behind it, and [`ScopeShutdownError`] (a shutdown that
//! could not bring the count to zero, with a handle to wait for the rest). The procedure works
//! through the scope's crate-internal node API (close, cancel, wait for idle, abort) and records
//! its outcome in the scope; what it reports is in `report`.
//!
//! The procedure, for a scope and a deadline:
//! 1. close the scope to new tasks (children created from now on are born closed);
//! 2. shut its children down, newest first, each against the same deadline (so each gets what
//!    remains of the parent's time);
//! 3. cancel the scope's token and wait for the subtree's live count to reach zero;
//! 4. at the abort point, abort everything left in the subtree;
//! 5. wait until the deadline for the aborted tasks to actually end;
//! 6. report: `Ok` only when the count is zero, otherwise an error naming each task still alive.
//!
//! Invariants:
//! - `Ok` is never returned while a task of the subtree is alive. The outcome is computed once
//!   per scope and shared by every caller.
//! - A deadline is a deadline: the abort grace comes out of the caller's time, not on top of it.
//!   The abort point is the deadline less the supervisor's abort grace (at most a quarter of the
//!   time left when the scope's own stop begins), so a shutdown returns by its deadline; only
//!   when aborting at the very deadline (no time was left) does it wait [`MIN_ABORT_WAIT`] more,
//!   so that aborted tasks get one turn of the scheduler before they are called stuck.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use crate::error::JoinTimeout;
use crate::info::TaskInfo;
use crate::report::{Outcome, ScopeShutdownReport};
use crate::scope::Scope;

/// A shutdown that could not bring the live count to zero: the tasks named in `stuck` were still
/// alive at the deadline, after being aborted (blocking their thread inside `poll`, or blocking
/// closures, which cannot be aborted).
///
/// The shutdown is not complete. When the stuck tasks end on their own the count does reach zero;
/// [`ScopeShutdownError::wait`] waits for that.
#[derive(Debug, Clone)]
pub struct ScopeShutdownError {
    /// What the shutdown did up to the point it gave up.
    pub report: Box<ScopeShutdownReport>,
    /// Every task still alive, with path, spawn site and age.
    pub stuck: Vec<TaskInfo>,
    scope: Scope,
}

impl ScopeShutdownError {
    /// Waits up to `timeout` for the stuck tasks (and anything else left in the subtree) to end.
    ///
    /// # Errors
    ///
    /// [`JoinTimeout`] naming what is still alive.
    pub async fn wait(&self, timeout: Duration) -> Result<(), JoinTimeout> {
        self.scope.join(timeout).await
    }
}

impl fmt::Display for ScopeShutdownError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "shutdown of `{}` incomplete: {} task(s) would not stop",
            self.report.path,
            self.stuck.len()
        )?;
        for task in &self.stuck {
            write!(f, "\n  {task}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ScopeShutdownError {}

impl Scope {
    /// Shuts the subtree down against a deadline `timeout` from now: close it to new tasks, shut
    /// children down newest first, cancel, wait for the count to reach zero, abort what is left
    /// the supervisor's abort grace before the deadline (at most a quarter of the time left),
    /// wait until the deadline for the aborted tasks to finish, and report. It returns by the
    /// deadline (or [`MIN_ABORT_WAIT`] after it when there was no time left to abort in).
    ///
    /// Idempotent: the first call runs the shutdown and every call, concurrent or later, gets the
    /// same result (later callers' timeouts are not used).
    ///
    /// # Errors
    ///
    /// [`ScopeShutdownError`] when tasks are still alive at the deadline, aborted: a task blocking
    /// its thread inside `poll`, or a blocking closure. It names each one; [`ScopeShutdownError::wait`]
    /// waits for them to end.
    pub async fn shutdown(
        &self,
        timeout: Duration,
    ) -> Result<ScopeShutdownReport, ScopeShutdownError> {
        let deadline = tokio::time::Instant::now() + timeout;
        match shutdown_until(self.clone(), deadline).await {
            Outcome::Clean(report) => Ok(report),
            Outcome::Stuck { report, stuck } => {
                Err(ScopeShutdownError { report: Box::new(report), stuck, scope: self.clone() })
            }
        }
    }
}

/// How long aborted tasks are waited for at least, even past the deadline: an aborted task ends
/// at its next poll, which needs one turn of the scheduler.
pub const MIN_ABORT_WAIT: Duration = Duration::from_millis(5);

type BoxedOutcome = Pin<Box<dyn Future<Output = Outcome> + Send>>;

/// Runs `scope`'s shutdown once; every caller gets the outcome the scope recorded. (Boxed: a
/// scope's shutdown awaits its children's.)
fn shutdown_until(scope: Scope, deadline: tokio::time::Instant) -> BoxedOutcome {
    Box::pin(async move { scope.shutdown_once(|| run_shutdown(scope.clone(), deadline)).await })
}

async fn run_shutdown(scope: Scope, deadline: tokio::time::Instant) -> Outcome {
    let started = tokio::time::Instant::now();
    let live_at_start = scope.live();
    let path = scope.path();
    tracing::debug!(target: "bus_supervisor", %path, live_at_start, "shutdown begins");

    let children = scope.close();
    let mut child_reports = Vec::with_capacity(children.len());
    for child in children.into_iter().rev() {
        let outcome = shutdown_until(child, deadline).await;
        child_reports.push(outcome.report().clone());
    }

    scope.cancel();
    let mut aborted = Vec::new();
    // The abort grace comes out of the deadline (see the module's invariants).
    let now = tokio::time::Instant::now();
    let grace = scope.abort_grace().min(deadline.saturating_duration_since(now) / 4);
    let abort_at = deadline.checked_sub(grace).unwrap_or(deadline);
    if !scope.wait_idle_until(abort_at).await {
        // Children have reported their own aborts; this report lists this scope's tasks.
        aborted = scope.own_tasks();
        scope.abort_subtree();
        for task in &aborted {
            tracing::warn!(target: "bus_supervisor", task = %task, "aborted at shutdown deadline");
        }
        let settle = deadline.max(tokio::time::Instant::now() + MIN_ABORT_WAIT);
        scope.wait_idle_until(settle).await;
    }

    let report = ScopeShutdownReport {
        path: path.to_owned(),
        elapsed: started.elapsed(),
        live_at_start,
        aborted,
        children: child_reports,
        failure: scope.failure(),
    };
    if scope.is_idle() {
        tracing::debug!(target: "bus_supervisor", %path, "shutdown complete");
        Outcome::Clean(report)
    } else {
        let stuck = scope.live_tasks();
        for task in &stuck {
            tracing::error!(target: "bus_supervisor", task = %task, "task would not stop");
        }
        Outcome::Stuck { report, stuck }
    }
}
