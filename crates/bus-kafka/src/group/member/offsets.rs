//! A member's committed offsets: OffsetCommit and OffsetFetch at the group's coordinator, for
//! the `commit` and `committed` of the member's handle.
//!
//! Owns: [`Offsets`] (the coordinator link these requests share, one request at a time).
//!
//! Invariants:
//! - A commit is sent only while the member holds partitions in a generation, in that
//!   generation and as that member id (`State::held`: the current generation, or while a
//!   cooperative member joins again the one it holds its partitions in); otherwise it fails
//!   (retriably) without a request. A static member's commits carry its group instance id
//!   (OffsetCommit v7 and later).
//! - A commit made while a cooperative member joins again is retried (within its attempts) on
//!   REBALANCE_IN_PROGRESS and ILLEGAL_GENERATION, in the generation held at each attempt: the
//!   member's next generation is moments away, and a stop's final commit lands in it.
//! - A request is tried at most [`OFFSET_ATTEMPTS`] times, backing off per the member's
//!   `RETRY_BACKOFF`, and only across transient failures and coordinator moves (finding the
//!   coordinator again after a move).
//! - A commit answered "rebalancing" or "unknown member" requests a rejoin for the generation it
//!   was made in (never for a later one); the runtime still gets the error.

use std::collections::BTreeMap;
use std::sync::Arc;

use bus_core::TopicPartition;
use bus_core::backend::GroupError;
use kafka_protocol::messages::offset_commit_request::{
    OffsetCommitRequestPartition, OffsetCommitRequestTopic,
};
use kafka_protocol::messages::offset_fetch_request::{
    OffsetFetchRequestGroup, OffsetFetchRequestTopic, OffsetFetchRequestTopics,
};
use kafka_protocol::messages::{OffsetCommitRequest, OffsetFetchRequest};
use kafka_protocol::protocol::StrBytes;

use super::{Inner, Phase, RETRY_BACKOFF, Rejoin};
use crate::group::coordinator::{Failure, Link};

/// Attempts of an offset commit or fetch across coordinator moves.
const OFFSET_ATTEMPTS: u32 = 3;
/// The first OffsetCommit version with `group_instance_id`.
const COMMIT_INSTANCE_ID_VERSION: i16 = 7;

/// A member's OffsetCommit and OffsetFetch requests, on a coordinator link of their own.
#[derive(Debug)]
pub(super) struct Offsets {
    inner: Arc<Inner>,
    /// The connection for OffsetCommit and OffsetFetch.
    link: tokio::sync::Mutex<Link>,
}

impl Offsets {
    /// The offset requests of the member sharing `inner`, on `link`.
    pub(super) fn new(inner: Arc<Inner>, link: Link) -> Self {
        Offsets { inner, link: tokio::sync::Mutex::new(link) }
    }

    /// The group's committed offsets of `partitions` (`None` where nothing is committed).
    pub(super) async fn committed(
        &self,
        partitions: &[TopicPartition],
    ) -> Result<Vec<Option<i64>>, GroupError> {
        if partitions.is_empty() {
            return Ok(Vec::new());
        }
        let mut link = self.link.lock().await;
        let mut failure = Failure::Retry("no attempt made".into());
        for attempt in 0..OFFSET_ATTEMPTS {
            if attempt > 0 {
                tokio::time::sleep(RETRY_BACKOFF.delay(attempt - 1)).await;
            }
            match self.fetch_offsets(&mut link, partitions).await {
                Ok(offsets) => return Ok(offsets),
                Err(f @ (Failure::Retry(_) | Failure::Coordinator(_))) => {
                    if matches!(f, Failure::Coordinator(_)) {
                        link.coordinator_moved();
                    }
                    failure = f;
                }
                Err(f) => return Err(self.inner.error(&f)),
            }
        }
        Err(self.inner.error(&failure))
    }

    /// The generation and member id commits are sent in now, with the phase.
    fn held(&self) -> (Phase, Option<(i32, String)>) {
        let s = self.inner.state.borrow();
        (s.phase, s.held.clone().filter(|(g, _)| *g >= 0))
    }

