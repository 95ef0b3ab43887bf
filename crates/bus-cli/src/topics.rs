//! `busctl topics`: list, describe, create (partitions, replication, configuration), add
//! partitions, delete (after a confirmation, or `--yes`).
//!
//! Owns: [`TopicsCommand`] and `run`, on the library's `Admin`.

use std::io::IsTerminal;

use bus_kafka::{KafkaConfig, admin::NewTopic};
use clap::Subcommand;

use crate::output::Output;
use crate::{Exit, Failure, Outcome};

#[derive(Debug, Subcommand)]
pub(crate) enum TopicsCommand {
    /// Every topic with its partition count (`--internal` for Kafka's own too).
    List {
        /// Include internal topics (`__consumer_offsets`, …).
        #[arg(long)]
        internal: bool,
    },
    /// A topic's partitions (leader, replicas, offsets) and configuration.
    Describe {
        /// The topic.
        topic: String,
        /// Show every configuration entry, defaults included.
        #[arg(long)]
        all_config: bool,
    },
    /// Create a topic.
    Create {
        /// The topic.
        topic: String,
        /// Its partition count.
        #[arg(long, short, default_value_t = 1)]
        partitions: i32,
        /// Its replication factor (the configuration's `topics.replication_factor` otherwise).
        #[arg(long)]
        replication_factor: Option<i16>,
        /// A configuration entry, `key=value` (`cleanup.policy=compact`); repeat for more.
        #[arg(long = "config-entry", short = 'c', value_parser = key_value)]
        entries: Vec<(String, String)>,
    },
    /// Grow a topic to a partition count.
    AddPartitions {
        /// The topic.
        topic: String,
        /// The new total partition count.
        total: i32,
    },
    /// Delete a topic and its records.
    Delete {
        /// The topic.
        topic: String,
        /// Do not ask for confirmation.
        #[arg(long)]
        yes: bool,
    },
}

fn key_value(text: &str) -> Result<(String, String), String> {
    match text.split_once('=') {
        Some((key, value)) if !key.trim().is_empty() => {
            Ok((key.trim().to_owned(), value.trim().to_owned()))
        }
        _ => Err(format!("`{text}` is not key=value")),
    }
}

pub(crate) async fn run(config: KafkaConfig, command: TopicsCommand, out: &Output) -> Outcome {
    let admin = bus_kafka::admin::connect(config).await.map_err(Failure::from)?;
    match command {
        TopicsCommand::List { internal } => {
            let topics: Vec<_> = admin
                .list_topics()
                .await?
                .into_iter()
                .filter(|t| internal || !t.internal)
                .collect();
            if out.json {
                out.print_json(&topics);
            } else {
                let mut table = out.table(&["topic", "partitions"]);
                for topic in &topics {
                    let name = if topic.internal {
                        format!("{} (internal)", topic.name)
                    } else {
                        topic.name.clone()
                    };
                    table.add_row(vec![name, topic.partitions.to_string()]);
                }
                println!("{table}");
            }
        }
        TopicsCommand::Describe { topic, all_config } => {
            let mut described = admin.describe_topic(&topic).await?;
            if !all_config {
                described.config.retain(|_, entry| !entry.is_default);
            }
            if out.json {
                out.print_json(&described);
            } else {
                let mut table = out.table(&[
                    "partition",
                    "leader",
                    "replicas",
                    "in sync",
                    "start",
                    "end",
                    "records",
                ]);
                for p in &described.partitions {
                    let list =
                        |ids: &[i32]| ids.iter().map(i32::to_string).collect::<Vec<_>>().join(",");
                    table.add_row(vec![
                        p.partition.to_string(),
                        p.leader.map_or_else(|| "-".to_owned(), |l| l.to_string()),
                        list(&p.replicas),
                        list(&p.in_sync),
                        p.start_offset.to_string(),
                        p.end_offset.to_string(),
                        p.end_offset.saturating_sub(p.start_offset).to_string(),
                    ]);
                }
                println!(
                    "topic {}{}",
                    described.name,
                    if described.internal { " (internal)" } else { "" }
                );
                println!("{table}");
                if !described.config.is_empty() {
                    let mut config = out.table(&["configuration", "value", "default"]);
                    for (key, entry) in &described.config {
                        let value = if entry.sensitive {
                            "[sensitive]".to_owned()
                        } else {
                            entry.value.clone().unwrap_or_else(|| "-".to_owned())
                        };
                        config.add_row(vec![
                            key.clone(),
                            value,
                            if entry.is_default { "yes" } else { "no" }.to_owned(),
                        ]);
                    }
                    println!("{config}");
                }
            }
        }
        TopicsCommand::Create { topic, partitions, replication_factor, entries } => {
            let mut new = NewTopic::new(&topic, partitions);
            new.replication_factor = replication_factor;
            new.config = entries.into_iter().collect();
            admin.create_topic(&new).await?;
            if out.json {
                out.print_json(&new);
            } else {
                println!("created topic {topic} with {partitions} partition(s)");
            }
        }
        TopicsCommand::AddPartitions { topic, total } => {
            admin.add_partitions(&topic, total).await?;
            if !out.json {
                println!("topic {topic} now has {total} partitions");
            }
        }
        TopicsCommand::Delete { topic, yes } => {
            if !yes && !confirm(&format!("Delete topic {topic} and all its records?"))? {
                return Ok(Exit::Failed);
            }
            admin.delete_topic(&topic).await?;
            if !out.json {
                println!("deleted topic {topic}");
            }
        }
    }
    Ok(Exit::Done)
}

/// Asks `question` on the terminal; without one, refuses (use `--yes`).
pub(crate) fn confirm(question: &str) -> Result<bool, Failure> {
    if !std::io::stdin().is_terminal() {
        return Err(Failure::new(
            Exit::Usage,
            format!("{question} (no terminal to confirm on: pass --yes)"),
        ));
    }
    eprint!("{question} [y/N] ");
    let mut answer = String::new();
    std::io::stdin()
        .read_line(&mut answer)
        .map_err(|e| Failure::new(Exit::Failed, format!("cannot read the answer: {e}")))?;
    let yes = matches!(answer.trim(), "y" | "Y" | "yes");
    if !yes {
        eprintln!("not confirmed: nothing done");
    }
    Ok(yes)
}
