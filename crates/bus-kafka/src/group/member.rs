//! One member of a Kafka consumer group (classic protocol, `consumer` protocol type, eager
//! rebalance) and the two tasks that keep it in its group.
//!
//! Owns: [`KafkaMember`] (the [`GroupMember`] the consumer runtime holds), the membership task
//! (`coordinator`: join, sync, revoke, rejoin, leave) and the heartbeat task (`heartbeat`), both
//! spawned in the join request's scope.
//!
//! Invariants:
//! - The membership state (phase, member id, generation, a pending rejoin) lives in one `watch`
//!   channel written by the membership task; the heartbeat task and offset commits only *request*
//!   a rejoin, and only for the generation they saw (a late answer about an old generation is
//!   ignored).
//! - Heartbeats are sent while the member is `Stable` or `Revoking`, from their own task and
//!   their own connection, so neither a slow handler nor a long JoinGroup delays them.
//! - Eager rebalance: before rejoining, every partition of the last assignment is revoked with a
//!   [`MemberEvent::Revoked`], and the member does not rejoin until that [`Revocation`] is
//!   complete (heartbeats continue meanwhile, so the session stays alive while the runtime drains
//!   and commits). A [`MemberEvent::Assigned`] is emitted only after a successful SyncGroup, and
//!   lists only partitions of the member's own topics.
//! - Events go through a channel read by `next_event`; receiving is cancel-safe.
//! - The member's tasks end when it leaves, when it is dropped, when the scope is cancelled, or
//!   on a fatal error; the membership task sends a LeaveGroup (bounded) on its way out whenever
//!   it still has a member id, so a dropped member leaves its group too.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use bus_core::TopicPartition;
use bus_core::backend::{
    BoxFuture, GroupError, GroupMember, JoinRequest, MemberEvent, PartitionReader, Revocation,
    StartAt,
};
use bus_supervisor::CancellationToken;
use bytes::Bytes;
use kafka_protocol::messages::join_group_request::JoinGroupRequestProtocol;
use kafka_protocol::messages::leave_group_request::MemberIdentity;
use kafka_protocol::messages::offset_commit_request::{
    OffsetCommitRequestPartition, OffsetCommitRequestTopic,
};
use kafka_protocol::messages::offset_fetch_request::{
    OffsetFetchRequestGroup, OffsetFetchRequestTopic, OffsetFetchRequestTopics,
};
use kafka_protocol::messages::sync_group_request::SyncGroupRequestAssignment;
use kafka_protocol::messages::{
    HeartbeatRequest, JoinGroupRequest, JoinGroupResponse, LeaveGroupRequest, OffsetCommitRequest,
    OffsetFetchRequest, SyncGroupRequest,
};
use kafka_protocol::protocol::StrBytes;
use tokio::sync::{mpsc, watch};

use super::assignor::{self, Member};
use super::codec;
use super::coordinator::{Failure, Link, Locator, MEMBER_ID_REQUIRED, UNKNOWN_MEMBER_ID};
use super::reader::KafkaReader;
use crate::client::KafkaClient;
use crate::config::KafkaConfig;

/// The protocol type of consumer groups.
const PROTOCOL_TYPE: &str = "consumer";
/// The longest a LeaveGroup may take on the way out.
const LEAVE_TIMEOUT: Duration = Duration::from_secs(5);
/// Attempts of an offset commit or fetch across coordinator moves.
const OFFSET_ATTEMPTS: u32 = 3;
/// First and largest delays between retries of a failed membership step.
const BACKOFF_MIN: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(2);
/// Extra time given to a JoinGroup beyond the rebalance timeout (as the Java client does).
const JOIN_TIMEOUT_LAPSE: Duration = Duration::from_secs(5);

/// Where the member is in its membership cycle.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Joining or syncing: no generation to heartbeat or commit in.
    Joining,
    /// Holding an assignment.
    Stable,
    /// Waiting for the runtime to release the assignment before rejoining.
    Revoking,
    /// The membership task has ended.
    Stopped,
}

