//! Helpers shared by the workspace integration tests: where the broker is, unique names.
//!
//! The broker comes from `KAFKA_BOOTSTRAP` (set by `cargo xtask test`, or by a user pointing the
//! tests at their own cluster), else from `target/broker.env` (written by `cargo xtask broker
//! start`). Tests create their own uniquely named topics, so they run in parallel and repeatedly.
//!
//! Also here: the Python peer client (confluent-kafka, installed by `cargo xtask test` into
//! `target/peer-venv`), the Go peer (`tests/peer/go`: the Go SDK's envelope rules and sarama,
//! built by `cargo xtask test` into `target/go-peer`), waiting on conditions with deadlines, and
//! [`OwnBroker`], a private broker a test may stop and restart (a single-node Apache Kafka in a
//! scratch directory, killed when its guard drops, also when a test fails; the shared test
//! cluster is never touched), and [`proxy::Proxy`], a loopback proxy in front of a broker whose
//! connections a test can cut (shared with leakcheck).
//!
//! The secured broker (SASL_SSL: `cargo xtask broker start --tls --sasl`, started by `cargo
//! xtask test`) comes from `KAFKA_SECURE_*` or `target/broker-secure.env`: [`secured`],
//! [`secure_config`]. [`OwnSecureBroker`] is a private one whose users a test changes between
//! restarts; [`Certificates`] makes CAs and certificates (rcgen); [`capture_logs`] records the
//! tracing output of a test.
//!
//! For the hostile-peer tests: the peak resident memory of the process ([`peak_rss`],
//! [`reset_peak_rss`]), decompression bombs (`bombs`), and `scripted`: a scripted Kafka peer
//! (an adversary and an oracle's stage, not a stand-in for Kafka).

#![allow(clippy::panic, clippy::unwrap_used, clippy::expect_used)] // test helpers: failing loudly is their job

pub mod bombs;
pub mod proxy;
pub mod scripted;

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bus_kafka::{
    KafkaConfig, security::SaslMechanism, security::SecurityConfig, security::SecurityProtocol,
    security::TlsConfig,
};

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
    run_peer_with_env(script, args, stdin, &[])
}

