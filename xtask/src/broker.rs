//! The Kafka-compatible broker the tests run against.
//!
//! Owns: `cargo xtask broker start|stop|status`, and [`ensure_running`] / [`stop`] for the other
//! tools. The broker is nisshi (pinned in `tools`), listening on a free loopback port with
//! in-memory storage. Its address and process id are written to `target/broker.env`, where tests
//! and tools find them. With `--tls` and/or `--sasl` the commands act on the secured broker
//! instead, a second one (see `secure`).
//!
//! Invariants:
//! - When `KAFKA_BOOTSTRAP` is set, it names the broker to use (a user's own cluster): nothing is
//!   installed, started or stopped.
//! - `stop` ends only the process recorded in `target/broker.env`, and only if that process is
//!   a nisshi broker.
//! - A broker is reported ready only after it answered an ApiVersions request.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use clap::Subcommand;

use crate::Result;
use crate::tools;

/// What to do with the broker.
#[derive(Subcommand, Clone, Copy)]
pub(crate) enum Action {
    /// Start the broker (installing nisshi on first use) unless one is already running.
    Start {
        /// The secured broker instead, with a TLS listener (a CA and a server certificate made
        /// in target/broker-secure/).
        #[arg(long)]
        tls: bool,
        /// The secured broker instead, with SASL/SCRAM (SCRAM-SHA-256 and SCRAM-SHA-512 users;
        /// all in target/broker-secure.env).
        #[arg(long)]
        sasl: bool,
    },
    /// Stop the broker started by `start` (with `--tls` or `--sasl`: the secured one).
    Stop {
        /// The secured broker.
        #[arg(long)]
        tls: bool,
        /// The secured broker.
        #[arg(long)]
        sasl: bool,
    },
    /// Print the brokers' addresses and whether they answer.
    Status,
}

/// The environment variable that names a broker to use instead of starting one.
pub(crate) const BOOTSTRAP_VAR: &str = "KAFKA_BOOTSTRAP";

/// A broker in use.
pub(crate) struct Broker {
    /// `host:port` to bootstrap from.
    pub(crate) bootstrap: String,
    /// Whether this call started it (and so the caller should stop it when done).
    pub(crate) started_here: bool,
}

pub(crate) fn run(action: Action) -> Result<()> {
    match action {
        Action::Start { tls: false, sasl: false } => {
            let broker = ensure_running()?;
            println!("{BOOTSTRAP_VAR}={}", broker.bootstrap);
            Ok(())
        }
        Action::Start { tls, sasl } => {
            let broker = crate::secure::ensure_running(tls, sasl)?;
            for (name, value) in &broker.vars {
                println!("{name}={value}");
            }
            Ok(())
        }
        Action::Stop { tls: false, sasl: false } => stop(),
        Action::Stop { .. } => crate::secure::stop(),
        Action::Status => {
            let plain = status();
            crate::secure::status().and(plain)
        }
    }
}

fn env_file() -> PathBuf {
    crate::workspace_root().join("target").join("broker.env")
}

fn log_file() -> PathBuf {
    crate::workspace_root().join("target").join("broker.log")
}

struct Recorded {
    bootstrap: String,
    pid: Option<u32>,
}

fn read_recorded() -> Option<Recorded> {
    let text = std::fs::read_to_string(env_file()).ok()?;
    let mut bootstrap = None;
    let mut pid = None;
    for line in text.lines() {
        if let Some(v) = line.strip_prefix("KAFKA_BOOTSTRAP=") {
            bootstrap = Some(v.trim().to_owned());
        } else if let Some(v) = line.strip_prefix("BROKER_PID=") {
            pid = v.trim().parse().ok();
        }
    }
    Some(Recorded { bootstrap: bootstrap?, pid })
}

fn external() -> Option<String> {
    std::env::var(BOOTSTRAP_VAR).ok().filter(|v| !v.trim().is_empty())
}

/// Whether `pid` is a live nisshi process.
pub(crate) fn is_our_broker(pid: u32) -> bool {
    std::fs::read(format!("/proc/{pid}/cmdline"))
        .map(|cmdline| String::from_utf8_lossy(&cmdline).contains("nisshi"))
        .unwrap_or(false)
}

