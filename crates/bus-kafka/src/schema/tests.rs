#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use bytes::{BufMut, Bytes, BytesMut};
use kafka_protocol::messages::*;
use kafka_protocol::protocol::Decodable;

use super::*;

/// A small deterministic generator (xorshift).
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

fn put_uvarint(out: &mut BytesMut, mut value: u32) {
    while value >= 0x80 {
        out.put_u8((value as u8) | 0x80);
        value >>= 7;
    }
    out.put_u8(value as u8);
}

/// Writes a random value of `message`'s shape in `version`, as the shape describes it: what
/// `kafka-protocol` must then read exactly (same length), if the shape is right.
struct Writer<'r> {
    rng: &'r mut Rng,
    version: i16,
    flexible: bool,
}

impl Writer<'_> {
    fn shape(&mut self, shape: &Shape, out: &mut BytesMut) {
        for field in shape.fields {
            if field.min <= self.version && self.version <= field.max {
                self.kind(&field.kind, out);
            }
        }
        if self.flexible {
            let known: Vec<&Tagged> = shape
                .tagged
                .iter()
                .filter(|t| t.min <= self.version && self.version <= t.max)
                .filter(|_| self.rng.below(2) == 0)
                .collect();
            let unknown = self.rng.below(2) == 0;
            put_uvarint(out, known.len() as u32 + u32::from(unknown));
            for tagged in known {
                let mut value = BytesMut::new();
                self.kind(&tagged.kind, &mut value);
                put_uvarint(out, tagged.tag);
                put_uvarint(out, value.len() as u32);
                out.put_slice(&value);
            }
            if unknown {
                put_uvarint(out, 1000);
                put_uvarint(out, 3);
                out.put_slice(b"xyz");
            }
        }
    }

    fn kind(&mut self, kind: &Kind, out: &mut BytesMut) {
        match kind {
            Kind::Fixed(n) => {
                for _ in 0..*n {
                    out.put_u8(self.rng.below(2) as u8);
                }
            }
            Kind::Str | Kind::Bytes => {
                let length = self.rng.below(5) as usize;
                if self.flexible {
                    put_uvarint(out, length as u32 + 1);
                } else if matches!(kind, Kind::Str) {
                    out.put_i16(length as i16);
                } else {
                    out.put_i32(length as i32);
                }
                for _ in 0..length {
                    out.put_u8(b'a' + self.rng.below(26) as u8);
                }
            }
            Kind::Array(element) => {
                let count = self.rng.below(3) as u32;
                if self.flexible {
                    put_uvarint(out, count + 1);
                } else {
                    out.put_i32(count as i32);
                }
                for _ in 0..count {
                    self.kind(element, out);
                }
            }
            Kind::Struct(shape) => self.shape(shape, out),
        }
    }
}

/// How many bytes `kafka-protocol` reads decoding `bytes` as `message` in `version`.
fn kafka_protocol_reads(message: &Message, version: i16, bytes: &Bytes) -> Result<usize, String> {
    let mut buf = bytes.clone();
    let decoded = match message.name {
        "ApiVersionsResponse" => ApiVersionsResponse::decode(&mut buf, version).map(drop),
        "FindCoordinatorResponse" => FindCoordinatorResponse::decode(&mut buf, version).map(drop),
        "JoinGroupResponse" => JoinGroupResponse::decode(&mut buf, version).map(drop),
        "SyncGroupResponse" => SyncGroupResponse::decode(&mut buf, version).map(drop),
        "HeartbeatResponse" => HeartbeatResponse::decode(&mut buf, version).map(drop),
        "LeaveGroupResponse" => LeaveGroupResponse::decode(&mut buf, version).map(drop),
        "OffsetCommitResponse" => OffsetCommitResponse::decode(&mut buf, version).map(drop),
        "OffsetFetchResponse" => OffsetFetchResponse::decode(&mut buf, version).map(drop),
        "MetadataResponse" => MetadataResponse::decode(&mut buf, version).map(drop),
        "ListOffsetsResponse" => ListOffsetsResponse::decode(&mut buf, version).map(drop),
        "FetchResponse" => FetchResponse::decode(&mut buf, version).map(drop),
        "CreateTopicsResponse" => CreateTopicsResponse::decode(&mut buf, version).map(drop),
        "ProduceResponse" => ProduceResponse::decode(&mut buf, version).map(drop),
        "SaslHandshakeResponse" => SaslHandshakeResponse::decode(&mut buf, version).map(drop),
        "SaslAuthenticateResponse" => SaslAuthenticateResponse::decode(&mut buf, version).map(drop),
        "InitProducerIdResponse" => InitProducerIdResponse::decode(&mut buf, version).map(drop),
        "ConsumerProtocolSubscription" => {
            ConsumerProtocolSubscription::decode(&mut buf, version).map(drop)
        }
        "ConsumerProtocolAssignment" => {
            ConsumerProtocolAssignment::decode(&mut buf, version).map(drop)
        }
        other => panic!("no decoder for {other}"),
    };
    decoded.map(|()| bytes.len() - buf.len()).map_err(|e| e.to_string())
}

