//! Apache Kafka nodes for the project's tests: the one place that knows how to resolve, configure,
//! format, start, probe and end an Apache Kafka 4.4 KRaft node on loopback.
//!
//! Owns:
//! - [`Distribution`]: the broker's Java classpath, resolved by Maven from Maven Central
//!   (`testbed/pom.xml`) into Maven's local repository once and kept in
//!   `target/kafka/classpath.txt`.
//! - [`Properties`]: a node's `server.properties`, written in a node directory beside a log4j2
//!   configuration that sends the broker's log to `<dir>/server.log`.
//! - [`format()`], [`launch`], [`wait_started`]: formatting a node's storage (once, before its first
//!   start), starting its JVM, and waiting until it logged that it started and answers.
//! - [`probe`] and [`api_versions`]: whether a listener speaks Kafka (an ApiVersions v0 round
//!   trip, plain or over a TLS stream the caller opened).
//! - [`PrivateNode`]: a single-node cluster of a test's own (tests that stop and restart a broker
//!   use one: the shared cluster is never touched), killed on drop.
//!
//! Users: `cargo xtask broker` (the shared three-node cluster), the integration tests' private
//! brokers (`bus-tests`), and leakcheck's fault scenario.
//!
//! Invariants: a node is reported started only after its log says `Kafka Server started` and its
//! first listener accepts a connection; every wait here has a deadline; nothing is downloaded
//! except by Maven from the repositories its settings name (Maven Central by default).

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub mod cluster;

/// The Apache Kafka version the tests run against (the artifact `testbed/pom.xml` names).
pub const KAFKA_VERSION: &str = "4.4.0";

/// The environment variable through which tests find the classpath (set by `cargo xtask test`;
/// without it, `target/kafka/classpath.txt` is read).
pub const CLASSPATH_VAR: &str = "BUS_KAFKA_CLASSPATH";

/// Errors of the testbed: a message for whoever runs the tests.
pub type Result<T> = std::result::Result<T, String>;

/// How long a node may take from launch to `Kafka Server started`. A JVM start with the
/// cluster's own nodes and a build sharing two cores has been seen to take 30 s.
pub const START_DEADLINE: Duration = Duration::from_secs(120);

/// The workspace root (the parent of this crate's directory).
pub fn workspace_root() -> PathBuf {
    let manifest = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    manifest.parent().map(PathBuf::from).unwrap_or(manifest)
}

/// The Apache Kafka broker as a Java classpath.
#[derive(Debug, Clone)]
pub struct Distribution {
    classpath: String,
}

impl Distribution {
    fn classpath_file() -> PathBuf {
        workspace_root().join("target").join("kafka").join("classpath.txt")
    }

    /// The distribution, resolving it with Maven first when `target/kafka/classpath.txt` is
    /// missing or names a jar that is gone (about 45 MB from Maven Central the first time; a few
    /// seconds when Maven's local repository has it).
    pub fn resolve() -> Result<Distribution> {
        if let Ok(found) = Distribution::recorded() {
            return Ok(found);
        }
        let file = Distribution::classpath_file();
        if let Some(parent) = file.parent() {
            std::fs::create_dir_all(parent)
                .map_err(|e| format!("cannot create {}: {e}", parent.display()))?;
        }
        eprintln!(
            "resolving Apache Kafka {KAFKA_VERSION} with Maven from Maven Central (testbed/pom.xml)"
        );
        let status = Command::new("mvn")
            .args(["-B", "-q", "--no-transfer-progress", "dependency:build-classpath"])
            .arg(format!("-Dmdep.outputFile={}", file.display()))
            .current_dir(workspace_root().join("testbed"))
            .stdin(Stdio::null())
            .status()
            .map_err(|e| format!("cannot run mvn (Maven 3 with Java 17 is needed): {e}"))?;
        if !status.success() {
            return Err(format!(
                "mvn dependency:build-classpath failed ({status}): Apache Kafka {KAFKA_VERSION} \
                 could not be resolved from Maven Central"
            ));
        }
        Distribution::recorded()
    }

