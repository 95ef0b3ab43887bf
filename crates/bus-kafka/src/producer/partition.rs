//! One partition's batching loop: collect records for up to `producer.linger` (or until a batch
//! of `producer.max_batch_bytes` is queued), seal them into a batch, keep up to a window of
//! batches in flight on one pipelined connection, resend in order what failed retriably, and
//! resolve every record's future in acceptance order.
//!
//! Owns: the loop task `bus/kafka/producer/<topic>-<partition>`, the batch being formed, the
//! sealed batches (sent and not yet answered, or waiting to be sent again), and, when the
//! producer is idempotent, the partition's session: the producer identity its batches carry and
//! the next sequence number.
//!
//! Invariants:
//! - Sealed batches are sent in order, at most the window of them in flight
//!   (`producer.max_in_flight` when idempotent, else 1) on the loop's own connection to the
//!   partition's leader, a [`Pipeline`]; their answers are read in that order. A batch is
//!   resolved only once every batch before it is, so records are resolved in acceptance order
//!   (what makes the flush accounting exact), and stored in it.
//! - A batch is sent when it is full or its linger is over, while the window has room; one that
//!   is not full also waits while the oldest request in flight has waited longer than the
//!   linger for its answer, until that answer or until it is full. It would wait behind that
//!   request at the broker anyway (a connection's requests are handled in order), and when the
//!   broker is the bottleneck, batches grow instead of small requests multiplying.
//! - Any failure abandons the connection and whatever is in flight on it: after a backoff
//!   (`producer.retry_backoff` doubling to 1 s) and a fresh leader lookup, every sealed batch is
//!   sent again from the oldest, in order. Idempotent, a batch is sent again as it was (same
//!   producer id, epoch and sequence numbers), so the broker stores it once whatever became of
//!   the earlier attempt: DUPLICATE_SEQUENCE_NUMBER says it was stored and is an
//!   acknowledgement (without an offset: `-1`). Not idempotent, a batch whose answer was lost
//!   may be stored twice (at least once); one in flight keeps the order.
//! - Idempotent, the sequence numbers a partition sends under an identity are contiguous from
//!   0, and every one below the oldest sealed batch's is acknowledged. A batch that leaves
//!   without an acknowledgement (rejected, past its delivery timeout, failed back) breaks that,
//!   and so does a broker that disagrees (OUT_OF_ORDER_SEQUENCE_NUMBER, UNKNOWN_PRODUCER_ID,
//!   INVALID_PRODUCER_EPOCH, PRODUCER_FENCED: the batch was not stored): the partition then
//!   gives up its identity, takes a new one from the producer's [`Identities`] (the epoch
//!   bumped, or a new producer id) and numbers its sealed batches from 0 again before sending
//!   them. A batch too large for the broker is split in two that keep its sequence range.
//! - Every wait is bounded: connecting and the identity by what is left of the oldest record's
//!   delivery timeout (at most `request_timeout`), a write by `request_timeout`, the oldest
//!   in-flight answer by `request_timeout` from its send (and the delivery timeout). A batch
//!   whose oldest record reaches `producer.delivery_timeout` before its next attempt is failed
//!   back with `DeliveryTimeout`, never forgotten.
//! - A fail-back request (a flush past its deadline) is honoured at once, in flight or not: the
//!   connection is abandoned and the entries below `fail_through` are failed back with
//!   `NotAcknowledgedAtShutdown`; what is left is batched afresh.
//! - A batch waits for its linger to within the timer's millisecond tick either way: tokio's
//!   timer ends a sleep on a tick after its deadline (about a tick late on average), so the
//!   wait aims one tick ([`TIMER_TICK`]) early; a 1 ms linger waits about 1 ms, not 2.
//! - The loop ends when the producer's scope is cancelled (or its channel closes with nothing
//!   held); whatever it still holds is failed back (and an entry dropped by an abort fails
//!   itself back from its `Drop`).

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::task::Poll;
use std::time::Duration;

use bus_core::{Delivery, errors::PublishError};
use bus_supervisor::{Backoff, ChildSpec, Scope};
use bytes::Bytes;
use kafka_protocol::messages::{ProduceRequest, ProduceResponse, TopicName};
use kafka_protocol::protocol::StrBytes;
use tokio::sync::mpsc;
use tokio::time::Instant;

use super::encode::{self, Stamp};
use super::identity::Identity;
use super::produce::{self, Failure, Stored};
use super::{Entry, PartitionState, Release, Shared};
use crate::connection::{Pipeline, RequestError};

/// Entries taken from the channel at a time when filling a batch.
const RECV_CHUNK: usize = 256;

/// The cap of the doubling retry backoff.
const MAX_BACKOFF: Duration = Duration::from_secs(1);

/// The granularity of tokio's timer: a sleep ends on the first millisecond tick after its
/// deadline, about a tick late (a 1 ms sleep takes about 2 ms). The linger aims this much early.
const TIMER_TICK: Duration = Duration::from_millis(1);

