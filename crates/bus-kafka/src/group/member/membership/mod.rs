//! A member's membership task (`coordinator`): the state machine that joins the group, syncs,
//! holds the assignment, revokes what it must, rejoins, and finally leaves.
//!
//! Owns: [`Membership`] (the task's coordinator link, its event sender, the topics it
//! subscribes to now, the partitions it holds) and its state machine here; the leader's
//! assignment in `assign` (with the crate's `assignor` and `codec`); the join, sync and leave
//! requests in `requests`; the metadata checks that call for a rebalance here.
//!
//! The cycle, as the member's `Phase`:
//! - `Joining`: JoinGroup (with the member-id-required round trip), the leader's assignment,
//!   SyncGroup; a failed step is retried from JoinGroup after the member's `RETRY_BACKOFF`;
//! - `Stable`: the assignment's changes are delivered, and it is held until a rejoin is
//!   requested (by the heartbeat task, an offset commit, a cooperative revocation's follow-up,
//!   or a metadata check every `metadata.max_age`);
//! - `Revoking`: partitions are revoked; the task waits until the runtime has released them;
//! - `Stopped`: after a fatal error or cancellation, once the task has tried to leave.
//!
//! The two rebalance protocols (the member's is fixed by its assignors: see
//! `ConsumerConfig::assignors`):
//! - *Eager*: before rejoining, every partition held is revoked with one
//!   [`MemberEvent::Revoked`], and the member does not rejoin until that [`Revocation`] is
//!   complete (heartbeats continue meanwhile, so the session stays alive while the runtime
//!   drains and commits). Its subscription owns nothing; for the `sticky` assignor its user
//!   data carries what it held.
//! - *Cooperative* (KIP-429): the member rejoins holding its partitions (listed as owned in its
//!   subscription, with their generation), and they are read throughout. After SyncGroup it is
//!   told what it gained ([`MemberEvent::Assigned`], first, so new partitions start at once) and
//!   what it must give up ([`MemberEvent::Revoked`]); once that revocation is complete it
//!   rejoins (the follow-up rebalance in which the leader hands those partitions on). A
//!   member that loses its membership (unknown member, illegal generation, or a session
//!   timeout's worth of failed joins) revokes everything, as an eager one does: those
//!   partitions are someone else's by then.
//!
//! Invariants:
//! - Only this task writes the membership's phase, member id, generation and held generation;
//!   the other parts request rejoins through the shared state.
//! - A partition is announced once when gained and once when lost: [`MemberEvent::Assigned`]
//!   lists only partitions not held, [`MemberEvent::Revoked`] only partitions held, and only
//!   partitions of the member's current topics are ever assigned.
//! - Static members (a group instance id) join with it (JoinGroup v5 or later, or the member
//!   stops: the coordinator cannot keep its place), carry it in every request that has the
//!   field, and never send LeaveGroup: on the way out their place (and partitions) wait for
//!   the next instance for the session timeout. A restarted static member that its coordinator
//!   names leader with `skip_assignment` syncs without assigning.
//! - A dynamic member sends a LeaveGroup (bounded by [`LEAVE_TIMEOUT`]) on its way out whenever
//!   it still has a member id, so a dropped member leaves its group too; the task cancels the
//!   member's token first, which ends the heartbeats.
//! - A fenced member (FENCED_INSTANCE_ID) stops at once and is reported fenced.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use bus_core::TopicPartition;
use bus_core::backend::{GroupError, MemberEvent, Revocation};
use bus_supervisor::{CancellationToken, Scope};
use bytes::Bytes;
use kafka_protocol::messages::join_group_request::JoinGroupRequestProtocol;
use kafka_protocol::messages::leave_group_request::MemberIdentity;
use kafka_protocol::messages::sync_group_request::SyncGroupRequestAssignment;
use kafka_protocol::messages::{
    JoinGroupRequest, JoinGroupResponse, LeaveGroupRequest, SyncGroupRequest,
};
use kafka_protocol::protocol::StrBytes;
use tokio::sync::{mpsc, watch};
use tokio::time::{Instant, Interval, MissedTickBehavior};

