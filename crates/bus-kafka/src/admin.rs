//! Topic administration for services and tests.
//!
//! Owns: [`Admin`], a connection to the cluster for administrative requests (today: ensure a
//! topic exists with a partition count, read a topic's partition count), independent of any
//! bus.

use std::sync::Arc;

use crate::client::KafkaClient;
use crate::config::KafkaConfig;
use crate::error::KafkaError;

/// Topic administration for users and tests.
#[derive(Debug)]
pub struct Admin {
    client: KafkaClient,
}

impl Admin {
    /// Connects with `config`.
    ///
    /// # Errors
    ///
    /// [`KafkaError::Config`] for an invalid configuration, [`KafkaError::Connect`] when no
    /// bootstrap broker answers.
    pub async fn connect(config: KafkaConfig) -> Result<Admin, KafkaError> {
        Ok(Admin { client: KafkaClient::connect(Arc::new(config)).await? })
    }

    /// Creates `topic` with `partitions` partitions unless it exists with that count.
    ///
    /// # Errors
    ///
    /// [`KafkaError::Topic`] when creation fails or the topic exists with another count.
    pub async fn ensure_topic(&self, topic: &str, partitions: i32) -> Result<(), KafkaError> {
        self.client.ensure_topic(topic, partitions).await
    }

    /// The partition count of `topic`, `None` when it does not exist.
    ///
    /// # Errors
    ///
    /// [`KafkaError::Topic`] when the metadata request fails.
    pub async fn partitions(&self, topic: &str) -> Result<Option<i32>, KafkaError> {
        self.client.lookup(topic).await
    }
}
