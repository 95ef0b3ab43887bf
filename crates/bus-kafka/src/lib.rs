//! The Kafka backend of the event bus: a batching produce loop per partition, consumer groups
//! and their partition readers (Fetch), all speaking Kafka on the `kafka-protocol` crate over
//! connections of our own; rskafka serves metadata and topic creation. Every task is in the
//! bus's supervised tree.
//!
//! ```no_run
//! # async fn example() -> Result<(), Box<dyn std::error::Error>> {
//! use bus_kafka::KafkaConfig;
//!
//! let bus = bus_kafka::connect(KafkaConfig::new("127.0.0.1:9092")).await?;
//! // …publish and subscribe through `bus` (a `bus_core::EventBus`)…
//! bus.shutdown(std::time::Duration::from_secs(10)).await?;
//! # Ok(())
//! # }
//! ```

mod backend;
mod client;
mod config;
mod connection;
mod error;
mod fetch;
mod group;
mod leader;
mod producer;

use std::sync::Arc;

use bus_core::EventBus;

pub use backend::KafkaBackend;
pub use client::{Admin, KafkaClient};
pub use config::{
    Compression, ConsumerConfig, KafkaConfig, MAX_FETCH_BYTES, ProducerConfig, TopicConfig,
};
pub use error::KafkaError;

/// Connects to the cluster and returns an event bus on it. The bus's tasks live under
/// `bus/kafka` (producer, groups) and `bus/consumer` (subscriptions).
///
/// # Errors
///
/// [`KafkaError::Config`] naming an invalid field; [`KafkaError::Connect`] when no bootstrap
/// broker answers.
pub async fn connect(config: KafkaConfig) -> Result<EventBus, KafkaError> {
    let config = Arc::new(config);
    let client = Arc::new(KafkaClient::connect(Arc::clone(&config)).await?);
    let supervisor = EventBus::supervisor();
    let scope = supervisor.root().child("kafka");
    let producer = producer::Producer::start(scope.child("producer"), Arc::clone(&client))?;
    let backend = Arc::new(KafkaBackend::new(scope, client, producer));
    Ok(EventBus::with_backend(supervisor, backend))
}
