//! The processing of a subscription's messages: one message handled to the end (the handler
//! with its timeout, retries with backoff, then the dead-letter topic; poison messages at once),
//! and the handler's type erasure.
//!
//! Owns: `Runtime` (what a subscription's tasks share), `Processor` (the dispatch's processing
//! function, generic over the handler), `ErasedHandler` and [`dead_letter_headers`].
//!
//! Invariants:
//! - The handler's type is erased once per subscription, not per message: the erased form
//!   starts the subscription's keyed dispatch with a `Processor` generic over the handler, so a
//!   handler's future is polled in place on a dispatch worker, never boxed on the first attempt.
//! - A message ends `Done` only when its handler succeeded or it was stored in the dead-letter
//!   topic. A dead-letter publish that fails in a way that may pass is retried with backoff (the
//!   subscription's retry delays) for as long as it fails, the message's key blocked meanwhile
//!   (later messages of the key wait: order is kept) and the failure named in the
//!   subscription's health; a shutting-down backend ends it `Retain` (never committed, so
//!   redelivered), as does its abandonment at a revoke or shutdown deadline.
//! - A dead letter the backend refuses for good (`InvalidRecord`, `Rejected`, `UnknownTopic`)
//!   never pins the partition: under `refused_dead_letters = truncate` it is stored again
//!   without its value (`X-DLQ-Truncated`), and when that is refused too, or under `fail`, the
//!   subscription fails (the control task told through `Runtime::fail_subscription`); the
//!   message ends `Retain`, its key held until its partition's release has removed the queued
//!   messages (`Runtime::releasing`), so nothing of the key is handled past it.

use std::future::Future;
use std::sync::Arc;

use bus_supervisor::{Scope, SpawnError};

use super::health::SubscriptionHealth;
use super::telemetry::SubscriptionMetrics;
use crate::backend::Backend;
use crate::delivery::Delivery;
use crate::dispatch::{DispatchConfig, KeyedDispatch, Process, Processed};
use crate::error::{HandlerError, PublishError};
use crate::handler::{EnvelopeHandler, Envelopes, Failure, Handler, Invoke, Raw};
use crate::health::PartitionFailure;
use crate::metrics::Metrics;
use crate::options::{RefusedDeadLetters, SubscribeOptions};
use crate::record::{Message, Record, TopicPartition};

/// Headers added to a dead-lettered record (its key, value and own headers are kept).
pub mod dead_letter_headers {
    /// Why it was dead-lettered: `handler-error` or `poison`.
    pub const REASON: &str = "X-DLQ-Reason";
    /// The last error, as text.
    pub const ERROR: &str = "X-DLQ-Error";
    /// The topic it was consumed from.
    pub const SOURCE_TOPIC: &str = "X-DLQ-Source-Topic";
    /// The partition it was consumed from.
    pub const SOURCE_PARTITION: &str = "X-DLQ-Source-Partition";
    /// Its offset there.
    pub const SOURCE_OFFSET: &str = "X-DLQ-Source-Offset";
    /// The consumer group that gave up on it.
    pub const GROUP: &str = "X-DLQ-Group";
    /// Handler attempts made.
    pub const ATTEMPTS: &str = "X-DLQ-Attempts";
    /// For a record batch that could not be read (reason `unreadable-batch`; the record's value
    /// is the batch as received): its first offset.
    pub const FIRST_OFFSET: &str = "X-DLQ-First-Offset";
    /// For a record batch that could not be read: its last offset.
    pub const LAST_OFFSET: &str = "X-DLQ-Last-Offset";
    /// On a record replayed from a dead-letter topic to its source topic (by `busctl dlq
    /// replay`): where it was dead-lettered, `<dead-letter topic>/<partition>/<offset>`. The
    /// replay also writes a marker to `<dead-letter topic>.replayed` (key `<partition>/<offset>`),
    /// which a later replay reads to skip what was replayed already.
    pub const REPLAYED_FROM: &str = "X-DLQ-Replayed-From";
    /// On a dead letter stored without its value (the backend refused it whole, and the
    /// subscription's `refused_dead_letters` is `truncate`): the value's size in bytes. The
    /// value is in the source topic at the offset the other headers name.
    pub const TRUNCATED: &str = "X-DLQ-Truncated";
}

