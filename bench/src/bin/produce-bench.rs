//! `cargo xtask bench produce`: the bus's Kafka producer against rdkafka's `BaseProducer`
//! (vendored librdkafka) on the same broker, in one process, phase by phase.
//!
//! Owns: the workload (N records of 100 bytes, keys over 1,000 aggregates, 6 partitions, acks
//! all, linger 5 ms, no compression, both producers idempotent: the bus's default with 5
//! requests in flight per broker connection (and per partition), rdkafka's `enable.idempotence`
//! with its default of 5 per connection), the measurement (wall time from the first send to the
//! last acknowledgement; process CPU time from `/proc/self/stat` around each phase; the sockets
//! the process holds at the end of a phase, before the client closes) and the table it prints
//! on stdout (progress goes to stderr).
//!
//! Usage: `produce-bench --bootstrap HOST:PORT [--records N] [--rounds R] [--partitions P]
//! [--at-least-once]`.
//! Each round runs both clients (alternating which goes first) on fresh topics; the table shows
//! the median round. `--at-least-once` turns idempotence off in both (the bus then has one
//! request in flight per partition).

#[cfg(feature = "peer")]
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bus_bench::{
    AGGREGATES, PARTITIONS, Phase, VALUE_BYTES, fail, librdkafka_version, median, open_sockets,
    process_cpu,
};
use bus_core::Record;
use bytes::Bytes;
use clap::Parser;
#[cfg(feature = "peer")]
use rdkafka::ClientContext;
#[cfg(feature = "peer")]
use rdkafka::config::ClientConfig;
#[cfg(feature = "peer")]
use rdkafka::producer::{BaseProducer, BaseRecord, DeliveryResult, Producer, ProducerContext};

#[cfg(feature = "peer")]
struct Counting {
    acked: AtomicU64,
    failed: AtomicU64,
}

#[cfg(feature = "peer")]
impl ClientContext for Counting {}

#[cfg(feature = "peer")]
impl ProducerContext for Counting {
    type DeliveryOpaque = ();

    fn delivery(&self, result: &DeliveryResult<'_>, _opaque: ()) {
        match result {
            Ok(_) => self.acked.fetch_add(1, Ordering::Relaxed),
            Err(_) => self.failed.fetch_add(1, Ordering::Relaxed),
        };
    }
}

#[cfg(not(feature = "peer"))]
fn rdkafka_phase(
    _bootstrap: &str,
    _topic: &str,
    _records: usize,
    _keys: &[String],
    _idempotence: bool,
) -> (Phase, usize) {
    fail(
        "built without the rdkafka peer: run `cargo xtask bench produce` (it passes --features peer)",
    )
}

#[cfg(feature = "peer")]
fn rdkafka_phase(
    bootstrap: &str,
    topic: &str,
    records: usize,
    keys: &[String],
    idempotence: bool,
) -> (Phase, usize) {
    let mut client = ClientConfig::new();
    bus_bench::secure_rdkafka(&mut client);
    let producer: BaseProducer<Counting> = client
        .set("bootstrap.servers", bootstrap)
        .set("enable.idempotence", idempotence.to_string())
        .set("acks", "all")
        .set("linger.ms", "5")
        .set("compression.type", "none")
        .set("partitioner", "murmur2_random")
        // The same 32 MiB of buffered records as the bus's default producer.buffer_bytes, and
        // no count limit below it (librdkafka's default of 100,000 messages would throttle it).
        .set("queue.buffering.max.kbytes", "32768")
        .set("queue.buffering.max.messages", "1000000")
        .create_with_context(Counting { acked: AtomicU64::new(0), failed: AtomicU64::new(0) })
        .unwrap_or_else(|e| fail(&format!("rdkafka producer: {e}")));
    // Metadata first, outside the measurement (as the bus resolves the topic on first send).
    let _ = producer.client().fetch_metadata(Some(topic), Duration::from_secs(30));
    let value = [b'v'; VALUE_BYTES];
    let cpu = process_cpu();
    let started = Instant::now();
    for i in 0..records {
        let mut record =
            BaseRecord::to(topic).key(keys[i % AGGREGATES].as_str()).payload(&value[..]);
        loop {
            match producer.send(record) {
                Ok(()) => break,
                Err((_, back)) => {
                    // Queue full: serve delivery reports, then try again.
                    record = back;
                    producer.poll(Duration::from_millis(1));
                }
            }
        }
        if i % 1024 == 0 {
            producer.poll(Duration::ZERO);
        }
    }
    producer
        .flush(Duration::from_secs(120))
        .unwrap_or_else(|e| fail(&format!("rdkafka flush: {e}")));
    producer.poll(Duration::ZERO);
    let seconds = started.elapsed().as_secs_f64();
    let cpu_seconds = process_cpu() - cpu;
    let sockets = open_sockets();
    let ctx = producer.context();
    let acked = ctx.acked.load(Ordering::Relaxed) as usize;
    if acked != records {
        fail(&format!(
            "rdkafka: {acked} of {records} acknowledged, {} failed",
            ctx.failed.load(Ordering::Relaxed)
        ));
    }
    (Phase { seconds, join_seconds: 0.0, cpu_seconds, records }, sockets)
}