/// Why the member must rejoin, most severe last.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Rejoin {
    /// The group is rebalancing: rejoin with the same member id.
    Rebalance,
    /// The member is not known in its generation: rejoin with a new member id.
    Reset,
    /// The member cannot continue.
    Fatal(String),
}

impl Rejoin {
    fn rank(&self) -> u8 {
        match self {
            Rejoin::Rebalance => 0,
            Rejoin::Reset => 1,
            Rejoin::Fatal(_) => 2,
        }
    }
}

/// The membership state shared through the `watch` channel.
#[derive(Debug, Clone)]
struct State {
    phase: Phase,
    member_id: String,
    generation: i32,
    rejoin: Option<Rejoin>,
    /// Why the member stopped, when it stopped on a fatal error.
    fatal: Option<String>,
}

/// What a member's parts share.
#[derive(Debug)]
struct Inner {
    group: String,
    topics: BTreeSet<String>,
    client: Arc<KafkaClient>,
    config: Arc<KafkaConfig>,
    rebalance_timeout: Duration,
    state: watch::Sender<State>,
}

impl Inner {
    /// Requests a rejoin for the generation `(generation, member_id)` if it is still current.
    fn request_rejoin(&self, generation: i32, member_id: &str, rejoin: Rejoin) {
        self.state.send_if_modified(|s| {
            let current = s.generation == generation
                && s.member_id == member_id
                && matches!(s.phase, Phase::Stable | Phase::Revoking);
            let stronger = s.rejoin.as_ref().is_none_or(|r| rejoin.rank() > r.rank());
            if current && stronger {
                s.rejoin = Some(rejoin);
                true
            } else {
                false
            }
        });
    }

    fn error(&self, failure: &Failure) -> GroupError {
        match failure {
            Failure::Fatal(reason) => GroupError::fatal(&self.group, reason.clone()),
            other => GroupError::retriable(&self.group, other.reason().to_owned()),
        }
    }
}

/// Starts a member of `request.group`: its membership and heartbeat tasks in `request.scope`.
pub(crate) fn start(
    client: Arc<KafkaClient>,
    request: JoinRequest,
) -> Result<KafkaMember, bus_supervisor::SpawnError> {
    let JoinRequest { group, topics, scope, rebalance_timeout } = request;
    let config = Arc::clone(client.config());
    let locator = Arc::new(Locator::new(
        group.clone(),
        config.bootstrap.clone(),
        config.client_id.clone(),
        config.request_timeout,
    ));
    let (state, _) = watch::channel(State {
        phase: Phase::Joining,
        member_id: String::new(),
        generation: -1,
        rejoin: None,
        fatal: None,
    });
    let inner = Arc::new(Inner {
        group,
        topics: topics.into_iter().collect(),
        client,
        config,
        rebalance_timeout,
        state,
    });
    let token = scope.token().child_token();
    let (events_tx, events_rx) = mpsc::unbounded_channel();
    let (left_tx, left_rx) = watch::channel(None);
    let membership = Membership {
        inner: Arc::clone(&inner),
        link: Link::new(Arc::clone(&locator)),
        events: events_tx,
        owned: Vec::new(),
    };
    let heartbeat = Heartbeat { inner: Arc::clone(&inner), link: Link::new(Arc::clone(&locator)) };
    scope.spawn("coordinator", membership.run(token.clone(), left_tx))?.detach();
    if let Err(error) = scope.spawn("heartbeat", heartbeat.run(token.clone())) {
        token.cancel();
        return Err(error);
    }
    Ok(KafkaMember {
        inner,
        events: tokio::sync::Mutex::new(events_rx),
        offsets: tokio::sync::Mutex::new(Link::new(locator)),
        token,
        left: left_rx,
    })
}

/// A member of a Kafka consumer group (see the module documentation). Dropping it leaves the
/// group (best effort) and ends its tasks.
#[derive(Debug)]
pub(crate) struct KafkaMember {
    inner: Arc<Inner>,
    events: tokio::sync::Mutex<mpsc::UnboundedReceiver<MemberEvent>>,
    /// The connection for OffsetCommit and OffsetFetch.
    offsets: tokio::sync::Mutex<Link>,
    token: CancellationToken,
    left: watch::Receiver<Option<Result<(), GroupError>>>,
}

