//! The scenarios and what one run of a scenario reports.
//!
//! Owns: [`Scenario`] (the catalogue), [`Run`] (what a scenario observed of itself: messages,
//! losses, order, shutdown) and [`Ctx`] (what scenarios share: the broker, the injected leak,
//! the trees the tool observes). Each scenario creates its own bus, shuts it down (or drops it,
//! where that is the point) and returns; the caller then checks the process returned to its
//! baseline.

pub(crate) mod churn;
pub(crate) mod faults;
pub(crate) mod lifecycle;
pub(crate) mod load;

use std::collections::HashMap;
use std::time::Duration;

use bus_core::{Envelope, EventBus, HandlerError, SubscribeOptions};
use bus_supervisor::Scope;
use indicatif::ProgressBar;
use parking_lot::Mutex;

/// The scenarios, in the order they run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum Scenario {
    /// The Go SDK's load on Kafka: 5 topics x 3 partitions, 500 / 2,000 / 5,000 / 10,000
    /// envelopes.
    KafkaLoad,
    /// The same load over SASL_SSL (SCRAM-SHA-512) on the secured broker (`KAFKA_SECURE_*`,
    /// set by `cargo xtask leakcheck`), with the largest count; skipped when there is none.
    SecureKafkaLoad,
    /// A handler that never completes and one that blocks its thread.
    StuckHandlers,
    /// A second member joins and leaves the group 20 times while messages flow (Kafka).
    RebalanceChurn,
    /// The same churn with cooperative members (`cooperative-sticky`: partial revocations,
    /// follow-up rebalances), the steady member static (Kafka).
    CooperativeChurn,
    /// Connections cut through a proxy, the broker stopped and restarted mid-stream (Kafka).
    BrokerFaults,
    /// A bus dropped without calling shutdown.
    DropWithoutShutdown,
    /// The same load on the in-memory backend.
    MemoryLoad,
}

impl Scenario {
    /// Every scenario.
    pub(crate) const ALL: [Scenario; 8] = [
        Scenario::KafkaLoad,
        Scenario::SecureKafkaLoad,
        Scenario::StuckHandlers,
        Scenario::RebalanceChurn,
        Scenario::CooperativeChurn,
        Scenario::BrokerFaults,
        Scenario::DropWithoutShutdown,
        Scenario::MemoryLoad,
    ];

    /// Whether it needs a Kafka broker.
    pub(crate) fn needs_kafka(self) -> bool {
        matches!(
            self,
            Scenario::KafkaLoad
                | Scenario::RebalanceChurn
                | Scenario::CooperativeChurn
                | Scenario::BrokerFaults
        )
    }
}

/// What scenarios share.
pub(crate) struct Ctx {
    /// The Kafka broker, when there is one.
    pub(crate) bootstrap: Option<String>,
    /// The secured broker's configuration (SASL_SSL), when there is one.
    pub(crate) secure: Option<bus_kafka::KafkaConfig>,
    /// Add a deliberately leaked task and socket to the first scenario.
    pub(crate) inject_leak: Mutex<bool>,
    /// Trees outside the buses that the tool knows of (the injected leak's), so that a leaked
    /// task can be named.
    pub(crate) observed: Mutex<Vec<Scope>>,
}

/// What one scenario run observed of itself.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub(crate) struct Run {
    /// The row's name.
    pub(crate) name: String,
    /// Messages published and acknowledged.
    pub(crate) messages: u64,
    /// Acknowledged messages never handled.
    pub(crate) lost: u64,
    /// Messages handled out of order for their aggregate.
    pub(crate) out_of_order: u64,
    /// Messages handled more than once (allowed: at-least-once).
    pub(crate) duplicates: u64,
    /// Messages per second, first publish to last message received.
    pub(crate) rate: Option<f64>,
    /// How long shutdown took.
    pub(crate) shutdown: Option<Duration>,
    /// The deadline shutdown was given, when the scenario holds it to one (its overrun is
    /// shown).
    pub(crate) shutdown_deadline: Option<Duration>,
    /// The bus's live tasks right after shutdown (must be zero).
    pub(crate) live_after_shutdown: usize,
    /// Tasks that did not stop, by path and spawn site.
    pub(crate) stuck: Vec<String>,
    /// What went wrong (loss, order, a failed shutdown, …).
    pub(crate) problems: Vec<String>,
    /// Notes for the reader (not failures).
    pub(crate) notes: Vec<String>,
}

impl Run {
    /// Waits (up to 120 s) until `expected` distinct envelopes were handled, then records what
    /// `book` saw: losses, order violations (both problems) and redeliveries. True when all
    /// arrived.
    pub(crate) async fn account(&mut self, book: &Mutex<OrderBook>, expected: u64) -> bool {
        let arrived =
            wait_until(Duration::from_secs(120), || book.lock().distinct() >= expected).await;
        let book = book.lock();
        self.lost = expected.saturating_sub(book.distinct());
        self.out_of_order = book.out_of_order;
        self.duplicates = book.duplicates;
        if self.lost > 0 {
            self.problems.push(format!("{} acknowledged envelope(s) never handled", self.lost));
        }
        if self.out_of_order > 0 {
            self.problems.push(format!("{} envelope(s) handled out of order", self.out_of_order));
        }
        arrived
    }
}