    /// The distribution already resolved: [`CLASSPATH_VAR`] or `target/kafka/classpath.txt`.
    pub fn recorded() -> Result<Distribution> {
        let classpath = match std::env::var(CLASSPATH_VAR) {
            Ok(value) if !value.trim().is_empty() => value,
            _ => {
                let file = Distribution::classpath_file();
                std::fs::read_to_string(&file).map_err(|e| {
                    format!(
                        "{}: {e} (`cargo xtask broker start` resolves Apache Kafka)",
                        file.display()
                    )
                })?
            }
        };
        let classpath = classpath.trim().to_owned();
        let complete = !classpath.is_empty()
            && classpath.split(':').all(|jar| Path::new(jar).is_file())
            && classpath.contains(&format!("kafka_2.13-{KAFKA_VERSION}.jar"));
        if !complete {
            return Err(format!("the recorded classpath is not Apache Kafka {KAFKA_VERSION}"));
        }
        Ok(Distribution { classpath })
    }

    /// The classpath, `:`-separated.
    pub fn classpath(&self) -> &str {
        &self.classpath
    }

    /// A `java` command on this classpath running `main_class` with `heap` (e.g. `512m`) and
    /// the JVM options `jvm` (system properties, for instance).
    pub fn java(&self, heap: &str, jvm: &[String], main_class: &str) -> Command {
        let mut command = Command::new("java");
        command
            .arg(format!("-Xms{heap}"))
            .arg(format!("-Xmx{heap}"))
            .args(["-XX:+UseG1GC", "-XX:MaxGCPauseMillis=20", "-Djava.awt.headless=true"])
            .args(jvm)
            .arg("-cp")
            .arg(&self.classpath)
            .arg(main_class)
            .stdin(Stdio::null());
        command
    }
}

/// A node's `server.properties`, in order of insertion by key.
#[derive(Debug, Clone, Default)]
pub struct Properties {
    entries: BTreeMap<String, String>,
}

impl Properties {
    /// Sets `key` to `value`.
    pub fn set(&mut self, key: &str, value: impl Into<String>) -> &mut Self {
        self.entries.insert(key.to_owned(), value.into());
        self
    }

    /// The value of `key`.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.entries.get(key).map(String::as_str)
    }

    /// The settings every test node shares: logs and data in `dir`, fast group joins, no
    /// telemetry, small segments.
    pub fn for_test_node(dir: &Path) -> Properties {
        let mut properties = Properties::default();
        properties
            .set("log.dirs", dir.join("data").display().to_string())
            .set("group.initial.rebalance.delay.ms", "0")
            .set("auto.create.topics.enable", "true")
            .set("num.partitions", "1")
            .set("log.segment.bytes", (64 * 1024 * 1024).to_string())
            .set("num.network.threads", "2")
            .set("num.io.threads", "4")
            .set("log.flush.interval.messages", i64::MAX.to_string())
            .set("delete.topic.enable", "true");
        properties
    }

    /// Writes `dir/server.properties` and `dir/log4j2.properties`.
    pub fn write(&self, dir: &Path) -> Result<()> {
        std::fs::create_dir_all(dir)
            .map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
        let mut text = String::from("# written by the testbed; see testbed/src/lib.rs\n");
        for (key, value) in &self.entries {
            text.push_str(&format!("{key}={value}\n"));
        }
        write(&dir.join("server.properties"), &text)?;
        let log4j = format!(
            "status = warn\n\
             appender.file.type = File\n\
             appender.file.name = FILE\n\
             appender.file.fileName = {}\n\
             appender.file.layout.type = PatternLayout\n\
             appender.file.layout.pattern = [%d] %p %m (%c)%n\n\
             rootLogger.level = INFO\n\
             rootLogger.appenderRef.file.ref = FILE\n\
             logger.state.name = state.change.logger\n\
             logger.state.level = WARN\n\
             logger.request.name = kafka.request.logger\n\
             logger.request.level = WARN\n",
            dir.join("server.log").display()
        );
        write(&dir.join("log4j2.properties"), &log4j)
    }
}

