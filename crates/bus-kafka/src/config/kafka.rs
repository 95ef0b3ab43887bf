//! [`KafkaConfig`], the whole configuration (its sections are the `config` module's), and its
//! validation, which names the first field out of range.

use std::time::Duration;

use bus_core::Partitioner;
use bus_core::errors::ConfigError;
use serde::{Deserialize, Serialize};

use super::limits::{FETCH_RESPONSE_SLACK, MAX_FETCH_BYTES, MAX_PARTITION_BUFFER_BYTES};
use super::{
    ASSIGNORS, ConsumerConfig, MAX_IN_FLIGHT_IDEMPOTENT, MetadataConfig, ProducerConfig,
    TopicConfig,
};
use crate::security::SecurityConfig;

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
