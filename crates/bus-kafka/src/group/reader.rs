//! Reading one assigned partition: the [`PartitionReader`] over rskafka's partition client.
//!
//! Owns: [`KafkaReader`].
//!
//! Invariants:
//! - The position (the next offset to return) advances only when a batch is returned, so
//!   dropping a pending `next_batch` loses no record (cancel-safe). Resolving `Earliest` or
//!   `Latest` fixes the position once; it is not re-resolved.
//! - Records below the position (rskafka returns whole compressed batches) are skipped; the
//!   records returned are in offset order, each above the last returned.
//! - A fetch answered with OFFSET_OUT_OF_RANGE, or with nothing from a position above both the
//!   high watermark and the partition's end offset (brokers that do not report the error),
//!   resets the position to the partition's earliest offset (logged), as
//!   `auto.offset.reset = earliest` does.
//! - Each fetch asks for at most `consumer.fetch_max_bytes` (and the caller's `max_bytes`) and
//!   lets the broker wait at most `consumer.fetch_max_wait` for records.

use std::sync::Arc;

use bus_core::backend::{BoxFuture, GroupError, PartitionReader, StartAt, TopicPartition};
use bus_core::{Headers, Message};
use bytes::Bytes;
use rskafka::client::error::{Error as RsError, ProtocolError};
use rskafka::client::partition::{OffsetAt, PartitionClient};

use crate::client::KafkaClient;

/// Reads one partition of a Kafka topic (returned by the member's `open`).
pub(crate) struct KafkaReader {
    client: Arc<KafkaClient>,
    group: String,
    partition: TopicPartition,
    topic: String,
    partition_client: Option<Arc<PartitionClient>>,
    position: StartAt,
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
    /// A reader of `partition` from `start` (the partition client and the start offset are
    /// resolved on the first fetch, where failures are retried by the caller).
    pub(crate) fn new(
        client: Arc<KafkaClient>,
        group: String,
        partition: TopicPartition,
        start: StartAt,
    ) -> Self {
        let topic = partition.topic.to_string();
        KafkaReader { client, group, partition, topic, partition_client: None, position: start }
    }

    fn error(&self, what: &str, error: impl std::fmt::Display) -> GroupError {
        GroupError::retriable(&self.group, format!("`{}`: {what}: {error}", self.partition))
    }

    async fn partition_client(&mut self) -> Result<Arc<PartitionClient>, GroupError> {
        if let Some(client) = &self.partition_client {
            return Ok(Arc::clone(client));
        }
        let client = self
            .client
            .partition(&self.topic, self.partition.partition)
            .await
            .map_err(|e| self.error("cannot reach the partition's leader", e))?;
        self.partition_client = Some(Arc::clone(&client));
        Ok(client)
    }

    /// The position as an offset, resolving `Earliest` / `Latest` once.
    async fn offset(&mut self, client: &PartitionClient) -> Result<i64, GroupError> {
        let at = match self.position {
            StartAt::Offset(offset) => return Ok(offset),
            StartAt::Earliest => OffsetAt::Earliest,
            StartAt::Latest => OffsetAt::Latest,
        };
        let offset = client
            .get_offset(at)
            .await
            .map_err(|e| self.error(&format!("cannot list the {:?} offset", self.position), e))?;
        tracing::debug!(partition = %self.partition, start = ?self.position, offset, "start offset resolved");
        self.position = StartAt::Offset(offset);
        Ok(offset)
    }

    async fn fetch(&mut self, max_bytes: usize) -> Result<Vec<Message>, GroupError> {
        let client = self.partition_client().await?;
        let offset = self.offset(&client).await?;
        let consumer = &self.client.config().consumer;
        let limit = max_bytes.min(consumer.fetch_max_bytes).max(1);
        // rskafka sends `end - 1` as the maximum.
        let end = i32::try_from(limit).unwrap_or(i32::MAX - 1).saturating_add(1);
        let wait = i32::try_from(consumer.fetch_max_wait.as_millis()).unwrap_or(i32::MAX);
        match client.fetch_records(offset, 1..end, wait).await {
            Ok((records, high_watermark)) if records.is_empty() && offset > high_watermark => {
                // Past the end. Kafka answers OFFSET_OUT_OF_RANGE here; some brokers (nisshi
                // 0.8.1, docs/BROKER.md) answer an empty batch and would stall the reader for
                // good. Confirm with the partition's end offset (a high watermark can lag for a
                // moment after a leader change) before resetting.
                let latest = client
                    .get_offset(OffsetAt::Latest)
                    .await
                    .map_err(|e| self.error("cannot list the latest offset", e))?;
                if offset > latest {
                    self.reset_to_earliest(&client, offset, "beyond the end of the partition").await
                } else {
                    Ok(Vec::new())
                }
            }
            Ok((records, _high_watermark)) => {
                let mut batch = Vec::with_capacity(records.len());
                let mut next = offset;
                for r in records {
                    if r.offset < next {
                        continue;
                    }
                    next = r.offset + 1;
                    let record = r.record;
                    batch.push(Message {
                        topic: Arc::clone(&self.partition.topic),
                        partition: self.partition.partition,
                        offset: r.offset,
                        key: record.key.map(Bytes::from),
                        value: record.value.map(Bytes::from).unwrap_or_default(),
                        headers: record
                            .headers
                            .into_iter()
                            .map(|(name, value)| (name, Bytes::from(value)))
                            .collect::<Headers>(),
                        timestamp: record.timestamp,
                    });
                }
                self.position = StartAt::Offset(next);
                Ok(batch)
            }
            Err(RsError::ServerError {
                protocol_error: ProtocolError::OffsetOutOfRange, ..
            }) => {
                self.reset_to_earliest(&client, offset, "out of range (OFFSET_OUT_OF_RANGE)").await
            }
            Err(e) => Err(self.error(&format!("fetch at offset {offset} failed"), e)),
        }
    }
}

impl KafkaReader {
    /// Moves the position to the partition's earliest offset (logged): `offset` is `why`.
    async fn reset_to_earliest(
        &mut self,
        client: &PartitionClient,
        offset: i64,
        why: &str,
    ) -> Result<Vec<Message>, GroupError> {
        let earliest = client
            .get_offset(OffsetAt::Earliest)
            .await
            .map_err(|e| self.error("cannot list the earliest offset", e))?;
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
