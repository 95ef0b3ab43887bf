//! Helpers shared by the workspace integration tests: where the broker is, unique names.
//!
//! The broker comes from `KAFKA_BOOTSTRAP` (set by `cargo xtask test`, or by a user pointing the
//! tests at their own cluster), else from `target/broker.env` (written by `cargo xtask broker
//! start`). Tests create their own uniquely named topics, so they run in parallel and repeatedly.
//!
//! Also here: the Python peer client (confluent-kafka, installed by `cargo xtask test` into
//! `target/peer-venv`), waiting on conditions with deadlines, and [`OwnBroker`], a private
//! broker a test may stop and restart (nisshi with SQLite storage in a scratch directory, killed
//! when its guard drops, also when a test fails; the shared test broker is never touched), the
//! peak resident memory of the process ([`peak_rss`], [`reset_peak_rss`]), and `scripted`: a
//! scripted Kafka peer (an adversary and an oracle's stage, not a stand-in for Kafka).

#![allow(clippy::panic, clippy::unwrap_used, clippy::expect_used)] // test helpers: failing loudly is their job

pub mod bombs;
pub mod scripted;

use std::io::Write;
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bus_kafka::KafkaConfig;

/// The broker's `host:port`.
///
/// # Panics
///
/// When no broker is configured: run `cargo xtask test`, or `cargo xtask broker start` first.
pub fn bootstrap() -> String {
    if let Ok(value) = std::env::var("KAFKA_BOOTSTRAP")
        && !value.trim().is_empty()
    {
        return value.trim().to_owned();
    }
    let env_file = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join("target")
        .join("broker.env");
    let text = std::fs::read_to_string(&env_file).unwrap_or_default();
    text.lines()
        .find_map(|l| l.strip_prefix("KAFKA_BOOTSTRAP="))
        .map(|v| v.trim().to_owned())
        .unwrap_or_else(|| {
            panic!(
                "no Kafka broker: set KAFKA_BOOTSTRAP, or run the tests with `cargo xtask test` \
                 (or start one with `cargo xtask broker start`); looked in {}",
                env_file.display()
            )
        })
}

/// A configuration for the test broker with the defaults.
pub fn config() -> KafkaConfig {
    KafkaConfig::new(&bootstrap())
}

/// A name unique to this process and call: `<prefix>-<pid>-<time>-<n>`.
pub fn unique(prefix: &str) -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let nanos = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_nanos());
    format!(
        "{prefix}-{}-{}-{}",
        std::process::id(),
        nanos % 1_000_000_000_000,
        COUNTER.fetch_add(1, Ordering::Relaxed)
    )
}

/// The workspace root.
pub fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// Waits for `condition` up to `timeout`, checking every 20 ms.
///
/// # Panics
///
/// When `timeout` passes first, naming `what`.
pub async fn wait_for(what: &str, timeout: Duration, mut condition: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + timeout;
    while !condition() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The Python interpreter that has confluent-kafka: `BUS_PEER_PYTHON`, else `target/peer-venv`
/// (installed by `cargo xtask test`), else `python3` if it has the package.
///
/// # Panics
///
/// When none has it, with what to install.
pub fn peer_python() -> PathBuf {
    if let Ok(python) = std::env::var("BUS_PEER_PYTHON") {
        return PathBuf::from(python);
    }
    let venv = workspace().join("target").join("peer-venv").join("bin").join("python");
    if venv.is_file() {
        return venv;
    }
    let system = Command::new("python3")
        .args(["-c", "import confluent_kafka"])
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    assert!(
        system,
        "the peer client (Python confluent-kafka 2.16.1) is not installed at {}: run the tests \
         with `cargo xtask test` (it installs it), or install it by hand with `python3 -m venv \
         target/peer-venv && target/peer-venv/bin/pip install confluent-kafka==2.16.1`, or set \
         BUS_PEER_PYTHON to a python that has it",
        venv.display()
    );
    PathBuf::from("python3")
}

/// Runs the peer script `tests/peer/<script>` with `args` and `stdin`, returning its JSON
/// output.
///
/// # Panics
///
/// When the peer fails (with its stderr) or prints no JSON.
pub fn run_peer(script: &str, args: &[&str], stdin: &str) -> serde_json::Value {
    let script = workspace().join("tests").join("peer").join(script);
    let mut child = Command::new(peer_python())
        .arg(&script)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run the peer {}: {e}", script.display()));
    child.stdin.take().unwrap().write_all(stdin.as_bytes()).unwrap();
    let output = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "the peer `{}` failed ({}): {stderr}",
        args.join(" "),
        output.status
    );
    serde_json::from_slice(&output.stdout)
        .unwrap_or_else(|e| panic!("the peer printed no JSON ({e}); stderr: {stderr}"))
}

