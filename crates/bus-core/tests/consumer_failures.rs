//! No message or partition stuck without a word (on the in-memory backend): a dead letter the
//! backend refuses for good (its topic does not exist) fails the subscription visibly, naming
//! the partition, offset and dead-letter topic, instead of pinning the partition; a batch
//! skipped past leaves its offsets done for commits. (A refusal that may pass is retried with
//! backoff while its key waits: `tests/tests/dead_letter_refused.rs` and the consumer's module
//! documentation.)
//!
//! Shown to fail without the change (by hand): before, a dead letter to a missing topic was
//! retried forever and the subscription's health only named it as retrying.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::sync::{Arc, Mutex};
use std::time::Duration;

use bus_core::dispatch::{DispatchConfig, KeyedDispatch, ProcessFn, Processed};
use bus_core::memory::MemoryConfig;
use bus_core::{
    EventBus, HandlerError, Headers, Message, Record, SubscribeOptions, TopicPartition,
    health::Health, subscription::RetryPolicy,
};
use bus_supervisor::Supervisor;
use bytes::Bytes;

const PATIENCE: Duration = Duration::from_secs(30);

async fn eventually(what: &str, mut condition: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + PATIENCE;
    while !condition() {
        assert!(tokio::time::Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

fn record(topic: &str, key: &str, value: &str) -> Record {
    Record::new(topic, value.to_owned()).with_key(key.to_owned())
}

#[tokio::test]
async fn a_dead_letter_refused_for_good_fails_the_subscription_visibly() {
    // Topics are not created on first use: the dead-letter topic is missing, which the backend
    // refuses for good (UnknownTopic); truncating the record cannot help.
    let config = MemoryConfig::default().with_auto_create_topics(false);
    let bus = EventBus::in_memory_with(config).unwrap();
    let memory = bus.memory_backend().unwrap().clone();
    memory.create_topic("orders", 1).unwrap();
    let handled: Arc<Mutex<Vec<String>>> = Arc::default();
    let seen = Arc::clone(&handled);
    let retry = RetryPolicy {
        max_attempts: 1,
        initial_backoff: Duration::from_millis(20),
        max_backoff: Duration::from_millis(50),
        multiplier: 2.0,
    };
    let options = SubscribeOptions::new("g").with_retry(retry).with_dead_letter_topic("orders.dlq");
    let _orders = bus
        .subscribe("orders", options, move |m: Message| {
            let seen = Arc::clone(&seen);
            async move {
                let value = String::from_utf8_lossy(m.payload()).into_owned();
                seen.lock().unwrap().push(value.clone());
                if value == "bad" { Err(HandlerError::new("refused")) } else { Ok(()) }
            }
        })
        .await
        .unwrap();
    for (key, value) in [("k", "bad"), ("k", "after-bad")] {
        bus.publish(record("orders", key, value)).await.unwrap();
    }
    // The subscription fails, naming the partition, offset and dead-letter topic; the key's
    // next message is not handled past the message that could not be dead-lettered.
    eventually("the failed subscription in the health", || {
        let report = bus.health_report();
        report.subscriptions.iter().any(|s| {
            s.failure
                .as_deref()
                .is_some_and(|f| f.contains("`orders-0` at offset 0") && f.contains("`orders.dlq`"))
        })
    })
    .await;
    assert!(matches!(bus.health(), Health::Unhealthy { .. }), "{:?}", bus.health());
    assert!(bus.metrics().subscriptions_failed >= 1);
    assert!(
        !handled.lock().unwrap().contains(&"after-bad".to_owned()),
        "the key's next message is not handled past the refused dead letter"
    );
    assert!(
        memory.records("orders.dlq", 0).is_err()
            || memory.records("orders.dlq", 0).unwrap().is_empty()
    );
    bus.shutdown(Duration::from_secs(5)).await.unwrap();
}

#[tokio::test]
async fn a_skipped_offset_counts_as_done_for_the_commit_position() {
    let supervisor = Supervisor::builder("test").build();
    let process: ProcessFn = Arc::new(|_m: Message| Box::pin(async { Processed::Done }));
    let dispatch =
        KeyedDispatch::start(&supervisor.root().child("d"), DispatchConfig::default(), process)
            .unwrap();
    let tp = TopicPartition::new("t", 0);
    let message = |offset| Message {
        topic: "t".into(),
        partition: 0,
        offset,
        key: None,
        value: Some(Bytes::new()),
        headers: Headers::new(),
        timestamp: chrono::DateTime::default(),
    };
    dispatch.submit(vec![message(0), message(1)]).await.unwrap();
    eventually("both done", || dispatch.committable(&tp) == Some(2)).await;
    // Offsets 2-9 were a batch dead-lettered whole.
    assert!(dispatch.skip(&tp, 9));
    assert_eq!(dispatch.committable(&tp), Some(10));
    assert!(!dispatch.skip(&tp, 5), "not above the last submitted");
    dispatch.submit(vec![message(10)]).await.unwrap();
    eventually("after the skip", || dispatch.committable(&tp) == Some(11)).await;
    supervisor.shutdown(Duration::from_secs(5)).await.unwrap();
}
