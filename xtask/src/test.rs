//! `cargo xtask test`: every test in the workspace against a broker.
//!
//! Owns: bringing a broker up when none is running (and the peer clients the tests compare
//! against, see `peer`: the Python one and the Go one), running `cargo test --workspace` with
//! `KAFKA_BOOTSTRAP` set, and stopping the broker afterwards if this run started it.

use std::process::Command;

use crate::Result;
use crate::broker;

pub(crate) fn run(args: &[String]) -> Result<()> {
    // The producer tests read back through a peer client (Python confluent-kafka).
    let python = crate::peer::ensure_python()?;
    // The Go peer: the Go SDK's envelope rules and sarama (tests/peer/go).
    let go_peer = crate::peer::ensure_go_peer()?;
    let broker = broker::ensure_running()?;
    let mut command = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    command
        .args(["test", "--workspace"])
        .args(args)
        .env(broker::BOOTSTRAP_VAR, &broker.bootstrap)
        .env(crate::peer::PYTHON_VAR, python)
        .env(crate::peer::GO_PEER_VAR, go_peer);
    let outcome = crate::cmd::run(&mut command);
    if broker.started_here {
        broker::stop()?;
    }
    outcome
}
