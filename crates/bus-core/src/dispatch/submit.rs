//! Submission: how messages get into a dispatch. [`KeyedDispatch::submit`] admits a batch
//! whole or not at all (waiting its turn for room), then enqueues it into the state machine
//! piece by piece, waking workers as messages become ready.
//!
//! Owns: [`KeyedDispatch::submit`] and the crate's `submit_from`, [`SubmitError`], the admission
//! queue's tickets.
//!
//! Invariants:
//! - **Bounded.** `in_flight` (queued + running, and admitted messages not yet enqueued) never
//!   exceeds `max_in_flight`, except by one batch larger than the bound, admitted alone when
//!   nothing else is in flight. `submit` is the only way in: it admits a whole batch or nothing,
//!   and waits (first come, first served) for room; an admitted batch is enqueued
//!   `ENQUEUE_PIECE` messages per lock, so that workers are not held up by a long one.

use std::fmt;
use std::pin::pin;

use super::KeyedDispatch;
use super::shared::{Shared, Wake};
use super::state::State;
use super::worker::MAX_CLAIM;
use crate::record::Message;

/// Messages a submission enqueues per lock.
const ENQUEUE_PIECE: usize = 64;

/// A batch refused because the dispatch is closed (or its scope cancelled); the batch is handed
/// back untouched.
#[derive(thiserror::Error)]
#[error("the dispatch is closed: a batch of {} messages was not accepted", .batch.len())]
pub struct SubmitError {
    batch: Vec<Message>,
}

impl SubmitError {
    /// The refused batch.
    pub fn into_batch(self) -> Vec<Message> {
        self.batch
    }
}

impl fmt::Debug for SubmitError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SubmitError").field("messages", &self.batch.len()).finish()
    }
}

impl KeyedDispatch {
    /// Hands a batch over, waiting until there is room for all of it: admitted when the
    /// messages in flight plus the batch fit in `max_in_flight`, or when nothing is in flight
    /// (so that a batch larger than the bound still progresses). Waiting submitters are served
    /// in arrival order. This is the fetch loop's backpressure.
    ///
    /// A batch is admitted whole or not at all: dropping the future while it waits admits
    /// nothing (the batch is dropped with it). Offsets of a partition must come in increasing
    /// order; a message whose offset is not above the last one submitted for its partition is
    /// skipped (it was handed out already). Call [`KeyedDispatch::forget`] before resubmitting
    /// a partition from an earlier offset.
    ///
    /// # Errors
    ///
    /// The batch back when the dispatch is closed or its scope cancelled.
    pub async fn submit(&self, batch: Vec<Message>) -> Result<(), SubmitError> {
        let need = batch.len();
        let mut source = batch.into_iter();
        match self.submit_from(&mut source, need).await {
            Ok(()) => Ok(()),
            // Refused before anything was taken: the batch comes back whole.
            Err(Closed) => Err(SubmitError { batch: source.collect() }),
        }
    }

    /// [`KeyedDispatch::submit`] of the next `need` messages of `source` (the fetch loop hands
    /// a fetched batch over in chunks this way, moving each message once, into its slot).
    /// Nothing is taken from `source` unless the chunk is admitted; once admitted, all `need`
    /// are taken (those that find the dispatch closed half-way are dropped, counted as
    /// discarded).
    pub(crate) async fn submit_from(
        &self,
        source: &mut std::vec::IntoIter<Message>,
        need: usize,
    ) -> Result<(), Closed> {
        let shared = &*self.handle.shared;
        let need = need.min(source.len());
        let mut ticket = Ticket { shared, id: None };
        loop {
            let notified = shared.room.notified();
            let mut notified = pin!(notified);
            // Read before locking: the token has a lock of its own.
            let cancelled = shared.scope_token.is_cancelled();
            {
                let mut st = shared.state.lock();
                if st.closed || cancelled {
                    return Err(Closed);
                }
                if need == 0 {
                    return Ok(());
                }
                let turn = match ticket.id {
                    None => st.admit.is_empty(),
                    Some(id) => st.admit.front().is_some_and(|&(head, _)| head == id),
                };
                if turn && st.fits(need) {
                    if ticket.id.take().is_some() {
                        st.admit.pop_front();
                        st.head_woken = false;
                    }
                    st.incoming += need;
                    enqueue_in_pieces(shared, st, source, need);
                    return Ok(());
                }
                match ticket.id {
                    None => {
                        let id = st.next_ticket;
                        st.next_ticket += 1;
                        st.admit.push_back((id, need));
                        ticket.id = Some(id);
                    }
                    // Woken, but the room went (or never came): wait for the next wake-up.
                    Some(_) if turn => st.head_woken = false,
                    Some(_) => {}
                }
                notified.as_mut().enable();
            }
            tokio::select! {
                () = &mut notified => {}
                () = shared.scope_token.cancelled() => {}
            }
        }
    }
}

/// Refused: the dispatch is closed or its scope cancelled.
#[derive(Debug)]
pub(crate) struct Closed;

/// Enqueues `need` admitted messages (already counted in `incoming`) from `source`,
/// `ENQUEUE_PIECE` per lock, waking workers as messages become ready. The lock is released
/// between pieces, so that workers finishing and claiming messages do not wait for a whole
/// batch. Messages that find the dispatch closed are dropped (counted as discarded).
fn enqueue_in_pieces<'a>(
    shared: &'a Shared,
    mut st: parking_lot::MutexGuard<'a, State>,
    source: &mut std::vec::IntoIter<Message>,
    need: usize,
) {
    let mut left = need;
    loop {
        let mut pushed = 0;
        for _ in 0..left.min(ENQUEUE_PIECE) {
            let Some(msg) = source.next() else {
                break;
            };
            st.incoming -= 1;
            left -= 1;
            pushed += usize::from(st.enqueue(msg, &shared.hasher));
        }
        if source.len() == 0 && left > 0 {
            // Fewer messages than admitted (not expected): release the rest of the room.
            st.incoming -= left;
            left = 0;
        }
        // While messages finish at their first poll, a woken worker claims up to MAX_CLAIM of
        // them (and wakes another if more are left): waking one per message would mostly
        // wake workers that find nothing.
        let per_worker = if st.fast { MAX_CLAIM } else { 1 };
        let mut wake =
            Wake { workers: pushed.div_ceil(per_worker).min(st.sleepers), ..Wake::default() };
        st.sleepers -= wake.workers;
        if left == 0 {
            wake.room = st.room_for_head();
            drop(st);
            wake.run(shared);
            return;
        }
        drop(st);
        wake.run(shared);
        st = shared.state.lock();
        if st.closed {
            st.incoming -= left;
            st.stats.discarded += left as u64;
            for _ in 0..left {
                drop(source.next());
            }
            let wake = Wake { room: st.room_for_head(), ..Wake::default() };
            drop(st);
            wake.run(shared);
            return;
        }
    }
}

/// A submitter's place in the admission queue; leaves it when dropped (a cancelled submit).
struct Ticket<'a> {
    shared: &'a Shared,
    id: Option<u64>,
}

impl Drop for Ticket<'_> {
    fn drop(&mut self) {
        let Some(id) = self.id.take() else {
            return;
        };
        let room = {
            let mut st = self.shared.state.lock();
            if st.admit.front().is_some_and(|&(head, _)| head == id) {
                st.head_woken = false;
            }
            st.admit.retain(|&(t, _)| t != id);
            st.room_for_head()
        };
        if room {
            self.shared.room.notify_waiters();
        }
    }
}
