//! Administration: create a compacted topic with its configuration, describe it, let a group
//! consume part of it, and show the group's members and lag; then grow and delete the topic.
//! The same calls work on Kafka (`bus_kafka::admin::connect(config)`, or `bus.admin()` on a Kafka bus);
//! this example runs in memory, with no set-up:
//!
//! ```sh
//! cargo run -p bus-core --example admin
//! ```

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bus_core::{EventBus, HandlerError, Message, Record, SubscribeOptions, admin::NewTopic};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let bus = EventBus::in_memory();
    let admin = bus.admin();

    // A compacted topic, configured as Kafka's keys say.
    let topic = NewTopic::new("customers", 3)
        .config("cleanup.policy", "compact")
        .config("retention.ms", "604800000");
    admin.create_topic(&topic).await?;
    if let Err(error) = admin.create_topic(&topic).await {
        // Errors name the topic and carry Kafka's error code.
        println!("creating it again: {error} (code {:?})", error.code());
    }
    for n in 0..20 {
        let record = Record::new("customers", format!("v{n}")).with_key(format!("c{}", n % 7));
        bus.publish(record).await?;
    }
    let described = admin.describe_topic("customers").await?;
    println!("{} ({} partitions):", described.name, described.partitions.len());
    for p in &described.partitions {
        println!("  partition {}: offsets {}..{}", p.partition, p.start_offset, p.end_offset);
    }
    for (key, entry) in &described.config {
        println!("  {key} = {}", entry.value.as_deref().unwrap_or("-"));
    }

    // A group handles those 20 records and stops; 10 more arrive: they are its lag.
    let handled = Arc::new(AtomicUsize::new(0));
    let counter = Arc::clone(&handled);
    let options = SubscribeOptions::new("billing").with_commit_interval(Duration::from_millis(50));
    let subscription = bus
        .subscribe("customers", options, move |_m: Message| {
            let counter = Arc::clone(&counter);
            async move {
                counter.fetch_add(1, Ordering::SeqCst);
                Ok::<(), HandlerError>(())
            }
        })
        .await?;
    while handled.load(Ordering::SeqCst) < 20 {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    subscription.unsubscribe(Duration::from_secs(5)).await?;
    for n in 20..30 {
        bus.publish(Record::new("customers", format!("v{n}")).with_key(format!("c{}", n % 7)))
            .await?;
    }
    for group in admin.list_groups().await? {
        let described = admin.describe_group(&group.group).await?;
        println!(
            "group {} ({}): total lag {}",
            described.group,
            described.state,
            described.total_lag()
        );
        for lag in &described.offsets {
            println!(
                "  {}-{}: committed {:?}, end {}, lag {:?}",
                lag.topic, lag.partition, lag.committed, lag.end_offset, lag.lag
            );
        }
    }

    admin.add_partitions("customers", 6).await?;
    println!("customers now has {:?} partitions", admin.partitions("customers").await?);
    admin.delete_topic("customers").await?;
    println!("after deletion: {:?}", admin.partitions("customers").await?);
    println!("{}", bus.shutdown(Duration::from_secs(5)).await?);
    Ok(())
}
