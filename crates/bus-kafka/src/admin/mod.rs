//! Topic and group administration on Kafka: the bus-core [`AdminBackend`] over the cluster
//! client, for a bus ([`EventBus::admin`](bus_core::EventBus::admin)) or on its own
//! ([`connect`]); bus-core's administration types are public here too, so that a Kafka service
//! finds them all in one module.
//!
//! Owns: `KafkaAdmin` and [`connect`]; the requests themselves, one concept per module: `topics`
//! (CreateTopics with configuration, Metadata and DescribeConfigs, DeleteTopics,
//! CreatePartitions, all at the controller or a bootstrap broker), `offsets` (start and end
//! offsets with ListOffsets at each partition's leader), `groups` (ListGroups on every broker,
//! DescribeGroups and OffsetFetch at the group's coordinator, lag) and `cluster` (the brokers
//! and the API versions each offers and the client speaks).
//!
//! Invariants:
//! - Every failure names the topic or group, the broker, and Kafka's error code where the
//!   broker answered one (its name and number, and [`AdminError::code`]).
//! - Every request is bounded by `request_timeout` (finding the cluster's brokers is retried
//!   within it, as every call of the cluster client is); nothing starts a task.
//! - An API a broker does not offer in a version we implement is an
//!   [`AdminError::Unsupported`] naming the broker and the API's versions on both sides.

mod cluster;
mod groups;
mod offsets;
mod topics;

use std::sync::Arc;

pub use bus_core::admin::*;
use bus_core::backend::{AdminBackend, BoxFuture, PartitionReader};
use bus_core::{StartAt, TopicPartition};

use crate::client::KafkaClient;
use crate::config::kafka::KafkaConfig;
use crate::connection::RequestError;
use crate::error::KafkaError;
use crate::fetch::KafkaReader;

/// Connects with `config` and returns topic and group administration on the cluster, without a
/// bus (a bus has its own: [`EventBus::admin`](bus_core::EventBus::admin)).
///
/// # Errors
///
/// [`KafkaError::Config`] for an invalid configuration, [`KafkaError::Connect`] when no
/// bootstrap broker answers within `request_timeout`.
pub async fn connect(config: KafkaConfig) -> Result<Admin, KafkaError> {
    let client = Arc::new(KafkaClient::connect(Arc::new(config)).await?);
    Ok(Admin::new(Arc::new(KafkaAdmin { client })))
}

/// The Kafka backend's administration (see the module documentation).
#[derive(Debug)]
pub(crate) struct KafkaAdmin {
    pub(crate) client: Arc<KafkaClient>,
}

/// A request that could not be sent: unsupported by the broker, or a transport failure.
fn request_failed(operation: &'static str, error: RequestError) -> AdminError {
    match error {
        RequestError::Unsupported { .. } => {
            AdminError::Unsupported { operation, reason: error.to_string() }
        }
        other => AdminError::Unavailable { reason: format!("{operation}: {other}") },
    }
}

/// The cluster could not be reached for `operation`.
fn unreachable(operation: &str, reason: String) -> AdminError {
    AdminError::Unavailable { reason: format!("{operation}: {reason}") }
}

impl AdminBackend for KafkaAdmin {
    fn name(&self) -> &'static str {
        "kafka"
    }

    fn create_topic<'a>(&'a self, topic: &'a NewTopic) -> BoxFuture<'a, Result<(), AdminError>> {
        Box::pin(topics::create(&self.client, topic))
    }

    fn list_topics<'a>(
        &'a self,
        names: Option<&'a [String]>,
    ) -> BoxFuture<'a, Result<Vec<TopicListing>, AdminError>> {
        Box::pin(topics::list(&self.client, names))
    }

    fn describe_topic<'a>(
        &'a self,
        topic: &'a str,
    ) -> BoxFuture<'a, Result<TopicDescription, AdminError>> {
        Box::pin(topics::describe(&self.client, topic))
    }

    fn delete_topic<'a>(&'a self, topic: &'a str) -> BoxFuture<'a, Result<(), AdminError>> {
        Box::pin(topics::delete(&self.client, topic))
    }

    fn add_partitions<'a>(
        &'a self,
        topic: &'a str,
        total: i32,
    ) -> BoxFuture<'a, Result<(), AdminError>> {
        Box::pin(topics::add_partitions(&self.client, topic, total))
    }

    fn list_groups(&self) -> BoxFuture<'_, Result<Vec<GroupListing>, AdminError>> {
        Box::pin(groups::list(&self.client))
    }

    fn describe_group<'a>(
        &'a self,
        group: &'a str,
    ) -> BoxFuture<'a, Result<GroupDescription, AdminError>> {
        Box::pin(groups::describe(&self.client, group))
    }

    fn describe_cluster(&self) -> BoxFuture<'_, Result<ClusterDescription, AdminError>> {
        Box::pin(cluster::describe(&self.client))
    }

    fn read<'a>(
        &'a self,
        partition: &'a TopicPartition,
        start: StartAt,
    ) -> BoxFuture<'a, Result<Box<dyn PartitionReader>, AdminError>> {
        Box::pin(async move {
            let topic = partition.topic.to_string();
            let count = self.client.lookup(&topic).await.map_err(|e| AdminError::Topic {
                topic: topic.clone(),
                code: None,
                reason: e.to_string(),
            })?;
            match count {
                None => Err(AdminError::topic_code(&topic, 3, "no such topic")),
                Some(count) if !(0..count).contains(&partition.partition) => {
                    Err(AdminError::topic_code(
                        &topic,
                        3,
                        format!("no partition {} (it has {count})", partition.partition),
                    ))
                }
                Some(_) => {
                    let reader = KafkaReader::new(
                        Arc::clone(&self.client),
                        "(admin)".to_owned(),
                        partition.clone(),
                        start,
                        // A position no longer in the partition moves to its oldest record.
                        bus_core::subscription::OffsetReset::Earliest,
                    );
                    Ok(Box::new(reader) as Box<dyn PartitionReader>)
                }
            }
        })
    }
}

/// A topic failure the broker answered with `code` (and maybe a message).
fn topic_refused(topic: &str, broker: &str, code: i16, message: Option<&str>) -> AdminError {
    let message = message.filter(|m| !m.is_empty()).map(|m| format!(": {m}")).unwrap_or_default();
    AdminError::Topic {
        topic: topic.to_owned(),
        code: Some(code),
        reason: format!("broker {broker}: {}{message}", crate::connection::code_name(code)),
    }
}

/// A group failure the broker answered with `code`.
fn group_refused(group: &str, broker: &str, code: i16, context: &str) -> AdminError {
    AdminError::Group {
        group: group.to_owned(),
        code: Some(code),
        reason: format!("broker {broker}: {context}: {}", crate::connection::code_name(code)),
    }
}
