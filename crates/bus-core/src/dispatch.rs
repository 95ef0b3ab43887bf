//! Keyed dispatch: the consumer runtime hands fetched batches to a [`KeyedDispatch`], which runs
//! a processing function on them with per-key FIFO order, cross-key parallelism up to a
//! concurrency, a bound on messages in flight, and per-partition commit tracking.
//!
//! Owns: [`KeyedDispatch`] and its worker tasks (`worker-<i>` in the scope it is started in),
//! [`DispatchConfig`], [`Processed`], [`ProcessFn`], [`DrainReport`], [`DispatchStats`],
//! [`SubmitError`] and [`dispatch_key`].
//!
//! Invariants:
//! - **Per-key FIFO.** For each dispatch key at most one message is ready or running; the others
//!   wait in the key's chain in submission order. The next one becomes ready only when the
//!   previous one has ended (done, retained, abandoned, panicked) or was discarded. Keys are
//!   global to the dispatch, so a key seen in two partitions is serialised across both.
//! - **Bounded.** `in_flight` (queued + running, and admitted messages not yet enqueued) never
//!   exceeds `max_in_flight`, except by one batch larger than the bound, admitted alone when
//!   nothing else is in flight. `submit` is the only way in: it admits a whole batch or nothing,
//!   and waits (first come, first served) for room; an admitted batch is enqueued
//!   `ENQUEUE_PIECE` messages per lock, so that workers are not held up by a long one.
//! - **Commit safety.** A message's offset is in its partition's [`CommitTracker`] before the
//!   message can run, and is marked done only when processing returned [`Processed::Done`].
//!   Discarded, abandoned, retained and panicked messages stay pending, so the committable
//!   position never passes them: they are redelivered.
//! - **Supervised.** Workers are spawned only through the given [`Scope`]; after
//!   [`KeyedDispatch::close`] or the drop of the last handle they exit once their current
//!   message has ended; after the scope's cancellation, at their next turn (a busy worker looks
//!   at the token after every message that was pending, and at least every
//!   `SCOPE_CHECK_EVERY` messages). Handlers are never interrupted by either: only a drain
//!   abandons them (or the supervisor's abort at its shutdown deadline).
//! - **Abandonment.** A drain marks the running messages of its partitions abandoned and
//!   signals their workers (a per-worker control carrying the job's sequence number, so a late
//!   signal never hits the next job); the worker drops the future and the offset stays pending.
//! - **Claims.** A worker takes (claims) up to `MAX_CLAIM` ready messages at once, but only
//!   while messages complete at their first poll; after one that was pending it claims one at a
//!   time. A claimed message counts as running (its key stays taken, a drain waits for it). A
//!   worker whose message turns out pending hands its other claims back before it waits: to the
//!   front of the ready queue in order, or, when their partition is being drained or the
//!   dispatch closed, discarded (uncommitted; counted in that drain's report); a claim a drain
//!   abandoned in the meantime ends abandoned. So a slow handler never holds other messages
//!   back, and no claim outlives a wait.
//! - One mutex guards the state; `submit` takes it once per piece, a worker once per claim
//!   (recording the messages it finished and claiming the next under the same lock). A message
//!   whose future is ready at its first poll costs no lock of its own and no other shared write
//!   (no token clone, no waiter registration).

use std::collections::VecDeque;
use std::fmt;
use std::future::Future;
use std::hash::BuildHasher;
use std::panic::AssertUnwindSafe;
use std::pin::{Pin, pin};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use bus_supervisor::{CancellationToken, Scope, SpawnError};
use hashbrown::HashTable;
use parking_lot::Mutex;
use rustc_hash::FxBuildHasher;
use tokio::sync::Notify;
use tokio::time::Instant;

use crate::backend::{BoxFuture, TopicPartition};
use crate::commit::CommitTracker;
use crate::envelope::HEADER_AGGREGATE_ID;
use crate::options::SubscribeOptions;
use crate::record::Message;

/// How long [`KeyedDispatch::drain`] waits, after its deadline, for the workers to drop the
/// futures it abandoned (they do at their next poll, unless a future blocks inside `poll`).
pub const ABANDON_GRACE: Duration = Duration::from_millis(100);

/// No index.
const NIL: usize = usize::MAX;

/// Key buffers larger than this are not kept for reuse.
const MAX_KEPT_KEY_CAPACITY: usize = 1024;

