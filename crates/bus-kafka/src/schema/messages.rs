//! The shapes of the messages this crate decodes with `kafka-protocol`, transcribed from the
//! decoders that crate generates (version 0.18.0, `src/messages/*.rs`): for each struct, its
//! fields in wire order with the versions that carry them, and its known tagged fields. Field
//! names are Kafka's (snake case, as `kafka-protocol` names them), for error messages.
//!
//! Invariant: each shape walks the bytes exactly as `kafka-protocol`'s decoder of the same
//! version reads them (the tests and the `responses` fuzz target check this on every message
//! `kafka-protocol` encodes). When the `kafka-protocol` dependency or a version range in
//! `connection`'s `api!` list changes, this file changes with it.

/// `ApiVersionsResponse`: versions 0-4, flexible from 3.
pub(super) mod api_versions_response {
    use super::super::Kind::{Array, Struct};
    use super::super::{BOOL, I16, I32, I64, LAST, Message, STRING, Shape, f, t};

    pub(in super::super) const MESSAGE: Message = Message {
        name: "ApiVersionsResponse",
        min: 0,
        max: 4,
        flexible: 3,
        root: &API_VERSIONS_RESPONSE,
    };

    const API_VERSION: Shape = Shape {
        name: "ApiVersion",
        fields: &[
            f("api_key", 0, LAST, I16),
            f("min_version", 0, LAST, I16),
            f("max_version", 0, LAST, I16),
        ],
        tagged: &[],
    };

    const API_VERSIONS_RESPONSE: Shape = Shape {
        name: "ApiVersionsResponse",
        fields: &[
            f("error_code", 0, LAST, I16),
            f("api_keys", 0, LAST, Array(&Struct(&API_VERSION))),
            f("throttle_time_ms", 1, LAST, I32),
        ],
        tagged: &[
            t(0, "supported_features", 0, LAST, Array(&Struct(&SUPPORTED_FEATURE_KEY))),
            t(1, "finalized_features_epoch", 0, LAST, I64),
            t(2, "finalized_features", 0, LAST, Array(&Struct(&FINALIZED_FEATURE_KEY))),
            t(3, "zk_migration_ready", 0, LAST, BOOL),
        ],
    };

    const FINALIZED_FEATURE_KEY: Shape = Shape {
        name: "FinalizedFeatureKey",
        fields: &[
            f("name", 3, LAST, STRING),
            f("max_version_level", 3, LAST, I16),
            f("min_version_level", 3, LAST, I16),
        ],
        tagged: &[],
    };

    const SUPPORTED_FEATURE_KEY: Shape = Shape {
        name: "SupportedFeatureKey",
        fields: &[
            f("name", 3, LAST, STRING),
            f("min_version", 3, LAST, I16),
            f("max_version", 3, LAST, I16),
        ],
        tagged: &[],
    };
}

/// `FindCoordinatorResponse`: versions 0-6, flexible from 3.
pub(super) mod find_coordinator_response {
    use super::super::Kind::{Array, Struct};
    use super::super::{I16, I32, LAST, Message, STRING, Shape, f};

    pub(in super::super) const MESSAGE: Message = Message {
        name: "FindCoordinatorResponse",
        min: 0,
        max: 6,
        flexible: 3,
        root: &FIND_COORDINATOR_RESPONSE,
    };

    const COORDINATOR: Shape = Shape {
        name: "Coordinator",
        fields: &[
            f("key", 4, LAST, STRING),
            f("node_id", 4, LAST, I32),
            f("host", 4, LAST, STRING),
            f("port", 4, LAST, I32),
            f("error_code", 4, LAST, I16),
            f("error_message", 4, LAST, STRING),
        ],
        tagged: &[],
    };

    const FIND_COORDINATOR_RESPONSE: Shape = Shape {
        name: "FindCoordinatorResponse",
        fields: &[
            f("throttle_time_ms", 1, LAST, I32),
            f("error_code", 0, 3, I16),
            f("error_message", 1, 3, STRING),
            f("node_id", 0, 3, I32),
            f("host", 0, 3, STRING),
            f("port", 0, 3, I32),
            f("coordinators", 4, LAST, Array(&Struct(&COORDINATOR))),
        ],
        tagged: &[],
    };
}

