//! Counters of what the bus did, and their snapshot.
//!
//! Owns: [`Metrics`] (shared atomic counters, cheap to bump from any task), [`Striped`] (a
//! counter bumped once per message from every runtime thread) and [`MetricsSnapshot`] (a copy
//! of them at one moment). Counters only grow, except the gauges named as such.
//!
//! Invariant: a per-message counter is [`Striped`]: each thread bumps a stripe of its own (its
//! own cache line), so the dispatch workers of different threads never contend on one line; a
//! snapshot sums the stripes.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

/// Stripes of a [`Striped`] counter (threads beyond this share stripes).
const STRIPES: usize = 8;

/// One stripe, alone on its cache line (128 bytes: adjacent-line prefetching pairs lines).
#[derive(Debug, Default)]
#[repr(align(128))]
struct Stripe(AtomicU64);

/// A counter bumped from many threads at once: each thread adds to its own stripe.
#[derive(Debug, Default)]
pub(crate) struct Striped {
    stripes: [Stripe; STRIPES],
}

/// The next stripe given to a thread that bumps for the first time.
static NEXT_STRIPE: AtomicUsize = AtomicUsize::new(0);

thread_local! {
    /// This thread's stripe.
    static STRIPE: usize = NEXT_STRIPE.fetch_add(1, Ordering::Relaxed) % STRIPES;
}

impl Striped {
    /// Adds one (to this thread's stripe).
    pub(crate) fn bump(&self) {
        let stripe = STRIPE.try_with(|s| *s).unwrap_or(0);
        if let Some(stripe) = self.stripes.get(stripe) {
            stripe.0.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// The sum of the stripes.
    pub(crate) fn get(&self) -> u64 {
        self.stripes.iter().map(|s| s.0.load(Ordering::Relaxed)).sum()
    }
}

/// The bus's counters.
#[derive(Debug, Default)]
pub(crate) struct Metrics {
    pub(crate) published: AtomicU64,
    pub(crate) publish_failed: AtomicU64,
    pub(crate) received: AtomicU64,
    /// Bumped once per message handled: striped.
    pub(crate) handled: Striped,
    pub(crate) handler_failures: AtomicU64,
    pub(crate) retries: AtomicU64,
    pub(crate) dead_lettered: AtomicU64,
    pub(crate) dead_letter_failures: AtomicU64,
    pub(crate) poison: AtomicU64,
    pub(crate) handler_timeouts: AtomicU64,
    pub(crate) commits: AtomicU64,
    pub(crate) commit_failures: AtomicU64,
    pub(crate) rebalances: AtomicU64,
    pub(crate) partitions_assigned: AtomicU64,
    pub(crate) partitions_revoked: AtomicU64,
    pub(crate) abandoned: AtomicU64,
    pub(crate) group_failures: AtomicU64,
    pub(crate) partitions_failed: AtomicU64,
    pub(crate) batches_dead_lettered: AtomicU64,
    pub(crate) subscriptions_failed: AtomicU64,
    pub(crate) task_restarts: AtomicU64,
    pub(crate) task_escalations: AtomicU64,
}

/// Gauges read from the live parts of the bus when a snapshot is taken.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Gauges {
    pub(crate) subscriptions: usize,
    pub(crate) in_flight: usize,
    pub(crate) live_tasks: usize,
}

impl Metrics {
    pub(crate) fn bump(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }

