//! The in-memory backend: Kafka's semantics without a broker. It is the embedded default that
//! examples and users' unit tests run on.
//!
//! Owns: [`MemoryBackend`] (topics, partition logs, consumer groups and their offsets, all in
//! process), [`MemoryConfig`], [`TopicError`], and the [`GroupMember`] and
//! [`PartitionReader`](crate::backend::PartitionReader) implementations behind
//! [`Backend::join`] and [`GroupMember::open`].
//!
//! # Semantics
//!
//! - **Topics** have a fixed number of partitions, each an append-only log whose offsets start
//!   at 0 and are contiguous. A publish goes to the record's own partition (an error if out of
//!   range), else the configured [`Partitioner`](crate::Partitioner) on its key, else round robin
//!   for unkeyed records. Appending is the acknowledgement: the [`DeliveryFuture`] returned by
//!   [`Backend::send`] is already resolved.
//! - **Bounded memory, lossless.** A topic holds at most
//!   [`MemoryConfig::topic_capacity_bytes`] bytes (as counted by [`Record::size`]). Records leave
//!   from the front of a partition only when a publish needs their room, and only once every
//!   group that ever subscribed to the topic has committed past them; with no group at all,
//!   nothing leaves (like retention that nobody consumed yet). A publish that does not fit waits,
//!   first come first served, for room up to [`MemoryConfig::publish_timeout`], then fails with
//!   [`PublishError::BufferFull`]. A record larger than the capacity is rejected at once.
//!   [`MemoryBackend::delete_group`] removes a group that will never commit again.
//! - **Readers** of a position below a partition's log start (its records were truncated) move
//!   to the log start, like Kafka's `earliest` reset. A reader opened at
//!   [`StartAt::Offset`](crate::StartAt::Offset) is clamped into the log's
//!   `[start, end]`; one opened at [`StartAt::Timestamp`](crate::StartAt::Timestamp)
//!   starts at the first record held whose timestamp is at or after it (the end when none).
//! - **Consumer groups** follow Kafka's classic eager protocol with the round-robin assignor
//!   (members in join order, partitions sorted by topic then number, a partition given only to
//!   members subscribed to its topic). A join or leave revokes every partition of every member
//!   that holds an assignment (even an empty one), waits for each revocation to complete (or for
//!   that member's rebalance timeout, after which it is expelled), then assigns. A group's
//!   coordinator is a task named `group-<group>` in the backend's scope, alive while the group
//!   has members. A member subscribes to one or several topics, or to a pattern: a topic
//!   created later that matches it (by [`MemoryBackend::create_topic`] or auto-created) joins
//!   its subscription at once and its group rebalances. Every member is dynamic (a group
//!   instance id is ignored): there is no session to keep a member's place.
//! - **Administration** ([`Backend::admin`]): topics are created with a configuration (kept
//!   and reported, not enforced), described, deleted (their committed offsets dropped) and
//!   grown; groups listed and described with their lag. Groups reading a topic that gains
//!   partitions or is deleted rebalance.
//! - **Closing.** [`MemoryBackend::close`] (or the cancellation of the backend's scope) freezes
//!   admission: publishes and joins fail with `Closed`, and publishes waiting for room are failed
//!   back with [`PublishError::Closed`]. Existing members may still commit, read and leave, so
//!   that a shutdown can commit its completed offsets after admission is frozen.
//!
//! Invariant: one lock ([`parking_lot::Mutex`]) guards all state and is never held across an
//! `.await`; nothing that takes it (a member's or a waiting publish's `Drop`) is dropped while
//! it is held.

mod admin;
mod config;
mod group;
mod log;
mod reader;

use std::collections::BTreeMap;
use std::sync::Arc;

use bus_supervisor::Scope;
use parking_lot::Mutex;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::backend::{AdminBackend, Backend, FlushReport, GroupError, GroupMember, JoinRequest};

use crate::future::BoxFuture;

use crate::delivery::{Delivery, DeliveryFuture};
use crate::error::{ConfigError, PublishError, SubscribeError};
use crate::health::Health;
use crate::record::TopicPartition;
use crate::record::{Message, Record};

pub use config::{MAX_PARTITIONS, MemoryConfig};

use group::GroupState;
use log::TopicLog;

/// The backend's name, in errors and logs.
const NAME: &str = "memory";

/// The longest topic name Kafka accepts.
const MAX_TOPIC_NAME: usize = 249;