/// The delays between a batch's retries: `initial` (`producer.retry_backoff`), doubling, at most
/// [`MAX_BACKOFF`].
fn retry_backoff(initial: Duration) -> Backoff {
    Backoff { initial, max: MAX_BACKOFF, multiplier: 2.0 }
}

/// `sequence` advanced by `count` records: Kafka's sequence numbers wrap from `i32::MAX` to 0.
fn advance(sequence: i32, count: usize) -> i32 {
    let span = i64::from(i32::MAX) + 1;
    let count = i64::try_from(count).unwrap_or(0) % span;
    i32::try_from((i64::from(sequence) + count) % span).unwrap_or(0)
}

/// How a partition loop is supervised: restarted after a panic (a normal end is the channel
/// closed or the producer's scope cancelled), at most 3 restarts in 30 s, 50 ms doubling to 2 s
/// between them; a fourth escalates and fails the producer (its isolated scope).
pub(super) fn child_spec() -> ChildSpec {
    ChildSpec::transient()
        .intensity(3, Duration::from_secs(30))
        .backoff(Duration::from_millis(50), Duration::from_secs(2), 2.0)
        .shutdown_timeout(Duration::from_secs(1))
}

/// What one partition's loop hands from an incarnation to the next: its channel, first, and
/// after a panic everything it held (the connection and what was in flight on it are abandoned
/// by the next incarnation, to be sent again). Dropped with the supervision (escalation,
/// shutdown), whatever it still holds is failed back (see [`Batcher`]'s `Drop`).
pub(super) type Handover = bus_supervisor::Handover<Batcher>;

/// A fresh loop's state for `rx`, to be taken over by its first incarnation.
pub(super) fn handover(
    shared: Arc<Shared>,
    state: Arc<PartitionState>,
    rx: mpsc::UnboundedReceiver<Entry>,
) -> Handover {
    let state_topic = state.topic.to_string();
    let producer = &shared.config.producer;
    let idempotent = producer.idempotence;
    let window = if idempotent { producer.max_in_flight.max(1) } else { 1 };
    let backoff = retry_backoff(producer.retry_backoff);
    let batcher = Batcher {
        shared,
        state,
        rx,
        path: Arc::from(""),
        closed: false,
        batch: Vec::new(),
        batch_bytes: 0,
        received: 0,
        carry: VecDeque::new(),
        lingered: false,
        sealed: VecDeque::new(),
        sent: 0,
        pipe: None,
        idempotent,
        window,
        session: None,
        unusable: None,
        backoff,
        retries: 0,
        retry_at: None,
        last_error: None,
        wire_topic: TopicName(StrBytes::from_string(state_topic)),
    };
    Handover::new(batcher)
}

/// Runs one incarnation of the loop in `scope` (its supervised scope) until the scope is
/// cancelled or the channel closes with nothing held. It takes over what the previous
/// incarnation held: the channel, the batch being formed, the sealed batches with their
/// stamps (sent again from the oldest, as after a lost connection: the broker stores each
/// once), the session and the counters.
pub(super) async fn run(scope: Scope, handover: Handover) -> Result<(), &'static str> {
    let mut held = handover.take();
    let restarted = held.restarted();
    let Some(batcher) = held.get_mut() else {
        return Err("no partition loop state to take over");
    };
    if restarted {
        batcher.abandon_connection();
    }
    batcher.path = Arc::from(scope.path());
    let token = scope.token();
    tokio::select! {
        biased;
        () = token.cancelled() => {}
        () = batcher.run() => {}
    }
    batcher.fail_everything();
    Ok(())
}

/// A batch with its place in the partition's order: encoded and stamped, sent or to be sent.
struct Sealed {
    /// Its records, in acceptance order.
    entries: Vec<Entry>,
    /// The encoded batch as last stamped, or why it cannot be sent (resolved when it is the
    /// oldest: split or rejected).
    batch: Result<Bytes, Failure>,
    /// The identity and sequence number it carries ([`Stamp::NONE`] when not idempotent, or
    /// until the partition has a session).
    stamp: Stamp,
    /// Produce attempts so far (sends, and failed attempts to get a connection for it).
    attempts: u32,
    /// When it was last sent.
    sent_at: Instant,
    /// When the answer to its latest send is due (while in flight).
    due: Instant,
}

impl Sealed {
    /// When its oldest record reaches the delivery timeout.
    fn deadline(&self, delivery_timeout: Duration) -> Instant {
        self.entries.first().map_or_else(Instant::now, |e| e.accepted + delivery_timeout)
    }
}

/// An idempotent partition's session: the identity its batches carry and the sequence number of
/// the next batch.
#[derive(Debug, Clone, Copy)]
struct Session {
    identity: Identity,
    next_sequence: i32,
}

