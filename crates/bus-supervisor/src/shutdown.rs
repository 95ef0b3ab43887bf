//! Shutting a subtree down against a deadline, and what it reports.
//!
//! Owns: the shutdown procedure and its outcome types [`ScopeShutdownReport`],
//! [`ScopeShutdownError`], [`JoinTimeout`].
//!
//! The procedure, for a scope and a deadline:
//! 1. close the scope to new tasks (children created from now on are born closed);
//! 2. shut its children down, newest first, each against the same deadline (so each gets what
//!    remains of the parent's time);
//! 3. cancel the scope's token and wait for the subtree's live count to reach zero;
//! 4. at the deadline, abort everything left in the subtree;
//! 5. wait up to the supervisor's abort grace for the aborted tasks to actually end;
//! 6. report: `Ok` only when the count is zero, otherwise an error naming each task still alive.
//!
//! Invariant: `Ok` is never returned while a task of the subtree is alive. The outcome is computed
//! once per scope and shared by every caller.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use crate::restart::Escalation;
use crate::scope::{Scope, ScopeInner};
use crate::task::TaskInfo;

/// What a completed shutdown did. Returned only when the subtree's live count reached zero.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScopeShutdownReport {
    /// The path of the scope that was shut down.
    pub path: String,
    /// Time from the start of the shutdown to its end.
    pub elapsed: Duration,
    /// Tasks alive in the subtree when the shutdown began.
    pub live_at_start: usize,
    /// Tasks of this scope (not its children) that did not stop after cancellation and were
    /// aborted at the deadline. They did end.
    pub aborted: Vec<TaskInfo>,
    /// The reports of the children, in the order they were shut down (newest first).
    pub children: Vec<ScopeShutdownReport>,
    /// The escalation that failed this scope, if one did.
    pub failure: Option<Escalation>,
}

impl ScopeShutdownReport {
    /// Every task aborted at the deadline in the whole subtree.
    pub fn all_aborted(&self) -> Vec<&TaskInfo> {
        let mut all: Vec<&TaskInfo> = self.aborted.iter().collect();
        for child in &self.children {
            all.extend(child.all_aborted());
        }
        all
    }

    /// Whether every task stopped on cancellation, with no abort needed anywhere in the subtree.
    pub fn is_graceful(&self) -> bool {
        self.aborted.is_empty() && self.children.iter().all(ScopeShutdownReport::is_graceful)
    }

    fn render(&self, f: &mut fmt::Formatter<'_>, depth: usize) -> fmt::Result {
        let indent = "  ".repeat(depth);
        writeln!(
            f,
            "{indent}{}: {} task(s) at start, stopped in {:.3}s, {} aborted{}",
            self.path,
            self.live_at_start,
            self.elapsed.as_secs_f64(),
            self.aborted.len(),
            match &self.failure {
                Some(e) => format!(", failed by escalation from {}", e.path),
                None => String::new(),
            }
        )?;
        for task in &self.aborted {
            writeln!(f, "{indent}  aborted: {task}")?;
        }
        for child in self.children.iter().filter(|c| c.is_eventful()) {
            child.render(f, depth + 1)?;
        }
        Ok(())
    }

    /// Whether the subtree had anything to stop, abort or report: the text form leaves out
    /// empty scopes.
    fn is_eventful(&self) -> bool {
        self.live_at_start > 0
            || !self.aborted.is_empty()
            || self.failure.is_some()
            || self.children.iter().any(ScopeShutdownReport::is_eventful)
    }
}

/// Renders the subtree as indented lines, one per scope that had tasks to stop (empty scopes are
/// left out), with every aborted task named.
impl fmt::Display for ScopeShutdownReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.render(f, 0)
    }
}

/// A shutdown that could not bring the live count to zero: the tasks named in `stuck` were still
/// alive after the deadline and the abort grace (blocking their thread inside `poll`, or blocking
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
    pub(crate) scope: Scope,
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

/// Tasks still alive when a [`Scope::join`] (or [`ScopeShutdownError::wait`]) timed out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JoinTimeout {
    /// The scope that was waited on.
    pub path: String,
    /// The tasks still alive.
    pub still_running: Vec<TaskInfo>,
}

impl fmt::Display for JoinTimeout {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "`{}` still has {} live task(s)", self.path, self.still_running.len())?;
        for task in &self.still_running {
            write!(f, "\n  {task}")?;
        }
        Ok(())
    }
}

impl std::error::Error for JoinTimeout {}

/// The shared result of one scope's shutdown, stored once and cloned to every caller. It holds no
/// handle to the scope (that would be a reference cycle); the handle is added per caller.
#[derive(Clone)]
pub(crate) enum Outcome {
    Clean(ScopeShutdownReport),
    Stuck { report: ScopeShutdownReport, stuck: Vec<TaskInfo> },
}

impl Outcome {
    pub(crate) fn into_result(
        self,
        scope: &Scope,
    ) -> Result<ScopeShutdownReport, ScopeShutdownError> {
        match self {
            Outcome::Clean(report) => Ok(report),
            Outcome::Stuck { report, stuck } => {
                Err(ScopeShutdownError { report: Box::new(report), stuck, scope: scope.clone() })
            }
        }
    }

    fn report(&self) -> &ScopeShutdownReport {
        match self {
            Outcome::Clean(report) | Outcome::Stuck { report, .. } => report,
        }
    }
}

type BoxedOutcome = std::pin::Pin<Box<dyn std::future::Future<Output = Outcome> + Send>>;

impl ScopeInner {
    /// Runs the scope's shutdown once; every caller gets the stored outcome.
    pub(crate) fn shutdown_until(self: Arc<Self>, deadline: tokio::time::Instant) -> BoxedOutcome {
        Box::pin(async move {
            self.shutdown.get_or_init(|| Arc::clone(&self).run_shutdown(deadline)).await.clone()
        })
    }

    async fn run_shutdown(self: Arc<Self>, deadline: tokio::time::Instant) -> Outcome {
        let started = tokio::time::Instant::now();
        let live_at_start = self.live();
        tracing::debug!(target: "bus_supervisor", path = %self.path, live_at_start, "shutdown begins");

        let children = self.close();
        let mut child_reports = Vec::with_capacity(children.len());
        for child in children.into_iter().rev() {
            let outcome = child.shutdown_until(deadline).await;
            child_reports.push(outcome.report().clone());
        }

        self.token.cancel();
        let mut aborted = Vec::new();
        if !self.wait_idle_until(deadline).await {
            // Children have reported their own aborts; this report lists this scope's tasks.
            aborted = self.own_tasks();
            self.abort_subtree();
            for task in &aborted {
                tracing::warn!(target: "bus_supervisor", task = %task, "aborted at shutdown deadline");
            }
            self.wait_idle_until(deadline + self.tree.abort_grace).await;
        }

        let report = ScopeShutdownReport {
            path: self.path.to_string(),
            elapsed: started.elapsed(),
            live_at_start,
            aborted,
            children: child_reports,
            failure: self.failure.lock().clone(),
        };
        if self.is_idle() {
            tracing::debug!(target: "bus_supervisor", path = %self.path, "shutdown complete");
            Outcome::Clean(report)
        } else {
            let stuck = self.live_tasks();
            for task in &stuck {
                tracing::error!(target: "bus_supervisor", task = %task, "task would not stop");
            }
            Outcome::Stuck { report, stuck }
        }
    }
}
