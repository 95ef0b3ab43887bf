//! Go and Rust services on the same topics, through the broker, under each codec:
//! - a Go service (the Go peer: the Go SDK's `PublishEnvelope` on sarama, hash partitioner)
//!   publishes envelopes and the bus consumes them: every one arrives with Go's bytes, on the
//!   partition the bus's `fnv1a` gives its aggregate id, in per-aggregate order, and is an
//!   envelope here;
//! - the bus publishes envelopes with `Partitioner::Fnv1a` and a Go service reads them: the
//!   Go SDK's `FromBytes` accepts every one, with our fields; each is on the partition sarama's
//!   hash partitioner picks for its key; the `X-*` headers are the SDK's, and
//!   `ExtractAggregateID` finds the aggregate id.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bus_core::{
    Envelope, HandlerError, Message, Partitioner, SubscribeOptions, aggregate_id_of,
    subscription::OffsetReset,
};
use bus_kafka::config::Compression;
use bus_tests::{go_bytes, go_field_differences, run_go_peer_json, wait_for};
use serde_json::{Value, json};

const PARTITIONS: i32 = 6;
const AGGREGATES: usize = 40;
const EVENTS: usize = 600;
const DEADLINE: Duration = Duration::from_secs(60);

fn codec_name(compression: Compression) -> &'static str {
    match compression {
        Compression::None => "none",
        Compression::Gzip => "gzip",
        Compression::Snappy => "snappy",
        Compression::Lz4 => "lz4",
        Compression::Zstd => "zstd",
    }
}

async fn new_topic(prefix: &str) -> String {
    let topic = bus_tests::unique(prefix);
    let admin = bus_kafka::admin::connect(bus_tests::config()).await.unwrap();
    admin.ensure_topic(&topic, PARTITIONS).await.unwrap();
    bus_tests::settle_topic(&topic, PARTITIONS as usize).await;
    topic
}

// ----- Go publishes, the bus consumes -----------------------------------------------------------

