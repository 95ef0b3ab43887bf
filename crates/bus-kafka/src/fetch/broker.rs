//! One fetch session per broker: the connection every partition reader of a bus shares with
//! the broker that leads its partition, and the requests that carry, in one Fetch (and one
//! ListOffsets), every partition whose reader is waiting at the moment.
//!
//! Owns: [`Fetchers`] (a bus's sessions by broker node id, each started on first use as a
//! supervised child `broker-<node id>` of the backend's `bus/kafka/fetch` scope), the session
//! task, the jobs readers submit ([`Job`]: [`FetchJob`], [`ListJob`]) and what they get back
//! ([`FetchPart`], [`ListPart`]), and one round of each request on a connection
//! ([`fetch_round`], [`list_round`]), which a reader without a session (administration without
//! a bus, see `reader`) runs on a connection of its own.
//!
//! Invariants:
//! - One fetch connection per broker and bus: the session owns it, no reader of the bus holds
//!   one. A session stays, idle, after the last reader of its broker goes, until the bus's
//!   supervisor shuts down (its scope is cancelled); a connection idle for
//!   [`IDLE_REOPEN`] is opened afresh before it is used (the broker may have closed it).
//! - A round serves every job waiting when the session is free: the ListOffsets jobs in one
//!   request, then the Fetch jobs in one Fetch request. The readers the last round answered
//!   are let to submit again first (at most [`RESUBMIT_LINGER`] for those still missing), so
//!   that a busy partition is in the next long poll. A partition appears once per
//!   request: a second job for it (two groups reading it, or a job left by a dropped
//!   `next_batch`) waits for the next round. A job whose reader stopped waiting (its receiver
//!   dropped) is discarded unsent, and an answer nobody waits for is dropped: a reader's
//!   future dropped at any point neither loses a record (the reader's position moves only when
//!   it returns a batch) nor disturbs the connection (only the session reads and writes it).
//! - Fairness: a broker fills a response in request order until its `max_bytes`, so a round
//!   asks first for the partitions that got records longest ago (never: first of all); a
//!   partition with records waits at most as many rounds as the broker has readers before it
//!   is served.
//! - A Fetch is sent whole (no KIP-227 incremental session: session id 0, epoch -1), with
//!   `max_bytes` the sum of what the readers asked (each at most `consumer.fetch_max_bytes`,
//!   room each reserved first), at most [`REQUEST_FETCH_BYTES`], each partition's
//!   `partition_max_bytes` what its reader asked, `max_wait` =
//!   `consumer.fetch_max_wait`, `min_bytes` 1 and `consumer.isolation_level`.
//! - Failures: a request that fails (connection, I/O, timeout, undecodable answer) fails every
//!   job in it with that error and the connection is dropped (the next request opens a new
//!   one; the readers look their leader up again); a top-level error code goes to every reader
//!   in the request and drops the connection too; a partition's error code
//!   (NOT_LEADER_OR_FOLLOWER, OFFSET_OUT_OF_RANGE…) goes to its reader alone and the
//!   connection stays. An answer that cannot be read (a protocol error: malformed, over its
//!   bound) may be one partition's doing: each partition of that request is then asked alone,
//!   in a request of its own, until it is answered, so a partition a broker answers
//!   unreadably fails alone and the others go back into the shared request after one answer.
//! - Every wait is bounded: opening by the connector's `request_timeout`, ListOffsets by
//!   `request_timeout`, Fetch by `request_timeout` + `consumer.fetch_max_wait`; a reader waits
//!   for its answer at most [`answer_timeout`] (a round before its own, and its own).
//! - Memory: the session reads each response into a buffer of its own (reused, `memory`'s
//!   [`Spares`]); the readers' reservations travel with their jobs and the response is charged
//!   to them by part once split (`memory`'s [`Charges`]), so each reader's budget stays true.
//! - Supervision: a session is a transient child (restarted after a panic, its job channel
//!   handed over with [`Handover`]; the jobs of the round it held are failed by their dropped
//!   replies); past its restart intensity the isolated `fetch` scope fails, which the backend's
//!   health reports, and the readers' jobs fail until the bus is shut down.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use bus_supervisor::{ChildSpec, Handover, Scope};
use bytes::Bytes;
use kafka_protocol::messages::fetch_request::{FetchPartition, FetchTopic};
use kafka_protocol::messages::list_offsets_request::{ListOffsetsPartition, ListOffsetsTopic};
use kafka_protocol::messages::{FetchRequest, ListOffsetsRequest, TopicName};
use parking_lot::Mutex;
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;

