//! Keyed dispatch: the consumer runtime hands fetched batches to a [`KeyedDispatch`], which runs
//! a processing function on them with per-key FIFO order, cross-key parallelism up to a
//! concurrency, a bound on messages in flight, and per-partition commit tracking.
//!
//! Owns: [`KeyedDispatch`] and its worker tasks (`worker-<i>` in the scope it is started in),
//! [`DispatchConfig`], [`Processed`], [`ProcessFn`], [`DrainReport`], [`DispatchStats`],
//! [`SubmitError`] and [`dispatch_key`].
//!
//! One file per part; each states the invariants it enforces:
//! - `mod.rs` — the [`KeyedDispatch`] handle: start, queries, close; [`DispatchConfig`] and
//!   [`DispatchStats`].
//! - `process.rs` — what runs per message: [`Process`], [`ProcessFn`], [`Processed`], and
//!   [`dispatch_key`], which decides the messages a message is ordered with.
//! - `state.rs` — the locked state machine: slots, key chains, the ready queue, partitions and
//!   their [`CommitTracker`](crate::commit::CommitTracker)s, admission, claims, how a message
//!   ends (per-key FIFO, commit safety).
//! - `shared.rs` — what the handles and the workers share: the one mutex over the state, the
//!   notifications, and the wake-ups sent once the lock is released.
//! - `submit.rs` — [`KeyedDispatch::submit`]: admission first come first served, enqueueing in
//!   pieces (the bound on messages in flight).
//! - `worker.rs` — the worker loop, its claims and its per-worker abandon control (supervised
//!   workers, claims, the lock-free first poll).
//! - `drain.rs` — [`KeyedDispatch::drain`]: discard, wait, abandon at the deadline
//!   ([`DrainReport`], [`ABANDON_GRACE`]).

mod drain;
mod process;
mod shared;
mod state;
mod submit;
mod worker;

use std::fmt;
use std::sync::Arc;

use bus_supervisor::{Scope, SpawnError};

pub use self::drain::{ABANDON_GRACE, DrainReport};
pub use self::process::{Process, ProcessFn, Processed, dispatch_key};
use self::shared::Shared;
pub use self::submit::SubmitError;
use self::worker::worker;
use crate::options::SubscribeOptions;
use crate::record::TopicPartition;

/// Keyed dispatch: per-key FIFO, cross-key parallelism up to `concurrency`, at most
/// `max_in_flight` messages accepted and not finished, and per-partition commit tracking.
/// See the module documentation for its parts and their invariants.
///
/// Cheap to clone (a shared handle). Dropping the last handle closes it.
#[derive(Clone)]
pub struct KeyedDispatch {
    handle: Arc<Handle>,
}

/// Closes the dispatch when the last [`KeyedDispatch`] goes away (the workers hold only
/// [`Shared`]).
struct Handle {
    shared: Arc<Shared>,
}

impl Drop for Handle {
    fn drop(&mut self) {
        self.shared.close();
    }
}

impl fmt::Debug for KeyedDispatch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KeyedDispatch")
            .field("config", &self.handle.shared.config)
            .field("stats", &self.stats())
            .finish()
    }
}

impl KeyedDispatch {
    /// Starts `config.concurrency` workers, named `worker-0` … in `scope`, that run `process`.
    ///
    /// A concurrency or bound of zero is taken as one.
    ///
    /// # Errors
    ///
    /// The [`SpawnError`] of a worker that could not be spawned (the scope is closed, or there
    /// is no runtime); the workers already started exit.
    #[track_caller]
    pub fn start(
        scope: &Scope,
        config: DispatchConfig,
        process: ProcessFn,
    ) -> Result<KeyedDispatch, SpawnError> {
        KeyedDispatch::start_with(scope, config, process)
    }

    /// As [`KeyedDispatch::start`], with a [`Process`] of any type: its futures are polled in
    /// place by the workers, not boxed.
    ///
    /// # Errors
    ///
    /// As for [`KeyedDispatch::start`].
    #[track_caller]
    pub fn start_with<P: Process>(
        scope: &Scope,
        config: DispatchConfig,
        process: P,
    ) -> Result<KeyedDispatch, SpawnError> {
        let config = config.normalized();
        let process = Arc::new(process);
        let shared = Arc::new(Shared::new(config, scope.token()));
        let dispatch = KeyedDispatch { handle: Arc::new(Handle { shared: Arc::clone(&shared) }) };
        for i in 0..config.concurrency {
            // On error `dispatch` drops, which closes it, so the workers already started exit.
            scope
                .spawn(format!("worker-{i}"), worker(Arc::clone(&shared), Arc::clone(&process), i))?
                .detach();
        }
        Ok(dispatch)
    }

    /// The configuration in effect (after normalisation).
    pub fn config(&self) -> DispatchConfig {
        self.handle.shared.config
    }

    /// The partitions the dispatch tracks (submitted and not forgotten).
    pub fn partitions(&self) -> Vec<TopicPartition> {
        let st = self.handle.shared.state.lock();
        st.parts.iter().flatten().filter(|p| !p.forgotten).map(|p| p.tp.clone()).collect()
    }

