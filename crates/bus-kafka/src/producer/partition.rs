//! One partition's batching loop: collect records for up to `producer.linger` (or until a batch
//! of `producer.max_batch_bytes` is queued), produce them in one request, retry what failed
//! retriably, and resolve every record's future.
//!
//! Owns: the loop task `bus/kafka/producer/<topic>-<partition>` and its batch.
//!
//! Invariants:
//! - One produce request in flight per partition, on the loop's own connection to the
//!   partition's leader; a batch is retried (with backoff from `producer.retry_backoff`,
//!   doubling, capped at 1 s, and a fresh leader lookup and connection) until it
//!   is acknowledged, rejected, or its oldest record reaches `producer.delivery_timeout`. Only
//!   then is the next batch formed, so records are stored and resolved in acceptance order.
//! - Every produce attempt is bounded by `request_timeout` (and by what is left of the delivery
//!   timeout): a produce future that runs out of time is dropped (cancelled), and its records
//!   are retried or failed back, never forgotten.
//! - A fail-back request (a flush past its deadline) is honoured at once, in flight or not: the
//!   produce in progress is dropped and the entries below `fail_through` are failed back with
//!   `NotAcknowledgedAtShutdown`.
//! - A batch waits for its linger to within the timer's millisecond tick either way: tokio's
//!   timer ends a sleep on a tick after its deadline (about a tick late on average), so the
//!   wait aims one tick ([`TIMER_TICK`]) early; a 1 ms linger waits about 1 ms, not 2.
//! - The loop ends when the producer's scope is cancelled; whatever it still holds is failed
//!   back (and an entry dropped by an abort fails itself back from its `Drop`).

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::task::Poll;
use std::time::Duration;

use bus_core::{Delivery, PublishError};
use bus_supervisor::Backoff;
use kafka_protocol::messages::TopicName;
use kafka_protocol::protocol::StrBytes;
use tokio::sync::mpsc;
use tokio::time::Instant;

use super::produce::{self, Failure};
use super::{Entry, PartitionState, Release, Shared, encode};
use crate::connection::Connection;

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

/// Runs the loop until the producer's scope is cancelled.
pub(super) async fn run(
    shared: Arc<Shared>,
    state: Arc<PartitionState>,
    rx: mpsc::UnboundedReceiver<Entry>,
) {
    let token = shared.scope.token();
    let state_topic = state.topic.to_string();
    let mut batcher = Batcher {
        shared,
        state,
        rx,
        batch: Vec::new(),
        batch_bytes: 0,
        received: 0,
        carry: VecDeque::new(),
        last_error: None,
        conn: None,
        wire_topic: TopicName(StrBytes::from_string(state_topic)),
    };
    tokio::select! {
        biased;
        () = token.cancelled() => {}
        () = batcher.run() => {}
    }
    batcher.fail_everything();
}

struct Batcher {
    shared: Arc<Shared>,
    state: Arc<PartitionState>,
    rx: mpsc::UnboundedReceiver<Entry>,
    /// The batch being formed or sent, in acceptance order.
    batch: Vec<Entry>,
    batch_bytes: usize,
    /// Entries taken from the channel so far (the index of the next one).
    received: u64,
    /// Entries taken from the channel that did not fit in the batch (or split off a batch the
    /// broker found too large), in order: the next batches' first.
    carry: VecDeque<Entry>,
    /// The last produce error, for records that expire waiting behind a failing batch.
    last_error: Option<String>,
    /// The connection to the partition's leader, kept between successful requests.
    conn: Option<Connection>,
    /// The topic's name as the protocol encodes it.
    wire_topic: TopicName,
}

enum Outcome {
    /// Stored from this offset on.
    Acked(i64),
    Failed(Failure),
    TimedOut(Duration),
    FailBack,
}

impl Drop for Batcher {
    /// A loop dropped unfinished (aborted at a shutdown deadline, or panicking): its entries
    /// fail themselves back (`Entry`'s `Drop`); their buffer bytes are given back here.
    fn drop(&mut self) {
        self.rx.close();
        let shared = Arc::clone(&self.shared);
        let mut release = Release::new(&shared.buffer);
        for entry in self.batch.iter().chain(self.carry.iter()) {
            release.add(entry.size);
        }
        while let Ok(entry) = self.rx.try_recv() {
            release.add(entry.size);
        }
    }
}

