//! The event bus: the API services use, over any backend.
//!
//! Owns: [`EventBus`] (publish, subscribe, health, metrics, shutdown), its shutdown procedure and
//! [`ShutdownReport`] / [`ShutdownError`].
//!
//! Invariants:
//! - The bus owns its [`Supervisor`]; no task holds the bus itself (only the backend and the
//!   metrics), so dropping the last clone of the bus drops the supervisor, which aborts the whole
//!   tree. Nothing outlives the bus.
//! - Shutdown follows the contract every backend shares: freeze admission (at the bus); stop
//!   fetching and let handlers finish until the deadline, then commit and leave the groups, while
//!   the producers flush (records not acknowledged by the deadline are failed back to their
//!   callers); close the backend (sends still waiting for room fail) and flush again for dead
//!   letters written by draining handlers; abort what remains and wait for it; report. It is computed once and every caller gets the same result. `Ok` only when no task
//!   is left.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use bus_supervisor::{
    JoinTimeout, Scope, ScopeShutdownError, ScopeShutdownReport, Snapshot, Supervisor, TaskInfo,
};
use tokio::sync::OnceCell;
use tokio::time::Instant;

use crate::admin::Admin;
use crate::admin::descriptions::{
    ClusterDescription, GroupDescription, GroupListing, NewTopic, TopicDescription, TopicListing,
};
use crate::admin::error::AdminError;
use crate::backend::{
    AdminBackend, Backend, FlushReport, GroupMember, JoinRequest, PartitionReader,
};
use crate::consumer::{self, Registry, Subscription, SubscriptionReport};
use crate::delivery::{Delivery, DeliveryFuture};
use crate::envelope::Envelope;
use crate::error::{ConfigError, PublishError, SubscribeError};
use crate::future::BoxFuture;
use crate::handler::{EnvelopeHandler, Handler};
use crate::health::{Health, HealthReport, SubscriptionStatus};
use crate::memory::{MemoryBackend, MemoryConfig};
use crate::metrics::{Gauges, Metrics, MetricsSnapshot};
use crate::options::SubscribeOptions;
use crate::record::{Record, TopicPartition};
use crate::start::StartAt;
use crate::topics::Topics;

/// How often a bus's supervisor wakes the runtime (see [`EventBus::backend_supervisor`]).
const WATCHDOG_INTERVAL: std::time::Duration = std::time::Duration::from_millis(100);

/// The event bus. Cheap to clone; all clones are the same bus.
///
/// ```
/// use std::time::Duration;
/// use bus_core::{Envelope, EventBus, HandlerError, SubscribeOptions};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let bus = EventBus::in_memory();
/// let (seen, mut rx) = tokio::sync::mpsc::unbounded_channel();
/// let _subscription = bus
///     .subscribe_envelopes("orders", SubscribeOptions::new("billing"), move |e: Envelope| {
///         let seen = seen.clone();
///         async move {
///             seen.send(e.event_version).map_err(|_| HandlerError::new("test ended"))?;
///             Ok(())
///         }
///     })
///     .await?;
/// let order = Envelope::new("order-1", "OrderPlaced", 1, serde_json::json!({"total": 42}))?;
/// bus.publish_envelope("orders", &order).await?;
/// assert_eq!(rx.recv().await, Some(1));
/// let report = bus.shutdown(Duration::from_secs(5)).await?;
/// assert_eq!(bus.live_tasks(), 0);
/// println!("{report}");
/// # Ok(())
/// # }
/// ```
#[derive(Clone)]
pub struct EventBus {
    inner: Arc<BusInner>,
}

struct BusInner {
    supervisor: Supervisor,
    backend: Arc<dyn Backend>,
    memory: Option<Arc<MemoryBackend>>,
    consumers: Scope,
    metrics: Arc<Metrics>,
    closed: AtomicBool,
    /// Cancelled when shutdown begins: callers' publishes still waiting for buffer room give up
    /// with `Closed` (the backend itself stays open while subscriptions drain, for dead letters).
    closing: tokio_util::sync::CancellationToken,
    subscriptions: Registry,
    shutdown: OnceCell<Result<ShutdownReport, ShutdownError>>,
}

impl std::fmt::Debug for EventBus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EventBus")
            .field("backend", &self.inner.backend.name())
            .field("live_tasks", &self.live_tasks())
            .finish()
    }
}

