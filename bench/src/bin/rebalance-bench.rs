//! The rebalance benchmark of issue 16: the time each member of a group spends not processing
//! during a rolling restart of its three members, with the eager protocol (`range`), the
//! cooperative one (`cooperative-sticky`) and static membership (`range` with a group instance
//! id per member), for the bus and for rdkafka (librdkafka) with the same settings, on one
//! broker, in one process.
//!
//! Owns: the workload (a fresh 6-partition topic per scenario, records produced at a steady
//! rate by the bus's producer over 1,000 keys throughout; three members in a fresh group, each
//! a client of its own: a bus per member, or an rdkafka `BaseConsumer` polled by a thread of its
//! own), the rolling restart (each member in turn stops (a dynamic member leaves its group, a
//! static one does not), waits `--pause-ms` (a process restarting), starts again, and the group
//! gets `--settle-secs` before the next), the measurement and its table (stdout; progress on
//! stderr).
//!
//! Measured, from one second before the first stop to the end of the last settle, with every
//! handled record's time, member and partition:
//! - per member, *stalled*: the time it processed nothing, its own restart left out: the gaps
//!   between its consecutive records longer than `--gap-ms` (records arrive on every partition
//!   every few milliseconds, so a longer gap is a member holding nothing to read, or not reading
//!   what it holds), less the producer's pauses within them (its send times are stamped in the
//!   values: a pause of the producer, or of the whole process under this shared machine's load,
//!   is no member's stall);
//! - per member, *own restart*: from its stop to the first record of its new instance;
//! - *partition-seconds idle*: the same gaps per partition, whoever reads it, summed;
//! - the *noise floor*: both measures over a quiet window before the first restart (every
//!   member up, nothing moving), scaled to the restarts' length.
//!
//! Settings shared by both clients: session timeout 10 s, heartbeat every 3 s (both clients'
//! default), commits every second, fetch wait at most 100 ms (nisshi answers a waiting fetch
//! only when it wakes, after half the time left: up to 50 ms late here, well under the stall
//! threshold), earliest offset reset.
//!
//! Usage: `rebalance-bench --bootstrap HOST:PORT [--rate N] [--pause-ms P] [--settle-secs S]
//! [--only bus|rdkafka] [--modes eager,cooperative,static]`. Build with `--features peer` for
//! the rdkafka side.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use bus_bench::{AGGREGATES, PARTITIONS, VALUE_BYTES, fail, librdkafka_version};
use bus_core::{EventBus, HandlerError, Message, Record, SubscribeOptions, Subscription};
use bus_kafka::KafkaConfig;
use bytes::Bytes;
use clap::Parser;

/// Members of the group.
const MEMBERS: usize = 3;
/// Session timeout of every member (a static member's place waits this long).
const SESSION: Duration = Duration::from_secs(10);
/// Heartbeat interval of every member (both clients' default): a member learns of a rebalance
/// at its next heartbeat, so with the eager protocol those that learn first wait, revoked, for
/// the last one.
const HEARTBEAT: Duration = Duration::from_secs(3);
/// The longest the producer may send nothing before the time counts as its pause.
const PRODUCER_PAUSE: Duration = Duration::from_millis(50);
/// The quiet window before the restarts, in which the noise floor is measured.
const QUIET: Duration = Duration::from_secs(10);
/// Commit interval of every member.
const COMMIT: Duration = Duration::from_secs(1);
/// How long the broker may hold a fetch waiting for records (short: nisshi answers a waiting
/// fetch only when it wakes, after half the time left, so a caught-up member sees gaps of up
/// to half of this).
const FETCH_WAIT: Duration = Duration::from_millis(100);

/// A group's rebalance protocol and membership.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    /// `range`, dynamic members.
    Eager,
    /// `cooperative-sticky`, dynamic members.
    Cooperative,
    /// `range`, static members.
    Static,
}

impl Mode {
    fn parse(text: &str) -> Result<Mode, String> {
        match text {
            "eager" => Ok(Mode::Eager),
            "cooperative" => Ok(Mode::Cooperative),
            "static" => Ok(Mode::Static),
            other => Err(format!("unknown mode `{other}`: eager, cooperative or static")),
        }
    }

