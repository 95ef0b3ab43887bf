//! Helpers shared by the workspace integration tests: where the broker is, unique names.
//!
//! The broker comes from `KAFKA_BOOTSTRAP` (set by `cargo xtask test`, or by a user pointing the
//! tests at their own cluster), else from `target/broker.env` (written by `cargo xtask broker
//! start`). Tests create their own uniquely named topics, so they run in parallel and repeatedly.
//!
//! Also here: the Python peer client (confluent-kafka, installed by `cargo xtask test` into
//! `target/peer-venv`), the Go peer (`tests/peer/go`: the Go SDK's envelope rules and sarama,
//! built by `cargo xtask test` into `target/go-peer`), waiting on conditions with deadlines, and
//! [`OwnBroker`], a private broker a test may stop and restart (nisshi with SQLite storage in a
//! scratch directory, killed when its guard drops, also when a test fails; the shared test
//! broker is never touched).

#![allow(clippy::panic, clippy::unwrap_used, clippy::expect_used)] // test helpers: failing loudly is their job

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

/// The Go peer's executable: `BUS_GO_PEER`, else `target/go-peer/bus-go-peer` (built by
/// `cargo xtask test` from `tests/peer/go`).
///
/// # Panics
///
/// When it is missing, or older than a source file in `tests/peer/go`, with how to build it.
pub fn go_peer() -> PathBuf {
    if let Ok(binary) = std::env::var("BUS_GO_PEER") {
        return PathBuf::from(binary);
    }
    let binary = workspace().join("target").join("go-peer").join("bus-go-peer");
    let built = std::fs::metadata(&binary).and_then(|m| m.modified()).ok();
    let sources = workspace().join("tests").join("peer").join("go");
    let newest_source = std::fs::read_dir(&sources)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|entry| entry.metadata().and_then(|m| m.modified()).ok())
        .max();
    let how = "run the tests with `cargo xtask test` (it installs Debian's golang-go and sarama \
               packages when missing, as root, and builds the peer), or build it by hand: \
               `GOPATH=$PWD/target/go-peer/gopath:/usr/share/gocode GO111MODULE=off go build -o \
               target/go-peer/bus-go-peer ./tests/peer/go`, or set BUS_GO_PEER";
    match (built, newest_source) {
        (None, _) => panic!("the Go peer is not built at {}: {how}", binary.display()),
        (Some(built), Some(source)) if source > built => {
            panic!("the Go peer at {} is older than its sources: {how}", binary.display())
        }
        _ => binary,
    }
}