pub(super) struct Batcher {
    shared: Arc<Shared>,
    state: Arc<PartitionState>,
    rx: mpsc::UnboundedReceiver<Entry>,
    /// The incarnation's task path (fault points).
    path: Arc<str>,
    /// The channel has closed (the producer is gone): nothing more will come.
    closed: bool,
    /// The batch being formed, in acceptance order (younger than every sealed batch).
    batch: Vec<Entry>,
    batch_bytes: usize,
    /// Entries taken from the channel so far (the index of the next one).
    received: u64,
    /// Entries taken from the channel that did not fit in the batch, in order: the next
    /// batches' first.
    carry: VecDeque<Entry>,
    /// The batch being formed has waited out its linger (the timer fired).
    lingered: bool,
    /// Sealed batches, oldest first: the first `sent` are in flight on `pipe`.
    sealed: VecDeque<Sealed>,
    sent: usize,
    /// The pipelined connection to the partition's leader, kept while it works.
    pipe: Option<Pipeline>,
    idempotent: bool,
    /// Requests in flight at most.
    window: usize,
    /// The partition's identity and next sequence number (idempotent, once it has one).
    session: Option<Session>,
    /// The identity given up, reported when asking for the next one (so that it is replaced).
    unusable: Option<Identity>,
    backoff: Backoff,
    /// Failures since the last acknowledgement (they set the backoff).
    retries: u32,
    /// Waiting out a backoff until then.
    retry_at: Option<Instant>,
    /// The last produce error, for records that expire waiting behind a failing batch.
    last_error: Option<String>,
    /// The topic's name as the protocol encodes it.
    wire_topic: TopicName,
}

impl Drop for Batcher {
    /// A loop dropped unfinished (aborted at a shutdown deadline, or the supervision over):
    /// its entries fail themselves back (`Entry`'s `Drop`); their buffer bytes are given back
    /// here. (A panicking incarnation does not drop it: its [`Handover`] keeps it for the next.)
    fn drop(&mut self) {
        self.rx.close();
        let shared = Arc::clone(&self.shared);
        let mut release = Release::new(&shared.buffer);
        let sealed = self.sealed.iter().flat_map(|s| s.entries.iter());
        for entry in sealed.chain(self.batch.iter()).chain(self.carry.iter()) {
            release.add(entry.size);
        }
        while let Ok(entry) = self.rx.try_recv() {
            release.add(entry.size);
        }
    }
}

impl Batcher {
    /// After a panic: the connection is abandoned, and what was in flight on it is sent again,
    /// from the oldest sealed batch, with the same stamps.
    fn abandon_connection(&mut self) {
        self.pipe = None;
        self.sent = 0;
        self.retry_at = None;
    }

    async fn run(&mut self) {
        let linger = self.shared.config.producer.linger;
        let max_bytes = self.shared.config.producer.max_batch_bytes;
        let delivery_timeout = self.shared.config.producer.delivery_timeout;
        loop {
            bus_core::fault::point(&self.path).await;
            if self.fail_back_due() {
                self.fail_back();
                continue;
            }
            if let Some(wake) = self.retry_at {
                tokio::select! {
                    biased;
                    () = self.state.fail_back.notified() => continue,
                    () = tokio::time::sleep_until(wake) => {}
                }
                self.retry_at = None;
            }
            if self.sent == 0 {
                // Nothing in flight: what cannot make its delivery timeout fails now, in order.
                self.expire_sealed(Instant::now(), delivery_timeout);
            }
            // Never more than the window in flight (a split can leave one more sealed): the
            // broker recognises a batch sent again only among a producer's last five.
            if self.sent < self.sealed.len() && self.sent < self.window {
                let sendable = self.sent == 0 || self.sealed[self.sent].batch.is_ok();
                if sendable {
                    if self.prepare().await {
                        self.send_next().await;
                    }
                    continue;
                }
            }
            if self.batch.is_empty()
                && let Some(entry) = self.carry.pop_front()
            {
                self.push(entry);
            }
            let room = self.sealed.len() < self.window;
            let ready = self.batch_ready(linger, max_bytes);
            // A batch that is not full waits while the broker takes longer than the linger to
            // answer: it would wait behind the oldest request at the broker anyway (a
            // connection's requests are handled in order), and growing it spares the broker a
            // request when it is the bottleneck.
            let held = ready && !self.batch_full(max_bytes) && self.broker_behind(linger);
            if room && ready && !held {
                self.fill(max_bytes).await;
                if self.sealed.is_empty() {
                    self.expire_batch(delivery_timeout);
                }
                if !self.batch.is_empty() {
                    self.seal();
                }
                continue;
            }
            let holding =
                !self.sealed.is_empty() || !self.batch.is_empty() || !self.carry.is_empty();
            if self.closed && !holding {
                return;
            }
            self.wait(room && !held, room, linger).await;
        }
    }

    fn push(&mut self, entry: Entry) {
        if self.batch.is_empty() {
            // A new batch: its linger starts with its first record.
            self.lingered = false;
        }
        self.batch_bytes += encode::estimate(&entry);
        self.batch.push(entry);
    }

