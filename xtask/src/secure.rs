//! The secured test broker: nisshi with a TLS listener (`--cert/--key`) and SASL/SCRAM
//! (`--authentication`), a second broker beside the shared plaintext one, on its own port.
//!
//! Owns: `cargo xtask broker start --tls --sasl` (either flag alone too), its certificates (a
//! CA and a server certificate for `127.0.0.1` and `localhost`, made with rcgen in
//! `target/broker-secure/`), its SCRAM users (one SCRAM-SHA-512 and one SCRAM-SHA-256, random
//! passwords), [`ensure_running`] / [`stop`] for the other tools, and `target/broker-secure.env`,
//! where tests, examples and benchmarks find the broker, its CA and the users.
//!
//! nisshi keeps SCRAM credentials only in a SQL store, and `nisshi user create` speaks neither
//! TLS nor SASL: with `--sasl` the broker runs on SQLite (`target/broker-secure/broker.db`, fresh
//! at each start), first without TLS or authentication just long enough to create the users,
//! then with them.
//!
//! Invariants:
//! - When `KAFKA_SECURE_BOOTSTRAP` is set, the environment describes a secured broker to use
//!   (`KAFKA_SECURE_*`, as in the env file): nothing is started or stopped.
//! - `stop` ends only the process recorded in the env file, and only if it is a nisshi.
//! - The broker is reported ready only after it answered an ApiVersions request over its
//!   listener (TLS when it has TLS).

use std::collections::BTreeMap;
use std::io::Read;
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::Result;
use crate::tools;

/// The variable naming a secured broker to use instead of starting one.
pub(crate) const BOOTSTRAP_VAR: &str = "KAFKA_SECURE_BOOTSTRAP";

/// The SCRAM-SHA-512 user and the SCRAM-SHA-256 user.
const USER_512: &str = "bus-scram512";
const USER_256: &str = "bus-scram256";

/// A secured broker in use: its variables (`KAFKA_SECURE_*`), for the commands that use it.
pub(crate) struct Secured {
    /// `KAFKA_SECURE_BOOTSTRAP`, `KAFKA_SECURE_PROTOCOL`, `KAFKA_SECURE_CA`, the users and
    /// their passwords.
    pub(crate) vars: BTreeMap<String, String>,
    /// Whether this call started it.
    pub(crate) started_here: bool,
}

impl Secured {
    /// Sets the broker's variables on `command`.
    pub(crate) fn apply(&self, command: &mut Command) {
        for (name, value) in &self.vars {
            command.env(name, value);
        }
    }

    /// `host:port`.
    pub(crate) fn bootstrap(&self) -> &str {
        self.vars.get(BOOTSTRAP_VAR).map_or("", String::as_str)
    }
}

fn dir() -> PathBuf {
    crate::workspace_root().join("target").join("broker-secure")
}

fn env_file() -> PathBuf {
    crate::workspace_root().join("target").join("broker-secure.env")
}

fn protocol(tls: bool, sasl: bool) -> &'static str {
    match (tls, sasl) {
        (true, true) => "sasl_ssl",
        (true, false) => "ssl",
        (false, true) => "sasl_plaintext",
        (false, false) => "plaintext",
    }
}

/// The variables the environment gives, when it names a secured broker.
fn external() -> Option<BTreeMap<String, String>> {
    std::env::var(BOOTSTRAP_VAR).ok().filter(|v| !v.trim().is_empty())?;
    Some(std::env::vars().filter(|(name, _)| name.starts_with("KAFKA_SECURE_")).collect())
}

fn read_recorded() -> Option<(BTreeMap<String, String>, Option<u32>)> {
    let text = std::fs::read_to_string(env_file()).ok()?;
    let mut vars = BTreeMap::new();
    let mut pid = None;
    for line in text.lines() {
        let Some((name, value)) = line.split_once('=') else { continue };
        if name == "BROKER_PID" {
            pid = value.trim().parse().ok();
        } else if name.starts_with("KAFKA_SECURE_") {
            vars.insert(name.to_owned(), value.trim().to_owned());
        }
    }
    vars.contains_key(BOOTSTRAP_VAR).then_some((vars, pid))
}

