//! The produce plane's link to one broker: one connection per broker, shared by the loops of
//! every partition the broker leads, each Produce request carrying a batch of every partition
//! that has one waiting (as librdkafka, the Java client and franz-go send them).
//!
//! Owns: [`Links`] (the producer's links, one per broker node, started on first use), the link
//! task `bus/kafka/producer/broker-<node>` with its connection (a [`Pipeline`]), the
//! submissions waiting to be sent and the requests in flight, and [`Submission`]/[`Answer`]
//! (what a partition loop hands a link and gets back).
//!
//! Invariants:
//! - A link sends a partition's submissions in the order they came, at most one per request
//!   (Kafka takes one batch per partition per Produce request): a partition's second batch
//!   waits for the next request. Requests are written in order on the one connection and
//!   answered in that order (Kafka answers a connection's requests in order), so a
//!   partition's batches reach the broker in the order its loop submitted them. The sequence
//!   numbers, the partition's own window and what a failure means for its batches stay with
//!   the partition loop (`partition`).
//! - At most `producer.max_in_flight` requests are in flight on the connection (Kafka's
//!   `max.in.flight.requests.per.connection`); while the window is full, submissions gather
//!   and the next request carries every one waiting (at most [`REQUEST_BYTES`] of batches, a
//!   lone batch whatever its size).
//! - Every submission is answered exactly once, or its answer's channel is dropped (the loop
//!   sees the link gone): its partition's part of the response, or the request's failure. A
//!   failed connection (opening, writing, reading, a response not due within
//!   `request_timeout` of its write) fails everything in flight on it and everything waiting,
//!   and is dropped; the next submission opens a new one. Partition loops retry on their own
//!   terms (backoff, a fresh leader lookup).
//! - A submission whose loop stopped waiting for it (its answer's receiver dropped: the loop
//!   gave up what it had in flight) is not sent if it has not been yet.
//! - Every wait is bounded: opening the connection and each write by `request_timeout`, each
//!   answer by `request_timeout` from its write.
//! - The link ends when the producer's scope is cancelled; after a panic the next incarnation
//!   takes over its channel and fails what the panicking one held (the loops send it again).

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use bus_supervisor::{ChildSpec, Scope};
use bytes::Bytes;
use kafka_protocol::messages::produce_request::{PartitionProduceData, TopicProduceData};
use kafka_protocol::messages::produce_response::PartitionProduceResponse;
use kafka_protocol::messages::{ProduceRequest, ProduceResponse, TopicName};
use parking_lot::Mutex;
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;

use super::Shared;
use crate::connection::{Pipeline, RequestError};
use crate::leader::Broker;

/// The batches one request carries at most (a lone batch is sent whatever its size): well
/// under the broker's `socket.request.max.bytes` (100 MiB by default).
pub(super) const REQUEST_BYTES: usize = 16 << 20;

/// Submissions taken from the channel at a time.
const RECV_CHUNK: usize = 256;

/// What a link answers a submission: its partition's part of the Produce response, or why the
/// request failed.
pub(super) type Answer = Result<PartitionProduceResponse, RequestError>;

/// One partition's batch, handed to its leader's link.
#[derive(Debug)]
pub(super) struct Submission {
    /// The topic, as the protocol encodes it.
    pub(super) topic: TopicName,
    /// The partition.
    pub(super) partition: i32,
    /// The encoded record batch.
    pub(super) batch: Bytes,
    /// Where the answer goes.
    pub(super) answer: oneshot::Sender<Answer>,
}

/// The sending side of one broker's link.
#[derive(Debug, Clone)]
pub(super) struct Link {
    broker: Broker,
    tx: mpsc::UnboundedSender<Submission>,
}

impl Link {
    /// The broker it talks to.
    pub(super) fn broker(&self) -> &Broker {
        &self.broker
    }

    /// Whether the link still takes submissions (its task has not ended).
    pub(super) fn is_open(&self) -> bool {
        !self.tx.is_closed()
    }

    /// Hands `batch` of `topic`/`partition` to the link: the answer comes on the receiver.
    ///
    /// # Errors
    ///
    /// The submission back when the link has ended.
    pub(super) fn submit(
        &self,
        topic: &TopicName,
        partition: i32,
        batch: Bytes,
    ) -> Result<oneshot::Receiver<Answer>, ()> {
        let (answer, receiver) = oneshot::channel();
        let submission = Submission { topic: topic.clone(), partition, batch, answer };
        self.tx.send(submission).map_err(|_| ())?;
        Ok(receiver)
    }
}

/// The producer's links, one per broker node.
#[derive(Debug, Default)]
pub(super) struct Links {
    links: Mutex<HashMap<i32, Link>>,
}

