//! Support for the consumer-group tests: producing keyed, versioned records straight through
//! rskafka (independent of the bus's producer), a shared log of what every consumer handled, the
//! per-key order check, and the Python peer consumer (confluent-kafka, librdkafka).
//!
//! Records: key `k<i>` on partition `i % partitions`, value `<version>` (1, 2, 3, … per key).
//! A *round* produces the next version of every key.

#![allow(dead_code, unreachable_pub, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use bus_kafka::{EventBus, HandlerError, KafkaConfig, Message, SubscribeOptions, Subscription};
use rskafka::client::partition::{Compression, UnknownTopicHandling};
use rskafka::client::{Client, ClientBuilder};

/// The deadline for anything the group does (the broker holds a new group's first JoinGroup
/// for about 3 s; rebalances take a few heartbeats).
pub const DEADLINE: Duration = Duration::from_secs(60);

/// A configuration with quick heartbeats (rebalances are noticed within half a second).
pub fn config() -> KafkaConfig {
    config_at(&bus_tests::bootstrap())
}

/// [`config`] for the broker at `bootstrap`.
pub fn config_at(bootstrap: &str) -> KafkaConfig {
    bus_tests::log_to_test_output();
    let mut config = KafkaConfig::new(bootstrap);
    config.consumer.heartbeat_interval = Duration::from_millis(500);
    config.consumer.session_timeout = Duration::from_secs(10);
    config
}

/// [`config`] offering `assignors` (the first preferred).
pub fn config_with(assignors: &[&str]) -> KafkaConfig {
    let mut config = config();
    config.consumer.assignors = assignors.iter().map(|a| (*a).to_owned()).collect();
    config
}

/// Subscription options for the tests: frequent commits, a bounded rebalance.
pub fn options(group: &str) -> SubscribeOptions {
    SubscribeOptions::new(group)
        .with_commit_interval(Duration::from_millis(200))
        .with_rebalance_timeout(Duration::from_secs(20))
}

#[allow(unused_imports)] // each test file uses a different part
pub use bus_tests::{peer_python, wait_for, workspace};

/// Produces keyed, versioned records through rskafka.
pub struct Source {
    client: Client,
    pub topic: String,
    pub partitions: i32,
    pub keys: usize,
    /// The last version produced per key.
    pub versions: Vec<u64>,
}

impl Source {
    /// A source for a new topic with `partitions` partitions and `keys` keys.
    pub async fn new(topic: &str, partitions: i32, keys: usize) -> Source {
        Source::at(&bus_tests::bootstrap(), topic, partitions, keys).await
    }

    /// [`Source::new`] on the broker at `bootstrap`.
    pub async fn at(bootstrap: &str, topic: &str, partitions: i32, keys: usize) -> Source {
        let admin = bus_kafka::admin::connect(KafkaConfig::new(bootstrap)).await.unwrap();
        admin.ensure_topic(topic, partitions).await.unwrap();
        let client = ClientBuilder::new(bootstrap.split(',').map(str::to_owned).collect())
            .backoff_config(rskafka::BackoffConfig {
                deadline: Some(Duration::from_secs(5)),
                ..rskafka::BackoffConfig::default()
            })
            .build()
            .await
            .unwrap();
        Source { client, topic: topic.to_owned(), partitions, keys, versions: vec![0; keys] }
    }

    /// The partition of key `i`.
    pub fn partition_of(&self, key: usize) -> i32 {
        i32::try_from(key).unwrap() % self.partitions
    }

    /// Produces `rounds` rounds (each: the next version of every key); returns the last round's
    /// version.
    pub async fn rounds(&mut self, rounds: u64) -> u64 {
        let mut per_partition: BTreeMap<i32, Vec<rskafka::record::Record>> = BTreeMap::new();
        for _ in 0..rounds {
            for key in 0..self.keys {
                self.versions[key] += 1;
                let record = rskafka::record::Record {
                    key: Some(format!("k{key}").into_bytes()),
                    value: Some(self.versions[key].to_string().into_bytes()),
                    headers: BTreeMap::new(),
                    timestamp: chrono::Utc::now(),
                };
                per_partition.entry(self.partition_of(key)).or_default().push(record);
            }
        }
        for (partition, records) in per_partition {
            for chunk in records.chunks(500) {
                self.produce(partition, chunk).await;
            }
        }
        self.versions.iter().copied().max().unwrap_or(0)
    }

