//! The consume benchmark of issue 5: group consume through the bus (consumer group, keyed
//! dispatch, commits) against rdkafka's `BaseConsumer` in a group, on the same broker and the
//! same records, in one process; and the keyed dispatch's parallelism with 1 ms handlers.
//!
//! Owns: the workload (N records of 100 bytes, keys over 1,000 aggregates, 6 partitions,
//! written once by the bus's producer; each client reads all of them in a fresh group), the
//! measurement (messages per second from the first record handled to the last, the join time
//! separately, process CPU time from `/proc/self/stat` from subscribing to the last record) and
//! the tables it prints on stdout (progress goes to stderr).
//!
//! Counting costs each client alike: rdkafka's poll loop counts in a local variable; the bus's
//! handlers, which run on every runtime thread at once, count on a stripe of their own thread
//! (no contended cache line), summed by a watcher every millisecond (the last record's time is
//! known to within that millisecond).
//!
//! Usage: `consume-bench --bootstrap HOST:PORT [--records N] [--rounds R] [--keyed-records M]
//! [--partitions P]`. Build with `--features peer` for the rdkafka side. Each round runs both
//! clients (alternating which goes first); the table shows the median round of each, and the
//! most sockets each held at the end of a round (its connections to the brokers).

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use bus_bench::{
    AGGREGATES, PARTITIONS, Phase, VALUE_BYTES, fail, librdkafka_version, median, open_sockets,
    process_cpu,
};
use bus_core::{HandlerError, Message, Record, SubscribeOptions};
use bytes::Bytes;
use clap::Parser;

/// Writes `records` records (keys over [`AGGREGATES`] aggregates) to `topic` with the bus.
async fn fill(bootstrap: &str, topic: &str, records: usize) {
    let bus = bus_kafka::connect(bus_bench::config(bootstrap))
        .await
        .unwrap_or_else(|e| fail(&format!("bus: {e}")));
    let value = Bytes::from(vec![b'v'; VALUE_BYTES]);
    let (_, keys) = bus_bench::keys();
    let mut pending = std::collections::VecDeque::new();
    for i in 0..records {
        let record = Record::new(topic, value.clone()).with_key(keys[i % AGGREGATES].clone());
        let delivery =
            bus.publish_nowait(record).await.unwrap_or_else(|e| fail(&format!("publish: {e}")));
        pending.push_back(delivery);
        if pending.len() >= 100_000
            && let Some(front) = pending.pop_front()
        {
            front.await.unwrap_or_else(|e| fail(&format!("delivery: {e}")));
        }
    }
    for delivery in pending {
        delivery.await.unwrap_or_else(|e| fail(&format!("delivery: {e}")));
    }
    if let Err(e) = bus.shutdown(Duration::from_secs(60)).await {
        fail(&format!("bus shutdown: {e}"));
    }
}

/// The first and the `target`-th record of the keyed phase (1 ms handlers: a shared counter is
/// cheap enough there).
struct Progress {
    count: AtomicUsize,
    target: usize,
    first: Mutex<Option<Instant>>,
    last: Mutex<Option<Instant>>,
    done: tokio::sync::Notify,
}

impl Progress {
    fn new(target: usize) -> Arc<Progress> {
        Arc::new(Progress {
            count: AtomicUsize::new(0),
            target,
            first: Mutex::new(None),
            last: Mutex::new(None),
            done: tokio::sync::Notify::new(),
        })
    }

    fn span(&self) -> (Instant, Instant) {
        let first =
            self.first.lock().unwrap_or_else(|e| e.into_inner()).unwrap_or_else(Instant::now);
        let last = self.last.lock().unwrap_or_else(|e| e.into_inner()).unwrap_or_else(Instant::now);
        (first, last)
    }
}

/// A count bumped by handlers on every runtime thread: one stripe (cache line) per thread.
struct Striped {
    stripes: [Stripe; 16],
    first: OnceLock<Instant>,
}

#[derive(Default)]
#[repr(align(128))]
struct Stripe(AtomicUsize);

