//! A scripted Kafka peer: a small TCP server speaking Kafka's protocol (with the
//! `kafka-protocol` crate, independent of the library's own codecs) that serves a topic whose
//! record batches the test writes byte by byte, and lets the test replace any answer with bytes
//! of its own.
//!
//! It is an adversary and an oracle's stage, never a stand-in for Kafka in functional tests:
//! the hostile-peer tests use it to send what no sane broker sends (count bombs with valid
//! CRCs, decompression bombs, array-count bombs), the read_committed test to serve transactional
//! batches and aborted-transaction lists no installable broker produces, and the deadline tests
//! to stay silent.
//!
//! What it serves by itself (one broker, node 0, itself): ApiVersions (a fixed list), Metadata
//! (the scripted topic, its partitions led by itself; other topics unknown), FindCoordinator
//! (itself), a one-generation group where every member that joins is alone and its own leader
//! (JoinGroup, SyncGroup echoing the leader's assignment, Heartbeat, LeaveGroup), OffsetFetch
//! (nothing committed), OffsetCommit (accepted), ListOffsets (the log's start and end), and Fetch
//! (the batches at and after the offset asked for, whole, with the aborted transactions they
//! overlap; an empty answer waits up to 100 ms). Anything else is left unanswered (Produce is
//! offered but never answered).
//!
//! Threads: one accepting, one per connection; all are stopped and joined when the peer is
//! dropped (connections are shut down).

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::thread::JoinHandle;
use std::time::Duration;

use bytes::{BufMut, Bytes, BytesMut};
use kafka_protocol::messages::api_versions_response::ApiVersion;
use kafka_protocol::messages::fetch_response::{
    AbortedTransaction, FetchableTopicResponse, PartitionData,
};
use kafka_protocol::messages::join_group_response::JoinGroupResponseMember;
use kafka_protocol::messages::list_offsets_response::{
    ListOffsetsPartitionResponse, ListOffsetsTopicResponse,
};
use kafka_protocol::messages::metadata_response::{
    MetadataResponseBroker, MetadataResponsePartition, MetadataResponseTopic,
};
use kafka_protocol::messages::offset_commit_response::{
    OffsetCommitResponsePartition, OffsetCommitResponseTopic,
};
use kafka_protocol::messages::offset_fetch_response::{
    OffsetFetchResponsePartition, OffsetFetchResponseTopic,
};
use kafka_protocol::messages::*;
use kafka_protocol::protocol::{Decodable, Encodable, StrBytes};
use kafka_protocol::records::{
    Compression, Record, RecordBatchEncoder, RecordEncodeOptions, TimestampType,
};

/// A request as received.
#[derive(Debug, Clone)]
pub struct Request {
    /// The API.
    pub api: ApiKey,
    /// Its version.
    pub version: i16,
    /// The body after the request header.
    pub body: Bytes,
}

impl Request {
    /// The body decoded as `R`.
    ///
    /// # Panics
    ///
    /// When it does not decode.
    pub fn decode<R: Decodable>(&self) -> R {
        R::decode(&mut self.body.clone(), self.version)
            .unwrap_or_else(|e| panic!("scripted peer: cannot decode {:?}: {e}", self.api))
    }
}

/// What to answer instead of the scripted answer: the raw response body (after the response
/// header), or `None` to answer as scripted.
pub type Override = Arc<dyn Fn(&Request) -> Option<Bytes> + Send + Sync>;

/// One record batch of the scripted log, as written on the wire.
#[derive(Debug, Clone)]
pub struct Batch {
    /// Its first offset.
    pub first: i64,
    /// Its last offset.
    pub last: i64,
    /// The batch.
    pub bytes: Bytes,
}

/// An aborted transaction: its producer, its first offset, and the offset of its ABORT marker.
#[derive(Debug, Clone, Copy)]
pub struct Aborted {
    /// The producer id.
    pub producer: i64,
    /// The transaction's first offset.
    pub first: i64,
    /// Where its ABORT marker is.
    pub marker: i64,
}

