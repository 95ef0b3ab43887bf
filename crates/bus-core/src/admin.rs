//! Topic and group administration, the same on every backend: create (with configuration),
//! list, describe and delete topics, add partitions, list groups, describe a group with its
//! members, assignments and lag, describe the cluster, and read a partition without a group.
//!
//! Owns: [`Admin`] (the handle: [`EventBus::admin`](crate::EventBus::admin), or a backend's own
//! constructor such as `bus_kafka::admin`), what it answers ([`NewTopic`], [`TopicListing`],
//! [`TopicDescription`], [`PartitionDescription`], [`ConfigEntry`], [`GroupListing`],
//! [`GroupDescription`], [`MemberDescription`], [`PartitionLag`], [`ClusterDescription`],
//! [`BrokerDescription`], [`ApiSupport`], [`PartitionCursor`]) and [`AdminError`]. Backends
//! implement [`AdminBackend`](crate::backend::AdminBackend).
//!
//! Invariants:
//! - Errors name the topic or group, and carry Kafka's error code where Kafka has one for the
//!   failure ([`AdminError::code`]); the in-memory backend answers the same codes for the same
//!   failures (TOPIC_ALREADY_EXISTS, UNKNOWN_TOPIC_OR_PARTITION, INVALID_PARTITIONS,
//!   GROUP_ID_NOT_FOUND), so a caller's handling is backend-neutral.
//! - Nothing here starts a task: every request runs in the caller's future.

use std::collections::BTreeMap;
use std::sync::Arc;

use serde::Serialize;

use crate::backend::{AdminBackend, PartitionReader, ReadError, StartAt};
use crate::record::{Message, TopicPartition};

/// Kafka's UNKNOWN_TOPIC_OR_PARTITION.
pub(crate) const UNKNOWN_TOPIC_OR_PARTITION: i16 = 3;
/// Kafka's TOPIC_ALREADY_EXISTS.
pub(crate) const TOPIC_ALREADY_EXISTS: i16 = 36;
/// Kafka's INVALID_PARTITIONS.
pub(crate) const INVALID_PARTITIONS: i16 = 37;
/// Kafka's INVALID_TOPIC_EXCEPTION.
pub(crate) const INVALID_TOPIC: i16 = 17;
/// Kafka's GROUP_ID_NOT_FOUND.
pub(crate) const GROUP_ID_NOT_FOUND: i16 = 69;

/// `NAME (error N)` for the codes the in-memory backend answers.
pub(crate) fn code_label(code: i16) -> String {
    let name = match code {
        UNKNOWN_TOPIC_OR_PARTITION => "UNKNOWN_TOPIC_OR_PARTITION",
        TOPIC_ALREADY_EXISTS => "TOPIC_ALREADY_EXISTS",
        INVALID_PARTITIONS => "INVALID_PARTITIONS",
        INVALID_TOPIC => "INVALID_TOPIC_EXCEPTION",
        GROUP_ID_NOT_FOUND => "GROUP_ID_NOT_FOUND",
        _ => "error",
    };
    format!("{name} (error {code})")
}

/// An administrative request that failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum AdminError {
    /// A request about a topic failed.
    #[error("topic `{topic}`: {reason}")]
    Topic {
        /// The topic.
        topic: String,
        /// Kafka's error code, when the failure has one.
        code: Option<i16>,
        /// What failed and why (with the code's name and the broker, where there is one).
        reason: String,
    },
    /// A request about a consumer group failed.
    #[error("group `{group}`: {reason}")]
    Group {
        /// The group.
        group: String,
        /// Kafka's error code, when the failure has one.
        code: Option<i16>,
        /// What failed and why.
        reason: String,
    },
    /// The backend (or the broker, named in `reason`) does not support the operation.
    #[error("{operation} is not supported: {reason}")]
    Unsupported {
        /// The operation (`add partitions`, …).
        operation: &'static str,
        /// Why, naming the broker where there is one.
        reason: String,
    },
    /// The cluster could not be reached (no broker answered within the request timeout).
    #[error("cannot reach the cluster: {reason}")]
    Unavailable {
        /// Why.
        reason: String,
    },
}