    /// Produces `records` to `partition`, retrying (a broker restarting) up to [`DEADLINE`].
    async fn produce(&self, partition: i32, records: &[rskafka::record::Record]) {
        let deadline = tokio::time::Instant::now() + DEADLINE;
        loop {
            let client = self
                .client
                .partition_client(self.topic.as_str(), partition, UnknownTopicHandling::Retry)
                .await;
            let attempt = match client {
                Ok(client) => client
                    .produce(records.to_vec(), Compression::NoCompression)
                    .await
                    .map(drop)
                    .map_err(|e| e.to_string()),
                Err(e) => Err(e.to_string()),
            };
            match attempt {
                Ok(()) => return,
                Err(error) => {
                    assert!(
                        tokio::time::Instant::now() < deadline,
                        "cannot produce to {}-{partition}: {error}",
                        self.topic
                    );
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
    }

    /// The records produced so far: (key, version) pairs.
    pub fn produced(&self) -> BTreeSet<(String, u64)> {
        let mut all = BTreeSet::new();
        for (key, &last) in self.versions.iter().enumerate() {
            for v in 1..=last {
                all.insert((format!("k{key}"), v));
            }
        }
        all
    }
}

/// One handled record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Handled {
    pub consumer: String,
    pub partition: i32,
    pub offset: i64,
    pub key: String,
    pub version: u64,
}

/// What every consumer handled, in one global order (handlers append under one lock).
#[derive(Debug, Clone, Default)]
pub struct Log(Arc<std::sync::Mutex<Vec<Handled>>>);

impl Log {
    pub fn push(&self, handled: Handled) {
        self.0.lock().unwrap().push(handled);
    }

    pub fn snapshot(&self) -> Vec<Handled> {
        self.0.lock().unwrap().clone()
    }

    pub fn len(&self) -> usize {
        self.0.lock().unwrap().len()
    }

    /// The distinct (key, version) pairs handled.
    pub fn distinct(&self) -> BTreeSet<(String, u64)> {
        self.0.lock().unwrap().iter().map(|h| (h.key.clone(), h.version)).collect()
    }

    /// Whether every version of round `version` (every key) was handled.
    pub fn has_round(&self, keys: usize, version: u64) -> bool {
        let log = self.0.lock().unwrap();
        let seen: BTreeSet<&str> =
            log.iter().filter(|h| h.version == version).map(|h| h.key.as_str()).collect();
        seen.len() == keys
    }

    /// For round `version`: partition -> the consumers that handled its records.
    pub fn owners_in_round(&self, version: u64) -> BTreeMap<i32, BTreeSet<String>> {
        let log = self.0.lock().unwrap();
        let mut owners: BTreeMap<i32, BTreeSet<String>> = BTreeMap::new();
        for h in log.iter().filter(|h| h.version == version) {
            owners.entry(h.partition).or_default().insert(h.consumer.clone());
        }
        owners
    }
}

/// The handler of consumer `name`: logs the record, then takes `work` (so that handlers are in
/// flight when partitions are revoked).
pub fn handler(
    log: &Log,
    name: &str,
    work: Duration,
) -> impl Fn(Message) -> std::pin::Pin<Box<dyn Future<Output = Result<(), HandlerError>> + Send>>
+ Send
+ Sync
+ 'static {
    let log = log.clone();
    let name = name.to_owned();
    move |message: Message| {
        let log = log.clone();
        let name = name.clone();
        Box::pin(async move {
            let key = message.key.as_ref().map(|k| String::from_utf8_lossy(k).into_owned());
            let version = std::str::from_utf8(message.payload())
                .ok()
                .and_then(|v| v.parse::<u64>().ok())
                .expect("values are versions");
            log.push(Handled {
                consumer: name,
                partition: message.partition,
                offset: message.offset,
                key: key.expect("records are keyed"),
                version,
            });
            if !work.is_zero() {
                tokio::time::sleep(work).await;
            }
            Ok(())
        })
    }
}

/// Subscribes consumer `name` on `bus`.
pub async fn subscribe(
    bus: &EventBus,
    topic: &str,
    group: &str,
    log: &Log,
    name: &str,
    work: Duration,
) -> Subscription {
    bus.subscribe(topic, options(group), handler(log, name, work)).await.unwrap()
}

/// The per-key order check for at-least-once delivery across rebalances.
///
/// For each key, take the versions in the global order they were handled, `v1, v2, …`. The
/// sequence must start at 1 and every step must be `v(j) <= v(j-1) + 1`: either the next
/// version, or a rewind to an earlier one (a redelivery of a partition's uncommitted tail after
/// it changed hands). Hence no version is ever handled before all earlier versions of its key
/// were handled at least once (no reordering, no gap), and a redelivered run replays
/// consecutive versions. Every version produced must appear (no loss).
///
/// Returns (duplicates, rewinds) over all keys.
pub fn check_order(log: &[Handled], produced: &BTreeSet<(String, u64)>) -> (usize, usize) {
    let mut per_key: BTreeMap<&str, Vec<&Handled>> = BTreeMap::new();
    for h in log {
        per_key.entry(h.key.as_str()).or_default().push(h);
    }
    let mut duplicates = 0;
    let mut rewinds = 0;
    for (key, handled) in &per_key {
        let mut previous = 0u64;
        let mut seen = BTreeSet::new();
        for (j, h) in handled.iter().enumerate() {
            assert!(
                h.version <= previous + 1,
                "key {key}: version {} handled (by {}, partition {} offset {}) right after version \
                 {previous}: a gap, so per-key order is broken; handling sequence so far: {:?}",
                h.version,
                h.consumer,
                h.partition,
                h.offset,
                handled[..=j].iter().map(|h| (h.version, h.consumer.as_str())).collect::<Vec<_>>()
            );
            if h.version <= previous {
                rewinds += 1;
            }
            if !seen.insert(h.version) {
                duplicates += 1;
            }
            previous = h.version;
        }
    }
    let handled: BTreeSet<(String, u64)> = log.iter().map(|h| (h.key.clone(), h.version)).collect();
    let lost: Vec<&(String, u64)> = produced.difference(&handled).take(20).collect();
    assert!(lost.is_empty(), "records never handled (first 20): {lost:?}");
    (duplicates, rewinds)
}

/// Every record handled more than once, with who handled it where each time, in handling
/// order: `key vN: [(consumer, partition, offset), ...]` (the first 10), for failure messages.
#[allow(dead_code)] // each test file uses a different part
pub fn describe_duplicates(log: &[Handled]) -> String {
    let mut handlings: BTreeMap<(&str, u64), Vec<&Handled>> = BTreeMap::new();
    for h in log {
        handlings.entry((&h.key, h.version)).or_default().push(h);
    }
    handlings
        .iter()
        .filter(|(_, seen)| seen.len() > 1)
        .take(10)
        .map(|((key, version), seen)| {
            let seen: Vec<_> = seen.iter().map(|h| (&h.consumer, h.partition, h.offset)).collect();
            format!("{key} v{version}: {seen:?}")
        })
        .collect::<Vec<_>>()
        .join("; ")
}

/// Runs `group_peer.py` with `args`, returning its JSON output.
pub fn peer(args: &[&str]) -> serde_json::Value {
    bus_tests::run_peer("group_peer.py", args, "")
}

/// The group's committed offsets as the peer reads them (partition -> offset).
pub fn committed(topic: &str, group: &str, partitions: i32) -> BTreeMap<i32, Option<i64>> {
    let value = peer(&[
        "committed",
        "--bootstrap",
        &bus_tests::bootstrap(),
        "--topic",
        topic,
        "--group",
        group,
        "--partitions",
        &partitions.to_string(),
    ]);
    value["committed"]
        .as_object()
        .unwrap()
        .iter()
        .map(|(p, o)| (p.parse().unwrap(), o.as_i64()))
        .collect()
}

/// A librdkafka group consumer running in a child process (see `group_peer.py consume`).
pub struct PeerConsumer {
    child: Option<Child>,
    out: PathBuf,
    pub name: String,
}

/// One line of the peer consumer's output.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PeerEvent {
    Assign(Vec<i32>),
    Revoke(Vec<i32>),
    Record { partition: i32, offset: i64, key: String, version: u64 },
    Error(String),
    Closed,
}

