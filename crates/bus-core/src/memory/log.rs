//! Topics and partition logs of the in-memory backend.
//!
//! Owns: [`TopicLog`] (a topic's partitions, its byte account, the groups that ever subscribed
//! to it, the FIFO of publishes waiting for room, the configuration it was created with) and
//! [`PartitionLog`] (an append-only log of messages with contiguous offsets).
//!
//! Invariants (all kept under the backend's state lock):
//! - A partition's offsets are contiguous: the records held are exactly `start..end`, and `end`
//!   only grows. Offsets start at 0.
//! - `TopicLog::bytes` is the sum of the sizes of the records held, and never exceeds the
//!   topic's capacity.
//! - Records leave only from the front of a partition, and only below the partition's
//!   *floor*: the lowest offset committed for it by the groups that ever subscribed to the topic
//!   (zero when there is none, or when one of them has not committed the partition). A record
//!   nobody committed past is never dropped.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::sync::Arc;

use chrono::Utc;
use tokio::sync::Notify;

use crate::partition::UnkeyedSpreader;
use crate::record::{Message, Record};

/// A message as stored, with its size and its append sequence in the topic (to truncate the
/// oldest first across partitions).
#[derive(Debug)]
struct Stored {
    message: Message,
    size: usize,
    seq: u64,
}

/// One partition: an append-only log of messages.
#[derive(Debug)]
pub(crate) struct PartitionLog {
    /// The offset of the first record held (the log start offset).
    start: i64,
    records: VecDeque<Stored>,
    /// Woken (all waiters) on every append.
    appended: Arc<Notify>,
}

impl PartitionLog {
    fn new() -> Self {
        PartitionLog { start: 0, records: VecDeque::new(), appended: Arc::new(Notify::new()) }
    }

    /// The offset of the first record held.
    pub(crate) fn start(&self) -> i64 {
        self.start
    }

    /// The offset the next record will get (the end offset, "high watermark").
    pub(crate) fn end(&self) -> i64 {
        // A VecDeque never holds more than isize::MAX elements, so this is lossless.
        self.start + self.records.len() as i64
    }

    /// The notifier woken on every append.
    pub(crate) fn appended(&self) -> Arc<Notify> {
        Arc::clone(&self.appended)
    }

    /// The records from `from` (clamped up to the start), at least one when there is one, then
    /// as many as fit in `max_bytes`.
    pub(crate) fn read(&self, from: i64, max_bytes: usize) -> Vec<Message> {
        let from = from.max(self.start);
        let Ok(skip) = usize::try_from(from - self.start) else {
            return Vec::new();
        };
        let mut batch = Vec::new();
        let mut bytes = 0usize;
        for stored in self.records.iter().skip(skip) {
            if !batch.is_empty() && bytes.saturating_add(stored.size) > max_bytes {
                break;
            }
            bytes = bytes.saturating_add(stored.size);
            batch.push(stored.message.clone());
        }
        batch
    }

    /// The offset of the first record held whose timestamp is at or after `millis` (since the
    /// Unix epoch), or the end offset when there is none: Kafka's ListOffsets by time.
    pub(crate) fn offset_at(&self, millis: i64) -> i64 {
        self.records
            .iter()
            .find(|s| s.message.timestamp.timestamp_millis() >= millis)
            .map_or_else(|| self.end(), |s| s.message.offset)
    }

    /// Every record held, in offset order.
    pub(crate) fn all(&self) -> Vec<Message> {
        self.records.iter().map(|s| s.message.clone()).collect()
    }
}

/// A topic: its partitions and what bounds its memory.
#[derive(Debug)]
pub(crate) struct TopicLog {
    name: Arc<str>,
    partitions: Vec<PartitionLog>,
    /// The bytes held over all partitions.
    bytes: usize,
    /// The next append sequence number.
    next_seq: u64,
    /// Spreads unkeyed records over the partitions.
    spreader: UnkeyedSpreader,
    /// Every group that ever had a member subscribed to this topic: truncation waits for all.
    pub(crate) groups: BTreeSet<String>,
    /// Tickets of the publishes waiting for room, first come first served.
    pub(crate) waiters: VecDeque<u64>,
    /// Woken (all waiters) when room may have been freed or the head of `waiters` changed.
    room: Arc<Notify>,
    /// The configuration it was created with (Kafka's keys; kept and reported, not enforced).
    pub(crate) config: BTreeMap<String, String>,
}

