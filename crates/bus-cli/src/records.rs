//! Records as the command line shows them, and reading a topic without a consumer group.
//!
//! Owns: [`Shown`] (a record printed: position, key, headers, and the envelope's fields or the
//! raw value), [`Filter`] (by aggregate id and event type), [`read_to_end`] (every record a
//! topic holds now, partition by partition, without committing anything) and [`text`].
//!
//! Invariant: reading to the end stops at the end offsets read when it started (records
//! published meanwhile are left for another read), within a deadline.

use std::sync::Arc;
use std::time::Duration;

use bus_kafka::StartAt;
use bus_kafka::{Envelope, Message, TopicPartition, admin::Admin};
use serde::Serialize;
use tokio::time::Instant;

use crate::{Exit, Failure};

/// A fetch's size.
pub(crate) const FETCH_BYTES: usize = 1 << 20;

/// Bytes as text (invalid UTF-8 replaced).
pub(crate) fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// A record as printed.
#[derive(Debug, Serialize)]
pub(crate) struct Shown {
    pub(crate) topic: String,
    pub(crate) partition: i32,
    pub(crate) offset: i64,
    pub(crate) timestamp: String,
    pub(crate) key: Option<String>,
    pub(crate) headers: Vec<(String, String)>,
    /// The envelope's fields, when the value is one (and not `--raw`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) envelope: Option<ShownEnvelope>,
    /// The value as text, when it is not shown as an envelope.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) value: Option<String>,
}

/// An envelope's fields as printed.
#[derive(Debug, Serialize)]
pub(crate) struct ShownEnvelope {
    pub(crate) event_id: String,
    pub(crate) aggregate_id: String,
    pub(crate) event_type: String,
    pub(crate) event_version: i64,
    pub(crate) payload: serde_json::Value,
}

impl Shown {
    /// `message` as printed: its envelope when it is one and `raw` is off, else its value.
    pub(crate) fn of(message: &Message, raw: bool) -> Self {
        let envelope =
            (!raw).then(|| Envelope::from_message(message).ok()).flatten().map(|e| ShownEnvelope {
                payload: e
                    .payload_json()
                    .and_then(|p| serde_json::from_str(p).ok())
                    .unwrap_or(serde_json::Value::Null),
                event_id: e.event_id,
                aggregate_id: e.aggregate_id,
                event_type: e.event_type,
                event_version: e.event_version,
            });
        // A tombstone (null value) is shown as no value.
        let value = envelope.is_none().then(|| message.value.as_deref().map(text)).flatten();
        Shown {
            topic: message.topic.to_string(),
            partition: message.partition,
            offset: message.offset,
            timestamp: message.timestamp.to_rfc3339(),
            key: message.key.as_deref().map(text),
            headers: message.headers.iter().map(|h| (h.name.clone(), text(&h.value))).collect(),
            envelope,
            value,
        }
    }

    /// One line (or a few) for people.
    pub(crate) fn human(&self) -> String {
        let key = self.key.as_deref().unwrap_or("-");
        let mut line = format!(
            "{}-{}@{} {} key={key}",
            self.topic, self.partition, self.offset, self.timestamp
        );
        if let Some(e) = &self.envelope {
            line.push_str(&format!(
                "\n  {} {} v{} (event {})\n  payload {}",
                e.aggregate_id, e.event_type, e.event_version, e.event_id, e.payload
            ));
        }
        for (name, value) in &self.headers {
            line.push_str(&format!("\n  {name}: {value}"));
        }
        if let Some(value) = &self.value {
            line.push_str(&format!("\n  value {value}"));
        }
        line
    }
}

/// Which records to show.
#[derive(Debug, Clone, Default)]
pub(crate) struct Filter {
    pub(crate) aggregate: Option<String>,
    pub(crate) event_type: Option<String>,
}

impl Filter {
    pub(crate) fn accepts(&self, message: &Message) -> bool {
        if self.aggregate.is_none() && self.event_type.is_none() {
            return true;
        }
        let Ok(envelope) = Envelope::from_message(message) else {
            // Not an envelope: only its key can be the aggregate.
            return self.event_type.is_none()
                && self.aggregate.as_deref().map(str::as_bytes) == message.key.as_deref();
        };
        self.aggregate.as_ref().is_none_or(|a| *a == envelope.aggregate_id)
            && self.event_type.as_ref().is_none_or(|t| *t == envelope.event_type)
    }
}

/// Every record `topic` holds now (up to the end offsets read first), partition by partition,
/// without a consumer group; within `deadline` of starting.
pub(crate) async fn read_to_end(
    admin: &Admin,
    topic: &str,
    deadline: Duration,
) -> Result<Vec<Message>, Failure> {
    let give_up = Instant::now() + deadline;
    let described = admin.describe_topic(topic).await?;
    let mut all = Vec::new();
    for partition in &described.partitions {
        if partition.end_offset <= partition.start_offset {
            continue;
        }
        let tp = TopicPartition { topic: Arc::from(topic), partition: partition.partition };
        let mut cursor = admin.read(&tp, StartAt::Earliest).await?;
        let mut next = partition.start_offset;
        while next < partition.end_offset {
            if Instant::now() >= give_up {
                return Err(Failure::new(
                    Exit::Failed,
                    format!(
                        "reading {topic}-{} did not reach offset {} within {deadline:?}",
                        partition.partition, partition.end_offset
                    ),
                ));
            }
            match tokio::time::timeout_at(give_up, cursor.next(FETCH_BYTES)).await {
                Ok(Ok(batch)) => {
                    for message in batch {
                        next = message.offset + 1;
                        if message.offset < partition.end_offset {
                            all.push(message);
                        }
                    }
                }
                Ok(Err(error)) => {
                    if cursor.skip_unreadable() {
                        eprintln!("busctl: skipped: {error}");
                        next = cursor.position().unwrap_or(next);
                    } else {
                        return Err(error.into());
                    }
                }
                Err(_) => continue,
            }
        }
    }
    Ok(all)
}