/// One partition of the scripted topic.
#[derive(Debug, Clone, Default)]
pub struct Log {
    /// Its batches in offset order.
    pub batches: Vec<Batch>,
    /// Its aborted transactions.
    pub aborted: Vec<Aborted>,
}

impl Log {
    /// The offset after the last batch.
    pub fn end(&self) -> i64 {
        self.batches.last().map_or(0, |b| b.last + 1)
    }

    /// Appends a batch of `records` (key, value) starting at the end, as `kind` says.
    pub fn append(&mut self, records: &[(Option<&str>, Option<&[u8]>)], kind: BatchKind) -> i64 {
        let first = self.end();
        let bytes = encode_batch(first, records, kind);
        let last = first + records.len() as i64 - 1;
        self.batches.push(Batch { first, last, bytes });
        first
    }

    /// Appends a batch given as bytes, covering `count` offsets.
    pub fn append_raw(&mut self, bytes: Bytes, count: i64) -> i64 {
        let first = self.end();
        self.batches.push(Batch { first, last: first + count - 1, bytes });
        first
    }

    /// Appends a transaction marker of `producer` (ABORT when `abort`), recording the aborted
    /// transaction that began at `first` when it is one.
    pub fn marker(&mut self, producer: i64, abort: bool, first: i64) -> i64 {
        let mut key = BytesMut::new();
        key.put_i16(0);
        key.put_i16(if abort { 0 } else { 1 });
        let mut value = BytesMut::new();
        value.put_i16(0);
        value.put_i32(0);
        let kind = BatchKind { control: true, transactional: true, producer, ..BatchKind::PLAIN };
        let at = self.end();
        let record = record(at, None, Some(&value), kind, Some(key.freeze()));
        let bytes = encode(&[record], kind.compression);
        self.batches.push(Batch { first: at, last: at, bytes });
        if abort {
            self.aborted.push(Aborted { producer, first, marker: at });
        }
        at
    }
}

/// How a scripted batch is written.
#[derive(Debug, Clone, Copy)]
pub struct BatchKind {
    /// Its codec.
    pub compression: Compression,
    /// A transactional batch.
    pub transactional: bool,
    /// A control batch.
    pub control: bool,
    /// The producer id (-1: none).
    pub producer: i64,
}

impl BatchKind {
    /// A plain, uncompressed batch without a producer.
    pub const PLAIN: BatchKind = BatchKind {
        compression: Compression::None,
        transactional: false,
        control: false,
        producer: -1,
    };

    /// A transactional batch of `producer`.
    pub fn transactional(producer: i64) -> BatchKind {
        BatchKind { transactional: true, producer, ..BatchKind::PLAIN }
    }
}

fn record(
    offset: i64,
    key: Option<&str>,
    value: Option<&[u8]>,
    kind: BatchKind,
    raw_key: Option<Bytes>,
) -> Record {
    Record {
        transactional: kind.transactional,
        control: kind.control,
        delete_horizon: false,
        partition_leader_epoch: 0,
        producer_id: kind.producer,
        producer_epoch: if kind.producer >= 0 { 0 } else { -1 },
        timestamp_type: TimestampType::Creation,
        offset,
        // kafka-protocol's encoder starts a new batch where `offset - sequence` changes.
        sequence: offset as i32,
        timestamp: 1_700_000_000_000 + offset,
        key: raw_key.or_else(|| key.map(|k| Bytes::copy_from_slice(k.as_bytes()))),
        value: value.map(Bytes::copy_from_slice),
        headers: Default::default(),
    }
}

fn encode(records: &[Record], compression: Compression) -> Bytes {
    let mut out = BytesMut::new();
    RecordBatchEncoder::encode(&mut out, records, &RecordEncodeOptions { version: 2, compression })
        .expect("scripted peer: cannot encode a batch");
    out.freeze()
}