/// `JoinGroupResponse`: versions 0-9, flexible from 6.
pub(super) mod join_group_response {
    use super::super::Kind::{Array, Struct};
    use super::super::{BOOL, BYTES, I16, I32, LAST, Message, STRING, Shape, f};

    pub(in super::super) const MESSAGE: Message = Message {
        name: "JoinGroupResponse",
        min: 0,
        max: 9,
        flexible: 6,
        root: &JOIN_GROUP_RESPONSE,
    };

    const JOIN_GROUP_RESPONSE: Shape = Shape {
        name: "JoinGroupResponse",
        fields: &[
            f("throttle_time_ms", 2, LAST, I32),
            f("error_code", 0, LAST, I16),
            f("generation_id", 0, LAST, I32),
            f("protocol_type", 7, LAST, STRING),
            f("protocol_name", 0, LAST, STRING),
            f("leader", 0, LAST, STRING),
            f("skip_assignment", 9, LAST, BOOL),
            f("member_id", 0, LAST, STRING),
            f("members", 0, LAST, Array(&Struct(&JOIN_GROUP_RESPONSE_MEMBER))),
        ],
        tagged: &[],
    };

    const JOIN_GROUP_RESPONSE_MEMBER: Shape = Shape {
        name: "JoinGroupResponseMember",
        fields: &[
            f("member_id", 0, LAST, STRING),
            f("group_instance_id", 5, LAST, STRING),
            f("metadata", 0, LAST, BYTES),
        ],
        tagged: &[],
    };
}

/// `SyncGroupResponse`: versions 0-5, flexible from 4.
pub(super) mod sync_group_response {
    use super::super::{BYTES, I16, I32, LAST, Message, STRING, Shape, f};

    pub(in super::super) const MESSAGE: Message = Message {
        name: "SyncGroupResponse",
        min: 0,
        max: 5,
        flexible: 4,
        root: &SYNC_GROUP_RESPONSE,
    };

    const SYNC_GROUP_RESPONSE: Shape = Shape {
        name: "SyncGroupResponse",
        fields: &[
            f("throttle_time_ms", 1, LAST, I32),
            f("error_code", 0, LAST, I16),
            f("protocol_type", 5, LAST, STRING),
            f("protocol_name", 5, LAST, STRING),
            f("assignment", 0, LAST, BYTES),
        ],
        tagged: &[],
    };
}

/// `HeartbeatResponse`: versions 0-4, flexible from 4.
pub(super) mod heartbeat_response {
    use super::super::{I16, I32, LAST, Message, Shape, f};

    pub(in super::super) const MESSAGE: Message = Message {
        name: "HeartbeatResponse",
        min: 0,
        max: 4,
        flexible: 4,
        root: &HEARTBEAT_RESPONSE,
    };

    const HEARTBEAT_RESPONSE: Shape = Shape {
        name: "HeartbeatResponse",
        fields: &[f("throttle_time_ms", 1, LAST, I32), f("error_code", 0, LAST, I16)],
        tagged: &[],
    };
}

/// `LeaveGroupResponse`: versions 0-5, flexible from 4.
pub(super) mod leave_group_response {
    use super::super::Kind::{Array, Struct};
    use super::super::{I16, I32, LAST, Message, STRING, Shape, f};

    pub(in super::super) const MESSAGE: Message = Message {
        name: "LeaveGroupResponse",
        min: 0,
        max: 5,
        flexible: 4,
        root: &LEAVE_GROUP_RESPONSE,
    };

    const LEAVE_GROUP_RESPONSE: Shape = Shape {
        name: "LeaveGroupResponse",
        fields: &[
            f("throttle_time_ms", 1, LAST, I32),
            f("error_code", 0, LAST, I16),
            f("members", 3, LAST, Array(&Struct(&MEMBER_RESPONSE))),
        ],
        tagged: &[],
    };

    const MEMBER_RESPONSE: Shape = Shape {
        name: "MemberResponse",
        fields: &[
            f("member_id", 3, LAST, STRING),
            f("group_instance_id", 3, LAST, STRING),
            f("error_code", 3, LAST, I16),
        ],
        tagged: &[],
    };
}

/// `OffsetCommitResponse`: versions 2-10, flexible from 8.
pub(super) mod offset_commit_response {
    use super::super::Kind::{Array, Struct};
    use super::super::{I16, I32, LAST, Message, STRING, Shape, UUID, f};