    fn assignor(self) -> &'static str {
        match self {
            Mode::Cooperative => "cooperative-sticky",
            Mode::Eager | Mode::Static => "range",
        }
    }

    fn describe(self) -> &'static str {
        match self {
            Mode::Eager => "eager (`range`)",
            Mode::Cooperative => "cooperative (`cooperative-sticky`)",
            Mode::Static => "static members (`range`, group instance ids)",
        }
    }

    /// The group instance id of member `slot` in `group`, for static members.
    fn instance(self, group: &str, slot: usize) -> Option<String> {
        (self == Mode::Static).then(|| format!("{group}-member-{slot}"))
    }
}

/// One handled record: when it was produced and handled, by which member (its slot, and
/// whether by the instance started again), of which partition.
#[derive(Debug, Clone, Copy)]
struct Handling {
    produced: Instant,
    at: Instant,
    slot: usize,
    restarted: bool,
    partition: i32,
}

/// The instant the records' send times count from.
static BASE: OnceLock<Instant> = OnceLock::new();

fn base() -> Instant {
    *BASE.get_or_init(Instant::now)
}

/// A record's value: its send time (nanoseconds since [`BASE`], big-endian) then padding.
fn stamped_value() -> Bytes {
    let nanos = u64::try_from(base().elapsed().as_nanos()).unwrap_or(u64::MAX);
    let mut value = vec![b'v'; VALUE_BYTES];
    value[..8].copy_from_slice(&nanos.to_be_bytes());
    Bytes::from(value)
}

/// The send time stamped in `value`.
fn produced_at(value: &[u8]) -> Instant {
    let nanos = value.get(..8).and_then(|b| b.try_into().ok()).map_or(0, u64::from_be_bytes);
    base() + Duration::from_nanos(nanos)
}

/// Every record handled.
#[derive(Default)]
struct Handled(Mutex<Vec<Handling>>);

impl Handled {
    fn push(&self, slot: usize, restarted: bool, partition: i32, value: &[u8]) {
        let produced = produced_at(value);
        let handling = Handling { produced, at: Instant::now(), slot, restarted, partition };
        self.0.lock().unwrap_or_else(|e| e.into_inner()).push(handling);
    }

