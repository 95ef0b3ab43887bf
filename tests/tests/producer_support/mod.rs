//! Support for the producer tests: the Python peer client (confluent-kafka) and a private
//! broker that a test may stop and restart.
//!
//! The peer runs from `target/peer-venv` (installed by `cargo xtask test`), or from the Python
//! named by `BUS_PEER_PYTHON`. A private broker is a second nisshi process on a free loopback
//! port with SQLite storage in a scratch directory, so that its data survives a restart; it is
//! killed when its guard drops, also when a test fails. The shared test broker is never touched.

#![allow(dead_code, unreachable_pub, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

#[allow(unused_imports)] // each test file uses a different part
pub use bus_tests::{OwnBroker, peer_python, wait_for, workspace};

/// Runs `tests/peer/kafka_peer.py` with `args` (and `stdin`), returning its JSON output.
pub fn peer(args: &[&str], stdin: &str) -> serde_json::Value {
    bus_tests::run_peer("kafka_peer.py", args, stdin)
}
