//! Throughput of the keyed dispatch on a multi-thread runtime with 2 worker threads.
//!
//! 1. Keyed, 1,000 keys, a processor that sleeps 1 ms: throughput against the ideal
//!    (concurrency x 1,000 msgs/s). tokio's timer has 1 ms granularity, so the sleep itself
//!    takes longer than 1 ms; the mean handler time is measured in the same run and the ratio is
//!    also given against the ideal it implies (concurrency / mean handler time).
//! 2. A no-op processor: msgs/s and ns/msg with 1,000 keys and with ordering off, batches of 500.
//!
//! Messages are built before the clock starts; a producer task submits them in batches of 500
//! (like a fetch loop) and the clock stops when the last one has been processed.
//!
//! Run with `cargo bench -p bus-core --bench keyed_dispatch [-- --noop-messages N]`. Prints
//! Markdown tables.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bus_core::SubscribeOptions;
use bus_core::dispatch::{DispatchConfig, KeyedDispatch, ProcessFn, Processed};
use bus_core::{Headers, Message};
use bus_supervisor::Supervisor;
use bytes::Bytes;

const KEYS: usize = 1_000;
const BATCH: usize = 500;
const WORKER_THREADS: usize = 2;
const ROUNDS: usize = 5;

fn messages(n: usize, keys: &[Bytes]) -> Vec<Vec<Message>> {
    let timestamp = chrono::Utc::now();
    let mut batches = Vec::with_capacity(n.div_ceil(BATCH));
    let mut batch = Vec::with_capacity(BATCH);
    for i in 0..n {
        batch.push(Message {
            topic: "bench".into(),
            partition: 0,
            offset: i as i64,
            key: Some(keys[i % keys.len()].clone()),
            value: Some(Bytes::from_static(b"{}")),
            headers: Headers::new(),
            timestamp,
        });
        if batch.len() == BATCH {
            batches.push(std::mem::replace(&mut batch, Vec::with_capacity(BATCH)));
        }
    }
    if !batch.is_empty() {
        batches.push(batch);
    }
    batches
}

struct Run {
    elapsed: Duration,
    messages: usize,
    /// Mean time a handler spent in its sleep, when it sleeps.
    mean_handler: Option<Duration>,
}

