//! The producer: admission, partitioning, the bounded byte buffer, and one batching loop per
//! partition in the supervisor tree (`bus/kafka/producer/<topic>-<partition>`); idempotent by
//! default (`producer.idempotence`).
//!
//! Owns: [`Producer`] (what the backend calls: `send`, `flush`, `close`, `health`), the topic
//! registry (partition counts and the partition loops, spawned lazily on a partition's first
//! record), the byte buffer, the flush procedure, and the producer's identity shared by its
//! loops (`identity`: the producer id and epoch of InitProducerId). The loops themselves are in
//! `partition` (batching, the window of requests in flight, retries in order, sequence
//! numbers), the record-batch encoding in `encode`, the classification of answers in
//! `produce`, one link per broker in `link` (the Produce requests, on the crate's leader
//! directory), health in `health`. Partition counts come from the cluster client
//! (`KafkaClient::partition_count`).
//!
//! Invariants:
//! - Every record accepted by [`Producer::send`] resolves its delivery future exactly once: the
//!   broker's acknowledgement, or an error (rejected, delivery timeout, failed back by a flush or
//!   at shutdown). A queued record that is dropped without a verdict (its loop aborted) resolves
//!   to [`PublishError::NotAcknowledgedAtShutdown`] from its own `Drop`.
//! - The buffer is bounded by memory: a record holds permits of a semaphore of
//!   `producer.buffer_bytes` for what accepting it keeps alive (its bytes, its topic's name,
//!   its headers' structs, its queue entry and delivery channel: [`charge`]) from acceptance
//!   until its verdict (see [`Release`]), so the records accepted and not resolved never hold
//!   more than the buffer, however small each is. `send` waits for room up to
//!   `producer.publish_timeout`; `close` closes the semaphore, which wakes every waiter at once.
//! - Per partition, records are sent in acceptance order, up to `producer.max_in_flight`
//!   produce requests in flight (one when not idempotent), resent in that order after a
//!   failure, stored once each when idempotent, and resolved in that order (this is what makes
//!   the flush accounting exact).
//! - No task is started except through the producer's scope; every loop ends when the scope is
//!   cancelled.
//! - One loop per partition, ever: a topic whose partition count changed (the `metadata` task
//!   reads the counts of the topics in use every `metadata.max_age`) gets a new registry entry
//!   that takes over the old entry's loops; the old entry, still held by senders, hands every
//!   loop it has not started to the new one (see `Topic::handle`), so no partition gets two.

pub(crate) mod encode;
mod health;
mod identity;
mod link;
mod partition;
mod produce;
mod telemetry;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};

use bus_core::backend::{DeliverySender, FlushReport, UnkeyedSpreader, delivery_channel};
use bus_core::{
    DeliveryFuture, Record, errors::PublishError, health::Health, health::ProducerPartitionStatus,
};
use bus_supervisor::Scope;
use parking_lot::{Mutex, RwLock};
use tokio::sync::{Notify, Semaphore, TryAcquireError, mpsc};
use tokio::time::Instant;

use crate::client::KafkaClient;
use crate::config::kafka::KafkaConfig;
use crate::error::KafkaError;

use self::health::HealthBoard;
use self::identity::Identities;

/// The backend's name in errors.
const BACKEND: &str = "kafka";

/// Publishes records through per-partition batching loops.
pub(crate) struct Producer {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for Producer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Producer").field("scope", &self.shared.scope.path()).finish()
    }
}

/// What the producer and its loops share.
pub(crate) struct Shared {
    scope: Scope,
    client: Arc<KafkaClient>,
    config: Arc<KafkaConfig>,
    buffer: Semaphore,
    capacity: usize,
    closed: AtomicBool,
    topics: RwLock<HashMap<String, Arc<Topic>>>,
    spreader: UnkeyedSpreader,
    /// Records acknowledged, ever.
    acked: AtomicU64,
    /// Records failed back to their callers (any error), ever.
    failed: AtomicU64,
    /// Notified (to all waiters) whenever a loop resolves records: flushes wait on it.
    progress: Notify,
    health: HealthBoard,
    /// The idempotent producer's id and epoch, shared by its partition loops.
    identities: Identities,
    /// The links to the brokers, one per broker, shared by the partition loops.
    links: link::Links,
}