fn write(path: &Path, text: &str) -> Result<()> {
    std::fs::write(path, text).map_err(|e| format!("cannot write {}: {e}", path.display()))
}

/// A new KRaft cluster id: 16 random bytes, base64url without padding (22 characters), never
/// starting with `-` (which a command line would read as an option; Kafka's own
/// `Uuid.randomUuid` draws again in that case too).
pub fn cluster_id() -> Result<String> {
    use base64::Engine;
    let mut source = std::fs::File::open("/dev/urandom")
        .map_err(|e| format!("cannot read /dev/urandom: {e}"))?;
    loop {
        let mut bytes = [0u8; 16];
        source.read_exact(&mut bytes).map_err(|e| format!("cannot read /dev/urandom: {e}"))?;
        let id = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes);
        if !id.starts_with('-') {
            return Ok(id);
        }
    }
}

/// Formats the storage of the node configured in `dir` (its `server.properties` written) for
/// cluster `cluster_id`; `extra` are further StorageTool arguments (e.g. `--add-scram`).
pub fn format(dist: &Distribution, dir: &Path, cluster_id: &str, extra: &[String]) -> Result<()> {
    let log = dir.join("format.log");
    let out =
        std::fs::File::create(&log).map_err(|e| format!("cannot create {}: {e}", log.display()))?;
    let err = out.try_clone().map_err(|e| e.to_string())?;
    let status = dist
        .java("256m", &[log4j_option(dir)], "kafka.tools.StorageTool")
        .args(["format", "--ignore-formatted", "-c"])
        .arg(dir.join("server.properties"))
        .arg(format!("--cluster-id={cluster_id}"))
        .args(extra)
        .stdout(out)
        .stderr(err)
        .status()
        .map_err(|e| format!("cannot run java (Java 17 is needed): {e}"))?;
    if status.success() {
        Ok(())
    } else {
        Err(format!(
            "formatting {} failed ({status}):\n{}",
            dir.display(),
            std::fs::read_to_string(&log).unwrap_or_default()
        ))
    }
}

/// The system property that marks a node's JVM with its directory (see [`is_node`]).
const NODE_MARK: &str = "bus.testbed.node";

fn log4j_option(dir: &Path) -> String {
    format!("-Dlog4j2.configurationFile={}", dir.join("log4j2.properties").display())
}

/// Starts the node configured in `dir` with `heap` (e.g. `768m`), its output appended to
/// `dir/stdout.log` and its log in `dir/server.log` (emptied first). `detached`: in a process
/// group of its own, so that it outlives a Ctrl-C of the command that started it.
pub fn launch(dist: &Distribution, dir: &Path, heap: &str, detached: bool) -> Result<Child> {
    let _ = std::fs::remove_file(dir.join("server.log"));
    let stdout = dir.join("stdout.log");
    let out = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&stdout)
        .map_err(|e| format!("cannot open {}: {e}", stdout.display()))?;
    let err = out.try_clone().map_err(|e| e.to_string())?;
    let mut command = dist.java(
        heap,
        &[log4j_option(dir), format!("-D{NODE_MARK}={}", dir.display())],
        "kafka.Kafka",
    );
    command
        .arg(dir.join("server.properties"))
        .current_dir(dir)
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err);
    if detached {
        use std::os::unix::process::CommandExt;
        command.process_group(0);
    }
    command.spawn().map_err(|e| format!("cannot start java (Java 17 is needed): {e}"))
}

/// Whether process `pid` is a testbed node running from `dir`.
pub fn is_node(pid: u32, dir: &Path) -> bool {
    std::fs::read(format!("/proc/{pid}/cmdline")).is_ok_and(|cmdline| {
        let text = String::from_utf8_lossy(&cmdline);
        text.contains("kafka.Kafka") && text.contains(&format!("-D{NODE_MARK}={}", dir.display()))
    })
}