    pub(in super::super) const MESSAGE: Message = Message {
        name: "OffsetCommitResponse",
        min: 2,
        max: 10,
        flexible: 8,
        root: &OFFSET_COMMIT_RESPONSE,
    };

    const OFFSET_COMMIT_RESPONSE: Shape = Shape {
        name: "OffsetCommitResponse",
        fields: &[
            f("throttle_time_ms", 3, LAST, I32),
            f("topics", 0, LAST, Array(&Struct(&OFFSET_COMMIT_RESPONSE_TOPIC))),
        ],
        tagged: &[],
    };

    const OFFSET_COMMIT_RESPONSE_PARTITION: Shape = Shape {
        name: "OffsetCommitResponsePartition",
        fields: &[f("partition_index", 0, LAST, I32), f("error_code", 0, LAST, I16)],
        tagged: &[],
    };

    const OFFSET_COMMIT_RESPONSE_TOPIC: Shape = Shape {
        name: "OffsetCommitResponseTopic",
        fields: &[
            f("name", 0, 9, STRING),
            f("topic_id", 10, LAST, UUID),
            f("partitions", 0, LAST, Array(&Struct(&OFFSET_COMMIT_RESPONSE_PARTITION))),
        ],
        tagged: &[],
    };
}

/// `OffsetFetchResponse`: versions 1-10, flexible from 6.
pub(super) mod offset_fetch_response {
    use super::super::Kind::{Array, Struct};
    use super::super::{I16, I32, I64, LAST, Message, STRING, Shape, UUID, f};

    pub(in super::super) const MESSAGE: Message = Message {
        name: "OffsetFetchResponse",
        min: 1,
        max: 10,
        flexible: 6,
        root: &OFFSET_FETCH_RESPONSE,
    };

    const OFFSET_FETCH_RESPONSE: Shape = Shape {
        name: "OffsetFetchResponse",
        fields: &[
            f("throttle_time_ms", 3, LAST, I32),
            f("topics", 0, 7, Array(&Struct(&OFFSET_FETCH_RESPONSE_TOPIC))),
            f("error_code", 2, 7, I16),
            f("groups", 8, LAST, Array(&Struct(&OFFSET_FETCH_RESPONSE_GROUP))),
        ],
        tagged: &[],
    };

    const OFFSET_FETCH_RESPONSE_GROUP: Shape = Shape {
        name: "OffsetFetchResponseGroup",
        fields: &[
            f("group_id", 8, LAST, STRING),
            f("topics", 8, LAST, Array(&Struct(&OFFSET_FETCH_RESPONSE_TOPICS))),
            f("error_code", 8, LAST, I16),
        ],
        tagged: &[],
    };

    const OFFSET_FETCH_RESPONSE_PARTITION: Shape = Shape {
        name: "OffsetFetchResponsePartition",
        fields: &[
            f("partition_index", 0, 7, I32),
            f("committed_offset", 0, 7, I64),
            f("committed_leader_epoch", 5, 7, I32),
            f("metadata", 0, 7, STRING),
            f("error_code", 0, 7, I16),
        ],
        tagged: &[],
    };

    const OFFSET_FETCH_RESPONSE_PARTITIONS: Shape = Shape {
        name: "OffsetFetchResponsePartitions",
        fields: &[
            f("partition_index", 8, LAST, I32),
            f("committed_offset", 8, LAST, I64),
            f("committed_leader_epoch", 8, LAST, I32),
            f("metadata", 8, LAST, STRING),
            f("error_code", 8, LAST, I16),
        ],
        tagged: &[],
    };

    const OFFSET_FETCH_RESPONSE_TOPIC: Shape = Shape {
        name: "OffsetFetchResponseTopic",
        fields: &[
            f("name", 0, 7, STRING),
            f("partitions", 0, 7, Array(&Struct(&OFFSET_FETCH_RESPONSE_PARTITION))),
        ],
        tagged: &[],
    };

    const OFFSET_FETCH_RESPONSE_TOPICS: Shape = Shape {
        name: "OffsetFetchResponseTopics",
        fields: &[
            f("name", 8, 9, STRING),
            f("topic_id", 10, LAST, UUID),
            f("partitions", 8, LAST, Array(&Struct(&OFFSET_FETCH_RESPONSE_PARTITIONS))),
        ],
        tagged: &[],
    };
}