/// Runs the Go peer with `args` and `stdin`, returning what it printed.
///
/// # Panics
///
/// When it fails, with its stderr.
pub fn run_go_peer(args: &[&str], stdin: &[u8]) -> Vec<u8> {
    // The input goes through a file: the peer prints while it reads, so a pipe written here
    // before reading its output could fill up both ways.
    let input = std::env::temp_dir().join(unique("go-peer-input"));
    std::fs::write(&input, stdin).unwrap();
    let output = Command::new(go_peer())
        .args(args)
        .stdin(std::fs::File::open(&input).unwrap())
        .output()
        .unwrap_or_else(|e| panic!("cannot run the Go peer: {e}"));
    let _ = std::fs::remove_file(&input);
    assert!(
        output.status.success(),
        "the Go peer `{}` failed ({}): {}",
        args.join(" "),
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    output.stdout
}

/// Runs the Go peer and parses its one JSON document.
///
/// # Panics
///
/// When it fails or prints no JSON.
pub fn run_go_peer_json(args: &[&str]) -> serde_json::Value {
    let out = run_go_peer(args, b"");
    serde_json::from_slice(&out).unwrap_or_else(|e| {
        panic!("the Go peer printed no JSON ({e}): {}", String::from_utf8_lossy(&out))
    })
}

/// A `{"text": …}` or `{"hex": …}` value of the Go peer's output, as bytes.
///
/// # Panics
///
/// When it is neither.
pub fn go_bytes(value: &serde_json::Value) -> Vec<u8> {
    if let Some(text) = value.get("text").and_then(|t| t.as_str()) {
        return text.as_bytes().to_vec();
    }
    let hex = value.get("hex").and_then(|h| h.as_str()).unwrap_or_else(|| {
        panic!("neither text nor hex: {value}");
    });
    (0..hex.len()).step_by(2).map(|i| u8::from_str_radix(&hex[i..i + 2], 16).unwrap()).collect()
}

/// Lowercase hex of `bytes`, as the Go peer's `decode` reads its input.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The differences between `ours` and the fields of the Go peer's verdict on it (`go`, the
/// verdict's `envelope` object): every field, the timestamp's text, instant and offset, and
/// the payload's bytes. Go's empty optional is our `None`.
pub fn go_field_differences(ours: &bus_core::Envelope, go: &serde_json::Value) -> Vec<String> {
    let text = |v: &serde_json::Value| String::from_utf8_lossy(&go_bytes(v)).into_owned();
    let optional = |v: &serde_json::Value| Some(text(v)).filter(|s| !s.is_empty());
    let utc = ours.timestamp.utc();
    let pairs = [
        ("event_id", ours.event_id.clone(), text(&go["event_id"])),
        ("aggregate_id", ours.aggregate_id.clone(), text(&go["aggregate_id"])),
        ("event_type", ours.event_type.clone(), text(&go["event_type"])),
        ("event_version", ours.event_version.to_string(), go["event_version"].to_string()),
        ("timestamp", ours.timestamp.to_string(), go["timestamp"].as_str().unwrap_or("").into()),
        (
            "timestamp instant",
            format!("{}.{:09}", utc.timestamp(), utc.timestamp_subsec_nanos()),
            format!("{}.{:09}", go["unix_seconds"], go["nanos"].as_u64().unwrap_or(u64::MAX)),
        ),
        (
            "timestamp offset",
            ours.timestamp.offset_seconds().to_string(),
            go["offset_seconds"].to_string(),
        ),
        ("trace_id", format!("{:?}", ours.trace_id), format!("{:?}", optional(&go["trace_id"]))),
        (
            "correlation_id",
            format!("{:?}", ours.correlation_id),
            format!("{:?}", optional(&go["correlation_id"])),
        ),
        ("tenant_id", format!("{:?}", ours.tenant_id), format!("{:?}", optional(&go["tenant_id"]))),
        ("payload", hex(ours.payload.as_bytes()), hex(&go_bytes(&go["payload"]))),
    ];
    pairs
        .into_iter()
        .filter(|(_, ours, go)| ours != go)
        .map(|(what, ours, go)| format!("{what}: ours {ours:?}, Go's {go:?}"))
        .collect()
}

/// A sarama consumer-group member in a child process (`bus-go-peer group`), logging to a JSON
/// lines file what it is assigned and handles, each line with its wall-clock time in
/// nanoseconds (`at`). Killed on drop if still running.
pub struct GoGroupMember {
    child: Option<Child>,
    out: PathBuf,
    /// Its name in the test's logs.
    pub name: String,
}

impl GoGroupMember {
    /// Starts a member named `name` of `group` on `topic`, with extra `bus-go-peer group`
    /// flags (`--offset-retention 24h`: commit with OffsetCommit v2 instead of v1).
    pub fn start(topic: &str, group: &str, name: &str, flags: &[&str]) -> GoGroupMember {
        let out = std::env::temp_dir().join(unique("go-group")).with_extension("jsonl");
        std::fs::write(&out, b"").unwrap();
        let child = Command::new(go_peer())
            .args(["group", "--bootstrap", &bootstrap(), "--topic", topic, "--group", group])
            .args(flags)
            .arg("--out")
            .arg(&out)
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start the Go group member: {e}"));
        GoGroupMember { child: Some(child), out, name: name.to_owned() }
    }

    /// Every complete line it logged so far.
    pub fn events(&self) -> Vec<serde_json::Value> {
        let text = std::fs::read_to_string(&self.out).unwrap_or_default();
        text.lines().filter_map(|line| serde_json::from_str(line).ok()).collect()
    }

    /// Closes its stdin (it leaves the group and exits) and waits up to `timeout` for it.
    ///
    /// # Panics
    ///
    /// When it does not exit in time, or exits with a failure.
    pub async fn stop(&mut self, timeout: Duration) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        drop(child.stdin.take());
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                assert!(status.success(), "the Go group member {} failed: {status}", self.name);
                return;
            }
            if tokio::time::Instant::now() >= deadline {
                let _ = child.kill();
                let _ = child.wait();
                panic!("the Go group member {} did not exit within {timeout:?}", self.name);
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

impl Drop for GoGroupMember {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        let _ = std::fs::remove_file(&self.out);
    }
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
