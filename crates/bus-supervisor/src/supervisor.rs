//! The owner of a task tree.
//!
//! Owns: [`Supervisor`] (the root scope's owner) and [`SupervisorBuilder`].
//!
//! Invariant: a tree never outlives its supervisor. Dropping a `Supervisor` that was not shut
//! down closes the whole tree, cancels every token and aborts every task; `Scope` handles that
//! outlive it refer to a closed tree.

use std::time::Duration;

use tokio::runtime::Handle;
use tokio::sync::broadcast;

use crate::exit::{Escalation, SupervisionEvent};
use crate::report::ScopeShutdownReport;
use crate::scope::Scope;
use crate::shutdown::ScopeShutdownError;
use crate::snapshot::Snapshot;
use crate::watchdog::Watchdog;

/// Owns a task tree: its root [`Scope`], every scope below it and every task in them.
///
/// Create it inside a tokio runtime (with the time driver enabled, as `#[tokio::main]` does), hand
/// out scopes with [`Supervisor::root`] and [`Scope::child`], and end it with
/// [`Supervisor::shutdown`]. Dropping it without a shutdown aborts the whole tree.
pub struct Supervisor {
    root: Scope,
    /// Dropped after the tree is aborted (fields drop in order after `Drop::drop`).
    _watchdog: Option<Watchdog>,
}

impl std::fmt::Debug for Supervisor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Supervisor").field("root", &self.root).finish()
    }
}

/// Configures a [`Supervisor`].
#[derive(Debug, Clone)]
pub struct SupervisorBuilder {
    name: String,
    runtime: Option<Handle>,
    abort_grace: Duration,
    event_capacity: usize,
    watchdog: Option<Duration>,
}

impl SupervisorBuilder {
    /// Wakes the runtime from a thread of the supervisor's own every `interval`, so that a task
    /// that blocks its worker thread cannot stall the runtime's I/O and timers (and with them a
    /// shutdown's deadline). Off by default; worth it wherever foreign code (handlers) runs in
    /// the tree. See the `watchdog` module for the tokio behaviour this works around.
    pub fn runtime_watchdog(mut self, interval: Duration) -> Self {
        self.watchdog = Some(interval);
        self
    }

    /// Runs the tree's tasks on `runtime` instead of the runtime current at `build` (or at each
    /// spawn, when there was none at `build`).
    pub fn runtime(mut self, runtime: Handle) -> Self {
        self.runtime = Some(runtime);
        self
    }

    /// How long before its deadline a shutdown aborts the tasks still alive, so that they can
    /// actually end by the deadline (default 250 ms; at most a quarter of the shutdown's time is
    /// used so). An aborted task ends at its next `.await`; one that is still alive at the
    /// deadline is blocking its thread and is reported as stuck.
    pub fn abort_grace(mut self, grace: Duration) -> Self {
        self.abort_grace = grace;
        self
    }

    /// How many supervision events a slow receiver may lag behind before missing some
    /// (default 256).
    pub fn event_capacity(mut self, capacity: usize) -> Self {
        self.event_capacity = capacity;
        self
    }

    /// Builds the supervisor.
    pub fn build(self) -> Supervisor {
        let runtime = self.runtime.or_else(|| Handle::try_current().ok());
        let watchdog = match (&runtime, self.watchdog) {
            (Some(handle), Some(interval)) => Watchdog::start(handle.clone(), interval, &self.name),
            _ => None,
        };
        let root = Scope::new_tree(&self.name, runtime, self.abort_grace, self.event_capacity);
        Supervisor { root, _watchdog: watchdog }
    }
}

impl Supervisor {
    /// A supervisor whose root scope is named `name`, with the default settings, running its
    /// tasks on the current runtime.
    pub fn new(name: impl Into<String>) -> Self {
        Self::builder(name).build()
    }

    /// A builder for a supervisor whose root scope is named `name`.
    pub fn builder(name: impl Into<String>) -> SupervisorBuilder {
        SupervisorBuilder {
            name: name.into(),
            runtime: None,
            abort_grace: Duration::from_millis(250),
            event_capacity: 256,
            watchdog: None,
        }
    }

    /// The root scope.
    pub fn root(&self) -> &Scope {
        &self.root
    }

    /// The number of live tasks in the whole tree.
    pub fn live(&self) -> usize {
        self.root.live()
    }

    /// Shuts the whole tree down against a deadline `timeout` from now. See [`Scope::shutdown`].
    ///
    /// # Errors
    ///
    /// [`ScopeShutdownError`] naming every task that would not stop.
    pub async fn shutdown(
        &self,
        timeout: Duration,
    ) -> Result<ScopeShutdownReport, ScopeShutdownError> {
        self.root.shutdown(timeout).await
    }

    /// A snapshot of the whole tree.
    pub fn snapshot(&self) -> Snapshot {
        self.root.snapshot()
    }

    /// Receives the supervision events of the tree.
    pub fn events(&self) -> broadcast::Receiver<SupervisionEvent> {
        self.root.events()
    }

    /// The escalation that reached the root, if one did: a supervised child exceeded its restart
    /// intensity and no supervised scope above it absorbed the failure. The tree is cancelled.
    pub fn failure(&self) -> Option<Escalation> {
        self.root.failure()
    }
}

impl Drop for Supervisor {
    fn drop(&mut self) {
        let aborted = self.root.abort_subtree();
        if !aborted.is_empty() {
            tracing::warn!(
                target: "bus_supervisor",
                path = %self.root.path(),
                aborted = aborted.len(),
                "supervisor dropped without shutdown: tree aborted"
            );
        }
    }
}
