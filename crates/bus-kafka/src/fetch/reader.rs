//! Reading one assigned partition: the [`PartitionReader`] on our own Fetch requests.
//!
//! Owns: [`KafkaReader`] (a partition's position, its connection to the partition's leader,
//! found with the crate's `leader` lookup, and its memory budget).
//!
//! Invariants:
//! - The position (the next offset to return) advances only when a batch is returned, so
//!   dropping a pending `next_batch` loses no record (cancel-safe); a request dropped half-way
//!   leaves its connection poisoned, and the next fetch opens a new one. Resolving `Earliest`,
//!   `Latest` or `Timestamp` (ListOffsets by time; the end offset when no record is that late)
//!   fixes the position once, when the member opens the reader; it is not re-resolved.
//! - Records below the position (a batch is returned whole) are skipped; the records returned
//!   are in offset order, each above the last returned (see `batch`).
//! - A batch that cannot be read ends the fetch: the records before it are returned, and the
//!   next fetch (from its first offset) returns it as [`ReadError::Unreadable`], naming the
//!   broker, topic, partition, offsets and reason (or the limit), until the runtime seeks past
//!   it. The reader never skips records on its own.
//! - A fetch answered with OFFSET_OUT_OF_RANGE, or with nothing from a position above both the
//!   high watermark and the partition's end offset (brokers that do not report the error),
//!   moves the position as the subscription's `auto_offset_reset` says (earliest or latest
//!   offset; logged).
//! - Each fetch asks for `consumer.fetch_max_bytes` (at most the caller's `max_bytes`) and lets
//!   the broker wait at most `consumer.fetch_max_wait` for records; it reads as
//!   `consumer.isolation_level` says (read_committed: records of aborted transactions are
//!   skipped, see `batch`).
//! - One connection per reader, to the partition's leader as the bootstrap brokers' metadata
//!   names it; a leadership error or any failed request drops it, and the next fetch looks the
//!   leader up again.
//! - Memory: what the reader's messages reference (responses and decompressed batches) is held
//!   against a budget of `consumer.partition_buffer_bytes` (`memory`); a fetch first reserves
//!   room for the largest response it may get, waiting for handlers to release memory when
//!   there is none (backpressure). Response buffers are reused once nothing references them.

use std::sync::Arc;

use bus_core::backend::{BoxFuture, GroupError, PartitionReader, ReadError, UnreadableBatch};
use bus_core::{Message, StartAt, TopicPartition, subscription::OffsetReset};
use kafka_protocol::messages::fetch_request::{FetchPartition, FetchTopic};
use kafka_protocol::messages::list_offsets_request::{ListOffsetsPartition, ListOffsetsTopic};
use kafka_protocol::messages::{FetchRequest, ListOffsetsRequest, TopicName};
use kafka_protocol::protocol::StrBytes;

use super::batch::{self, AbortedTransactions, Settings};
use super::memory::Budget;
use crate::client::KafkaClient;
use crate::config::IsolationLevel;
use crate::connection::{Api, Connection, code_name};
use crate::leader::leader;

/// OFFSET_OUT_OF_RANGE.
const OFFSET_OUT_OF_RANGE: i16 = 1;
/// Isolation levels as Kafka encodes them.
const READ_UNCOMMITTED: i8 = 0;
const READ_COMMITTED: i8 = 1;
/// ListOffsets' timestamp for the earliest offset.
const EARLIEST: i64 = -2;
/// ListOffsets' timestamp for the end offset.
const LATEST: i64 = -1;

/// Reads one partition of a Kafka topic (returned by the member's `open`).
pub(crate) struct KafkaReader {
    client: Arc<KafkaClient>,
    group: String,
    partition: TopicPartition,
    topic: TopicName,
    connection: Option<Connection>,
    position: StartAt,
    /// Where an out-of-range position goes.
    reset: OffsetReset,
    /// What the reader's messages may hold.
    budget: Budget,
    /// The partition's high watermark in the last fetch answer.
    high_watermark: Option<i64>,
    /// When its connection to the leader last failed (the next lookup reads metadata younger
    /// than this).
    failed_at: Option<tokio::time::Instant>,
}

