//! What the benchmarks against peer clients share: the workload's shape, the measurement of one
//! client's phase, and the rdkafka peer's version.
//!
//! Owns: [`Phase`] (one client's run: wall time, join time, process CPU, records) and its
//! median, [`process_cpu`] (this process's user + system CPU time), the workload constants and
//! keys. The benchmarks themselves are the binaries (`produce-bench`, `consume-bench`,
//! `latency-bench`), run by `cargo xtask bench`.

/// Partitions of every benchmark topic.
pub const PARTITIONS: i32 = 6;
/// Distinct keys (aggregates) the records are spread over.
pub const AGGREGATES: usize = 1_000;
/// Bytes of every record's value.
pub const VALUE_BYTES: usize = 100;

/// The workload's keys, one per aggregate, as text (for rdkafka) and as `Bytes` (for the bus):
/// record `i` has key `i % AGGREGATES`.
#[must_use]
pub fn keys() -> (Vec<String>, Vec<bytes::Bytes>) {
    let text: Vec<String> = (0..AGGREGATES).map(|i| format!("aggregate-{i}")).collect();
    let bytes = text.iter().map(|k| bytes::Bytes::from(k.clone())).collect();
    (text, bytes)
}

/// One client's measurement.
#[derive(Debug, Clone, Copy)]
pub struct Phase {
    /// First record to last record.
    pub seconds: f64,
    /// Before the first record (a consumer group's join); zero where it does not apply.
    pub join_seconds: f64,
    /// Process CPU time over the phase.
    pub cpu_seconds: f64,
    /// Records in the phase.
    pub records: usize,
}

impl Phase {
    /// Records per second.
    #[must_use]
    pub fn rate(&self) -> f64 {
        self.records as f64 / self.seconds
    }

    /// Megabytes of values per second.
    #[must_use]
    pub fn mb_per_s(&self) -> f64 {
        (self.records * VALUE_BYTES) as f64 / self.seconds / 1e6
    }

    /// Microseconds of process CPU per record.
    #[must_use]
    pub fn cpu_us_per_msg(&self) -> f64 {
        self.cpu_seconds * 1e6 / self.records as f64
    }
}

/// The round with the median rate.
///
/// # Panics
///
/// When `phases` is empty (a benchmark runs at least one round).
#[must_use]
pub fn median(mut phases: Vec<Phase>) -> Phase {
    phases.sort_by(|a, b| a.rate().total_cmp(&b.rate()));
    phases[phases.len() / 2]
}

/// This process's user + system CPU time in seconds, from `/proc/self/stat` (clock ticks of
/// 10 ms).
#[must_use]
pub fn process_cpu() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    // Fields after the command name (which is in parentheses and may contain spaces).
    let rest = stat.rsplit_once(')').map_or("", |(_, rest)| rest);
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of the line, 12 and 13 after the `)`.
    let ticks = |i: usize| fields.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    (ticks(11) + ticks(12)) / 100.0
}

/// The runtime every benchmark runs its clients on: multi-thread, 2 workers (the machine's
/// cores).
pub fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap_or_else(|e| fail(&format!("runtime: {e}")))
}

/// An admin client on `bootstrap` (to create the benchmark's topics).
pub fn admin(runtime: &tokio::runtime::Runtime, bootstrap: &str) -> bus_kafka::Admin {
    runtime
        .block_on(bus_kafka::Admin::connect(bus_kafka::KafkaConfig::new(bootstrap)))
        .unwrap_or_else(|e| fail(&format!("admin: {e}")))
}

/// Parses a count of at least 1 (a command-line value).
///
/// # Errors
///
/// When `text` is not a whole number of at least 1.
pub fn positive(text: &str) -> Result<usize, String> {
    match text.parse::<usize>() {
        Ok(n) if n >= 1 => Ok(n),
        _ => Err(format!("`{text}` is not a whole number of at least 1")),
    }
}

/// Prints `message` prefixed with the program's name and exits with status 1.
pub fn fail(message: &str) -> ! {
    let program = std::env::args().next().unwrap_or_default();
    let name = std::path::Path::new(&program)
        .file_name()
        .map_or_else(|| "bench".to_owned(), |n| n.to_string_lossy().into_owned());
    eprintln!("{name}: {message}");
    std::process::exit(1);
}

/// The version of the librdkafka the peer was built with.
#[cfg(feature = "peer")]
#[must_use]
pub fn librdkafka_version() -> String {
    rdkafka::util::get_rdkafka_version().1
}

/// The version of the librdkafka the peer was built with (none: built without the peer).
#[cfg(not(feature = "peer"))]
#[must_use]
pub fn librdkafka_version() -> String {
    "not built".into()
}