#[test]
fn kafka_protocol_reads_exactly_what_each_shape_describes_in_every_version() {
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    for message in ALL {
        for version in message.min..=message.max {
            for round in 0..40 {
                let mut out = BytesMut::new();
                let flexible = version >= message.flexible;
                Writer { rng: &mut rng, version, flexible }.shape(message.root, &mut out);
                let bytes = out.freeze();
                let context = format!("{} v{version} round {round}: {bytes:02x?}", message.name);
                check(message, version, &bytes).unwrap_or_else(|e| panic!("{context}: {e}"));
                let read = kafka_protocol_reads(message, version, &bytes)
                    .unwrap_or_else(|e| panic!("{context}: kafka-protocol: {e}"));
                assert_eq!(read, bytes.len(), "{context}: kafka-protocol read another shape");
            }
        }
    }
}

/// Every kind an array holds in `version`, anywhere in `shape`.
fn array_elements<'a>(shape: &'a Shape, version: i16, flexible: bool, out: &mut Vec<&'a Kind>) {
    let present = |min: i16, max: i16| min <= version && version <= max;
    let visit = |kind: &'a Kind, out: &mut Vec<&'a Kind>| {
        let mut kind = kind;
        loop {
            match kind {
                Kind::Array(element) => {
                    out.push(element);
                    kind = element;
                }
                Kind::Struct(inner) => {
                    array_elements(inner, version, flexible, out);
                    break;
                }
                _ => break,
            }
        }
    };
    for field in shape.fields.iter().filter(|f| present(f.min, f.max)) {
        visit(&field.kind, out);
    }
    if flexible {
        for tagged in shape.tagged.iter().filter(|t| present(t.min, t.max)) {
            visit(&tagged.kind, out);
        }
    }
}

#[test]
fn an_array_element_takes_at_least_one_byte_in_every_version() {
    for message in ALL {
        for version in message.min..=message.max {
            let flexible = version >= message.flexible;
            let mut elements = Vec::new();
            array_elements(message.root, version, flexible, &mut elements);
            let walk = Walk { bytes: &[], at: 0, version, flexible };
            for element in elements {
                assert!(walk.least(element) >= 1, "{} v{version}: {element:?}", message.name);
            }
        }
    }
}

#[test]
fn count_bombs_are_refused_before_kafka_protocol_sees_them() {
    // Metadata v9 (flexible): throttle, brokers = u32::MAX - 1 elements, in a few bytes.
    let mut metadata = BytesMut::new();
    metadata.put_i32(0);
    put_uvarint(&mut metadata, u32::MAX);
    metadata.put_slice(&[0; 8]);
    let error = check(METADATA, 9, &metadata).unwrap_err();
    assert_eq!(error.path, "brokers");
    assert!(error.reason.contains("MetadataResponseBroker"), "{error}");
    // Fetch v4: throttle, responses = i32::MAX.
    let mut fetch = BytesMut::new();
    fetch.put_i32(0);
    fetch.put_i32(i32::MAX);
    fetch.put_slice(&[0; 16]);
    assert_eq!(check(FETCH, 4, &fetch).unwrap_err().path, "responses");
    // Fetch v12: one topic, one partition whose aborted transactions say u32::MAX - 1.
    let mut nested = BytesMut::new();
    nested.put_i32(0); // throttle
    nested.put_i16(0); // error
    nested.put_i32(0); // session
    put_uvarint(&mut nested, 2); // one topic
    put_uvarint(&mut nested, 2);
    nested.put_u8(b't');
    put_uvarint(&mut nested, 2); // one partition
    nested.put_i32(0);
    nested.put_i16(0);
    nested.put_i64(0);
    nested.put_i64(0);
    nested.put_i64(0);
    put_uvarint(&mut nested, u32::MAX);
    nested.put_slice(&[0; 20]);
    let error = check(FETCH, 12, &nested).unwrap_err();
    assert_eq!(error.path, "responses[0].partitions[0].aborted_transactions");
    // JoinGroup v5: members = i32::MAX.
    let mut join = BytesMut::new();
    join.put_i32(0); // throttle
    join.put_i16(0); // error
    join.put_i32(1); // generation
    join.put_i16(1);
    join.put_u8(b'p'); // protocol name
    join.put_i16(1);
    join.put_u8(b'l'); // leader
    join.put_i16(1);
    join.put_u8(b'm'); // member id
    join.put_i32(i32::MAX);
    join.put_slice(&[0; 32]);
    assert_eq!(check(JOIN_GROUP, 5, &join).unwrap_err().path, "members");
    // A string running past the end, a version out of range, a negative count.
    let mut short = BytesMut::new();
    short.put_i32(0);
    short.put_i32(1);
    short.put_i16(i16::MAX);
    short.put_slice(&[0; 8]);
    assert!(check(FETCH, 4, &short).unwrap_err().reason.contains("announced"));
    assert!(check(FETCH, 99, &fetch).is_err());
    let mut negative = BytesMut::new();
    negative.put_i32(0);
    negative.put_i32(-2);
    assert!(check(FETCH, 4, &negative).unwrap_err().reason.contains("negative"));
}

