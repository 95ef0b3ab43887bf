//! `cargo xtask bench`: benchmarks run side by side with their peers, printed as tables and,
//! with `--record`, written to `docs/BENCHMARKS.md` between markers that name the benchmark.
//!
//! The consume benchmark runs against a nisshi of its own (in-memory, started for the run on a
//! free port and stopped afterwards, so that a long-lived broker's growth does not weigh on it),
//! unless `KAFKA_BOOTSTRAP` names a broker to use.

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use clap::ValueEnum;

use crate::Result;

/// The benchmarks.
#[derive(ValueEnum, Clone, Copy)]
pub(crate) enum Which {
    /// Spawn-and-join overhead of bus-supervisor against bare tokio::spawn and TaskTracker.
    Supervisor,
    /// The Kafka producer against rdkafka's (vendored librdkafka) on the same broker: 1,000,000
    /// records of 100 bytes, 1,000 keys, 6 partitions, acks all (package `bus-bench`).
    Produce,
    /// Group consume against rdkafka's BaseConsumer on the same broker and records (1,000,000
    /// records of 100 bytes, 6 partitions, no-op handler), and keyed dispatch with 1 ms handlers
    /// over 1,000 keys (package `bus-bench`, a private nisshi).
    Consume,
}

impl Which {
    fn name(self) -> &'static str {
        match self {
            Which::Supervisor => "supervisor",
            Which::Produce => "produce",
            Which::Consume => "consume",
        }
    }

    fn command(self) -> Vec<&'static str> {
        match self {
            Which::Supervisor => {
                vec!["bench", "-p", "bus-supervisor", "--bench", "spawn_overhead"]
            }
            Which::Produce => {
                vec![
                    "run",
                    "--release",
                    "-p",
                    "bus-bench",
                    "--features",
                    "peer",
                    "--bin",
                    "produce-bench",
                    "--",
                ]
            }
            Which::Consume => {
                vec![
                    "run",
                    "--release",
                    "-p",
                    "bus-bench",
                    "--features",
                    "peer",
                    "--bin",
                    "consume-bench",
                    "--",
                ]
            }
        }
    }
}

pub(crate) fn run(which: Which, record: bool) -> Result<()> {
    let mut args: Vec<String> = which.command().into_iter().map(str::to_owned).collect();
    let mut command = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    // The produce benchmark needs a broker, and cmake and the curl headers to build librdkafka.
    let mut broker = None;
    let mut private = None;
    match which {
        Which::Supervisor => {}
        Which::Produce => {
            crate::peer::ensure_rdkafka_build_deps()?;
            let running = crate::broker::ensure_running()?;
            args.extend(["--bootstrap".to_owned(), running.bootstrap.clone()]);
            broker = Some(running);
        }
        Which::Consume => {
            crate::peer::ensure_rdkafka_build_deps()?;
            let bootstrap = match std::env::var(crate::broker::BOOTSTRAP_VAR) {
                Ok(bootstrap) if !bootstrap.trim().is_empty() => bootstrap,
                _ => {
                    let started = PrivateBroker::start()?;
                    let bootstrap = started.bootstrap.clone();
                    private = Some(started);
                    bootstrap
                }
            };
            args.extend(["--bootstrap".to_owned(), bootstrap]);
        }
    }
    if !matches!(which, Which::Supervisor) {
        // Progress (building librdkafka takes minutes the first time; each round's figures).
        command.stderr(std::process::Stdio::inherit());
    }
    command.args(&args).current_dir(crate::workspace_root());
    eprintln!("$ cargo {}", args.join(" "));
    let output = command.output().map_err(|e| format!("cannot run cargo: {e}"));
    if broker.as_ref().is_some_and(|b| b.started_here) {
        crate::broker::stop()?;
    }
    drop(private);
    let output = output?;
    if !output.status.success() {
        return Err(format!(
            "the benchmark failed ({}):\n{}",
            output.status,
            String::from_utf8_lossy(&output.stderr)
        ));
    }
    let table = String::from_utf8_lossy(&output.stdout).trim().to_owned();
    println!("{table}");
    if record {
        let section = format!(
            "Recorded {} on {} with `cargo xtask bench {}`.\n\n{table}\n",
            today(),
            machine(),
            which.name()
        );
        write_section(which.name(), &section)?;
        eprintln!("recorded in docs/BENCHMARKS.md");
    }
    Ok(())
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

/// A nisshi started for one benchmark run (in-memory storage, a free loopback port, its own
/// working directory under `target/`); stopped (killed and waited for) when dropped.
struct PrivateBroker {
    bootstrap: String,
    child: Child,
}

impl PrivateBroker {
    fn start() -> Result<PrivateBroker> {
        let nisshi = crate::tools::ensure(&crate::tools::NISSHI)?;
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .map_err(|e| format!("no free port: {e}"))?;
        let bootstrap = format!("127.0.0.1:{port}");
        let url = format!("tcp://{bootstrap}");
        let workdir: PathBuf = crate::workspace_root().join("target").join("bench-broker");
        std::fs::create_dir_all(&workdir)
            .map_err(|e| format!("cannot create {}: {e}", workdir.display()))?;
        let log_path = workdir.join("broker.log");
        let log = std::fs::File::create(&log_path)
            .map_err(|e| format!("cannot create {}: {e}", log_path.display()))?;
        let log_err = log.try_clone().map_err(|e| e.to_string())?;
        let mut command = Command::new(&nisshi);
        command
            .args(["broker", "--listener-url", &url, "--advertised-listener-url", &url])
            .args(["--storage-engine", "memory://nisshi/"])
            .current_dir(&workdir)
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log_err);
        eprintln!("$ {} (a broker of its own for this benchmark)", crate::cmd::describe(&command));
        let child =
            command.spawn().map_err(|e| format!("cannot start {}: {e}", nisshi.display()))?;
        let mut broker = PrivateBroker { bootstrap, child };
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Ok(Some(status)) = broker.child.try_wait() {
                return Err(format!(
                    "the benchmark's broker exited at start ({status}); see {}",
                    log_path.display()
                ));
            }
            if crate::broker::probe(&broker.bootstrap).is_ok() {
                eprintln!("benchmark broker at {}", broker.bootstrap);
                return Ok(broker);
            }
            if Instant::now() >= deadline {
                return Err(format!(
                    "the benchmark's broker did not answer within 60 s; see {}",
                    log_path.display()
                ));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for PrivateBroker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
