//! Delivery: per-key order under concurrency, nothing lost, retries until a handler succeeds,
//! an abandoned handler redelivered, backpressure on what is in flight, tombstones.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use parking_lot::Mutex;
use tokio::sync::Notify;

use crate::envelope::Envelope;
use crate::error::HandlerError;
use crate::options::RetryPolicy;
use crate::record::{Message, Record};

use super::harness::*;

/// Messages with the same key are handled one at a time, in publish order, while different keys
/// run in parallel.
pub async fn ordering_per_key_under_concurrency(h: &impl Harness) {
    let bus = h.bus().await;
    let topic = h.topic(&bus, "order", 4).await;
    let seen: Arc<Mutex<HashMap<String, Vec<u32>>>> = Arc::default();
    let running: Arc<Mutex<BTreeSet<String>>> = Arc::default();
    let overlap = Arc::new(AtomicUsize::new(0));
    let parallel_peak = Arc::new(AtomicUsize::new(0));
    let (s, r, o, p) = (seen.clone(), running.clone(), overlap.clone(), parallel_peak.clone());
    let _sub = bus
        .subscribe(&topic, options("order").with_concurrency(8), move |m: Message| {
            let (seen, running, overlap, peak) = (s.clone(), r.clone(), o.clone(), p.clone());
            async move {
                let key = text(m.key.as_ref().expect("keyed"));
                {
                    let mut running = running.lock();
                    if !running.insert(key.clone()) {
                        overlap.fetch_add(1, Ordering::SeqCst);
                    }
                    peak.fetch_max(running.len(), Ordering::SeqCst);
                }
                let n: u32 = value_text(&m.value).parse().expect("number");
                tokio::time::sleep(Duration::from_micros(u64::from(n % 7) * 300)).await;
                seen.lock().entry(key.clone()).or_default().push(n);
                running.lock().remove(&key);
                Ok(())
            }
        })
        .await
        .expect("subscribed");
    let (keys, per_key) = (16, 40u32);
    let mut records = Vec::new();
    for n in 0..per_key {
        for k in 0..keys {
            records.push(keyed(&topic, &format!("key-{k}"), n.to_string()));
        }
    }
    publish_all(&bus, records).await;
    eventually("every message handled", || {
        seen.lock().values().map(Vec::len).sum::<usize>() >= keys * per_key as usize
    })
    .await;
    for (key, values) in seen.lock().iter() {
        let expected: Vec<u32> = (0..per_key).collect();
        assert_eq!(values, &expected, "key {key} out of order or duplicated");
    }
    assert_eq!(overlap.load(Ordering::SeqCst), 0, "two handlers of one key ran at once");
    assert!(parallel_peak.load(Ordering::SeqCst) > 1, "different keys never ran in parallel");
    bus.shutdown(PATIENCE).await.expect("clean shutdown");
}

/// Every acknowledged record is handled (at least once).
pub async fn no_loss(h: &impl Harness) {
    let bus = h.bus().await;
    let topic = h.topic(&bus, "noloss", 6).await;
    let seen: Arc<Mutex<BTreeSet<(i32, i64)>>> = Arc::default();
    let s = seen.clone();
    let _sub = bus
        .subscribe(&topic, options("noloss").with_concurrency(4), move |m: Message| {
            let seen = s.clone();
            async move {
                seen.lock().insert((m.partition, m.offset));
                Ok(())
            }
        })
        .await
        .expect("subscribed");
    let mut pending = Vec::new();
    for i in 0..2_000 {
        let record = keyed(&topic, &format!("agg-{}", i % 97), i.to_string());
        pending.push(bus.publish_nowait(record).await.expect("accepted"));
    }
    let mut acked = BTreeSet::new();
    for delivery in pending {
        let delivery = delivery.await.expect("acknowledged");
        acked.insert((delivery.partition, delivery.offset));
    }
    eventually("every acknowledged record handled", || seen.lock().len() >= acked.len()).await;
    assert_eq!(*seen.lock(), acked);
    bus.shutdown(PATIENCE).await.expect("clean shutdown");
}