async fn bus_phase(
    bootstrap: &str,
    topic: &str,
    records: usize,
    keys: &[Bytes],
    idempotence: bool,
) -> (Phase, usize) {
    let mut config = bus_bench::config(bootstrap);
    config.producer.linger = Duration::from_millis(5);
    config.producer.idempotence = idempotence;
    let bus = bus_kafka::connect(config).await.unwrap_or_else(|e| fail(&format!("bus: {e}")));
    // Resolve the topic outside the measurement.
    bus.publish(Record::new(topic, "warm-up")).await.unwrap_or_else(|e| fail(&format!("bus: {e}")));
    let value = Bytes::from(vec![b'v'; VALUE_BYTES]);
    let window = 250_000;
    let mut pending = std::collections::VecDeque::with_capacity(window);
    let mut acked = 0usize;
    let cpu = process_cpu();
    let started = Instant::now();
    for i in 0..records {
        let record = Record::new(topic, value.clone()).with_key(keys[i % AGGREGATES].clone());
        let delivery =
            bus.publish_nowait(record).await.unwrap_or_else(|e| fail(&format!("bus publish: {e}")));
        pending.push_back(delivery);
        if pending.len() >= window
            && let Some(front) = pending.pop_front()
        {
            front.await.unwrap_or_else(|e| fail(&format!("bus delivery: {e}")));
            acked += 1;
        }
    }
    for delivery in pending {
        delivery.await.unwrap_or_else(|e| fail(&format!("bus delivery: {e}")));
        acked += 1;
    }
    let seconds = started.elapsed().as_secs_f64();
    let cpu_seconds = process_cpu() - cpu;
    let sockets = open_sockets();
    if acked != records {
        fail(&format!("bus: {acked} of {records} acknowledged"));
    }
    if let Err(e) = bus.shutdown(Duration::from_secs(30)).await {
        fail(&format!("bus shutdown: {e}"));
    }
    (Phase { seconds, join_seconds: 0.0, cpu_seconds, records }, sockets)
}

/// The bus's Kafka producer against rdkafka's, on one broker, in one process.
#[derive(Parser)]
struct Args {
    /// The broker, `host:port`.
    #[arg(long)]
    bootstrap: String,
    /// Records each client produces per round.
    #[arg(long, default_value_t = 1_000_000, value_parser = bus_bench::positive)]
    records: usize,
    /// Rounds (each runs both clients, alternating which goes first).
    #[arg(long, default_value_t = 5, value_parser = bus_bench::positive)]
    rounds: usize,
    /// One client alone, for profiling (no table).
    #[arg(long, value_parser = ["bus", "rdkafka"])]
    only: Option<String>,
    /// The connections' security (both clients).
    #[command(flatten)]
    security: bus_bench::Security,
    /// Install a metrics recorder (Prometheus, no listener) first: the bus's metrics are
    /// recorded, to measure their cost against a run without.
    #[arg(long)]
    metrics: bool,
    /// Both producers without idempotence (at least once).
    #[arg(long)]
    at_least_once: bool,
    /// The topic's partitions.
    #[arg(long, default_value_t = PARTITIONS, value_parser = clap::value_parser!(i32).range(1..=10_000))]
    partitions: i32,
}

