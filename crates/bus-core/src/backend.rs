//! The backend-author interface: what a new transport implements and what it calls. Services
//! do not need anything here; they use the crate's front page.
//!
//! Owns: the traits [`Backend`], [`GroupMember`], [`PartitionReader`], [`AdminBackend`] and the
//! types that cross them ([`JoinRequest`], [`MemberEvent`], [`Revocation`], [`FlushReport`],
//! [`GroupError`], [`ReadError`], [`UnreadableBatch`]). Where a reader starts is the front
//! page's [`StartAt`]. It also re-exports what a backend calls: [`BoxFuture`],
//! the delivery channel ([`delivery_channel`], [`DeliverySender`]) and the partitioning helpers
//! ([`UnkeyedSpreader`], [`PartitionError`]). An [`EventBus`](crate::EventBus) is assembled on a
//! backend by [`EventBus::backend_supervisor`](crate::EventBus::backend_supervisor) and
//! [`EventBus::on_backend`](crate::EventBus::on_backend).
//!
//! What is shared by every backend (keyed dispatch, retries, dead letters, offset tracking,
//! commit scheduling, the shutdown order) lives once in the bus's consumer runtime; a backend
//! provides only transport: where records go, how a group's partitions are assigned, how a
//! partition is read, where offsets are stored.
//!
//! Contracts every implementation keeps:
//! - Every record accepted by [`Backend::send`] resolves its [`DeliveryFuture`]: acknowledged,
//!   or failed with an error (at the latest at the delivery timeout or the shutdown deadline).
//! - Every task a backend starts is spawned in the [`Scope`] it was given.
//! - [`GroupMember::next_event`] and [`PartitionReader::next_batch`] are cancel-safe: dropping
//!   the future loses no event and no record (a reader's position advances only when a batch is
//!   returned).
//! - A partition is read by at most one member of a group at a time: a member gives up a
//!   partition with a [`MemberEvent::Revoked`], and the partition is assigned to another member
//!   only once that [`Revocation`] is completed (the runtime first stops reading, drains and
//!   commits the revoked partitions). A backend may follow either of Kafka's rebalance
//!   protocols:
//!   - *eager*: before every rebalance the member revokes everything it holds, and does not take
//!     part in the next assignment until that revocation is complete (the in-memory backend);
//!   - *cooperative* (KIP-429): the member keeps its partitions through a rebalance; afterwards
//!     it is told only what it gained ([`MemberEvent::Assigned`]) and what it must give up
//!     ([`MemberEvent::Revoked`]), the rest keeps being read throughout; a partition given up
//!     reaches its new owner in a follow-up rebalance, after the revocation is complete (Kafka's
//!     `cooperative-sticky` assignor).
//!
//!   Either way the runtime's handling is the same: `Assigned` adds partitions, `Revoked` takes
//!   away any subset of them.
//! - [`MemberEvent::Assigned`] lists only partitions the member does not hold already, and
//!   [`MemberEvent::Revoked`] only partitions it holds.
//! - A reader that meets a batch it cannot decode (or that is over a limit of its
//!   configuration) returns the records before it, then, from its first offset, an
//!   [`UnreadableBatch`] until [`PartitionReader::seek`] moves it past: a partition is never
//!   skipped by a backend on its own, and never stuck without the runtime knowing why.

use std::sync::Arc;

use bus_supervisor::Scope;
use tokio::sync::oneshot;

pub use crate::delivery::{DeliverySender, delivery_channel};
pub use crate::future::BoxFuture;
pub use crate::partition::{PartitionError, UnkeyedSpreader};

use crate::admin::descriptions::{
    ClusterDescription, GroupDescription, GroupListing, NewTopic, TopicDescription, TopicListing,
};
use crate::admin::error::AdminError;
use crate::delivery::DeliveryFuture;
use crate::error::{PublishError, SubscribeError};
use crate::health::{Health, ProducerPartitionStatus};
use crate::record::{Message, Record, TopicPartition};
use crate::start::{OffsetReset, StartAt};
use crate::topics::Topics;

