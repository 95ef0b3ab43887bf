//! Drain: releasing partitions (a revoke, or shutdown) against a deadline. Their queued
//! messages above what was already handled are removed; the rest (running, and queued at or
//! below the highest offset a worker claimed) are waited for until the deadline, then the
//! queued ones removed and the running ones abandoned.
//!
//! Owns: [`KeyedDispatch::drain`], [`KeyedDispatch::drain_all`], [`DrainReport`] and
//! [`ABANDON_GRACE`].
//!
//! Invariants:
//! - **No handled message above an uncommitted one**, when the drain ends by its deadline:
//!   messages run in parallel across keys, so when a partition is released some of its messages
//!   may have been handled while earlier ones still wait in their keys' chains. Discarding
//!   those would leave a gap below handled messages, and the next owner (reading from the
//!   committed offset, the finished prefix) would handle them again. So a drain finishes the
//!   queued messages at or below the highest offset claimed and discards only those above it.
//! - **Abandonment.** At its deadline a drain marks the running messages of its partitions
//!   abandoned and signals their workers (through the per-worker control of `worker.rs`); the
//!   worker drops the future and the offset stays pending. A message that finishes just as it
//!   is abandoned stays uncommitted too: it was reported abandoned.
//! - A partition counts as draining while a drain of it runs, and stops when the drain ends or
//!   its future is dropped (`DrainGuard`). While it counts, the claims handed back for it are
//!   discarded and added to the drain's report.

use std::pin::pin;
use std::time::Duration;

use tokio::time::Instant;

use super::KeyedDispatch;
use super::shared::{Shared, Wake};
use crate::record::TopicPartition;

/// How long [`KeyedDispatch::drain`] waits, after its deadline, for the workers to drop the
/// futures it abandoned (they do at their next poll, unless a future blocks inside `poll`).
pub const ABANDON_GRACE: Duration = Duration::from_millis(100);

/// What [`KeyedDispatch::drain`] did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DrainReport {
    /// Messages queued and not started, removed unprocessed (their offsets stay uncommitted, so
    /// the next owner of the partition receives them).
    pub discarded: usize,
    /// Messages still running at the deadline: their processing futures were cancelled and
    /// their offsets stay uncommitted.
    pub abandoned: usize,
    /// The abandoned messages, sorted, for logging.
    pub abandoned_offsets: Vec<(TopicPartition, i64)>,
    /// Abandoned messages whose futures had still not been dropped [`ABANDON_GRACE`] after the
    /// deadline (a future blocking inside `poll`). Their workers stay busy until they return;
    /// the scope's shutdown names them.
    pub unresponsive: usize,
}

impl KeyedDispatch {
    /// Releases `partitions` (revoke): removes their queued messages above the highest offset
    /// a worker claimed (counted as `discarded`, left uncommitted), then waits until none of
    /// their messages is running or queued or `deadline` passes. At the deadline the queued
    /// ones are removed too and the ones still running are abandoned: their futures are
    /// dropped by the workers (waited for up to [`ABANDON_GRACE`]) and their offsets stay
    /// uncommitted.
    ///
    /// Afterwards [`KeyedDispatch::committable`] still answers for these partitions; call
    /// [`KeyedDispatch::forget`] once committed. Stop submitting a partition before draining
    /// it: messages submitted during the drain are not removed.
    pub async fn drain(&self, partitions: &[TopicPartition], deadline: Instant) -> DrainReport {
        let shared = &*self.handle.shared;
        let mut report = DrainReport::default();
        let mut guard = DrainGuard { shared, parts: Vec::new() };
        let mask = {
            let mut st = shared.state.lock();
            let mut mask = vec![false; st.parts.len()];
            for tp in partitions {
                if let Some(p) = st.find_part(&tp.topic, tp.partition)
                    && !mask[p]
                {
                    mask[p] = true;
                    guard.parts.push(p);
                }
            }
            for &p in &guard.parts {
                if let Some(part) = st.parts[p].as_mut() {
                    part.draining += 1;
                    part.finishing = true;
                }
            }
            report.discarded = st.discard_queued(&mask, true);
            let mut wake = Wake { room: st.room_for_head(), ..Wake::default() };
            wake.workers = st.ready.len().min(st.sleepers);
            st.sleepers -= wake.workers;
            drop(st);
            wake.run(shared);
            mask
        };
        let stopped = shared.wait_stopped(&guard.parts, deadline).await;
        if !stopped {
            let signals;
            let wake = {
                let mut st = shared.state.lock();
                for &p in &guard.parts {
                    if let Some(part) = st.parts[p].as_mut() {
                        part.finishing = false;
                    }
                }
                report.discarded += st.discard_queued(&mask, false);
                (report.abandoned_offsets, signals) = st.abandon(&mask);
                let mut wake = Wake { room: st.room_for_head(), ..Wake::default() };
                wake.workers = st.ready.len().min(st.sleepers);
                st.sleepers -= wake.workers;
                wake
            };
            wake.run(shared);
            report.abandoned = report.abandoned_offsets.len();
            for (worker, seq) in signals {
                if let Some(ctl) = shared.workers.get(worker) {
                    ctl.abandon(seq);
                }
            }
            let grace = Instant::now().max(deadline) + ABANDON_GRACE;
            if !shared.wait_stopped(&guard.parts, grace).await {
                let st = shared.state.lock();
                report.unresponsive = guard
                    .parts
                    .iter()
                    .filter_map(|&p| st.parts[p].as_ref())
                    .map(|part| part.running)
                    .sum();
            }
        }
        let mut st = shared.state.lock();
        for &p in &guard.parts {
            if let Some(part) = st.parts[p].as_mut() {
                report.discarded += std::mem::take(&mut part.late_discarded);
            }
        }
        drop(st);
        report
    }

    /// [`KeyedDispatch::drain`] of every partition the dispatch knows (shutdown).
    pub async fn drain_all(&self, deadline: Instant) -> DrainReport {
        let partitions = self.partitions();
        self.drain(&partitions, deadline).await
    }
}

/// Marks partitions as draining while a drain runs (even if its future is dropped).
struct DrainGuard<'a> {
    shared: &'a Shared,
    parts: Vec<usize>,
}

impl Drop for DrainGuard<'_> {
    fn drop(&mut self) {
        let mut st = self.shared.state.lock();
        for &p in &self.parts {
            if let Some(part) = st.parts[p].as_mut() {
                part.draining -= 1;
                part.finishing = false;
            }
            st.release_part(p);
        }
    }
}

impl Shared {
    /// Waits until no message of `parts` is running or queued, or `deadline`; true when none
    /// is.
    async fn wait_stopped(&self, parts: &[usize], deadline: Instant) -> bool {
        loop {
            let notified = self.drained.notified();
            let mut notified = pin!(notified);
            notified.as_mut().enable();
            if self.state.lock().stopped(parts) {
                return true;
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                return self.state.lock().stopped(parts);
            }
        }
    }
}