use super::memory::{Charges, Reserved, Spares};
use crate::client::KafkaClient;
use crate::config::IsolationLevel;
use crate::config::kafka::KafkaConfig;
use crate::connection::{Connection, RequestError};
use crate::leader::Broker;

/// Isolation levels as Kafka encodes them.
const READ_UNCOMMITTED: i8 = 0;
const READ_COMMITTED: i8 = 1;

/// A connection unused this long is opened afresh before its next request (brokers close idle
/// connections after `connections.max.idle.ms`, 10 minutes by default).
pub(crate) const IDLE_REOPEN: Duration = Duration::from_secs(60);

/// The longest a round waits for the readers answered by the previous round to submit again
/// (decoding their batch and handing it on takes them a moment): without them, the next round
/// would be a long poll of the others, and a busy partition would wait for it, up to
/// `consumer.fetch_max_wait`, before it is asked for again. A timed wait, not a scheduling
/// yield: a yielding task waits on its worker thread, which a handler blocking that thread
/// would hold, and every reader of the broker with it.
pub(crate) const RESUBMIT_LINGER: Duration = Duration::from_millis(10);

/// What a reader is answered: its part of the response (`None`: the answer does not name its
/// partition), or why the request failed.
pub(crate) type Answer<T> = Result<Option<T>, RequestError>;

/// A reader's partition in a Fetch answer.
#[derive(Debug)]
pub(crate) struct FetchPart {
    /// The broker that answered (`host:port`).
    pub(crate) broker: Arc<str>,
    /// The partition's error code (or the answer's, when it has one).
    pub(crate) error_code: i16,
    /// The partition's high watermark.
    pub(crate) high_watermark: i64,
    /// The aborted transactions: producer id and first offset.
    pub(crate) aborted: Vec<(i64, i64)>,
    /// The record batches (a slice of the shared response).
    pub(crate) records: Option<Bytes>,
}

/// A reader's partition in a ListOffsets answer.
#[derive(Debug, Clone, Copy)]
pub(crate) struct ListPart {
    /// The partition's error code.
    pub(crate) error_code: i16,
    /// The offset found.
    pub(crate) offset: i64,
}

/// A reader's request for its partition's records.
#[derive(Debug)]
pub(crate) struct FetchJob {
    pub(crate) topic: TopicName,
    pub(crate) partition: i32,
    /// The first offset wanted.
    pub(crate) offset: i64,
    /// `partition_max_bytes`.
    pub(crate) max_bytes: i32,
    /// What the reader reserved for its part of the response (`max_bytes` plus
    /// `FETCH_RESPONSE_SLACK`), charged by part once the response is split.
    pub(crate) reserved: Reserved,
    pub(crate) reply: oneshot::Sender<Answer<FetchPart>>,
}

/// A reader's request for an offset of its partition by time (`-2` earliest, `-1` latest).
#[derive(Debug)]
pub(crate) struct ListJob {
    pub(crate) topic: TopicName,
    pub(crate) partition: i32,
    pub(crate) timestamp: i64,
    pub(crate) reply: oneshot::Sender<Answer<ListPart>>,
}

/// What a reader submits to its leader's session.
#[derive(Debug)]
pub(crate) enum Job {
    Fetch(FetchJob),
    List(ListJob),
}

impl Job {
    /// Whether its reader stopped waiting.
    fn abandoned(&self) -> bool {
        match self {
            Job::Fetch(job) => job.reply.is_closed(),
            Job::List(job) => job.reply.is_closed(),
        }
    }

    /// The partition it is for, and whether it is a fetch.
    fn key(&self) -> (bool, &TopicName, i32) {
        match self {
            Job::Fetch(job) => (true, &job.topic, job.partition),
            Job::List(job) => (false, &job.topic, job.partition),
        }
    }
}

/// What one Fetch request asks for at most (Kafka's `fetch.max.bytes` default): the sum of
/// what its partitions' readers asked, when less.
const REQUEST_FETCH_BYTES: usize = 50 << 20;