impl AdminError {
    /// Kafka's error code of the failure, when it has one.
    pub fn code(&self) -> Option<i16> {
        match self {
            AdminError::Topic { code, .. } | AdminError::Group { code, .. } => *code,
            AdminError::Unsupported { .. } | AdminError::Unavailable { .. } => None,
        }
    }

    /// A topic failure with Kafka's `code` (its name leads the reason).
    pub fn topic_code(topic: impl Into<String>, code: i16, detail: impl AsRef<str>) -> Self {
        AdminError::Topic {
            topic: topic.into(),
            code: Some(code),
            reason: with_detail(code_label(code), detail.as_ref()),
        }
    }

    /// A group failure with Kafka's `code` (its name leads the reason).
    pub fn group_code(group: impl Into<String>, code: i16, detail: impl AsRef<str>) -> Self {
        AdminError::Group {
            group: group.into(),
            code: Some(code),
            reason: with_detail(code_label(code), detail.as_ref()),
        }
    }
}

fn with_detail(label: String, detail: &str) -> String {
    if detail.is_empty() { label } else { format!("{label}: {detail}") }
}

/// A topic to create.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct NewTopic {
    /// Its name.
    pub name: String,
    /// Its partition count.
    pub partitions: i32,
    /// Its replication factor; `None`: the backend's default (Kafka: `topics.replication_factor`
    /// of the configuration).
    pub replication_factor: Option<i16>,
    /// Its configuration (`cleanup.policy`, `retention.ms`, …), as Kafka's keys and values.
    pub config: BTreeMap<String, String>,
}

impl NewTopic {
    /// A topic `name` with `partitions` partitions and the backend's defaults otherwise.
    pub fn new(name: impl Into<String>, partitions: i32) -> Self {
        NewTopic {
            name: name.into(),
            partitions,
            replication_factor: None,
            config: BTreeMap::new(),
        }
    }

    /// Sets the configuration entry `key` (`cleanup.policy`, `retention.ms`, …) to `value`.
    #[must_use]
    pub fn config(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.config.insert(key.into(), value.into());
        self
    }

    /// Sets the replication factor.
    #[must_use]
    pub fn replication_factor(mut self, factor: i16) -> Self {
        self.replication_factor = Some(factor);
        self
    }
}

/// A topic as listed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TopicListing {
    /// Its name.
    pub name: String,
    /// Its partition count.
    pub partitions: i32,
    /// Whether it is one of Kafka's internal topics (`__consumer_offsets`, …).
    pub internal: bool,
}

/// A topic described: its partitions (with leaders and offsets) and its configuration.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TopicDescription {
    /// Its name.
    pub name: String,
    /// Whether it is one of Kafka's internal topics.
    pub internal: bool,
    /// Its partitions, by number.
    pub partitions: Vec<PartitionDescription>,
    /// Its configuration, by key: on Kafka every entry the broker reports (defaults included,
    /// marked); in memory, the entries it was created with.
    pub config: BTreeMap<String, ConfigEntry>,
}

/// One partition of a described topic.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PartitionDescription {
    /// The partition's number.
    pub partition: i32,
    /// The broker leading it (`None`: no leader now; in memory, always `None`).
    pub leader: Option<i32>,
    /// The brokers holding a replica.
    pub replicas: Vec<i32>,
    /// The replicas in sync with the leader.
    pub in_sync: Vec<i32>,
    /// The offset of the first record held (the log start offset).
    pub start_offset: i64,
    /// The offset the next record will get (the high watermark).
    pub end_offset: i64,
}

/// A configuration entry of a topic.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ConfigEntry {
    /// Its value (`None`: sensitive, or unset).
    pub value: Option<String>,
    /// Whether the value is the default (not set on the topic itself).
    pub is_default: bool,
    /// Whether the value is secret (and then not shown).
    pub sensitive: bool,
}

