//! Entry points for the fuzz targets (`fuzz/` in the workspace, run by `cargo xtask fuzz`): the
//! decoders of everything brokers and other group members send, as the crate runs them.
//! Behind the `fuzzing` feature; not for services.
//!
//! Owns: [`RESPONSES`], [`decode_response_frame`], [`decode_records`], [`Records`],
//! [`decode_subscription`], [`decode_assignment`], and the capture of real responses as seeds
//! ([`capture_responses`]: every response a connection of this process reads is written to a
//! directory, in the `responses` target's input format).
//!
//! Invariant: each entry point runs the crate's own code path (the same functions a connection,
//! a reader or a group leader calls), with no shortcut of its own, so a crash found here is a
//! crash of the bus.

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll, Waker};

use bytes::Bytes;
use kafka_protocol::messages::{
    ApiVersionsRequest, CreatePartitionsRequest, CreateTopicsRequest, DeleteTopicsRequest,
    DescribeConfigsRequest, DescribeGroupsRequest, FetchRequest, FindCoordinatorRequest,
    HeartbeatRequest, InitProducerIdRequest, JoinGroupRequest, LeaveGroupRequest,
    ListGroupsRequest, ListOffsetsRequest, MetadataRequest, OffsetCommitRequest,
    OffsetFetchRequest, ProduceRequest, SaslAuthenticateRequest, SaslHandshakeRequest,
    SyncGroupRequest,
};

use crate::connection::api::Api;
use crate::connection::frame::{decode_frame, response_size};
use crate::fetch::fuzzing as fetch;

/// The responses the crate reads, by name, with the versions it asks for: the index into
/// this list selects one in [`decode_response_frame`].
pub const RESPONSES: [(&str, i16, i16); 21] = [
    ("ApiVersions", ApiVersionsRequest::MIN, ApiVersionsRequest::MAX),
    ("FindCoordinator", FindCoordinatorRequest::MIN, FindCoordinatorRequest::MAX),
    ("JoinGroup", JoinGroupRequest::MIN, JoinGroupRequest::MAX),
    ("SyncGroup", SyncGroupRequest::MIN, SyncGroupRequest::MAX),
    ("Heartbeat", HeartbeatRequest::MIN, HeartbeatRequest::MAX),
    ("LeaveGroup", LeaveGroupRequest::MIN, LeaveGroupRequest::MAX),
    ("OffsetCommit", OffsetCommitRequest::MIN, OffsetCommitRequest::MAX),
    ("OffsetFetch", OffsetFetchRequest::MIN, OffsetFetchRequest::MAX),
    ("Metadata", MetadataRequest::MIN, MetadataRequest::MAX),
    ("ListOffsets", ListOffsetsRequest::MIN, ListOffsetsRequest::MAX),
    ("Fetch", FetchRequest::MIN, FetchRequest::MAX),
    ("CreateTopics", CreateTopicsRequest::MIN, CreateTopicsRequest::MAX),
    ("Produce", ProduceRequest::MIN, ProduceRequest::MAX),
    ("SaslHandshake", SaslHandshakeRequest::MIN, SaslHandshakeRequest::MAX),
    ("SaslAuthenticate", SaslAuthenticateRequest::MIN, SaslAuthenticateRequest::MAX),
    ("InitProducerId", InitProducerIdRequest::MIN, InitProducerIdRequest::MAX),
    ("DescribeConfigs", DescribeConfigsRequest::MIN, DescribeConfigsRequest::MAX),
    ("DeleteTopics", DeleteTopicsRequest::MIN, DeleteTopicsRequest::MAX),
    ("CreatePartitions", CreatePartitionsRequest::MIN, CreatePartitionsRequest::MAX),
    ("ListGroups", ListGroupsRequest::MIN, ListGroupsRequest::MAX),
    ("DescribeGroups", DescribeGroupsRequest::MIN, DescribeGroupsRequest::MAX),
];

/// Frames and decodes `frame` (a size prefix, then the response: header and body) as the
/// response of [`RESPONSES`]`[api]` in `version`, with correlation id 1, as a connection reads
/// one: the prefix checked against the kind's bound (a Fetch's for 1 MiB asked), then the
/// header, the body's shape, and `kafka-protocol`'s decoder.
///
/// # Errors
///
/// Why the frame is refused.
pub fn decode_response_frame(api: usize, version: i16, frame: &[u8]) -> Result<(), String> {
    fn run<R: Api + Default>(request: R, version: i16, frame: &[u8]) -> Result<(), String> {
        let prefix = frame.get(..4).ok_or("no size prefix")?;
        let prefix = i32::from_be_bytes([prefix[0], prefix[1], prefix[2], prefix[3]]);
        let size = response_size(prefix, request.response_limit(), R::NAME)?;
        let body = frame.get(4..).and_then(|b| b.get(..size)).ok_or("the frame is cut short")?;
        decode_frame::<R>(Bytes::copy_from_slice(body), version, 1).map(drop)
    }
    let mut fetch = FetchRequest::default();
    fetch.max_bytes = 1 << 20;
    match api {
        0 => run(ApiVersionsRequest::default(), version, frame),
        1 => run(FindCoordinatorRequest::default(), version, frame),
        2 => run(JoinGroupRequest::default(), version, frame),
        3 => run(SyncGroupRequest::default(), version, frame),
        4 => run(HeartbeatRequest::default(), version, frame),
        5 => run(LeaveGroupRequest::default(), version, frame),
        6 => run(OffsetCommitRequest::default(), version, frame),
        7 => run(OffsetFetchRequest::default(), version, frame),
        8 => run(MetadataRequest::default(), version, frame),
        9 => run(ListOffsetsRequest::default(), version, frame),
        10 => run(fetch, version, frame),
        11 => run(CreateTopicsRequest::default(), version, frame),
        12 => run(ProduceRequest::default(), version, frame),
        13 => run(SaslHandshakeRequest::default(), version, frame),
        14 => run(SaslAuthenticateRequest::default(), version, frame),
        15 => run(InitProducerIdRequest::default(), version, frame),
        16 => run(DescribeConfigsRequest::default(), version, frame),
        17 => run(DeleteTopicsRequest::default(), version, frame),
        18 => run(CreatePartitionsRequest::default(), version, frame),
        19 => run(ListGroupsRequest::default(), version, frame),
        20 => run(DescribeGroupsRequest::default(), version, frame),
        _ => Err(format!("no response {api}")),
    }
}

