//! Records (what is published) and messages (what is consumed), on `bytes::Bytes`.
//!
//! Owns: [`Record`], [`Message`], [`Headers`] and [`Header`]. These are the backend-neutral
//! shapes every backend maps to its wire format; nothing here knows about Kafka's encoding.
//!
//! A value is an `Option<Bytes>`, as in Kafka: `None` is a *tombstone* (a null value: on a
//! compacted topic, the key's deletion), distinct from `Some` of no bytes (an empty value).
//! Every backend keeps the difference from publish to consume.
//!
//! Invariants:
//! - Header names keep their case and order as given (Kafka allows repeated names); lookups by
//!   name ignore ASCII case (`Headers::get`; the envelope's `aggregate_id_of` matches names
//!   exactly, as the Go SDK's `ExtractAggregateID` does).
//! - Cloning a [`Message`] allocates nothing: its topic is an `Arc<str>`, its key and value are
//!   `Bytes`, and its [`Headers`] share one list (copied on write by `push` and `set`; no
//!   allocation at all when there are none). The consumer runtime clones a message for every
//!   handler attempt.

use std::fmt;
use std::sync::Arc;

use bytes::Bytes;
use chrono::{DateTime, Utc};

/// One header: a name and a value of raw bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Header {
    /// The header's name, case preserved.
    pub name: String,
    /// The header's value.
    pub value: Bytes,
}

/// The ordered headers of a record or message. Names may repeat; lookups ignore ASCII case.
///
/// Cheap to clone: the list is shared and copied on write (`push`, `set`); an empty list holds
/// no allocation.
#[derive(Clone, Default)]
pub struct Headers(Option<Arc<Vec<Header>>>);

impl Headers {
    /// No headers.
    pub fn new() -> Self {
        Headers(None)
    }

    /// The list, for writing: unshared first (copied if another clone holds it).
    fn list_mut(&mut self) -> &mut Vec<Header> {
        Arc::make_mut(self.0.get_or_insert_with(Default::default))
    }

    /// Appends a header (a repeated name is kept, as Kafka allows).
    pub fn push(&mut self, name: impl Into<String>, value: impl Into<Bytes>) {
        self.list_mut().push(Header { name: name.into(), value: value.into() });
    }

    /// Sets a header: replaces every header with this name (ignoring ASCII case) by one.
    pub fn set(&mut self, name: impl Into<String>, value: impl Into<Bytes>) {
        let name = name.into();
        let list = self.list_mut();
        list.retain(|h| !h.name.eq_ignore_ascii_case(&name));
        list.push(Header { name, value: value.into() });
    }

    /// The first value under `name`, ignoring ASCII case.
    pub fn get(&self, name: &str) -> Option<&Bytes> {
        self.as_slice().iter().find(|h| h.name.eq_ignore_ascii_case(name)).map(|h| &h.value)
    }

    /// The first value under `name` as UTF-8 text, when it is valid UTF-8.
    pub fn get_str(&self, name: &str) -> Option<&str> {
        self.get(name).and_then(|v| std::str::from_utf8(v).ok())
    }

    /// Iterates over the headers in order.
    pub fn iter(&self) -> impl Iterator<Item = &Header> {
        self.as_slice().iter()
    }

    /// The headers in order.
    pub fn as_slice(&self) -> &[Header] {
        self.0.as_deref().map_or(&[], Vec::as_slice)
    }

    /// The number of headers.
    pub fn len(&self) -> usize {
        self.as_slice().len()
    }

    /// Whether there are no headers.
    pub fn is_empty(&self) -> bool {
        self.as_slice().is_empty()
    }
}

impl PartialEq for Headers {
    fn eq(&self, other: &Self) -> bool {
        self.as_slice() == other.as_slice()
    }
}

impl Eq for Headers {}

impl fmt::Debug for Headers {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("Headers").field(&self.as_slice()).finish()
    }
}

impl From<Vec<Header>> for Headers {
    fn from(list: Vec<Header>) -> Self {
        if list.is_empty() { Headers(None) } else { Headers(Some(Arc::new(list))) }
    }
}

impl FromIterator<(String, Bytes)> for Headers {
    fn from_iter<T: IntoIterator<Item = (String, Bytes)>>(iter: T) -> Self {
        Headers::from(
            iter.into_iter().map(|(name, value)| Header { name, value }).collect::<Vec<_>>(),
        )
    }
}