/// [`run_peer`] with environment variables (the peer's security settings: `PEER_*`, see
/// `tests/peer/peer_common.py`; a password on a command line would show in `ps`).
///
/// # Panics
///
/// As for [`run_peer`].
pub fn run_peer_with_env(
    script: &str,
    args: &[&str],
    stdin: &str,
    env: &[(&str, &str)],
) -> serde_json::Value {
    let script = workspace().join("tests").join("peer").join(script);
    let mut child = Command::new(peer_python())
        .arg(&script)
        .args(args)
        .envs(env.iter().copied())
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

/// Commits `offset` for `partition` of `topic` in `group` through the peer client, without
/// joining the group (to place a group's position where a test wants it, beyond the end for
/// instance).
///
/// # Panics
///
/// When the peer fails or does not confirm the commit.
pub fn peer_commit(topic: &str, group: &str, partition: i32, offset: i64) {
    let (partition, offset) = (partition.to_string(), offset.to_string());
    let answer = run_peer(
        "group_peer.py",
        &[
            "commit",
            "--bootstrap",
            &bootstrap(),
            "--topic",
            topic,
            "--group",
            group,
            "--partition",
            &partition,
            "--offset",
            &offset,
        ],
        "",
    );
    assert_eq!(answer["committed"].to_string(), offset, "{answer}");
}

/// Waits until every broker of the test cluster knows `topic` with `partitions` partitions, each
/// with a leader. A topic just created is known to the controller first; a client of another
/// language that asks another broker at once may be told the topic has no leader yet, and
/// retries (sarama may then reorder or give up on records). Within 60 s.
///
/// # Panics
///
/// When a broker does not know it by then.
pub async fn settle_topic(topic: &str, partitions: usize) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    for address in bootstrap().split(',') {
        let admin = bus_kafka::admin::connect(KafkaConfig::new(address)).await.unwrap();
        loop {
            let described = admin.describe_topic(topic).await;
            let ready = described.as_ref().is_ok_and(|d| {
                d.partitions.len() == partitions && d.partitions.iter().all(|p| p.leader.is_some())
            });
            if ready {
                break;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "{address} does not know {topic} with {partitions} led partitions: {described:?}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

/// A free loopback port (free when asked: bind it soon).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// A private Apache Kafka broker (a single-node KRaft cluster, see `testbed::PrivateNode`) that
/// a test stops and restarts; the shared cluster is never touched. Killed on drop.
pub struct OwnBroker {
    node: testbed::PrivateNode,
}

impl OwnBroker {
    /// Starts a broker on a free port in a fresh scratch directory and waits until it started.
    pub fn start() -> OwnBroker {
        let port = free_port();
        OwnBroker::start_advertising(port, port)
    }

    /// Starts a broker listening on `port` and advertising `advertise` (a [`proxy::Proxy`] in
    /// front of it, so that every connection a client makes goes through the proxy), and waits
    /// until it started.
    pub fn start_advertising(port: u16, advertise: u16) -> OwnBroker {
        let node = testbed::PrivateNode::start(port, advertise)
            .unwrap_or_else(|e| panic!("the private broker did not start: {e}"));
        OwnBroker { node }
    }

    /// `127.0.0.1:<advertised port>`: where clients bootstrap.
    pub fn bootstrap(&self) -> String {
        self.node.bootstrap()
    }

    /// Kills the broker process (SIGKILL; its data stays on disk) and waits until its port is
    /// closed.
    pub fn stop(&mut self) {
        self.node.stop();
        wait_closed(self.node.port());
    }

    /// Starts the broker again on the same port and data, and waits until it started.
    pub fn restart(&mut self) {
        self.node.restart().unwrap_or_else(|e| panic!("the private broker did not restart: {e}"));
    }
}

/// The secured test broker (SASL_SSL, SCRAM users).
#[derive(Debug, Clone)]
pub struct Secured {
    /// `host:port`.
    pub bootstrap: String,
    /// The CA that signed the broker's certificate (PEM).
    pub ca: PathBuf,
    /// The SCRAM-SHA-512 user and its password.
    pub user: String,
    /// Its password.
    pub password: String,
    /// The SCRAM-SHA-256 user.
    pub user_256: String,
    /// Its password.
    pub password_256: String,
    /// The PLAIN user (same listener).
    pub plain_user: String,
    /// Its password.
    pub plain_password: String,
    /// `host:port,...` of the SSL listener that requires a client certificate.
    pub mtls_bootstrap: String,
    /// The client certificate (PEM) that listener accepts, signed by [`Secured::ca`].
    pub mtls_certificate: PathBuf,
    /// Its key (PKCS#8 PEM).
    pub mtls_key: PathBuf,
}

/// The secured broker: `KAFKA_SECURE_*` from the environment (set by `cargo xtask test`), else
/// `target/broker-secure.env` (written by `cargo xtask broker start`).
///
/// # Panics
///
/// When there is none, saying how to start one.
pub fn secured() -> Secured {
    let env_file = workspace().join("target").join("broker-secure.env");
    let from_file: std::collections::HashMap<String, String> =
        if std::env::var("KAFKA_SECURE_BOOTSTRAP").is_ok_and(|v| !v.trim().is_empty()) {
            std::env::vars().collect()
        } else {
            std::fs::read_to_string(&env_file)
                .unwrap_or_default()
                .lines()
                .filter_map(|l| l.split_once('='))
                .map(|(k, v)| (k.to_owned(), v.trim().to_owned()))
                .collect()
        };
    let get = |name: &str| {
        from_file.get(name).cloned().unwrap_or_else(|| {
            panic!(
                "no secured broker ({name} unknown): run the tests with `cargo xtask test`, or \
                 start it with `cargo xtask broker start`; looked in the \
                 environment and {}",
                env_file.display()
            )
        })
    };
    Secured {
        bootstrap: get("KAFKA_SECURE_BOOTSTRAP"),
        ca: PathBuf::from(get("KAFKA_SECURE_CA")),
        user: get("KAFKA_SECURE_USER"),
        password: get("KAFKA_SECURE_PASSWORD"),
        user_256: get("KAFKA_SECURE_USER_256"),
        password_256: get("KAFKA_SECURE_PASSWORD_256"),
        plain_user: get("KAFKA_SECURE_PLAIN_USER"),
        plain_password: get("KAFKA_SECURE_PLAIN_PASSWORD"),
        mtls_bootstrap: get("KAFKA_SECURE_MTLS_BOOTSTRAP"),
        mtls_certificate: PathBuf::from(get("KAFKA_SECURE_MTLS_CERT")),
        mtls_key: PathBuf::from(get("KAFKA_SECURE_MTLS_KEY")),
    }
}

impl Secured {
    /// The librdkafka settings of the peer for this broker as `user` (`PEER_*` variables).
    pub fn peer_env(&self, mechanism: SaslMechanism) -> Vec<(&'static str, String)> {
        let (user, password) = self.credentials(mechanism);
        vec![
            ("PEER_SECURITY_PROTOCOL", "sasl_ssl".to_owned()),
            ("PEER_SSL_CA_LOCATION", self.ca.display().to_string()),
            ("PEER_SASL_MECHANISM", mechanism.name().to_owned()),
            ("PEER_SASL_USERNAME", user.to_owned()),
            ("PEER_SASL_PASSWORD", password.to_owned()),
        ]
    }

    /// The user and password of `mechanism` (SCRAM-SHA-256: the 256 user; PLAIN: the PLAIN
    /// user; else the SCRAM-SHA-512 one).
    pub fn credentials(&self, mechanism: SaslMechanism) -> (&str, &str) {
        match mechanism {
            SaslMechanism::ScramSha256 => (&self.user_256, &self.password_256),
            SaslMechanism::Plain => (&self.plain_user, &self.plain_password),
            _ => (&self.user, &self.password),
        }
    }
}

/// A configuration for the secured broker: SASL_SSL with `mechanism`'s user, trusting its CA.
pub fn secure_config(mechanism: SaslMechanism) -> KafkaConfig {
    let broker = secured();
    let (user, password) = broker.credentials(mechanism);
    let mut config = KafkaConfig::new(&broker.bootstrap);
    config.security = SecurityConfig::sasl_ssl(mechanism, user, password);
    config.security.tls.ca_location = Some(broker.ca.clone());
    config
}

/// A certificate authority, and certificates it signs, written as PEM files into a directory.
pub struct Certificates {
    dir: PathBuf,
    issuer: rcgen::Issuer<'static, rcgen::KeyPair>,
    /// The CA's certificate (PEM file).
    pub ca: PathBuf,
}

impl Certificates {
    /// A new CA named `name`, its certificate written to `<dir>/<name>-ca.pem`.
    pub fn new(dir: &Path, name: &str) -> Certificates {
        use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair, KeyUsagePurpose};
        std::fs::create_dir_all(dir).unwrap();
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, format!("{name} CA"));
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let certificate = params.self_signed(&key).unwrap();
        let ca = dir.join(format!("{name}-ca.pem"));
        std::fs::write(&ca, certificate.pem()).unwrap();
        Certificates { dir: dir.to_owned(), issuer: rcgen::Issuer::new(params, key), ca }
    }

    /// A certificate for `names` (DNS names or IP addresses) signed by the CA, written to
    /// `<dir>/<file>.pem` and its key (PKCS#8) to `<dir>/<file>.key`; returns both paths.
    pub fn issue(&self, file: &str, names: &[&str]) -> (PathBuf, PathBuf) {
        let key = rcgen::KeyPair::generate().unwrap();
        let names: Vec<String> = names.iter().map(|n| (*n).to_owned()).collect();
        let mut params = rcgen::CertificateParams::new(names).unwrap();
        params.distinguished_name.push(rcgen::DnType::CommonName, file);
        let certificate = params.signed_by(&key, &self.issuer).unwrap();
        let (pem, key_file) =
            (self.dir.join(format!("{file}.pem")), self.dir.join(format!("{file}.key")));
        std::fs::write(&pem, certificate.pem()).unwrap();
        std::fs::write(&key_file, key.serialize_pem()).unwrap();
        (pem, key_file)
    }
}

/// A private Apache Kafka broker with a SASL_SSL listener (its own CA, SCRAM users created at
/// start) whose users can change, through the Admin API of the peer client; killed on drop.
pub struct OwnSecureBroker {
    node: testbed::PrivateNode,
    dir: PathBuf,
    /// The CA of its certificate.
    pub ca: PathBuf,
}

fn scram_name(mechanism: &str) -> &'static str {
    if mechanism == "scram256" { "SCRAM-SHA-256" } else { "SCRAM-SHA-512" }
}

impl OwnSecureBroker {
    /// Starts one with the SCRAM users `(name, password, mechanism)` (`scram256` or
    /// `scram512`).
    pub fn start(users: &[(&str, &str, &str)]) -> OwnSecureBroker {
        let port = free_port();
        let dir = std::env::temp_dir().join(unique("bus-secure-broker"));
        let certificates = Certificates::new(&dir, "own");
        let (pem, key) = certificates.issue("server", &["127.0.0.1", "localhost"]);
        let keystore = dir.join("server-keystore.pem");
        let text = std::fs::read_to_string(&key).unwrap() + &std::fs::read_to_string(&pem).unwrap();
        std::fs::write(&keystore, text).unwrap();
        let mut layout = testbed::cluster::Layout::default();
        for (key, value) in [
            ("ssl.keystore.type", "PEM".to_owned()),
            ("ssl.keystore.location", keystore.display().to_string()),
            ("listener.name.secure.sasl.enabled.mechanisms", "SCRAM-SHA-256,SCRAM-SHA-512".into()),
            (
                "listener.name.secure.scram-sha-256.sasl.jaas.config",
                "org.apache.kafka.common.security.scram.ScramLoginModule required;".into(),
            ),
            (
                "listener.name.secure.scram-sha-512.sasl.jaas.config",
                "org.apache.kafka.common.security.scram.ScramLoginModule required;".into(),
            ),
        ] {
            layout.security.push((key.to_owned(), value));
        }
        for (name, password, mechanism) in users {
            layout.format_args.push("--add-scram".into());
            layout
                .format_args
                .push(format!("{}=[name={name},password={password}]", scram_name(mechanism)));
        }
        let node = testbed::PrivateNode::start_secured(port, &layout)
            .unwrap_or_else(|e| panic!("the private secured broker did not start: {e}"));
        OwnSecureBroker { node, dir, ca: certificates.ca.clone() }
    }

    /// `127.0.0.1:<port>` of the SASL_SSL listener.
    pub fn bootstrap(&self) -> String {
        self.node.secure_bootstrap().unwrap_or_default()
    }

    /// Creates the users `create` and deletes `delete` (`(name, mechanism)`) on the running
    /// broker, through the peer client's Admin API on the plaintext listener.
    pub fn change_users(&mut self, create: &[(&str, &str, &str)], delete: &[(&str, &str)]) {
        let mut script = String::from(
            "import sys\n\
             from confluent_kafka.admin import (AdminClient, ScramCredentialInfo, ScramMechanism,\n\
                 UserScramCredentialUpsertion, UserScramCredentialDeletion)\n\
             admin = AdminClient({'bootstrap.servers': sys.argv[1]})\n\
             changes = []\n",
        );
        for (name, password, mechanism) in create {
            script.push_str(&format!(
                "changes.append(UserScramCredentialUpsertion('{name}', ScramCredentialInfo(\
                 ScramMechanism.{}, 4096), b'{password}'))\n",
                scram_name(mechanism).replace('-', "_")
            ));
        }
        for (name, mechanism) in delete {
            script.push_str(&format!(
                "changes.append(UserScramCredentialDeletion('{name}', ScramMechanism.{}))\n",
                scram_name(mechanism).replace('-', "_")
            ));
        }
        script.push_str(
            "for f in admin.alter_user_scram_credentials(changes).values(): f.result()\n",
        );
        let status = Command::new(peer_python())
            .args(["-c", &script, &self.node.bootstrap()])
            .stdin(Stdio::null())
            .status()
            .unwrap();
        assert!(status.success(), "changing the SCRAM users failed ({status})");
    }

    /// Kills the broker (its data stays) and starts it again on the same ports: every
    /// connection is cut.
    pub fn restart(&mut self) {
        self.node.restart().unwrap_or_else(|e| panic!("the private broker did not restart: {e}"));
    }

    /// A SASL_SSL configuration for it.
    pub fn config(&self, mechanism: SaslMechanism, user: &str, password: &str) -> KafkaConfig {
        let mut config = KafkaConfig::new(&self.bootstrap());
        config.security = SecurityConfig {
            protocol: SecurityProtocol::SaslSsl,
            tls: TlsConfig { ca_location: Some(self.ca.clone()), ..TlsConfig::default() },
            ..SecurityConfig::sasl_ssl(mechanism, user, password)
        };
        config
    }
}

impl Drop for OwnSecureBroker {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The tracing output of the current thread while the guard lives (every level), as text.
pub struct CapturedLogs {
    buffer: std::sync::Arc<std::sync::Mutex<Vec<u8>>>,
    _guard: tracing::subscriber::DefaultGuard,
}

impl CapturedLogs {
    /// What was logged so far.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.buffer.lock().unwrap()).into_owned()
    }
}

/// Records every tracing event of the current thread (a current-thread runtime's tasks
/// included) until the returned guard drops.
pub fn capture_logs() -> CapturedLogs {
    #[derive(Clone)]
    struct Writer(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);
    impl Write for Writer {
        fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(bytes);
            Ok(bytes.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let buffer = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let writer = Writer(std::sync::Arc::clone(&buffer));
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::TRACE)
        .with_ansi(false)
        .with_writer(move || writer.clone())
        .finish();
    let guard = tracing::subscriber::set_default(subscriber);
    CapturedLogs { buffer, _guard: guard }
}

/// Sends the bus's warnings and errors (or the level `BUS_TEST_LOG` names: `error`, `warn`,
/// `info`, `debug`, `trace`) to the running test's captured output, so that a failing test
/// prints what the bus complained about. Installs a process-wide subscriber once; later calls
/// do nothing.
pub fn log_to_test_output() {
    let level = std::env::var("BUS_TEST_LOG")
        .ok()
        .and_then(|l| l.parse::<tracing::Level>().ok())
        .unwrap_or(tracing::Level::WARN);
    let _ = tracing_subscriber::fmt()
        .with_max_level(level)
        .with_ansi(false)
        .with_test_writer()
        .try_init();
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

/// Waits (up to 10 s) until a stopped private broker's port refuses connections.
fn wait_closed(port: u16) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while TcpStream::connect(("127.0.0.1", port)).is_ok() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The socket inodes this process has open.
pub fn socket_inodes() -> BTreeSet<u64> {
    let mut inodes = BTreeSet::new();
    let Ok(entries) = std::fs::read_dir("/proc/self/fd") else { return inodes };
    for entry in entries.flatten() {
        let Ok(target) = std::fs::read_link(entry.path()) else { continue };
        let target = target.to_string_lossy().into_owned();
        if let Some(inode) = target.strip_prefix("socket:[").and_then(|t| t.strip_suffix(']'))
            && let Ok(inode) = inode.parse()
        {
            inodes.insert(inode);
        }
    }
    inodes
}

/// This process's established TCP connections, by remote port.
pub fn connections_by_port() -> BTreeMap<u16, usize> {
    let ours = socket_inodes();
    let mut by_port = BTreeMap::new();
    for table in ["/proc/self/net/tcp", "/proc/self/net/tcp6"] {
        let Ok(text) = std::fs::read_to_string(table) else { continue };
        for line in text.lines().skip(1) {
            let fields: Vec<&str> = line.split_whitespace().collect();
            // sl local_address rem_address st tx:rx tr:when retrnsmt uid timeout inode
            let (Some(remote), Some(state), Some(inode)) =
                (fields.get(2), fields.get(3), fields.get(9))
            else {
                continue;
            };
            let established = *state == "01";
            let inode: u64 = inode.parse().unwrap_or(0);
            if !established || !ours.contains(&inode) {
                continue;
            }
            let Some(port) =
                remote.rsplit(':').next().and_then(|p| u16::from_str_radix(p, 16).ok())
            else {
                continue;
            };
            *by_port.entry(port).or_insert(0) += 1;
        }
    }
    by_port
}

/// The brokers' ports (the bootstrap list names all three).
pub fn broker_ports() -> Vec<u16> {
    bootstrap()
        .split(',')
        .filter_map(|a| a.rsplit(':').next().and_then(|p| p.trim().parse().ok()))
        .collect()
}