impl EventBus {
    /// A bus on the in-memory backend with its default configuration. Call it inside a tokio
    /// runtime (with timers enabled).
    pub fn in_memory() -> EventBus {
        let supervisor = EventBus::backend_supervisor();
        match MemoryBackend::new(supervisor.root().child("memory"), MemoryConfig::default()) {
            Ok(backend) => Self::assemble(supervisor, backend.clone(), Some(backend)),
            // The default configuration is valid; this arm exists so that nothing can panic.
            Err(error) => unreachable_config(error),
        }
    }

    /// A bus on the in-memory backend with `config`.
    ///
    /// # Errors
    ///
    /// A [`ConfigError`] naming the field out of range.
    pub fn in_memory_with(config: MemoryConfig) -> Result<EventBus, ConfigError> {
        let supervisor = EventBus::backend_supervisor();
        let backend = MemoryBackend::new(supervisor.root().child("memory"), config)?;
        Ok(Self::assemble(supervisor, backend.clone(), Some(backend)))
    }

    /// A new supervisor for a bus on a backend of its own (for backend authors): root scope
    /// `bus`, with the runtime watchdog on, because a bus runs foreign code (handlers) that
    /// might block its thread. The backend creates its scopes under `supervisor.root()` and
    /// hands the supervisor to [`EventBus::on_backend`].
    pub fn backend_supervisor() -> Supervisor {
        Supervisor::builder("bus").runtime_watchdog(WATCHDOG_INTERVAL).build()
    }

    /// An event bus on `backend` (for backend authors; see [`backend`](crate::backend)). The
    /// backend's tasks must live in `supervisor`'s tree (made by
    /// [`EventBus::backend_supervisor`], their scopes created under its root); the bus takes
    /// ownership of the supervisor, and its subscriptions live under `bus/consumer`.
    pub fn on_backend(supervisor: Supervisor, backend: Arc<dyn Backend>) -> EventBus {
        EventBus::assemble(supervisor, backend, None)
    }

    /// The bus on `backend`, owning `supervisor` (see [`EventBus::on_backend`]).
    fn assemble(
        supervisor: Supervisor,
        backend: Arc<dyn Backend>,
        memory: Option<Arc<MemoryBackend>>,
    ) -> EventBus {
        let consumers = supervisor.root().child("consumer");
        let metrics = Arc::new(Metrics::default());
        let root = supervisor.root();
        let counting = crate::metrics::count_supervision(
            supervisor.events(),
            Arc::clone(&metrics),
            root.token(),
        );
        match root.spawn("supervision-metrics", counting) {
            Ok(task) => task.detach(),
            Err(error) => tracing::warn!(%error, "supervision events will not be counted"),
        }
        EventBus {
            inner: Arc::new(BusInner {
                supervisor,
                backend,
                memory,
                consumers,
                metrics,
                closed: AtomicBool::new(false),
                closing: tokio_util::sync::CancellationToken::new(),
                subscriptions: Registry::default(),
                shutdown: OnceCell::new(),
            }),
        }
    }

    /// Topic and group administration on the bus's backend (create, describe and delete
    /// topics, add partitions, list and describe groups with their lag).
    pub fn admin(&self) -> Admin {
        Admin::new(self.inner.backend.admin())
    }

    /// The in-memory backend, when the bus runs on it (to create topics and inspect offsets).
    pub fn memory_backend(&self) -> Option<&Arc<MemoryBackend>> {
        self.inner.memory.as_ref()
    }

    /// Publishes `record` and waits for its acknowledgement.
    ///
    /// # Errors
    ///
    /// [`PublishError::Closed`] once shutdown began; otherwise what the backend reports (buffer
    /// full past the publish timeout, delivery timeout, rejection, failed back at shutdown).
    pub async fn publish(&self, record: Record) -> Result<Delivery, PublishError> {
        self.publish_nowait(record).await?.await
    }