/// A topic administration or inspection request that failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum TopicError {
    /// The name is not a valid Kafka topic name.
    #[error("invalid topic name `{topic}`: {reason}")]
    InvalidName {
        /// The name given.
        topic: String,
        /// The rule it breaks.
        reason: String,
    },
    /// The partition count is out of range.
    #[error("topic `{topic}`: invalid partition count {partitions}: must be between 1 and {max}")]
    InvalidPartitionCount {
        /// The topic.
        topic: String,
        /// The count given.
        partitions: i32,
        /// The largest count allowed.
        max: i32,
    },
    /// The topic exists with another partition count.
    #[error("topic `{topic}` already exists with {existing} partitions, not {requested}")]
    AlreadyExists {
        /// The topic.
        topic: String,
        /// Its partition count.
        existing: i32,
        /// The count requested.
        requested: i32,
    },
    /// The topic does not exist.
    #[error("unknown topic `{topic}`")]
    UnknownTopic {
        /// The topic.
        topic: String,
    },
    /// The topic exists but has no such partition.
    #[error("topic `{topic}` has no partition {partition} (it has {partitions})")]
    UnknownPartition {
        /// The topic.
        topic: String,
        /// The partition asked for.
        partition: i32,
        /// The topic's partition count.
        partitions: i32,
    },
    /// The backend is closed.
    #[error("the memory backend is closed")]
    Closed,
}

/// Everything the backend stores, under one lock.
#[derive(Debug, Default)]
struct State {
    topics: BTreeMap<String, TopicLog>,
    groups: BTreeMap<String, GroupState>,
    /// The next ticket of a publish waiting for room.
    next_ticket: u64,
    /// The next unique id of a group or of a coordinator run.
    next_uid: u64,
}

impl State {
    /// A fresh unique id.
    fn uid(&mut self) -> u64 {
        self.next_uid += 1;
        self.next_uid
    }

    /// The floors of `topic`'s partitions: below each, every group that ever subscribed to the
    /// topic has committed (0 when there is no such group or one has not committed).
    fn floors(&self, topic: &TopicLog) -> Vec<i64> {
        (0..topic.partition_count())
            .map(|partition| {
                if topic.groups.is_empty() {
                    return 0;
                }
                let tp = TopicPartition { topic: Arc::clone(topic.name()), partition };
                topic
                    .groups
                    .iter()
                    .map(|g| {
                        self.groups.get(g).and_then(|g| g.offsets.get(&tp).copied()).unwrap_or(0)
                    })
                    .min()
                    .unwrap_or(0)
            })
            .collect()
    }
}

/// Why a topic could not be found or created on the way.
enum Missing {
    Unknown,
    Invalid(String),
}

/// What the backend, its members and readers share.
#[derive(Debug)]
struct Shared {
    config: MemoryConfig,
    scope: Scope,
    /// Cancelled by [`MemoryBackend::close`] or with the scope: admission is frozen.
    closed: CancellationToken,
    state: Mutex<State>,
}

impl Shared {
    fn is_closed(&self) -> bool {
        self.closed.is_cancelled()
    }

    /// The topic `name`, created with the default partition count when auto-creation is on.
    fn ensure_topic<'s>(
        &self,
        state: &'s mut State,
        name: &str,
    ) -> Result<&'s mut TopicLog, Missing> {
        if !state.topics.contains_key(name) {
            if !self.config.auto_create_topics {
                return Err(Missing::Unknown);
            }
            validate_topic_name(name).map_err(Missing::Invalid)?;
            tracing::debug!(
                topic = name,
                partitions = self.config.default_partitions,
                "memory backend: auto-creating topic"
            );
            state
                .topics
                .insert(name.to_owned(), TopicLog::new(name, self.config.default_partitions));
            group::topic_created(state, name);
        }
        state.topics.get_mut(name).ok_or(Missing::Unknown)
    }
}

/// Checks a topic name against Kafka's rules: 1 to 249 characters of `[A-Za-z0-9._-]`, not `.`
/// or `..`.
fn validate_topic_name(name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err("a topic name must not be empty".into());
    }
    if name.len() > MAX_TOPIC_NAME {
        return Err(format!("a topic name has at most {MAX_TOPIC_NAME} characters"));
    }
    if name == "." || name == ".." {
        return Err("a topic name cannot be `.` or `..`".into());
    }
    if let Some(c) =
        name.chars().find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')))
    {
        return Err(format!("`{c}` is not allowed: use ASCII letters, digits, `.`, `_` and `-`"));
    }
    Ok(())
}