/// A topic's partition count and its partition loops (created on first use).
struct Topic {
    name: Arc<str>,
    partitions: i32,
    slots: Box<[OnceLock<PartitionHandle>]>,
    spawning: Mutex<()>,
    /// The entry that replaced this one when the topic's partition count changed (set under
    /// `spawning`).
    superseded: OnceLock<Arc<Topic>>,
}

/// The sending side of one partition's loop.
#[derive(Clone)]
struct PartitionHandle {
    tx: mpsc::UnboundedSender<Entry>,
    state: Arc<PartitionState>,
}

/// The state a partition loop shares with senders and flushes.
pub(crate) struct PartitionState {
    topic: Arc<str>,
    partition: i32,
    /// Entries put into the loop's channel (counted after the send succeeded).
    sent: AtomicU64,
    /// Entries resolved by the loop, in channel order.
    resolved: AtomicU64,
    /// The loop fails back at once every entry whose index (channel order) is below this.
    fail_through: AtomicU64,
    /// Bytes queued in the channel and not yet taken into a batch.
    queued_bytes: AtomicUsize,
    /// Woken when the queued bytes reach a full batch.
    batch_full: Notify,
    /// Woken when `fail_through` rises.
    fail_back: Notify,
    /// The partition's metrics handles.
    metrics: telemetry::PartitionMetrics,
}

/// What [`Producer::try_send`] decided.
pub(crate) enum TrySend {
    /// Decided at once: accepted (the delivery future) or refused.
    Done(Result<DeliveryFuture, PublishError>),
    /// Accepting the record means waiting (for the topic's metadata or for room): use `send`.
    Wait(Record),
}

/// What the delivery channel of a record allocates (the state both ends share, with room for
/// the verdict), rounded up.
const DELIVERY_CHANNEL_BYTES: usize = 128;

/// What an accepted record keeps alive besides its bytes, its topic's name and its headers:
/// its entry in its partition's queue and its delivery channel.
const RECORD_OVERHEAD: usize = std::mem::size_of::<Entry>() + DELIVERY_CHANNEL_BYTES;

/// The buffer bytes an accepted record holds: what it keeps alive until its verdict (see the
/// module's invariants). An empty record holds [`RECORD_OVERHEAD`] and its topic's name.
fn charge(record: &Record) -> usize {
    let headers = record.headers.len().saturating_mul(std::mem::size_of::<bus_core::Header>());
    record
        .size()
        .saturating_add(record.topic.len())
        .saturating_add(headers)
        .saturating_add(RECORD_OVERHEAD)
}

/// A record accepted and not yet resolved.
pub(crate) struct Entry {
    record: Record,
    size: usize,
    accepted: Instant,
    delivery: Option<DeliverySender>,
}

impl Entry {
    /// Resolves the record's future with the result made from its topic (moved, not copied),
    /// and adds its buffer bytes to `release`.
    fn resolve(
        mut self,
        release: &mut Release<'_>,
        result: impl FnOnce(String) -> Result<bus_core::Delivery, PublishError>,
    ) {
        if let Some(delivery) = self.delivery.take() {
            delivery.send(result(std::mem::take(&mut self.record.topic)));
        }
        release.add(self.size);
    }
}

/// Buffer bytes of resolved records, given back to the buffer at once when dropped (one
/// semaphore release per batch rather than one per record).
///
/// A record's bytes are taken from the semaphore when it is accepted (the permits are
/// forgotten) and given back exactly once: by the `Release` it is resolved into, by the
/// partition loop's `Drop` for whatever the loop still holds or has queued when it is dropped
/// unfinished (aborted), or by `enqueue` when the loop is gone.
pub(crate) struct Release<'a> {
    buffer: &'a Semaphore,
    bytes: usize,
}

