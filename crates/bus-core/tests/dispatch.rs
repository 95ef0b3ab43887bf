//! Keyed dispatch: per-key FIFO, cross-key parallelism, bounded admission, commit positions,
//! drains with discards and abandonment, and the workers' life in the supervisor.
//!
//! Every test runs on tokio's paused clock: handler delays are virtual, waits are conditions
//! with deadlines, and "still pending" means pending after the runtime went idle.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::pin::pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use bus_core::TopicPartition;
use bus_core::dispatch::{DispatchConfig, KeyedDispatch, ProcessFn, Processed};
use bus_core::{Headers, Message};
use bus_supervisor::{LeakGuard, Scope, Supervisor};
use bytes::Bytes;
use parking_lot::Mutex;
use tokio::sync::{Semaphore, watch};
use tokio::time::Instant;

const TOPIC: &str = "orders";

fn message(partition: i32, offset: i64, key: Option<&str>) -> Message {
    Message {
        topic: TOPIC.into(),
        partition,
        offset,
        key: key.map(|k| Bytes::copy_from_slice(k.as_bytes())),
        value: Some(Bytes::new()),
        headers: Headers::new(),
        timestamp: chrono::Utc::now(),
    }
}

fn tp(partition: i32) -> TopicPartition {
    TopicPartition::new(TOPIC, partition)
}

fn key_of(message: &Message) -> String {
    String::from_utf8(message.key.as_ref().expect("keyed").to_vec()).unwrap()
}

fn processor<F, Fut>(f: F) -> ProcessFn
where
    F: Fn(Message) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Processed> + Send + 'static,
{
    Arc::new(move |message| Box::pin(f(message)))
}

fn config(concurrency: usize, ordering_by_key: bool, max_in_flight: usize) -> DispatchConfig {
    DispatchConfig { concurrency, ordering_by_key, max_in_flight }
}

