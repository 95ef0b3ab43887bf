//! `busctl tail`: a topic's records from the end (the default), the beginning, an offset or a
//! time, printed as envelopes (or raw), filtered by aggregate id and event type, following new
//! records until Ctrl-C (or `--max` records, or the end with `--no-follow`).
//!
//! Owns: [`TailArgs`] and `run`.
//!
//! Invariants: no consumer group is joined and nothing is committed (the library's `Admin::read`
//! per partition); every partition is read at once (one stream each, merged), so a quiet
//! partition never delays a busy one; Ctrl-C stops reading at once and the bus is shut down
//! with a deadline before the exit (0: stopping is what Ctrl-C asks).

use std::sync::Arc;
use std::time::Duration;

use bus_kafka::StartAt;
use bus_kafka::{KafkaConfig, TopicPartition, admin::PartitionCursor};
use chrono::{DateTime, Utc};
use futures_util::StreamExt;
use futures_util::stream::{self, BoxStream};

use crate::output::Output;
use crate::records::{FETCH_BYTES, Filter, Shown};
use crate::{Exit, Failure, Outcome};

/// How long the bus may take to shut down at the end.
const SHUTDOWN: Duration = Duration::from_secs(5);
/// The pause after a failed read before the next (the reader reconnects meanwhile).
const RETRY: Duration = Duration::from_millis(500);

#[derive(Debug, clap::Args)]
pub(crate) struct TailArgs {
    /// The topic.
    topic: String,
    /// Start at the oldest record.
    #[arg(long, conflicts_with_all = ["offset", "timestamp"])]
    beginning: bool,
    /// Start at this offset (in every partition read; see `--partition`).
    #[arg(long, conflicts_with = "timestamp")]
    offset: Option<i64>,
    /// Start at the first record at or after this time (RFC 3339, `2026-11-29T10:00:00Z`).
    #[arg(long)]
    timestamp: Option<DateTime<Utc>>,
    /// Read only this partition.
    #[arg(long)]
    partition: Option<i32>,
    /// Only records of this aggregate id.
    #[arg(long)]
    aggregate: Option<String>,
    /// Only records of this event type.
    #[arg(long = "type")]
    event_type: Option<String>,
    /// Print values as they are, not as envelopes.
    #[arg(long)]
    raw: bool,
    /// Stop after this many records shown.
    #[arg(long)]
    max: Option<usize>,
    /// Stop at the end of each partition as it was when the tail started.
    #[arg(long)]
    no_follow: bool,
}

/// What one partition's stream yields.
type Step = Result<Vec<bus_kafka::Message>, bus_kafka::admin::AdminError>;

/// One partition read from its start until `end` (when set).
fn partition_stream(cursor: PartitionCursor, end: Option<i64>) -> BoxStream<'static, Step> {
    stream::unfold((cursor, end, false), |(mut cursor, end, done)| async move {
        if done {
            return None;
        }
        let step = cursor.next(FETCH_BYTES).await;
        if step.is_err() && cursor.skip_unreadable() {
            return Some((step, (cursor, end, false)));
        }
        let reached = match (&step, end) {
            (Ok(batch), Some(end)) => {
                batch.last().is_some_and(|m| m.offset + 1 >= end)
                    || cursor.position().is_some_and(|p| p >= end)
            }
            _ => false,
        };
        Some((step, (cursor, end, reached)))
    })
    .boxed()
}

pub(crate) async fn run(config: KafkaConfig, args: TailArgs, out: &Output) -> Outcome {
    let bus = bus_kafka::connect(config).await.map_err(Failure::from)?;
    let outcome = tail(&bus, &args, out).await;
    if let Err(error) = bus.shutdown(SHUTDOWN).await {
        eprintln!("busctl: the bus did not shut down cleanly: {error}");
    }
    outcome
}

async fn tail(bus: &bus_kafka::EventBus, args: &TailArgs, out: &Output) -> Outcome {
    let admin = bus.admin();
    let described = admin.describe_topic(&args.topic).await?;
    let start = match (args.beginning, args.offset, args.timestamp) {
        (true, _, _) => StartAt::Earliest,
        (_, Some(offset), _) => StartAt::Offset(offset),
        (_, _, Some(time)) => StartAt::Timestamp(time),
        _ => StartAt::Latest,
    };
    let mut streams = Vec::new();
    for p in &described.partitions {
        if args.partition.is_some_and(|only| only != p.partition) {
            continue;
        }
        let end = args.no_follow.then_some(p.end_offset);
        if end.is_some_and(|end| end <= p.start_offset)
            || (args.no_follow && start == StartAt::Latest)
        {
            continue;
        }
        let tp = TopicPartition { topic: Arc::from(args.topic.as_str()), partition: p.partition };
        let cursor = admin.read(&tp, start).await?;
        streams.push(partition_stream(cursor, end));
    }
    if let Some(only) = args.partition
        && !described.partitions.iter().any(|p| p.partition == only)
    {
        return Err(Failure::new(
            Exit::NotFound,
            format!("topic `{}` has no partition {only}", args.topic),
        ));
    }
    let filter = Filter { aggregate: args.aggregate.clone(), event_type: args.event_type.clone() };
    let mut merged = stream::select_all(streams);
    let mut shown = 0usize;
    let interrupted = tokio::signal::ctrl_c();
    tokio::pin!(interrupted);
    loop {
        let step = tokio::select! {
            _ = &mut interrupted => {
                eprintln!("busctl: interrupted: {shown} record(s) shown");
                return Ok(Exit::Done);
            }
            step = merged.next() => step,
        };
        let Some(step) = step else {
            return Ok(Exit::Done);
        };
        match step {
            Ok(batch) => {
                for message in batch.iter().filter(|m| filter.accepts(m)) {
                    let record = Shown::of(message, args.raw);
                    if out.json {
                        match serde_json::to_string(&record) {
                            Ok(line) => println!("{line}"),
                            Err(error) => eprintln!("busctl: cannot print JSON: {error}"),
                        }
                    } else {
                        println!("{}", record.human());
                    }
                    shown += 1;
                    if args.max.is_some_and(|max| shown >= max) {
                        return Ok(Exit::Done);
                    }
                }
            }
            Err(error) => {
                eprintln!("busctl: {error}");
                tokio::time::sleep(RETRY).await;
            }
        }
    }
}