    fn take_queued(&self, size: usize) {
        self.state.queued_bytes.fetch_sub(size, Ordering::AcqRel);
    }

    /// When the batch's linger ends.
    fn linger_end(&self, linger: Duration) -> Instant {
        self.batch.first().map_or_else(Instant::now, |e| e.accepted + linger)
    }

    /// Whether the batch is full (or more is queued than fits in it), or nothing more will
    /// come.
    fn batch_full(&self, max_bytes: usize) -> bool {
        self.closed
            || !self.carry.is_empty()
            || self.batch_bytes >= max_bytes
            || self.batch_bytes + self.state.queued_bytes.load(Ordering::Acquire) >= max_bytes
    }

    /// Whether the batch is to be sent now: it is full, or its linger is over (or was waited
    /// out).
    fn batch_ready(&self, linger: Duration, max_bytes: usize) -> bool {
        !self.batch.is_empty()
            && (self.lingered
                || self.batch_full(max_bytes)
                || Instant::now() >= self.linger_end(linger))
    }

    /// Whether the oldest request in flight has waited longer than the linger for its answer.
    fn broker_behind(&self, linger: Duration) -> bool {
        self.sent > 0 && self.sealed.front().is_some_and(|s| s.sent_at + linger <= Instant::now())
    }

    /// Waits for the next thing to do: an answer from the broker, a record (when there is room
    /// for a batch and none is being formed), the batch's linger (when it may be sent once it
    /// is over) or a full batch, a fail-back.
    async fn wait(&mut self, may_send: bool, room: bool, linger: Duration) {
        let want_record = room && !self.closed && self.batch.is_empty();
        let lingering = may_send && !self.batch.is_empty();
        let filling = room && !self.batch.is_empty();
        // Aimed a tick early: the timer ends a sleep about a tick after its deadline.
        let end = self.linger_end(linger);
        let wake = end.checked_sub(TIMER_TICK).unwrap_or(end);
        let in_flight = self.sent > 0 && self.pipe.is_some();
        let due = self.sealed.front().map_or_else(Instant::now, |s| s.due);
        let Batcher { pipe, rx, state, .. } = self;
        let answer = async {
            match pipe.as_mut() {
                Some(pipe) => pipe.receive::<ProduceRequest>(due).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            biased;
            () = state.fail_back.notified() => {}
            answer = answer, if in_flight => self.on_answer(answer),
            entry = rx.recv(), if want_record => match entry {
                Some(entry) => {
                    self.received += 1;
                    self.take_queued(entry.size);
                    self.push(entry);
                }
                None => self.closed = true,
            },
            () = state.batch_full.notified(), if filling => {}
            () = tokio::time::sleep_until(wake), if lingering => self.lingered = true,
        }
    }

    /// Takes queued entries into the batch up to `max_bytes` (a lone record larger than that is
    /// sent alone): the carried ones first, then the channel's, received in chunks straight
    /// into the batch (each entry moved once); what does not fit is carried to the next batch.
    async fn fill(&mut self, max_bytes: usize) {
        while let Some(entry) = self.carry.pop_front() {
            if !self.batch.is_empty() && self.batch_bytes + encode::estimate(&entry) > max_bytes {
                self.carry.push_front(entry);
                return;
            }
            self.push(entry);
        }
        loop {
            let start = self.batch.len();
            // What the channel holds now, without waiting (0: empty or closed).
            let got = std::future::poll_fn(|cx| {
                Poll::Ready(match self.rx.poll_recv_many(cx, &mut self.batch, RECV_CHUNK) {
                    Poll::Ready(n) => n,
                    Poll::Pending => 0,
                })
            })
            .await;
            if got == 0 {
                return;
            }
            self.received += got as u64;
            let mut queued = 0;
            let mut overflow = None;
            for (i, entry) in self.batch.iter().enumerate().skip(start) {
                queued += entry.size;
                if overflow.is_none() {
                    let estimate = encode::estimate(entry);
                    if i > 0 && self.batch_bytes + estimate > max_bytes {
                        overflow = Some(i);
                    } else {
                        self.batch_bytes += estimate;
                    }
                }
            }
            self.take_queued(queued);
            if let Some(i) = overflow {
                // In order, ahead of anything carried (nothing is: the carry was emptied).
                self.carry.extend(self.batch.drain(i..));
                return;
            }
        }
    }

    /// The stamp of the next batch of `count` records: the session's next sequence numbers, or
    /// none (not idempotent, or no session yet: stamped when it starts).
    fn next_stamp(&mut self, count: usize) -> Stamp {
        match self.session.as_mut() {
            Some(session) => {
                let stamp = Stamp {
                    producer_id: session.identity.id,
                    epoch: session.identity.epoch,
                    base_sequence: session.next_sequence,
                };
                session.next_sequence = advance(session.next_sequence, count);
                stamp
            }
            None => Stamp::NONE,
        }
    }

    /// Encodes `entries` as one batch stamped with `stamp`.
    fn encode(&self, entries: &[Entry], bytes: usize, stamp: Stamp) -> Result<Bytes, Failure> {
        encode::record_batch(entries, self.shared.config.producer.compression, bytes, stamp)
            .map_err(|reason| {
                Failure::Fatal(format!(
                    "topic `{}` partition {}: {reason}",
                    self.state.topic, self.state.partition
                ))
            })
    }

    /// Seals the batch being formed: its records get their publish time (once: resends send
    /// the same), its sequence numbers, and their encoding.
    fn seal(&mut self) {
        let mut entries = std::mem::take(&mut self.batch);
        let bytes = std::mem::replace(&mut self.batch_bytes, 0);
        self.lingered = false;
        let publish_time = chrono::Utc::now();
        for entry in &mut entries {
            entry.record.timestamp.get_or_insert(publish_time);
        }
        let stamp = self.next_stamp(entries.len());
        let batch = self.encode(&entries, bytes, stamp);
        let now = Instant::now();
        let sealed = Sealed { entries, batch, stamp, attempts: 0, sent_at: now, due: now };
        self.sealed.push_back(sealed);
    }

    /// Gets what sending needs: the partition's identity (idempotent) and a connection to its
    /// leader, bounded by what is left of the oldest record's delivery timeout (at most
    /// `request_timeout`). False when they could not be had (the failure is handled) or a
    /// fail-back came first.
    async fn prepare(&mut self) -> bool {
        let need_session = self.idempotent && self.session.is_none();
        let need_pipe = !self.pipe.as_ref().is_some_and(Pipeline::is_usable);
        if !need_session && !need_pipe {
            return true;
        }
        if need_pipe {
            self.drop_pipe();
        }
        let delivery_timeout = self.shared.config.producer.delivery_timeout;
        let Some(oldest) = self.sealed.front() else { return false };
        let budget = oldest
            .deadline(delivery_timeout)
            .saturating_duration_since(Instant::now())
            .min(self.shared.config.request_timeout);
        let shared = Arc::clone(&self.shared);
        let (unusable, topic, partition) = (self.unusable, &self.wire_topic, self.state.partition);
        let connector = shared.client.connector();
        let get = async {
            let identity = if need_session {
                Some(shared.identities.get(connector, unusable).await?)
            } else {
                None
            };
            let pipe = if need_pipe {
                let leader = produce::leader(connector, topic, partition).await?;
                Some(leader.into_pipeline())
            } else {
                None
            };
            Ok::<_, Failure>((identity, pipe))
        };
        let got = tokio::select! {
            biased;
            () = self.state.fail_back.notified() => return false,
            got = tokio::time::timeout(budget, get) => got,
        };
        match got {
            Ok(Ok((identity, pipe))) => {
                if let Some(identity) = identity {
                    self.start_session(identity);
                }
                if pipe.is_some() {
                    self.pipe = pipe;
                }
                true
            }
            Ok(Err(failure)) => {
                if let Some(oldest) = self.sealed.front_mut() {
                    oldest.attempts += 1;
                }
                self.on_failure(failure);
                false
            }
            Err(_) => {
                if let Some(oldest) = self.sealed.front_mut() {
                    oldest.attempts += 1;
                }
                let reason = self.unanswered(budget);
                self.on_failure(Failure::Retriable(reason));
                false
            }
        }
    }

    /// Starts a session under `identity`: the sealed batches (none in flight) are numbered
    /// from 0, in order.
    fn start_session(&mut self, identity: Identity) {
        self.unusable = None;
        let mut session = Session { identity, next_sequence: 0 };
        for sealed in &mut self.sealed {
            let stamp = Stamp {
                producer_id: identity.id,
                epoch: identity.epoch,
                base_sequence: session.next_sequence,
            };
            session.next_sequence = advance(session.next_sequence, sealed.entries.len());
            sealed.stamp = stamp;
            if let Ok(batch) = &sealed.batch {
                sealed.batch = Ok(encode::restamp(batch, stamp));
            }
        }
        self.session = Some(session);
    }

    /// Gives up the partition's identity: it is replaced (the epoch bumped, or a new producer
    /// id) before the next send. Nothing may be in flight (the connection is dropped first).
    fn abandon_session(&mut self) {
        if let Some(session) = self.session.take() {
            self.unusable = Some(session.identity);
        }
    }

    /// Abandons the connection and what is in flight on it (sent again later).
    fn drop_pipe(&mut self) {
        self.pipe = None;
        self.sent = 0;
    }

    /// Sends the next sealed batch not in flight, within `request_timeout`.
    async fn send_next(&mut self) {
        let index = self.sent;
        let Some(sealed) = self.sealed.get(index) else { return };
        let batch = match &sealed.batch {
            Ok(batch) => batch.clone(),
            Err(failure) => {
                // Only the oldest gets here: nothing is in flight before it.
                let failure = failure.clone();
                self.on_failure(failure);
                return;
            }
        };
        let request_timeout = self.shared.config.request_timeout;
        let request =
            produce::request(&self.wire_topic, self.state.partition, batch, request_timeout);
        let Some(pipe) = self.pipe.as_mut() else { return };
        let version = match pipe.version::<ProduceRequest>() {
            Ok(version) => version,
            Err(error) => {
                self.on_failure(Failure::of_request(&error));
                return;
            }
        };
        let written = tokio::select! {
            biased;
            () = self.state.fail_back.notified() => {
                // The write is abandoned half done: so is the connection.
                self.drop_pipe();
                return;
            }
            written = pipe.send(&request, version, request_timeout) => written,
        };
        let delivery_timeout = self.shared.config.producer.delivery_timeout;
        match written {
            Ok(()) => {
                let sealed = &mut self.sealed[index];
                sealed.attempts += 1;
                let sent = Instant::now();
                sealed.sent_at = sent;
                sealed.due = (sent + request_timeout).min(sealed.deadline(delivery_timeout));
                self.sent += 1;
            }
            Err(error @ (RequestError::TooLarge { .. } | RequestError::Encode { .. })) => {
                // Nothing was written: the batch cannot be framed. It is split or rejected when
                // it is the oldest; until then the ones before it are answered.
                let failure = Failure::of_request(&error);
                self.sealed[index].batch = Err(failure.clone());
                if index == 0 {
                    self.on_failure(failure);
                }
            }
            Err(error) => self.on_failure(Failure::of_request(&error)),
        }
    }

    /// The answer to the oldest batch in flight.
    fn on_answer(&mut self, answer: Result<ProduceResponse, RequestError>) {
        let count = self.sealed.front().map_or(0, |s| s.entries.len());
        let outcome = match answer {
            Ok(response) => {
                produce::answer(&response, &self.wire_topic, self.state.partition, count)
            }
            Err(RequestError::Timeout { timeout, .. }) => {
                Err(Failure::Retriable(self.unanswered(timeout)))
            }
            Err(error) => Err(Failure::of_request(&error)),
        };
        match outcome {
            Ok(stored) => {
                self.sent = self.sent.saturating_sub(1);
                self.acknowledge(stored);
            }
            Err(failure) => self.on_failure(failure),
        }
    }

    /// Why an attempt got no answer within `after`.
    fn unanswered(&self, after: Duration) -> String {
        let mut reason = format!(
            "no acknowledgement within {after:?} (request_timeout, or what was left of \
             producer.delivery_timeout): the broker is unreachable or not answering"
        );
        if let Some(earlier) = self.last_error.as_deref().filter(|e| !e.starts_with("no ack")) {
            reason.push_str(&format!("; earlier: {earlier}"));
        }
        reason
    }

    /// A failure of the oldest sealed batch (or of getting a connection or identity for it):
    /// the connection is abandoned; the batch is split, rejected, or sent again (with the ones
    /// after it) after a backoff, under a new identity when the broker's record of the producer
    /// disagrees with ours.
    fn on_failure(&mut self, failure: Failure) {
        self.drop_pipe();
        let count = self.sealed.front().map_or(0, |s| s.entries.len());
        match failure {
            Failure::TooLarge(_) if count > 1 => self.split_oldest(),
            Failure::TooLarge(reason) | Failure::Fatal(reason) => self.reject_oldest(&reason),
            Failure::Sequence(reason) if !self.idempotent => self.reject_oldest(&reason),
            Failure::Sequence(reason) => {
                tracing::warn!(
                    topic = %self.state.topic, partition = self.state.partition, %reason,
                    "the broker's record of this producer disagrees with ours: the batches not \
                     acknowledged are sent again under a new producer epoch"
                );
                self.abandon_session();
                self.retry_later(reason);
            }
            Failure::Retriable(reason) => self.retry_later(reason),
        }
    }

    /// Schedules the next attempt after the backoff; the batches that would reach their
    /// delivery timeout before it fail now, in order.
    fn retry_later(&mut self, reason: String) {
        self.note_retriable(reason);
        let wake = Instant::now() + self.backoff.delay(self.retries);
        self.retries = self.retries.saturating_add(1);
        let delivery_timeout = self.shared.config.producer.delivery_timeout;
        self.expire_sealed(wake, delivery_timeout);
        self.retry_at = (!self.sealed.is_empty()).then_some(wake);
    }

    /// Splits the oldest sealed batch (too large for the broker, so not stored) in two that
    /// keep its sequence range, the first half first.
    fn split_oldest(&mut self) {
        let Some(oldest) = self.sealed.pop_front() else { return };
        let Sealed { mut entries, stamp, attempts, sent_at, due, .. } = oldest;
        let tail = entries.split_off(entries.len() / 2);
        let tail_stamp = match stamp.base_sequence {
            -1 => stamp,
            base => Stamp { base_sequence: advance(base, entries.len()), ..stamp },
        };
        for (entries, stamp) in [(tail, tail_stamp), (entries, stamp)] {
            let bytes = entries.iter().map(encode::estimate).sum();
            let batch = self.encode(&entries, bytes, stamp);
            self.sealed.push_front(Sealed { entries, batch, stamp, attempts, sent_at, due });
        }
    }

    fn note_retriable(&mut self, reason: String) {
        tracing::debug!(
            topic = %self.state.topic, partition = self.state.partition, %reason,
            "produce failed; retrying"
        );
        self.shared.health.retrying(&self.state.topic, self.state.partition, &reason);
        self.state.metrics.retries.increment(1);
        self.last_error = Some(reason);
    }

    /// Fails, in order, the sealed batches whose oldest record reaches its delivery timeout by
    /// `at` (nothing may be in flight).
    fn expire_sealed(&mut self, at: Instant, delivery_timeout: Duration) {
        let mut expired = false;
        while self.sealed.front().is_some_and(|s| s.deadline(delivery_timeout) <= at) {
            let Some(sealed) = self.sealed.pop_front() else { break };
            let last_error = self.last_error.clone().unwrap_or_default();
            if !expired {
                self.shared.health.failed(&self.state.topic, self.state.partition, &last_error);
                tracing::warn!(
                    topic = %self.state.topic, partition = self.state.partition,
                    attempts = sealed.attempts, last_error = %last_error,
                    records = sealed.entries.len(),
                    "produce failed past the delivery timeout; failing the batch back"
                );
            }
            expired = true;
            let (attempts, now) = (sealed.attempts, Instant::now());
            self.fail_timed_out(sealed.entries, attempts, &last_error, now);
        }
        if expired {
            self.abandon_session();
        }
    }

    /// Fails, in order, the records at the front of the batch being formed that are past their
    /// delivery timeout (they waited behind a failing batch). Only when nothing older is held.
    fn expire_batch(&mut self, delivery_timeout: Duration) {
        let now = Instant::now();
        let expired =
            self.batch.iter().take_while(|e| e.accepted + delivery_timeout <= now).count();
        if expired == 0 {
            return;
        }
        let last_error = self
            .last_error
            .clone()
            .unwrap_or_else(|| "the record waited in the partition's queue too long".into());
        let entries: Vec<Entry> = self.batch.drain(..expired).collect();
        for entry in &entries {
            self.batch_bytes -= encode::estimate(entry);
        }
        self.fail_timed_out(entries, 0, &last_error, now);
    }

    /// Fails `entries`, in order, with [`PublishError::DeliveryTimeout`].
    fn fail_timed_out(
        &mut self,
        entries: Vec<Entry>,
        attempts: u32,
        last_error: &str,
        now: Instant,
    ) {
        let shared = Arc::clone(&self.shared);
        let mut release = Release::new(&shared.buffer);
        let partition = self.state.partition;
        let count = entries.len() as u64;
        for entry in entries {
            let elapsed = now.saturating_duration_since(entry.accepted);
            entry.resolve(&mut release, |topic| {
                Err(PublishError::DeliveryTimeout {
                    topic,
                    partition,
                    attempts,
                    elapsed,
                    last_error: last_error.to_owned(),
                })
            });
        }
        drop(release);
        self.shared.resolved(&self.state, 0, count);
    }

    /// Fails the oldest sealed batch: the broker rejected it, or it cannot be sent.
    fn reject_oldest(&mut self, reason: &str) {
        let Some(sealed) = self.sealed.pop_front() else { return };
        tracing::warn!(
            topic = %self.state.topic, partition = self.state.partition, %reason,
            records = sealed.entries.len(), "the broker rejected a batch"
        );
        self.shared.health.failed(&self.state.topic, self.state.partition, reason);
        let failed = sealed.entries.len() as u64;
        let shared = Arc::clone(&self.shared);
        let mut release = Release::new(&shared.buffer);
        let partition = self.state.partition;
        for entry in sealed.entries {
            entry.resolve(&mut release, |topic| {
                Err(PublishError::Rejected { topic, partition, reason: reason.to_owned() })
            });
        }
        drop(release);
        self.shared.resolved(&self.state, 0, failed);
        // Its sequence numbers will never be stored: the ones after it would be out of order.
        self.abandon_session();
    }

    /// Resolves the oldest sealed batch: stored from an offset on, or (a duplicate of an
    /// earlier attempt) at offsets the broker did not say: `-1`.
    fn acknowledge(&mut self, stored: Stored) {
        let Some(sealed) = self.sealed.pop_front() else { return };
        self.shared.health.succeeded(&self.state.topic, self.state.partition);
        self.last_error = None;
        self.retries = 0;
        let partition = self.state.partition;
        let acked = sealed.entries.len() as u64;
        let metrics = &self.state.metrics;
        metrics.batch_records.record(acked as f64);
        if let Some(oldest) = sealed.entries.first() {
            metrics.latency.record(oldest.accepted.elapsed().as_secs_f64());
        }
        let shared = Arc::clone(&self.shared);
        let mut release = Release::new(&shared.buffer);
        match stored {
            // The batch's records are stored at consecutive offsets from the base offset.
            Stored::At(base_offset) => {
                for (offset, entry) in (base_offset..).zip(sealed.entries) {
                    entry.resolve(&mut release, |topic| Ok(Delivery { topic, partition, offset }));
                }
            }
            Stored::Duplicate => {
                for entry in sealed.entries {
                    entry.resolve(&mut release, |topic| {
                        Ok(Delivery { topic, partition, offset: -1 })
                    });
                }
            }
        }
        drop(release);
        self.shared.resolved(&self.state, acked, 0);
    }

    /// The index (channel order) of the oldest entry this loop holds.
    fn oldest_index(&self) -> u64 {
        let sealed: usize = self.sealed.iter().map(|s| s.entries.len()).sum();
        let held = (sealed + self.batch.len() + self.carry.len()) as u64;
        self.received - held
    }

    fn fail_back_due(&self) -> bool {
        let through = self.state.fail_through.load(Ordering::Acquire);
        through > self.state.resolved.load(Ordering::Acquire)
    }

    /// Fails back, in order, every entry whose index is below `fail_through` (nothing when no
    /// fail-back is due: a stale wake-up). The connection and what is in flight are abandoned;
    /// what stays is batched afresh (under a new identity, when sealed batches were given up).
    fn fail_back(&mut self) {
        if !self.fail_back_due() {
            return;
        }
        self.drop_pipe();
        self.retry_at = None;
        let through = self.state.fail_through.load(Ordering::Acquire);
        let mut index = self.oldest_index();
        let mut failed = 0;
        let shared = Arc::clone(&self.shared);
        let mut release = Release::new(&shared.buffer);
        if !self.sealed.is_empty() {
            self.abandon_session();
        }
        let sealed = self.sealed.drain(..).flat_map(|s| s.entries);
        let mut held: Vec<Entry> =
            sealed.chain(self.batch.drain(..)).chain(self.carry.drain(..)).collect();
        let keep = held.split_off(
            usize::try_from(through.saturating_sub(index)).unwrap_or(usize::MAX).min(held.len()),
        );
        for entry in held {
            entry.resolve(&mut release, |topic| {
                Err(PublishError::NotAcknowledgedAtShutdown { topic })
            });
            failed += 1;
            index += 1;
        }
        // What stays (accepted after the flush began) is batched afresh, in order.
        self.batch_bytes = 0;
        self.carry = keep.into();
        while index < through {
            let Ok(entry) = self.rx.try_recv() else { break };
            self.received += 1;
            self.take_queued(entry.size);
            entry.resolve(&mut release, |topic| {
                Err(PublishError::NotAcknowledgedAtShutdown { topic })
            });
            failed += 1;
            index += 1;
        }
        self.shared.resolved(&self.state, 0, failed);
    }

    /// At the end of the loop: fails back everything held and queued, and closes the channel.
    fn fail_everything(&mut self) {
        self.rx.close();
        self.drop_pipe();
        let mut failed = 0;
        let shared = Arc::clone(&self.shared);
        let mut release = Release::new(&shared.buffer);
        let sealed = self.sealed.drain(..).flat_map(|s| s.entries);
        let held: Vec<Entry> =
            sealed.chain(self.batch.drain(..)).chain(self.carry.drain(..)).collect();
        for entry in held {
            entry.resolve(&mut release, |topic| {
                Err(PublishError::NotAcknowledgedAtShutdown { topic })
            });
            failed += 1;
        }
        while let Ok(entry) = self.rx.try_recv() {
            self.received += 1;
            self.take_queued(entry.size);
            entry.resolve(&mut release, |topic| {
                Err(PublishError::NotAcknowledgedAtShutdown { topic })
            });
            failed += 1;
        }
        self.batch_bytes = 0;
        if failed > 0 {
            self.shared.resolved(&self.state, 0, failed);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retries_back_off_from_retry_backoff_doubling_to_at_most_1_s() {
        let backoff = retry_backoff(Duration::from_millis(100));
        let delays: Vec<Duration> = (0..6).map(|n| backoff.delay(n)).collect();
        let millis = [100, 200, 400, 800, 1000, 1000];
        assert_eq!(delays, millis.map(Duration::from_millis));
        assert_eq!(retry_backoff(Duration::from_millis(300)).delay(2), Duration::from_secs(1));
        assert_eq!(retry_backoff(Duration::from_secs(3)).delay(0), Duration::from_secs(1));
    }

    #[test]
    fn sequence_numbers_wrap_from_i32_max_to_0_as_kafka_counts_them() {
        assert_eq!(advance(0, 10), 10);
        assert_eq!(advance(i32::MAX - 5, 5), i32::MAX);
        assert_eq!(advance(i32::MAX - 5, 6), 0);
        assert_eq!(advance(i32::MAX, 3), 2);
    }
}
