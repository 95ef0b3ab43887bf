//! What administration asks for and answers: a topic to create ([`NewTopic`]), topics, groups
//! and the cluster as listed and described. Plain data (serialisable, for busctl's `--json`);
//! the backend interface returns it and [`Admin`](super::Admin) hands it on.

use std::collections::BTreeMap;

use serde::Serialize;

use crate::record::TopicPartition;

/// A topic to create.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct NewTopic {
    /// Its name.
    pub name: String,
    /// Its partition count.
    pub partitions: i32,
    /// Its replication factor; `None`: the backend's default (Kafka: `topics.replication_factor`
    /// of the configuration).
    pub replication_factor: Option<i16>,
    /// Its configuration (`cleanup.policy`, `retention.ms`, …), as Kafka's keys and values.
    pub config: BTreeMap<String, String>,
}

impl NewTopic {
    /// A topic `name` with `partitions` partitions and the backend's defaults otherwise.
    pub fn new(name: impl Into<String>, partitions: i32) -> Self {
        NewTopic {
            name: name.into(),
            partitions,
            replication_factor: None,
            config: BTreeMap::new(),
        }
    }

    /// Sets the configuration entry `key` (`cleanup.policy`, `retention.ms`, …) to `value`.
    #[must_use]
    pub fn config(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.config.insert(key.into(), value.into());
        self
    }

    /// Sets the replication factor.
    #[must_use]
    pub fn replication_factor(mut self, factor: i16) -> Self {
        self.replication_factor = Some(factor);
        self
    }
}

/// A topic as listed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TopicListing {
    /// Its name.
    pub name: String,
    /// Its partition count.
    pub partitions: i32,
    /// Whether it is one of Kafka's internal topics (`__consumer_offsets`, …).
    pub internal: bool,
}

/// A topic described: its partitions (with leaders and offsets) and its configuration.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TopicDescription {
    /// Its name.
    pub name: String,
    /// Whether it is one of Kafka's internal topics.
    pub internal: bool,
    /// Its partitions, by number.
    pub partitions: Vec<PartitionDescription>,
    /// Its configuration, by key: on Kafka every entry the broker reports (defaults included,
    /// marked); in memory, the entries it was created with.
    pub config: BTreeMap<String, ConfigEntry>,
}

/// One partition of a described topic.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PartitionDescription {
    /// The partition's number.
    pub partition: i32,
    /// The broker leading it (`None`: no leader now; in memory, always `None`).
    pub leader: Option<i32>,
    /// The brokers holding a replica.
    pub replicas: Vec<i32>,
    /// The replicas in sync with the leader.
    pub in_sync: Vec<i32>,
    /// The offset of the first record held (the log start offset).
    pub start_offset: i64,
    /// The offset the next record will get (the high watermark).
    pub end_offset: i64,
}

/// A configuration entry of a topic.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ConfigEntry {
    /// Its value (`None`: sensitive, or unset).
    pub value: Option<String>,
    /// Whether the value is the default (not set on the topic itself).
    pub is_default: bool,
    /// Whether the value is secret (and then not shown).
    pub sensitive: bool,
}

/// A consumer group as listed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct GroupListing {
    /// The group's id.
    pub group: String,
    /// Its state (`Stable`, `PreparingRebalance`, `CompletingRebalance`, `Empty`, `Dead`; empty
    /// when the broker does not say).
    pub state: String,
    /// Its protocol type (`consumer` for consumer groups).
    pub protocol_type: String,
}

/// A consumer group described: members, their assignments, committed offsets and lag.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct GroupDescription {
    /// The group's id.
    pub group: String,
    /// Its state (as in [`GroupListing::state`]).
    pub state: String,
    /// Its protocol type (`consumer`).
    pub protocol_type: String,
    /// The assignor its members agreed on (`range`, `cooperative-sticky`, …).
    pub protocol: String,
    /// Its members, with what each is assigned.
    pub members: Vec<MemberDescription>,
    /// Every partition the group has a committed offset for or a member reads, with its lag,
    /// sorted by topic and partition.
    pub offsets: Vec<PartitionLag>,
}

impl GroupDescription {
    /// The group's total lag (over the partitions with a committed offset).
    pub fn total_lag(&self) -> i64 {
        self.offsets.iter().filter_map(|o| o.lag).fold(0i64, i64::saturating_add)
    }
}

/// A member of a described group.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct MemberDescription {
    /// Its member id.
    pub member_id: String,
    /// Its static group instance id, if any.
    pub group_instance_id: Option<String>,
    /// Its client id.
    pub client_id: String,
    /// The host it connected from.
    pub host: String,
    /// Its assigned partitions, by topic.
    pub assignment: BTreeMap<String, Vec<i32>>,
}

/// A partition's committed offset and lag in a group.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PartitionLag {
    /// The topic.
    pub topic: String,
    /// The partition.
    pub partition: i32,
    /// The member reading it now, if any.
    pub member_id: Option<String>,
    /// The group's committed offset (the next offset to read), `None` when it has none.
    pub committed: Option<i64>,
    /// The partition's end offset (the high watermark).
    pub end_offset: i64,
    /// `end_offset - committed`, `None` without a committed offset.
    pub lag: Option<i64>,
}

impl PartitionLag {
    /// The lag of `committed` at `end_offset`.
    pub fn new(
        partition: &TopicPartition,
        member_id: Option<String>,
        committed: Option<i64>,
        end_offset: i64,
    ) -> Self {
        PartitionLag {
            topic: partition.topic.to_string(),
            partition: partition.partition,
            member_id,
            committed,
            end_offset,
            lag: committed.map(|c| end_offset.saturating_sub(c).max(0)),
        }
    }
}

/// The cluster as the client sees it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ClusterDescription {
    /// The backend (`kafka`, `memory`).
    pub backend: String,
    /// The controller's node id, when known.
    pub controller: Option<i32>,
    /// The brokers (none in memory).
    pub brokers: Vec<BrokerDescription>,
}

/// One broker of the cluster.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct BrokerDescription {
    /// Its node id.
    pub node_id: i32,
    /// Its address (`host:port`).
    pub address: String,
    /// The APIs it offers or the client uses, by key; empty when it could not be reached.
    pub apis: Vec<ApiSupport>,
    /// Why it could not be reached (connection, TLS, authentication), if it could not.
    pub error: Option<String>,
}

/// One API of the Kafka protocol on one broker.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ApiSupport {
    /// The API key.
    pub key: i16,
    /// The API's name.
    pub name: String,
    /// The versions the broker offers (`None`: not at all).
    pub broker: Option<(i16, i16)>,
    /// The versions the client implements (`None`: the client does not use the API).
    pub client: Option<(i16, i16)>,
    /// The version the client speaks (`None`: no common version, or not used).
    pub negotiated: Option<i16>,
    /// Whether a bus needs it to publish or consume (a missing one stops a service).
    pub required: bool,
}
