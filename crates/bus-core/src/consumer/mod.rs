//! The consumer runtime shared by every backend: one per subscription.
//!
//! Owns: [`Subscription`] (the user's handle: what dropping it does is documented there), its
//! reports, and `subscribe`, which joins the group and starts the subscription's tasks. The
//! submodules:
//! - `process` — the processing of one message (handler with timeout, retries with backoff,
//!   dead letters, poison messages) and the handler's type erasure;
//! - `control` — the control task: group events, a fetch loop per assigned partition, the
//!   commit schedule, revoke, rejoin and stop;
//! - `fetch_loop` — one partition's reader feeding the keyed dispatch, and what happens when
//!   the partition cannot be read (the `unreadable_batches` policy);
//! - `commands` — [`ConsumerControl`], what a service asks of a running subscription (seek,
//!   pause and resume, commit by hand);
//! - `pause` — the subscription's pause state, which its fetch loops follow;
//! - `health` — what the subscription cannot get past and how it is doing (group state, lag,
//!   progress), for the bus's health and health report;
//! - `telemetry` — its `metrics` facade handles.
//!
//! Tasks, under the bus's `consumer` scope (`<name>.supervisor` beside each supervised child is
//! its monitor; the scopes marked isolated contain escalations):
//! ```text
//! consumer/<group>/<topics>                       isolated: the subscription
//!   …/control                                     group events, commits, stop (supervised)
//!   …/member/…                                    isolated: the backend's own group tasks
//!   …/dispatch/worker-<i>                         keyed dispatch workers
//!   …/fetch/<topic>-<p>/fetch                     isolated `fetch`: one supervised fetch loop
//!                                                 per assigned partition
//! ```
//! (`<topics>` is the subscription's label: see [`Subscription::topic`].) A subscription is one
//! group member whatever the number of its topics.
//!
//! Invariants:
//! - A message is committed only when it and every earlier message of its partition were handled
//!   or dead-lettered (the keyed dispatch's commit trackers). A message whose handler did not
//!   finish, or whose dead-lettering failed, is never committed: it is redelivered.
//! - A revoked partition's fetch loop is stopped before its handlers are drained, and its offsets
//!   are committed before the revocation is completed.
//! - At most `max_in_flight` messages are in the dispatch; a fetch loop holds at most one fetched
//!   batch (bounded in bytes) while it waits for room.
//! - Nothing here spawns outside the supervisor; a task past its restart intensity fails its
//!   subscription alone (see `control`).

mod commands;
mod control;
mod fetch_loop;
mod health;
mod pause;
mod process;
mod telemetry;

use std::sync::Arc;
use std::time::Duration;

use bus_supervisor::{JoinTimeout, Scope, ScopeShutdownError, ScopeShutdownReport, TaskInfo};
use parking_lot::Mutex;
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;

pub use commands::{CommitReport, ConsumerControl, ControlError};
pub use process::dead_letter_headers;
pub(crate) use process::{ErasedHandler, erase, erase_envelope};

use crate::backend::{Backend, JoinRequest};
use crate::dispatch::{DispatchConfig, KeyedDispatch};
use crate::error::SubscribeError;
use crate::health::{GroupState, PartitionFailure, SubscriptionStatus};
use crate::metrics::Metrics;
use crate::options::SubscribeOptions;
use crate::record::TopicPartition;
use crate::topics::Topics;
use control::Control;
use health::SubscriptionHealth;
use pause::Pauses;
use process::Runtime;

/// What stopping a subscription did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SubscriptionReport {
    /// The subscription's topics, as [`Subscription::topic`] labels them.
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
    /// Whether it ended its membership cleanly: a dynamic member left its group; a static
    /// member (with a group instance id) kept its place for its next instance, as intended.
    pub left_group: bool,
}

/// How long past its deadline a stop waits for the control task's report: the control task's
/// own steps are bounded by the deadline, so this covers only its last turn of the scheduler.
const REPORT_GRACE: Duration = Duration::from_millis(20);

/// The list of running subscriptions a bus keeps.
pub(crate) type Registry = Arc<Mutex<Vec<Arc<SubscriptionControl>>>>;

