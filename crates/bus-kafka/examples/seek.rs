//! Seeking a running subscription: a projection rebuilds itself from an earlier offset after a
//! bug fix, without restarting or changing group, then skips to the end.
//!
//! ```sh
//! KAFKA_BOOTSTRAP=127.0.0.1:9092 cargo run -p bus-kafka --example seek
//! ```
//!
//! `EXAMPLE_TOPIC` names the topic (default `seek-example`). Exits with status 1 when something
//! did not happen as it should (`cargo xtask test` runs it against the test broker).

use std::process::ExitCode;
use std::time::Duration;

use bus_kafka::{KafkaConfig, Message, Record, StartAt, SubscribeOptions, TopicPartition};
use tokio::sync::mpsc;

#[tokio::main]
async fn main() -> ExitCode {
    match run().await {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("seek: {error}");
            ExitCode::FAILURE
        }
    }
}

/// The next `count` offsets from `rx`.
async fn next(
    rx: &mut mpsc::UnboundedReceiver<i64>,
    count: usize,
) -> Result<Vec<i64>, Box<dyn std::error::Error>> {
    let mut offsets = Vec::new();
    while offsets.len() < count {
        let offset = tokio::time::timeout(Duration::from_secs(60), rx.recv()).await?;
        offsets.push(offset.ok_or("the subscription stopped")?);
    }
    Ok(offsets)
}

async fn run() -> Result<(), Box<dyn std::error::Error>> {
    let bootstrap = std::env::var("KAFKA_BOOTSTRAP").unwrap_or_else(|_| "127.0.0.1:9092".into());
    let topic = std::env::var("EXAMPLE_TOPIC").unwrap_or_else(|_| "seek-example".into());
    let bus = bus_kafka::connect(KafkaConfig::new(&bootstrap)).await?;
    for n in 0..5 {
        let record = Record::new(&topic, format!("balance change {n}")).with_key("account-1");
        bus.publish(record.with_partition(0)).await?;
    }

    let (tx, mut rx) = mpsc::unbounded_channel();
    let projection = bus
        .subscribe(&topic, SubscribeOptions::new("seek-projection"), move |m: Message| {
            let _ = tx.send(m.offset);
            std::future::ready(Ok(()))
        })
        .await?;
    println!("projected {:?}", next(&mut rx, 5).await?);

    // Rebuild from offset 2: the partition's queued messages are dropped, its running handlers
    // finish, and reading starts again there.
    let control = projection.control();
    let partition = TopicPartition::new(topic.as_str(), 0);
    control.seek(&partition, StartAt::Offset(2)).await?;
    let again = next(&mut rx, 3).await?;
    println!("after seeking to offset 2: {again:?}");
    if again != [2, 3, 4] {
        return Err(format!("expected [2, 3, 4], got {again:?}").into());
    }

    // Skip to the end: only what is published from now on.
    control.seek(&partition, StartAt::Latest).await?;
    bus.publish(Record::new(&topic, "balance change 5").with_key("account-1").with_partition(0))
        .await?;
    let latest = next(&mut rx, 1).await?;
    println!("after seeking to the end: {latest:?}");
    if latest != [5] {
        return Err(format!("expected [5], got {latest:?}").into());
    }
    let report = projection.unsubscribe(Duration::from_secs(10)).await?;
    println!("committed {:?}", report.subscription.committed);
    println!("{}", bus.shutdown(Duration::from_secs(10)).await?);
    Ok(())
}
