//! The dispatch's workers: [`worker`] claims ready messages and runs them one at a time, and
//! [`WorkerCtl`] is how a drain tells a worker to drop the message it is running.
//!
//! Invariants:
//! - **Supervised.** Workers are spawned only through the given `Scope` (by
//!   `KeyedDispatch::start_with`); after `KeyedDispatch::close` or the drop of the last
//!   handle they exit once their current message has ended; after the scope's cancellation, at
//!   their next turn (a busy worker looks at the token after every message that was pending, and
//!   at least every `SCOPE_CHECK_EVERY` messages). Handlers are never interrupted by either: only
//!   a drain abandons them (or the supervisor's abort at its shutdown deadline).
//! - **Abandonment, on the worker's side.** A drain signals a worker through its own control,
//!   which carries the job's sequence number, so a late signal never hits the next job; the
//!   worker drops the future and records the message abandoned (its offset stays pending).
//! - **Claims.** A worker takes (claims) up to `MAX_CLAIM` ready messages at once, but only
//!   while messages complete at their first poll; after one that was pending it claims one at a
//!   time. A worker whose message turns out pending hands its other claims back before it waits:
//!   to the front of the ready queue in order, or, when their partition's drain passed its
//!   deadline or the dispatch closed, discarded (uncommitted; counted in that drain's report);
//!   a claim a drain abandoned in the meantime ends abandoned. So a slow handler never holds
//!   other messages back, and no claim outlives a wait.
//! - A worker takes the lock once per claim (recording the messages it finished and claiming
//!   the next under the same lock). A message whose future is ready at its first poll costs no
//!   lock of its own and no other shared write (no token clone, no waiter registration).

use std::collections::VecDeque;
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::pin::{Pin, pin};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};

use tokio::sync::Notify;

use super::shared::{Shared, Wake};
use super::state::{Finish, Job};
use super::{Process, Processed};

/// A busy worker looks at its scope's token (a lock inside the token) after this many messages
/// that completed at their first poll; after any other message it looks every time.
const SCOPE_CHECK_EVERY: u32 = 32;

/// The most ready messages a worker claims at once (while they complete at their first poll).
pub(super) const MAX_CLAIM: usize = 16;