/// Polls `condition` until it holds; fails the test at the (virtual) timeout.
async fn wait_until(what: &str, timeout: Duration, mut condition: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !condition() {
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

/// Whether `future` is still pending after the runtime had `time` (virtual) to make progress.
async fn still_pending<F: Future + Unpin>(future: &mut F, time: Duration) -> bool {
    tokio::select! {
        biased;
        _ = future => false,
        () = tokio::time::sleep(time) => true,
    }
}

/// A deterministic pseudo-random number from `seed`.
fn mix(seed: u64) -> u64 {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15).wrapping_add(0x2545_F491_4F6C_DD1D);
    x ^= x >> 29;
    x = x.wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x ^ (x >> 32)
}

/// Counts handlers running at once and the most seen.
#[derive(Default)]
struct Gauge {
    now: AtomicUsize,
    max: AtomicUsize,
}

impl Gauge {
    fn enter(&self) {
        let now = self.now.fetch_add(1, Ordering::SeqCst) + 1;
        self.max.fetch_max(now, Ordering::SeqCst);
    }
    fn leave(&self) {
        self.now.fetch_sub(1, Ordering::SeqCst);
    }
    fn now(&self) -> usize {
        self.now.load(Ordering::SeqCst)
    }
    fn max(&self) -> usize {
        self.max.load(Ordering::SeqCst)
    }
}

/// Leaves the gauge when dropped: when the handler ends or its future is dropped.
struct Leave(Arc<Gauge>);

impl Drop for Leave {
    fn drop(&mut self) {
        self.0.leave();
    }
}

/// Sets its flag when dropped: proves a processing future was dropped.
struct DropFlag(Arc<AtomicBool>);

impl Drop for DropFlag {
    fn drop(&mut self) {
        self.0.store(true, Ordering::SeqCst);
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Event {
    Start(i32, i64),
    End(i32, i64),
}

#[tokio::test(start_paused = true)]
async fn same_key_runs_in_order_different_keys_run_in_parallel_up_to_concurrency() {
    const KEYS: u64 = 40;
    const MESSAGES: u64 = 2_000;
    const CONCURRENCY: usize = 8;
    let supervisor = Supervisor::new("test");
    let log: Arc<Mutex<HashMap<String, Vec<Event>>>> = Arc::default();
    let gauge = Arc::new(Gauge::default());
    let process = {
        let (log, gauge) = (Arc::clone(&log), Arc::clone(&gauge));
        processor(move |m| {
            let key = key_of(&m);
            gauge.enter();
            log.lock().entry(key.clone()).or_default().push(Event::Start(m.partition, m.offset));
            let delay =
                Duration::from_micros(mix(m.offset as u64 * 7 + m.partition as u64) % 5_000);
            let (log, gauge) = (Arc::clone(&log), Arc::clone(&gauge));
            async move {
                tokio::time::sleep(delay).await;
                log.lock().get_mut(&key).unwrap().push(Event::End(m.partition, m.offset));
                gauge.leave();
                Processed::Done
            }
        })
    };
    let dispatch =
        KeyedDispatch::start(supervisor.root(), config(CONCURRENCY, true, 100), process).unwrap();

    // Keys are spread over two partitions independently of the key, so most keys appear in
    // both: their order is the submission order across partitions.
    let mut expected: HashMap<String, Vec<(i32, i64)>> = HashMap::new();
    let mut next_offset = [0_i64; 2];
    let mut batch = Vec::new();
    for i in 0..MESSAGES {
        let key = format!("key-{}", mix(i) % KEYS);
        let partition = (mix(i + 1_000_000) % 2) as i32;
        let offset = next_offset[partition as usize];
        next_offset[partition as usize] += 1;
        expected.entry(key.clone()).or_default().push((partition, offset));
        batch.push(message(partition, offset, Some(&key)));
        if batch.len() == 64 {
            dispatch.submit(std::mem::take(&mut batch)).await.unwrap();
            assert!(dispatch.in_flight() <= 100);
        }
    }
    dispatch.submit(batch).await.unwrap();
    wait_until("all processed", Duration::from_secs(600), || dispatch.processed() == MESSAGES)
        .await;

    let log = log.lock();
    assert_eq!(log.len(), expected.len());
    for (key, order) in &expected {
        let wanted: Vec<Event> =
            order.iter().flat_map(|&(p, o)| [Event::Start(p, o), Event::End(p, o)]).collect();
        assert_eq!(log[key], wanted, "key {key}: starts and ends must alternate in order");
    }
    assert_eq!(gauge.max(), CONCURRENCY, "parallelism must reach the concurrency, never pass it");
    assert_eq!(dispatch.committable(&tp(0)), Some(next_offset[0]));
    assert_eq!(dispatch.committable(&tp(1)), Some(next_offset[1]));
    assert_eq!(dispatch.committable_all(), vec![(tp(0), next_offset[0]), (tp(1), next_offset[1])]);
    assert_eq!(dispatch.in_flight(), 0);
    assert_eq!(dispatch.running(), 0);
}

/// Handlers that each wait for a permit of `gate`.
fn gated(gate: &Arc<Semaphore>, gauge: &Arc<Gauge>) -> ProcessFn {
    let (gate, gauge) = (Arc::clone(gate), Arc::clone(gauge));
    processor(move |_| {
        let (gate, gauge) = (Arc::clone(&gate), Arc::clone(&gauge));
        async move {
            gauge.enter();
            let _leave = Leave(gauge);
            gate.acquire().await.unwrap().forget();
            Processed::Done
        }
    })
}

fn unkeyed(partition: i32, offsets: std::ops::Range<i64>) -> Vec<Message> {
    offsets.map(|o| message(partition, o, None)).collect()
}

#[tokio::test(start_paused = true)]
async fn submit_waits_for_room_and_never_admits_past_the_bound() {
    let supervisor = Supervisor::new("test");
    let gate = Arc::new(Semaphore::new(0));
    let gauge = Arc::new(Gauge::default());
    let dispatch =
        KeyedDispatch::start(supervisor.root(), config(2, true, 10), gated(&gate, &gauge)).unwrap();

    for start in [0, 3, 6] {
        dispatch.submit(unkeyed(0, start..start + 3)).await.unwrap();
    }
    assert_eq!(dispatch.in_flight(), 9);
    wait_until("two running", Duration::from_secs(1), || gauge.now() == 2).await;

    // 9 + 3 > 10: the fourth batch waits.
    let mut fourth = pin!(dispatch.submit(unkeyed(0, 9..12)));
    assert!(still_pending(&mut fourth, Duration::from_secs(1)).await);
    assert_eq!(dispatch.in_flight(), 9);

    // A batch of one would fit (9 + 1), but it arrived later: it waits its turn.
    let mut fifth = pin!(dispatch.submit(unkeyed(1, 0..1)));
    assert!(still_pending(&mut fifth, Duration::from_secs(1)).await);
    assert_eq!(dispatch.in_flight(), 9);

    // One finishes: 8 + 3 > 10, still waiting.
    gate.add_permits(1);
    wait_until("one processed", Duration::from_secs(1), || dispatch.processed() == 1).await;
    assert!(still_pending(&mut fourth, Duration::from_secs(1)).await);
    assert_eq!(dispatch.in_flight(), 8);

    // Another: 7 + 3 = 10, the fourth is admitted; the fifth still has no room (10 + 1).
    gate.add_permits(1);
    assert!(!still_pending(&mut fourth, Duration::from_secs(1)).await);
    assert_eq!(dispatch.in_flight(), 10);
    assert!(still_pending(&mut fifth, Duration::from_secs(1)).await);
    assert_eq!(dispatch.in_flight(), 10);

    // Everything drains; the fifth goes in.
    gate.add_permits(100);
    assert!(!still_pending(&mut fifth, Duration::from_secs(1)).await);
    wait_until("all processed", Duration::from_secs(1), || dispatch.processed() == 13).await;
    assert_eq!(dispatch.in_flight(), 0);

    // A batch larger than the bound is admitted alone when nothing is in flight...
    let gate = Arc::new(Semaphore::new(0));
    let supervisor = Supervisor::new("test2");
    let dispatch =
        KeyedDispatch::start(supervisor.root(), config(2, true, 10), gated(&gate, &gauge)).unwrap();
    dispatch.submit(unkeyed(0, 0..15)).await.unwrap();
    assert_eq!(dispatch.in_flight(), 15);
    // ... and the next one waits until the total is back within the bound.
    let mut next = pin!(dispatch.submit(unkeyed(0, 15..16)));
    assert!(still_pending(&mut next, Duration::from_secs(1)).await);
    gate.add_permits(5);
    wait_until("5 processed", Duration::from_secs(1), || dispatch.processed() == 5).await;
    assert_eq!(dispatch.in_flight(), 10);
    assert!(still_pending(&mut next, Duration::from_secs(1)).await);
    gate.add_permits(1);
    assert!(!still_pending(&mut next, Duration::from_secs(1)).await);
    assert_eq!(dispatch.in_flight(), 10);
}

#[tokio::test(start_paused = true)]
async fn a_cancelled_submit_admits_nothing_and_lets_the_next_one_in() {
    let supervisor = Supervisor::new("test");
    let gate = Arc::new(Semaphore::new(0));
    let gauge = Arc::new(Gauge::default());
    let dispatch =
        KeyedDispatch::start(supervisor.root(), config(2, true, 10), gated(&gate, &gauge)).unwrap();
    dispatch.submit(unkeyed(0, 0..9)).await.unwrap();
    let mut big = Box::pin(dispatch.submit(unkeyed(0, 9..12)));
    assert!(still_pending(&mut big, Duration::from_secs(1)).await);
    let mut small = pin!(dispatch.submit(unkeyed(1, 0..1)));
    assert!(still_pending(&mut small, Duration::from_secs(1)).await);
    drop(big);
    assert!(!still_pending(&mut small, Duration::from_secs(1)).await);
    assert_eq!(dispatch.in_flight(), 10);
    assert_eq!(dispatch.pending(&tp(0)), 9, "the cancelled batch left no trace");
}

#[tokio::test(start_paused = true)]
async fn the_commit_position_is_the_completed_prefix_and_retain_holds_it() {
    let supervisor = Supervisor::new("test");
    let (release, released) = watch::channel(HashSet::<(i32, i64)>::new());
    let retain: HashSet<(i32, i64)> = [(1, 10)].into();
    let process = processor(move |m| {
        let mut released = released.clone();
        let id = (m.partition, m.offset);
        let outcome = if retain.contains(&id) { Processed::Retain } else { Processed::Done };
        async move {
            released.wait_for(|set| set.contains(&id)).await.unwrap();
            outcome
        }
    });
    let dispatch = KeyedDispatch::start(supervisor.root(), config(8, true, 100), process).unwrap();
    assert_eq!(dispatch.committable(&tp(0)), None, "nothing submitted yet");

    // Partition 0: six keys, completed out of order.
    let batch = (0..6).map(|o| message(0, o, Some(&format!("k{o}")))).collect();
    dispatch.submit(batch).await.unwrap();
    assert_eq!(dispatch.committable(&tp(0)), Some(0));
    for (done, (offset, committable)) in
        [(4, 0), (2, 0), (5, 0), (0, 1), (1, 3), (3, 6)].into_iter().enumerate()
    {
        release.send_modify(|set| {
            set.insert((0, offset));
        });
        wait_until("processed", Duration::from_secs(1), || dispatch.processed() == done as u64 + 1)
            .await;
        assert_eq!(dispatch.committable(&tp(0)), Some(committable), "after {offset}");
    }
    assert_eq!(dispatch.pending(&tp(0)), 0);

    // Partition 1: 10 is retained (dead-lettering failed); 11 has the same key and still runs
    // after it; 12 is a gap (compacted).
    let batch = vec![message(1, 10, Some("r")), message(1, 11, Some("r")), message(1, 13, None)];
    dispatch.submit(batch).await.unwrap();
    release.send_modify(|set| set.extend([(1, 10), (1, 11), (1, 13)]));
    wait_until("processed", Duration::from_secs(1), || dispatch.processed() == 8).await;
    let stats = dispatch.stats();
    assert_eq!(stats.retained, 1);
    assert_eq!(stats.in_flight, 0, "a retained message is no longer in flight");
    assert_eq!(dispatch.committable(&tp(1)), Some(10), "the retained offset holds the prefix");
    assert_eq!(dispatch.pending(&tp(1)), 1);
    assert_eq!(dispatch.committable_all(), vec![(tp(0), 6), (tp(1), 10)]);
}

#[tokio::test(start_paused = true)]
async fn drain_discards_queued_and_lets_running_finish_before_the_deadline() {
    let supervisor = Supervisor::new("test");
    let gauge = Arc::new(Gauge::default());
    let process = {
        let gauge = Arc::clone(&gauge);
        processor(move |_| {
            let gauge = Arc::clone(&gauge);
            async move {
                gauge.enter();
                tokio::time::sleep(Duration::from_millis(10)).await;
                gauge.leave();
                Processed::Done
            }
        })
    };
    let dispatch = KeyedDispatch::start(supervisor.root(), config(2, true, 100), process).unwrap();
    dispatch.submit(unkeyed(0, 0..10)).await.unwrap();
    dispatch.submit(unkeyed(1, 0..1)).await.unwrap();
    wait_until("two running", Duration::from_secs(1), || gauge.now() == 2).await;

    let deadline = Instant::now() + Duration::from_secs(1);
    let report = dispatch.drain(&[tp(0)], deadline).await;
    assert!(Instant::now() < deadline, "returned as soon as the running ones finished");
    assert_eq!(report.discarded, 8);
    assert_eq!(report.abandoned, 0);
    assert!(report.abandoned_offsets.is_empty());
    assert_eq!(dispatch.committable(&tp(0)), Some(2), "discarded messages stay uncommitted");
    assert_eq!(dispatch.pending(&tp(0)), 8);
    assert_eq!(dispatch.stats().discarded, 8);

    // The other partition was not touched.
    wait_until("p1 processed", Duration::from_secs(1), || dispatch.committable(&tp(1)) == Some(1))
        .await;
    assert_eq!(dispatch.in_flight(), 0);

    assert!(dispatch.forget(&tp(0)));
    assert_eq!(dispatch.committable(&tp(0)), None);
    assert!(!dispatch.forget(&tp(0)));
    // A partition assigned again starts a new tracker (from its committed offset).
    dispatch.submit(unkeyed(0, 2..4)).await.unwrap();
    wait_until("reassigned processed", Duration::from_secs(1), || {
        dispatch.committable(&tp(0)) == Some(4)
    })
    .await;
}

/// Messages run in parallel across keys, so a later offset can be handled while an earlier
/// one waits behind its key. A drain finishes the queued ones below the highest offset claimed,
/// so the commit covers every handled message (the next owner handles none twice); the queued
/// ones above it are discarded.
#[tokio::test(start_paused = true)]
async fn drain_finishes_what_waits_below_a_handled_offset() {
    let supervisor = Supervisor::new("test");
    let gate = Arc::new(Semaphore::new(0));
    let handled = Arc::new(Mutex::new(Vec::new()));
    let process = {
        let (gate, handled) = (Arc::clone(&gate), Arc::clone(&handled));
        processor(move |m| {
            let (gate, handled) = (Arc::clone(&gate), Arc::clone(&handled));
            async move {
                if m.offset == 0 {
                    gate.acquire().await.unwrap().forget();
                }
                handled.lock().push(m.offset);
                Processed::Done
            }
        })
    };
    let dispatch = KeyedDispatch::start(supervisor.root(), config(2, true, 100), process).unwrap();
    // p0/1 and p0/3 wait behind the slow p0/0 (same key); p0/2 is handled meanwhile.
    let keys = [Some("slow"), Some("slow"), Some("fast"), Some("slow")];
    let batch = keys.iter().enumerate().map(|(o, k)| message(0, o as i64, *k)).collect();
    dispatch.submit(batch).await.unwrap();
    wait_until("p0/2 handled", Duration::from_secs(1), || handled.lock().contains(&2)).await;

    let deadline = Instant::now() + Duration::from_secs(5);
    let partitions = [tp(0)];
    let mut drain = pin!(dispatch.drain(&partitions, deadline));
    assert!(still_pending(&mut drain, Duration::from_millis(100)).await, "p0/0 still runs");
    gate.add_permits(1);
    let report = drain.await;
    assert!(Instant::now() < deadline, "returned once p0/1 was handled");
    assert_eq!((report.discarded, report.abandoned), (1, 0), "p0/3 lay above p0/2");
    assert_eq!(*handled.lock(), vec![2, 0, 1]);
    assert_eq!(dispatch.committable(&tp(0)), Some(3), "every handled message is committable");
}

/// At its deadline a drain discards what it was finishing as well.
#[tokio::test(start_paused = true)]
async fn drain_discards_what_it_was_finishing_at_the_deadline() {
    let supervisor = Supervisor::new("test");
    let process = processor(|m| async move {
        if m.offset == 0 {
            std::future::pending::<()>().await;
        }
        Processed::Done
    });
    let dispatch = KeyedDispatch::start(supervisor.root(), config(2, true, 100), process).unwrap();
    let keys = [Some("stuck"), Some("stuck"), Some("free")];
    let batch = keys.iter().enumerate().map(|(o, k)| message(0, o as i64, *k)).collect();
    dispatch.submit(batch).await.unwrap();
    wait_until("p0/2 handled", Duration::from_secs(1), || dispatch.processed() == 1).await;

    let deadline = Instant::now() + Duration::from_secs(1);
    let report = dispatch.drain(&[tp(0)], deadline).await;
    assert!(Instant::now() >= deadline);
    assert_eq!((report.discarded, report.abandoned), (1, 1), "p0/1 discarded, p0/0 abandoned");
    assert_eq!(dispatch.committable(&tp(0)), Some(0));
    assert_eq!(dispatch.in_flight(), 0);
}

#[tokio::test(start_paused = true)]
async fn drain_abandons_what_is_still_running_at_the_deadline() {
    let supervisor = Supervisor::new("test");
    let dropped = Arc::new(AtomicBool::new(false));
    let gate = Arc::new(Semaphore::new(0));
    let process = {
        let (dropped, gate) = (Arc::clone(&dropped), Arc::clone(&gate));
        processor(move |m| {
            let (dropped, gate) = (Arc::clone(&dropped), Arc::clone(&gate));
            async move {
                match (m.partition, m.offset) {
                    // Never finishes.
                    (0, 0) => {
                        let _flag = DropFlag(dropped);
                        std::future::pending::<()>().await;
                    }
                    // Runs during the drain, on the other partition.
                    (1, 1) => gate.acquire().await.unwrap().forget(),
                    _ => {}
                }
                Processed::Done
            }
        })
    };
    let dispatch = KeyedDispatch::start(supervisor.root(), config(4, true, 100), process).unwrap();
    // Key "shared" is in both partitions: p1's message waits behind p0's stuck one.
    dispatch.submit(vec![message(0, 0, Some("shared")), message(0, 1, Some("a"))]).await.unwrap();
    dispatch.submit(vec![message(1, 0, Some("shared")), message(1, 1, Some("b"))]).await.unwrap();
    dispatch.submit(vec![message(0, 2, Some("shared"))]).await.unwrap();
    wait_until("p0/1 processed", Duration::from_secs(1), || dispatch.processed() == 1).await;
    assert_eq!(dispatch.running(), 2, "p0/0 and p1/1");

    let deadline = Instant::now() + Duration::from_secs(5);
    let report = dispatch.drain(&[tp(0)], deadline).await;
    assert!(Instant::now() >= deadline, "waited for the deadline");
    assert_eq!(report.discarded, 1, "p0/2 was queued behind the stuck one");
    assert_eq!(report.abandoned, 1);
    assert_eq!(report.abandoned_offsets, vec![(tp(0), 0)]);
    assert_eq!(report.unresponsive, 0);
    assert!(dropped.load(Ordering::SeqCst), "the abandoned future was dropped");
    assert_eq!(dispatch.committable(&tp(0)), Some(0), "the abandoned offset is not committable");
    assert_eq!(dispatch.stats().abandoned, 1);

    // The key moved on: p1's message of key "shared" runs; p1/1 was not abandoned.
    wait_until("p1/0 processed", Duration::from_secs(1), || dispatch.processed() == 2).await;
    assert_eq!(dispatch.committable(&tp(1)), Some(1));
    gate.add_permits(1);
    wait_until("p1/1 processed", Duration::from_secs(1), || {
        dispatch.committable(&tp(1)) == Some(2)
    })
    .await;
    assert_eq!(dispatch.in_flight(), 0);
    assert!(dispatch.forget(&tp(0)));
    assert_eq!(dispatch.committable_all(), vec![(tp(1), 2)]);
}

#[tokio::test(start_paused = true)]
async fn drain_all_covers_every_partition() {
    let supervisor = Supervisor::new("test");
    let gate = Arc::new(Semaphore::new(0));
    let gauge = Arc::new(Gauge::default());
    let dispatch =
        KeyedDispatch::start(supervisor.root(), config(2, true, 100), gated(&gate, &gauge))
            .unwrap();
    dispatch.submit(unkeyed(0, 0..3)).await.unwrap();
    dispatch.submit(unkeyed(1, 0..3)).await.unwrap();
    wait_until("two running", Duration::from_secs(1), || gauge.now() == 2).await;
    let report = dispatch.drain_all(Instant::now() + Duration::from_secs(1)).await;
    assert_eq!(report.discarded, 4);
    assert_eq!(report.abandoned, 2);
    assert_eq!(report.abandoned_offsets, vec![(tp(0), 0), (tp(0), 1)]);
    assert_eq!(dispatch.in_flight(), 0);
    assert_eq!(gauge.now(), 0, "abandoned futures were dropped");
    assert_eq!(dispatch.committable_all(), vec![(tp(0), 0), (tp(1), 0)]);
}

/// The most handlers running at once for `messages` under `config`.
async fn parallelism(config: DispatchConfig, messages: Vec<Message>) -> usize {
    let supervisor = Supervisor::new("test");
    let gate = Arc::new(Semaphore::new(0));
    let gauge = Arc::new(Gauge::default());
    let dispatch = KeyedDispatch::start(supervisor.root(), config, gated(&gate, &gauge)).unwrap();
    let n = messages.len() as u64;
    dispatch.submit(messages).await.unwrap();
    // An idle barrier, not a timed wait: on the paused clock (every caller's) this sleep ends
    // only once no task can make progress, so whatever can start has started.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let running = gauge.now();
    assert_eq!(dispatch.running(), running);
    gate.add_permits(1_000);
    wait_until("all processed", Duration::from_secs(1), || dispatch.processed() == n).await;
    running
}

fn with_header(partition: i32, offset: i64, name: &str, value: &str) -> Message {
    let mut m = message(partition, offset, None);
    m.headers.push(name, value.as_bytes().to_vec());
    m
}

#[tokio::test(start_paused = true)]
async fn unkeyed_and_unordered_messages_run_in_parallel() {
    let same_key = || (0..4).map(|o| message(0, o, Some("k"))).collect::<Vec<_>>();
    assert_eq!(parallelism(config(4, true, 100), same_key()).await, 1, "same key, ordered");
    assert_eq!(parallelism(config(4, false, 100), same_key()).await, 4, "ordering off");
    assert_eq!(parallelism(config(4, true, 100), unkeyed(0, 0..4)).await, 4, "unkeyed");
    assert_eq!(parallelism(config(3, true, 100), unkeyed(0, 0..4)).await, 3, "at most 3");

    // Without a record key, the X-Aggregate-ID header (any case) is the key.
    let same_aggregate =
        (0..4).map(|o| with_header(0, o, "x-aggregate-id", "order-1")).collect::<Vec<_>>();
    assert_eq!(parallelism(config(4, true, 100), same_aggregate).await, 1, "same aggregate");
    let aggregates = (0..4)
        .map(|o| with_header(0, o, "X-Aggregate-ID", &format!("order-{o}")))
        .collect::<Vec<_>>();
    assert_eq!(parallelism(config(4, true, 100), aggregates).await, 4, "distinct aggregates");
}

fn worker_paths(scope: &Scope) -> Vec<String> {
    let mut paths: Vec<String> = scope.live_tasks().into_iter().map(|t| t.path).collect();
    paths.sort();
    paths
}

#[tokio::test(start_paused = true)]
async fn workers_live_in_the_scope_and_leave_it_after_close() {
    let supervisor = Supervisor::new("test");
    let guard = LeakGuard::new(supervisor.root());
    let scope = supervisor.root().child("dispatch");
    let process = processor(|_| async { Processed::Done });
    let dispatch = KeyedDispatch::start(&scope, config(5, true, 100), process).unwrap();
    assert_eq!(scope.live(), 5);
    let paths = worker_paths(&scope);
    assert_eq!(paths.len(), 5);
    for (i, path) in paths.iter().enumerate() {
        assert!(path.ends_with(&format!("dispatch/worker-{i}")), "{path}");
    }
    dispatch.submit(unkeyed(0, 0..100)).await.unwrap();
    wait_until("processed", Duration::from_secs(1), || dispatch.processed() == 100).await;

    assert_eq!(dispatch.close(), 0);
    assert!(dispatch.is_closed());
    let refused = dispatch.submit(unkeyed(0, 100..103)).await.unwrap_err();
    assert_eq!(refused.into_batch().len(), 3, "the batch is handed back");
    scope.join(Duration::from_secs(1)).await.unwrap();
    assert_eq!(scope.live(), 0, "workers exited on close, without a cancellation");
    let report = scope.shutdown(Duration::from_secs(1)).await.unwrap();
    assert!(report.is_graceful());
    guard.assert_clean(Duration::from_secs(1)).await;
}

#[tokio::test(start_paused = true)]
async fn close_discards_queued_and_waiting_submitters_get_their_batch_back() {
    let supervisor = Supervisor::new("test");
    let gate = Arc::new(Semaphore::new(0));
    let gauge = Arc::new(Gauge::default());
    let scope = supervisor.root().child("dispatch");
    let dispatch = KeyedDispatch::start(&scope, config(1, true, 5), gated(&gate, &gauge)).unwrap();
    dispatch.submit(unkeyed(0, 0..5)).await.unwrap();
    let mut waiting = pin!(dispatch.submit(unkeyed(0, 5..7)));
    assert!(still_pending(&mut waiting, Duration::from_secs(1)).await);
    assert_eq!(dispatch.close(), 4, "four queued behind the running one");
    assert_eq!(waiting.await.unwrap_err().into_batch().len(), 2);
    assert_eq!(scope.live(), 1, "the running message is not interrupted by close");
    gate.add_permits(1);
    scope.join(Duration::from_secs(1)).await.unwrap();
    assert_eq!(dispatch.committable(&tp(0)), Some(1));
}

#[tokio::test(start_paused = true)]
async fn dropping_the_last_handle_or_cancelling_the_scope_stops_the_workers() {
    let supervisor = Supervisor::new("test");
    let scope = supervisor.root().child("dropped");
    let dispatch =
        KeyedDispatch::start(&scope, config(3, true, 10), processor(|_| async { Processed::Done }))
            .unwrap();
    let clone = dispatch.clone();
    drop(dispatch);
    assert_eq!(scope.live(), 3, "a clone keeps it open");
    clone.submit(unkeyed(0, 0..3)).await.unwrap();
    drop(clone);
    scope.join(Duration::from_secs(1)).await.unwrap();

    let scope = supervisor.root().child("cancelled");
    let dispatch =
        KeyedDispatch::start(&scope, config(3, true, 10), processor(|_| async { Processed::Done }))
            .unwrap();
    scope.token().cancel();
    scope.join(Duration::from_secs(1)).await.unwrap();
    assert!(dispatch.is_closed());
    assert!(dispatch.submit(unkeyed(0, 0..1)).await.is_err());
    supervisor.shutdown(Duration::from_secs(1)).await.unwrap();
    assert_eq!(supervisor.live(), 0);
}

#[tokio::test(start_paused = true)]
async fn a_panicking_handler_keeps_its_offset_uncommitted_and_its_worker_alive() {
    let supervisor = Supervisor::new("test");
    let scope = supervisor.root().child("dispatch");
    let process = processor(|m| async move {
        if m.offset == 1 {
            panic!("handler bug");
        }
        Processed::Done
    });
    let dispatch = KeyedDispatch::start(&scope, config(1, true, 10), process).unwrap();
    dispatch.submit((0..4).map(|o| message(0, o, Some("k"))).collect()).await.unwrap();
    wait_until("processed", Duration::from_secs(1), || dispatch.processed() == 3).await;
    assert_eq!(dispatch.stats().panicked, 1);
    assert_eq!(dispatch.committable(&tp(0)), Some(1));
    assert_eq!(scope.live(), 1, "the worker survived");
}

#[tokio::test(start_paused = true)]
async fn offsets_not_above_the_last_submitted_are_skipped() {
    let supervisor = Supervisor::new("test");
    let dispatch = KeyedDispatch::start(
        supervisor.root(),
        config(2, true, 10),
        processor(|_| async { Processed::Done }),
    )
    .unwrap();
    dispatch.submit(unkeyed(0, 0..3)).await.unwrap();
    dispatch.submit(unkeyed(0, 2..5)).await.unwrap();
    wait_until("processed", Duration::from_secs(1), || dispatch.processed() == 5).await;
    assert_eq!(dispatch.stats().skipped, 1);
    assert_eq!(dispatch.committable(&tp(0)), Some(5));
}

#[test]
fn config_comes_from_the_subscription_options() {
    let options = bus_core::SubscribeOptions::new("g")
        .with_concurrency(7)
        .with_ordering_by_key(false)
        .with_max_in_flight(99);
    assert_eq!(DispatchConfig::from_options(&options), config(7, false, 99));
}

/// The same guarantees on a real multi-thread runtime, with two producers (one partition each)
/// submitting at once: catches lost wake-ups and races the paused clock cannot show.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stress_on_a_multi_thread_runtime() {
    const PER_PARTITION: i64 = 20_000;
    let supervisor = Supervisor::new("stress");
    let scope = supervisor.root().child("dispatch");
    let order: Arc<Mutex<HashMap<String, Vec<i64>>>> = Arc::default();
    let gauge = Arc::new(Gauge::default());
    let process = {
        let (order, gauge) = (Arc::clone(&order), Arc::clone(&gauge));
        processor(move |m| {
            let (order, gauge) = (Arc::clone(&order), Arc::clone(&gauge));
            async move {
                gauge.enter();
                order.lock().entry(key_of(&m)).or_default().push(m.offset);
                for _ in 0..mix(m.offset as u64) % 3 {
                    tokio::task::yield_now().await;
                }
                gauge.leave();
                Processed::Done
            }
        })
    };
    let dispatch = KeyedDispatch::start(&scope, config(8, true, 256), process).unwrap();
    let produce = |partition: i32| {
        let dispatch = dispatch.clone();
        async move {
            for start in (0..PER_PARTITION).step_by(100) {
                let batch = (start..start + 100)
                    .map(|o| message(partition, o, Some(&format!("p{partition}-k{}", o % 50))))
                    .collect();
                dispatch.submit(batch).await.unwrap();
                assert!(dispatch.in_flight() <= 256);
            }
        }
    };
    tokio::join!(produce(0), produce(1));
    wait_until("all processed", Duration::from_secs(60), || {
        dispatch.processed() == 2 * PER_PARTITION as u64
    })
    .await;
    assert!(gauge.max() <= 8);
    for (key, offsets) in order.lock().iter() {
        assert_eq!(offsets.len() as i64, PER_PARTITION / 50, "{key}");
        assert!(offsets.windows(2).all(|w| w[0] < w[1]), "{key} out of order");
    }
    assert_eq!(dispatch.committable_all(), vec![(tp(0), PER_PARTITION), (tp(1), PER_PARTITION)]);
    let report = dispatch.drain_all(Instant::now() + Duration::from_secs(1)).await;
    assert_eq!((report.discarded, report.abandoned), (0, 0));
    dispatch.close();
    scope.shutdown(Duration::from_secs(5)).await.unwrap();
    assert_eq!(scope.live(), 0);
}

/// A processor whose message at `stuck` never finishes; the others finish at once.
fn stuck_at(stuck: i64, dropped: &Arc<AtomicBool>) -> ProcessFn {
    let dropped = Arc::clone(dropped);
    processor(move |m| {
        let dropped = Arc::clone(&dropped);
        async move {
            if m.offset == stuck {
                let _flag = DropFlag(dropped);
                std::future::pending::<()>().await;
            }
            Processed::Done
        }
    })
}

#[tokio::test(start_paused = true)]
async fn a_pending_message_hands_the_other_claims_to_idle_workers() {
    // Workers claim several messages while they finish at once; the one that blocks must not
    // hold the rest back: the other worker runs them.
    let supervisor = Supervisor::new("test");
    let dropped = Arc::new(AtomicBool::new(false));
    let dispatch =
        KeyedDispatch::start(supervisor.root(), config(2, true, 1000), stuck_at(3, &dropped))
            .unwrap();
    dispatch.submit(unkeyed(0, 0..200)).await.unwrap();
    wait_until("all but the stuck one processed", Duration::from_secs(1), || {
        dispatch.processed() == 199
    })
    .await;
    assert_eq!(dispatch.running(), 1);
    assert_eq!(dispatch.in_flight(), 1);
    assert_eq!(dispatch.committable(&tp(0)), Some(3));
    let report = dispatch.drain(&[tp(0)], Instant::now() + Duration::from_millis(50)).await;
    assert_eq!((report.discarded, report.abandoned), (0, 1));
    assert!(dropped.load(Ordering::SeqCst));
}

#[tokio::test(start_paused = true)]
async fn with_one_worker_the_claims_behind_a_pending_message_stay_queued_for_the_drain() {
    let supervisor = Supervisor::new("test");
    let dropped = Arc::new(AtomicBool::new(false));
    let dispatch =
        KeyedDispatch::start(supervisor.root(), config(1, true, 1000), stuck_at(3, &dropped))
            .unwrap();
    dispatch.submit(unkeyed(0, 0..10)).await.unwrap();
    wait_until("0..3 processed", Duration::from_secs(1), || dispatch.processed() == 3).await;
    assert_eq!(dispatch.running(), 1, "only the stuck one: the others were handed back");
    let report = dispatch.drain(&[tp(0)], Instant::now() + Duration::from_millis(50)).await;
    assert_eq!(report.discarded, 6, "4..10 were queued");
    assert_eq!(report.abandoned_offsets, vec![(tp(0), 3)]);
    assert_eq!(dispatch.committable(&tp(0)), Some(3));
    assert_eq!(dispatch.in_flight(), 0);
    assert_eq!(dispatch.stats().discarded, 6);
}

#[tokio::test(start_paused = true)]
async fn a_drain_while_claims_are_held_accounts_for_every_message() {
    // One worker with fast messages yields now and then (the runtime's budget) while it holds
    // claims; a drain starting then must still account for each message exactly once:
    // processed, discarded (queued, or claimed and handed back during the drain) or abandoned.
    // A message that yields once (`hiccup`) shifts where the claims fall.
    for hiccup in 1..18 {
        for stuck in 120..140 {
            let supervisor = Supervisor::new("test");
            let dropped = Arc::new(AtomicBool::new(false));
            let process = {
                let dropped = Arc::clone(&dropped);
                processor(move |m| {
                    let dropped = Arc::clone(&dropped);
                    async move {
                        if m.offset == hiccup {
                            tokio::task::yield_now().await;
                        }
                        if m.offset == stuck {
                            let _flag = DropFlag(dropped);
                            std::future::pending::<()>().await;
                        }
                        Processed::Done
                    }
                })
            };
            let dispatch =
                KeyedDispatch::start(supervisor.root(), config(1, true, 1000), process).unwrap();
            dispatch.submit(unkeyed(0, 0..300)).await.unwrap();
            // Let the worker run until it yields (it may hold claims then).
            tokio::task::yield_now().await;
            let report = dispatch.drain(&[tp(0)], Instant::now() + Duration::from_millis(50)).await;
            let stats = dispatch.stats();
            let case = format!("hiccup {hiccup}, stuck {stuck}: {report:?} {stats:?}");
            assert_eq!(
                stats.processed as usize + report.discarded + report.abandoned,
                300,
                "{case}"
            );
            assert_eq!(stats.discarded as usize, report.discarded, "{case}");
            assert!(report.abandoned <= 1, "{case}");
            if report.abandoned == 1 {
                assert_eq!(report.abandoned_offsets, vec![(tp(0), stuck)], "{case}");
                assert!(dropped.load(Ordering::SeqCst), "{case}");
            }
            let processed = i64::try_from(stats.processed).unwrap();
            assert_eq!(dispatch.committable(&tp(0)), Some(processed), "{case}");
            assert_eq!(dispatch.in_flight(), 0, "{case}");
            assert_eq!(dispatch.running(), 0, "{case}");
        }
    }
}
