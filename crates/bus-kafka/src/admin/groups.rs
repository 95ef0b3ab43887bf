//! Consumer-group administration: ListGroups on every broker, and a group's description at its
//! coordinator (DescribeGroups, its members' assignments decoded with the `consumer`
//! protocol's codec, OffsetFetch of every committed offset) with the lag against the
//! partitions' end offsets.
//!
//! Owns: `list`, `describe`.
//!
//! Invariants: a group is listed once however many brokers report it; a member's assignment
//! that cannot be decoded (a group of another protocol type, or corrupt bytes) is shown empty,
//! and logged, rather than failing the description; the partitions described are those with a
//! committed offset and those a member is assigned, sorted.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use bus_core::{
    TopicPartition, admin::AdminError, admin::GroupDescription, admin::GroupListing,
    admin::MemberDescription, admin::PartitionLag,
};
use kafka_protocol::messages::offset_fetch_request::OffsetFetchRequestGroup;
use kafka_protocol::messages::{DescribeGroupsRequest, ListGroupsRequest, OffsetFetchRequest};
use kafka_protocol::protocol::StrBytes;

use super::{group_refused, offsets, request_failed, unreachable};
use crate::client::{KafkaClient, address};
use crate::connection::Connection;
use crate::group::codec;
use crate::group::coordinator::Locator;

/// Every group the brokers know, sorted by id.
pub(super) async fn list(client: &KafkaClient) -> Result<Vec<GroupListing>, AdminError> {
    let operation = "list groups";
    let metadata =
        client.cluster_metadata(Some(&[])).await.map_err(|r| unreachable(operation, r))?;
    let mut found: BTreeMap<String, GroupListing> = BTreeMap::new();
    for broker in &metadata.brokers {
        let at = address(broker.host.as_str(), broker.port);
        let mut connection = client.broker(&at).await.map_err(|e| request_failed(operation, e))?;
        let version =
            connection.version::<ListGroupsRequest>().map_err(|e| request_failed(operation, e))?;
        let response = connection
            .send(&ListGroupsRequest::default(), version, client.config().request_timeout)
            .await
            .map_err(|e| request_failed(operation, e))?;
        if response.error_code != 0 {
            return Err(AdminError::Unavailable {
                reason: format!(
                    "broker {at}: ListGroups: {}",
                    crate::connection::code_name(response.error_code)
                ),
            });
        }
        for group in response.groups {
            let id = group.group_id.0.as_str().to_owned();
            found.insert(
                id.clone(),
                GroupListing {
                    group: id,
                    state: group.group_state.as_str().to_owned(),
                    protocol_type: group.protocol_type.as_str().to_owned(),
                },
            );
        }
    }
    Ok(found.into_values().collect())
}

/// `group`'s state, members, committed offsets and lag.
pub(super) async fn describe(
    client: &KafkaClient,
    group: &str,
) -> Result<GroupDescription, AdminError> {
    let locator = Locator::new(group.to_owned(), Arc::clone(client.connector()));
    let coordinator = locator.coordinator().await.map_err(|f| AdminError::Group {
        group: group.to_owned(),
        code: None,
        reason: format!("cannot find the coordinator: {}", f.reason()),
    })?;
    let operation = "describe group";
    let mut connection =
        client.broker(&coordinator).await.map_err(|e| request_failed(operation, e))?;
    let mut description = describe_members(client, &mut connection, group).await?;
    let committed = committed(client, &mut connection, group).await?;

    let owner: BTreeMap<(String, i32), String> = description
        .members
        .iter()
        .flat_map(|m| {
            m.assignment.iter().flat_map(move |(topic, partitions)| {
                partitions.iter().map(move |&p| ((topic.clone(), p), m.member_id.clone()))
            })
        })
        .collect();
    let mut partitions: BTreeSet<(String, i32)> = committed.keys().cloned().collect();
    partitions.extend(owner.keys().cloned());
    if partitions.is_empty() {
        return Ok(description);
    }
    let topics: Vec<String> =
        partitions.iter().map(|(t, _)| t.clone()).collect::<BTreeSet<_>>().into_iter().collect();
    let metadata =
        client.cluster_metadata(Some(&topics)).await.map_err(|r| unreachable(operation, r))?;
    let list: Vec<(String, i32)> = partitions.iter().cloned().collect();
    let bounds = offsets::bounds(client, &metadata, &list).await?;
    description.offsets = partitions
        .into_iter()
        .filter_map(|key| {
            let &(_, end) = bounds.get(&key)?;
            let tp = TopicPartition { topic: Arc::from(key.0.as_str()), partition: key.1 };
            Some(PartitionLag::new(
                &tp,
                owner.get(&key).cloned(),
                committed.get(&key).copied(),
                end,
            ))
        })
        .collect();
    Ok(description)
}