/// The in-memory backend. See the [module documentation](self) for its semantics.
///
/// Cheap to share: [`MemoryBackend::new`] returns an `Arc`, and the members and readers it hands
/// out keep its state alive on their own.
#[derive(Debug)]
pub struct MemoryBackend {
    shared: Arc<Shared>,
}

impl MemoryBackend {
    /// A backend whose tasks (one coordinator per active consumer group) live in `scope`.
    ///
    /// # Errors
    ///
    /// A [`ConfigError`] naming the field of `config` that is out of range.
    pub fn new(scope: Scope, config: MemoryConfig) -> Result<Arc<MemoryBackend>, ConfigError> {
        config.validate()?;
        let closed = scope.token().child_token();
        Ok(Arc::new(MemoryBackend {
            shared: Arc::new(Shared { config, scope, closed, state: Mutex::new(State::default()) }),
        }))
    }

    /// The configuration in force.
    pub fn config(&self) -> &MemoryConfig {
        &self.shared.config
    }

    /// Freezes admission: later publishes and joins fail with `Closed`, publishes waiting for
    /// room fail with [`PublishError::Closed`], and [`Backend::health`] reports
    /// [`Health::Closed`]. Members may still commit, read and leave. Idempotent.
    pub fn close(&self) {
        self.shared.closed.cancel();
    }

    /// Whether [`MemoryBackend::close`] was called or the backend's scope was cancelled.
    pub fn is_closed(&self) -> bool {
        self.shared.is_closed()
    }

    /// Creates `topic` with `partitions` partitions. Idempotent when it exists with that count.
    ///
    /// # Errors
    ///
    /// [`TopicError::InvalidName`], [`TopicError::InvalidPartitionCount`] (not in
    /// `1..=`[`MAX_PARTITIONS`]), [`TopicError::AlreadyExists`] with another count,
    /// [`TopicError::Closed`].
    pub fn create_topic(&self, topic: &str, partitions: i32) -> Result<(), TopicError> {
        validate_topic_name(topic)
            .map_err(|reason| TopicError::InvalidName { topic: topic.to_owned(), reason })?;
        if !(1..=MAX_PARTITIONS).contains(&partitions) {
            return Err(TopicError::InvalidPartitionCount {
                topic: topic.to_owned(),
                partitions,
                max: MAX_PARTITIONS,
            });
        }
        let mut state = self.shared.state.lock();
        if self.shared.is_closed() {
            return Err(TopicError::Closed);
        }
        match state.topics.get(topic) {
            Some(existing) if existing.partition_count() == partitions => Ok(()),
            Some(existing) => Err(TopicError::AlreadyExists {
                topic: topic.to_owned(),
                existing: existing.partition_count(),
                requested: partitions,
            }),
            None => {
                state.topics.insert(topic.to_owned(), TopicLog::new(topic, partitions));
                group::topic_created(&mut state, topic);
                Ok(())
            }
        }
    }

    /// The partition count of `topic`, `None` when it does not exist.
    pub fn partitions(&self, topic: &str) -> Option<i32> {
        self.shared.state.lock().topics.get(topic).map(TopicLog::partition_count)
    }

    /// The names of the topics, sorted.
    pub fn topics(&self) -> Vec<String> {
        self.shared.state.lock().topics.keys().cloned().collect()
    }

    /// Runs `f` on partition `partition` of `topic`.
    fn with_partition<T>(
        &self,
        topic: &str,
        partition: i32,
        f: impl FnOnce(&log::PartitionLog) -> T,
    ) -> Result<T, TopicError> {
        let state = self.shared.state.lock();
        let log = state
            .topics
            .get(topic)
            .ok_or_else(|| TopicError::UnknownTopic { topic: topic.to_owned() })?;
        let part = log.partition(partition).ok_or_else(|| TopicError::UnknownPartition {
            topic: topic.to_owned(),
            partition,
            partitions: log.partition_count(),
        })?;
        Ok(f(part))
    }

    /// The records partition `partition` of `topic` holds now, in offset order (those truncated
    /// to make room are gone).
    ///
    /// # Errors
    ///
    /// [`TopicError::UnknownTopic`] or [`TopicError::UnknownPartition`].
    pub fn records(&self, topic: &str, partition: i32) -> Result<Vec<Message>, TopicError> {
        self.with_partition(topic, partition, log::PartitionLog::all)
    }

