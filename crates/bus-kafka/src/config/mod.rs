//! The Kafka backend's configuration: serde structs with defaults, validated field by field.
//!
//! Owns: [`KafkaConfig`] and its sections [`ProducerConfig`], [`ConsumerConfig`],
//! [`TopicConfig`], [`MetadataConfig`], [`Compression`] and [`IsolationLevel`], and
//! `ASSIGNORS` (the assignors a member may offer; the `security` section is the crate's
//! `security` module's).
//! [`KafkaConfig::validate`] names the first field out of range (`producer.linger`,
//! `consumer.session_timeout`, `security.sasl.password`, …).

use std::time::Duration;

use bus_core::{ConfigError, Partitioner};
use serde::{Deserialize, Serialize};

use crate::security::SecurityConfig;
use limits::{FETCH_RESPONSE_SLACK, MAX_FETCH_BYTES, MAX_PARTITION_BUFFER_BYTES};

pub(crate) mod limits;

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
    /// Bytes of records accepted and not yet acknowledged, across all partitions. Publishing
    /// waits for room (backpressure).
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

/// Everything the Kafka backend needs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct KafkaConfig {
    /// Bootstrap brokers, `host:port`.
    pub bootstrap: Vec<String>,
    /// The client id sent to the brokers.
    pub client_id: String,
    /// How record keys choose partitions (cross-client compatible: murmur2, fnv1a, crc32).
    pub partitioner: Partitioner,
    /// Timeout of one request to a broker.
    #[serde(with = "humantime_serde")]
    pub request_timeout: Duration,
    /// Topic creation.
    pub topics: TopicConfig,
    /// The producer.
    pub producer: ProducerConfig,
    /// Consumer groups.
    pub consumer: ConsumerConfig,
    /// Cluster metadata.
    pub metadata: MetadataConfig,
    /// TLS and SASL on every connection (`security.protocol`, `security.tls.*`,
    /// `security.sasl.*`: librdkafka's names).
    pub security: SecurityConfig,
}

impl Default for KafkaConfig {
    fn default() -> Self {
        KafkaConfig {
            bootstrap: Vec::new(),
            client_id: "bus".into(),
            partitioner: Partitioner::Murmur2,
            request_timeout: Duration::from_secs(30),
            topics: TopicConfig::default(),
            producer: ProducerConfig::default(),
            consumer: ConsumerConfig::default(),
            metadata: MetadataConfig::default(),
            security: SecurityConfig::default(),
        }
    }
}

impl KafkaConfig {
    /// The defaults, bootstrapping from `bootstrap` (`host:port`, comma-separated for several).
    pub fn new(bootstrap: &str) -> Self {
        KafkaConfig {
            bootstrap: bootstrap
                .split(',')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(str::to_owned)
                .collect(),
            ..KafkaConfig::default()
        }
    }

