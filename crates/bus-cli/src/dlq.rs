//! `busctl dlq`: list and show dead-lettered records with their `X-DLQ-*` headers, and replay a
//! selection to their source topics.
//!
//! Owns: [`DlqCommand`], `run`, and the replay's bookkeeping.
//!
//! Replay, and why a second replay does not duplicate: each record replayed is published to its
//! source topic (`X-DLQ-Source-Topic`; its partition is chosen again from its key) with its
//! key, value and own headers, the `X-DLQ-*` headers removed and `X-DLQ-Replayed-From:
//! <dlq>/<partition>/<offset>` added; once the broker acknowledged it, a marker is written to
//! `<dlq>.replayed` (a compacted topic created on first use; key `<partition>/<offset>`, value
//! where the replayed copy went). A replay first reads every marker and skips the records they
//! name. The order is publish, then marker: a replay interrupted between the two republishes
//! that one record next time (at least once, never lost).

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use bus_kafka::{
    KafkaConfig, Message, Record, admin::Admin, admin::NewTopic, headers::dead_letter as dlq,
};
use clap::Subcommand;
use serde::Serialize;

use crate::output::Output;
use crate::records::{Shown, read_to_end, text};
use crate::topics::confirm;
use crate::{Exit, Failure, Outcome};

/// How long reading a dead-letter topic (or its markers) may take.
const READ_DEADLINE: Duration = Duration::from_secs(60);
/// How long the bus may take to shut down at the end.
const SHUTDOWN: Duration = Duration::from_secs(10);

#[derive(Debug, Subcommand)]
pub(crate) enum DlqCommand {
    /// Every dead-lettered record of a dead-letter topic (`<topic>.dlq` by default).
    List {
        /// The dead-letter topic.
        topic: String,
    },
    /// One dead-lettered record, whole.
    Show {
        /// The dead-letter topic.
        topic: String,
        /// Its partition.
        partition: i32,
        /// Its offset.
        offset: i64,
    },
    /// Publish a selection back to the source topics (after a confirmation, or `--yes`).
    Replay {
        /// The dead-letter topic.
        topic: String,
        /// Only records of this dead-letter partition.
        #[arg(long)]
        partition: Option<i32>,
        /// Only the record at this offset (with `--partition`).
        #[arg(long, requires = "partition")]
        offset: Option<i64>,
        /// Only records dead-lettered by this consumer group.
        #[arg(long)]
        group: Option<String>,
        /// Only records from this source topic.
        #[arg(long)]
        source_topic: Option<String>,
        /// Do not ask for confirmation.
        #[arg(long)]
        yes: bool,
    },
}

/// A dead-lettered record as listed.
#[derive(Debug, Serialize)]
struct Entry {
    partition: i32,
    offset: i64,
    source_topic: Option<String>,
    source_partition: Option<String>,
    source_offset: Option<String>,
    group: Option<String>,
    reason: Option<String>,
    attempts: Option<String>,
    error: Option<String>,
    replayed: bool,
}

fn header(message: &Message, name: &str) -> Option<String> {
    message.headers.get(name).map(|v| text(v))
}

fn entry(message: &Message, replayed: &BTreeSet<(i32, i64)>) -> Entry {
    Entry {
        partition: message.partition,
        offset: message.offset,
        source_topic: header(message, dlq::SOURCE_TOPIC),
        source_partition: header(message, dlq::SOURCE_PARTITION),
        source_offset: header(message, dlq::SOURCE_OFFSET),
        group: header(message, dlq::GROUP),
        reason: header(message, dlq::REASON),
        attempts: header(message, dlq::ATTEMPTS),
        error: header(message, dlq::ERROR),
        replayed: replayed.contains(&(message.partition, message.offset)),
    }
}

/// The topic holding `dlq`'s replay markers.
fn markers_topic(dlq: &str) -> String {
    format!("{dlq}.replayed")
}