/// What decoding a partition's records gave.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Records {
    /// The offsets of the messages decoded, in order.
    pub offsets: Vec<i64>,
    /// The position after them.
    pub next: Option<i64>,
    /// The first offset of a batch that cannot be read, and why.
    pub unreadable: Option<(i64, String)>,
}

/// Decodes a Fetch response partition's `records` as a reader does, from `from`, with
/// `aborted` (producer id, first offset) as its aborted transactions (read_committed when
/// `read_committed`), batches inflating to at most `max_decompressed` bytes.
pub fn decode_records(
    records: &[u8],
    from: i64,
    read_committed: bool,
    aborted: &[(i64, i64)],
    max_decompressed: usize,
) -> Records {
    let future = fetch::decode(
        Bytes::copy_from_slice(records),
        Arc::from("fuzz"),
        from,
        read_committed,
        aborted.to_vec(),
        max_decompressed,
    );
    let mut future = std::pin::pin!(future);
    let mut context = Context::from_waker(Waker::noop());
    // The budget is larger than anything a decode holds: it never waits.
    match future.as_mut().poll(&mut context) {
        Poll::Ready((offsets, next, unreadable)) => Records { offsets, next, unreadable },
        Poll::Pending => Records {
            offsets: Vec::new(),
            next: None,
            unreadable: Some((from, "the decode waited for memory".into())),
        },
    }
}

/// Decodes a group member's subscription (JoinGroup metadata) as the group's leader does.
///
/// # Errors
///
/// Why it cannot be read.
pub fn decode_subscription(metadata: &[u8]) -> Result<Vec<String>, String> {
    crate::group::codec::decode_subscription(metadata).map(|s| s.topics)
}

/// Decodes an assignment (SyncGroup) as a member does: topic and partitions.
///
/// # Errors
///
/// Why it cannot be read.
pub fn decode_assignment(bytes: &[u8]) -> Result<Vec<(String, Vec<i32>)>, String> {
    crate::group::codec::decode_assignment(bytes).map(|a| a.into_iter().collect())
}

/// Where responses are captured, when [`capture_responses`] was called.
static CAPTURE: OnceLock<PathBuf> = OnceLock::new();
/// Responses captured so far (file names).
static CAPTURED: AtomicU64 = AtomicU64::new(0);

/// From now on, every response frame a connection of this process reads (of a kind in
/// [`RESPONSES`]) is written to `dir` as an input of the `responses` fuzz target: the kind's
/// index, the version's offset from its lowest, the size prefix and the frame. For seeding the
/// fuzzers with real traffic (`cargo xtask fuzz --seeds`). Can be set once per process.
///
/// # Errors
///
/// When the directory cannot be made, or capture was set already.
pub fn capture_responses(dir: impl Into<PathBuf>) -> Result<(), String> {
    let dir = dir.into();
    std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    CAPTURE.set(dir).map_err(|_| "capture is set already".to_owned())
}

/// Called by the connection for every response frame read (what followed its size prefix;
/// the correlation id rewritten to 1, the one [`decode_response_frame`] expects).
pub(crate) fn capture(api: &str, version: i16, frame: &[u8]) {
    let Some(dir) = CAPTURE.get() else { return };
    let Some((kind, (_, min, _))) = RESPONSES.iter().enumerate().find(|(_, (n, _, _))| *n == api)
    else {
        return;
    };
    let (Ok(kind), Ok(offset), Ok(size)) =
        (u8::try_from(kind), u8::try_from(version - min), i32::try_from(frame.len()))
    else {
        return;
    };
    let mut input = vec![kind, offset];
    input.extend_from_slice(&size.to_be_bytes());
    input.extend_from_slice(&1i32.to_be_bytes());
    input.extend_from_slice(frame.get(4..).unwrap_or_default());
    let n = CAPTURED.fetch_add(1, Ordering::Relaxed);
    let path = dir.join(format!("{api}-v{version}-{}-{n}", std::process::id()));
    if let Err(error) = std::fs::write(&path, input) {
        tracing::warn!(path = %path.display(), %error, "cannot write a captured response");
    }
}