use super::{Inner, Phase, RETRY_BACKOFF, Rejoin, State};
use crate::config::COOPERATIVE_STICKY;
use crate::group::assignor::{self, Member};
use crate::group::codec;
use crate::group::coordinator::{Failure, Link, MEMBER_ID_REQUIRED, UNKNOWN_MEMBER_ID};

mod assign;
mod requests;

/// The protocol type of consumer groups.
const PROTOCOL_TYPE: &str = "consumer";
/// The longest a LeaveGroup may take on the way out.
const LEAVE_TIMEOUT: Duration = Duration::from_secs(5);
/// Extra time given to a JoinGroup beyond the rebalance timeout (as the Java client does).
const JOIN_TIMEOUT_LAPSE: Duration = Duration::from_secs(5);
/// The first JoinGroup version with `group_instance_id` (KIP-345).
const STATIC_MEMBERSHIP_VERSION: i16 = 5;
/// The first SyncGroup version with `group_instance_id`.
const SYNC_INSTANCE_ID_VERSION: i16 = 3;
/// The eager sticky assignor.
const STICKY: &str = "sticky";

/// What a successful JoinGroup told the member.
struct Joined {
    generation: i32,
    member_id: String,
    leader: String,
    protocol: String,
    /// A static leader rejoining a stable group must not assign (JoinGroup v9).
    skip_assignment: bool,
    members: Vec<(String, Option<String>, Bytes)>,
}

/// Why the membership ended.
struct Stopped {
    reason: String,
    fenced: bool,
}

impl Stopped {
    fn fatal(reason: impl Into<String>) -> Self {
        Stopped { reason: reason.into(), fenced: false }
    }
}

/// What one incarnation of the membership task hands to the next: the membership and where it
/// reports leaving.
pub(super) type Handover = bus_supervisor::Handover<Carried>;

/// The membership task's state across its incarnations.
pub(super) struct Carried {
    membership: Membership,
    left: watch::Sender<Option<Result<(), GroupError>>>,
}

/// A new membership task's handover.
pub(super) fn handover(
    membership: Membership,
    left: watch::Sender<Option<Result<(), GroupError>>>,
) -> Handover {
    Handover::new(Carried { membership, left })
}

/// Runs one incarnation of the membership task in `scope` (its supervised scope), taking over
/// the previous incarnation's membership (see [`Membership::run`]).
pub(super) async fn run(
    scope: Scope,
    handover: Handover,
    token: CancellationToken,
) -> Result<(), &'static str> {
    let mut held = handover.take();
    let restarted = held.restarted();
    let Some(carried) = held.get_mut() else {
        return Err("no membership state to take over");
    };
    carried.membership.path = Arc::from(scope.path());
    carried.membership.run(token, &carried.left, restarted).await;
    Ok(())
}

/// The membership task's state.
pub(super) struct Membership {
    /// The task's path (fault points).
    path: Arc<str>,
    inner: Arc<Inner>,
    link: Link,
    events: mpsc::UnboundedSender<MemberEvent>,
    /// The topics the member subscribes to now (a pattern's matches change).
    topics: BTreeSet<String>,
    /// The partitions the member holds: delivered and not revoked.
    owned: BTreeSet<TopicPartition>,
    /// The generation of the last assignment (-1: none since the member id was reset).
    owned_generation: i32,
    /// What an eager member held before its last revocation (the `sticky` assignor's user
    /// data).
    previous: BTreeSet<TopicPartition>,
    /// As the leader: the partition count of every topic the last assignment covered (0 for a
    /// topic that did not exist); `None` when not the leader.
    leader_counts: Option<BTreeMap<String, i32>>,
    /// When the rebalance under way began (this member left its generation to rejoin): a
    /// revocation's drain gets what is left of the rebalance timeout from then.
    rebalance_began: Option<Instant>,
}

