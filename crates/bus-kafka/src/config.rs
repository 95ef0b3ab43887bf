//! The Kafka backend's configuration: serde structs with defaults, validated field by field.
//!
//! Owns: [`KafkaConfig`] and its sections [`ProducerConfig`], [`ConsumerConfig`],
//! [`TopicConfig`], [`Compression`] and [`IsolationLevel`]. [`KafkaConfig::validate`] names the
//! first field out of
//! range (`producer.linger`, `consumer.session_timeout`, …).

use std::time::Duration;

use bus_core::{ConfigError, Partitioner};
use serde::{Deserialize, Serialize};

/// The largest `consumer.fetch_max_bytes`: a Fetch response is read into memory whole.
pub const MAX_FETCH_BYTES: usize = 128 * 1024 * 1024;

/// The room a Fetch response may take beyond `consumer.fetch_max_bytes` (a broker returns the
/// first batch whole even when it is larger: up to Kafka's default `message.max.bytes` of
/// 1 MiB, plus framing); a larger response is refused.
pub const FETCH_RESPONSE_SLACK: usize = 1024 * 1024 + 64 * 1024;

/// The largest `consumer.partition_buffer_bytes` (and `consumer.max_decompressed_batch_bytes`).
pub const MAX_PARTITION_BUFFER_BYTES: usize = 4 * 1024 * 1024 * 1024 - 1;

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

/// The producer: batching per partition, buffer, retries.
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
    /// Partition assignors offered to the group, preferred first: `range`, `roundrobin`.
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
        if let Some(unknown) =
            c.assignors.iter().find(|a| !["range", "roundrobin"].contains(&a.as_str()))
        {
            return Err(ConfigError::new(
                "consumer.assignors",
                format!("unknown assignor `{unknown}`: expected range or roundrobin"),
            ));
        }
        Ok(())
    }
}
