//! The consumer runtime shared by every backend: one per subscription.
//!
//! Owns: [`Subscription`] (the user's handle), the subscription's control task (group events,
//! fetch loops per assigned partition, commit schedule, revoke and stop), and the processing of
//! one message (handler with timeout, retries with backoff, dead letters, poison messages).
//!
//! Tasks, under the bus's `consumer` scope:
//! ```text
//! consumer/<group>/<topic>/control               group events, commits, stop
//! consumer/<group>/<topic>/member/…              the backend's own group tasks
//! consumer/<group>/<topic>/dispatch/worker-<i>   keyed dispatch workers
//! consumer/<group>/<topic>/fetch/<topic>-<p>/fetch   one fetch loop per assigned partition
//! ```
//!
//! Invariants:
//! - A message is committed only when it and every earlier message of its partition were handled
//!   or dead-lettered (the keyed dispatch's commit trackers). A message whose handler did not
//!   finish, or whose dead-lettering failed, is never committed: it is redelivered.
//! - A revoked partition's fetch loop is stopped before its handlers are drained, and its offsets
//!   are committed before the revocation is completed.
//! - At most `max_in_flight` messages are in the dispatch; a fetch loop holds at most one fetched
//!   batch (bounded in bytes) while it waits for room.
//! - Nothing here spawns outside the supervisor.

use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use bus_supervisor::{Scope, ScopeShutdownError as TasksShutdownError};
use parking_lot::Mutex;
use tokio::sync::watch;
use tokio::time::Instant;

use crate::backend::{
    Backend, GroupMember, JoinRequest, MemberEvent, PartitionReader, Revocation, StartAt,
    TopicPartition,
};
use crate::dispatch::{DispatchConfig, KeyedDispatch, Process, Processed};
use crate::error::{HandlerError, SubscribeError};
use crate::handler::{ErasedHandler, Failure, Invoke};
use crate::metrics::Metrics;
use crate::options::SubscribeOptions;
use crate::record::{Message, Record};

/// Most bytes a fetch loop asks for at once.
const FETCH_MAX_BYTES: usize = 1024 * 1024;
/// Delay before retrying a failed group or fetch operation.
const RETRY_DELAY: Duration = Duration::from_millis(200);

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
}

/// What stopping a subscription did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SubscriptionReport {
    /// The subscription's topic.
    pub topic: String,
    /// Its consumer group.
    pub group: String,
    /// Messages fetched but not started when it stopped (uncommitted: redelivered).
    pub discarded: usize,
    /// Handlers still running at the deadline, cancelled (uncommitted: redelivered).
    pub abandoned: usize,
    /// The messages of those handlers, by partition and offset.
    pub abandoned_offsets: Vec<(TopicPartition, i64)>,
    /// The offsets committed last, per partition.
    pub committed: Vec<(TopicPartition, i64)>,
    /// Whether it left its group cleanly.
    pub left_group: bool,
}

/// Everything a subscription's tasks share (the handler aside: see [`Processor`]).
pub(crate) struct Runtime {
    backend: Arc<dyn Backend>,
    metrics: Arc<Metrics>,
    topic: String,
    options: SubscribeOptions,
    dead_letter_topic: String,
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

/// The list of running subscriptions a bus keeps.
pub(crate) type Registry = Arc<Mutex<Vec<Arc<SubscriptionControl>>>>;

/// The bus's side of a subscription: how to stop it and where its report appears.
pub(crate) struct SubscriptionControl {
    pub(crate) topic: String,
    pub(crate) group: String,
    pub(crate) scope: Scope,
    pub(crate) dispatch: KeyedDispatch,
    stop: watch::Sender<Option<Instant>>,
    report: watch::Receiver<Option<SubscriptionReport>>,
}

impl std::fmt::Debug for SubscriptionControl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SubscriptionControl")
            .field("topic", &self.topic)
            .field("group", &self.group)
            .field("scope", &self.scope.path())
            .finish()
    }
}