/// A failed handler is retried until it succeeds; the message is not lost or skipped.
pub async fn at_least_once_retry_after_failed_handler(h: &impl Harness) {
    let bus = h.bus().await;
    let topic = h.topic(&bus, "retry", 2).await;
    let attempts: Arc<Mutex<HashMap<String, u32>>> = Arc::default();
    let a = attempts.clone();
    let _sub = bus
        .subscribe(&topic, options("retry"), move |m: Message| {
            let attempts = a.clone();
            async move {
                let value = value_text(&m.value);
                let attempt = {
                    let mut attempts = attempts.lock();
                    let n = attempts.entry(value.clone()).or_default();
                    *n += 1;
                    *n
                };
                if value.starts_with("flaky") && attempt < 2 {
                    return Err(HandlerError::new(format!("{value} fails its first attempt")));
                }
                Ok(())
            }
        })
        .await
        .expect("subscribed");
    let records = (0..20)
        .map(|i| {
            let value = if i % 4 == 0 { format!("flaky-{i}") } else { format!("fine-{i}") };
            keyed(&topic, &format!("k{i}"), value)
        })
        .collect();
    publish_all(&bus, records).await;
    eventually("all handled", || bus.metrics().handled >= 20).await;
    let attempts = attempts.lock().clone();
    for (value, n) in &attempts {
        let want = if value.starts_with("flaky") { 2 } else { 1 };
        assert_eq!(*n, want, "{value} attempted {n} times");
    }
    assert_eq!(bus.metrics().retries, 5);
    assert_eq!(bus.metrics().dead_lettered, 0);
    bus.shutdown(PATIENCE).await.expect("clean shutdown");
}

/// A handler still running when its subscription stops is abandoned, its message uncommitted:
/// the next member of the group receives it again.
pub async fn abandoned_handler_is_redelivered(h: &impl Harness) {
    let bus = h.bus().await;
    let topic = h.topic(&bus, "abandon", 1).await;
    let started = Arc::new(Notify::new());
    let st = started.clone();
    let first = bus
        .subscribe(&topic, options("abandon"), move |_m: Message| {
            let started = st.clone();
            async move {
                started.notify_one();
                std::future::pending::<()>().await;
                Ok(())
            }
        })
        .await
        .expect("subscribed");
    bus.publish(keyed(&topic, "k", "stuck".into())).await.unwrap();
    tokio::time::timeout(PATIENCE, started.notified()).await.expect("handler started");
    // Two seconds: the stuck handler holds the stop until its reserve (a quarter of the time,
    // at most 500 ms) is left for the abandonment, the final commit and leaving the group; with
    // 200 ms that was 50 ms, too little for a LeaveGroup over SASL_SSL on a loaded machine.
    let report = first.unsubscribe(Duration::from_secs(2)).await.expect("tasks stopped");
    assert_eq!(report.subscription.abandoned, 1, "{report:?}");
    assert!(report.subscription.left_group);

    let again: Arc<Mutex<Vec<String>>> = Arc::default();
    let a = again.clone();
    let _second = bus
        .subscribe(&topic, options("abandon"), move |m: Message| {
            let again = a.clone();
            async move {
                again.lock().push(value_text(&m.value));
                Ok(())
            }
        })
        .await
        .expect("subscribed");
    eventually("redelivered", || !again.lock().is_empty()).await;
    assert_eq!(again.lock()[0], "stuck");
    assert!(bus.metrics().abandoned >= 1);
    bus.shutdown(PATIENCE).await.expect("clean shutdown");
}

/// Fetching pauses when `max_in_flight` messages are queued or running: the bound holds.
pub async fn fetch_backpressure_bounds_in_flight(h: &impl Harness) {
    let bus = h.bus().await;
    let topic = h.topic(&bus, "backpressure", 1).await;
    let gate = Arc::new(tokio::sync::Semaphore::new(0));
    let started = Arc::new(AtomicUsize::new(0));
    let (g, s) = (gate.clone(), started.clone());
    let opts = options("bp").with_concurrency(2).with_max_in_flight(5);
    let _sub = bus
        .subscribe(&topic, opts, move |_m: Message| {
            let (gate, started) = (g.clone(), s.clone());
            async move {
                started.fetch_add(1, Ordering::SeqCst);
                gate.acquire().await.map_err(|e| HandlerError::new(e.to_string()))?.forget();
                Ok(())
            }
        })
        .await
        .expect("subscribed");
    let records = (0..100).map(|i| keyed(&topic, &format!("k{i}"), i.to_string())).collect();
    publish_all(&bus, records).await;
    eventually("handlers blocked", || started.load(Ordering::SeqCst) == 2).await;
    for _ in 0..20 {
        let in_flight = bus.metrics().in_flight;
        assert!(in_flight <= 5, "{in_flight} in flight, bound 5");
        tokio::task::yield_now().await;
    }
    assert_eq!(started.load(Ordering::SeqCst), 2, "concurrency bound");
    gate.add_permits(100);
    eventually("all handled after release", || bus.metrics().handled >= 100).await;
    bus.shutdown(PATIENCE).await.expect("clean shutdown");
}

