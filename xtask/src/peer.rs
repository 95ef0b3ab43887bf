//! Peer clients the tests and benchmarks compare against, installed on first use.
//!
//! Owns: the Python peer (`confluent-kafka`, bundling librdkafka 2.16, pinned) in a virtual
//! environment under `target/peer-venv`; the Go peer (`tests/peer/go`: the Go SDK's envelope
//! rules on sarama v1.46.0, the version the Go SDK pins, a Go module whose dependencies come
//! from the Go module proxy, built with the machine's Go into `target/go-peer`); and the Debian
//! packages that building
//! the `rdkafka` crate's vendored librdkafka needs (cmake, the curl headers). Each is checked
//! first and only installed when missing; what is installed is said before it happens.

use std::path::PathBuf;
use std::process::Command;

use crate::Result;

/// The pinned Python peer.
pub(crate) const CONFLUENT_KAFKA: &str = "confluent-kafka==2.16.1";

/// The environment variable through which the tests find the peer's Python.
pub(crate) const PYTHON_VAR: &str = "BUS_PEER_PYTHON";

fn venv() -> PathBuf {
    crate::workspace_root().join("target").join("peer-venv")
}

fn has_peer(python: &std::path::Path) -> bool {
    let version = CONFLUENT_KAFKA.rsplit("==").next().unwrap_or_default();
    Command::new(python)
        .args([
            "-c",
            &format!(
                "import confluent_kafka,sys; sys.exit(confluent_kafka.__version__ != '{version}')"
            ),
        ])
        .output()
        .is_ok_and(|o| o.status.success())
}

/// The Python interpreter that has the pinned confluent-kafka, installing it into
/// `target/peer-venv` when missing (a few seconds: the package ships a prebuilt librdkafka).
pub(crate) fn ensure_python() -> Result<PathBuf> {
    let python = venv().join("bin").join("python");
    if python.is_file() && has_peer(&python) {
        return Ok(python);
    }
    eprintln!(
        "the test peer {CONFLUENT_KAFKA} is not installed; installing it into {}",
        venv().display()
    );
    // Debian's python3 makes virtual environments only with python3-venv (ensurepip).
    let ensurepip = Command::new("python3")
        .args(["-c", "import ensurepip, venv"])
        .output()
        .is_ok_and(|o| o.status.success());
    crate::tools::ensure_debian_packages(
        "the tests' Python peer",
        &[("python3", crate::tools::runs("python3", "--version")), ("python3-venv", ensurepip)],
    )?;
    crate::cmd::run(Command::new("python3").args(["-m", "venv"]).arg(venv())).map_err(|e| {
        format!("{e}: the tests need Python 3 with venv (Debian: apt-get install -y python3-venv)")
    })?;
    let pip = venv().join("bin").join("pip");
    crate::cmd::run(Command::new(&pip).args(["install", "--progress-bar", "on", CONFLUENT_KAFKA]))?;
    if !has_peer(&python) {
        return Err(format!(
            "{CONFLUENT_KAFKA} was installed but {} cannot import it",
            python.display()
        ));
    }
    Ok(python)
}

/// The environment variable through which the tests find the Go peer's executable.
pub(crate) const GO_PEER_VAR: &str = "BUS_GO_PEER";

/// The Go peer's executable, built from `tests/peer/go` into `target/go-peer/bus-go-peer`
/// (its modules from the Go module proxy the first time, pinned by `go.sum`; Go installed with
/// apt-get first when missing and running as root). `go build` is incremental: when nothing
/// changed it takes about a second.
pub(crate) fn ensure_go_peer() -> Result<PathBuf> {
    crate::tools::ensure_debian_packages(
        "the tests' Go peer",
        &[("golang-go", crate::tools::runs("go", "version"))],
    )?;
    let dir = crate::workspace_root().join("target").join("go-peer");
    std::fs::create_dir_all(&dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    let binary = dir.join("bus-go-peer");
    eprintln!("building the Go peer (tests/peer/go, sarama v1.46.0)");
    crate::cmd::run(
        Command::new("go")
            .arg("-C")
            .arg(crate::workspace_root().join("tests").join("peer").join("go"))
            .args(["build", "-mod=readonly", "-o"])
            .arg(&binary)
            .arg(".")
            .env("GOFLAGS", ""),
    )
    .map_err(|e| format!("{e}: the Go peer did not build (tests/peer/go)"))?;
    Ok(binary)
}

fn openssl_header() -> bool {
    ["/usr/include/openssl/ssl.h"].iter().any(|p| std::path::Path::new(p).is_file())
}

fn curl_header() -> bool {
    [
        "/usr/include/curl/curl.h",
        "/usr/include/x86_64-linux-gnu/curl/curl.h",
        "/usr/include/aarch64-linux-gnu/curl/curl.h",
    ]
    .iter()
    .any(|p| std::path::Path::new(p).is_file())
}

/// Makes sure the `rdkafka` crate's vendored librdkafka can be built: cmake, the curl
/// headers (librdkafka 2.12 includes `curl/curl.h` even with its curl feature off) and
/// OpenSSL's (the peer is built with TLS and SCRAM for `bench --tls`: the `ssl` feature links
/// the system's libssl). Installs
/// them with apt-get when missing and running as root; otherwise says what to install.
pub(crate) fn ensure_rdkafka_build_deps() -> Result<()> {
    crate::tools::ensure_debian_packages(
        "building the rdkafka peer",
        &[
            ("cmake", crate::tools::runs("cmake", "--version")),
            ("libcurl4-openssl-dev", curl_header()),
            ("libssl-dev", openssl_header()),
        ],
    )
}
