//! The producer's health: which partitions are failing or retrying, and why.
//!
//! Owns: [`HealthBoard`]. A partition is troubled from its first failed produce until its next
//! acknowledged one. It makes the producer `Degraded` while it is retrying, and for one delivery
//! timeout after its last failure (so a failure that nobody retries stops counting once the
//! records it concerned are long resolved). The same board gives each partition's state for
//! the bus's health report.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bus_core::{health::Health, health::ProducerState};
use parking_lot::Mutex;
use tokio::time::Instant;

/// The troubled partitions.
pub(super) struct HealthBoard {
    window: Duration,
    /// How many partitions are troubled (lets the healthy path skip the lock).
    count: AtomicUsize,
    troubled: Mutex<HashMap<(String, i32), Trouble>>,
}

struct Trouble {
    reason: String,
    at: Instant,
    retrying: bool,
}

impl HealthBoard {
    /// A board where a failure counts for `window` after it happened.
    pub(super) fn new(window: Duration) -> Self {
        HealthBoard { window, count: AtomicUsize::new(0), troubled: Mutex::new(HashMap::new()) }
    }

    /// A produce to the partition failed and will be retried.
    pub(super) fn retrying(&self, topic: &str, partition: i32, reason: &str) {
        self.note(topic, partition, reason, true);
    }

    /// A produce to the partition failed for good.
    pub(super) fn failed(&self, topic: &str, partition: i32, reason: &str) {
        self.note(topic, partition, reason, false);
    }

    fn note(&self, topic: &str, partition: i32, reason: &str, retrying: bool) {
        let mut troubled = self.troubled.lock();
        troubled.insert(
            (topic.to_owned(), partition),
            Trouble { reason: reason.to_owned(), at: Instant::now(), retrying },
        );
        self.count.store(troubled.len(), Ordering::Release);
    }

    /// A produce to the partition was acknowledged.
    pub(super) fn succeeded(&self, topic: &str, partition: i32) {
        if self.count.load(Ordering::Acquire) == 0 {
            return;
        }
        let mut troubled = self.troubled.lock();
        troubled.retain(|(t, p), _| !(t == topic && *p == partition));
        self.count.store(troubled.len(), Ordering::Release);
    }

    /// The partition's state and last error (`Ready` unless it is troubled now).
    pub(super) fn state_of(&self, topic: &str, partition: i32) -> (ProducerState, Option<String>) {
        if self.count.load(Ordering::Acquire) == 0 {
            return (ProducerState::Ready, None);
        }
        let troubled = self.troubled.lock();
        let Some(trouble) = troubled.get(&(topic.to_owned(), partition)) else {
            return (ProducerState::Ready, None);
        };
        if trouble.retrying {
            (ProducerState::Retrying, Some(trouble.reason.clone()))
        } else if Instant::now().saturating_duration_since(trouble.at) < self.window {
            (ProducerState::Failed, Some(trouble.reason.clone()))
        } else {
            (ProducerState::Ready, None)
        }
    }

    /// `Degraded` naming the most recent trouble, or `Ready`.
    pub(super) fn health(&self) -> Health {
        if self.count.load(Ordering::Acquire) == 0 {
            return Health::Ready;
        }
        let troubled = self.troubled.lock();
        let now = Instant::now();
        let current: Vec<_> = troubled
            .iter()
            .filter(|(_, t)| t.retrying || now.saturating_duration_since(t.at) < self.window)
            .collect();
        let Some(((topic, partition), latest)) = current.iter().max_by_key(|(_, t)| t.at) else {
            return Health::Ready;
        };
        let state = if latest.retrying { "retrying" } else { "failed" };
        let others = match current.len() - 1 {
            0 => String::new(),
            n => format!(" (and {n} more partition(s) in trouble)"),
        };
        Health::Degraded {
            reason: format!(
                "producing to `{topic}` partition {partition} {state}: {}{others}",
                latest.reason
            ),
        }
    }
}
