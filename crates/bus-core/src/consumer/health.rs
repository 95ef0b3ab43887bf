//! What a subscription cannot get past, as its health: partitions it cannot read, messages it
//! cannot dead-letter (their keys blocked while retrying), and the failure of the subscription
//! itself.
//!
//! Owns: `SubscriptionHealth`, shared by the subscription's control task, fetch loops and
//! dispatch workers, and read by the bus's `health` (and `Subscription::failed_partitions`).
//!
//! It also keeps how the subscription is doing when nothing is wrong: its group state, its
//! assigned partitions with their lag (high watermark minus the committed offset, and minus the
//! position, refreshed by each fetch), the last error and when it last made progress: the
//! subscription's part of the bus's [`HealthReport`](crate::health::HealthReport).
//!
//! Invariants: an entry is set by the part that is stuck and cleared by the same part when it
//! gets past (a fetch succeeds past the offset, the dead letter is stored); a released
//! partition's entries are cleared with it. Setting an entry that is already set (a retry)
//! does not count again in the metrics. Progress is noted once per fetched batch and per
//! commit, never per message.

use std::collections::BTreeMap;
use std::sync::Arc;

use parking_lot::Mutex;
use tokio::time::Instant;

use crate::health::{GroupState, PartitionFailure, PartitionStatus, SubscriptionStatus};
use crate::metrics::Metrics;
use crate::record::TopicPartition;

/// The troubles of one subscription.
#[derive(Debug, Default)]
pub(crate) struct SubscriptionHealth {
    state: Mutex<State>,
}

#[derive(Debug, Default)]
struct State {
    partitions: BTreeMap<TopicPartition, PartitionFailure>,
    /// Messages whose dead-lettering keeps failing: (partition, offset) -> the error.
    dead_letters: BTreeMap<(TopicPartition, i64), String>,
    failed: Option<String>,
    group: GroupState,
    /// The assigned partitions and their progress.
    assigned: BTreeMap<TopicPartition, Progress>,
    last_error: Option<String>,
    /// When the subscription last made progress (or was caught up); `None` before its first
    /// assignment.
    progressed: Option<Instant>,
}

/// One assigned partition's progress.
#[derive(Debug, Default, Clone, Copy)]
struct Progress {
    high_watermark: Option<i64>,
    position: Option<i64>,
    committed: Option<i64>,
}

impl Progress {
    fn lag(&self) -> Option<i64> {
        Some(self.high_watermark?.saturating_sub(self.committed.unwrap_or(0)).max(0))
    }

    fn position_lag(&self) -> Option<i64> {
        Some(self.high_watermark?.saturating_sub(self.position?).max(0))
    }
}

impl SubscriptionHealth {
    pub(crate) fn new() -> Arc<Self> {
        Arc::new(SubscriptionHealth::default())
    }

    /// The group state changed.
    pub(crate) fn group(&self, group: GroupState) {
        let mut state = self.state.lock();
        if state.group != GroupState::Failed {
            state.group = group;
        }
    }

    /// `partitions` were assigned (their progress starts unknown).
    pub(crate) fn assigned(&self, partitions: &[TopicPartition]) {
        let mut state = self.state.lock();
        for partition in partitions {
            state.assigned.entry(partition.clone()).or_default();
        }
        state.progressed.get_or_insert_with(Instant::now);
    }

    /// What a fetch of `partition` saw; returns its lag and position lag (for the gauges). The
    /// subscription progressed when the position moved or it is caught up.
    pub(crate) fn fetched(
        &self,
        partition: &TopicPartition,
        high_watermark: Option<i64>,
        position: Option<i64>,
    ) -> (Option<i64>, Option<i64>, u64) {
        let mut state = self.state.lock();
        let Some(progress) = state.assigned.get_mut(partition) else { return (None, None, 0) };
        let moved = position.is_some() && position != progress.position;
        progress.high_watermark = high_watermark.or(progress.high_watermark);
        progress.position = position.or(progress.position);
        let caught_up = progress.position_lag() == Some(0);
        let lags = (progress.lag(), progress.position_lag());
        if moved || caught_up {
            state.progressed = Some(Instant::now());
        }
        let backlog =
            state.assigned.values().filter_map(Progress::lag).map(i64::unsigned_abs).sum();
        (lags.0, lags.1, backlog)
    }

