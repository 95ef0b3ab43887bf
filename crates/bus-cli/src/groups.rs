//! `busctl groups`: list consumer groups; describe one with its members, their assignments,
//! committed offsets and lag per partition.
//!
//! Owns: [`GroupsCommand`] and `run`, on the library's `Admin`.

use bus_kafka::KafkaConfig;
use clap::Subcommand;

use crate::output::Output;
use crate::{Exit, Failure, Outcome};

#[derive(Debug, Subcommand)]
pub(crate) enum GroupsCommand {
    /// Every consumer group with its state.
    List,
    /// A group's members, assignments, committed offsets and lag.
    Describe {
        /// The group.
        group: String,
    },
}

pub(crate) async fn run(config: KafkaConfig, command: GroupsCommand, out: &Output) -> Outcome {
    let admin = bus_kafka::admin::connect(config).await.map_err(Failure::from)?;
    match command {
        GroupsCommand::List => {
            let groups = admin.list_groups().await?;
            if out.json {
                out.print_json(&groups);
            } else {
                let mut table = out.table(&["group", "state", "protocol type"]);
                for g in &groups {
                    table.add_row(vec![g.group.clone(), g.state.clone(), g.protocol_type.clone()]);
                }
                println!("{table}");
            }
        }
        GroupsCommand::Describe { group } => {
            let described = admin.describe_group(&group).await?;
            if described.state == "Dead" && described.offsets.is_empty() {
                return Err(Failure::new(
                    Exit::NotFound,
                    format!("group `{group}`: no such group"),
                ));
            }
            if out.json {
                out.print_json(&described);
            } else {
                println!(
                    "group {} ({}, {} member(s), total lag {})",
                    described.group,
                    if described.state.is_empty() { "state unknown" } else { &described.state },
                    described.members.len(),
                    described.total_lag()
                );
                let mut members = out.table(&["member", "instance", "client", "host", "assigned"]);
                for m in &described.members {
                    let assigned = m
                        .assignment
                        .iter()
                        .map(|(topic, ps)| {
                            let ps: Vec<String> = ps.iter().map(i32::to_string).collect();
                            format!("{topic}[{}]", ps.join(","))
                        })
                        .collect::<Vec<_>>()
                        .join(" ");
                    members.add_row(vec![
                        m.member_id.clone(),
                        m.group_instance_id.clone().unwrap_or_else(|| "-".to_owned()),
                        m.client_id.clone(),
                        m.host.clone(),
                        if assigned.is_empty() { "-".to_owned() } else { assigned },
                    ]);
                }
                if !described.members.is_empty() {
                    println!("{members}");
                }
                let mut offsets =
                    out.table(&["topic", "partition", "committed", "end", "lag", "member"]);
                for o in &described.offsets {
                    let dash = || "-".to_owned();
                    offsets.add_row(vec![
                        o.topic.clone(),
                        o.partition.to_string(),
                        o.committed.map_or_else(dash, |c| c.to_string()),
                        o.end_offset.to_string(),
                        o.lag.map_or_else(dash, |l| l.to_string()),
                        o.member_id.clone().unwrap_or_else(dash),
                    ]);
                }
                println!("{offsets}");
            }
        }
    }
    Ok(Exit::Done)
}