    /// Commits `offsets` in the generation the member holds its partitions in.
    pub(super) async fn commit(&self, offsets: &[(TopicPartition, i64)]) -> Result<(), GroupError> {
        if offsets.is_empty() {
            return Ok(());
        }
        let mut link = self.link.lock().await;
        let mut failure = Failure::Retry("no attempt made".into());
        for attempt in 0..OFFSET_ATTEMPTS {
            if attempt > 0 {
                tokio::time::sleep(RETRY_BACKOFF.delay(attempt - 1)).await;
            }
            // Read again at each attempt: a cooperative member rejoining moves to its next
            // generation meanwhile.
            let (phase, held) = self.held();
            let Some((generation, member_id)) = held else {
                return Err(GroupError::retriable(
                    &self.inner.group,
                    format!(
                        "cannot commit {}: the member holds no generation (phase {phase:?})",
                        describe(offsets)
                    ),
                ));
            };
            match self.commit_offsets(&mut link, offsets, generation, &member_id).await {
                Ok(()) => return Ok(()),
                Err(f @ (Failure::Retry(_) | Failure::Coordinator(_))) => {
                    if matches!(f, Failure::Coordinator(_)) {
                        link.coordinator_moved();
                    }
                    failure = f;
                }
                // A cooperative member joining again while it holds its partitions: the group
                // waits for its leader's assignment (REBALANCE_IN_PROGRESS), or has just moved
                // to the next generation (ILLEGAL_GENERATION). Its next generation is moments
                // away, and its partitions are still its own until it revokes them.
                Err(f @ (Failure::Rebalance(_) | Failure::Reset(_)))
                    if phase == Phase::Joining && attempt + 1 < OFFSET_ATTEMPTS =>
                {
                    failure = f;
                }
                Err(f) => {
                    match &f {
                        Failure::Rebalance(_) => {
                            self.inner.request_rejoin(generation, &member_id, Rejoin::Rebalance);
                        }
                        Failure::Reset(_) => {
                            self.inner.request_rejoin(generation, &member_id, Rejoin::Reset);
                        }
                        Failure::Fenced(reason) => {
                            let rejoin = Rejoin::Fenced(reason.clone());
                            self.inner.request_rejoin(generation, &member_id, rejoin);
                        }
                        _ => {}
                    }
                    return Err(self.inner.error(&f));
                }
            }
        }
        Err(self.inner.error(&failure))
    }

    /// One OffsetFetch for `partitions`.
    async fn fetch_offsets(
        &self,
        link: &mut Link,
        partitions: &[TopicPartition],
    ) -> Result<Vec<Option<i64>>, Failure> {
        let group = self.inner.group.clone();
        let mut by_topic: BTreeMap<&str, Vec<i32>> = BTreeMap::new();
        for tp in partitions {
            by_topic.entry(&tp.topic).or_default().push(tp.partition);
        }
        let build = |version: i16| {
            let mut request = OffsetFetchRequest::default();
            if version >= 8 {
                let mut entry = OffsetFetchRequestGroup::default();
                entry.group_id = StrBytes::from_string(group.clone()).into();
                entry.member_epoch = -1;
                entry.topics = Some(
                    by_topic
                        .iter()
                        .map(|(topic, partitions)| {
                            let mut t = OffsetFetchRequestTopics::default();
                            t.name = StrBytes::from_string((*topic).to_owned()).into();
                            t.partition_indexes = partitions.clone();
                            t
                        })
                        .collect(),
                );
                request.groups = vec![entry];
            } else {
                request.group_id = StrBytes::from_string(group.clone()).into();
                request.topics = Some(
                    by_topic
                        .iter()
                        .map(|(topic, partitions)| {
                            let mut t = OffsetFetchRequestTopic::default();
                            t.name = StrBytes::from_string((*topic).to_owned()).into();
                            t.partition_indexes = partitions.clone();
                            t
                        })
                        .collect(),
                );
            }
            request
        };
        let timeout = self.inner.config.request_timeout;
        let (response, version) = link.request(build, timeout).await?;
        let context = format!("OffsetFetch v{version} of {}", list(partitions));
        // (topic, partition) -> (offset, error)
        let mut found: BTreeMap<(String, i32), (i64, i16)> = BTreeMap::new();
        if version >= 8 {
            let Some(entry) = response.groups.first() else {
                return Err(Failure::Retry(format!("{context}: the answer names no group")));
            };
            if entry.error_code != 0 {
                return Err(Failure::from_code(entry.error_code, &context));
            }
            for topic in &entry.topics {
                for p in &topic.partitions {
                    found.insert(
                        (topic.name.0.as_str().to_owned(), p.partition_index),
                        (p.committed_offset, p.error_code),
                    );
                }
            }
        } else {
            if response.error_code != 0 {
                return Err(Failure::from_code(response.error_code, &context));
            }
            for topic in &response.topics {
                for p in &topic.partitions {
                    found.insert(
                        (topic.name.0.as_str().to_owned(), p.partition_index),
                        (p.committed_offset, p.error_code),
                    );
                }
            }
        }
        let mut result = Vec::with_capacity(partitions.len());
        for tp in partitions {
            match found.get(&(tp.topic.to_string(), tp.partition)) {
                Some(&(_, error)) if error != 0 => {
                    return Err(Failure::from_code(error, &format!("{context}: `{tp}`")));
                }
                Some(&(offset, _)) if offset >= 0 => result.push(Some(offset)),
                _ => result.push(None),
            }
        }
        Ok(result)
    }

