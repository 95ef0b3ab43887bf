//! Subscription options: consumer group (and static membership), concurrency, ordering,
//! retries, dead letters.
//!
//! Owns: [`SubscribeOptions`], [`RetryPolicy`], [`UnreadableBatches`], [`RefusedDeadLetters`]
//! and [`CommitMode`]. Each is a serde type with defaults; [`SubscribeOptions::validate`] names
//! the field that is out of range. Where a subscription starts reading is the `start` module's.

use std::time::Duration;

use bus_supervisor::Backoff;
use serde::{Deserialize, Serialize};

use crate::error::ConfigError;
use crate::start::{OffsetReset, StartPosition};

/// The longest group instance id accepted, in bytes (as long as a Kafka topic name may be).
const MAX_GROUP_INSTANCE_ID: usize = 249;

/// Who commits a subscription's offsets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CommitMode {
    /// The bus: every `commit_interval`, on revoke and on stop, the contiguous prefix of
    /// finished messages (the default).
    #[default]
    Auto,
    /// The service, with [`ConsumerControl::commit`](crate::ConsumerControl::commit) (up to
    /// an offset, or a message); still only over the contiguous prefix of finished messages.
    /// The bus commits nothing on its own, not on revoke nor on stop: what was finished and
    /// not committed is redelivered.
    Manual,
}

/// What a subscription does with a record batch its backend cannot read (corrupt, or over a
/// limit of the backend's configuration, such as a compressed batch inflating past its bound).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum UnreadableBatches {
    /// The records before it are handled; then the partition stops there and the subscription
    /// reports it failed (the bus's health names the topic, partition, offset and reason;
    /// `partitions_failed` counts it), retrying with backoff in case the cause passes.
    #[default]
    Fail,
    /// The batch is sent whole to the dead-letter topic (headers name its offset range and the
    /// error; retried with backoff until stored), then the partition moves past it.
    Skip,
}

/// What a subscription does with a dead letter its backend refuses for good: too large for the
/// broker, a dead-letter topic that does not exist (and is not created) or that the
/// subscription may not write. A refusal that may pass (a broker away, a full buffer) is
/// retried with backoff whatever this says.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RefusedDeadLetters {
    /// The dead letter is stored again without its value (key and headers kept, the header
    /// `X-DLQ-Truncated` giving the value's size; the value stays in the source topic at the
    /// offset the headers name). When that is refused too, the subscription fails, as with
    /// `fail`.
    #[default]
    Truncate,
    /// The subscription fails: the health names the partition, offset and refusal, the message
    /// stays uncommitted (the partition's next owner gets it again), the subscription's
    /// partitions are released and the group left.
    Fail,
}

/// How a failed handler is retried before its message is dead-lettered.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RetryPolicy {
    /// Attempts in all, the first included (1 = no retry).
    pub max_attempts: u32,
    /// The delay before the first retry.
    #[serde(with = "humantime_serde")]
    pub initial_backoff: Duration,
    /// The largest delay.
    #[serde(with = "humantime_serde")]
    pub max_backoff: Duration,
    /// Growth factor per retry (at least 1.0).
    pub multiplier: f64,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            max_attempts: 3,
            initial_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(5),
            multiplier: 2.0,
        }
    }
}

impl RetryPolicy {
    /// No retries: a failure goes to the dead-letter topic at once.
    pub fn none() -> Self {
        RetryPolicy { max_attempts: 1, ..RetryPolicy::default() }
    }

    /// The delays between attempts, as the workspace's one backoff type.
    pub fn as_backoff(&self) -> Backoff {
        Backoff {
            initial: self.initial_backoff,
            max: self.max_backoff,
            multiplier: self.multiplier,
        }
    }

    /// The delay before retry number `retry` (1 for the first retry).
    pub fn backoff(&self, retry: u32) -> Duration {
        self.as_backoff().delay(retry.saturating_sub(1))
    }
}