impl SubscriptionControl {
    /// Asks the subscription to stop by `deadline`, waits for its report (up to the deadline and
    /// a short grace), then shuts its tasks down.
    pub(crate) async fn stop(
        &self,
        deadline: Instant,
    ) -> (SubscriptionReport, Result<bus_supervisor::ScopeShutdownReport, TasksShutdownError>) {
        self.stop.send_if_modified(|current| {
            if current.is_none() {
                *current = Some(deadline);
                true
            } else {
                false
            }
        });
        let mut report = self.report.clone();
        let grace = Duration::from_millis(250);
        let waited =
            tokio::time::timeout_at(deadline + grace, report.wait_for(Option::is_some)).await;
        let report = match waited {
            Ok(Ok(r)) => r.clone().unwrap_or_default(),
            _ => SubscriptionReport {
                topic: self.topic.clone(),
                group: self.group.clone(),
                ..SubscriptionReport::default()
            },
        };
        let remaining = deadline.saturating_duration_since(Instant::now());
        let tasks = self.scope.shutdown(remaining).await;
        (report, tasks)
    }
}

/// A running subscription. Dropping the handle leaves it running until the bus shuts down;
/// [`Subscription::unsubscribe`] stops it.
#[derive(Debug)]
pub struct Subscription {
    control: Arc<SubscriptionControl>,
    registry: std::sync::Weak<Mutex<Vec<Arc<SubscriptionControl>>>>,
}

/// What unsubscribing did.
#[derive(Debug, Clone)]
pub struct UnsubscribeReport {
    /// The subscription's own report.
    pub subscription: SubscriptionReport,
    /// Its tasks' shutdown.
    pub tasks: bus_supervisor::ScopeShutdownReport,
}

impl Subscription {
    /// The subscribed topic.
    pub fn topic(&self) -> &str {
        &self.control.topic
    }

    /// The consumer group.
    pub fn group(&self) -> &str {
        &self.control.group
    }

    /// The supervisor scope holding the subscription's tasks.
    pub fn scope(&self) -> &Scope {
        &self.control.scope
    }

    /// Stops the subscription within `timeout`: stops fetching, lets running handlers finish
    /// until the deadline (abandoning, uncommitted, those that do not), commits, leaves the group
    /// and shuts its tasks down.
    ///
    /// # Errors
    ///
    /// The supervisor's [`bus_supervisor::ScopeShutdownError`] naming tasks that would not stop.
    pub async fn unsubscribe(
        self,
        timeout: Duration,
    ) -> Result<UnsubscribeReport, TasksShutdownError> {
        let deadline = Instant::now() + timeout;
        let (subscription, tasks) = self.control.stop(deadline).await;
        if let Some(registry) = self.registry.upgrade() {
            registry.lock().retain(|c| !Arc::ptr_eq(c, &self.control));
        }
        Ok(UnsubscribeReport { subscription, tasks: tasks? })
    }
}

/// Starts a subscription: joins the group, starts the dispatch and the control task.
pub(crate) async fn subscribe(
    parent: &Scope,
    backend: Arc<dyn Backend>,
    metrics: Arc<Metrics>,
    topic: &str,
    options: SubscribeOptions,
    handler: ErasedHandler,
    registry: &Registry,
) -> Result<Subscription, SubscribeError> {
    options.validate()?;
    let scope = parent.child(&options.group).child(topic);
    let request = JoinRequest {
        group: options.group.clone(),
        topics: vec![topic.to_owned()],
        scope: scope.child("member"),
        rebalance_timeout: options.rebalance_timeout,
    };
    let member = backend.join(request.clone()).await?;
    let runtime = Arc::new(Runtime {
        backend,
        metrics,
        topic: topic.to_owned(),
        dead_letter_topic: options.dead_letter_topic_for(topic),
        options,
    });
    let dispatch = handler.start(
        &scope.child("dispatch"),
        DispatchConfig::from_options(&runtime.options),
        Arc::clone(&runtime),
    )?;
    let (stop, stop_rx) = watch::channel(None);
    let (report_tx, report) = watch::channel(None);
    let control = Control {
        runtime: Arc::clone(&runtime),
        member,
        join: request,
        scope: scope.clone(),
        dispatch: dispatch.clone(),
        fetch: scope.child("fetch"),
        fetchers: HashMap::new(),
        last_committed: HashMap::new(),
    };
    scope.spawn("control", control.run(stop_rx, report_tx))?.detach();
    let control = Arc::new(SubscriptionControl {
        topic: runtime.topic.clone(),
        group: runtime.options.group.clone(),
        scope,
        dispatch,
        stop,
        report,
    });
    registry.lock().push(Arc::clone(&control));
    Ok(Subscription { control, registry: Arc::downgrade(registry) })
}