/// The dead-letter records already replayed, by (partition, offset).
async fn replayed(admin: &Admin, dlq: &str) -> Result<BTreeSet<(i32, i64)>, Failure> {
    let markers = markers_topic(dlq);
    if admin.partitions(&markers).await?.is_none() {
        return Ok(BTreeSet::new());
    }
    let records = read_to_end(admin, &markers, READ_DEADLINE).await?;
    Ok(records
        .iter()
        .filter_map(|m| {
            let key = text(m.key.as_deref()?);
            let (partition, offset) = key.split_once('/')?;
            Some((partition.parse().ok()?, offset.parse().ok()?))
        })
        .collect())
}

pub(crate) async fn run(config: KafkaConfig, command: DlqCommand, out: &Output) -> Outcome {
    let bus = bus_kafka::connect(config).await.map_err(Failure::from)?;
    let outcome = dispatch(&bus, command, out).await;
    if let Err(error) = bus.shutdown(SHUTDOWN).await {
        eprintln!("busctl: the bus did not shut down cleanly: {error}");
    }
    outcome
}

async fn dispatch(bus: &bus_kafka::EventBus, command: DlqCommand, out: &Output) -> Outcome {
    let admin = bus.admin();
    match command {
        DlqCommand::List { topic } => {
            let records = read_to_end(&admin, &topic, READ_DEADLINE).await?;
            let done = replayed(&admin, &topic).await?;
            let entries: Vec<Entry> = records.iter().map(|m| entry(m, &done)).collect();
            if out.json {
                out.print_json(&entries);
            } else {
                let mut table = out
                    .table(&["dlq", "source", "group", "reason", "attempts", "error", "replayed"]);
                for e in &entries {
                    let dash = || "-".to_owned();
                    let mut error = e.error.clone().unwrap_or_else(dash);
                    if error.chars().count() > 60 {
                        error = format!("{}…", error.chars().take(59).collect::<String>());
                    }
                    table.add_row(vec![
                        format!("{}@{}", e.partition, e.offset),
                        format!(
                            "{}-{}@{}",
                            e.source_topic.clone().unwrap_or_else(dash),
                            e.source_partition.clone().unwrap_or_else(dash),
                            e.source_offset.clone().unwrap_or_else(dash)
                        ),
                        e.group.clone().unwrap_or_else(dash),
                        e.reason.clone().unwrap_or_else(dash),
                        e.attempts.clone().unwrap_or_else(dash),
                        error,
                        if e.replayed { "yes" } else { "no" }.to_owned(),
                    ]);
                }
                println!("{table}");
                println!(
                    "{} dead-lettered record(s), {} replayed",
                    entries.len(),
                    entries.iter().filter(|e| e.replayed).count()
                );
            }
            Ok(Exit::Done)
        }
        DlqCommand::Show { topic, partition, offset } => {
            let records = read_to_end(&admin, &topic, READ_DEADLINE).await?;
            let Some(message) =
                records.iter().find(|m| m.partition == partition && m.offset == offset)
            else {
                return Err(Failure::new(
                    Exit::NotFound,
                    format!("`{topic}` has no record at partition {partition} offset {offset}"),
                ));
            };
            let done = replayed(&admin, &topic).await?;
            #[derive(Serialize)]
            struct Detail {
                dead_letter: Entry,
                record: Shown,
            }
            let detail =
                Detail { dead_letter: entry(message, &done), record: Shown::of(message, false) };
            if out.json {
                out.print_json(&detail);
            } else {
                println!("{}", detail.record.human());
                println!("replayed: {}", if detail.dead_letter.replayed { "yes" } else { "no" });
            }
            Ok(Exit::Done)
        }
        DlqCommand::Replay { topic, partition, offset, group, source_topic, yes } => {
            let records = read_to_end(&admin, &topic, READ_DEADLINE).await?;
            let done = replayed(&admin, &topic).await?;
            let mut skipped_replayed = 0usize;
            let mut selected = Vec::new();
            for m in &records {
                let e = entry(m, &done);
                let wanted = partition.is_none_or(|p| p == m.partition)
                    && offset.is_none_or(|o| o == m.offset)
                    && group.as_ref().is_none_or(|g| e.group.as_ref() == Some(g))
                    && source_topic.as_ref().is_none_or(|t| e.source_topic.as_ref() == Some(t));
                if !wanted {
                    continue;
                }
                if e.replayed {
                    skipped_replayed += 1;
                } else {
                    selected.push((m, e));
                }
            }
            if selected.is_empty() {
                if !out.json {
                    println!(
                        "nothing to replay ({skipped_replayed} selected record(s) replayed before)"
                    );
                }
                return Ok(if skipped_replayed > 0 || offset.is_none() {
                    Exit::Done
                } else {
                    Exit::NotFound
                });
            }
            if !yes
                && !confirm(&format!(
                    "Replay {} record(s) from {topic} to their source topics ({skipped_replayed} replayed before are skipped)?",
                    selected.len()
                ))?
            {
                return Ok(Exit::Failed);
            }
            replay(bus, &admin, &topic, &selected, skipped_replayed, out).await
        }
    }
}

