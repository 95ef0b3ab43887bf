//! `cargo xtask bench`: benchmarks run side by side with their peers, printed as tables and,
//! with `--record`, written to `docs/BENCHMARKS.md` between markers that name the benchmark.
//!
//! The Kafka benchmarks (produce, consume, latency, rebalance) run against the test cluster (three
//! Apache Kafka nodes, replication factor 3, `min.insync.replicas` 2; started for the run when it
//! is not running and stopped after), unless `KAFKA_BOOTSTRAP` names a cluster to use. With
//! `--tls`, produce and consume run both clients over TLS alone (the cluster's TLS listener) and
//! over SASL_SSL (SCRAM-SHA-512).

use std::path::PathBuf;
use std::process::{Command, Stdio};

use clap::ValueEnum;

use crate::Result;

/// The benchmarks.
#[derive(ValueEnum, Clone, Copy)]
pub(crate) enum Which {
    /// Spawn-and-join overhead of bus-supervisor against bare tokio::spawn and TaskTracker: wall
    /// and CPU time, and instructions per task counted by callgrind (valgrind).
    Supervisor,
    /// The Kafka producer against rdkafka's (vendored librdkafka) on the same broker: 1,000,000
    /// records of 100 bytes, 1,000 keys, 6 partitions, acks all (package `bus-bench`).
    Produce,
    /// Group consume against rdkafka's BaseConsumer on the same broker and records (1,000,000
    /// records of 100 bytes, 6 partitions, no-op handler), and keyed dispatch with 1 ms handlers
    /// over 1,000 keys (package `bus-bench`).
    Consume,
    /// Latency at a fixed rate (20,000 records/s) against rdkafka on the same broker: produce
    /// (send to acknowledgement), end to end (send to consumer), and shutdown time (package
    /// `bus-bench`).
    Latency,
    /// A rolling restart of a group's three members while records flow: the time each member
    /// spends not processing, eager against cooperative-sticky against static membership, the
    /// bus against rdkafka with the same settings (package `bus-bench`).
    Rebalance,
    /// A producer's buffer with the broker gone: empty records until the buffer refuses one,
    /// peak memory of the bus beside rdkafka, one process each, each on a private node it kills
    /// (package `bus-bench`).
    Buffer,
    /// bus-core alone: the in-memory bus's publish and consume throughput against a plain mpsc
    /// channel, and the keyed dispatch with 1 ms handlers over 1,000 keys and with a no-op one.
    Core,
}

impl Which {
    fn name(self) -> &'static str {
        match self {
            Which::Supervisor => "supervisor",
            Which::Produce => "produce",
            Which::Consume => "consume",
            Which::Latency => "latency",
            Which::Rebalance => "rebalance",
            Which::Core => "core",
            Which::Buffer => "buffer",
        }
    }
}

pub(crate) fn run(which: Which, record: bool, tls: bool, metrics: bool) -> Result<()> {
    let table = match which {
        Which::Produce | Which::Consume if metrics && !tls => against_broker_with(which, true)?,
        _ if metrics => {
            return Err("--metrics applies to the produce and consume benchmarks (plain)".into());
        }
        Which::Produce | Which::Consume if tls => secured(which)?,
        _ if tls => return Err("--tls applies to the produce and consume benchmarks".into()),
        Which::Supervisor => supervisor()?,
        Which::Core => core()?,
        Which::Buffer => buffer()?,
        Which::Produce | Which::Consume | Which::Latency | Which::Rebalance => {
            against_broker(which)?
        }
    };
    println!("{table}");
    if record {
        let (name, flag) = if tls {
            (format!("{}-tls", which.name()), " --tls")
        } else if metrics {
            (format!("{}-metrics", which.name()), " --metrics")
        } else {
            (which.name().to_owned(), "")
        };
        let section = format!(
            "Recorded {} on {} with `cargo xtask bench {}{flag}`.\n\n{table}\n",
            today(),
            machine(),
            which.name()
        );
        write_section(&name, &section)?;
        eprintln!("recorded in docs/BENCHMARKS.md");
    }
    Ok(())
}

