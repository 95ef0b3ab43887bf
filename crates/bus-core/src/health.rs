//! The bus's health as a service's readiness check sees it, and the detailed report behind it.
//!
//! Owns: [`Health`] (the roll-up: ready, degraded, unhealthy, closed, with reasons),
//! [`HealthReport`] (the roll-up with each subscription's [`SubscriptionStatus`] and each
//! producer partition's [`ProducerPartitionStatus`]), [`GroupState`], [`PartitionStatus`] and
//! [`PartitionFailure`]; the metrics' [`MetricsSnapshot`] is public here too (it is defined
//! beside the counters, in `metrics`). A backend reports its own health and its producer partitions; the bus
//! adds its subscriptions and rolls up (see `EventBus::health_report`): `Closed` once shutdown
//! began; `Unhealthy` while a subscription or the producer has failed for good (fenced,
//! committed offsets unreadable, a task past its restart intensity); `Degraded` while something
//! is retrying or stuck (a partition it cannot read, a message it cannot dead-letter, produce
//! retries, a broker refusing TLS or SASL); `Ready` otherwise. Every reason names its topic,
//! partition, offset or group.

use std::time::Duration;

pub use crate::metrics::MetricsSnapshot;
use crate::record::TopicPartition;

/// The bus's (or a backend's) state as a readiness check sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Health {
    /// Healthy: working.
    Ready,
    /// Working with trouble that is being retried or affects a part of the traffic (a broker
    /// unreachable, produce retries, a partition that cannot be read).
    Degraded {
        /// What is wrong.
        reason: String,
    },
    /// A part of the bus has failed for good and needs attention (a subscription that stopped
    /// consuming, a producer past its restart intensity); the rest keeps serving.
    Unhealthy {
        /// What failed.
        reason: String,
    },
    /// Shut down (or shutting down).
    Closed,
}

impl Health {
    /// Whether it is [`Health::Ready`].
    pub fn is_ready(&self) -> bool {
        matches!(self, Health::Ready)
    }

    /// The reason, when there is one.
    pub fn reason(&self) -> Option<&str> {
        match self {
            Health::Degraded { reason } | Health::Unhealthy { reason } => Some(reason),
            Health::Ready | Health::Closed => None,
        }
    }

    /// The worse of the two, their reasons joined (`self`'s first).
    pub fn and(self, other: Health) -> Health {
        fn rank(h: &Health) -> u8 {
            match h {
                Health::Ready => 0,
                Health::Degraded { .. } => 1,
                Health::Unhealthy { .. } => 2,
                Health::Closed => 3,
            }
        }
        let reason = match (self.reason(), other.reason()) {
            (Some(a), Some(b)) => format!("{a}; {b}"),
            (Some(a), None) => a.to_owned(),
            (None, Some(b)) => b.to_owned(),
            (None, None) => String::new(),
        };
        match rank(&self).max(rank(&other)) {
            0 => Health::Ready,
            1 => Health::Degraded { reason },
            2 => Health::Unhealthy { reason },
            _ => Health::Closed,
        }
    }
}

/// Where a subscription's member is in its group.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum GroupState {
    /// Joining the group (no assignment yet).
    #[default]
    Joining,
    /// Holding an assignment and reading it.
    Stable,
    /// Giving up partitions in a rebalance, or waiting for the next assignment after it.
    Rebalancing,
    /// Failed for good: it consumes no more (see the subscription's `failure`).
    Failed,
}

/// One assigned partition of a subscription: where it is and how far behind.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartitionStatus {
    /// The partition.
    pub partition: TopicPartition,
    /// Its high watermark at the last fetch (`None` before the first).
    pub high_watermark: Option<i64>,
    /// The next offset the subscription reads.
    pub position: Option<i64>,
    /// The offset committed last by this subscription (`None` until its first commit).
    pub committed: Option<i64>,
    /// High watermark minus committed offset (everything not yet done: the backlog).
    pub lag: Option<i64>,
    /// High watermark minus position (what is not even fetched yet).
    pub position_lag: Option<i64>,
    /// Why it cannot make progress, when it cannot.
    pub failure: Option<PartitionFailure>,
}

/// One subscription's health.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubscriptionStatus {
    /// Its topics (a name, names, or a pattern).
    pub topic: String,
    /// Its consumer group.
    pub group: String,
    /// Its member's group state.
    pub state: GroupState,
    /// Its assigned partitions.
    pub partitions: Vec<PartitionStatus>,
    /// The sum of its partitions' lags.
    pub backlog: u64,
    /// The last error it met (a failed fetch, commit, or join), kept until a later one.
    pub last_error: Option<String>,
    /// Why it failed for good, when it did.
    pub failure: Option<String>,
    /// Time since it last made progress (read further, or was caught up); `None` before its
    /// first assignment.
    pub since_progress: Option<Duration>,
}

/// One producer partition's state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProducerState {
    /// Producing.
    Ready,
    /// Produce requests are failing and being retried.
    Retrying,
    /// A produce failed for good recently (records were failed back).
    Failed,
}

/// One partition the producer writes to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProducerPartitionStatus {
    /// The partition.
    pub partition: TopicPartition,
    /// Its state.
    pub state: ProducerState,
    /// Records accepted for it and not yet resolved.
    pub pending: u64,
    /// The last error, while retrying or failed.
    pub last_error: Option<String>,
}

/// The bus's health in detail: the roll-up and what it is made of.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HealthReport {
    /// The roll-up ([`EventBus::health`](crate::EventBus::health)).
    pub health: Health,
    /// Each subscription.
    pub subscriptions: Vec<SubscriptionStatus>,
    /// Each partition the producer has written to (empty for a backend that does not say).
    pub producer: Vec<ProducerPartitionStatus>,
    /// Settings in force that weaken security, each named with what it costs (accepting any
    /// broker certificate, credentials sent in the clear); empty when none. They do not change
    /// the roll-up: the bus works, but not as safely as it looks.
    pub insecure: Vec<String>,
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
