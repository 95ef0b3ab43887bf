//! Dead letters: retries then the dead-letter topic, dead letters written while draining kept,
//! poison messages sent there at once.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use parking_lot::Mutex;

use crate::consumer::dead_letter_headers;
use crate::envelope::Envelope;
use crate::error::HandlerError;
use crate::options::RetryPolicy;
use crate::record::{Message, Record};

use super::harness::*;

/// A handler that keeps failing is retried with backoff, then its message goes to the
/// dead-letter topic with the error in headers, and is committed.
pub async fn retries_then_dead_letter(h: &impl Harness) {
    let bus = h.bus().await;
    let topic = h.topic(&bus, "dlq", 1).await;
    let dead_letters = h.topic(&bus, "dlq-target", 1).await;
    let calls = Arc::new(AtomicUsize::new(0));
    let c = calls.clone();
    let opts = options("dlq").with_dead_letter_topic(dead_letters.clone());
    let sub = bus
        .subscribe(&topic, opts, move |m: Message| {
            let calls = c.clone();
            async move {
                if value_text(&m.value) == "bad" {
                    calls.fetch_add(1, Ordering::SeqCst);
                    return Err(HandlerError::new("cannot handle bad"));
                }
                Ok(())
            }
        })
        .await
        .expect("subscribed");
    let bad = keyed(&topic, "key-bad", "bad".into()).with_header("trace", "t-1");
    publish_all(&bus, vec![keyed(&topic, "a", "good".into()), bad]).await;
    eventually("dead-lettered", || bus.metrics().dead_lettered >= 1).await;
    assert_eq!(calls.load(Ordering::SeqCst), 3, "three attempts, then the dead letter");

    let dead = read_topic(&bus, &dead_letters, 1).await;
    let d = &dead[0];
    assert_eq!(value_text(&d.value), "bad", "value kept");
    assert_eq!(d.key.as_ref().map(text).as_deref(), Some("key-bad"), "key kept");
    assert_eq!(d.headers.get_str("trace"), Some("t-1"), "headers kept");
    assert_eq!(d.headers.get_str(dead_letter_headers::REASON), Some("handler-error"));
    assert_eq!(d.headers.get_str(dead_letter_headers::ERROR), Some("cannot handle bad"));
    assert_eq!(d.headers.get_str(dead_letter_headers::SOURCE_TOPIC), Some(topic.as_str()));
    assert_eq!(d.headers.get_str(dead_letter_headers::SOURCE_PARTITION), Some("0"));
    assert_eq!(d.headers.get_str(dead_letter_headers::SOURCE_OFFSET), Some("1"));
    assert_eq!(d.headers.get_str(dead_letter_headers::ATTEMPTS), Some("3"));

    // Committed: a new member of the same group starts after it.
    let report = sub.unsubscribe(PATIENCE).await.expect("stopped");
    let committed: BTreeMap<i32, i64> =
        report.subscription.committed.iter().map(|(p, o)| (p.partition, *o)).collect();
    assert_eq!(committed.get(&0), Some(&2), "{report:?}");
    bus.shutdown(PATIENCE).await.expect("clean shutdown");
}

/// A handler still retrying when shutdown begins finishes its retries while the subscription
/// drains; its dead letter is written and flushed before the bus closes, and the message is
/// committed.
pub async fn dead_letter_written_while_draining_is_kept(h: &impl Harness) {
    let bus = h.bus().await;
    let topic = h.topic(&bus, "drain-dlq", 1).await;
    let dead_letters = h.topic(&bus, "drain-dlq-target", 1).await;
    let failures = Arc::new(AtomicUsize::new(0));
    let f = failures.clone();
    let opts =
        options("drain-dlq").with_dead_letter_topic(dead_letters.clone()).with_retry(RetryPolicy {
            max_attempts: 3,
            initial_backoff: Duration::from_millis(300),
            max_backoff: Duration::from_millis(300),
            multiplier: 1.0,
        });
    let _sub = bus
        .subscribe(&topic, opts, move |_m: Message| {
            let failures = f.clone();
            async move {
                failures.fetch_add(1, Ordering::SeqCst);
                Err(HandlerError::new("always fails"))
            }
        })
        .await
        .expect("subscribed");
    bus.publish(keyed(&topic, "k", "doomed".into())).await.unwrap();
    eventually("first attempt failed", || failures.load(Ordering::SeqCst) >= 1).await;
    // Shut down while the handler waits to retry: the drain lets it finish and dead-letter.
    let report = bus.shutdown(PATIENCE).await.expect("clean shutdown");
    assert_eq!(failures.load(Ordering::SeqCst), 3, "every attempt made while draining");
    assert_eq!(bus.metrics().dead_lettered, 1, "{report}");
    assert_eq!(bus.metrics().dead_letter_failures, 0);
    assert_eq!(report.handlers_abandoned, 0);
    let committed: Vec<i64> = report.subscriptions[0].committed.iter().map(|(_, o)| *o).collect();
    assert_eq!(committed, vec![1], "the dead-lettered message is committed: {report}");

    // The dead letter is stored: a new bus on the same backend reads it (in memory, the same bus
    // cannot be used after shutdown, so this part runs only where buses share storage).
    if bus.memory_backend().is_none() {
        let reader = h.bus().await;
        let dead = read_topic(&reader, &dead_letters, 1).await;
        assert_eq!(value_text(&dead[0].value), "doomed");
        reader.shutdown(PATIENCE).await.expect("clean shutdown");
    } else if let Some(memory) = bus.memory_backend() {
        let stored = memory.records(&dead_letters, 0).expect("dead-letter topic exists");
        assert_eq!(stored.len(), 1);
        assert_eq!(value_text(&stored[0].value), "doomed");
    }
}

/// A message that is not a valid envelope goes to the dead-letter topic at once, without
/// reaching the envelope handler.
pub async fn poison_to_dead_letter(h: &impl Harness) {
    let bus = h.bus().await;
    let topic = h.topic(&bus, "poison", 1).await;
    let handled: Arc<Mutex<Vec<i64>>> = Arc::default();
    let hd = handled.clone();
    let _sub = bus
        .subscribe_envelopes(&topic, options("poison"), move |e: Envelope| {
            let handled = hd.clone();
            async move {
                handled.lock().push(e.event_version);
                Ok(())
            }
        })
        .await
        .expect("subscribed");
    bus.publish(Record::new(&topic, "{not json").with_key("agg-1")).await.unwrap();
    let valid = Envelope::new("agg-1", "Created", 1, serde_json::json!({"ok": true})).unwrap();
    bus.publish_envelope(&topic, &valid).await.unwrap();
    eventually("valid envelope handled", || !handled.lock().is_empty()).await;
    eventually("poison dead-lettered", || bus.metrics().dead_lettered >= 1).await;
    assert_eq!(*handled.lock(), vec![1]);
    assert_eq!(bus.metrics().poison, 1);
    let dead = read_topic(&bus, &format!("{topic}.dlq"), 1).await;
    assert_eq!(value_text(&dead[0].value), "{not json");
    assert_eq!(dead[0].headers.get_str(dead_letter_headers::REASON), Some("poison"));
    assert_eq!(dead[0].headers.get_str(dead_letter_headers::ATTEMPTS), Some("1"));
    bus.shutdown(PATIENCE).await.expect("clean shutdown");
}