/// A consumer group as listed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct GroupListing {
    /// The group's id.
    pub group: String,
    /// Its state (`Stable`, `PreparingRebalance`, `CompletingRebalance`, `Empty`, `Dead`; empty
    /// when the broker does not say).
    pub state: String,
    /// Its protocol type (`consumer` for consumer groups).
    pub protocol_type: String,
}

/// A consumer group described: members, their assignments, committed offsets and lag.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct GroupDescription {
    /// The group's id.
    pub group: String,
    /// Its state (as in [`GroupListing::state`]).
    pub state: String,
    /// Its protocol type (`consumer`).
    pub protocol_type: String,
    /// The assignor its members agreed on (`range`, `cooperative-sticky`, …).
    pub protocol: String,
    /// Its members, with what each is assigned.
    pub members: Vec<MemberDescription>,
    /// Every partition the group has a committed offset for or a member reads, with its lag,
    /// sorted by topic and partition.
    pub offsets: Vec<PartitionLag>,
}

impl GroupDescription {
    /// The group's total lag (over the partitions with a committed offset).
    pub fn total_lag(&self) -> i64 {
        self.offsets.iter().filter_map(|o| o.lag).fold(0i64, i64::saturating_add)
    }
}

/// A member of a described group.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct MemberDescription {
    /// Its member id.
    pub member_id: String,
    /// Its static group instance id, if any.
    pub group_instance_id: Option<String>,
    /// Its client id.
    pub client_id: String,
    /// The host it connected from.
    pub host: String,
    /// Its assigned partitions, by topic.
    pub assignment: BTreeMap<String, Vec<i32>>,
}

/// A partition's committed offset and lag in a group.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PartitionLag {
    /// The topic.
    pub topic: String,
    /// The partition.
    pub partition: i32,
    /// The member reading it now, if any.
    pub member_id: Option<String>,
    /// The group's committed offset (the next offset to read), `None` when it has none.
    pub committed: Option<i64>,
    /// The partition's end offset (the high watermark).
    pub end_offset: i64,
    /// `end_offset - committed`, `None` without a committed offset.
    pub lag: Option<i64>,
}

impl PartitionLag {
    /// The lag of `committed` at `end_offset`.
    pub fn new(
        partition: &TopicPartition,
        member_id: Option<String>,
        committed: Option<i64>,
        end_offset: i64,
    ) -> Self {
        PartitionLag {
            topic: partition.topic.to_string(),
            partition: partition.partition,
            member_id,
            committed,
            end_offset,
            lag: committed.map(|c| end_offset.saturating_sub(c).max(0)),
        }
    }
}

/// The cluster as the client sees it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ClusterDescription {
    /// The backend (`kafka`, `memory`).
    pub backend: String,
    /// The controller's node id, when known.
    pub controller: Option<i32>,
    /// The brokers (none in memory).
    pub brokers: Vec<BrokerDescription>,
}

/// One broker of the cluster.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct BrokerDescription {
    /// Its node id.
    pub node_id: i32,
    /// Its address (`host:port`).
    pub address: String,
    /// The APIs it offers or the client uses, by key; empty when it could not be reached.
    pub apis: Vec<ApiSupport>,
    /// Why it could not be reached (connection, TLS, authentication), if it could not.
    pub error: Option<String>,
}

/// One API of the Kafka protocol on one broker.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ApiSupport {
    /// The API key.
    pub key: i16,
    /// The API's name.
    pub name: String,
    /// The versions the broker offers (`None`: not at all).
    pub broker: Option<(i16, i16)>,
    /// The versions the client implements (`None`: the client does not use the API).
    pub client: Option<(i16, i16)>,
    /// The version the client speaks (`None`: no common version, or not used).
    pub negotiated: Option<i16>,
    /// Whether a bus needs it to publish or consume (a missing one stops a service).
    pub required: bool,
}

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