#[test]
fn any_truncation_or_byte_flip_of_a_valid_message_is_checked_without_panicking() {
    let mut rng = Rng(42);
    for message in ALL {
        for version in message.min..=message.max {
            let mut out = BytesMut::new();
            let flexible = version >= message.flexible;
            Writer { rng: &mut rng, version, flexible }.shape(message.root, &mut out);
            let bytes = out.to_vec();
            for end in 0..bytes.len() {
                let _ = check(message, version, &bytes[..end]);
            }
            for at in 0..bytes.len() {
                let mut flipped = bytes.clone();
                flipped[at] ^= 0xff;
                let _ = check(message, version, &flipped);
            }
        }
    }
}

/// Frames and decodes a `responses` fuzz seed as a connection does.
fn decode_seed(kind: u8, offset: u8, frame: &[u8]) -> Result<(), String> {
    use crate::connection::{Api, decode_frame};
    fn run<R: Api>(offset: u8, frame: &[u8]) -> Result<(), String> {
        let version = R::MIN + i16::from(offset);
        let body = Bytes::copy_from_slice(frame.get(4..).ok_or("short")?);
        decode_frame::<R>(body, version, 1).map(drop)
    }
    match kind {
        0 => run::<ApiVersionsRequest>(offset, frame),
        1 => run::<FindCoordinatorRequest>(offset, frame),
        2 => run::<JoinGroupRequest>(offset, frame),
        3 => run::<SyncGroupRequest>(offset, frame),
        4 => run::<HeartbeatRequest>(offset, frame),
        5 => run::<LeaveGroupRequest>(offset, frame),
        6 => run::<OffsetCommitRequest>(offset, frame),
        7 => run::<OffsetFetchRequest>(offset, frame),
        8 => run::<MetadataRequest>(offset, frame),
        9 => run::<ListOffsetsRequest>(offset, frame),
        10 => run::<FetchRequest>(offset, frame),
        11 => run::<CreateTopicsRequest>(offset, frame),
        12 => run::<ProduceRequest>(offset, frame),
        13 => run::<SaslHandshakeRequest>(offset, frame),
        14 => run::<SaslAuthenticateRequest>(offset, frame),
        15 => run::<InitProducerIdRequest>(offset, frame),
        other => Err(format!("no kind {other}")),
    }
}

#[test]
fn every_response_captured_from_the_test_broker_passes_the_check_and_decodes() {
    // The `responses` fuzz seeds named `real-*` were read from the test broker (nisshi) by
    // `cargo xtask fuzz --seeds`: a shape that refused any of them would fail real traffic.
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fuzz/corpus/responses");
    let mut checked = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        if !path.file_name().unwrap().to_string_lossy().starts_with("real-") {
            continue;
        }
        let seed = std::fs::read(&path).unwrap();
        let [kind, offset, frame @ ..] = &seed[..] else { panic!("{}", path.display()) };
        decode_seed(*kind, *offset, frame).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        checked += 1;
    }
    assert!(checked >= 13, "{checked} seeds in {}", dir.display());
}
