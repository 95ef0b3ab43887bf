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

/// CPU time used so far by every thread of this process (`/proc/self/task/*/schedstat`).
fn process_cpu() -> Duration {
    let mut total = 0u64;
    if let Ok(tasks) = std::fs::read_dir("/proc/self/task") {
        for task in tasks.flatten() {
            let stat = std::fs::read_to_string(task.path().join("schedstat")).unwrap_or_default();
            total +=
                stat.split_whitespace().next().and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
        }
    }
    Duration::from_nanos(total)
}

/// Runs one variant, returning (wall time, process CPU time).
async fn timed<F: std::future::Future<Output = Duration>>(f: F) -> (Duration, Duration) {
    let cpu = process_cpu();
    let wall = f.await;
    (wall, process_cpu().saturating_sub(cpu))
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
                    "bare" => b.push(timed(bare(args.tasks)).await),
                    "tracker" => t.push(timed(tracker(args.tasks)).await),
                    _ => s.push(timed(supervised(&supervisor, args.tasks)).await),
                }
            }
            let all: Vec<_> = b.iter().chain(&t).chain(&s).map(|(wall, _)| wall).collect();
            println!("{only}: {:?}", all);
            std::process::exit(0);
        }
        for round in 0..args.rounds {
            // Rotate the order so that no variant always runs first.
            for i in 0..3 {
                match (round + i) % 3 {
                    0 => b.push(timed(bare(args.tasks)).await),
                    1 => t.push(timed(tracker(args.tasks)).await),
                    _ => s.push(timed(supervised(&supervisor, args.tasks)).await),
                }
            }
        }
        supervisor.shutdown(Duration::from_secs(5)).await.unwrap();
    });
    let per_task = |d: Duration| d.as_nanos() as f64 / args.tasks as f64;
    let wall = |v: &Vec<(Duration, Duration)>| per_task(median(v.iter().map(|x| x.0).collect()));
    let cpu = |v: &Vec<(Duration, Duration)>| per_task(median(v.iter().map(|x| x.1).collect()));
    let (bw, tw, sw) = (wall(&b), wall(&t), wall(&s));
    let (bc, tc, sc) = (cpu(&b), cpu(&t), cpu(&s));
    let flavor = if args.workers == 0 {
        "a current-thread runtime".to_owned()
    } else {
        format!("{} worker threads", args.workers)
    };
    println!(
        "spawn and join {} empty tasks, {flavor}, median of {} rounds\n",
        args.tasks, args.rounds
    );
    println!("| variant | wall ns per task | ratio | CPU ns per task | ratio |");
    println!("|---|---:|---:|---:|---:|");
    println!("| bare `tokio::spawn`, handles awaited | {bw:.0} | 1.00 | {bc:.0} | 1.00 |");
    println!(
        "| `tokio_util::task::TaskTracker` | {tw:.0} | {:.2} | {tc:.0} | {:.2} |",
        tw / bw,
        tc / bc
    );
    println!(
        "| `bus_supervisor::Scope::spawn`, handles awaited | {sw:.0} | {:.2} | {sc:.0} | {:.2} |",
        sw / bw,
        sc / bc
    );
    println!("\nsupervisor / bare: {:.2} wall, {:.2} CPU (target <= 1.50)", sw / bw, sc / bc);
}
