//! The bus's metrics as Prometheus text: installs metrics-exporter-prometheus as the `metrics`
//! recorder, serving `GET /metrics` on a local port, then publishes and consumes a few records
//! so that there is something to see, and keeps serving for a while.
//!
//! ```sh
//! KAFKA_BOOTSTRAP=127.0.0.1:9092 cargo run -p bus-kafka --example metrics
//! curl -s http://127.0.0.1:9464/metrics | grep '^bus_'
//! ```
//!
//! `METRICS_ADDR` is where it listens (default `127.0.0.1:9464`), `METRICS_TOPIC` the topic
//! (default `metrics-demo`), `METRICS_SECONDS` how long it serves after the traffic (default
//! 30). Every metric is described in docs/OPERATIONS.md. Any other `metrics` exporter plugs in
//! the same way: the bus only uses the facade.

use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::Duration;

use bus_kafka::{KafkaConfig, Message, Record, SubscribeOptions};
use metrics_exporter_prometheus::PrometheusBuilder;
use tokio::sync::mpsc;

/// Records published (and consumed).
const RECORDS: usize = 100;

#[tokio::main]
async fn main() -> ExitCode {
    match run().await {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("metrics: {error}");
            ExitCode::FAILURE
        }
    }
}

async fn run() -> Result<(), Box<dyn std::error::Error>> {
    let bootstrap = std::env::var("KAFKA_BOOTSTRAP").unwrap_or_else(|_| "127.0.0.1:9092".into());
    let addr: SocketAddr =
        std::env::var("METRICS_ADDR").unwrap_or_else(|_| "127.0.0.1:9464".into()).parse()?;
    let topic = std::env::var("METRICS_TOPIC").unwrap_or_else(|_| "metrics-demo".into());
    let seconds: u64 =
        std::env::var("METRICS_SECONDS").ok().and_then(|s| s.parse().ok()).unwrap_or(30);

    // The recorder first: the bus registers its handles when its parts start.
    PrometheusBuilder::new().with_http_listener(addr).install()?;
    println!("serving Prometheus text on http://{addr}/metrics");

    let bus = bus_kafka::connect(KafkaConfig::new(&bootstrap)).await?;
    let (seen_tx, mut seen) = mpsc::unbounded_channel::<i64>();
    let subscription = bus
        .subscribe(&topic, SubscribeOptions::new("metrics-demo"), move |message: Message| {
            let seen = seen_tx.clone();
            async move {
                let _ = seen.send(message.offset);
                Ok(())
            }
        })
        .await?;
    for i in 0..RECORDS {
        bus.publish(
            Record::new(topic.as_str(), format!("event {i}")).with_key(format!("k{}", i % 7)),
        )
        .await?;
    }
    let mut consumed = 0;
    while consumed < RECORDS {
        match tokio::time::timeout(Duration::from_secs(60), seen.recv()).await {
            Ok(Some(_)) => consumed += 1,
            _ => return Err(format!("consumed {consumed} of {RECORDS} records").into()),
        }
    }
    println!("published and consumed {RECORDS} records; health: {:?}", bus.health());
    println!("serving for {seconds} s");
    tokio::time::sleep(Duration::from_secs(seconds)).await;
    subscription.unsubscribe(Duration::from_secs(10)).await?;
    bus.shutdown(Duration::from_secs(10)).await?;
    Ok(())
}