impl Batcher {
    async fn run(&mut self) {
        let linger = self.shared.config.producer.linger;
        let max_bytes = self.shared.config.producer.max_batch_bytes;
        loop {
            if self.fail_back_due() {
                self.fail_back();
                continue;
            }
            if self.batch.is_empty() {
                if let Some(entry) = self.carry.pop_front() {
                    self.push(entry);
                } else {
                    let fail_back = self.state.fail_back.notified();
                    tokio::select! {
                        biased;
                        () = fail_back => continue,
                        entry = self.rx.recv() => match entry {
                            Some(entry) => {
                                self.received += 1;
                                self.take_queued(entry.size);
                                self.push(entry);
                            }
                            None => return,
                        },
                    }
                }
            }
            // Linger: wait for more records, unless a full batch is queued already.
            let linger_end = self.batch.first().map_or_else(Instant::now, |e| e.accepted + linger);
            // Aimed a tick early: the timer ends the sleep about a tick after its deadline.
            let wake_at = linger_end.checked_sub(TIMER_TICK).unwrap_or(linger_end);
            if self.batch_bytes < max_bytes
                && self.batch_bytes + self.state.queued_bytes.load(Ordering::Acquire) < max_bytes
                && Instant::now() < linger_end
            {
                tokio::select! {
                    biased;
                    () = self.state.fail_back.notified() => continue,
                    () = self.state.batch_full.notified() => {}
                    () = tokio::time::sleep_until(wake_at) => {}
                }
            }
            self.fill(max_bytes).await;
            self.deliver().await;
        }
    }

    fn push(&mut self, entry: Entry) {
        self.batch_bytes += encode::estimate(&entry);
        self.batch.push(entry);
    }