impl<'a> Release<'a> {
    pub(crate) fn new(buffer: &'a Semaphore) -> Self {
        Release { buffer, bytes: 0 }
    }

    fn add(&mut self, bytes: usize) {
        self.bytes += bytes;
    }
}

impl Drop for Release<'_> {
    fn drop(&mut self) {
        if self.bytes > 0 {
            self.buffer.add_permits(self.bytes);
        }
    }
}

impl Drop for Entry {
    fn drop(&mut self) {
        if let Some(delivery) = self.delivery.take() {
            delivery.send(Err(PublishError::NotAcknowledgedAtShutdown {
                topic: std::mem::take(&mut self.record.topic),
            }));
        }
    }
}

impl Producer {
    /// Starts the producer; its loops will live under `scope`, one per partition written to.
    pub(crate) fn start(scope: Scope, client: Arc<KafkaClient>) -> Result<Producer, KafkaError> {
        let config = Arc::clone(client.config());
        config.validate()?;
        let capacity = config.producer.buffer_bytes.min(Semaphore::MAX_PERMITS);
        let producer = Producer {
            shared: Arc::new(Shared {
                scope,
                client,
                buffer: Semaphore::new(capacity),
                capacity,
                closed: AtomicBool::new(false),
                topics: RwLock::new(HashMap::new()),
                spreader: UnkeyedSpreader::starting_at(u64::from(std::process::id())),
                acked: AtomicU64::new(0),
                failed: AtomicU64::new(0),
                progress: Notify::new(),
                health: HealthBoard::new(config.producer.delivery_timeout),
                identities: Identities::default(),
                links: link::Links::default(),
                config,
            }),
        };
        let shared = Arc::clone(&producer.shared);
        producer.shared.scope.spawn("metadata", shared.refresh_metadata())?.detach();
        Ok(producer)
    }

    /// Accepts a record, waiting for room in the buffer, and returns its delivery future.
    ///
    /// Errors: `Closed` once closed (also while waiting for room); `InvalidRecord` for an
    /// explicit partition out of range or a record larger than the buffer; `UnknownTopic` when
    /// the topic is missing and not auto-created; `BufferFull` after `producer.publish_timeout`;
    /// `Backend` when the topic's metadata cannot be had within `producer.delivery_timeout`.
    pub(crate) async fn send(&self, record: Record) -> Result<DeliveryFuture, PublishError> {
        let shared = &self.shared;
        if shared.closed.load(Ordering::Acquire) {
            return Err(PublishError::Closed);
        }
        let topic = shared.topic(&record.topic).await?;
        let partition = shared.choose_partition(&topic, &record)?;
        let size = charge(&record);
        shared.reserve(&record.topic, size).await?;
        shared.enqueue(&topic, partition, record, size)
    }

    /// [`Producer::send`] without waiting: the outcome when it is decided at once (the topic is
    /// known and the buffer has room, or the record is refused), or the record back when
    /// accepting it means waiting (then call `send`). Saves the hot path an async state machine.
    pub(crate) fn try_send(&self, record: Record) -> TrySend {
        let shared = &self.shared;
        if shared.closed.load(Ordering::Acquire) {
            return TrySend::Done(Err(PublishError::Closed));
        }
        let Some(topic) = shared.topics.read().get(record.topic.as_str()).cloned() else {
            return TrySend::Wait(record);
        };
        let partition = match shared.choose_partition(&topic, &record) {
            Ok(partition) => partition,
            Err(error) => return TrySend::Done(Err(error)),
        };
        let size = charge(&record);
        let permits = match shared.permits_for(&record.topic, size) {
            Ok(permits) => permits,
            Err(error) => return TrySend::Done(Err(error)),
        };
        match shared.buffer.try_acquire_many(permits) {
            Ok(permit) => {
                permit.forget();
                TrySend::Done(shared.enqueue(&topic, partition, record, size))
            }
            Err(TryAcquireError::Closed) => TrySend::Done(Err(PublishError::Closed)),
            Err(TryAcquireError::NoPermits) => TrySend::Wait(record),
        }
    }

