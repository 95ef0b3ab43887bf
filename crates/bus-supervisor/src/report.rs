//! What a scope's shutdown reports.
//!
//! Owns: [`ScopeShutdownReport`] (what a shutdown did, scope by scope) and `Outcome`, the result
//! of one scope's shutdown as the scope records it (computed once, shared by every caller).
//! Plain data: the procedure that produces them lives in `shutdown`.

use std::fmt;
use std::time::Duration;

use crate::exit::Escalation;
use crate::info::TaskInfo;

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

/// The shared result of one scope's shutdown, stored once in the scope and cloned to every
/// caller. It holds no handle to the scope (that would be a reference cycle); the handle is
/// added per caller.
#[derive(Clone)]
pub(crate) enum Outcome {
    /// The subtree's count reached zero.
    Clean(ScopeShutdownReport),
    /// Tasks were still alive at the deadline, after being aborted.
    Stuck { report: ScopeShutdownReport, stuck: Vec<TaskInfo> },
}

impl Outcome {
    pub(crate) fn report(&self) -> &ScopeShutdownReport {
        match self {
            Outcome::Clean(report) | Outcome::Stuck { report, .. } => report,
        }
    }
}