impl Links {
    /// The link to `broker`, started in the producer's scope on first use (or when the one
    /// before ended, or the node's address changed).
    ///
    /// # Errors
    ///
    /// The supervisor's refusal (the producer's scope is shutting down), as text.
    pub(super) fn get(&self, shared: &Arc<Shared>, broker: &Broker) -> Result<Link, String> {
        let mut links = self.links.lock();
        if let Some(link) = links.get(&broker.node)
            && link.is_open()
            && link.broker == *broker
        {
            return Ok(link.clone());
        }
        let (tx, rx) = mpsc::unbounded_channel();
        let handover = bus_supervisor::Handover::new(Sender::new(Arc::clone(shared), broker, rx));
        let name = format!("broker-{}", broker.node);
        let monitor = shared
            .scope
            .supervise(name, child_spec(), move |scope| run(scope, handover.clone()))
            .map_err(|e| format!("cannot start the link to broker {broker}: {e}"))?;
        monitor.detach();
        let link = Link { broker: broker.clone(), tx };
        links.insert(broker.node, link.clone());
        Ok(link)
    }
}

/// How a link is supervised: restarted after a panic (a normal end is the producer's scope
/// cancelled), at most 3 restarts in 30 s, 50 ms doubling to 2 s between them; a fourth
/// escalates and fails the producer.
fn child_spec() -> ChildSpec {
    ChildSpec::transient()
        .intensity(3, Duration::from_secs(30))
        .backoff(Duration::from_millis(50), Duration::from_secs(2), 2.0)
        .shutdown_timeout(Duration::from_secs(1))
}

/// A request written and not yet answered: its submissions' partitions and answer channels.
#[derive(Debug)]
struct InFlight {
    /// When its answer is due.
    due: Instant,
    parts: Vec<(TopicName, i32, oneshot::Sender<Answer>)>,
}

/// What a link's incarnations hand over: its channel, the connection, what waits and what is
/// in flight.
struct Sender {
    shared: Arc<Shared>,
    address: Arc<str>,
    rx: mpsc::UnboundedReceiver<Submission>,
    pipe: Option<Pipeline>,
    waiting: VecDeque<Submission>,
    in_flight: VecDeque<InFlight>,
    window: usize,
    /// Every sender is gone: nothing more will come.
    closed: bool,
}

impl Sender {
    fn new(shared: Arc<Shared>, broker: &Broker, rx: mpsc::UnboundedReceiver<Submission>) -> Self {
        let window = shared.config.producer.max_in_flight.max(1);
        Sender {
            shared,
            address: Arc::clone(&broker.address),
            rx,
            pipe: None,
            waiting: VecDeque::new(),
            in_flight: VecDeque::new(),
            window,
            closed: false,
        }
    }

    /// Fails everything in flight and waiting with `error` and drops the connection.
    fn fail_all(&mut self, error: &RequestError) {
        self.pipe = None;
        for request in self.in_flight.drain(..) {
            for (_, _, answer) in request.parts {
                let _ = answer.send(Err(error.clone()));
            }
        }
        for submission in self.waiting.drain(..) {
            let _ = submission.answer.send(Err(error.clone()));
        }
    }

    /// Takes what the channel holds now (up to [`RECV_CHUNK`]) into `waiting`; notes when it
    /// has closed.
    fn take_waiting(&mut self) {
        for _ in 0..RECV_CHUNK {
            match self.rx.try_recv() {
                Ok(submission) => self.waiting.push_back(submission),
                Err(mpsc::error::TryRecvError::Empty) => return,
                Err(mpsc::error::TryRecvError::Disconnected) => {
                    self.closed = true;
                    return;
                }
            }
        }
    }

    /// The next request: the waiting submissions in order, one per partition, at most
    /// [`REQUEST_BYTES`] of batches; those abandoned by their loops are dropped.
    fn next_request(&mut self) -> Vec<Submission> {
        self.waiting.retain(|s| !s.answer.is_closed());
        let mut taken = Vec::new();
        let mut seen: HashSet<(TopicName, i32)> = HashSet::new();
        let mut bytes = 0usize;
        let mut left = VecDeque::with_capacity(self.waiting.len());
        while let Some(submission) = self.waiting.pop_front() {
            let key = (submission.topic.clone(), submission.partition);
            let size = submission.batch.len();
            let fits = taken.is_empty() || bytes.saturating_add(size) <= REQUEST_BYTES;
            if fits && !seen.contains(&key) {
                bytes = bytes.saturating_add(size);
                seen.insert(key);
                taken.push(submission);
            } else {
                // Not this time: its partition has a batch in this request, or it is full. A
                // partition's later submissions stay behind its first (order kept).
                seen.insert(key);
                left.push_back(submission);
            }
        }
        self.waiting = left;
        taken
    }

    /// Opens the connection when there is none, within `request_timeout`.
    async fn connect(&mut self) -> Result<(), RequestError> {
        if self.pipe.as_ref().is_some_and(Pipeline::is_usable) {
            return Ok(());
        }
        self.pipe = None;
        let connection = self.shared.client.connector().open(&self.address).await?;
        self.pipe = Some(connection.into_pipeline());
        Ok(())
    }