    /// Waits until every record accepted so far is resolved or `deadline` passes; then fails
    /// back what is still pending ([`PublishError::NotAcknowledgedAtShutdown`]). Reports the
    /// records acknowledged and failed while it ran.
    pub(crate) async fn flush(&self, deadline: Instant) -> FlushReport {
        let shared = &self.shared;
        let acked_before = shared.acked.load(Ordering::Acquire);
        let failed_before = shared.failed.load(Ordering::Acquire);
        let targets: Vec<(Arc<PartitionState>, mpsc::UnboundedSender<Entry>, u64)> = shared
            .handles()
            .into_iter()
            .map(|(state, tx)| {
                let target = state.sent.load(Ordering::Acquire);
                (state, tx, target)
            })
            .collect();
        let done = |targets: &[(Arc<PartitionState>, mpsc::UnboundedSender<Entry>, u64)]| {
            targets.iter().all(|(state, tx, target)| {
                tx.is_closed() || state.resolved.load(Ordering::Acquire) >= *target
            })
        };
        shared.wait_for_progress(deadline, || done(&targets)).await;
        if !done(&targets) {
            // The loops fail back at once what is below `fail_through` (in memory); the flush
            // does not wait for them past its deadline. A loop that cannot (between restarts
            // after a panic, or stuck) has its records failed back when the shutdown ends it
            // (`Batcher`'s `Drop`), counted all the same (`Producer::totals`).
            for (state, _, target) in &targets {
                if state.resolved.load(Ordering::Acquire) < *target {
                    state.fail_through.fetch_max(*target, Ordering::AcqRel);
                    state.fail_back.notify_one();
                }
            }
        }
        let count = |now: u64, before: u64| usize::try_from(now - before).unwrap_or(usize::MAX);
        FlushReport {
            flushed: count(shared.acked.load(Ordering::Acquire), acked_before),
            failed: count(shared.failed.load(Ordering::Acquire), failed_before),
        }
    }

    /// Records acknowledged and failed back since the producer started (however they were
    /// resolved: by a loop, or by a loop's state dropped at a shutdown deadline).
    pub(crate) fn totals(&self) -> FlushReport {
        let count = |n: u64| usize::try_from(n).unwrap_or(usize::MAX);
        FlushReport {
            flushed: count(self.shared.acked.load(Ordering::Acquire)),
            failed: count(self.shared.failed.load(Ordering::Acquire)),
        }
    }

    /// Freezes admission: later sends fail with `Closed`, and sends waiting for room fail with
    /// `Closed` at once. Accepted records are still delivered (or failed back by `flush`).
    pub(crate) fn close(&self) {
        self.shared.closed.store(true, Ordering::Release);
        self.shared.buffer.close();
    }

    /// `Degraded` while produce requests fail or are being retried, `Ready` otherwise.
    pub(crate) fn health(&self) -> Health {
        self.shared.health.health()
    }

    /// The state of every partition written to so far.
    pub(crate) fn partitions(&self) -> Vec<ProducerPartitionStatus> {
        let mut statuses: Vec<ProducerPartitionStatus> = self
            .shared
            .handles()
            .into_iter()
            .map(|(state, _)| {
                let (producer_state, last_error) =
                    self.shared.health.state_of(&state.topic, state.partition);
                let sent = state.sent.load(Ordering::Acquire);
                let resolved = state.resolved.load(Ordering::Acquire);
                ProducerPartitionStatus {
                    partition: bus_core::TopicPartition::new(
                        Arc::clone(&state.topic),
                        state.partition,
                    ),
                    state: producer_state,
                    pending: sent.saturating_sub(resolved),
                    last_error,
                }
            })
            .collect();
        statuses.sort_by(|a, b| a.partition.cmp(&b.partition));
        statuses.dedup_by(|a, b| a.partition == b.partition);
        statuses
    }