    /// Checks every field.
    ///
    /// # Errors
    ///
    /// A [`ConfigError`] naming the first field out of range.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.bootstrap.is_empty() {
            return Err(ConfigError::new("bootstrap", "at least one host:port is required"));
        }
        for address in &self.bootstrap {
            let valid = address
                .rsplit_once(':')
                .is_some_and(|(host, port)| !host.is_empty() && port.parse::<u16>().is_ok());
            if !valid {
                return Err(ConfigError::new(
                    "bootstrap",
                    format!("`{address}` is not a host:port address"),
                ));
            }
        }
        if self.client_id.trim().is_empty() {
            return Err(ConfigError::new("client_id", "must not be empty"));
        }
        if self.request_timeout.is_zero() {
            return Err(ConfigError::new("request_timeout", "must be greater than zero"));
        }
        if self.topics.partitions < 1 {
            return Err(ConfigError::new("topics.partitions", "must be at least 1"));
        }
        if self.topics.replication_factor < 1 {
            return Err(ConfigError::new("topics.replication_factor", "must be at least 1"));
        }
        let p = &self.producer;
        if p.max_batch_bytes == 0 {
            return Err(ConfigError::new("producer.max_batch_bytes", "must be at least 1"));
        }
        if p.buffer_bytes < p.max_batch_bytes {
            return Err(ConfigError::new(
                "producer.buffer_bytes",
                "must be at least producer.max_batch_bytes",
            ));
        }
        if p.delivery_timeout.is_zero() {
            return Err(ConfigError::new("producer.delivery_timeout", "must be greater than zero"));
        }
        if p.linger > p.delivery_timeout {
            return Err(ConfigError::new(
                "producer.linger",
                "must not exceed producer.delivery_timeout",
            ));
        }
        if p.retry_backoff.is_zero() {
            return Err(ConfigError::new("producer.retry_backoff", "must be greater than zero"));
        }
        if p.max_in_flight == 0 || p.max_in_flight > MAX_IN_FLIGHT_IDEMPOTENT {
            return Err(ConfigError::new(
                "producer.max_in_flight",
                format!(
                    "must be between 1 and {MAX_IN_FLIGHT_IDEMPOTENT} (an idempotent producer may \
                     have at most {MAX_IN_FLIGHT_IDEMPOTENT} requests in flight per partition)"
                ),
            ));
        }
        let c = &self.consumer;
        if c.session_timeout < Duration::from_secs(1) {
            return Err(ConfigError::new("consumer.session_timeout", "must be at least 1s"));
        }
        if c.heartbeat_interval.is_zero() || c.heartbeat_interval * 3 > c.session_timeout {
            return Err(ConfigError::new(
                "consumer.heartbeat_interval",
                "must be greater than zero and at most a third of consumer.session_timeout",
            ));
        }
        if c.fetch_max_bytes == 0 || c.fetch_max_bytes > MAX_FETCH_BYTES {
            return Err(ConfigError::new(
                "consumer.fetch_max_bytes",
                format!("must be between 1 and {MAX_FETCH_BYTES} (128 MiB)"),
            ));
        }
        if c.max_decompressed_batch_bytes == 0
            || c.max_decompressed_batch_bytes > MAX_PARTITION_BUFFER_BYTES
        {
            return Err(ConfigError::new(
                "consumer.max_decompressed_batch_bytes",
                format!("must be between 1 and {MAX_PARTITION_BUFFER_BYTES}"),
            ));
        }
        let least_buffer = c
            .fetch_max_bytes
            .saturating_add(FETCH_RESPONSE_SLACK)
            .saturating_add(c.max_decompressed_batch_bytes);
        if c.partition_buffer_bytes < least_buffer {
            return Err(ConfigError::new(
                "consumer.partition_buffer_bytes",
                format!(
                    "must be at least consumer.fetch_max_bytes + {FETCH_RESPONSE_SLACK} + \
                     consumer.max_decompressed_batch_bytes ({least_buffer})"
                ),
            ));
        }
        if c.partition_buffer_bytes > MAX_PARTITION_BUFFER_BYTES {
            return Err(ConfigError::new(
                "consumer.partition_buffer_bytes",
                format!("must be at most {MAX_PARTITION_BUFFER_BYTES}"),
            ));
        }
        if c.assignors.is_empty() {
            return Err(ConfigError::new("consumer.assignors", "name at least one assignor"));
        }
        if let Some(unknown) = c.assignors.iter().find(|a| !ASSIGNORS.contains(&a.as_str())) {
            return Err(ConfigError::new(
                "consumer.assignors",
                format!("unknown assignor `{unknown}`: expected one of {}", ASSIGNORS.join(", ")),
            ));
        }
        if let Some((i, repeated)) = c
            .assignors
            .iter()
            .enumerate()
            .find(|(i, a)| c.assignors.get(..*i).is_some_and(|p| p.contains(a)))
        {
            return Err(ConfigError::new(
                "consumer.assignors",
                format!("`{repeated}` is listed twice (again at position {})", i + 1),
            ));
        }
        if self.metadata.max_age < Duration::from_millis(100) {
            return Err(ConfigError::new("metadata.max_age", "must be at least 100ms"));
        }
        self.security.validate()
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