    /// Hands `record` to the backend, waiting only for room in its buffer, and returns the
    /// future of its acknowledgement.
    ///
    /// # Errors
    ///
    /// As for [`EventBus::publish`], for the part before the record is accepted.
    pub async fn publish_nowait(&self, record: Record) -> Result<DeliveryFuture, PublishError> {
        if self.inner.closed.load(Ordering::Acquire) {
            return Err(PublishError::Closed);
        }
        if record.topic.trim().is_empty() {
            return Err(PublishError::InvalidRecord {
                topic: record.topic,
                reason: "the topic name is empty".into(),
            });
        }
        // A caller waiting for room when shutdown begins gets `Closed` at once. Dropping the
        // backend's send while it waits accepts nothing (backends' sends are cancel-safe).
        let sent = tokio::select! {
            biased;
            () = self.inner.closing.cancelled() => Err(PublishError::Closed),
            sent = self.inner.backend.send(record) => sent,
        };
        match sent {
            Ok(delivery) => Ok(delivery.counted(Arc::clone(&self.inner.metrics))),
            Err(error) => {
                Metrics::bump(&self.inner.metrics.publish_failed);
                Err(error)
            }
        }
    }

    /// Validates `envelope`, maps it to a record (key = aggregate id, `X-*` headers) and
    /// publishes it to `topic`, waiting for the acknowledgement.
    ///
    /// # Errors
    ///
    /// [`PublishError::InvalidEnvelope`] naming the field, before anything reaches the backend;
    /// otherwise as for [`EventBus::publish`].
    pub async fn publish_envelope(
        &self,
        topic: &str,
        envelope: &Envelope,
    ) -> Result<Delivery, PublishError> {
        self.publish(envelope.to_record(topic)?).await
    }

    /// Subscribes `handler` to `topics` with `options`; returns once the group is joined.
    ///
    /// `topics` is a topic name (`"orders"`), several (`["orders", "payments"]`: one group
    /// member reads them all, their partitions spread over the group's members together), or a
    /// pattern ([`Topics::pattern`]: every matching topic, including those created later). See
    /// [`Topics`].
    ///
    /// ```
    /// use bus_core::{EventBus, Message, SubscribeOptions, Topics};
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let bus = EventBus::in_memory();
    /// let audit = |m: Message| async move {
    ///     println!("{}-{}@{}", m.topic, m.partition, m.offset);
    ///     Ok(())
    /// };
    /// let both =
    ///     bus.subscribe(["orders", "payments"], SubscribeOptions::new("audit"), audit).await?;
    /// assert_eq!(both.topic(), "orders,payments");
    /// let all = bus
    ///     .subscribe(Topics::pattern(r"orders\..*"), SubscribeOptions::new("regional"), audit)
    ///     .await?;
    /// assert_eq!(all.topic(), r"pattern(orders\..*)");
    /// bus.shutdown(std::time::Duration::from_secs(5)).await?;
    /// # Ok(())
    /// # }
    /// ```
    ///
    /// # Errors
    ///
    /// [`SubscribeError::Closed`] once shutdown began, [`SubscribeError::InvalidOptions`] naming
    /// the option (`topics` for an empty list or a pattern that does not compile), or the
    /// backend's failure to join.
    pub async fn subscribe<H: Handler>(
        &self,
        topics: impl Into<Topics>,
        options: SubscribeOptions,
        handler: H,
    ) -> Result<Subscription, SubscribeError> {
        self.subscribe_erased(topics.into(), options, consumer::erase(handler)).await
    }

    /// Subscribes an envelope handler: messages are decoded and validated first; those that are
    /// not valid envelopes (poison) go to the dead-letter topic without reaching the handler.
    /// `topics` as for [`EventBus::subscribe`].
    ///
    /// # Errors
    ///
    /// As for [`EventBus::subscribe`].
    pub async fn subscribe_envelopes<H: EnvelopeHandler>(
        &self,
        topics: impl Into<Topics>,
        options: SubscribeOptions,
        handler: H,
    ) -> Result<Subscription, SubscribeError> {
        self.subscribe_erased(topics.into(), options, consumer::erase_envelope(handler)).await
    }

    async fn subscribe_erased(
        &self,
        topics: Topics,
        options: SubscribeOptions,
        handler: consumer::ErasedHandler,
    ) -> Result<Subscription, SubscribeError> {
        if self.inner.closed.load(Ordering::Acquire) {
            return Err(SubscribeError::Closed);
        }
        consumer::subscribe(
            &self.inner.consumers,
            Arc::clone(&self.inner.backend),
            Arc::clone(&self.inner.metrics),
            topics,
            options,
            handler,
            &self.inner.subscriptions,
        )
        .await
    }

