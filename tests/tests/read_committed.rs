//! read_committed is honest: records of aborted transactions are never delivered.
//!
//! On the test cluster: librdkafka's transactional producer (confluent-kafka) writes committed
//! and aborted transactions of two producers (lz4, zstd) interleaved with a plain idempotent
//! producer's records (gzip) over three partitions; librdkafka's consumer is the oracle, and the
//! bus must deliver exactly what it delivers, partition by partition in the same order, under
//! both isolation levels.
//!
//! And on a scripted peer (kept beside the real broker, see docs/BROKER.md): Fetch responses
//! built as the protocol specifies, with shapes a real broker produces only by chance of
//! timing (several producers' aborted ranges in one response, markers and aborted batches of
//! different codecs back to back), the same oracle.
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

/// What librdkafka delivers from `topic` at `bootstrap`, by partition.
fn oracle(bootstrap: &str, topic: &str, isolation: &str) -> Delivered {
    let out = run_peer(
        "isolation_peer.py",
        &[
            "read",
            "--bootstrap",
            bootstrap,
            "--topic",
            topic,
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

/// What the bus delivers from `topic` at `bootstrap`, by partition, under `isolation`.
async fn bus(bootstrap: &str, topic: &str, isolation: IsolationLevel) -> Delivered {
    let mut config = KafkaConfig::new(bootstrap);
    config.consumer.isolation_level = isolation;
    let bus = bus_kafka::connect(config).await.expect("connected");
    let seen: Arc<Mutex<Delivered>> = Arc::default();
    let sink = Arc::clone(&seen);
    // One handler at a time: messages reach it in offset order per partition.
    let options = SubscribeOptions::new(bus_tests::unique("isolation")).with_concurrency(1);
    let subscription = bus
        .subscribe(topic, options, move |m: Message| {
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
        let expected = oracle(&peer.bootstrap(), TOPIC, name);
        let actual = bus(&peer.bootstrap(), TOPIC, level).await;
        assert_eq!(actual, expected, "{name}: the bus (left) and librdkafka (right) differ");
        let aborted =
            |d: &Delivered| d.values().flatten().filter(|(_, v)| v.contains("aborted")).count();
        match level {
            IsolationLevel::ReadCommitted => assert_eq!(aborted(&actual), 0, "{actual:?}"),
            IsolationLevel::ReadUncommitted => assert_eq!(aborted(&actual), 11, "{actual:?}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_the_cluster_aborted_transactions_of_librdkafkas_producer_are_never_delivered() {
    let topic = bus_tests::unique("read-committed");
    bus_kafka::admin::connect(bus_tests::config())
        .await
        .unwrap()
        .ensure_topic(&topic, 3)
        .await
        .unwrap();
    let bootstrap = bus_tests::bootstrap();
    let written = run_peer(
        "isolation_peer.py",
        &[
            "transactions",
            "--bootstrap",
            &bootstrap,
            "--topic",
            &topic,
            "--partitions",
            "3",
            "--rounds",
            "6",
        ],
        "",
    );
    let count = |fate: &str| written[fate].as_u64().unwrap() as usize;
    assert!(count("aborted") > 0 && count("committed") > 0, "{written}");
    for (level, name) in [
        (IsolationLevel::ReadCommitted, "read_committed"),
        (IsolationLevel::ReadUncommitted, "read_uncommitted"),
    ] {
        let expected = oracle(&bootstrap, &topic, name);
        let actual = bus(&bootstrap, &topic, level).await;
        assert_eq!(actual, expected, "{name}: the bus (left) and librdkafka (right) differ");
        let with = |d: &Delivered, fate: &str| {
            d.values().flatten().filter(|(_, v)| v.starts_with(fate)).count()
        };
        let aborted = match level {
            IsolationLevel::ReadCommitted => 0,
            IsolationLevel::ReadUncommitted => count("aborted"),
        };
        assert_eq!(with(&actual, "aborted"), aborted, "{name}");
        assert_eq!(with(&actual, "committed"), count("committed"), "{name}");
        assert_eq!(with(&actual, "plain"), count("plain"), "{name}");
    }
}
