//! A leak guard for tests, in the spirit of Go's goleak.
//!
//! Owns: [`LeakGuard`] and [`LeakReport`].
//!
//! The guard records a baseline when created: the scope's live count and the next task id of its
//! tree (and, when asked, the runtime's alive-task count). A check passes when the scope is back
//! at its baseline within the deadline. Only tasks of the guard's own tree are counted, so guards
//! on two supervisors in one runtime do not see each other; the runtime cross-check is opt-in for
//! that reason, since it counts every task of the runtime.

use std::fmt;
use std::time::Duration;

use crate::info::TaskInfo;
use crate::scope::Scope;

/// Records a baseline of a scope and checks later that it returned to it.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// use std::time::Duration;
/// use bus_supervisor::{LeakGuard, Supervisor};
///
/// let supervisor = Supervisor::new("app");
/// let guard = LeakGuard::new(supervisor.root()).with_runtime_check();
/// let worker = supervisor.root().spawn("worker", async { 40 + 2 }).unwrap();
/// assert_eq!(worker.await.unwrap(), 42);
/// guard.check(Duration::from_secs(1)).await.unwrap();
/// # }
/// ```
#[derive(Debug)]
pub struct LeakGuard {
    scope: Scope,
    baseline_live: usize,
    first_new_id: u64,
    runtime_baseline: Option<usize>,
}

impl LeakGuard {
    /// Records the baseline of `scope`'s subtree.
    pub fn new(scope: &Scope) -> Self {
        LeakGuard {
            scope: scope.clone(),
            baseline_live: scope.live(),
            first_new_id: scope.next_task_id(),
            runtime_baseline: None,
        }
    }

    /// Also records the current runtime's alive-task count and requires it to return to the
    /// baseline. This catches tasks spawned around the supervisor, but counts every task of the
    /// runtime: use it only where nothing else spawns concurrently (a test's own runtime). Outside
    /// a runtime it records nothing.
    pub fn with_runtime_check(mut self) -> Self {
        self.runtime_baseline =
            tokio::runtime::Handle::try_current().ok().map(|h| h.metrics().num_alive_tasks());
        self
    }

    /// Waits up to `timeout` for the scope (and the runtime, when checked) to return to the
    /// baseline.
    ///
    /// # Errors
    ///
    /// A [`LeakReport`] listing the tasks spawned since the baseline that are still alive.
    pub async fn check(&self, timeout: Duration) -> Result<(), LeakReport> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let live = self.scope.live();
            let runtime_alive = self.runtime_alive();
            let runtime_ok = match (self.runtime_baseline, runtime_alive) {
                (Some(base), Some(now)) => now <= base,
                _ => true,
            };
            if live <= self.baseline_live && runtime_ok {
                return Ok(());
            }
            if tokio::time::Instant::now() >= deadline {
                let leaked = self
                    .scope
                    .live_tasks()
                    .into_iter()
                    .filter(|t| t.id.get() >= self.first_new_id)
                    .collect();
                return Err(LeakReport {
                    path: self.scope.path().to_owned(),
                    baseline_live: self.baseline_live,
                    live,
                    leaked,
                    runtime: self.runtime_baseline.zip(runtime_alive),
                });
            }
            // Poll the condition; the deadline bounds the wait.
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    /// Like [`LeakGuard::check`], but panics with the report: for use in tests.
    ///
    /// # Panics
    ///
    /// When the check fails.
    #[allow(clippy::panic)] // a test assertion: failing loudly is its purpose
    pub async fn assert_clean(&self, timeout: Duration) {
        if let Err(report) = self.check(timeout).await {
            panic!("{report}");
        }
    }

    fn runtime_alive(&self) -> Option<usize> {
        self.runtime_baseline?;
        tokio::runtime::Handle::try_current().ok().map(|h| h.metrics().num_alive_tasks())
    }
}

/// What a failed [`LeakGuard::check`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeakReport {
    /// The guarded scope.
    pub path: String,
    /// Its live count at the baseline.
    pub baseline_live: usize,
    /// Its live count at the check.
    pub live: usize,
    /// Tasks spawned since the baseline and still alive.
    pub leaked: Vec<TaskInfo>,
    /// The runtime's alive-task count at the baseline and at the check, when checked.
    pub runtime: Option<(usize, usize)>,
}

impl fmt::Display for LeakReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "leak in `{}`: {} live task(s), baseline {}",
            self.path, self.live, self.baseline_live
        )?;
        if let Some((base, now)) = self.runtime {
            write!(f, "; runtime alive tasks {now}, baseline {base}")?;
            if now > base && self.live <= self.baseline_live {
                write!(f, " (tasks spawned outside the supervisor)")?;
            }
        }
        for task in &self.leaked {
            write!(f, "\n  leaked: {task}")?;
        }
        Ok(())
    }
}

impl std::error::Error for LeakReport {}
