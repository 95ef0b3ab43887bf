//! The cluster as the client sees it: its brokers (Metadata), and for each the protocol
//! versions it offers (its ApiVersions answer, read when the connection opened, after TLS and
//! SASL) beside those the client implements and would speak.
//!
//! Owns: `describe`, the table of the client's APIs (`CLIENT_APIS`).
//!
//! Invariant: every API the client sends is in the table (each `api!` of `connection`), with
//! whether a bus needs it to publish or consume: a required API without a common version is
//! what stops a service from starting.

use std::collections::BTreeMap;

use bus_core::{
    admin::AdminError, admin::ApiSupport, admin::BrokerDescription, admin::ClusterDescription,
};
use kafka_protocol::messages::{
    ApiKey, ApiVersionsRequest, CreatePartitionsRequest, CreateTopicsRequest, DeleteTopicsRequest,
    DescribeConfigsRequest, DescribeGroupsRequest, FetchRequest, FindCoordinatorRequest,
    HeartbeatRequest, InitProducerIdRequest, JoinGroupRequest, LeaveGroupRequest,
    ListGroupsRequest, ListOffsetsRequest, MetadataRequest, OffsetCommitRequest,
    OffsetFetchRequest, ProduceRequest, SaslAuthenticateRequest, SaslHandshakeRequest,
    SyncGroupRequest,
};

use super::unreachable;
use crate::client::{KafkaClient, address};
use crate::config::kafka::KafkaConfig;
use crate::connection::Api;

/// When a bus needs an API.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Need {
    /// Always (publishing, consuming in groups).
    Always,
    /// With the idempotent producer (`producer.idempotence`).
    Idempotence,
    /// With SASL (`security.protocol` `sasl_*`).
    Sasl,
    /// Only for administration or topic creation.
    Admin,
}

/// One API the client sends: its key, name, versions and need.
struct ClientApi {
    key: i16,
    name: &'static str,
    min: i16,
    max: i16,
    need: Need,
}

const fn api<R: Api>(need: Need) -> ClientApi {
    ClientApi { key: R::KEY as i16, name: R::NAME, min: R::MIN, max: R::MAX, need }
}

/// Every API the client sends.
const CLIENT_APIS: [ClientApi; 21] = [
    api::<ApiVersionsRequest>(Need::Always),
    api::<MetadataRequest>(Need::Always),
    api::<ProduceRequest>(Need::Always),
    api::<FetchRequest>(Need::Always),
    api::<ListOffsetsRequest>(Need::Always),
    api::<FindCoordinatorRequest>(Need::Always),
    api::<JoinGroupRequest>(Need::Always),
    api::<SyncGroupRequest>(Need::Always),
    api::<HeartbeatRequest>(Need::Always),
    api::<LeaveGroupRequest>(Need::Always),
    api::<OffsetCommitRequest>(Need::Always),
    api::<OffsetFetchRequest>(Need::Always),
    api::<InitProducerIdRequest>(Need::Idempotence),
    api::<SaslHandshakeRequest>(Need::Sasl),
    api::<SaslAuthenticateRequest>(Need::Sasl),
    api::<CreateTopicsRequest>(Need::Admin),
    api::<DeleteTopicsRequest>(Need::Admin),
    api::<CreatePartitionsRequest>(Need::Admin),
    api::<DescribeConfigsRequest>(Need::Admin),
    api::<ListGroupsRequest>(Need::Admin),
    api::<DescribeGroupsRequest>(Need::Admin),
];

fn required(need: Need, config: &KafkaConfig) -> bool {
    match need {
        Need::Always => true,
        Need::Idempotence => config.producer.idempotence,
        Need::Sasl => config.security.protocol.uses_sasl(),
        Need::Admin => false,
    }
}

/// The name of API `key` (the client's, else `kafka-protocol`'s, else the number).
fn api_name(key: i16) -> String {
    ApiKey::try_from(key).map_or_else(|()| format!("api {key}"), |k| format!("{k:?}"))
}

/// The brokers, and the APIs each offers and the client speaks.
pub(super) async fn describe(client: &KafkaClient) -> Result<ClusterDescription, AdminError> {
    let metadata =
        client.cluster_metadata(Some(&[])).await.map_err(|r| unreachable("describe cluster", r))?;
    let mut brokers = Vec::new();
    for broker in &metadata.brokers {
        let at = address(broker.host.as_str(), broker.port);
        let (apis, error) = match client.broker(&at).await {
            Ok(connection) => (apis(connection.versions(), client.config()), None),
            Err(error) => (Vec::new(), Some(error.to_string())),
        };
        brokers.push(BrokerDescription { node_id: broker.node_id.0, address: at, apis, error });
    }
    brokers.sort_by_key(|b| b.node_id);
    Ok(ClusterDescription {
        backend: "kafka".to_owned(),
        controller: (metadata.controller_id.0 >= 0).then_some(metadata.controller_id.0),
        brokers,
    })
}

/// The union of the broker's APIs and the client's, by key.
fn apis(
    theirs: &std::collections::HashMap<i16, (i16, i16)>,
    config: &KafkaConfig,
) -> Vec<ApiSupport> {
    let mut all: BTreeMap<i16, ApiSupport> = theirs
        .iter()
        .map(|(&key, &range)| {
            (
                key,
                ApiSupport {
                    key,
                    name: api_name(key),
                    broker: Some(range),
                    client: None,
                    negotiated: None,
                    required: false,
                },
            )
        })
        .collect();
    for ours in &CLIENT_APIS {
        let entry = all.entry(ours.key).or_insert_with(|| ApiSupport {
            key: ours.key,
            name: ours.name.to_owned(),
            broker: None,
            client: None,
            negotiated: None,
            required: false,
        });
        entry.name = ours.name.to_owned();
        entry.client = Some((ours.min, ours.max));
        entry.required = required(ours.need, config);
        entry.negotiated = entry.broker.and_then(|(min, max)| {
            let version = ours.max.min(max);
            (version >= ours.min.max(min)).then_some(version)
        });
    }
    all.into_values().collect()
}
