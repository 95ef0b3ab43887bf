//! A subscription's control task: the one owner of its group membership, its fetch loops and
//! its commits.
//!
//! Owns: `Control` (group events: assigned (added to what is held), revoked (all or some),
//! dropped by the group (joined again) or fenced (consuming stops for good); a fetch loop per
//! assigned partition in its own scope; the commit schedule; the service's requests (seek,
//! commit, see `commands`); the stop procedure).
//!
//! Invariants:
//! - A revoked (or, at stop, every) partition's fetch loop is shut down before its handlers are
//!   drained, and the drained partitions' offsets are committed before the revocation completes.
//! - Only offsets the keyed dispatch reports committable are committed (the contiguous prefix of
//!   finished messages); an offset already committed is not sent again.
//! - Committed offsets are read before a partition's reader is opened: a partition is never
//!   started at a guessed position. Reading them (and opening the readers) is retried with
//!   backoff up to the rebalance timeout; past it the subscription fails visibly: it releases
//!   its partitions, leaves its group (so that other members take them), is named failed in
//!   the health and `subscriptions_failed`, and waits for its stop. It never holds partitions
//!   it does not read.
//!   The subscription's `start` position overrides the committed offsets only on a partition's
//!   first assignment to this subscription.
//! - A seek releases the partition as a revocation does (fetch loop stopped, queued messages
//!   above the highest one a worker took dropped and those below it finished, running handlers
//!   drained, the finished prefix committed as the commit mode says,
//!   the tracker forgotten) before its reader is opened at the new position: no offset of the
//!   old position is ever committed past an unfinished message, nor one of the new position
//!   before it is finished.
//! - In manual commit mode only offsets the service asked for are committed, each capped by the
//!   finished prefix; a request is forgotten when its partition is released (revoked, sought,
//!   stopped).
//! - Supervision: each fetch loop is a supervised child in its partition's scope under the
//!   isolated `fetch` scope, the member's tasks under the isolated `member` scope; a task past
//!   its restart intensity fails that isolated scope, which this task watches: the subscription
//!   then fails visibly as above (it releases, leaves, is named failed) and the rest of the bus
//!   goes on. The control task itself is a supervised child (`control`): restarted after a
//!   panic, it takes over its state (member, fetch loops, committed offsets, stop and report
//!   channels) and goes on with its loop; past its intensity the subscription's own isolated
//!   scope fails, which the bus's health reports.
//! - A stop is seen at once, whatever step the task is in (an assignment's offsets retried, a
//!   revocation's drain, a commit, a failure's release): the step is dropped and the stop
//!   releases every partition held or being released (drained until shortly before its
//!   deadline, committed, left) within its deadline, so its report says truly what was
//!   committed, abandoned and whether the group was left.
//! - A revocation drains its handlers until what is left of the rebalance timeout when the
//!   backend says when the rebalance began (`Revocation::deadline`), a whole one otherwise.

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::sync::Arc;
use std::task::Poll;
use std::time::Duration;

use bus_supervisor::{Backoff, ChildSpec, Scope};
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;

use crate::backend::{
    GroupError, GroupMember, JoinRequest, MemberEvent, PartitionReader, Revocation,
};

use crate::dispatch::KeyedDispatch;
use crate::health::GroupState;
use crate::metrics::Metrics;
use crate::options::CommitMode;
use crate::record::TopicPartition;
use crate::start::StartAt;

use super::SubscriptionReport;
use super::commands::{Command, CommitReport, ControlError};
use super::fetch_loop::{self, FetchLoop};
use super::pause::Pauses;
use super::process::Runtime;

/// How the control task is supervised: restarted after a panic (it ends normally after its
/// stop), at most 3 restarts in 30 s, 100 ms doubling to 2 s between them.
pub(super) fn child_spec() -> ChildSpec {
    ChildSpec::transient()
        .intensity(3, Duration::from_secs(30))
        .backoff(Duration::from_millis(100), Duration::from_secs(2), 2.0)
        .shutdown_timeout(Duration::from_secs(1))
}

/// What one incarnation of the control task hands to the next.
pub(super) type Handover = bus_supervisor::Handover<Carried>;

