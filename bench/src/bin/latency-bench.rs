//! `cargo xtask bench latency`: the bus's latency and shutdown time against rdkafka's, on the
//! same broker, in one process, at a fixed offered rate (not flat out).
//!
//! Owns: the paced workload (20,000 records/s of 100 bytes for 5 s, sent in ticks of 1 ms, 20
//! records a tick, on one thread for both clients; keys over 1,000 aggregates, 6 partitions,
//! acks all, linger 1 ms, both producers idempotent: the bus's default, rdkafka's
//! `enable.idempotence`), the three measurements and the tables it prints on stdout (progress
//! goes to stderr):
//!
//! 1. produce latency, send call to acknowledgement, per record: the bus's delivery futures
//!    polled by a `FuturesUnordered` task as they resolve; rdkafka's `BaseProducer` delivery
//!    callback, served by a thread blocked in `poll` (woken by each delivery report event).
//!    The bus runs the phase twice: with its default of 5 produce requests in flight per
//!    partition, and with one (`producer.max_in_flight = 1`), to show what the window does to
//!    the tail. Then the same at 200 records/s ("lone records"): every record is a batch of its
//!    own, so the figure is the linger as each client's timer keeps it plus the round trip;
//! 2. end-to-end latency, send call to the consumer's receipt, per record: the send instant
//!    (nanoseconds since a process-wide epoch) is in the value; the bus's handler
//!    (`EventBus::subscribe`, defaults) and rdkafka's `BaseConsumer` poll loop subtract it
//!    from their receive instant. Both consumers let the broker hold a fetch up to 500 ms (both
//!    clients' default). Each client's consumer is in the group, with its partitions
//!    assigned and read (a warm-up record on every partition received), before timing starts;
//! 3. shutdown time after phase 2: the bus's `shutdown` against rdkafka's consumer
//!    `unsubscribe`, close and destroy plus its producer's `flush` (see [`rdkafka_e2e`]).
//!
//! Usage: `latency-bench --bootstrap HOST:PORT [--rate R] [--lone-rate L] [--seconds S]
//! [--rounds N] [--fetch-wait-ms W]`. Build with `--features peer` for the rdkafka side. Each
//! round runs both clients (alternating which goes first) on fresh topics; the tables show the
//! median over rounds of each figure.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use bus_bench::{AGGREGATES, PARTITIONS, VALUE_BYTES, fail, librdkafka_version};
use bus_core::{DeliveryFuture, HandlerError, Message, Record, SubscribeOptions};
use bus_kafka::KafkaConfig;
use bytes::Bytes;
use clap::Parser;
use futures_util::StreamExt;
use futures_util::stream::FuturesUnordered;
use tokio::runtime::Runtime;

/// Linger of both producers (`producer.linger`; `linger.ms`).
const LINGER_MS: u64 = 1;
/// The pacing tick: every tick, the records due by its end are sent at once.
const TICK: Duration = Duration::from_millis(1);
/// How long a fetch may wait at the broker for records, both consumers (`consumer.fetch_max_wait`;
/// `fetch.wait.max.ms`): 500 ms, both clients' default. `--fetch-wait-ms` changes it.
static FETCH_WAIT_MS: AtomicU64 = AtomicU64::new(500);
/// The sequence number of warm-up records (not timed).
const WARM_UP: u64 = u64::MAX;

/// The instant latencies are measured from: values carry nanoseconds since it.
fn epoch() -> Instant {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    *EPOCH.get_or_init(Instant::now)
}

/// Nanoseconds since [`epoch`].
fn now_ns() -> u64 {
    u64::try_from(epoch().elapsed().as_nanos()).unwrap_or(u64::MAX)
}

/// A record's value: its sequence number and send instant (little-endian), then padding.
fn value(seq: u64, sent_ns: u64) -> [u8; VALUE_BYTES] {
    let mut value = [b'v'; VALUE_BYTES];
    value[..8].copy_from_slice(&seq.to_le_bytes());
    value[8..16].copy_from_slice(&sent_ns.to_le_bytes());
    value
}

/// The sequence number and send instant of a value written by [`value`].
fn decode(value: &[u8]) -> Option<(u64, u64)> {
    let seq = u64::from_le_bytes(value.get(..8)?.try_into().ok()?);
    let sent = u64::from_le_bytes(value.get(8..16)?.try_into().ok()?);
    Some((seq, sent))
}

/// The workload's offered rate and length.
#[derive(Clone, Copy)]
struct Pace {
    rate: usize,
    records: usize,
}

