//! Consumer groups of the in-memory backend: membership, the eager rebalance, the round-robin
//! assignor, and committed offsets.
//!
//! Owns: [`GroupState`] (a group's members, phase, generation and offsets), the coordinator
//! task of each group with members, and [`MemoryMember`] (a member's handle, the
//! [`GroupMember`] implementation).
//!
//! Invariants (under the backend's state lock):
//! - A partition is in at most one member's `assigned` set. Between a rebalance's start and its
//!   end, members only lose partitions (each completed revocation empties the member's set);
//!   new sets are given all at once when every revocation is complete or its member expelled.
//! - Each member has at most one undelivered event. Events are taken from the state only by the
//!   `next_event` poll that returns them, so dropping that future loses nothing.
//! - At most one coordinator task runs per group; `coordinator` names it, and only it clears it.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::future::{Future, poll_fn};
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::Poll;
use std::time::Duration;

use tokio::sync::{Notify, oneshot};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::reader::MemoryReader;
use super::{Missing, Shared, State};
use crate::backend::{
    GroupError, GroupMember, JoinRequest, MemberEvent, PartitionReader, Revocation,
};
use crate::error::{ConfigError, SubscribeError};
use crate::future::BoxFuture;
use crate::record::TopicPartition;
use crate::start::StartAt;
use crate::topics::Topics;

/// Where a group is in its rebalance cycle.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Assignments are given (delivered or waiting in the members' event slots).
    Stable,
    /// Revocations are out; the group waits for them before assigning.
    Revoking,
}

/// One member as the group sees it.
#[derive(Debug)]
struct MemberState {
    id: String,
    /// What the member subscribed to (named topics or a pattern).
    subscription: Topics,
    /// The topics it reads now: its named topics, or the existing topics its pattern matches.
    topics: BTreeSet<String>,
    rebalance_timeout: Duration,
    /// The partitions the member owns in the current generation (until its revocation
    /// completes).
    assigned: BTreeSet<TopicPartition>,
    /// The event waiting to be taken by `next_event`.
    pending: Option<MemberEvent>,
    /// Whether the member took an assignment: it then takes part in revocations.
    took_assignment: bool,
    /// When the member is expelled if its revocation is still not complete.
    revoke_deadline: Option<Instant>,
}

/// A consumer group.
#[derive(Debug)]
pub(super) struct GroupState {
    /// Distinguishes this group from one of the same name deleted and created again.
    uid: u64,
    generation: i32,
    /// Members by join sequence: the assignor's member order.
    members: BTreeMap<u64, MemberState>,
    /// Why members were removed without leaving (expelled), until their handles are dropped.
    removed: HashMap<u64, String>,
    phase: Phase,
    /// A join or leave happened that the next rebalance must take into account.
    needs_rebalance: bool,
    /// Committed offsets: the next offset to read, per partition.
    pub(super) offsets: BTreeMap<TopicPartition, i64>,
    /// Woken (all waiters) whenever the group's state changes.
    changed: Arc<Notify>,
    /// The run id of the coordinator task, when one runs.
    coordinator: Option<u64>,
    next_member: u64,
}

impl GroupState {
    fn new(uid: u64) -> Self {
        GroupState {
            uid,
            generation: 0,
            members: BTreeMap::new(),
            removed: HashMap::new(),
            phase: Phase::Stable,
            needs_rebalance: false,
            offsets: BTreeMap::new(),
            changed: Arc::new(Notify::new()),
            coordinator: None,
            next_member: 0,
        }
    }

    /// The members' ids, in join order.
    pub(super) fn member_ids(&self) -> Vec<String> {
        self.members.values().map(|m| m.id.clone()).collect()
    }

    /// The number of members.
    pub(super) fn member_count(&self) -> usize {
        self.members.len()
    }

    /// The generation: rebalances completed.
    pub(super) fn generation(&self) -> i32 {
        self.generation
    }

