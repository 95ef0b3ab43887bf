//! A dead letter the broker refuses for good never pins its partition (issue 24, item 4).
//!
//! - `truncate` (the default): a poison record of about 1 MiB whose dead letter (the record
//!   plus the dead-letter headers) is over the broker's `message.max.bytes` is stored without
//!   its value, the header `X-DLQ-Truncated` giving the value's size; the next record of the
//!   same key is handled and the partition's commits go on.
//! - `fail`: a dead-letter topic that does not exist (auto-creation off) fails the
//!   subscription: its health names the partition, offset and refusal.
//!
//! Shown to fail with the protection off (every refusal treated as one that may pass): the
//! dead letter was retried forever, the next record never handled.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::sync::Arc;
use std::time::Duration;

use bus_kafka::subscription::RefusedDeadLetters;
use bus_kafka::{HandlerError, Message, Record, SubscribeOptions};
use bus_tests::wait_for;
use std::sync::Mutex;

/// How long the test waits for what should happen.
const DEADLINE: Duration = Duration::from_secs(60);

/// Under the broker's default `message.max.bytes` (1,048,588) as a record batch of its own,
/// over it with the dead-letter headers added.
const LARGE_VALUE: usize = 1_048_400;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_letter_too_large_for_the_broker_is_stored_without_its_value() {
    let topic = bus_tests::unique("dlq-large");
    let dlq = format!("{topic}.dlq");
    let admin = bus_kafka::admin::connect(bus_tests::config()).await.unwrap();
    admin.ensure_topic(&topic, 1).await.unwrap();
    admin.ensure_topic(&dlq, 1).await.unwrap();
    let bus = bus_kafka::connect(bus_tests::config()).await.unwrap();
    bus.publish(Record::new(&topic, vec![b'x'; LARGE_VALUE]).with_key("k")).await.unwrap();
    bus.publish(Record::new(&topic, "after").with_key("k")).await.unwrap();

    let handled = Arc::new(Mutex::new(Vec::new()));
    let seen = Arc::clone(&handled);
    let options = SubscribeOptions::new(bus_tests::unique("dlq-large-group"));
    let subscription = bus
        .subscribe(&topic, options, move |message: Message| {
            let seen = Arc::clone(&seen);
            async move {
                if message.value.as_ref().map_or(0, |v| v.len()) > 1000 {
                    return Err(HandlerError::permanent("too large to handle"));
                }
                seen.lock().unwrap().push(message.offset);
                Ok(())
            }
        })
        .await
        .unwrap();
    let dead = Arc::new(Mutex::new(Vec::new()));
    let stored = Arc::clone(&dead);
    let reader = bus
        .subscribe(
            &dlq,
            SubscribeOptions::new(bus_tests::unique("dlq-reader")),
            move |m: Message| {
                stored.lock().unwrap().push(m);
                std::future::ready(Ok::<(), HandlerError>(()))
            },
        )
        .await
        .unwrap();

    wait_for("the next record of the key handled", DEADLINE, || {
        handled.lock().unwrap().contains(&1)
    })
    .await;
    wait_for("the dead letter stored", DEADLINE, || !dead.lock().unwrap().is_empty()).await;
    let letters = dead.lock().unwrap().clone();
    assert_eq!(letters.len(), 1, "one dead letter: {letters:?}");
    let letter = &letters[0];
    assert!(letter.value.as_ref().is_none_or(|v| v.is_empty()), "stored without its value");
    assert_eq!(letter.key.as_deref(), Some(&b"k"[..]));
    let header =
        |name: &str| letter.headers.get(name).map(|v| String::from_utf8_lossy(v).into_owned());
    assert_eq!(header("X-DLQ-Truncated"), Some(LARGE_VALUE.to_string()));
    assert_eq!(header("X-DLQ-Source-Offset"), Some("0".to_owned()));
    assert_eq!(header("X-DLQ-Reason"), Some("handler-error".to_owned()));

    let report = bus.health_report();
    let status = report.subscriptions.iter().find(|s| s.topic == topic).unwrap();
    assert!(status.failure.is_none(), "the subscription goes on: {status:?}");
    reader.unsubscribe(Duration::from_secs(30)).await.unwrap();
    subscription.unsubscribe(Duration::from_secs(30)).await.unwrap();
    bus.shutdown(Duration::from_secs(30)).await.unwrap();
    assert_eq!(bus.live_tasks(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_letter_topic_refusing_for_good_fails_the_subscription_under_fail() {
    let topic = bus_tests::unique("dlq-missing");
    let admin = bus_kafka::admin::connect(bus_tests::config()).await.unwrap();
    admin.ensure_topic(&topic, 1).await.unwrap();
    let mut config = bus_tests::config();
    config.topics.auto_create = false;
    let bus = bus_kafka::connect(config).await.unwrap();
    bus.publish(Record::new(&topic, "poison").with_key("k")).await.unwrap();

    let options = SubscribeOptions::new(bus_tests::unique("dlq-missing-group"))
        .with_dead_letter_topic(format!("{topic}.nowhere"))
        .with_refused_dead_letters(RefusedDeadLetters::Fail);
    let subscription = bus
        .subscribe(&topic, options, |_message: Message| async {
            Err::<(), _>(HandlerError::permanent("always fails"))
        })
        .await
        .unwrap();

    let failed = || {
        bus.health_report()
            .subscriptions
            .iter()
            .find(|s| s.topic == topic)
            .and_then(|s| s.failure.clone())
    };
    wait_for("the subscription failed", DEADLINE, || failed().is_some()).await;
    let report = bus.health_report();
    let status = report.subscriptions.iter().find(|s| s.topic == topic).unwrap();
    let named = status.partitions.iter().find_map(|p| p.failure.clone());
    let named = format!("{:?} {:?}", status.failure, named);
    assert!(named.contains("offset 0"), "the offset is named: {named}");
    assert!(named.contains(".nowhere"), "the dead-letter topic is named: {named}");

    let _ = subscription.unsubscribe(Duration::from_secs(30)).await;
    bus.shutdown(Duration::from_secs(30)).await.unwrap();
    assert_eq!(bus.live_tasks(), 0);
}