impl std::fmt::Debug for KafkaReader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KafkaReader")
            .field("partition", &self.partition)
            .field("position", &self.position)
            .finish()
    }
}

impl KafkaReader {
    /// A reader of `partition` from `start`, resetting to `reset` when out of range (the
    /// leader's connection is opened on the first fetch or [`KafkaReader::resolve`], which also
    /// fixes a start that is not an offset; failures are retried by the caller).
    pub(crate) fn new(
        client: Arc<KafkaClient>,
        group: String,
        partition: TopicPartition,
        start: StartAt,
        reset: OffsetReset,
    ) -> Self {
        let topic = TopicName(StrBytes::from_string(partition.topic.to_string()));
        let budget = Budget::new(client.config().consumer.partition_buffer_bytes);
        KafkaReader {
            client,
            group,
            partition,
            topic,
            connection: None,
            position: start,
            reset,
            budget,
            high_watermark: None,
            failed_at: None,
        }
    }

    fn error(&self, what: &str, error: impl std::fmt::Display) -> GroupError {
        GroupError::retriable(&self.group, format!("`{}`: {what}: {error}", self.partition))
    }

    fn isolation(&self) -> i8 {
        match self.client.config().consumer.isolation_level {
            IsolationLevel::ReadCommitted => READ_COMMITTED,
            IsolationLevel::ReadUncommitted => READ_UNCOMMITTED,
        }
    }

    /// Drops the connection to the leader after a failure: the next fetch looks the leader up
    /// again, in metadata read after now.
    fn drop_connection(&mut self) {
        self.connection = None;
        self.failed_at = Some(tokio::time::Instant::now());
    }

    /// The connection to the partition's leader, opened (after a Metadata lookup) when there is
    /// none or the last one failed.
    async fn connection(&mut self) -> Result<&mut Connection, GroupError> {
        if !self.connection.as_ref().is_some_and(Connection::is_usable) {
            self.connection = None;
            let after = self.failed_at;
            let leaders = self.client.leaders();
            let connection = leader(leaders, &self.topic, self.partition.partition, after)
                .await
                .map_err(|e| self.error("cannot reach the partition's leader", e))?;
            self.connection = Some(connection);
        }
        self.connection.as_mut().ok_or_else(|| {
            GroupError::retriable(&self.group, format!("`{}`: no connection", self.partition))
        })
    }

    /// The partition's offset at `timestamp` (`EARLIEST` or `LATEST`), from its leader.
    async fn list_offset(&mut self, timestamp: i64) -> Result<i64, GroupError> {
        let timeout = self.client.config().request_timeout;
        let mut wanted = ListOffsetsPartition::default();
        wanted.partition_index = self.partition.partition;
        wanted.current_leader_epoch = -1;
        wanted.timestamp = timestamp;
        let mut topic = ListOffsetsTopic::default();
        topic.name = self.topic.clone();
        topic.partitions = vec![wanted];
        let mut request = ListOffsetsRequest::default();
        request.replica_id = (-1).into();
        request.isolation_level = self.isolation();
        request.topics = vec![topic];
        let which = match timestamp {
            EARLIEST => "earliest".to_owned(),
            LATEST => "latest".to_owned(),
            millis => format!("first at or after {millis} ms"),
        };
        let connection = self.connection().await?;
        let sent = match connection.version::<ListOffsetsRequest>() {
            Ok(version) => connection.send(&request, version, timeout).await,
            Err(e) => Err(e),
        };
        let response = sent.map_err(|e| {
            self.drop_connection();
            self.error(&format!("cannot list the {which} offset"), e)
        })?;
        let answer = response
            .topics
            .iter()
            .filter(|t| t.name == self.topic)
            .flat_map(|t| t.partitions.iter())
            .find(|p| p.partition_index == self.partition.partition);
        match answer {
            Some(p) if p.error_code == 0 => Ok(p.offset),
            Some(p) => {
                let code = p.error_code;
                self.drop_connection();
                Err(self.error(&format!("cannot list the {which} offset"), code_name(code)))
            }
            None => Err(self.error(
                &format!("cannot list the {which} offset"),
                "the answer names no such partition",
            )),
        }
    }

