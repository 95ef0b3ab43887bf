//! The bus's rskafka client: metadata (topic partition counts) and topic creation. Produce and
//! fetch do not go through it: the producer and the partition readers speak Kafka themselves on
//! the `kafka-protocol` crate (see `connection`).
//!
//! Owns: [`KafkaClient`] (the shared rskafka client with a cache of topic partition counts, and
//! of rskafka partition clients for callers outside the bus, such as the workspace's group
//! tests, which produce their records through rskafka independently of the bus's producer) and
//! [`Admin`] (ensure-topic for users and tests).
//!
//! Invariants:
//! - One rskafka `Client` per bus; partition clients are created once per partition and shared.
//!   Dropping the last `KafkaClient` drops rskafka's connections (and the connection tasks that
//!   rskafka starts itself, outside our supervisor: they end with the client).
//! - rskafka's internal retries are bounded (see `backoff`): no call retries forever.
//! - `ensure_topic` is idempotent: a topic that exists with the requested partition count is
//!   accepted; one with another count is an error naming both counts.

use std::collections::HashMap;
use std::sync::Arc;

use parking_lot::Mutex;
use rskafka::client::partition::{PartitionClient, UnknownTopicHandling};
use rskafka::client::{Client, ClientBuilder};

use crate::config::KafkaConfig;
use crate::error::KafkaError;

/// The shared rskafka client of one bus (metadata, topic creation).
pub struct KafkaClient {
    client: Client,
    config: Arc<KafkaConfig>,
    partitions: Mutex<HashMap<(String, i32), Arc<PartitionClient>>>,
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
    pub async fn connect(config: Arc<KafkaConfig>) -> Result<KafkaClient, KafkaError> {
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
        Ok(KafkaClient {
            client,
            config,
            partitions: Mutex::new(HashMap::new()),
            counts: Mutex::new(HashMap::new()),
        })
    }

    /// The configuration.
    pub fn config(&self) -> &Arc<KafkaConfig> {
        &self.config
    }

    /// The partition count of `topic`, creating the topic (with the configured partition count)
    /// when it is missing and auto-creation is on.
    ///
    /// # Errors
    ///
    /// [`KafkaError::UnknownTopic`] when missing and not auto-created; [`KafkaError::Topic`] when
    /// metadata or creation fails.
    pub async fn partition_count(&self, topic: &str) -> Result<i32, KafkaError> {
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
    pub async fn ensure_topic(&self, topic: &str, partitions: i32) -> Result<(), KafkaError> {
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

    /// The (shared) rskafka client of one partition. The bus itself does not use it (its
    /// producer and readers have connections of their own); it serves callers that want to
    /// produce or fetch through rskafka, such as the workspace's group tests.
    ///
    /// # Errors
    ///
    /// [`KafkaError::Partition`] when the partition's leader cannot be found.
    pub async fn partition(
        &self,
        topic: &str,
        partition: i32,
    ) -> Result<Arc<PartitionClient>, KafkaError> {
        let key = (topic.to_owned(), partition);
        if let Some(client) = self.partitions.lock().get(&key) {
            return Ok(Arc::clone(client));
        }
        let client = self
            .client
            .partition_client(topic, partition, UnknownTopicHandling::Retry)
            .await
            .map_err(|e| KafkaError::Partition {
                topic: topic.to_owned(),
                partition,
                reason: e.to_string(),
            })?;
        let client = Arc::new(client);
        Ok(Arc::clone(self.partitions.lock().entry(key).or_insert(client)))
    }

    /// Forgets the cached partition count of `topic` (after a metadata change).
    pub fn forget_topic(&self, topic: &str) {
        self.counts.lock().remove(topic);
    }

    /// Forgets the cached client of one partition, so that the next [`KafkaClient::partition`]
    /// looks its leader up again and connects afresh (after a retriable produce or fetch error
    /// through it).
    pub fn invalidate_partition(&self, topic: &str, partition: i32) {
        self.partitions.lock().remove(&(topic.to_owned(), partition));
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
    /// As for [`KafkaClient::connect`].
    pub async fn connect(config: KafkaConfig) -> Result<Admin, KafkaError> {
        Ok(Admin { client: KafkaClient::connect(Arc::new(config)).await? })
    }

    /// Creates `topic` with `partitions` partitions unless it exists with that count.
    ///
    /// # Errors
    ///
    /// As for [`KafkaClient::ensure_topic`].
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