/// How a subscription consumes: its consumer group, parallelism, ordering, retries and dead
/// letters. Built with [`SubscribeOptions::new`] and the `with_*` setters, or deserialised.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SubscribeOptions {
    /// The consumer group. Each group receives every message (at least) once; within a group,
    /// partitions are spread over its members.
    pub group: String,
    /// Static membership (Kafka's `group.instance.id`, KIP-345): a name for this member that is
    /// stable across restarts (one per running instance of the service, e.g. its pod name; two
    /// members of a group must never share one). A static member that stops does not leave its
    /// group: its partitions wait for it for the session timeout
    /// (`consumer.session_timeout`), and when it comes back within that time it gets them
    /// again with no rebalance, so the other members never stop. A second member started with
    /// the same id takes the place over: the first is fenced and stops consuming (it does not
    /// rejoin). None (the default): a dynamic member, which leaves its group when it stops.
    /// The in-memory backend treats every member as dynamic.
    pub group_instance_id: Option<String>,
    /// Handlers running at once (across keys).
    pub concurrency: usize,
    /// Whether messages with the same key are handled one at a time, in offset order (on by
    /// default). Off: every message may run in parallel.
    pub ordering_by_key: bool,
    /// Messages fetched but not finished (queued or running) at most; fetching pauses at the
    /// bound (backpressure).
    pub max_in_flight: usize,
    /// Retries of a failed handler.
    pub retry: RetryPolicy,
    /// Where failed and undecodable messages go; when unset, `<topic>.dlq` for the topic the
    /// message came from (a subscription to several topics has a dead-letter topic for each).
    pub dead_letter_topic: Option<String>,
    /// A handler running longer is cancelled and counted as failed (then retried). None: no limit.
    #[serde(with = "humantime_serde")]
    pub handler_timeout: Option<Duration>,
    /// Where to start without a committed offset.
    pub auto_offset_reset: OffsetReset,
    /// Where this subscription starts each partition the first time it is assigned one
    /// (committed by default; or earliest, latest, a timestamp, explicit offsets).
    pub start: StartPosition,
    /// Who commits: the bus (`auto`, the default) or the service (`manual`).
    pub commit_mode: CommitMode,
    /// How often completed offsets are committed (they are also committed on revoke and on
    /// shutdown).
    #[serde(with = "humantime_serde")]
    pub commit_interval: Duration,
    /// How long in-flight handlers may run on after their partition is revoked; those still
    /// running are abandoned, uncommitted, for the new owner to redeliver. Also how long
    /// reading the committed offsets of an assignment is retried before the subscription fails.
    #[serde(with = "humantime_serde")]
    pub rebalance_timeout: Duration,
    /// What to do with a record batch that cannot be read: `fail` (the default) or `skip`.
    pub unreadable_batches: UnreadableBatches,
    /// What to do with a dead letter the backend refuses for good: `truncate` (the default) or
    /// `fail`.
    pub refused_dead_letters: RefusedDeadLetters,
}

impl Default for SubscribeOptions {
    fn default() -> Self {
        SubscribeOptions {
            group: String::new(),
            group_instance_id: None,
            concurrency: 16,
            ordering_by_key: true,
            max_in_flight: 1024,
            retry: RetryPolicy::default(),
            dead_letter_topic: None,
            handler_timeout: None,
            auto_offset_reset: OffsetReset::Earliest,
            start: StartPosition::Committed,
            commit_mode: CommitMode::Auto,
            commit_interval: Duration::from_secs(1),
            rebalance_timeout: Duration::from_secs(30),
            unreadable_batches: UnreadableBatches::Fail,
            refused_dead_letters: RefusedDeadLetters::Truncate,
        }
    }
}

impl SubscribeOptions {
    /// Options for consumer group `group`, with the defaults: concurrency 16, ordering by key,
    /// 1,024 in flight, 3 attempts with backoff from 100 ms, dead letters to `<topic>.dlq`.
    pub fn new(group: impl Into<String>) -> Self {
        SubscribeOptions { group: group.into(), ..SubscribeOptions::default() }
    }

    /// Makes the member static, with `id` as its group instance id (see
    /// [`SubscribeOptions::group_instance_id`]).
    pub fn with_group_instance_id(mut self, id: impl Into<String>) -> Self {
        self.group_instance_id = Some(id.into());
        self
    }

    /// Sets the concurrency.
    pub fn with_concurrency(mut self, concurrency: usize) -> Self {
        self.concurrency = concurrency;
        self
    }

    /// Turns ordering by key on or off.
    pub fn with_ordering_by_key(mut self, on: bool) -> Self {
        self.ordering_by_key = on;
        self
    }

    /// Sets the bound on messages in flight.
    pub fn with_max_in_flight(mut self, max: usize) -> Self {
        self.max_in_flight = max;
        self
    }

    /// Sets the retry policy.
    pub fn with_retry(mut self, retry: RetryPolicy) -> Self {
        self.retry = retry;
        self
    }

    /// Sets the dead-letter topic.
    pub fn with_dead_letter_topic(mut self, topic: impl Into<String>) -> Self {
        self.dead_letter_topic = Some(topic.into());
        self
    }

