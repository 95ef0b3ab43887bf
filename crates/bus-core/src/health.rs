//! The bus's health as a service's readiness check sees it.
//!
//! Owns: [`Health`] and [`PartitionFailure`]. A backend reports its own; the bus reports
//! `Closed` once shutdown began, and `Degraded` while a subscription has a partition it cannot
//! read, a message it cannot dead-letter, or has failed (each named in the reason).

use crate::record::TopicPartition;

/// A backend's state as seen by `health`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Health {
    /// Working.
    Ready,
    /// Working with trouble (a broker unreachable, retries in progress, a partition that cannot
    /// be read).
    Degraded {
        /// What is wrong.
        reason: String,
    },
    /// Shut down (or shutting down).
    Closed,
}

/// A partition a subscription cannot make progress on, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartitionFailure {
    /// The partition.
    pub partition: TopicPartition,
    /// The offset it is stopped at (`None` when the reader's position is not known yet: a start
    /// at the earliest or latest offset not resolved).
    pub offset: Option<i64>,
    /// Why (the reader's error: the broker, the batch's offsets, the limit or the corruption).
    pub reason: String,
}

impl std::fmt::Display for PartitionFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.offset {
            Some(offset) => {
                write!(f, "`{}` stopped at offset {offset}: {}", self.partition, self.reason)
            }
            None => write!(f, "`{}` stopped: {}", self.partition, self.reason),
        }
    }
}
