//! Topic and group administration, the same on every backend: create (with configuration),
//! list, describe and delete topics, add partitions, list groups, describe a group with its
//! members, assignments and lag, describe the cluster, and read a partition without a group.
//!
//! Owns: [`Admin`] (the handle: [`EventBus::admin`](crate::EventBus::admin), or a backend's own
//! constructor such as `bus_kafka::admin`), what it answers ([`NewTopic`], [`TopicListing`],
//! [`TopicDescription`], [`PartitionDescription`], [`ConfigEntry`], [`GroupListing`],
//! [`GroupDescription`], [`MemberDescription`], [`PartitionLag`], [`ClusterDescription`],
//! [`BrokerDescription`], [`ApiSupport`], [`PartitionCursor`]) and [`AdminError`]. Backends
//! implement [`AdminBackend`].
//!
//! Invariants:
//! - Errors name the topic or group, and carry Kafka's error code where Kafka has one for the
//!   failure ([`AdminError::code`]); the in-memory backend answers the same codes for the same
//!   failures (TOPIC_ALREADY_EXISTS, UNKNOWN_TOPIC_OR_PARTITION, INVALID_PARTITIONS,
//!   GROUP_ID_NOT_FOUND), so a caller's handling is backend-neutral.
//! - Nothing here starts a task: every request runs in the caller's future.

use std::sync::Arc;

pub(crate) mod descriptions;
pub(crate) mod error;

pub use descriptions::{
    ApiSupport, BrokerDescription, ClusterDescription, ConfigEntry, GroupDescription, GroupListing,
    MemberDescription, NewTopic, PartitionDescription, PartitionLag, TopicDescription,
    TopicListing,
};
pub use error::AdminError;
use error::TOPIC_ALREADY_EXISTS;

use crate::backend::{AdminBackend, PartitionReader, ReadError};
use crate::record::{Message, TopicPartition};
use crate::start::StartAt;

/// A partition read from a position, without a consumer group (nothing is committed): what
/// [`Admin::read`] returns.
pub struct PartitionCursor {
    partition: TopicPartition,
    reader: Box<dyn PartitionReader>,
    /// Past the unreadable batch last met, if any.
    unreadable_end: Option<i64>,
}

impl std::fmt::Debug for PartitionCursor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PartitionCursor").field("partition", &self.partition).finish()
    }
}

impl PartitionCursor {
    /// The partition read.
    pub fn partition(&self) -> &TopicPartition {
        &self.partition
    }

    /// The next records from the position (at most about `max_bytes`, at least one when there
    /// is one); an empty batch when none arrived within the backend's poll interval.
    /// Cancel-safe.
    ///
    /// # Errors
    ///
    /// [`AdminError::Topic`] when reading failed (try again), or when the batch at the position
    /// cannot be read (corrupt, over a limit): then [`PartitionCursor::skip_unreadable`] moves
    /// past it.
    pub async fn next(&mut self, max_bytes: usize) -> Result<Vec<Message>, AdminError> {
        let topic = self.partition.topic.to_string();
        match self.reader.next_batch(max_bytes).await {
            Ok(batch) => Ok(batch),
            Err(ReadError::Unreadable(batch)) => {
                self.unreadable_end = Some(batch.last_offset.saturating_add(1));
                Err(AdminError::Topic { topic, code: None, reason: batch.to_string() })
            }
            Err(ReadError::Group(error)) => {
                Err(AdminError::Topic { topic, code: None, reason: error.reason })
            }
        }
    }

    /// Moves past the unreadable batch the last [`PartitionCursor::next`] met; whether there was
    /// one.
    pub fn skip_unreadable(&mut self) -> bool {
        match self.unreadable_end.take() {
            Some(offset) => {
                self.reader.seek(offset);
                true
            }
            None => false,
        }
    }

    /// The next offset to read, when known.
    pub fn position(&self) -> Option<i64> {
        self.reader.position()
    }
}

/// Topic and group administration, the same on every backend: from
/// [`EventBus::admin`](crate::EventBus::admin), or a backend's own constructor
/// (`bus_kafka::admin`). Cheap to clone.
///
/// Errors name the topic or group and carry Kafka's error code where Kafka has one
/// ([`AdminError::code`]); the in-memory backend answers the same codes for the same failures.
/// Nothing here starts a task: every request runs in the caller's future.
#[derive(Clone)]
pub struct Admin {
    backend: Arc<dyn AdminBackend>,
}

impl std::fmt::Debug for Admin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Admin").field("backend", &self.backend.name()).finish()
    }
}

impl Admin {
    /// Administration through `backend` (for backends: services get theirs from
    /// [`EventBus::admin`](crate::EventBus::admin) or the backend's own constructor).
    pub fn new(backend: Arc<dyn AdminBackend>) -> Admin {
        Admin { backend }
    }

