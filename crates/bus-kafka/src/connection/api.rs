//! The API table: [`Api`], every request type this crate sends with the versions we implement
//! for it, the shape its response is checked against and the bound on its response's size.

use kafka_protocol::messages::{
    ApiKey, ApiVersionsRequest, ApiVersionsResponse, CreatePartitionsRequest,
    CreatePartitionsResponse, CreateTopicsRequest, CreateTopicsResponse, DeleteTopicsRequest,
    DeleteTopicsResponse, DescribeConfigsRequest, DescribeConfigsResponse, DescribeGroupsRequest,
    DescribeGroupsResponse, FetchRequest, FetchResponse, FindCoordinatorRequest,
    FindCoordinatorResponse, HeartbeatRequest, HeartbeatResponse, InitProducerIdRequest,
    InitProducerIdResponse, JoinGroupRequest, JoinGroupResponse, LeaveGroupRequest,
    LeaveGroupResponse, ListGroupsRequest, ListGroupsResponse, ListOffsetsRequest,
    ListOffsetsResponse, MetadataRequest, MetadataResponse, OffsetCommitRequest,
    OffsetCommitResponse, OffsetFetchRequest, OffsetFetchResponse, ProduceRequest, ProduceResponse,
    SaslAuthenticateRequest, SaslAuthenticateResponse, SaslHandshakeRequest, SaslHandshakeResponse,
    SyncGroupRequest, SyncGroupResponse,
};
use kafka_protocol::protocol::{Decodable, Encodable, HeaderVersion};

use crate::config::limits::{FETCH_RESPONSE_SLACK, MAX_FETCH_BYTES};
use crate::schema;

const KIB: usize = 1024;
const MIB: usize = 1024 * 1024;

/// A request type this crate sends and the versions we implement for it.
pub(crate) trait Api: Encodable + HeaderVersion {
    /// The API key.
    const KEY: ApiKey;
    /// The API's name, for errors and logs.
    const NAME: &'static str;
    /// The lowest version we implement.
    const MIN: i16;
    /// The highest version we implement.
    const MAX: i16;
    /// The response type.
    type Response: Decodable + HeaderVersion;
    /// The response's shape, checked before it is decoded.
    const SHAPE: &'static schema::Message;
    /// The largest response body accepted for this kind of request.
    const MAX_RESPONSE_BYTES: usize;

    /// The largest response body accepted for this request (the kind's bound unless the
    /// request itself says how much it asks for).
    fn response_limit(&self) -> usize {
        Self::MAX_RESPONSE_BYTES
    }
}

macro_rules! api {
    (
        $request:ty, $response:ty, $key:ident, $name:literal, $min:literal, $max:literal,
        $shape:expr, $limit:expr $(, fn $limit_fn:ident($self:ident) $body:block)?
    ) => {
        impl Api for $request {
            const KEY: ApiKey = ApiKey::$key;
            const NAME: &'static str = $name;
            const MIN: i16 = $min;
            const MAX: i16 = $max;
            type Response = $response;
            const SHAPE: &'static schema::Message = $shape;
            const MAX_RESPONSE_BYTES: usize = $limit;
            $(fn $limit_fn(&$self) -> usize $body)?
        }
    };
}