/// `MetadataResponse`: versions 0-13, flexible from 9.
pub(super) mod metadata_response {
    use super::super::Kind::{Array, Struct};
    use super::super::{BOOL, I16, I32, LAST, Message, STRING, Shape, UUID, f};

    pub(in super::super) const MESSAGE: Message = Message {
        name: "MetadataResponse",
        min: 0,
        max: 13,
        flexible: 9,
        root: &METADATA_RESPONSE,
    };

    const METADATA_RESPONSE: Shape = Shape {
        name: "MetadataResponse",
        fields: &[
            f("throttle_time_ms", 3, LAST, I32),
            f("brokers", 0, LAST, Array(&Struct(&METADATA_RESPONSE_BROKER))),
            f("cluster_id", 2, LAST, STRING),
            f("controller_id", 1, LAST, I32),
            f("topics", 0, LAST, Array(&Struct(&METADATA_RESPONSE_TOPIC))),
            f("cluster_authorized_operations", 8, 10, I32),
            f("error_code", 13, LAST, I16),
        ],
        tagged: &[],
    };

    const METADATA_RESPONSE_BROKER: Shape = Shape {
        name: "MetadataResponseBroker",
        fields: &[
            f("node_id", 0, LAST, I32),
            f("host", 0, LAST, STRING),
            f("port", 0, LAST, I32),
            f("rack", 1, LAST, STRING),
        ],
        tagged: &[],
    };

    const METADATA_RESPONSE_PARTITION: Shape = Shape {
        name: "MetadataResponsePartition",
        fields: &[
            f("error_code", 0, LAST, I16),
            f("partition_index", 0, LAST, I32),
            f("leader_id", 0, LAST, I32),
            f("leader_epoch", 7, LAST, I32),
            f("replica_nodes", 0, LAST, Array(&I32)),
            f("isr_nodes", 0, LAST, Array(&I32)),
            f("offline_replicas", 5, LAST, Array(&I32)),
        ],
        tagged: &[],
    };

    const METADATA_RESPONSE_TOPIC: Shape = Shape {
        name: "MetadataResponseTopic",
        fields: &[
            f("error_code", 0, LAST, I16),
            f("name", 0, LAST, STRING),
            f("topic_id", 10, LAST, UUID),
            f("is_internal", 1, LAST, BOOL),
            f("partitions", 0, LAST, Array(&Struct(&METADATA_RESPONSE_PARTITION))),
            f("topic_authorized_operations", 8, LAST, I32),
        ],
        tagged: &[],
    };
}

/// `ListOffsetsResponse`: versions 1-10, flexible from 6.
pub(super) mod list_offsets_response {
    use super::super::Kind::{Array, Struct};
    use super::super::{I16, I32, I64, LAST, Message, STRING, Shape, f};

    pub(in super::super) const MESSAGE: Message = Message {
        name: "ListOffsetsResponse",
        min: 1,
        max: 10,
        flexible: 6,
        root: &LIST_OFFSETS_RESPONSE,
    };

    const LIST_OFFSETS_PARTITION_RESPONSE: Shape = Shape {
        name: "ListOffsetsPartitionResponse",
        fields: &[
            f("partition_index", 0, LAST, I32),
            f("error_code", 0, LAST, I16),
            f("timestamp", 0, LAST, I64),
            f("offset", 0, LAST, I64),
            f("leader_epoch", 4, LAST, I32),
        ],
        tagged: &[],
    };

    const LIST_OFFSETS_RESPONSE: Shape = Shape {
        name: "ListOffsetsResponse",
        fields: &[
            f("throttle_time_ms", 2, LAST, I32),
            f("topics", 0, LAST, Array(&Struct(&LIST_OFFSETS_TOPIC_RESPONSE))),
        ],
        tagged: &[],
    };

    const LIST_OFFSETS_TOPIC_RESPONSE: Shape = Shape {
        name: "ListOffsetsTopicResponse",
        fields: &[
            f("name", 0, LAST, STRING),
            f("partitions", 0, LAST, Array(&Struct(&LIST_OFFSETS_PARTITION_RESPONSE))),
        ],
        tagged: &[],
    };
}

/// `FetchResponse`: versions 4-18, flexible from 12.
pub(super) mod fetch_response {
    use super::super::Kind::{Array, Struct};
    use super::super::{BYTES, I16, I32, I64, LAST, Message, STRING, Shape, UUID, f, t};

