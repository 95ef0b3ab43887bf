//! The bus's cluster client: metadata (topic partition counts) and topic creation, on our own
//! connections (see `connection`), like every other request of the crate.
//!
//! Owns: `KafkaClient` (the configuration, a cache of topic partition counts, Metadata through
//! the bootstrap brokers, CreateTopics at the controller), [`TopicInfo`].
//!
//! Invariants:
//! - A cached partition count is trusted for `metadata.max_age` (Kafka's
//!   `metadata.max.age.ms`): [`KafkaClient::partition_count`] reads it again after that, and
//!   [`KafkaClient::refresh_partition_count`] at once. Partitions added to a topic are seen by
//!   the next read.
//! - Every call is bounded: each connection and request by `request_timeout`, and the retries
//!   of a call (connection failures, a controller moving) by `request_timeout` in all, doubling
//!   from 100 ms to at most 1 s between attempts. The last failure met is the one reported.
//! - No task is started here: the caller's future drives every request, and nothing outlives
//!   the call (a connection is opened per call and dropped with it; these calls are rare: once
//!   per topic and `metadata.max_age`, or per administrative request).
//! - `ensure_topic` is idempotent: a topic that exists with the requested partition count is
//!   accepted; one with another count is an error naming both counts.
//! - Metadata is asked with `allow_auto_topic_creation = false`: topics are created only by
//!   `ensure_topic`, with the configured partition count and replication factor.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use bus_supervisor::Backoff;
use kafka_protocol::messages::create_topics_request::{CreatableTopic, CreateTopicsRequest};
use kafka_protocol::messages::metadata_request::MetadataRequestTopic;
use kafka_protocol::messages::{MetadataRequest, MetadataResponse, TopicName};
use kafka_protocol::protocol::StrBytes;
use parking_lot::Mutex;
use tokio::time::Instant;

use crate::config::kafka::KafkaConfig;
use crate::connection::{Connection, RequestError, code_name};
use crate::connector::Connector;
use crate::error::KafkaError;
use crate::leader::Leaders;

/// UNKNOWN_TOPIC_OR_PARTITION: the topic does not exist.
const UNKNOWN_TOPIC_OR_PARTITION: i16 = 3;
/// TOPIC_ALREADY_EXISTS.
const TOPIC_ALREADY_EXISTS: i16 = 36;
/// NOT_CONTROLLER: the controller moved since the metadata was read.
const NOT_CONTROLLER: i16 = 41;

/// The delays between the attempts of one call.
const RETRY: Backoff =
    Backoff { initial: Duration::from_millis(100), max: Duration::from_secs(1), multiplier: 2.0 };

/// The shared cluster client of one bus (metadata, topic creation).
pub(crate) struct KafkaClient {
    config: Arc<KafkaConfig>,
    connector: Arc<Connector>,
    /// Partition counts, and when each was read.
    counts: Mutex<HashMap<String, (i32, Instant)>>,
    /// The partitions' leaders (the data plane's lookups).
    leaders: Leaders,
}

/// What the cluster says of one topic.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct TopicInfo {
    /// Its partition count.
    pub(crate) partitions: i32,
    /// Whether it is one of Kafka's internal topics (`__consumer_offsets`, …).
    pub(crate) internal: bool,
}

impl std::fmt::Debug for KafkaClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KafkaClient").field("bootstrap", &self.config.bootstrap).finish()
    }
}

/// Why one attempt of a call failed, and whether another attempt may succeed.
struct Attempt {
    reason: String,
    retriable: bool,
}

impl From<RequestError> for Attempt {
    fn from(error: RequestError) -> Self {
        // A TLS or SASL refusal fails the same way again (and the connector holds the broker
        // back meanwhile): reported at once.
        let retriable = !matches!(
            error,
            RequestError::Unsupported { .. }
                | RequestError::Encode { .. }
                | RequestError::TooLarge { .. }
                | RequestError::Tls { .. }
                | RequestError::Auth { .. }
        );
        Attempt { reason: error.to_string(), retriable }
    }
}

