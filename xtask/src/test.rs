//! `cargo xtask test`: every test in the workspace against a broker.
//!
//! Owns: bringing the test cluster up when it is not running (see `broker`; and the peer
//! clients the tests compare against, see `peer`: the Python one and the Go one), running
//! `cargo test --workspace` with `KAFKA_BOOTSTRAP`, the secured listeners' `KAFKA_SECURE_*` and
//! the Kafka classpath (for tests that run a private node) set, then (on a full run, no filter
//! given) the fault tests with the `fault-injection` feature, the `orders` example, the
//! `service` example stopped by SIGTERM (see `service_example`), the offset-control examples
//! (`replay`, `seek`, `pause`, `manual_commit`, `tombstones`) on the plaintext listener and
//! the `secure` example on SASL_SSL, and stopping the cluster afterwards if this run started
//! it.

use std::process::Command;

use crate::Result;
use crate::broker;

pub(crate) fn run(args: &[String]) -> Result<()> {
    // The producer tests read back through a peer client (Python confluent-kafka).
    let python = crate::peer::ensure_python()?;
    // The Go peer: the Go SDK's envelope rules and sarama (tests/peer/go).
    let go_peer = crate::peer::ensure_go_peer()?;
    let broker = broker::ensure_running()?;
    let Some(secured) = broker.secured.as_ref() else {
        return Err(format!(
            "{} names a cluster but not its secured listeners (KAFKA_SECURE_BOOTSTRAP and the \
             rest, as in target/broker-secure.env)",
            broker::BOOTSTRAP_VAR
        ));
    };
    let classpath = testbed::Distribution::resolve()?;
    let mut command = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    command
        .args(["test", "--workspace"])
        .args(args)
        .env(broker::BOOTSTRAP_VAR, &broker.bootstrap)
        .env(crate::peer::PYTHON_VAR, python)
        .env(crate::peer::GO_PEER_VAR, go_peer)
        .env(testbed::CLASSPATH_VAR, classpath.classpath());
    secured.apply(&mut command);
    let mut outcome = crate::cmd::run(&mut command);
    if outcome.is_ok() && args.is_empty() {
        outcome = run_fault_tests(&broker.bootstrap);
    }
    if outcome.is_ok() && args.is_empty() {
        outcome = run_orders_example(&broker.bootstrap);
    }
    if outcome.is_ok() && args.is_empty() {
        outcome = crate::service_example::run(&broker.bootstrap);
    }
    for example in OFFSET_EXAMPLES {
        if outcome.is_ok() && args.is_empty() {
            outcome = run_topic_example(example, &broker.bootstrap);
        }
    }
    if outcome.is_ok() && args.is_empty() {
        outcome = run_secure_example(secured);
    }
    if broker.started_here {
        broker::stop()?;
    }
    outcome
}

/// Runs the `secure` example (SASL_SSL with SCRAM-SHA-512, the password from the environment)
/// against the secured broker, on a topic of its own.
fn run_secure_example(secured: &crate::secure::Secured) -> Result<()> {
    let topic = format!("secure-example-{}", std::process::id());
    let mut command = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    command.args(["run", "--quiet", "-p", "bus-kafka", "--example", "secure"]);
    secured.apply(&mut command);
    command.env("SECURE_TOPIC", topic);
    crate::cmd::run(&mut command)
}

/// The examples of offset control and tombstones (bus-kafka), each run on a topic of its own.
const OFFSET_EXAMPLES: [&str; 5] = ["replay", "seek", "pause", "manual_commit", "tombstones"];

/// Runs bus-kafka's example `name` against the broker, on a topic of its own
/// (`EXAMPLE_TOPIC`); it exits non-zero when anything it expects does not happen.
fn run_topic_example(name: &str, bootstrap: &str) -> Result<()> {
    let topic = format!("{}-example-{}", name.replace('_', "-"), std::process::id());
    let mut command = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    command
        .args(["run", "--quiet", "-p", "bus-kafka", "--example", name])
        .env(broker::BOOTSTRAP_VAR, bootstrap)
        .env("EXAMPLE_TOPIC", topic);
    crate::cmd::run(&mut command)
}

/// Runs the fault tests (`tests/tests/supervision.rs`), which need the tests package's
/// `fault-injection` feature: a build of their own, so that no other test or build has it on.
fn run_fault_tests(bootstrap: &str) -> Result<()> {
    let mut command = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    command
        .args(["test", "-p", "bus-tests", "--features", "fault-injection", "--test", "supervision"])
        .env(broker::BOOTSTRAP_VAR, bootstrap);
    crate::cmd::run(&mut command)
}

/// Runs the `orders` example (bus-kafka's service example) against the broker, on a topic of
/// its own; it exits non-zero when anything it expects does not happen.
fn run_orders_example(bootstrap: &str) -> Result<()> {
    let topic = format!("orders-example-{}", std::process::id());
    let mut command = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    command
        .args(["run", "--quiet", "-p", "bus-kafka", "--example", "orders"])
        .env(broker::BOOTSTRAP_VAR, bootstrap)
        .env("ORDERS_TOPIC", topic);
    crate::cmd::run(&mut command)
}
