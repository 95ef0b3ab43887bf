//! Partitions' start and end offsets for descriptions and lag: ListOffsets at each partition's
//! leader, one request per leader and bound (earliest, latest).
//!
//! Owns: `bounds`.
//!
//! Invariants: the leaders are those of the metadata the caller read (one Metadata for all the
//! partitions, not one per partition); a partition whose leader is unknown or answers an error
//! is left out of the answer (its description shows zeros, its lag none), the others are not
//! held back by it; the end offset is the high watermark (isolation level read_uncommitted,
//! as Kafka's tools count lag).

use std::collections::BTreeMap;

use bus_core::admin::AdminError;
use kafka_protocol::messages::list_offsets_request::{ListOffsetsPartition, ListOffsetsTopic};
use kafka_protocol::messages::{ListOffsetsRequest, MetadataResponse, TopicName};
use kafka_protocol::protocol::StrBytes;

use super::request_failed;
use crate::client::{KafkaClient, address};

/// ListOffsets' timestamp for the earliest offset.
const EARLIEST: i64 = -2;
/// ListOffsets' timestamp for the end offset.
const LATEST: i64 = -1;

/// The `(start, end)` offsets of `partitions` (topic, partition), from their leaders as
/// `metadata` names them.
pub(super) async fn bounds(
    client: &KafkaClient,
    metadata: &MetadataResponse,
    partitions: &[(String, i32)],
) -> Result<BTreeMap<(String, i32), (i64, i64)>, AdminError> {
    let brokers: BTreeMap<i32, String> =
        metadata.brokers.iter().map(|b| (b.node_id.0, address(b.host.as_str(), b.port))).collect();
    let mut by_leader: BTreeMap<String, Vec<(String, i32)>> = BTreeMap::new();
    for (topic, partition) in partitions {
        let leader = metadata
            .topics
            .iter()
            .filter(|t| t.name.as_ref().is_some_and(|n| n.0.as_str() == topic))
            .flat_map(|t| t.partitions.iter())
            .find(|p| p.partition_index == *partition)
            .and_then(|p| brokers.get(&p.leader_id.0));
        if let Some(leader) = leader {
            by_leader.entry(leader.clone()).or_default().push((topic.clone(), *partition));
        }
    }
    let mut found = BTreeMap::new();
    for (leader, partitions) in by_leader {
        let starts = list_offsets(client, &leader, &partitions, EARLIEST).await?;
        let ends = list_offsets(client, &leader, &partitions, LATEST).await?;
        for (key, end) in ends {
            let start = starts.get(&key).copied().unwrap_or(0);
            found.insert(key, (start, end));
        }
    }
    Ok(found)
}

/// One ListOffsets at `leader` for `partitions` at `timestamp`.
async fn list_offsets(
    client: &KafkaClient,
    leader: &str,
    partitions: &[(String, i32)],
    timestamp: i64,
) -> Result<BTreeMap<(String, i32), i64>, AdminError> {
    let operation = "list offsets";
    let mut connection = client.broker(leader).await.map_err(|e| request_failed(operation, e))?;
    let version =
        connection.version::<ListOffsetsRequest>().map_err(|e| request_failed(operation, e))?;
    let mut by_topic: BTreeMap<&str, Vec<i32>> = BTreeMap::new();
    for (topic, partition) in partitions {
        by_topic.entry(topic).or_default().push(*partition);
    }
    let mut request = ListOffsetsRequest::default();
    request.replica_id = (-1).into();
    request.isolation_level = 0;
    request.topics = by_topic
        .into_iter()
        .map(|(topic, partitions)| {
            let mut wanted = ListOffsetsTopic::default();
            wanted.name = TopicName(StrBytes::from_string(topic.to_owned()));
            wanted.partitions = partitions
                .into_iter()
                .map(|partition| {
                    let mut p = ListOffsetsPartition::default();
                    p.partition_index = partition;
                    p.current_leader_epoch = -1;
                    p.timestamp = timestamp;
                    p
                })
                .collect();
            wanted
        })
        .collect();
    let response = connection
        .send(&request, version, client.config().request_timeout)
        .await
        .map_err(|e| request_failed(operation, e))?;
    let mut found = BTreeMap::new();
    for topic in &response.topics {
        for partition in &topic.partitions {
            if partition.error_code == 0 {
                found.insert(
                    (topic.name.0.as_str().to_owned(), partition.partition_index),
                    partition.offset,
                );
            } else {
                tracing::debug!(
                    topic = %topic.name.0.as_str(), partition = partition.partition_index,
                    error = %crate::connection::code_name(partition.error_code),
                    "offsets left out of an administrative answer"
                );
            }
        }
    }
    Ok(found)
}
