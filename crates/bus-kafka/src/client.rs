//! The bus's rskafka client: metadata (topic partition counts) and topic creation. Produce and
//! fetch do not go through it: the producer and the partition readers speak Kafka themselves on
//! the `kafka-protocol` crate (see `connection`).
//!
//! Owns: `KafkaClient` (the shared rskafka client with a cache of topic partition counts).
//!
//! Invariants:
//! - One rskafka `Client` per bus. Dropping the last `KafkaClient` drops rskafka's connections
//!   (and the connection tasks that rskafka starts itself, outside our supervisor: they end
//!   with the client).
//! - rskafka's internal retries are bounded (see `backoff`): no call retries forever.
//! - `ensure_topic` is idempotent: a topic that exists with the requested partition count is
//!   accepted; one with another count is an error naming both counts.

use std::collections::HashMap;
use std::sync::Arc;

use parking_lot::Mutex;
use rskafka::client::{Client, ClientBuilder};

use crate::config::KafkaConfig;
use crate::error::KafkaError;

/// The shared rskafka client of one bus (metadata, topic creation).
pub(crate) struct KafkaClient {
    client: Client,
    config: Arc<KafkaConfig>,
    counts: Mutex<HashMap<String, i32>>,
}

impl std::fmt::Debug for KafkaClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KafkaClient").field("bootstrap", &self.config.bootstrap).finish()
    }
}

impl KafkaClient {
    /// Connects to the cluster.
    ///
    /// # Errors
    ///
    /// [`KafkaError::Config`] for an invalid configuration, [`KafkaError::Connect`] when no
    /// bootstrap broker answers.
    pub(crate) async fn connect(config: Arc<KafkaConfig>) -> Result<KafkaClient, KafkaError> {
        config.validate()?;
        let connect = ClientBuilder::new(config.bootstrap.clone())
            .client_id(config.client_id.as_str())
            .backoff_config(backoff(&config))
            .build();
        let client = tokio::time::timeout(config.request_timeout, connect)
            .await
            .map_err(|_| KafkaError::Connect {
                bootstrap: config.bootstrap.join(","),
                reason: format!("no answer within {:?}", config.request_timeout),
            })?
            .map_err(|e| KafkaError::Connect {
                bootstrap: config.bootstrap.join(","),
                reason: e.to_string(),
            })?;
        Ok(KafkaClient { client, config, counts: Mutex::new(HashMap::new()) })
    }

    /// The configuration.
    pub(crate) fn config(&self) -> &Arc<KafkaConfig> {
        &self.config
    }

    /// The partition count of `topic`, creating the topic (with the configured partition count)
    /// when it is missing and auto-creation is on.
    ///
    /// # Errors
    ///
    /// [`KafkaError::UnknownTopic`] when missing and not auto-created; [`KafkaError::Topic`] when
    /// metadata or creation fails.
    pub(crate) async fn partition_count(&self, topic: &str) -> Result<i32, KafkaError> {
        if let Some(count) = self.counts.lock().get(topic) {
            return Ok(*count);
        }
        let count = match self.lookup(topic).await? {
            Some(count) => count,
            None if self.config.topics.auto_create => {
                self.ensure_topic(topic, self.config.topics.partitions).await?;
                self.config.topics.partitions
            }
            None => return Err(KafkaError::UnknownTopic { topic: topic.to_owned() }),
        };
        self.counts.lock().insert(topic.to_owned(), count);
        Ok(count)
    }

    /// The partition count of `topic` from fresh metadata, `None` when it does not exist.
    pub(crate) async fn lookup(&self, topic: &str) -> Result<Option<i32>, KafkaError> {
        let topics = self.client.list_topics().await.map_err(|e| KafkaError::Topic {
            topic: topic.to_owned(),
            reason: format!("metadata request failed: {e}"),
        })?;
        Ok(topics
            .into_iter()
            .find(|t| t.name == topic)
            .map(|t| i32::try_from(t.partitions.len()).unwrap_or(i32::MAX)))
    }

    /// Creates `topic` with `partitions` partitions unless it exists; accepts an existing topic
    /// with that many partitions.
    ///
    /// # Errors
    ///
    /// [`KafkaError::Topic`] when creation fails or the topic exists with another count.
    pub(crate) async fn ensure_topic(
        &self,
        topic: &str,
        partitions: i32,
    ) -> Result<(), KafkaError> {
        let fail = |reason: String| KafkaError::Topic { topic: topic.to_owned(), reason };
        if let Some(existing) = self.lookup(topic).await? {
            return if existing == partitions {
                self.counts.lock().insert(topic.to_owned(), existing);
                Ok(())
            } else {
                Err(fail(format!("it exists with {existing} partitions, not {partitions}")))
            };
        }
        let controller = self.client.controller_client().map_err(|e| fail(e.to_string()))?;
        let timeout_ms = i32::try_from(self.config.request_timeout.as_millis()).unwrap_or(i32::MAX);
        let created = controller
            .create_topic(topic, partitions, self.config.topics.replication_factor, timeout_ms)
            .await;
        if let Err(error) = created {
            // Another client may have created it in between: accept it if it matches.
            match self.lookup(topic).await? {
                Some(existing) if existing == partitions => {}
                Some(existing) => {
                    return Err(fail(format!(
                        "it exists with {existing} partitions, not {partitions}"
                    )));
                }
                None => return Err(fail(format!("create failed: {error}"))),
            }
        }
        self.counts.lock().insert(topic.to_owned(), partitions);
        Ok(())
    }
}

/// rskafka's retry policy for every request of this client. rskafka retries connection errors,
/// leader moves and unknown partitions inside each call, and by default does so forever
/// (`deadline: None`): a metadata call (or a partition client's produce) to an unreachable
/// broker would never return. Bounded here by half of `request_timeout` of backoff in total
/// (doubling from 100 ms, at most 1 s per wait), so that a call gives up with its real cause
/// (connection refused, leader not available) before a caller's `request_timeout` cuts it
/// short; the callers retry further on their own terms.
fn backoff(config: &KafkaConfig) -> rskafka::BackoffConfig {
    let deadline = config.request_timeout / 2;
    rskafka::BackoffConfig {
        init_backoff: std::time::Duration::from_millis(100).min(deadline),
        max_backoff: std::time::Duration::from_secs(1),
        base: 2.0,
        deadline: Some(deadline),
    }
}
