//! An orders service on Kafka, using only `bus_kafka`: it publishes order envelopes, bills them
//! in a consumer group with retries and a dead-letter topic, watches the dead letters, prints
//! the bus's health and metrics, and shuts down with a report.
//!
//! ```sh
//! cargo xtask broker start                      # or any Kafka: KAFKA_BOOTSTRAP=host:port
//! KAFKA_BOOTSTRAP=127.0.0.1:9092 cargo run -p bus-kafka --example orders
//! ```
//!
//! `ORDERS_TOPIC` names the topic (default `orders`; its dead letters go to `<topic>.dlq`). The
//! program exits with status 1 when something did not happen as it should (`cargo xtask test`
//! runs it against the test broker).

use std::collections::HashSet;
use std::process::ExitCode;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bus_kafka::{
    Envelope, EventBus, HandlerError, KafkaConfig, Message, SubscribeOptions, headers::dead_letter,
    subscription::RetryPolicy,
};
use tokio::sync::mpsc;

/// Orders per customer, and customers.
const ORDERS: i64 = 3;
const CUSTOMERS: [&str; 3] = ["customer-1", "customer-2", "customer-3"];

#[tokio::main]
async fn main() -> ExitCode {
    match run().await {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("orders: {error}");
            ExitCode::FAILURE
        }
    }
}

async fn run() -> Result<(), Box<dyn std::error::Error>> {
    let bootstrap = std::env::var("KAFKA_BOOTSTRAP").unwrap_or_else(|_| "127.0.0.1:9092".into());
    let topic = std::env::var("ORDERS_TOPIC").unwrap_or_else(|_| "orders".into());
    let dead_letters = format!("{topic}.dlq");
    let bus = bus_kafka::connect(KafkaConfig::new(&bootstrap)).await?;
    println!("connected to {bootstrap}; health: {:?}", bus.health());

    // Billing: one handler per order, in order per customer (the aggregate). A flaky payment
    // provider fails every order's first attempt (retried after a backoff); an order with a
    // negative total can never be billed and goes to the dead-letter topic at once.
    let (billed_tx, mut billed) = mpsc::unbounded_channel::<String>();
    let tried: Arc<Mutex<HashSet<String>>> = Arc::default();
    let retry = RetryPolicy {
        max_attempts: 3,
        initial_backoff: Duration::from_millis(50),
        max_backoff: Duration::from_millis(200),
        multiplier: 2.0,
    };
    let billing = bus
        .subscribe_envelopes(
            &topic,
            SubscribeOptions::new("billing")
                .with_retry(retry)
                .with_dead_letter_topic(dead_letters.clone()),
            move |order: Envelope| {
                let billed = billed_tx.clone();
                let first_attempt =
                    tried.lock().map(|mut t| t.insert(order.event_id.clone())).unwrap_or(false);
                async move {
                    let total = order_total(&order)?;
                    if total < 0 {
                        return Err(HandlerError::permanent(format!("negative total {total}")));
                    }
                    if first_attempt {
                        return Err(HandlerError::new("payment provider busy"));
                    }
                    let line = format!("{} v{}", order.aggregate_id, order.event_version);
                    billed.send(line).map_err(|_| HandlerError::new("shutting down"))?;
                    Ok(())
                }
            },
        )
        .await?;

    // On-call's view of the dead letters: the raw records with the `X-DLQ-*` headers.
    let (dead_tx, mut dead) = mpsc::unbounded_channel::<String>();
    let _watch = bus
        .subscribe(&dead_letters, SubscribeOptions::new("dead-letter-watch"), move |m: Message| {
            let dead = dead_tx.clone();
            async move {
                let header = |name| m.headers.get_str(name).unwrap_or("?").to_owned();
                let line = format!(
                    "{}-{}@{}: {}",
                    header(dead_letter::SOURCE_TOPIC),
                    header(dead_letter::SOURCE_PARTITION),
                    header(dead_letter::SOURCE_OFFSET),
                    header(dead_letter::ERROR),
                );
                dead.send(line).map_err(|_| HandlerError::new("shutting down"))?;
                Ok(())
            }
        })
        .await?;

    publish_orders(&bus, &topic).await?;
    let expected = CUSTOMERS.len() * usize::try_from(ORDERS)?;
    for _ in 0..expected {
        let line = wait(&mut billed, "an order to be billed").await?;
        println!("billed {line}");
    }
    let line = wait(&mut dead, "the bad order's dead letter").await?;
    println!("dead-lettered {line}");

    let report = bus.health_report();
    println!("health: {:?}", report.health);
    for subscription in &report.subscriptions {
        println!(
            "  `{}` (group `{}`): {:?}, {} partition(s), backlog {}",
            subscription.topic,
            subscription.group,
            subscription.state,
            subscription.partitions.len(),
            subscription.backlog
        );
    }
    println!("metrics: {:?}", bus.metrics());
    let unsubscribed = billing.unsubscribe(Duration::from_secs(10)).await?;
    let committed: Vec<String> = unsubscribed
        .subscription
        .committed
        .iter()
        .map(|(partition, offset)| format!("{partition}@{offset}"))
        .collect();
    println!("billing stopped; committed {}", committed.join(", "));
    let report = bus.shutdown(Duration::from_secs(10)).await?;
    print!("{report}");
    if bus.live_tasks() != 0 {
        return Err("tasks are still alive after the shutdown".into());
    }
    Ok(())
}

/// Publishes the orders of every customer, then one that can never be billed.
async fn publish_orders(bus: &EventBus, topic: &str) -> Result<(), Box<dyn std::error::Error>> {
    for version in 1..=ORDERS {
        for customer in CUSTOMERS {
            let order = Envelope::new(
                customer,
                "OrderPlaced",
                version,
                serde_json::json!({ "total": 10 * version }),
            )?;
            let stored = bus.publish_envelope(topic, &order).await?;
            println!("published {customer} v{version} at {}@{}", stored.partition, stored.offset);
        }
    }
    let bad = Envelope::new("customer-9", "OrderPlaced", 1, serde_json::json!({ "total": -5 }))?;
    bus.publish_envelope(topic, &bad).await?;
    Ok(())
}

/// The order's `total` from its payload.
fn order_total(order: &Envelope) -> Result<i64, HandlerError> {
    let payload: serde_json::Value = order.payload_as()?;
    payload["total"].as_i64().ok_or_else(|| HandlerError::permanent("the order has no total"))
}

/// The next line from `rx`, or an error naming `what` after 60 seconds.
async fn wait(rx: &mut mpsc::UnboundedReceiver<String>, what: &str) -> Result<String, String> {
    match tokio::time::timeout(Duration::from_secs(60), rx.recv()).await {
        Ok(Some(line)) => Ok(line),
        Ok(None) => Err(format!("the handler went away while waiting for {what}")),
        Err(_) => Err(format!("waited 60 s for {what}")),
    }
}
