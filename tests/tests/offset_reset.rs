//! OFFSET_OUT_OF_RANGE follows `auto_offset_reset`: a committed position beyond the partition
//! (the scripted peer answers its fetch with OFFSET_OUT_OF_RANGE, as Kafka does) moves to the
//! earliest offset under `earliest` and to the end under `latest`.
//!
//! Shown to fail without the change (by hand): before, every reset went to the earliest
//! offset, and the `latest` subscription redelivered the whole partition.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bus_kafka::{KafkaConfig, Message, SubscribeOptions, subscription::OffsetReset};
use bus_tests::scripted::{BatchKind, Request, Script, ScriptedBroker};
use bus_tests::wait_for;
use bytes::BytesMut;
use kafka_protocol::messages::offset_fetch_response::{
    OffsetFetchResponsePartition, OffsetFetchResponseTopic,
};
use kafka_protocol::messages::{
    ApiKey, ListOffsetsRequest, OffsetFetchRequest, OffsetFetchResponse,
};
use kafka_protocol::protocol::Encodable;

const PATIENCE: Duration = Duration::from_secs(60);

/// Partition 0 with ten records, the group's committed offset at 1000 (beyond its end).
fn script(latest_asked: Arc<AtomicUsize>) -> Script {
    let mut script = Script::new("reset", 1);
    let records: Vec<(Option<&str>, Option<&[u8]>)> =
        (0..10).map(|_| (Some("k"), Some(&b"old"[..]))).collect();
    script.partitions[0].append(&records, BatchKind::PLAIN);
    script.hostile = Some(Arc::new(move |request: &Request| match request.api {
        ApiKey::OffsetFetch => {
            let asked: OffsetFetchRequest = request.decode();
            let mut response = OffsetFetchResponse::default();
            response.topics = asked
                .topics
                .unwrap_or_default()
                .into_iter()
                .map(|t| {
                    let mut topic = OffsetFetchResponseTopic::default();
                    topic.name = t.name;
                    topic.partitions = t
                        .partition_indexes
                        .iter()
                        .map(|p| {
                            let mut partition = OffsetFetchResponsePartition::default();
                            partition.partition_index = *p;
                            partition.committed_offset = 1000;
                            partition
                        })
                        .collect();
                    topic
                })
                .collect();
            let mut out = BytesMut::new();
            response.encode(&mut out, request.version).unwrap();
            Some(out.freeze())
        }
        ApiKey::ListOffsets => {
            let asked: ListOffsetsRequest = request.decode();
            if asked.topics.iter().flat_map(|t| &t.partitions).any(|p| p.timestamp == -1) {
                latest_asked.fetch_add(1, Ordering::Relaxed);
            }
            None
        }
        _ => None,
    }));
    script
}

async fn consume(reset: OffsetReset) -> Vec<(i64, String)> {
    let latest_asked = Arc::new(AtomicUsize::new(0));
    let peer = ScriptedBroker::start(script(Arc::clone(&latest_asked)));
    let bus = bus_kafka::connect(KafkaConfig::new(&peer.bootstrap())).await.expect("connected");
    let seen: Arc<Mutex<Vec<(i64, String)>>> = Arc::default();
    let sink = Arc::clone(&seen);
    let options = SubscribeOptions::new("g").with_concurrency(1).with_auto_offset_reset(reset);
    let subscription = bus
        .subscribe("reset", options, move |m: Message| {
            let sink = Arc::clone(&sink);
            async move {
                sink.lock().unwrap().push((m.offset, String::from_utf8_lossy(m.payload()).into()));
                Ok(())
            }
        })
        .await
        .expect("subscribed");
    match reset {
        // The reset asks for the end offset; only then do new records arrive.
        OffsetReset::Latest => {
            wait_for("the reset to the end", PATIENCE, || latest_asked.load(Ordering::Relaxed) > 0)
                .await;
        }
        OffsetReset::Earliest => {
            wait_for("the old records", PATIENCE, || seen.lock().unwrap().len() == 10).await;
        }
    }
    peer.update(|s| {
        s.partitions[0]
            .append(&[(Some("k"), Some(b"new")), (Some("k"), Some(b"new"))], BatchKind::PLAIN);
    });
    wait_for("the new records", PATIENCE, || {
        seen.lock().unwrap().iter().filter(|(_, v)| v == "new").count() == 2
    })
    .await;
    subscription.unsubscribe(Duration::from_secs(5)).await.expect("unsubscribed");
    bus.shutdown(Duration::from_secs(5)).await.expect("clean shutdown");
    seen.lock().unwrap().clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn out_of_range_with_latest_moves_to_the_end() {
    let seen = consume(OffsetReset::Latest).await;
    assert_eq!(seen, vec![(10, "new".to_owned()), (11, "new".to_owned())]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn out_of_range_with_earliest_moves_to_the_start() {
    let seen = consume(OffsetReset::Earliest).await;
    let offsets: Vec<i64> = seen.iter().map(|(o, _)| *o).collect();
    assert_eq!(offsets, (0..12).collect::<Vec<i64>>());
}
