//! The `service` example (bus-kafka) run as an orchestrator runs a service, by `cargo xtask test`.
//!
//! Owns: [`run`]. Two incarnations of the service share a consumer group and topics of their
//! own. The first places orders itself and bills them; once it has billed some, its `/health`
//! and `/metrics` are fetched and it is sent SIGTERM while orders still flow: it must exit 0
//! within its shutdown deadline (plus a margin for the process), its last line reporting a
//! clean shutdown with no task alive. The second (placing nothing) must bill every order the
//! first placed and did not bill (left for redelivery, never lost), then stop the same way.
//! The service logs JSON lines (its stdout is a pipe), read here for `order placed`, `order
//! billed` and `shut down`.

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use crate::Result;
use crate::broker;

/// The shutdown deadline given to the service.
const SHUTDOWN: Duration = Duration::from_secs(20);
/// Orders the first incarnation bills before it is stopped.
const BILLED_BEFORE_STOP: usize = 40;
/// The bound of every wait for the service's progress.
const DEADLINE: Duration = Duration::from_secs(120);

/// What a running incarnation has logged so far.
#[derive(Default)]
struct Seen {
    placed: BTreeSet<String>,
    billed: BTreeSet<String>,
    /// It logged `serving` (connected, subscribed, its endpoint up).
    serving: bool,
    /// The `shut down` line.
    report: Option<String>,
    lines: Vec<String>,
}

impl Seen {
    /// Takes in one log line.
    fn take(&mut self, line: String) {
        match field(&line, "message").as_deref() {
            Some("order placed") => self.placed.extend(field(&line, "event_id")),
            Some("order billed") => self.billed.extend(field(&line, "event_id")),
            Some("serving") => self.serving = true,
            Some("shut down") => self.report = Some(line.clone()),
            _ => {}
        }
        self.lines.push(line);
    }
}

/// One running incarnation: the process and its log lines.
struct Service {
    child: Child,
    lines: mpsc::Receiver<String>,
    seen: Seen,
    http: String,
}

/// Builds the example, runs the two incarnations against `bootstrap`, and checks them.
pub(crate) fn run(bootstrap: &str) -> Result<()> {
    let mut build = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    build.args(["build", "--quiet", "-p", "bus-kafka", "--example", "service"]);
    crate::cmd::run(&mut build)?;
    let binary = target_dir().join("debug/examples/service");
    let id = std::process::id();
    let names = [
        ("SERVICE_ORDERS_TOPIC", format!("service-orders-{id}")),
        ("SERVICE_BILLED_TOPIC", format!("service-billed-{id}")),
        ("SERVICE_GROUP", format!("service-billing-{id}")),
    ];

    let mut first = Service::start(&binary, bootstrap, &names, true)?;
    first.wait_until("orders to be billed", |seen| seen.billed.len() >= BILLED_BEFORE_STOP)?;
    first.check_endpoints()?;
    let first = first.stop()?;
    eprintln!(
        "service example: the first incarnation placed {} and billed {} order(s) before SIGTERM",
        first.placed.len(),
        first.billed.len()
    );

    let mut second = Service::start(&binary, bootstrap, &names, false)?;
    let left: BTreeSet<String> = first.placed.difference(&first.billed).cloned().collect();
    second.wait_until("the orders left by the first to be billed", |seen| {
        seen.serving && left.is_subset(&seen.billed)
    })?;
    let second = second.stop()?;
    let billed: BTreeSet<&String> = first.billed.iter().chain(&second.billed).collect();
    let lost: Vec<&String> = first.placed.iter().filter(|id| !billed.contains(id)).collect();
    if !lost.is_empty() {
        return Err(format!("service example: orders placed and never billed: {lost:?}"));
    }
    eprintln!(
        "service example: the second incarnation billed {} order(s), {} of them left by the \
         first; none lost",
        second.billed.len(),
        left.len()
    );
    Ok(())
}