impl Pace {
    /// Calls `send(i)` for every record, in ticks of [`TICK`]: at each tick the records due by
    /// the tick's end (`rate` per second from the start) are sent back to back, then the thread
    /// sleeps until the next tick. Returns how late the last tick started (how far the sender
    /// fell behind its schedule, if it did).
    fn run(&self, mut send: impl FnMut(usize)) -> Duration {
        let started = Instant::now();
        let mut sent = 0;
        let mut tick = 0u32;
        let mut late = Duration::ZERO;
        while sent < self.records {
            let due_at = started + TICK * tick;
            let now = Instant::now();
            if now < due_at {
                std::thread::sleep(due_at - now);
            } else {
                late = now - due_at;
            }
            tick += 1;
            let due = ((TICK * tick).as_secs_f64() * self.rate as f64) as usize;
            while sent < due.min(self.records) {
                send(sent);
                sent += 1;
            }
        }
        late
    }

    fn seconds(&self) -> f64 {
        self.records as f64 / self.rate as f64
    }
}

/// Percentiles of one latency sample, in milliseconds.
#[derive(Debug, Clone, Copy, Default)]
struct Latency {
    p50: f64,
    p99: f64,
    p999: f64,
    max: f64,
}

impl Latency {
    fn of(mut ns: Vec<u64>) -> Latency {
        if ns.is_empty() {
            return Latency::default();
        }
        ns.sort_unstable();
        let at = |q: f64| {
            let rank = ((q * ns.len() as f64).ceil() as usize).clamp(1, ns.len());
            ns[rank - 1] as f64 / 1e6
        };
        Latency { p50: at(0.50), p99: at(0.99), p999: at(0.999), max: at(1.0) }
    }

    fn figures(&self) -> [f64; 4] {
        [self.p50, self.p99, self.p999, self.max]
    }

    /// Each percentile's median over `rounds`.
    fn median(rounds: &[Latency]) -> Latency {
        let pick = |f: fn(&Latency) -> f64| median_of(rounds.iter().map(f).collect());
        Latency {
            p50: pick(|l| l.p50),
            p99: pick(|l| l.p99),
            p999: pick(|l| l.p999),
            max: pick(|l| l.max),
        }
    }
}

fn median_of(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values.get(values.len() / 2).copied().unwrap_or(0.0)
}

/// One client's round.
#[derive(Debug, Clone, Copy)]
struct Round {
    produce: Latency,
    /// Produce latency with one request in flight per partition (the bus only).
    produce_one: Latency,
    /// Produce latency of records sent alone (a batch each).
    lone: Latency,
    e2e: Latency,
    /// The consumer's group join (subscribe to the warm-up records received), seconds.
    join: f64,
    /// Shutdown, seconds.
    shutdown: f64,
    /// Whether the shutdown was clean (see each client's phase).
    clean: bool,
}

/// What a client's end-to-end phase measured (the fields of [`Round`] but the first).
struct Consumed {
    e2e: Latency,
    join: f64,
    shutdown: f64,
    clean: bool,
}

/// Latencies in nanoseconds, stored by sequence number from any thread.
struct Slots {
    slots: Vec<AtomicU64>,
    count: AtomicUsize,
    warm: AtomicUsize,
}

impl Slots {
    fn new(records: usize) -> Arc<Slots> {
        Arc::new(Slots {
            slots: (0..records).map(|_| AtomicU64::new(0)).collect(),
            count: AtomicUsize::new(0),
            warm: AtomicUsize::new(0),
        })
    }

    /// Records the receipt of `value` now.
    fn receive(&self, value: &[u8]) {
        let received = now_ns();
        match decode(value) {
            Some((WARM_UP, _)) => {
                self.warm.fetch_add(1, Ordering::Relaxed);
            }
            Some((seq, sent)) => {
                if let Some(slot) = usize::try_from(seq).ok().and_then(|s| self.slots.get(s)) {
                    slot.store(received.saturating_sub(sent).max(1), Ordering::Relaxed);
                    self.count.fetch_add(1, Ordering::Relaxed);
                }
            }
            None => {}
        }
    }

