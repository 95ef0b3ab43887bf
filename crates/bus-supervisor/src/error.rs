//! The errors of spawning and joining tasks.
//!
//! Owns: [`SpawnError`] (why a task could not be registered), [`TaskError`] (how a task ended
//! other than by returning) and [`JoinTimeout`] (what was still alive when a wait for a subtree
//! to end timed out). Shutdown's own outcome types live in `report` and `shutdown`.

use std::fmt;
use std::panic::Location;

use crate::info::TaskInfo;

/// Why a task could not be spawned. Nothing was registered and nothing runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SpawnError {
    /// The scope (or the supervisor owning it) is shutting down or has shut down: it admits no
    /// new tasks, so that a finished shutdown stays finished.
    Closed {
        /// The path of the closed scope.
        scope: String,
    },
    /// There is no tokio runtime to run the task on: the supervisor was created outside a runtime
    /// and `spawn` was called outside one too.
    NoRuntime {
        /// The path of the scope the task was meant for.
        scope: String,
    },
}

impl fmt::Display for SpawnError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SpawnError::Closed { scope } => {
                write!(f, "cannot spawn in scope `{scope}`: it is shutting down or shut down")
            }
            SpawnError::NoRuntime { scope } => write!(
                f,
                "cannot spawn in scope `{scope}`: no tokio runtime (create the supervisor inside \
                 one, or give it a runtime handle)"
            ),
        }
    }
}

impl std::error::Error for SpawnError {}

/// How a task ended without returning its output.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TaskError {
    /// The task panicked. The panic was caught at its poll boundary (it never unwound into the
    /// runtime) and logged.
    Panicked {
        /// The task's path.
        path: String,
        /// Where the task was spawned.
        spawned_at: &'static Location<'static>,
        /// The panic message.
        message: String,
    },
    /// The task was aborted (by a shutdown deadline, a dropped supervisor or its handle) before it
    /// finished.
    Aborted {
        /// The task's path.
        path: String,
    },
}

impl fmt::Display for TaskError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TaskError::Panicked { path, spawned_at, message } => {
                write!(f, "task `{path}` (spawned at {spawned_at}) panicked: {message}")
            }
            TaskError::Aborted { path } => write!(f, "task `{path}` was aborted"),
        }
    }
}

impl std::error::Error for TaskError {}

/// Tasks still alive when a [`Scope::join`](crate::Scope::join) (or
/// [`ScopeShutdownError::wait`](crate::ScopeShutdownError::wait)) timed out.
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
