//! Rebalance churn: a second member joins and leaves the group 20 times while messages flow.
//!
//! Owns: [`rebalance_churn`] and [`Churn`] (which group and how: eager members, or cooperative
//! ones with a static steady member). A steady member and a churning one share one order book:
//! every acknowledged envelope must be handled at least once, and each aggregate's versions
//! must arrive in order (repeats of versions already seen are redeliveries, allowed).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use bus_core::{Envelope, EventBus};
use indicatif::ProgressBar;
use parking_lot::Mutex;

use super::{OrderBook, Run, shut_down, subscribe_member, wait_until};

/// Join-and-leave rounds.
const ROUNDS: usize = 20;
/// Aggregates publishing while the group churns.
const AGGREGATES: u64 = 50;

/// Which group churns, and how its steady member joins.
pub(crate) struct Churn {
    topic: String,
    group: String,
    /// The steady member's group instance id (static membership), if any.
    steady_instance: Option<String>,
}

impl Churn {
    /// Dynamic members (the bus's assignors decide the protocol).
    pub(crate) fn eager(topic: String, group: String) -> Churn {
        Churn { topic, group, steady_instance: None }
    }

    /// The steady member static; meant for a bus whose members are cooperative.
    pub(crate) fn cooperative(topic: String, group: String) -> Churn {
        let steady_instance = Some(format!("{group}-steady"));
        Churn { topic, group, steady_instance }
    }
}

/// Runs the churn on `bus`.
pub(crate) async fn rebalance_churn(
    bus: EventBus,
    churn: Churn,
    progress: &ProgressBar,
    mut run: Run,
) -> Run {
    let Churn { topic, group, steady_instance } = churn;
    let book = Arc::new(Mutex::new(OrderBook::default()));
    let steady = subscribe_member(
        &bus,
        &topic,
        &group,
        steady_instance.as_deref(),
        Arc::clone(&book),
        progress.clone(),
    );
    let steady = match steady.await {
        Ok(s) => s,
        Err(error) => {
            run.problems.push(format!("cannot subscribe: {error}"));
            shut_down(&bus, Duration::from_secs(10), &mut run).await;
            return run;
        }
    };
    let done = AtomicBool::new(false);
    let acked = Mutex::new(0u64);

    // Publishes versions 1, 2, … for every aggregate, in rounds, until the churn ends.
    let publish = async {
        let mut version: i64 = 0;
        while !done.load(Ordering::SeqCst) {
            version += 1;
            for a in 0..AGGREGATES {
                let envelope = Envelope::new(
                    format!("agg-{a}"),
                    "ChurnEvent",
                    version,
                    serde_json::json!({ "v": version }),
                );
                let record = match envelope.and_then(|e| e.to_record(topic.as_str())) {
                    Ok(record) => record,
                    Err(error) => return Err(format!("cannot build envelope: {error}")),
                };
                // Retried until acknowledged, so that versions reach the topic in order.
                let mut attempts = 0;
                loop {
                    attempts += 1;
                    match bus.publish(record.clone()).await {
                        Ok(_) => break,
                        // Retry: a publish may fail while the group rebalances a broker-side
                        // resource; it is not lost unless it keeps failing.
                        Err(_) if attempts < 5 => {}
                        Err(error) => return Err(format!("publish kept failing: {error}")),
                    }
                }
                *acked.lock() += 1;
            }
            progress.set_length(*acked.lock());
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Ok(())
    };

    // Joins and leaves the group ROUNDS times.
    let churn = async {
        let mut notes = Vec::new();
        for round in 0..ROUNDS {
            progress.set_message(format!("churn round {}/{ROUNDS}", round + 1));
            let member =
                subscribe_member(&bus, &topic, &group, None, Arc::clone(&book), progress.clone())
                    .await;
            let member = match member {
                Ok(member) => member,
                Err(error) => {
                    notes.push(format!("round {round}: cannot join: {error}"));
                    continue;
                }
            };
            // Let it take part in a generation: wait for the group to hand it work.
            let seen = book.lock().distinct();
            wait_until(Duration::from_secs(15), || book.lock().distinct() > seen + AGGREGATES)
                .await;
            if let Err(error) = member.unsubscribe(Duration::from_secs(10)).await {
                notes.push(format!("round {round}: leaving left tasks behind: {error}"));
            }
        }
        done.store(true, Ordering::SeqCst);
        notes
    };

    let (published, notes) = tokio::join!(publish, churn);
    if let Err(error) = published {
        run.problems.push(error);
    }
    run.problems.extend(notes);
    run.messages = *acked.lock();
    progress.set_length(run.messages);
    let expected = run.messages;
    run.account(&book, expected).await;
    run.notes.push(format!("{} redelivered across {ROUNDS} join/leave rounds", run.duplicates));
    drop(steady);
    shut_down(&bus, Duration::from_secs(10), &mut run).await;
    drop(bus);
    run
}
