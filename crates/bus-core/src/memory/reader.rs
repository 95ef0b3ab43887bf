//! Partition readers of the in-memory backend.
//!
//! Owns: [`MemoryReader`], the [`PartitionReader`] over one partition log.
//!
//! Invariants: the reader's position advances only in the poll that returns a batch (so
//! dropping a pending `next_batch` loses no record); a position below the log start (records
//! truncated after every group committed past them) moves to the log start, like Kafka's
//! `earliest` reset.

use std::sync::Arc;

use tokio::sync::Notify;
use tokio::time::Instant;

use super::Shared;
use crate::backend::{GroupError, PartitionReader, ReadError};
use crate::future::BoxFuture;
use crate::record::Message;
use crate::record::TopicPartition;

/// Reads one partition of the in-memory backend in offset order (returned by
/// [`GroupMember::open`](crate::backend::GroupMember::open)).
#[derive(Debug)]
pub(crate) struct MemoryReader {
    shared: Arc<Shared>,
    group: String,
    partition: TopicPartition,
    position: i64,
    appended: Arc<Notify>,
    /// The log's end at the last read.
    end: Option<i64>,
}

impl MemoryReader {
    pub(super) fn new(
        shared: Arc<Shared>,
        group: String,
        partition: TopicPartition,
        position: i64,
        appended: Arc<Notify>,
    ) -> Self {
        MemoryReader { shared, group, partition, position, appended, end: None }
    }

    /// The records from `from` (clamped to the log start) and the position after them; notes
    /// the log's end.
    fn read(&mut self, max_bytes: usize) -> Result<(Vec<Message>, i64), GroupError> {
        let state = self.shared.state.lock();
        let log = state
            .topics
            .get(&*self.partition.topic)
            .and_then(|t| t.partition(self.partition.partition))
            .ok_or_else(|| {
                GroupError::fatal(
                    &self.group,
                    format!("cannot read `{}`: no such partition", self.partition),
                )
            })?;
        let from = self.position.max(log.start());
        let batch = log.read(from, max_bytes);
        let next = batch.last().map_or(from, |m| m.offset + 1);
        let end = log.end();
        drop(state);
        self.end = Some(end);
        Ok((batch, next))
    }
}

impl PartitionReader for MemoryReader {
    fn next_batch(&mut self, max_bytes: usize) -> BoxFuture<'_, Result<Vec<Message>, ReadError>> {
        Box::pin(async move {
            let deadline = Instant::now() + self.shared.config.poll_interval;
            loop {
                // Registered before reading: an append after the read wakes us.
                let appended = Arc::clone(&self.appended);
                let notified = appended.notified();
                let (batch, next) = self.read(max_bytes)?;
                if !batch.is_empty() || Instant::now() >= deadline {
                    self.position = next;
                    return Ok(batch);
                }
                tokio::select! {
                    () = notified => {}
                    () = tokio::time::sleep_until(deadline) => {}
                }
            }
        })
    }

    fn seek(&mut self, offset: i64) {
        self.position = offset;
    }

    fn position(&self) -> Option<i64> {
        Some(self.position)
    }

    fn high_watermark(&self) -> Option<i64> {
        self.end
    }
}