/// Everything a subscription's tasks share (the handler aside: see [`Processor`]).
pub(crate) struct Runtime {
    pub(super) backend: Arc<dyn Backend>,
    pub(super) metrics: Arc<Metrics>,
    /// The subscription's label (its topics, as `Topics` displays them).
    pub(super) topic: String,
    pub(super) options: SubscribeOptions,
    pub(super) health: Arc<SubscriptionHealth>,
    /// The subscription's labelled metrics.
    pub(super) telemetry: SubscriptionMetrics,
    /// Why the subscription must fail, set by a worker and taken by the control task (woken
    /// by `failing`).
    failure: parking_lot::Mutex<Option<String>>,
    failing: tokio::sync::Notify,
    /// The partitions being released (their queued messages already removed): a worker
    /// holding a refused dead letter's key waits until its partition is among them.
    pub(super) releasing: tokio::sync::watch::Sender<std::collections::HashSet<TopicPartition>>,
}

/// Why a dead letter was not stored.
#[derive(Debug)]
pub(super) enum NotStored {
    /// The backend is shutting down: the message stays uncommitted (redelivered).
    ShuttingDown,
    /// The backend refuses it for good (and its truncation too, under `truncate`): the
    /// refusal. The subscription fails.
    Refused(String),
}

/// Whether the backend refuses `error`'s record for good (retrying cannot help).
fn refused_for_good(error: &PublishError) -> bool {
    matches!(
        error,
        PublishError::InvalidEnvelope(_)
            | PublishError::InvalidRecord { .. }
            | PublishError::UnknownTopic { .. }
            | PublishError::Rejected { .. }
    )
}

/// Clears a message's dead-letter failure from the health when dropped (stored, or abandoned).
struct Blocked<'a> {
    health: &'a SubscriptionHealth,
    partition: TopicPartition,
    offset: i64,
    set: bool,
}

impl Drop for Blocked<'_> {
    fn drop(&mut self) {
        if self.set {
            self.health.dead_letter_done(&self.partition, self.offset);
        }
    }
}

/// The processing of a subscription's messages, generic over its handler, so that a dispatch
/// worker polls the handler's future in place (no boxing per message).
pub(crate) struct Processor<I> {
    runtime: Arc<Runtime>,
    invoke: I,
}

impl<I: Invoke> Processor<I> {
    pub(crate) fn new(runtime: Arc<Runtime>, invoke: I) -> Self {
        Processor { runtime, invoke }
    }
}

impl<I: Invoke> Process for Processor<I> {
    fn process(&self, message: Message) -> impl Future<Output = Processed> + Send {
        self.runtime.process(&self.invoke, message)
    }
}

/// How a subscription's dispatch is started: the handler's type erased once.
type StartDispatch = Box<
    dyn FnOnce(&Scope, DispatchConfig, Arc<Runtime>) -> Result<KeyedDispatch, SpawnError> + Send,
>;

/// A handler with its type erased: what the bus hands to the consumer runtime, which starts the
/// subscription's keyed dispatch with it.
pub(crate) struct ErasedHandler(StartDispatch);

impl ErasedHandler {
    fn new<I: Invoke>(invoke: I) -> Self {
        ErasedHandler(Box::new(move |scope, config, runtime| {
            KeyedDispatch::start_with(scope, config, Processor::new(runtime, invoke))
        }))
    }

    /// Starts the dispatch workers in `scope`, processing with `runtime` and this handler.
    pub(super) fn start(
        self,
        scope: &Scope,
        config: DispatchConfig,
        runtime: Arc<Runtime>,
    ) -> Result<KeyedDispatch, SpawnError> {
        (self.0)(scope, config, runtime)
    }
}

/// Erases a raw-message handler.
pub(crate) fn erase<H: Handler>(handler: H) -> ErasedHandler {
    ErasedHandler::new(Raw(handler))
}

/// Erases an envelope handler: decoding failures become [`Failure::Poison`].
pub(crate) fn erase_envelope<H: EnvelopeHandler>(handler: H) -> ErasedHandler {
    ErasedHandler::new(Envelopes(handler))
}

impl Runtime {
    pub(super) fn new(
        backend: Arc<dyn Backend>,
        metrics: Arc<Metrics>,
        topic: &str,
        options: SubscribeOptions,
    ) -> Self {
        Runtime {
            backend,
            metrics,
            topic: topic.to_owned(),
            health: SubscriptionHealth::new(),
            telemetry: SubscriptionMetrics::new(&options.group, topic),
            options,
            failure: parking_lot::Mutex::new(None),
            failing: tokio::sync::Notify::new(),
            releasing: tokio::sync::watch::Sender::new(std::collections::HashSet::new()),
        }
    }