static NEXT_STRIPE: AtomicUsize = AtomicUsize::new(0);

thread_local! {
    static STRIPE: usize = NEXT_STRIPE.fetch_add(1, Ordering::Relaxed) % 16;
}

impl Striped {
    fn new() -> Arc<Striped> {
        Arc::new(Striped { stripes: Default::default(), first: OnceLock::new() })
    }

    fn record(&self) {
        if self.first.get().is_none() {
            let _ = self.first.set(Instant::now());
        }
        let stripe = STRIPE.with(|s| *s);
        self.stripes[stripe].0.fetch_add(1, Ordering::Relaxed);
    }

    fn count(&self) -> usize {
        self.stripes.iter().map(|s| s.0.load(Ordering::Relaxed)).sum()
    }
}

async fn bus_phase(bootstrap: &str, topic: &str, records: usize, group: &str) -> (Phase, usize) {
    let bus = bus_kafka::connect(bus_bench::config(bootstrap))
        .await
        .unwrap_or_else(|e| fail(&format!("bus: {e}")));
    let progress = Striped::new();
    let handler_progress = Arc::clone(&progress);
    let cpu = process_cpu();
    let subscribed = Instant::now();
    let subscription = bus
        .subscribe(topic, SubscribeOptions::new(group), move |_message: Message| {
            handler_progress.record();
            std::future::ready(Ok::<(), HandlerError>(()))
        })
        .await
        .unwrap_or_else(|e| fail(&format!("subscribe: {e}")));
    let deadline = Instant::now() + Duration::from_secs(600);
    // Coarse while the group forms (about 3 s), every millisecond once records flow.
    while progress.first.get().is_none() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let mut tick = tokio::time::interval(Duration::from_millis(1));
    let last = loop {
        tick.tick().await;
        if progress.count() >= records {
            break Instant::now();
        }
        if Instant::now() > deadline {
            fail(&format!("bus: {} of {records} records within 600 s", progress.count()));
        }
    };
    let cpu_seconds = process_cpu() - cpu;
    let sockets = open_sockets();
    let first = progress.first.get().copied().unwrap_or(last);
    let _ = subscription.unsubscribe(Duration::from_secs(30)).await;
    if let Err(e) = bus.shutdown(Duration::from_secs(30)).await {
        fail(&format!("bus shutdown: {e}"));
    }
    let phase = Phase {
        seconds: (last - first).as_secs_f64(),
        join_seconds: (first - subscribed).as_secs_f64(),
        cpu_seconds,
        records,
    };
    (phase, sockets)
}

#[cfg(not(feature = "peer"))]
fn rdkafka_phase(_bootstrap: &str, _topic: &str, _records: usize, _group: &str) -> (Phase, usize) {
    fail("built without the rdkafka peer: build with `--features peer`")
}

#[cfg(feature = "peer")]
fn rdkafka_phase(bootstrap: &str, topic: &str, records: usize, group: &str) -> (Phase, usize) {
    use rdkafka::config::ClientConfig;
    use rdkafka::consumer::{BaseConsumer, Consumer};

    let mut client = ClientConfig::new();
    bus_bench::secure_rdkafka(&mut client);
    let consumer: BaseConsumer = client
        .set("bootstrap.servers", bootstrap)
        .set("group.id", group)
        .set("auto.offset.reset", "earliest")
        .set("enable.auto.commit", "true")
        .create()
        .unwrap_or_else(|e| fail(&format!("rdkafka consumer: {e}")));
    let cpu = process_cpu();
    let subscribed = Instant::now();
    consumer.subscribe(&[topic]).unwrap_or_else(|e| fail(&format!("rdkafka subscribe: {e}")));
    let mut count = 0usize;
    let mut first = None;
    let deadline = Instant::now() + Duration::from_secs(600);
    while count < records {
        if Instant::now() > deadline {
            fail(&format!("rdkafka: {count} of {records} records within 600 s"));
        }
        match consumer.poll(Duration::from_millis(100)) {
            Some(Ok(_message)) => {
                if first.is_none() {
                    first = Some(Instant::now());
                }
                count += 1;
            }
            Some(Err(e)) => eprintln!("rdkafka: {e}"),
            None => {}
        }
    }
    let last = Instant::now();
    let cpu_seconds = process_cpu() - cpu;
    let sockets = open_sockets();
    let first = first.unwrap_or(last);
    drop(consumer);
    let phase = Phase {
        seconds: (last - first).as_secs_f64(),
        join_seconds: (first - subscribed).as_secs_f64(),
        cpu_seconds,
        records,
    };
    (phase, sockets)
}

