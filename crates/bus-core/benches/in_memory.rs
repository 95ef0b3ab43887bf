//! End-to-end throughput of the in-memory bus: publish and consume records of 100 bytes over
//! 1,000 keys and 6 partitions with a no-op handler, on a 2-worker multi-thread runtime.
//!
//! Three phases per round, each timed and its process CPU time taken (the sum over the process's
//! threads, from `/proc/self/task/*/schedstat`):
//! 1. publish: `publish_nowait` for every record, then await every acknowledgement;
//! 2. consume: subscribe a group to the full topic and stop the clock at the last handled record;
//! 3. together: a second group consuming while a third round of records is published.
//!
//! For scale, the same records go through a plain `tokio::sync::mpsc` channel to one consumer
//! task, the floor any bus pays on top of. Median of the rounds.
//!
//! `cargo bench -p bus-core --bench in_memory [-- --records N --rounds R]`
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bus_core::memory::MemoryConfig;
use bus_core::{EventBus, Message, Record, SubscribeOptions};
use bytes::Bytes;

const KEYS: usize = 1_000;
const PARTITIONS: i32 = 6;

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

struct Measured {
    elapsed: Duration,
    cpu: Duration,
}

async fn measure<F: std::future::Future<Output = ()>>(f: F) -> Measured {
    let (start, cpu) = (Instant::now(), process_cpu());
    f.await;
    Measured { elapsed: start.elapsed(), cpu: process_cpu().saturating_sub(cpu) }
}

fn records(topic: &str, n: usize, keys: &[Bytes], value: &Bytes) -> Vec<Record> {
    (0..n).map(|i| Record::new(topic, value.clone()).with_key(keys[i % KEYS].clone())).collect()
}

async fn publish_all(bus: &EventBus, records: Vec<Record>) {
    let mut pending = Vec::with_capacity(records.len());
    for record in records {
        pending.push(bus.publish_nowait(record).await.unwrap());
    }
    for delivery in pending {
        delivery.await.unwrap();
    }
}

async fn wait_for(counter: &AtomicU64, target: u64) {
    let deadline = Instant::now() + Duration::from_secs(300);
    while counter.load(Ordering::Relaxed) < target {
        assert!(Instant::now() < deadline, "consumer stalled");
        tokio::time::sleep(Duration::from_micros(200)).await;
    }
}

async fn subscribe_counting(
    bus: &EventBus,
    topic: &str,
    group: &str,
) -> (bus_core::Subscription, Arc<AtomicU64>) {
    let handled = Arc::new(AtomicU64::new(0));
    let h = Arc::clone(&handled);
    let options = SubscribeOptions::new(group).with_concurrency(16).with_max_in_flight(4096);
    let subscription = bus
        .subscribe(topic, options, move |_m: Message| {
            h.fetch_add(1, Ordering::Relaxed);
            async { Ok(()) }
        })
        .await
        .unwrap();
    (subscription, handled)
}

struct Round {
    publish: Measured,
    consume: Measured,
    together: Measured,
    channel: Measured,
}

async fn round(n: usize, round: usize, keys: &[Bytes], value: &Bytes) -> Round {
    let config = MemoryConfig::default().with_topic_capacity_bytes(4 * n * 200);
    let bus = EventBus::in_memory_with(config).unwrap();
    let topic = format!("bench-{round}");
    bus.memory_backend().unwrap().create_topic(&topic, PARTITIONS).unwrap();

    let batch = records(&topic, n, keys, value);
    let publish = measure(publish_all(&bus, batch)).await;

    let (first, handled) = subscribe_counting(&bus, &topic, "consume").await;
    let consume = measure(wait_for(&handled, n as u64)).await;

    let (second, together_handled) = subscribe_counting(&bus, &topic, "together").await;
    wait_for(&together_handled, n as u64).await; // catch up on what is there
    let batch = records(&topic, n, keys, value);
    let together = measure(async {
        publish_all(&bus, batch).await;
        wait_for(&together_handled, 2 * n as u64).await;
    })
    .await;
    drop((first, second));
    bus.shutdown(Duration::from_secs(30)).await.unwrap();

    let (tx, mut rx) = tokio::sync::mpsc::channel::<Record>(4096);
    let batch = records(&topic, n, keys, value);
    // The channel's consumer is a task of its own, registered like every task here.
    let supervisor = bus_supervisor::Supervisor::new("bench");
    let scope = supervisor.root().clone();
    let channel = measure(async move {
        let consumer = scope.spawn("channel-consumer", async move {
            let mut count = 0usize;
            while let Some(record) = rx.recv().await {
                std::hint::black_box(&record);
                count += 1;
            }
            count
        });
        for record in batch {
            tx.send(record).await.unwrap();
        }
        drop(tx);
        assert_eq!(consumer.unwrap().await.unwrap(), n);
    })
    .await;
    supervisor.shutdown(Duration::from_secs(5)).await.unwrap();
    Round { publish, consume, together, channel }
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn main() {
    let mut n = 200_000usize;
    let mut rounds = 5usize;
    let mut args = std::env::args().skip(1);
    while let Some(flag) = args.next() {
        match flag.as_str() {
            "--records" => n = args.next().and_then(|v| v.parse().ok()).expect("--records N"),
            "--rounds" => rounds = args.next().and_then(|v| v.parse().ok()).expect("--rounds R"),
            _ => {}
        }
    }
    let runtime =
        tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let keys: Vec<Bytes> = (0..KEYS).map(|k| Bytes::from(format!("aggregate-{k}"))).collect();
    let value = Bytes::from(vec![b'x'; 100]);
    let results: Vec<Round> =
        (0..rounds).map(|r| runtime.block_on(round(n, r, &keys, &value))).collect();

    println!(
        "in-memory bus, {n} records of 100 bytes, {KEYS} keys, {PARTITIONS} partitions, no-op \
         handler (concurrency 16), 2 worker threads, median of {rounds} rounds\n"
    );
    println!("| phase | msgs/s | CPU per message | vs. mpsc channel (msgs/s) |");
    println!("|---|---:|---:|---:|");
    let channel_rate =
        n as f64 / median(results.iter().map(|r| r.channel.elapsed).collect()).as_secs_f64();
    let row = |name: &str, pick: &dyn Fn(&Round) -> &Measured, records: usize| {
        let elapsed = median(results.iter().map(|r| pick(r).elapsed).collect());
        let cpu = median(results.iter().map(|r| pick(r).cpu).collect());
        let rate = records as f64 / elapsed.as_secs_f64();
        println!(
            "| {name} | {rate:.0} | {:.2} us | {:.2} |",
            cpu.as_secs_f64() * 1e6 / records as f64,
            rate / channel_rate
        );
    };
    row("publish (acknowledged)", &|r| &r.publish, n);
    row("consume (to last handled)", &|r| &r.consume, n);
    row("publish and consume together", &|r| &r.together, n);
    row("tokio mpsc channel, for scale", &|r| &r.channel, n);
}