/// The last `lines` lines of `dir/server.log`, for error messages.
pub fn log_tail(dir: &Path, lines: usize) -> String {
    let text = std::fs::read_to_string(dir.join("server.log")).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// Waits until the node in `dir` logged `Kafka Server started` and `address` accepts a
/// connection; fails when `exited` says the process ended, or at [`START_DEADLINE`].
pub fn wait_started(dir: &Path, address: &str, mut exited: impl FnMut() -> bool) -> Result<()> {
    let deadline = Instant::now() + START_DEADLINE;
    loop {
        let logged = std::fs::read_to_string(dir.join("server.log"))
            .is_ok_and(|log| log.contains("Kafka Server started"));
        if logged && TcpStream::connect(address).is_ok() {
            return Ok(());
        }
        if exited() {
            return Err(format!(
                "the node in {} exited at start:\n{}",
                dir.display(),
                log_tail(dir, 30)
            ));
        }
        if Instant::now() >= deadline {
            return Err(format!(
                "the node in {} did not start within {START_DEADLINE:?}:\n{}",
                dir.display(),
                log_tail(dir, 30)
            ));
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Waits until `done` holds, checking every 50 ms, for at most 30 s; the error names `what`.
pub fn wait_for(what: &str, mut done: impl FnMut() -> bool) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !done() {
        if Instant::now() >= deadline {
            return Err(format!("timed out after 30 s waiting for {what}"));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(())
}

/// Sends an ApiVersions v0 request and checks the answer: the broker speaks Kafka.
pub fn probe(bootstrap: &str) -> Result<()> {
    api_versions(&mut connect(bootstrap)?, bootstrap)
}

/// A plaintext connection to `bootstrap` (`host:port`), within 2 s, its reads bounded by 5 s.
fn connect(bootstrap: &str) -> Result<TcpStream> {
    let addr: SocketAddr = bootstrap
        .parse()
        .or_else(|_| {
            use std::net::ToSocketAddrs;
            bootstrap.to_socket_addrs().ok().and_then(|mut a| a.next()).ok_or(())
        })
        .map_err(|()| format!("`{bootstrap}` is not a host:port address"))?;
    let stream = TcpStream::connect_timeout(&addr, Duration::from_secs(2))
        .map_err(|e| format!("cannot connect to {bootstrap}: {e}"))?;
    stream.set_read_timeout(Some(Duration::from_secs(5))).map_err(|e| e.to_string())?;
    Ok(stream)
}

/// Sends an ApiVersions v0 request on `stream` (a connection to `bootstrap`, plain or TLS) and
/// checks the answer.
pub fn api_versions(stream: &mut (impl Read + Write), bootstrap: &str) -> Result<()> {
    // ApiVersions v0: no body. The answer: correlation id, then the error code.
    let head = exchange(stream, bootstrap, 18, 0, &[], 2)?;
    let error = i16::from_be_bytes([head[0], head[1]]);
    if error != 0 {
        return Err(format!("{bootstrap} answered ApiVersions with error code {error}"));
    }
    Ok(())
}

/// The correlation id of the requests [`exchange`] sends.
const CORRELATION: i32 = 7;

/// Sends one request (`api` in `version`, header v1 with client id `xtask`, then `body`) on
/// `stream` and reads the answer's size, its correlation id (checked) and the next `head`
/// bytes, which it returns.
fn exchange(
    stream: &mut (impl Read + Write),
    bootstrap: &str,
    api: i16,
    version: i16,
    body: &[u8],
    head: usize,
) -> Result<Vec<u8>> {
    let client_id = b"xtask";
    let mut request = Vec::new();
    request.extend_from_slice(&api.to_be_bytes());
    request.extend_from_slice(&version.to_be_bytes());
    request.extend_from_slice(&CORRELATION.to_be_bytes());
    request.extend_from_slice(&(client_id.len() as i16).to_be_bytes());
    request.extend_from_slice(client_id);
    request.extend_from_slice(body);
    let mut framed = (request.len() as i32).to_be_bytes().to_vec();
    framed.extend_from_slice(&request);
    stream.write_all(&framed).map_err(|e| format!("writing to {bootstrap}: {e}"))?;
    // Size, correlation id, then what the caller reads.
    let mut answer = vec![0u8; 8 + head];
    stream.read_exact(&mut answer).map_err(|e| format!("reading from {bootstrap}: {e}"))?;
    let correlation = i32::from_be_bytes([answer[4], answer[5], answer[6], answer[7]]);
    if correlation != CORRELATION {
        return Err(format!(
            "{bootstrap} answered with correlation id {correlation}, not {CORRELATION}"
        ));
    }
    Ok(answer.split_off(8))
}

/// The coordinator kinds of FindCoordinator (v1 and later): 0 a consumer group, 1 a
/// transactional id.
const COORDINATOR_KINDS: [(i8, &str); 2] = [(0, "group"), (1, "transaction")];

/// Asks `bootstrap` for a group coordinator and a transaction coordinator until both are
/// answered without error, for at most 90 s. The broker creates `__consumer_offsets` and
/// `__transaction_state` at the first such question and answers COORDINATOR_NOT_AVAILABLE until
/// their partitions have leaders; asking once at start-up means no test meets that window.
pub fn wait_for_coordinators(bootstrap: &str) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(90);
    for (kind, name) in COORDINATOR_KINDS {
        while let Err(last) = find_coordinator(bootstrap, kind) {
            if Instant::now() >= deadline {
                return Err(format!(
                    "no {name} coordinator from {bootstrap} within 90 s; last answer: {last}"
                ));
            }
            std::thread::sleep(Duration::from_millis(250));
        }
    }
    Ok(())
}

/// One FindCoordinator v1 for a key of kind `kind` at `bootstrap`: `Ok` when answered without
/// error.
fn find_coordinator(bootstrap: &str, kind: i8) -> Result<()> {
    let mut stream = connect(bootstrap)?;
    let key = b"bus-testbed-ready";
    let mut body = (key.len() as i16).to_be_bytes().to_vec();
    body.extend_from_slice(key);
    body.push(kind.to_be_bytes()[0]);
    // FindCoordinator v1; the answer: throttle time, then the error code.
    let head = exchange(&mut stream, bootstrap, 10, 1, &body, 6)?;
    let error = i16::from_be_bytes([head[4], head[5]]);
    if error != 0 {
        return Err(format!("FindCoordinator answered with error code {error}"));
    }
    Ok(())
}

/// A free loopback port (free when asked: bind it soon).
pub fn free_port() -> Result<u16> {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .map(|address| address.port())
        .map_err(|e| format!("no free port: {e}"))
}

/// A single-node Apache Kafka cluster of a test's own: broker and controller in one process,
/// replication factor 1, data kept across [`PrivateNode::restart`], killed and removed on drop.
#[derive(Debug)]
pub struct PrivateNode {
    dir: PathBuf,
    port: u16,
    advertise: u16,
    /// The SASL_SSL listener's port, when it has one.
    secure: Option<u16>,
    dist: Distribution,
    child: Option<Child>,
}

impl PrivateNode {
    /// Starts a node listening on `port` and advertising `advertise` (a proxy in front of it,
    /// or `port` itself), in a fresh directory under the system's temporary directory; returns
    /// once it started.
    pub fn start(port: u16, advertise: u16) -> Result<PrivateNode> {
        PrivateNode::start_with(port, advertise, None)
    }

    /// As [`PrivateNode::start`], with a second listener `SECURE` (SASL_SSL) whose settings
    /// (`listener.name.secure.*`, the keystore) and format arguments (`--add-scram`) `secure`
    /// gives.
    pub fn start_secured(port: u16, secure: &cluster::Layout) -> Result<PrivateNode> {
        PrivateNode::start_with(port, port, Some(secure))
    }

    fn start_with(
        port: u16,
        advertise: u16,
        secure: Option<&cluster::Layout>,
    ) -> Result<PrivateNode> {
        let dist = Distribution::recorded()?;
        let dir =
            std::env::temp_dir().join(format!("bus-kafka-node-{}-{port}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let controller = free_port()?;
        let secure_port = secure.map(|_| free_port()).transpose()?;
        let mut listeners =
            format!("PLAINTEXT://127.0.0.1:{port},CONTROLLER://127.0.0.1:{controller}");
        let mut advertised = format!("PLAINTEXT://127.0.0.1:{advertise}");
        let mut protocols = String::from("PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT");
        if let Some(secure) = secure_port {
            listeners.push_str(&format!(",SECURE://127.0.0.1:{secure}"));
            advertised.push_str(&format!(",SECURE://127.0.0.1:{secure}"));
            protocols.push_str(",SECURE:SASL_SSL");
        }
        let mut properties = Properties::for_test_node(&dir);
        properties
            .set("process.roles", "broker,controller")
            .set("node.id", "1")
            .set("controller.quorum.voters", format!("1@127.0.0.1:{controller}"))
            .set("listeners", listeners)
            .set("advertised.listeners", advertised)
            .set("listener.security.protocol.map", protocols)
            .set("controller.listener.names", "CONTROLLER")
            .set("inter.broker.listener.name", "PLAINTEXT")
            .set("offsets.topic.replication.factor", "1")
            .set("offsets.topic.num.partitions", "3")
            .set("transaction.state.log.replication.factor", "1")
            .set("transaction.state.log.min.isr", "1")
            .set("transaction.state.log.num.partitions", "3")
            .set("default.replication.factor", "1")
            .set("min.insync.replicas", "1")
            .set("share.coordinator.state.topic.replication.factor", "1")
            .set("share.coordinator.state.topic.min.isr", "1");
        for (key, value) in secure.map(|s| s.security.as_slice()).unwrap_or_default() {
            properties.set(key, value.clone());
        }
        properties.write(&dir)?;
        let format_args = secure.map(|s| s.format_args.as_slice()).unwrap_or_default();
        format(&dist, &dir, &cluster_id()?, format_args)?;
        let mut node = PrivateNode { dir, port, advertise, secure: secure_port, dist, child: None };
        node.restart()?;
        Ok(node)
    }

    /// `127.0.0.1:<advertised port>`: where clients bootstrap.
    pub fn bootstrap(&self) -> String {
        format!("127.0.0.1:{}", self.advertise)
    }

    /// `127.0.0.1:<port>` of the SASL_SSL listener, when it has one.
    pub fn secure_bootstrap(&self) -> Option<String> {
        self.secure.map(|port| format!("127.0.0.1:{port}"))
    }

    /// The port the node listens on.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Kills the node (SIGKILL: a crash, not a controlled shutdown); its data stays on disk.
    /// Returns once the process is gone.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts the node again (killing it first if it runs) on the same ports and data; returns
    /// once it started.
    pub fn restart(&mut self) -> Result<()> {
        self.stop();
        let child = launch(&self.dist, &self.dir, "512m", false)?;
        self.child = Some(child);
        let address = format!("127.0.0.1:{}", self.port);
        let child = &mut self.child;
        wait_started(&self.dir, &address, || {
            child.as_mut().is_some_and(|c| c.try_wait().ok().flatten().is_some())
        })
    }
}

/// Set (to anything) to keep a private node's directory, its logs included, after the test.
pub const KEEP_VAR: &str = "BUS_TESTBED_KEEP";

impl Drop for PrivateNode {
    fn drop(&mut self) {
        self.stop();
        if std::env::var_os(KEEP_VAR).is_some() {
            eprintln!("kept the private broker's directory {} ({KEEP_VAR})", self.dir.display());
        } else {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}