    /// The group's state as Kafka names it: `Empty` without members, `PreparingRebalance`
    /// while a rebalance is due or under way, else `Stable`.
    pub(super) fn state_name(&self) -> &'static str {
        if self.members.is_empty() {
            "Empty"
        } else if self.phase == Phase::Revoking || self.needs_rebalance {
            "PreparingRebalance"
        } else {
            "Stable"
        }
    }

    /// Each member's id and the partitions it holds, in join order.
    pub(super) fn assignments(&self) -> Vec<(String, Vec<TopicPartition>)> {
        self.members
            .values()
            .map(|m| (m.id.clone(), m.assigned.iter().cloned().collect()))
            .collect()
    }

    /// Removes member `seq` (it left); the others rebalance.
    fn remove_member(&mut self, seq: u64) -> bool {
        let removed = self.members.remove(&seq).is_some();
        if removed {
            self.needs_rebalance = true;
            self.changed.notify_waiters();
        }
        removed
    }
}

/// Joins `request.group` (creating it, and auto-creating topics, as needed).
pub(super) fn join(
    shared: &Arc<Shared>,
    request: JoinRequest,
) -> Result<MemoryMember, SubscribeError> {
    // Static membership (`group_instance_id`) is Kafka's: here every member is dynamic.
    let JoinRequest {
        group,
        topics: subscription,
        group_instance_id: _,
        scope: _,
        rebalance_timeout,
        auto_offset_reset: _,
    } = request;
    if group.trim().is_empty() {
        return Err(SubscribeError::InvalidOptions(ConfigError::new(
            "group",
            "a consumer group name is required",
        )));
    }
    if let Err(error) = subscription.validate() {
        return Err(SubscribeError::InvalidOptions(ConfigError::new(
            "topics",
            format!("group `{group}`: {}", error.reason),
        )));
    }
    if rebalance_timeout.is_zero() {
        return Err(SubscribeError::InvalidOptions(ConfigError::new(
            "rebalance_timeout",
            format!("group `{group}`: must be greater than zero"),
        )));
    }

    let mut guard = shared.state.lock();
    let state = &mut *guard;
    if shared.is_closed() {
        return Err(SubscribeError::Closed);
    }
    let topics: BTreeSet<String> = match subscription.as_names() {
        Some(names) => {
            for topic in names {
                shared.ensure_topic(state, topic).map_err(|m| match m {
                    Missing::Unknown => SubscribeError::UnknownTopic { topic: topic.clone() },
                    Missing::Invalid(reason) => SubscribeError::InvalidOptions(ConfigError::new(
                        "topics",
                        format!("group `{group}`: topic `{topic}`: {reason}"),
                    )),
                })?;
            }
            names.iter().cloned().collect()
        }
        // A pattern reads the topics that match now, and those created later (`topic_created`).
        None => subscription.select(state.topics.keys().map(String::as_str)).into_iter().collect(),
    };
    if !state.groups.contains_key(&group) {
        let uid = state.uid();
        state.groups.insert(group.clone(), GroupState::new(uid));
    }
    let run = state.uid();
    let Some(g) = state.groups.get_mut(&group) else {
        return Err(SubscribeError::Group {
            backend: super::NAME,
            group,
            reason: "the group vanished while joining".into(),
        });
    };
    let seq = g.next_member;
    g.next_member += 1;
    let id = format!("{group}-member-{seq}");
    g.members.insert(
        seq,
        MemberState {
            id: id.clone(),
            subscription,
            topics: topics.clone(),
            rebalance_timeout,
            assigned: BTreeSet::new(),
            pending: None,
            took_assignment: false,
            revoke_deadline: None,
        },
    );
    g.needs_rebalance = true;
    g.changed.notify_waiters();
    if g.coordinator.is_none() {
        let task = coordinate(
            Arc::clone(shared),
            group.clone(),
            g.uid,
            run,
            Arc::clone(&g.changed),
            shared.scope.token(),
        );
        match shared.scope.spawn(format!("group-{group}"), task) {
            Ok(handle) => {
                handle.detach();
                g.coordinator = Some(run);
            }
            Err(e) => {
                g.members.remove(&seq);
                return Err(SubscribeError::Spawn(e));
            }
        }
    }
    let changed = Arc::clone(&g.changed);
    // Only now is the group one that "ever joined" for these topics (truncation waits for it).
    for topic in &topics {
        if let Some(t) = state.topics.get_mut(topic) {
            t.groups.insert(group.clone());
        }
    }
    tracing::debug!(group = %group, member = %id, "memory backend: member joined");
    Ok(MemoryMember {
        shared: Arc::clone(shared),
        group,
        seq,
        id,
        changed,
        left: AtomicBool::new(false),
    })
}

