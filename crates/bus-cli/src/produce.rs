//! `busctl produce`: publish JSON lines from stdin or a file to a topic: envelopes (the Go SDK's
//! JSON, validated as the library validates them), or raw records with `--raw`
//! (`{"key": …, "value": …, "headers": {…}, "partition": …}`), with a progress bar on a
//! terminal and a summary: acknowledged, failed back, and why.
//!
//! Owns: [`ProduceArgs`] and `run`.
//!
//! Invariants: a line that cannot be read is reported with its number and never stops the rest;
//! at most `MAX_IN_FLIGHT` records await their acknowledgement at a time; every accepted record
//! gets its verdict before the summary (the bus is shut down with a deadline after the last).

use std::collections::BTreeMap;
use std::io::IsTerminal;
use std::path::PathBuf;
use std::time::Duration;

use bus_kafka::{Envelope, KafkaConfig, Record};
use futures_util::StreamExt;
use futures_util::stream::FuturesUnordered;
use indicatif::{ProgressBar, ProgressStyle};
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, BufReader};

use crate::output::Output;
use crate::{Exit, Failure, Outcome};

/// Records awaiting their acknowledgement at most.
const MAX_IN_FLIGHT: usize = 1_000;
/// How long the bus may take to shut down after the last record.
const SHUTDOWN: Duration = Duration::from_secs(10);

#[derive(Debug, clap::Args)]
pub(crate) struct ProduceArgs {
    /// The topic.
    topic: String,
    /// Read the lines from this file (stdin otherwise).
    #[arg(long, short)]
    file: Option<PathBuf>,
    /// Lines are raw records (`{"key","value","headers","partition"}`), not envelopes.
    #[arg(long)]
    raw: bool,
}

/// A raw record as read from a line.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawLine {
    #[serde(default)]
    key: Option<String>,
    value: serde_json::Value,
    #[serde(default)]
    headers: BTreeMap<String, String>,
    #[serde(default)]
    partition: Option<i32>,
}

#[derive(Debug, Default, Serialize)]
struct Summary {
    topic: String,
    lines: usize,
    acknowledged: usize,
    failed: usize,
    /// Why records failed, with how many and the first lines concerned.
    reasons: BTreeMap<String, Reason>,
}

#[derive(Debug, Default, Serialize)]
struct Reason {
    count: usize,
    lines: Vec<usize>,
}

impl Summary {
    fn fail(&mut self, line: usize, reason: String) {
        self.failed += 1;
        let entry = self.reasons.entry(reason).or_default();
        entry.count += 1;
        if entry.lines.len() < 10 {
            entry.lines.push(line);
        }
    }
}

fn record(topic: &str, line: &str, raw: bool) -> Result<Record, String> {
    if !raw {
        let envelope =
            Envelope::from_json(line.as_bytes()).map_err(|e| format!("not an envelope: {e}"))?;
        return envelope.to_record(topic).map_err(|e| format!("not an envelope: {e}"));
    }
    let raw: RawLine = serde_json::from_str(line).map_err(|e| format!("not a raw record: {e}"))?;
    let value = match raw.value {
        serde_json::Value::String(text) => text,
        other => other.to_string(),
    };
    let mut record = Record::new(topic, value);
    if let Some(key) = raw.key {
        record = record.with_key(key);
    }
    for (name, value) in raw.headers {
        record = record.with_header(name, value);
    }
    if let Some(partition) = raw.partition {
        record = record.with_partition(partition);
    }
    Ok(record)
}

pub(crate) async fn run(config: KafkaConfig, args: ProduceArgs, out: &Output) -> Outcome {
    let input: Box<dyn tokio::io::AsyncRead + Unpin + Send> = match &args.file {
        Some(path) => Box::new(tokio::fs::File::open(path).await.map_err(|e| {
            Failure::new(Exit::Usage, format!("cannot open {}: {e}", path.display()))
        })?),
        None => Box::new(tokio::io::stdin()),
    };
    let bus = bus_kafka::connect(config).await.map_err(Failure::from)?;
    let progress = if std::io::stderr().is_terminal() {
        let bar = ProgressBar::new_spinner();
        if let Ok(style) =
            ProgressStyle::with_template("{spinner} {pos} acknowledged {msg} [{elapsed}]")
        {
            bar.set_style(style);
        }
        bar.enable_steady_tick(Duration::from_millis(100));
        bar
    } else {
        ProgressBar::hidden()
    };
    let mut summary = Summary { topic: args.topic.clone(), ..Summary::default() };
    let mut pending = FuturesUnordered::new();
    let mut lines = BufReader::new(input).lines();
    let mut number = 0usize;
    let mut interrupted = false;
    let ctrl_c = tokio::signal::ctrl_c();
    tokio::pin!(ctrl_c);
    loop {
        let read = tokio::select! {
            _ = &mut ctrl_c => {
                // Stop reading; what was accepted still gets its verdict.
                interrupted = true;
                break;
            }
            read = lines.next_line() => read,
        };
        let line = match read {
            Ok(Some(line)) => line,
            Ok(None) => break,
            Err(error) => {
                summary.fail(number + 1, format!("cannot read the input: {error}"));
                break;
            }
        };
        number += 1;
        if line.trim().is_empty() {
            continue;
        }
        summary.lines += 1;
        let record = match record(&args.topic, &line, args.raw) {
            Ok(record) => record,
            Err(reason) => {
                summary.fail(number, reason);
                continue;
            }
        };
        match bus.publish_nowait(record).await {
            Ok(delivery) => pending.push(async move { (number, delivery.await) }),
            Err(error) => summary.fail(number, error.to_string()),
        }
        while pending.len() >= MAX_IN_FLIGHT {
            if let Some((line, outcome)) = pending.next().await {
                settle(&mut summary, &progress, line, outcome);
            }
        }
    }
    while let Some((line, outcome)) = pending.next().await {
        settle(&mut summary, &progress, line, outcome);
    }
    progress.finish_and_clear();
    if let Err(error) = bus.shutdown(SHUTDOWN).await {
        eprintln!("busctl: the bus did not shut down cleanly: {error}");
    }
    if out.json {
        out.print_json(&summary);
    } else {
        println!(
            "{}: {} line(s), {} acknowledged, {} failed",
            summary.topic, summary.lines, summary.acknowledged, summary.failed
        );
        for (reason, r) in &summary.reasons {
            let lines: Vec<String> = r.lines.iter().map(usize::to_string).collect();
            println!("  {} x {reason} (lines {})", r.count, lines.join(","));
        }
    }
    if interrupted {
        eprintln!("busctl: interrupted after {} line(s)", summary.lines);
        return Ok(Exit::Interrupted);
    }
    Ok(match (summary.acknowledged, summary.failed) {
        (_, 0) => Exit::Done,
        (0, _) => Exit::Failed,
        _ => Exit::Partial,
    })
}

fn settle(
    summary: &mut Summary,
    progress: &ProgressBar,
    line: usize,
    outcome: Result<bus_kafka::Delivery, bus_kafka::errors::PublishError>,
) {
    match outcome {
        Ok(_) => {
            summary.acknowledged += 1;
            progress.inc(1);
        }
        Err(error) => {
            summary.fail(line, error.to_string());
            progress.set_message(format!("{} failed", summary.failed));
        }
    }
}