/// A record batch (magic 2, `kafka-protocol`'s encoder) of `records` from `first`.
pub fn encode_batch(
    first: i64,
    records: &[(Option<&str>, Option<&[u8]>)],
    kind: BatchKind,
) -> Bytes {
    let records: Vec<Record> = records
        .iter()
        .enumerate()
        .map(|(i, (key, value))| record(first + i as i64, *key, *value, kind, None))
        .collect();
    encode(&records, kind.compression)
}

/// Sets a batch's record count to `count` and fixes its CRC: a forged count a broker would
/// refuse, with a valid checksum.
pub fn forge_count(batch: &[u8], count: i32) -> Bytes {
    let mut batch = batch.to_vec();
    batch[57..61].copy_from_slice(&count.to_be_bytes());
    let crc = crc32c::crc32c(&batch[21..]);
    batch[17..21].copy_from_slice(&crc.to_be_bytes());
    Bytes::from(batch)
}

/// A record batch (magic 2) of one record whose records section is `section` as given
/// (already compressed with `codec`: 1 gzip, 2 snappy, 3 lz4, 4 zstd), with a valid CRC.
pub fn batch_around(first: i64, codec: i16, section: &[u8]) -> Bytes {
    let mut out = BytesMut::new();
    out.put_i64(first);
    out.put_i32(0); // length, below
    out.put_i32(-1);
    out.put_i8(2);
    out.put_u32(0); // CRC, below
    out.put_i16(codec);
    out.put_i32(0); // last offset delta
    out.put_i64(1_700_000_000_000);
    out.put_i64(1_700_000_000_000);
    out.put_i64(-1);
    out.put_i16(-1);
    out.put_i32(-1);
    out.put_i32(1);
    out.put_slice(section);
    let length = (out.len() - 12) as i32;
    out[8..12].copy_from_slice(&length.to_be_bytes());
    let crc = crc32c::crc32c(&out[21..]);
    out[17..21].copy_from_slice(&crc.to_be_bytes());
    out.freeze()
}

/// What the peer serves.
#[derive(Clone)]
pub struct Script {
    /// The topic.
    pub topic: String,
    /// Its partitions' logs.
    pub partitions: Vec<Log>,
    /// The APIs answered and the versions offered.
    pub versions: Vec<(ApiKey, i16, i16)>,
    /// Replaces answers.
    pub hostile: Option<Override>,
    /// Replaces whole frames: what it returns is written as is, size prefix included (then
    /// the connection waits, unanswered).
    pub raw_frames: Option<Override>,
}

impl Script {
    /// A topic of `partitions` empty partitions, every API answered in versions both the bus
    /// and librdkafka speak (Fetch up to v12: topics by name).
    pub fn new(topic: &str, partitions: usize) -> Script {
        Script {
            topic: topic.to_owned(),
            partitions: vec![Log::default(); partitions],
            versions: vec![
                (ApiKey::ApiVersions, 0, 3),
                (ApiKey::Metadata, 1, 9),
                (ApiKey::FindCoordinator, 0, 3),
                (ApiKey::JoinGroup, 0, 7),
                (ApiKey::SyncGroup, 0, 5),
                (ApiKey::Heartbeat, 0, 4),
                (ApiKey::LeaveGroup, 0, 4),
                (ApiKey::OffsetFetch, 1, 7),
                (ApiKey::OffsetCommit, 2, 8),
                (ApiKey::ListOffsets, 1, 7),
                (ApiKey::Fetch, 4, 12),
                // Offered (librdkafka reads record batches v2 only from brokers offering
                // Produce v3+), never answered.
                (ApiKey::Produce, 3, 9),
            ],
            hostile: None,
            raw_frames: None,
        }
    }

    /// Answers only ApiVersions; everything else is left without an answer.
    pub fn silent_after_handshake(mut self) -> Script {
        self.hostile = Some(Arc::new(|request: &Request| {
            (request.api != ApiKey::ApiVersions).then(Bytes::new)
        }));
        self
    }
}