/// The control task's state across incarnations: its state, where its stop comes from and
/// where its report goes.
pub(super) struct Carried {
    control: Control,
    stop: watch::Receiver<Option<Instant>>,
    report: watch::Sender<Option<SubscriptionReport>>,
}

/// Runs one incarnation of the control task in `scope` (its supervised scope), taking over the
/// previous incarnation's state.
pub(super) async fn run(scope: Scope, handover: Handover) -> Result<(), &'static str> {
    let mut held = handover.take();
    let Some(carried) = held.get_mut() else {
        return Err("no control state to take over");
    };
    carried.control.path = Arc::from(scope.path());
    let Carried { control, stop, report } = carried;
    control.run(stop, report).await;
    Ok(())
}

/// What a stop keeps of its time, at most, after draining handlers: for the abandonment of those
/// still running to take effect (the dispatch's `ABANDON_GRACE`), the final commit and leaving
/// the group.
const STOP_RESERVE: Duration = Duration::from_millis(500);

/// Delay before retrying a failed group operation (a constant delay: these retries are bounded
/// by the rebalance timeout, or repeated on the loop's next turn).
pub(super) const RETRY: Backoff = Backoff {
    initial: Duration::from_millis(200),
    max: Duration::from_millis(200),
    multiplier: 1.0,
};

/// The delays between attempts to read an assignment's committed offsets (or open its
/// readers): 100 ms, doubling, at most 2 s, until the rebalance timeout.
const ASSIGN_RETRY: Backoff =
    Backoff { initial: Duration::from_millis(100), max: Duration::from_secs(2), multiplier: 2.0 };

/// What releasing partitions did.
struct Released {
    discarded: usize,
    abandoned: Vec<(TopicPartition, i64)>,
    committed: Vec<(TopicPartition, i64)>,
}

/// The control task's state.
pub(super) struct Control {
    runtime: Arc<Runtime>,
    member: Box<dyn GroupMember>,
    /// How the member joined, to join again when the group drops it.
    join: JoinRequest,
    /// The subscription's scope (a new member scope is made there on rejoin).
    scope: Scope,
    dispatch: KeyedDispatch,
    fetch: Scope,
    fetchers: HashMap<TopicPartition, Scope>,
    last_committed: HashMap<TopicPartition, i64>,
    /// Set once the member was fenced: no more group events are read.
    fenced: bool,
    /// The subscription failed for good: it waits for its stop.
    failed: bool,
    /// The service's requests.
    commands: mpsc::Receiver<Command>,
    /// The subscription's pause state, watched by the fetch loops.
    pauses: Arc<Pauses>,
    /// The partitions this subscription was ever assigned (its `start` position applies to
    /// the others).
    started: HashSet<TopicPartition>,
    /// Manual commit mode: the offsets the service asked to commit, per partition held.
    requested: HashMap<TopicPartition, i64>,
    /// The incarnation's task path (fault points).
    path: Arc<str>,
}

impl Control {
    pub(super) fn new(
        runtime: Arc<Runtime>,
        member: Box<dyn GroupMember>,
        join: JoinRequest,
        scope: &Scope,
        dispatch: KeyedDispatch,
        commands: mpsc::Receiver<Command>,
        pauses: Arc<Pauses>,
    ) -> Self {
        Control {
            runtime,
            member,
            join,
            scope: scope.clone(),
            dispatch,
            fetch: scope.isolated_child("fetch"),
            fetchers: HashMap::new(),
            last_committed: HashMap::new(),
            fenced: false,
            failed: false,
            commands,
            pauses,
            started: HashSet::new(),
            requested: HashMap::new(),
            path: Arc::from(""),
        }
    }

    /// This task's state with its channels, ready to be supervised.
    pub(super) fn handover(
        self,
        stop: watch::Receiver<Option<Instant>>,
        report: watch::Sender<Option<SubscriptionReport>>,
    ) -> Handover {
        Handover::new(Carried { control: self, stop, report })
    }

