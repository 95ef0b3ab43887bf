//! Reading one assigned partition: the [`PartitionReader`] on our own Fetch requests.
//!
//! Owns: [`KafkaReader`] (a partition's position and its connection to the partition's leader,
//! found with the crate's `leader` lookup).
//!
//! Invariants:
//! - The position (the next offset to return) advances only when a batch is returned, so
//!   dropping a pending `next_batch` loses no record (cancel-safe); a request dropped half-way
//!   leaves its connection poisoned, and the next fetch opens a new one. Resolving `Earliest`,
//!   `Latest` or `Timestamp` (ListOffsets by time; the end offset when no record is that late)
//!   fixes the position once; it is not re-resolved.
//! - Records below the position (a batch is returned whole) are skipped; the records returned
//!   are in offset order, each above the last returned (see `batch`).
//! - A fetch answered with OFFSET_OUT_OF_RANGE, or with nothing from a position above both the
//!   high watermark and the partition's end offset (brokers that do not report the error),
//!   resets the position to the partition's earliest offset (logged), as
//!   `auto.offset.reset = earliest` does.
//! - Each fetch asks for at most `consumer.fetch_max_bytes` (and the caller's `max_bytes`) and
//!   lets the broker wait at most `consumer.fetch_max_wait` for records; it reads committed
//!   records only (isolation level read_committed).
//! - One connection per reader, to the partition's leader as the bootstrap brokers' metadata
//!   names it; a leadership error or any failed request drops it, and the next fetch looks the
//!   leader up again.
//! - Response memory is reused: the reader keeps its last `KEPT_FRAMES` Fetch responses and
//!   reads the next one into the first whose messages have all been dropped (its memory is
//!   then no longer shared), rather than into fresh pages each time. So a reader holds at most
//!   that many responses of memory beyond what its messages in flight still reference.

use std::collections::VecDeque;
use std::sync::Arc;

use bus_core::backend::{BoxFuture, GroupError, PartitionReader, StartAt};
use bus_core::{Message, TopicPartition};
use bytes::{Bytes, BytesMut};
use kafka_protocol::messages::fetch_request::{FetchPartition, FetchTopic};
use kafka_protocol::messages::list_offsets_request::{ListOffsetsPartition, ListOffsetsTopic};
use kafka_protocol::messages::{FetchRequest, ListOffsetsRequest, TopicName};
use kafka_protocol::protocol::StrBytes;

use super::batch;
use crate::client::KafkaClient;
use crate::connection::{Connection, code_name};
use crate::leader::leader;

/// OFFSET_OUT_OF_RANGE.
const OFFSET_OUT_OF_RANGE: i16 = 1;
/// Read committed records only.
const READ_COMMITTED: i8 = 1;
/// ListOffsets' timestamp for the earliest offset.
const EARLIEST: i64 = -2;
/// ListOffsets' timestamp for the end offset.
const LATEST: i64 = -1;
/// Fetch responses kept for their memory.
const KEPT_FRAMES: usize = 3;

/// Reads one partition of a Kafka topic (returned by the member's `open`).
pub(crate) struct KafkaReader {
    client: Arc<KafkaClient>,
    group: String,
    partition: TopicPartition,
    topic: TopicName,
    connection: Option<Connection>,
    position: StartAt,
    /// The last responses, oldest first: their memory is reused once unshared.
    frames: VecDeque<Bytes>,
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
    /// A reader of `partition` from `start` (the leader's connection and the start offset are
    /// resolved on the first fetch, where failures are retried by the caller).
    pub(crate) fn new(
        client: Arc<KafkaClient>,
        group: String,
        partition: TopicPartition,
        start: StartAt,
    ) -> Self {
        let topic = TopicName(StrBytes::from_string(partition.topic.to_string()));
        KafkaReader {
            client,
            group,
            partition,
            topic,
            connection: None,
            position: start,
            frames: VecDeque::with_capacity(KEPT_FRAMES + 1),
        }
    }

    fn error(&self, what: &str, error: impl std::fmt::Display) -> GroupError {
        GroupError::retriable(&self.group, format!("`{}`: {what}: {error}", self.partition))
    }

