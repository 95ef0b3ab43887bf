//! Per-task overhead of the supervisor: spawn and join N empty tasks through the supervisor,
//! through bare `tokio::spawn` (join handles awaited) and through `tokio_util`'s `TaskTracker`,
//! interleaved in one run on one runtime, and print ns per task and the ratios.
//!
//! Run with `cargo xtask bench supervisor` (or `cargo bench -p bus-supervisor --bench
//! spawn_overhead -- [--tasks N] [--rounds R] [--workers W]`; `--workers 0` runs on a
//! current-thread runtime). Prints a Markdown table.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::disallowed_methods)]

use std::time::{Duration, Instant};

use bus_supervisor::Supervisor;
use tokio_util::task::TaskTracker;

struct Args {
    only: Option<String>,
    tasks: usize,
    rounds: usize,
    workers: usize,
}

fn parse_args() -> Args {
    let mut args = Args { only: None, tasks: 100_000, rounds: 9, workers: 2 };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = |name: &str| -> usize {
            it.next()
                .and_then(|v| v.parse().ok())
                .unwrap_or_else(|| panic!("{name} needs a positive number"))
        };
        match flag.as_str() {
            "--tasks" => args.tasks = value("--tasks"),
            "--rounds" => args.rounds = value("--rounds"),
            "--workers" => args.workers = value("--workers"),
            // Profile one variant alone: bare, tracker or supervisor.
            "--only" => args.only = it.next(),
            // `cargo bench` passes `--bench`; ignore it and anything unknown.
            _ => {}
        }
    }
    args
}

async fn bare(n: usize) -> Duration {
    let start = Instant::now();
    let mut handles = Vec::with_capacity(n);
    for _ in 0..n {
        handles.push(tokio::spawn(async {}));
    }
    for handle in handles {
        handle.await.unwrap();
    }
    start.elapsed()
}

async fn tracker(n: usize) -> Duration {
    let start = Instant::now();
    let tracker = TaskTracker::new();
    for _ in 0..n {
        tracker.spawn(async {});
    }
    tracker.close();
    tracker.wait().await;
    start.elapsed()
}

async fn supervised(supervisor: &Supervisor, n: usize) -> Duration {
    let scope = supervisor.root().child("bench");
    let start = Instant::now();
    let mut handles = Vec::with_capacity(n);
    for _ in 0..n {
        handles.push(scope.spawn("empty", async {}).unwrap());
    }
    for handle in handles {
        handle.await.unwrap();
    }
    let elapsed = start.elapsed();
    assert_eq!(scope.live(), 0);
    elapsed
}

fn median(mut samples: Vec<Duration>) -> Duration {
    samples.sort();
    samples[samples.len() / 2]
}

fn main() {
    let args = parse_args();
    let runtime = if args.workers == 0 {
        tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap()
    } else {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(args.workers)
            .enable_all()
            .build()
            .unwrap()
    };
    let (mut b, mut t, mut s) = (Vec::new(), Vec::new(), Vec::new());
    runtime.block_on(async {
        let supervisor = Supervisor::new("bench");
        // Warm-up round, not recorded.
        bare(args.tasks).await;
        tracker(args.tasks).await;
        supervised(&supervisor, args.tasks).await;
        if let Some(only) = &args.only {
            for _ in 0..args.rounds {
                match only.as_str() {
                    "bare" => b.push(bare(args.tasks).await),
                    "tracker" => t.push(tracker(args.tasks).await),
                    _ => s.push(supervised(&supervisor, args.tasks).await),
                }
            }
            let all: Vec<_> = b.iter().chain(&t).chain(&s).collect();
            println!("{only}: {:?}", all);
            std::process::exit(0);
        }
        for round in 0..args.rounds {
            // Rotate the order so that no variant always runs first.
            for i in 0..3 {
                match (round + i) % 3 {
                    0 => b.push(bare(args.tasks).await),
                    1 => t.push(tracker(args.tasks).await),
                    _ => s.push(supervised(&supervisor, args.tasks).await),
                }
            }
        }
        supervisor.shutdown(Duration::from_secs(5)).await.unwrap();
    });
    let per_task = |d: Duration| d.as_nanos() as f64 / args.tasks as f64;
    let (b, t, s) = (per_task(median(b)), per_task(median(t)), per_task(median(s)));
    println!(
        "spawn and join {} empty tasks, {} worker threads, median of {} rounds\n",
        args.tasks, args.workers, args.rounds
    );
    println!("| variant | ns per task | ratio to bare tokio::spawn |");
    println!("|---|---:|---:|");
    println!("| bare `tokio::spawn`, handles awaited | {b:.0} | 1.00 |");
    println!("| `tokio_util::task::TaskTracker` | {t:.0} | {:.2} |", t / b);
    println!("| `bus_supervisor::Scope::spawn`, handles awaited | {s:.0} | {:.2} |", s / b);
    println!("\nsupervisor / bare = {:.2} (target <= 1.50)", s / b);
}