/// The supervisor benchmark: wall and CPU time in a burst and in windows on a 2-worker runtime,
/// then instructions per task counted by callgrind (the figure this shared machine's load does
/// not move).
fn supervisor() -> Result<String> {
    let bench = ["bench", "-p", "bus-supervisor", "--bench", "spawn_overhead"];
    let mut tables = Vec::new();
    for (step, extra) in [(1, &[][..]), (2, &["--window", "1000"][..])] {
        eprintln!(
            "supervisor benchmark {step}/3: {}",
            if extra.is_empty() { "burst" } else { "windows" }
        );
        let mut command = cargo();
        command.args(bench).arg("--").args(extra).current_dir(crate::workspace_root());
        tables.push(stdout_of(&mut command)?);
    }
    eprintln!("supervisor benchmark 3/3: instructions under callgrind");
    tables.push(instructions(&bench)?);
    Ok(tables.join("\n\n"))
}

/// The buffer benchmark: each client in a process of its own, on a private node it kills (no
/// shared cluster needed; the Kafka distribution is resolved first).
fn buffer() -> Result<String> {
    crate::peer::ensure_rdkafka_build_deps()?;
    let classpath = testbed::Distribution::resolve()?;
    let mut command = cargo();
    command
        .args(["run", "--release", "-p", "bus-bench", "--features", "peer", "--bin"])
        .args(["buffer-bench", "--"])
        .env(testbed::CLASSPATH_VAR, classpath.classpath())
        .current_dir(crate::workspace_root());
    stdout_of(&mut command)
}

/// bus-core's benchmarks: the in-memory bus, then the keyed dispatch.
fn core() -> Result<String> {
    let mut tables = Vec::new();
    for (step, bench) in [(1, "in_memory"), (2, "keyed_dispatch")] {
        eprintln!("bus-core benchmark {step}/2: {bench}");
        let mut command = cargo();
        command.args(["bench", "-p", "bus-core", "--bench", bench]);
        command.current_dir(crate::workspace_root());
        tables.push(stdout_of(&mut command)?);
    }
    Ok(tables.join("\n\n"))
}

/// Tasks per instruction-counting run, and the window they are spawned and joined in.
const COUNTED_TASKS: u64 = 20_000;

/// Instructions per task of each variant on a current-thread runtime, counted by callgrind: the
/// count of a run of three rounds minus that of a run of one round (start-up, warm-up and exit
/// cancel out), over the tasks of the two extra rounds.
fn instructions(bench: &[&str]) -> Result<String> {
    crate::tools::ensure_debian_packages(
        "counting instructions",
        &[("valgrind", crate::tools::runs("valgrind", "--version"))],
    )?;
    let exe = bench_executable(bench)?;
    let tasks = COUNTED_TASKS.to_string();
    let count = |variant: &str, rounds: &str| -> Result<u64> {
        let mut command = Command::new("valgrind");
        command
            .args(["--tool=callgrind", "--callgrind-out-file=/dev/null"])
            .arg(&exe)
            .args(["--only", variant, "--workers", "0", "--window", "1000"])
            .args(["--tasks", &tasks, "--rounds", rounds]);
        let output = command.output().map_err(|e| format!("cannot run valgrind: {e}"))?;
        let stderr = String::from_utf8_lossy(&output.stderr);
        if !output.status.success() {
            return Err(format!("callgrind failed ({}):\n{stderr}", output.status));
        }
        stderr
            .lines()
            .find_map(|l| l.split_once("Collected :").map(|(_, n)| n.trim().to_owned()))
            .and_then(|n| n.parse().ok())
            .ok_or_else(|| format!("no instruction count in callgrind's output:\n{stderr}"))
    };
    let mut per_task = Vec::new();
    for variant in ["bare", "tracker", "supervisor"] {
        let (one, three) = (count(variant, "1")?, count(variant, "3")?);
        per_task.push(three.saturating_sub(one) as f64 / (2 * COUNTED_TASKS) as f64);
    }
    let [bare, tracker, supervisor] = per_task[..] else {
        return Err("three variants expected".into());
    };
    Ok(format!(
        "instructions: {COUNTED_TASKS} empty tasks spawned and joined 1000 at a time on a \
         current-thread runtime, counted by callgrind (runs of 3 rounds minus runs of 1)\n\n\
         | variant | instructions per task | ratio |\n\
         |---|---:|---:|\n\
         | bare `tokio::spawn`, handles awaited | {bare:.0} | 1.00 |\n\
         | `tokio_util::task::TaskTracker` | {tracker:.0} | {:.2} |\n\
         | `bus_supervisor::Scope::spawn`, handles awaited | {supervisor:.0} | {:.2} |\n\n\
         supervisor / bare: {:.2} instructions (target <= 1.50)",
        tracker / bare,
        supervisor / bare,
        supervisor / bare
    ))
}

