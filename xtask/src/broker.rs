//! The test cluster: three Apache Kafka 4.4 nodes in KRaft mode on loopback (see
//! `testbed::cluster`), with plaintext, SASL_SSL and mTLS listeners (see `secure`).
//!
//! Owns: `cargo xtask broker start|stop|status|kill|start-node|freeze|thaw`, and
//! [`ensure_running`] / [`stop`] for the other tools. The cluster is recorded in
//! `target/broker.env` (`KAFKA_BOOTSTRAP`, each node's address and process), its secured
//! listeners in `target/broker-secure.env`; tests and tools find them there.
//!
//! Invariants:
//! - When `KAFKA_BOOTSTRAP` is set, it names the cluster to use (a user's own): nothing is
//!   resolved, started or stopped.
//! - `stop` ends only the processes recorded, and only those whose command line marks them as
//!   this cluster's nodes.
//! - The cluster is reported ready only after each node logged that it started and its plaintext
//!   listener answered an ApiVersions request, and the SASL_SSL listener answered one over TLS.

use clap::Subcommand;
use testbed::cluster::{Cluster, Listener, NODES};
use testbed::probe;

use crate::Result;
use crate::secure::{self, Credentials, Secured};

/// What to do with the cluster.
#[derive(Subcommand, Clone, Copy)]
pub(crate) enum Action {
    /// Start the three-node cluster (resolving Apache Kafka with Maven on first use) unless it
    /// is running.
    Start,
    /// Stop the cluster started by `start`.
    Stop,
    /// Print each node's addresses and whether it answers.
    Status,
    /// Kill node N (SIGKILL, as a crash would); its data stays.
    Kill {
        /// The node, 1 to 3.
        node: u32,
    },
    /// Start node N again (after `kill`), with its configuration, ports and data.
    StartNode {
        /// The node, 1 to 3.
        node: u32,
    },
    /// Cut node N off: it stops answering clients and the other nodes (SIGSTOP), connections
    /// stay open.
    Freeze {
        /// The node, 1 to 3.
        node: u32,
    },
    /// Let a frozen node go on (SIGCONT).
    Thaw {
        /// The node, 1 to 3.
        node: u32,
    },
}

/// The environment variable that names a cluster to use instead of starting one.
pub(crate) const BOOTSTRAP_VAR: &str = "KAFKA_BOOTSTRAP";

/// A cluster in use.
pub(crate) struct Broker {
    /// The comma-separated `host:port` list to bootstrap from.
    pub(crate) bootstrap: String,
    /// Its secured listeners, when known.
    pub(crate) secured: Option<Secured>,
    /// Whether this call started it (and so the caller should stop it when done).
    pub(crate) started_here: bool,
}

pub(crate) fn run(action: Action) -> Result<()> {
    match action {
        Action::Start => {
            let broker = ensure_running()?;
            println!("{BOOTSTRAP_VAR}={}", broker.bootstrap);
            if let Some(secured) = &broker.secured {
                println!("{}={}", secure::BOOTSTRAP_VAR, secured.bootstrap());
            }
            Ok(())
        }
        Action::Stop => stop(),
        Action::Status => status(),
        Action::Kill { node } => {
            Cluster::recorded()?.kill(node)?;
            eprintln!("node {node} killed");
            Ok(())
        }
        Action::StartNode { node } => {
            let mut cluster = Cluster::recorded()?;
            cluster.start_node(node)?;
            eprintln!("node {node} started at {}", cluster.node(node)?.address(Listener::Client));
            Ok(())
        }
        Action::Freeze { node } => Cluster::recorded()?.freeze(node),
        Action::Thaw { node } => Cluster::recorded()?.thaw(node),
    }
}

fn external() -> Option<String> {
    std::env::var(BOOTSTRAP_VAR).ok().filter(|v| !v.trim().is_empty())
}