impl Runtime {
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
        match handler.invoke(message.clone()).await {
            Ok(()) => {
                self.metrics.handled.bump();
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
            match outcome {
                Ok(()) => {
                    self.metrics.handled.bump();
                    return Processed::Done;
                }
                Err(Failure::Poison(reason)) => {
                    Metrics::bump(&self.metrics.poison);
                    return self.dead_letter(&message, "poison", &reason, attempt).await;
                }
                Err(Failure::Handler(error)) => {
                    Metrics::bump(&self.metrics.handler_failures);
                    if error.is_retryable() && attempt < retry.max_attempts {
                        tracing::debug!(
                            topic = %message.topic, partition = message.partition,
                            offset = message.offset, attempt, %error, "handler failed; retrying"
                        );
                        tokio::time::sleep(retry.backoff(attempt)).await;
                        Metrics::bump(&self.metrics.retries);
                        attempt += 1;
                        continue;
                    }
                    let reason = error.to_string();
                    return self.dead_letter(&message, "handler-error", &reason, attempt).await;
                }
            }
        }
    }

    /// Publishes `message` to the dead-letter topic with the error in headers. `Done` once
    /// stored; `Retain` (never committed, so redelivered) when that fails.
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
            topic: self.dead_letter_topic.clone(),
            key: message.key.clone(),
            value: message.value.clone(),
            headers,
            timestamp: Some(message.timestamp),
            partition: None,
        };
        let stored = match self.backend.send(record).await {
            Ok(delivery) => delivery.await,
            Err(e) => Err(e),
        };
        match stored {
            Ok(delivery) => {
                Metrics::bump(&self.metrics.dead_lettered);
                tracing::warn!(
                    topic = %message.topic, partition = message.partition,
                    offset = message.offset, dead_letter_topic = %delivery.topic,
                    dead_letter_offset = delivery.offset, reason, error,
                    "message dead-lettered"
                );
                Processed::Done
            }
            Err(e) => {
                Metrics::bump(&self.metrics.dead_letter_failures);
                tracing::error!(
                    topic = %message.topic, partition = message.partition,
                    offset = message.offset, dead_letter_topic = %self.dead_letter_topic,
                    error = %e, "dead-lettering failed; the message stays uncommitted"
                );
                Processed::Retain
            }
        }
    }
}

/// What releasing partitions did.
struct Released {
    discarded: usize,
    abandoned: Vec<(TopicPartition, i64)>,
    committed: Vec<(TopicPartition, i64)>,
}

/// The control task's state.
struct Control {
    runtime: Arc<Runtime>,
    member: Box<dyn GroupMember>,
    /// How the member joined, to join again when the group drops it.
    join: JoinRequest,
    /// The subscription's scope (a new member scope is made there on rejoin).
    scope: Scope,
    dispatch: KeyedDispatch,
    fetch: Scope,
    fetchers: HashMap<TopicPartition, Scope>,
    last_committed: HashMap<TopicPartition, i64>,
}

