//! What the benchmarks against peer clients share: the workload's shape, the measurement of one
//! client's phase, and the rdkafka peer's version.
//!
//! Owns: [`Phase`] (one client's run: wall time, join time, process CPU, records) and its
//! median, [`process_cpu`] (this process's user + system CPU time), the workload constants and
//! keys, and [`Security`] (the connections' security, librdkafka's names, given once on the
//! command line and applied to both clients: [`config`] for the bus, `secure_rdkafka` for
//! rdkafka). The benchmarks themselves are the binaries (`produce-bench`, `consume-bench`,
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

/// This process's open sockets (`/proc/self/fd` entries that are sockets): a client's
/// connections to the brokers, counted while it runs (both clients run in one process, one at a
/// time).
#[must_use]
pub fn open_sockets() -> usize {
    let Ok(entries) = std::fs::read_dir("/proc/self/fd") else { return 0 };
    entries
        .flatten()
        .filter_map(|entry| std::fs::read_link(entry.path()).ok())
        .filter(|target| target.to_string_lossy().starts_with("socket:"))
        .count()
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

/// An admin client on `bootstrap` (to create the benchmark's topics), secured as [`Security`]
/// says.
pub fn admin(runtime: &tokio::runtime::Runtime, bootstrap: &str) -> bus_kafka::admin::Admin {
    runtime
        .block_on(bus_kafka::admin::connect(config(bootstrap)))
        .unwrap_or_else(|e| fail(&format!("admin: {e}")))
}

/// How both clients secure their connections (librdkafka's names; plaintext by default).
#[derive(clap::Args, Debug, Clone)]
pub struct Security {
    /// `security.protocol`: plaintext, ssl, sasl_plaintext or sasl_ssl.
    #[arg(long, default_value = "plaintext")]
    pub security_protocol: String,
    /// `ssl.ca.location`: the CA's PEM file.
    #[arg(long)]
    pub ssl_ca_location: Option<String>,
    /// `sasl.mechanism`: SCRAM-SHA-256 or SCRAM-SHA-512.
    #[arg(long)]
    pub sasl_mechanism: Option<String>,
    /// `sasl.username`.
    #[arg(long)]
    pub sasl_username: Option<String>,
    /// The environment variable holding `sasl.password` (not on the command line).
    #[arg(long)]
    pub sasl_password_env: Option<String>,
}

/// Plaintext: what a benchmark without security options (latency, rebalance) runs on.
impl Default for Security {
    fn default() -> Self {
        Security {
            security_protocol: "plaintext".into(),
            ssl_ca_location: None,
            sasl_mechanism: None,
            sasl_username: None,
            sasl_password_env: None,
        }
    }
}

static SECURITY: std::sync::OnceLock<Security> = std::sync::OnceLock::new();

impl Security {
    /// Makes this the security of every client the benchmark creates (once, at start).
    pub fn install(self) {
        let _ = SECURITY.set(self);
    }

    /// `over SASL_SSL (SCRAM-SHA-512)`, or nothing for plaintext.
    #[must_use]
    pub fn describe(&self) -> String {
        match (self.security_protocol.as_str(), &self.sasl_mechanism) {
            ("plaintext", _) => String::new(),
            (protocol, Some(mechanism)) => {
                format!(" over {} ({mechanism})", protocol.to_uppercase())
            }
            (protocol, None) => format!(" over {}", protocol.to_uppercase()),
        }
    }

    /// `sasl.password`, from its environment variable (for rdkafka).
    #[cfg(feature = "peer")]
    fn password(&self) -> Option<String> {
        self.sasl_password_env.as_ref().and_then(|v| std::env::var(v).ok())
    }
}

/// The installed [`Security`] (plaintext when none was installed).
#[must_use]
pub fn security() -> Security {
    SECURITY.get().cloned().unwrap_or_default()
}

/// The bus's configuration for `bootstrap`, secured as the installed [`Security`] says.
#[must_use]
pub fn config(bootstrap: &str) -> bus_kafka::KafkaConfig {
    let security = security();
    let mut config = bus_kafka::KafkaConfig::new(bootstrap);
    let section = serde_json::json!({
        "protocol": security.security_protocol,
        "tls": security.ssl_ca_location.as_ref().map(|ca| serde_json::json!({"ca_location": ca})),
        "sasl": security.sasl_mechanism.as_ref().map(|mechanism| serde_json::json!({
            "mechanism": mechanism,
            "username": security.sasl_username,
            "password_env": security.sasl_password_env,
        })),
    });
    let section: serde_json::Map<String, serde_json::Value> = section
        .as_object()
        .map(|o| {
            o.iter().filter(|(_, v)| !v.is_null()).map(|(k, v)| (k.clone(), v.clone())).collect()
        })
        .unwrap_or_default();
    config.security = serde_json::from_value(serde_json::Value::Object(section))
        .unwrap_or_else(|e| fail(&format!("security settings: {e}")));
    config
}

/// Applies the installed [`Security`] to an rdkafka client's configuration.
#[cfg(feature = "peer")]
pub fn secure_rdkafka(config: &mut rdkafka::config::ClientConfig) {
    let security = security();
    config.set("security.protocol", &security.security_protocol);
    if let Some(ca) = &security.ssl_ca_location {
        config.set("ssl.ca.location", ca);
    }
    if let Some(mechanism) = &security.sasl_mechanism {
        config.set("sasl.mechanism", mechanism);
    }
    if let Some(username) = &security.sasl_username {
        config.set("sasl.username", username);
    }
    if let Some(password) = security.password() {
        config.set("sasl.password", password);
    }
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

/// Installs a Prometheus recorder (metrics-exporter-prometheus, no HTTP listener) as the
/// `metrics` facade's recorder, so that the bus's metrics are recorded as a service exporting
/// them would (the `--metrics` flag: what they cost). Rendered once at the end of the run, as a
/// scrape would.
pub fn install_metrics_recorder() -> metrics_exporter_prometheus::PrometheusHandle {
    match metrics_exporter_prometheus::PrometheusBuilder::new().install_recorder() {
        Ok(handle) => handle,
        Err(error) => {
            eprintln!("cannot install the metrics recorder: {error}");
            std::process::exit(2)
        }
    }
}