    /// The backend's name (`kafka`, `memory`).
    pub fn backend_name(&self) -> &'static str {
        self.backend.name()
    }

    /// Creates `topic` with its partitions and configuration.
    ///
    /// # Errors
    ///
    /// [`AdminError::Topic`]: TOPIC_ALREADY_EXISTS when it exists, INVALID_PARTITIONS,
    /// INVALID_TOPIC_EXCEPTION, INVALID_CONFIG (Kafka) and the like, with the code.
    pub async fn create_topic(&self, topic: &NewTopic) -> Result<(), AdminError> {
        self.backend.create_topic(topic).await
    }

    /// Creates `topic` with `partitions` partitions unless it exists with that count.
    ///
    /// # Errors
    ///
    /// [`AdminError::Topic`] when creation fails or the topic exists with another count.
    pub async fn ensure_topic(&self, topic: &str, partitions: i32) -> Result<(), AdminError> {
        match self.backend.create_topic(&NewTopic::new(topic, partitions)).await {
            Ok(()) => Ok(()),
            Err(error) if error.code() == Some(TOPIC_ALREADY_EXISTS) => {
                match self.partitions(topic).await? {
                    Some(existing) if existing == partitions => Ok(()),
                    Some(existing) => Err(AdminError::Topic {
                        topic: topic.to_owned(),
                        code: Some(TOPIC_ALREADY_EXISTS),
                        reason: format!("it exists with {existing} partitions, not {partitions}"),
                    }),
                    // Deleted in between: report what creation said.
                    None => Err(error),
                }
            }
            Err(error) => Err(error),
        }
    }

    /// The partition count of `topic`, `None` when it does not exist.
    ///
    /// # Errors
    ///
    /// [`AdminError::Topic`] or [`AdminError::Unavailable`] when the cluster cannot say.
    pub async fn partitions(&self, topic: &str) -> Result<Option<i32>, AdminError> {
        let names = [topic.to_owned()];
        let listed = self.backend.list_topics(Some(&names)).await?;
        Ok(listed.into_iter().find(|t| t.name == topic).map(|t| t.partitions))
    }

    /// Every topic, sorted by name (Kafka's internal topics included, marked).
    ///
    /// # Errors
    ///
    /// [`AdminError::Unavailable`] when the cluster cannot be reached.
    pub async fn list_topics(&self) -> Result<Vec<TopicListing>, AdminError> {
        self.backend.list_topics(None).await
    }

    /// `topic`'s partitions (leaders, replicas, start and end offsets) and configuration.
    ///
    /// # Errors
    ///
    /// [`AdminError::Topic`] with UNKNOWN_TOPIC_OR_PARTITION when it does not exist.
    pub async fn describe_topic(&self, topic: &str) -> Result<TopicDescription, AdminError> {
        self.backend.describe_topic(topic).await
    }

    /// Deletes `topic` and its records.
    ///
    /// # Errors
    ///
    /// [`AdminError::Topic`] with UNKNOWN_TOPIC_OR_PARTITION when it does not exist.
    pub async fn delete_topic(&self, topic: &str) -> Result<(), AdminError> {
        self.backend.delete_topic(topic).await
    }

    /// Grows `topic` to `total` partitions (records already stored stay where they are; keyed
    /// records published from now on may go to another partition than before).
    ///
    /// # Errors
    ///
    /// [`AdminError::Topic`] with INVALID_PARTITIONS when `total` is not more than it has;
    /// [`AdminError::Unsupported`] naming the broker when the broker cannot add partitions.
    pub async fn add_partitions(&self, topic: &str, total: i32) -> Result<(), AdminError> {
        self.backend.add_partitions(topic, total).await
    }

    /// Every consumer group, sorted by id.
    ///
    /// # Errors
    ///
    /// [`AdminError::Unavailable`] when no broker answers; [`AdminError::Group`] when one
    /// refuses.
    pub async fn list_groups(&self) -> Result<Vec<GroupListing>, AdminError> {
        self.backend.list_groups().await
    }

    /// `group`'s state, members and their assignments, committed offsets and lag.
    ///
    /// # Errors
    ///
    /// [`AdminError::Group`] with GROUP_ID_NOT_FOUND when the group does not exist.
    pub async fn describe_group(&self, group: &str) -> Result<GroupDescription, AdminError> {
        self.backend.describe_group(group).await
    }

    /// The cluster: its brokers and the protocol versions each offers and the client speaks.
    ///
    /// # Errors
    ///
    /// [`AdminError::Unavailable`] when no broker answers.
    pub async fn describe_cluster(&self) -> Result<ClusterDescription, AdminError> {
        self.backend.describe_cluster().await
    }

    /// Reads `partition` from `start`, outside any consumer group (nothing is committed):
    /// for tools that look at a topic (a tail, a dead-letter listing).
    ///
    /// # Errors
    ///
    /// [`AdminError::Topic`] when the partition does not exist.
    pub async fn read(
        &self,
        partition: &TopicPartition,
        start: StartAt,
    ) -> Result<PartitionCursor, AdminError> {
        let reader = self.backend.read(partition, start).await?;
        Ok(PartitionCursor { partition: partition.clone(), reader, unreadable_end: None })
    }
}
