//! One partition's batching loop: collect records for up to `producer.linger` (or until a batch
//! of `producer.max_batch_bytes` is queued), seal them into a batch, keep up to a window of
//! batches in flight through the link to the partition's leader (`link`: one connection per
//! broker, shared by the partitions it leads), resend in order what failed retriably, and
//! resolve every record's future in acceptance order.
//!
//! Owns: the loop task `bus/kafka/producer/<topic>-<partition>`, the batch being formed, the
//! sealed batches (sent and not yet answered, or waiting to be sent again) with the answers
//! awaited from the link, and, when the producer is idempotent, the partition's session: the
//! producer identity its batches carry and the next sequence number.
//!
//! Invariants:
//! - Sealed batches are handed to the leader's link in order, at most the window of them in
//!   flight (`producer.max_in_flight` when idempotent, else 1); the link sends them in that
//!   order, one per request, on its one connection, and their answers are read in that order.
//!   A batch is resolved only once every batch before it is, so records are resolved in
//!   acceptance order (what makes the flush accounting exact), and stored in it.
//! - A batch is sent when it is full or its linger is over, while the window has room; one that
//!   is not full also waits while the oldest request in flight has waited longer than the
//!   linger for its answer, until that answer or until it is full. It would wait behind that
//!   request at the broker anyway (a connection's requests are handled in order), and when the
//!   broker is the bottleneck, batches grow instead of small requests multiplying.
//! - Any failure gives up the link and whatever is in flight on it (the link does not send what
//!   it has not sent yet; answers to the rest are dropped): after a backoff
//!   (`producer.retry_backoff` doubling to 1 s) and a leader lookup in metadata read after the
//!   failure, every sealed batch is sent again from the oldest, in order. Idempotent, a batch is sent again as it was (same
//!   producer id, epoch and sequence numbers), so the broker stores it once whatever became of
//!   the earlier attempt: DUPLICATE_SEQUENCE_NUMBER says it was stored and is an
//!   acknowledgement (without an offset: `-1`). Not idempotent, a batch whose answer was lost
//!   may be stored twice (at least once); one in flight keeps the order.
//! - Idempotent, the first batch under an identity is sent alone, and the window opens once it
//!   is acknowledged. A broker with no state for a producer on a partition accepts whatever
//!   sequence comes first (KAFKA-15591): were the first batch to fail retriably while the next
//!   one, pipelined behind it, was stored, the first could never be stored under its sequence,
//!   and numbering both afresh would store the second twice.
//! - Idempotent, the sequence numbers a partition sends under an identity are contiguous from
//!   0, and every one below the oldest sealed batch's is acknowledged. A batch that leaves
//!   without an acknowledgement (rejected, past its delivery timeout, failed back) breaks that,
//!   and so does a broker that disagrees (OUT_OF_ORDER_SEQUENCE_NUMBER, UNKNOWN_PRODUCER_ID,
//!   INVALID_PRODUCER_EPOCH, PRODUCER_FENCED: the batch was not stored): the partition then
//!   gives up its identity, takes a new one from the producer's [`Identities`] (the epoch
//!   bumped, or a new producer id) and numbers its sealed batches from 0 again before sending
//!   them. A batch too large for the broker is split in two that keep its sequence range.
//! - Every wait is bounded: the leader lookup and the identity by what is left of the oldest
//!   record's delivery timeout (at most `request_timeout`); the link answers within
//!   `request_timeout` of its write, and the loop waits for the oldest answer at most twice
//!   `request_timeout` from its hand-over (the write may wait behind the connection's window)
//!   and never past the delivery timeout. A batch
//!   whose oldest record reaches `producer.delivery_timeout` before its next attempt is failed
//!   back with `DeliveryTimeout`, never forgotten.
//! - A fail-back request (a flush past its deadline) is honoured at once, in flight or not: what
//!   is in flight is given up and the entries below `fail_through` are failed back with
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
use kafka_protocol::messages::TopicName;
use kafka_protocol::protocol::StrBytes;
use tokio::sync::mpsc;
use tokio::time::Instant;

use super::encode::{self, Stamp};
use super::identity::Identity;
use super::link::{Answer, Link};
use super::produce::{self, Failure, Stored};
use super::{Entry, PartitionState, Release, Shared};
use crate::connection::RequestError;

mod batching;
mod expiry;
mod session;
mod window;

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
/// after a panic everything it held (what was in flight through its link is given up
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
        link: None,
        answers: VecDeque::new(),
        failed_at: None,
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
        batcher.abandon_link();
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
    /// Produce attempts so far (sends, and failed attempts to get a link for it).
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
    /// A batch was acknowledged under it: the broker holds the producer's state for the
    /// partition, so batches may be pipelined.
    established: bool,
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
    /// Sealed batches, oldest first: the first `sent` are in flight on `link`.
    sealed: VecDeque<Sealed>,
    sent: usize,
    /// The link to the partition's leader (shared with the other partitions it leads), kept
    /// while it works.
    link: Option<Link>,
    /// The answers to the batches in flight, oldest first (`sent` of them).
    answers: VecDeque<tokio::sync::oneshot::Receiver<Answer>>,
    /// When the link to the leader was last given up (the next leader lookup reads metadata
    /// younger than this).
    failed_at: Option<Instant>,
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
    /// and they are counted as failed here. (A panicking incarnation does not drop it: its
    /// [`Handover`] keeps it for the next.)
    fn drop(&mut self) {
        self.rx.close();
        let shared = Arc::clone(&self.shared);
        let mut release = Release::new(&shared.buffer);
        let mut failed = 0;
        let sealed = self.sealed.iter().flat_map(|s| s.entries.iter());
        for entry in sealed.chain(self.batch.iter()).chain(self.carry.iter()) {
            release.add(entry.size);
            failed += 1;
        }
        while let Ok(entry) = self.rx.try_recv() {
            release.add(entry.size);
            failed += 1;
        }
        drop(release);
        if failed > 0 {
            shared.resolved(&self.state, 0, failed);
        }
    }
}

impl Batcher {
    /// After a panic: the link is given up, and what was in flight on it is sent again,
    /// from the oldest sealed batch, with the same stamps.
    fn abandon_link(&mut self) {
        self.link = None;
        self.answers.clear();
        self.sent = 0;
        self.retry_at = None;
    }

    /// Batches that may be in flight now: the window, or 1 until the broker acknowledged a
    /// batch of the partition's identity (see the module's invariants).
    fn sending_window(&self) -> usize {
        if self.idempotent && !self.session.is_some_and(|s| s.established) {
            1
        } else {
            self.window
        }
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
            if self.sent < self.sealed.len() && self.sent < self.sending_window() {
                let sendable = self.sent == 0 || self.sealed[self.sent].batch.is_ok();
                if sendable {
                    if self.prepare().await {
                        self.send_next();
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