impl Drop for KafkaMember {
    fn drop(&mut self) {
        self.token.cancel();
    }
}

impl GroupMember for KafkaMember {
    fn member_id(&self) -> String {
        self.inner.state.borrow().member_id.clone()
    }

    fn next_event(&self) -> BoxFuture<'_, Result<MemberEvent, GroupError>> {
        Box::pin(async move {
            let mut events = self.events.lock().await;
            match events.recv().await {
                Some(event) => Ok(event),
                None => {
                    let state = self.inner.state.borrow();
                    let reason = state.fatal.clone().unwrap_or_else(|| {
                        format!("member `{}` has left the group", state.member_id)
                    });
                    Err(GroupError::fatal(&self.inner.group, reason))
                }
            }
        })
    }

    fn committed<'a>(
        &'a self,
        partitions: &'a [TopicPartition],
    ) -> BoxFuture<'a, Result<Vec<Option<i64>>, GroupError>> {
        Box::pin(async move {
            if partitions.is_empty() {
                return Ok(Vec::new());
            }
            let mut link = self.offsets.lock().await;
            let mut failure = Failure::Retry("no attempt made".into());
            for attempt in 0..OFFSET_ATTEMPTS {
                if attempt > 0 {
                    tokio::time::sleep(backoff(attempt)).await;
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
        })
    }

    fn commit<'a>(
        &'a self,
        offsets: &'a [(TopicPartition, i64)],
    ) -> BoxFuture<'a, Result<(), GroupError>> {
        Box::pin(async move {
            if offsets.is_empty() {
                return Ok(());
            }
            let (phase, generation, member_id) = {
                let s = self.inner.state.borrow();
                (s.phase, s.generation, s.member_id.clone())
            };
            if !matches!(phase, Phase::Stable | Phase::Revoking) || generation < 0 {
                return Err(GroupError::retriable(
                    &self.inner.group,
                    format!(
                        "cannot commit {}: member `{member_id}` holds no generation (phase {phase:?})",
                        describe(offsets)
                    ),
                ));
            }
            let mut link = self.offsets.lock().await;
            let mut failure = Failure::Retry("no attempt made".into());
            for attempt in 0..OFFSET_ATTEMPTS {
                if attempt > 0 {
                    tokio::time::sleep(backoff(attempt)).await;
                }
                match self.commit_offsets(&mut link, offsets, generation, &member_id).await {
                    Ok(()) => return Ok(()),
                    Err(f @ (Failure::Retry(_) | Failure::Coordinator(_))) => {
                        if matches!(f, Failure::Coordinator(_)) {
                            link.coordinator_moved();
                        }
                        failure = f;
                    }
                    Err(f) => {
                        match &f {
                            Failure::Rebalance(_) => {
                                self.inner.request_rejoin(
                                    generation,
                                    &member_id,
                                    Rejoin::Rebalance,
                                );
                            }
                            Failure::Reset(_) => {
                                self.inner.request_rejoin(generation, &member_id, Rejoin::Reset);
                            }
                            _ => {}
                        }
                        return Err(self.inner.error(&f));
                    }
                }
            }
            Err(self.inner.error(&failure))
        })
    }

    fn open<'a>(
        &'a self,
        partition: &'a TopicPartition,
        start: StartAt,
    ) -> BoxFuture<'a, Result<Box<dyn PartitionReader>, GroupError>> {
        Box::pin(async move {
            let reader = KafkaReader::new(
                Arc::clone(&self.inner.client),
                self.inner.group.clone(),
                partition.clone(),
                start,
            );
            Ok(Box::new(reader) as Box<dyn PartitionReader>)
        })
    }

    fn leave(&self) -> BoxFuture<'_, Result<(), GroupError>> {
        Box::pin(async move {
            self.token.cancel();
            let mut left = self.left.clone();
            let result = match left.wait_for(Option::is_some).await {
                Ok(result) => result.clone(),
                // The membership task ended without a word: it was aborted.
                Err(_) => None,
            };
            result.unwrap_or_else(|| {
                Err(GroupError::retriable(
                    &self.inner.group,
                    "the membership task was stopped before it could leave the group",
                ))
            })
        })
    }
}