    /// The commit position of `partition`: its lowest offset not done, or the last submitted +
    /// 1 when all are done. `None` when nothing of it was submitted (or it was forgotten).
    pub fn committable(&self, partition: &TopicPartition) -> Option<i64> {
        let st = self.handle.shared.state.lock();
        let p = st.find_part(&partition.topic, partition.partition)?;
        st.parts[p].as_ref()?.tracker.committable()
    }

    /// The commit position of every tracked partition that has one, sorted by partition.
    pub fn committable_all(&self) -> Vec<(TopicPartition, i64)> {
        let mut all: Vec<(TopicPartition, i64)> = {
            let st = self.handle.shared.state.lock();
            st.parts
                .iter()
                .flatten()
                .filter(|p| !p.forgotten)
                .filter_map(|p| Some((p.tp.clone(), p.tracker.committable()?)))
                .collect()
        };
        all.sort();
        all
    }

    /// Records `offset` of `partition` as done without a message: the last offset of a batch
    /// that could not be read and was dead-lettered whole, so that the commit position passes
    /// it once everything before it is done. False (nothing recorded) when `offset` is not
    /// above the last offset submitted.
    pub fn skip(&self, partition: &TopicPartition, offset: i64) -> bool {
        let mut st = self.handle.shared.state.lock();
        let p = st.part_for(&partition.topic, partition.partition);
        match st.parts[p].as_mut() {
            Some(part) => part.tracker.submit(offset) && part.tracker.mark_done(offset),
            None => false,
        }
    }

    /// The offsets of `partition` submitted and not done (queued, running, retained, discarded
    /// or abandoned).
    pub fn pending(&self, partition: &TopicPartition) -> usize {
        let st = self.handle.shared.state.lock();
        st.find_part(&partition.topic, partition.partition)
            .and_then(|p| st.parts[p].as_ref())
            .map_or(0, |p| p.tracker.pending())
    }

    /// Drops the tracker of `partition` (after it was drained and committed). A later
    /// submission for it starts a new tracker. Returns false when it was not tracked.
    pub fn forget(&self, partition: &TopicPartition) -> bool {
        let mut st = self.handle.shared.state.lock();
        let Some(p) = st.find_part(&partition.topic, partition.partition) else {
            return false;
        };
        if let Some(part) = st.parts[p].as_mut() {
            part.forgotten = true;
            part.tracker.reset();
        }
        st.release_part(p);
        true
    }

    /// Stops admitting (submit fails from now on), removes the queued messages (uncommitted)
    /// and lets the workers exit once their current message has ended. Running messages are not
    /// interrupted: drain first for a deadline. Returns the number of messages removed.
    /// Idempotent.
    pub fn close(&self) -> usize {
        self.handle.shared.close()
    }

    /// Whether [`KeyedDispatch::close`] was called (or the scope cancelled).
    pub fn is_closed(&self) -> bool {
        self.handle.shared.scope_token.is_cancelled() || self.handle.shared.state.lock().closed
    }

    /// Messages accepted and not finished (queued or running).
    pub fn in_flight(&self) -> usize {
        let st = self.handle.shared.state.lock();
        st.in_flight + st.incoming
    }

    /// Messages running now.
    pub fn running(&self) -> usize {
        self.handle.shared.state.lock().stats.running
    }

    /// Messages processed with [`Processed::Done`] so far.
    pub fn processed(&self) -> u64 {
        self.handle.shared.state.lock().stats.processed
    }

    /// All counters at once.
    pub fn stats(&self) -> DispatchStats {
        let st = self.handle.shared.state.lock();
        DispatchStats { in_flight: st.in_flight + st.incoming, ..st.stats }
    }
}

/// How a [`KeyedDispatch`] runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DispatchConfig {
    /// Workers: messages processed at once, across keys (at least 1).
    pub concurrency: usize,
    /// Whether messages with the same dispatch key are processed one at a time in order. Off:
    /// every message is independent.
    pub ordering_by_key: bool,
    /// Messages accepted and not finished (queued or running) at most (at least 1).
    pub max_in_flight: usize,
}

impl DispatchConfig {
    /// The dispatch part of a subscription's options.
    pub fn from_options(options: &SubscribeOptions) -> Self {
        DispatchConfig {
            concurrency: options.concurrency,
            ordering_by_key: options.ordering_by_key,
            max_in_flight: options.max_in_flight,
        }
    }

    fn normalized(self) -> Self {
        DispatchConfig {
            concurrency: self.concurrency.max(1),
            ordering_by_key: self.ordering_by_key,
            max_in_flight: self.max_in_flight.max(1),
        }
    }
}

impl Default for DispatchConfig {
    fn default() -> Self {
        DispatchConfig::from_options(&SubscribeOptions::default())
    }
}

/// Counters of a [`KeyedDispatch`], read together.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DispatchStats {
    /// Messages accepted and not finished (queued or running).
    pub in_flight: usize,
    /// Messages running now.
    pub running: usize,
    /// Messages processed with [`Processed::Done`].
    pub processed: u64,
    /// Messages processed with [`Processed::Retain`].
    pub retained: u64,
    /// Messages whose processing panicked (kept uncommitted, like retained ones).
    pub panicked: u64,
    /// Queued messages removed by a drain or close.
    pub discarded: u64,
    /// Running messages abandoned by a drain.
    pub abandoned: u64,
    /// Messages skipped because their offset was not above the last one submitted for their
    /// partition (a redelivery of something already handed out).
    pub skipped: u64,
}
