//! Per-task overhead of the supervisor: spawn and join N empty tasks through the supervisor,
//! through bare `tokio::spawn` (join handles awaited) and through `tokio_util`'s `TaskTracker`,
//! interleaved round by round in one run on one runtime; prints wall and CPU ns per task and the
//! ratios to bare `tokio::spawn`.
//!
//! Two shapes: a *burst* (all N spawned, then all joined: every task's state and handle alive at
//! once, so memory traffic dominates) and *windows* (spawn W, join W, repeat: the steady cost of
//! a spawn and a join).
//!
//! `cargo xtask bench supervisor`, or `cargo bench -p bus-supervisor --bench spawn_overhead --
//! [--tasks N] [--rounds R] [--workers W] [--window W] [--only bare|tracker|supervisor]`
//! (`--workers 0`: a current-thread runtime; `--window 0`: the burst). CPU time is the sum over
//! the process's threads (`/proc/self/task/*/schedstat`).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::disallowed_methods)]

use std::time::{Duration, Instant};

use bus_supervisor::Supervisor;
use tokio_util::task::TaskTracker;

struct Args {
    only: Option<String>,
    tasks: usize,
    rounds: usize,
    workers: usize,
    window: usize,
}

fn parse_args() -> Args {
    let mut args = Args { only: None, tasks: 100_000, rounds: 9, workers: 2, window: 0 };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = |name: &str| -> usize {
            it.next()
                .and_then(|v| v.parse().ok())
                .unwrap_or_else(|| panic!("{name} needs a number"))
        };
        match flag.as_str() {
            "--tasks" => args.tasks = value("--tasks"),
            "--rounds" => args.rounds = value("--rounds"),
            "--workers" => args.workers = value("--workers"),
            "--window" => args.window = value("--window"),
            // Profile one variant alone: bare, tracker or supervisor.
            "--only" => args.only = it.next(),
            // `cargo bench` passes `--bench`; ignore it and anything unknown.
            _ => {}
        }
    }
    args
}

/// Splits `n` tasks into windows (the whole of `n` for a burst).
fn windows(n: usize, window: usize) -> impl Iterator<Item = usize> {
    let size = if window == 0 { n } else { window };
    (0..n.div_ceil(size)).map(move |i| size.min(n - i * size))
}

async fn bare(n: usize, window: usize) -> Duration {
    let start = Instant::now();
    for count in windows(n, window) {
        let mut handles = Vec::with_capacity(count);
        for _ in 0..count {
            handles.push(tokio::spawn(async {}));
        }
        for handle in handles {
            handle.await.unwrap();
        }
    }
    start.elapsed()
}

async fn tracker(n: usize, window: usize) -> Duration {
    let start = Instant::now();
    for count in windows(n, window) {
        let tracker = TaskTracker::new();
        for _ in 0..count {
            tracker.spawn(async {});
        }
        tracker.close();
        tracker.wait().await;
    }
    start.elapsed()
}

async fn supervised(supervisor: &Supervisor, n: usize, window: usize) -> Duration {
    let scope = supervisor.root().child("bench");
    let start = Instant::now();
    for count in windows(n, window) {
        let mut handles = Vec::with_capacity(count);
        for _ in 0..count {
            handles.push(scope.spawn("empty", async {}).unwrap());
        }
        for handle in handles {
            handle.await.unwrap();
        }
    }
    let elapsed = start.elapsed();
    assert_eq!(scope.live(), 0);
    elapsed
}

/// CPU time used so far by every thread of this process.
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
    let (n, w) = (args.tasks, args.window);
    let (mut b, mut t, mut s) = (Vec::new(), Vec::new(), Vec::new());
    runtime.block_on(async {
        let supervisor = Supervisor::new("bench");
        // Warm-up round, not recorded.
        bare(n, w).await;
        tracker(n, w).await;
        supervised(&supervisor, n, w).await;
        if let Some(only) = &args.only {
            for _ in 0..args.rounds {
                match only.as_str() {
                    "bare" => b.push(timed(bare(n, w)).await),
                    "tracker" => t.push(timed(tracker(n, w)).await),
                    _ => s.push(timed(supervised(&supervisor, n, w)).await),
                }
            }
            let all: Vec<_> = b.iter().chain(&t).chain(&s).map(|(wall, _)| wall).collect();
            println!("{only}: {all:?}");
            std::process::exit(0);
        }
        for round in 0..args.rounds {
            // Rotate the order so that no variant always runs first.
            for i in 0..3 {
                match (round + i) % 3 {
                    0 => b.push(timed(bare(n, w)).await),
                    1 => t.push(timed(tracker(n, w)).await),
                    _ => s.push(timed(supervised(&supervisor, n, w)).await),
                }
            }
        }
        supervisor.shutdown(Duration::from_secs(5)).await.unwrap();
    });
    let per_task = |d: Duration| d.as_nanos() as f64 / n as f64;
    let wall = |v: &Vec<(Duration, Duration)>| per_task(median(v.iter().map(|x| x.0).collect()));
    let cpu = |v: &Vec<(Duration, Duration)>| per_task(median(v.iter().map(|x| x.1).collect()));
    let (bw, tw, sw) = (wall(&b), wall(&t), wall(&s));
    let (bc, tc, sc) = (cpu(&b), cpu(&t), cpu(&s));
    let flavor = if args.workers == 0 {
        "a current-thread runtime".to_owned()
    } else {
        format!("{} worker threads", args.workers)
    };
    let shape = if w == 0 {
        format!("burst: {n} empty tasks spawned, then all joined")
    } else {
        format!("windows: {n} empty tasks, spawned and joined {w} at a time")
    };
    println!("{shape}; {flavor}; median of {} rounds\n", args.rounds);
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