/// How requests are made, from the configuration.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Plan {
    max_wait: Duration,
    isolation: i8,
    request_timeout: Duration,
}

impl Plan {
    pub(crate) fn new(config: &KafkaConfig) -> Plan {
        let consumer = &config.consumer;
        Plan {
            max_wait: consumer.fetch_max_wait,
            isolation: match consumer.isolation_level {
                IsolationLevel::ReadCommitted => READ_COMMITTED,
                IsolationLevel::ReadUncommitted => READ_UNCOMMITTED,
            },
            request_timeout: config.request_timeout,
        }
    }

    /// The bound of a Fetch exchange.
    fn fetch_timeout(&self) -> Duration {
        self.request_timeout.saturating_add(self.max_wait)
    }
}

/// The longest a reader waits for its answer from a session: opening the connection, the round
/// in flight when it submitted (a ListOffsets and a Fetch) and its own.
pub(crate) fn answer_timeout(config: &KafkaConfig) -> Duration {
    let plan = Plan::new(config);
    let round = plan.request_timeout.saturating_add(plan.fetch_timeout());
    plan.request_timeout.saturating_add(round).saturating_add(round)
}

/// The bus's fetch sessions, one per broker, started on first use.
#[derive(Debug)]
pub(crate) struct Fetchers {
    scope: Scope,
    client: Arc<KafkaClient>,
    sessions: Mutex<HashMap<i32, Entry>>,
}

/// A running session.
#[derive(Debug)]
struct Entry {
    address: Arc<str>,
    jobs: mpsc::UnboundedSender<Job>,
}

impl Fetchers {
    /// Sessions supervised under `scope` (the backend's `bus/kafka/fetch`, an isolated scope).
    pub(crate) fn new(scope: Scope, client: Arc<KafkaClient>) -> Fetchers {
        Fetchers { scope, client, sessions: Mutex::new(HashMap::new()) }
    }

    /// Why the sessions' scope failed (a session past its restart intensity), if it did.
    pub(crate) fn failure(&self) -> Option<bus_supervisor::Escalation> {
        self.scope.failure()
    }

    /// Hands `job` to the session of `broker`, starting it when there is none (or the one
    /// there ended, or the broker moved to another address).
    ///
    /// # Errors
    ///
    /// Why no session could take it (the bus is shutting down); the job's reply is dropped.
    pub(crate) fn submit(&self, broker: &Broker, job: Job) -> Result<(), String> {
        let mut sessions = self.sessions.lock();
        let job = match sessions.get(&broker.node) {
            Some(entry) if entry.address == broker.address => match entry.jobs.send(job) {
                Ok(()) => return Ok(()),
                Err(mpsc::error::SendError(job)) => job,
            },
            _ => job,
        };
        let (jobs, receiver) = mpsc::unbounded_channel();
        let session = Session {
            path: Arc::from(""),
            broker: broker.clone(),
            client: Arc::clone(&self.client),
            jobs: receiver,
            spares: Spares::default(),
            rounds: 0,
            fed: HashMap::new(),
            awaited: HashSet::new(),
            suspects: HashSet::new(),
        };
        let handover = Handover::new(session);
        let name = format!("broker-{}", broker.node);
        let monitor = self
            .scope
            .supervise(name, child_spec(), move |scope| run(scope, handover.clone()))
            .map_err(|e| format!("no fetch session for broker {broker}: {e}"))?;
        monitor.detach();
        jobs.send(job).map_err(|_| format!("the fetch session of broker {broker} stopped"))?;
        sessions.insert(broker.node, Entry { address: Arc::clone(&broker.address), jobs });
        Ok(())
    }
}

/// A session's supervision: restarted after a panic, at most 5 times in 30 s.
fn child_spec() -> ChildSpec {
    ChildSpec::transient()
        .intensity(5, Duration::from_secs(30))
        .backoff(Duration::from_millis(50), Duration::from_secs(2), 2.0)
        .shutdown_timeout(Duration::from_secs(1))
}