    /// Stores `record` in the dead-letter topic, retrying with the subscription's retry delays
    /// while it fails in a way that may pass (each failure counted, logged with `what`, and
    /// named in the health as blocking `partition` at `offset` until it is stored or this is
    /// dropped). A refusal for good is met as `refused_dead_letters` says: the record stored
    /// again without its value (`truncate`), or given up (`fail`).
    ///
    /// # Errors
    ///
    /// [`NotStored::ShuttingDown`] when the backend no longer admits records (the caller keeps
    /// the message uncommitted: it is redelivered); [`NotStored::Refused`] when the backend
    /// refuses it for good (the caller fails the subscription).
    pub(super) async fn store_dead_letter(
        &self,
        mut record: Record,
        partition: &TopicPartition,
        offset: i64,
        what: &str,
    ) -> Result<Delivery, NotStored> {
        let backoff = self.options.retry.as_backoff();
        let mut blocked =
            Blocked { health: &self.health, partition: partition.clone(), offset, set: false };
        let mut failures = 0_u32;
        let dead_letter_topic = record.topic.clone();
        loop {
            let stored = match self.backend.send(record.clone()).await {
                Ok(delivery) => delivery.await,
                Err(e) => Err(e),
            };
            let error = match stored {
                Ok(delivery) => return Ok(delivery),
                Err(PublishError::Closed | PublishError::NotAcknowledgedAtShutdown { .. }) => {
                    Metrics::bump(&self.metrics.dead_letter_failures);
                    tracing::error!(
                        %partition, offset, %dead_letter_topic,
                        "{what}: the bus is shutting down; it stays uncommitted"
                    );
                    return Err(NotStored::ShuttingDown);
                }
                Err(error) => error,
            };
            Metrics::bump(&self.metrics.dead_letter_failures);
            if refused_for_good(&error) {
                let size = record.value.as_ref().map_or(0, bytes::Bytes::len);
                let truncating = self.options.refused_dead_letters == RefusedDeadLetters::Truncate
                    && size > 0
                    && record.headers.get(dead_letter_headers::TRUNCATED).is_none();
                if !truncating {
                    tracing::error!(
                        %partition, offset, %dead_letter_topic, %error,
                        "{what}: the dead letter is refused for good; the subscription fails"
                    );
                    return Err(NotStored::Refused(format!(
                        "{what} of `{partition}` at offset {offset} refused by `{dead_letter_topic}`: \
                         {error}"
                    )));
                }
                tracing::warn!(
                    %partition, offset, %dead_letter_topic, %error, value_bytes = size,
                    "{what}: the dead letter is refused for good; storing it without its value \
                     (refused_dead_letters = truncate)"
                );
                record.value = Some(bytes::Bytes::new());
                record.headers.set(dead_letter_headers::TRUNCATED, size.to_string());
                continue;
            }
            let delay = backoff.delay(failures);
            failures = failures.saturating_add(1);
            tracing::error!(
                %partition, offset, %dead_letter_topic, %error,
                attempt = failures, retry_in = ?delay,
                "{what}: dead-lettering failed; retrying (its key waits)"
            );
            self.health.dead_letter_failing(partition, offset, error.to_string());
            blocked.set = true;
            tokio::time::sleep(delay).await;
        }
    }

    /// Fails the subscription for `reason` (`partition` stopped at `offset`): named in the
    /// health now, and the control task told (it releases the partitions and leaves the group).
    pub(super) fn fail_subscription(
        &self,
        partition: &TopicPartition,
        offset: i64,
        reason: String,
    ) {
        let failure = PartitionFailure {
            partition: partition.clone(),
            offset: Some(offset),
            reason: reason.clone(),
        };
        self.health.partition_failed(failure, &self.metrics);
        self.failure.lock().get_or_insert(reason);
        self.failing.notify_one();
    }

    /// Waits until a worker asks the subscription to fail; the reason.
    pub(super) async fn failure_requested(&self) -> String {
        loop {
            if let Some(reason) = self.failure.lock().take() {
                return reason;
            }
            self.failing.notified().await;
        }
    }

    /// Handles one message to the end: handler (with timeout and retries), or dead letter.
    /// The handler gets a clone of the message per attempt (cheap: see `record`).
    ///
    /// The first attempt without a timeout is polled in place; everything else (a timeout,
    /// retries with their backoff, dead letters) is boxed, so that the future every message
    /// costs stays small (it is moved into place on the worker for each message).
    async fn process<I: Invoke>(&self, handler: &I, message: Message) -> Processed {
        if self.options.handler_timeout.is_some() {
            return Box::pin(self.attempts(handler, message, 1, None)).await;
        }
        let started = tokio::time::Instant::now();
        let outcome = handler.invoke(message.clone()).await;
        self.telemetry.handler_latency.record(started.elapsed().as_secs_f64());
        match outcome {
            Ok(()) => {
                self.metrics.handled.bump();
                self.telemetry.handled.increment(1);
                Processed::Done
            }
            Err(failure) => Box::pin(self.attempts(handler, message, 1, Some(failure))).await,
        }
    }