impl Service {
    fn start(
        binary: &PathBuf,
        bootstrap: &str,
        names: &[(&str, String)],
        place_orders: bool,
    ) -> Result<Service> {
        let port = testbed::free_port()?;
        let http = format!("127.0.0.1:{port}");
        let mut command = Command::new(binary);
        command
            .env(broker::BOOTSTRAP_VAR, bootstrap)
            .env("SERVICE_HTTP", &http)
            .env("SERVICE_SHUTDOWN_TIMEOUT", format!("{}s", SHUTDOWN.as_secs()))
            .env_remove("SERVICE_CONFIG")
            .env_remove("SERVICE_DEMO_ORDERS_EVERY")
            .stdin(Stdio::null())
            .stdout(Stdio::piped());
        for (name, value) in names {
            command.env(name, value);
        }
        if place_orders {
            command.env("SERVICE_DEMO_ORDERS_EVERY", "20ms");
        }
        let mut child =
            command.spawn().map_err(|e| format!("cannot run {}: {e}", binary.display()))?;
        let stdout = child.stdout.take().ok_or("the service's stdout was not captured")?;
        let (tx, lines) = mpsc::channel();
        // The reader ends with the service's stdout.
        #[allow(clippy::disallowed_methods)] // xtask is not the library
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(std::result::Result::ok) {
                if tx.send(line).is_err() {
                    return;
                }
            }
        });
        Ok(Service { child, lines, seen: Seen::default(), http })
    }

    /// Reads the lines logged so far, waiting up to `wait` for the first.
    fn read(&mut self, wait: Duration) {
        let mut next = self.lines.recv_timeout(wait).ok();
        while let Some(line) = next {
            self.seen.take(line);
            next = self.lines.try_recv().ok();
        }
    }

    fn wait_until(&mut self, what: &str, done: impl Fn(&Seen) -> bool) -> Result<()> {
        let deadline = Instant::now() + DEADLINE;
        while !done(&self.seen) {
            if Instant::now() >= deadline {
                return Err(self.failure(&format!("timed out waiting for {what}")));
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                return Err(self.failure(&format!("exited ({status}) waiting for {what}")));
            }
            self.read(Duration::from_millis(200));
        }
        Ok(())
    }

    /// `/health` answers 200 and `/metrics` carries the bus's metrics.
    fn check_endpoints(&mut self) -> Result<()> {
        let health = http_get(&self.http, "/health")?;
        if !health.starts_with("HTTP/1.1 200") {
            return Err(self.failure(&format!("GET /health answered {health}")));
        }
        let metrics = http_get(&self.http, "/metrics")?;
        if !metrics.contains("bus_publish_records_total") {
            return Err(self.failure(&format!("GET /metrics lacks the bus's metrics: {metrics}")));
        }
        Ok(())
    }

    /// Sends SIGTERM and waits for a clean exit by the shutdown deadline (and 10 s for the
    /// process); returns what it logged.
    fn stop(mut self) -> Result<Seen> {
        let pid = self.child.id().to_string();
        crate::cmd::run(Command::new("kill").args(["-TERM", &pid]))?;
        let deadline = Instant::now() + SHUTDOWN + Duration::from_secs(10);
        let status = loop {
            self.read(Duration::from_millis(100));
            match self.child.try_wait() {
                Ok(Some(status)) => break status,
                Ok(None) if Instant::now() < deadline => {}
                Ok(None) => {
                    let _ = self.child.kill();
                    let _ = self.child.wait();
                    return Err(self.failure("still running past its shutdown deadline"));
                }
                Err(error) => return Err(format!("waiting for the service: {error}")),
            }
        };
        // What it logged last (the reader ends with its stdout).
        while let Ok(line) = self.lines.recv_timeout(Duration::from_secs(5)) {
            self.seen.take(line);
        }
        if !status.success() {
            return Err(self.failure(&format!("exited with {status} after SIGTERM")));
        }
        let clean = self.seen.report.as_deref().is_some_and(|r| {
            field(r, "clean").as_deref() == Some("true")
                && field(r, "live_tasks").as_deref() == Some("0")
        });
        if !clean {
            return Err(self.failure("its shutdown report is not clean"));
        }
        Ok(self.seen)
    }

    fn failure(&self, what: &str) -> String {
        let tail: Vec<&String> = self.seen.lines.iter().rev().take(20).collect();
        let tail: Vec<&str> = tail.into_iter().rev().map(String::as_str).collect();
        format!("service example: {what}; its last lines:\n{}", tail.join("\n"))
    }
}

/// The value of `name` in a JSON log line (a string's contents, or a number or boolean as
/// written), without a JSON parser: the service's fields are plain.
fn field(line: &str, name: &str) -> Option<String> {
    let key = format!("\"{name}\":");
    let rest = &line[line.find(&key)? + key.len()..];
    if let Some(quoted) = rest.strip_prefix('"') {
        return quoted.find('"').map(|end| quoted[..end].to_owned());
    }
    let end = rest.find([',', '}']).unwrap_or(rest.len());
    Some(rest[..end].trim().to_owned())
}

/// GET `path` from `address` (HTTP/1.1, connection closed after): the whole answer.
fn http_get(address: &str, path: &str) -> Result<String> {
    let mut stream =
        TcpStream::connect(address).map_err(|e| format!("connecting to {address}: {e}"))?;
    stream.set_read_timeout(Some(Duration::from_secs(10))).map_err(|e| e.to_string())?;
    let request = format!("GET {path} HTTP/1.1\r\nHost: {address}\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).map_err(|e| format!("GET {path}: {e}"))?;
    let mut answer = String::new();
    stream.read_to_string(&mut answer).map_err(|e| format!("GET {path}: {e}"))?;
    Ok(answer)
}

/// Where cargo builds: `CARGO_TARGET_DIR`, or the workspace's `target`.
fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| crate::workspace_root().join("target"))
}