/// Builds the benchmark and returns its executable (from cargo's `Executable` line).
fn bench_executable(bench: &[&str]) -> Result<PathBuf> {
    let output = cargo()
        .args(bench)
        .arg("--no-run")
        .current_dir(crate::workspace_root())
        .output()
        .map_err(|e| format!("cannot run cargo: {e}"))?;
    let stderr = String::from_utf8_lossy(&output.stderr);
    if !output.status.success() {
        return Err(format!("building the benchmark failed:\n{stderr}"));
    }
    stderr
        .lines()
        .filter_map(|l| l.trim().strip_prefix("Executable "))
        .find_map(|l| l.rsplit_once('(').and_then(|(_, p)| p.strip_suffix(')')))
        .map(|p| crate::workspace_root().join(p))
        .ok_or_else(|| format!("no executable in cargo's output:\n{stderr}"))
}

fn cargo() -> Command {
    Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
}

/// Runs a command, returning its trimmed stdout; its stderr shows as progress.
fn stdout_of(command: &mut Command) -> Result<String> {
    command.stderr(Stdio::inherit());
    eprintln!("$ {}", crate::cmd::describe(command));
    let output = command
        .output()
        .map_err(|e| format!("cannot run {}: {e}", crate::cmd::describe(command)))?;
    if !output.status.success() {
        return Err(format!("the benchmark failed ({})", output.status));
    }
    Ok(String::from_utf8_lossy(&output.stdout).trim().to_owned())
}

/// The Kafka benchmarks: built with the rdkafka peer, run against a broker of their own (or the
/// one `KAFKA_BOOTSTRAP` names).
fn against_broker(which: Which) -> Result<String> {
    against_broker_with(which, false)
}

/// [`against_broker`], with the benchmark's metrics recorder installed when `metrics`.
fn against_broker_with(which: Which, metrics: bool) -> Result<String> {
    let bin = match which {
        Which::Produce => "produce-bench",
        Which::Latency => "latency-bench",
        Which::Rebalance => "rebalance-bench",
        _ => "consume-bench",
    };
    let mut command = cargo();
    command
        .args(["run", "--release", "-p", "bus-bench", "--features", "peer", "--bin", bin, "--"])
        .current_dir(crate::workspace_root());
    // All need cmake and the curl headers to build librdkafka.
    crate::peer::ensure_rdkafka_build_deps()?;
    let broker = crate::broker::ensure_running()?;
    command.args(["--bootstrap", &broker.bootstrap]);
    if metrics {
        command.arg("--metrics");
    }
    // Progress shows (building librdkafka takes minutes the first time; each round's figures).
    let output = stdout_of(&mut command);
    if broker.started_here {
        crate::broker::stop()?;
    }
    output
}

