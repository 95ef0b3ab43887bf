//! Pausing under back-pressure: a subscription forwards orders to a slow downstream system
//! through a small queue; when the queue is full the handler pauses the subscription (fetching
//! stops, the group membership and heartbeats go on), and the downstream side resumes it once
//! it has caught up.
//!
//! ```sh
//! KAFKA_BOOTSTRAP=127.0.0.1:9092 cargo run -p bus-kafka --example pause
//! ```
//!
//! `EXAMPLE_TOPIC` names the topic (default `pause-example`). Exits with status 1 when
//! something did not happen as it should (`cargo xtask test` runs it against the test broker).

use std::process::ExitCode;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use bus_kafka::{ConsumerControl, HandlerError, KafkaConfig, Message, Record, SubscribeOptions};
use tokio::sync::mpsc;

/// Orders published, and the downstream queue's room.
const ORDERS: usize = 40;
const QUEUE: usize = 8;

#[tokio::main]
async fn main() -> ExitCode {
    match run().await {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("pause: {error}");
            ExitCode::FAILURE
        }
    }
}

async fn run() -> Result<(), Box<dyn std::error::Error>> {
    let bootstrap = std::env::var("KAFKA_BOOTSTRAP").unwrap_or_else(|_| "127.0.0.1:9092".into());
    let topic = std::env::var("EXAMPLE_TOPIC").unwrap_or_else(|_| "pause-example".into());
    let bus = bus_kafka::connect(KafkaConfig::new(&bootstrap)).await?;
    for n in 0..ORDERS {
        bus.publish(Record::new(&topic, format!("order {n}")).with_key("shop-1")).await?;
    }

    // The handler needs the subscription's control, which exists once it is subscribed.
    let control: Arc<OnceLock<ConsumerControl>> = Arc::default();
    let (queue, mut downstream) = mpsc::channel::<String>(QUEUE);
    let c = Arc::clone(&control);
    let forwarder = bus
        .subscribe(&topic, SubscribeOptions::new("pause-forwarder"), move |m: Message| {
            let (control, queue) = (Arc::clone(&c), queue.clone());
            async move {
                let order = String::from_utf8_lossy(m.payload()).into_owned();
                if queue.capacity() == 1
                    && let Some(control) = control.get()
                {
                    // The last free slot: stop fetching until downstream catches up.
                    control.pause_all();
                }
                queue.send(order).await.map_err(|_| HandlerError::new("downstream closed"))?;
                Ok::<(), HandlerError>(())
            }
        })
        .await?;
    let _ = control.set(forwarder.control());

    let mut delivered = 0;
    let mut pauses = 0;
    while delivered < ORDERS {
        let order = tokio::time::timeout(Duration::from_secs(60), downstream.recv())
            .await?
            .ok_or("the queue closed")?;
        delivered += 1;
        let (paused, _) = forwarder.control().paused();
        if paused && downstream.is_empty() {
            pauses += 1;
            println!("downstream caught up after {order}; resuming");
            forwarder.control().resume_all();
        }
    }
    println!("delivered {delivered} orders downstream, pausing {pauses} times");
    if pauses == 0 {
        return Err("the forwarder never paused".into());
    }
    let report = forwarder.unsubscribe(Duration::from_secs(10)).await?;
    println!("committed {:?}", report.subscription.committed);
    println!("{}", bus.shutdown(Duration::from_secs(10)).await?);
    Ok(())
}
