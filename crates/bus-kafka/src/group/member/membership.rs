//! A member's membership task (`coordinator`): the state machine that joins the group, syncs,
//! holds the assignment, revokes it, rejoins, and finally leaves.
//!
//! Owns: [`Membership`] (the task's coordinator link, its event sender and the partitions it
//! last delivered), the leader's assignment (`assign`, with the crate's `assignor` and
//! `codec`) and the join, sync and leave requests.
//!
//! The cycle, as the member's `Phase`:
//! - `Joining`: JoinGroup (with the member-id-required round trip), the leader's assignment,
//!   SyncGroup; a failed step is retried from JoinGroup after the member's `RETRY_BACKOFF`;
//! - `Stable`: the assignment is delivered and held until a rejoin is requested;
//! - `Revoking`: the assignment is revoked; the task waits until the runtime has released it,
//!   then joins again;
//! - `Stopped`: after a fatal error or cancellation, once the task has tried to leave.
//!
//! Invariants:
//! - Only this task writes the membership's phase, member id and generation; the other parts
//!   request rejoins through the shared state.
//! - Eager rebalance: before rejoining, every partition of the last assignment is revoked with a
//!   [`MemberEvent::Revoked`], and the member does not rejoin until that [`Revocation`] is
//!   complete (heartbeats continue meanwhile, so the session stays alive while the runtime drains
//!   and commits). A [`MemberEvent::Assigned`] is emitted only after a successful SyncGroup, and
//!   lists only partitions of the member's own topics.
//! - The task sends a LeaveGroup (bounded by [`LEAVE_TIMEOUT`]) on its way out whenever it still
//!   has a member id, so a dropped member leaves its group too; it cancels the member's token
//!   first, which ends the heartbeats.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use bus_core::TopicPartition;
use bus_core::backend::{GroupError, MemberEvent, Revocation};
use bus_supervisor::CancellationToken;
use bytes::Bytes;
use kafka_protocol::messages::join_group_request::JoinGroupRequestProtocol;
use kafka_protocol::messages::leave_group_request::MemberIdentity;
use kafka_protocol::messages::sync_group_request::SyncGroupRequestAssignment;
use kafka_protocol::messages::{
    JoinGroupRequest, JoinGroupResponse, LeaveGroupRequest, SyncGroupRequest,
};
use kafka_protocol::protocol::StrBytes;
use tokio::sync::{mpsc, watch};

use super::{Inner, Phase, RETRY_BACKOFF, Rejoin, State};
use crate::group::assignor::{self, Member};
use crate::group::codec;
use crate::group::coordinator::{Failure, Link, MEMBER_ID_REQUIRED, UNKNOWN_MEMBER_ID};

/// The protocol type of consumer groups.
const PROTOCOL_TYPE: &str = "consumer";
/// The longest a LeaveGroup may take on the way out.
const LEAVE_TIMEOUT: Duration = Duration::from_secs(5);
/// Extra time given to a JoinGroup beyond the rebalance timeout (as the Java client does).
const JOIN_TIMEOUT_LAPSE: Duration = Duration::from_secs(5);

/// What a successful JoinGroup told the member.
struct Joined {
    generation: i32,
    member_id: String,
    leader: String,
    protocol: String,
    members: Vec<(String, Option<String>, Bytes)>,
}

/// The membership task's state.
pub(super) struct Membership {
    inner: Arc<Inner>,
    link: Link,
    events: mpsc::UnboundedSender<MemberEvent>,
    /// The partitions of the last assignment delivered.
    owned: Vec<TopicPartition>,
}

impl Membership {
    /// The membership task of the member sharing `inner`, on `link`, sending its events to
    /// `events`.
    pub(super) fn new(
        inner: Arc<Inner>,
        link: Link,
        events: mpsc::UnboundedSender<MemberEvent>,
    ) -> Self {
        Membership { inner, link, events, owned: Vec::new() }
    }

    /// Runs the membership until `token` is cancelled or a fatal error, then leaves the group
    /// and reports how leaving went on `left`.
    pub(super) async fn run(
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
        // Failed joins since the last successful one.
        let mut failures = 0u32;
        loop {
            self.update(|s| {
                s.phase = Phase::Joining;
                s.rejoin = None;
            });
            match self.join_and_sync().await {
                Ok((joined, assigned)) => {
                    failures = 0;
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
                    let delay = RETRY_BACKOFF.delay(failures);
                    failures = failures.saturating_add(1);
                    tokio::time::sleep(delay).await;
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