/// A session's state, handed from one incarnation to the next.
#[derive(Debug)]
struct Session {
    /// The incarnation's task path (fault points).
    path: Arc<str>,
    broker: Broker,
    client: Arc<KafkaClient>,
    jobs: mpsc::UnboundedReceiver<Job>,
    spares: Spares,
    /// Rounds served so far.
    rounds: u64,
    /// The last round in which each partition got records (for the order of the next).
    fed: HashMap<(TopicName, i32), u64>,
    /// The partitions answered by the last round that have not submitted again.
    awaited: HashSet<(TopicName, i32)>,
    /// Partitions asked alone: they were in a Fetch whose answer could not be read (a protocol
    /// error) and have not been answered alone since. One partition whose answer is malformed
    /// so fails alone; the others are cleared by their first answer.
    suspects: HashSet<(TopicName, i32)>,
}

/// One incarnation of a session: serves rounds until the scope is cancelled (the bus shuts
/// down) or every sender is gone.
async fn run(scope: Scope, handover: Handover<Session>) -> Result<(), String> {
    let mut held = handover.take();
    let Some(session) = held.get_mut() else {
        return Ok(());
    };
    session.path = Arc::from(scope.path());
    let token = scope.token();
    tokio::select! {
        biased;
        () = token.cancelled() => {}
        () = session.serve() => {}
    }
    Ok(())
}

impl Session {
    async fn serve(&mut self) {
        let mut connection: Option<(Connection, Instant)> = None;
        let mut waiting: VecDeque<Job> = VecDeque::new();
        loop {
            if waiting.is_empty() {
                match self.jobs.recv().await {
                    Some(job) => waiting.push_back(job),
                    None => return,
                }
            }
            while let Ok(job) = self.jobs.try_recv() {
                waiting.push_back(job);
            }
            if !self.linger(&mut waiting).await {
                return;
            }
            // A panic here fails the readers waiting (their replies are dropped); the next
            // incarnation takes the channel over.
            bus_core::fault::point(&self.path).await;
            waiting.retain(|job| !job.abandoned());
            let (lists, fetches) = take_round(&mut waiting);
            if lists.is_empty() && fetches.is_empty() {
                continue;
            }
            self.round(&mut connection, lists, fetches).await;
        }
    }

    /// Waits up to [`RESUBMIT_LINGER`] (at most `consumer.fetch_max_wait`) for the readers
    /// answered by the last round to submit again. Returns `false` when every sender is gone.
    async fn linger(&mut self, waiting: &mut VecDeque<Job>) -> bool {
        for job in waiting.iter() {
            if let (true, topic, partition) = job.key() {
                self.awaited.remove(&(topic.clone(), partition));
            }
        }
        let linger = RESUBMIT_LINGER.min(self.client.config().consumer.fetch_max_wait);
        let until = Instant::now() + linger;
        while !self.awaited.is_empty() {
            match tokio::time::timeout_at(until, self.jobs.recv()).await {
                Ok(Some(job)) => {
                    if let (true, topic, partition) = job.key() {
                        self.awaited.remove(&(topic.clone(), partition));
                    }
                    waiting.push_back(job);
                }
                Ok(None) => return false,
                Err(_) => break,
            }
        }
        self.awaited.clear();
        true
    }