    /// The offset of the first record the partition holds (its log start offset).
    ///
    /// # Errors
    ///
    /// [`TopicError::UnknownTopic`] or [`TopicError::UnknownPartition`].
    pub fn start_offset(&self, topic: &str, partition: i32) -> Result<i64, TopicError> {
        self.with_partition(topic, partition, log::PartitionLog::start)
    }

    /// The offset the next record of the partition will get (its end offset).
    ///
    /// # Errors
    ///
    /// [`TopicError::UnknownTopic`] or [`TopicError::UnknownPartition`].
    pub fn end_offset(&self, topic: &str, partition: i32) -> Result<i64, TopicError> {
        self.with_partition(topic, partition, log::PartitionLog::end)
    }

    /// The bytes `topic` holds (over all its partitions).
    ///
    /// # Errors
    ///
    /// [`TopicError::UnknownTopic`].
    pub fn stored_bytes(&self, topic: &str) -> Result<usize, TopicError> {
        self.shared
            .state
            .lock()
            .topics
            .get(topic)
            .map(TopicLog::bytes)
            .ok_or_else(|| TopicError::UnknownTopic { topic: topic.to_owned() })
    }

    /// The offsets `group` has committed (the next offset to read, per partition); empty for a
    /// group that does not exist.
    pub fn committed_offsets(&self, group: &str) -> BTreeMap<TopicPartition, i64> {
        self.shared.state.lock().groups.get(group).map(|g| g.offsets.clone()).unwrap_or_default()
    }

    /// The ids of `group`'s members, in join order.
    pub fn members(&self, group: &str) -> Vec<String> {
        self.shared.state.lock().groups.get(group).map(GroupState::member_ids).unwrap_or_default()
    }

    /// `group`'s generation: the number of rebalances it completed (`None` for an unknown
    /// group).
    pub fn generation(&self, group: &str) -> Option<i32> {
        self.shared.state.lock().groups.get(group).map(GroupState::generation)
    }

    /// Deletes `group` and its committed offsets, so that it no longer holds back the truncation
    /// of its topics (as Kafka's `deleteConsumerGroups`).
    ///
    /// # Errors
    ///
    /// A [`GroupError`] when the group does not exist or still has members.
    pub fn delete_group(&self, group: &str) -> Result<(), GroupError> {
        let mut state = self.shared.state.lock();
        let members = match state.groups.get(group) {
            None => return Err(GroupError::fatal(group, "no such group")),
            Some(g) => g.member_count(),
        };
        if members > 0 {
            return Err(GroupError::retriable(
                group,
                format!("cannot delete a group with {members} member(s): they must leave first"),
            ));
        }
        state.groups.remove(group);
        for topic in state.topics.values_mut() {
            if topic.groups.remove(group) {
                topic.room().notify_waiters();
            }
        }
        Ok(())
    }

    /// Publishes `record`: chooses its partition, waits for room, appends.
    async fn publish(&self, record: Record) -> Result<DeliveryFuture, PublishError> {
        let shared = &*self.shared;
        if shared.is_closed() {
            return Err(PublishError::Closed);
        }
        let size = record.size();
        let capacity = shared.config.topic_capacity_bytes;
        if size > capacity {
            return Err(PublishError::InvalidRecord {
                topic: record.topic.clone(),
                reason: format!(
                    "the record is {size} bytes, more than the topic's capacity of {capacity} \
                     bytes (memory.topic_capacity_bytes)"
                ),
            });
        }
        let started = Instant::now();
        let deadline = started + shared.config.publish_timeout;

        // Resolve the topic and the partition once.
        let (room, partition) = {
            let mut state = shared.state.lock();
            let topic = shared.ensure_topic(&mut state, &record.topic).map_err(|m| match m {
                Missing::Unknown => PublishError::UnknownTopic { topic: record.topic.clone() },
                Missing::Invalid(reason) => {
                    PublishError::InvalidRecord { topic: record.topic.clone(), reason }
                }
            })?;
            let count = topic.partition_count();
            let partition = match record.partition {
                Some(p) if (0..count).contains(&p) => p,
                Some(p) => {
                    return Err(PublishError::InvalidRecord {
                        topic: record.topic.clone(),
                        reason: format!("partition {p} does not exist (the topic has {count})"),
                    });
                }
                None => shared
                    .config
                    .partitioner
                    .partition_for(record.key.as_deref(), count, topic.spreader())
                    .map_err(|e| PublishError::InvalidRecord {
                        topic: record.topic.clone(),
                        reason: e.to_string(),
                    })?,
            };
            (Arc::clone(topic.room()), partition)
        };

        let mut ticket: Option<Ticket<'_>> = None;
        loop {
            // Registered before the state is checked: a wake-up after the check is not lost.
            let notified = room.notified();
            let attempt = {
                let mut state = shared.state.lock();
                if shared.is_closed() {
                    Err(PublishError::Closed)
                } else {
                    Ok(try_append(
                        &mut state,
                        &record,
                        partition,
                        size,
                        capacity,
                        &mut ticket,
                        shared,
                    ))
                }
            };
            match attempt? {
                Some(delivery) => return Ok(DeliveryFuture::ready(NAME, Ok(delivery))),
                None => {
                    tokio::select! {
                        biased;
                        () = shared.closed.cancelled() => return Err(PublishError::Closed),
                        () = notified => {}
                        () = tokio::time::sleep_until(deadline) => {
                            return Err(PublishError::BufferFull {
                                needed: size,
                                capacity,
                                waited: started.elapsed(),
                            });
                        }
                    }
                }
            }
        }
    }
}

