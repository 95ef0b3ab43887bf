//! The shared test cluster: three Apache Kafka nodes, each broker and KRaft controller at once,
//! on loopback, recorded in `target/broker.env` so that tools and tests can find, fault and end it.
//!
//! Owns the cluster's layout (listeners, ports, replication defaults), its start and stop, and
//! the faults tests inject into one node: [`Cluster::kill`] (SIGKILL), [`Cluster::start_node`]
//! (the same configuration, ports and data), [`Cluster::freeze`] / [`Cluster::thaw`] (SIGSTOP /
//! SIGCONT: the node stops answering everyone, clients and the other nodes alike, while every
//! connection to it stays open: a node cut off the network without a reset).
//!
//! Every node has six listeners, on ports chosen free at start:
//! - `CLIENT`: PLAINTEXT, what `KAFKA_BOOTSTRAP` names;
//! - `SECURE`: SASL_SSL with PLAIN, SCRAM-SHA-256, SCRAM-SHA-512 and OAUTHBEARER;
//! - `MTLS`: SSL with client certificates required;
//! - `TLS`: SSL without client certificates (TLS alone, for benchmarks and tests of it);
//! - `INTERNAL`: PLAINTEXT between the brokers; `CONTROLLER`: the KRaft quorum.
//!
//! The security settings of `SECURE` and `MTLS` (certificates, JAAS) come from the caller
//! ([`Layout::security`]); this module only places them.
//!
//! Invariants: `stop` and the faults act only on processes whose command line marks them as
//! nodes of this cluster's directories (see [`crate::is_node`]); the record is rewritten whenever
//! a node's process changes.

use std::path::PathBuf;
use std::process::Command;

use crate::{Distribution, Properties, Result};

/// Nodes in the shared cluster.
pub const NODES: u32 = 3;

/// The heap of each node: three nodes and a test run share 24 GiB and two cores.
const HEAP: &str = "768m";

/// The listeners of a node, by name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Listener {
    /// PLAINTEXT for clients.
    Client,
    /// SASL_SSL for clients (PLAIN, SCRAM-SHA-256/512, OAUTHBEARER).
    Secure,
    /// SSL with client certificates required.
    Mtls,
    /// SSL without client certificates.
    Tls,
    /// PLAINTEXT between brokers.
    Internal,
    /// The KRaft controller quorum.
    Controller,
}

impl Listener {
    const ALL: [Listener; 6] = [
        Listener::Client,
        Listener::Secure,
        Listener::Mtls,
        Listener::Tls,
        Listener::Internal,
        Listener::Controller,
    ];

    /// The listener's name in `server.properties`.
    pub fn name(self) -> &'static str {
        match self {
            Listener::Client => "CLIENT",
            Listener::Secure => "SECURE",
            Listener::Mtls => "MTLS",
            Listener::Tls => "TLS",
            Listener::Internal => "INTERNAL",
            Listener::Controller => "CONTROLLER",
        }
    }

    fn protocol(self) -> &'static str {
        match self {
            Listener::Secure => "SASL_SSL",
            Listener::Mtls | Listener::Tls => "SSL",
            _ => "PLAINTEXT",
        }
    }
}

/// What the caller adds to the cluster: security settings for every node and arguments for the
/// storage format (SCRAM users).
#[derive(Debug, Clone, Default)]
pub struct Layout {
    /// Settings added to every node's `server.properties` (the `listener.name.secure.*` and
    /// `listener.name.mtls.*` ones).
    pub security: Vec<(String, String)>,
    /// Extra `StorageTool format` arguments (e.g. `--add-scram`), the same for every node.
    pub format_args: Vec<String>,
}

/// One node as recorded.
#[derive(Debug, Clone)]
pub struct Node {
    /// Its `node.id` (1-based).
    pub id: u32,
    /// Its directory (configuration, data, logs).
    pub dir: PathBuf,
    /// Its listeners' ports, in the order of `Listener::ALL`.
    ports: [u16; 6],
    /// The process, when it runs.
    pub pid: Option<u32>,
}

impl Node {
    /// `127.0.0.1:<port>` of `listener`.
    pub fn address(&self, listener: Listener) -> String {
        let index = Listener::ALL.iter().position(|l| *l == listener).unwrap_or(0);
        format!("127.0.0.1:{}", self.ports[index])
    }

    /// Whether its process runs.
    pub fn alive(&self) -> bool {
        self.pid.is_some_and(|pid| crate::is_node(pid, &self.dir))
    }
}

/// The recorded cluster.
#[derive(Debug, Clone)]
pub struct Cluster {
    /// Its nodes, by id.
    pub nodes: Vec<Node>,
}

/// The directory of the shared cluster's nodes.
pub fn dir() -> PathBuf {
    crate::workspace_root().join("target").join("kafka")
}

/// The record: `target/broker.env`.
pub fn env_file() -> PathBuf {
    crate::workspace_root().join("target").join("broker.env")
}

