//! No message or partition stuck without a word (on the in-memory backend): a dead letter that
//! cannot be stored is retried with backoff while its key stays blocked (later messages of the
//! key wait, other keys go on), and the subscription's health names it until it is stored; a
//! batch skipped past leaves its offsets done for commits.
//!
//! Shown to fail without the change (by hand): before, a failed dead-letter publish left the
//! message retained at once, the key's next message ran before it was stored, and the health
//! stayed `Ready`.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::sync::{Arc, Mutex};
use std::time::Duration;

use bus_core::dispatch::{DispatchConfig, KeyedDispatch, ProcessFn, Processed};
use bus_core::memory::MemoryConfig;
use bus_core::{
    EventBus, HandlerError, Headers, Message, Record, SubscribeOptions, TopicPartition,
    headers::dead_letter, health::Health, subscription::RetryPolicy,
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
async fn a_dead_letter_that_cannot_be_stored_is_retried_while_its_key_waits() {
    // Topics are not created on first use: the dead-letter topic is missing until we make it.
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
    for (key, value) in [("k", "bad"), ("k", "after-bad"), ("other", "independent")] {
        bus.publish(record("orders", key, value)).await.unwrap();
    }
    // The dead letter keeps failing (no such topic): named in the health, retried.
    eventually("the failing dead letter in the health", || match bus.health() {
        Health::Degraded { reason } => reason.contains("dead-lettering `orders-0` offset 0"),
        _ => false,
    })
    .await;
    eventually("retries", || bus.metrics().dead_letter_failures >= 3).await;
    eventually("the other key handled", || {
        handled.lock().unwrap().contains(&"independent".to_owned())
    })
    .await;
    assert!(
        !handled.lock().unwrap().contains(&"after-bad".to_owned()),
        "the key's next message waits for its dead letter"
    );
    // The topic appears: the dead letter is stored, the key moves on, the health clears.
    memory.create_topic("orders.dlq", 1).unwrap();
    eventually("the key's next message", || {
        handled.lock().unwrap().contains(&"after-bad".to_owned())
    })
    .await;
    let dead = memory.records("orders.dlq", 0).unwrap();
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0].headers.get_str(dead_letter::REASON), Some("handler-error"));
    assert_eq!(bus.metrics().dead_lettered, 1);
    eventually("the health clear", || bus.health() == Health::Ready).await;
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
