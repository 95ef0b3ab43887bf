//! The bus's health as a service's readiness check sees it.
//!
//! Owns: [`Health`]. A backend reports its own; the bus reports `Closed` once shutdown began.

/// A backend's state as seen by `health`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Health {
    /// Working.
    Ready,
    /// Working with trouble (a broker unreachable, retries in progress).
    Degraded {
        /// What is wrong.
        reason: String,
    },
    /// Shut down (or shutting down).
    Closed,
}