async fn go_publishes_bus_consumes(codec: &str) {
    let topic = new_topic(&format!("go-to-bus-{codec}")).await;
    let produced = run_go_peer_json(&[
        "produce",
        "--bootstrap",
        &bus_tests::bootstrap(),
        "--topic",
        &topic,
        "--codec",
        codec,
        "--aggregates",
        &AGGREGATES.to_string(),
        "--events",
        &EVENTS.to_string(),
    ]);
    let sent: HashMap<String, &Value> = produced["sent"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| (s["event_id"].as_str().unwrap().to_owned(), s))
        .collect();
    assert_eq!(sent.len(), EVENTS);

    let bus = bus_kafka::connect(bus_tests::config()).await.unwrap();
    let received: Arc<Mutex<Vec<Message>>> = Arc::default();
    let log = received.clone();
    let options = SubscribeOptions::new(bus_tests::unique("go-to-bus-g"))
        .with_auto_offset_reset(OffsetReset::Earliest);
    let subscription = bus
        .subscribe(&topic, options, move |message: Message| {
            let log = log.clone();
            async move {
                log.lock().unwrap().push(message);
                Ok::<(), HandlerError>(())
            }
        })
        .await
        .unwrap();
    wait_for("every Go envelope to be handled", DEADLINE, || {
        received.lock().unwrap().len() >= EVENTS
    })
    .await;

    let messages = received.lock().unwrap().clone();
    assert_eq!(messages.len(), EVENTS, "each Go envelope handled once");
    // Per aggregate: versions 1, 2, 3, … in the order the handlers ran.
    let mut versions: BTreeMap<String, Vec<i64>> = BTreeMap::new();
    for message in &messages {
        let envelope = Envelope::from_message(message)
            .unwrap_or_else(|e| panic!("Go's envelope refused here: {e}: {:?}", message.value));
        let go = sent[&envelope.event_id];
        assert_eq!(
            message.payload(),
            go["value"].as_str().unwrap().as_bytes(),
            "Go's bytes, intact"
        );
        assert_eq!(envelope.aggregate_id, go["aggregate_id"].as_str().unwrap());
        assert_eq!(envelope.event_version, go["version"].as_i64().unwrap());
        assert_ne!(envelope.timestamp.offset_seconds(), 0, "Go's local offset kept");
        // Where sarama put it is where our fnv1a puts its aggregate id.
        let ours = Partitioner::Fnv1a.partition(envelope.aggregate_id.as_bytes(), PARTITIONS);
        assert_eq!(ours, Ok(message.partition), "{}", envelope.aggregate_id);
        assert_eq!(i64::from(message.partition), go["partition"].as_i64().unwrap());
        assert_eq!(message.offset, go["offset"].as_i64().unwrap());
        // The SDK's headers and key.
        assert_eq!(message.key.as_deref(), Some(envelope.aggregate_id.as_bytes()));
        let header = |name: &str| message.headers.get_str(name).map(str::to_owned);
        assert_eq!(header("X-Aggregate-ID").as_deref(), Some(envelope.aggregate_id.as_str()));
        assert_eq!(header("X-Event-ID").as_deref(), Some(envelope.event_id.as_str()));
        assert_eq!(header("X-Event-Type").as_deref(), Some(envelope.event_type.as_str()));
        assert_eq!(header("X-Event-Version"), Some(envelope.event_version.to_string()));
        assert_eq!(header("X-Trace-ID"), envelope.trace_id);
        assert_eq!(header("X-Tenant-ID"), envelope.tenant_id);
        assert_eq!(aggregate_id_of(message), Some(envelope.aggregate_id.clone()));
        versions.entry(envelope.aggregate_id).or_default().push(envelope.event_version);
    }
    assert_eq!(versions.len(), AGGREGATES);
    for (aggregate, versions) in &versions {
        let expected: Vec<i64> = (1..=versions.len() as i64).collect();
        assert_eq!(versions, &expected, "{aggregate}: per-aggregate order");
    }

    subscription.unsubscribe(Duration::from_secs(30)).await.unwrap();
    bus.shutdown(Duration::from_secs(30)).await.unwrap();
    assert_eq!(bus.live_tasks(), 0, "tasks left behind:\n{}", bus.snapshot());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn go_publishes_bus_consumes_uncompressed() {
    go_publishes_bus_consumes("none").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn go_publishes_bus_consumes_gzip() {
    go_publishes_bus_consumes("gzip").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn go_publishes_bus_consumes_snappy() {
    go_publishes_bus_consumes("snappy").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn go_publishes_bus_consumes_lz4() {
    go_publishes_bus_consumes("lz4").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn go_publishes_bus_consumes_zstd() {
    go_publishes_bus_consumes("zstd").await;
}

// ----- the bus publishes, Go consumes -----------------------------------------------------------

/// Envelope `n`: aggregates with every allowed kind of character (and some padded with
/// spaces, which the Go SDK accepts and keys untrimmed), optionals on some, a timestamp at an
/// offset on some.
fn envelope(n: usize) -> Envelope {
    let a = n % AGGREGATES;
    let aggregate =
        if a % 10 == 9 { format!(" tenant:{a}/order.{a}_x ") } else { format!("order-{a}") };
    let mut e =
        Envelope::new(aggregate, "OrderUpdated", (n / AGGREGATES + 1) as i64, json!({"n": n}))
            .unwrap()
            .with_trace_id(format!("trace-{n}"));
    if n.is_multiple_of(3) {
        e = e.with_correlation_id(format!("corr-{}", n % 7)).with_tenant_id(format!("t-{}", n % 4));
    }
    if n.is_multiple_of(4) {
        let at =
            chrono::DateTime::parse_from_rfc3339("2024-03-01T14:34:56.123456789+02:00").unwrap();
        e = e.with_timestamp(at);
    }
    e
}

async fn bus_publishes_go_consumes(compression: Compression) {
    // The bus's warnings in the output of a failed run (a retry, a new producer epoch).
    let _ = tracing_subscriber::fmt().with_max_level(tracing::Level::WARN).try_init();
    let codec = codec_name(compression);
    let topic = new_topic(&format!("bus-to-go-{codec}")).await;
    let mut config = bus_tests::config();
    config.partitioner = Partitioner::Fnv1a;
    config.producer.compression = compression;
    let bus = bus_kafka::connect(config).await.unwrap();
    let envelopes: Vec<Envelope> = (0..EVENTS).map(envelope).collect();
    let mut pending = Vec::with_capacity(EVENTS);
    for e in &envelopes {
        pending.push(bus.publish_nowait(e.to_record(topic.as_str()).unwrap()).await.unwrap());
    }
    let mut deliveries = HashMap::new();
    for (n, future) in pending.into_iter().enumerate() {
        let delivery = future.await.unwrap();
        deliveries.insert((i64::from(delivery.partition), delivery.offset), n);
    }
    bus.shutdown(Duration::from_secs(30)).await.unwrap();

    let read = run_go_peer_json(&[
        "consume",
        "--bootstrap",
        &bus_tests::bootstrap(),
        "--topic",
        &topic,
        "--expect",
        &EVENTS.to_string(),
    ]);
    assert_eq!(read["partitions"], PARTITIONS);
    let records = read["records"].as_array().unwrap();
    assert_eq!(records.len(), EVENTS);
    let mut last_version: HashMap<String, i64> = HashMap::new();
    for r in records {
        let place = (r["partition"].as_i64().unwrap(), r["offset"].as_i64().unwrap());
        let Some(&n) = deliveries.get(&place) else {
            let mut ours: Vec<_> =
                deliveries.keys().filter(|(partition, _)| *partition == place.0).collect();
            ours.sort();
            panic!(
                "Go read a record at {place:?} that no delivery of ours reported: {r}\n\
                 our deliveries on that partition: {ours:?}"
            );
        };
        let sent = &envelopes[n];
        let verdict = &r["verdict"];
        assert_eq!(verdict["accepted"], true, "the Go SDK refused envelope {n}: {verdict}");
        let diffs = go_field_differences(sent, &verdict["envelope"]);
        assert!(diffs.is_empty(), "envelope {n} read differently by Go: {diffs:?}");
        // sarama's hash partitioner puts the key where our fnv1a did.
        assert_eq!(r["hash_partition"].as_i64(), Some(place.0), "envelope {n}");
        assert_eq!(go_bytes(&r["key"]), sent.aggregate_id.as_bytes());
        // The headers as the Go SDK's map holds them.
        let mut expected = json!({
            "X-Aggregate-ID": sent.aggregate_id,
            "X-Event-Type": sent.event_type,
            "X-Event-Version": sent.event_version.to_string(),
            "X-Event-ID": sent.event_id,
            "X-Trace-ID": sent.trace_id,
        });
        if let Some(c) = &sent.correlation_id {
            expected["X-Correlation-ID"] = json!(c);
        }
        if let Some(t) = &sent.tenant_id {
            expected["X-Tenant-ID"] = json!(t);
        }
        assert_eq!(r["headers"], expected, "headers of envelope {n}");
        assert_eq!(r["extracted_aggregate_id"], json!(sent.aggregate_id));
        // Per aggregate, versions increase with the offset (records come sorted by offset).
        let previous = last_version.insert(sent.aggregate_id.clone(), sent.event_version);
        assert!(previous < Some(sent.event_version), "envelope {n} out of order");
    }
    assert_eq!(last_version.len(), AGGREGATES);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bus_publishes_go_consumes_uncompressed() {
    bus_publishes_go_consumes(Compression::None).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bus_publishes_go_consumes_gzip() {
    bus_publishes_go_consumes(Compression::Gzip).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bus_publishes_go_consumes_snappy() {
    bus_publishes_go_consumes(Compression::Snappy).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bus_publishes_go_consumes_lz4() {
    bus_publishes_go_consumes(Compression::Lz4).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bus_publishes_go_consumes_zstd() {
    bus_publishes_go_consumes(Compression::Zstd).await;
}
