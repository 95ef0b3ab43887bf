//! Broker faults: connections cut through a loopback TCP proxy, and the broker stopped and
//! restarted mid-stream. No acknowledged message may be lost.
//!
//! Owns: [`broker_faults`] and the private broker it runs against ([`PrivateBroker`]: a
//! single-node Apache Kafka whose data survives a restart, advertising the proxy's address so
//! that every connection goes through the proxy). The proxy is the integration tests' own
//! ([`bus_tests::proxy::Proxy`], whose tasks live in a supervisor of their own: the tool follows
//! the rule it checks).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bus_core::{Envelope, EventBus};
use bus_kafka::KafkaConfig;
use bus_tests::proxy::Proxy;
use indicatif::ProgressBar;
use parking_lot::Mutex;

use super::{OrderBook, Run, shut_down, subscribe_checked};

/// A broker of the scenario's own (a single-node Apache Kafka, see `testbed::PrivateNode`),
/// killed on drop.
struct PrivateBroker {
    node: testbed::PrivateNode,
}

fn free_port() -> Result<u16, String> {
    testbed::free_port()
}

impl PrivateBroker {
    /// Starts a broker listening on `listen` and advertising `advertise` (the proxy).
    async fn start(listen: u16, advertise: u16) -> Result<PrivateBroker, String> {
        let node = tokio::task::block_in_place(|| testbed::PrivateNode::start(listen, advertise))?;
        Ok(PrivateBroker { node })
    }

    /// Kills the broker (SIGKILL: a crash); its data stays.
    fn stop(&mut self) {
        self.node.stop();
    }

    /// (Re)starts the broker on the same ports and data; returns once it started.
    async fn restart(&mut self) -> Result<(), String> {
        tokio::task::block_in_place(|| self.node.restart())
    }
}

/// Aggregates and versions published through the faults.
const AGGREGATES: u64 = 20;
const VERSIONS: i64 = 50;

/// Runs the scenario; `progress` counts handled envelopes.
pub(crate) async fn broker_faults(progress: &ProgressBar, mut run: Run) -> Run {
    let result = faults(progress, &mut run).await;
    if let Err(error) = result {
        run.problems.push(error);
    }
    run
}

async fn faults(progress: &ProgressBar, run: &mut Run) -> Result<(), String> {
    // The broker advertises the proxy, so every connection (bootstrap, leaders, coordinator)
    // goes through it.
    let listen = free_port()?;
    let proxy = Proxy::start(SocketAddr::from(([127, 0, 0, 1], listen))).await?;
    let mut broker = PrivateBroker::start(listen, proxy.port()).await?;
    let bootstrap = format!("127.0.0.1:{}", proxy.port());

    let mut config = KafkaConfig::new(&bootstrap);
    config.producer.delivery_timeout = Duration::from_secs(20);
    let bus: EventBus =
        bus_kafka::connect(config.clone()).await.map_err(|e| format!("connect: {e}"))?;
    let topic = format!("leakcheck-faults-{}", std::process::id());
    bus_kafka::admin::connect(config)
        .await
        .map_err(|e| e.to_string())?
        .ensure_topic(&topic, 3)
        .await
        .map_err(|e| e.to_string())?;
    let book = Arc::new(Mutex::new(OrderBook::default()));
    let subscription =
        subscribe_checked(&bus, &topic, "faults", Arc::clone(&book), progress.clone())
            .await
            .map_err(|e| format!("subscribe: {e}"))?;

    progress.set_length(AGGREGATES * u64::try_from(VERSIONS).unwrap_or(0));
    let mut cuts = 0;
    for version in 1..=VERSIONS {
        match version {
            10 | 20 | 30 => {
                progress.set_message("cutting connections");
                cuts += proxy.cut().await;
            }
            25 => {
                progress.set_message("restarting the broker");
                broker.stop();
                tokio::time::sleep(Duration::from_secs(2)).await; // the fault: 2 s without a broker
                broker.restart().await?;
            }
            _ => progress.set_message(""),
        }
        for a in 0..AGGREGATES {
            let envelope =
                Envelope::new(format!("agg-{a}"), "FaultEvent", version, serde_json::json!({}))
                    .map_err(|e| e.to_string())?;
            let record = envelope.to_record(topic.as_str()).map_err(|e| e.to_string())?;
            // Retried until acknowledged, so that versions reach the topic in order.
            let mut attempts = 0;
            loop {
                attempts += 1;
                match bus.publish(record.clone()).await {
                    Ok(_) => break,
                    Err(_) if attempts < 10 => {}
                    Err(error) => {
                        return Err(format!("publish kept failing through the faults: {error}"));
                    }
                }
            }
            run.messages += 1;
        }
    }
    run.notes.push(format!("{cuts} connection(s) cut; broker restarted once"));
    let expected = run.messages;
    run.account(&book, expected).await;
    drop(subscription);
    shut_down(&bus, Duration::from_secs(10), run).await;
    drop(bus);
    proxy.shutdown().await?;
    drop(broker);
    Ok(())
}