/// Submits `n` messages and waits until all are processed.
fn run(
    runtime: &tokio::runtime::Runtime,
    config: DispatchConfig,
    n: usize,
    sleep: Option<Duration>,
) -> Run {
    let keys: Vec<Bytes> = (0..KEYS).map(|k| Bytes::from(format!("aggregate-{k:04}"))).collect();
    let batches = messages(n, &keys);
    runtime.block_on(async move {
        let supervisor = Supervisor::new("bench");
        let slept_ns = Arc::new(AtomicU64::new(0));
        let process: ProcessFn = match sleep {
            Some(sleep) => {
                let slept_ns = Arc::clone(&slept_ns);
                Arc::new(move |_message: Message| {
                    let slept_ns = Arc::clone(&slept_ns);
                    Box::pin(async move {
                        let start = tokio::time::Instant::now();
                        tokio::time::sleep(sleep).await;
                        slept_ns.fetch_add(start.elapsed().as_nanos() as u64, Ordering::Relaxed);
                        Processed::Done
                    })
                })
            }
            // Nothing shared is touched per message: completion is read from the dispatch.
            None => Arc::new(|_message: Message| Box::pin(async { Processed::Done })),
        };
        let dispatch = KeyedDispatch::start(supervisor.root(), config, process).unwrap();
        let start = Instant::now();
        let producer = {
            let dispatch = dispatch.clone();
            supervisor
                .root()
                .spawn("producer", async move {
                    for batch in batches {
                        dispatch.submit(batch).await.unwrap();
                    }
                })
                .unwrap()
        };
        // Polled every millisecond: at most ~1 ms late, under 0.5% of the shortest run.
        while dispatch.processed() < n as u64 {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        let elapsed = start.elapsed();
        producer.await.unwrap();
        assert_eq!(dispatch.processed(), n as u64);
        assert_eq!(dispatch.committable_all().first().map(|(_, o)| *o), Some(n as i64));
        dispatch.close();
        supervisor.shutdown(Duration::from_secs(5)).await.unwrap();
        let mean_handler =
            sleep.map(|_| Duration::from_nanos(slept_ns.load(Ordering::Relaxed) / n as u64));
        Run { elapsed, messages: n, mean_handler }
    })
}

/// `tasks` supervised tasks each sleeping `sleep` `per_task` times in a row: the timer's own
/// throughput, for comparison.
fn baseline(
    runtime: &tokio::runtime::Runtime,
    tasks: usize,
    per_task: usize,
    sleep: Duration,
) -> Run {
    runtime.block_on(async move {
        let supervisor = Supervisor::new("baseline");
        let slept_ns = Arc::new(AtomicU64::new(0));
        let start = Instant::now();
        let handles: Vec<_> = (0..tasks)
            .map(|_| {
                let slept_ns = Arc::clone(&slept_ns);
                supervisor
                    .root()
                    .spawn("sleeper", async move {
                        for _ in 0..per_task {
                            let start = tokio::time::Instant::now();
                            tokio::time::sleep(sleep).await;
                            slept_ns
                                .fetch_add(start.elapsed().as_nanos() as u64, Ordering::Relaxed);
                        }
                    })
                    .unwrap()
            })
            .collect();
        for handle in handles {
            handle.await.unwrap();
        }
        let elapsed = start.elapsed();
        let n = tasks * per_task;
        let mean = Duration::from_nanos(slept_ns.load(Ordering::Relaxed) / n as u64);
        supervisor.shutdown(Duration::from_secs(5)).await.unwrap();
        Run { elapsed, messages: n, mean_handler: Some(mean) }
    })
}

fn rate(run: &Run) -> f64 {
    run.messages as f64 / run.elapsed.as_secs_f64()
}

fn main() {
    let mut noop_messages = 1_000_000;
    let mut only_noop = false;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--noop-messages" => {
                noop_messages = args.next().and_then(|v| v.parse().ok()).expect("a number");
            }
            // For profiling the dispatch itself.
            "--only-noop" => only_noop = true,
            // `cargo bench` passes `--bench`; ignore it and anything unknown.
            _ => {}
        }
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(WORKER_THREADS)
        .enable_all()
        .build()
        .unwrap();
    let defaults = DispatchConfig::from_options(&SubscribeOptions::default());

    if !only_noop {
        println!(
            "Keyed dispatch, {KEYS} keys, handler = `tokio::time::sleep(1 ms)`, \
             {WORKER_THREADS} runtime threads, max_in_flight {}\n",
            defaults.max_in_flight
        );
        println!(
            "| concurrency | messages | elapsed | msgs/s | ideal (1 ms) | % of ideal | mean handler \
             time | ideal (measured handler) | % of measured ideal |"
        );
        println!("|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
        for concurrency in [8, 16, 64] {
            let config = DispatchConfig { concurrency, ..defaults };
            let n = concurrency * 750;
            let run = run(&runtime, config, n, Some(Duration::from_millis(1)));
            let mean = run.mean_handler.unwrap_or_default();
            let ideal = concurrency as f64 * 1_000.0;
            let measured_ideal = concurrency as f64 / mean.as_secs_f64();
            println!(
                "| {concurrency} | {n} | {:.2} s | {:.0} | {ideal:.0} | {:.1}% | {:.3} ms | {:.0} | \
                 {:.1}% |",
                run.elapsed.as_secs_f64(),
                rate(&run),
                100.0 * rate(&run) / ideal,
                mean.as_secs_f64() * 1e3,
                measured_ideal,
                100.0 * rate(&run) / measured_ideal,
            );
        }
        // The timer's floor: the same sleeps on bare supervised tasks, no dispatch.
        let run = baseline(&runtime, 64, 750, Duration::from_millis(1));
        let mean = run.mean_handler.unwrap_or_default();
        let measured_ideal = 64.0 / mean.as_secs_f64();
        println!(
            "| 64 bare tasks (no dispatch) | {} | {:.2} s | {:.0} | 64000 | {:.1}% | {:.3} ms | \
             {measured_ideal:.0} | {:.1}% |",
            run.messages,
            run.elapsed.as_secs_f64(),
            rate(&run),
            100.0 * rate(&run) / 64_000.0,
            mean.as_secs_f64() * 1e3,
            100.0 * rate(&run) / measured_ideal,
        );
    }

    println!(
        "\nNo-op processor, batches of {BATCH}, {WORKER_THREADS} runtime threads, \
         concurrency {}, max_in_flight {}\n",
        defaults.concurrency, defaults.max_in_flight
    );
    println!(
        "| variant | messages | rounds | msgs/s (median) | ns/msg (median) | msgs/s (min) | \
         msgs/s (max) |"
    );
    println!("|---|---:|---:|---:|---:|---:|---:|");
    for (name, ordering_by_key) in [("1,000 keys, ordered", true), ("ordering off", false)] {
        let config = DispatchConfig { ordering_by_key, ..defaults };
        // Warm up (allocator, slabs), then measure several rounds: on 2 cores the result
        // depends on how the runtime happens to schedule the workers and the producer.
        run(&runtime, config, noop_messages / 10, None);
        let mut rates: Vec<f64> =
            (0..ROUNDS).map(|_| rate(&run(&runtime, config, noop_messages, None))).collect();
        rates.sort_by(f64::total_cmp);
        let median = rates[rates.len() / 2];
        println!(
            "| {name} | {noop_messages} | {ROUNDS} | {median:.0} | {:.0} | {:.0} | {:.0} |",
            1e9 / median,
            rates[0],
            rates[rates.len() - 1],
        );
    }
}