/// A busy worker looks at its scope's token (a lock inside the token) after this many messages
/// that completed at their first poll; after any other message it looks every time.
const SCOPE_CHECK_EVERY: u32 = 32;

/// The most ready messages a worker claims at once (while they complete at their first poll).
const MAX_CLAIM: usize = 16;

/// Messages a submission enqueues per lock.
const ENQUEUE_PIECE: usize = 64;

/// What processing did with a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Processed {
    /// Handled (or dead-lettered): the offset may be committed.
    Done,
    /// Not handled and not dead-lettered: the offset stays pending forever, so the partition's
    /// commit position stops before it and the message is redelivered after a restart. The
    /// message no longer counts as in flight and its key moves on.
    Retain,
}

/// The processing function: called once per message on a worker; its future is dropped if the
/// message is abandoned by [`KeyedDispatch::drain`].
pub type ProcessFn = Arc<dyn Fn(Message) -> BoxFuture<'static, Processed> + Send + Sync>;

/// What a dispatch runs for each message, on a worker: a [`ProcessFn`] (one boxed future per
/// message), or a type of its own started with [`KeyedDispatch::start_with`], whose futures the
/// workers poll in place. The future is dropped if the message is abandoned by
/// [`KeyedDispatch::drain`]; a panic while creating or polling it is caught (the message stays
/// uncommitted).
pub trait Process: Send + Sync + 'static {
    /// Processes one message.
    fn process(&self, message: Message) -> impl Future<Output = Processed> + Send;
}

impl Process for ProcessFn {
    fn process(&self, message: Message) -> impl Future<Output = Processed> + Send {
        self(message)
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

/// The dispatch key of a message: its record key, else its `X-Aggregate-ID` header (any case);
/// `None` when it has neither (the message is independent).
pub fn dispatch_key(message: &Message) -> Option<&[u8]> {
    match &message.key {
        Some(key) => Some(key),
        None => message.headers.get(HEADER_AGGREGATE_ID).map(|v| &v[..]),
    }
}

/// Keyed dispatch: per-key FIFO, cross-key parallelism up to `concurrency`, at most
/// `max_in_flight` messages accepted and not finished, and per-partition commit tracking.
/// See the module documentation for the invariants.
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
        let shared = Arc::new(Shared {
            state: Mutex::new(State::new(config)),
            config,
            hasher: FxBuildHasher,
            work: Notify::new(),
            room: Notify::new(),
            drained: Notify::new(),
            scope_token: scope.token(),
            workers: (0..config.concurrency).map(|_| WorkerCtl::new()).collect(),
        });
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

    /// Releases `partitions` (revoke): removes their queued messages (counted as `discarded`,
    /// left uncommitted), then waits until none of their messages is running or `deadline`
    /// passes. At the deadline the ones still running are abandoned: their futures are dropped
    /// by the workers (waited for up to [`ABANDON_GRACE`]) and their offsets stay uncommitted.
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
                }
            }
            report.discarded = st.discard_queued(&mask);
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
            (report.abandoned_offsets, signals) = shared.state.lock().abandon(&mask);
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

/// State shared by the handles and the workers.
struct Shared {
    state: Mutex<State>,
    config: DispatchConfig,
    hasher: FxBuildHasher,
    /// Idle workers wait here for ready messages.
    work: Notify,
    /// Submitters wait here for room.
    room: Notify,
    /// Drains wait here for their partitions' running messages to end.
    drained: Notify,
    /// The scope's token: cancelled, the dispatch stops.
    scope_token: CancellationToken,
    /// One per worker: how a drain tells it to drop its current future.
    workers: Vec<WorkerCtl>,
}

/// How a drain abandons the message a worker is running, without any per-message cost for
/// messages that complete at their first poll: the worker watches its own control only while
/// its future is pending.
struct WorkerCtl {
    notify: Notify,
    /// The sequence number of the job to abandon.
    abandon: AtomicU64,
}

impl WorkerCtl {
    fn new() -> Self {
        WorkerCtl { notify: Notify::new(), abandon: AtomicU64::new(u64::MAX) }
    }

