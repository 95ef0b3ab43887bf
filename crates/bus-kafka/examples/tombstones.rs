//! Tombstones: a customer directory kept on a (compacted) topic, one record per customer key;
//! deleting a customer publishes a tombstone (a null value, distinct from an empty one), and a
//! reader rebuilding the directory from the start removes the key when it meets one.
//!
//! ```sh
//! KAFKA_BOOTSTRAP=127.0.0.1:9092 cargo run -p bus-kafka --example tombstones
//! ```
//!
//! On a topic created with `cleanup.policy=compact`, compaction keeps the last record of each
//! key and later drops the tombstones themselves; the reader works the same either way.
//! `EXAMPLE_TOPIC` names the topic (default `tombstones-example`). Exits with status 1 when
//! something did not happen as it should (`cargo xtask test` runs it against the test broker).

use std::collections::BTreeMap;
use std::process::ExitCode;
use std::time::Duration;

use bus_kafka::{KafkaConfig, Message, Record, SubscribeOptions, subscription::StartPosition};
use tokio::sync::mpsc;

#[tokio::main]
async fn main() -> ExitCode {
    match run().await {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("tombstones: {error}");
            ExitCode::FAILURE
        }
    }
}

async fn run() -> Result<(), Box<dyn std::error::Error>> {
    let bootstrap = std::env::var("KAFKA_BOOTSTRAP").unwrap_or_else(|_| "127.0.0.1:9092".into());
    let topic = std::env::var("EXAMPLE_TOPIC").unwrap_or_else(|_| "tombstones-example".into());
    let bus = bus_kafka::connect(KafkaConfig::new(&bootstrap)).await?;
    let records = [
        Record::new(&topic, "Ada, London").with_key("customer-1"),
        Record::new(&topic, "Grace, Arlington").with_key("customer-2"),
        Record::new(&topic, "").with_key("customer-3"), // known, with no details yet
        Record::tombstone(&topic, "customer-1"),        // deleted
        Record::new(&topic, "Grace, New York").with_key("customer-2"),
    ];
    let count = records.len();
    for record in records {
        bus.publish(record.with_partition(0)).await?;
    }

    // Rebuild the directory from the start, in order (one partition).
    let (tx, mut rx) = mpsc::unbounded_channel();
    let options = SubscribeOptions::new("tombstones-directory")
        .with_start(StartPosition::Earliest)
        .with_concurrency(1);
    let reader = bus
        .subscribe(&topic, options, move |m: Message| {
            let _ = tx.send(m);
            std::future::ready(Ok(()))
        })
        .await?;
    let mut directory = BTreeMap::new();
    for _ in 0..count {
        let m = tokio::time::timeout(Duration::from_secs(60), rx.recv()).await?.ok_or("stopped")?;
        let key = String::from_utf8_lossy(m.key.as_deref().unwrap_or_default()).into_owned();
        match &m.value {
            None => {
                println!("offset {}: {key} deleted (tombstone)", m.offset);
                directory.remove(&key);
            }
            Some(value) => {
                let value = String::from_utf8_lossy(value).into_owned();
                println!("offset {}: {key} = {value:?}", m.offset);
                directory.insert(key, value);
            }
        }
    }
    println!("directory: {directory:?}");
    let expected: BTreeMap<String, String> =
        [("customer-2", "Grace, New York"), ("customer-3", "")]
            .into_iter()
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect();
    if directory != expected {
        return Err(format!("expected {expected:?}").into());
    }
    reader.unsubscribe(Duration::from_secs(10)).await?;
    println!("{}", bus.shutdown(Duration::from_secs(10)).await?);
    Ok(())
}