/// Sends an ApiVersions v0 request and checks the answer: the broker speaks Kafka.
pub(crate) fn probe(bootstrap: &str) -> Result<()> {
    let addr: SocketAddr = bootstrap
        .parse()
        .or_else(|_| {
            use std::net::ToSocketAddrs;
            bootstrap.to_socket_addrs().ok().and_then(|mut a| a.next()).ok_or(())
        })
        .map_err(|()| format!("`{bootstrap}` is not a host:port address"))?;
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(2))
        .map_err(|e| format!("cannot connect to {bootstrap}: {e}"))?;
    stream.set_read_timeout(Some(Duration::from_secs(5))).map_err(|e| e.to_string())?;
    api_versions(&mut stream, bootstrap)
}

/// Sends an ApiVersions v0 request on `stream` (a connection to `bootstrap`, plain or TLS) and
/// checks the answer.
pub(crate) fn api_versions(stream: &mut (impl Read + Write), bootstrap: &str) -> Result<()> {
    let client_id = b"xtask";
    let mut request = Vec::new();
    request.extend_from_slice(&18i16.to_be_bytes()); // ApiVersions
    request.extend_from_slice(&0i16.to_be_bytes()); // version 0
    request.extend_from_slice(&7i32.to_be_bytes()); // correlation id
    request.extend_from_slice(&(client_id.len() as i16).to_be_bytes());
    request.extend_from_slice(client_id);
    let mut framed = (request.len() as i32).to_be_bytes().to_vec();
    framed.extend_from_slice(&request);
    stream.write_all(&framed).map_err(|e| format!("writing to {bootstrap}: {e}"))?;
    let mut head = [0u8; 10];
    stream.read_exact(&mut head).map_err(|e| format!("reading from {bootstrap}: {e}"))?;
    let correlation = i32::from_be_bytes([head[4], head[5], head[6], head[7]]);
    let error = i16::from_be_bytes([head[8], head[9]]);
    if correlation != 7 {
        return Err(format!("{bootstrap} answered with correlation id {correlation}, not 7"));
    }
    if error != 0 {
        return Err(format!("{bootstrap} answered ApiVersions with error code {error}"));
    }
    Ok(())
}

fn free_port() -> Result<u16> {
    let listener = TcpListener::bind("127.0.0.1:0").map_err(|e| format!("no free port: {e}"))?;
    listener.local_addr().map(|a| a.port()).map_err(|e| e.to_string())
}

fn log_tail(log: &Path) -> String {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(20)..].join("\n")
}