    /// The position as an offset, resolving `Earliest`, `Latest` or `Timestamp` once.
    async fn offset(&mut self) -> Result<i64, GroupError> {
        let timestamp = match self.position {
            StartAt::Offset(offset) => return Ok(offset),
            StartAt::Earliest => EARLIEST,
            StartAt::Latest => LATEST,
            StartAt::Timestamp(time) => time.timestamp_millis().max(0),
        };
        let mut offset = self.list_offset(timestamp).await?;
        if offset < 0 {
            // No record at or after the timestamp: Kafka answers -1; start at the end.
            offset = self.list_offset(LATEST).await?;
        }
        tracing::debug!(partition = %self.partition, start = ?self.position, offset, "start offset resolved");
        self.position = StartAt::Offset(offset);
        Ok(offset)
    }

    /// Resolves a start at the earliest or latest offset or at a timestamp now (the member's
    /// `open` does, so that the position is the partition's at the open); an offset needs
    /// nothing.
    pub(crate) async fn resolve(&mut self) -> Result<(), GroupError> {
        self.offset().await.map(|_| ())
    }

    async fn fetch(&mut self, max_bytes: usize) -> Result<Vec<Message>, ReadError> {
        let offset = self.offset().await?;
        let consumer = &self.client.config().consumer;
        let limit = max_bytes.min(consumer.fetch_max_bytes).max(1);
        let wait = consumer.fetch_max_wait;
        let timeout = wait + self.client.config().request_timeout;
        let settings = Settings {
            topic: Arc::clone(&self.partition.topic),
            partition: self.partition.partition,
            from: offset,
            fetch_limit: limit,
            max_decompressed: consumer.max_decompressed_batch_bytes,
            read_committed: consumer.isolation_level == IsolationLevel::ReadCommitted,
        };
        let limit = i32::try_from(limit).unwrap_or(i32::MAX);
        let mut wanted = FetchPartition::default();
        wanted.partition = self.partition.partition;
        wanted.current_leader_epoch = -1;
        wanted.fetch_offset = offset;
        wanted.last_fetched_epoch = -1;
        wanted.log_start_offset = -1;
        wanted.partition_max_bytes = limit;
        let mut topic = FetchTopic::default();
        topic.topic = self.topic.clone();
        topic.partitions = vec![wanted];
        let mut request = FetchRequest::default();
        request.replica_id = (-1).into();
        request.max_wait_ms = i32::try_from(wait.as_millis()).unwrap_or(i32::MAX);
        request.min_bytes = 1;
        request.max_bytes = limit;
        request.isolation_level = self.isolation();
        request.session_id = 0;
        request.session_epoch = -1;
        request.topics = vec![topic];
        // Room for the largest response this fetch may get, before asking for it: waits for
        // the messages of earlier fetches to be handled when the budget is spent.
        let reserved = self
            .budget
            .reserve(request.response_limit())
            .await
            .ok_or_else(|| self.error("fetch", "the reader's memory budget is closed"))?;
        let buffer = self.budget.spare_buffer();
        let budget = self.budget.clone();
        let connection = self.connection().await?;
        let broker = connection.broker().to_owned();
        let sent = match connection.version::<FetchRequest>() {
            Ok(version) => {
                let hold = move |body| budget.hold_frame(body, reserved);
                connection.send_into(&request, version, timeout, buffer, hold).await
            }
            Err(e) => Err(e),
        };
        let (response, _frame) = sent.map_err(|e| {
            self.drop_connection();
            self.error(&format!("fetch at offset {offset} failed"), e)
        })?;
        if response.error_code != 0 {
            self.drop_connection();
            return Err(self
                .error(&format!("fetch at offset {offset} failed"), code_name(response.error_code))
                .into());
        }
        let answer = response
            .responses
            .into_iter()
            .filter(|t| t.topic == self.topic)
            .flat_map(|t| t.partitions)
            .find(|p| p.partition_index == self.partition.partition);
        let Some(answer) = answer else {
            return Err(self
                .error(
                    &format!("fetch at offset {offset} failed"),
                    "the answer names no such partition",
                )
                .into());
        };
        match answer.error_code {
            0 => {
                if answer.high_watermark >= 0 {
                    self.high_watermark = Some(answer.high_watermark);
                }
            }
            OFFSET_OUT_OF_RANGE => {
                return self.reset(offset, "out of range (OFFSET_OUT_OF_RANGE)").await;
            }
            code => {
                // Not the leader any more, unknown partition, fenced epoch…: look the leader
                // up again on the next fetch.
                self.drop_connection();
                return Err(self
                    .error(&format!("fetch at offset {offset} failed"), code_name(code))
                    .into());
            }
        }
        let aborted = AbortedTransactions::new(
            answer.aborted_transactions.iter().flatten().map(|t| (t.producer_id.0, t.first_offset)),
        );
        let decoded = match &answer.records {
            Some(records) => batch::decode(records, &settings, aborted, &self.budget).await,
            None => batch::Decoded::default(),
        };
        if let Some(next) = decoded.next {
            self.position = StartAt::Offset(next.max(offset));
        }
        match decoded.unreadable {
            Some(unreadable) if decoded.messages.is_empty() && decoded.next.is_none() => {
                return Err(ReadError::Unreadable(UnreadableBatch {
                    partition: self.partition.clone(),
                    first_offset: unreadable.first_offset,
                    last_offset: unreadable.last_offset,
                    raw: unreadable.raw,
                    reason: format!("broker {broker}: {}", unreadable.reason),
                }));
            }
            // The records before it first; the next fetch starts with it.
            _ => {}
        }
        if decoded.next.is_none() && offset > answer.high_watermark {
            // Past the end. Kafka answers OFFSET_OUT_OF_RANGE here; some brokers (nisshi
            // 0.8.1, docs/BROKER.md) answer an empty batch and would stall the reader for
            // good. Confirm with the partition's end offset (a high watermark can lag for a
            // moment after a leader change) before resetting.
            let latest = self.list_offset(LATEST).await?;
            return if offset > latest {
                self.reset(offset, "beyond the end of the partition").await
            } else {
                Ok(Vec::new())
            };
        }
        Ok(decoded.messages)
    }