/// What the keyed phase measured.
#[derive(Debug, Clone, Copy)]
struct Keyed {
    concurrency: usize,
    records: usize,
    /// First handler start to last handler end.
    actual: f64,
    /// The handlers' measured running time in all.
    busy: f64,
}

impl Keyed {
    /// The ideal time from the measured handler times: their sum over the concurrency.
    fn ideal(&self) -> f64 {
        self.busy / self.concurrency as f64
    }
    /// The ideal time if every handler took its nominal 1 ms.
    fn nominal(&self) -> f64 {
        self.records as f64 * 1e-3 / self.concurrency as f64
    }
    fn mean_ms(&self) -> f64 {
        self.busy * 1e3 / self.records as f64
    }
}

/// Keyed dispatch with 1 ms handlers: the handlers' total running time over `concurrency`
/// (the ideal) against the time from the first handler's start to the last one's end.
async fn keyed_phase(bootstrap: &str, topic: &str, records: usize, concurrency: usize) -> Keyed {
    let bus = bus_kafka::connect(bus_bench::config(bootstrap))
        .await
        .unwrap_or_else(|e| fail(&format!("bus: {e}")));
    let progress = Progress::new(records);
    let busy_ns = Arc::new(AtomicU64::new(0));
    let (handler_progress, handler_busy) = (Arc::clone(&progress), Arc::clone(&busy_ns));
    let group = format!("bench-keyed-{}-{concurrency}", std::process::id());
    let options = SubscribeOptions::new(group).with_concurrency(concurrency);
    let subscription = bus
        .subscribe(topic, options, move |_message: Message| {
            let progress = Arc::clone(&handler_progress);
            let busy = Arc::clone(&handler_busy);
            async move {
                let started = Instant::now();
                if progress.count.load(Ordering::Relaxed) == 0 {
                    let mut first = progress.first.lock().unwrap_or_else(|e| e.into_inner());
                    if first.is_none() {
                        *first = Some(started);
                    }
                }
                tokio::time::sleep(Duration::from_millis(1)).await;
                let took = u64::try_from(started.elapsed().as_nanos()).unwrap_or(u64::MAX);
                busy.fetch_add(took, Ordering::Relaxed);
                let n = progress.count.fetch_add(1, Ordering::Relaxed) + 1;
                if n == progress.target {
                    *progress.last.lock().unwrap_or_else(|e| e.into_inner()) = Some(Instant::now());
                    progress.done.notify_one();
                }
                Ok::<(), HandlerError>(())
            }
        })
        .await
        .unwrap_or_else(|e| fail(&format!("subscribe: {e}")));
    if tokio::time::timeout(Duration::from_secs(600), progress.done.notified()).await.is_err() {
        fail("keyed: not done within 600 s");
    }
    let (first, last) = progress.span();
    let _ = subscription.unsubscribe(Duration::from_secs(30)).await;
    let _ = bus.shutdown(Duration::from_secs(30)).await;
    let keyed = Keyed {
        concurrency,
        records,
        actual: (last - first).as_secs_f64(),
        busy: busy_ns.load(Ordering::Relaxed) as f64 / 1e9,
    };
    eprintln!(
        "keyed, concurrency {concurrency}: {records} records in {:.2} s; handlers ran {:.2} s \
         in total (mean {:.2} ms); ideal {:.2} s ({:.0}%), nominal {:.2} s ({:.0}%)",
        keyed.actual,
        keyed.busy,
        keyed.mean_ms(),
        keyed.ideal(),
        keyed.ideal() / keyed.actual * 100.0,
        keyed.nominal(),
        keyed.nominal() / keyed.actual * 100.0
    );
    keyed
}