/// Returns a secured broker with `tls` and `sasl` that answers: the environment's, the one
/// recorded, or a new one.
pub(crate) fn ensure_running(tls: bool, sasl: bool) -> Result<Secured> {
    if let Some(vars) = external() {
        eprintln!("using the secured broker named by {BOOTSTRAP_VAR}");
        return Ok(Secured { vars, started_here: false });
    }
    let wanted = protocol(tls, sasl);
    if let Some((vars, pid)) = read_recorded() {
        let alive = pid.is_some_and(crate::broker::is_our_broker);
        let same = vars.get("KAFKA_SECURE_PROTOCOL").is_some_and(|p| p == wanted);
        if alive && same && probe(&vars).is_ok() {
            eprintln!("secured broker already running at {}", vars[BOOTSTRAP_VAR]);
            return Ok(Secured { vars, started_here: false });
        }
        stop()?;
    }
    let (child, vars) = launch(&dir(), tls, sasl, true)?;
    let mut text = String::new();
    for (name, value) in &vars {
        text.push_str(&format!("{name}={value}\n"));
    }
    text.push_str(&format!("BROKER_PID={}\nBROKER_LOG={}\n", child.id(), log().display()));
    std::fs::write(env_file(), text)
        .map_err(|e| format!("cannot write {}: {e}", env_file().display()))?;
    eprintln!(
        "secured broker ({wanted}) started at {} (pid {}, {})",
        vars[BOOTSTRAP_VAR],
        child.id(),
        env_file().display()
    );
    Ok(Secured { vars, started_here: true })
}

fn log() -> PathBuf {
    dir().join("broker.log")
}

/// Stops the secured broker recorded in `target/broker-secure.env`, if it is ours and alive.
pub(crate) fn stop() -> Result<()> {
    if external().is_some() {
        eprintln!("{BOOTSTRAP_VAR} is set: that broker is not ours to stop");
        return Ok(());
    }
    let Some((vars, pid)) = read_recorded() else {
        eprintln!("no secured broker recorded in {}", env_file().display());
        return Ok(());
    };
    match pid.filter(|&pid| crate::broker::is_our_broker(pid)) {
        Some(pid) => {
            crate::broker::kill(pid);
            eprintln!("secured broker at {} (pid {pid}) stopped", vars[BOOTSTRAP_VAR]);
        }
        None => eprintln!("the recorded secured broker at {} is not running", vars[BOOTSTRAP_VAR]),
    }
    std::fs::remove_file(env_file())
        .map_err(|e| format!("cannot remove {}: {e}", env_file().display()))
}

/// Prints the secured broker's address and whether it answers.
pub(crate) fn status() -> Result<()> {
    let vars = match external().or_else(|| read_recorded().map(|(vars, _)| vars)) {
        Some(vars) => vars,
        None => {
            println!("no secured broker: run `cargo xtask broker start --tls --sasl`");
            return Ok(());
        }
    };
    let protocol = vars.get("KAFKA_SECURE_PROTOCOL").cloned().unwrap_or_default();
    match probe(&vars) {
        Ok(()) => {
            println!("{BOOTSTRAP_VAR}={} ({protocol}): answering", vars[BOOTSTRAP_VAR]);
            Ok(())
        }
        Err(e) => Err(format!("{} ({protocol}) does not answer: {e}", vars[BOOTSTRAP_VAR])),
    }
}