/// A topic was created: every member whose pattern matches it reads it from now on, and its
/// group rebalances. Called under the backend's state lock by whatever created the topic.
pub(super) fn topic_created(state: &mut State, topic: &str) {
    let State { topics, groups, .. } = state;
    for (name, g) in groups.iter_mut() {
        let mut gained = false;
        for m in g.members.values_mut() {
            if m.subscription.is_pattern() && m.subscription.matches(topic) {
                gained |= m.topics.insert(topic.to_owned());
            }
        }
        if gained {
            if let Some(t) = topics.get_mut(topic) {
                t.groups.insert(name.clone());
            }
            tracing::debug!(group = %name, topic, "memory backend: a new topic matches a pattern");
            g.needs_rebalance = true;
            g.changed.notify_waiters();
        }
    }
}

/// `topic` gained partitions or was deleted: every group with a member reading it rebalances
/// (a deleted topic leaves the pattern members' topics, and its committed offsets are
/// dropped). Called under the backend's state lock.
pub(super) fn topic_changed(state: &mut State, topic: &str, deleted: bool) {
    for (name, g) in &mut state.groups {
        let mut reads = false;
        for m in g.members.values_mut() {
            if m.topics.contains(topic) {
                reads = true;
                if deleted && m.subscription.is_pattern() {
                    m.topics.remove(topic);
                }
            }
        }
        if deleted {
            g.offsets.retain(|tp, _| &*tp.topic != topic);
        }
        if reads {
            tracing::debug!(group = %name, topic, deleted, "memory backend: a topic changed");
            g.needs_rebalance = true;
            g.changed.notify_waiters();
        }
    }
}

/// What the coordinator does next.
enum Next {
    /// Wait for a change, a completed revocation, or this deadline.
    Wait(Option<Instant>),
    /// The group is empty or gone: stop.
    Exit,
}

/// Clears the group's coordinator mark when the coordinator task ends, however it ends.
struct RunningMark {
    shared: Arc<Shared>,
    group: String,
    uid: u64,
    run: u64,
}

impl Drop for RunningMark {
    fn drop(&mut self) {
        let mut state = self.shared.state.lock();
        if let Some(g) = state.groups.get_mut(&self.group)
            && g.uid == self.uid
            && g.coordinator == Some(self.run)
        {
            g.coordinator = None;
        }
    }
}

/// The coordinator task of a group: starts rebalances, waits for revocations (expelling members
/// past their rebalance timeout), assigns. Ends when the group has no members or the backend's
/// scope is cancelled.
async fn coordinate(
    shared: Arc<Shared>,
    group: String,
    uid: u64,
    run: u64,
    changed: Arc<Notify>,
    token: CancellationToken,
) {
    let mark = RunningMark { shared, group, uid, run };
    let mut waiting: BTreeMap<u64, oneshot::Receiver<()>> = BTreeMap::new();
    let mut done: Vec<u64> = Vec::new();
    loop {
        let notified = changed.notified();
        let next = {
            let mut state = mark.shared.state.lock();
            step(&mut state, &mark.group, uid, run, &mut waiting, &mut done, Instant::now())
        };
        let deadline = match next {
            Next::Exit => return,
            Next::Wait(deadline) => deadline,
        };
        tokio::select! {
            () = token.cancelled() => return,
            () = notified => {}
            () = sleep_until(deadline) => {}
            completed = revocations(&mut waiting) => done.extend(completed),
        }
    }
}

/// Sleeps until `deadline`, or forever without one.
async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline).await,
        None => std::future::pending().await,
    }
}

/// Completes with the members whose revocation completed (removing their receivers).
fn revocations(
    waiting: &mut BTreeMap<u64, oneshot::Receiver<()>>,
) -> impl Future<Output = Vec<u64>> + '_ {
    poll_fn(move |cx| {
        let ready: Vec<u64> = waiting
            .iter_mut()
            .filter_map(|(&seq, rx)| Pin::new(rx).poll(cx).is_ready().then_some(seq))
            .collect();
        if ready.is_empty() {
            return Poll::Pending;
        }
        for seq in &ready {
            waiting.remove(seq);
        }
        Poll::Ready(ready)
    })
}