    /// The session's connection, usable, opened afresh when there is none, the last one failed
    /// or it was idle for [`IDLE_REOPEN`].
    async fn connect<'c>(
        &self,
        connection: &'c mut Option<(Connection, Instant)>,
    ) -> Result<&'c mut (Connection, Instant), RequestError> {
        let reusable = connection
            .as_ref()
            .is_some_and(|(c, used)| c.is_usable() && used.elapsed() < IDLE_REOPEN);
        if !reusable {
            *connection = None;
            let opened = self.client.connector().open(&self.broker.address).await?;
            tracing::debug!(broker = %self.broker, "fetch session connected");
            *connection = Some((opened, Instant::now()));
        }
        connection.as_mut().ok_or_else(|| RequestError::Io {
            broker: self.broker.address.to_string(),
            api: "Fetch",
            reason: "no connection".into(),
        })
    }

    /// One round on the session's connection: the ListOffsets jobs in one request, then the
    /// Fetch jobs in one request, except the suspects (each alone, see [`Session::suspects`]).
    async fn round(
        &mut self,
        connection: &mut Option<(Connection, Instant)>,
        lists: Vec<ListJob>,
        fetches: Vec<FetchJob>,
    ) {
        let plan = Plan::new(self.client.config());
        if !lists.is_empty() {
            let listed = match self.connect(connection).await {
                Ok((open, _)) => list_round(open, lists, &plan).await,
                Err(error) => {
                    fail(lists, Vec::new(), &error);
                    Err(error)
                }
            };
            if let Err(error) = listed {
                *connection = None;
                fail(Vec::new(), fetches, &error);
                return;
            }
        }
        if fetches.is_empty() {
            return;
        }
        // The broker fills a response in request order until `max_bytes`: the partitions fed
        // longest ago go first, so that a busy partition cannot starve the others.
        self.rounds = self.rounds.saturating_add(1);
        let fed = &self.fed;
        let mut fetches = fetches;
        fetches.sort_by_key(|j| fed.get(&(j.topic.clone(), j.partition)).copied().unwrap_or(0));
        let (alone, together): (Vec<FetchJob>, Vec<FetchJob>) = fetches
            .into_iter()
            .partition(|j| self.suspects.contains(&(j.topic.clone(), j.partition)));
        let mut requests: VecDeque<Vec<FetchJob>> = alone.into_iter().map(|j| vec![j]).collect();
        if !together.is_empty() {
            requests.push_back(together);
        }
        while let Some(jobs) = requests.pop_front() {
            let keys: Vec<(TopicName, i32)> =
                jobs.iter().map(|j| (j.topic.clone(), j.partition)).collect();
            let fetched = match self.connect(connection).await {
                Ok((open, used)) => {
                    let fetched = fetch_round(open, jobs, &plan, &self.spares).await;
                    *used = Instant::now();
                    fetched
                }
                Err(error) => {
                    fail(Vec::new(), jobs, &error);
                    Err(error)
                }
            };
            match fetched {
                Ok(fetched) => {
                    if !fetched.keep {
                        *connection = None;
                    }
                    if let [key] = keys.as_slice() {
                        self.suspects.remove(key);
                    }
                    for key in fetched.fed {
                        self.fed.insert(key, self.rounds);
                    }
                    self.awaited.extend(fetched.answered);
                }
                Err(error) => {
                    *connection = None;
                    match error {
                        // An answer that cannot be read may be one partition's doing: each
                        // partition of it is asked alone until it is answered.
                        RequestError::Protocol { .. } if keys.len() > 1 => {
                            tracing::warn!(
                                broker = %self.broker, %error, partitions = keys.len(),
                                "a fetch answer cannot be read; its partitions are asked alone \
                                 until each is answered"
                            );
                            self.suspects.extend(keys);
                        }
                        RequestError::Protocol { .. } => {}
                        // The connection's trouble, not a partition's: the rest of the round
                        // fails alike.
                        _ => {
                            for jobs in requests.drain(..) {
                                fail(Vec::new(), jobs, &error);
                            }
                        }
                    }
                }
            }
        }
    }
}

/// The jobs of the next round: the first waiting job of each partition and kind; the others
/// stay waiting, in order.
fn take_round(waiting: &mut VecDeque<Job>) -> (Vec<ListJob>, Vec<FetchJob>) {
    let mut taken: HashSet<(bool, TopicName, i32)> = HashSet::new();
    let (mut lists, mut fetches) = (Vec::new(), Vec::new());
    let mut later = VecDeque::new();
    for job in waiting.drain(..) {
        let (fetch, topic, partition) = job.key();
        if !taken.insert((fetch, topic.clone(), partition)) {
            later.push_back(job);
            continue;
        }
        match job {
            Job::Fetch(job) => fetches.push(job),
            Job::List(job) => lists.push(job),
        }
    }
    *waiting = later;
    (lists, fetches)
}

/// Answers every job with `error`.
fn fail(lists: Vec<ListJob>, fetches: Vec<FetchJob>, error: &RequestError) {
    for job in lists {
        let _ = job.reply.send(Err(error.clone()));
    }
    for job in fetches {
        let _ = job.reply.send(Err(error.clone()));
    }
}