impl Membership {
    /// The membership task of the member sharing `inner`, on `link`, sending its events to
    /// `events`, subscribing to `topics`.
    pub(super) fn new(
        inner: Arc<Inner>,
        link: Link,
        events: mpsc::UnboundedSender<MemberEvent>,
        topics: Vec<String>,
    ) -> Self {
        Membership {
            path: Arc::from(""),
            inner,
            link,
            events,
            topics: topics.into_iter().collect(),
            owned: BTreeSet::new(),
            owned_generation: -1,
            previous: BTreeSet::new(),
            leader_counts: None,
            rebalance_began: None,
        }
    }

    /// Runs the membership until `token` is cancelled or a fatal error, then leaves the group
    /// (a dynamic member) and reports how leaving went on `left`. A restarted incarnation
    /// (`restarted`: the previous one panicked) first gives up what a rejoin gives up (an
    /// eager member everything, a cooperative one what it no longer subscribes to) and joins
    /// again: where the previous one stopped is not known.
    async fn run(
        &mut self,
        token: CancellationToken,
        left: &watch::Sender<Option<Result<(), GroupError>>>,
        restarted: bool,
    ) {
        let stopped = tokio::select! {
            biased;
            () = token.cancelled() => None,
            stopped = async {
                if restarted {
                    tracing::warn!(
                        group = %self.inner.group,
                        "the membership task restarted after a panic: rejoining the group"
                    );
                    if self.inner.cooperative {
                        self.revoke_unsubscribed().await;
                    } else {
                        self.revoke_all().await;
                    }
                }
                self.membership().await
            } => Some(stopped),
        };
        if let Some(stopped) = &stopped {
            tracing::error!(
                group = %self.inner.group, reason = %stopped.reason, fenced = stopped.fenced,
                "group member stopped"
            );
        }
        // Stop the heartbeats; nothing is delivered any more.
        token.cancel();
        let result = match &stopped {
            // Leaving is not ours to do: the newer instance holds the place.
            Some(Stopped { fenced: true, reason }) => {
                Err(GroupError::fenced(&self.inner.group, reason.clone()))
            }
            _ => self.leave_group().await,
        };
        self.inner.state.send_modify(|s| {
            s.phase = Phase::Stopped;
            s.fatal = stopped.as_ref().map(|s| s.reason.clone());
            s.fenced = stopped.as_ref().is_some_and(|s| s.fenced);
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
    async fn membership(&mut self) -> Stopped {
        bus_core::fault::point(&self.path).await;
        // Failed joins since the last successful one, and when the first of them began.
        let mut failures = 0u32;
        let mut failing_since: Option<Instant> = None;
        let max_age = self.inner.config.metadata.max_age;
        let mut refresh = tokio::time::interval_at(Instant::now() + max_age, max_age);
        refresh.set_missed_tick_behavior(MissedTickBehavior::Delay);
        loop {
            bus_core::fault::point(&self.path).await;
            self.update(|s| {
                s.phase = Phase::Joining;
                s.rejoin = None;
            });
            match self.join_and_sync().await {
                Ok((joined, assigned)) => {
                    failures = 0;
                    failing_since = None;
                    if let Some(stopped) = self.take_assignment(&joined, assigned).await {
                        return stopped;
                    }
                    self.rebalance_began = None;
                }
                Err(failure) => {
                    if let Some(stopped) = self.handle(failure).await {
                        return stopped;
                    }
                    let since = *failing_since.get_or_insert_with(Instant::now);
                    if !self.owned.is_empty()
                        && since.elapsed() >= self.inner.config.consumer.session_timeout
                    {
                        // A cooperative member that cannot rejoin for a session timeout has
                        // been expelled by now: its partitions are someone else's.
                        tracing::warn!(
                            group = %self.inner.group,
                            "no successful join within the session timeout; giving up the \
                             assignment and joining with a new member id"
                        );
                        self.revoke_all().await;
                        self.reset();
                    }
                    let delay = RETRY_BACKOFF.delay(failures);
                    failures = failures.saturating_add(1);
                    tokio::time::sleep(delay).await;
                    continue;
                }
            }
            let asked = match self.hold(&mut refresh).await {
                Ok(rejoin) => rejoin,
                Err(stopped) => return stopped,
            };
            self.rebalance_began = Some(Instant::now());
            tracing::info!(
                group = %self.inner.group, rejoin = ?asked, "leaving the generation to rejoin"
            );
            let keeps = self.inner.cooperative && asked == Rejoin::Rebalance;
            if keeps {
                self.revoke_unsubscribed().await;
            } else {
                self.revoke_all().await;
            }
            // A stronger request may have come while the runtime released partitions.
            let current = self.inner.state.borrow().rejoin.clone();
            let rejoin = match current {
                Some(current) if current.rank() > asked.rank() => current,
                _ => asked,
            };
            match rejoin {
                Rejoin::Fenced(reason) => return Stopped { reason, fenced: true },
                Rejoin::Fatal(reason) => {
                    self.revoke_all().await;
                    return Stopped::fatal(reason);
                }
                Rejoin::Reset => {
                    self.revoke_all().await;
                    self.reset();
                }
                Rejoin::Rebalance => {}
            }
        }
    }

    /// Holds the assignment until a rejoin is requested or a metadata check calls for one.
    async fn hold(&mut self, refresh: &mut Interval) -> Result<Rejoin, Stopped> {
        let mut state = self.inner.state.subscribe();
        loop {
            bus_core::fault::point(&self.path).await;
            tokio::select! {
                requested = async {
                    state.wait_for(|s| s.rejoin.is_some()).await.map(|s| s.rejoin.clone())
                } => {
                    return match requested {
                        Ok(rejoin) => Ok(rejoin.unwrap_or(Rejoin::Rebalance)),
                        Err(_) => Err(Stopped::fatal("the membership state is gone")),
                    };
                }
                _ = refresh.tick() => {
                    if let Some(why) = self.metadata_changed().await {
                        tracing::info!(group = %self.inner.group, %why, "rebalancing the group");
                        return Ok(Rejoin::Rebalance);
                    }
                }
            }
        }
    }

    /// What the cluster's metadata says now that calls for a rebalance: new or vanished
    /// matches of a pattern (the subscription is updated), or, for the leader, a topic of the
    /// last assignment whose partition count changed. A failed metadata request is ignored
    /// (the next check tries again).
    async fn metadata_changed(&mut self) -> Option<String> {
        let pattern = self.inner.subscription.is_pattern();
        let leader_topics: Option<Vec<String>> =
            self.leader_counts.as_ref().map(|counts| counts.keys().cloned().collect());
        if !pattern && leader_topics.is_none() {
            return None;
        }
        let wanted = if pattern { None } else { leader_topics.as_deref() };
        let found = match self.inner.client.topics(wanted).await {
            Ok(found) => found,
            Err(error) => {
                tracing::debug!(
                    group = %self.inner.group, %error, "metadata check failed; trying again later"
                );
                return None;
            }
        };
        if pattern {
            let visible = found.iter().filter(|(_, i)| !i.internal).map(|(n, _)| n.as_str());
            let matches: BTreeSet<String> =
                self.inner.subscription.select(visible).into_iter().collect();
            if matches != self.topics {
                let gained: Vec<&String> = matches.difference(&self.topics).collect();
                let lost: Vec<&String> = self.topics.difference(&matches).collect();
                let why = format!(
                    "the topics matching `{}` changed: {gained:?} appeared, {lost:?} went",
                    self.inner.subscription
                );
                self.topics = matches;
                return Some(why);
            }
        }
        for (topic, &before) in self.leader_counts.iter().flatten() {
            let now = found.get(topic).map_or(0, |i| i.partitions);
            if now != before {
                return Some(format!("topic `{topic}` has {now} partitions, not {before}"));
            }
        }
        None
    }

    /// Applies a SyncGroup's assignment: delivers what was gained, revokes what was lost (a
    /// cooperative member only; then the follow-up rejoin is requested).
    async fn take_assignment(
        &mut self,
        joined: &Joined,
        assigned: BTreeSet<TopicPartition>,
    ) -> Option<Stopped> {
        let added: Vec<TopicPartition> = assigned.difference(&self.owned).cloned().collect();
        let revoked: Vec<TopicPartition> = self.owned.difference(&assigned).cloned().collect();
        tracing::info!(
            group = %self.inner.group, member = %joined.member_id,
            generation = joined.generation, protocol = %joined.protocol,
            cooperative = self.inner.cooperative, leader = joined.leader == joined.member_id,
            partitions = ?assigned, added = ?added, revoked = ?revoked, "joined the group"
        );
        self.update(|s| {
            s.phase = Phase::Stable;
            s.generation = joined.generation;
            s.member_id = joined.member_id.clone();
            s.held = Some((joined.generation, joined.member_id.clone()));
        });
        self.owned_generation = joined.generation;
        self.previous.clear();
        self.owned.extend(added.iter().cloned());
        // New partitions first: they are read while those given up drain.
        if !added.is_empty() && self.events.send(MemberEvent::Assigned(added)).is_err() {
            return Some(Stopped::fatal("the member's handle is gone"));
        }
        if !revoked.is_empty() {
            // Only a cooperative member holds partitions as it joins: it gives these up, then
            // rejoins so that the leader can hand them on.
            self.revoke(revoked).await;
            self.update(|s| {
                s.phase = Phase::Stable;
                if s.rejoin.is_none() {
                    s.rejoin = Some(Rejoin::Rebalance);
                }
            });
        }
        None
    }

    /// Revokes `partitions` (held ones) and waits until the runtime released them.
    async fn revoke(&mut self, partitions: Vec<TopicPartition>) {
        if partitions.is_empty() {
            return;
        }
        self.update(|s| s.phase = Phase::Revoking);
        for partition in &partitions {
            self.owned.remove(partition);
        }
        let (mut revocation, done) = Revocation::new(partitions);
        if let Some(began) = self.rebalance_began {
            revocation = revocation.with_deadline(began + self.inner.rebalance_timeout);
        }
        if self.events.send(MemberEvent::Revoked(revocation)).is_err() {
            return;
        }
        // Completed, or dropped (which completes it as well).
        let _ = done.await;
    }

    /// Revokes everything held (eager rejoin, lost membership, stopping).
    async fn revoke_all(&mut self) {
        let all: Vec<TopicPartition> = self.owned.iter().cloned().collect();
        if !all.is_empty() {
            self.previous = self.owned.clone();
        }
        self.revoke(all).await;
        self.update(|s| s.held = None);
    }

    /// Revokes the partitions of topics no longer subscribed (a pattern's lost matches).
    async fn revoke_unsubscribed(&mut self) {
        let gone: Vec<TopicPartition> =
            self.owned.iter().filter(|p| !self.topics.contains(&*p.topic)).cloned().collect();
        self.revoke(gone).await;
    }

    /// Forgets member id and generation.
    fn reset(&mut self) {
        self.owned_generation = -1;
        self.update(|s| {
            s.member_id.clear();
            s.generation = -1;
            s.held = None;
        });
    }

    /// Applies a failed join's `failure`; how the member stopped when it must stop.
    async fn handle(&mut self, failure: Failure) -> Option<Stopped> {
        match failure {
            Failure::Fatal(reason) => return Some(Stopped::fatal(reason)),
            Failure::Fenced(reason) => return Some(Stopped { reason, fenced: true }),
            Failure::Coordinator(reason) => {
                tracing::info!(group = %self.inner.group, %reason, "finding the coordinator again");
                self.link.coordinator_moved();
            }
            Failure::Reset(reason) => {
                tracing::info!(group = %self.inner.group, %reason, "rejoining with a new member id");
                // The membership is lost, and with it what a cooperative member still held.
                self.revoke_all().await;
                self.reset();
            }
            Failure::Rebalance(reason) | Failure::Retry(reason) => {
                tracing::debug!(group = %self.inner.group, %reason, "retrying the join");
            }
        }
        None
    }
}

/// A JoinGroup answer's fields.
fn joined(response: JoinGroupResponse) -> Joined {
    Joined {
        generation: response.generation_id,
        member_id: response.member_id.as_str().to_owned(),
        leader: response.leader.as_str().to_owned(),
        protocol: response.protocol_name.map(|p| p.as_str().to_owned()).unwrap_or_default(),
        skip_assignment: response.skip_assignment,
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
