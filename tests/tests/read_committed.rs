//! read_committed is honest: records of aborted transactions are never delivered.
//!
//! No broker installable here implements transactions end to end (nisshi refuses transactional
//! producers; tansu returns no aborted-transaction list: docs/BROKER.md), so a scripted peer
//! serves Fetch responses built as the protocol specifies: transactional batches of several
//! producers, commit and abort markers, the aborted-transaction list, plain and idempotent
//! records interleaved, several codecs, across three partitions. librdkafka is the oracle:
//! confluent-kafka's consumer reads the same scripted responses, and the bus must deliver
//! exactly what it delivers, partition by partition in the same order, under both isolation
//! levels.
//!
//! Shown to fail without the change (by hand): with the aborted-transaction list ignored, the
//! bus delivers the aborted records under read_committed and the comparison fails.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bus_kafka::{KafkaConfig, Message, SubscribeOptions, config::IsolationLevel};
use bus_tests::scripted::{BatchKind, Log, Script, ScriptedBroker};
use bus_tests::{run_peer, wait_for};
use kafka_protocol::records::Compression;

const TOPIC: &str = "transactions";

/// What each partition delivered: (offset, value), in order.
type Delivered = BTreeMap<i32, Vec<(i64, String)>>;

fn kind(producer: i64, compression: Compression) -> BatchKind {
    BatchKind { compression, ..BatchKind::transactional(producer) }
}

fn values(values: &[&'static str]) -> Vec<(Option<&'static str>, Option<&'static [u8]>)> {
    values.iter().map(|v| (Some("k"), Some(v.as_bytes()))).collect()
}

/// The scripted topic. Every partition ends with a plain record `end`, after which nothing
/// else can come (both clients deliver in offset order).
fn script() -> Script {
    let mut script = Script::new(TOPIC, 3);
    let plain = BatchKind::PLAIN;
    {
        // Partition 0: two producers interleaved; 100 commits, 101 aborts, then 100 aborts a
        // second transaction (compressed).
        let p: &mut Log = &mut script.partitions[0];
        p.append(&values(&["p0-plain-a"]), plain);
        let t100 = p.append(&values(&["t100-1", "t100-2"]), kind(100, Compression::None));
        p.append(&values(&["p0-plain-b"]), plain);
        let t101 = p.append(&values(&["t101-aborted-1"]), kind(101, Compression::None));
        p.marker(100, false, t100);
        p.append(&values(&["t101-aborted-2"]), kind(101, Compression::Gzip));
        p.marker(101, true, t101);
        let again = p.append(&values(&["t100-aborted-3"]), kind(100, Compression::Zstd));
        p.append(&values(&["t100-aborted-4", "t100-aborted-5"]), kind(100, Compression::Lz4));
        p.marker(100, true, again);
        p.append(&values(&["t101-3"]), kind(101, Compression::Snappy));
        p.marker(101, false, 0);
        p.append(&values(&["end"]), plain);
    }
    {
        // Partition 1: an idempotent (non-transactional) producer that shares no state with
        // the aborted one; a transaction aborted across three batches; one committed.
        let p = &mut script.partitions[1];
        let t102 = p.append(&values(&["t102-aborted-1"]), kind(102, Compression::None));
        let idempotent = BatchKind { producer: 103, ..BatchKind::PLAIN };
        p.append(&values(&["idempotent-1", "idempotent-2"]), idempotent);
        p.append(&values(&["t102-aborted-2"]), kind(102, Compression::Snappy));
        let t104 = p.append(&values(&["t104-1"]), kind(104, Compression::None));
        p.append(&values(&["t102-aborted-3"]), kind(102, Compression::None));
        p.marker(102, true, t102);
        p.marker(104, false, t104);
        p.append(&values(&["end"]), plain);
    }
    {
        // Partition 2: only aborted transactions and markers between plain records.
        let p = &mut script.partitions[2];
        p.append(&values(&["p2-plain-a"]), plain);
        let t105 =
            p.append(&values(&["t105-aborted-1", "t105-aborted-2"]), kind(105, Compression::Zstd));
        p.marker(105, true, t105);
        let t105 = p.append(&values(&["t105-aborted-3"]), kind(105, Compression::None));
        p.marker(105, true, t105);
        p.append(&values(&["p2-plain-b", "end"]), plain);
    }
    script
}

/// What librdkafka delivers, by partition.
fn oracle(peer: &ScriptedBroker, isolation: &str) -> Delivered {
    let out = run_peer(
        "isolation_peer.py",
        &[
            "read",
            "--bootstrap",
            &peer.bootstrap(),
            "--topic",
            TOPIC,
            "--partitions",
            "3",
            "--isolation",
            isolation,
        ],
        "",
    );
    let mut delivered = Delivered::new();
    for record in out["records"].as_array().unwrap() {
        let partition = record["partition"].as_i64().unwrap() as i32;
        let offset = record["offset"].as_i64().unwrap();
        let value = record["value"].as_str().unwrap().to_owned();
        delivered.entry(partition).or_default().push((offset, value));
    }
    delivered
}

/// What the bus delivers, by partition, under `isolation`.
async fn bus(peer: &ScriptedBroker, isolation: IsolationLevel) -> Delivered {
    let mut config = KafkaConfig::new(&peer.bootstrap());
    config.consumer.isolation_level = isolation;
    let bus = bus_kafka::connect(config).await.expect("connected");
    let seen: Arc<Mutex<Delivered>> = Arc::default();
    let sink = Arc::clone(&seen);
    // One handler at a time: messages reach it in offset order per partition.
    let options = SubscribeOptions::new("isolation").with_concurrency(1);
    let subscription = bus
        .subscribe(TOPIC, options, move |m: Message| {
            let sink = Arc::clone(&sink);
            async move {
                let value = String::from_utf8_lossy(m.payload()).into_owned();
                sink.lock().unwrap().entry(m.partition).or_default().push((m.offset, value));
                Ok(())
            }
        })
        .await
        .expect("subscribed");
    wait_for("every partition's last record", Duration::from_secs(60), || {
        let seen = seen.lock().unwrap();
        (0..3).all(|p| seen.get(&p).is_some_and(|r| r.last().is_some_and(|(_, v)| v == "end")))
    })
    .await;
    subscription.unsubscribe(Duration::from_secs(5)).await.expect("unsubscribed");
    bus.shutdown(Duration::from_secs(5)).await.expect("clean shutdown");
    seen.lock().unwrap().clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_bus_delivers_exactly_what_librdkafka_delivers_under_each_isolation_level() {
    let peer = ScriptedBroker::start(script());
    for (level, name) in [
        (IsolationLevel::ReadCommitted, "read_committed"),
        (IsolationLevel::ReadUncommitted, "read_uncommitted"),
    ] {
        let expected = oracle(&peer, name);
        let actual = bus(&peer, level).await;
        assert_eq!(actual, expected, "{name}: the bus (left) and librdkafka (right) differ");
        let aborted =
            |d: &Delivered| d.values().flatten().filter(|(_, v)| v.contains("aborted")).count();
        match level {
            IsolationLevel::ReadCommitted => assert_eq!(aborted(&actual), 0, "{actual:?}"),
            IsolationLevel::ReadUncommitted => assert_eq!(aborted(&actual), 11, "{actual:?}"),
        }
    }
}
