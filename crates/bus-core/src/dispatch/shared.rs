//! What the handles and the workers of a dispatch share: [`Shared`], the one mutex over the
//! dispatch's `State` (`state.rs`) with the notifications around it, and [`Wake`], the
//! notifications a lock holder collects and sends once the lock is released.
//!
//! Invariants:
//! - One mutex guards the state. What its holder decides to wake (workers, the head submitter,
//!   drains) is collected in a [`Wake`] and sent after the lock is released.

use bus_supervisor::CancellationToken;
use parking_lot::Mutex;
use rustc_hash::FxBuildHasher;
use tokio::sync::Notify;

use super::DispatchConfig;
use super::state::State;
use super::worker::WorkerCtl;

/// State shared by the handles and the workers.
pub(super) struct Shared {
    pub(super) state: Mutex<State>,
    pub(super) config: DispatchConfig,
    pub(super) hasher: FxBuildHasher,
    /// Idle workers wait here for ready messages.
    pub(super) work: Notify,
    /// Submitters wait here for room.
    pub(super) room: Notify,
    /// Drains wait here for their partitions' running messages to end.
    pub(super) drained: Notify,
    /// The scope's token: cancelled, the dispatch stops.
    pub(super) scope_token: CancellationToken,
    /// One per worker: how a drain tells it to drop its current future.
    pub(super) workers: Vec<WorkerCtl>,
}

impl Shared {
    /// What a dispatch with `config` (normalised) shares, stopped by `scope_token`.
    pub(super) fn new(config: DispatchConfig, scope_token: CancellationToken) -> Self {
        Shared {
            state: Mutex::new(State::new(config)),
            config,
            hasher: FxBuildHasher,
            work: Notify::new(),
            room: Notify::new(),
            drained: Notify::new(),
            scope_token,
            workers: (0..config.concurrency).map(|_| WorkerCtl::new()).collect(),
        }
    }

    /// Closes the dispatch (see `KeyedDispatch::close`): stops admitting, discards the queued
    /// messages and wakes the workers and submitters. Returns how many were discarded.
    pub(super) fn close(&self) -> usize {
        let discarded = {
            let mut st = self.state.lock();
            if st.closed {
                return 0;
            }
            st.closed = true;
            let mask = vec![true; st.parts.len()];
            st.discard_queued(&mask, false)
        };
        self.work.notify_waiters();
        self.room.notify_waiters();
        discarded
    }
}

/// Notifications to send once the lock is released.
#[derive(Default)]
pub(super) struct Wake {
    /// Sleeping workers to wake (already taken off `sleepers`).
    pub(super) workers: usize,
    /// The head submitter may proceed.
    pub(super) room: bool,
    /// A draining partition has nothing running any more.
    pub(super) drained: bool,
}

impl Wake {
    pub(super) fn run(self, shared: &Shared) {
        for _ in 0..self.workers {
            shared.work.notify_one();
        }
        if self.room {
            shared.room.notify_waiters();
        }
        if self.drained {
            shared.drained.notify_waiters();
        }
    }
}