/// Per-aggregate ordering check: versions must arrive as 1, 2, 3, …; a repeat of a version
/// already seen is a duplicate (at-least-once), a jump ahead is an order violation.
#[derive(Default)]
pub(crate) struct OrderBook {
    max: HashMap<String, i64>,
    seen: std::collections::HashSet<(String, i64)>,
    pub(crate) out_of_order: u64,
    pub(crate) duplicates: u64,
}

impl OrderBook {
    /// Records one handled envelope.
    pub(crate) fn record(&mut self, aggregate: &str, version: i64) {
        if !self.seen.insert((aggregate.to_owned(), version)) {
            self.duplicates += 1;
            return;
        }
        let max = self.max.entry(aggregate.to_owned()).or_insert(0);
        if version == *max + 1 {
            *max = version;
        } else if version > *max {
            self.out_of_order += 1;
            *max = version;
        } else {
            // An older version first seen now: it was skipped earlier.
            self.out_of_order += 1;
        }
    }

    /// Distinct envelopes handled.
    pub(crate) fn distinct(&self) -> u64 {
        self.seen.len() as u64
    }
}

/// Subscribes an order-checking handler for `topic`; returns the order book it fills.
pub(crate) async fn subscribe_checked(
    bus: &EventBus,
    topic: &str,
    group: &str,
    book: std::sync::Arc<Mutex<OrderBook>>,
    progress: ProgressBar,
) -> Result<bus_core::Subscription, bus_core::errors::SubscribeError> {
    subscribe_member(bus, topic, group, None, book, progress).await
}

/// [`subscribe_checked`], a static member with `instance` when one is given.
pub(crate) async fn subscribe_member(
    bus: &EventBus,
    topic: &str,
    group: &str,
    instance: Option<&str>,
    book: std::sync::Arc<Mutex<OrderBook>>,
    progress: ProgressBar,
) -> Result<bus_core::Subscription, bus_core::errors::SubscribeError> {
    let mut options = SubscribeOptions::new(group)
        .with_concurrency(8)
        .with_commit_interval(Duration::from_millis(200));
    if let Some(instance) = instance {
        options = options.with_group_instance_id(instance);
    }
    bus.subscribe_envelopes(topic, options, move |e: Envelope| {
        let book = std::sync::Arc::clone(&book);
        let progress = progress.clone();
        async move {
            book.lock().record(&e.aggregate_id, e.event_version);
            progress.inc(1);
            Ok::<(), HandlerError>(())
        }
    })
    .await
}

/// Waits up to `deadline` for `condition`, polling.
pub(crate) async fn wait_until(deadline: Duration, mut condition: impl FnMut() -> bool) -> bool {
    let until = tokio::time::Instant::now() + deadline;
    loop {
        if condition() {
            return true;
        }
        if tokio::time::Instant::now() >= until {
            return condition();
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Shuts `bus` down, recording the time, the live count after it and what would not stop.
pub(crate) async fn shut_down(bus: &EventBus, timeout: Duration, run: &mut Run) {
    let started = tokio::time::Instant::now();
    match bus.shutdown(timeout).await {
        Ok(_report) => {}
        Err(error) => {
            run.stuck.extend(error.stuck.iter().map(ToString::to_string));
            run.problems
                .push(format!("shutdown incomplete: {} task(s) would not stop", error.stuck.len()));
        }
    }
    run.shutdown = Some(started.elapsed());
    run.live_after_shutdown = bus.live_tasks();
    if run.live_after_shutdown > 0 {
        run.problems.push(format!(
            "{} task(s) alive after shutdown:\n{}",
            run.live_after_shutdown,
            bus.snapshot()
        ));
    }
}

/// When the leak is to be injected (once, into the first scenario that asks), leaves behind a
/// task (in a supervisor nobody shuts down) holding a listening socket.
pub(crate) fn maybe_inject_leak(ctx: &Ctx) {
    let mut inject = ctx.inject_leak.lock();
    if !*inject {
        return;
    }
    *inject = false;
    let supervisor = bus_supervisor::Supervisor::new("injected-leak");
    let listener = std::net::TcpListener::bind("127.0.0.1:0");
    let spawned = supervisor.root().child("forgotten").spawn("holds-a-socket", async move {
        let _socket = listener;
        std::future::pending::<()>().await;
    });
    if let Ok(handle) = spawned {
        handle.detach();
    }
    ctx.observed.lock().push(supervisor.root().clone());
    // Never shut down, never dropped: the leak the tool must find.
    std::mem::forget(supervisor);
}
