//! The producer against a peer client (confluent-kafka, librdkafka 2.16): 10,000 keyed
//! envelopes read back with per-partition order, headers and keys intact, and every key on the
//! partition librdkafka's own partitioner picks for it; invalid envelopes never reach the
//! broker; explicit partitions are honoured.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod producer_support;

use std::collections::HashMap;
use std::time::Duration;

use bus_kafka::{Envelope, Partitioner, Record, errors::PublishError};
use producer_support::peer;
use serde_json::json;

const AGGREGATES: usize = 1_000;
const EVENTS: usize = 10_000;
const PARTITIONS: i32 = 6;

fn aggregate(n: usize) -> String {
    format!("order:{}/{}", n % AGGREGATES, n % 7)
}

fn envelope(n: usize) -> Envelope {
    let mut e =
        Envelope::new(aggregate(n), "OrderUpdated", (n / AGGREGATES + 1) as i64, json!({ "n": n }))
            .unwrap()
            .with_trace_id(format!("trace-{n}"))
            .with_correlation_id(format!("corr-{}", n % 13));
    if n.is_multiple_of(2) {
        e = e.with_tenant_id(format!("tenant-{}", n % 5));
    }
    e
}

async fn publish_and_compare(partitioner: Partitioner, librdkafka_partitioner: &str) {
    let topic = bus_tests::unique(&format!("producer-peer-{partitioner}"));
    let admin = bus_kafka::admin::connect(bus_tests::config()).await.unwrap();
    admin.ensure_topic(&topic, PARTITIONS).await.unwrap();
    let mut config = bus_tests::config();
    config.partitioner = partitioner;
    let bus = bus_kafka::connect(config).await.unwrap();

    // All but the last ten without waiting (in order), the last ten one by one.
    let envelopes: Vec<Envelope> = (0..EVENTS).map(envelope).collect();
    let mut pending = Vec::with_capacity(EVENTS);
    for e in &envelopes[..EVENTS - 10] {
        pending.push(bus.publish_nowait(e.to_record(topic.as_str()).unwrap()).await.unwrap());
    }
    let mut deliveries = Vec::with_capacity(EVENTS);
    for future in pending {
        deliveries.push(future.await.unwrap());
    }
    for e in &envelopes[EVENTS - 10..] {
        deliveries.push(bus.publish_envelope(&topic, e).await.unwrap());
    }

    let read = peer(&["read", "--bootstrap", &bus_tests::bootstrap(), "--topic", &topic], "");
    let records = read["records"].as_array().unwrap();
    assert_eq!(records.len(), EVENTS, "the peer read back every record, once");

    let mut last_n_in_partition: HashMap<i64, (i64, i64)> = HashMap::new();
    let mut seen = vec![false; EVENTS];
    let mut sorted: Vec<&serde_json::Value> = records.iter().collect();
    sorted.sort_by_key(|r| (r["partition"].as_i64().unwrap(), r["offset"].as_i64().unwrap()));
    for r in sorted {
        let (partition, offset) = (r["partition"].as_i64().unwrap(), r["offset"].as_i64().unwrap());
        let decoded = Envelope::from_json(r["value"].as_str().unwrap().as_bytes()).unwrap();
        let n: usize =
            decoded.payload_as::<serde_json::Value>().unwrap()["n"].as_u64().unwrap() as usize;
        assert!(!seen[n], "record {n} read twice");
        seen[n] = true;
        let sent = &envelopes[n];
        // Our acknowledgement named this very place.
        assert_eq!(
            (deliveries[n].partition as i64, deliveries[n].offset),
            (partition, offset),
            "record {n}"
        );
        assert_eq!(decoded.event_id, sent.event_id);
        // Key and headers intact.
        assert_eq!(r["key"].as_str(), Some(sent.aggregate_id.as_str()));
        let headers: HashMap<&str, &str> = r["headers"]
            .as_array()
            .unwrap()
            .iter()
            .map(|h| (h[0].as_str().unwrap(), h[1].as_str().unwrap()))
            .collect();
        let version = sent.event_version.to_string();
        let mut expected = vec![
            ("X-Aggregate-ID", sent.aggregate_id.as_str()),
            ("X-Event-Type", sent.event_type.as_str()),
            ("X-Event-Version", version.as_str()),
            ("X-Event-ID", sent.event_id.as_str()),
            ("X-Trace-ID", sent.trace_id.as_deref().unwrap()),
            ("X-Correlation-ID", sent.correlation_id.as_deref().unwrap()),
        ];
        if let Some(tenant) = sent.tenant_id.as_deref() {
            expected.push(("X-Tenant-ID", tenant));
        }
        assert_eq!(
            headers,
            expected.into_iter().collect::<HashMap<_, _>>(),
            "headers of record {n}"
        );
        // Per partition, offsets follow the publish order.
        if let Some((prev_offset, prev_n)) =
            last_n_in_partition.insert(partition, (offset, n as i64))
        {
            assert!(
                offset > prev_offset && n as i64 > prev_n,
                "partition {partition}: record {n} at {offset} after {prev_n} at {prev_offset}"
            );
        }
    }
    assert!(seen.iter().all(|s| *s));

    // librdkafka's own partitioner puts every key where we did.
    let probe = bus_tests::unique("producer-probe");
    admin.ensure_topic(&probe, PARTITIONS).await.unwrap();
    let keys: Vec<String> = (0..AGGREGATES * 7)
        .map(aggregate)
        .collect::<std::collections::BTreeSet<_>>()
        .into_iter()
        .collect();
    let placed = peer(
        &[
            "partition",
            "--bootstrap",
            &bus_tests::bootstrap(),
            "--topic",
            &probe,
            "--partitioner",
            librdkafka_partitioner,
        ],
        &keys.join("\n"),
    );
    let placed = placed["partitions"].as_object().unwrap();
    assert_eq!(placed.len(), keys.len());
    let ours: HashMap<&str, i32> = (0..EVENTS)
        .map(|n| (envelopes[n].aggregate_id.as_str(), deliveries[n].partition))
        .collect();
    let mut checked = 0;
    for (key, partition) in placed {
        if let Some(ours) = ours.get(key.as_str()) {
            assert_eq!(
                i64::from(*ours),
                partition.as_i64().unwrap(),
                "key {key}: librdkafka {librdkafka_partitioner} vs bus {partitioner}"
            );
            checked += 1;
        }
        assert_eq!(
            partitioner.partition(key.as_bytes(), PARTITIONS).unwrap() as i64,
            partition.as_i64().unwrap(),
            "key {key}"
        );
    }
    assert_eq!(checked, ours.len());
    let used: std::collections::BTreeSet<i32> = deliveries.iter().map(|d| d.partition).collect();
    assert_eq!(used.len(), PARTITIONS as usize, "every partition was used");

    bus.shutdown(Duration::from_secs(10)).await.unwrap();
    assert_eq!(bus.live_tasks(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_envelopes_murmur2_as_librdkafka_murmur2_random() {
    publish_and_compare(Partitioner::Murmur2, "murmur2_random").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_envelopes_fnv1a_as_librdkafka_fnv1a() {
    publish_and_compare(Partitioner::Fnv1a, "fnv1a").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_envelopes_never_reach_the_broker_and_explicit_partitions_are_honoured() {
    let topic = bus_tests::unique("producer-invalid");
    let admin = bus_kafka::admin::connect(bus_tests::config()).await.unwrap();
    admin.ensure_topic(&topic, PARTITIONS).await.unwrap();
    let bus = bus_kafka::connect(bus_tests::config()).await.unwrap();

    let valid = Envelope::new("order-1", "OrderPlaced", 1, json!({"total": 1})).unwrap();
    let mut bad_id = valid.clone();
    bad_id.aggregate_id = "order 1 with spaces".into();
    let mut bad_version = valid.clone();
    bad_version.event_version = 0;
    // A blank event id (the Go SDK requires one; a blank payload string is a payload to it).
    let mut bad_event_id = valid.clone();
    bad_event_id.event_id = "  ".into();
    for (envelope, field) in
        [(&bad_id, "aggregate_id"), (&bad_version, "event_version"), (&bad_event_id, "event_id")]
    {
        match bus.publish_envelope(&topic, envelope).await {
            Err(PublishError::InvalidEnvelope(error)) => assert_eq!(error.field(), Some(field)),
            other => panic!("expected an invalid `{field}`, got {other:?}"),
        }
    }

    // Explicit partitions: honoured in range, refused out of range.
    let stored =
        bus.publish(valid.to_record(topic.as_str()).unwrap().with_partition(4)).await.unwrap();
    assert_eq!(stored.partition, 4);
    match bus.publish(Record::new(topic.as_str(), "x").with_partition(PARTITIONS)).await {
        Err(PublishError::InvalidRecord { topic: t, reason }) => {
            assert_eq!(t, topic);
            assert!(reason.contains("out of range"), "{reason}");
        }
        other => panic!("expected InvalidRecord, got {other:?}"),
    }

    let read = peer(&["read", "--bootstrap", &bus_tests::bootstrap(), "--topic", &topic], "");
    let records = read["records"].as_array().unwrap();
    assert_eq!(records.len(), 1, "only the valid envelope reached the broker: {records:?}");
    assert_eq!(records[0]["partition"], 4);
    assert_eq!(records[0]["key"], "order-1");

    bus.shutdown(Duration::from_secs(10)).await.unwrap();
    assert_eq!(bus.live_tasks(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_codec_and_repeated_header_names_reach_librdkafka_as_sent() {
    use bus_kafka::config::Compression;
    for compression in [
        Compression::None,
        Compression::Gzip,
        Compression::Snappy,
        Compression::Lz4,
        Compression::Zstd,
    ] {
        let topic = bus_tests::unique("producer-codec");
        bus_kafka::admin::connect(bus_tests::config())
            .await
            .unwrap()
            .ensure_topic(&topic, 1)
            .await
            .unwrap();
        let mut config = bus_tests::config();
        config.producer.compression = compression;
        let bus = bus_kafka::connect(config).await.unwrap();
        let mut pending = Vec::new();
        for i in 0..200 {
            let record = Record::new(topic.as_str(), format!("value-{i}-{}", "x".repeat(i)))
                .with_key(format!("key-{}", i % 10))
                .with_header("b", "2")
                .with_header("a", format!("1-{i}"))
                .with_header("a", "3");
            pending.push(bus.publish_nowait(record).await.unwrap());
        }
        for (i, future) in pending.into_iter().enumerate() {
            assert_eq!(future.await.unwrap().offset, i as i64, "{compression:?}");
        }
        let read = peer(&["read", "--bootstrap", &bus_tests::bootstrap(), "--topic", &topic], "");
        let records = read["records"].as_array().unwrap();
        assert_eq!(records.len(), 200, "{compression:?}");
        for (i, r) in records.iter().enumerate() {
            assert_eq!(r["value"], format!("value-{i}-{}", "x".repeat(i)), "{compression:?}");
            assert_eq!(r["key"], format!("key-{}", i % 10));
            assert_eq!(
                r["headers"],
                json!([["b", "2"], ["a", format!("1-{i}")], ["a", "3"]]),
                "{compression:?}: order and repeated names kept"
            );
        }
        bus.shutdown(Duration::from_secs(10)).await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn buffer_bytes_come_back_after_acknowledgements_and_rejections() {
    let topic = bus_tests::unique("producer-buffer");
    bus_kafka::admin::connect(bus_tests::config())
        .await
        .unwrap()
        .ensure_topic(&topic, 2)
        .await
        .unwrap();
    let mut config = bus_tests::config();
    config.producer.buffer_bytes = 3_000_000;
    config.producer.publish_timeout = Duration::from_millis(200);
    let bus = bus_kafka::connect(config).await.unwrap();
    // Acknowledged: far more bytes in total than the buffer holds.
    for i in 0..50 {
        bus.publish(Record::new(topic.as_str(), vec![1u8; 100_000]).with_key(format!("k{i}")))
            .await
            .unwrap();
    }
    // Rejected by the broker (larger than its message.max.bytes), twice.
    for _ in 0..2 {
        match bus.publish(Record::new(topic.as_str(), vec![2u8; 2_000_000])).await {
            Err(PublishError::Rejected { topic: t, partition, reason }) => {
                assert_eq!(t, topic);
                assert!((0..2).contains(&partition));
                assert!(reason.contains("MessageTooLarge"), "{reason}");
            }
            other => panic!("expected Rejected, got {other:?}"),
        }
    }
    // The whole buffer is free again: a record filling it (but for a kilobyte, room for its
    // bookkeeping) is accepted at once (and then rejected by the broker, which is fine here).
    let accepted = bus.publish_nowait(Record::new(topic.as_str(), vec![3u8; 2_999_000])).await;
    assert!(accepted.is_ok(), "{accepted:?}");
    assert!(accepted.unwrap().await.is_err());
    bus.shutdown(Duration::from_secs(10)).await.unwrap();
    assert_eq!(bus.live_tasks(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_topics_without_auto_creation_and_unkeyed_records_spread() {
    let mut config = bus_tests::config();
    config.topics.auto_create = false;
    let bus = bus_kafka::connect(config).await.unwrap();
    let missing = bus_tests::unique("producer-missing");
    match bus.publish(Record::new(missing.as_str(), "x")).await {
        Err(PublishError::UnknownTopic { topic }) => assert_eq!(topic, missing),
        other => panic!("expected UnknownTopic, got {other:?}"),
    }

    let topic = bus_tests::unique("producer-unkeyed");
    bus_kafka::admin::connect(bus_tests::config())
        .await
        .unwrap()
        .ensure_topic(&topic, PARTITIONS)
        .await
        .unwrap();
    let mut partitions = std::collections::BTreeSet::new();
    for i in 0..PARTITIONS * 2 {
        partitions.insert(
            bus.publish(Record::new(topic.as_str(), format!("{i}"))).await.unwrap().partition,
        );
    }
    assert_eq!(partitions.len(), PARTITIONS as usize, "unkeyed records go round robin");
    bus.shutdown(Duration::from_secs(10)).await.unwrap();
}