/// One ListOffsets for `jobs` (distinct partitions) on `connection`, each job answered.
///
/// # Errors
///
/// The request's failure (every job answered with it); the connection is then unusable.
pub(crate) async fn list_round(
    connection: &mut Connection,
    jobs: Vec<ListJob>,
    plan: &Plan,
) -> Result<(), RequestError> {
    let mut topics: Vec<ListOffsetsTopic> = Vec::new();
    for job in &jobs {
        let mut wanted = ListOffsetsPartition::default();
        wanted.partition_index = job.partition;
        wanted.current_leader_epoch = -1;
        wanted.timestamp = job.timestamp;
        match topics.iter_mut().find(|t| t.name == job.topic) {
            Some(topic) => topic.partitions.push(wanted),
            None => {
                let mut topic = ListOffsetsTopic::default();
                topic.name = job.topic.clone();
                topic.partitions = vec![wanted];
                topics.push(topic);
            }
        }
    }
    let mut request = ListOffsetsRequest::default();
    request.replica_id = (-1).into();
    request.isolation_level = plan.isolation;
    request.topics = topics;
    let sent = match connection.version::<ListOffsetsRequest>() {
        Ok(version) => connection.send(&request, version, plan.request_timeout).await,
        Err(e) => Err(e),
    };
    let response = match sent {
        Ok(response) => response,
        Err(error) => {
            fail(jobs, Vec::new(), &error);
            return Err(error);
        }
    };
    let mut parts: HashMap<(TopicName, i32), ListPart> = HashMap::new();
    for topic in response.topics {
        for p in topic.partitions {
            let part = ListPart { error_code: p.error_code, offset: p.offset };
            parts.insert((topic.name.clone(), p.partition_index), part);
        }
    }
    for job in jobs {
        let part = parts.get(&(job.topic.clone(), job.partition)).copied();
        let _ = job.reply.send(Ok(part));
    }
    Ok(())
}

/// What a Fetch round reports to its session.
#[derive(Debug)]
pub(crate) struct Fetched {
    /// Whether the connection can be used again (not after a top-level error code).
    pub(crate) keep: bool,
    /// The partitions that got records.
    pub(crate) fed: Vec<(TopicName, i32)>,
    /// The partitions whose readers were answered with their part (and may ask again at once).
    pub(crate) answered: Vec<(TopicName, i32)>,
}