    /// The bus's health, rolled up (see [`EventBus::health_report`] for what it is made of):
    /// `Closed` once shutdown began; `Unhealthy` while a subscription or the producer has
    /// failed for good; `Degraded` while something is retrying or stuck (a partition it cannot
    /// read, a message it cannot dead-letter, produce retries); `Ready` otherwise. Each reason
    /// names its topic, partition, offset or group.
    pub fn health(&self) -> Health {
        if self.inner.closed.load(Ordering::Acquire) {
            return Health::Closed;
        }
        self.roll_up(&self.subscription_statuses())
    }

    /// The bus's health in detail: the roll-up, each subscription's group state, assigned
    /// partitions with their lag, backlog, last error and time since progress, each producer
    /// partition's state, and the settings in force that weaken security.
    pub fn health_report(&self) -> HealthReport {
        let statuses = self.subscription_statuses();
        let health = if self.inner.closed.load(Ordering::Acquire) {
            Health::Closed
        } else {
            self.roll_up(&statuses)
        };
        let producer = self.inner.backend.producer_partitions();
        let subscriptions = statuses.into_iter().map(|(status, _)| status).collect();
        let insecure = self.inner.backend.insecure_settings();
        HealthReport { health, subscriptions, producer, insecure }
    }

    /// Each subscription's status and its troubles (see `SubscriptionHealth::trouble`).
    fn subscription_statuses(&self) -> Vec<(SubscriptionStatus, Option<String>)> {
        let registry = self.inner.subscriptions.lock();
        registry.iter().map(|s| (s.status(), s.health.trouble())).collect()
    }

    /// The backend's health and the subscriptions': a failed one is unhealthy, a troubled one
    /// degraded.
    fn roll_up(&self, subscriptions: &[(SubscriptionStatus, Option<String>)]) -> Health {
        let mut health = self.inner.backend.health();
        for (status, trouble) in subscriptions {
            let name = format!("subscription `{}` (group `{}`)", status.topic, status.group);
            if let Some(failure) = &status.failure {
                let reason = format!("{name} failed: {failure}");
                health = health.and(Health::Unhealthy { reason });
            } else if let Some(trouble) = trouble {
                health = health.and(Health::Degraded { reason: format!("{name}: {trouble}") });
            }
        }
        health
    }

    /// The bus's counters now.
    pub fn metrics(&self) -> MetricsSnapshot {
        let (subscriptions, in_flight) = {
            let subscriptions = self.inner.subscriptions.lock();
            (subscriptions.len(), subscriptions.iter().map(|s| s.dispatch.in_flight()).sum())
        };
        let gauges = Gauges { subscriptions, in_flight, live_tasks: self.live_tasks() };
        self.inner.metrics.snapshot(gauges)
    }

    /// The number of live tasks in the bus's supervisor tree.
    pub fn live_tasks(&self) -> usize {
        self.inner.supervisor.live()
    }

    /// The live task tree (paths, spawn sites, ages).
    pub fn snapshot(&self) -> Snapshot {
        self.inner.supervisor.snapshot()
    }

    /// The root scope of the bus's tree (for leak guards in tests).
    pub fn scope(&self) -> &Scope {
        self.inner.supervisor.root()
    }

    /// Shuts the bus down within `timeout` and reports what happened. Idempotent: every caller,
    /// concurrent or later, gets the same result.
    ///
    /// The timeout is a deadline: the call returns by it (plus a few milliseconds of
    /// scheduling), whatever handlers or brokers do. Its time is spent in stages: handlers drain
    /// first; those still running about a quarter before the end (at most 500 ms before it) are
    /// abandoned, uncommitted; the final commits, leaving the groups, the flushes and the
    /// supervisor's aborts of whatever is left take the rest.
    ///
    /// # Errors
    ///
    /// [`ShutdownError`] when tasks were still alive at the end (a handler blocking its thread,
    /// for instance): it names each one; [`ShutdownError::wait`] waits for them.
    pub async fn shutdown(&self, timeout: Duration) -> Result<ShutdownReport, ShutdownError> {
        let deadline = Instant::now() + timeout;
        self.inner.shutdown.get_or_init(|| self.inner.run_shutdown(deadline)).await.clone()
    }
}

/// The default in-memory configuration is valid; were it ever rejected, the bus is built on a
/// backend that refuses everything (and the error is logged) rather than panicking.
#[cold]
fn unreachable_config(error: ConfigError) -> EventBus {
    tracing::error!(%error, "the default in-memory configuration was rejected");
    EventBus::assemble(Supervisor::new("bus"), Arc::new(Unavailable), None)
}