/// A request to join a consumer group.
#[derive(Debug, Clone)]
pub struct JoinRequest {
    /// The group.
    pub group: String,
    /// The topics the member subscribes to: named, or a pattern the backend resolves (and
    /// follows as topics are created) with [`Topics::matches`].
    pub topics: Topics,
    /// The member's static group instance id (Kafka's `group.instance.id`), if any; a backend
    /// without static membership treats the member as dynamic.
    pub group_instance_id: Option<String>,
    /// Where the member's own tasks (membership protocol, heartbeats) must be spawned.
    pub scope: Scope,
    /// How long the member may take to complete a [`Revocation`] before the group moves on
    /// without it.
    pub rebalance_timeout: std::time::Duration,
    /// Where a reader goes when its position is no longer in the partition (out of range):
    /// the subscription's `auto_offset_reset`.
    pub auto_offset_reset: OffsetReset,
}

/// What the group decided for a member.
#[derive(Debug)]
pub enum MemberEvent {
    /// These partitions are now the member's too (in addition to those it holds, which it
    /// keeps).
    Assigned(Vec<TopicPartition>),
    /// These partitions (all of the member's, or some of them) are taken away. Stop reading
    /// them, let their handlers finish (up to the rebalance timeout), commit, then complete the
    /// [`Revocation`]; the others are kept.
    Revoked(Revocation),
}

/// A revocation in progress: the partitions taken away and the acknowledgement the group waits
/// for before the next assignment.
#[derive(Debug)]
pub struct Revocation {
    /// The partitions taken away.
    pub partitions: Vec<TopicPartition>,
    /// When the group stops waiting for this member (the rebalance's start plus its timeout),
    /// when the backend knows.
    deadline: Option<tokio::time::Instant>,
    done: Option<oneshot::Sender<()>>,
}

impl Revocation {
    /// A revocation and the receiver that learns when it is complete.
    pub fn new(partitions: Vec<TopicPartition>) -> (Revocation, oneshot::Receiver<()>) {
        let (done, receiver) = oneshot::channel();
        (Revocation { partitions, deadline: None, done: Some(done) }, receiver)
    }

    /// This revocation with the moment the group stops waiting for the member: the consumer
    /// drains the partitions' handlers until then at the latest (what is left of the
    /// rebalance timeout, not a whole one).
    #[must_use]
    pub fn with_deadline(mut self, deadline: tokio::time::Instant) -> Revocation {
        self.deadline = Some(deadline);
        self
    }

    /// When the group stops waiting for the member, when the backend said.
    pub fn deadline(&self) -> Option<tokio::time::Instant> {
        self.deadline
    }

    /// Tells the group the partitions are released (reading stopped, offsets committed).
    /// Dropping the revocation without completing it completes it as well, so a member never
    /// blocks its group forever.
    pub fn complete(mut self) {
        if let Some(done) = self.done.take() {
            let _ = done.send(());
        }
    }
}

impl Drop for Revocation {
    fn drop(&mut self) {
        if let Some(done) = self.done.take() {
            let _ = done.send(());
        }
    }
}

/// A consumer-group operation that failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("group `{group}`: {reason}")]
pub struct GroupError {
    /// The group.
    pub group: String,
    /// What failed and why (naming the topic and partition where there is one).
    pub reason: String,
    /// Whether the operation may succeed if tried again (a coordinator moving, a rebalance).
    pub retriable: bool,
    /// Whether another member took this member's place (a static member whose group instance
    /// id a newer instance now holds: Kafka's `FENCED_INSTANCE_ID`). A fenced member must not
    /// join again (it would fence the newer one in turn): its subscription stops consuming.
    pub fenced: bool,
}

impl GroupError {
    /// A failure that retrying may fix.
    pub fn retriable(group: impl Into<String>, reason: impl Into<String>) -> Self {
        GroupError { group: group.into(), reason: reason.into(), retriable: true, fenced: false }
    }

    /// A failure that retrying will not fix.
    pub fn fatal(group: impl Into<String>, reason: impl Into<String>) -> Self {
        GroupError { group: group.into(), reason: reason.into(), retriable: false, fenced: false }
    }

    /// The member was fenced: another instance holds its group instance id (see
    /// [`GroupError::fenced`](GroupError#structfield.fenced)).
    pub fn fenced(group: impl Into<String>, reason: impl Into<String>) -> Self {
        GroupError { group: group.into(), reason: reason.into(), retriable: false, fenced: true }
    }
}

/// Why a reader returned no records.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ReadError {
    /// Reading failed (a broker unreachable, a request refused): retrying may succeed.
    #[error(transparent)]
    Group(#[from] GroupError),
    /// The batch at the reader's position cannot be read: it stays there until
    /// [`PartitionReader::seek`] moves it past.
    #[error("{0}")]
    Unreadable(UnreadableBatch),
}

