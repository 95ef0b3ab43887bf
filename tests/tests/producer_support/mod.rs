//! Support for the producer tests: the Python peer client (confluent-kafka) and a private
//! broker that a test may stop and restart.
//!
//! The peer runs from `target/peer-venv` (installed by `cargo xtask test`), or from the Python
//! named by `BUS_PEER_PYTHON`. A private broker is a second nisshi process on a free loopback
//! port with SQLite storage in a scratch directory, so that its data survives a restart; it is
//! killed when its guard drops, also when a test fails. The shared test broker is never touched.

#![allow(dead_code, unreachable_pub, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::io::Write;
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The workspace root.
pub fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// The Python interpreter that has confluent-kafka.
///
/// # Panics
///
/// When none is installed, with what to install.
pub fn peer_python() -> PathBuf {
    if let Ok(python) = std::env::var("BUS_PEER_PYTHON") {
        return PathBuf::from(python);
    }
    let venv = workspace().join("target").join("peer-venv").join("bin").join("python");
    if venv.is_file() {
        return venv;
    }
    panic!(
        "the peer client (Python confluent-kafka 2.16.1) is not installed at {}: run the tests \
         with `cargo xtask test` (it installs it), or install it by hand with `python3 -m venv \
         target/peer-venv && target/peer-venv/bin/pip install confluent-kafka==2.16.1`, or set \
         BUS_PEER_PYTHON to a python that has it",
        venv.display()
    );
}

/// Runs `tests/peer/kafka_peer.py` with `args` (and `stdin`), returning its JSON output.
///
/// # Panics
///
/// When the peer fails, with its stderr.
pub fn peer(args: &[&str], stdin: &str) -> serde_json::Value {
    let script = workspace().join("tests").join("peer").join("kafka_peer.py");
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

/// Waits for `condition` up to `timeout`, checking every 20 ms.
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