    pub(crate) fn snapshot(&self, gauges: Gauges) -> MetricsSnapshot {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        MetricsSnapshot {
            published: get(&self.published),
            publish_failed: get(&self.publish_failed),
            received: get(&self.received),
            handled: self.handled.get(),
            handler_failures: get(&self.handler_failures),
            retries: get(&self.retries),
            dead_lettered: get(&self.dead_lettered),
            dead_letter_failures: get(&self.dead_letter_failures),
            poison: get(&self.poison),
            handler_timeouts: get(&self.handler_timeouts),
            commits: get(&self.commits),
            commit_failures: get(&self.commit_failures),
            rebalances: get(&self.rebalances),
            partitions_assigned: get(&self.partitions_assigned),
            partitions_revoked: get(&self.partitions_revoked),
            abandoned: get(&self.abandoned),
            group_failures: get(&self.group_failures),
            partitions_failed: get(&self.partitions_failed),
            batches_dead_lettered: get(&self.batches_dead_lettered),
            subscriptions_failed: get(&self.subscriptions_failed),
            task_restarts: get(&self.task_restarts),
            task_escalations: get(&self.task_escalations),
            subscriptions: gauges.subscriptions,
            in_flight: gauges.in_flight,
            live_tasks: gauges.live_tasks,
        }
    }
}

/// The bus's counters at one moment.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct MetricsSnapshot {
    /// Records acknowledged (counted when the caller observes the acknowledgement).
    pub published: u64,
    /// Publishes that failed (rejected, timed out, failed back at shutdown).
    pub publish_failed: u64,
    /// Messages received from the backend by subscriptions.
    pub received: u64,
    /// Messages whose handler succeeded.
    pub handled: u64,
    /// Handler attempts that failed (each retry counts).
    pub handler_failures: u64,
    /// Retries made.
    pub retries: u64,
    /// Messages sent to a dead-letter topic.
    pub dead_lettered: u64,
    /// Dead-letter publishes that failed (the message stays uncommitted, to be redelivered).
    pub dead_letter_failures: u64,
    /// Messages that could not be decoded (dead-lettered without retries).
    pub poison: u64,
    /// Handler attempts cancelled by the handler timeout.
    pub handler_timeouts: u64,
    /// Offset commits made.
    pub commits: u64,
    /// Offset commits that failed.
    pub commit_failures: u64,
    /// Partition revocations handled (each revocation of one or more partitions counts once).
    pub rebalances: u64,
    /// Partitions assigned to subscriptions, each counted once per assignment: with the
    /// cooperative protocol a rebalance assigns only what a member gains; with the eager
    /// protocol every rebalance assigns everything again.
    pub partitions_assigned: u64,
    /// Partitions revoked from subscriptions, each counted once per revocation (what stopped
    /// being read for a rebalance: with the cooperative protocol only what moves).
    pub partitions_revoked: u64,
    /// Handlers abandoned at a revoke or shutdown deadline (their messages will be redelivered).
    pub abandoned: u64,
    /// Times a subscription's member was dropped by its group, or could not read its committed
    /// offsets or open a partition (each is logged with the reason).
    pub group_failures: u64,
    /// Times a partition stopped making progress (a batch it cannot read under the `fail`
    /// policy, or fetches failing again and again), each named in the bus's health until it
    /// recovers.
    pub partitions_failed: u64,
    /// Record batches that could not be read, sent whole to the dead-letter topic (the `skip`
    /// policy).
    pub batches_dead_lettered: u64,
    /// Subscriptions that failed for good (committed offsets unreadable past the rebalance
    /// timeout), each named in the bus's health.
    pub subscriptions_failed: u64,
    /// Restarts of the bus's supervised tasks (producer partition loops, fetch loops, control
    /// tasks, group members' coordinator and heartbeat tasks) after a panic or an error.
    pub task_restarts: u64,
    /// Supervised tasks that went past their restart intensity: each failed its subscription
    /// (or the producer), named in the bus's health.
    pub task_escalations: u64,
    /// Gauge: active subscriptions.
    pub subscriptions: usize,
    /// Gauge: messages accepted by subscriptions' dispatch and not finished (queued or running).
    pub in_flight: usize,
    /// Gauge: live tasks in the bus's supervisor tree.
    pub live_tasks: usize,
}

/// The kind of a supervised task, from its path: `fetch`, `control`, `heartbeat`,
/// `coordinator`, `producer` (the `task` label of the restart metrics: bounded, unlike paths).
fn task_kind(path: &str) -> &'static str {
    if path.contains("/producer/") {
        return "producer";
    }
    match path.rsplit('/').next() {
        Some("fetch") => "fetch",
        Some("control") => "control",
        Some("heartbeat") => "heartbeat",
        Some("coordinator") => "coordinator",
        _ => "other",
    }
}

/// Counts the tree's supervision events (restarts, escalations) into `metrics` and the facade
/// (`bus_task_restarts_total{task}`, `bus_task_escalations_total{task}`) until `token` is
/// cancelled.
pub(crate) async fn count_supervision(
    mut events: tokio::sync::broadcast::Receiver<bus_supervisor::SupervisionEvent>,
    metrics: std::sync::Arc<Metrics>,
    token: bus_supervisor::CancellationToken,
) {
    use bus_supervisor::Action;
    use tokio::sync::broadcast::error::RecvError;
    loop {
        let event = tokio::select! {
            () = token.cancelled() => return,
            event = events.recv() => event,
        };
        match event {
            Ok(event) => {
                let task = task_kind(&event.path);
                match event.action {
                    Action::Restart { .. } => {
                        Metrics::bump(&metrics.task_restarts);
                        ::metrics::counter!("bus_task_restarts_total", "task" => task).increment(1);
                    }
                    Action::Escalate => {
                        Metrics::bump(&metrics.task_escalations);
                        ::metrics::counter!("bus_task_escalations_total", "task" => task)
                            .increment(1);
                    }
                    Action::Stop | Action::Shutdown => {}
                }
            }
            Err(RecvError::Lagged(missed)) => {
                tracing::warn!(missed, "supervision events missed by the metrics");
            }
            Err(RecvError::Closed) => return,
        }
    }
}