impl KafkaClient {
    /// Checks the configuration (reading its PEM files and password variable) and that a
    /// bootstrap broker answers (a connection, its TLS handshake, ApiVersions and SASL
    /// exchanges), within `request_timeout`.
    ///
    /// # Errors
    ///
    /// [`KafkaError::Config`] for an invalid configuration, [`KafkaError::Connect`] when no
    /// bootstrap broker answers (at once when one refuses the TLS handshake or the SASL
    /// credentials).
    pub(crate) async fn connect(config: Arc<KafkaConfig>) -> Result<KafkaClient, KafkaError> {
        config.validate()?;
        let connector = Arc::new(Connector::new(Arc::clone(&config))?);
        let leaders = Leaders::new(Arc::clone(&connector), config.metadata.max_age);
        let client = KafkaClient { config, connector, counts: Mutex::new(HashMap::new()), leaders };
        client.retrying(|| client.bootstrap_connection()).await.map_err(|reason| {
            KafkaError::Connect { bootstrap: client.config.bootstrap.join(","), reason }
        })?;
        Ok(client)
    }

    /// The configuration.
    pub(crate) fn config(&self) -> &Arc<KafkaConfig> {
        &self.config
    }

    /// How connections to the brokers are opened.
    pub(crate) fn connector(&self) -> &Arc<Connector> {
        &self.connector
    }

    /// The partitions' leaders.
    pub(crate) fn leaders(&self) -> &Leaders {
        &self.leaders
    }

