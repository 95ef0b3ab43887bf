//! Tombstones on a compacted topic, against librdkafka (confluent-kafka) as the oracle: the
//! topic is created compacted by librdkafka's AdminClient; a tombstone the bus publishes is a
//! null value to librdkafka, an empty value stays empty; a tombstone librdkafka produces is
//! `None` to the bus, an empty value `Some` of no bytes.
//!
//! Shown to fail (checked by hand): with the producer writing a null value as length 0 (what
//! the old `Bytes` value meant), librdkafka reads `""` where the test expects null (the first
//! assertion fails); the fetch decoder's mapping of length -1 to an empty value (the old
//! `unwrap_or_default`) would fail the last one, and is pinned by a unit test in `batch`.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod producer_support;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use bus_kafka::{Message, Record, SubscribeOptions, subscription::StartPosition};
use bytes::Bytes;
use producer_support::peer;

const PATIENCE: Duration = Duration::from_secs(60);

/// What the bus's subscriber read: offsets and values.
type Read = Arc<Mutex<Vec<(i64, Option<Bytes>)>>>;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tombstones_cross_the_wire_as_null_values_on_a_compacted_topic() {
    let topic = bus_tests::unique("tombstones");
    let bootstrap = bus_tests::bootstrap();
    let created =
        peer(&["compacted", "--bootstrap", &bootstrap, "--topic", &topic, "--partitions", "1"], "");
    assert_eq!(created["cleanup.policy"], "compact", "{created}");

    let bus = bus_kafka::connect(bus_tests::config()).await.unwrap();
    for record in [
        Record::new(&topic, "v1").with_key("k1"),
        Record::tombstone(&topic, "k1"),
        Record::new(&topic, "").with_key("k2"),
        Record::new(&topic, "v3").with_key("k3"),
    ] {
        bus.publish(record.with_partition(0)).await.unwrap();
    }
    let read = peer(&["read", "--bootstrap", &bootstrap, "--topic", &topic], "");
    let values: Vec<serde_json::Value> =
        read["records"].as_array().unwrap().iter().map(|r| r["value"].clone()).collect();
    assert_eq!(values, vec!["v1".into(), serde_json::Value::Null, "".into(), "v3".into()]);

    let produced = peer(
        &["produce", "--bootstrap", &bootstrap, "--topic", &topic],
        "{\"key\": \"k4\", \"value\": null, \"partition\": 0}\n\
         {\"key\": \"k5\", \"value\": \"\", \"partition\": 0}\n",
    );
    assert_eq!(produced["offsets"], serde_json::json!([[0, 4], [0, 5]]));

    let seen: Read = Arc::default();
    let s = Arc::clone(&seen);
    let options = SubscribeOptions::new(bus_tests::unique("tombstones-reader"))
        .with_start(StartPosition::Earliest);
    let subscription = bus
        .subscribe(&topic, options, move |m: Message| {
            s.lock().unwrap().push((m.offset, m.value.clone()));
            std::future::ready(Ok(()))
        })
        .await
        .unwrap();
    bus_tests::wait_for("all six read", PATIENCE, || seen.lock().unwrap().len() == 6).await;
    let mut seen = seen.lock().unwrap().clone();
    seen.sort_by_key(|(offset, _)| *offset);
    let values: Vec<Option<&[u8]>> = seen.iter().map(|(_, v)| v.as_deref()).collect();
    assert_eq!(
        values,
        vec![Some(&b"v1"[..]), None, Some(&b""[..]), Some(&b"v3"[..]), None, Some(&b""[..])]
    );
    subscription.unsubscribe(PATIENCE).await.unwrap();
    bus.shutdown(PATIENCE).await.unwrap();
}