/// A worker: claims ready messages and runs them one at a time until the dispatch closes or
/// the scope is cancelled.
pub(super) async fn worker<P: Process>(shared: Arc<Shared>, process: Arc<P>, index: usize) {
    let Some(ctl) = shared.workers.get(index) else {
        return;
    };
    let concurrency = shared.config.concurrency;
    // Claimed and not started, in order; ended and not yet recorded.
    let mut claims: VecDeque<Job> = VecDeque::with_capacity(MAX_CLAIM);
    let mut finished: Vec<(usize, Finish)> = Vec::with_capacity(MAX_CLAIM);
    // Claims to take at the next lock: one after a message that was pending.
    let mut burst = 1;
    // Look at the scope's token at the first turn, after sleeping, after a message that was
    // pending and every SCOPE_CHECK_EVERY messages otherwise.
    let mut check_scope = true;
    let mut unchecked = 0_u32;
    loop {
        if claims.is_empty() || check_scope {
            let cancelled = check_scope && shared.scope_token.is_cancelled();
            if check_scope {
                unchecked = 0;
                check_scope = false;
            }
            let mut wake = Wake::default();
            let notified = shared.work.notified();
            let mut notified = pin!(notified);
            let next = {
                let mut st = shared.state.lock();
                for (slot, finish) in finished.drain(..) {
                    st.finish(slot, finish, &mut wake);
                }
                st.fast = burst > 1;
                if st.closed || cancelled {
                    st.unclaim(&mut claims, &mut wake);
                    Next::Exit
                } else {
                    if claims.is_empty() {
                        let want = burst.min(st.ready.len() / concurrency).max(1);
                        st.claim(index, want, &mut claims);
                    }
                    // What is left ready goes to a sleeping worker (which passes the rest on
                    // when it claims).
                    if !st.ready.is_empty() && st.sleepers > 0 {
                        st.sleepers -= 1;
                        wake.workers += 1;
                    }
                    if claims.is_empty() {
                        // Registered before the lock is released, so a notify_one cannot be
                        // missed.
                        notified.as_mut().enable();
                        st.sleepers += 1;
                        Next::Sleep
                    } else {
                        Next::Run
                    }
                }
            };
            wake.run(&shared);
            match next {
                Next::Exit => return,
                Next::Sleep => {
                    tokio::select! {
                        () = &mut notified => {}
                        () = shared.scope_token.cancelled() => {}
                    }
                    check_scope = true;
                    continue;
                }
                Next::Run => {}
            }
        }
        let Some(Job { slot, msg, seq }) = claims.pop_front() else {
            continue;
        };
        let Ok(future) = std::panic::catch_unwind(AssertUnwindSafe(|| process.process(msg))) else {
            finished.push((slot, Finish::Panicked));
            continue;
        };
        // The future is dropped at the end of this block (an abandoned one too), before the
        // message's end is recorded.
        let finish = {
            let mut future = CatchUnwind { future: pin!(future) };
            // The first poll in place: most messages end here.
            let first =
                std::future::poll_fn(|cx| Poll::Ready(Pin::new(&mut future).poll(cx))).await;
            match first {
                Poll::Ready(result) => {
                    burst = MAX_CLAIM;
                    unchecked += 1;
                    check_scope = unchecked >= SCOPE_CHECK_EVERY;
                    Finish::of(result)
                }
                Poll::Pending => {
                    // Before waiting: record what ended, hand the other claims back, and make
                    // this one abandonable (unless a drain abandoned it already).
                    burst = 1;
                    check_scope = true;
                    let mut wake = Wake::default();
                    let started = {
                        let mut st = shared.state.lock();
                        st.fast = false;
                        for (slot, finish) in finished.drain(..) {
                            st.finish(slot, finish, &mut wake);
                        }
                        st.unclaim(&mut claims, &mut wake);
                        // What this worker leaves ready goes to a sleeping one (which passes
                        // the rest on when it claims).
                        if !st.ready.is_empty() && st.sleepers > 0 {
                            st.sleepers -= 1;
                            wake.workers += 1;
                        }
                        st.start(slot)
                    };
                    wake.run(&shared);
                    if started {
                        tokio::select! {
                            biased;
                            result = &mut future => Finish::of(result),
                            () = ctl.abandoned(seq) => Finish::Abandoned,
                        }
                    } else {
                        Finish::Abandoned
                    }
                }
            }
        };
        finished.push((slot, finish));
        // A processor that is always ready must not starve the runtime's other tasks.
        tokio::task::consume_budget().await;
    }
}

enum Next {
    Run,
    Sleep,
    Exit,
}

impl Finish {
    fn of(result: Result<Processed, ()>) -> Finish {
        match result {
            Ok(processed) => Finish::Processed(processed),
            Err(()) => Finish::Panicked,
        }
    }
}

/// Polls a processing future, turning a panic into an error.
struct CatchUnwind<'a, F> {
    future: Pin<&'a mut F>,
}

impl<F: Future<Output = Processed>> Future for CatchUnwind<'_, F> {
    type Output = Result<Processed, ()>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let future = &mut self.future;
        match std::panic::catch_unwind(AssertUnwindSafe(|| future.as_mut().poll(cx))) {
            Ok(Poll::Ready(processed)) => Poll::Ready(Ok(processed)),
            Ok(Poll::Pending) => Poll::Pending,
            Err(_) => Poll::Ready(Err(())),
        }
    }
}

/// How a drain abandons the message a worker is running, without any per-message cost for
/// messages that complete at their first poll: the worker watches its own control only while
/// its future is pending.
pub(super) struct WorkerCtl {
    notify: Notify,
    /// The sequence number of the job to abandon.
    abandon: AtomicU64,
}

impl WorkerCtl {
    pub(super) fn new() -> Self {
        WorkerCtl { notify: Notify::new(), abandon: AtomicU64::new(u64::MAX) }
    }

    /// Asks the worker to drop job `seq` (ignored if it has moved on).
    pub(super) fn abandon(&self, seq: u64) {
        self.abandon.store(seq, Ordering::Release);
        self.notify.notify_one();
    }

    /// Resolves when job `seq` is abandoned. A stale notification (for an earlier job) is
    /// ignored by the sequence check.
    async fn abandoned(&self, seq: u64) {
        loop {
            let notified = self.notify.notified();
            let mut notified = pin!(notified);
            notified.as_mut().enable();
            if self.abandon.load(Ordering::Acquire) == seq {
                return;
            }
            notified.await;
        }
    }
}