    /// Offsets were committed.
    pub(crate) fn committed(&self, offsets: &[(TopicPartition, i64)]) {
        let mut state = self.state.lock();
        for (partition, offset) in offsets {
            if let Some(progress) = state.assigned.get_mut(partition) {
                progress.committed = Some(*offset);
            }
        }
    }

    /// The last error the subscription met (kept until a later one replaces it).
    pub(crate) fn error(&self, error: String) {
        self.state.lock().last_error = Some(error);
    }

    /// The subscription's status for the health report.
    pub(crate) fn status(&self, topic: &str, group: &str) -> SubscriptionStatus {
        let state = self.state.lock();
        let partitions: Vec<PartitionStatus> = state
            .assigned
            .iter()
            .map(|(partition, p)| PartitionStatus {
                partition: partition.clone(),
                high_watermark: p.high_watermark,
                position: p.position,
                committed: p.committed,
                lag: p.lag(),
                position_lag: p.position_lag(),
                failure: state.partitions.get(partition).cloned(),
            })
            .collect();
        SubscriptionStatus {
            topic: topic.to_owned(),
            group: group.to_owned(),
            state: state.group,
            backlog: partitions.iter().filter_map(|p| p.lag).map(|l| l.unsigned_abs()).sum(),
            partitions,
            last_error: state.last_error.clone(),
            failure: state.failed.clone(),
            since_progress: state.progressed.map(|at| at.elapsed()),
        }
    }

    /// Records that `failure.partition` cannot make progress (counted once per episode in
    /// `partitions_failed`).
    pub(crate) fn partition_failed(&self, failure: PartitionFailure, metrics: &Metrics) {
        let mut state = self.state.lock();
        let new = !state.partitions.contains_key(&failure.partition);
        state.partitions.insert(failure.partition.clone(), failure);
        if new {
            Metrics::bump(&metrics.partitions_failed);
        }
    }

    /// The partition made progress again (or was released).
    pub(crate) fn partition_recovered(&self, partition: &TopicPartition) {
        let mut state = self.state.lock();
        if !state.partitions.is_empty() {
            state.partitions.remove(partition);
        }
    }

    /// A message's dead-lettering failed and is being retried (its key stays blocked).
    pub(crate) fn dead_letter_failing(
        &self,
        partition: &TopicPartition,
        offset: i64,
        error: String,
    ) {
        self.state.lock().dead_letters.insert((partition.clone(), offset), error);
    }

    /// The message was dead-lettered, or abandoned.
    pub(crate) fn dead_letter_done(&self, partition: &TopicPartition, offset: i64) {
        let mut state = self.state.lock();
        if !state.dead_letters.is_empty() {
            state.dead_letters.remove(&(partition.clone(), offset));
        }
    }

    /// The subscription failed for good (it stopped consuming).
    pub(crate) fn failed(&self, reason: String) {
        let mut state = self.state.lock();
        state.last_error = Some(reason.clone());
        state.failed = Some(reason);
        state.group = GroupState::Failed;
    }

    /// Forgets what is about `partition` (released).
    pub(crate) fn forget(&self, partition: &TopicPartition) {
        let mut state = self.state.lock();
        state.assigned.remove(partition);
        state.partitions.remove(partition);
        state.dead_letters.retain(|(p, _), _| p != partition);
    }

    /// The partitions that cannot make progress.
    pub(crate) fn failed_partitions(&self) -> Vec<PartitionFailure> {
        self.state.lock().partitions.values().cloned().collect()
    }

    /// What is wrong, in a sentence per trouble; `None` when nothing is.
    pub(crate) fn trouble(&self) -> Option<String> {
        let state = self.state.lock();
        let mut parts: Vec<String> = Vec::new();
        if let Some(reason) = &state.failed {
            parts.push(format!("failed: {reason}"));
        }
        parts.extend(state.partitions.values().map(|f| format!("partition {f}")));
        parts.extend(state.dead_letters.iter().map(|((partition, offset), error)| {
            format!("dead-lettering `{partition}` offset {offset} keeps failing: {error}")
        }));
        (!parts.is_empty()).then(|| parts.join("; "))
    }
}