    pub(in super::super) const MESSAGE: Message =
        Message { name: "FetchResponse", min: 4, max: 18, flexible: 12, root: &FETCH_RESPONSE };

    const ABORTED_TRANSACTION: Shape = Shape {
        name: "AbortedTransaction",
        fields: &[f("producer_id", 0, LAST, I64), f("first_offset", 0, LAST, I64)],
        tagged: &[],
    };

    const EPOCH_END_OFFSET: Shape = Shape {
        name: "EpochEndOffset",
        fields: &[f("epoch", 12, LAST, I32), f("end_offset", 12, LAST, I64)],
        tagged: &[],
    };

    const FETCH_RESPONSE: Shape = Shape {
        name: "FetchResponse",
        fields: &[
            f("throttle_time_ms", 0, LAST, I32),
            f("error_code", 7, LAST, I16),
            f("session_id", 7, LAST, I32),
            f("responses", 0, LAST, Array(&Struct(&FETCHABLE_TOPIC_RESPONSE))),
        ],
        tagged: &[t(0, "node_endpoints", 16, LAST, Array(&Struct(&NODE_ENDPOINT)))],
    };

    const FETCHABLE_TOPIC_RESPONSE: Shape = Shape {
        name: "FetchableTopicResponse",
        fields: &[
            f("topic", 0, 12, STRING),
            f("topic_id", 13, LAST, UUID),
            f("partitions", 0, LAST, Array(&Struct(&PARTITION_DATA))),
        ],
        tagged: &[],
    };

    const LEADER_ID_AND_EPOCH: Shape = Shape {
        name: "LeaderIdAndEpoch",
        fields: &[f("leader_id", 12, LAST, I32), f("leader_epoch", 12, LAST, I32)],
        tagged: &[],
    };

    const NODE_ENDPOINT: Shape = Shape {
        name: "NodeEndpoint",
        fields: &[
            f("node_id", 16, LAST, I32),
            f("host", 16, LAST, STRING),
            f("port", 16, LAST, I32),
            f("rack", 16, LAST, STRING),
        ],
        tagged: &[],
    };

    const PARTITION_DATA: Shape = Shape {
        name: "PartitionData",
        fields: &[
            f("partition_index", 0, LAST, I32),
            f("error_code", 0, LAST, I16),
            f("high_watermark", 0, LAST, I64),
            f("last_stable_offset", 0, LAST, I64),
            f("log_start_offset", 5, LAST, I64),
            f("aborted_transactions", 0, LAST, Array(&Struct(&ABORTED_TRANSACTION))),
            f("preferred_read_replica", 11, LAST, I32),
            f("records", 0, LAST, BYTES),
        ],
        tagged: &[
            t(0, "diverging_epoch", 0, LAST, Struct(&EPOCH_END_OFFSET)),
            t(1, "current_leader", 0, LAST, Struct(&LEADER_ID_AND_EPOCH)),
            t(2, "snapshot_id", 0, LAST, Struct(&SNAPSHOT_ID)),
        ],
    };

    const SNAPSHOT_ID: Shape = Shape {
        name: "SnapshotId",
        fields: &[f("end_offset", 0, LAST, I64), f("epoch", 0, LAST, I32)],
        tagged: &[],
    };
}

/// `CreateTopicsResponse`: versions 2-7, flexible from 5.
pub(super) mod create_topics_response {
    use super::super::Kind::{Array, Struct};
    use super::super::{BOOL, I8, I16, I32, LAST, Message, STRING, Shape, UUID, f, t};

    pub(in super::super) const MESSAGE: Message = Message {
        name: "CreateTopicsResponse",
        min: 2,
        max: 7,
        flexible: 5,
        root: &CREATE_TOPICS_RESPONSE,
    };

    const CREATABLE_TOPIC_CONFIGS: Shape = Shape {
        name: "CreatableTopicConfigs",
        fields: &[
            f("name", 5, LAST, STRING),
            f("value", 5, LAST, STRING),
            f("read_only", 5, LAST, BOOL),
            f("config_source", 5, LAST, I8),
            f("is_sensitive", 5, LAST, BOOL),
        ],
        tagged: &[],
    };