/// One Fetch for `jobs` (distinct partitions, asked in this order, topics grouped in order of
/// their first partition) on `connection`, the response split and each job answered with its
/// partition's part.
///
/// # Errors
///
/// The request's failure (every job answered with it); the connection is then unusable.
pub(crate) async fn fetch_round(
    connection: &mut Connection,
    jobs: Vec<FetchJob>,
    plan: &Plan,
    spares: &Spares,
) -> Result<Fetched, RequestError> {
    let mut topics: Vec<FetchTopic> = Vec::new();
    let mut keys = Vec::with_capacity(jobs.len());
    let mut replies = Vec::with_capacity(jobs.len());
    let mut reservations = Vec::with_capacity(jobs.len());
    let mut asked: usize = 0;
    for job in jobs {
        let mut wanted = FetchPartition::default();
        wanted.partition = job.partition;
        wanted.current_leader_epoch = -1;
        wanted.fetch_offset = job.offset;
        wanted.last_fetched_epoch = -1;
        wanted.log_start_offset = -1;
        wanted.partition_max_bytes = job.max_bytes;
        asked = asked.saturating_add(usize::try_from(job.max_bytes).unwrap_or(0));
        match topics.iter_mut().find(|t| t.topic == job.topic) {
            Some(topic) => topic.partitions.push(wanted),
            None => {
                let mut topic = FetchTopic::default();
                topic.topic = job.topic.clone();
                topic.partitions = vec![wanted];
                topics.push(topic);
            }
        }
        keys.push((job.topic, job.partition));
        replies.push(job.reply);
        reservations.push(job.reserved);
    }
    let mut request = FetchRequest::default();
    request.replica_id = (-1).into();
    request.max_wait_ms = i32::try_from(plan.max_wait.as_millis()).unwrap_or(i32::MAX);
    request.min_bytes = 1;
    request.max_bytes = i32::try_from(asked.min(REQUEST_FETCH_BYTES)).unwrap_or(i32::MAX).max(1);
    request.isolation_level = plan.isolation;
    request.session_id = 0;
    request.session_epoch = -1;
    request.topics = topics;
    let charges = Charges::new(reservations);
    let sent = match connection.version::<FetchRequest>() {
        Ok(version) => {
            let held = charges.clone();
            let hold = move |body| spares.hold(body, held);
            connection.send_into(&request, version, plan.fetch_timeout(), spares.take(), hold).await
        }
        Err(e) => Err(e),
    };
    let (response, frame) = match sent {
        Ok(answer) => answer,
        Err(error) => {
            for reply in replies {
                let _ = reply.send(Err(error.clone()));
            }
            return Err(error);
        }
    };
    let broker: Arc<str> = Arc::from(connection.broker());
    let top = response.error_code;
    let mut parts: HashMap<(TopicName, i32), FetchPart> = HashMap::new();
    for topic in response.responses {
        for p in topic.partitions {
            let part = FetchPart {
                broker: Arc::clone(&broker),
                error_code: if top != 0 { top } else { p.error_code },
                high_watermark: p.high_watermark,
                aborted: p
                    .aborted_transactions
                    .iter()
                    .flatten()
                    .map(|t| (t.producer_id.0, t.first_offset))
                    .collect(),
                records: p.records,
            };
            parts.insert((topic.topic.clone(), p.partition_index), part);
        }
    }
    let mut answers: Vec<Option<FetchPart>> = keys
        .iter()
        .map(|key| {
            parts.remove(key).or_else(|| {
                (top != 0).then(|| FetchPart {
                    broker: Arc::clone(&broker),
                    error_code: top,
                    high_watermark: -1,
                    aborted: Vec::new(),
                    records: None,
                })
            })
        })
        .collect();
    let sizes: Vec<usize> = answers
        .iter()
        .map(|a| a.as_ref().and_then(|p| p.records.as_ref()).map_or(0, Bytes::len))
        .collect();
    let uncovered = charges.settle(frame.len(), &sizes);
    if uncovered > 0 {
        tracing::warn!(
            %broker, bytes = frame.len(), uncovered,
            "a fetch response is larger than its readers reserved"
        );
    }
    drop(parts);
    drop(frame);
    let fed =
        keys.iter().zip(&sizes).filter(|(_, size)| **size > 0).map(|(k, _)| k.clone()).collect();
    let answered = keys
        .into_iter()
        .zip(&answers)
        .filter(|(_, answer)| answer.as_ref().is_some_and(|p| p.error_code == 0))
        .map(|(k, _)| k)
        .collect();
    for (reply, answer) in replies.into_iter().zip(answers.drain(..)) {
        let _ = reply.send(Ok(answer));
    }
    Ok(Fetched { keep: top == 0, fed, answered })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

    use kafka_protocol::protocol::StrBytes;

    use super::*;
    use crate::fetch::memory::Budget;

    fn topic(name: &str) -> TopicName {
        TopicName(StrBytes::from_string(name.to_owned()))
    }

    async fn fetch(name: &str, partition: i32) -> (Job, oneshot::Receiver<Answer<FetchPart>>) {
        let (reply, answer) = oneshot::channel();
        let reserved = Budget::new(100).reserve(10).await.unwrap();
        let job =
            FetchJob { topic: topic(name), partition, offset: 0, max_bytes: 10, reserved, reply };
        (Job::Fetch(job), answer)
    }

    #[tokio::test]
    async fn a_round_takes_each_partition_once_and_keeps_the_rest_in_order() {
        let (a0, _r1) = fetch("a", 0).await;
        let (a0_again, _r2) = fetch("a", 0).await;
        let (a1, _r3) = fetch("a", 1).await;
        let (reply, _r4) = oneshot::channel();
        let list = Job::List(ListJob { topic: topic("a"), partition: 0, timestamp: -1, reply });
        let mut waiting = VecDeque::from([a0, a0_again, a1, list]);
        let (lists, fetches) = take_round(&mut waiting);
        assert_eq!(lists.len(), 1, "a ListOffsets job of a fetched partition is taken");
        let taken: Vec<i32> = fetches.iter().map(|j| j.partition).collect();
        assert_eq!(taken, [0, 1]);
        assert_eq!(waiting.len(), 1, "the second job of partition 0 waits");
        let (lists, fetches) = take_round(&mut waiting);
        assert!(lists.is_empty());
        assert_eq!(fetches.len(), 1);
        assert!(waiting.is_empty());
    }

    #[tokio::test]
    async fn an_abandoned_job_is_recognised() {
        let (job, answer) = fetch("a", 0).await;
        assert!(!job.abandoned());
        drop(answer);
        assert!(job.abandoned());
    }
}