/// The scripted peer, listening on 127.0.0.1. Dropping it stops and joins its threads.
pub struct ScriptedBroker {
    address: SocketAddr,
    script: Arc<RwLock<Script>>,
    stop: Arc<AtomicBool>,
    streams: Arc<Mutex<Vec<TcpStream>>>,
    threads: Arc<Mutex<Vec<JoinHandle<()>>>>,
    acceptor: Option<JoinHandle<()>>,
    requests: Arc<AtomicUsize>,
}

/// Marks an answer as "never answer" (the override returned an empty body for it).
fn unanswered(body: &Bytes) -> bool {
    body.is_empty()
}

impl ScriptedBroker {
    /// Starts serving `script`.
    pub fn start(script: Script) -> ScriptedBroker {
        let listener = TcpListener::bind("127.0.0.1:0").expect("scripted peer: bind");
        let address = listener.local_addr().expect("scripted peer: address");
        listener.set_nonblocking(true).expect("scripted peer: nonblocking");
        let stop = Arc::new(AtomicBool::new(false));
        let streams: Arc<Mutex<Vec<TcpStream>>> = Arc::default();
        let threads: Arc<Mutex<Vec<JoinHandle<()>>>> = Arc::default();
        let requests = Arc::new(AtomicUsize::new(0));
        let script = Arc::new(RwLock::new(script));
        let shared = Arc::clone(&script);
        let acceptor = {
            let (stop, streams, threads, requests) =
                (stop.clone(), streams.clone(), threads.clone(), requests.clone());
            // A test helper's own threads, stopped and joined on drop (not library code).
            std::thread::Builder::new()
                .name("scripted-peer".into())
                .spawn(move || {
                    while !stop.load(Ordering::Acquire) {
                        match listener.accept() {
                            Ok((stream, _)) => {
                                let _ = stream.set_nonblocking(false);
                                let _ = stream.set_nodelay(true);
                                if let Ok(clone) = stream.try_clone() {
                                    streams.lock().unwrap().push(clone);
                                }
                                let (script, stop, requests) =
                                    (Arc::clone(&script), stop.clone(), requests.clone());
                                let connection = std::thread::Builder::new()
                                    .name("scripted-peer-conn".into())
                                    .spawn(move || {
                                        serve(stream, &script, address, &stop, &requests)
                                    })
                                    .expect("scripted peer: thread");
                                threads.lock().unwrap().push(connection);
                            }
                            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                                std::thread::sleep(Duration::from_millis(5));
                            }
                            Err(_) => return,
                        }
                    }
                })
                .expect("scripted peer: thread")
        };
        ScriptedBroker {
            address,
            script: shared,
            stop,
            streams,
            threads,
            acceptor: Some(acceptor),
            requests,
        }
    }

    /// Changes what is served from now on (appending to a partition, say).
    pub fn update(&self, change: impl FnOnce(&mut Script)) {
        change(&mut self.script.write().unwrap());
    }

    /// `127.0.0.1:<port>`.
    pub fn bootstrap(&self) -> String {
        self.address.to_string()
    }

    /// Requests received so far.
    pub fn requests(&self) -> usize {
        self.requests.load(Ordering::Relaxed)
    }
}

impl Drop for ScriptedBroker {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
        for stream in self.streams.lock().unwrap().drain(..) {
            let _ = stream.shutdown(Shutdown::Both);
        }
        if let Some(acceptor) = self.acceptor.take() {
            let _ = acceptor.join();
        }
        // Connections accepted while stopping.
        for stream in self.streams.lock().unwrap().drain(..) {
            let _ = stream.shutdown(Shutdown::Both);
        }
        for thread in self.threads.lock().unwrap().drain(..) {
            let _ = thread.join();
        }
    }
}