/// Asks the broker for ApiVersions over its listener: TLS (trusting `KAFKA_SECURE_CA`) when
/// the protocol has it.
fn probe(vars: &BTreeMap<String, String>) -> Result<()> {
    let bootstrap = vars.get(BOOTSTRAP_VAR).ok_or("no bootstrap")?;
    let tls = vars.get("KAFKA_SECURE_PROTOCOL").is_some_and(|p| p.ends_with("ssl"));
    if !tls {
        return crate::broker::probe(bootstrap);
    }
    let ca = vars.get("KAFKA_SECURE_CA").ok_or("KAFKA_SECURE_CA is not set")?;
    let mut roots = rustls::RootCertStore::empty();
    use rustls_pki_types::pem::PemObject;
    for certificate in rustls_pki_types::CertificateDer::pem_file_iter(ca)
        .map_err(|e| format!("cannot read {ca}: {e}"))?
    {
        roots
            .add(certificate.map_err(|e| format!("{ca}: {e}"))?)
            .map_err(|e| format!("{ca}: {e}"))?;
    }
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| e.to_string())?
    .with_root_certificates(roots)
    .with_no_client_auth();
    let host = bootstrap.rsplit_once(':').map_or(bootstrap.as_str(), |(h, _)| h);
    let name = rustls_pki_types::ServerName::try_from(host.to_owned())
        .map_err(|e| format!("{host}: {e}"))?;
    let connection = rustls::ClientConnection::new(Arc::new(config), name)
        .map_err(|e| format!("TLS to {bootstrap}: {e}"))?;
    let tcp = TcpStream::connect(bootstrap).map_err(|e| format!("cannot connect: {e}"))?;
    tcp.set_read_timeout(Some(Duration::from_secs(5))).map_err(|e| e.to_string())?;
    let mut stream = rustls::StreamOwned::new(connection, tcp);
    crate::broker::api_versions(&mut stream, bootstrap)
}

/// A random password: 16 bytes from the system's source, in hex.
fn password() -> Result<String> {
    let mut bytes = [0u8; 16];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut bytes))
        .map_err(|e| format!("cannot read /dev/urandom: {e}"))?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

/// Writes the CA (`ca.pem`) and the server's certificate and key (`server.pem`,
/// `server.key`, PKCS#8) for `127.0.0.1` and `localhost` into `dir`.
fn certificates(dir: &Path) -> Result<PathBuf> {
    use rcgen::{
        BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, KeyUsagePurpose,
    };
    let fail = |e: rcgen::Error| format!("cannot make the test certificates: {e}");
    let ca_key = KeyPair::generate().map_err(fail)?;
    let mut ca = CertificateParams::new(Vec::<String>::new()).map_err(fail)?;
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.distinguished_name.push(DnType::CommonName, "bus test CA");
    ca.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let ca_certificate = ca.self_signed(&ca_key).map_err(fail)?;
    let issuer = Issuer::new(ca, ca_key);
    let server_key = KeyPair::generate().map_err(fail)?;
    let mut server = CertificateParams::new(vec!["127.0.0.1".to_owned(), "localhost".to_owned()])
        .map_err(fail)?;
    server.distinguished_name.push(DnType::CommonName, "localhost");
    let server_certificate = server.signed_by(&server_key, &issuer).map_err(fail)?;
    let write = |name: &str, text: String| {
        let path = dir.join(name);
        std::fs::write(&path, text).map_err(|e| format!("cannot write {}: {e}", path.display()))
    };
    write("ca.pem", ca_certificate.pem())?;
    write("server.pem", server_certificate.pem())?;
    write("server.key", server_key.serialize_pem())?;
    Ok(dir.join("ca.pem"))
}

/// Starts nisshi on `url` in `dir` with `args`, its output in `log`.
fn start(
    nisshi: &Path,
    dir: &Path,
    url: &str,
    args: &[&str],
    log: &Path,
    detached: bool,
) -> Result<Child> {
    let out =
        std::fs::File::create(log).map_err(|e| format!("cannot create {}: {e}", log.display()))?;
    let err = out.try_clone().map_err(|e| e.to_string())?;
    let mut command = Command::new(nisshi);
    command
        .args(["broker", "--listener-url", url, "--advertised-listener-url", url])
        .args(args)
        .current_dir(dir)
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err);
    if detached {
        use std::os::unix::process::CommandExt;
        command.process_group(0);
    }
    eprintln!("$ {}", crate::cmd::describe(&command));
    command.spawn().map_err(|e| format!("cannot start {}: {e}", nisshi.display()))
}

