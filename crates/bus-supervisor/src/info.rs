//! What is known about a task: its id, kind and state, and the description that snapshots,
//! shutdown reports and leak reports list.
//!
//! Owns: [`TaskId`], [`TaskKind`], [`TaskState`], [`TaskInfo`] and [`TaskPath`] (a task's path,
//! formatted only when asked for). Plain data: this module knows nothing of scopes or tables.

use std::fmt;
use std::panic::Location;
use std::time::Duration;

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