/// Group consume through the bus against rdkafka's consumer, and keyed dispatch with 1 ms
/// handlers, on one broker, in one process.
#[derive(Parser)]
struct Args {
    /// The broker, `host:port`.
    #[arg(long)]
    bootstrap: String,
    /// Records in the topic each client reads per round.
    #[arg(long, default_value_t = 1_000_000, value_parser = bus_bench::positive)]
    records: usize,
    /// Rounds (each runs both clients, alternating which goes first).
    #[arg(long, default_value_t = 5, value_parser = bus_bench::positive)]
    rounds: usize,
    /// Records of the keyed-dispatch phase.
    #[arg(long, default_value_t = 20_000, value_parser = bus_bench::positive)]
    keyed_records: usize,
    /// One phase alone, for profiling (no table).
    #[arg(long, value_parser = ["bus", "rdkafka", "keyed"])]
    only: Option<String>,
    /// An already filled topic of `--records` records to read (for profiling the consume
    /// phase alone).
    #[arg(long)]
    topic: Option<String>,
    /// The connections' security (both clients).
    #[command(flatten)]
    security: bus_bench::Security,
    /// Install a metrics recorder (Prometheus, no listener) first: the bus's metrics are
    /// recorded, to measure their cost against a run without.
    #[arg(long)]
    metrics: bool,
    /// The partitions of the throughput phase's topic.
    #[arg(long, default_value_t = PARTITIONS, value_parser = clap::value_parser!(i32).range(1..=10_000))]
    partitions: i32,
}