/// Returns a cluster that answers: the one named by `KAFKA_BOOTSTRAP`, the one recorded, or a
/// new one started now.
pub(crate) fn ensure_running() -> Result<Broker> {
    if let Some(bootstrap) = external() {
        let first = bootstrap.split(',').next().unwrap_or_default();
        probe(first).map_err(|e| format!("{BOOTSTRAP_VAR}={bootstrap} does not answer: {e}"))?;
        eprintln!("using the cluster at {bootstrap} ({BOOTSTRAP_VAR})");
        return Ok(Broker { bootstrap, secured: Secured::current(), started_here: false });
    }
    if let Ok(mut cluster) = Cluster::recorded() {
        let answering = cluster
            .nodes
            .iter()
            .all(|node| node.alive() && probe(&node.address(Listener::Client)).is_ok());
        let secured = Secured::current();
        if answering && secured.as_ref().is_some_and(|s| secure::probe(s).is_ok()) {
            let bootstrap = cluster.bootstrap(Listener::Client);
            eprintln!("cluster already running at {bootstrap}");
            return Ok(Broker { bootstrap, secured, started_here: false });
        }
        // A stale or damaged record (a reboot, a node killed and left): start afresh.
        eprintln!("the recorded cluster is not whole; starting a new one");
        cluster.stop()?;
    }
    let credentials = Credentials::make()?;
    eprintln!(
        "starting a three-node Apache Kafka {} cluster in target/kafka",
        testbed::KAFKA_VERSION
    );
    let started = std::time::Instant::now();
    let cluster = Cluster::start(&credentials.layout)?;
    let secured = credentials.record(
        &cluster.bootstrap(Listener::Secure),
        &cluster.bootstrap(Listener::Mtls),
        &cluster.bootstrap(Listener::Tls),
    )?;
    for node in &cluster.nodes {
        probe(&node.address(Listener::Client))?;
    }
    secure::probe(&secured)?;
    let bootstrap = cluster.bootstrap(Listener::Client);
    eprintln!(
        "cluster started in {:.0?}: {BOOTSTRAP_VAR}={bootstrap} (logs in target/kafka/node*/server.log)",
        started.elapsed()
    );
    Ok(Broker { bootstrap, secured: Some(secured), started_here: true })
}

/// Stops the recorded cluster, if there is one.
pub(crate) fn stop() -> Result<()> {
    if external().is_some() {
        eprintln!("{BOOTSTRAP_VAR} is set: that cluster is not ours to stop");
        return Ok(());
    }
    match Cluster::recorded() {
        Ok(mut cluster) => {
            cluster.stop()?;
            secure::forget();
            eprintln!("cluster stopped");
            Ok(())
        }
        Err(_) => {
            eprintln!("no cluster recorded");
            Ok(())
        }
    }
}

fn status() -> Result<()> {
    if let Some(bootstrap) = external() {
        for address in bootstrap.split(',') {
            match probe(address) {
                Ok(()) => println!("{address} (from {BOOTSTRAP_VAR}): answering"),
                Err(e) => println!("{address} (from {BOOTSTRAP_VAR}): {e}"),
            }
        }
        return Ok(());
    }
    let Ok(cluster) = Cluster::recorded() else {
        println!("no cluster: run `cargo xtask broker start`");
        return Ok(());
    };
    let mut whole = true;
    for node in &cluster.nodes {
        let address = node.address(Listener::Client);
        let state = match (node.alive(), probe(&address)) {
            (false, _) => "not running".to_owned(),
            (true, Ok(())) => "answering".to_owned(),
            (true, Err(e)) => format!("running, not answering ({e})"),
        };
        whole &= state == "answering";
        println!(
            "node {} pid {}: {address} (SASL_SSL {}, mTLS {}): {state}",
            node.id,
            node.pid.map_or("-".to_owned(), |p| p.to_string()),
            node.address(Listener::Secure),
            node.address(Listener::Mtls),
        );
    }
    println!("{BOOTSTRAP_VAR}={}", cluster.bootstrap(Listener::Client));
    if whole { Ok(()) } else { Err(format!("not every one of the {NODES} nodes answers")) }
}
