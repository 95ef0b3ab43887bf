//! How supervised children end, and what is done about it: the vocabulary that monitors publish
//! and that scopes record.
//!
//! Owns: [`Exit`] (how one incarnation ended), [`Action`] (what its monitor did),
//! [`SupervisionEvent`] (the two together, published to the tree's receivers) and [`Escalation`]
//! (a child that exceeded its restart intensity: what fails the scopes above it). Plain data:
//! the monitor that produces them lives in `restart`.

use std::fmt;
use std::panic::Location;
use std::time::Duration;

/// How one incarnation of a supervised child ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Exit {
    /// It returned `Ok(())`.
    Completed,
    /// It returned an error, shown here as text.
    Failed(String),
    /// It panicked.
    Panicked {
        /// The panic message.
        message: String,
        /// Where the child was supervised (its spawn site).
        spawned_at: &'static Location<'static>,
    },
    /// It was aborted.
    Aborted,
    /// A child of its own exceeded its restart intensity and the failure escalated to it.
    Escalated(Box<Escalation>),
}

impl Exit {
    /// Whether the exit is abnormal (anything but [`Exit::Completed`]).
    pub fn is_abnormal(&self) -> bool {
        !matches!(self, Exit::Completed)
    }
}

impl fmt::Display for Exit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Exit::Completed => f.write_str("completed"),
            Exit::Failed(error) => write!(f, "failed: {error}"),
            Exit::Panicked { message, spawned_at } => {
                write!(f, "panicked (spawned at {spawned_at}): {message}")
            }
            Exit::Aborted => f.write_str("aborted"),
            Exit::Escalated(escalation) => write!(f, "escalated: {escalation}"),
        }
    }
}

/// What a monitor did about an exit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// The child will be restarted after this delay.
    Restart {
        /// The backoff delay.
        after: Duration,
    },
    /// The child is not restarted (its restart type says so); supervision ends.
    Stop,
    /// The restart intensity was exceeded; the failure escalates to the parent scope.
    Escalate,
    /// The parent scope is shutting down; supervision ends.
    Shutdown,
}

/// One exit of a supervised child and what was done about it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SupervisionEvent {
    /// The supervised child's path.
    pub path: String,
    /// Which run ended: 0 for the first, 1 after the first restart, and so on.
    pub incarnation: u32,
    /// How it ended.
    pub exit: Exit,
    /// What the monitor did.
    pub action: Action,
}

/// A supervised child exceeded its restart intensity.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Escalation {
    /// The supervised child's path.
    pub path: String,
    /// The restarts made within the window before giving up.
    pub restarts: u32,
    /// The intensity window.
    pub within: Duration,
    /// The exit that exceeded the intensity.
    pub last_exit: Box<Exit>,
}

impl fmt::Display for Escalation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "`{}` exceeded {} restart(s) in {:.3}s; last exit: {}",
            self.path,
            self.restarts,
            self.within.as_secs_f64(),
            self.last_exit
        )
    }
}