    /// The partition count of `topic`, creating the topic (with the configured partition count)
    /// when it is missing and auto-creation is on.
    ///
    /// # Errors
    ///
    /// [`KafkaError::UnknownTopic`] when missing and not auto-created; [`KafkaError::Topic`] when
    /// metadata or creation fails.
    pub(crate) async fn partition_count(&self, topic: &str) -> Result<i32, KafkaError> {
        let max_age = self.config.metadata.max_age;
        if let Some((count, read)) = self.counts.lock().get(topic)
            && read.elapsed() < max_age
        {
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
        self.counts.lock().insert(topic.to_owned(), (count, Instant::now()));
        Ok(count)
    }

    /// The partition count of `topic` read from the cluster now (the cache updated, or the
    /// topic forgotten when it no longer exists); `None` when it does not exist.
    ///
    /// The producer's hook for partitions added to a topic: it keeps its own view of each
    /// topic it writes to, so it calls this every `metadata.max_age` for each of them, and
    /// spreads over the new count when it grew.
    ///
    /// # Errors
    ///
    /// As for [`KafkaClient::lookup`].
    #[allow(dead_code)] // the producer's hook: see the method's documentation
    pub(crate) async fn refresh_partition_count(
        &self,
        topic: &str,
    ) -> Result<Option<i32>, KafkaError> {
        let count = self.lookup(topic).await?;
        let mut counts = self.counts.lock();
        match count {
            Some(count) => {
                counts.insert(topic.to_owned(), (count, Instant::now()));
            }
            None => {
                counts.remove(topic);
            }
        }
        Ok(count)
    }

    /// The topics of the cluster with their partition counts: every topic when `topics` is
    /// `None`, else those of `topics` that exist. One Metadata request (retried as every call
    /// is); the cache of partition counts is updated with what it says.
    ///
    /// # Errors
    ///
    /// [`KafkaError::Topic`] (naming the topics asked for, or `*`) when no broker answers within
    /// the call's bound, or the answer is an error for the whole request.
    pub(crate) async fn topics(
        &self,
        topics: Option<&[String]>,
    ) -> Result<BTreeMap<String, TopicInfo>, KafkaError> {
        let what = topics.map_or_else(|| "*".to_owned(), |t| t.join(","));
        let fail = |reason: String| KafkaError::Topic {
            topic: what.clone(),
            reason: format!("metadata request failed: {reason}"),
        };
        if topics.is_some_and(<[String]>::is_empty) {
            return Ok(BTreeMap::new());
        }
        let response = self.retrying(|| self.metadata_of(topics)).await.map_err(fail)?;
        let mut found = BTreeMap::new();
        for topic in &response.topics {
            let Some(name) = topic.name.as_ref() else { continue };
            match topic.error_code {
                0 => {
                    let partitions = i32::try_from(topic.partitions.len()).unwrap_or(i32::MAX);
                    found.insert(
                        name.0.as_str().to_owned(),
                        TopicInfo { partitions, internal: topic.is_internal },
                    );
                }
                UNKNOWN_TOPIC_OR_PARTITION => {}
                // A topic being created or deleted, not authorised…: left out this time.
                code => {
                    tracing::debug!(
                        topic = %name.0.as_str(), error = %code_name(code),
                        "topic left out of the metadata"
                    );
                }
            }
        }
        let now = Instant::now();
        let mut counts = self.counts.lock();
        for (name, info) in &found {
            counts.insert(name.clone(), (info.partitions, now));
        }
        Ok(found)
    }

    /// The partition count of `topic` from fresh metadata, `None` when it does not exist.
    ///
    /// # Errors
    ///
    /// [`KafkaError::Topic`] when no broker answers the Metadata request within the call's
    /// bound, naming the last failure.
    pub(crate) async fn lookup(&self, topic: &str) -> Result<Option<i32>, KafkaError> {
        let fail = |reason: String| KafkaError::Topic {
            topic: topic.to_owned(),
            reason: format!("metadata request failed: {reason}"),
        };
        let response = self.retrying(|| self.metadata(Some(topic))).await.map_err(fail)?;
        let name = TopicName(StrBytes::from_string(topic.to_owned()));
        let Some(found) = response.topics.iter().find(|t| t.name.as_ref() == Some(&name)) else {
            return Ok(None);
        };
        match found.error_code {
            0 => Ok(Some(i32::try_from(found.partitions.len()).unwrap_or(i32::MAX))),
            UNKNOWN_TOPIC_OR_PARTITION => Ok(None),
            code => Err(fail(code_name(code))),
        }
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
        let mismatch =
            |existing: i32| fail(format!("it exists with {existing} partitions, not {partitions}"));
        if let Some(existing) = self.lookup(topic).await? {
            if existing != partitions {
                return Err(mismatch(existing));
            }
        } else {
            let created = self.retrying(|| self.create_topic(topic, partitions)).await;
            if let Err(reason) = created {
                // Another client may have created it in between: accept it if it matches.
                match self.lookup(topic).await? {
                    Some(existing) if existing == partitions => {}
                    Some(existing) => return Err(mismatch(existing)),
                    None => return Err(fail(format!("create failed: {reason}"))),
                }
            }
        }
        self.counts.lock().insert(topic.to_owned(), (partitions, Instant::now()));
        Ok(())
    }

    /// The cluster's metadata for `topics` (every topic when `None`; brokers and controller
    /// only when empty), retried as every call is.
    ///
    /// # Errors
    ///
    /// The last failure, when no broker answered within the call's bound.
    pub(crate) async fn cluster_metadata(
        &self,
        topics: Option<&[String]>,
    ) -> Result<MetadataResponse, String> {
        self.retrying(|| self.metadata_of(topics)).await
    }

    /// A connection to a bootstrap broker, retried as every call is.
    ///
    /// # Errors
    ///
    /// The last failure, when none answered within the call's bound.
    pub(crate) async fn any_broker(&self) -> Result<Connection, String> {
        self.retrying(|| self.bootstrap_connection()).await
    }

    /// A connection to the controller the metadata names (the bootstrap broker asked when it
    /// names none), retried as every call is.
    ///
    /// # Errors
    ///
    /// The last failure, when no broker answered within the call's bound.
    pub(crate) async fn controller(&self) -> Result<Connection, String> {
        self.retrying(|| async {
            let timeout = self.config.request_timeout;
            let mut connection = self.bootstrap_connection().await?;
            let metadata = metadata_on(&mut connection, Some(&[]), timeout).await?;
            let controller = metadata
                .brokers
                .iter()
                .find(|b| b.node_id == metadata.controller_id)
                .map(|b| address(b.host.as_str(), b.port));
            match controller {
                Some(controller) if controller != connection.broker() => {
                    Ok(self.open(&controller).await?)
                }
                _ => Ok(connection),
            }
        })
        .await
    }

    /// A connection to `broker` (`host:port`), one attempt.
    ///
    /// # Errors
    ///
    /// Why it could not be opened.
    pub(crate) async fn broker(&self, broker: &str) -> Result<Connection, RequestError> {
        self.open(broker).await
    }

    /// Runs `attempt` until it succeeds, fails for good, or `request_timeout` has passed since
    /// the first attempt (waiting [`RETRY`] between attempts); the last failure is returned.
    async fn retrying<T, F, Fut>(&self, mut attempt: F) -> Result<T, String>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, Attempt>>,
    {
        let give_up = Instant::now() + self.config.request_timeout;
        let mut failures: u32 = 0;
        let mut last: Option<String> = None;
        loop {
            let failure = match tokio::time::timeout_at(give_up, attempt()).await {
                Ok(Ok(value)) => return Ok(value),
                Ok(Err(failure)) => failure,
                Err(_) => {
                    let earlier = last.map(|l| format!("; the attempt before: {l}"));
                    return Err(format!(
                        "no answer from the cluster (bootstrap {}) within request_timeout ({:?}){}",
                        self.config.bootstrap.join(","),
                        self.config.request_timeout,
                        earlier.unwrap_or_default()
                    ));
                }
            };
            let wake = Instant::now() + RETRY.delay(failures);
            if !failure.retriable || wake >= give_up {
                return Err(failure.reason);
            }
            failures = failures.saturating_add(1);
            last = Some(failure.reason);
            tokio::time::sleep_until(wake).await;
        }
    }

    /// A connection to the first bootstrap broker that answers, in the configured order.
    async fn bootstrap_connection(&self) -> Result<Connection, Attempt> {
        let mut last =
            Attempt { reason: "no bootstrap broker configured".into(), retriable: false };
        for broker in &self.config.bootstrap {
            match self.open(broker).await {
                Ok(connection) => return Ok(connection),
                Err(error) => last = error.into(),
            }
        }
        Err(last)
    }

    async fn open(&self, broker: &str) -> Result<Connection, RequestError> {
        self.connector.open(broker).await
    }

    /// Metadata for `topic` (all topics when `None`) from a bootstrap broker.
    async fn metadata(&self, topic: Option<&str>) -> Result<MetadataResponse, Attempt> {
        let topics = topic.map(|t| vec![t.to_owned()]);
        self.metadata_of(topics.as_deref()).await
    }

    /// Metadata for `topics` (all topics when `None`) from a bootstrap broker.
    async fn metadata_of(&self, topics: Option<&[String]>) -> Result<MetadataResponse, Attempt> {
        let mut connection = self.bootstrap_connection().await?;
        Ok(metadata_on(&mut connection, topics, self.config.request_timeout).await?)
    }

    /// One CreateTopics request at the controller the metadata names.
    async fn create_topic(&self, topic: &str, partitions: i32) -> Result<(), Attempt> {
        let timeout = self.config.request_timeout;
        let mut connection = self.bootstrap_connection().await?;
        let metadata = metadata_on(&mut connection, Some(&[topic.to_owned()]), timeout).await?;
        let controller = metadata
            .brokers
            .iter()
            .find(|b| b.node_id == metadata.controller_id)
            .map(|b| address(b.host.as_str(), b.port));
        let mut connection = match controller {
            Some(controller) if controller != connection.broker() => self.open(&controller).await?,
            // The broker asked is the controller, or names none (v0 metadata, a single broker):
            // ask it.
            _ => connection,
        };
        let version = connection.version::<CreateTopicsRequest>()?;
        let mut wanted = CreatableTopic::default();
        wanted.name = TopicName(StrBytes::from_string(topic.to_owned()));
        wanted.num_partitions = partitions;
        wanted.replication_factor = self.config.topics.replication_factor;
        let mut request = CreateTopicsRequest::default();
        request.topics = vec![wanted];
        request.timeout_ms = i32::try_from(timeout.as_millis()).unwrap_or(i32::MAX);
        let response = connection.send(&request, version, timeout).await?;
        let code = response.topics.first().map_or(0, |t| t.error_code);
        let message = response
            .topics
            .first()
            .and_then(|t| t.error_message.as_ref())
            .map(|m| format!(": {}", m.as_str()))
            .unwrap_or_default();
        match code {
            0 | TOPIC_ALREADY_EXISTS => Ok(()),
            NOT_CONTROLLER => Err(Attempt {
                reason: format!("broker {}: {}{message}", connection.broker(), code_name(code)),
                retriable: true,
            }),
            code => Err(Attempt {
                reason: format!("broker {}: {}{message}", connection.broker(), code_name(code)),
                retriable: false,
            }),
        }
    }
}

/// Metadata for `topics` (all topics when `None`) on `connection`.
async fn metadata_on(
    connection: &mut Connection,
    topics: Option<&[String]>,
    timeout: Duration,
) -> Result<MetadataResponse, RequestError> {
    let version = connection.version::<MetadataRequest>()?;
    let mut request = MetadataRequest::default();
    request.topics = topics.map(|topics| {
        topics
            .iter()
            .map(|topic| {
                let mut wanted = MetadataRequestTopic::default();
                wanted.name = Some(TopicName(StrBytes::from_string(topic.clone())));
                wanted
            })
            .collect()
    });
    request.allow_auto_topic_creation = false;
    connection.send(&request, version, timeout).await
}

/// `host:port`, `[host]:port` for an IPv6 address.
pub(crate) fn address(host: &str, port: i32) -> String {
    if host.contains(':') { format!("[{host}]:{port}") } else { format!("{host}:{port}") }
}