/// A tombstone (a null value) is consumed as `None`, distinct from an empty value; an envelope
/// subscription skips it (not poison: nothing dead-lettered) and goes on; a raw handler's failed
/// tombstone is dead-lettered as a tombstone.
pub async fn tombstones(h: &impl Harness) {
    let bus = h.bus().await;
    let topic = h.topic(&bus, "tombstone", 1).await;
    let group = format!("tombstone-{}", token());
    let before = Envelope::new("agg-1", "Created", 1, serde_json::json!({"n": 1})).unwrap();
    let after = Envelope::new("agg-1", "Updated", 2, serde_json::json!({"n": 2})).unwrap();
    bus.publish_envelope(&topic, &before).await.unwrap();
    let gone = bus.publish(Record::tombstone(&topic, "agg-1")).await.unwrap();
    bus.publish_envelope(&topic, &after).await.unwrap();
    bus.publish(Record::new(&topic, "").with_key("agg-2")).await.unwrap();

    let mut read = read_topic(&bus, &topic, 4).await;
    read.sort_by_key(|m| m.offset);
    let values: Vec<Option<&[u8]>> = read.iter().map(|m| m.value.as_deref()).collect();
    assert_eq!(values[1], None, "the tombstone is null");
    assert!(read[1].is_tombstone() && !read[3].is_tombstone());
    assert_eq!(read[1].offset, gone.offset);
    assert_eq!(read[1].key.as_deref(), Some(&b"agg-1"[..]));
    assert_eq!(values[3], Some(&b""[..]), "an empty value stays empty, not null");

    // Envelopes: the tombstone is skipped and the next event handled; only the empty value
    // (not an envelope) is poison.
    let versions: Arc<Mutex<Vec<i64>>> = Arc::default();
    let v = versions.clone();
    let sub = bus
        .subscribe_envelopes(&topic, options(&format!("{group}-env")), move |e: Envelope| {
            let versions = v.clone();
            async move {
                versions.lock().push(e.event_version);
                Ok(())
            }
        })
        .await
        .expect("subscribed");
    eventually("the events after the tombstone", || versions.lock().len() == 2).await;
    eventually("the empty value dead-lettered", || bus.metrics().dead_lettered == 1).await;
    assert_eq!(*versions.lock(), vec![1, 2]);
    assert_eq!(bus.metrics().poison, 1, "only the empty value is poison");
    sub.unsubscribe(PATIENCE).await.expect("stopped");

    // A raw handler failing on the tombstone dead-letters it as a tombstone.
    let sub = bus
        .subscribe(
            &topic,
            options(&format!("{group}-raw")).with_retry(RetryPolicy::none()),
            |m: Message| async move {
                if m.is_tombstone() { Err(HandlerError::new("refused")) } else { Ok(()) }
            },
        )
        .await
        .expect("subscribed");
    eventually("the tombstone dead-lettered", || bus.metrics().dead_lettered == 2).await;
    sub.unsubscribe(PATIENCE).await.expect("stopped");
    let dead = read_topic(&bus, &format!("{topic}.dlq"), 2).await;
    let dead: Vec<Option<&[u8]>> = dead.iter().map(|m| m.value.as_deref()).collect();
    assert!(dead.contains(&None), "the tombstone kept its null value: {dead:?}");
    assert!(dead.contains(&Some(&b""[..])), "the empty value kept its empty value: {dead:?}");
    bus.shutdown(PATIENCE).await.expect("clean shutdown");
}
