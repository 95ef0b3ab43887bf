//! The in-memory backend's configuration.
//!
//! Owns: [`MemoryConfig`], a serde struct with defaults, and its validation. Every error names
//! the field as written in the configuration (`memory.<field>`).
//!
//! Invariant: a [`MemoryConfig`] that passed [`MemoryConfig::validate`] never makes the backend
//! divide by zero, allocate without bound, or poll in a busy loop.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::error::ConfigError;
use crate::partition::Partitioner;

/// The largest partition count a topic may have (auto-created or created explicitly).
pub const MAX_PARTITIONS: i32 = 10_000;

/// How the in-memory backend stores topics, bounds memory and paces readers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MemoryConfig {
    /// The partition count of a topic created automatically (on first publish or subscribe).
    /// Default 3. At least 1, at most [`MAX_PARTITIONS`].
    pub default_partitions: i32,
    /// Whether publishing to, or subscribing to, a topic that does not exist creates it with
    /// `default_partitions` partitions (default true). When false, such a publish fails with
    /// [`PublishError::UnknownTopic`](crate::errors::PublishError::UnknownTopic) and such a subscribe
    /// with [`SubscribeError::UnknownTopic`](crate::errors::SubscribeError::UnknownTopic).
    pub auto_create_topics: bool,
    /// How a record's key chooses its partition (default `murmur2`, the Java client's).
    pub partitioner: Partitioner,
    /// The bytes (as counted by [`Record::size`](crate::Record::size)) a topic holds at most,
    /// over all its partitions. Default 64 MiB. A publish that does not fit waits for room.
    pub topic_capacity_bytes: usize,
    /// How long a publish waits for room before failing with
    /// [`PublishError::BufferFull`](crate::errors::PublishError::BufferFull). Default 30 s. Zero means
    /// "do not wait": a publish that does not fit at once fails at once.
    #[serde(with = "humantime_serde")]
    pub publish_timeout: Duration,
    /// How long a reader's `next_batch` waits for a record before returning an empty batch.
    /// Default 100 ms. Must be greater than zero.
    #[serde(with = "humantime_serde")]
    pub poll_interval: Duration,
}

impl Default for MemoryConfig {
    fn default() -> Self {
        MemoryConfig {
            default_partitions: 3,
            auto_create_topics: true,
            partitioner: Partitioner::Murmur2,
            topic_capacity_bytes: 64 * 1024 * 1024,
            publish_timeout: Duration::from_secs(30),
            poll_interval: Duration::from_millis(100),
        }
    }
}

impl MemoryConfig {
    /// Sets the partition count of auto-created topics.
    pub fn with_default_partitions(mut self, partitions: i32) -> Self {
        self.default_partitions = partitions;
        self
    }

    /// Turns automatic topic creation on or off.
    pub fn with_auto_create_topics(mut self, on: bool) -> Self {
        self.auto_create_topics = on;
        self
    }

    /// Sets the key partitioner.
    pub fn with_partitioner(mut self, partitioner: Partitioner) -> Self {
        self.partitioner = partitioner;
        self
    }

    /// Sets the per-topic capacity in bytes.
    pub fn with_topic_capacity_bytes(mut self, bytes: usize) -> Self {
        self.topic_capacity_bytes = bytes;
        self
    }

    /// Sets how long a publish waits for room.
    pub fn with_publish_timeout(mut self, timeout: Duration) -> Self {
        self.publish_timeout = timeout;
        self
    }

    /// Sets how long a reader waits before returning an empty batch.
    pub fn with_poll_interval(mut self, interval: Duration) -> Self {
        self.poll_interval = interval;
        self
    }

    /// Checks every field.
    ///
    /// # Errors
    ///
    /// A [`ConfigError`] naming the first field out of range (`memory.default_partitions`,
    /// `memory.topic_capacity_bytes`, `memory.poll_interval`).
    pub fn validate(&self) -> Result<(), ConfigError> {
        if !(1..=MAX_PARTITIONS).contains(&self.default_partitions) {
            return Err(ConfigError::new(
                "memory.default_partitions",
                format!("must be between 1 and {MAX_PARTITIONS}, not {}", self.default_partitions),
            ));
        }
        if self.topic_capacity_bytes == 0 {
            return Err(ConfigError::new("memory.topic_capacity_bytes", "must be at least 1"));
        }
        if self.poll_interval.is_zero() {
            return Err(ConfigError::new("memory.poll_interval", "must be greater than zero"));
        }
        Ok(())
    }
}
