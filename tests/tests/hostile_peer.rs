//! Hostile peers: a scripted Kafka peer (an adversary, not a stand-in for Kafka) answers the
//! bus with what no sane broker sends: record batches whose record count is forged (valid
//! CRC), gzip, zstd, LZ4 and snappy bombs (KiBs to MiBs on the wire, GiBs inflated), and
//! array-count bombs in Metadata, Fetch and JoinGroup (a member's metadata, and the members
//! array itself). The bus reports errors naming the broker, topic, partition and offset, keeps
//! running (the good partitions deliver), and the process's peak resident memory stays under a
//! bound stated from its configuration.
//!
//! The memory bound: every partition reader holds at most `partition_buffer_bytes` of fetched
//! and inflated records, inflates at most `max_decompressed_batch_bytes` beyond that at a time,
//! and keeps at most three response buffers of `fetch_max_bytes + FETCH_RESPONSE_SLACK` for
//! reuse; add `SLACK` for decoded structures, the runtime and the test's own buffers. Peak RSS
//! (VmHWM, reset before each scenario) may not grow past that.
//!
//! This file is its own test binary so that no other test's memory is counted, and its tests
//! take turns (`SERIAL`). Shown to fail without the protections (by hand): with
//! kafka-protocol's decompressors in place of `fetch::inflate`, the LZ4 bomb alone drives the
//! peak past the bound (and gzip's and zstd's to GiBs); without the schema check or the
//! record-count bound, the process aborts on allocation.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use bus_kafka::{
    KafkaConfig, Message, SubscribeOptions, config::FETCH_RESPONSE_SLACK, health::Health,
};
use bus_tests::scripted::{BatchKind, Request, Script, ScriptedBroker, batch_around, forge_count};
use bus_tests::{peak_rss, reset_peak_rss, rss, wait_for};
use bytes::{BufMut, Bytes, BytesMut};
use kafka_protocol::messages::ApiKey;

/// One scenario at a time: the peak is the process's.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Room in the bound for what is not a reader's: decoded messages and their headers, the
/// runtime, the scripted peer's threads and buffers, the allocator's slack.
const SLACK: u64 = 64 * 1024 * 1024;

const PATIENCE: Duration = Duration::from_secs(60);

/// A configuration for the scripted peer with small limits, so that each bomb is far over the
/// bound it must stay under.
fn config(bootstrap: &str) -> KafkaConfig {
    let mut config = KafkaConfig::new(bootstrap);
    config.request_timeout = Duration::from_secs(2);
    config.consumer.max_decompressed_batch_bytes = 4 * 1024 * 1024;
    config.consumer.partition_buffer_bytes = 8 * 1024 * 1024;
    config
}

/// The peak RSS growth `partitions` readers may cause under `config`.
fn bound(config: &KafkaConfig, partitions: u64) -> u64 {
    let c = &config.consumer;
    let frames = 3 * (c.fetch_max_bytes + FETCH_RESPONSE_SLACK) as u64;
    let reader = c.partition_buffer_bytes as u64 + c.max_decompressed_batch_bytes as u64 + frames;
    partitions * reader + SLACK
}

/// Logs of the bus, captured (the errors of a join name the broker there).
fn logs() -> &'static Arc<Mutex<Vec<u8>>> {
    static LOGS: OnceLock<Arc<Mutex<Vec<u8>>>> = OnceLock::new();
    LOGS.get_or_init(|| {
        let buffer: Arc<Mutex<Vec<u8>>> = Arc::default();
        let writer = Capture(Arc::clone(&buffer));
        let subscriber =
            tracing_subscriber::fmt().with_writer(move || writer.clone()).with_ansi(false).finish();
        let _ = tracing::subscriber::set_global_default(subscriber);
        buffer
    })
}

#[derive(Clone)]
struct Capture(Arc<Mutex<Vec<u8>>>);