    /// The escalation that failed the producer (a partition loop that kept panicking), if any.
    pub(crate) fn failure(&self) -> Option<bus_supervisor::Escalation> {
        self.shared.scope.failure()
    }
}

impl Shared {
    /// Why a record cannot be accepted now that the producer's scope is over: its failure (a
    /// partition loop that kept panicking past its restart intensity), or `Closed`.
    fn failed_or_closed(&self) -> PublishError {
        match self.scope.failure() {
            Some(escalation) => PublishError::Backend {
                backend: BACKEND,
                reason: format!("the producer failed: {escalation}"),
            },
            None => PublishError::Closed,
        }
    }

    /// The topic's registry entry, resolving (and auto-creating) it on first use.
    async fn topic(&self, name: &str) -> Result<Arc<Topic>, PublishError> {
        if let Some(topic) = self.topics.read().get(name) {
            return Ok(Arc::clone(topic));
        }
        let timeout = self.config.producer.delivery_timeout;
        let count = match tokio::time::timeout(timeout, self.client.partition_count(name)).await {
            Ok(Ok(count)) => count,
            Ok(Err(KafkaError::UnknownTopic { topic })) => {
                return Err(PublishError::UnknownTopic { topic });
            }
            Ok(Err(error)) => {
                return Err(PublishError::Backend { backend: BACKEND, reason: error.to_string() });
            }
            Err(_) => {
                return Err(PublishError::Backend {
                    backend: BACKEND,
                    reason: format!(
                        "topic `{name}`: no metadata from the cluster within {timeout:?} \
                         (producer.delivery_timeout); is the broker reachable?"
                    ),
                });
            }
        };
        if count < 1 {
            return Err(PublishError::Backend {
                backend: BACKEND,
                reason: format!("topic `{name}` has no partitions in the cluster's metadata"),
            });
        }
        let mut topics = self.topics.write();
        let topic =
            topics.entry(name.to_owned()).or_insert_with(|| Arc::new(Topic::new(name, count)));
        Ok(Arc::clone(topic))
    }

    /// Reads the partition count of every topic in use, every `metadata.max_age`, and resizes
    /// the entries of those whose count changed. Runs until the producer's scope is cancelled.
    async fn refresh_metadata(self: Arc<Self>) {
        let token = self.scope.token();
        let period = self.config.metadata.max_age;
        loop {
            tokio::select! {
                () = token.cancelled() => return,
                () = tokio::time::sleep(period) => {}
            }
            let known: Vec<(String, i32)> =
                self.topics.read().iter().map(|(name, t)| (name.clone(), t.partitions)).collect();
            for (name, partitions) in known {
                let refreshed = tokio::select! {
                    () = token.cancelled() => return,
                    refreshed = self.client.refresh_partition_count(&name) => refreshed,
                };
                match refreshed {
                    Ok(Some(count)) if count != partitions => {
                        if count > partitions {
                            tracing::info!(
                                topic = %name, from = partitions, to = count,
                                "the topic gained partitions: records spread over them from now on"
                            );
                        } else {
                            tracing::warn!(
                                topic = %name, from = partitions, to = count,
                                "the topic has fewer partitions than before (deleted and created \
                                 again?): records are spread over the partitions it has now"
                            );
                        }
                        let mut topics = self.topics.write();
                        if let Some(topic) = topics.get(&name).map(Arc::clone) {
                            topics.insert(name, topic.resized(count));
                        }
                    }
                    Ok(_) => {}
                    Err(error) => tracing::debug!(
                        topic = %name, %error, "metadata refresh failed; trying again next period"
                    ),
                }
            }
        }
    }