    /// The connection to the partition's leader, opened (after a Metadata lookup) when there is
    /// none or the last one failed.
    async fn connection(&mut self) -> Result<&mut Connection, GroupError> {
        if !self.connection.as_ref().is_some_and(Connection::is_usable) {
            self.connection = None;
            let connection = leader(self.client.connector(), &self.topic, self.partition.partition)
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
        request.isolation_level = READ_COMMITTED;
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
            self.connection = None;
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
                self.connection = None;
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
            StartAt::Timestamp(millis) => millis.max(0),
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

    async fn fetch(&mut self, max_bytes: usize) -> Result<Vec<Message>, GroupError> {
        let offset = self.offset().await?;
        let consumer = &self.client.config().consumer;
        let limit =
            i32::try_from(max_bytes.min(consumer.fetch_max_bytes).max(1)).unwrap_or(i32::MAX);
        let wait = consumer.fetch_max_wait;
        let timeout = wait + self.client.config().request_timeout;
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
        request.isolation_level = READ_COMMITTED;
        request.session_id = 0;
        request.session_epoch = -1;
        request.topics = vec![topic];
        let buffer = self.spare_buffer();
        let connection = self.connection().await?;
        let sent = match connection.version::<FetchRequest>() {
            Ok(version) => connection.send_into(&request, version, timeout, buffer).await,
            Err(e) => Err(e),
        };
        let (response, frame) = sent.map_err(|e| {
            self.connection = None;
            self.error(&format!("fetch at offset {offset} failed"), e)
        })?;
        self.frames.push_back(frame);
        if self.frames.len() > KEPT_FRAMES {
            self.frames.pop_front();
        }
        if response.error_code != 0 {
            self.connection = None;
            return Err(self.error(
                &format!("fetch at offset {offset} failed"),
                code_name(response.error_code),
            ));
        }
        let answer = response
            .responses
            .into_iter()
            .filter(|t| t.topic == self.topic)
            .flat_map(|t| t.partitions)
            .find(|p| p.partition_index == self.partition.partition);
        let Some(answer) = answer else {
            return Err(self.error(
                &format!("fetch at offset {offset} failed"),
                "the answer names no such partition",
            ));
        };
        match answer.error_code {
            0 => {}
            OFFSET_OUT_OF_RANGE => {
                return self.reset_to_earliest(offset, "out of range (OFFSET_OUT_OF_RANGE)").await;
            }
            code => {
                // Not the leader any more, unknown partition, fenced epoch…: look the leader
                // up again on the next fetch.
                self.connection = None;
                return Err(
                    self.error(&format!("fetch at offset {offset} failed"), code_name(code))
                );
            }
        }
        let decoded = match &answer.records {
            Some(records) => {
                batch::decode(records, &self.partition.topic, self.partition.partition, offset)
                    .map_err(|e| self.error(&format!("fetch at offset {offset}"), e))?
            }
            None => batch::Decoded::default(),
        };
        if decoded.next.is_none() && offset > answer.high_watermark {
            // Past the end. Kafka answers OFFSET_OUT_OF_RANGE here; some brokers (nisshi
            // 0.8.1, docs/BROKER.md) answer an empty batch and would stall the reader for
            // good. Confirm with the partition's end offset (a high watermark can lag for a
            // moment after a leader change) before resetting.
            let latest = self.list_offset(LATEST).await?;
            return if offset > latest {
                self.reset_to_earliest(offset, "beyond the end of the partition").await
            } else {
                Ok(Vec::new())
            };
        }
        if let Some(next) = decoded.next {
            self.position = StartAt::Offset(next.max(offset));
        }
        Ok(decoded.messages)
    }

    /// The memory of a kept response nothing references any more (taken out of the kept ones),
    /// or a new buffer.
    fn spare_buffer(&mut self) -> BytesMut {
        for _ in 0..self.frames.len() {
            let Some(frame) = self.frames.pop_front() else {
                break;
            };
            match frame.try_into_mut() {
                Ok(buffer) => return buffer,
                Err(frame) => self.frames.push_back(frame),
            }
        }
        BytesMut::new()
    }

    /// Moves the position to the partition's earliest offset (logged): `offset` is `why`.
    async fn reset_to_earliest(
        &mut self,
        offset: i64,
        why: &str,
    ) -> Result<Vec<Message>, GroupError> {
        let earliest = self.list_offset(EARLIEST).await?;
        tracing::warn!(
            group = %self.group, partition = %self.partition, offset, earliest,
            "offset {why}; resetting to the earliest offset"
        );
        self.position = StartAt::Offset(earliest);
        Ok(Vec::new())
    }
}

impl PartitionReader for KafkaReader {
    fn next_batch(&mut self, max_bytes: usize) -> BoxFuture<'_, Result<Vec<Message>, GroupError>> {
        Box::pin(self.fetch(max_bytes))
    }
}