    /// Waits (polling every millisecond) until `check` holds, or fails naming `what`.
    fn wait(&self, what: &str, limit: Duration, check: impl Fn(&Slots) -> bool) {
        let deadline = Instant::now() + limit;
        while !check(self) {
            if Instant::now() > deadline {
                fail(&format!("{what}: not within {} s", limit.as_secs()));
            }
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    fn latencies(&self) -> Vec<u64> {
        let all: Vec<u64> = self.slots.iter().map(|s| s.load(Ordering::Relaxed)).collect();
        all.into_iter().filter(|&ns| ns > 0).collect()
    }
}

fn bus_config(bootstrap: &str) -> KafkaConfig {
    let mut config = KafkaConfig::new(bootstrap);
    config.producer.linger = Duration::from_millis(LINGER_MS);
    config.producer.idempotence = true;
    config.consumer.fetch_max_wait = Duration::from_millis(FETCH_WAIT_MS.load(Ordering::Relaxed));
    config
}

/// One record to every partition, each acknowledged: the topic is resolved and every
/// partition's loop and connection exist before timing starts.
async fn bus_warm_up(bus: &bus_core::EventBus, topic: &str) {
    for partition in 0..PARTITIONS {
        let record = Record::new(topic, Bytes::copy_from_slice(&value(WARM_UP, 0)))
            .with_partition(partition);
        bus.publish(record).await.unwrap_or_else(|e| fail(&format!("bus warm-up: {e}")));
    }
}

/// Produce latency of the bus: the pacing thread calls `publish_nowait` and hands the delivery
/// future, with its send instant, to a task that polls all of them in a `FuturesUnordered` and
/// takes the time as each resolves.
fn bus_produce(
    runtime: &Runtime,
    bootstrap: &str,
    topic: &str,
    pace: Pace,
    keys: &[Bytes],
    max_in_flight: usize,
) -> Latency {
    let mut config = bus_config(bootstrap);
    config.producer.max_in_flight = max_in_flight;
    let bus =
        runtime.block_on(bus_kafka::connect(config)).unwrap_or_else(|e| fail(&format!("bus: {e}")));
    runtime.block_on(bus_warm_up(&bus, topic));
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<(u64, DeliveryFuture)>();
    let records = pace.records;
    let collector = runtime.spawn(async move {
        let mut pending = FuturesUnordered::new();
        let mut latencies = Vec::with_capacity(records);
        let mut open = true;
        loop {
            tokio::select! {
                next = rx.recv(), if open => match next {
                    Some((sent, delivery)) => pending.push(async move {
                        let result = delivery.await;
                        (sent, now_ns(), result)
                    }),
                    None => open = false,
                },
                Some((sent, acked, result)) = pending.next(), if !pending.is_empty() => {
                    result.unwrap_or_else(|e| fail(&format!("bus delivery: {e}")));
                    latencies.push(acked.saturating_sub(sent));
                }
                else => break,
            }
        }
        latencies
    });
    let value = Bytes::from(vec![b'v'; VALUE_BYTES]);
    let late = pace.run(|i| {
        let record = Record::new(topic, value.clone()).with_key(keys[i % AGGREGATES].clone());
        let sent = now_ns();
        let delivery = runtime
            .block_on(bus.publish_nowait(record))
            .unwrap_or_else(|e| fail(&format!("bus publish: {e}")));
        if tx.send((sent, delivery)).is_err() {
            fail("bus: the delivery collector stopped");
        }
    });
    drop(tx);
    let latencies = runtime
        .block_on(collector)
        .unwrap_or_else(|e| fail(&format!("bus delivery collector: {e}")));
    if latencies.len() != records {
        fail(&format!("bus: {} of {records} acknowledged", latencies.len()));
    }
    if let Err(e) = runtime.block_on(bus.shutdown(Duration::from_secs(30))) {
        fail(&format!("bus shutdown: {e}"));
    }
    eprintln!(
        "  bus produce at {} records/s, {max_in_flight} in flight: last tick {:.1} ms late",
        pace.rate,
        late.as_secs_f64() * 1e3
    );
    Latency::of(latencies)
}

/// End-to-end latency of the bus and its shutdown: one bus publishes to its own subscription
/// (`subscribe` with default options: keyed dispatch, concurrency 16, at-least-once commits
/// every second). The shutdown is `EventBus::shutdown`, which stops fetching, drains the
/// handlers, commits, leaves the group, flushes the producer and joins every task of the bus;
/// clean means it returned `Ok` with nothing failed back, abandoned or discarded, an offset
/// committed for every partition, the group left, and no task aborted.
fn bus_e2e(
    runtime: &Runtime,
    bootstrap: &str,
    topic: &str,
    group: &str,
    pace: Pace,
    keys: &[Bytes],
) -> Consumed {
    let bus = runtime
        .block_on(bus_kafka::connect(bus_config(bootstrap)))
        .unwrap_or_else(|e| fail(&format!("bus: {e}")));
    let slots = Slots::new(pace.records);
    let handler_slots = Arc::clone(&slots);
    let subscribed = Instant::now();
    let _subscription = runtime
        .block_on(bus.subscribe(topic, SubscribeOptions::new(group), move |message: Message| {
            handler_slots.receive(message.payload());
            std::future::ready(Ok::<(), HandlerError>(()))
        }))
        .unwrap_or_else(|e| fail(&format!("bus subscribe: {e}")));
    runtime.block_on(bus_warm_up(&bus, topic));
    slots.wait("bus: warm-up records", Duration::from_secs(60), |s| {
        s.warm.load(Ordering::Relaxed) >= PARTITIONS as usize
    });
    let join = subscribed.elapsed().as_secs_f64();
    let late = pace.run(|i| {
        let sent = now_ns();
        let value = Bytes::copy_from_slice(&value(i as u64, sent));
        let record = Record::new(topic, value).with_key(keys[i % AGGREGATES].clone());
        // The delivery future is dropped: the consumer's receipt is what is timed.
        drop(
            runtime
                .block_on(bus.publish_nowait(record))
                .unwrap_or_else(|e| fail(&format!("bus publish: {e}"))),
        );
    });
    slots.wait("bus: records received", Duration::from_secs(60), |s| {
        s.count.load(Ordering::Relaxed) >= pace.records
    });
    let started = Instant::now();
    let report = runtime.block_on(bus.shutdown(Duration::from_secs(30)));
    let shutdown = started.elapsed().as_secs_f64();
    let clean = match &report {
        Ok(report) => {
            let committed: usize = report.subscriptions.iter().map(|s| s.committed.len()).sum();
            eprintln!(
                "  bus shutdown report: {:.1} ms, {committed} partition(s) committed, group left: \
                 {}, {} task(s) aborted",
                report.elapsed.as_secs_f64() * 1e3,
                report.subscriptions.iter().all(|s| s.left_group),
                report.tasks.all_aborted().len()
            );
            report.failed == 0
                && committed == PARTITIONS as usize
                && report.handlers_abandoned == 0
                && report.discarded == 0
                && report.subscriptions.iter().all(|s| s.left_group)
                && report.tasks.all_aborted().is_empty()
        }
        Err(e) => {
            eprintln!("  bus shutdown: {e}");
            false
        }
    };
    eprintln!(
        "  bus e2e: joined in {join:.1} s, paced, last tick {:.1} ms late; shutdown {:.0} ms{}",
        late.as_secs_f64() * 1e3,
        shutdown * 1e3,
        if clean { ", clean" } else { ", NOT clean" }
    );
    Consumed { e2e: Latency::of(slots.latencies()), join, shutdown, clean }
}

#[cfg(not(feature = "peer"))]
fn rdkafka_produce(_bootstrap: &str, _topic: &str, _pace: Pace, _keys: &[String]) -> Latency {
    fail(
        "built without the rdkafka peer: run `cargo xtask bench latency` (it passes --features peer)",
    )
}

#[cfg(not(feature = "peer"))]
fn rdkafka_e2e(
    _bootstrap: &str,
    _topic: &str,
    _group: &str,
    _pace: Pace,
    _keys: &[String],
) -> Consumed {
    fail(
        "built without the rdkafka peer: run `cargo xtask bench latency` (it passes --features peer)",
    )
}

#[cfg(feature = "peer")]
mod peer {
    //! rdkafka's side: a `BaseProducer` whose delivery callback times each record (the opaque
    //! is its send instant), served by a thread blocked in `poll`.

    use std::sync::Mutex;
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
    use std::time::Duration;

    use rdkafka::ClientContext;
    use rdkafka::config::ClientConfig;
    use rdkafka::producer::{BaseProducer, BaseRecord, DeliveryResult, Producer, ProducerContext};

    use super::{LINGER_MS, PARTITIONS, WARM_UP, fail, now_ns, value};

    /// Delivery callbacks: the latency of each acknowledged record whose opaque is a send
    /// instant (warm-up records carry `usize::MAX`).
    pub(super) struct Timing {
        pub(super) latencies: Mutex<Vec<u64>>,
        pub(super) failed: AtomicUsize,
    }

    impl ClientContext for Timing {}

    impl ProducerContext for Timing {
        type DeliveryOpaque = usize;

        fn delivery(&self, result: &DeliveryResult<'_>, sent: usize) {
            let acked = now_ns();
            match result {
                Ok(_) if sent == usize::MAX => {}
                Ok(_) => self
                    .latencies
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .push(acked.saturating_sub(sent as u64)),
                Err(_) => {
                    self.failed.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
    }

    /// The producer: idempotent and acks all as the bus's, linger as the bus's, murmur2 as the
    /// bus's partitioner.
    pub(super) fn producer(bootstrap: &str, records: usize) -> BaseProducer<Timing> {
        ClientConfig::new()
            .set("bootstrap.servers", bootstrap)
            .set("enable.idempotence", "true")
            .set("acks", "all")
            .set("linger.ms", LINGER_MS.to_string())
            .set("compression.type", "none")
            .set("partitioner", "murmur2_random")
            .create_with_context(Timing {
                latencies: Mutex::new(Vec::with_capacity(records)),
                failed: AtomicUsize::new(0),
            })
            .unwrap_or_else(|e| fail(&format!("rdkafka producer: {e}")))
    }

    /// Serves `producer`'s delivery reports until `stop`: `poll` returns as soon as a delivery
    /// report event is queued, so the callback runs when librdkafka hands the report over.
    pub(super) fn serve(producer: &BaseProducer<Timing>, stop: &AtomicBool) {
        while !stop.load(Ordering::Acquire) {
            producer.poll(Duration::from_millis(100));
        }
    }

    /// Sends `record` (retrying while librdkafka's queue is full).
    pub(super) fn send(
        producer: &BaseProducer<Timing>,
        mut record: BaseRecord<'_, str, [u8], usize>,
    ) {
        loop {
            match producer.send(record) {
                Ok(()) => return,
                Err((_, back)) => {
                    record = back;
                    std::thread::sleep(Duration::from_micros(100));
                }
            }
        }
    }

    /// One warm-up record to every partition, flushed: metadata, connections and every
    /// partition's queue exist before timing starts.
    pub(super) fn warm_up(producer: &BaseProducer<Timing>, topic: &str) {
        let warm = value(WARM_UP, 0);
        for partition in 0..PARTITIONS {
            let record = BaseRecord::with_opaque_to(topic, usize::MAX)
                .partition(partition)
                .payload(&warm[..]);
            send(producer, record);
        }
        producer
            .flush(Duration::from_secs(30))
            .unwrap_or_else(|e| fail(&format!("rdkafka warm-up flush: {e}")));
    }
}

#[cfg(feature = "peer")]
fn rdkafka_produce(bootstrap: &str, topic: &str, pace: Pace, keys: &[String]) -> Latency {
    use std::sync::atomic::AtomicBool;

    use rdkafka::producer::{BaseRecord, Producer};

    let producer = peer::producer(bootstrap, pace.records);
    let stop = AtomicBool::new(false);
    let late = std::thread::scope(|s| {
        s.spawn(|| peer::serve(&producer, &stop));
        peer::warm_up(&producer, topic);
        let value = [b'v'; VALUE_BYTES];
        let late = pace.run(|i| {
            let sent = now_ns();
            let record = BaseRecord::with_opaque_to(topic, sent as usize)
                .key(keys[i % AGGREGATES].as_str())
                .payload(&value[..]);
            peer::send(&producer, record);
        });
        producer
            .flush(Duration::from_secs(60))
            .unwrap_or_else(|e| fail(&format!("rdkafka flush: {e}")));
        stop.store(true, Ordering::Release);
        late
    });
    producer.poll(Duration::ZERO);
    let ctx = producer.context();
    let latencies = std::mem::take(&mut *ctx.latencies.lock().unwrap_or_else(|e| e.into_inner()));
    if latencies.len() != pace.records {
        fail(&format!(
            "rdkafka: {} of {} acknowledged, {} failed",
            latencies.len(),
            pace.records,
            ctx.failed.load(Ordering::Relaxed)
        ));
    }
    eprintln!(
        "  rdkafka produce at {} records/s: last tick {:.1} ms late",
        pace.rate,
        late.as_secs_f64() * 1e3
    );
    Latency::of(latencies)
}

/// End-to-end latency of rdkafka and its shutdown: its own producer (as in phase 1) writes to
/// a `BaseConsumer` in a group (auto commit on, `fetch.wait.max.ms` 500 as the bus's
/// `consumer.fetch_max_wait`) polled by a thread of its own. The shutdown is the consumer's
/// `unsubscribe`, then its close (`rd_kafka_consumer_close_queue`: the final auto commit and the
/// group's leave, polled in steps of 1 ms until `closed`), then its drop (`rd_kafka_destroy`,
/// which joins librdkafka's threads), then the producer's `flush` and drop. Clean means the
/// close and the flush returned `Ok` with no delivery failed.
#[cfg(feature = "peer")]
fn rdkafka_e2e(bootstrap: &str, topic: &str, group: &str, pace: Pace, keys: &[String]) -> Consumed {
    use std::sync::atomic::AtomicBool;

    use rdkafka::config::ClientConfig;
    use rdkafka::consumer::{BaseConsumer, Consumer};
    use rdkafka::message::Message as _;
    use rdkafka::producer::{BaseRecord, Producer};

    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", group)
        .set("auto.offset.reset", "earliest")
        .set("enable.auto.commit", "true")
        .set("fetch.wait.max.ms", FETCH_WAIT_MS.load(Ordering::Relaxed).to_string())
        .create()
        .unwrap_or_else(|e| fail(&format!("rdkafka consumer: {e}")));
    let producer = peer::producer(bootstrap, pace.records);
    let slots = Slots::new(pace.records);
    let (stop_consumer, stop_producer) = (AtomicBool::new(false), AtomicBool::new(false));
    let subscribed = Instant::now();
    consumer.subscribe(&[topic]).unwrap_or_else(|e| fail(&format!("rdkafka subscribe: {e}")));
    let (join, late) = std::thread::scope(|s| {
        s.spawn(|| {
            while !stop_consumer.load(Ordering::Acquire) {
                match consumer.poll(Duration::from_millis(100)) {
                    Some(Ok(message)) => slots.receive(message.payload().unwrap_or_default()),
                    Some(Err(e)) => eprintln!("rdkafka: {e}"),
                    None => {}
                }
            }
        });
        s.spawn(|| peer::serve(&producer, &stop_producer));
        peer::warm_up(&producer, topic);
        slots.wait("rdkafka: warm-up records", Duration::from_secs(60), |s| {
            s.warm.load(Ordering::Relaxed) >= PARTITIONS as usize
        });
        let join = subscribed.elapsed().as_secs_f64();
        let late = pace.run(|i| {
            let sent = now_ns();
            let value = value(i as u64, sent);
            let record = BaseRecord::with_opaque_to(topic, usize::MAX)
                .key(keys[i % AGGREGATES].as_str())
                .payload(&value[..]);
            peer::send(&producer, record);
        });
        slots.wait("rdkafka: records received", Duration::from_secs(60), |s| {
            s.count.load(Ordering::Relaxed) >= pace.records
        });
        stop_consumer.store(true, Ordering::Release);
        stop_producer.store(true, Ordering::Release);
        (join, late)
    });
    let started = Instant::now();
    consumer.unsubscribe();
    let unsubscribed = started.elapsed();
    // Closed by hand, served in steps of 1 ms: the crate's `Drop` would poll in steps of 100 ms
    // and add up to that to librdkafka's close.
    let closing = consumer.close_queue();
    while closing.is_ok() && !consumer.closed() {
        consumer.poll(Duration::from_millis(1));
    }
    let closed = started.elapsed();
    drop(consumer);
    let destroyed = started.elapsed();
    let flushed = producer.flush(Duration::from_secs(30));
    let failed = producer.context().failed.load(Ordering::Relaxed);
    drop(producer);
    let shutdown = started.elapsed().as_secs_f64();
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    eprintln!(
        "  rdkafka shutdown: unsubscribe {:.1} ms, consumer close {:.1} ms, consumer destroy \
         {:.1} ms, producer flush and destroy {:.1} ms",
        ms(unsubscribed),
        ms(closed - unsubscribed),
        ms(destroyed - closed),
        shutdown * 1e3 - ms(destroyed)
    );
    if let Err(e) = &closing {
        eprintln!("  rdkafka close: {e}");
    }
    let clean = closing.is_ok() && flushed.is_ok() && failed == 0;
    eprintln!(
        "  rdkafka e2e: joined in {join:.1} s, paced, last tick {:.1} ms late; shutdown {:.0} ms{}",
        late.as_secs_f64() * 1e3,
        shutdown * 1e3,
        if clean { ", clean" } else { ", NOT clean" }
    );
    Consumed { e2e: Latency::of(slots.latencies()), join, shutdown, clean }
}

/// Produce and end-to-end latency at a paced rate, and shutdown time, of the bus and rdkafka, on
/// one broker, in one process.
#[derive(Parser)]
struct Args {
    /// The broker, `host:port`.
    #[arg(long)]
    bootstrap: String,
    /// Records per second offered, paced in 1 ms ticks.
    #[arg(long, default_value_t = 20_000, value_parser = bus_bench::positive)]
    rate: usize,
    /// Records per second of the lone-records phase (each record a batch of its own).
    #[arg(long, default_value_t = 200, value_parser = bus_bench::positive)]
    lone_rate: usize,
    /// Seconds each paced phase lasts.
    #[arg(long, default_value_t = 5.0)]
    seconds: f64,
    /// Rounds (each runs both clients, alternating which goes first).
    #[arg(long, default_value_t = 3, value_parser = bus_bench::positive)]
    rounds: usize,
    /// How long the consumers let the broker hold a fetch, in milliseconds (both clients'
    /// default: 500).
    #[arg(long, default_value_t = 500)]
    fetch_wait_ms: u64,
}

fn main() {
    let Args { bootstrap, rate, lone_rate, seconds, rounds, fetch_wait_ms } = Args::parse();
    FETCH_WAIT_MS.store(fetch_wait_ms, Ordering::Relaxed);
    let pace = Pace { rate, records: ((rate as f64 * seconds) as usize).max(1) };
    let lone = Pace { rate: lone_rate, records: ((lone_rate as f64 * seconds) as usize).max(1) };
    let _ = epoch();
    let runtime = bus_bench::runtime();
    let (key_strings, key_bytes) = bus_bench::keys();
    let admin = bus_bench::admin(&runtime, &bootstrap);
    let run_id = std::process::id();
    let (mut ours, mut theirs) = (Vec::new(), Vec::new());
    for round in 0..rounds {
        let topic =
            |client: &str, phase: &str| format!("bench-latency-{client}-{phase}-{run_id}-{round}");
        for client in ["bus", "rdkafka"] {
            for phase in ["produce", "produce-1", "lone", "e2e"] {
                let topic = topic(client, phase);
                runtime
                    .block_on(admin.ensure_topic(&topic, PARTITIONS))
                    .unwrap_or_else(|e| fail(&format!("topic {topic}: {e}")));
            }
        }
        let run_bus = |ours: &mut Vec<Round>| {
            eprintln!("round {round}: bus");
            // The two windows alternate which goes first, round by round.
            let window = |in_flight: usize| {
                let topic = topic("bus", if in_flight == 1 { "produce-1" } else { "produce" });
                bus_produce(&runtime, &bootstrap, &topic, pace, &key_bytes, in_flight)
            };
            let (produce, produce_one) = if round % 2 == 0 {
                let five = window(5);
                (five, window(1))
            } else {
                let one = window(1);
                (window(5), one)
            };
            let lone =
                bus_produce(&runtime, &bootstrap, &topic("bus", "lone"), lone, &key_bytes, 5);
            let group = format!("bench-latency-bus-{run_id}-{round}");
            let Consumed { e2e, join, shutdown, clean } =
                bus_e2e(&runtime, &bootstrap, &topic("bus", "e2e"), &group, pace, &key_bytes);
            report(&produce, &lone, &e2e);
            eprintln!("  produce, one in flight: {}", figures(&produce_one));
            ours.push(Round { produce, produce_one, lone, e2e, join, shutdown, clean });
        };
        let run_rdkafka = |theirs: &mut Vec<Round>| {
            eprintln!("round {round}: rdkafka");
            let produce =
                rdkafka_produce(&bootstrap, &topic("rdkafka", "produce"), pace, &key_strings);
            let lone = rdkafka_produce(&bootstrap, &topic("rdkafka", "lone"), lone, &key_strings);
            let group = format!("bench-latency-rdkafka-{run_id}-{round}");
            let Consumed { e2e, join, shutdown, clean } =
                rdkafka_e2e(&bootstrap, &topic("rdkafka", "e2e"), &group, pace, &key_strings);
            report(&produce, &lone, &e2e);
            let produce_one = Latency::default();
            theirs.push(Round { produce, produce_one, lone, e2e, join, shutdown, clean });
        };
        if round % 2 == 0 {
            run_bus(&mut ours);
            run_rdkafka(&mut theirs);
        } else {
            run_rdkafka(&mut theirs);
            run_bus(&mut ours);
        }
    }
    print_tables(pace, lone, rounds, &ours, &theirs);
}

/// A latency's percentiles in words.
fn figures(latency: &Latency) -> String {
    let [p50, p99, p999, max] = latency.figures();
    format!("p50 {p50:.2} ms, p99 {p99:.2} ms, p99.9 {p999:.2} ms, max {max:.2} ms")
}

/// One client's round on stderr.
fn report(produce: &Latency, lone: &Latency, e2e: &Latency) {
    let ms = figures;
    eprintln!("  produce {}\n  lone    {}\n  e2e     {}", ms(produce), ms(lone), ms(e2e));
}

fn print_tables(pace: Pace, lone: Pace, rounds: usize, ours: &[Round], theirs: &[Round]) {
    let librdkafka = librdkafka_version();
    let bus_name = "bus-kafka (`publish_nowait`; `subscribe`, defaults)";
    let rdkafka_name =
        format!("rdkafka 0.39 BaseProducer / BaseConsumer (librdkafka {librdkafka})");
    println!(
        "{} records/s of {VALUE_BYTES} bytes for {:.0} s ({} records), sent in ticks of {} ms, \
         keys over {AGGREGATES} aggregates, {PARTITIONS} partitions, acks all, both producers \
         idempotent, linger {LINGER_MS} ms, consumers' fetch wait {} ms, fresh topics; each \
         percentile the median of {rounds} round(s), clients alternating first. Lone records: \
         the produce phase at {} records/s ({} records), so that each record is a batch of its \
         own (what the linger alone costs).\n",
        pace.rate,
        pace.seconds(),
        pace.records,
        TICK.as_millis(),
        FETCH_WAIT_MS.load(Ordering::Relaxed),
        lone.rate,
        lone.records
    );
    println!("| latency | client | p50 | p99 | p99.9 | max |");
    println!("|---|---|---:|---:|---:|---:|");
    let produce = |rounds: &[Round]| rounds.iter().map(|r| r.produce).collect::<Vec<_>>();
    let lone = |rounds: &[Round]| rounds.iter().map(|r| r.lone).collect::<Vec<_>>();
    let e2e = |rounds: &[Round]| rounds.iter().map(|r| r.e2e).collect::<Vec<_>>();
    let phases = [
        ("produce: send to acknowledgement", produce(ours), produce(theirs)),
        ("produce, lone records", lone(ours), lone(theirs)),
        ("end to end: send to consumer's receipt", e2e(ours), e2e(theirs)),
    ];
    for (caption, bus, peer) in phases {
        let (bus, peer) = (Latency::median(&bus), Latency::median(&peer));
        let cells = |l: &Latency| l.figures().map(|v| format!("{v:.2} ms")).join(" | ");
        println!("| {caption} | {bus_name} | {} |", cells(&bus));
        println!("| | {rdkafka_name} | {} |", cells(&peer));
        let ratios: Vec<String> = bus
            .figures()
            .iter()
            .zip(peer.figures())
            .map(|(b, p)| format!("{:.2}x", b / p))
            .collect();
        println!("| | **ratio bus / rdkafka** | {} |", ratios.join(" | "));
        if caption.starts_with("produce: ") {
            // The same phase with one request in flight per partition: what the window buys.
            let one = Latency::median(&ours.iter().map(|r| r.produce_one).collect::<Vec<_>>());
            println!(
                "| | bus-kafka, one request in flight per partition (`producer.max_in_flight = \
                 1`) | {} |",
                cells(&one)
            );
            let ratios: Vec<String> = bus
                .figures()
                .iter()
                .zip(one.figures())
                .map(|(five, one)| format!("{:.2}x", five / one))
                .collect();
            println!("| | **ratio bus 5 in flight / 1 in flight** | {} |", ratios.join(" | "));
        }
    }
    let median = |rounds: &[Round], f: fn(&Round) -> f64| median_of(rounds.iter().map(f).collect());
    let clean = |rounds: &[Round]| {
        format!("{} of {}", rounds.iter().filter(|r| r.clean).count(), rounds.len())
    };
    println!(
        "\nShutdown after the end-to-end phase (median of {rounds} round(s)); the group join \
         before it, for scale (subscribe to a warm-up record received on every partition).\n"
    );
    println!("| client | shutdown includes | shutdown | clean | group join |");
    println!("|---|---|---:|---:|---:|");
    let (bus_down, peer_down) = (median(ours, |r| r.shutdown), median(theirs, |r| r.shutdown));
    println!(
        "| bus-kafka | `EventBus::shutdown(30 s)`: stop fetching, drain handlers, commit, leave \
         the group, flush the producer, join every task | {:.1} ms | {} | {:.1} s |",
        bus_down * 1e3,
        clean(ours),
        median(ours, |r| r.join)
    );
    println!(
        "| rdkafka | consumer `unsubscribe`, close (final auto commit, leave the group), drop \
         (destroy), producer `flush` and drop | {:.1} ms | {} | {:.1} s |",
        peer_down * 1e3,
        clean(theirs),
        median(theirs, |r| r.join)
    );
    println!(
        "| **ratio bus / rdkafka** | | {:.2}x | | {:.2}x |",
        bus_down / peer_down,
        median(ours, |r| r.join) / median(theirs, |r| r.join)
    );
}
