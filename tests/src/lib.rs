//! Helpers shared by the workspace integration tests: where the broker is, unique names.
//!
//! The broker comes from `KAFKA_BOOTSTRAP` (set by `cargo xtask test`, or by a user pointing the
//! tests at their own cluster), else from `target/broker.env` (written by `cargo xtask broker
//! start`). Tests create their own uniquely named topics, so they run in parallel and repeatedly.

#![allow(clippy::panic)] // a test helper: no broker is a test failure with a clear message

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use bus_kafka::KafkaConfig;

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
