//! `cargo xtask`: the one door to the project's tooling.
//!
//! Owns the command line (clap) and dispatch to one module per tool: `ci` (the CI gate), `test`
//! (every test against a broker), `broker` (start, stop, status of the test broker), `bench`
//! (benchmarks side by side with peers), `fuzz` (the fuzz targets, and their seeds from real
//! traffic), `tools` (installing pinned tools on first use), `cmd`
//! (running commands with visible output).
//!
//! Invariant: xtask never leaves a process it started running, except the cluster started with
//! `broker start` (or a node started with `broker start-node`), which is recorded in
//! `target/broker.env` and ended by `broker stop`.

mod bench;
mod broker;
mod ci;
mod cmd;
mod fuzz;
mod leakcheck;
mod peer;
mod secure;
mod service_example;
mod test;
mod tools;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// The project's tooling.
#[derive(Parser)]
#[command(name = "cargo xtask", bin_name = "cargo xtask", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// The CI gate: fmt, clippy, cargo-deny, every test against a broker.
    Ci,
    /// Run every test in the workspace against a broker (started when needed, stopped after).
    Test {
        /// Arguments passed to `cargo test` after the workspace flags (e.g. a test name filter).
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Manage the test cluster: three Apache Kafka 4.4 nodes on loopback.
    Broker {
        #[command(subcommand)]
        action: broker::Action,
    },
    /// Run a benchmark and print its table; `--record` also writes it to docs/BENCHMARKS.md.
    Bench {
        /// Which benchmark.
        #[arg(value_enum)]
        which: bench::Which,
        /// Write the result into docs/BENCHMARKS.md.
        #[arg(long)]
        record: bool,
        /// produce and consume only: both clients over TLS alone and over SASL_SSL
        /// (SCRAM-SHA-512) on the cluster; recorded as `produce-tls` / `consume-tls`.
        #[arg(long)]
        tls: bool,
        /// produce and consume only: with a metrics recorder installed in the benchmark
        /// (the bus's metrics recorded, as when a service exports them).
        #[arg(long)]
        metrics: bool,
    },
    /// Prove that the bus leaves no task, socket or thread behind (the leak scenarios).
    Leakcheck {
        /// Arguments for the leakcheck tool (e.g. `--scenario memory-load --inject-leak`).
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Run cargo-deny's licenses, bans and sources checks (installing cargo-deny if missing).
    Deny,
    /// Run the fuzz targets of `fuzz/` (installing cargo-fuzz if missing) and print their
    /// executions, coverage and crashes.
    Fuzz {
        /// Seconds per target.
        #[arg(long, default_value_t = 60)]
        seconds: u64,
        /// Only this target (record_batches, responses, consumer_protocol, envelope).
        #[arg(long)]
        target: Option<String>,
        /// Instead, capture seed corpora from real traffic with the test broker into
        /// `fuzz/corpus`.
        #[arg(long)]
        seeds: bool,
    },
}

/// The workspace root (the parent of this crate's directory).
pub(crate) fn workspace_root() -> PathBuf {
    let manifest = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    manifest.parent().map(PathBuf::from).unwrap_or(manifest)
}

/// Errors of xtask: a message for the user.
pub(crate) type Result<T> = std::result::Result<T, String>;

fn main() -> ExitCode {
    let cli = Cli::parse();
    let outcome = match cli.command {
        Command::Ci => ci::run(),
        Command::Test { args } => test::run(&args),
        Command::Broker { action } => broker::run(action),
        Command::Bench { which, record, tls, metrics } => bench::run(which, record, tls, metrics),
        Command::Deny => ci::deny(),
        Command::Leakcheck { args } => leakcheck::run(&args),
        Command::Fuzz { seeds: true, .. } => fuzz::seeds(),
        Command::Fuzz { seconds, target, seeds: false } => fuzz::run(seconds, target.as_deref()),
    };
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("xtask: error: {message}");
            ExitCode::FAILURE
        }
    }
}
