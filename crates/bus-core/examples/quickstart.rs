//! Quickstart: publish envelopes for a handful of aggregates on the in-memory bus, consume them in
//! order per aggregate, print progress and the shutdown report. No set-up needed:
//!
//! ```sh
//! cargo run --example quickstart
//! ```

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use bus_core::{Envelope, EventBus, HandlerError, SubscribeOptions};
use parking_lot::Mutex;

const AGGREGATES: usize = 5;
const VERSIONS: i64 = 10;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let bus = EventBus::in_memory();

    // Consume: versions per aggregate must arrive in order (1, 2, 3, ...).
    let last_seen: Arc<Mutex<BTreeMap<String, i64>>> = Arc::default();
    let seen = Arc::clone(&last_seen);
    let options = SubscribeOptions::new("quickstart").with_concurrency(4);
    let _subscription = bus
        .subscribe_envelopes("orders", options, move |event: Envelope| {
            let seen = Arc::clone(&seen);
            async move {
                let mut seen = seen.lock();
                let previous = seen.insert(event.aggregate_id.clone(), event.event_version);
                let expected = previous.unwrap_or(0) + 1;
                if event.event_version != expected {
                    return Err(HandlerError::permanent(format!(
                        "{} arrived as version {}, expected {expected}",
                        event.aggregate_id, event.event_version
                    )));
                }
                println!(
                    "handled {:<10} v{:<2} {}",
                    event.aggregate_id, event.event_version, event.payload
                );
                Ok(())
            }
        })
        .await?;

    // Publish: versions 1..=10 for each aggregate, interleaved.
    for version in 1..=VERSIONS {
        for n in 0..AGGREGATES {
            let payload = serde_json::json!({ "line": version, "amount": n * 10 });
            let event = Envelope::new(format!("order-{n}"), "OrderLineAdded", version, payload)?;
            let delivery = bus.publish_envelope("orders", &event).await?;
            if version == 1 {
                println!(
                    "published order-{n} to partition {} at offset {}",
                    delivery.partition, delivery.offset
                );
            }
        }
    }

    // Wait (with a deadline) until every aggregate reached its last version.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let done = {
            let seen = last_seen.lock();
            seen.len() == AGGREGATES && seen.values().all(|v| *v == VERSIONS)
        };
        if done {
            break;
        }
        if tokio::time::Instant::now() > deadline {
            return Err("not every event was handled within 30 s".into());
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let metrics = bus.metrics();
    println!(
        "\n{} events handled in order across {AGGREGATES} aggregates ({} dead-lettered)",
        metrics.handled, metrics.dead_lettered
    );

    let report = bus.shutdown(Duration::from_secs(5)).await?;
    println!("\n{report}");
    println!("live tasks after shutdown: {}", bus.live_tasks());
    Ok(())
}