impl PeerConsumer {
    /// Starts a peer consumer named `name` in `group`, offering `assignor`
    /// (librdkafka's `partition.assignment.strategy`).
    pub fn start(topic: &str, group: &str, name: &str, assignor: &str) -> PeerConsumer {
        PeerConsumer::start_static(topic, group, name, assignor, None)
    }

    /// [`PeerConsumer::start`], a static member with `instance_id` when one is given
    /// (librdkafka's `group.instance.id`).
    pub fn start_static(
        topic: &str,
        group: &str,
        name: &str,
        assignor: &str,
        instance_id: Option<&str>,
    ) -> PeerConsumer {
        let out =
            std::env::temp_dir().join(bus_tests::unique("group-peer")).with_extension("jsonl");
        std::fs::write(&out, b"").unwrap();
        let mut command = Command::new(peer_python());
        command
            .arg(workspace().join("tests").join("peer").join("group_peer.py"))
            .args(["consume", "--bootstrap", &bus_tests::bootstrap(), "--topic", topic])
            .args(["--group", group, "--assignor", assignor, "--out"])
            .arg(&out);
        if let Some(instance_id) = instance_id {
            command.args(["--group-instance-id", instance_id]);
        }
        let child = command
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start the peer consumer: {e}"));
        PeerConsumer { child: Some(child), out, name: name.to_owned() }
    }