    const CREATABLE_TOPIC_RESULT: Shape = Shape {
        name: "CreatableTopicResult",
        fields: &[
            f("name", 0, LAST, STRING),
            f("topic_id", 7, LAST, UUID),
            f("error_code", 0, LAST, I16),
            f("error_message", 0, LAST, STRING),
            f("num_partitions", 5, LAST, I32),
            f("replication_factor", 5, LAST, I16),
            f("configs", 5, LAST, Array(&Struct(&CREATABLE_TOPIC_CONFIGS))),
        ],
        tagged: &[t(0, "topic_config_error_code", 0, LAST, I16)],
    };

    const CREATE_TOPICS_RESPONSE: Shape = Shape {
        name: "CreateTopicsResponse",
        fields: &[
            f("throttle_time_ms", 0, LAST, I32),
            f("topics", 0, LAST, Array(&Struct(&CREATABLE_TOPIC_RESULT))),
        ],
        tagged: &[],
    };
}

/// `ProduceResponse`: versions 3-13, flexible from 9.
pub(super) mod produce_response {
    use super::super::Kind::{Array, Struct};
    use super::super::{I16, I32, I64, LAST, Message, STRING, Shape, UUID, f, t};

    pub(in super::super) const MESSAGE: Message =
        Message { name: "ProduceResponse", min: 3, max: 13, flexible: 9, root: &PRODUCE_RESPONSE };

    const BATCH_INDEX_AND_ERROR_MESSAGE: Shape = Shape {
        name: "BatchIndexAndErrorMessage",
        fields: &[f("batch_index", 8, LAST, I32), f("batch_index_error_message", 8, LAST, STRING)],
        tagged: &[],
    };

    const LEADER_ID_AND_EPOCH: Shape = Shape {
        name: "LeaderIdAndEpoch",
        fields: &[f("leader_id", 10, LAST, I32), f("leader_epoch", 10, LAST, I32)],
        tagged: &[],
    };

    const NODE_ENDPOINT: Shape = Shape {
        name: "NodeEndpoint",
        fields: &[
            f("node_id", 10, LAST, I32),
            f("host", 10, LAST, STRING),
            f("port", 10, LAST, I32),
            f("rack", 10, LAST, STRING),
        ],
        tagged: &[],
    };

    const PARTITION_PRODUCE_RESPONSE: Shape = Shape {
        name: "PartitionProduceResponse",
        fields: &[
            f("index", 0, LAST, I32),
            f("error_code", 0, LAST, I16),
            f("base_offset", 0, LAST, I64),
            f("log_append_time_ms", 0, LAST, I64),
            f("log_start_offset", 5, LAST, I64),
            f("record_errors", 8, LAST, Array(&Struct(&BATCH_INDEX_AND_ERROR_MESSAGE))),
            f("error_message", 8, LAST, STRING),
        ],
        tagged: &[t(0, "current_leader", 10, LAST, Struct(&LEADER_ID_AND_EPOCH))],
    };

    const PRODUCE_RESPONSE: Shape = Shape {
        name: "ProduceResponse",
        fields: &[
            f("responses", 0, LAST, Array(&Struct(&TOPIC_PRODUCE_RESPONSE))),
            f("throttle_time_ms", 0, LAST, I32),
        ],
        tagged: &[t(0, "node_endpoints", 10, LAST, Array(&Struct(&NODE_ENDPOINT)))],
    };

    const TOPIC_PRODUCE_RESPONSE: Shape = Shape {
        name: "TopicProduceResponse",
        fields: &[
            f("name", 0, 12, STRING),
            f("topic_id", 13, LAST, UUID),
            f("partition_responses", 0, LAST, Array(&Struct(&PARTITION_PRODUCE_RESPONSE))),
        ],
        tagged: &[],
    };
}

/// `SaslHandshakeResponse`: versions 0-1, never flexible.
pub(super) mod sasl_handshake_response {
    use super::super::Kind::Array;
    use super::super::{I16, LAST, Message, NEVER, STRING, Shape, f};

    pub(in super::super) const MESSAGE: Message = Message {
        name: "SaslHandshakeResponse",
        min: 0,
        max: 1,
        flexible: NEVER,
        root: &SASL_HANDSHAKE_RESPONSE,
    };

    const SASL_HANDSHAKE_RESPONSE: Shape = Shape {
        name: "SaslHandshakeResponse",
        fields: &[f("error_code", 0, LAST, I16), f("mechanisms", 0, LAST, Array(&STRING))],
        tagged: &[],
    };
}

