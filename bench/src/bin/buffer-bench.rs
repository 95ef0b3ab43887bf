//! `cargo xtask bench buffer`: what a producer's buffer bound holds in memory when the broker is
//! gone, the bus beside rdkafka (issue 24): each client, in a process of its own, connects to a
//! private single-node Apache Kafka (`testbed::PrivateNode`), stores one record, then the node is
//! killed and the client is handed empty records (no key, no value) as fast as it takes them,
//! until it refuses one (its buffer is full) or `--records` were accepted. The process's peak
//! resident memory (`VmHWM`) above what it held just before is what the buffered records cost.
//!
//! Owns: the workload (the bus: `producer.buffer_bytes` of `--buffer-mib`, `publish_nowait`
//! with a 100 ms publish timeout, every delivery future kept as a caller would; rdkafka:
//! `queue.buffering.max.kbytes` of the same size and `queue.buffering.max.messages` at its
//! maximum, so that the bytes decide, `BaseProducer::send` until `QueueFull`), the measurement
//! and the table it prints on stdout (progress goes to stderr).
//!
//! Usage: `buffer-bench [--records N] [--buffer-mib M]` runs both clients (each a child process:
//! `buffer-bench --client bus|rdkafka`, which prints one JSON line). Needs the Kafka
//! distribution `cargo xtask broker` resolved (`target/kafka`).

use std::process::Command;
use std::time::{Duration, Instant};

use bus_bench::fail;
use bus_core::Record;
use bus_core::errors::PublishError;
use clap::Parser;

/// Empty records handed to a client at most.
const DEFAULT_RECORDS: usize = 5_000_000;

/// One client's run.
#[derive(Debug, Clone, Copy, serde::Serialize, serde::Deserialize)]
struct Outcome {
    /// Records accepted before the client refused one (or `--records`).
    accepted: usize,
    /// Whether the client refused a record (its buffer full) before `--records`.
    refused: bool,
    /// Resident memory just before the records, KiB.
    before_kib: u64,
    /// Peak resident memory of the process, KiB.
    peak_kib: u64,
    /// Seconds spent handing records over.
    seconds: f64,
}

impl Outcome {
    fn held_mib(&self) -> f64 {
        self.peak_kib.saturating_sub(self.before_kib) as f64 / 1024.0
    }
}

/// A field of `/proc/self/status` in KiB.
fn status_kib(field: &str) -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|line| line.strip_prefix(field))
        .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

/// A private node, started on a free port.
fn private_node() -> testbed::PrivateNode {
    let port = testbed::free_port().unwrap_or_else(|e| fail(&e));
    testbed::PrivateNode::start(port, port)
        .unwrap_or_else(|e| fail(&format!("the private node did not start: {e}")))
}

fn run_bus(records: usize, buffer: usize) -> Outcome {
    let mut node = private_node();
    let runtime = bus_bench::runtime();
    let bootstrap = node.bootstrap();
    let topic = format!("buffer-bus-{}", std::process::id());
    let mut config = bus_bench::config(&bootstrap);
    config.producer.buffer_bytes = buffer;
    config.producer.publish_timeout = Duration::from_millis(100);
    config.producer.delivery_timeout = Duration::from_secs(600);
    runtime.block_on(async {
        let bus = bus_kafka::connect(config).await.unwrap_or_else(|e| fail(&format!("bus: {e}")));
        bus.publish(Record::new(topic.as_str(), "warm-up"))
            .await
            .unwrap_or_else(|e| fail(&format!("bus warm-up: {e}")));
        node.stop();
        let before_kib = status_kib("VmRSS:");
        let started = Instant::now();
        let mut pending = Vec::new();
        let mut refused = false;
        while pending.len() < records {
            match bus.publish_nowait(Record::new(topic.as_str(), "")).await {
                Ok(delivery) => pending.push(delivery),
                Err(PublishError::BufferFull { .. }) => {
                    refused = true;
                    break;
                }
                Err(other) => fail(&format!("bus: expected BufferFull, got {other}")),
            }
        }
        let seconds = started.elapsed().as_secs_f64();
        Outcome {
            accepted: pending.len(),
            refused,
            before_kib,
            peak_kib: status_kib("VmHWM:"),
            seconds,
        }
    })
}

#[cfg(not(feature = "peer"))]
fn run_rdkafka(_records: usize, _buffer: usize) -> Outcome {
    fail(
        "built without the rdkafka peer: run `cargo xtask bench buffer` (it passes --features peer)",
    )
}

