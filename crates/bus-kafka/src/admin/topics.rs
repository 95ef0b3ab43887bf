//! Topic administration requests: CreateTopics with configuration and DeleteTopics and
//! CreatePartitions at the controller; Metadata, DescribeConfigs and the partitions' offsets
//! for a description.
//!
//! Owns: `create`, `list`, `describe`, `delete`, `add_partitions`.
//!
//! Invariants: a topic created or deleted here is waited for in the metadata (up to
//! `request_timeout`), so the caller's next request sees it (brokers apply both
//! asynchronously); the configuration described is every entry the broker reports, defaults
//! marked (`config_source` DEFAULT_CONFIG).

use std::collections::BTreeMap;
use std::time::Duration;

use bus_core::{
    admin::AdminError, admin::ConfigEntry, admin::NewTopic, admin::PartitionDescription,
    admin::TopicDescription, admin::TopicListing,
};
use kafka_protocol::messages::create_partitions_request::CreatePartitionsTopic;
use kafka_protocol::messages::create_topics_request::{CreatableTopic, CreatableTopicConfig};
use kafka_protocol::messages::delete_topics_request::DeleteTopicState;
use kafka_protocol::messages::describe_configs_request::DescribeConfigsResource;
use kafka_protocol::messages::{
    CreatePartitionsRequest, CreateTopicsRequest, DeleteTopicsRequest, DescribeConfigsRequest,
    TopicName,
};
use kafka_protocol::protocol::StrBytes;
use tokio::time::Instant;

use super::{offsets, request_failed, topic_refused, unreachable};
use crate::client::KafkaClient;

/// UNKNOWN_TOPIC_OR_PARTITION.
const UNKNOWN_TOPIC_OR_PARTITION: i16 = 3;
/// DescribeConfigs' resource type of a topic.
const TOPIC_RESOURCE: i8 = 2;
/// DescribeConfigs' `config_source` of a default value.
const DEFAULT_CONFIG: i8 = 5;
/// How often the metadata is read while waiting for a change to show.
const SETTLE_POLL: Duration = Duration::from_millis(50);

fn name(topic: &str) -> TopicName {
    TopicName(StrBytes::from_string(topic.to_owned()))
}

fn timeout_ms(client: &KafkaClient) -> i32 {
    i32::try_from(client.config().request_timeout.as_millis()).unwrap_or(i32::MAX)
}

/// Creates `topic` at the controller (TOPIC_ALREADY_EXISTS when it exists), then waits until
/// the metadata shows it.
pub(super) async fn create(client: &KafkaClient, topic: &NewTopic) -> Result<(), AdminError> {
    let operation = "create topic";
    let mut connection = client.controller().await.map_err(|r| unreachable(operation, r))?;
    let version =
        connection.version::<CreateTopicsRequest>().map_err(|e| request_failed(operation, e))?;
    let mut wanted = CreatableTopic::default();
    wanted.name = name(&topic.name);
    wanted.num_partitions = topic.partitions;
    wanted.replication_factor =
        topic.replication_factor.unwrap_or(client.config().topics.replication_factor);
    wanted.configs = topic
        .config
        .iter()
        .map(|(key, value)| {
            let mut entry = CreatableTopicConfig::default();
            entry.name = StrBytes::from_string(key.clone());
            entry.value = Some(StrBytes::from_string(value.clone()));
            entry
        })
        .collect();
    let mut request = CreateTopicsRequest::default();
    request.topics = vec![wanted];
    request.timeout_ms = timeout_ms(client);
    let response = connection
        .send(&request, version, client.config().request_timeout)
        .await
        .map_err(|e| request_failed(operation, e))?;
    if let Some(result) = response.topics.first()
        && result.error_code != 0
    {
        let message = result.error_message.as_ref().map(|m| m.as_str());
        return Err(topic_refused(&topic.name, connection.broker(), result.error_code, message));
    }
    settle(client, &topic.name, true).await;
    Ok(())
}

/// Waits (up to `request_timeout`) until the metadata shows `topic` (`exists`) or no longer
/// does; gives up quietly (the request itself succeeded).
async fn settle(client: &KafkaClient, topic: &str, exists: bool) {
    let give_up = Instant::now() + client.config().request_timeout;
    while Instant::now() < give_up {
        if let Ok(found) = client.lookup(topic).await
            && found.is_some() == exists
        {
            return;
        }
        tokio::time::sleep(SETTLE_POLL).await;
    }
}

/// The topics of `names` that exist (every topic when `None`), sorted.
pub(super) async fn list(
    client: &KafkaClient,
    names: Option<&[String]>,
) -> Result<Vec<TopicListing>, AdminError> {
    let found = client
        .topics(names)
        .await
        .map_err(|e| AdminError::Unavailable { reason: format!("list topics: {e}") })?;
    Ok(found
        .into_iter()
        .map(|(name, info)| TopicListing {
            name,
            partitions: info.partitions,
            internal: info.internal,
        })
        .collect())
}