    /// The record's partition: its own (checked), else the partitioner on its key, else the
    /// spreader for unkeyed records.
    fn choose_partition(&self, topic: &Topic, record: &Record) -> Result<i32, PublishError> {
        let n = topic.partitions;
        if let Some(partition) = record.partition {
            return if (0..n).contains(&partition) {
                Ok(partition)
            } else {
                Err(PublishError::InvalidRecord {
                    topic: record.topic.clone(),
                    reason: format!(
                        "partition {partition} is out of range: the topic has {n} partitions \
                         (0..={})",
                        n - 1
                    ),
                })
            };
        }
        self.config.partitioner.partition_for(record.key.as_deref(), n, &self.spreader).map_err(
            |error| PublishError::InvalidRecord {
                topic: record.topic.clone(),
                reason: error.to_string(),
            },
        )
    }

    /// The semaphore permits for a record of `size` bytes, or why it can never fit.
    fn permits_for(&self, topic: &str, size: usize) -> Result<u32, PublishError> {
        let too_large = || PublishError::InvalidRecord {
            topic: topic.to_owned(),
            reason: format!(
                "the record holds {size} bytes (its key, value and headers, its topic's name and \
                 {RECORD_OVERHEAD} of bookkeeping), more than the whole producer buffer of {} \
                 bytes (producer.buffer_bytes)",
                self.capacity
            ),
        };
        if size > self.capacity {
            return Err(too_large());
        }
        u32::try_from(size).map_err(|_| too_large())
    }

    /// Hands an accepted record (its `size` bytes taken from the buffer) to its partition's
    /// loop.
    fn enqueue(
        self: &Arc<Self>,
        topic: &Topic,
        partition: i32,
        record: Record,
        size: usize,
    ) -> Result<DeliveryFuture, PublishError> {
        let handle = match topic.handle(partition, self) {
            Ok(handle) => handle,
            Err(error) => {
                self.buffer.add_permits(size);
                return Err(error);
            }
        };
        let (delivery, future) = delivery_channel(BACKEND);
        let entry = Entry { record, size, accepted: Instant::now(), delivery: Some(delivery) };
        let state = &handle.state;
        // Counted before the loop can take it, so that the loop's decrement never comes first.
        let before = state.queued_bytes.fetch_add(size, Ordering::AcqRel);
        if let Err(mpsc::error::SendError(mut entry)) = handle.tx.send(entry) {
            // The loop is gone (the producer's scope was shut down, or failed): not accepted.
            state.queued_bytes.fetch_sub(size, Ordering::AcqRel);
            entry.delivery.take();
            self.buffer.add_permits(size);
            return Err(self.failed_or_closed());
        }
        state.sent.fetch_add(1, Ordering::Release);
        let max = self.config.producer.max_batch_bytes;
        if before < max && before.saturating_add(size) >= max {
            state.batch_full.notify_one();
        }
        Ok(future)
    }

    /// Takes `size` bytes of the buffer (the permits are forgotten: see [`Release`]), waiting
    /// up to the publish timeout.
    async fn reserve(&self, topic: &str, size: usize) -> Result<(), PublishError> {
        let permits = self.permits_for(topic, size)?;
        match self.buffer.try_acquire_many(permits) {
            Ok(permit) => {
                permit.forget();
                return Ok(());
            }
            Err(TryAcquireError::Closed) => return Err(PublishError::Closed),
            Err(TryAcquireError::NoPermits) => {}
        }
        let started = Instant::now();
        let timeout = self.config.producer.publish_timeout;
        match tokio::time::timeout(timeout, self.buffer.acquire_many(permits)).await {
            Ok(Ok(permit)) => {
                permit.forget();
                Ok(())
            }
            Ok(Err(_closed)) => Err(PublishError::Closed),
            Err(_elapsed) => Err(PublishError::BufferFull {
                needed: size,
                capacity: self.capacity,
                waited: started.elapsed(),
            }),
        }
    }

    /// Every partition loop started so far.
    fn handles(&self) -> Vec<(Arc<PartitionState>, mpsc::UnboundedSender<Entry>)> {
        let topics = self.topics.read();
        topics
            .values()
            .flat_map(|topic| topic.slots.iter().filter_map(OnceLock::get))
            .map(|handle| (Arc::clone(&handle.state), handle.tx.clone()))
            .collect()
    }