/// `SaslAuthenticateResponse`: versions 0-2, flexible from 2.
pub(super) mod sasl_authenticate_response {
    use super::super::{BYTES, I16, I64, LAST, Message, STRING, Shape, f};

    pub(in super::super) const MESSAGE: Message = Message {
        name: "SaslAuthenticateResponse",
        min: 0,
        max: 2,
        flexible: 2,
        root: &SASL_AUTHENTICATE_RESPONSE,
    };

    const SASL_AUTHENTICATE_RESPONSE: Shape = Shape {
        name: "SaslAuthenticateResponse",
        fields: &[
            f("error_code", 0, LAST, I16),
            f("error_message", 0, LAST, STRING),
            f("auth_bytes", 0, LAST, BYTES),
            f("session_lifetime_ms", 1, LAST, I64),
        ],
        tagged: &[],
    };
}

/// `InitProducerIdResponse`: versions 0-6, flexible from 2.
pub(super) mod init_producer_id_response {
    use super::super::{I16, I32, I64, LAST, Message, Shape, f};

    pub(in super::super) const MESSAGE: Message = Message {
        name: "InitProducerIdResponse",
        min: 0,
        max: 6,
        flexible: 2,
        root: &INIT_PRODUCER_ID_RESPONSE,
    };

    const INIT_PRODUCER_ID_RESPONSE: Shape = Shape {
        name: "InitProducerIdResponse",
        fields: &[
            f("throttle_time_ms", 0, LAST, I32),
            f("error_code", 0, LAST, I16),
            f("producer_id", 0, LAST, I64),
            f("producer_epoch", 0, LAST, I16),
            f("ongoing_txn_producer_id", 6, LAST, I64),
            f("ongoing_txn_producer_epoch", 6, LAST, I16),
        ],
        tagged: &[],
    };
}

/// `ConsumerProtocolSubscription`: versions 0-3, never flexible.
pub(super) mod consumer_protocol_subscription {
    use super::super::Kind::{Array, Struct};
    use super::super::{BYTES, I32, LAST, Message, NEVER, STRING, Shape, f};

    pub(in super::super) const MESSAGE: Message = Message {
        name: "ConsumerProtocolSubscription",
        min: 0,
        max: 3,
        flexible: NEVER,
        root: &CONSUMER_PROTOCOL_SUBSCRIPTION,
    };

    const CONSUMER_PROTOCOL_SUBSCRIPTION: Shape = Shape {
        name: "ConsumerProtocolSubscription",
        fields: &[
            f("topics", 0, LAST, Array(&STRING)),
            f("user_data", 0, LAST, BYTES),
            f("owned_partitions", 1, LAST, Array(&Struct(&TOPIC_PARTITION))),
            f("generation_id", 2, LAST, I32),
            f("rack_id", 3, LAST, STRING),
        ],
        tagged: &[],
    };

    const TOPIC_PARTITION: Shape = Shape {
        name: "TopicPartition",
        fields: &[f("topic", 1, LAST, STRING), f("partitions", 1, LAST, Array(&I32))],
        tagged: &[],
    };
}

/// `ConsumerProtocolAssignment`: versions 0-3, never flexible.
pub(super) mod consumer_protocol_assignment {
    use super::super::Kind::{Array, Struct};
    use super::super::{BYTES, I32, LAST, Message, NEVER, STRING, Shape, f};

    pub(in super::super) const MESSAGE: Message = Message {
        name: "ConsumerProtocolAssignment",
        min: 0,
        max: 3,
        flexible: NEVER,
        root: &CONSUMER_PROTOCOL_ASSIGNMENT,
    };

    const CONSUMER_PROTOCOL_ASSIGNMENT: Shape = Shape {
        name: "ConsumerProtocolAssignment",
        fields: &[
            f("assigned_partitions", 0, LAST, Array(&Struct(&TOPIC_PARTITION))),
            f("user_data", 0, LAST, BYTES),
        ],
        tagged: &[],
    };

    const TOPIC_PARTITION: Shape = Shape {
        name: "TopicPartition",
        fields: &[f("topic", 0, LAST, STRING), f("partitions", 0, LAST, Array(&I32))],
        tagged: &[],
    };
}