/// The bus's side of a subscription: how to stop it and where its report appears.
pub(crate) struct SubscriptionControl {
    /// The subscription's label (see [`Subscription::topic`]).
    pub(crate) topic: String,
    pub(crate) topics: Topics,
    pub(crate) group: String,
    pub(crate) scope: Scope,
    pub(crate) dispatch: KeyedDispatch,
    control: ConsumerControl,
    pub(crate) health: Arc<SubscriptionHealth>,
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
    /// The subscription's status for the health report; failed too when one of its tasks went
    /// past its restart intensity and its isolated scope failed.
    pub(crate) fn status(&self) -> SubscriptionStatus {
        let mut status = self.health.status(&self.topic, &self.group);
        if status.failure.is_none()
            && let Some(escalation) = self.scope.failure()
        {
            status.failure = Some(escalation.to_string());
            status.state = GroupState::Failed;
        }
        status
    }

    /// Asks the subscription to stop by `deadline`, waits for its report (the control task's
    /// stop is bounded by the deadline; [`REPORT_GRACE`] covers scheduling), then shuts its tasks
    /// down with what is left of the time.
    pub(crate) async fn stop(
        &self,
        deadline: Instant,
    ) -> (SubscriptionReport, Result<ScopeShutdownReport, ScopeShutdownError>) {
        self.stop.send_if_modified(|current| {
            if current.is_none() {
                *current = Some(deadline);
                true
            } else {
                false
            }
        });
        let mut report = self.report.clone();
        let waited =
            tokio::time::timeout_at(deadline + REPORT_GRACE, report.wait_for(Option::is_some))
                .await;
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

/// A running subscription.
///
/// [`Subscription::unsubscribe`] stops it. Dropping the handle instead *detaches* it, as dropping
/// a tokio `JoinHandle` does: the subscription keeps consuming until the bus shuts down, and the
/// bus's [`ShutdownReport`](crate::ShutdownReport) includes it. Its tasks stay in the bus's
/// tree either way, so nothing outlives the bus. (A drop cannot wait for handlers to drain and
/// offsets to be committed, so it never stops consuming on its own: bind the handle, e.g.
/// `let _orders = bus.subscribe(…)`, and unsubscribe it when it should stop before the bus.)
#[derive(Debug)]
#[must_use = "dropping a Subscription detaches it: it keeps consuming until the bus shuts down"]
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
    pub tasks: ScopeShutdownReport,
}

/// An unsubscribe that could not stop every task of the subscription: they are named in
/// `stuck`. The subscription was stopped otherwise (fetching ended, handlers drained until the
/// deadline, offsets committed, group left): see `report`.
#[derive(Debug, Clone)]
pub struct UnsubscribeError {
    /// What stopping the subscription did.
    pub report: SubscriptionReport,
    /// The tasks still alive (path, spawn site, age).
    pub stuck: Vec<TaskInfo>,
    tasks: ScopeShutdownError,
}

impl UnsubscribeError {
    /// Waits up to `timeout` for the stuck tasks to end.
    ///
    /// # Errors
    ///
    /// [`JoinTimeout`] naming what is still alive.
    pub async fn wait(&self, timeout: Duration) -> Result<(), JoinTimeout> {
        self.tasks.wait(timeout).await
    }
}

impl std::fmt::Display for UnsubscribeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "unsubscribing `{}` (group `{}`) left tasks behind: {}",
            self.report.topic, self.report.group, self.tasks
        )
    }
}

impl std::error::Error for UnsubscribeError {}

impl Subscription {
    /// The subscription's topics as a label: the topic's name for one topic; for several,
    /// their names joined with `,` (sorted); for a pattern, `pattern(<regex>)`. Reports
    /// ([`SubscriptionReport::topic`]) and the subscription's task paths
    /// (`consumer/<group>/<label>/…`) use the same label. [`Subscription::topics`] gives them
    /// as data.
    pub fn topic(&self) -> &str {
        &self.control.topic
    }

    /// The subscription's topics as given (named, or a pattern).
    pub fn topics(&self) -> &Topics {
        &self.control.topics
    }

    /// The consumer group.
    pub fn group(&self) -> &str {
        &self.control.group
    }

