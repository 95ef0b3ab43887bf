//! What a backend provides to run the suite ([`Harness`]), how long a check waits
//! ([`PATIENCE`]), and the helpers the checks share (waiting on a condition, publishing,
//! recording what a handler saw, unique names).

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use parking_lot::Mutex;

use crate::bus::EventBus;
use crate::future::BoxFuture;
use crate::options::{RetryPolicy, SubscribeOptions};
use crate::record::{Message, Record};

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

/// Waits until `condition` holds, failing the check with `what` after [`PATIENCE`].
pub(super) async fn eventually(what: &str, mut condition: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + PATIENCE;
    while !condition() {
        assert!(tokio::time::Instant::now() < deadline, "timed out waiting for: {what}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

pub(super) fn options(group: &str) -> SubscribeOptions {
    SubscribeOptions::new(group).with_commit_interval(Duration::from_millis(100)).with_retry(
        RetryPolicy {
            max_attempts: 3,
            initial_backoff: Duration::from_millis(5),
            max_backoff: Duration::from_millis(20),
            multiplier: 2.0,
        },
    )
}

pub(super) fn keyed(topic: &str, key: &str, value: String) -> Record {
    Record::new(topic, value).with_key(key.to_owned())
}

pub(super) async fn publish_all(bus: &EventBus, records: Vec<Record>) {
    let mut pending = Vec::with_capacity(records.len());
    for record in records {
        pending.push(bus.publish_nowait(record).await.expect("record accepted"));
    }
    for delivery in pending {
        delivery.await.expect("record acknowledged");
    }
}

pub(super) fn text(bytes: &Bytes) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// A value as text (a tombstone's as empty).
pub(super) fn value_text(value: &Option<Bytes>) -> String {
    String::from_utf8_lossy(value.as_deref().unwrap_or_default()).into_owned()
}

/// Consumes every record of `topic` from the start with a fresh group until `count` arrived.
pub(super) async fn read_topic(bus: &EventBus, topic: &str, count: usize) -> Vec<Message> {
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

/// A token unique to this process and call, for names a pattern must single out.
pub(super) fn token() -> String {
    static CALLS: AtomicUsize = AtomicUsize::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() % 1_000_000_000_000);
    format!("u{}x{nanos}x{}", std::process::id(), CALLS.fetch_add(1, Ordering::Relaxed))
}

/// What a handler saw: (partition, offset, value), in arrival order.
pub(super) type Seen = Arc<Mutex<Vec<(i32, i64, String)>>>;

/// Subscribes `group` to `topic` with `options`, recording every message in the returned list.
pub(super) async fn recording(
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
pub(super) async fn publish_timed(
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
pub(super) fn offsets(seen: &Seen) -> Vec<i64> {
    seen.lock().iter().map(|&(_, o, _)| o).collect()
}

/// Waits until `control` reports `offset` committed for `partition` (and nothing else).
pub(super) async fn committed_eventually(
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

/// Waits until the async `condition` holds, failing the check with `what` after [`PATIENCE`].
pub(super) async fn eventually_async<F, Fut>(what: &str, condition: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    assert!(holds_in_time(condition).await, "timed out waiting for: {what}");
}

/// Whether the async `condition` comes to hold within [`PATIENCE`].
pub(super) async fn holds_in_time<F, Fut>(mut condition: F) -> bool
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
pub(super) fn unique(hint: &str) -> String {
    format!("conformance-{hint}-{}", uuid::Uuid::new_v4().simple())
}