    /// Sets the handler timeout.
    pub fn with_handler_timeout(mut self, timeout: Duration) -> Self {
        self.handler_timeout = Some(timeout);
        self
    }

    /// Sets where to start without a committed offset.
    pub fn with_auto_offset_reset(mut self, reset: OffsetReset) -> Self {
        self.auto_offset_reset = reset;
        self
    }

    /// Sets where the subscription starts its partitions (see [`StartPosition`]).
    pub fn with_start(mut self, start: StartPosition) -> Self {
        self.start = start;
        self
    }

    /// Sets who commits (see [`CommitMode`]).
    pub fn with_commit_mode(mut self, mode: CommitMode) -> Self {
        self.commit_mode = mode;
        self
    }

    /// Sets the commit interval.
    pub fn with_commit_interval(mut self, interval: Duration) -> Self {
        self.commit_interval = interval;
        self
    }

    /// Sets the rebalance timeout.
    pub fn with_rebalance_timeout(mut self, timeout: Duration) -> Self {
        self.rebalance_timeout = timeout;
        self
    }

    /// Sets what to do with record batches that cannot be read.
    pub fn with_unreadable_batches(mut self, policy: UnreadableBatches) -> Self {
        self.unreadable_batches = policy;
        self
    }

    /// Sets what to do with dead letters the backend refuses for good.
    pub fn with_refused_dead_letters(mut self, policy: RefusedDeadLetters) -> Self {
        self.refused_dead_letters = policy;
        self
    }

    /// The dead-letter topic for `topic`.
    pub fn dead_letter_topic_for(&self, topic: &str) -> String {
        self.dead_letter_topic.clone().unwrap_or_else(|| format!("{topic}.dlq"))
    }

    /// Checks every field.
    ///
    /// # Errors
    ///
    /// A [`ConfigError`] naming the first field out of range.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.group.trim().is_empty() {
            return Err(ConfigError::new("group", "a consumer group name is required"));
        }
        if let Some(id) = &self.group_instance_id {
            if id.trim().is_empty() {
                return Err(ConfigError::new("group_instance_id", "must not be empty when set"));
            }
            if id.len() > MAX_GROUP_INSTANCE_ID {
                return Err(ConfigError::new(
                    "group_instance_id",
                    format!("at most {MAX_GROUP_INSTANCE_ID} bytes"),
                ));
            }
        }
        if self.concurrency == 0 {
            return Err(ConfigError::new("concurrency", "must be at least 1"));
        }
        if self.max_in_flight == 0 {
            return Err(ConfigError::new("max_in_flight", "must be at least 1"));
        }
        if self.retry.max_attempts == 0 {
            return Err(ConfigError::new("retry.max_attempts", "must be at least 1"));
        }
        if !(self.retry.multiplier.is_finite() && self.retry.multiplier >= 1.0) {
            return Err(ConfigError::new("retry.multiplier", "must be a number >= 1.0"));
        }
        if self.retry.max_backoff < self.retry.initial_backoff {
            return Err(ConfigError::new(
                "retry.max_backoff",
                "must not be smaller than retry.initial_backoff",
            ));
        }
        if self.dead_letter_topic.as_deref().is_some_and(|t| t.trim().is_empty()) {
            return Err(ConfigError::new("dead_letter_topic", "must not be empty when set"));
        }
        if self.handler_timeout.is_some_and(|t| t.is_zero()) {
            return Err(ConfigError::new("handler_timeout", "must be greater than zero when set"));
        }
        if let StartPosition::Offsets(offsets) = &self.start {
            for (i, p) in offsets.iter().enumerate() {
                let what = format!("`{}-{}` (entry {i})", p.topic, p.partition);
                if p.topic.trim().is_empty() {
                    return Err(ConfigError::new(
                        "start.offsets",
                        format!("entry {i} names no topic"),
                    ));
                }
                if p.partition < 0 || p.offset < 0 {
                    return Err(ConfigError::new(
                        "start.offsets",
                        format!("{what}: partition and offset must not be negative"),
                    ));
                }
                if offsets[..i].iter().any(|q| q.topic == p.topic && q.partition == p.partition) {
                    return Err(ConfigError::new(
                        "start.offsets",
                        format!("{what} is listed twice"),
                    ));
                }
            }
        }
        if self.commit_interval.is_zero() {
            return Err(ConfigError::new("commit_interval", "must be greater than zero"));
        }
        Ok(())
    }
}
