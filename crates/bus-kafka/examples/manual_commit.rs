//! Manual commits: an exporter writes orders to a downstream store in batches of three and
//! commits only what the store has accepted (the bus commits nothing on its own); a restarted
//! exporter resumes after the last stored batch. A commit never passes a message whose handler
//! has not finished.
//!
//! ```sh
//! KAFKA_BOOTSTRAP=127.0.0.1:9092 cargo run -p bus-kafka --example manual_commit
//! ```
//!
//! `EXAMPLE_TOPIC` names the topic (default `manual-commit-example`). Exits with status 1 when
//! something did not happen as it should (`cargo xtask test` runs it against the test broker).

use std::process::ExitCode;
use std::time::Duration;

use bus_kafka::{
    EventBus, KafkaConfig, Message, Record, SubscribeOptions, Subscription,
    subscription::CommitMode,
};
use tokio::sync::mpsc;

const BATCH: usize = 3;

#[tokio::main]
async fn main() -> ExitCode {
    match run().await {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("manual_commit: {error}");
            ExitCode::FAILURE
        }
    }
}

/// An exporter in manual commit mode; its handler hands each message to `tx`.
async fn exporter(
    bus: &EventBus,
    topic: &str,
    tx: mpsc::UnboundedSender<Message>,
) -> Result<Subscription, Box<dyn std::error::Error>> {
    let options = SubscribeOptions::new("manual-exporter").with_commit_mode(CommitMode::Manual);
    Ok(bus
        .subscribe(topic, options, move |m: Message| {
            let _ = tx.send(m);
            std::future::ready(Ok(()))
        })
        .await?)
}

async fn next(
    rx: &mut mpsc::UnboundedReceiver<Message>,
) -> Result<Message, Box<dyn std::error::Error>> {
    Ok(tokio::time::timeout(Duration::from_secs(60), rx.recv()).await?.ok_or("stopped")?)
}

async fn run() -> Result<(), Box<dyn std::error::Error>> {
    let bootstrap = std::env::var("KAFKA_BOOTSTRAP").unwrap_or_else(|_| "127.0.0.1:9092".into());
    let topic = std::env::var("EXAMPLE_TOPIC").unwrap_or_else(|_| "manual-commit-example".into());
    let bus = bus_kafka::connect(KafkaConfig::new(&bootstrap)).await?;
    for n in 0..7 {
        let record = Record::new(&topic, format!("order {n}")).with_key("shop-1");
        bus.publish(record.with_partition(0)).await?;
    }

    let (tx, mut rx) = mpsc::unbounded_channel();
    let first = exporter(&bus, &topic, tx).await?;
    let control = first.control();
    let mut batch = Vec::new();
    let mut stored = 0;
    while stored < 6 {
        batch.push(next(&mut rx).await?);
        if batch.len() == BATCH {
            // The downstream store accepted the batch: commit up to its last message.
            let last = batch.last().ok_or("empty batch")?;
            let report = control.commit_message(last).await?;
            println!("stored offsets {}..={}; {report:?}", batch[0].offset, last.offset);
            stored += batch.len();
            batch.clear();
        }
    }
    // Offset 6 was handled but never stored: not committed, so it comes again.
    let report = first.unsubscribe(Duration::from_secs(10)).await?;
    println!("first exporter stopped; committed {:?}", report.subscription.committed);

    let (tx, mut rx) = mpsc::unbounded_channel();
    let second = exporter(&bus, &topic, tx).await?;
    let resumed = next(&mut rx).await?;
    println!("the restarted exporter resumes at offset {}", resumed.offset);
    if resumed.offset != 6 {
        return Err(format!("resumed at {}, expected 6", resumed.offset).into());
    }
    second.control().commit_message(&resumed).await?;
    second.unsubscribe(Duration::from_secs(10)).await?;
    println!("{}", bus.shutdown(Duration::from_secs(10)).await?);
    Ok(())
}
