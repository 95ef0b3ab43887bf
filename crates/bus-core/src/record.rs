//! Records (what is published) and messages (what is consumed), on `bytes::Bytes`.
//!
//! Owns: [`Record`], [`Message`], [`Headers`] and [`Header`]. These are the backend-neutral
//! shapes every backend maps to its wire format; nothing here knows about Kafka's encoding.
//!
//! Invariant: header names keep their case and order as given (Kafka allows repeated names);
//! lookups by name ignore ASCII case, as the Go SDK's did.

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
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Headers(Vec<Header>);

impl Headers {
    /// No headers.
    pub fn new() -> Self {
        Headers(Vec::new())
    }

    /// Appends a header (a repeated name is kept, as Kafka allows).
    pub fn push(&mut self, name: impl Into<String>, value: impl Into<Bytes>) {
        self.0.push(Header { name: name.into(), value: value.into() });
    }

    /// Sets a header: replaces every header with this name (ignoring ASCII case) by one.
    pub fn set(&mut self, name: impl Into<String>, value: impl Into<Bytes>) {
        let name = name.into();
        self.0.retain(|h| !h.name.eq_ignore_ascii_case(&name));
        self.0.push(Header { name, value: value.into() });
    }

    /// The first value under `name`, ignoring ASCII case.
    pub fn get(&self, name: &str) -> Option<&Bytes> {
        self.0.iter().find(|h| h.name.eq_ignore_ascii_case(name)).map(|h| &h.value)
    }

    /// The first value under `name` as UTF-8 text, when it is valid UTF-8.
    pub fn get_str(&self, name: &str) -> Option<&str> {
        self.get(name).and_then(|v| std::str::from_utf8(v).ok())
    }

    /// Iterates over the headers in order.
    pub fn iter(&self) -> impl Iterator<Item = &Header> {
        self.0.iter()
    }

    /// The number of headers.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether there are no headers.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl FromIterator<(String, Bytes)> for Headers {
    fn from_iter<T: IntoIterator<Item = (String, Bytes)>>(iter: T) -> Self {
        Headers(iter.into_iter().map(|(name, value)| Header { name, value }).collect())
    }
}

impl<'a> IntoIterator for &'a Headers {
    type Item = &'a Header;
    type IntoIter = std::slice::Iter<'a, Header>;

    fn into_iter(self) -> Self::IntoIter {
        self.0.iter()
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
    /// The value.
    pub value: Bytes,
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
            value: value.into(),
            headers: Headers::new(),
            timestamp: None,
            partition: None,
        }
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
            + self.value.len()
            + self.headers.iter().map(|h| h.name.len() + h.value.len()).sum::<usize>()
    }
}

/// A consumed message: a record as stored, with its partition and offset.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    /// The topic it was read from.
    pub topic: String,
    /// The partition it was read from.
    pub partition: i32,
    /// Its offset in the partition.
    pub offset: i64,
    /// Its key.
    pub key: Option<Bytes>,
    /// Its value.
    pub value: Bytes,
    /// Its headers.
    pub headers: Headers,
    /// Its timestamp.
    pub timestamp: DateTime<Utc>,
}
