//! Pausing and resuming a subscription's fetching, per partition or for the whole subscription.
//!
//! Owns: `Pauses` (the subscription's pause state, written by its [`ConsumerControl`]s) and
//! `PauseWatch` (what one fetch loop reads).
//!
//! Invariants:
//! - A partition is paused while the subscription is paused or the partition itself is. A
//!   paused partition's fetch loop asks for nothing more (a fetch waiting for records is
//!   dropped, which loses nothing: readers are cancel-safe); what was fetched already is still
//!   handled and committed. Group membership (heartbeats, rebalances) is not affected.
//! - The state belongs to the subscription, not to an assignment: a paused partition that is
//!   revoked and assigned again is still paused, and partitions assigned while the whole
//!   subscription is paused start paused.
//!
//! [`ConsumerControl`]: super::ConsumerControl

use std::collections::BTreeSet;

use tokio::sync::watch;

use crate::record::TopicPartition;

/// What is paused.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub(super) struct PauseState {
    /// The whole subscription.
    all: bool,
    /// These partitions.
    partitions: BTreeSet<TopicPartition>,
}

impl PauseState {
    fn holds(&self, partition: &TopicPartition) -> bool {
        self.all || self.partitions.contains(partition)
    }
}

/// A subscription's pause state.
#[derive(Debug)]
pub(super) struct Pauses(watch::Sender<PauseState>);

impl Pauses {
    pub(super) fn new() -> Self {
        Pauses(watch::Sender::new(PauseState::default()))
    }

    /// Pauses `partition`, or the whole subscription when `None`.
    pub(super) fn pause(&self, partition: Option<&TopicPartition>) {
        self.0.send_if_modified(|state| match partition {
            None => !std::mem::replace(&mut state.all, true),
            Some(partition) => state.partitions.insert(partition.clone()),
        });
    }

    /// Resumes `partition` (which stays paused while the whole subscription is), or, when
    /// `None`, the subscription and every partition.
    pub(super) fn resume(&self, partition: Option<&TopicPartition>) {
        self.0.send_if_modified(|state| match partition {
            None => {
                let changed = state.all || !state.partitions.is_empty();
                *state = PauseState::default();
                changed
            }
            Some(partition) => state.partitions.remove(partition),
        });
    }

    /// Whether the whole subscription is paused, and the partitions paused one by one.
    pub(super) fn paused(&self) -> (bool, Vec<TopicPartition>) {
        let state = self.0.borrow();
        (state.all, state.partitions.iter().cloned().collect())
    }

    /// What `partition`'s fetch loop watches.
    pub(super) fn watch(&self, partition: TopicPartition) -> PauseWatch {
        PauseWatch { state: self.0.subscribe(), partition }
    }
}

/// One partition's view of the pause state.
#[derive(Debug)]
pub(super) struct PauseWatch {
    state: watch::Receiver<PauseState>,
    partition: TopicPartition,
}

impl PauseWatch {
    /// Whether the partition is paused now.
    pub(super) fn is_paused(&self) -> bool {
        self.state.borrow().holds(&self.partition)
    }

    /// Resolves once the partition is paused (never, if the state is gone).
    pub(super) async fn paused(&mut self) {
        let partition = &self.partition;
        if self.state.wait_for(|s| s.holds(partition)).await.is_err() {
            std::future::pending::<()>().await;
        }
    }

    /// Resolves once the partition is not paused (at once, if the state is gone).
    pub(super) async fn resumed(&mut self) {
        let partition = &self.partition;
        let _ = self.state.wait_for(|s| !s.holds(partition)).await;
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

    use super::*;

    #[test]
    fn a_partition_is_paused_while_it_or_the_subscription_is() {
        let pauses = Pauses::new();
        let (p0, p1) = (TopicPartition::new("t", 0), TopicPartition::new("t", 1));
        let (w0, w1) = (pauses.watch(p0.clone()), pauses.watch(p1.clone()));
        pauses.pause(Some(&p0));
        assert!(w0.is_paused() && !w1.is_paused());
        pauses.pause(None);
        assert!(w0.is_paused() && w1.is_paused());
        pauses.resume(Some(&p1));
        assert!(w1.is_paused(), "the subscription is still paused");
        pauses.resume(None);
        assert!(!w0.is_paused() && !w1.is_paused());
        assert_eq!(pauses.paused(), (false, vec![]));
    }
}