impl Control {
    async fn run(
        mut self,
        mut stop: watch::Receiver<Option<Instant>>,
        report: watch::Sender<Option<SubscriptionReport>>,
    ) {
        let mut tick = tokio::time::interval(self.runtime.options.commit_interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let deadline = loop {
            tokio::select! {
                biased;
                deadline = requested_deadline(&mut stop) => break deadline,
                event = self.member.next_event() => match event {
                    Ok(MemberEvent::Assigned(partitions)) => self.assigned(partitions).await,
                    Ok(MemberEvent::Revoked(revocation)) => self.revoked(revocation).await,
                    Err(error) if error.retriable => {
                        tracing::warn!(group = %self.runtime.options.group, %error, "group event failed; retrying");
                        tokio::time::sleep(RETRY_DELAY).await;
                    }
                    Err(error) => self.rejoin(error).await,
                },
                _ = tick.tick() => self.commit().await,
            }
        };
        let result = self.stop(deadline).await;
        let _ = report.send(Some(result));
    }

    async fn assigned(&mut self, partitions: Vec<TopicPartition>) {
        if partitions.is_empty() {
            return;
        }
        // The committed offsets are needed to start at the right place: retried (never guessed,
        // which would skip or replay records) until the rebalance timeout, after which these
        // partitions stay unread until the next assignment.
        let give_up = Instant::now() + self.runtime.options.rebalance_timeout;
        let committed = loop {
            match self.member.committed(&partitions).await {
                Ok(committed) => break committed,
                Err(error) if error.retriable && Instant::now() < give_up => {
                    tracing::warn!(%error, "cannot read committed offsets; retrying");
                    tokio::time::sleep(RETRY_DELAY).await;
                }
                Err(error) => {
                    Metrics::bump(&self.runtime.metrics.group_failures);
                    tracing::error!(
                        ?partitions, %error,
                        "cannot read committed offsets; these partitions stay unread until the next assignment"
                    );
                    return;
                }
            }
        };
        for (partition, committed) in partitions.into_iter().zip(committed) {
            let start = committed
                .map(StartAt::Offset)
                .unwrap_or_else(|| self.runtime.options.auto_offset_reset.into());
            let reader = loop {
                match self.member.open(&partition, start).await {
                    Ok(reader) => break Some(reader),
                    Err(error) if error.retriable && Instant::now() < give_up => {
                        tracing::warn!(%partition, %error, "cannot open partition; retrying");
                        tokio::time::sleep(RETRY_DELAY).await;
                    }
                    Err(error) => {
                        Metrics::bump(&self.runtime.metrics.group_failures);
                        tracing::error!(
                            %partition, %error,
                            "cannot open partition; it stays unread until the next assignment"
                        );
                        break None;
                    }
                }
            };
            let Some(reader) = reader else { continue };
            let scope = self.fetch.child(partition.to_string());
            let fetch = FetchLoop {
                reader,
                dispatch: self.dispatch.clone(),
                metrics: Arc::clone(&self.runtime.metrics),
                token: scope.token(),
                partition: partition.clone(),
                chunk: self.runtime.options.max_in_flight,
            };
            match scope.spawn("fetch", fetch.run()) {
                Ok(handle) => {
                    handle.detach();
                    tracing::debug!(%partition, ?start, "partition assigned");
                    self.fetchers.insert(partition, scope);
                }
                Err(error) => tracing::warn!(%partition, %error, "cannot start fetch loop"),
            }
        }
    }

    /// Stops reading `partitions`, drains their handlers until `deadline`, commits them and
    /// forgets them.
    async fn release(&mut self, partitions: &[TopicPartition], deadline: Instant) -> Released {
        for partition in partitions {
            if let Some(scope) = self.fetchers.remove(partition) {
                // Fetch loops stop at once on cancellation.
                let remaining = deadline.saturating_duration_since(Instant::now());
                if let Err(error) = scope.shutdown(remaining).await {
                    tracing::error!(%partition, %error, "fetch loop would not stop");
                }
            }
        }
        let drained = self.dispatch.drain(partitions, deadline).await;
        if drained.abandoned > 0 {
            Metrics::add(&self.runtime.metrics.abandoned, drained.abandoned as u64);
            tracing::warn!(
                abandoned = ?drained.abandoned_offsets,
                "handlers abandoned at the deadline; their messages stay uncommitted"
            );
        }
        let offsets: Vec<(TopicPartition, i64)> = partitions
            .iter()
            .filter_map(|p| self.dispatch.committable(p).map(|o| (p.clone(), o)))
            .filter(|(p, o)| self.last_committed.get(p) != Some(o))
            .collect();
        self.commit_offsets(offsets).await;
        let mut committed = Vec::new();
        for partition in partitions {
            self.dispatch.forget(partition);
            if let Some(offset) = self.last_committed.remove(partition) {
                committed.push((partition.clone(), offset));
            }
        }
        committed.sort();
        Released { discarded: drained.discarded, abandoned: drained.abandoned_offsets, committed }
    }

    /// The group dropped this member (fenced, expelled, stopped): release every partition
    /// (their handlers drain, their commits will be refused and they are redelivered), leave,
    /// and join again with a new member. A failed join is retried on the next turn of the loop.
    async fn rejoin(&mut self, error: crate::backend::GroupError) {
        Metrics::bump(&self.runtime.metrics.group_failures);
        tracing::error!(group = %self.runtime.options.group, %error, "dropped by the group; joining again");
        let partitions: Vec<TopicPartition> = self.fetchers.keys().cloned().collect();
        let deadline = Instant::now() + self.runtime.options.rebalance_timeout;
        self.release(&partitions, deadline).await;
        let _ = self.member.leave().await;
        let old = std::mem::replace(&mut self.join.scope, self.scope.child("member"));
        if let Err(error) = old.shutdown(Duration::from_secs(5)).await {
            tracing::error!(%error, "the dropped member's tasks would not stop");
        }
        match self.runtime.backend.join(self.join.clone()).await {
            Ok(member) => self.member = member,
            Err(error) => {
                tracing::error!(%error, "joining again failed; will retry");
                tokio::time::sleep(RETRY_DELAY).await;
            }
        }
    }

    async fn revoked(&mut self, revocation: Revocation) {
        Metrics::bump(&self.runtime.metrics.rebalances);
        let deadline = Instant::now() + self.runtime.options.rebalance_timeout;
        let partitions = revocation.partitions.clone();
        self.release(&partitions, deadline).await;
        tracing::debug!(?partitions, "partitions revoked");
        revocation.complete();
    }

    async fn commit(&mut self) {
        let offsets: Vec<(TopicPartition, i64)> = self
            .dispatch
            .committable_all()
            .into_iter()
            .filter(|(p, o)| self.fetchers.contains_key(p) && self.last_committed.get(p) != Some(o))
            .collect();
        self.commit_offsets(offsets).await;
    }

    async fn commit_offsets(&mut self, offsets: Vec<(TopicPartition, i64)>) {
        if offsets.is_empty() {
            return;
        }
        match self.member.commit(&offsets).await {
            Ok(()) => {
                Metrics::bump(&self.runtime.metrics.commits);
                for (partition, offset) in offsets {
                    self.last_committed.insert(partition, offset);
                }
            }
            Err(error) => {
                Metrics::bump(&self.runtime.metrics.commit_failures);
                tracing::warn!(%error, "offset commit failed; will retry");
            }
        }
    }

    async fn stop(mut self, deadline: Instant) -> SubscriptionReport {
        let partitions: Vec<TopicPartition> = self.fetchers.keys().cloned().collect();
        let Released { discarded, abandoned, committed } =
            self.release(&partitions, deadline).await;
        let left_group = match self.member.leave().await {
            Ok(()) => true,
            Err(error) => {
                tracing::warn!(%error, "leaving the group failed");
                false
            }
        };
        self.dispatch.close();
        SubscriptionReport {
            topic: self.runtime.topic.clone(),
            group: self.runtime.options.group.clone(),
            discarded,
            abandoned: abandoned.len(),
            abandoned_offsets: abandoned,
            committed,
            left_group,
        }
    }
}

/// Waits until a stop is requested and returns its deadline (now, if the bus went away without
/// one).
async fn requested_deadline(stop: &mut watch::Receiver<Option<Instant>>) -> Instant {
    match stop.wait_for(Option::is_some).await {
        Ok(deadline) => deadline.unwrap_or_else(Instant::now),
        Err(_) => Instant::now(),
    }
}

/// Reads one partition into the dispatch until cancelled, pausing while the dispatch is full.
struct FetchLoop {
    reader: Box<dyn PartitionReader>,
    dispatch: KeyedDispatch,
    metrics: Arc<Metrics>,
    token: bus_supervisor::CancellationToken,
    partition: TopicPartition,
    /// Largest group of messages handed to the dispatch at once (its in-flight bound).
    chunk: usize,
}

impl FetchLoop {
    async fn run(mut self) {
        loop {
            let batch = tokio::select! {
                biased;
                () = self.token.cancelled() => return,
                batch = self.reader.next_batch(FETCH_MAX_BYTES) => batch,
            };
            match batch {
                Ok(batch) if batch.is_empty() => {}
                Ok(batch) => {
                    Metrics::add(&self.metrics.received, batch.len() as u64);
                    if !submit_in_chunks(&self.dispatch, &self.token, self.chunk, batch).await {
                        return;
                    }
                }
                Err(error) => {
                    tracing::warn!(partition = %self.partition, %error, "fetch failed; retrying");
                    tokio::select! {
                        () = self.token.cancelled() => return,
                        () = tokio::time::sleep(RETRY_DELAY) => {}
                    }
                }
            }
        }
    }
}

/// Hands `batch` to `dispatch` in chunks no larger than `chunk`, each waiting for room. Each
/// message is moved once, from the batch into its dispatch slot. False when the loop must
/// stop.
async fn submit_in_chunks(
    dispatch: &KeyedDispatch,
    token: &bus_supervisor::CancellationToken,
    chunk: usize,
    batch: Vec<Message>,
) -> bool {
    let mut rest = batch.into_iter();
    while rest.len() > 0 {
        let need = rest.len().min(chunk.max(1));
        tokio::select! {
            biased;
            () = token.cancelled() => return false,
            submitted = dispatch.submit_from(&mut rest, need) => {
                if submitted.is_err() {
                    return false;
                }
            }
        }
    }
    true
}