    fn snapshot(&self) -> Vec<Handling> {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

/// The times of the rolling restart.
struct Restarts {
    /// The quiet window (every member up, nothing restarting) from `quiet` to `from`, the noise
    /// floor's.
    quiet: Instant,
    /// When the measurement starts and ends.
    from: Instant,
    to: Instant,
    /// When each member stopped.
    stopped: [Instant; MEMBERS],
}

/// What one scenario measured.
struct Outcome {
    /// Per member: seconds stalled while others restarted.
    stalled: [f64; MEMBERS],
    /// Per member: seconds from its stop to its first record after starting again.
    own_restart: [f64; MEMBERS],
    /// Partition-seconds without a record, over all partitions.
    partition_idle: f64,
    /// The same measures over the quiet window, scaled to the restarts' length: what this
    /// machine's load alone causes. (members' stalls summed, partition-seconds idle)
    noise: (f64, f64),
    records: usize,
}

/// When the producer sent nothing for longer than [`PRODUCER_PAUSE`] (it sends every 10 ms):
/// from the records' send times, sorted. A pause of the producer, or of the whole process (this
/// shared machine's load), leaves the members nothing to do: it is no member's stall.
fn producer_pauses(handled: &[Handling]) -> Vec<(Instant, Instant)> {
    let mut sent: Vec<Instant> = handled.iter().map(|h| h.produced).collect();
    sent.sort();
    sent.windows(2)
        .filter_map(|w| match w {
            [a, b] if b.saturating_duration_since(*a) > PRODUCER_PAUSE => Some((*a, *b)),
            _ => None,
        })
        .collect()
}

/// How much of `a`..`b` the producer spent paused.
fn paused_within(a: Instant, b: Instant, pauses: &[(Instant, Instant)]) -> Duration {
    pauses.iter().map(|&(x, y)| y.min(b).saturating_duration_since(x.max(a))).sum()
}

/// The time within `from`..`to` in which nothing of `handled` (sorted by handling time) was
/// handled: the gaps between consecutive handlings (and the window's ends), less the producer's
/// pauses within them, summed where longer than `gap`.
fn stalls(
    handled: &[Handling],
    from: Instant,
    to: Instant,
    gap: Duration,
    pauses: &[(Instant, Instant)],
) -> f64 {
    let mut previous = from;
    let mut total = 0.0;
    let times = handled.iter().map(|h| h.at).filter(|t| *t > from && *t < to);
    for t in times.chain(std::iter::once(to)) {
        let idle = t.saturating_duration_since(previous) - paused_within(previous, t, pauses);
        if idle > gap {
            total += idle.as_secs_f64();
        }
        previous = t;
    }
    total
}

fn measure(handled: &[Handling], restarts: &Restarts, gap: Duration) -> Outcome {
    let mut handled = handled.to_vec();
    handled.sort_by_key(|h| h.at);
    let pauses = producer_pauses(&handled);
    let mut stalled = [0.0; MEMBERS];
    let mut own_restart = [0.0; MEMBERS];
    for slot in 0..MEMBERS {
        let mine = handled.iter().filter(|h| h.slot == slot);
        let before: Vec<Handling> = mine.clone().filter(|h| !h.restarted).copied().collect();
        let after: Vec<Handling> = mine.filter(|h| h.restarted).copied().collect();
        // Its own restart: from its stop (the old instance may still finish records while it
        // drains) to the new instance's first record.
        let stop = restarts.stopped[slot];
        let back = after.first().map_or(restarts.to, |h| h.at);
        own_restart[slot] = back.saturating_duration_since(stop).as_secs_f64();
        stalled[slot] = stalls(&before, restarts.from, stop, gap, &pauses)
            + stalls(&after, back, restarts.to, gap, &pauses);
    }
    let mut partition_idle = 0.0;
    for partition in 0..PARTITIONS {
        let of: Vec<Handling> =
            handled.iter().filter(|h| h.partition == partition).copied().collect();
        partition_idle += stalls(&of, restarts.from, restarts.to, gap, &pauses);
    }
    let records = handled.iter().filter(|h| h.at > restarts.from && h.at < restarts.to).count();
    let (quiet, from) = (restarts.quiet, restarts.from);
    let scale = (restarts.to - from).as_secs_f64() / (from - quiet).as_secs_f64().max(1e-3);
    let mut noise = (0.0, 0.0);
    for slot in 0..MEMBERS {
        let mine: Vec<Handling> = handled.iter().filter(|h| h.slot == slot).copied().collect();
        noise.0 += stalls(&mine, quiet, from, gap, &pauses) * scale;
    }
    for partition in 0..PARTITIONS {
        let of: Vec<Handling> =
            handled.iter().filter(|h| h.partition == partition).copied().collect();
        noise.1 += stalls(&of, quiet, from, gap, &pauses) * scale;
    }
    Outcome { stalled, own_restart, partition_idle, noise, records }
}

/// Produces `rate` records per second to `topic` (keys over [`AGGREGATES`] aggregates) with
/// the bus's producer until `stop`.
async fn produce(bootstrap: &str, topic: &str, rate: usize, stop: &AtomicBool) {
    let bus = bus_kafka::connect(KafkaConfig::new(bootstrap))
        .await
        .unwrap_or_else(|e| fail(&format!("producer bus: {e}")));
    let (_, keys) = bus_bench::keys();
    let per_tick = rate.div_ceil(100).max(1);
    let mut tick = tokio::time::interval(Duration::from_millis(10));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let mut i = 0usize;
    let mut pending = std::collections::VecDeque::new();
    while !stop.load(Ordering::Acquire) {
        tick.tick().await;
        for _ in 0..per_tick {
            let record = Record::new(topic, stamped_value()).with_key(keys[i % AGGREGATES].clone());
            i += 1;
            match bus.publish_nowait(record).await {
                Ok(delivery) => pending.push_back(delivery),
                Err(e) => fail(&format!("publish: {e}")),
            }
        }
        while pending.len() > rate {
            if let Some(front) = pending.pop_front() {
                front.await.unwrap_or_else(|e| fail(&format!("delivery: {e}")));
            }
        }
    }
    for delivery in pending {
        let _ = delivery.await;
    }
    let _ = bus.shutdown(Duration::from_secs(30)).await;
}

/// One member on the bus: a bus of its own.
struct BusMember {
    bus: EventBus,
    subscription: Subscription,
}

async fn bus_member(
    bootstrap: &str,
    topic: &str,
    group: &str,
    mode: Mode,
    slot: usize,
    restarted: bool,
    handled: &Arc<Handled>,
) -> BusMember {
    let mut config = KafkaConfig::new(bootstrap);
    config.consumer.session_timeout = SESSION;
    config.consumer.heartbeat_interval = HEARTBEAT;
    config.consumer.fetch_max_wait = FETCH_WAIT;
    config.consumer.assignors = vec![mode.assignor().to_owned()];
    let bus = bus_kafka::connect(config).await.unwrap_or_else(|e| fail(&format!("bus: {e}")));
    let mut options = SubscribeOptions::new(group).with_commit_interval(COMMIT);
    if let Some(instance) = mode.instance(group, slot) {
        options = options.with_group_instance_id(instance);
    }
    let handled = Arc::clone(handled);
    let subscription = bus
        .subscribe(topic, options, move |message: Message| {
            handled.push(slot, restarted, message.partition, message.payload());
            std::future::ready(Ok::<(), HandlerError>(()))
        })
        .await
        .unwrap_or_else(|e| fail(&format!("subscribe: {e}")));
    BusMember { bus, subscription }
}

impl BusMember {
    async fn stop(self) {
        if let Err(e) = self.subscription.unsubscribe(Duration::from_secs(30)).await {
            eprintln!("  bus: unsubscribe: {e}");
        }
        if let Err(e) = self.bus.shutdown(Duration::from_secs(30)).await {
            eprintln!("  bus: shutdown: {e}");
        }
    }
}

/// The rolling restart on the bus.
async fn bus_scenario(
    bootstrap: &str,
    topic: &str,
    group: &str,
    mode: Mode,
    timing: &Timing,
    handled: &Arc<Handled>,
) -> Restarts {
    let mut members = Vec::new();
    for slot in 0..MEMBERS {
        members.push(Some(bus_member(bootstrap, topic, group, mode, slot, false, handled).await));
    }
    tokio::time::sleep(timing.warm).await;
    let quiet = Instant::now();
    tokio::time::sleep(QUIET).await;
    let from = Instant::now();
    tokio::time::sleep(Duration::from_secs(1)).await;
    let mut stopped = [from; MEMBERS];
    for slot in 0..MEMBERS {
        stopped[slot] = Instant::now();
        if let Some(member) = members.get_mut(slot).and_then(Option::take) {
            member.stop().await;
        }
        tokio::time::sleep(timing.pause).await;
        members[slot] = Some(bus_member(bootstrap, topic, group, mode, slot, true, handled).await);
        eprintln!("  bus: member {slot} restarted");
        tokio::time::sleep(timing.settle).await;
    }
    let to = Instant::now();
    for member in members.into_iter().flatten() {
        member.stop().await;
    }
    Restarts { quiet, from, to, stopped }
}

/// How the rolling restart is paced.
struct Timing {
    /// After the three members subscribed, before the measurement starts.
    warm: Duration,
    /// A member's downtime.
    pause: Duration,
    /// After a member started again, before the next stops.
    settle: Duration,
}

#[cfg(not(feature = "peer"))]
fn rdkafka_scenario(
    _bootstrap: &str,
    _topic: &str,
    _group: &str,
    _mode: Mode,
    _timing: &Timing,
    _handled: &Arc<Handled>,
) -> Restarts {
    fail("built without the rdkafka peer: build with `--features peer`")
}

/// The rolling restart with rdkafka: each member a `BaseConsumer` polled by a thread of its
/// own; a stop closes it (`close_queue`, served until closed: the final commit and, for a
/// dynamic member, leaving the group) and drops it.
#[cfg(feature = "peer")]
fn rdkafka_scenario(
    bootstrap: &str,
    topic: &str,
    group: &str,
    mode: Mode,
    timing: &Timing,
    handled: &Arc<Handled>,
) -> Restarts {
    use rdkafka::config::ClientConfig;
    use rdkafka::consumer::{BaseConsumer, Consumer};
    use rdkafka::message::Message as _;

    let member = |slot: usize, restarted: bool, stop: &AtomicBool| {
        let mut config = ClientConfig::new();
        config
            .set("bootstrap.servers", bootstrap)
            .set("group.id", group)
            .set("auto.offset.reset", "earliest")
            .set("enable.auto.commit", "true")
            .set("auto.commit.interval.ms", COMMIT.as_millis().to_string())
            .set("session.timeout.ms", SESSION.as_millis().to_string())
            .set("heartbeat.interval.ms", HEARTBEAT.as_millis().to_string())
            .set("fetch.wait.max.ms", FETCH_WAIT.as_millis().to_string())
            .set("partition.assignment.strategy", mode.assignor());
        if let Some(instance) = mode.instance(group, slot) {
            config.set("group.instance.id", instance);
        }
        let consumer: BaseConsumer =
            config.create().unwrap_or_else(|e| fail(&format!("rdkafka consumer: {e}")));
        consumer.subscribe(&[topic]).unwrap_or_else(|e| fail(&format!("rdkafka subscribe: {e}")));
        while !stop.load(Ordering::Acquire) {
            match consumer.poll(Duration::from_millis(100)) {
                Some(Ok(message)) => handled.push(
                    slot,
                    restarted,
                    message.partition(),
                    message.payload().unwrap_or_default(),
                ),
                Some(Err(e)) => eprintln!("  rdkafka: {e}"),
                None => {}
            }
        }
        let closing = consumer.close_queue();
        while closing.is_ok() && !consumer.closed() {
            consumer.poll(Duration::from_millis(1));
        }
        drop(consumer);
    };
    let stops: [AtomicBool; MEMBERS] = Default::default();
    let restarted: [AtomicBool; MEMBERS] = Default::default();
    std::thread::scope(|s| {
        let mut threads: Vec<Option<std::thread::ScopedJoinHandle<'_, ()>>> = stops
            .iter()
            .enumerate()
            .map(|(slot, stop)| Some(s.spawn(move || member(slot, false, stop))))
            .collect();
        std::thread::sleep(timing.warm);
        let quiet = Instant::now();
        std::thread::sleep(QUIET);
        let from = Instant::now();
        std::thread::sleep(Duration::from_secs(1));
        let mut stopped = [from; MEMBERS];
        for slot in 0..MEMBERS {
            stopped[slot] = Instant::now();
            stops[slot].store(true, Ordering::Release);
            if let Some(thread) = threads[slot].take() {
                let _ = thread.join();
            }
            std::thread::sleep(timing.pause);
            let again = &restarted[slot];
            threads[slot] = Some(s.spawn(move || member(slot, true, again)));
            eprintln!("  rdkafka: member {slot} restarted");
            std::thread::sleep(timing.settle);
        }
        let to = Instant::now();
        for flag in restarted.iter().chain(stops.iter()) {
            flag.store(true, Ordering::Release);
        }
        Restarts { quiet, from, to, stopped }
    })
}

/// The rolling restart of three members, the bus's against rdkafka's, for each mode.
#[derive(Parser)]
struct Args {
    /// The broker, `host:port`.
    #[arg(long)]
    bootstrap: String,
    /// Records produced per second throughout.
    #[arg(long, default_value_t = 2_000, value_parser = bus_bench::positive)]
    rate: usize,
    /// A member's downtime in its restart, in milliseconds (well within the session timeout).
    #[arg(long, default_value_t = 2_000, value_parser = bus_bench::positive)]
    pause_ms: usize,
    /// Seconds the group gets after each restart.
    #[arg(long, default_value_t = 10, value_parser = bus_bench::positive)]
    settle_secs: usize,
    /// A gap between a member's records longer than this (milliseconds) counts as stalled.
    #[arg(long, default_value_t = 250, value_parser = bus_bench::positive)]
    gap_ms: usize,
    /// One client only.
    #[arg(long, value_parser = ["bus", "rdkafka"])]
    only: Option<String>,
    /// The modes, comma-separated.
    #[arg(long, default_value = "eager,cooperative,static")]
    modes: String,
}

fn main() {
    let args = Args::parse();
    let modes: Vec<Mode> =
        args.modes.split(',').map(|m| Mode::parse(m.trim()).unwrap_or_else(|e| fail(&e))).collect();
    let runtime = bus_bench::runtime();
    let admin = bus_bench::admin(&runtime, &args.bootstrap);
    let timing = Timing {
        warm: Duration::from_secs(8),
        pause: Duration::from_millis(args.pause_ms as u64),
        settle: Duration::from_secs(args.settle_secs as u64),
    };
    let gap = Duration::from_millis(args.gap_ms as u64);
    let run_id = std::process::id();
    let mut rows = Vec::new();
    for mode in modes {
        for client in ["bus", "rdkafka"] {
            if args.only.as_deref().is_some_and(|o| o != client) {
                continue;
            }
            let name = format!("bench-rebalance-{client}-{mode:?}-{run_id}").to_lowercase();
            runtime
                .block_on(admin.ensure_topic(&name, PARTITIONS))
                .unwrap_or_else(|e| fail(&format!("topic {name}: {e}")));
            eprintln!("{client}, {}: rolling restart", mode.describe());
            let handled = Arc::new(Handled::default());
            let stop = AtomicBool::new(false);
            let restarts = std::thread::scope(|s| {
                s.spawn(|| runtime.block_on(produce(&args.bootstrap, &name, args.rate, &stop)));
                let restarts = if client == "bus" {
                    runtime.block_on(bus_scenario(
                        &args.bootstrap,
                        &name,
                        &name,
                        mode,
                        &timing,
                        &handled,
                    ))
                } else {
                    rdkafka_scenario(&args.bootstrap, &name, &name, mode, &timing, &handled)
                };
                stop.store(true, Ordering::Release);
                restarts
            });
            let outcome = measure(&handled.snapshot(), &restarts, gap);
            eprintln!(
                "  stalled {:?} s, own restart {:?} s, partition-seconds idle {:.1}, {} records",
                outcome.stalled, outcome.own_restart, outcome.partition_idle, outcome.records
            );
            rows.push((client, mode, outcome));
        }
    }
    let librdkafka = librdkafka_version();
    println!(
        "A rolling restart of a group's three members over a 6-partition topic that receives {} \
         records/s throughout: each member in turn stops, is down {:.1} s, starts again, and \
         the group gets {} s before the next. Session timeout 10 s, heartbeat 3 s, commits \
         every second, fetch wait 100 ms, for both clients (the bus: a bus per member; rdkafka \
         0.39 BaseConsumer, librdkafka {librdkafka}, a consumer per member). *Stalled*: the \
         time a member processed nothing (gaps over {} ms between its records, less the \
         producer's pauses) while the others restarted, per member (1, 2, 3) and summed; *own \
         restart*: from a member's stop to the first record of its new instance, the mean over \
         the three; \
         *partition-seconds idle*: the same gaps per partition, whoever reads it, summed; \
         *noise floor*: the same two measures over {} s before the first restart (every member \
         up, nothing moving), scaled to the restarts' length, what this shared machine's load \
         alone causes. One run.\n",
        args.rate,
        timing.pause.as_secs_f64(),
        args.settle_secs,
        args.gap_ms,
        QUIET.as_secs()
    );
    println!(
        "| client | protocol | stalled, per member | stalled, all | own restart (mean) | \
         partition-seconds idle | noise floor: stalled, all / partition-seconds |"
    );
    println!("|---|---|---:|---:|---:|---:|---:|");
    for (client, mode, o) in &rows {
        let client = if *client == "bus" { "bus" } else { "rdkafka" };
        println!(
            "| {client} | {} | {:.1} / {:.1} / {:.1} s | {:.1} s | {:.1} s | {:.1} | \
             {:.1} s / {:.1} |",
            mode.describe(),
            o.stalled[0],
            o.stalled[1],
            o.stalled[2],
            o.stalled.iter().sum::<f64>(),
            o.own_restart.iter().sum::<f64>() / MEMBERS as f64,
            o.partition_idle,
            o.noise.0,
            o.noise.1
        );
    }
}