    /// Everything it reported so far.
    pub fn events(&self) -> Vec<PeerEvent> {
        let text = std::fs::read_to_string(&self.out).unwrap_or_default();
        let mut events = Vec::new();
        for line in text.lines() {
            // A line being written may be incomplete: only whole lines parse.
            let Ok(value) = serde_json::from_str::<serde_json::Value>(line) else {
                continue;
            };
            let partitions = |v: &serde_json::Value| -> Vec<i32> {
                v["partitions"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|p| p.as_i64().unwrap() as i32)
                    .collect()
            };
            events.push(match value["event"].as_str().unwrap() {
                "assign" => PeerEvent::Assign(partitions(&value)),
                "revoke" => PeerEvent::Revoke(partitions(&value)),
                "record" => PeerEvent::Record {
                    partition: value["partition"].as_i64().unwrap() as i32,
                    offset: value["offset"].as_i64().unwrap(),
                    key: value["key"].as_str().unwrap().to_owned(),
                    version: value["value"].as_str().unwrap().parse().unwrap(),
                },
                "closed" => PeerEvent::Closed,
                _ => PeerEvent::Error(value["error"].to_string()),
            });
        }
        events
    }

    /// The partitions it was given and those it gave up, summed over its callbacks.
    pub fn assigned_and_revoked(&self) -> (usize, usize) {
        let mut totals = (0, 0);
        for event in self.events() {
            match event {
                PeerEvent::Assign(p) => totals.0 += p.len(),
                PeerEvent::Revoke(p) => totals.1 += p.len(),
                _ => {}
            }
        }
        totals
    }

    /// Copies the records it handled since `from` (an index into its events) into `log`;
    /// returns the new index.
    pub fn drain_into(&self, log: &Log, from: usize) -> usize {
        let events = self.events();
        for event in events.iter().skip(from) {
            if let PeerEvent::Record { partition, offset, key, version } = event {
                log.push(Handled {
                    consumer: self.name.clone(),
                    partition: *partition,
                    offset: *offset,
                    key: key.clone(),
                    version: *version,
                });
            }
        }
        events.len()
    }

    /// Closes its stdin: it commits, leaves the group and exits. Waits for the exit.
    pub async fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            drop(child.stdin.take());
            let deadline = tokio::time::Instant::now() + DEADLINE;
            loop {
                if child.try_wait().unwrap().is_some() {
                    break;
                }
                assert!(tokio::time::Instant::now() < deadline, "the peer consumer did not exit");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

impl Drop for PeerConsumer {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        let _ = std::fs::remove_file(&self.out);
    }
}

/// Which partitions each consumer handled, from a round's owners per partition.
pub fn split_of(owners: &BTreeMap<i32, BTreeSet<String>>) -> BTreeMap<String, BTreeSet<i32>> {
    let mut split: BTreeMap<String, BTreeSet<i32>> = BTreeMap::new();
    for (partition, consumers) in owners {
        for consumer in consumers {
            split.entry(consumer.clone()).or_default().insert(*partition);
        }
    }
    split
}

/// A round's split when each of the `partitions` was handled by exactly one consumer, the
/// consumers are exactly `expected`, and each holds as many partitions as the others.
pub fn even_split(
    owners: &BTreeMap<i32, BTreeSet<String>>,
    partitions: i32,
    expected: &BTreeSet<String>,
) -> Option<BTreeMap<String, BTreeSet<i32>>> {
    let single = owners.len() == partitions as usize && owners.values().all(|o| o.len() == 1);
    let split = split_of(owners);
    let even = split.values().all(|p| p.len() * expected.len() == partitions as usize);
    (single && even && split.keys().cloned().collect::<BTreeSet<_>>() == *expected).then_some(split)
}

/// Writes `text` to stderr for the test's log.
pub fn note(text: &str) {
    let _ = writeln!(std::io::stderr(), "{text}");
}