/// A record batch a reader cannot decode (corrupt, in a format it does not read) or that is
/// over a limit of its configuration (the error names the limit).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("`{partition}` offsets {first_offset}-{last_offset} cannot be read: {reason}")]
pub struct UnreadableBatch {
    /// The partition.
    pub partition: TopicPartition,
    /// The batch's first offset (the reader's position stays there).
    pub first_offset: i64,
    /// Its last offset (its first when the batch's header cannot be trusted).
    pub last_offset: i64,
    /// The batch as received (what a dead-letter record carries).
    pub raw: bytes::Bytes,
    /// Why it cannot be read, naming the broker and the limit where there is one.
    pub reason: String,
}

/// What a flush achieved.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct FlushReport {
    /// Records acknowledged while flushing.
    pub flushed: usize,
    /// Records failed back to their callers (not acknowledged by the deadline).
    pub failed: usize,
}

/// A transport for the event bus. See the module documentation for the contracts.
pub trait Backend: Send + Sync + 'static {
    /// The backend's name, for errors and logs (`memory`, `kafka`).
    fn name(&self) -> &'static str;

    /// Accepts a record for publication, waiting for room in the backend's bounded buffer
    /// (backpressure), and returns the future of its acknowledgement.
    ///
    /// The record's envelope (if any) has been validated. The backend chooses the partition
    /// (the record's own, else its partitioner on the key, else spreading unkeyed records).
    ///
    /// Cancel-safe: dropping the future before it completes accepts nothing (the bus drops a
    /// caller's send that is still waiting for room when shutdown begins).
    fn send(&self, record: Record) -> BoxFuture<'_, Result<DeliveryFuture, PublishError>>;

    /// Joins a consumer group.
    fn join(
        &self,
        request: JoinRequest,
    ) -> BoxFuture<'_, Result<Box<dyn GroupMember>, SubscribeError>>;

    /// Waits until every record accepted so far is acknowledged or `deadline` passes; fails back
    /// what is left (each caller's future resolves to
    /// [`PublishError::NotAcknowledgedAtShutdown`]).
    fn flush(&self, deadline: tokio::time::Instant) -> BoxFuture<'_, FlushReport>;

    /// Freezes admission: from now on `send` and `join` fail with `Closed`, and sends waiting
    /// for room fail with `Closed` at once. Accepted records are still delivered (or failed back
    /// by `flush`); members can still commit and leave. Idempotent.
    fn close(&self);

    /// The backend's health.
    fn health(&self) -> Health;

    /// The backend's topic and group administration
    /// ([`EventBus::admin`](crate::EventBus::admin)).
    fn admin(&self) -> Arc<dyn AdminBackend>;
    /// Records acknowledged and failed back since the backend started, counted whenever they
    /// are resolved (by a flush, by a producer task, or by a task aborted at a shutdown
    /// deadline whose records fail themselves back): what a bus shutdown reports is the
    /// difference across it. `None` (the default) when the backend does not count them: the
    /// flushes' own reports are summed instead.
    fn delivery_totals(&self) -> Option<FlushReport> {
        None
    }

    /// The state of each partition its producer writes to, for the bus's
    /// [`HealthReport`](crate::health::HealthReport) (none by default).
    fn producer_partitions(&self) -> Vec<ProducerPartitionStatus> {
        Vec::new()
    }

    /// Settings in force that weaken security, for the bus's
    /// [`HealthReport::insecure`](crate::health::HealthReport::insecure) (none by default).
    fn insecure_settings(&self) -> Vec<String> {
        Vec::new()
    }
}

/// One member of a consumer group, held by the subscription that joined.
pub trait GroupMember: Send + Sync {
    /// The member's id in its group.
    fn member_id(&self) -> String;

    /// The next assignment change. Cancel-safe.
    fn next_event(&self) -> BoxFuture<'_, Result<MemberEvent, GroupError>>;