    /// Moves the position as `auto_offset_reset` says (logged): `offset` is `why`.
    async fn reset(&mut self, offset: i64, why: &str) -> Result<Vec<Message>, ReadError> {
        let (timestamp, to) = match self.reset {
            OffsetReset::Earliest => (EARLIEST, "earliest"),
            OffsetReset::Latest => (LATEST, "latest"),
        };
        let target = self.list_offset(timestamp).await?;
        tracing::warn!(
            group = %self.group, partition = %self.partition, offset, target,
            "offset {why}; resetting to the {to} offset (auto_offset_reset)"
        );
        self.position = StartAt::Offset(target);
        Ok(Vec::new())
    }
}

impl PartitionReader for KafkaReader {
    fn next_batch(&mut self, max_bytes: usize) -> BoxFuture<'_, Result<Vec<Message>, ReadError>> {
        Box::pin(self.fetch(max_bytes))
    }

    fn seek(&mut self, offset: i64) {
        self.position = StartAt::Offset(offset);
    }

    fn position(&self) -> Option<i64> {
        match self.position {
            StartAt::Offset(offset) => Some(offset),
            StartAt::Earliest | StartAt::Latest | StartAt::Timestamp(_) => None,
        }
    }

    fn high_watermark(&self) -> Option<i64> {
        self.high_watermark
    }
}