/// One step of the coordinator's state machine, under the lock.
fn step(
    state: &mut State,
    group: &str,
    uid: u64,
    run: u64,
    waiting: &mut BTreeMap<u64, oneshot::Receiver<()>>,
    done: &mut Vec<u64>,
    now: Instant,
) -> Next {
    let State { topics, groups, .. } = state;
    let Some(g) = groups.get_mut(group) else {
        return Next::Exit;
    };
    if g.uid != uid || g.coordinator != Some(run) {
        return Next::Exit;
    }
    for seq in done.drain(..) {
        if let Some(m) = g.members.get_mut(&seq) {
            m.assigned.clear();
            m.revoke_deadline = None;
        }
    }
    if g.members.is_empty() {
        waiting.clear();
        g.phase = Phase::Stable;
        g.needs_rebalance = false;
        g.coordinator = None;
        return Next::Exit;
    }

    if g.phase == Phase::Stable {
        if !g.needs_rebalance {
            return Next::Wait(None);
        }
        g.needs_rebalance = false;
        g.phase = Phase::Revoking;
        for (&seq, m) in &mut g.members {
            if matches!(m.pending, Some(MemberEvent::Assigned(_))) {
                // Never delivered: the member does not know it, so there is nothing to revoke.
                m.pending = None;
                m.assigned.clear();
            } else if m.took_assignment {
                let (revocation, receiver) = Revocation::new(m.assigned.iter().cloned().collect());
                m.pending = Some(MemberEvent::Revoked(revocation));
                m.revoke_deadline = Some(now + m.rebalance_timeout);
                waiting.insert(seq, receiver);
            }
        }
        tracing::debug!(group, generation = g.generation, "memory backend: rebalance started");
        g.changed.notify_waiters();
    }

    // Revoking: collect completed revocations, expel members past their deadline.
    waiting.retain(|seq, receiver| {
        let Some(m) = g.members.get_mut(seq) else {
            return false; // left
        };
        match receiver.try_recv() {
            Err(oneshot::error::TryRecvError::Empty) => true,
            _ => {
                m.assigned.clear();
                m.revoke_deadline = None;
                false
            }
        }
    });
    let expired: Vec<u64> = waiting
        .keys()
        .copied()
        .filter(|seq| g.members.get(seq).and_then(|m| m.revoke_deadline).is_some_and(|d| d <= now))
        .collect();
    for seq in expired {
        waiting.remove(&seq);
        if let Some(m) = g.members.remove(&seq) {
            let reason = format!(
                "member `{}` was removed from the group: it did not complete its revocation of \
                 {} partition(s) within its rebalance timeout ({:?})",
                m.id,
                m.assigned.len(),
                m.rebalance_timeout
            );
            tracing::warn!(group, member = %m.id, "memory backend: member expelled");
            g.removed.insert(seq, reason);
        }
    }
    if !waiting.is_empty() {
        let deadline = waiting
            .keys()
            .filter_map(|seq| g.members.get(seq).and_then(|m| m.revoke_deadline))
            .min();
        return Next::Wait(deadline);
    }
    if g.members.is_empty() {
        g.phase = Phase::Stable;
        g.needs_rebalance = false;
        g.coordinator = None;
        return Next::Exit;
    }

    // Every revocation is complete: assign.
    g.generation += 1;
    let mut assignment = round_robin(&g.members, topics);
    for (seq, m) in &mut g.members {
        let partitions = assignment.remove(seq).unwrap_or_default();
        m.assigned = partitions.iter().cloned().collect();
        m.pending = Some(MemberEvent::Assigned(partitions));
        m.revoke_deadline = None;
    }
    g.phase = Phase::Stable;
    g.needs_rebalance = false;
    tracing::debug!(group, generation = g.generation, "memory backend: partitions assigned");
    g.changed.notify_waiters();
    Next::Wait(None)
}

