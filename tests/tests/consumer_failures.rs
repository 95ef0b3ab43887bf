//! No partition held unread without a word: when an assignment's committed offsets cannot be
//! read, the subscription retries with backoff up to its rebalance timeout, then fails visibly:
//! the bus's health names it, `subscriptions_failed` counts it, and it leaves its group (so
//! that another member can take the partitions) instead of heartbeating on them unread.
//!
//! Against the scripted peer (an adversary here: its coordinator answers every OffsetFetch with
//! COORDINATOR_LOAD_IN_PROGRESS). Shown to fail without the change (by hand): before, the
//! subscription logged the error and kept its membership; the health stayed `Ready`.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bus_kafka::{KafkaConfig, Message, SubscribeOptions, health::Health};
use bus_tests::scripted::{Request, Script, ScriptedBroker};
use bus_tests::wait_for;
use bytes::{Bytes, BytesMut};
use kafka_protocol::messages::offset_fetch_response::{
    OffsetFetchResponsePartition, OffsetFetchResponseTopic,
};
use kafka_protocol::messages::{ApiKey, OffsetFetchRequest, OffsetFetchResponse};
use kafka_protocol::protocol::Encodable;

/// COORDINATOR_LOAD_IN_PROGRESS: retriable.
const LOADING: i16 = 14;

fn loading(request: &Request) -> Bytes {
    let asked: OffsetFetchRequest = request.decode();
    let mut response = OffsetFetchResponse::default();
    if request.version >= 2 {
        response.error_code = LOADING;
    }
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
                    partition.error_code = LOADING;
                    partition
                })
                .collect();
            topic
        })
        .collect();
    let mut out = BytesMut::new();
    response.encode(&mut out, request.version).unwrap();
    out.freeze()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreadable_committed_offsets_fail_the_subscription_visibly_and_it_leaves_its_group() {
    let leaves = Arc::new(AtomicUsize::new(0));
    let seen_leaves = Arc::clone(&leaves);
    let mut script = Script::new("committed", 1);
    script.hostile = Some(Arc::new(move |request: &Request| match request.api {
        ApiKey::OffsetFetch => Some(loading(request)),
        ApiKey::LeaveGroup => {
            seen_leaves.fetch_add(1, Ordering::Relaxed);
            None
        }
        _ => None,
    }));
    let peer = ScriptedBroker::start(script);
    let mut config = KafkaConfig::new(&peer.bootstrap());
    config.request_timeout = Duration::from_secs(2);
    let bus = bus_kafka::connect(config).await.expect("connected");
    let options = SubscribeOptions::new("g").with_rebalance_timeout(Duration::from_secs(2));
    let subscription = bus
        .subscribe("committed", options, |_m: Message| async { Ok(()) })
        .await
        .expect("subscribed");
    wait_for("the subscription named failed in the health", Duration::from_secs(60), || match bus
        .health()
    {
        // A subscription that failed for good is unhealthy (not merely degraded).
        Health::Unhealthy { reason } => {
            reason.contains("failed: cannot read the committed offsets of committed-0")
        }
        _ => false,
    })
    .await;
    let Health::Unhealthy { reason } = bus.health() else { unreachable!() };
    assert!(reason.contains("subscription `committed` (group `g`)"), "{reason}");
    assert!(reason.contains("COORDINATOR_LOAD_IN_PROGRESS") || reason.contains("(14)"), "{reason}");
    assert_eq!(bus.metrics().subscriptions_failed, 1);
    wait_for("the group left", Duration::from_secs(30), || leaves.load(Ordering::Relaxed) >= 1)
        .await;
    let report = subscription.unsubscribe(Duration::from_secs(5)).await.expect("stopped");
    assert!(report.subscription.left_group);
    let shutdown = bus.shutdown(Duration::from_secs(5)).await.expect("clean shutdown");
    assert_eq!(bus.live_tasks(), 0, "{shutdown}");
}
