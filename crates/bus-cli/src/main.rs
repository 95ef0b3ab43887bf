//! `busctl`: the operator's command line for the event bus on Kafka.
//!
//! Owns: the command line (clap), the exit codes ([`Exit`]), and the dispatch to one module per
//! command group: `check`, `topics`, `groups`, `produce`, `tail`, `dlq`; what they share lives in
//! `settings` (the configuration: the library's `KafkaConfig` file, environment, flags),
//! `output` (tables or JSON, colour only on a terminal) and `records` (a record as printed, and
//! reading a topic to its end).
//!
//! Invariants: every command connects through the library (`bus_kafka::connect` or
//! `bus_kafka::admin`), so TLS, SASL and every timeout are the library's; a bus a command opens
//! is shut down with a deadline before the process exits; nothing is printed to stdout but the
//! command's result (progress, prompts and errors go to stderr), so `--json` output can be
//! piped.

mod check;
mod dlq;
mod groups;
mod output;
mod produce;
mod records;
mod settings;
mod tail;
mod topics;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

use crate::settings::Connection;

/// busctl: tail topics, produce, inspect and replay dead letters, see groups and lag, manage
/// topics, check a connection. Exit codes: 0 done, 1 failed, 2 usage or configuration error,
/// 3 cluster unreachable or authentication refused, 4 not found, 5 partly done, 130
/// interrupted.
#[derive(Debug, Parser)]
#[command(name = "busctl", version, about, long_about = None)]
struct Cli {
    #[command(flatten)]
    connection: Connection,
    /// Print JSON (one document, or one object per line for records) instead of tables.
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Connect with the configuration and report the brokers, their API versions, the
    /// authentication, and what would stop a service from starting.
    Check,
    /// List, describe, create, grow and delete topics.
    #[command(subcommand)]
    Topics(topics::TopicsCommand),
    /// List consumer groups; describe one with members, assignments, offsets and lag.
    #[command(subcommand)]
    Groups(groups::GroupsCommand),
    /// Publish envelopes (or raw records) read as JSON lines from stdin or a file.
    Produce(produce::ProduceArgs),
    /// Print a topic's records, from the end, the beginning, an offset or a time, and follow.
    Tail(tail::TailArgs),
    /// List, show and replay dead-lettered records.
    #[command(subcommand)]
    Dlq(dlq::DlqCommand),
}

/// How the process ends (the exit codes are documented in `--help` and the README).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Exit {
    /// Done.
    Done = 0,
    /// The operation failed.
    Failed = 1,
    /// A usage error or an invalid configuration.
    Usage = 2,
    /// The cluster could not be reached, or refused the authentication.
    Unreachable = 3,
    /// The topic, group or record does not exist.
    NotFound = 4,
    /// Part of the work was done, part failed.
    Partial = 5,
    /// Interrupted (Ctrl-C) before the work was done.
    Interrupted = 130,
}

/// A command's failure: what to print and how to exit.
#[derive(Debug)]
pub(crate) struct Failure {
    pub(crate) exit: Exit,
    pub(crate) message: String,
}

impl Failure {
    pub(crate) fn new(exit: Exit, message: impl Into<String>) -> Self {
        Failure { exit, message: message.into() }
    }
}

impl From<bus_kafka::KafkaError> for Failure {
    fn from(error: bus_kafka::KafkaError) -> Self {
        let exit = match &error {
            bus_kafka::KafkaError::Config(_) => Exit::Usage,
            bus_kafka::KafkaError::Connect { .. } => Exit::Unreachable,
            bus_kafka::KafkaError::UnknownTopic { .. } => Exit::NotFound,
            _ => Exit::Failed,
        };
        Failure::new(exit, error.to_string())
    }
}

impl From<bus_kafka::admin::AdminError> for Failure {
    fn from(error: bus_kafka::admin::AdminError) -> Self {
        let exit = match &error {
            bus_kafka::admin::AdminError::Unavailable { .. } => Exit::Unreachable,
            // UNKNOWN_TOPIC_OR_PARTITION, GROUP_ID_NOT_FOUND.
            _ if matches!(error.code(), Some(3 | 69)) => Exit::NotFound,
            _ => Exit::Failed,
        };
        Failure::new(exit, error.to_string())
    }
}

/// What a command returns.
pub(crate) type Outcome = Result<Exit, Failure>;

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("busctl: cannot start the runtime: {error}");
            return ExitCode::from(Exit::Failed as u8);
        }
    };
    let exit = match runtime.block_on(run(cli)) {
        Ok(exit) => exit,
        Err(failure) => {
            eprintln!("busctl: {}", failure.message);
            failure.exit
        }
    };
    ExitCode::from(exit as u8)
}

async fn run(cli: Cli) -> Outcome {
    let config = cli.connection.config()?;
    let out = output::Output::new(cli.json);
    match cli.command {
        Command::Check => check::run(config, &out).await,
        Command::Topics(command) => topics::run(config, command, &out).await,
        Command::Groups(command) => groups::run(config, command, &out).await,
        Command::Produce(args) => produce::run(config, args, &out).await,
        Command::Tail(args) => tail::run(config, args, &out).await,
        Command::Dlq(command) => dlq::run(config, command, &out).await,
    }
}