/// A private nisshi broker with SQLite storage, killed on drop.
pub struct OwnBroker {
    port: u16,
    dir: PathBuf,
    child: Option<Child>,
}

fn nisshi() -> PathBuf {
    let on_path = std::env::var_os("PATH").and_then(|path| {
        std::env::split_paths(&path).map(|d| d.join("nisshi")).find(|p| p.is_file())
    });
    let in_cargo = std::env::var_os("HOME")
        .map(|home| PathBuf::from(home).join(".cargo").join("bin").join("nisshi"))
        .filter(|p| p.is_file());
    on_path.or(in_cargo).unwrap_or_else(|| {
        panic!("nisshi is not installed: `cargo xtask broker start` installs it (once)")
    })
}

impl OwnBroker {
    /// Starts a broker on a free port in a fresh scratch directory and waits until it answers.
    pub fn start() -> OwnBroker {
        let port = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let dir =
            std::env::temp_dir().join(format!("bus-producer-broker-{}-{port}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let mut broker = OwnBroker { port, dir, child: None };
        broker.restart();
        broker
    }

    /// `127.0.0.1:<port>`.
    pub fn bootstrap(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// Kills the broker process (its data stays on disk).
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        // Wait until the port refuses connections.
        let deadline = Instant::now() + Duration::from_secs(10);
        while TcpStream::connect(("127.0.0.1", self.port)).is_ok() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Starts the broker again on the same port and data, and waits until it accepts
    /// connections.
    pub fn restart(&mut self) {
        self.stop();
        let url = format!("tcp://{}", self.bootstrap());
        let log = std::fs::File::create(self.dir.join("broker.log")).unwrap();
        let child = Command::new(nisshi())
            .args(["broker", "--listener-url", &url, "--advertised-listener-url", &url])
            .args(["--storage-engine", "sqlite://broker.db"])
            .current_dir(&self.dir)
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(60);
        while TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            if let Some(status) = self.child.as_mut().and_then(|c| c.try_wait().unwrap()) {
                panic!(
                    "the private broker exited at start ({status}); log in {}",
                    self.dir.display()
                );
            }
            assert!(Instant::now() < deadline, "the private broker did not listen within 60 s");
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for OwnBroker {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The process's peak resident set size (VmHWM), in bytes.
///
/// # Panics
///
/// When `/proc/self/status` cannot be read.
pub fn peak_rss() -> u64 {
    proc_status_kib("VmHWM:") * 1024
}

/// The process's resident set size now (VmRSS), in bytes.
///
/// # Panics
///
/// When `/proc/self/status` cannot be read.
pub fn rss() -> u64 {
    proc_status_kib("VmRSS:") * 1024
}

fn proc_status_kib(field: &str) -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").expect("/proc/self/status");
    status
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or_else(|| panic!("no {field} in /proc/self/status"))
}

/// Resets the peak resident set size to the current one (writes 5 to `/proc/self/clear_refs`).
/// Returns false where the kernel does not allow it (the peak then counts from the start).
pub fn reset_peak_rss() -> bool {
    std::fs::write("/proc/self/clear_refs", "5").is_ok()
}