/// A backend that refuses everything: used only if the default configuration were rejected.
struct Unavailable;

impl Backend for Unavailable {
    fn name(&self) -> &'static str {
        "unavailable"
    }

    fn send(&self, _record: Record) -> BoxFuture<'_, Result<DeliveryFuture, PublishError>> {
        Box::pin(async { Err(PublishError::Closed) })
    }

    fn join(
        &self,
        _request: JoinRequest,
    ) -> BoxFuture<'_, Result<Box<dyn GroupMember>, SubscribeError>> {
        Box::pin(async { Err(SubscribeError::Closed) })
    }

    fn flush(&self, _deadline: Instant) -> BoxFuture<'_, FlushReport> {
        Box::pin(async { FlushReport::default() })
    }

    fn close(&self) {}

    fn health(&self) -> Health {
        Health::Closed
    }

    fn admin(&self) -> Arc<dyn AdminBackend> {
        Arc::new(Unavailable)
    }
}

/// Every administrative request fails on the backend that refuses everything.
fn unavailable<'a, T: Send + 'a>() -> BoxFuture<'a, Result<T, AdminError>> {
    Box::pin(async {
        Err(AdminError::Unavailable { reason: "the bus has no usable backend".into() })
    })
}

impl AdminBackend for Unavailable {
    fn name(&self) -> &'static str {
        "unavailable"
    }

    fn create_topic<'a>(&'a self, _topic: &'a NewTopic) -> BoxFuture<'a, Result<(), AdminError>> {
        unavailable()
    }

    fn list_topics<'a>(
        &'a self,
        _topics: Option<&'a [String]>,
    ) -> BoxFuture<'a, Result<Vec<TopicListing>, AdminError>> {
        unavailable()
    }

    fn describe_topic<'a>(
        &'a self,
        _topic: &'a str,
    ) -> BoxFuture<'a, Result<TopicDescription, AdminError>> {
        unavailable()
    }

    fn delete_topic<'a>(&'a self, _topic: &'a str) -> BoxFuture<'a, Result<(), AdminError>> {
        unavailable()
    }

    fn add_partitions<'a>(
        &'a self,
        _topic: &'a str,
        _total: i32,
    ) -> BoxFuture<'a, Result<(), AdminError>> {
        unavailable()
    }

    fn list_groups(&self) -> BoxFuture<'_, Result<Vec<GroupListing>, AdminError>> {
        unavailable()
    }

    fn describe_group<'a>(
        &'a self,
        _group: &'a str,
    ) -> BoxFuture<'a, Result<GroupDescription, AdminError>> {
        unavailable()
    }

    fn describe_cluster(&self) -> BoxFuture<'_, Result<ClusterDescription, AdminError>> {
        unavailable()
    }

    fn read<'a>(
        &'a self,
        _partition: &'a TopicPartition,
        _start: StartAt,
    ) -> BoxFuture<'a, Result<Box<dyn PartitionReader>, AdminError>> {
        unavailable()
    }
}

/// What a bus shutdown keeps of its time, at most, for its last stage (the second flush and the
/// supervisor's shutdown of whatever is left).
const FINAL_RESERVE: Duration = Duration::from_millis(200);