/// `topic`'s partitions (Metadata), their offsets (ListOffsets) and its configuration
/// (DescribeConfigs).
pub(super) async fn describe(
    client: &KafkaClient,
    topic: &str,
) -> Result<TopicDescription, AdminError> {
    let operation = "describe topic";
    let names = [topic.to_owned()];
    let metadata =
        client.cluster_metadata(Some(&names)).await.map_err(|r| unreachable(operation, r))?;
    let wanted = name(topic);
    let Some(found) = metadata.topics.iter().find(|t| t.name.as_ref() == Some(&wanted)) else {
        return Err(AdminError::topic_code(topic, UNKNOWN_TOPIC_OR_PARTITION, "no such topic"));
    };
    if found.error_code != 0 {
        let broker = client.config().bootstrap.join(",");
        return Err(topic_refused(topic, &broker, found.error_code, None));
    }
    let mut partitions: Vec<PartitionDescription> = found
        .partitions
        .iter()
        .map(|p| PartitionDescription {
            partition: p.partition_index,
            leader: (p.leader_id.0 >= 0).then_some(p.leader_id.0),
            replicas: p.replica_nodes.iter().map(|b| b.0).collect(),
            in_sync: p.isr_nodes.iter().map(|b| b.0).collect(),
            start_offset: 0,
            end_offset: 0,
        })
        .collect();
    partitions.sort_by_key(|p| p.partition);
    let numbers: Vec<i32> = partitions.iter().map(|p| p.partition).collect();
    let wanted_offsets: Vec<(String, i32)> =
        numbers.iter().map(|&p| (topic.to_owned(), p)).collect();
    let bounds = offsets::bounds(client, &metadata, &wanted_offsets).await?;
    for partition in &mut partitions {
        if let Some(&(start, end)) = bounds.get(&(topic.to_owned(), partition.partition)) {
            partition.start_offset = start;
            partition.end_offset = end;
        }
    }
    let config = configs(client, topic).await?;
    Ok(TopicDescription { name: topic.to_owned(), internal: found.is_internal, partitions, config })
}

/// `topic`'s configuration, from a bootstrap broker (any broker answers for a topic).
async fn configs(
    client: &KafkaClient,
    topic: &str,
) -> Result<BTreeMap<String, ConfigEntry>, AdminError> {
    let operation = "describe topic configuration";
    let mut connection = client.any_broker().await.map_err(|r| unreachable(operation, r))?;
    let version =
        connection.version::<DescribeConfigsRequest>().map_err(|e| request_failed(operation, e))?;
    let mut resource = DescribeConfigsResource::default();
    resource.resource_type = TOPIC_RESOURCE;
    resource.resource_name = StrBytes::from_string(topic.to_owned());
    resource.configuration_keys = None;
    let mut request = DescribeConfigsRequest::default();
    request.resources = vec![resource];
    let response = connection
        .send(&request, version, client.config().request_timeout)
        .await
        .map_err(|e| request_failed(operation, e))?;
    let mut config = BTreeMap::new();
    for result in &response.results {
        if result.error_code != 0 {
            let message = result.error_message.as_ref().map(|m| m.as_str());
            return Err(topic_refused(topic, connection.broker(), result.error_code, message));
        }
        for entry in &result.configs {
            config.insert(
                entry.name.as_str().to_owned(),
                ConfigEntry {
                    value: entry.value.as_ref().map(|v| v.as_str().to_owned()),
                    is_default: entry.config_source == DEFAULT_CONFIG,
                    sensitive: entry.is_sensitive,
                },
            );
        }
    }
    Ok(config)
}

/// Deletes `topic` at the controller, then waits until the metadata no longer shows it.
pub(super) async fn delete(client: &KafkaClient, topic: &str) -> Result<(), AdminError> {
    let operation = "delete topic";
    let mut connection = client.controller().await.map_err(|r| unreachable(operation, r))?;
    let version =
        connection.version::<DeleteTopicsRequest>().map_err(|e| request_failed(operation, e))?;
    let mut request = DeleteTopicsRequest::default();
    if version >= 6 {
        let mut state = DeleteTopicState::default();
        state.name = Some(name(topic));
        request.topics = vec![state];
    } else {
        request.topic_names = vec![name(topic)];
    }
    request.timeout_ms = timeout_ms(client);
    let response = connection
        .send(&request, version, client.config().request_timeout)
        .await
        .map_err(|e| request_failed(operation, e))?;
    if let Some(result) = response.responses.first()
        && result.error_code != 0
    {
        let message = result.error_message.as_ref().map(|m| m.as_str());
        return Err(topic_refused(topic, connection.broker(), result.error_code, message));
    }
    settle(client, topic, false).await;
    Ok(())
}

/// Grows `topic` to `total` partitions at the controller (CreatePartitions).
pub(super) async fn add_partitions(
    client: &KafkaClient,
    topic: &str,
    total: i32,
) -> Result<(), AdminError> {
    let operation = "add partitions";
    let mut connection = client.controller().await.map_err(|r| unreachable(operation, r))?;
    let version = connection
        .version::<CreatePartitionsRequest>()
        .map_err(|e| request_failed(operation, e))?;
    let mut wanted = CreatePartitionsTopic::default();
    wanted.name = name(topic);
    wanted.count = total;
    wanted.assignments = None;
    let mut request = CreatePartitionsRequest::default();
    request.topics = vec![wanted];
    request.timeout_ms = timeout_ms(client);
    let response = connection
        .send(&request, version, client.config().request_timeout)
        .await
        .map_err(|e| request_failed(operation, e))?;
    if let Some(result) = response.results.first()
        && result.error_code != 0
    {
        let message = result.error_message.as_ref().map(|m| m.as_str());
        return Err(topic_refused(topic, connection.broker(), result.error_code, message));
    }
    let _ = client.refresh_partition_count(topic).await;
    Ok(())
}