/// Waits until `ready` holds, the broker exits, or 60 s pass.
fn wait_ready(child: &mut Child, log: &Path, mut ready: impl FnMut() -> bool) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Ok(Some(status)) = child.try_wait() {
            let text = std::fs::read_to_string(log).unwrap_or_default();
            return Err(format!("the secured broker exited at start ({status}):\n{text}"));
        }
        if ready() {
            return Ok(());
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            return Err("the secured broker did not answer within 60 s".into());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Makes the certificates and users in `dir` (emptied first) and starts a secured broker there
/// (in a process group of its own when `detached`); returns it and its variables. The caller
/// owns the process.
pub(crate) fn launch(
    dir: &Path,
    tls: bool,
    sasl: bool,
    detached: bool,
) -> Result<(Child, BTreeMap<String, String>)> {
    let nisshi = tools::ensure(&tools::NISSHI)?;
    let _ = std::fs::remove_dir_all(dir);
    std::fs::create_dir_all(dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    let port = TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map_err(|e| format!("no free port: {e}"))?
        .port();
    let bootstrap = format!("127.0.0.1:{port}");
    let url = format!("tcp://{bootstrap}");
    let mut vars = BTreeMap::new();
    vars.insert(BOOTSTRAP_VAR.to_owned(), bootstrap.clone());
    vars.insert("KAFKA_SECURE_PROTOCOL".to_owned(), protocol(tls, sasl).to_owned());
    let mut args: Vec<&str> = Vec::new();
    if tls {
        let ca = certificates(dir)?;
        vars.insert("KAFKA_SECURE_CA".to_owned(), ca.display().to_string());
        args.extend(["--cert", "server.pem", "--key", "server.key"]);
    }
    if sasl {
        // SCRAM credentials live in SQL storage; the users are created over a plain listener
        // (`nisshi user create` speaks neither TLS nor SASL) before the secured one starts.
        let storage = ["--storage-engine", "sqlite://broker.db"];
        let setup_log = dir.join("setup.log");
        let mut setup = start(&nisshi, dir, &url, &storage, &setup_log, false)?;
        let created =
            wait_ready(&mut setup, &setup_log, || crate::broker::probe(&bootstrap).is_ok())
                .and_then(|()| {
                    for (user, mechanism, user_var, password_var) in [
                        (USER_512, "scram512", "KAFKA_SECURE_USER", "KAFKA_SECURE_PASSWORD"),
                        (
                            USER_256,
                            "scram256",
                            "KAFKA_SECURE_USER_256",
                            "KAFKA_SECURE_PASSWORD_256",
                        ),
                    ] {
                        let password = password()?;
                        let status = Command::new(&nisshi)
                            .args(["user", "create", "--broker", &url, user, &password])
                            .args(["--mechanism", mechanism])
                            .stdin(Stdio::null())
                            .status()
                            .map_err(|e| format!("cannot run nisshi user create: {e}"))?;
                        if !status.success() {
                            return Err(format!("nisshi user create {user} failed ({status})"));
                        }
                        eprintln!("created SCRAM user {user} ({mechanism})");
                        vars.insert(user_var.to_owned(), user.to_owned());
                        vars.insert(password_var.to_owned(), password);
                    }
                    Ok(())
                });
        let _ = setup.kill();
        let _ = setup.wait();
        created?;
        // The port must be free again before the secured broker binds it.
        let deadline = Instant::now() + Duration::from_secs(10);
        while TcpStream::connect(&bootstrap).is_ok() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        args.extend(storage);
        args.push("--authentication");
    } else {
        args.extend(["--storage-engine", "memory://nisshi/"]);
    }
    // Its own process group: a Ctrl-C meant for a test run does not kill it half-way.
    let log = dir.join("broker.log");
    let mut child = start(&nisshi, dir, &url, &args, &log, detached)?;
    wait_ready(&mut child, &log, || probe(&vars).is_ok())?;
    Ok((child, vars))
}
