//! Broker faults: connections cut through a loopback TCP proxy, and the broker stopped and
//! restarted mid-stream. No acknowledged message may be lost.
//!
//! Owns: [`broker_faults`] and the private broker it runs against ([`PrivateBroker`]: nisshi
//! with SQLite storage, so that a restart keeps the data, advertising the proxy's address so
//! that every connection goes through the proxy). The proxy is the integration tests' own
//! ([`bus_tests::proxy::Proxy`], whose tasks live in a supervisor of their own: the tool follows
//! the rule it checks).

use std::net::{SocketAddr, TcpListener as StdListener, TcpStream as StdStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use bus_core::{Envelope, EventBus};
use bus_kafka::KafkaConfig;
use bus_tests::proxy::Proxy;
use indicatif::ProgressBar;
use parking_lot::Mutex;

use super::{OrderBook, Run, shut_down, subscribe_checked, wait_until};

/// A nisshi broker of the scenario's own, killed on drop.
struct PrivateBroker {
    listen: u16,
    advertise: u16,
    dir: PathBuf,
    child: Option<Child>,
}

fn free_port() -> Result<u16, String> {
    StdListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .map_err(|e| format!("no free port: {e}"))
}

fn nisshi() -> Result<PathBuf, String> {
    let on_path = std::env::var_os("PATH").and_then(|path| {
        std::env::split_paths(&path).map(|d| d.join("nisshi")).find(|p| p.is_file())
    });
    let in_cargo = std::env::var_os("HOME")
        .map(|home| PathBuf::from(home).join(".cargo").join("bin").join("nisshi"))
        .filter(|p| p.is_file());
    on_path
        .or(in_cargo)
        .ok_or_else(|| "nisshi is not installed (cargo xtask broker start installs it)".into())
}

impl PrivateBroker {
    /// Starts a broker listening on `listen` and advertising `advertise` (the proxy).
    async fn start(listen: u16, advertise: u16) -> Result<PrivateBroker, String> {
        let dir =
            std::env::temp_dir().join(format!("leakcheck-broker-{}-{listen}", std::process::id()));
        std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
        let mut broker = PrivateBroker { listen, advertise, dir, child: None };
        broker.restart().await?;
        Ok(broker)
    }

    fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// (Re)starts the broker on the same ports and data; returns once it accepts connections.
    async fn restart(&mut self) -> Result<(), String> {
        self.stop();
        let listen = format!("tcp://127.0.0.1:{}", self.listen);
        let advertise = format!("tcp://127.0.0.1:{}", self.advertise);
        let log = std::fs::File::create(self.dir.join("broker.log")).map_err(|e| e.to_string())?;
        let log_err = log.try_clone().map_err(|e| e.to_string())?;
        let child = Command::new(nisshi()?)
            .args(["broker", "--listener-url", &listen, "--advertised-listener-url", &advertise])
            .args(["--storage-engine", "sqlite://broker.db"])
            .current_dir(&self.dir)
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log_err)
            .spawn()
            .map_err(|e| format!("cannot start nisshi: {e}"))?;
        self.child = Some(child);
        let listening = wait_until(Duration::from_secs(60), || {
            StdStream::connect(("127.0.0.1", self.listen)).is_ok()
        })
        .await;
        if listening { Ok(()) } else { Err("the private broker did not listen within 60 s".into()) }
    }
}

impl Drop for PrivateBroker {
    fn drop(&mut self) {
        self.stop();
        let _ = std::fs::remove_dir_all(&self.dir);
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