impl<'a> IntoIterator for &'a Headers {
    type Item = &'a Header;
    type IntoIter = std::slice::Iter<'a, Header>;

    fn into_iter(self) -> Self::IntoIter {
        self.as_slice().iter()
    }
}

/// A record to publish.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    /// The destination topic.
    pub topic: String,
    /// The key; it chooses the partition (through the configured partitioner) and the order:
    /// records with the same key are handled in order.
    pub key: Option<Bytes>,
    /// The value; `None` is a tombstone (see [`Record::tombstone`]).
    pub value: Option<Bytes>,
    /// The headers.
    pub headers: Headers,
    /// The record's timestamp; the backend uses the publish time when absent.
    pub timestamp: Option<DateTime<Utc>>,
    /// An explicit partition, overriding the partitioner.
    pub partition: Option<i32>,
}

impl Record {
    /// A record for `topic` with `value`, no key, no headers.
    pub fn new(topic: impl Into<String>, value: impl Into<Bytes>) -> Self {
        Record {
            topic: topic.into(),
            key: None,
            value: Some(value.into()),
            headers: Headers::new(),
            timestamp: None,
            partition: None,
        }
    }

    /// A tombstone for `key` in `topic`: a record with a null value, which on a compacted topic
    /// deletes the key (compaction keeps the last record of each key, and drops a tombstone
    /// itself after the topic's `delete.retention.ms`). Not an envelope: envelope subscribers
    /// skip it.
    pub fn tombstone(topic: impl Into<String>, key: impl Into<Bytes>) -> Self {
        Record {
            topic: topic.into(),
            key: Some(key.into()),
            value: None,
            headers: Headers::new(),
            timestamp: None,
            partition: None,
        }
    }

    /// Whether this is a tombstone (its value is null).
    pub fn is_tombstone(&self) -> bool {
        self.value.is_none()
    }

    /// Sets the key.
    pub fn with_key(mut self, key: impl Into<Bytes>) -> Self {
        self.key = Some(key.into());
        self
    }

    /// Adds a header.
    pub fn with_header(mut self, name: impl Into<String>, value: impl Into<Bytes>) -> Self {
        self.headers.push(name, value);
        self
    }

    /// Sets the timestamp.
    pub fn with_timestamp(mut self, timestamp: DateTime<Utc>) -> Self {
        self.timestamp = Some(timestamp);
        self
    }

    /// Sends the record to `partition`, bypassing the partitioner.
    pub fn with_partition(mut self, partition: i32) -> Self {
        self.partition = Some(partition);
        self
    }

    /// The bytes this record occupies in a producer buffer (key, value, header names and values),
    /// used for backpressure accounting.
    pub fn size(&self) -> usize {
        self.key.as_ref().map_or(0, Bytes::len)
            + self.value.as_ref().map_or(0, Bytes::len)
            + self.headers.iter().map(|h| h.name.len() + h.value.len()).sum::<usize>()
    }
}

/// A consumed message: a record as stored, with its partition and offset. Cloning it allocates
/// nothing (see the module documentation).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    /// The topic it was read from (shared by the messages of a partition).
    pub topic: Arc<str>,
    /// The partition it was read from.
    pub partition: i32,
    /// Its offset in the partition.
    pub offset: i64,
    /// Its key.
    pub key: Option<Bytes>,
    /// Its value; `None` for a tombstone (a null value, distinct from an empty one).
    pub value: Option<Bytes>,
    /// Its headers.
    pub headers: Headers,
    /// Its timestamp.
    pub timestamp: DateTime<Utc>,
}

impl Message {
    /// Whether this is a tombstone (its value is null).
    pub fn is_tombstone(&self) -> bool {
        self.value.is_none()
    }

    /// The value's bytes: empty for a tombstone (use [`Message::is_tombstone`] or
    /// [`Message::value`] to tell the two apart).
    pub fn payload(&self) -> &[u8] {
        self.value.as_deref().unwrap_or_default()
    }
}

/// A partition of a topic.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TopicPartition {
    /// The topic.
    pub topic: Arc<str>,
    /// The partition.
    pub partition: i32,
}

impl TopicPartition {
    /// Partition `partition` of `topic`.
    pub fn new(topic: impl Into<Arc<str>>, partition: i32) -> Self {
        TopicPartition { topic: topic.into(), partition }
    }
}

impl fmt::Display for TopicPartition {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}", self.topic, self.partition)
    }
}