    /// One OffsetCommit of `offsets` in `(generation, member_id)`.
    async fn commit_offsets(
        &self,
        link: &mut Link,
        offsets: &[(TopicPartition, i64)],
        generation: i32,
        member_id: &str,
    ) -> Result<(), Failure> {
        let mut by_topic: BTreeMap<&str, Vec<(i32, i64)>> = BTreeMap::new();
        for (tp, offset) in offsets {
            by_topic.entry(&tp.topic).or_default().push((tp.partition, *offset));
        }
        let build = |version: i16| {
            let mut request = OffsetCommitRequest::default();
            request.group_id = StrBytes::from_string(self.inner.group.clone()).into();
            request.generation_id_or_member_epoch = generation;
            request.member_id = StrBytes::from_string(member_id.to_owned());
            request.group_instance_id =
                self.inner.instance_id_for(version, COMMIT_INSTANCE_ID_VERSION);
            request.retention_time_ms = -1;
            request.topics = by_topic
                .iter()
                .map(|(topic, partitions)| {
                    let mut t = OffsetCommitRequestTopic::default();
                    t.name = StrBytes::from_string((*topic).to_owned()).into();
                    t.partitions = partitions
                        .iter()
                        .map(|&(partition, offset)| {
                            let mut p = OffsetCommitRequestPartition::default();
                            p.partition_index = partition;
                            p.committed_offset = offset;
                            p.committed_leader_epoch = -1;
                            p.committed_metadata = Some(StrBytes::from_static_str(""));
                            p
                        })
                        .collect();
                    t
                })
                .collect();
            request
        };
        let timeout = self.inner.config.request_timeout;
        let (response, version) = link.request(build, timeout).await?;
        let context = format!(
            "OffsetCommit v{version} of {} (generation {generation}, member `{member_id}`)",
            describe(offsets)
        );
        let mut answered = 0usize;
        for topic in &response.topics {
            for p in &topic.partitions {
                answered += 1;
                if p.error_code != 0 {
                    let what =
                        format!("{context}: `{}-{}`", topic.name.0.as_str(), p.partition_index);
                    return Err(Failure::from_code(p.error_code, &what));
                }
            }
        }
        if answered < offsets.len() {
            return Err(Failure::Retry(format!(
                "{context}: the answer covers {answered} of {} partitions",
                offsets.len()
            )));
        }
        Ok(())
    }
}

/// `topic-partition@offset, …` for errors.
fn describe(offsets: &[(TopicPartition, i64)]) -> String {
    let shown: Vec<String> = offsets.iter().take(8).map(|(tp, o)| format!("{tp}@{o}")).collect();
    let more = offsets.len().saturating_sub(shown.len());
    if more > 0 { format!("{} and {more} more", shown.join(", ")) } else { shown.join(", ") }
}

/// `topic-partition, …` for errors.
fn list(partitions: &[TopicPartition]) -> String {
    let shown: Vec<String> = partitions.iter().take(8).map(ToString::to_string).collect();
    let more = partitions.len().saturating_sub(shown.len());
    if more > 0 { format!("{} and {more} more", shown.join(", ")) } else { shown.join(", ") }
}