    /// Sends the waiting submissions while the window has room.
    async fn send_waiting(&mut self) {
        while self.in_flight.len() < self.window && !self.waiting.is_empty() {
            if let Err(error) = self.connect().await {
                self.fail_all(&error);
                return;
            }
            let parts = self.next_request();
            if parts.is_empty() {
                return;
            }
            let request_timeout = self.shared.config.request_timeout;
            let request = request(&parts, request_timeout);
            let Some(pipe) = self.pipe.as_mut() else { return };
            let written = match pipe.version::<ProduceRequest>() {
                Ok(version) => pipe.send(&request, version, request_timeout).await,
                Err(error) => Err(error),
            };
            let parts: Vec<_> =
                parts.into_iter().map(|s| (s.topic, s.partition, s.answer)).collect();
            match written {
                Ok(()) => {
                    let due = Instant::now() + request_timeout;
                    self.in_flight.push_back(InFlight { due, parts });
                }
                Err(error) => {
                    // Nothing was written (cannot be framed or encoded) or the connection is
                    // broken: this request's submissions fail with it, and a broken connection
                    // fails the rest.
                    for (_, _, answer) in parts {
                        let _ = answer.send(Err(error.clone()));
                    }
                    let written_nothing = matches!(
                        error,
                        RequestError::TooLarge { .. }
                            | RequestError::Encode { .. }
                            | RequestError::Unsupported { .. }
                    );
                    if !written_nothing {
                        self.fail_all(&error);
                    }
                }
            }
        }
    }

    /// Answers the oldest request's submissions from `response`.
    fn on_response(&mut self, response: ProduceResponse) {
        let Some(request) = self.in_flight.pop_front() else { return };
        let mut answers: HashMap<(TopicName, i32), PartitionProduceResponse> = HashMap::new();
        for topic in response.responses {
            for part in topic.partition_responses {
                answers.insert((topic.name.clone(), part.index), part);
            }
        }
        for (topic, partition, answer) in request.parts {
            let key = (topic, partition);
            let part = answers.remove(&key).ok_or_else(|| RequestError::Protocol {
                broker: self.address.to_string(),
                api: "Produce",
                version: -1,
                reason: format!(
                    "the response names no partition {partition} of topic `{}`",
                    key.0.0.as_str()
                ),
            });
            let _ = answer.send(part);
        }
    }

    async fn run(&mut self, token: &tokio_util::sync::CancellationToken) {
        loop {
            self.take_waiting();
            if self.closed && self.waiting.is_empty() && self.in_flight.is_empty() {
                return;
            }
            self.send_waiting().await;
            let due = self.in_flight.front().map(|r| r.due);
            let receiving = due.is_some() && self.pipe.is_some();
            let open = !self.closed;
            let Sender { pipe, rx, .. } = self;
            let answer = async {
                match (pipe.as_mut(), due) {
                    (Some(pipe), Some(due)) => pipe.receive::<ProduceRequest>(due).await,
                    _ => std::future::pending().await,
                }
            };
            tokio::select! {
                biased;
                () = token.cancelled() => return,
                answer = answer, if receiving => match answer {
                    Ok(response) => self.on_response(response),
                    Err(error) => self.fail_all(&error),
                },
                submission = rx.recv(), if open => match submission {
                    Some(submission) => self.waiting.push_back(submission),
                    None => self.closed = true,
                },
            }
        }
    }
}

/// The Produce request carrying `parts` (one batch per partition), acks from all in-sync
/// replicas (acks = -1, which idempotence requires); the broker is given `request_timeout` to
/// gather them.
fn request(parts: &[Submission], request_timeout: Duration) -> ProduceRequest {
    let mut topics: Vec<TopicProduceData> = Vec::new();
    for part in parts {
        let mut data = PartitionProduceData::default();
        data.index = part.partition;
        data.records = Some(part.batch.clone());
        match topics.iter_mut().find(|t| t.name == part.topic) {
            Some(topic) => topic.partition_data.push(data),
            None => {
                let mut topic = TopicProduceData::default();
                topic.name = part.topic.clone();
                topic.partition_data = vec![data];
                topics.push(topic);
            }
        }
    }
    let mut request = ProduceRequest::default();
    request.transactional_id = None;
    request.acks = -1;
    request.timeout_ms = i32::try_from(request_timeout.as_millis()).unwrap_or(i32::MAX);
    request.topic_data = topics;
    request
}

/// Runs one incarnation of a link until the producer's scope is cancelled (or every sender is
/// gone and nothing is held); after a panic, what the earlier one held is failed first.
async fn run(scope: Scope, handover: bus_supervisor::Handover<Sender>) -> Result<(), &'static str> {
    let mut held = handover.take();
    let restarted = held.restarted();
    let Some(sender) = held.get_mut() else {
        return Err("no link state to take over");
    };
    if restarted {
        let error = RequestError::Io {
            broker: sender.address.to_string(),
            api: "Produce",
            reason: "the broker link restarted after a panic".into(),
        };
        sender.fail_all(&error);
    }
    let token = scope.token();
    sender.run(&token).await;
    let error = RequestError::Io {
        broker: sender.address.to_string(),
        api: "Produce",
        reason: "the producer is shutting down".into(),
    };
    sender.fail_all(&error);
    sender.rx.close();
    while let Ok(submission) = sender.rx.try_recv() {
        let _ = submission.answer.send(Err(error.clone()));
    }
    Ok(())
}