impl TopicLog {
    /// A topic named `name` with `partitions` empty partitions (`partitions` was validated).
    pub(crate) fn new(name: &str, partitions: i32) -> Self {
        let count = usize::try_from(partitions).unwrap_or(0);
        TopicLog {
            name: Arc::from(name),
            partitions: (0..count).map(|_| PartitionLog::new()).collect(),
            bytes: 0,
            next_seq: 0,
            spreader: UnkeyedSpreader::new(),
            groups: BTreeSet::new(),
            waiters: VecDeque::new(),
            room: Arc::new(Notify::new()),
            config: BTreeMap::new(),
        }
    }

    /// Grows the topic to `total` empty partitions more (`total` was validated to be more than
    /// it has).
    pub(crate) fn grow(&mut self, total: i32) {
        let total = usize::try_from(total).unwrap_or(0);
        while self.partitions.len() < total {
            self.partitions.push(PartitionLog::new());
        }
    }

    /// The topic's name.
    pub(crate) fn name(&self) -> &Arc<str> {
        &self.name
    }

    /// The partition count.
    pub(crate) fn partition_count(&self) -> i32 {
        i32::try_from(self.partitions.len()).unwrap_or(i32::MAX)
    }

    /// Partition `partition`, if it exists.
    pub(crate) fn partition(&self, partition: i32) -> Option<&PartitionLog> {
        usize::try_from(partition).ok().and_then(|p| self.partitions.get(p))
    }

    /// The bytes held.
    pub(crate) fn bytes(&self) -> usize {
        self.bytes
    }

    /// The spreader for unkeyed records.
    pub(crate) fn spreader(&self) -> &UnkeyedSpreader {
        &self.spreader
    }

    /// The notifier woken when room may have been freed.
    pub(crate) fn room(&self) -> &Arc<Notify> {
        &self.room
    }

    /// Drops the oldest records (by append order across partitions) that every group has
    /// committed past, until `needed` more bytes fit in `capacity` or nothing more may go.
    /// `floors[p]` is partition `p`'s floor: records below it may go. Returns whether `needed`
    /// bytes now fit.
    pub(crate) fn make_room(&mut self, needed: usize, capacity: usize, floors: &[i64]) -> bool {
        while self.bytes.saturating_add(needed) > capacity {
            let oldest = self
                .partitions
                .iter()
                .enumerate()
                .filter(|(p, log)| {
                    floors.get(*p).is_some_and(|&floor| log.start < floor)
                        && !log.records.is_empty()
                })
                .filter_map(|(p, log)| log.records.front().map(|s| (s.seq, p)))
                .min();
            let Some((_, p)) = oldest else {
                return false;
            };
            let Some(log) = self.partitions.get_mut(p) else {
                return false;
            };
            if let Some(stored) = log.records.pop_front() {
                log.start += 1;
                self.bytes = self.bytes.saturating_sub(stored.size);
            }
        }
        true
    }

    /// Appends `record` to `partition` (which exists, and the bytes fit: the caller checked),
    /// returning its offset, and wakes the partition's readers.
    pub(crate) fn append(&mut self, record: &Record, partition: i32, size: usize) -> Option<i64> {
        let topic = Arc::clone(&self.name);
        let log = usize::try_from(partition).ok().and_then(|p| self.partitions.get_mut(p))?;
        let offset = log.end();
        log.records.push_back(Stored {
            message: Message {
                topic,
                partition,
                offset,
                key: record.key.clone(),
                value: record.value.clone(),
                headers: record.headers.clone(),
                timestamp: record.timestamp.unwrap_or_else(Utc::now),
            },
            size,
            seq: self.next_seq,
        });
        self.next_seq += 1;
        self.bytes = self.bytes.saturating_add(size);
        log.appended.notify_waiters();
        Some(offset)
    }
}