#[cfg(feature = "peer")]
fn run_rdkafka(records: usize, buffer: usize) -> Outcome {
    use rdkafka::config::ClientConfig;
    use rdkafka::error::{KafkaError, RDKafkaErrorCode};
    use rdkafka::producer::{BaseProducer, BaseRecord, Producer};

    let mut node = private_node();
    let bootstrap = node.bootstrap();
    let topic = format!("buffer-rdkafka-{}", std::process::id());
    let producer: BaseProducer = ClientConfig::new()
        .set("bootstrap.servers", &bootstrap)
        .set("enable.idempotence", "true")
        .set("acks", "all")
        .set("message.timeout.ms", "600000")
        .set("queue.buffering.max.kbytes", (buffer / 1024).to_string())
        .set("queue.buffering.max.messages", "2147483647")
        .create()
        .unwrap_or_else(|e| fail(&format!("rdkafka producer: {e}")));
    producer
        .send(BaseRecord::<(), str>::to(&topic).payload("warm-up"))
        .unwrap_or_else(|(e, _)| fail(&format!("rdkafka warm-up: {e}")));
    producer
        .flush(Duration::from_secs(60))
        .unwrap_or_else(|e| fail(&format!("rdkafka warm-up flush: {e}")));
    node.stop();
    let before_kib = status_kib("VmRSS:");
    let started = Instant::now();
    let mut accepted = 0;
    let mut refused = false;
    while accepted < records {
        match producer.send(BaseRecord::<(), ()>::to(&topic)) {
            Ok(()) => accepted += 1,
            Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), _)) => {
                refused = true;
                break;
            }
            Err((e, _)) => fail(&format!("rdkafka: expected QueueFull, got {e}")),
        }
    }
    let seconds = started.elapsed().as_secs_f64();
    Outcome { accepted, refused, before_kib, peak_kib: status_kib("VmHWM:"), seconds }
}

/// A producer's buffer with the broker gone: the bus beside rdkafka, one process each.
#[derive(Parser)]
struct Args {
    /// Run one client and print its outcome as JSON (what the parent runs).
    #[arg(long, value_parser = ["bus", "rdkafka"])]
    client: Option<String>,
    /// Records handed to each client at most.
    #[arg(long, default_value_t = DEFAULT_RECORDS, value_parser = bus_bench::positive)]
    records: usize,
    /// The buffer's size, MiB (the bus's `producer.buffer_bytes`, rdkafka's
    /// `queue.buffering.max.kbytes`).
    #[arg(long, default_value_t = 32, value_parser = bus_bench::positive)]
    buffer_mib: usize,
}

fn main() {
    let Args { client, records, buffer_mib } = Args::parse();
    let buffer = buffer_mib.saturating_mul(1024 * 1024);
    if let Some(client) = client {
        let outcome = match client.as_str() {
            "bus" => run_bus(records, buffer),
            _ => run_rdkafka(records, buffer),
        };
        let line = serde_json::to_string(&outcome).unwrap_or_else(|e| fail(&e.to_string()));
        println!("{line}");
        // No graceful close: with the broker gone it would wait out the delivery timeouts.
        std::process::exit(0);
    }
    let exe = std::env::current_exe().unwrap_or_else(|e| fail(&format!("own path: {e}")));
    let run = |client: &str| -> Outcome {
        eprintln!("running {client} (a private node starts, then is killed)");
        let output = Command::new(&exe)
            .args(["--client", client, "--records", &records.to_string()])
            .args(["--buffer-mib", &buffer_mib.to_string()])
            .output()
            .unwrap_or_else(|e| fail(&format!("cannot run {client}: {e}")));
        if !output.status.success() {
            fail(&format!(
                "{client} failed ({}): {}",
                output.status,
                String::from_utf8_lossy(&output.stderr)
            ));
        }
        let stdout = String::from_utf8_lossy(&output.stdout);
        let line = stdout.lines().last().unwrap_or_default();
        serde_json::from_str(line)
            .unwrap_or_else(|e| fail(&format!("{client}: unreadable outcome `{line}`: {e}")))
    };
    let ours = run("bus");
    let theirs = run("rdkafka");
    println!(
        "Empty records (no key, no value) handed to each producer with the broker killed, until it \
         refuses one or {records} were accepted; a {buffer_mib} MiB buffer (the bus: \
         `producer.buffer_bytes`, every delivery future kept; rdkafka: \
         `queue.buffering.max.kbytes`, `queue.buffering.max.messages` at its maximum); one \
         process per client; memory is the peak resident set above the one before the records.\n"
    );
    println!("| client | records accepted | refused one | memory held | bytes per record |");
    println!("|---|---:|---|---:|---:|");
    for (name, outcome) in
        [("bus-kafka producer", ours), ("rdkafka 0.39 BaseProducer (librdkafka)", theirs)]
    {
        let per_record = outcome.held_mib() * 1024.0 * 1024.0 / outcome.accepted.max(1) as f64;
        println!(
            "| {name} | {} | {} | {:.1} MiB | {:.0} |",
            outcome.accepted,
            if outcome.refused { "yes" } else { "no" },
            outcome.held_mib(),
            per_record
        );
    }
}