fn main() {
    let Args { bootstrap, records, rounds, only, security, at_least_once, metrics, partitions } =
        Args::parse();
    let recorder = metrics.then(bus_bench::install_metrics_recorder);
    let over = security.describe();
    security.install();
    let idempotence = !at_least_once;
    let runtime = bus_bench::runtime();
    let (key_strings, key_bytes) = bus_bench::keys();
    let admin = bus_bench::admin(&runtime, &bootstrap);
    let run_id = std::process::id();
    let (mut ours, mut theirs) = (Vec::new(), Vec::new());
    for round in 0..rounds {
        let topics =
            [format!("bench-bus-{run_id}-{round}"), format!("bench-rdkafka-{run_id}-{round}")];
        for topic in &topics {
            runtime
                .block_on(admin.ensure_topic(topic, partitions))
                .unwrap_or_else(|e| fail(&format!("topic {topic}: {e}")));
        }
        let run_bus = |ours: &mut Vec<(Phase, usize)>| {
            let (phase, sockets) = runtime.block_on(bus_phase(
                &bootstrap,
                &topics[0],
                records,
                &key_bytes,
                idempotence,
            ));
            eprintln!(
                "round {round}: bus     {:>10.0} msgs/s, {:.2} us CPU/msg, {sockets} sockets",
                phase.rate(),
                phase.cpu_us_per_msg()
            );
            ours.push((phase, sockets));
        };
        let run_rdkafka = |theirs: &mut Vec<(Phase, usize)>| {
            let (phase, sockets) =
                rdkafka_phase(&bootstrap, &topics[1], records, &key_strings, idempotence);
            eprintln!(
                "round {round}: rdkafka {:>10.0} msgs/s, {:.2} us CPU/msg, {sockets} sockets",
                phase.rate(),
                phase.cpu_us_per_msg()
            );
            theirs.push((phase, sockets));
        };
        if let Some(only) = only.as_deref() {
            match only {
                "bus" => run_bus(&mut ours),
                "rdkafka" => run_rdkafka(&mut theirs),
                other => fail(&format!("--only bus|rdkafka, not `{other}`")),
            }
            continue;
        }
        if round % 2 == 0 {
            run_bus(&mut ours);
            run_rdkafka(&mut theirs);
        } else {
            run_rdkafka(&mut theirs);
            run_bus(&mut ours);
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
    let mode = if idempotence {
        "both idempotent (the bus: 5 requests in flight per broker connection; rdkafka: \
         enable.idempotence, 5 per connection)"
    } else {
        "neither idempotent (the bus: one request in flight per partition)"
    };
    println!(
        "{records} records of {VALUE_BYTES} bytes, keys over {AGGREGATES} aggregates, {partitions} \
         partitions, acks all, linger 5 ms, no compression{over}, {mode}; median of {rounds} \
         round(s), \
         clients alternating first.\n"
    );
    println!("| client | msgs/s | MB/s | client CPU per message | sockets at the end |");
    println!("|---|---:|---:|---:|---:|");
    println!(
        "| bus-kafka producer, `publish_nowait` + await each delivery future | {:.0} | {:.1} | \
         {:.2} us | {our_sockets} |",
        ours.rate(),
        ours.mb_per_s(),
        ours.cpu_us_per_msg()
    );
    println!(
        "| rdkafka 0.39 BaseProducer (librdkafka {librdkafka}) | {:.0} | {:.1} | {:.2} us | \
         {their_sockets} |",
        theirs.rate(),
        theirs.mb_per_s(),
        theirs.cpu_us_per_msg()
    );
    println!(
        "| **ratio bus / rdkafka** (target: rate >= 1.3, CPU <= 0.7) | {:.2}x | {:.2}x | {:.2}x | |",
        ours.rate() / theirs.rate(),
        ours.mb_per_s() / theirs.mb_per_s(),
        ours.cpu_us_per_msg() / theirs.cpu_us_per_msg()
    );
}