fn node_properties(node: &Node, voters: &str, layout: &Layout) -> Properties {
    let mut properties = Properties::for_test_node(&node.dir);
    let listeners: Vec<String> =
        Listener::ALL.iter().map(|l| format!("{}://{}", l.name(), node.address(*l))).collect();
    let advertised: Vec<String> =
        [Listener::Client, Listener::Secure, Listener::Mtls, Listener::Tls, Listener::Internal]
            .iter()
            .map(|l| format!("{}://{}", l.name(), node.address(*l)))
            .collect();
    let protocols: Vec<String> =
        Listener::ALL.iter().map(|l| format!("{}:{}", l.name(), l.protocol())).collect();
    properties
        .set("process.roles", "broker,controller")
        .set("node.id", node.id.to_string())
        .set("controller.quorum.voters", voters)
        .set("listeners", listeners.join(","))
        .set("advertised.listeners", advertised.join(","))
        .set("listener.security.protocol.map", protocols.join(","))
        .set("controller.listener.names", Listener::Controller.name())
        .set("inter.broker.listener.name", Listener::Internal.name())
        .set("default.replication.factor", "3")
        .set("min.insync.replicas", "2")
        .set("offsets.topic.replication.factor", "3")
        .set("offsets.topic.num.partitions", "12")
        .set("transaction.state.log.replication.factor", "3")
        .set("transaction.state.log.min.isr", "2")
        .set("transaction.state.log.num.partitions", "6")
        .set("share.coordinator.state.topic.replication.factor", "3")
        .set("share.coordinator.state.topic.min.isr", "2")
        .set("unclean.leader.election.enable", "false");
    for (key, value) in &layout.security {
        properties.set(key, value.clone());
    }
    properties
}

impl Cluster {
    /// Configures, formats and starts a new cluster in `target/kafka` (emptied first), records
    /// it, and returns once every node started. Formatting runs the three nodes' StorageTool at
    /// once (a JVM start each).
    pub fn start(layout: &Layout) -> Result<Cluster> {
        let dist = Distribution::resolve()?;
        let root = dir();
        for id in 1..=NODES {
            let _ = std::fs::remove_dir_all(root.join(format!("node{id}")));
        }
        let mut nodes = Vec::new();
        for id in 1..=NODES {
            let mut ports = [0u16; 6];
            for port in &mut ports {
                *port = crate::free_port()?;
            }
            nodes.push(Node { id, dir: root.join(format!("node{id}")), ports, pid: None });
        }
        let voters: Vec<String> =
            nodes.iter().map(|n| format!("{}@{}", n.id, n.address(Listener::Controller))).collect();
        let voters = voters.join(",");
        for node in &nodes {
            node_properties(node, &voters, layout).write(&node.dir)?;
        }
        let cluster_id = crate::cluster_id()?;
        // The three formats at once: each is a JVM start of several seconds.
        let results: Vec<Result<()>> = std::thread::scope(|scope| {
            let formats: Vec<_> = nodes
                .iter()
                .map(|node| {
                    let (dist, cluster_id) = (&dist, &cluster_id);
                    scope.spawn(move || {
                        crate::format(dist, &node.dir, cluster_id, &layout.format_args)
                    })
                })
                .collect();
            formats
                .into_iter()
                .map(|format| format.join().unwrap_or_else(|_| Err("a format panicked".into())))
                .collect()
        });
        results.into_iter().collect::<Result<Vec<()>>>()?;
        let mut cluster = Cluster { nodes };
        for id in 1..=NODES {
            cluster.launch(&dist, id)?;
        }
        cluster.save()?;
        for node in &cluster.nodes {
            let pid = node.pid;
            crate::wait_started(&node.dir, &node.address(Listener::Client), || {
                !pid.is_some_and(|pid| crate::is_node(pid, &node.dir))
            })?;
        }
        crate::wait_for_coordinators(&cluster.nodes[0].address(Listener::Client))?;
        Ok(cluster)
    }

    fn launch(&mut self, dist: &Distribution, id: u32) -> Result<()> {
        let node = self.node_mut(id)?;
        let child = crate::launch(dist, &node.dir, HEAP, true)?;
        node.pid = Some(child.id());
        // Detached: the record owns the process from here (`kill`, `stop`); the handle is
        // dropped without waiting, and the init process reaps it when it ends.
        drop(child);
        Ok(())
    }

    fn node_mut(&mut self, id: u32) -> Result<&mut Node> {
        self.nodes
            .iter_mut()
            .find(|n| n.id == id)
            .ok_or_else(|| format!("no node {id}: the cluster has nodes 1 to {NODES}"))
    }

    /// The node `id`.
    pub fn node(&self, id: u32) -> Result<&Node> {
        self.nodes
            .iter()
            .find(|n| n.id == id)
            .ok_or_else(|| format!("no node {id}: the cluster has nodes 1 to {NODES}"))
    }

    /// The comma-separated addresses of `listener` on every node.
    pub fn bootstrap(&self, listener: Listener) -> String {
        let addresses: Vec<String> = self.nodes.iter().map(|n| n.address(listener)).collect();
        addresses.join(",")
    }

