//! The backend conformance suite: the bus's behaviour, written once against the API and run on
//! every backend (feature `conformance`).
//!
//! Owns: [`Harness`] (how a backend under test makes buses and topics), one public async function
//! per behaviour, and [`conformance_suite!`](crate::conformance_suite) which turns them into
//! `#[tokio::test]`s for a harness.
//!
//! Every check waits on conditions with deadlines ([`PATIENCE`]); none sleeps to wait and none
//! asserts on time. Each creates its own topics, so checks run in parallel and repeatedly.

// The checks are test assertions: failing loudly is their purpose.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use parking_lot::Mutex;
use tokio::sync::Notify;

use crate::admin::error::AdminError;

use crate::admin::descriptions::NewTopic;
use crate::bus::EventBus;
use crate::consumer::dead_letter_headers;
use crate::envelope::Envelope;
use crate::error::{HandlerError, PublishError, SubscribeError};
use crate::future::BoxFuture;
use crate::options::{RetryPolicy, SubscribeOptions};
use crate::record::{Message, Record, TopicPartition};
use crate::start::StartAt;
use crate::topics::Topics;

/// How long a check waits for something that should happen.
pub const PATIENCE: Duration = Duration::from_secs(60);

/// What a backend provides to run the suite.
pub trait Harness: Send + Sync + 'static {
    /// A new bus on the backend under test.
    fn bus(&self) -> BoxFuture<'_, EventBus>;
    /// Creates a topic with `partitions` partitions, unique to this call (name prefixed by
    /// `hint`), on the backend `bus` runs on; returns its name.
    fn topic<'a>(
        &'a self,
        bus: &'a EventBus,
        hint: &'a str,
        partitions: i32,
    ) -> BoxFuture<'a, String>;
}

/// Generates one `#[tokio::test]` per conformance check for the harness `$harness` (an
/// expression evaluated in each test).
#[macro_export]
macro_rules! conformance_suite {
    ($harness:expr) => {
        $crate::conformance_suite!(@tests $harness;
            ordering_per_key_under_concurrency,
            no_loss,
            at_least_once_retry_after_failed_handler,
            abandoned_handler_is_redelivered,
            retries_then_dead_letter,
            dead_letter_written_while_draining_is_kept,
            poison_to_dead_letter,
            fetch_backpressure_bounds_in_flight,
            groups_each_get_everything_and_members_split,
            unsubscribe_stops_delivery,
            dropped_subscription_keeps_consuming,
            shutdown_reports_and_leaves_nothing,
            concurrent_shutdown_callers_get_one_report,
            closed_bus_refuses_work,
            one_subscription_reads_several_topics,
            pattern_subscription_follows_new_topics,
            start_positions,
            seek_while_running,
            pause_and_resume,
            manual_commit,
            tombstones,
            admin_topic_lifecycle,
            admin_add_partitions,
            admin_group_members_and_lag,
            admin_read_without_group,
        );
    };
    (@tests $harness:expr; $($check:ident),* $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $check() {
                let harness = $harness;
                $crate::conformance::$check(&harness).await;
            }
        )*
    };
}