impl KafkaMember {
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
        let build = |_version: i16| {
            let mut request = OffsetCommitRequest::default();
            request.group_id = StrBytes::from_string(self.inner.group.clone()).into();
            request.generation_id_or_member_epoch = generation;
            request.member_id = StrBytes::from_string(member_id.to_owned());
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

/// The delay before retry `attempt` (1-based), doubling from [`BACKOFF_MIN`] up to
/// [`BACKOFF_MAX`].
fn backoff(attempt: u32) -> Duration {
    let factor = 1u32.checked_shl(attempt.saturating_sub(1).min(16)).unwrap_or(u32::MAX);
    BACKOFF_MIN.saturating_mul(factor).min(BACKOFF_MAX)
}

/// What a successful JoinGroup told the member.
struct Joined {
    generation: i32,
    member_id: String,
    leader: String,
    protocol: String,
    members: Vec<(String, Option<String>, Bytes)>,
}

/// The membership task's state.
struct Membership {
    inner: Arc<Inner>,
    link: Link,
    events: mpsc::UnboundedSender<MemberEvent>,
    /// The partitions of the last assignment delivered.
    owned: Vec<TopicPartition>,
}

impl Membership {
    async fn run(
        mut self,
        token: CancellationToken,
        left: watch::Sender<Option<Result<(), GroupError>>>,
    ) {
        let fatal = tokio::select! {
            biased;
            () = token.cancelled() => None,
            reason = self.membership() => Some(reason),
        };
        if let Some(reason) = &fatal {
            tracing::error!(group = %self.inner.group, %reason, "group member stopped");
        }
        // Stop the heartbeats; nothing is delivered any more.
        token.cancel();
        let result = self.leave_group().await;
        self.inner.state.send_modify(|s| {
            s.phase = Phase::Stopped;
            s.fatal = fatal.clone();
        });
        let _ = left.send(Some(result));
    }

    fn update(&self, f: impl FnOnce(&mut State)) {
        self.inner.state.send_modify(f);
    }

    fn member_id(&self) -> String {
        self.inner.state.borrow().member_id.clone()
    }

    /// Joins, syncs, holds, revokes and rejoins until a fatal error (returned).
    async fn membership(&mut self) -> String {
        let mut attempt = 0u32;
        loop {
            self.update(|s| {
                s.phase = Phase::Joining;
                s.rejoin = None;
            });
            match self.join_and_sync().await {
                Ok((joined, assigned)) => {
                    attempt = 0;
                    tracing::info!(
                        group = %self.inner.group, member = %joined.member_id,
                        generation = joined.generation, protocol = %joined.protocol,
                        leader = joined.leader == joined.member_id,
                        partitions = ?assigned, "joined the group"
                    );
                    self.update(|s| {
                        s.phase = Phase::Stable;
                        s.generation = joined.generation;
                        s.member_id = joined.member_id.clone();
                    });
                    self.owned = assigned.clone();
                    if self.events.send(MemberEvent::Assigned(assigned)).is_err() {
                        return "the member's handle is gone".into();
                    }
                }
                Err(failure) => {
                    if let Some(reason) = self.handle(failure) {
                        return reason;
                    }
                    attempt += 1;
                    tokio::time::sleep(backoff(attempt)).await;
                    continue;
                }
            }
            // Stable until someone asks for a rejoin.
            let mut state = self.inner.state.subscribe();
            let rejoin = match state.wait_for(|s| s.rejoin.is_some()).await {
                Ok(s) => s.rejoin.clone(),
                Err(_) => return "the membership state is gone".into(),
            };
            tracing::info!(group = %self.inner.group, ?rejoin, "leaving the generation to rejoin");
            self.revoke().await;
            let rejoin = self.inner.state.borrow().rejoin.clone().or(rejoin);
            match rejoin {
                Some(Rejoin::Fatal(reason)) => return reason,
                Some(Rejoin::Reset) => self.reset(),
                _ => {}
            }
        }
    }

    /// Revokes the last assignment and waits until the runtime released it.
    async fn revoke(&mut self) {
        self.update(|s| s.phase = Phase::Revoking);
        let owned = std::mem::take(&mut self.owned);
        if owned.is_empty() {
            return;
        }
        let (revocation, done) = Revocation::new(owned);
        if self.events.send(MemberEvent::Revoked(revocation)).is_err() {
            return;
        }
        // Completed, or dropped (which completes it as well).
        let _ = done.await;
    }

    /// Forgets member id and generation.
    fn reset(&self) {
        self.update(|s| {
            s.member_id.clear();
            s.generation = -1;
        });
    }

    /// Applies `failure` to the state; the fatal reason when the member must stop.
    fn handle(&mut self, failure: Failure) -> Option<String> {
        match failure {
            Failure::Fatal(reason) => return Some(reason),
            Failure::Coordinator(reason) => {
                tracing::info!(group = %self.inner.group, %reason, "finding the coordinator again");
                self.link.coordinator_moved();
            }
            Failure::Reset(reason) => {
                tracing::info!(group = %self.inner.group, %reason, "rejoining with a new member id");
                self.reset();
            }
            Failure::Rebalance(reason) | Failure::Retry(reason) => {
                tracing::debug!(group = %self.inner.group, %reason, "retrying the join");
            }
        }
        None
    }

    /// JoinGroup (with the member-id-required round trip), the leader's assignment, SyncGroup.
    async fn join_and_sync(&mut self) -> Result<(Joined, Vec<TopicPartition>), Failure> {
        let joined = self.join_group().await?;
        // From here the generation and member id are ours (commits still wait for Stable).
        self.update(|s| {
            s.member_id = joined.member_id.clone();
            s.generation = joined.generation;
        });
        let assignments = if joined.leader == joined.member_id {
            self.assign(&joined).await?
        } else {
            Vec::new()
        };
        let assignment = self.sync_group(&joined, assignments).await?;
        let decoded = codec::decode_assignment(&assignment).map_err(|e| {
            Failure::Retry(format!(
                "group `{}`: generation {}: cannot read our assignment: {e}",
                self.inner.group, joined.generation
            ))
        })?;
        let mut partitions = Vec::new();
        for (topic, numbers) in decoded {
            if !self.inner.topics.contains(&topic) {
                tracing::warn!(
                    group = %self.inner.group, %topic, partitions = ?numbers,
                    "assigned partitions of a topic this member does not subscribe to; ignoring them"
                );
                continue;
            }
            let topic: Arc<str> = Arc::from(topic.as_str());
            partitions
                .extend(numbers.into_iter().map(|p| TopicPartition::new(Arc::clone(&topic), p)));
        }
        partitions.sort();
        Ok((joined, partitions))
    }

    async fn join_group(&mut self) -> Result<Joined, Failure> {
        let consumer = &self.inner.config.consumer;
        let topics: Vec<String> = self.inner.topics.iter().cloned().collect();
        let metadata = codec::encode_subscription(&topics).map_err(Failure::Fatal)?;
        let session_ms = millis(consumer.session_timeout);
        let rebalance_ms = millis(self.inner.rebalance_timeout);
        let timeout = self
            .inner
            .config
            .request_timeout
            .max(self.inner.rebalance_timeout + JOIN_TIMEOUT_LAPSE);
        // At most one member-id-required round trip (KIP-394), plus one spare.
        for _ in 0..3 {
            let member_id = self.member_id();
            let build = |_version: i16| {
                let mut request = JoinGroupRequest::default();
                request.group_id = StrBytes::from_string(self.inner.group.clone()).into();
                request.session_timeout_ms = session_ms;
                request.rebalance_timeout_ms = rebalance_ms;
                request.member_id = StrBytes::from_string(member_id.clone());
                request.protocol_type = StrBytes::from_static_str(PROTOCOL_TYPE);
                request.protocols = consumer
                    .assignors
                    .iter()
                    .map(|name| {
                        let mut protocol = JoinGroupRequestProtocol::default();
                        protocol.name = StrBytes::from_string(name.clone());
                        protocol.metadata = metadata.clone();
                        protocol
                    })
                    .collect();
                request.reason = Some(StrBytes::from_static_str("joining"));
                request
            };
            let (response, version) = self.link.request(build, timeout).await?;
            if response.error_code == MEMBER_ID_REQUIRED {
                let assigned = response.member_id.as_str().to_owned();
                tracing::debug!(group = %self.inner.group, member = %assigned, "member id assigned; joining with it");
                self.update(|s| s.member_id = assigned);
                continue;
            }
            if response.error_code != 0 {
                let context = format!(
                    "group `{}`: JoinGroup v{version} as member `{member_id}`",
                    self.inner.group
                );
                if response.error_code == UNKNOWN_MEMBER_ID && member_id.is_empty() {
                    return Err(Failure::Retry(format!("{context}: UnknownMemberId (25)")));
                }
                return Err(Failure::from_code(response.error_code, &context));
            }
            return Ok(joined(response));
        }
        Err(Failure::Retry(format!(
            "group `{}`: JoinGroup kept asking for a member id",
            self.inner.group
        )))
    }

    /// The leader's assignment: the members' subscriptions, fresh partition counts, the
    /// assignor the group chose.
    async fn assign(&self, joined: &Joined) -> Result<Vec<(String, Bytes)>, Failure> {
        let group = &self.inner.group;
        let mut members = Vec::new();
        let mut versions = BTreeMap::new();
        for (id, instance_id, metadata) in &joined.members {
            match codec::decode_subscription(metadata) {
                Ok(subscription) => {
                    versions.insert(id.clone(), subscription.version);
                    members.push(Member {
                        id: id.clone(),
                        instance_id: instance_id.clone(),
                        topics: subscription.topics.into_iter().collect(),
                    });
                }
                Err(e) => {
                    tracing::error!(group = %group, member = %id, error = %e, "cannot read a member's subscription; it gets nothing");
                    members.push(Member {
                        id: id.clone(),
                        instance_id: instance_id.clone(),
                        topics: BTreeSet::new(),
                    });
                }
            }
        }
        let topics: BTreeSet<&String> = members.iter().flat_map(|m| m.topics.iter()).collect();
        let mut counts = BTreeMap::new();
        for topic in topics {
            match self.inner.client.lookup(topic).await {
                Ok(Some(count)) => {
                    counts.insert(topic.clone(), count);
                }
                Ok(None) => {
                    tracing::warn!(group = %group, %topic, "a subscribed topic does not exist; skipping it");
                }
                Err(e) => {
                    return Err(Failure::Retry(format!(
                        "group `{group}`: cannot read the partition count of `{topic}` to assign: {e}"
                    )));
                }
            }
        }
        let assignment = assignor::assign(&joined.protocol, &members, &counts).map_err(|e| {
            Failure::Fatal(format!(
                "group `{group}`: the group chose protocol `{}`: {e}",
                joined.protocol
            ))
        })?;
        tracing::debug!(group = %group, generation = joined.generation, ?assignment, "assignment computed");
        let mut result = Vec::with_capacity(assignment.len());
        for (member, topics) in &assignment {
            let version = versions.get(member).copied().unwrap_or(0);
            let bytes = codec::encode_assignment(topics, version).map_err(Failure::Fatal)?;
            result.push((member.clone(), bytes));
        }
        Ok(result)
    }

    async fn sync_group(
        &mut self,
        joined: &Joined,
        assignments: Vec<(String, Bytes)>,
    ) -> Result<Bytes, Failure> {
        let timeout = self
            .inner
            .config
            .request_timeout
            .max(self.inner.rebalance_timeout + JOIN_TIMEOUT_LAPSE);
        let build = |_version: i16| {
            let mut request = SyncGroupRequest::default();
            request.group_id = StrBytes::from_string(self.inner.group.clone()).into();
            request.generation_id = joined.generation;
            request.member_id = StrBytes::from_string(joined.member_id.clone());
            request.protocol_type = Some(StrBytes::from_static_str(PROTOCOL_TYPE));
            request.protocol_name = Some(StrBytes::from_string(joined.protocol.clone()));
            request.assignments = assignments
                .into_iter()
                .map(|(member, bytes)| {
                    let mut a = SyncGroupRequestAssignment::default();
                    a.member_id = StrBytes::from_string(member);
                    a.assignment = bytes;
                    a
                })
                .collect();
            request
        };
        let (response, version) = self.link.request(build, timeout).await?;
        if response.error_code != 0 {
            let context = format!(
                "group `{}`: SyncGroup v{version} in generation {} as member `{}`",
                self.inner.group, joined.generation, joined.member_id
            );
            return Err(Failure::from_code(response.error_code, &context));
        }
        Ok(response.assignment)
    }

    /// LeaveGroup for the current member id, if any (bounded by [`LEAVE_TIMEOUT`]).
    async fn leave_group(&mut self) -> Result<(), GroupError> {
        let member_id = self.member_id();
        if member_id.is_empty() {
            return Ok(());
        }
        let group = self.inner.group.clone();
        let timeout = self.inner.config.request_timeout.min(LEAVE_TIMEOUT);
        let attempt = async {
            let mut last = Failure::Retry("no attempt made".into());
            for attempt in 0..2 {
                if attempt > 0 {
                    self.link.coordinator_moved();
                }
                let build = |version: i16| {
                    let mut request = LeaveGroupRequest::default();
                    request.group_id = StrBytes::from_string(group.clone()).into();
                    if version >= 3 {
                        let mut member = MemberIdentity::default();
                        member.member_id = StrBytes::from_string(member_id.clone());
                        member.reason = Some(StrBytes::from_static_str("the consumer is leaving"));
                        request.members = vec![member];
                    } else {
                        request.member_id = StrBytes::from_string(member_id.clone());
                    }
                    request
                };
                let (response, version) = match self.link.request(build, timeout).await {
                    Ok(answer) => answer,
                    Err(f) => {
                        last = f;
                        continue;
                    }
                };
                let context =
                    format!("group `{group}`: LeaveGroup v{version} as member `{member_id}`");
                let code = if response.error_code != 0 {
                    response.error_code
                } else {
                    response.members.iter().map(|m| m.error_code).find(|c| *c != 0).unwrap_or(0)
                };
                match code {
                    // Gone already (expelled, or the group moved on): that is what we wanted.
                    0 | UNKNOWN_MEMBER_ID => return Ok(()),
                    _ => last = Failure::from_code(code, &context),
                }
                if !matches!(last, Failure::Coordinator(_)) {
                    break;
                }
            }
            Err(last)
        };
        let result = match tokio::time::timeout(timeout, attempt).await {
            Ok(result) => result,
            Err(_) => Err(Failure::Retry(format!(
                "group `{group}`: LeaveGroup as member `{member_id}` got no answer within {timeout:?}"
            ))),
        };
        match result {
            Ok(()) => {
                tracing::info!(group = %group, member = %member_id, "left the group");
                self.reset();
                Ok(())
            }
            Err(f) => {
                tracing::warn!(group = %group, member = %member_id, reason = %f.reason(), "leaving the group failed");
                Err(self.inner.error(&f))
            }
        }
    }
}

/// A JoinGroup answer's fields.
fn joined(response: JoinGroupResponse) -> Joined {
    Joined {
        generation: response.generation_id,
        member_id: response.member_id.as_str().to_owned(),
        leader: response.leader.as_str().to_owned(),
        protocol: response.protocol_name.map(|p| p.as_str().to_owned()).unwrap_or_default(),
        members: response
            .members
            .into_iter()
            .map(|m| {
                (
                    m.member_id.as_str().to_owned(),
                    m.group_instance_id.map(|i| i.as_str().to_owned()),
                    m.metadata,
                )
            })
            .collect(),
    }
}

/// A duration in whole milliseconds for the wire.
fn millis(duration: Duration) -> i32 {
    i32::try_from(duration.as_millis()).unwrap_or(i32::MAX)
}

/// The heartbeat task's state.
struct Heartbeat {
    inner: Arc<Inner>,
    link: Link,
}

impl Heartbeat {
    async fn run(mut self, token: CancellationToken) {
        tokio::select! {
            biased;
            () = token.cancelled() => {}
            () = self.beat() => {}
        }
    }

    async fn beat(&mut self) {
        let consumer = &self.inner.config.consumer;
        let interval = consumer.heartbeat_interval;
        let session = consumer.session_timeout;
        let timeout = self.inner.config.request_timeout.min(session);
        let mut state = self.inner.state.subscribe();
        let mut delay = interval;
        // The generation heartbeated and when the coordinator last acknowledged it.
        let mut current: Option<(i32, String)> = None;
        let mut last_ok = tokio::time::Instant::now();
        loop {
            let (generation, member_id) = match state
                .wait_for(|s| matches!(s.phase, Phase::Stable | Phase::Revoking))
                .await
            {
                Ok(s) => (s.generation, s.member_id.clone()),
                Err(_) => return,
            };
            if current.as_ref().is_none_or(|(g, m)| *g != generation || *m != member_id) {
                current = Some((generation, member_id.clone()));
                last_ok = tokio::time::Instant::now();
            }
            tokio::time::sleep(delay).await;
            delay = interval;
            {
                let s = state.borrow();
                let same = s.generation == generation && s.member_id == member_id;
                if !same || !matches!(s.phase, Phase::Stable | Phase::Revoking) {
                    continue;
                }
            }
            let group = self.inner.group.clone();
            let build = |_version: i16| {
                let mut request = HeartbeatRequest::default();
                request.group_id = StrBytes::from_string(group.clone()).into();
                request.generation_id = generation;
                request.member_id = StrBytes::from_string(member_id.clone());
                request
            };
            let failure = match self.link.request(build, timeout).await {
                Ok((response, _)) if response.error_code == 0 => {
                    last_ok = tokio::time::Instant::now();
                    continue;
                }
                Ok((response, version)) => Failure::from_code(
                    response.error_code,
                    &format!(
                        "group `{group}`: Heartbeat v{version} in generation {generation} as member `{member_id}`"
                    ),
                ),
                Err(f) => f,
            };
            match failure {
                Failure::Rebalance(reason) => {
                    // The coordinator still counts the member (its session was refreshed).
                    last_ok = tokio::time::Instant::now();
                    tracing::debug!(group = %group, %reason, "the group is rebalancing");
                    self.inner.request_rejoin(generation, &member_id, Rejoin::Rebalance);
                }
                Failure::Reset(reason) => {
                    tracing::info!(group = %group, %reason, "the member is no longer in the group");
                    self.inner.request_rejoin(generation, &member_id, Rejoin::Reset);
                }
                Failure::Fatal(reason) => {
                    self.inner.request_rejoin(generation, &member_id, Rejoin::Fatal(reason));
                }
                Failure::Coordinator(reason) | Failure::Retry(reason) => {
                    tracing::info!(group = %group, %reason, "heartbeat failed; retrying");
                    self.link.coordinator_moved();
                    delay = BACKOFF_MIN.max(interval / 4);
                    if last_ok.elapsed() >= session {
                        // The coordinator has expelled us by now: stop working on partitions
                        // that are someone else's, and join again (as librdkafka does).
                        tracing::warn!(
                            group = %group, member = %member_id, generation,
                            "no heartbeat acknowledged within the session timeout ({session:?}); \
                             giving up the assignment and rejoining"
                        );
                        self.inner.request_rejoin(generation, &member_id, Rejoin::Reset);
                    }
                }
            }
        }
    }
}