/// A publish's place in its topic's queue of publishes waiting for room; leaves the queue when
/// dropped (the publish completed, failed or was cancelled) and wakes the others.
struct Ticket<'a> {
    shared: &'a Shared,
    topic: String,
    id: u64,
    queued: bool,
}

impl Drop for Ticket<'_> {
    fn drop(&mut self) {
        if !self.queued {
            return;
        }
        let mut state = self.shared.state.lock();
        if let Some(topic) = state.topics.get_mut(&self.topic) {
            topic.waiters.retain(|&t| t != self.id);
            topic.room().notify_waiters();
        }
    }
}

/// One attempt to append under the lock: `Some` when appended; `None` when the publish must wait
/// (it is then queued, holding `ticket`).
fn try_append<'a>(
    state: &mut State,
    record: &Record,
    partition: i32,
    size: usize,
    capacity: usize,
    ticket: &mut Option<Ticket<'a>>,
    shared: &'a Shared,
) -> Option<Delivery> {
    let floors = state.topics.get(&record.topic).map(|t| state.floors(t)).unwrap_or_default();
    let next_ticket = state.next_ticket;
    let topic = state.topics.get_mut(&record.topic)?;
    let at_head = match ticket {
        Some(t) => topic.waiters.front() == Some(&t.id),
        None => topic.waiters.is_empty(),
    };
    if at_head && topic.make_room(size, capacity, &floors) {
        if let Some(t) = ticket.as_mut() {
            topic.waiters.pop_front();
            t.queued = false;
            // The next in line may fit too.
            topic.room().notify_waiters();
        }
        let offset = topic.append(record, partition, size)?;
        return Some(Delivery { topic: record.topic.clone(), partition, offset });
    }
    if ticket.is_none() {
        topic.waiters.push_back(next_ticket);
        state.next_ticket += 1;
        *ticket =
            Some(Ticket { shared, topic: record.topic.clone(), id: next_ticket, queued: true });
    }
    None
}

impl Backend for MemoryBackend {
    fn name(&self) -> &'static str {
        NAME
    }

    fn send(&self, record: Record) -> BoxFuture<'_, Result<DeliveryFuture, PublishError>> {
        Box::pin(self.publish(record))
    }

    fn join(
        &self,
        request: JoinRequest,
    ) -> BoxFuture<'_, Result<Box<dyn GroupMember>, SubscribeError>> {
        let result = group::join(&self.shared, request);
        Box::pin(async move { result.map(|m| Box::new(m) as Box<dyn GroupMember>) })
    }

    fn flush(&self, _deadline: tokio::time::Instant) -> BoxFuture<'_, FlushReport> {
        // Appending is the acknowledgement: nothing accepted is ever pending.
        Box::pin(async { FlushReport { flushed: 0, failed: 0 } })
    }

    fn close(&self) {
        MemoryBackend::close(self);
    }

    fn health(&self) -> Health {
        if self.shared.is_closed() { Health::Closed } else { Health::Ready }
    }

    fn admin(&self) -> Arc<dyn AdminBackend> {
        Arc::new(admin::MemoryAdmin { shared: Arc::clone(&self.shared) })
    }
}