/// Waits until `condition` holds, failing the check with `what` after [`PATIENCE`].
async fn eventually(what: &str, mut condition: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + PATIENCE;
    while !condition() {
        assert!(tokio::time::Instant::now() < deadline, "timed out waiting for: {what}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

fn options(group: &str) -> SubscribeOptions {
    SubscribeOptions::new(group).with_commit_interval(Duration::from_millis(100)).with_retry(
        RetryPolicy {
            max_attempts: 3,
            initial_backoff: Duration::from_millis(5),
            max_backoff: Duration::from_millis(20),
            multiplier: 2.0,
        },
    )
}

fn keyed(topic: &str, key: &str, value: String) -> Record {
    Record::new(topic, value).with_key(key.to_owned())
}

async fn publish_all(bus: &EventBus, records: Vec<Record>) {
    let mut pending = Vec::with_capacity(records.len());
    for record in records {
        pending.push(bus.publish_nowait(record).await.expect("record accepted"));
    }
    for delivery in pending {
        delivery.await.expect("record acknowledged");
    }
}

fn text(bytes: &Bytes) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// A value as text (a tombstone's as empty).
fn value_text(value: &Option<Bytes>) -> String {
    String::from_utf8_lossy(value.as_deref().unwrap_or_default()).into_owned()
}

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
    let report = first.unsubscribe(Duration::from_millis(200)).await.expect("tasks stopped");
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

/// Consumes every record of `topic` from the start with a fresh group until `count` arrived.
async fn read_topic(bus: &EventBus, topic: &str, count: usize) -> Vec<Message> {
    let got: Arc<Mutex<Vec<Message>>> = Arc::default();
    let g = got.clone();
    let group = format!("reader-{topic}");
    let sub = bus
        .subscribe(topic, options(&group), move |m: Message| {
            let got = g.clone();
            async move {
                got.lock().push(m);
                Ok(())
            }
        })
        .await
        .expect("subscribed to read");
    eventually("records read back", || got.lock().len() >= count).await;
    sub.unsubscribe(PATIENCE).await.expect("reader stopped");
    got.lock().clone()
}

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

/// Each group receives every message; two members of one group split the partitions.
///
/// The first wave of records may be consumed while the group is still rebalancing (a member can
/// hold every partition for a moment); once it is all handled the group is stable, and the
/// second wave shows the split: both members busy, no partition read by both.
pub async fn groups_each_get_everything_and_members_split(h: &impl Harness) {
    let bus = h.bus().await;
    let topic = h.topic(&bus, "groups", 4).await;
    type Seen = Arc<Mutex<Vec<(i32, i64, String)>>>;
    let subscribe = |group: &'static str, seen: Seen| {
        let bus = bus.clone();
        let topic = topic.clone();
        async move {
            bus.subscribe(&topic, options(group), move |m: Message| {
                let seen = seen.clone();
                async move {
                    seen.lock().push((m.partition, m.offset, value_text(&m.value)));
                    Ok(())
                }
            })
            .await
            .expect("subscribed")
        }
    };
    let (a1, a2, b): (Seen, Seen, Seen) = Default::default();
    let _m1 = subscribe("group-a", a1.clone()).await;
    let _m2 = subscribe("group-a", a2.clone()).await;
    let _b = subscribe("group-b", b.clone()).await;
    let wave = |name: &str| {
        (0..200).map(|i| keyed(&topic, &format!("k{}", i % 37), format!("{name}-{i}"))).collect()
    };
    let distinct = |s: &Seen, prefix: &str| {
        s.lock()
            .iter()
            .filter(|(_, _, v)| v.starts_with(prefix))
            .map(|(p, o, _)| (*p, *o))
            .collect::<BTreeSet<_>>()
    };
    publish_all(&bus, wave("first")).await;
    eventually("first wave handled by both groups", || {
        distinct(&b, "first").len() >= 200
            && distinct(&a1, "first").union(&distinct(&a2, "first")).count() >= 200
    })
    .await;
    publish_all(&bus, wave("second")).await;
    eventually("second wave handled by both groups", || {
        distinct(&b, "second").len() >= 200
            && distinct(&a1, "second").union(&distinct(&a2, "second")).count() >= 200
    })
    .await;
    let all_b: BTreeSet<_> = b.lock().iter().map(|(p, o, _)| (*p, *o)).collect();
    let union: BTreeSet<_> =
        a1.lock().iter().chain(a2.lock().iter()).map(|(p, o, _)| (*p, *o)).collect();
    assert_eq!(union, all_b, "the two groups saw different records");
    assert_eq!(all_b.len(), 400);
    let parts = |s: &Seen| {
        s.lock()
            .iter()
            .filter(|(_, _, v)| v.starts_with("second"))
            .map(|(p, _, _)| *p)
            .collect::<BTreeSet<_>>()
    };
    let (p1, p2) = (parts(&a1), parts(&a2));
    assert!(!p1.is_empty() && !p2.is_empty(), "both members got partitions: {p1:?} {p2:?}");
    assert!(p1.is_disjoint(&p2), "members of one group overlap: {p1:?} {p2:?}");
    bus.shutdown(PATIENCE).await.expect("clean shutdown");
}

/// After unsubscribe the handler gets nothing more, and the subscription's tasks are gone.
pub async fn unsubscribe_stops_delivery(h: &impl Harness) {
    let bus = h.bus().await;
    let topic = h.topic(&bus, "unsub", 2).await;
    let count = Arc::new(AtomicUsize::new(0));
    let c = count.clone();
    let sub = bus
        .subscribe(&topic, options("unsub"), move |_m: Message| {
            let count = c.clone();
            async move {
                count.fetch_add(1, Ordering::SeqCst);
                Ok(())
            }
        })
        .await
        .expect("subscribed");
    bus.publish(keyed(&topic, "a", "1".into())).await.unwrap();
    eventually("first handled", || count.load(Ordering::SeqCst) == 1).await;
    let scope = sub.scope().clone();
    let report = sub.unsubscribe(PATIENCE).await.expect("stopped");
    assert!(report.subscription.left_group);
    assert_eq!(scope.live(), 0, "the subscription's tasks are gone");
    assert_eq!(bus.metrics().subscriptions, 0);
    bus.publish(keyed(&topic, "a", "2".into())).await.unwrap();
    // Another group proves the record is there to read; the unsubscribed handler saw none.
    let read = read_topic(&bus, &topic, 2).await;
    assert_eq!(read.len(), 2);
    assert_eq!(count.load(Ordering::SeqCst), 1);
    bus.shutdown(PATIENCE).await.expect("clean shutdown");
}

/// Dropping a [`Subscription`](crate::Subscription) handle detaches it: it keeps consuming,
/// and the bus's shutdown stops it (committing and leaving its group) and reports it.
pub async fn dropped_subscription_keeps_consuming(h: &impl Harness) {
    let bus = h.bus().await;
    let topic = h.topic(&bus, "detached", 2).await;
    let count = Arc::new(AtomicUsize::new(0));
    let c = count.clone();
    let sub = bus
        .subscribe(&topic, options("detached"), move |_m: Message| {
            let count = c.clone();
            async move {
                count.fetch_add(1, Ordering::SeqCst);
                Ok(())
            }
        })
        .await
        .expect("subscribed");
    let scope = sub.scope().clone();
    drop(sub);
    publish_all(&bus, vec![keyed(&topic, "a", "1".into()), keyed(&topic, "b", "2".into())]).await;
    eventually("both handled after the handle was dropped", || count.load(Ordering::SeqCst) == 2)
        .await;
    assert!(scope.live() > 0, "the detached subscription's tasks still run");
    assert_eq!(bus.metrics().subscriptions, 1);
    let report = bus.shutdown(PATIENCE).await.expect("clean shutdown");
    assert_eq!(report.subscriptions.len(), 1, "{report}");
    assert_eq!(report.subscriptions[0].topic, topic);
    assert!(report.subscriptions[0].left_group, "{report}");
    assert_eq!(scope.live(), 0);
}

/// Shutdown reports what it did and returns only when no task of the bus is left.
pub async fn shutdown_reports_and_leaves_nothing(h: &impl Harness) {
    let bus = h.bus().await;
    let topic = h.topic(&bus, "shutdown", 3).await;
    let release = Arc::new(Notify::new());
    let slow_started = Arc::new(AtomicBool::new(false));
    let (r, started) = (release.clone(), slow_started.clone());
    let _sub = bus
        .subscribe(&topic, options("shutdown").with_concurrency(3), move |m: Message| {
            let (release, started) = (r.clone(), started.clone());
            async move {
                if value_text(&m.value) == "slow" {
                    started.store(true, Ordering::SeqCst);
                    release.notified().await;
                }
                Ok(())
            }
        })
        .await
        .expect("subscribed");
    publish_all(&bus, vec![keyed(&topic, "x", "slow".into()), keyed(&topic, "y", "ok".into())])
        .await;
    // The keys may land on different partitions, read by different fetch loops: wait for both.
    eventually("fast one handled and slow one started", || {
        bus.metrics().handled >= 1 && slow_started.load(Ordering::SeqCst)
    })
    .await;
    assert!(bus.live_tasks() > 0);
    // Long enough for a loaded machine to commit and leave the group after the drain.
    let report = bus.shutdown(Duration::from_secs(2)).await.expect("clean shutdown");
    assert_eq!(report.handlers_abandoned, 1, "{report}");
    assert_eq!(bus.live_tasks(), 0);
    assert_eq!(report.subscriptions.len(), 1);
    assert!(report.subscriptions[0].left_group);
    assert!(report.to_string().contains("1 handler(s) abandoned"));
}

/// Concurrent and later shutdown callers all get the one report.
pub async fn concurrent_shutdown_callers_get_one_report(h: &impl Harness) {
    let bus = h.bus().await;
    let topic = h.topic(&bus, "concurrent", 1).await;
    let _sub = bus
        .subscribe(&topic, options("concurrent"), |_m: Message| async { Ok(()) })
        .await
        .expect("subscribed");
    let other = bus.clone();
    let (a, b, c) = tokio::join!(
        bus.shutdown(PATIENCE),
        bus.shutdown(PATIENCE),
        other.shutdown(Duration::from_secs(1))
    );
    let (a, b, c) = (a.expect("a"), b.expect("b"), c.expect("c"));
    assert_eq!(format!("{a:?}"), format!("{b:?}"));
    assert_eq!(format!("{a:?}"), format!("{c:?}"));
    let later = bus.shutdown(PATIENCE).await.expect("later");
    assert_eq!(format!("{a:?}"), format!("{later:?}"));
    assert_eq!(bus.live_tasks(), 0);
}

/// A bus that is shut down refuses new records and subscriptions with `Closed`.
pub async fn closed_bus_refuses_work(h: &impl Harness) {
    let bus = h.bus().await;
    let topic = h.topic(&bus, "closed", 1).await;
    bus.shutdown(PATIENCE).await.expect("clean shutdown");
    assert!(matches!(bus.publish(Record::new(&topic, "x")).await, Err(PublishError::Closed)));
    let refused =
        bus.subscribe(&topic, options("closed"), |_m: Message| async { Ok(()) }).await.err();
    assert!(matches!(refused, Some(SubscribeError::Closed)), "{refused:?}");
    assert_eq!(bus.health(), crate::health::Health::Closed);
}

/// A token unique to this process and call, for names a pattern must single out.
fn token() -> String {
    static CALLS: AtomicUsize = AtomicUsize::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() % 1_000_000_000_000);
    format!("u{}x{nanos}x{}", std::process::id(), CALLS.fetch_add(1, Ordering::Relaxed))
}

/// One subscription reads several topics as one group member: every record of each is handled
/// in per-key order, the subscription is labelled by its topics, and a failed message goes to
/// the dead-letter topic of the topic it came from.
pub async fn one_subscription_reads_several_topics(h: &impl Harness) {
    let bus = h.bus().await;
    let first = h.topic(&bus, "multi-a", 2).await;
    let second = h.topic(&bus, "multi-b", 3).await;
    type Seen = Arc<Mutex<Vec<(String, String, String)>>>;
    let seen: Seen = Arc::default();
    let s = seen.clone();
    let sub = bus
        .subscribe(
            [first.as_str(), second.as_str()],
            options("multi").with_retry(RetryPolicy::none()),
            move |m: Message| {
                let seen = s.clone();
                async move {
                    let key = m.key.as_ref().map(text).unwrap_or_default();
                    let value = value_text(&m.value);
                    seen.lock().push((m.topic.to_string(), key, value.clone()));
                    if value == "fail" {
                        return Err(HandlerError::new("asked to fail"));
                    }
                    Ok(())
                }
            },
        )
        .await
        .expect("subscribed");
    let mut sorted = [first.clone(), second.clone()];
    sorted.sort();
    assert_eq!(sub.topic(), sorted.join(","), "labelled by its topics, sorted");
    assert_eq!(sub.topics(), &Topics::names([first.clone(), second.clone()]));
    assert_eq!(bus.metrics().subscriptions, 1, "one subscription, one member");
    let mut records = Vec::new();
    for i in 0..60 {
        let topic = if i % 2 == 0 { &first } else { &second };
        records.push(keyed(topic, &format!("k{}", i % 7), format!("{i}")));
    }
    records.push(keyed(&second, "bad", "fail".into()));
    publish_all(&bus, records).await;
    eventually("every record of both topics handled", || seen.lock().len() >= 61).await;
    let seen = seen.lock().clone();
    for topic in [&first, &second] {
        let mut last: HashMap<&str, i64> = HashMap::new();
        for (t, key, value) in seen.iter().filter(|(t, _, v)| t == topic && v != "fail") {
            let n: i64 = value.parse().unwrap();
            let previous = last.insert(key, n).unwrap_or(-1);
            assert!(n > previous, "{t} key {key}: {n} after {previous}");
        }
        assert_eq!(
            seen.iter().filter(|(t, _, _)| t == topic).count(),
            if topic == &first { 30 } else { 31 }
        );
    }
    let dead = read_topic(&bus, &format!("{second}.dlq"), 1).await;
    assert_eq!(
        value_text(&dead[0].value),
        "fail",
        "dead-lettered to its own topic's dead-letter topic"
    );
    let report = sub.unsubscribe(PATIENCE).await.expect("stopped");
    assert_eq!(report.subscription.topic, sorted.join(","));
    let topics: BTreeSet<&str> =
        report.subscription.committed.iter().map(|(tp, _)| &*tp.topic).collect();
    assert_eq!(topics, BTreeSet::from([first.as_str(), second.as_str()]), "{report:?}");
    bus.shutdown(PATIENCE).await.expect("clean shutdown");
}

/// A pattern subscription reads every matching topic, including one created after it
/// subscribed, and never a topic that does not match nor its own dead-letter topics.
pub async fn pattern_subscription_follows_new_topics(h: &impl Harness) {
    let bus = h.bus().await;
    let token = token();
    let before = h.topic(&bus, &format!("{token}-before"), 2).await;
    let other = h.topic(&bus, "unmatched", 1).await;
    let seen: Arc<Mutex<Vec<(String, String)>>> = Arc::default();
    let s = seen.clone();
    let pattern = format!(".*{token}.*");
    let sub = bus
        .subscribe(
            Topics::pattern(pattern.clone()),
            options("pattern").with_retry(RetryPolicy::none()),
            move |m: Message| {
                let seen = s.clone();
                async move {
                    let value = value_text(&m.value);
                    seen.lock().push((m.topic.to_string(), value.clone()));
                    if value == "fail" {
                        return Err(HandlerError::new("asked to fail"));
                    }
                    Ok(())
                }
            },
        )
        .await
        .expect("subscribed");
    assert_eq!(sub.topic(), format!("pattern({pattern})"));
    let handled =
        |topic: &str, value: &str| seen.lock().iter().any(|(t, v)| t == topic && v == value);
    publish_all(&bus, vec![keyed(&before, "a", "1".into()), keyed(&before, "b", "fail".into())])
        .await;
    eventually("a matching topic's records handled", || {
        handled(&before, "1") && handled(&before, "fail")
    })
    .await;
    // Its dead letter exists now (`<before>.dlq`, matching the pattern's text): never read.
    let dead = read_topic(&bus, &format!("{before}.dlq"), 1).await;
    assert_eq!(value_text(&dead[0].value), "fail");
    bus.publish(keyed(&other, "c", "unmatched".into())).await.unwrap();
    let after = h.topic(&bus, &format!("{token}-after"), 2).await;
    bus.publish(keyed(&after, "d", "2".into())).await.unwrap();
    eventually("a topic created after subscribing is read", || handled(&after, "2")).await;
    let topics: BTreeSet<String> = seen.lock().iter().map(|(t, _)| t.clone()).collect();
    assert_eq!(topics, BTreeSet::from([before.clone(), after.clone()]), "only matching topics");
    let report = sub.unsubscribe(PATIENCE).await.expect("stopped");
    assert!(report.subscription.left_group);
    bus.shutdown(PATIENCE).await.expect("clean shutdown");
}

/// What a handler saw: (partition, offset, value), in arrival order.
type Seen = Arc<Mutex<Vec<(i32, i64, String)>>>;

/// Subscribes `group` to `topic` with `options`, recording every message in the returned list.
async fn recording(
    bus: &EventBus,
    topic: &str,
    options: SubscribeOptions,
) -> (crate::Subscription, Seen) {
    let seen: Seen = Arc::default();
    let s = seen.clone();
    let sub = bus
        .subscribe(topic, options, move |m: Message| {
            let seen = s.clone();
            async move {
                seen.lock().push((m.partition, m.offset, value_text(&m.value)));
                Ok(())
            }
        })
        .await
        .expect("subscribed");
    (sub, seen)
}

/// Publishes `count` records with one key (handled in order) to partition 0 of `topic`, record
/// `i` with value `i` and timestamp `base + i` seconds, and waits for their acknowledgements.
async fn publish_timed(
    bus: &EventBus,
    topic: &str,
    count: i64,
    base: chrono::DateTime<chrono::Utc>,
) {
    let records = (0..count)
        .map(|i| {
            keyed(topic, "k", i.to_string())
                .with_partition(0)
                .with_timestamp(base + chrono::Duration::seconds(i))
        })
        .collect();
    publish_all(bus, records).await;
}

/// The offsets seen, in arrival order.
fn offsets(seen: &Seen) -> Vec<i64> {
    seen.lock().iter().map(|&(_, o, _)| o).collect()
}

/// A subscription starts where its `start` position says, whatever the group committed:
/// earliest (a replay), latest (the backlog skipped), a timestamp (the first record at or after
/// it), explicit offsets; and by default at the committed offset.
pub async fn start_positions(h: &impl Harness) {
    use crate::start::{PartitionOffset, StartPosition};
    let bus = h.bus().await;
    let topic = h.topic(&bus, "start", 1).await;
    let group = format!("start-{}", token());
    let base = chrono::Utc::now() - chrono::Duration::hours(1);
    publish_timed(&bus, &topic, 10, base).await;
    // The group handles (and commits) everything.
    let (sub, seen) = recording(&bus, &topic, options(&group)).await;
    eventually("the backlog handled", || seen.lock().len() == 10).await;
    let report = sub.unsubscribe(PATIENCE).await.expect("stopped");
    assert_eq!(report.subscription.committed.first().map(|c| c.1), Some(10));

    let starts = [
        (StartPosition::Earliest, 0_i64),
        (StartPosition::Timestamp(base + chrono::Duration::milliseconds(4_500)), 5),
        (StartPosition::Offsets(vec![PartitionOffset::new(&topic, 0, 7)]), 7),
    ];
    for (start, first) in starts {
        let (sub, seen) = recording(&bus, &topic, options(&group).with_start(start.clone())).await;
        eventually("read from the start position", || seen.lock().len() as i64 == 10 - first).await;
        assert_eq!(offsets(&seen), (first..10).collect::<Vec<_>>(), "{start:?}");
        sub.unsubscribe(PATIENCE).await.expect("stopped");
    }

    // Latest: nothing of the backlog, only what is published after the start.
    let fresh = format!("latest-{}", token());
    let (sub, seen) =
        recording(&bus, &topic, options(&fresh).with_start(StartPosition::Latest)).await;
    let mut next = 10;
    let deadline = tokio::time::Instant::now() + PATIENCE;
    while seen.lock().is_empty() {
        assert!(tokio::time::Instant::now() < deadline, "a record published after the start");
        publish_timed(&bus, &topic, 1, chrono::Utc::now()).await;
        next += 1;
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(offsets(&seen).iter().all(|&o| o >= 10), "the backlog was skipped: {seen:?}");
    sub.unsubscribe(PATIENCE).await.expect("stopped");

    // The default start: the group's committed offset.
    let (sub, seen) = recording(&bus, &topic, options(&group)).await;
    publish_timed(&bus, &topic, 1, chrono::Utc::now()).await;
    eventually("the records after the commit", || offsets(&seen).contains(&next)).await;
    // Everything after the group's commit (10), including what the other group read.
    assert_eq!(offsets(&seen), (10..=next).collect::<Vec<_>>(), "from the committed offset");
    sub.unsubscribe(PATIENCE).await.expect("stopped");
    bus.shutdown(PATIENCE).await.expect("clean shutdown");
}

/// A partition sought while running is read again from the new position (an offset, a
/// timestamp, the earliest or latest offset), its commits follow the new position, and a seek
/// of a partition the member does not hold is refused. Shown to fail (by hand) with a seek
/// that only restarts the fetch loop, without releasing the partition: the commit tracker
/// refuses the offsets it has seen, and the replay never comes.
pub async fn seek_while_running(h: &impl Harness) {
    use crate::consumer::ControlError;
    use crate::start::StartAt;
    let bus = h.bus().await;
    let topic = h.topic(&bus, "seek", 1).await;
    let group = format!("seek-{}", token());
    let base = chrono::Utc::now() - chrono::Duration::hours(1);
    publish_timed(&bus, &topic, 10, base).await;
    let (sub, seen) = recording(&bus, &topic, options(&group)).await;
    eventually("everything handled", || seen.lock().len() == 10).await;
    let control = sub.control();
    let partition = crate::TopicPartition::new(topic.as_str(), 0);

    control.seek(&partition, StartAt::Offset(6)).await.expect("sought");
    eventually("offsets 6.. again", || seen.lock().len() == 14).await;
    assert_eq!(offsets(&seen)[10..], [6, 7, 8, 9]);

    control
        .seek(&partition, StartAt::Timestamp(base + chrono::Duration::seconds(8)))
        .await
        .expect("sought by time");
    eventually("offsets 8.. again", || seen.lock().len() == 16).await;
    assert_eq!(offsets(&seen)[14..], [8, 9]);

    control.seek(&partition, StartAt::Earliest).await.expect("sought to the start");
    eventually("everything again", || seen.lock().len() == 26).await;
    assert_eq!(offsets(&seen)[16..], (0..10).collect::<Vec<_>>());
    committed_eventually(&control, &partition, 10).await;

    control.seek(&partition, StartAt::Latest).await.expect("sought to the end");
    publish_timed(&bus, &topic, 1, chrono::Utc::now()).await;
    eventually("the new record", || seen.lock().len() == 27).await;
    assert_eq!(offsets(&seen)[26..], [10]);

    let elsewhere = crate::TopicPartition::new(topic.as_str(), 5);
    let refused = control.seek(&elsewhere, StartAt::Offset(0)).await;
    assert!(matches!(refused, Err(ControlError::NotAssigned { .. })), "{refused:?}");
    sub.unsubscribe(PATIENCE).await.expect("stopped");
    let refused = control.seek(&partition, StartAt::Offset(0)).await;
    assert!(matches!(refused, Err(ControlError::Stopped { .. })), "{refused:?}");
    bus.shutdown(PATIENCE).await.expect("clean shutdown");
}

/// Waits until `control` reports `offset` committed for `partition` (and nothing else).
async fn committed_eventually(
    control: &crate::consumer::ConsumerControl,
    partition: &crate::TopicPartition,
    offset: i64,
) {
    let deadline = tokio::time::Instant::now() + PATIENCE;
    while control.committed().await.expect("running") != [(partition.clone(), offset)] {
        assert!(tokio::time::Instant::now() < deadline, "{partition} committed at {offset}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A paused partition is not fetched while the others are, the group keeps the member (it
/// still holds its partitions), and resuming delivers what was published meanwhile; pausing
/// the whole subscription stops every partition. Shown to fail (by hand) with fetch loops
/// that do not watch the pause state.
pub async fn pause_and_resume(h: &impl Harness) {
    let bus = h.bus().await;
    let topic = h.topic(&bus, "pause", 2).await;
    let group = format!("pause-{}", token());
    let (sub, seen) = recording(&bus, &topic, options(&group)).await;
    let p0 = crate::TopicPartition::new(topic.as_str(), 0);
    let on = |p: i32, value: &str| Record::new(&topic, value.to_owned()).with_partition(p);
    publish_all(&bus, vec![on(0, "a"), on(1, "b")]).await;
    eventually("both partitions read", || seen.lock().len() == 2).await;

    let control = sub.control();
    control.pause(&p0);
    assert_eq!(control.paused(), (false, vec![p0.clone()]));
    // Published to the paused partition first: had it been fetched, it would be seen before
    // the record of the other partition, published after it.
    publish_all(&bus, vec![on(0, "paused"), on(1, "c")]).await;
    eventually("the running partition read", || seen.lock().iter().any(|s| s.2 == "c")).await;
    assert!(!seen.lock().iter().any(|s| s.2 == "paused"), "the paused partition was fetched");
    control.resume(&p0);
    eventually("the paused record after resume", || seen.lock().iter().any(|s| s.2 == "paused"))
        .await;

    control.pause_all();
    publish_all(&bus, vec![on(0, "x0"), on(1, "x1")]).await;
    // A record published after the others, read by another group, shows they are there.
    let read = read_topic(&bus, &topic, 6).await;
    assert_eq!(read.len(), 6);
    assert!(!seen.lock().iter().any(|s| s.2.starts_with('x')), "a paused subscription fetched");
    assert_eq!(bus.metrics().subscriptions, 1);
    control.resume_all();
    eventually("both after resume", || {
        seen.lock().iter().filter(|s| s.2.starts_with('x')).count() == 2
    })
    .await;
    sub.unsubscribe(PATIENCE).await.expect("stopped");
    bus.shutdown(PATIENCE).await.expect("clean shutdown");
}

/// In manual commit mode nothing is committed until the service asks; a commit never passes a
/// message that is not finished (what it cannot reach yet waits for the handler and is
/// committed when it finishes); the next member of the group starts at what was committed.
/// Shown to fail (by hand) with a commit not capped by the finished prefix: it commits 10
/// while offset 7 is still running.
pub async fn manual_commit(h: &impl Harness) {
    use crate::options::CommitMode;
    let bus = h.bus().await;
    let topic = h.topic(&bus, "manual", 1).await;
    let group = format!("manual-{}", token());
    let partition = crate::TopicPartition::new(topic.as_str(), 0);
    // One key: handled one at a time, so nothing after offset 7 starts while it runs.
    let records = (0..10).map(|i| keyed(&topic, "k", i.to_string()).with_partition(0)).collect();
    publish_all(&bus, records).await;
    let gate = Arc::new(Notify::new());
    let seen: Seen = Arc::default();
    let (s, g) = (seen.clone(), gate.clone());
    let sub = bus
        .subscribe(
            &topic,
            options(&group).with_commit_mode(CommitMode::Manual),
            move |m: Message| {
                let (seen, gate) = (s.clone(), g.clone());
                async move {
                    seen.lock().push((m.partition, m.offset, value_text(&m.value)));
                    if m.offset == 7 {
                        gate.notified().await;
                    }
                    Ok(())
                }
            },
        )
        .await
        .expect("subscribed");
    let control = sub.control();
    eventually("0..=7 started", || seen.lock().len() == 8).await;
    assert!(control.committed().await.unwrap().is_empty(), "the bus committed by itself");
    let report = control.commit(&partition, 5).await.expect("committed");
    assert_eq!(report.committed, [(partition.clone(), 5)]);
    assert!(report.waiting.is_empty());
    assert_eq!(control.committed().await.unwrap(), [(partition.clone(), 5)]);
    // Offset 7 is still running: a commit up to 10 stops before it and waits.
    let report = control.commit(&partition, 10).await.expect("committed");
    assert_eq!(report.committed, [(partition.clone(), 7)]);
    assert_eq!(report.waiting, [(partition.clone(), 10)]);
    gate.notify_one();
    committed_eventually(&control, &partition, 10).await;
    sub.unsubscribe(PATIENCE).await.expect("stopped");
    // The next member starts at the committed offset: only the new record.
    publish_timed(&bus, &topic, 1, chrono::Utc::now()).await;
    let (sub, seen) = recording(&bus, &topic, options(&group)).await;
    eventually("the record after the commit", || !seen.lock().is_empty()).await;
    assert_eq!(offsets(&seen), [10]);
    sub.unsubscribe(PATIENCE).await.expect("stopped");
    bus.shutdown(PATIENCE).await.expect("clean shutdown");
}

/// Waits until the async `condition` holds, failing the check with `what` after [`PATIENCE`].
async fn eventually_async<F, Fut>(what: &str, condition: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    assert!(holds_in_time(condition).await, "timed out waiting for: {what}");
}

/// Whether the async `condition` comes to hold within [`PATIENCE`].
async fn holds_in_time<F, Fut>(mut condition: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + PATIENCE;
    while !condition().await {
        if tokio::time::Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    true
}

/// A name no other check or run uses.
fn unique(hint: &str) -> String {
    format!("conformance-{hint}-{}", uuid::Uuid::new_v4().simple())
}

/// A topic is created with its configuration, described (partitions, offsets, the
/// configuration given), listed, refused a second creation (TOPIC_ALREADY_EXISTS, code 36),
/// deleted, and then unknown (UNKNOWN_TOPIC_OR_PARTITION, code 3): the same on every backend.
pub async fn admin_topic_lifecycle(h: &impl Harness) {
    let bus = h.bus().await;
    let admin = bus.admin();
    let name = unique("admin-topic");
    let topic = NewTopic::new(&name, 2)
        .config("cleanup.policy", "compact")
        .config("retention.ms", "3600000");
    admin.create_topic(&topic).await.expect("created");
    let again = admin.create_topic(&topic).await.expect_err("a second creation is refused");
    assert!(
        matches!(&again, AdminError::Topic { topic, .. } if *topic == name),
        "the error names the topic: {again}"
    );
    assert_eq!(again.code(), Some(36), "TOPIC_ALREADY_EXISTS: {again}");
    assert!(again.to_string().contains("TOPIC_ALREADY_EXISTS"), "{again}");
    admin.ensure_topic(&name, 2).await.expect("ensure accepts the same count");
    admin.ensure_topic(&name, 3).await.expect_err("ensure refuses another count");

    // Keyed: a compacted topic refuses records without a key (Apache Kafka: INVALID_RECORD).
    publish_all(
        &bus,
        (0..3).map(|i| keyed(&name, &format!("k{i}"), i.to_string()).with_partition(1)).collect(),
    )
    .await;
    let described = admin.describe_topic(&name).await.expect("described");
    assert_eq!(described.name, name);
    assert_eq!(described.partitions.len(), 2);
    let one = &described.partitions[1];
    assert_eq!((one.partition, one.end_offset - one.start_offset), (1, 3));
    let zero = &described.partitions[0];
    assert_eq!(zero.end_offset - zero.start_offset, 0);
    for (key, value) in [("cleanup.policy", "compact"), ("retention.ms", "3600000")] {
        let entry = described.config.get(key).unwrap_or_else(|| panic!("{key} described"));
        assert_eq!(entry.value.as_deref(), Some(value), "{key}");
        assert!(!entry.is_default, "{key} was set on the topic");
    }
    let listed = admin.list_topics().await.expect("listed");
    assert!(listed.iter().any(|t| t.name == name && t.partitions == 2 && !t.internal));
    assert_eq!(admin.partitions(&name).await.expect("partitions"), Some(2));

    admin.delete_topic(&name).await.expect("deleted");
    eventually_async("the deleted topic is gone", || async {
        admin.partitions(&name).await.expect("partitions").is_none()
    })
    .await;
    let gone = admin.describe_topic(&name).await.expect_err("a deleted topic is unknown");
    assert_eq!(gone.code(), Some(3), "UNKNOWN_TOPIC_OR_PARTITION: {gone}");
    assert!(gone.to_string().contains(&name), "the error names the topic: {gone}");
    let gone = admin.delete_topic(&name).await.expect_err("deleting it again fails");
    assert_eq!(gone.code(), Some(3), "UNKNOWN_TOPIC_OR_PARTITION: {gone}");
    bus.shutdown(PATIENCE).await.expect("clean shutdown");
}

/// A topic grows to more partitions where the backend supports it (and records reach the new
/// ones); a count that is not more is refused with INVALID_PARTITIONS (code 37). A broker
/// that cannot add partitions is named in an [`AdminError::Unsupported`].
pub async fn admin_add_partitions(h: &impl Harness) {
    let bus = h.bus().await;
    let admin = bus.admin();
    let topic = h.topic(&bus, "admin-grow", 1).await;
    match admin.add_partitions(&topic, 3).await {
        Err(AdminError::Unsupported { reason, .. }) => {
            assert!(reason.contains("broker"), "the refusal names the broker: {reason}");
            return;
        }
        other => other.expect("partitions added"),
    }
    eventually_async("the topic has 3 partitions", || async {
        admin.partitions(&topic).await.expect("partitions") == Some(3)
    })
    .await;
    let smaller = admin.add_partitions(&topic, 2).await.expect_err("cannot shrink");
    assert_eq!(smaller.code(), Some(37), "INVALID_PARTITIONS: {smaller}");
    let delivery = bus.publish(Record::new(&topic, "x").with_partition(2)).await.expect("to 2");
    assert_eq!(delivery.partition, 2);
    bus.shutdown(PATIENCE).await.expect("clean shutdown");
}

/// A group is listed and described: its member with the partitions assigned to it, committed
/// offsets and lag per partition, and after its member left, an empty group whose lag counts
/// what was published since. An unknown group is GROUP_ID_NOT_FOUND (code 69) or empty.
pub async fn admin_group_members_and_lag(h: &impl Harness) {
    let bus = h.bus().await;
    let admin = bus.admin();
    let topic = h.topic(&bus, "admin-lag", 2).await;
    let group = unique("admin-group");
    let records = |n: usize, from: usize| {
        (from..from + n).map(|i| keyed(&topic, &format!("k{i}"), i.to_string())).collect()
    };
    publish_all(&bus, records(10, 0)).await;
    let handled = Arc::new(AtomicUsize::new(0));
    let c = handled.clone();
    let sub = bus
        .subscribe(&topic, options(&group), move |_m: Message| {
            let handled = c.clone();
            async move {
                handled.fetch_add(1, Ordering::SeqCst);
                Ok(())
            }
        })
        .await
        .expect("subscribed");
    eventually("every record handled", || handled.load(Ordering::SeqCst) >= 10).await;
    let last = Arc::new(Mutex::new(None));
    let seen = last.clone();
    let committed_all = holds_in_time(|| {
        let admin = admin.clone();
        let topic = topic.clone();
        let group = group.clone();
        let seen = seen.clone();
        async move {
            let described = admin.describe_group(&group).await;
            *seen.lock() = Some(format!("{described:?}"));
            let Ok(d) = described else { return false };
            let committed: i64 = d.offsets.iter().filter_map(|o| o.committed).sum();
            // A broker that does not report assignments in DescribeGroups (nisshi 0.8.1
            // answers every member's assignment empty: docs/BROKER.md) is described without
            // them; where one is reported, it must be right.
            let reported = d.members.iter().any(|m| !m.assignment.is_empty());
            d.members.len() == 1
                && committed == 10
                && d.total_lag() == 0
                && (!reported
                    || d.members[0].assignment.get(&topic).map(Vec::len) == Some(2)
                        && d.offsets
                            .iter()
                            .all(|o| o.member_id.as_deref() == Some(&d.members[0].member_id)))
        }
    })
    .await;
    assert!(
        committed_all,
        "the group should have committed everything, one member holding both partitions; \
         last described: {:?}",
        last.lock()
    );
    let listed = admin.list_groups().await.expect("groups listed");
    assert!(listed.iter().any(|g| g.group == group), "the group is listed");

    sub.unsubscribe(PATIENCE).await.expect("unsubscribed");
    publish_all(&bus, records(5, 10)).await;
    let lagging = holds_in_time(|| {
        let admin = admin.clone();
        let group = group.clone();
        let seen = seen.clone();
        async move {
            let described = admin.describe_group(&group).await;
            *seen.lock() = Some(format!("{described:?}"));
            let Ok(d) = described else { return false };
            d.members.is_empty() && d.state == "Empty" && d.total_lag() == 5
        }
    })
    .await;
    assert!(
        lagging,
        "the empty group should lag by what was published since; last described: {:?}",
        last.lock()
    );
    let described = admin.describe_group(&group).await.expect("described");
    assert_eq!(described.offsets.len(), 2, "{described:?}");
    assert!(described.offsets.iter().all(|o| o.topic == topic && o.committed.is_some()));

    match admin.describe_group(&unique("no-such-group")).await {
        Err(error) => assert_eq!(error.code(), Some(69), "GROUP_ID_NOT_FOUND: {error}"),
        // Kafka describes a group it never saw as dead and empty.
        Ok(d) => assert!(d.members.is_empty() && d.offsets.is_empty(), "{d:?}"),
    }
    bus.shutdown(PATIENCE).await.expect("clean shutdown");
}

/// A partition is read from the earliest or the latest offset without a consumer group, and
/// the reader follows records published after it opened.
pub async fn admin_read_without_group(h: &impl Harness) {
    let bus = h.bus().await;
    let admin = bus.admin();
    let topic = h.topic(&bus, "admin-read", 1).await;
    publish_all(&bus, (0..3).map(|i| Record::new(&topic, i.to_string())).collect()).await;
    let partition = TopicPartition { topic: Arc::from(topic.as_str()), partition: 0 };
    let mut earliest = admin.read(&partition, StartAt::Earliest).await.expect("opened");
    let mut latest = admin.read(&partition, StartAt::Latest).await.expect("opened");
    let mut seen = Vec::new();
    let deadline = tokio::time::Instant::now() + PATIENCE;
    while seen.len() < 3 {
        assert!(tokio::time::Instant::now() < deadline, "timed out reading: {seen:?}");
        seen.extend(
            earliest.next(1 << 20).await.expect("read").iter().map(|m| value_text(&m.value)),
        );
    }
    assert_eq!(seen, ["0", "1", "2"]);
    // The latest reader has nothing until a record comes.
    let nothing = latest.next(1 << 20).await.expect("read");
    assert!(nothing.is_empty(), "{nothing:?}");
    bus.publish(Record::new(&topic, "3")).await.expect("published");
    let mut next = Vec::new();
    while next.is_empty() {
        assert!(tokio::time::Instant::now() < deadline, "timed out reading the new record");
        next = latest.next(1 << 20).await.expect("read");
    }
    assert_eq!((next[0].offset, value_text(&next[0].value)), (3, "3".to_owned()));
    assert!(admin.list_groups().await.expect("listed").iter().all(|g| !g.group.contains(&topic)));
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