fn main() {
    let Args {
        bootstrap,
        records,
        rounds,
        keyed_records,
        only,
        topic: existing,
        security,
        metrics,
        partitions,
    } = Args::parse();
    let recorder = metrics.then(bus_bench::install_metrics_recorder);
    let over = security.describe();
    security.install();
    let runtime = bus_bench::runtime();
    let admin = bus_bench::admin(&runtime, &bootstrap);
    let run_id = std::process::id();
    let (mut ours, mut theirs) = (Vec::new(), Vec::new());
    let throughput = only.as_deref().is_none_or(|o| o == "bus" || o == "rdkafka");
    if throughput {
        let topic = match existing {
            Some(topic) => topic,
            None => {
                let topic = format!("bench-consume-{run_id}");
                runtime
                    .block_on(admin.ensure_topic(&topic, partitions))
                    .unwrap_or_else(|e| fail(&format!("topic {topic}: {e}")));
                eprintln!("writing {records} records to {topic}");
                runtime.block_on(fill(&bootstrap, &topic, records));
                topic
            }
        };
        for round in 0..rounds {
            let run_bus = |ours: &mut Vec<(Phase, usize)>| {
                let group = format!("bench-consume-bus-{run_id}-{round}");
                let (phase, sockets) =
                    runtime.block_on(bus_phase(&bootstrap, &topic, records, &group));
                eprintln!(
                    "round {round}: bus     {:>10.0} msgs/s, {:.2} us CPU/msg, joined in {:.1} s, \
                     {sockets} sockets",
                    phase.rate(),
                    phase.cpu_us_per_msg(),
                    phase.join_seconds
                );
                ours.push((phase, sockets));
            };
            let run_rdkafka = |theirs: &mut Vec<(Phase, usize)>| {
                let group = format!("bench-consume-rdkafka-{run_id}-{round}");
                let (phase, sockets) = rdkafka_phase(&bootstrap, &topic, records, &group);
                eprintln!(
                    "round {round}: rdkafka {:>10.0} msgs/s, {:.2} us CPU/msg, joined in {:.1} s, \
                     {sockets} sockets",
                    phase.rate(),
                    phase.cpu_us_per_msg(),
                    phase.join_seconds
                );
                theirs.push((phase, sockets));
            };
            match only.as_deref() {
                Some("bus") => run_bus(&mut ours),
                Some("rdkafka") => run_rdkafka(&mut theirs),
                _ if round % 2 == 0 => {
                    run_bus(&mut ours);
                    run_rdkafka(&mut theirs);
                }
                _ => {
                    run_rdkafka(&mut theirs);
                    run_bus(&mut ours);
                }
            }
        }
    }
    let mut keyed = Vec::new();
    if only.as_deref().is_none_or(|o| o == "keyed") {
        let topic = format!("bench-keyed-{run_id}");
        runtime
            .block_on(admin.ensure_topic(&topic, PARTITIONS))
            .unwrap_or_else(|e| fail(&format!("topic {topic}: {e}")));
        runtime.block_on(fill(&bootstrap, &topic, keyed_records));
        for concurrency in [16, 64] {
            keyed.push(runtime.block_on(keyed_phase(
                &bootstrap,
                &topic,
                keyed_records,
                concurrency,
            )));
        }
    }
    if let Some(recorder) = &recorder {
        let rendered = recorder.render();
        let series = rendered.lines().filter(|l| l.starts_with("bus_")).count();
        eprintln!("metrics recorder installed: {series} bus_ series rendered at the end");
    }
    if only.is_some() {
        return;
    }
    let most = |phases: &[(Phase, usize)]| phases.iter().map(|p| p.1).max().unwrap_or(0);
    let (our_sockets, their_sockets) = (most(&ours), most(&theirs));
    let (ours, theirs) = (
        median(ours.into_iter().map(|p| p.0).collect()),
        median(theirs.into_iter().map(|p| p.0).collect()),
    );
    let librdkafka = librdkafka_version();
    println!(
        "{records} records of {VALUE_BYTES} bytes, keys over {AGGREGATES} aggregates, \
         {partitions} partitions, each client in a fresh consumer group from the earliest \
         offset{over}, no-op handler; rate from the first record to the last, join time apart; \
         median of {rounds} round(s), clients alternating first.\n"
    );
    println!("| client | msgs/s | client CPU per message | join | sockets at the end |");
    println!("|---|---:|---:|---:|---:|");
    println!(
        "| bus-kafka group consume (own Fetch, keyed dispatch, defaults) | {:.0} | {:.2} us | \
         {:.1} s | {our_sockets} |",
        ours.rate(),
        ours.cpu_us_per_msg(),
        ours.join_seconds
    );
    println!(
        "| rdkafka 0.39 BaseConsumer (librdkafka {librdkafka}) | {:.0} | {:.2} us | {:.1} s | \
         {their_sockets} |",
        theirs.rate(),
        theirs.cpu_us_per_msg(),
        theirs.join_seconds
    );
    println!(
        "| **ratio bus / rdkafka** (target: rate >= 1.2, CPU <= 0.8) | {:.2}x | {:.2}x | | |",
        ours.rate() / theirs.rate(),
        ours.cpu_us_per_msg() / theirs.cpu_us_per_msg()
    );
    println!(
        "\nKeyed dispatch on Kafka, {keyed_records} records over {AGGREGATES} keys, 1 ms handlers \
         (`tokio::time::sleep`), one round per concurrency: time from the first handler's start \
         to the last one's end, against the ideal (the handlers' measured running time divided by \
         the concurrency; tokio's 1 ms sleep takes longer than 1 ms) and the nominal ideal (1 ms \
         per handler). Target: at least 90% of the ideal.\n"
    );
    println!(
        "| concurrency | handler mean | actual | ideal (measured) | % of ideal | ideal (nominal 1 ms) | % of nominal |"
    );
    println!("|---:|---:|---:|---:|---:|---:|---:|");
    for k in keyed {
        println!(
            "| {} | {:.2} ms | {:.2} s | {:.2} s | {:.0}% | {:.2} s | {:.0}% |",
            k.concurrency,
            k.mean_ms(),
            k.actual,
            k.ideal(),
            k.ideal() / k.actual * 100.0,
            k.nominal(),
            k.nominal() / k.actual * 100.0
        );
    }
}