    /// The cluster recorded in `target/broker.env`.
    pub fn recorded() -> Result<Cluster> {
        let file = env_file();
        let text = std::fs::read_to_string(&file).map_err(|e| {
            format!("no cluster recorded ({}: {e}): run `cargo xtask broker start`", file.display())
        })?;
        let value = |name: &str| {
            text.lines()
                .find_map(|line| line.strip_prefix(&format!("{name}=")))
                .map(|v| v.trim().to_owned())
        };
        let mut nodes = Vec::new();
        for id in 1..=NODES {
            let ports_text = value(&format!("KAFKA_NODE{id}_PORTS"))
                .ok_or_else(|| format!("{} names no node {id}", file.display()))?;
            let mut ports = [0u16; 6];
            let parsed: Vec<u16> = ports_text.split(',').filter_map(|p| p.parse().ok()).collect();
            if parsed.len() != ports.len() {
                return Err(format!("{}: KAFKA_NODE{id}_PORTS is not six ports", file.display()));
            }
            ports.copy_from_slice(&parsed);
            let pid = value(&format!("KAFKA_NODE{id}_PID")).and_then(|p| p.parse().ok());
            nodes.push(Node { id, dir: dir().join(format!("node{id}")), ports, pid });
        }
        Ok(Cluster { nodes })
    }

    /// Writes the record.
    pub fn save(&self) -> Result<()> {
        let mut text = String::from(
            "# the test cluster (cargo xtask broker start); see testbed/src/cluster.rs\n",
        );
        text.push_str(&format!("KAFKA_BOOTSTRAP={}\n", self.bootstrap(Listener::Client)));
        for node in &self.nodes {
            text.push_str(&format!("KAFKA_NODE{}={}\n", node.id, node.address(Listener::Client)));
            let ports: Vec<String> = node.ports.iter().map(u16::to_string).collect();
            text.push_str(&format!("KAFKA_NODE{}_PORTS={}\n", node.id, ports.join(",")));
            if let Some(pid) = node.pid {
                text.push_str(&format!("KAFKA_NODE{}_PID={pid}\n", node.id));
            }
        }
        let file = env_file();
        let temporary = file.with_extension("env.new");
        std::fs::write(&temporary, text)
            .and_then(|()| std::fs::rename(&temporary, &file))
            .map_err(|e| format!("cannot write {}: {e}", file.display()))
    }

    /// Kills node `id` (SIGKILL: a crash) and waits until its process is gone.
    pub fn kill(&mut self, id: u32) -> Result<()> {
        let node = self.node_mut(id)?;
        if let Some(pid) = node.pid.filter(|pid| crate::is_node(*pid, &node.dir)) {
            signal("KILL", pid)?;
            let dir = node.dir.clone();
            crate::wait_for(&format!("node {id} (pid {pid}) to end"), || {
                !crate::is_node(pid, &dir)
            })?;
        }
        node.pid = None;
        self.save()
    }

    /// Starts node `id` again (its configuration, ports and data as they are) and returns once
    /// it started. A node that runs is left as it is.
    pub fn start_node(&mut self, id: u32) -> Result<()> {
        if self.node(id)?.alive() {
            return Ok(());
        }
        let dist = Distribution::resolve()?;
        self.launch(&dist, id)?;
        self.save()?;
        let node = self.node(id)?;
        let pid = node.pid;
        crate::wait_started(&node.dir, &node.address(Listener::Client), || {
            !pid.is_some_and(|pid| crate::is_node(pid, &node.dir))
        })
    }

    /// Stops node `id` answering anyone (SIGSTOP); its connections stay open.
    pub fn freeze(&self, id: u32) -> Result<()> {
        self.signal_node(id, "STOP")
    }

    /// Lets a frozen node `id` go on (SIGCONT).
    pub fn thaw(&self, id: u32) -> Result<()> {
        self.signal_node(id, "CONT")
    }

    fn signal_node(&self, id: u32, name: &str) -> Result<()> {
        let node = self.node(id)?;
        match node.pid.filter(|pid| crate::is_node(*pid, &node.dir)) {
            Some(pid) => signal(name, pid),
            None => Err(format!("node {id} is not running")),
        }
    }

    /// Ends every node of the record that runs (thawed first, then SIGKILL: the data is
    /// formatted again at the next start) and removes the record.
    pub fn stop(&mut self) -> Result<()> {
        for id in 1..=NODES {
            if self.node(id)?.alive() {
                self.thaw(id)?;
                self.kill(id)?;
            }
        }
        std::fs::remove_file(env_file())
            .map_err(|e| format!("cannot remove {}: {e}", env_file().display()))
    }
}

fn signal(name: &str, pid: u32) -> Result<()> {
    let status = Command::new("kill")
        .arg(format!("-{name}"))
        .arg(pid.to_string())
        .status()
        .map_err(|e| format!("cannot run kill: {e}"))?;
    if status.success() { Ok(()) } else { Err(format!("kill -{name} {pid} failed ({status})")) }
}