// The bounds on responses: generous for what the broker can have to say (a group of a thousand
// members, a topic of ten thousand partitions), small against what memory a hostile one could
// make us reserve (the schema check bounds what decoding makes of them to a few times their
// size).
api!(
    ApiVersionsRequest,
    ApiVersionsResponse,
    ApiVersions,
    "ApiVersions",
    0,
    4,
    schema::API_VERSIONS,
    64 * KIB
);
// The group plane's coordinator links.
api!(
    FindCoordinatorRequest,
    FindCoordinatorResponse,
    FindCoordinator,
    "FindCoordinator",
    0,
    6,
    schema::FIND_COORDINATOR,
    64 * KIB
);
api!(JoinGroupRequest, JoinGroupResponse, JoinGroup, "JoinGroup", 0, 9, schema::JOIN_GROUP, MIB);
api!(SyncGroupRequest, SyncGroupResponse, SyncGroup, "SyncGroup", 0, 5, schema::SYNC_GROUP, MIB);
api!(
    HeartbeatRequest,
    HeartbeatResponse,
    Heartbeat,
    "Heartbeat",
    0,
    4,
    schema::HEARTBEAT,
    64 * KIB
);
api!(
    LeaveGroupRequest,
    LeaveGroupResponse,
    LeaveGroup,
    "LeaveGroup",
    0,
    5,
    schema::LEAVE_GROUP,
    64 * KIB
);
api!(
    OffsetCommitRequest,
    OffsetCommitResponse,
    OffsetCommit,
    "OffsetCommit",
    2,
    9,
    schema::OFFSET_COMMIT,
    MIB
);
api!(
    OffsetFetchRequest,
    OffsetFetchResponse,
    OffsetFetch,
    "OffsetFetch",
    1,
    9,
    schema::OFFSET_FETCH,
    4 * MIB
);
// Leader lookup (producer and readers), start offsets and records (the readers: topics by
// name; v12 is the last Fetch version that names them, v13+ name topics by id).
api!(MetadataRequest, MetadataResponse, Metadata, "Metadata", 1, 9, schema::METADATA, 4 * MIB);
api!(
    ListOffsetsRequest,
    ListOffsetsResponse,
    ListOffsets,
    "ListOffsets",
    1,
    7,
    schema::LIST_OFFSETS,
    MIB
);
api!(
    FetchRequest,
    FetchResponse,
    Fetch,
    "Fetch",
    4,
    12,
    schema::FETCH,
    MAX_FETCH_BYTES + FETCH_RESPONSE_SLACK,
    fn response_limit(self) {
        usize::try_from(self.max_bytes).unwrap_or(0).saturating_add(FETCH_RESPONSE_SLACK)
    }
);
// Topic creation at the controller (the cluster client).
api!(
    CreateTopicsRequest,
    CreateTopicsResponse,
    CreateTopics,
    "CreateTopics",
    1,
    7,
    schema::CREATE_TOPICS,
    MIB
);
// The producer (v3 is the first with record batches v2; v13 the first naming topics by id).
api!(ProduceRequest, ProduceResponse, Produce, "Produce", 3, 9, schema::PRODUCE, MIB);
// SASL (v0 of SaslHandshake means unframed SASL tokens, which we do not speak; SaslAuthenticate
// v1 is the first with the session lifetime).
api!(
    SaslHandshakeRequest,
    SaslHandshakeResponse,
    SaslHandshake,
    "SaslHandshake",
    1,
    1,
    schema::SASL_HANDSHAKE,
    64 * KIB
);
api!(
    SaslAuthenticateRequest,
    SaslAuthenticateResponse,
    SaslAuthenticate,
    "SaslAuthenticate",
    0,
    2,
    schema::SASL_AUTHENTICATE,
    MIB
);
// Administration (`admin`): topic configuration, deletion and growth at the controller (v1 of
// DescribeConfigs is the first with each entry's source), groups on every broker and at their
// coordinator.
api!(
    DescribeConfigsRequest,
    DescribeConfigsResponse,
    DescribeConfigs,
    "DescribeConfigs",
    1,
    4,
    schema::DESCRIBE_CONFIGS,
    4 * MIB
);
api!(
    DeleteTopicsRequest,
    DeleteTopicsResponse,
    DeleteTopics,
    "DeleteTopics",
    1,
    6,
    schema::DELETE_TOPICS,
    MIB
);
api!(
    CreatePartitionsRequest,
    CreatePartitionsResponse,
    CreatePartitions,
    "CreatePartitions",
    0,
    3,
    schema::CREATE_PARTITIONS,
    MIB
);
api!(
    ListGroupsRequest,
    ListGroupsResponse,
    ListGroups,
    "ListGroups",
    0,
    5,
    schema::LIST_GROUPS,
    4 * MIB
);
api!(
    DescribeGroupsRequest,
    DescribeGroupsResponse,
    DescribeGroups,
    "DescribeGroups",
    0,
    5,
    schema::DESCRIBE_GROUPS,
    4 * MIB
);
// The idempotent producer's id and epoch (v3 is the first that can bump an epoch: KIP-360).
api!(
    InitProducerIdRequest,
    InitProducerIdResponse,
    InitProducerId,
    "InitProducerId",
    0,
    5,
    schema::INIT_PRODUCER_ID,
    64 * KIB
);