/// Kafka's `RoundRobinAssignor`: the partitions of every subscribed topic, sorted by topic then
/// number, dealt in turn to the members (in join order), skipping members not subscribed to the
/// partition's topic.
fn round_robin(
    members: &BTreeMap<u64, MemberState>,
    topics: &BTreeMap<String, super::log::TopicLog>,
) -> BTreeMap<u64, Vec<TopicPartition>> {
    let order: Vec<(u64, &BTreeSet<String>)> =
        members.iter().map(|(&seq, m)| (seq, &m.topics)).collect();
    let subscribed: BTreeSet<&String> = order.iter().flat_map(|(_, t)| t.iter()).collect();
    let mut result: BTreeMap<u64, Vec<TopicPartition>> =
        order.iter().map(|(seq, _)| (*seq, Vec::new())).collect();
    let mut cursor = 0usize;
    for topic in subscribed {
        let Some(log) = topics.get(topic.as_str()) else {
            continue;
        };
        for partition in 0..log.partition_count() {
            for i in 0..order.len() {
                let idx = (cursor + i) % order.len();
                let Some((seq, member_topics)) = order.get(idx) else {
                    continue;
                };
                if member_topics.contains(topic.as_str()) {
                    if let Some(list) = result.get_mut(seq) {
                        list.push(TopicPartition { topic: Arc::clone(log.name()), partition });
                    }
                    cursor = idx + 1;
                    break;
                }
            }
        }
    }
    result
}

/// A member of a consumer group of the in-memory backend (returned by
/// [`Backend::join`](crate::backend::Backend::join)). Dropping it leaves the group.
#[derive(Debug)]
pub(crate) struct MemoryMember {
    shared: Arc<Shared>,
    group: String,
    seq: u64,
    id: String,
    changed: Arc<Notify>,
    left: AtomicBool,
}

impl MemoryMember {
    /// The error for a member no longer in its group.
    fn gone(&self, g: Option<&GroupState>) -> GroupError {
        if self.left.load(Ordering::Acquire) {
            return GroupError::fatal(
                &self.group,
                format!("member `{}` has left the group", self.id),
            );
        }
        match g.and_then(|g| g.removed.get(&self.seq)) {
            Some(reason) => GroupError::fatal(&self.group, reason.clone()),
            None => {
                GroupError::fatal(&self.group, format!("member `{}` is not in the group", self.id))
            }
        }
    }

    /// Runs `f` on this member's state and its group, or fails when it is no longer a member.
    fn with_member<T>(
        &self,
        f: impl FnOnce(&mut State, &str, u64) -> Result<T, GroupError>,
    ) -> Result<T, GroupError> {
        let mut state = self.shared.state.lock();
        let g = state.groups.get(&self.group);
        if self.left.load(Ordering::Acquire)
            || !g.is_some_and(|g| g.members.contains_key(&self.seq))
        {
            return Err(self.gone(g));
        }
        f(&mut state, &self.group, self.seq)
    }

    /// Leaves the group now; whether the member was still in it.
    fn leave_now(&self) -> Result<(), GroupError> {
        let mut state = self.shared.state.lock();
        let g = state.groups.get_mut(&self.group);
        if self.left.swap(true, Ordering::AcqRel) {
            return Ok(());
        }
        let Some(g) = g else {
            return Err(GroupError::fatal(&self.group, "the group no longer exists"));
        };
        if g.remove_member(self.seq) {
            tracing::debug!(group = %self.group, member = %self.id, "memory backend: member left");
            return Ok(());
        }
        match g.removed.remove(&self.seq) {
            Some(reason) => Err(GroupError::fatal(&self.group, reason)),
            None => Ok(()),
        }
    }
}

impl Drop for MemoryMember {
    fn drop(&mut self) {
        let _ = self.leave_now();
        let mut state = self.shared.state.lock();
        if let Some(g) = state.groups.get_mut(&self.group) {
            g.removed.remove(&self.seq);
        }
    }
}

impl GroupMember for MemoryMember {
    fn member_id(&self) -> String {
        self.id.clone()
    }