    async fn run(
        &mut self,
        stop: &mut watch::Receiver<Option<Instant>>,
        report: &watch::Sender<Option<SubscriptionReport>>,
    ) {
        let mut tick = tokio::time::interval(self.runtime.options.commit_interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let deadline = loop {
            crate::fault::point(&self.path).await;
            if self.failed {
                break requested_deadline(stop).await;
            }
            let member_scope = self.join.scope.clone();
            // A stop during a long step (an assignment's offsets retried, a revocation's
            // drain, a commit, a failure's release) ends the step and stops at once: the stop
            // releases, commits and leaves within its own deadline.
            let stopped: Option<Instant> = tokio::select! {
                biased;
                deadline = requested_deadline(stop) => Some(deadline),
                escalation = self.fetch.failed() => {
                    let reason = format!("a fetch loop kept failing: {escalation}");
                    until_stopped(stop, self.fail(reason)).await
                }
                escalation = member_scope.failed() => {
                    let reason = format!("the group member kept failing: {escalation}");
                    until_stopped(stop, self.fail(reason)).await
                }
                reason = self.runtime.failure_requested() => {
                    until_stopped(stop, self.fail(reason)).await
                }
                event = self.member.next_event(), if !self.fenced => match event {
                    Ok(MemberEvent::Assigned(partitions)) => {
                        until_stopped(stop, self.assigned(partitions)).await
                    }
                    Ok(MemberEvent::Revoked(revocation)) => {
                        until_stopped(stop, self.revoked(revocation)).await
                    }
                    Err(error) if error.retriable => {
                        tracing::warn!(group = %self.runtime.options.group, %error, "group event failed; retrying");
                        self.runtime.health.error(error.to_string());
                        until_stopped(stop, tokio::time::sleep(RETRY.delay(0))).await
                    }
                    Err(error) if error.fenced => until_stopped(stop, self.fenced(error)).await,
                    Err(error) => until_stopped(stop, self.rejoin(error)).await,
                },
                _ = tick.tick() => until_stopped(stop, self.commit()).await,
                Some(command) = self.commands.recv() => {
                    until_stopped(stop, self.command(command)).await
                }
            };
            if let Some(deadline) = stopped {
                break deadline;
            }
        };
        let result = self.stop(deadline).await;
        let _ = report.send(Some(result));
    }

    async fn assigned(&mut self, partitions: Vec<TopicPartition>) {
        if partitions.is_empty() {
            return;
        }
        Metrics::add(&self.runtime.metrics.partitions_assigned, partitions.len() as u64);
        self.runtime.health.group(GroupState::Stable);
        // The committed offsets are needed to start at the right place: retried with backoff
        // (never guessed, which would skip or replay records) until the rebalance timeout,
        // after which the subscription fails visibly rather than hold partitions unread.
        let give_up = Instant::now() + self.runtime.options.rebalance_timeout;
        let mut attempt = 0;
        let committed = loop {
            match self.member.committed(&partitions).await {
                Ok(committed) => break committed,
                Err(error) if error.retriable && Instant::now() < give_up => {
                    tracing::warn!(%error, "cannot read committed offsets; retrying");
                    tokio::time::sleep(ASSIGN_RETRY.delay(attempt)).await;
                    attempt += 1;
                }
                Err(error) => {
                    let reason = format!(
                        "cannot read the committed offsets of {}: {error}",
                        list(&partitions)
                    );
                    return self.fail(reason).await;
                }
            }
        };
        for (partition, committed) in partitions.into_iter().zip(committed) {
            let first = if self.started.insert(partition.clone()) {
                self.runtime.options.start.start_at(&partition)
            } else {
                None
            };
            let start = first
                .or(committed.map(StartAt::Offset))
                .unwrap_or_else(|| self.runtime.options.auto_offset_reset.into());
            let mut attempt = 0;
            let reader = loop {
                match self.member.open(&partition, start).await {
                    Ok(reader) => break reader,
                    Err(error) if error.retriable && Instant::now() < give_up => {
                        tracing::warn!(%partition, %error, "cannot open partition; retrying");
                        tokio::time::sleep(ASSIGN_RETRY.delay(attempt)).await;
                        attempt += 1;
                    }
                    Err(error) => {
                        return self.fail(format!("cannot open `{partition}`: {error}")).await;
                    }
                }
            };
            self.start_fetching(partition, reader, start);
        }
    }

    /// Starts `partition`'s fetch loop on `reader` (opened at `start`), a supervised child in
    /// the partition's own scope.
    fn start_fetching(
        &mut self,
        partition: TopicPartition,
        reader: Box<dyn PartitionReader>,
        start: StartAt,
    ) {
        let scope = self.fetch.child(partition.to_string());
        let fetch = FetchLoop::new(
            reader,
            self.dispatch.clone(),
            Arc::clone(&self.runtime),
            scope.token(),
            partition.clone(),
            self.runtime.options.max_in_flight,
        )
        .pausable(self.pauses.watch(partition.clone()));
        let handover = fetch.handover();
        let supervised = scope.supervise("fetch", fetch_loop::child_spec(), move |scope| {
            fetch_loop::run(scope, handover.clone())
        });
        match supervised {
            Ok(handle) => {
                handle.detach();
                tracing::debug!(%partition, ?start, "partition assigned");
                self.runtime.health.assigned(std::slice::from_ref(&partition));
                self.fetchers.insert(partition, scope);
            }
            Err(error) => tracing::warn!(%partition, %error, "cannot start fetch loop"),
        }
    }

    /// The subscription cannot go on (`reason`): release every partition (handlers drain,
    /// offsets are committed), leave the group so that other members take the partitions, and
    /// say so in the health and metrics. The control task then waits for its stop.
    async fn fail(&mut self, reason: String) {
        Metrics::bump(&self.runtime.metrics.group_failures);
        Metrics::bump(&self.runtime.metrics.subscriptions_failed);
        tracing::error!(
            group = %self.runtime.options.group, topic = %self.runtime.topic, %reason,
            "the subscription failed; it leaves its group and consumes no more"
        );
        self.runtime.health.failed(reason);
        self.runtime.telemetry.failed.set(1.0);
        let partitions: Vec<TopicPartition> = self.fetchers.keys().cloned().collect();
        let deadline = Instant::now() + self.runtime.options.rebalance_timeout;
        self.release(&partitions, deadline, None).await;
        if let Err(error) = self.member.leave().await {
            tracing::warn!(%error, "leaving the group failed");
        }
        self.failed = true;
        // Requests are no longer served: they fail at once (`Stopped`), those queued too.
        self.commands.close();
        while self.commands.try_recv().is_ok() {}
    }

    /// Stops reading `partitions`, drains their handlers until `deadline`, commits them and
    /// forgets them.
    /// The commit is bounded by `commit_by` when one is given (a stop's deadline); otherwise by
    /// the member's own request timeout.
    async fn release(
        &mut self,
        partitions: &[TopicPartition],
        deadline: Instant,
        commit_by: Option<Instant>,
    ) -> Released {
        for partition in partitions {
            if let Some(scope) = self.fetchers.remove(partition) {
                // Fetch loops stop at once on cancellation.
                let remaining = deadline.saturating_duration_since(Instant::now());
                if let Err(error) = scope.shutdown(remaining).await {
                    tracing::error!(%partition, %error, "fetch loop would not stop");
                }
            }
        }
        // The drain's first poll removes the partitions' queued messages; then a worker holding
        // a refused dead letter's key may let it go (`Runtime::releasing`).
        let drained = {
            let mut drain = std::pin::pin!(self.dispatch.drain(partitions, deadline));
            let first = std::future::poll_fn(|cx| Poll::Ready(drain.as_mut().poll(cx))).await;
            self.runtime
                .releasing
                .send_modify(|released| released.extend(partitions.iter().cloned()));
            match first {
                Poll::Ready(drained) => drained,
                Poll::Pending => drain.await,
            }
        };
        if drained.abandoned > 0 {
            Metrics::add(&self.runtime.metrics.abandoned, drained.abandoned as u64);
            tracing::warn!(
                abandoned = ?drained.abandoned_offsets,
                "handlers abandoned at the deadline; their messages stay uncommitted"
            );
        }
        let offsets: Vec<(TopicPartition, i64)> = partitions
            .iter()
            .filter_map(|p| self.due(p).map(|o| (p.clone(), o)))
            .filter(|(p, o)| self.last_committed.get(p) != Some(o))
            .collect();
        // A failure is logged and counted; the messages are redelivered.
        let _ = self.commit_offsets_by(offsets, commit_by).await;
        let mut committed = Vec::new();
        self.runtime.releasing.send_modify(|released| {
            for partition in partitions {
                released.remove(partition);
            }
        });
        for partition in partitions {
            self.dispatch.forget(partition);
            self.runtime.health.forget(partition);
            self.requested.remove(partition);
            if let Some(offset) = self.last_committed.remove(partition) {
                committed.push((partition.clone(), offset));
            }
        }
        committed.sort();
        Released { discarded: drained.discarded, abandoned: drained.abandoned_offsets, committed }
    }

    /// The group dropped this member (fenced, expelled, stopped): release every partition
    /// (their handlers drain, their commits will be refused and they are redelivered), leave,
    /// and join again with a new member. A failed join is retried on the next turn of the loop.
    async fn rejoin(&mut self, error: GroupError) {
        Metrics::bump(&self.runtime.metrics.group_failures);
        tracing::error!(group = %self.runtime.options.group, %error, "dropped by the group; joining again");
        let partitions: Vec<TopicPartition> = self.fetchers.keys().cloned().collect();
        let deadline = Instant::now() + self.runtime.options.rebalance_timeout;
        self.release(&partitions, deadline, None).await;
        let _ = self.member.leave().await;
        self.runtime.health.error(error.to_string());
        self.runtime.health.group(GroupState::Joining);
        let old = std::mem::replace(&mut self.join.scope, self.scope.isolated_child("member"));
        if let Err(error) = old.shutdown(Duration::from_secs(5)).await {
            tracing::error!(%error, "the dropped member's tasks would not stop");
        }
        match self.runtime.backend.join(self.join.clone()).await {
            Ok(member) => self.member = member,
            Err(error) => {
                tracing::error!(%error, "joining again failed; will retry");
                tokio::time::sleep(RETRY.delay(0)).await;
            }
        }
    }

    /// Another instance took this member's place (a static member fenced): release every
    /// partition (their commits are refused: they are redelivered) and consume nothing more,
    /// without joining again (that would fence the newer instance in turn), until stopped.
    async fn fenced(&mut self, error: GroupError) {
        Metrics::bump(&self.runtime.metrics.group_failures);
        tracing::error!(
            group = %self.runtime.options.group, %error,
            "fenced by a newer instance with the same group instance id; this subscription stops consuming"
        );
        self.runtime
            .health
            .failed(format!("fenced by a newer instance with the same group instance id: {error}"));
        let partitions: Vec<TopicPartition> = self.fetchers.keys().cloned().collect();
        let deadline = Instant::now() + self.runtime.options.rebalance_timeout;
        self.release(&partitions, deadline, None).await;
        self.fenced = true;
    }

    async fn revoked(&mut self, revocation: Revocation) {
        Metrics::bump(&self.runtime.metrics.rebalances);
        self.runtime.telemetry.rebalances.increment(1);
        self.runtime.health.group(GroupState::Rebalancing);
        Metrics::add(&self.runtime.metrics.partitions_revoked, revocation.partitions.len() as u64);
        // What is left of the rebalance timeout when the backend says when the rebalance began.
        let whole = Instant::now() + self.runtime.options.rebalance_timeout;
        let deadline = revocation.deadline().map_or(whole, |left| left.min(whole));
        let partitions = revocation.partitions.clone();
        self.release(&partitions, deadline, None).await;
        tracing::debug!(?partitions, "partitions revoked");
        revocation.complete();
        // Still reading what it keeps (cooperative), or waiting for the next assignment.
        if !self.fetchers.is_empty() {
            self.runtime.health.group(GroupState::Stable);
        }
    }

    /// The offset to commit for `partition` now: the finished prefix (auto mode), or in manual
    /// mode the service's request capped by it.
    fn due(&self, partition: &TopicPartition) -> Option<i64> {
        let finished = self.dispatch.committable(partition)?;
        match self.runtime.options.commit_mode {
            CommitMode::Auto => Some(finished),
            CommitMode::Manual => self.requested.get(partition).map(|&asked| asked.min(finished)),
        }
    }

    /// The schedule's commit: every partition held whose due offset moved.
    async fn commit(&mut self) {
        let offsets: Vec<(TopicPartition, i64)> = self
            .fetchers
            .keys()
            .filter_map(|p| self.due(p).map(|o| (p.clone(), o)))
            .filter(|(p, o)| self.last_committed.get(p) != Some(o))
            .collect();
        // A failure is logged and counted; the next turn tries again.
        let _ = self.commit_offsets_by(offsets, None).await;
    }

    /// Serves a request of the service.
    async fn command(&mut self, command: Command) {
        match command {
            Command::Seek { partition, to, reply } => {
                let result = self.seek(partition, to).await;
                let _ = reply.send(result);
            }
            Command::Commit { offsets, reply } => {
                let result = self.commit_requested(offsets).await;
                let _ = reply.send(result);
            }
            Command::Committed { reply } => {
                let mut committed: Vec<(TopicPartition, i64)> =
                    self.last_committed.iter().map(|(p, &o)| (p.clone(), o)).collect();
                committed.sort();
                let _ = reply.send(committed);
            }
        }
    }

    fn not_assigned(&self, partition: &TopicPartition) -> ControlError {
        ControlError::NotAssigned {
            group: self.runtime.options.group.clone(),
            partition: partition.clone(),
        }
    }

    /// Moves `partition` to `to`: releases it (see the module's invariants), then opens it
    /// there. When the new reader cannot be opened, reading goes on from the committed offset.
    async fn seek(&mut self, partition: TopicPartition, to: StartAt) -> Result<(), ControlError> {
        if !self.fetchers.contains_key(&partition) {
            return Err(self.not_assigned(&partition));
        }
        let deadline = Instant::now() + self.runtime.options.rebalance_timeout;
        let released = self.release(std::slice::from_ref(&partition), deadline, None).await;
        let error = match self.member.open(&partition, to).await {
            Ok(reader) => {
                tracing::info!(%partition, start = ?to, "partition sought");
                self.start_fetching(partition, reader, to);
                return Ok(());
            }
            Err(error) => error,
        };
        tracing::warn!(%partition, %error, "cannot seek; reading on from the committed offset");
        let committed = match released.committed.first() {
            Some(&(_, offset)) => Some(offset),
            None => match self.member.committed(std::slice::from_ref(&partition)).await {
                Ok(committed) => committed.first().copied().flatten(),
                Err(_) => None,
            },
        };
        let back = committed
            .map(StartAt::Offset)
            .unwrap_or_else(|| self.runtime.options.auto_offset_reset.into());
        match self.member.open(&partition, back).await {
            Ok(reader) => self.start_fetching(partition.clone(), reader, back),
            // It would be held and not read: the subscription fails visibly instead.
            Err(again) => self.fail(format!("cannot open `{partition}` again: {again}")).await,
        }
        Err(ControlError::Seek { partition, error })
    }

    /// Commits what the service asked for (every partition held when `None`), each capped by
    /// the finished prefix; in manual mode what is not reached yet is remembered.
    async fn commit_requested(
        &mut self,
        offsets: Option<Vec<(TopicPartition, i64)>>,
    ) -> Result<CommitReport, ControlError> {
        let asked: Vec<(TopicPartition, i64)> = match offsets {
            Some(offsets) => offsets,
            None => self
                .fetchers
                .keys()
                .filter_map(|p| self.dispatch.committable(p).map(|o| (p.clone(), o)))
                .collect(),
        };
        let mut report = CommitReport::default();
        let mut due = Vec::new();
        for (partition, offset) in asked {
            if !self.fetchers.contains_key(&partition) {
                return Err(self.not_assigned(&partition));
            }
            let finished = self.dispatch.committable(&partition);
            let target = finished.map(|f| f.min(offset));
            if target.is_none_or(|t| t < offset) {
                report.waiting.push((partition.clone(), offset));
            }
            if self.runtime.options.commit_mode == CommitMode::Manual {
                let entry = self.requested.entry(partition.clone()).or_insert(offset);
                *entry = (*entry).max(offset);
            }
            if let Some(target) = target
                && self.last_committed.get(&partition) != Some(&target)
            {
                due.push((partition, target));
            }
        }
        self.commit_offsets_by(due.clone(), None).await.map_err(ControlError::Commit)?;
        report.committed = due;
        report.committed.sort();
        report.waiting.sort();
        Ok(report)
    }

    /// Commits `offsets`, giving up at `by` when one is given (a stop's deadline).
    async fn commit_offsets_by(
        &mut self,
        offsets: Vec<(TopicPartition, i64)>,
        by: Option<Instant>,
    ) -> Result<(), GroupError> {
        if offsets.is_empty() {
            return Ok(());
        }
        let commit = self.member.commit(&offsets);
        let committed = match by {
            None => commit.await,
            Some(by) => tokio::time::timeout_at(by, commit).await.unwrap_or_else(|_| {
                Err(GroupError::retriable(
                    &self.runtime.options.group,
                    "offset commit not answered by the stop's deadline",
                ))
            }),
        };
        match committed {
            Ok(()) => {
                Metrics::bump(&self.runtime.metrics.commits);
                self.runtime.telemetry.commits.increment(1);
                self.runtime.health.committed(&offsets);
                for (partition, offset) in offsets {
                    self.last_committed.insert(partition, offset);
                }
                Ok(())
            }
            Err(error) => {
                Metrics::bump(&self.runtime.metrics.commit_failures);
                self.runtime.telemetry.commit_failures.increment(1);
                self.runtime.health.error(format!("offset commit failed: {error}"));
                tracing::warn!(%error, "offset commit failed; will retry");
                Err(error)
            }
        }
    }

    /// Stops by `deadline`: handlers drain until [`STOP_RESERVE`] before it (at most a quarter
    /// of the time left), which leaves the rest for the abandonment to take effect, the final
    /// commit and leaving the group, each cut short at the deadline.
    async fn stop(&mut self, deadline: Instant) -> SubscriptionReport {
        // The partitions held, and those a step interrupted by the stop was releasing (their
        // fetch loops gone, their messages still in the dispatch).
        let mut partitions: Vec<TopicPartition> = self.fetchers.keys().cloned().collect();
        for partition in self.dispatch.partitions() {
            if !self.fetchers.contains_key(&partition) {
                partitions.push(partition);
            }
        }
        let reserve = STOP_RESERVE.min(deadline.saturating_duration_since(Instant::now()) / 4);
        let drain_until = deadline.checked_sub(reserve).unwrap_or(deadline);
        let Released { discarded, abandoned, committed } =
            self.release(&partitions, drain_until, Some(deadline)).await;
        let left_group = match tokio::time::timeout_at(deadline, self.member.leave()).await {
            Ok(Ok(())) => true,
            // A failed subscription left already.
            Ok(Err(_)) if self.failed => true,
            Ok(Err(error)) => {
                tracing::warn!(%error, "leaving the group failed");
                false
            }
            Err(_) => {
                tracing::warn!("leaving the group was not answered by the stop's deadline");
                false
            }
        };
        self.dispatch.close();
        SubscriptionReport {
            topic: self.runtime.topic.clone(),
            group: self.runtime.options.group.clone(),
            discarded,
            abandoned: abandoned.len(),
            abandoned_offsets: abandoned,
            committed,
            left_group,
        }
    }
}

/// Runs `step` unless a stop is requested first: then the step is dropped and the stop's
/// deadline returned.
async fn until_stopped(
    stop: &mut watch::Receiver<Option<Instant>>,
    step: impl Future<Output = ()>,
) -> Option<Instant> {
    tokio::select! {
        biased;
        deadline = requested_deadline(stop) => Some(deadline),
        () = step => None,
    }
}

/// Waits until a stop is requested and returns its deadline (now, if the bus went away without
/// one).
async fn requested_deadline(stop: &mut watch::Receiver<Option<Instant>>) -> Instant {
    match stop.wait_for(Option::is_some).await {
        Ok(deadline) => deadline.unwrap_or_else(Instant::now),
        Err(_) => Instant::now(),
    }
}

/// Partitions for a message: `t-0, t-1`.
fn list(partitions: &[TopicPartition]) -> String {
    partitions.iter().map(ToString::to_string).collect::<Vec<_>>().join(", ")
}