    /// Asks the worker to drop job `seq` (ignored if it has moved on).
    fn abandon(&self, seq: u64) {
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

impl Shared {
    fn close(&self) -> usize {
        let discarded = {
            let mut st = self.state.lock();
            if st.closed {
                return 0;
            }
            st.closed = true;
            let mask = vec![true; st.parts.len()];
            st.discard_queued(&mask)
        };
        self.work.notify_waiters();
        self.room.notify_waiters();
        discarded
    }

    /// Waits until no message of `parts` is running, or `deadline`; true when none is.
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

/// Notifications to send once the lock is released.
#[derive(Default)]
struct Wake {
    /// Sleeping workers to wake (already taken off `sleepers`).
    workers: usize,
    /// The head submitter may proceed.
    room: bool,
    /// A draining partition has nothing running any more.
    drained: bool,
}

impl Wake {
    fn run(self, shared: &Shared) {
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
            }
            st.release_part(p);
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum SlotState {
    Free,
    /// In its key's chain, behind the key's ready or running message.
    Waiting,
    /// In the ready queue.
    Ready,
    /// Claimed by a worker, not started or started and not yet seen pending.
    Claimed,
    /// On a worker.
    Running,
    /// On a worker, abandoned by a drain: its future is being dropped.
    Abandoned,
}

/// A message accepted and not finished.
struct Slot {
    /// The message, until a worker takes it.
    msg: Option<Message>,
    offset: i64,
    part: usize,
    /// Its key entry, or `NIL` when independent.
    key: usize,
    /// The next message of the same key waiting (or the next free slot).
    next: usize,
    state: SlotState,
    /// While running: the worker and the job's sequence number.
    worker: usize,
    seq: u64,
}

/// A key with a message ready or running; `head`..`tail` are its waiting messages.
struct KeyEntry {
    bytes: Vec<u8>,
    hash: u64,
    head: usize,
    tail: usize,
}

/// A partition's tracking.
struct Part {
    tp: TopicPartition,
    tracker: CommitTracker,
    /// Its messages queued or running (slots referring to this entry).
    in_flight: usize,
    /// Its messages running (including abandoned ones not yet dropped).
    running: usize,
    /// Drains in progress on it.
    draining: usize,
    /// Claims discarded while a drain was waiting (added to that drain's report).
    late_discarded: usize,
    /// Forgotten: no longer found by lookups; freed once nothing refers to it.
    forgotten: bool,
}

/// How a message ended on a worker.
enum Finish {
    Processed(Processed),
    Abandoned,
    Panicked,
}

/// A message taken by a worker.
struct Job {
    slot: usize,
    msg: Message,
    seq: u64,
}

struct State {
    max_in_flight: usize,
    ordering_by_key: bool,
    closed: bool,
    /// Messages accepted and not finished.
    in_flight: usize,
    /// Messages admitted and not yet enqueued (a submission between pieces).
    incoming: usize,
    slots: Vec<Slot>,
    free_slot: usize,
    keys: Vec<KeyEntry>,
    free_keys: Vec<usize>,
    /// Key bytes -> index in `keys`, for the keys with a message ready or running.
    key_index: HashTable<usize>,
    ready: VecDeque<usize>,
    parts: Vec<Option<Part>>,
    free_parts: Vec<usize>,
    /// The partition of the last message submitted (batches are usually of one partition).
    last_part: usize,
    /// Workers waiting for work, registered with `work` and not yet notified.
    sleepers: usize,
    /// The last message a worker reported finished at its first poll (workers claim several
    /// at once then).
    fast: bool,
    /// Submitters waiting for room, in arrival order: ticket and batch size.
    admit: VecDeque<(u64, usize)>,
    next_ticket: u64,
    /// The head submitter was notified and has not looked yet.
    head_woken: bool,
    /// The sequence number of the next job taken by a worker.
    next_seq: u64,
    stats: DispatchStats,
}

impl State {
    fn new(config: DispatchConfig) -> Self {
        State {
            max_in_flight: config.max_in_flight,
            ordering_by_key: config.ordering_by_key,
            closed: false,
            in_flight: 0,
            incoming: 0,
            slots: Vec::new(),
            free_slot: NIL,
            keys: Vec::new(),
            free_keys: Vec::new(),
            key_index: HashTable::new(),
            ready: VecDeque::new(),
            parts: Vec::new(),
            free_parts: Vec::new(),
            last_part: NIL,
            sleepers: 0,
            fast: false,
            admit: VecDeque::new(),
            next_ticket: 0,
            head_woken: false,
            next_seq: 0,
            stats: DispatchStats::default(),
        }
    }

    fn fits(&self, need: usize) -> bool {
        let used = self.in_flight + self.incoming;
        used == 0 || used + need <= self.max_in_flight
    }

    /// Whether to wake the submitters because the head one now fits (once per wake-up).
    fn room_for_head(&mut self) -> bool {
        if self.head_woken {
            return false;
        }
        match self.admit.front() {
            Some(&(_, need)) if self.fits(need) => {
                self.head_woken = true;
                true
            }
            _ => false,
        }
    }

    fn find_part(&self, topic: &str, partition: i32) -> Option<usize> {
        let matches =
            |p: &Part| !p.forgotten && p.tp.partition == partition && &*p.tp.topic == topic;
        if let Some(Some(part)) = self.parts.get(self.last_part)
            && matches(part)
        {
            return Some(self.last_part);
        }
        self.parts.iter().position(|p| p.as_ref().is_some_and(matches))
    }

    fn part_for(&mut self, topic: &str, partition: i32) -> usize {
        if let Some(p) = self.find_part(topic, partition) {
            self.last_part = p;
            return p;
        }
        let part = Part {
            tp: TopicPartition::new(topic, partition),
            tracker: CommitTracker::new(),
            in_flight: 0,
            running: 0,
            draining: 0,
            late_discarded: 0,
            forgotten: false,
        };
        let p = match self.free_parts.pop() {
            Some(p) => {
                self.parts[p] = Some(part);
                p
            }
            None => {
                self.parts.push(Some(part));
                self.parts.len() - 1
            }
        };
        self.last_part = p;
        p
    }

    /// Frees a forgotten partition entry once nothing refers to it.
    fn release_part(&mut self, p: usize) {
        let free = self.parts[p]
            .as_ref()
            .is_some_and(|part| part.forgotten && part.in_flight == 0 && part.draining == 0);
        if free {
            self.parts[p] = None;
            self.free_parts.push(p);
            if self.last_part == p {
                self.last_part = NIL;
            }
        }
    }

    fn stopped(&self, parts: &[usize]) -> bool {
        parts.iter().all(|&p| self.parts[p].as_ref().is_none_or(|part| part.running == 0))
    }

    fn alloc_slot(&mut self, slot: Slot) -> usize {
        if self.free_slot == NIL {
            self.slots.push(slot);
            self.slots.len() - 1
        } else {
            let s = self.free_slot;
            self.free_slot = self.slots[s].next;
            self.slots[s] = slot;
            s
        }
    }

    fn free_slot(&mut self, s: usize) {
        let slot = &mut self.slots[s];
        slot.msg = None;
        slot.state = SlotState::Free;
        slot.key = NIL;
        slot.next = self.free_slot;
        self.free_slot = s;
    }

    /// The entry of key `bytes` and whether it existed (a message of it is ready or running).
    fn key_entry(&mut self, bytes: &[u8], hasher: &FxBuildHasher) -> (usize, bool) {
        let hash = hasher.hash_one(bytes);
        let keys = &self.keys;
        if let Some(&k) = self.key_index.find(hash, |&k| keys[k].bytes == bytes) {
            return (k, true);
        }
        let k = match self.free_keys.pop() {
            Some(k) => {
                let entry = &mut self.keys[k];
                if entry.bytes.capacity() > MAX_KEPT_KEY_CAPACITY {
                    entry.bytes = Vec::new();
                }
                entry.bytes.clear();
                entry.bytes.extend_from_slice(bytes);
                entry.hash = hash;
                entry.head = NIL;
                entry.tail = NIL;
                k
            }
            None => {
                self.keys.push(KeyEntry { bytes: bytes.to_vec(), hash, head: NIL, tail: NIL });
                self.keys.len() - 1
            }
        };
        let keys = &self.keys;
        self.key_index.insert_unique(hash, k, |&k| keys[k].hash);
        (k, false)
    }

    /// Accepts one message; true when it was made ready.
    fn enqueue(&mut self, msg: Message, hasher: &FxBuildHasher) -> bool {
        let p = self.part_for(&msg.topic, msg.partition);
        let offset = msg.offset;
        let Some(part) = self.parts[p].as_mut() else {
            return false;
        };
        if !part.tracker.submit(offset) {
            self.stats.skipped += 1;
            tracing::warn!(
                partition = %part.tp,
                offset,
                last_submitted = ?part.tracker.last_submitted(),
                "message skipped: its offset is not above the last one submitted for the partition"
            );
            return false;
        }
        part.in_flight += 1;
        self.in_flight += 1;
        let key = match dispatch_key(&msg) {
            Some(bytes) if self.ordering_by_key => Some(self.key_entry(bytes, hasher)),
            _ => None,
        };
        match key {
            Some((k, true)) => {
                let s = self.alloc_slot(Slot {
                    msg: Some(msg),
                    offset,
                    part: p,
                    key: k,
                    next: NIL,
                    state: SlotState::Waiting,
                    worker: NIL,
                    seq: 0,
                });
                let entry = &mut self.keys[k];
                if entry.tail == NIL {
                    entry.head = s;
                } else {
                    self.slots[entry.tail].next = s;
                }
                entry.tail = s;
                false
            }
            key => {
                let s = self.alloc_slot(Slot {
                    msg: Some(msg),
                    offset,
                    part: p,
                    key: key.map_or(NIL, |(k, _)| k),
                    next: NIL,
                    state: SlotState::Ready,
                    worker: NIL,
                    seq: 0,
                });
                self.ready.push_back(s);
                true
            }
        }
    }

    /// Claims up to `want` ready messages for worker `worker`, appended to `claims`.
    fn claim(&mut self, worker: usize, want: usize, claims: &mut VecDeque<Job>) {
        while claims.len() < want {
            let Some(s) = self.ready.pop_front() else {
                return;
            };
            let slot = &mut self.slots[s];
            let Some(msg) = slot.msg.take() else {
                continue;
            };
            let seq = self.next_seq;
            self.next_seq += 1;
            slot.state = SlotState::Claimed;
            slot.worker = worker;
            slot.seq = seq;
            if let Some(part) = self.parts[slot.part].as_mut() {
                part.running += 1;
            }
            self.stats.running += 1;
            claims.push_back(Job { slot: s, msg, seq });
        }
    }

    /// A claimed message was seen pending: it is now running (a drain can abandon it through
    /// its worker's control). False when a drain abandoned it in the meantime.
    fn start(&mut self, s: usize) -> bool {
        let slot = &mut self.slots[s];
        match slot.state {
            SlotState::Claimed => {
                slot.state = SlotState::Running;
                true
            }
            SlotState::Running => true,
            _ => false,
        }
    }

    /// Takes back a worker's claims (not started), in order: to the front of the ready queue;
    /// discarded when the dispatch is closed or their partition drained (counted for the
    /// drain); ended as abandoned when a drain abandoned them.
    fn unclaim(&mut self, claims: &mut VecDeque<Job>, wake: &mut Wake) {
        while let Some(Job { slot: s, msg, .. }) = claims.pop_back() {
            let (p, k) = (self.slots[s].part, self.slots[s].key);
            if self.slots[s].state == SlotState::Abandoned {
                self.finish(s, Finish::Abandoned, wake);
                continue;
            }
            self.stats.running -= 1;
            let draining = match self.parts[p].as_mut() {
                Some(part) => {
                    part.running -= 1;
                    if part.running == 0 && part.draining > 0 {
                        wake.drained = true;
                    }
                    part.draining > 0
                }
                None => false,
            };
            if self.closed || draining {
                if draining && let Some(part) = self.parts[p].as_mut() {
                    part.late_discarded += 1;
                }
                self.drop_queued(s);
                if k != NIL {
                    self.advance_key(k);
                }
                wake.room |= self.room_for_head();
            } else {
                let slot = &mut self.slots[s];
                slot.msg = Some(msg);
                slot.state = SlotState::Ready;
                slot.worker = NIL;
                self.ready.push_front(s);
            }
        }
    }

    /// Records how a running message ended.
    fn finish(&mut self, s: usize, finish: Finish, wake: &mut Wake) {
        let slot = &self.slots[s];
        let (p, k, offset) = (slot.part, slot.key, slot.offset);
        let abandoned = slot.state == SlotState::Abandoned;
        self.free_slot(s);
        self.stats.running -= 1;
        self.in_flight -= 1;
        if let Some(part) = self.parts[p].as_mut() {
            part.running -= 1;
            part.in_flight -= 1;
            match finish {
                // Finished just as it was abandoned: it was reported uncommitted, so it stays so
                // (redelivered; at least once).
                Finish::Processed(Processed::Done) if abandoned => {}
                Finish::Processed(Processed::Done) => {
                    part.tracker.mark_done(offset);
                    self.stats.processed += 1;
                }
                Finish::Processed(Processed::Retain) => self.stats.retained += 1,
                Finish::Abandoned => {}
                Finish::Panicked => {
                    self.stats.panicked += 1;
                    tracing::error!(
                        partition = %part.tp,
                        offset,
                        "processing panicked; the message stays uncommitted"
                    );
                }
            }
            if part.running == 0 && part.draining > 0 {
                wake.drained = true;
            }
        }
        self.release_part(p);
        if k != NIL {
            self.advance_key(k);
        }
        wake.room |= self.room_for_head();
    }

    /// The key's ready or running message is gone: make its next one ready, or retire the key.
    fn advance_key(&mut self, k: usize) {
        let entry = &mut self.keys[k];
        if entry.head == NIL {
            let hash = entry.hash;
            if let Ok(found) = self.key_index.find_entry(hash, |&i| i == k) {
                found.remove();
            }
            self.free_keys.push(k);
        } else {
            let s = entry.head;
            entry.head = self.slots[s].next;
            if entry.head == NIL {
                entry.tail = NIL;
            }
            let slot = &mut self.slots[s];
            slot.next = NIL;
            slot.state = SlotState::Ready;
            self.ready.push_back(s);
        }
    }

    /// Removes a queued message (it stays pending in its tracker).
    fn drop_queued(&mut self, s: usize) {
        let p = self.slots[s].part;
        self.free_slot(s);
        self.in_flight -= 1;
        self.stats.discarded += 1;
        if let Some(part) = self.parts[p].as_mut() {
            part.in_flight -= 1;
        }
        self.release_part(p);
    }

    /// Removes the queued messages of the partitions in `mask`; returns how many.
    fn discard_queued(&mut self, mask: &[bool]) -> usize {
        let doomed = |p: usize| mask.get(p).copied().unwrap_or(false);
        let mut discarded = 0;
        // Waiting chains first, so that a key's next message made ready below is a survivor.
        let keys: Vec<usize> = self.key_index.iter().copied().collect();
        for k in keys {
            let mut prev = NIL;
            let mut cur = self.keys[k].head;
            while cur != NIL {
                let next = self.slots[cur].next;
                if doomed(self.slots[cur].part) {
                    if prev == NIL {
                        self.keys[k].head = next;
                    } else {
                        self.slots[prev].next = next;
                    }
                    self.drop_queued(cur);
                    discarded += 1;
                } else {
                    prev = cur;
                }
                cur = next;
            }
            self.keys[k].tail = prev;
        }
        let ready = std::mem::take(&mut self.ready);
        for s in ready {
            let (p, k) = (self.slots[s].part, self.slots[s].key);
            if doomed(p) {
                self.drop_queued(s);
                discarded += 1;
                if k != NIL {
                    self.advance_key(k);
                }
            } else {
                self.ready.push_back(s);
            }
        }
        discarded
    }

    /// Abandons the running messages of the partitions in `mask`. Returns them, and the
    /// workers to signal (worker, job) once the lock is released.
    #[allow(clippy::type_complexity)]
    fn abandon(&mut self, mask: &[bool]) -> (Vec<(TopicPartition, i64)>, Vec<(usize, u64)>) {
        let mut abandoned = Vec::new();
        let mut signals = Vec::new();
        for slot in &mut self.slots {
            let on_worker = matches!(slot.state, SlotState::Running | SlotState::Claimed);
            if on_worker && mask.get(slot.part).copied().unwrap_or(false) {
                // A claim is not waited on: its worker sees the state when it next locks.
                if slot.state == SlotState::Running {
                    signals.push((slot.worker, slot.seq));
                }
                slot.state = SlotState::Abandoned;
                if let Some(part) = &self.parts[slot.part] {
                    abandoned.push((part.tp.clone(), slot.offset));
                }
            }
        }
        self.stats.abandoned += abandoned.len() as u64;
        abandoned.sort();
        (abandoned, signals)
    }
}

/// A worker: claims ready messages and runs them one at a time until the dispatch closes or
/// the scope is cancelled.
async fn worker<P: Process>(shared: Arc<Shared>, process: Arc<P>, index: usize) {
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