    /// Waits until `done()` holds or `deadline` passes, re-checking whenever a loop resolves
    /// records.
    async fn wait_for_progress(&self, deadline: Instant, done: impl Fn() -> bool) {
        loop {
            let notified = self.progress.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if done() {
                return;
            }
            tokio::select! {
                () = notified => {}
                () = tokio::time::sleep_until(deadline) => return,
            }
        }
    }

    /// Counts resolved records and wakes flushes.
    fn resolved(&self, state: &PartitionState, acked: u64, failed: u64) {
        if acked > 0 {
            self.acked.fetch_add(acked, Ordering::AcqRel);
            state.metrics.acked.increment(acked);
        }
        if failed > 0 {
            self.failed.fetch_add(failed, Ordering::AcqRel);
            state.metrics.failed.increment(failed);
        }
        state.resolved.fetch_add(acked + failed, Ordering::AcqRel);
        self.progress.notify_waiters();
    }
}

impl Topic {
    fn new(name: &str, partitions: i32) -> Topic {
        let slots = (0..partitions).map(|_| OnceLock::new()).collect();
        Topic {
            name: Arc::from(name),
            partitions,
            slots,
            spawning: Mutex::new(()),
            superseded: OnceLock::new(),
        }
    }

    /// A new entry with `partitions` partitions that takes over this one's loops (those of the
    /// partitions it still has), and from now on the loops this one has not started (see
    /// [`Topic::handle`]).
    fn resized(&self, partitions: i32) -> Arc<Topic> {
        let _spawning = self.spawning.lock();
        if let Some(newer) = self.superseded.get() {
            return Arc::clone(newer);
        }
        let resized = Topic::new(&self.name, partitions);
        for (old, new) in self.slots.iter().zip(resized.slots.iter()) {
            if let Some(handle) = old.get() {
                let _ = new.set(handle.clone());
            }
        }
        let resized = Arc::new(resized);
        let _ = self.superseded.set(Arc::clone(&resized));
        resized
    }

    /// The loop of `partition`, spawned on first use as `<topic>-<partition>` in the
    /// producer's scope.
    fn handle(
        &self,
        partition: i32,
        shared: &Arc<Shared>,
    ) -> Result<&PartitionHandle, PublishError> {
        let missing = || PublishError::Backend {
            backend: BACKEND,
            reason: format!("topic `{}` partition {partition}: no partition loop", self.name),
        };
        let slot =
            usize::try_from(partition).ok().and_then(|i| self.slots.get(i)).ok_or_else(missing)?;
        if let Some(handle) = slot.get() {
            return Ok(handle);
        }
        let spawning = self.spawning.lock();
        if let Some(handle) = slot.get() {
            return Ok(handle);
        }
        if let Some(newer) = self.superseded.get() {
            // The topic was resized: its new entry owns the loops not started yet.
            drop(spawning);
            return newer.handle(partition, shared);
        }
        let (tx, rx) = mpsc::unbounded_channel();
        let state = Arc::new(PartitionState {
            topic: Arc::clone(&self.name),
            partition,
            sent: AtomicU64::new(0),
            resolved: AtomicU64::new(0),
            fail_through: AtomicU64::new(0),
            queued_bytes: AtomicUsize::new(0),
            batch_full: Notify::new(),
            fail_back: Notify::new(),
            metrics: telemetry::PartitionMetrics::new(&self.name, partition),
        });
        let name = format!("{}-{partition}", self.name);
        let handover = partition::handover(Arc::clone(shared), Arc::clone(&state), rx);
        let monitor = shared
            .scope
            .supervise(name, partition::child_spec(), move |scope| {
                partition::run(scope, handover.clone())
            })
            .map_err(|_| shared.failed_or_closed())?;
        monitor.detach();
        let _ = slot.set(PartitionHandle { tx, state });
        slot.get().ok_or_else(missing)
    }
}
