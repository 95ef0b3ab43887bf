//! What a service asks of a running subscription: seek, pause and resume, commit.
//!
//! Owns: [`ConsumerControl`] (the cloneable handle, from
//! [`Subscription::control`](super::Subscription::control)), the requests it sends to the
//! control task (`Command`), [`CommitReport`] and [`ControlError`].
//!
//! Invariants:
//! - Seeks and commits are carried out by the subscription's control task, in turn with group
//!   events, so they never race a rebalance: a partition is sought or committed only while this
//!   member holds it.
//! - Pause and resume change the subscription's pause state directly (see `pause`); they do not
//!   wait for the control task.
//! - The requests channel is bounded: a service sending faster than the control task serves
//!   waits for room.

use std::sync::Arc;

use tokio::sync::{mpsc, oneshot};

use super::pause::Pauses;
use crate::backend::GroupError;
use crate::record::{Message, TopicPartition};
use crate::start::StartAt;

/// Requests waiting for the control task, at most.
pub(super) const COMMANDS: usize = 64;

/// What a commit request did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CommitReport {
    /// The offsets committed by this request (the next offset to read, per partition).
    pub committed: Vec<(TopicPartition, i64)>,
    /// The offsets asked for that the finished messages do not reach yet (a message before
    /// them is queued or running): in manual mode they are committed as those messages finish
    /// (see [`ConsumerControl::committed`]), never past a message that did not.
    pub waiting: Vec<(TopicPartition, i64)>,
}

/// A request to a running subscription that could not be carried out.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ControlError {
    /// The partition is not assigned to this member of its group (now).
    #[error("`{partition}` is not assigned to this member of group `{group}`")]
    NotAssigned {
        /// The group.
        group: String,
        /// The partition.
        partition: TopicPartition,
    },
    /// The subscription is stopping or stopped.
    #[error("the subscription of group `{group}` is stopped")]
    Stopped {
        /// The group.
        group: String,
    },
    /// Committing failed (the offsets stay as they were; the request may be repeated).
    #[error("commit failed: {0}")]
    Commit(GroupError),
    /// The partition could not be opened at the new position: it is read from where it was.
    #[error("seeking `{partition}` failed: {error}")]
    Seek {
        /// The partition.
        partition: TopicPartition,
        /// Why.
        error: GroupError,
    },
    /// An offset out of range (negative).
    #[error("`{partition}`: offset {offset} is negative")]
    InvalidOffset {
        /// The partition.
        partition: TopicPartition,
        /// The offset given.
        offset: i64,
    },
}

/// A request for the control task.
#[derive(Debug)]
pub(super) enum Command {
    /// Move `partition` to `to`.
    Seek {
        partition: TopicPartition,
        to: StartAt,
        reply: oneshot::Sender<Result<(), ControlError>>,
    },
    /// Commit up to these offsets (each capped by the finished prefix), or, when `None`, the
    /// finished prefix of every partition held.
    Commit {
        offsets: Option<Vec<(TopicPartition, i64)>>,
        reply: oneshot::Sender<Result<CommitReport, ControlError>>,
    },
    /// The offsets committed last, per partition held.
    Committed { reply: oneshot::Sender<Vec<(TopicPartition, i64)>> },
}

/// A handle on a running subscription: seek its partitions, pause and resume its fetching,
/// commit its offsets by hand. Cheap to clone; it can be moved into the subscription's own
/// handler. Once the subscription stops, requests fail with [`ControlError::Stopped`] (pause
/// and resume do nothing).
#[derive(Debug, Clone)]
pub struct ConsumerControl {
    group: Arc<str>,
    commands: mpsc::Sender<Command>,
    pauses: Arc<Pauses>,
}

impl ConsumerControl {
    pub(super) fn new(group: &str, commands: mpsc::Sender<Command>, pauses: Arc<Pauses>) -> Self {
        ConsumerControl { group: Arc::from(group), commands, pauses }
    }

    fn stopped(&self) -> ControlError {
        ControlError::Stopped { group: self.group.to_string() }
    }

    async fn ask<T>(
        &self,
        command: impl FnOnce(oneshot::Sender<T>) -> Command,
    ) -> Result<T, ControlError> {
        let (reply, answer) = oneshot::channel();
        self.commands.send(command(reply)).await.map_err(|_| self.stopped())?;
        answer.await.map_err(|_| self.stopped())
    }