    /// The attempts of `message` from `attempt` on (the outcome of `attempt` given when it was
    /// made already): handler with timeout, retries with backoff, dead letter.
    async fn attempts<I: Invoke>(
        &self,
        handler: &I,
        message: Message,
        mut attempt: u32,
        mut made: Option<Failure>,
    ) -> Processed {
        let retry = &self.options.retry;
        loop {
            let started = tokio::time::Instant::now();
            let invoked = made.is_none();
            let outcome = match made.take() {
                Some(failure) => Err(failure),
                None => match self.options.handler_timeout {
                    None => handler.invoke(message.clone()).await,
                    Some(limit) => {
                        match tokio::time::timeout(limit, handler.invoke(message.clone())).await {
                            Ok(outcome) => outcome,
                            Err(_) => {
                                Metrics::bump(&self.metrics.handler_timeouts);
                                Err(Failure::Handler(HandlerError::new(format!(
                                    "handler timed out after {limit:?}"
                                ))))
                            }
                        }
                    }
                },
            };
            if invoked {
                self.telemetry.handler_latency.record(started.elapsed().as_secs_f64());
            }
            match outcome {
                Ok(()) => {
                    self.metrics.handled.bump();
                    self.telemetry.handled.increment(1);
                    return Processed::Done;
                }
                Err(Failure::Poison(reason)) => {
                    Metrics::bump(&self.metrics.poison);
                    return self.dead_letter(&message, "poison", &reason, attempt).await;
                }
                Err(Failure::Handler(error)) => {
                    Metrics::bump(&self.metrics.handler_failures);
                    self.telemetry.handler_failures.increment(1);
                    if error.is_retryable() && attempt < retry.max_attempts {
                        tracing::debug!(
                            topic = %message.topic, partition = message.partition,
                            offset = message.offset, attempt, %error, "handler failed; retrying"
                        );
                        tokio::time::sleep(retry.backoff(attempt)).await;
                        Metrics::bump(&self.metrics.retries);
                        self.telemetry.retries.increment(1);
                        attempt += 1;
                        continue;
                    }
                    let reason = error.to_string();
                    return self.dead_letter(&message, "handler-error", &reason, attempt).await;
                }
            }
        }
    }

    /// Publishes `message` to the dead-letter topic (the configured one, else `<its
    /// topic>.dlq`: a subscription to several topics dead-letters each to its own) with the
    /// error in headers, retrying while storing fails in a way that may pass (its key waits).
    /// `Done` once stored; `Retain` (never committed, so redelivered) when the bus shuts down
    /// first, or when the dead letter is refused for good (the subscription then fails).
    async fn dead_letter(
        &self,
        message: &Message,
        reason: &str,
        error: &str,
        attempts: u32,
    ) -> Processed {
        use dead_letter_headers as h;
        let mut headers = message.headers.clone();
        headers.set(h::REASON, reason.to_owned());
        headers.set(h::ERROR, error.to_owned());
        headers.set(h::SOURCE_TOPIC, message.topic.to_string());
        headers.set(h::SOURCE_PARTITION, message.partition.to_string());
        headers.set(h::SOURCE_OFFSET, message.offset.to_string());
        headers.set(h::GROUP, self.options.group.clone());
        headers.set(h::ATTEMPTS, attempts.to_string());
        let record = Record {
            topic: self.options.dead_letter_topic_for(&message.topic),
            key: message.key.clone(),
            value: message.value.clone(),
            headers,
            timestamp: Some(message.timestamp),
            partition: None,
        };
        let partition = TopicPartition::new(Arc::clone(&message.topic), message.partition);
        let what = "message dead-letter";
        match self.store_dead_letter(record, &partition, message.offset, what).await {
            Ok(delivery) => {
                Metrics::bump(&self.metrics.dead_lettered);
                self.telemetry.dead_lettered.increment(1);
                tracing::warn!(
                    topic = %message.topic, partition = message.partition,
                    offset = message.offset, dead_letter_topic = %delivery.topic,
                    dead_letter_offset = delivery.offset, reason, error,
                    "message dead-lettered"
                );
                Processed::Done
            }
            Err(NotStored::ShuttingDown) => Processed::Retain,
            Err(NotStored::Refused(reason)) => {
                // Never committed: the partition's next owner gets it again. The key is held
                // until the release has removed the partition's queued messages, so that none
                // of the key's later messages is handled past this one.
                let mut releasing = self.releasing.subscribe();
                self.fail_subscription(&partition, message.offset, reason);
                let _ = releasing.wait_for(|released| released.contains(&partition)).await;
                Processed::Retain
            }
        }
    }
}
