//! The Kafka backend's configuration: serde structs with defaults, validated field by field.
//!
//! Owns: the sections of [`KafkaConfig`](crate::KafkaConfig) ([`ProducerConfig`],
//! [`ConsumerConfig`], [`TopicConfig`], [`MetadataConfig`], [`Compression`],
//! [`IsolationLevel`]; the `security` section is the `security` module's), the bounds on the
//! consumer's byte sizes (`limits`) and `ASSIGNORS` (the assignors a member may offer).
//! `KafkaConfig` itself and its validation, which names the first field out of range
//! (`producer.linger`, `consumer.session_timeout`, `security.sasl.password`, …), are in `kafka`.

use std::time::Duration;

use serde::{Deserialize, Serialize};

pub(crate) mod kafka;
pub(crate) mod limits;

pub use limits::{FETCH_RESPONSE_SLACK, MAX_FETCH_BYTES, MAX_PARTITION_BUFFER_BYTES};

/// The most produce requests an idempotent producer may have in flight per partition: the broker
/// keeps the state of a producer's last five batches per partition, so Kafka requires at most 5.
pub(crate) const MAX_IN_FLIGHT_IDEMPOTENT: usize = 5;

/// The partition assignors a member can offer (see [`ConsumerConfig::assignors`]).
pub(crate) const ASSIGNORS: [&str; 4] = ["range", "roundrobin", "sticky", "cooperative-sticky"];

/// The assignor that supports the cooperative rebalance protocol.
pub(crate) const COOPERATIVE_STICKY: &str = "cooperative-sticky";

/// Which records a consumer reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum IsolationLevel {
    /// Records of committed transactions and records written outside transactions; records of
    /// aborted transactions are never delivered (Kafka's `read_committed`).
    #[default]
    ReadCommitted,
    /// Every record, aborted transactions' included (Kafka's `read_uncommitted`).
    ReadUncommitted,
}
/// Record-batch compression.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Compression {
    /// No compression.
    #[default]
    None,
    /// gzip.
    Gzip,
    /// Snappy.
    Snappy,
    /// LZ4.
    Lz4,
    /// Zstandard.
    Zstd,
}

/// How topics are created.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TopicConfig {
    /// Create a topic on first publish or subscribe when it does not exist ("ensure topic").
    pub auto_create: bool,
    /// Partitions of a topic created that way.
    pub partitions: i32,
    /// Replication factor of a topic created that way.
    pub replication_factor: i16,
}

impl Default for TopicConfig {
    fn default() -> Self {
        TopicConfig { auto_create: true, partitions: 6, replication_factor: 1 }
    }
}

/// The producer: batching per partition, buffer, retries, idempotence.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ProducerConfig {
    /// How long a partition's batch waits for more records before it is sent (to within the
    /// runtime timer's 1 ms tick).
    #[serde(with = "humantime_serde")]
    pub linger: Duration,
    /// The largest batch, in bytes as encoded (estimated from above: keys, values, headers and
    /// their per-record framing). Keep it under the broker's `message.max.bytes` (Kafka's
    /// default: 1,048,588); a batch the broker still finds too large is split and retried. A
    /// single record larger than this is sent alone.
    pub max_batch_bytes: usize,
    /// Compression of record batches.
    pub compression: Compression,
    /// Memory held by records accepted and not yet acknowledged, across all partitions: each
    /// record is charged its key, value and headers, its topic's name and a few hundred bytes
    /// of bookkeeping (its queue entry and delivery channel), so that many small records are
    /// bounded as surely as a few large ones. Publishing waits for room (backpressure).
    pub buffer_bytes: usize,
    /// How long a publish waits for room in the buffer before failing.
    #[serde(with = "humantime_serde")]
    pub publish_timeout: Duration,
    /// How long a record may take from acceptance to acknowledgement, retries included, before
    /// it is failed back to its caller.
    #[serde(with = "humantime_serde")]
    pub delivery_timeout: Duration,
    /// The first delay between retries of a failed produce (doubling, capped at 1 s).
    #[serde(with = "humantime_serde")]
    pub retry_backoff: Duration,
    /// Idempotent producing (Kafka's `enable.idempotence`, on by default as in the Java client
    /// and librdkafka): the producer takes a producer id from the cluster (InitProducerId) and
    /// numbers each partition's batches, so that the broker stores a retried batch once and in
    /// order, however often it is resent. Off, a batch whose acknowledgement was lost is
    /// stored again when it is retried (at least once), and one request is in flight per
    /// partition so that retries cannot reorder records.
    pub idempotence: bool,
    /// Produce requests in flight per partition (Kafka's
    /// `max.in.flight.requests.per.connection`), 1 to 5 (Kafka's bound for an idempotent producer:
    /// the broker remembers a producer's last five batches per partition); order is
    /// kept through retries. Applies with `idempotence` on; off, one request is in flight.
    pub max_in_flight: usize,
}

impl Default for ProducerConfig {
    fn default() -> Self {
        ProducerConfig {
            linger: Duration::from_millis(5),
            max_batch_bytes: 1_000_000,
            compression: Compression::None,
            buffer_bytes: 32 * 1024 * 1024,
            publish_timeout: Duration::from_secs(30),
            delivery_timeout: Duration::from_secs(30),
            retry_backoff: Duration::from_millis(100),
            idempotence: true,
            max_in_flight: MAX_IN_FLIGHT_IDEMPOTENT,
        }
    }
}

