//! Where a subscription starts: a billing group handles the orders and commits; then the same
//! group replays from a point in time (a timestamp), and a reporting job reads from explicit
//! offsets, whatever the group committed.
//!
//! ```sh
//! KAFKA_BOOTSTRAP=127.0.0.1:9092 cargo run -p bus-kafka --example replay
//! ```
//!
//! `EXAMPLE_TOPIC` names the topic (default `replay-example`). Exits with status 1 when
//! something did not happen as it should (`cargo xtask test` runs it against the test broker).

use std::process::ExitCode;
use std::time::Duration;

use bus_kafka::{
    EventBus, KafkaConfig, Message, Record, SubscribeOptions, subscription::PartitionOffset,
    subscription::StartPosition,
};
use chrono::{TimeDelta, Utc};
use tokio::sync::mpsc;

#[tokio::main]
async fn main() -> ExitCode {
    match run().await {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("replay: {error}");
            ExitCode::FAILURE
        }
    }
}

/// Reads `count` offsets of `topic` with `options`, then stops the subscription.
async fn read(
    bus: &EventBus,
    topic: &str,
    options: SubscribeOptions,
    count: usize,
) -> Result<Vec<i64>, Box<dyn std::error::Error>> {
    let (tx, mut rx) = mpsc::unbounded_channel();
    let subscription = bus
        .subscribe(topic, options, move |m: Message| {
            let _ = tx.send(m.offset);
            std::future::ready(Ok(()))
        })
        .await?;
    let mut offsets = Vec::new();
    while offsets.len() < count {
        let offset = tokio::time::timeout(Duration::from_secs(60), rx.recv()).await?;
        offsets.push(offset.ok_or("the subscription stopped")?);
    }
    let report = subscription.unsubscribe(Duration::from_secs(10)).await?;
    println!("  read {offsets:?}; committed {:?}", report.subscription.committed);
    Ok(offsets)
}

async fn run() -> Result<(), Box<dyn std::error::Error>> {
    let bootstrap = std::env::var("KAFKA_BOOTSTRAP").unwrap_or_else(|_| "127.0.0.1:9092".into());
    let topic = std::env::var("EXAMPLE_TOPIC").unwrap_or_else(|_| "replay-example".into());
    let bus = bus_kafka::connect(KafkaConfig::new(&bootstrap)).await?;

    // Six orders, an hour apart (the record's own timestamp), all to partition 0.
    let first = Utc::now() - TimeDelta::hours(6);
    for hour in 0..6 {
        let record = Record::new(&topic, format!("order placed at hour {hour}"))
            .with_key("customer-1")
            .with_partition(0)
            .with_timestamp(first + TimeDelta::hours(hour));
        bus.publish(record).await?;
    }

    println!("billing handles everything and commits:");
    read(&bus, &topic, SubscribeOptions::new("replay-billing"), 6).await?;

    println!("billing replays the last two hours (a timestamp), whatever it committed:");
    let since = StartPosition::Timestamp(first + TimeDelta::hours(4));
    let replayed =
        read(&bus, &topic, SubscribeOptions::new("replay-billing").with_start(since), 2).await?;
    if replayed != [4, 5] {
        return Err(format!("replayed {replayed:?}, expected [4, 5]").into());
    }

    println!("a report reads partition 0 from offset 3 (explicit offsets):");
    let from = StartPosition::Offsets(vec![PartitionOffset::new(&topic, 0, 3)]);
    let report =
        read(&bus, &topic, SubscribeOptions::new("replay-report").with_start(from), 3).await?;
    if report != [3, 4, 5] {
        return Err(format!("read {report:?}, expected [3, 4, 5]").into());
    }
    println!("{}", bus.shutdown(Duration::from_secs(10)).await?);
    Ok(())
}