/// Serves one connection until it closes or the peer stops.
fn serve(
    mut stream: TcpStream,
    script: &RwLock<Script>,
    address: SocketAddr,
    stop: &AtomicBool,
    requests: &AtomicUsize,
) {
    loop {
        let mut size = [0u8; 4];
        if stream.read_exact(&mut size).is_err() {
            return;
        }
        let size = i32::from_be_bytes(size).max(0) as usize;
        let mut frame = vec![0u8; size];
        if stream.read_exact(&mut frame).is_err() {
            return;
        }
        requests.fetch_add(1, Ordering::Relaxed);
        let mut frame = Bytes::from(frame);
        let api_key = i16::from_be_bytes([frame[0], frame[1]]);
        let version = i16::from_be_bytes([frame[2], frame[3]]);
        let Ok(api) = ApiKey::try_from(api_key) else { return };
        let header_version = api.request_header_version(version);
        let Ok(header) = RequestHeader::decode(&mut frame, header_version) else { return };
        let request = Request { api, version, body: frame };
        let raw = script.read().unwrap().raw_frames.clone();
        if let Some(bytes) = raw.as_ref().and_then(|r| r(&request)) {
            if stream.write_all(&bytes).is_err() {
                return;
            }
            let mut sink = [0u8; 1024];
            while !stop.load(Ordering::Acquire) {
                match stream.read(&mut sink) {
                    Ok(0) | Err(_) => return,
                    Ok(_) => {}
                }
            }
            return;
        }
        let hostile = script.read().unwrap().hostile.clone();
        let body = match hostile.as_ref().and_then(|h| h(&request)) {
            Some(body) => body,
            None => {
                let answered = answer(&script.read().unwrap(), address, &request);
                match answered {
                    Answer::Now(body) => body,
                    Answer::AfterWait(body, wait) => {
                        // An empty fetch: a short long-poll, without holding the script.
                        if !stop.load(Ordering::Acquire) {
                            std::thread::sleep(wait);
                        }
                        body
                    }
                    Answer::Never => Bytes::new(),
                }
            }
        };
        if unanswered(&body) {
            // Never answered: wait until the peer stops or the client goes away.
            let mut sink = [0u8; 1024];
            while !stop.load(Ordering::Acquire) {
                match stream.read(&mut sink) {
                    Ok(0) | Err(_) => return,
                    Ok(_) => {}
                }
            }
            return;
        }
        let mut response = BytesMut::new();
        response.put_i32(0);
        let mut response_header = ResponseHeader::default();
        response_header.correlation_id = header.correlation_id;
        // ApiVersions answers always carry a v0 header.
        let response_header_version =
            if api == ApiKey::ApiVersions { 0 } else { api.response_header_version(version) };
        response_header.encode(&mut response, response_header_version).expect("header");
        response.put_slice(&body);
        let length = (response.len() - 4) as i32;
        response[..4].copy_from_slice(&length.to_be_bytes());
        if stream.write_all(&response).is_err() {
            return;
        }
    }
}

fn encoded<M: Encodable>(message: &M, version: i16) -> Bytes {
    let mut out = BytesMut::new();
    message.encode(&mut out, version).expect("scripted peer: cannot encode an answer");
    out.freeze()
}

fn name(value: &str) -> StrBytes {
    StrBytes::from_string(value.to_owned())
}

/// An answer of the script.
enum Answer {
    Now(Bytes),
    AfterWait(Bytes, Duration),
    Never,
}

/// The scripted answer to `request`.
fn answer(script: &Script, address: SocketAddr, request: &Request) -> Answer {
    match answer_body(script, address, request) {
        Some(answer) => answer,
        None => Answer::Never,
    }
}