    /// The supervisor scope holding the subscription's tasks (for leak checks and snapshots).
    pub fn scope(&self) -> &Scope {
        &self.control.scope
    }

    /// A handle to seek, pause, resume and commit this subscription while it runs (cheap to
    /// clone; it can be moved into the handler).
    pub fn control(&self) -> ConsumerControl {
        self.control.control.clone()
    }

    /// The partitions this subscription cannot make progress on now (a batch it cannot read
    /// under the `fail` policy, or fetches failing again and again), each with its offset and
    /// reason. The bus's [`health`](crate::EventBus::health) names them too.
    pub fn failed_partitions(&self) -> Vec<PartitionFailure> {
        self.control.health.failed_partitions()
    }

    /// Stops the subscription within `timeout`: stops fetching, lets running handlers finish
    /// until the deadline (abandoning, uncommitted, those that do not), commits, leaves the group
    /// and shuts its tasks down.
    ///
    /// # Errors
    ///
    /// [`UnsubscribeError`] naming the tasks that would not stop (a handler blocking its
    /// thread, for instance), with the subscription's report.
    pub async fn unsubscribe(
        self,
        timeout: Duration,
    ) -> Result<UnsubscribeReport, UnsubscribeError> {
        let deadline = Instant::now() + timeout;
        let (subscription, tasks) = self.control.stop(deadline).await;
        if let Some(registry) = self.registry.upgrade() {
            registry.lock().retain(|c| !Arc::ptr_eq(c, &self.control));
        }
        match tasks {
            Ok(tasks) => Ok(UnsubscribeReport { subscription, tasks }),
            Err(tasks) => {
                Err(UnsubscribeError { report: subscription, stuck: tasks.stuck.clone(), tasks })
            }
        }
    }
}

/// Starts a subscription: joins the group, starts the dispatch and the control task.
pub(crate) async fn subscribe(
    parent: &Scope,
    backend: Arc<dyn Backend>,
    metrics: Arc<Metrics>,
    topics: Topics,
    options: SubscribeOptions,
    handler: ErasedHandler,
    registry: &Registry,
) -> Result<Subscription, SubscribeError> {
    options.validate()?;
    topics.validate()?;
    let topics = topics.with_dead_letter_topic(options.dead_letter_topic.as_deref());
    let label = topics.to_string();
    // A pattern may hold `/`, the separator of task paths.
    // Isolated: a task of the subscription past its restart intensity fails the subscription
    // alone (see `control`), never the bus.
    let scope = parent.child(&options.group).isolated_child(label.replace('/', "%2F"));
    let request = JoinRequest {
        group: options.group.clone(),
        topics: topics.clone(),
        group_instance_id: options.group_instance_id.clone(),
        scope: scope.isolated_child("member"),
        rebalance_timeout: options.rebalance_timeout,
        auto_offset_reset: options.auto_offset_reset,
    };
    let member = backend.join(request.clone()).await?;
    let runtime = Arc::new(Runtime::new(backend, metrics, &label, options));
    let dispatch = handler.start(
        &scope.child("dispatch"),
        DispatchConfig::from_options(&runtime.options),
        Arc::clone(&runtime),
    )?;
    let (stop, stop_rx) = watch::channel(None);
    let (report_tx, report) = watch::channel(None);
    let (commands, inbox) = mpsc::channel(commands::COMMANDS);
    let pauses = Arc::new(Pauses::new());
    let handle = ConsumerControl::new(&runtime.options.group, commands, Arc::clone(&pauses));
    let control = Control::new(
        Arc::clone(&runtime),
        member,
        request,
        &scope,
        dispatch.clone(),
        inbox,
        pauses,
    );
    let handover = control.handover(stop_rx, report_tx);
    scope
        .supervise("control", control::child_spec(), move |scope| {
            control::run(scope, handover.clone())
        })?
        .detach();
    let control = Arc::new(SubscriptionControl {
        topic: runtime.topic.clone(),
        topics,
        group: runtime.options.group.clone(),
        health: Arc::clone(&runtime.health),
        scope,
        dispatch,
        control: handle,
        stop,
        report,
    });
    registry.lock().push(Arc::clone(&control));
    Ok(Subscription { control, registry: Arc::downgrade(registry) })
}