/// DescribeGroups for `group` at its coordinator.
async fn describe_members(
    client: &KafkaClient,
    connection: &mut Connection,
    group: &str,
) -> Result<GroupDescription, AdminError> {
    let operation = "describe group";
    let version =
        connection.version::<DescribeGroupsRequest>().map_err(|e| request_failed(operation, e))?;
    let mut request = DescribeGroupsRequest::default();
    request.groups = vec![StrBytes::from_string(group.to_owned()).into()];
    let response = connection
        .send(&request, version, client.config().request_timeout)
        .await
        .map_err(|e| request_failed(operation, e))?;
    let Some(described) = response.groups.into_iter().next() else {
        return Err(AdminError::Group {
            group: group.to_owned(),
            code: None,
            reason: format!("broker {}: DescribeGroups answered no group", connection.broker()),
        });
    };
    if described.error_code != 0 {
        return Err(group_refused(
            group,
            connection.broker(),
            described.error_code,
            "DescribeGroups",
        ));
    }
    let consumer = described.protocol_type.as_str() == "consumer";
    let members = described
        .members
        .iter()
        .map(|m| {
            let assignment = if consumer {
                codec::decode_assignment(&m.member_assignment).unwrap_or_else(|reason| {
                    tracing::debug!(group, member = %m.member_id.as_str(), %reason,
                        "an assignment left out of a group description");
                    BTreeMap::new()
                })
            } else {
                BTreeMap::new()
            };
            MemberDescription {
                member_id: m.member_id.as_str().to_owned(),
                group_instance_id: m.group_instance_id.as_ref().map(|i| i.as_str().to_owned()),
                client_id: m.client_id.as_str().to_owned(),
                host: m.client_host.as_str().to_owned(),
                assignment,
            }
        })
        .collect();
    Ok(GroupDescription {
        group: group.to_owned(),
        state: described.group_state.as_str().to_owned(),
        protocol_type: described.protocol_type.as_str().to_owned(),
        protocol: described.protocol_data.as_str().to_owned(),
        members,
        offsets: Vec::new(),
    })
}

/// Every offset `group` has committed (OffsetFetch of all topics).
async fn committed(
    client: &KafkaClient,
    connection: &mut Connection,
    group: &str,
) -> Result<BTreeMap<(String, i32), i64>, AdminError> {
    let operation = "fetch committed offsets";
    let version =
        connection.version::<OffsetFetchRequest>().map_err(|e| request_failed(operation, e))?;
    if version < 2 {
        return Err(AdminError::Unsupported {
            operation,
            reason: format!(
                "broker {} offers OffsetFetch v{version}, which cannot fetch every topic's \
                 offsets (v2 can)",
                connection.broker()
            ),
        });
    }
    let mut request = OffsetFetchRequest::default();
    if version >= 8 {
        let mut entry = OffsetFetchRequestGroup::default();
        entry.group_id = StrBytes::from_string(group.to_owned()).into();
        entry.topics = None;
        request.groups = vec![entry];
    } else {
        request.group_id = StrBytes::from_string(group.to_owned()).into();
        request.topics = None;
    }
    let response = connection
        .send(&request, version, client.config().request_timeout)
        .await
        .map_err(|e| request_failed(operation, e))?;
    let mut found = BTreeMap::new();
    let mut record = |topic: &str, partition: i32, offset: i64, code: i16| {
        if code == 0 && offset >= 0 {
            found.insert((topic.to_owned(), partition), offset);
        }
    };
    if version >= 8 {
        for g in &response.groups {
            if g.error_code != 0 {
                return Err(group_refused(group, connection.broker(), g.error_code, "OffsetFetch"));
            }
            for t in &g.topics {
                for p in &t.partitions {
                    record(t.name.0.as_str(), p.partition_index, p.committed_offset, p.error_code);
                }
            }
        }
    } else {
        if response.error_code != 0 {
            return Err(group_refused(
                group,
                connection.broker(),
                response.error_code,
                "OffsetFetch",
            ));
        }
        for t in &response.topics {
            for p in &t.partitions {
                record(t.name.0.as_str(), p.partition_index, p.committed_offset, p.error_code);
            }
        }
    }
    Ok(found)
}
