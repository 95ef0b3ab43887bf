//! What a subscription cannot get past, as its health: partitions it cannot read, messages it
//! cannot dead-letter (their keys blocked while retrying), and the failure of the subscription
//! itself.
//!
//! Owns: `SubscriptionHealth`, shared by the subscription's control task, fetch loops and
//! dispatch workers, and read by the bus's `health` (and `Subscription::failed_partitions`).
//!
//! Invariants: an entry is set by the part that is stuck and cleared by the same part when it
//! gets past (a fetch succeeds past the offset, the dead letter is stored); a released
//! partition's entries are cleared with it. Setting an entry that is already set (a retry)
//! does not count again in the metrics.

use std::collections::BTreeMap;
use std::sync::Arc;

use parking_lot::Mutex;

use crate::health::PartitionFailure;
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
}

impl SubscriptionHealth {
    pub(crate) fn new() -> Arc<Self> {
        Arc::new(SubscriptionHealth::default())
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
        self.state.lock().failed = Some(reason);
    }

    /// Forgets what is about `partition` (released).
    pub(crate) fn forget(&self, partition: &TopicPartition) {
        let mut state = self.state.lock();
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