    /// The committed offsets (the next offset to read) of `partitions`, `None` where the group
    /// has none.
    fn committed<'a>(
        &'a self,
        partitions: &'a [TopicPartition],
    ) -> BoxFuture<'a, Result<Vec<Option<i64>>, GroupError>>;

    /// Commits, for each partition, the next offset to read.
    fn commit<'a>(
        &'a self,
        offsets: &'a [(TopicPartition, i64)],
    ) -> BoxFuture<'a, Result<(), GroupError>>;

    /// Opens a reader of `partition` starting at `start`.
    fn open<'a>(
        &'a self,
        partition: &'a TopicPartition,
        start: StartAt,
    ) -> BoxFuture<'a, Result<Box<dyn PartitionReader>, GroupError>>;

    /// Ends the membership: a dynamic member leaves the group (its partitions are reassigned to
    /// the others at once); a static member (with a group instance id) keeps its place and its
    /// partitions for the session timeout, for its next instance to take over without a
    /// rebalance. Either way the member's tasks end.
    fn leave(&self) -> BoxFuture<'_, Result<(), GroupError>>;
}

/// Reads one partition in offset order.
pub trait PartitionReader: Send {
    /// The next records from the current position: waits until there is at least one, or until
    /// the backend's poll interval passes (then returns an empty batch). At most about
    /// `max_bytes` (but always at least one record when one is there); a backend may bound it
    /// further by its own configuration. Cancel-safe.
    ///
    /// # Errors
    ///
    /// [`ReadError::Group`] when reading failed (retry); [`ReadError::Unreadable`] when the
    /// batch at the position cannot be read (the records before it were returned first).
    fn next_batch(&mut self, max_bytes: usize) -> BoxFuture<'_, Result<Vec<Message>, ReadError>>;

    /// Moves the position to `offset`: the next batch starts there (used to step past an
    /// [`UnreadableBatch`] once it is dead-lettered).
    fn seek(&mut self, offset: i64);

    /// The next offset to read, when known (a start at the earliest or latest offset may not be
    /// resolved yet): what the health names when reading keeps failing.
    fn position(&self) -> Option<i64>;

    /// The partition's high watermark (the offset after its last readable record) as the last
    /// fetch saw it, `None` before the first. Refreshed from what each fetch answers anyway
    /// (Kafka's Fetch response carries it; the in-memory log knows its end): never an extra
    /// request. The runtime computes the lag from it (high watermark minus the committed
    /// offset, and minus the position) once per batch.
    fn high_watermark(&self) -> Option<i64> {
        None
    }
}

/// A backend's topic and group administration, behind [`Admin`](crate::admin::Admin): what
/// [`Backend::admin`] returns, and what a backend can offer without a bus (Kafka's
/// `bus_kafka::admin`). Errors name the topic or group and carry Kafka's error code where
/// there is one (see [`AdminError`]).
pub trait AdminBackend: Send + Sync + 'static {
    /// The backend's name (`memory`, `kafka`).
    fn name(&self) -> &'static str;

    /// Creates a topic; fails with TOPIC_ALREADY_EXISTS when it exists.
    fn create_topic<'a>(&'a self, topic: &'a NewTopic) -> BoxFuture<'a, Result<(), AdminError>>;

    /// The topics named in `topics` that exist (every topic when `None`), sorted by name.
    fn list_topics<'a>(
        &'a self,
        topics: Option<&'a [String]>,
    ) -> BoxFuture<'a, Result<Vec<TopicListing>, AdminError>>;

    /// A topic's partitions and configuration.
    fn describe_topic<'a>(
        &'a self,
        topic: &'a str,
    ) -> BoxFuture<'a, Result<TopicDescription, AdminError>>;

    /// Deletes a topic.
    fn delete_topic<'a>(&'a self, topic: &'a str) -> BoxFuture<'a, Result<(), AdminError>>;

    /// Grows a topic to `total` partitions.
    fn add_partitions<'a>(
        &'a self,
        topic: &'a str,
        total: i32,
    ) -> BoxFuture<'a, Result<(), AdminError>>;

    /// Every consumer group, sorted by id.
    fn list_groups(&self) -> BoxFuture<'_, Result<Vec<GroupListing>, AdminError>>;

    /// A group's members, assignments, committed offsets and lag.
    fn describe_group<'a>(
        &'a self,
        group: &'a str,
    ) -> BoxFuture<'a, Result<GroupDescription, AdminError>>;

    /// The cluster's brokers and protocol versions.
    fn describe_cluster(&self) -> BoxFuture<'_, Result<ClusterDescription, AdminError>>;

    /// A reader of `partition` from `start` outside any group.
    fn read<'a>(
        &'a self,
        partition: &'a TopicPartition,
        start: StartAt,
    ) -> BoxFuture<'a, Result<Box<dyn PartitionReader>, AdminError>>;
}