/// Consumer groups and fetching.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ConsumerConfig {
    /// The group session timeout: a member that sends no heartbeat for this long is removed.
    #[serde(with = "humantime_serde")]
    pub session_timeout: Duration,
    /// How often a member heartbeats (at most a third of the session timeout).
    #[serde(with = "humantime_serde")]
    pub heartbeat_interval: Duration,
    /// Bytes asked for per fetch and partition (bounded prefetch); at most
    /// [`MAX_FETCH_BYTES`].
    pub fetch_max_bytes: usize,
    /// How long the broker may hold a fetch waiting for records.
    #[serde(with = "humantime_serde")]
    pub fetch_max_wait: Duration,
    /// Partition assignors offered to the group, preferred first: `range`, `roundrobin`,
    /// `sticky`, `cooperative-sticky` (computed as the Java client does; the group uses one
    /// that every member offers).
    ///
    /// They also choose the rebalance protocol, by the Java client's rule: the member is
    /// *cooperative* (KIP-429: a rebalance revokes only the partitions that move, the others
    /// are read throughout) when every assignor listed supports it, which only
    /// `cooperative-sticky` does; otherwise it is *eager* (every rebalance revokes everything
    /// first). To move a running group from eager to cooperative without stopping it, roll
    /// its members twice: first to `["cooperative-sticky", "range"]` (still eager, but
    /// offering the cooperative assignor), then to `["cooperative-sticky"]`.
    pub assignors: Vec<String>,
    /// Which records are read: `read_committed` (the default) or `read_uncommitted`.
    pub isolation_level: IsolationLevel,
    /// The most one compressed record batch may decompress to. A batch that would inflate
    /// further is not decompressed past this bound: it is refused, naming this field (the
    /// subscription's `unreadable_batches` policy then applies).
    pub max_decompressed_batch_bytes: usize,
    /// Memory each assigned partition's reader may hold: Fetch responses and decompressed
    /// batches that messages not yet handled still reference. Fetching and decompressing wait
    /// for room (backpressure). At least `fetch_max_bytes` + [`FETCH_RESPONSE_SLACK`] +
    /// `max_decompressed_batch_bytes`, so that a response and its largest batch always fit.
    pub partition_buffer_bytes: usize,
}

impl Default for ConsumerConfig {
    fn default() -> Self {
        ConsumerConfig {
            session_timeout: Duration::from_secs(10),
            heartbeat_interval: Duration::from_secs(3),
            fetch_max_bytes: 1024 * 1024,
            fetch_max_wait: Duration::from_millis(500),
            assignors: vec!["range".into(), "roundrobin".into()],
            isolation_level: IsolationLevel::ReadCommitted,
            max_decompressed_batch_bytes: 16 * 1024 * 1024,
            partition_buffer_bytes: 32 * 1024 * 1024,
        }
    }
}

/// Cluster metadata: how long what the client knows of topics is trusted.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MetadataConfig {
    /// How often metadata is read again (Kafka's `metadata.max.age.ms`): a group member with a
    /// pattern subscription looks for new matching topics, and a group's leader for subscribed
    /// topics whose partition count changed (either makes the group rebalance).
    #[serde(with = "humantime_serde")]
    pub max_age: Duration,
}

impl Default for MetadataConfig {
    fn default() -> Self {
        MetadataConfig { max_age: Duration::from_secs(300) }
    }
}

impl ConsumerConfig {
    /// Whether a member with these assignors follows the cooperative rebalance protocol (every
    /// assignor supports it: see [`ConsumerConfig::assignors`]).
    pub fn is_cooperative(&self) -> bool {
        !self.assignors.is_empty() && self.assignors.iter().all(|a| a == COOPERATIVE_STICKY)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

    use super::kafka::KafkaConfig;
    use super::*;

    fn with_assignors(assignors: &[&str]) -> KafkaConfig {
        let mut config = KafkaConfig::new("127.0.0.1:9092");
        config.consumer.assignors = assignors.iter().map(|a| (*a).to_owned()).collect();
        config
    }

    #[test]
    fn the_rebalance_protocol_follows_the_java_rule() {
        assert!(with_assignors(&["cooperative-sticky"]).consumer.is_cooperative());
        // The upgrade's first step: still eager, offering the cooperative assignor.
        assert!(!with_assignors(&["cooperative-sticky", "range"]).consumer.is_cooperative());
        assert!(!with_assignors(&["sticky"]).consumer.is_cooperative());
        assert!(!KafkaConfig::default().consumer.is_cooperative());
    }

    #[test]
    fn assignors_are_checked() {
        for valid in [&["range"][..], &["sticky", "roundrobin"], &["cooperative-sticky"]] {
            with_assignors(valid).validate().unwrap();
        }
        let unknown = with_assignors(&["fancy"]).validate().unwrap_err();
        assert_eq!(unknown.field, "consumer.assignors");
        assert!(with_assignors(&["range", "range"]).validate().is_err());
        assert!(with_assignors(&[]).validate().is_err());
    }

    #[test]
    fn metadata_max_age_has_a_floor() {
        let mut config = KafkaConfig::new("127.0.0.1:9092");
        assert_eq!(config.metadata.max_age, Duration::from_secs(300));
        config.metadata.max_age = Duration::from_millis(10);
        assert_eq!(config.validate().unwrap_err().field, "metadata.max_age");
    }
}