#[derive(Debug, Default, Serialize)]
struct ReplaySummary {
    replayed: usize,
    skipped_replayed_before: usize,
    failed: BTreeMap<String, String>,
}

async fn replay(
    bus: &bus_kafka::EventBus,
    admin: &Admin,
    dlq_topic: &str,
    selected: &[(&Message, Entry)],
    skipped: usize,
    out: &Output,
) -> Outcome {
    let markers = markers_topic(dlq_topic);
    let created =
        admin.create_topic(&NewTopic::new(&markers, 1).config("cleanup.policy", "compact")).await;
    if let Err(error) = created
        && error.code() != Some(36)
    {
        return Err(error.into());
    }
    let mut summary =
        ReplaySummary { skipped_replayed_before: skipped, ..ReplaySummary::default() };
    for (message, e) in selected {
        let at = format!("{}@{}", message.partition, message.offset);
        let Some(target) = e.source_topic.clone() else {
            summary.failed.insert(at, format!("no {} header", dlq::SOURCE_TOPIC));
            continue;
        };
        if e.reason.as_deref() == Some("unreadable-batch") {
            summary.failed.insert(
                at,
                "an unreadable batch (raw bytes) cannot be replayed as a record".into(),
            );
            continue;
        }
        let mut record = Record::new(target.clone(), bytes::Bytes::new());
        // A dead-lettered tombstone is replayed as a tombstone.
        record.value = message.value.clone();
        record.key = message.key.clone();
        for h in
            message.headers.iter().filter(|h| !h.name.to_ascii_lowercase().starts_with("x-dlq-"))
        {
            record.headers.push(h.name.clone(), h.value.clone());
        }
        record.headers.push(
            dlq::REPLAYED_FROM,
            format!("{dlq_topic}/{}/{}", message.partition, message.offset),
        );
        let stored = match bus.publish(record).await {
            Ok(stored) => stored,
            Err(error) => {
                summary.failed.insert(at, format!("publishing to {target}: {error}"));
                continue;
            }
        };
        let marker = Record::new(
            markers.clone(),
            serde_json::json!({
                "replayed_to": {"topic": stored.topic, "partition": stored.partition, "offset": stored.offset},
                "at": chrono::Utc::now().to_rfc3339(),
            })
            .to_string(),
        )
        .with_key(format!("{}/{}", message.partition, message.offset));
        match bus.publish(marker).await {
            Ok(_) => summary.replayed += 1,
            Err(error) => {
                summary.failed.insert(at, format!("replayed to {target}, but its marker failed (a later replay repeats it): {error}"));
            }
        }
    }
    if out.json {
        out.print_json(&summary);
    } else {
        println!(
            "replayed {} record(s); {} replayed before, skipped; {} failed",
            summary.replayed,
            summary.skipped_replayed_before,
            summary.failed.len()
        );
        for (at, reason) in &summary.failed {
            println!("  {at}: {reason}");
        }
    }
    Ok(match (summary.replayed, summary.failed.len()) {
        (_, 0) => Exit::Done,
        (0, _) => Exit::Failed,
        _ => Exit::Partial,
    })
}