    fn take_queued(&self, size: usize) {
        self.state.queued_bytes.fetch_sub(size, Ordering::AcqRel);
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

    /// The index (channel order) of the oldest entry this loop holds.
    fn oldest_index(&self) -> u64 {
        let held = (self.batch.len() + self.carry.len()) as u64;
        self.received - held
    }

    fn fail_back_due(&self) -> bool {
        let through = self.state.fail_through.load(Ordering::Acquire);
        through > self.state.resolved.load(Ordering::Acquire)
    }

    /// Fails back, in order, every entry whose index is below `fail_through` (nothing when no
    /// fail-back is due: a stale wake-up).
    fn fail_back(&mut self) {
        if !self.fail_back_due() {
            return;
        }
        let through = self.state.fail_through.load(Ordering::Acquire);
        let mut index = self.oldest_index();
        let mut failed = 0;
        let shared = Arc::clone(&self.shared);
        let mut release = Release::new(&shared.buffer);
        let mut held: Vec<Entry> = self.batch.drain(..).chain(self.carry.drain(..)).collect();
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
        let mut failed = 0;
        let shared = Arc::clone(&self.shared);
        let mut release = Release::new(&shared.buffer);
        let held: Vec<Entry> = self.batch.drain(..).chain(self.carry.drain(..)).collect();
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

    /// Sends the batch, retrying retriable failures, and resolves every entry in it.
    async fn deliver(&mut self) {
        let producer = &self.shared.config.producer;
        let delivery_timeout = producer.delivery_timeout;
        let request_timeout = self.shared.config.request_timeout;
        let backoff = retry_backoff(producer.retry_backoff);
        let mut attempts: u32 = 0;
        // Retriable failures so far (not counting splits and fail-backs): they set the backoff.
        let mut retries: u32 = 0;
        loop {
            self.expire(attempts, delivery_timeout);
            let Some(oldest) = self.batch.first() else { return };
            let deadline = oldest.accepted + delivery_timeout;
            let now = Instant::now();
            let budget = deadline.saturating_duration_since(now).min(request_timeout);
            attempts += 1;
            let outcome = self.attempt(budget).await;
            match outcome {
                Outcome::Acked(base_offset) => {
                    self.acknowledge(base_offset);
                    return;
                }
                Outcome::FailBack => {
                    self.fail_back();
                    if self.batch.is_empty() {
                        return;
                    }
                    continue;
                }
                Outcome::Failed(failure) => match failure {
                    Failure::TooLarge(_) if self.batch.len() > 1 => {
                        // Split: the first half now, the rest as the next batches.
                        let tail = self.batch.split_off(self.batch.len() / 2);
                        for entry in tail.into_iter().rev() {
                            self.batch_bytes -= encode::estimate(&entry);
                            self.carry.push_front(entry);
                        }
                        attempts -= 1;
                        continue;
                    }
                    Failure::Fatal(reason) | Failure::TooLarge(reason) => {
                        self.reject(&reason);
                        return;
                    }
                    Failure::Retriable(reason) => self.note_retriable(reason),
                },
                Outcome::TimedOut(after) => {
                    let mut reason = format!(
                        "no acknowledgement within {after:?} (request_timeout, or what was left of \
                         producer.delivery_timeout): the broker is unreachable or not answering"
                    );
                    if let Some(earlier) =
                        self.last_error.as_deref().filter(|e| !e.starts_with("no ack"))
                    {
                        reason.push_str(&format!("; earlier: {earlier}"));
                    }
                    self.note_retriable(reason);
                }
            }
            // Retriable: a fresh leader lookup and connection next time, after a backoff.
            self.conn = None;
            let wake = Instant::now() + backoff.delay(retries);
            if wake >= deadline {
                self.time_out(attempts);
                return;
            }
            retries = retries.saturating_add(1);
            tokio::select! {
                biased;
                () = self.state.fail_back.notified() => {
                    if self.fail_back_due() {
                        self.fail_back();
                    }
                }
                () = tokio::time::sleep_until(wake) => {}
            }
        }
    }

    /// One produce request for the whole batch, bounded by `budget`, abandoned on fail-back.
    /// The connection is kept only after a success: any failure (or an abandoned request)
    /// means a fresh leader lookup next time.
    async fn attempt(&mut self, budget: Duration) -> Outcome {
        // Records without a timestamp get their publish time, once: retries send the same.
        let publish_time = chrono::Utc::now();
        for entry in &mut self.batch {
            entry.record.timestamp.get_or_insert(publish_time);
        }
        let config = &self.shared.config;
        let batch = match encode::record_batch(
            &self.batch,
            config.producer.compression,
            self.batch_bytes,
        ) {
            Ok(batch) => batch,
            Err(reason) => {
                return Outcome::Failed(Failure::Fatal(format!(
                    "topic `{}` partition {}: {reason}",
                    self.state.topic, self.state.partition
                )));
            }
        };
        let count = self.batch.len();
        let (state, slot, wire_topic) = (&self.state, &mut self.conn, &self.wire_topic);
        let connector = self.shared.client.connector();
        // Each request (connecting, the leader lookup, the produce) is bounded by
        // `request_timeout` on its own; the whole attempt by `budget` (at most that, and at most
        // what is left of the delivery timeout) below.
        let produce = async move {
            let mut conn = match slot.take() {
                Some(conn) if conn.is_usable() => conn,
                _ => produce::leader(connector, wire_topic, state.partition).await?,
            };
            let base_offset = produce::produce(
                &mut conn,
                wire_topic,
                state.partition,
                batch,
                count,
                config.request_timeout,
            )
            .await?;
            *slot = Some(conn);
            Ok::<i64, Failure>(base_offset)
        };
        tokio::select! {
            biased;
            () = state.fail_back.notified() => Outcome::FailBack,
            result = tokio::time::timeout(budget, produce) => match result {
                Ok(Ok(base_offset)) => Outcome::Acked(base_offset),
                Ok(Err(failure)) => Outcome::Failed(failure),
                Err(_) => Outcome::TimedOut(budget),
            },
        }
    }

    fn note_retriable(&mut self, reason: String) {
        tracing::debug!(
            topic = %self.state.topic, partition = self.state.partition, %reason,
            "produce failed; retrying"
        );
        self.shared.health.retrying(&self.state.topic, self.state.partition, &reason);
        self.last_error = Some(reason);
    }

    /// Fails, in order, the entries at the front of the batch that are past their delivery
    /// timeout (they waited behind a failing batch).
    fn expire(&mut self, attempts: u32, delivery_timeout: Duration) {
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
        self.fail_timed_out(expired, attempts, &last_error, now);
    }

    /// Fails the first `count` entries of the batch, in order, with
    /// [`PublishError::DeliveryTimeout`].
    fn fail_timed_out(&mut self, count: usize, attempts: u32, last_error: &str, now: Instant) {
        let shared = Arc::clone(&self.shared);
        let mut release = Release::new(&shared.buffer);
        let partition = self.state.partition;
        for entry in self.batch.drain(..count) {
            self.batch_bytes -= encode::estimate(&entry);
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
        self.shared.resolved(&self.state, 0, count as u64);
    }

    /// Fails the whole batch: the next attempt could not start before the oldest record's
    /// delivery timeout.
    fn time_out(&mut self, attempts: u32) {
        let now = Instant::now();
        let last_error = self.last_error.clone().unwrap_or_default();
        self.shared.health.failed(&self.state.topic, self.state.partition, &last_error);
        tracing::warn!(
            topic = %self.state.topic, partition = self.state.partition, attempts,
            last_error = %last_error, records = self.batch.len(),
            "produce failed past the delivery timeout; failing the batch back"
        );
        self.fail_timed_out(self.batch.len(), attempts, &last_error, now);
    }

    fn reject(&mut self, reason: &str) {
        tracing::warn!(
            topic = %self.state.topic, partition = self.state.partition, %reason,
            records = self.batch.len(), "the broker rejected a batch"
        );
        self.shared.health.failed(&self.state.topic, self.state.partition, reason);
        let failed = self.batch.len() as u64;
        let shared = Arc::clone(&self.shared);
        let mut release = Release::new(&shared.buffer);
        let partition = self.state.partition;
        for entry in self.batch.drain(..) {
            entry.resolve(&mut release, |topic| {
                Err(PublishError::Rejected { topic, partition, reason: reason.to_owned() })
            });
        }
        drop(release);
        self.batch_bytes = 0;
        self.shared.resolved(&self.state, 0, failed);
    }

    fn acknowledge(&mut self, base_offset: i64) {
        self.shared.health.succeeded(&self.state.topic, self.state.partition);
        self.last_error = None;
        let partition = self.state.partition;
        let mut acked = 0;
        let shared = Arc::clone(&self.shared);
        let mut release = Release::new(&shared.buffer);
        // The batch's records are stored at consecutive offsets from the base offset.
        for (offset, entry) in (base_offset..).zip(self.batch.drain(..)) {
            entry.resolve(&mut release, |topic| Ok(Delivery { topic, partition, offset }));
            acked += 1;
        }
        drop(release);
        self.batch_bytes = 0;
        self.shared.resolved(&self.state, acked, 0);
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
}
