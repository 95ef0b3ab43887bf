//! The Go SDK's load: 5 topics x 3 partitions, envelopes from many aggregates with versions
//! 1..n each, subscribed on all five topics; every envelope handled at least once, none lost,
//! versions in order per aggregate; then shutdown.
//!
//! Owns: [`load`], run once per message count on a bus the caller provides (in-memory or Kafka).

use std::sync::Arc;
use std::time::{Duration, Instant};

use bus_core::{Envelope, EventBus};
use indicatif::ProgressBar;
use parking_lot::Mutex;

use super::{OrderBook, Run, shut_down, subscribe_checked, wait_until};

/// Topics per load run.
const TOPICS: usize = 5;
/// Partitions per topic.
pub(crate) const PARTITIONS: i32 = 3;

/// Names the five topics of one run.
pub(crate) fn topics(prefix: &str) -> Vec<String> {
    (0..TOPICS).map(|t| format!("{prefix}-t{t}")).collect()
}

/// Runs the load with `count` envelopes on `bus`, whose topics `topics` exist with
/// [`PARTITIONS`] partitions each.
pub(crate) async fn load(
    bus: EventBus,
    topics: &[String],
    group: &str,
    count: u64,
    progress: &ProgressBar,
    mut run: Run,
) -> Run {
    // Many aggregates, versions 1..=n each, spread over the topics.
    let aggregates = (count / 10).max(1);
    let versions = count / aggregates;
    let total = aggregates * versions;
    progress.set_length(total);
    progress.set_position(0);

    let book = Arc::new(Mutex::new(OrderBook::default()));
    let mut subscriptions = Vec::new();
    for topic in topics {
        match subscribe_checked(&bus, topic, group, Arc::clone(&book), progress.clone()).await {
            Ok(subscription) => subscriptions.push(subscription),
            Err(error) => {
                run.problems.push(format!("cannot subscribe to {topic}: {error}"));
                shut_down(&bus, Duration::from_secs(10), &mut run).await;
                return run;
            }
        }
    }

    // Warm up: one envelope per topic, so that every subscription has joined its group and been
    // assigned partitions before the clock starts (brokers hold a new group's first join ~3 s).
    let joining = Instant::now();
    for (t, topic) in topics.iter().enumerate() {
        let warm = Envelope::new(format!("warmup-{t}"), "Warmup", 1, serde_json::json!({}))
            .and_then(|e| e.to_record(topic.as_str()));
        match warm {
            Ok(record) => {
                if let Err(error) = bus.publish(record).await {
                    run.problems.push(format!("warm-up publish failed: {error}"));
                }
            }
            Err(error) => run.problems.push(format!("cannot build the warm-up: {error}")),
        }
    }
    let warm = topics.len() as u64;
    if !wait_until(Duration::from_secs(60), || book.lock().distinct() >= warm).await {
        run.problems.push("the subscriptions never received their warm-up envelopes".into());
    }
    run.notes.push(format!("groups joined and warm in {:.2?}", joining.elapsed()));
    progress.set_length(total);
    progress.set_position(0);

    let started = Instant::now();
    let mut pending = Vec::with_capacity(usize::try_from(total).unwrap_or(0));
    'publish: for version in 1..=versions {
        for a in 0..aggregates {
            let aggregate = format!("agg-{a}");
            let topic = &topics[usize::try_from(a).unwrap_or(0) % topics.len()];
            let envelope = match Envelope::new(
                &aggregate,
                "LeakcheckEvent",
                i64::try_from(version).unwrap_or(i64::MAX),
                serde_json::json!({ "n": version }),
            ) {
                Ok(envelope) => envelope,
                Err(error) => {
                    run.problems.push(format!("cannot build envelope: {error}"));
                    break 'publish;
                }
            };
            let record = match envelope.to_record(topic.as_str()) {
                Ok(record) => record,
                Err(error) => {
                    run.problems.push(format!("cannot map envelope: {error}"));
                    break 'publish;
                }
            };
            match bus.publish_nowait(record).await {
                Ok(delivery) => pending.push(delivery),
                Err(error) => {
                    run.problems.push(format!("publish refused: {error}"));
                    break 'publish;
                }
            }
        }
    }
    for delivery in pending {
        match delivery.await {
            Ok(_) => run.messages += 1,
            Err(error) => run.problems.push(format!("publish failed: {error}")),
        }
    }

    let all_handled = run.account(&book, run.messages + warm).await;
    if all_handled {
        run.rate = Some(run.messages as f64 / started.elapsed().as_secs_f64());
    }
    drop(subscriptions);
    shut_down(&bus, Duration::from_secs(10), &mut run).await;
    drop(bus);
    run
}
