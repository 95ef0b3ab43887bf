//! Where reading starts: one place in one partition ([`StartAt`]: a seek, a read without a
//! group, a reader a backend opens), a subscription's start on its first assignment of each
//! partition ([`StartPosition`], with [`PartitionOffset`]), and where a group goes when it has no
//! committed offset or its position left the partition ([`OffsetReset`]).
//!
//! Invariants: a [`StartPosition`] or an [`OffsetReset`] always comes down to a [`StartAt`]
//! (or to the committed offset) before a backend sees it; backends know only [`StartAt`].

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::record::TopicPartition;

/// Where one partition is read from: where [`ConsumerControl::seek`](crate::ConsumerControl::seek)
/// moves a partition, where [`Admin::read`](crate::admin::Admin::read) starts, and where a
/// backend opens a reader.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StartAt {
    /// The oldest record stored.
    Earliest,
    /// After the newest record stored: the next record published.
    Latest,
    /// This offset (the next one read).
    Offset(i64),
    /// The first record whose timestamp is at or after this time (Kafka's ListOffsets by time);
    /// the next record published when there is none.
    Timestamp(DateTime<Utc>),
}

impl From<OffsetReset> for StartAt {
    fn from(reset: OffsetReset) -> Self {
        match reset {
            OffsetReset::Earliest => StartAt::Earliest,
            OffsetReset::Latest => StartAt::Latest,
        }
    }
}

/// Where a group starts reading a partition it has no committed offset for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OffsetReset {
    /// From the oldest record still stored.
    #[default]
    Earliest,
    /// From the next record published.
    Latest,
}

/// Where a subscription starts reading each partition the first time it is assigned one.
///
/// Applied once per partition per subscription: when the group later moves a partition away
/// and back, or after a rejoin, it continues from its committed offset like any member. Other
/// members of the group are not affected. Moving while running is
/// [`ConsumerControl::seek`](crate::ConsumerControl::seek).
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StartPosition {
    /// From the group's committed offset; without one, as `auto_offset_reset` says (the
    /// default).
    #[default]
    Committed,
    /// From the oldest record stored, whatever the group committed (a replay).
    Earliest,
    /// From the next record published, whatever the group committed (skipping the backlog).
    Latest,
    /// From the first record whose timestamp is at or after this time (Kafka's ListOffsets by
    /// time); from the next record published when there is none.
    Timestamp(DateTime<Utc>),
    /// From these offsets, for the partitions listed; the others as `Committed`. An offset
    /// beyond the partition's end (or below its start) moves as `auto_offset_reset` says.
    Offsets(Vec<PartitionOffset>),
}

impl StartPosition {
    /// Where `partition` starts on its first assignment, when not at its committed offset.
    pub(crate) fn start_at(&self, partition: &TopicPartition) -> Option<StartAt> {
        match self {
            StartPosition::Committed => None,
            StartPosition::Earliest => Some(StartAt::Earliest),
            StartPosition::Latest => Some(StartAt::Latest),
            StartPosition::Timestamp(time) => Some(StartAt::Timestamp(*time)),
            StartPosition::Offsets(offsets) => offsets
                .iter()
                .find(|p| *p.topic == *partition.topic && p.partition == partition.partition)
                .map(|p| StartAt::Offset(p.offset)),
        }
    }
}

/// An offset of one partition: where [`StartPosition::Offsets`] starts it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PartitionOffset {
    /// The topic.
    pub topic: String,
    /// The partition.
    pub partition: i32,
    /// The next offset to read.
    pub offset: i64,
}

impl PartitionOffset {
    /// Partition `partition` of `topic` at `offset`.
    pub fn new(topic: impl Into<String>, partition: i32, offset: i64) -> Self {
        PartitionOffset { topic: topic.into(), partition, offset }
    }
}