/// Starts a nisshi (installed on first use) on a free loopback port with in-memory storage,
/// working in `workdir` and writing its output to `log`; returns it once it answers, with its
/// address. `detached` puts it in a process group of its own (it outlives a Ctrl-C of the
/// command that started it). The caller owns the process: it is not recorded anywhere.
pub(crate) fn launch(workdir: &Path, log: &Path, detached: bool) -> Result<(Child, String)> {
    let nisshi = tools::ensure(&tools::NISSHI)?;
    let port = free_port()?;
    let bootstrap = format!("127.0.0.1:{port}");
    let url = format!("tcp://{bootstrap}");
    std::fs::create_dir_all(workdir)
        .map_err(|e| format!("cannot create {}: {e}", workdir.display()))?;
    let out =
        std::fs::File::create(log).map_err(|e| format!("cannot create {}: {e}", log.display()))?;
    let err = out.try_clone().map_err(|e| e.to_string())?;
    let mut command = Command::new(&nisshi);
    command
        .args(["broker", "--listener-url", &url, "--advertised-listener-url", &url])
        .args(["--storage-engine", "memory://nisshi/"])
        .current_dir(workdir)
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err);
    if detached {
        use std::os::unix::process::CommandExt;
        command.process_group(0);
    }
    eprintln!("$ {}", crate::cmd::describe(&command));
    let mut child =
        command.spawn().map_err(|e| format!("cannot start {}: {e}", nisshi.display()))?;
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Ok(Some(status)) = child.try_wait() {
            return Err(format!("the broker exited at start ({status}):\n{}", log_tail(log)));
        }
        if probe(&bootstrap).is_ok() {
            return Ok((child, bootstrap));
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            return Err(format!("the broker did not answer within 60 s:\n{}", log_tail(log)));
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Returns a broker that answers: the one named by `KAFKA_BOOTSTRAP`, the one already recorded,
/// or a new one started now.
pub(crate) fn ensure_running() -> Result<Broker> {
    if let Some(bootstrap) = external() {
        probe(&bootstrap)
            .map_err(|e| format!("{BOOTSTRAP_VAR}={bootstrap} does not answer: {e}"))?;
        eprintln!("using the broker at {bootstrap} ({BOOTSTRAP_VAR})");
        return Ok(Broker { bootstrap, started_here: false });
    }
    if let Some(recorded) = read_recorded() {
        let alive = recorded.pid.is_some_and(is_our_broker);
        if alive && probe(&recorded.bootstrap).is_ok() {
            eprintln!("broker already running at {}", recorded.bootstrap);
            return Ok(Broker { bootstrap: recorded.bootstrap, started_here: false });
        }
        // Stale record: the process is gone (a reboot, a kill). Forget it.
        let _ = std::fs::remove_file(env_file());
    }
    let workdir = crate::workspace_root().join("target").join("broker");
    // Its own process group: a Ctrl-C meant for a test run does not kill it half-way.
    let (child, bootstrap) = launch(&workdir, &log_file(), true)?;
    let pid = child.id();
    std::fs::write(
        env_file(),
        format!(
            "KAFKA_BOOTSTRAP={bootstrap}\nBROKER_PID={pid}\nBROKER_LOG={}\n",
            log_file().display()
        ),
    )
    .map_err(|e| format!("cannot write {}: {e}", env_file().display()))?;
    eprintln!("broker started at {bootstrap} (pid {pid}, log {})", log_file().display());
    Ok(Broker { bootstrap, started_here: true })
}

/// Stops the broker recorded in `target/broker.env`, if it is ours and alive.
pub(crate) fn stop() -> Result<()> {
    if external().is_some() {
        eprintln!("{BOOTSTRAP_VAR} is set: that broker is not ours to stop");
        return Ok(());
    }
    let Some(recorded) = read_recorded() else {
        eprintln!("no broker recorded in {}", env_file().display());
        return Ok(());
    };
    if let Some(pid) = recorded.pid.filter(|&pid| is_our_broker(pid)) {
        kill(pid);
        eprintln!("broker at {} (pid {pid}) stopped", recorded.bootstrap);
    } else {
        eprintln!("the recorded broker at {} is not running", recorded.bootstrap);
    }
    std::fs::remove_file(env_file())
        .map_err(|e| format!("cannot remove {}: {e}", env_file().display()))
}

/// Ends the broker process `pid` (checked to be ours by the caller): TERM, then KILL after 10 s.
pub(crate) fn kill(pid: u32) {
    let _ = Command::new("kill").arg(pid.to_string()).status();
    let deadline = Instant::now() + Duration::from_secs(10);
    while is_our_broker(pid) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    if is_our_broker(pid) {
        let _ = Command::new("kill").args(["-KILL", &pid.to_string()]).status();
    }
}

fn status() -> Result<()> {
    let (bootstrap, source) = match (external(), read_recorded()) {
        (Some(b), _) => (b, BOOTSTRAP_VAR.to_owned()),
        (None, Some(r)) => (r.bootstrap, env_file().display().to_string()),
        (None, None) => {
            println!("no broker: run `cargo xtask broker start`");
            return Ok(());
        }
    };
    match probe(&bootstrap) {
        Ok(()) => {
            println!("{BOOTSTRAP_VAR}={bootstrap} (from {source}): answering");
            Ok(())
        }
        Err(e) => Err(format!("{bootstrap} (from {source}) does not answer: {e}")),
    }
}