/// produce or consume with both clients over TLS: first TLS alone (the cluster's TLS listener,
/// no client certificate), then SASL_SSL (SCRAM-SHA-512), the same workload as the plaintext run.
fn secured(which: Which) -> Result<String> {
    let bin = if matches!(which, Which::Produce) { "produce-bench" } else { "consume-bench" };
    crate::peer::ensure_rdkafka_build_deps()?;
    let broker = crate::broker::ensure_running()?;
    let Some(secured) = broker.secured.as_ref() else {
        return Err("the cluster's secured listeners are unknown (KAFKA_SECURE_* not set)".into());
    };
    let var = |name: &str| secured.vars.get(name).cloned().unwrap_or_default();
    let run = |bootstrap: &str, security: &[&str]| {
        let mut command = cargo();
        command
            .args(["run", "--release", "-p", "bus-bench", "--features", "peer", "--bin", bin])
            .arg("--")
            .args(["--bootstrap", bootstrap])
            .args(security)
            .current_dir(crate::workspace_root());
        secured.apply(&mut command);
        stdout_of(&mut command)
    };
    let ca = var("KAFKA_SECURE_CA");
    eprintln!("1/2: TLS alone, on the cluster's TLS listener");
    let tls = run(
        &var("KAFKA_SECURE_TLS_BOOTSTRAP"),
        &["--security-protocol", "ssl", "--ssl-ca-location", &ca],
    );
    eprintln!("2/2: SASL_SSL (SCRAM-SHA-512)");
    let user = var("KAFKA_SECURE_USER");
    let sasl = tls.and_then(|tls| {
        run(
            secured.bootstrap(),
            &[
                "--security-protocol",
                "sasl_ssl",
                "--ssl-ca-location",
                &ca,
                "--sasl-mechanism",
                "SCRAM-SHA-512",
                "--sasl-username",
                &user,
                "--sasl-password-env",
                "KAFKA_SECURE_PASSWORD",
            ],
        )
        .map(|sasl| (tls, sasl))
    });
    if broker.started_here {
        crate::broker::stop()?;
    }
    let (tls, sasl) = sasl?;
    Ok(format!(
        "**TLS alone** (security.protocol ssl):\n\n{tls}\n\n**SASL_SSL** (SCRAM-SHA-512; the SASL \
         exchange happens once per connection):\n\n{sasl}"
    ))
}

fn today() -> String {
    Command::new("date")
        .arg("+%Y-%m-%d")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_else(|_| "an unknown date".into())
}

/// A one-line description of this machine: CPU model, cores, memory, rustc.
fn machine() -> String {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo
        .lines()
        .find_map(|l| l.strip_prefix("model name").and_then(|r| r.split(':').nth(1)))
        .map_or("unknown CPU", str::trim)
        .to_owned();
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    let mem_gib = meminfo
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .and_then(|r| r.split_whitespace().next())
        .and_then(|kb| kb.parse::<f64>().ok())
        .map_or(0.0, |kb| kb / 1024.0 / 1024.0);
    let rustc = Command::new("rustc")
        .arg("--version")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_default();
    format!("{cores} cores ({model}), {mem_gib:.0} GiB, {rustc}")
}

fn write_section(name: &str, body: &str) -> Result<()> {
    let path = crate::workspace_root().join("docs").join("BENCHMARKS.md");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|_| "# Benchmarks\n".into());
    let start = format!("<!-- bench:{name}:start -->");
    let end = format!("<!-- bench:{name}:end -->");
    let replacement = format!("{start}\n{body}{end}");
    let updated = match (text.find(&start), text.find(&end)) {
        (Some(s), Some(e)) if e > s => {
            format!("{}{replacement}{}", &text[..s], &text[e + end.len()..])
        }
        _ => format!("{}\n{replacement}\n", text.trim_end()),
    };
    std::fs::write(&path, updated).map_err(|e| format!("cannot write {}: {e}", path.display()))
}