impl Write for Capture {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fn logged(text: &str) -> bool {
    String::from_utf8_lossy(&logs().lock().unwrap()).contains(text)
}

/// `len` zero bytes, gzip-compressed in one member: a raw deflate block for 1 MiB of zeros
/// (ended by a sync flush, so byte-aligned) repeated, which stays valid anywhere after a zero
/// (its matches reach one byte back); then an empty final block and the trailer.
fn gzip_bomb(len: u64) -> Vec<u8> {
    const CHUNK: usize = 1 << 20;
    let zeros = vec![0u8; CHUNK];
    let mut deflate = flate2::Compress::new(flate2::Compression::best(), false);
    let mut block = Vec::with_capacity(CHUNK / 100);
    deflate.compress_vec(&zeros, &mut block, flate2::FlushCompress::Sync).unwrap();
    let mut end = Vec::with_capacity(64);
    flate2::Compress::new(flate2::Compression::best(), false)
        .compress_vec(&[], &mut end, flate2::FlushCompress::Finish)
        .unwrap();
    let chunks = len / CHUNK as u64;
    let mut crc = crc32fast::Hasher::new();
    let mut one = crc32fast::Hasher::new();
    one.update(&zeros);
    for _ in 0..chunks {
        crc.combine(&one);
    }
    let mut out = vec![0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 0, 0xff];
    for _ in 0..chunks {
        out.extend_from_slice(&block);
    }
    out.extend_from_slice(&end);
    out.extend_from_slice(&crc.finalize().to_le_bytes());
    out.extend_from_slice(&((chunks * CHUNK as u64) as u32).to_le_bytes());
    out
}

fn zstd_bomb(len: u64) -> Vec<u8> {
    let mut out = Vec::new();
    zstd::stream::copy_encode(std::io::repeat(0).take(len), &mut out, 1).unwrap();
    out
}

fn lz4_bomb(len: u64) -> Vec<u8> {
    let mut encoder = lz4::EncoderBuilder::new().build(Vec::new()).unwrap();
    std::io::copy(&mut std::io::repeat(0).take(len), &mut encoder).unwrap();
    let (out, result) = encoder.finish();
    result.unwrap();
    out
}

/// Kafka's snappy framing with one block that declares `len` bytes (raw snappy's length
/// varint) and holds a few.
fn snappy_bomb(len: u32) -> Vec<u8> {
    let mut block = Vec::new();
    let mut n = len;
    while n >= 0x80 {
        block.push((n as u8) | 0x80);
        n >>= 7;
    }
    block.push(n as u8);
    block.extend_from_slice(&[0x00, 0x00]); // a one-byte literal: 0
    let mut out = b"\x82SNAPPY\x00\x00\x00\x00\x01\x00\x00\x00\x01".to_vec();
    out.extend_from_slice(&(block.len() as u32).to_be_bytes());
    out.extend_from_slice(&block);
    out
}

type Seen = Arc<Mutex<BTreeMap<i32, Vec<i64>>>>;

async fn subscribe(bus: &bus_kafka::EventBus, topic: &str, seen: &Seen) -> bus_kafka::Subscription {
    let seen = Arc::clone(seen);
    bus.subscribe(topic, SubscribeOptions::new("hostile"), move |m: Message| {
        let seen = Arc::clone(&seen);
        async move {
            seen.lock().unwrap().entry(m.partition).or_default().push(m.offset);
            Ok(())
        }
    })
    .await
    .expect("subscribed")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_counts_and_decompression_bombs_fail_their_partitions_within_the_memory_bound() {
    let _serial = SERIAL.lock().await;
    let topic = "bombs";
    let mut script = Script::new(topic, 6);
    let good: Vec<(Option<&str>, Option<&[u8]>)> =
        vec![(Some("a"), Some(b"1")), (Some("b"), Some(b"2")), (Some("c"), Some(b"3"))];
    script.partitions[0].append(&good, BatchKind::PLAIN);
    script.partitions[0].append(&good, BatchKind::PLAIN);
    // Partition 1: a good batch, then one claiming i32::MAX records (valid CRC).
    script.partitions[1].append(&good, BatchKind::PLAIN);
    let forged =
        forge_count(&bus_tests::scripted::encode_batch(3, &good, BatchKind::PLAIN), i32::MAX);
    script.partitions[1].append_raw(forged, 3);
    // Partitions 2-5: a bomb each (1 GiB of gzip, 2 GiB of zstd, 256 MiB of LZ4, a snappy
    // block declaring 1 GiB).
    let bombs = [
        (1, gzip_bomb(1 << 30)),
        (4, zstd_bomb(2 << 30)),
        (3, lz4_bomb(256 << 20)),
        (2, snappy_bomb(1 << 30)),
    ];
    for (i, (codec, bomb)) in bombs.iter().enumerate() {
        assert!(bomb.len() < 2 << 20, "codec {codec}: a bomb of {} bytes", bomb.len());
        script.partitions[2 + i].append_raw(batch_around(0, *codec, bomb), 1);
    }
    let peer = ScriptedBroker::start(script);
    let config = config(&peer.bootstrap());
    let limit = bound(&config, 6);
    assert!(reset_peak_rss(), "/proc/self/clear_refs");
    let before = rss();

    let bus = bus_kafka::connect(config).await.expect("connected");
    let seen: Seen = Arc::default();
    let subscription = subscribe(&bus, topic, &seen).await;
    wait_for("the five hostile partitions reported failed", PATIENCE, || {
        subscription.failed_partitions().len() == 5
    })
    .await;
    wait_for("the good records delivered", PATIENCE, || {
        let seen = seen.lock().unwrap();
        seen.get(&0).map(Vec::len) == Some(6) && seen.get(&1).map(Vec::len) == Some(3)
    })
    .await;
    let peak = peak_rss().saturating_sub(before);
    eprintln!("peak RSS growth {} MiB (bound {} MiB)", peak >> 20, limit >> 20);

    let failures = subscription.failed_partitions();
    let reason = |p: i32| {
        let f = failures.iter().find(|f| f.partition.partition == p).expect("failed");
        assert_eq!(&*f.partition.topic, topic);
        (f.offset, f.reason.clone())
    };
    let (offset, why) = reason(1);
    assert_eq!(offset, Some(3), "{why}");
    assert!(why.contains(&peer.bootstrap()) && why.contains("offset 3"), "{why}");
    // The count was believed no further than the records there: decoding ran out of them.
    assert!(why.contains("truncated record length"), "{why}");
    for p in 2..=5 {
        let (offset, why) = reason(p);
        assert_eq!(offset, Some(0), "partition {p}: {why}");
        assert!(why.contains("consumer.max_decompressed_batch_bytes"), "partition {p}: {why}");
        assert!(why.contains(&peer.bootstrap()), "partition {p}: {why}");
    }
    let Health::Degraded { reason } = bus.health() else { panic!("{:?}", bus.health()) };
    assert!(reason.contains("`bombs-1` stopped at offset 3"), "{reason}");
    assert_eq!(bus.metrics().partitions_failed, 5);
    assert_eq!(seen.lock().unwrap().get(&1), Some(&vec![0, 1, 2]), "nothing of the forged batch");
    eprintln!("peak RSS growth {} MiB (bound {} MiB)", peak >> 20, limit >> 20);
    assert!(
        peak < limit,
        "peak RSS grew by {} MiB, over the bound of {} MiB",
        peak >> 20,
        limit >> 20
    );

    drop(subscription);
    let report = bus.shutdown(Duration::from_secs(10)).await.expect("clean shutdown");
    assert_eq!(bus.live_tasks(), 0, "{report}");
}

/// A flexible-version array count of `count` (uvarint of count + 1).
fn put_compact_count(out: &mut BytesMut, count: u32) {
    let mut n = count.saturating_add(1);
    while n >= 0x80 {
        out.put_u8((n as u8) | 0x80);
        n >>= 7;
    }
    out.put_u8(n as u8);
}

/// A Metadata answer whose brokers array claims `u32::MAX - 1` elements (v9+) or `i32::MAX`.
fn metadata_bomb(request: &Request) -> Bytes {
    let mut out = BytesMut::new();
    if request.version >= 3 {
        out.put_i32(0); // throttle
    }
    if request.version >= 9 {
        put_compact_count(&mut out, u32::MAX - 1);
    } else {
        out.put_i32(i32::MAX);
    }
    out.put_slice(&[0u8; 64]);
    out.freeze()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_array_count_bomb_in_metadata_fails_subscribe_naming_the_broker() {
    let _serial = SERIAL.lock().await;
    let _ = logs();
    let mut script = Script::new("metadata-bomb", 1);
    script.hostile = Some(Arc::new(|request: &Request| {
        (request.api == ApiKey::Metadata).then(|| metadata_bomb(request))
    }));
    let peer = ScriptedBroker::start(script);
    let config = config(&peer.bootstrap());
    let limit = bound(&config, 0);
    assert!(reset_peak_rss());
    let before = rss();
    let bus = bus_kafka::connect(config).await.expect("the handshake is answered");
    let error = bus
        .subscribe("metadata-bomb", SubscribeOptions::new("g"), |_m: Message| async { Ok(()) })
        .await
        .expect_err("metadata cannot be read");
    let text = error.to_string();
    assert!(text.contains("malformed response") && text.contains("brokers"), "{text}");
    let peak = peak_rss().saturating_sub(before);
    eprintln!("peak RSS growth {} KiB (bound {} MiB)", peak >> 10, limit >> 20);
    assert!(peak < limit, "peak RSS grew by {} MiB", peak >> 20);
    // Still running: publishing and shutting down work as ever.
    let report = bus.shutdown(Duration::from_secs(5)).await.expect("clean shutdown");
    assert_eq!(bus.live_tasks(), 0, "{report}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_array_count_bomb_in_a_fetch_answer_is_named_in_health_and_the_rest_runs() {
    let _serial = SERIAL.lock().await;
    let topic = "fetch-bomb";
    let mut script = Script::new(topic, 2);
    let good: Vec<(Option<&str>, Option<&[u8]>)> = vec![(Some("k"), Some(b"v"))];
    script.partitions[0].append(&good, BatchKind::PLAIN);
    script.partitions[1].append(&good, BatchKind::PLAIN);
    // Fetches of partition 1 are answered with a responses array of i32::MAX topics.
    script.hostile = Some(Arc::new(|request: &Request| {
        if request.api != ApiKey::Fetch {
            return None;
        }
        let asked: kafka_protocol::messages::FetchRequest = request.decode();
        let for_one = asked.topics.iter().any(|t| t.partitions.iter().any(|p| p.partition == 1));
        for_one.then(|| {
            let mut out = BytesMut::new();
            out.put_i32(0); // throttle
            if request.version >= 7 {
                out.put_i16(0);
                out.put_i32(0);
            }
            if request.version >= 12 {
                put_compact_count(&mut out, u32::MAX - 1);
            } else {
                out.put_i32(i32::MAX);
            }
            out.put_slice(&[0u8; 64]);
            out.freeze()
        })
    }));
    let peer = ScriptedBroker::start(script);
    let config = config(&peer.bootstrap());
    let limit = bound(&config, 2);
    assert!(reset_peak_rss());
    let before = rss();
    let bus = bus_kafka::connect(config).await.expect("connected");
    let seen: Seen = Arc::default();
    let subscription = subscribe(&bus, topic, &seen).await;
    wait_for("partition 0 delivered", PATIENCE, || {
        seen.lock().unwrap().get(&0).map(Vec::len) == Some(1)
    })
    .await;
    wait_for("partition 1 named in the health", PATIENCE, || {
        subscription.failed_partitions().iter().any(|f| f.partition.partition == 1)
    })
    .await;
    let failure = subscription.failed_partitions().remove(0);
    assert_eq!(failure.offset, Some(0));
    assert!(failure.reason.contains("malformed response"), "{}", failure.reason);
    assert!(failure.reason.contains(&peer.bootstrap()), "{}", failure.reason);
    assert!(failure.reason.contains("fetch-bomb-1"), "{}", failure.reason);
    let peak = peak_rss().saturating_sub(before);
    eprintln!("peak RSS growth {} KiB (bound {} MiB)", peak >> 10, limit >> 20);
    assert!(peak < limit, "peak RSS grew by {} MiB", peak >> 20);
    drop(subscription);
    let report = bus.shutdown(Duration::from_secs(10)).await.expect("clean shutdown");
    assert_eq!(bus.live_tasks(), 0, "{report}");
}

/// A `consumer` protocol subscription (v1) whose topics array claims `i32::MAX` names.
fn subscription_bomb() -> Bytes {
    let mut out = BytesMut::new();
    out.put_i16(1);
    out.put_i32(i32::MAX);
    out.put_slice(&[0u8; 64]);
    out.freeze()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_group_member_with_a_bomb_for_metadata_cannot_crash_the_leader() {
    let _serial = SERIAL.lock().await;
    let _ = logs();
    let topic = "member-bomb";
    let mut script = Script::new(topic, 2);
    let good: Vec<(Option<&str>, Option<&[u8]>)> = vec![(Some("k"), Some(b"v"))];
    script.partitions[0].append(&good, BatchKind::PLAIN);
    script.partitions[1].append(&good, BatchKind::PLAIN);
    // The group answers our member's JoinGroup with us as leader and a second member whose
    // subscription is a count bomb.
    script.hostile = Some(Arc::new(|request: &Request| {
        if request.api != ApiKey::JoinGroup {
            return None;
        }
        let asked: kafka_protocol::messages::JoinGroupRequest = request.decode();
        let ours = asked.protocols.first().cloned().unwrap_or_default();
        let member = |id: &str, metadata: Bytes| {
            let mut m =
                kafka_protocol::messages::join_group_response::JoinGroupResponseMember::default();
            m.member_id = kafka_protocol::protocol::StrBytes::from_string(id.to_owned());
            m.metadata = metadata;
            m
        };
        let mut response = kafka_protocol::messages::JoinGroupResponse::default();
        response.generation_id = 1;
        response.protocol_type = Some(asked.protocol_type.clone());
        response.protocol_name = Some(ours.name.clone());
        response.leader = kafka_protocol::protocol::StrBytes::from_static_str("us");
        response.member_id = kafka_protocol::protocol::StrBytes::from_static_str("us");
        response.members =
            vec![member("us", ours.metadata.clone()), member("evil", subscription_bomb())];
        let mut out = BytesMut::new();
        kafka_protocol::protocol::Encodable::encode(&response, &mut out, request.version).unwrap();
        Some(out.freeze())
    }));
    let peer = ScriptedBroker::start(script);
    let config = config(&peer.bootstrap());
    let limit = bound(&config, 2);
    assert!(reset_peak_rss());
    let before = rss();
    let bus = bus_kafka::connect(config).await.expect("connected");
    let seen: Seen = Arc::default();
    let subscription = subscribe(&bus, topic, &seen).await;
    // The evil member gets nothing; we (the leader) read both partitions.
    wait_for("both partitions delivered", PATIENCE, || {
        let seen = seen.lock().unwrap();
        seen.get(&0).map(Vec::len) == Some(1) && seen.get(&1).map(Vec::len) == Some(1)
    })
    .await;
    assert!(logged("cannot read a member's subscription"), "the leader says why");
    assert!(logged("malformed version 1 subscription"));
    let peak = peak_rss().saturating_sub(before);
    eprintln!("peak RSS growth {} KiB (bound {} MiB)", peak >> 10, limit >> 20);
    assert!(peak < limit, "peak RSS grew by {} MiB", peak >> 20);
    drop(subscription);
    let report = bus.shutdown(Duration::from_secs(10)).await.expect("clean shutdown");
    assert_eq!(bus.live_tasks(), 0, "{report}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_array_count_bomb_in_the_join_answer_is_refused_naming_the_broker() {
    let _serial = SERIAL.lock().await;
    let _ = logs();
    let mut script = Script::new("join-bomb", 1);
    script.hostile = Some(Arc::new(|request: &Request| {
        if request.api != ApiKey::JoinGroup {
            return None;
        }
        // Error, generation, protocol name, leader, member id: then members = i32::MAX.
        let mut out = BytesMut::new();
        let flexible = request.version >= 6;
        if request.version >= 2 {
            out.put_i32(0);
        }
        out.put_i16(0);
        out.put_i32(1);
        let string = |out: &mut BytesMut, s: &[u8]| {
            if flexible {
                put_compact_count(out, s.len() as u32);
            } else {
                out.put_i16(s.len() as i16);
            }
            out.put_slice(s);
        };
        if request.version >= 7 {
            string(&mut out, b"consumer");
        }
        string(&mut out, b"range");
        string(&mut out, b"m");
        string(&mut out, b"m");
        if flexible {
            put_compact_count(&mut out, u32::MAX - 1);
        } else {
            out.put_i32(i32::MAX);
        }
        out.put_slice(&[0u8; 64]);
        Some(out.freeze())
    }));
    let peer = ScriptedBroker::start(script);
    let config = config(&peer.bootstrap());
    let limit = bound(&config, 0);
    assert!(reset_peak_rss());
    let before = rss();
    let bus = bus_kafka::connect(config).await.expect("connected");
    let seen: Seen = Arc::default();
    let subscription = subscribe(&bus, "join-bomb", &seen).await;
    let broker = peer.bootstrap();
    wait_for("the refused answer logged, naming the broker", PATIENCE, || {
        let logs = String::from_utf8_lossy(&logs().lock().unwrap()).into_owned();
        logs.lines().any(|l| {
            l.contains("malformed response") && l.contains("members") && l.contains(&broker)
        })
    })
    .await;
    let peak = peak_rss().saturating_sub(before);
    eprintln!("peak RSS growth {} KiB (bound {} MiB)", peak >> 10, limit >> 20);
    assert!(peak < limit, "peak RSS grew by {} MiB", peak >> 20);
    drop(subscription);
    let report = bus.shutdown(Duration::from_secs(10)).await.expect("clean shutdown");
    assert_eq!(bus.live_tasks(), 0, "{report}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_size_prefix_over_the_bound_of_its_request_kind_is_refused_before_anything_is_read() {
    // An ApiVersions answer announcing 200 MiB (then nothing): refused at once for what it
    // announces, naming the bound, rather than reserved and waited for until the timeout.
    let _serial = SERIAL.lock().await;
    let mut script = Script::new("prefix", 1);
    script.raw_frames = Some(Arc::new(|request: &Request| {
        (request.api == ApiKey::ApiVersions).then(|| {
            let mut frame = BytesMut::new();
            frame.put_i32(200 << 20);
            frame.put_i32(1); // a correlation id, and nothing more
            frame.freeze()
        })
    }));
    let peer = ScriptedBroker::start(script);
    let error = bus_kafka::connect(config(&peer.bootstrap())).await.expect_err("refused");
    let text = error.to_string();
    assert!(text.contains(&peer.bootstrap()), "{text}");
    // Without the bound per kind, the 200 MiB are reserved and waited for: a timeout.
    assert!(
        text.contains("announces 209715200 bytes, over the bound of 65536 for ApiVersions"),
        "{text}"
    );
}