    fn next_event(&self) -> BoxFuture<'_, Result<MemberEvent, GroupError>> {
        Box::pin(async move {
            loop {
                // Registered before the state is checked: a change after the check wakes us.
                let notified = self.changed.notified();
                let event = self.with_member(|state, group, seq| {
                    let m = state
                        .groups
                        .get_mut(group)
                        .and_then(|g| g.members.get_mut(&seq))
                        .ok_or_else(|| GroupError::fatal(group, "member vanished"))?;
                    let event = m.pending.take();
                    if matches!(event, Some(MemberEvent::Assigned(_))) {
                        m.took_assignment = true;
                    }
                    Ok(event)
                })?;
                if let Some(event) = event {
                    return Ok(event);
                }
                notified.await;
            }
        })
    }

    fn committed<'a>(
        &'a self,
        partitions: &'a [TopicPartition],
    ) -> BoxFuture<'a, Result<Vec<Option<i64>>, GroupError>> {
        let result = self.with_member(|state, group, _| {
            let g = state.groups.get(group).ok_or_else(|| GroupError::fatal(group, "no group"))?;
            Ok(partitions.iter().map(|tp| g.offsets.get(tp).copied()).collect())
        });
        Box::pin(async move { result })
    }

    fn commit<'a>(
        &'a self,
        offsets: &'a [(TopicPartition, i64)],
    ) -> BoxFuture<'a, Result<(), GroupError>> {
        let result = self.with_member(|state, group, seq| {
            let State { topics, groups, .. } = state;
            let g = groups.get_mut(group).ok_or_else(|| GroupError::fatal(group, "no group"))?;
            let m = g.members.get(&seq).ok_or_else(|| GroupError::fatal(group, "no member"))?;
            for (tp, offset) in offsets {
                if !m.assigned.contains(tp) {
                    let reason = if g.phase == Phase::Revoking {
                        format!(
                            "cannot commit `{tp}`: rebalance in progress and member `{}` does not \
                             own it (generation {})",
                            m.id, g.generation
                        )
                    } else {
                        format!(
                            "cannot commit `{tp}`: member `{}` is not the owner in generation {}",
                            m.id, g.generation
                        )
                    };
                    return Err(GroupError::retriable(group, reason));
                }
                let end = topics
                    .get(&*tp.topic)
                    .and_then(|t| t.partition(tp.partition))
                    .map(super::log::PartitionLog::end)
                    .ok_or_else(|| {
                        GroupError::fatal(group, format!("cannot commit `{tp}`: no such partition"))
                    })?;
                if !(0..=end).contains(offset) {
                    return Err(GroupError::fatal(
                        group,
                        format!(
                            "cannot commit offset {offset} for `{tp}`: outside 0..={end} (the \
                             partition's end offset)"
                        ),
                    ));
                }
            }
            let mut touched = BTreeSet::new();
            for (tp, offset) in offsets {
                g.offsets.insert(tp.clone(), *offset);
                touched.insert(Arc::clone(&tp.topic));
            }
            // Commits may free room for publishes waiting on these topics.
            for topic in touched {
                if let Some(t) = topics.get(&*topic) {
                    t.room().notify_waiters();
                }
            }
            Ok(())
        });
        Box::pin(async move { result })
    }

    fn open<'a>(
        &'a self,
        partition: &'a TopicPartition,
        start: StartAt,
    ) -> BoxFuture<'a, Result<Box<dyn PartitionReader>, GroupError>> {
        let result = self.with_member(|state, group, _| {
            let log = state
                .topics
                .get(&*partition.topic)
                .and_then(|t| t.partition(partition.partition))
                .ok_or_else(|| {
                    GroupError::fatal(
                        group,
                        format!("cannot open `{partition}`: no such partition"),
                    )
                })?;
            let position = match start {
                StartAt::Earliest => log.start(),
                StartAt::Latest => log.end(),
                StartAt::Offset(offset) => offset.clamp(log.start(), log.end()),
                StartAt::Timestamp(time) => log.offset_at(time.timestamp_millis()),
            };
            Ok(MemoryReader::new(
                Arc::clone(&self.shared),
                group.to_owned(),
                partition.clone(),
                position,
                log.appended(),
            ))
        });
        Box::pin(async move { result.map(|r| Box::new(r) as Box<dyn PartitionReader>) })
    }

    fn leave(&self) -> BoxFuture<'_, Result<(), GroupError>> {
        let result = self.leave_now();
        Box::pin(async move { result })
    }
}