fn answer_body(script: &Script, address: SocketAddr, request: &Request) -> Option<Answer> {
    let v = request.version;
    let offered = |api: ApiKey| script.versions.iter().find(|(a, _, _)| *a == api);
    let (_, min, max) = offered(request.api)?;
    if request.api != ApiKey::ApiVersions && (v < *min || v > *max) {
        return None;
    }
    let host = name(&address.ip().to_string());
    let port = i32::from(address.port());
    let topic = TopicName(name(&script.topic));
    Some(Answer::Now(match request.api {
        ApiKey::ApiVersions => {
            let mut response = ApiVersionsResponse::default();
            response.api_keys = script
                .versions
                .iter()
                .map(|(api, min, max)| {
                    let mut key = ApiVersion::default();
                    key.api_key = *api as i16;
                    key.min_version = *min;
                    key.max_version = *max;
                    key
                })
                .collect();
            if v > *max {
                // Not a version offered: answered in v0, listing the versions offered.
                response.error_code = 35; // UNSUPPORTED_VERSION
                encoded(&response, 0)
            } else {
                encoded(&response, v)
            }
        }
        ApiKey::Metadata => {
            let asked: MetadataRequest = request.decode();
            let mut response = MetadataResponse::default();
            let mut broker = MetadataResponseBroker::default();
            broker.node_id = BrokerId(0);
            broker.host = host;
            broker.port = port;
            response.brokers = vec![broker];
            response.controller_id = BrokerId(0);
            response.cluster_id = Some(name("scripted"));
            let names: Vec<String> = match asked.topics {
                Some(topics) => {
                    topics.into_iter().filter_map(|t| t.name.map(|n| n.0.to_string())).collect()
                }
                None => vec![script.topic.clone()],
            };
            response.topics = names
                .iter()
                .map(|n| {
                    let mut t = MetadataResponseTopic::default();
                    t.name = Some(TopicName(name(n)));
                    if *n == script.topic {
                        t.partitions = (0..script.partitions.len() as i32)
                            .map(|p| {
                                let mut partition = MetadataResponsePartition::default();
                                partition.partition_index = p;
                                partition.leader_id = BrokerId(0);
                                partition.replica_nodes = vec![BrokerId(0)];
                                partition.isr_nodes = vec![BrokerId(0)];
                                partition
                            })
                            .collect();
                    } else {
                        t.error_code = 3; // UNKNOWN_TOPIC_OR_PARTITION
                    }
                    t
                })
                .collect();
            encoded(&response, v)
        }
        ApiKey::FindCoordinator => {
            let mut response = FindCoordinatorResponse::default();
            response.node_id = BrokerId(0);
            response.host = host;
            response.port = port;
            encoded(&response, v)
        }
        ApiKey::JoinGroup => {
            let asked: JoinGroupRequest = request.decode();
            let member_id =
                if asked.member_id.is_empty() { name("member-1") } else { asked.member_id.clone() };
            let protocol = asked.protocols.first().cloned().unwrap_or_default();
            let mut member = JoinGroupResponseMember::default();
            member.member_id = member_id.clone();
            member.metadata = protocol.metadata.clone();
            let mut response = JoinGroupResponse::default();
            response.generation_id = 1;
            response.protocol_type = Some(asked.protocol_type.clone());
            response.protocol_name = Some(protocol.name.clone());
            response.leader = member_id.clone();
            response.member_id = member_id;
            response.members = vec![member];
            encoded(&response, v)
        }
        ApiKey::SyncGroup => {
            let asked: SyncGroupRequest = request.decode();
            let mut response = SyncGroupResponse::default();
            response.assignment = asked
                .assignments
                .iter()
                .find(|a| a.member_id == asked.member_id)
                .map(|a| a.assignment.clone())
                .unwrap_or_default();
            response.protocol_type = asked.protocol_type.clone();
            response.protocol_name = asked.protocol_name.clone();
            encoded(&response, v)
        }
        ApiKey::Heartbeat => encoded(&HeartbeatResponse::default(), v),
        ApiKey::LeaveGroup => encoded(&LeaveGroupResponse::default(), v),
        ApiKey::OffsetFetch => {
            let asked: OffsetFetchRequest = request.decode();
            let mut response = OffsetFetchResponse::default();
            response.topics = asked
                .topics
                .unwrap_or_default()
                .into_iter()
                .map(|t| {
                    let mut topic = OffsetFetchResponseTopic::default();
                    topic.name = t.name.clone();
                    topic.partitions = t
                        .partition_indexes
                        .iter()
                        .map(|p| {
                            let mut partition = OffsetFetchResponsePartition::default();
                            partition.partition_index = *p;
                            partition.committed_offset = -1;
                            partition
                        })
                        .collect();
                    topic
                })
                .collect();
            encoded(&response, v)
        }
        ApiKey::OffsetCommit => {
            let asked: OffsetCommitRequest = request.decode();
            let mut response = OffsetCommitResponse::default();
            response.topics = asked
                .topics
                .iter()
                .map(|t| {
                    let mut topic = OffsetCommitResponseTopic::default();
                    topic.name = t.name.clone();
                    topic.partitions = t
                        .partitions
                        .iter()
                        .map(|p| {
                            let mut partition = OffsetCommitResponsePartition::default();
                            partition.partition_index = p.partition_index;
                            partition
                        })
                        .collect();
                    topic
                })
                .collect();
            encoded(&response, v)
        }
        ApiKey::ListOffsets => {
            let asked: ListOffsetsRequest = request.decode();
            let mut response = ListOffsetsResponse::default();
            response.topics = asked
                .topics
                .iter()
                .map(|t| {
                    let mut topic = ListOffsetsTopicResponse::default();
                    topic.name = t.name.clone();
                    topic.partitions = t
                        .partitions
                        .iter()
                        .map(|p| {
                            let mut partition = ListOffsetsPartitionResponse::default();
                            partition.partition_index = p.partition_index;
                            match script.partitions.get(p.partition_index as usize) {
                                Some(log) if t.name == topic_name(&script.topic) => {
                                    partition.offset =
                                        if p.timestamp == -2 { 0 } else { log.end() };
                                    partition.timestamp = -1;
                                }
                                _ => partition.error_code = 3,
                            }
                            partition
                        })
                        .collect();
                    topic
                })
                .collect();
            encoded(&response, v)
        }
        ApiKey::Fetch => {
            let asked: FetchRequest = request.decode();
            let mut answers = Vec::new();
            let mut any = false;
            for t in &asked.topics {
                let mut topic_answer = FetchableTopicResponse::default();
                topic_answer.topic = t.topic.clone();
                for p in &t.partitions {
                    let mut data = PartitionData::default();
                    data.partition_index = p.partition;
                    match script.partitions.get(p.partition as usize) {
                        Some(log) if t.topic == topic && p.fetch_offset > log.end() => {
                            data.error_code = 1; // OFFSET_OUT_OF_RANGE
                            data.high_watermark = log.end();
                            any = true;
                        }
                        Some(log) if t.topic == topic => {
                            let (records, aborted) = fetch(log, p.fetch_offset);
                            any |= !records.is_empty();
                            data.high_watermark = log.end();
                            data.last_stable_offset = log.end();
                            data.log_start_offset = 0;
                            data.aborted_transactions = Some(aborted);
                            data.records = Some(records);
                        }
                        _ => data.error_code = 3,
                    }
                    topic_answer.partitions.push(data);
                }
                answers.push(topic_answer);
            }
            let mut response = FetchResponse::default();
            response.responses = answers;
            let body = encoded(&response, v);
            if !any {
                // Long poll, briefly.
                let wait = Duration::from_millis(asked.max_wait_ms.clamp(0, 100) as u64);
                return Some(Answer::AfterWait(body, wait));
            }
            body
        }
        _ => return None,
    }))
}

fn topic_name(topic: &str) -> TopicName {
    TopicName(name(topic))
}

/// The batches of `log` at and after `offset` (whole), and the aborted transactions they
/// overlap (as a broker reports them: begun at or before the last offset returned, not ended
/// before `offset`).
fn fetch(log: &Log, offset: i64) -> (Bytes, Vec<AbortedTransaction>) {
    let mut out = BytesMut::new();
    let mut last = None;
    for batch in log.batches.iter().filter(|b| b.last >= offset) {
        out.put_slice(&batch.bytes);
        last = Some(batch.last);
    }
    let aborted = match last {
        Some(last) => log
            .aborted
            .iter()
            .filter(|a| a.first <= last && a.marker >= offset)
            .map(|a| {
                let mut t = AbortedTransaction::default();
                t.producer_id = ProducerId(a.producer);
                t.first_offset = a.first;
                t
            })
            .collect(),
        None => Vec::new(),
    };
    (out.freeze(), aborted)
}