impl BusInner {
    async fn run_shutdown(&self, deadline: Instant) -> Result<ShutdownReport, ShutdownError> {
        let started = Instant::now();
        let totals_before = self.backend.delivery_totals();
        // 1. Freeze admission: callers' publishes and subscribes fail from now on, and those
        // waiting for buffer room give up.
        self.closed.store(true, Ordering::Release);
        self.closing.cancel();
        let subscriptions = std::mem::take(&mut *self.subscriptions.lock());
        // The deadline is the caller's: the stages before the last end `FINAL_RESERVE` earlier
        // (at most a tenth of the time), which leaves the last flush and the supervisor's
        // shutdown of what remains their time before it.
        let reserve = FINAL_RESERVE.min(deadline.saturating_duration_since(started) / 10);
        let stages_until = deadline.checked_sub(reserve).unwrap_or(deadline);
        // 2-4. Stop the subscriptions (stop fetching, drain handlers, commit, leave the groups)
        // while the producers flush what callers already handed over. The backend stays open
        // meanwhile: draining handlers may still dead-letter.
        let stops =
            futures_util::future::join_all(subscriptions.iter().map(|s| s.stop(stages_until)));
        let (stopped, first_flush) = tokio::join!(stops, self.backend.flush(stages_until));
        let mut reports = Vec::with_capacity(stopped.len());
        for (report, tasks) in stopped {
            if let Err(error) = tasks {
                tracing::error!(%error, "a subscription's tasks would not stop");
            }
            reports.push(report);
        }
        // Now close the backend (sends still waiting for buffer room fail with `Closed`) and
        // flush what the draining handlers dead-lettered.
        self.backend.close();
        let second_flush = self.backend.flush(deadline).await;
        // 5. Abort what remains and wait for it, by the deadline.
        let remaining = deadline.saturating_duration_since(Instant::now());
        let tasks = self.supervisor.shutdown(remaining).await;
        // Records resolved across the shutdown, those failed back by tasks aborted at the
        // deadline included, when the backend counts them; else what the flushes saw.
        let (flushed, failed) = match (totals_before, self.backend.delivery_totals()) {
            (Some(before), Some(after)) => (
                after.flushed.saturating_sub(before.flushed),
                after.failed.saturating_sub(before.failed),
            ),
            _ => (
                first_flush.flushed + second_flush.flushed,
                first_flush.failed + second_flush.failed,
            ),
        };
        let report = |tasks: ScopeShutdownReport| ShutdownReport {
            elapsed: started.elapsed(),
            flushed,
            failed,
            handlers_abandoned: reports.iter().map(|r| r.abandoned).sum(),
            discarded: reports.iter().map(|r| r.discarded).sum(),
            subscriptions: reports.clone(),
            tasks,
        };
        match tasks {
            Ok(tasks) => Ok(report(tasks)),
            Err(error) => Err(ShutdownError {
                report: Box::new(report((*error.report).clone())),
                stuck: error.stuck.clone(),
                tasks: error,
            }),
        }
    }
}

/// What a completed bus shutdown did.
#[derive(Debug, Clone)]
pub struct ShutdownReport {
    /// Time the shutdown took.
    pub elapsed: Duration,
    /// Records acknowledged while flushing.
    pub flushed: usize,
    /// Records not acknowledged by the deadline, failed back to their callers.
    pub failed: usize,
    /// Handlers still running at the deadline, cancelled; their messages stay uncommitted and
    /// will be redelivered.
    pub handlers_abandoned: usize,
    /// Messages fetched but not started; uncommitted, they will be redelivered.
    pub discarded: usize,
    /// Each subscription's report.
    pub subscriptions: Vec<SubscriptionReport>,
    /// The supervisor's report: every task stopped.
    pub tasks: ScopeShutdownReport,
}

impl std::fmt::Display for ShutdownReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(
            f,
            "bus shut down in {:.3}s: {} record(s) flushed, {} failed back, {} handler(s) \
             abandoned, {} message(s) left for redelivery",
            self.elapsed.as_secs_f64(),
            self.flushed,
            self.failed,
            self.handlers_abandoned,
            self.discarded
        )?;
        for s in &self.subscriptions {
            let committed: Vec<String> =
                s.committed.iter().map(|(p, o)| format!("{p}@{o}")).collect();
            writeln!(
                f,
                "  subscription {} / group {}: committed [{}], left group: {}",
                s.topic,
                s.group,
                committed.join(", "),
                s.left_group
            )?;
            for (partition, offset) in &s.abandoned_offsets {
                writeln!(f, "    abandoned handler: {partition}@{offset} (will be redelivered)")?;
            }
        }
        write!(f, "{}", self.tasks)
    }
}

/// A bus shutdown that could not stop every task: they are named in `stuck`.
#[derive(Debug, Clone)]
pub struct ShutdownError {
    /// What the shutdown did.
    pub report: Box<ShutdownReport>,
    /// The tasks still alive (path, spawn site, age).
    pub stuck: Vec<TaskInfo>,
    tasks: ScopeShutdownError,
}

impl ShutdownError {
    /// Waits up to `timeout` for the stuck tasks to end.
    ///
    /// # Errors
    ///
    /// [`JoinTimeout`] naming what is still alive.
    pub async fn wait(&self, timeout: Duration) -> Result<(), JoinTimeout> {
        self.tasks.wait(timeout).await
    }
}

impl std::fmt::Display for ShutdownError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "bus shutdown incomplete: {}", self.tasks)
    }
}

impl std::error::Error for ShutdownError {}