    /// Moves `partition` (assigned to this member) to `to`. The partition's fetch loop stops,
    /// its messages fetched and not started are dropped, its running handlers finish (up to the
    /// rebalance timeout; those still running then are abandoned), the finished prefix is
    /// committed as the commit mode says, and reading starts again at `to`. Nothing is
    /// committed on the seek's behalf: until a message after the new position is finished and
    /// committed, a restart resumes at the old committed offset.
    ///
    /// # Errors
    ///
    /// [`ControlError::NotAssigned`], [`ControlError::Seek`] (the partition goes on from where
    /// it was), [`ControlError::InvalidOffset`], [`ControlError::Stopped`].
    pub async fn seek(&self, partition: &TopicPartition, to: StartAt) -> Result<(), ControlError> {
        if let StartAt::Offset(offset) = to
            && offset < 0
        {
            return Err(ControlError::InvalidOffset { partition: partition.clone(), offset });
        }
        let partition = partition.clone();
        self.ask(|reply| Command::Seek { partition, to, reply }).await?
    }

    /// Stops fetching `partition` (whether or not it is assigned now): messages fetched already
    /// are still handled; membership and heartbeats go on. Resumed by
    /// [`ConsumerControl::resume`] from where it stopped.
    pub fn pause(&self, partition: &TopicPartition) {
        self.pauses.pause(Some(partition));
    }

    /// Resumes fetching `partition` (it stays paused while the whole subscription is).
    pub fn resume(&self, partition: &TopicPartition) {
        self.pauses.resume(Some(partition));
    }

    /// Stops fetching every partition of the subscription, those assigned later too.
    pub fn pause_all(&self) {
        self.pauses.pause(None);
    }

    /// Resumes the whole subscription and every partition paused one by one.
    pub fn resume_all(&self) {
        self.pauses.resume(None);
    }

    /// Whether the whole subscription is paused, and the partitions paused one by one.
    pub fn paused(&self) -> (bool, Vec<TopicPartition>) {
        self.pauses.paused()
    }

    /// Commits `partition` up to `offset` (the next offset to read), or less: never past a
    /// message that is not finished. In manual mode, what the finished messages do not reach
    /// yet is committed as they finish ([`CommitReport::waiting`]).
    ///
    /// # Errors
    ///
    /// [`ControlError::NotAssigned`], [`ControlError::Commit`] naming Kafka's error,
    /// [`ControlError::InvalidOffset`], [`ControlError::Stopped`].
    pub async fn commit(
        &self,
        partition: &TopicPartition,
        offset: i64,
    ) -> Result<CommitReport, ControlError> {
        if offset < 0 {
            return Err(ControlError::InvalidOffset { partition: partition.clone(), offset });
        }
        let offsets = Some(vec![(partition.clone(), offset)]);
        self.ask(|reply| Command::Commit { offsets, reply }).await?
    }

    /// Commits `message` and everything before it in its partition (up to its offset + 1),
    /// as [`ConsumerControl::commit`] does: called from the message's own handler, the commit
    /// waits until the handler has returned successfully.
    ///
    /// # Errors
    ///
    /// As [`ConsumerControl::commit`].
    pub async fn commit_message(&self, message: &Message) -> Result<CommitReport, ControlError> {
        let partition = TopicPartition::new(Arc::clone(&message.topic), message.partition);
        self.commit(&partition, message.offset.saturating_add(1)).await
    }

    /// Commits the finished prefix of every partition held now.
    ///
    /// # Errors
    ///
    /// [`ControlError::Commit`], [`ControlError::Stopped`].
    pub async fn commit_all(&self) -> Result<CommitReport, ControlError> {
        self.ask(|reply| Command::Commit { offsets: None, reply }).await?
    }

    /// The offsets this member committed last (the next offset to read), per partition held.
    ///
    /// # Errors
    ///
    /// [`ControlError::Stopped`].
    pub async fn committed(&self) -> Result<Vec<(TopicPartition, i64)>, ControlError> {
        self.ask(|reply| Command::Committed { reply }).await
    }
}
