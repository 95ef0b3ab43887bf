//! Reading one assigned partition: the [`PartitionReader`] on Fetch requests shared per broker.
//!
//! Owns: [`KafkaReader`] (a partition's position, its route to the partition's leader, found
//! with the crate's `leader` directory, and its memory budget) and [`Route`].
//!
//! Invariants:
//! - The position (the next offset to return) advances only when a batch is returned, so
//!   dropping a pending `next_batch` loses no record (cancel-safe): the job it submitted is
//!   discarded by the session, or its answer dropped, and the connection is not touched (the
//!   session owns it). Resolving `Earliest`, `Latest` or `Timestamp` (ListOffsets by time;
//!   the end offset when no record is that late) fixes the position once, when the member
//!   opens the reader; it is not re-resolved.
//! - Records below the position (a batch is returned whole) are skipped; the records returned
//!   are in offset order, each above the last returned (see `batch`).
//! - A batch that cannot be read ends the fetch: the records before it are returned, and the
//!   next fetch (from its first offset) returns it as [`ReadError::Unreadable`], naming the
//!   broker, topic, partition, offsets and reason (or the limit), until the runtime seeks past
//!   it. The reader never skips records on its own.
//! - A fetch answered with OFFSET_OUT_OF_RANGE, or with nothing from a position above both the
//!   high watermark and the partition's end offset (brokers that do not report the error),
//!   moves the position as the subscription's `auto_offset_reset` says (earliest or latest
//!   offset; logged).
//! - Each fetch asks for `consumer.fetch_max_bytes` of its partition (at most the caller's
//!   `max_bytes`) and lets the broker wait at most `consumer.fetch_max_wait` for records; it
//!   reads as `consumer.isolation_level` says (read_committed: records of aborted
//!   transactions are skipped, see `batch`).
//! - A bus's readers hold no connection: each request goes to the fetch session of the
//!   broker the leader directory names (`broker`: one connection per broker, one Fetch per
//!   broker carrying every partition waiting). A reader opened for administration without a
//!   bus ([`Route::Own`]) runs the same requests on a connection of its own. A failed request
//!   or a partition's error (not the leader any more…) makes the next fetch look the leader up
//!   again, in metadata read after the failure. A reader waits for its session's answer at
//!   most `broker::answer_timeout`.
//! - Memory: what the reader's messages reference (its part of responses and decompressed
//!   batches) is held against a budget of `consumer.partition_buffer_bytes` (`memory`); a
//!   fetch first reserves room for the largest part it may get (`partition_max_bytes` plus
//!   `FETCH_RESPONSE_SLACK`), waiting for handlers to release memory when there is none
//!   (backpressure); the shared response is then charged by part (`memory`'s invariants).

use std::sync::Arc;

use bus_core::backend::{BoxFuture, GroupError, PartitionReader, ReadError, UnreadableBatch};
use bus_core::{Message, StartAt, TopicPartition, subscription::OffsetReset};
use kafka_protocol::messages::TopicName;
use kafka_protocol::protocol::StrBytes;
use tokio::sync::oneshot;

use super::batch::{self, AbortedTransactions, Settings};
use super::broker::{self, Answer, FetchJob, FetchPart, Fetchers, Job, ListJob, ListPart, Plan};
use super::memory::{Budget, Spares};
use crate::client::KafkaClient;
use crate::config::IsolationLevel;
use crate::config::limits::FETCH_RESPONSE_SLACK;
use crate::connection::{Connection, code_name};
use crate::leader::{Broker, leader};

/// OFFSET_OUT_OF_RANGE.
const OFFSET_OUT_OF_RANGE: i16 = 1;
/// ListOffsets' timestamp for the earliest offset.
const EARLIEST: i64 = -2;
/// ListOffsets' timestamp for the end offset.
const LATEST: i64 = -1;

/// How a reader's requests reach its partition's leader.
#[derive(Debug, Clone)]
pub(crate) enum Route {
    /// Through the bus's fetch sessions, one per broker.
    Shared(Arc<Fetchers>),
    /// On a connection of the reader's own (administration without a bus).
    Own,
}

/// Where the reader's requests go now.
#[derive(Debug)]
enum Link {
    /// The leader's session.
    Shared(Arc<Fetchers>, Option<Broker>),
    /// A connection of its own (and its response buffers).
    Own(Option<Connection>, Spares),
}

/// Reads one partition of a Kafka topic (returned by the member's `open`).
pub(crate) struct KafkaReader {
    client: Arc<KafkaClient>,
    group: String,
    partition: TopicPartition,
    topic: TopicName,
    link: Link,
    position: StartAt,
    /// Where an out-of-range position goes.
    reset: OffsetReset,
    /// What the reader's messages may hold.
    budget: Budget,
    /// The partition's high watermark in the last fetch answer.
    high_watermark: Option<i64>,
    /// When its leader last failed it (the next lookup reads metadata younger than this).
    failed_at: Option<tokio::time::Instant>,
}

impl std::fmt::Debug for KafkaReader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KafkaReader")
            .field("partition", &self.partition)
            .field("position", &self.position)
            .finish()
    }
}

impl KafkaReader {
    /// A reader of `partition` from `start`, resetting to `reset` when out of range, whose
    /// requests go `route` (the leader is looked up on the first fetch or
    /// [`KafkaReader::resolve`], which also fixes a start that is not an offset; failures are
    /// retried by the caller).
    pub(crate) fn new(
        client: Arc<KafkaClient>,
        route: Route,
        group: String,
        partition: TopicPartition,
        start: StartAt,
        reset: OffsetReset,
    ) -> Self {
        let topic = TopicName(StrBytes::from_string(partition.topic.to_string()));
        let budget = Budget::new(client.config().consumer.partition_buffer_bytes);
        let link = match route {
            Route::Shared(fetchers) => Link::Shared(fetchers, None),
            Route::Own => Link::Own(None, Spares::default()),
        };
        KafkaReader {
            client,
            group,
            partition,
            topic,
            link,
            position: start,
            reset,
            budget,
            high_watermark: None,
            failed_at: None,
        }
    }

    fn error(&self, what: &str, error: impl std::fmt::Display) -> GroupError {
        GroupError::retriable(&self.group, format!("`{}`: {what}: {error}", self.partition))
    }

    /// Forgets the leader after a failure: the next request looks it up again, in metadata
    /// read after now.
    fn leader_failed(&mut self) {
        match &mut self.link {
            Link::Shared(_, leader) => *leader = None,
            Link::Own(connection, _) => *connection = None,
        }
        self.failed_at = Some(tokio::time::Instant::now());
    }

    /// Runs `job` (made with its reply channel) at the partition's leader: through its
    /// session, or on the reader's own connection (opened after a lookup when there is none
    /// or the last one failed). Any failure makes the next request look the leader up again.
    async fn ask<T>(
        &mut self,
        what: &str,
        job: impl FnOnce(oneshot::Sender<Answer<T>>) -> Job,
    ) -> Result<T, GroupError> {
        let (reply, answer) = oneshot::channel();
        let after = self.failed_at;
        let config = Arc::clone(self.client.config());
        let leaders = self.client.leaders();
        let sent: Result<(), String> = match &mut self.link {
            Link::Shared(fetchers, known) => {
                let broker = match known.clone() {
                    Some(broker) => Ok(broker),
                    None => leaders
                        .leader(&self.topic, self.partition.partition, after)
                        .await
                        .map_err(|e| format!("cannot find the partition's leader: {e}")),
                };
                match broker {
                    Ok(broker) => {
                        let submitted = fetchers.submit(&broker, job(reply));
                        *known = Some(broker);
                        submitted
                    }
                    Err(e) => Err(e),
                }
            }
            Link::Own(connection, spares) => {
                let opened = if connection.as_ref().is_some_and(Connection::is_usable) {
                    Ok(())
                } else {
                    leader(leaders, &self.topic, self.partition.partition, after)
                        .await
                        .map(|opened| *connection = Some(opened))
                        .map_err(|e| format!("cannot reach the partition's leader: {e}"))
                };
                match opened.map(|()| connection.as_mut()) {
                    Err(e) => Err(e),
                    Ok(Some(open)) => {
                        let plan = Plan::new(&config);
                        let kept = match job(reply) {
                            Job::Fetch(job) => broker::fetch_round(open, vec![job], &plan, spares)
                                .await
                                .map(|fetched| fetched.keep),
                            Job::List(job) => {
                                broker::list_round(open, vec![job], &plan).await.map(|()| true)
                            }
                        };
                        if !matches!(kept, Ok(true)) {
                            *connection = None;
                        }
                        Ok(())
                    }
                    Ok(None) => Err("no connection".to_owned()),
                }
            }
        }
        .inspect_err(|_| self.leader_failed());
        let answered = match sent {
            Ok(()) => tokio::time::timeout(broker::answer_timeout(&config), answer).await,
            Err(e) => return Err(self.error(what, e)),
        };
        let failure = match answered {
            Ok(Ok(Ok(Some(part)))) => return Ok(part),
            Ok(Ok(Ok(None))) => {
                return Err(self.error(what, "the answer names no such partition"));
            }
            Ok(Ok(Err(e))) => e.to_string(),
            Ok(Err(_)) => "the broker's fetch session stopped before answering".to_owned(),
            Err(_) => format!(
                "no answer within {:?} from the broker's fetch session",
                broker::answer_timeout(&config)
            ),
        };
        self.leader_failed();
        Err(self.error(what, failure))
    }

    /// The partition's offset at `timestamp` (`EARLIEST` or `LATEST`), from its leader.
    async fn list_offset(&mut self, timestamp: i64) -> Result<i64, GroupError> {
        let which = match timestamp {
            EARLIEST => "earliest".to_owned(),
            LATEST => "latest".to_owned(),
            millis => format!("first at or after {millis} ms"),
        };
        let what = format!("cannot list the {which} offset");
        let (topic, partition) = (self.topic.clone(), self.partition.partition);
        let part: ListPart = self
            .ask(&what, |reply| Job::List(ListJob { topic, partition, timestamp, reply }))
            .await?;
        match part.error_code {
            0 => Ok(part.offset),
            code => {
                self.leader_failed();
                Err(self.error(&what, code_name(code)))
            }
        }
    }

    /// The position as an offset, resolving `Earliest`, `Latest` or `Timestamp` once.
    async fn offset(&mut self) -> Result<i64, GroupError> {
        let timestamp = match self.position {
            StartAt::Offset(offset) => return Ok(offset),
            StartAt::Earliest => EARLIEST,
            StartAt::Latest => LATEST,
            StartAt::Timestamp(time) => time.timestamp_millis().max(0),
        };
        let mut offset = self.list_offset(timestamp).await?;
        if offset < 0 {
            // No record at or after the timestamp: Kafka answers -1; start at the end.
            offset = self.list_offset(LATEST).await?;
        }
        tracing::debug!(partition = %self.partition, start = ?self.position, offset, "start offset resolved");
        self.position = StartAt::Offset(offset);
        Ok(offset)
    }

    /// Resolves a start at the earliest or latest offset or at a timestamp now (the member's
    /// `open` does, so that the position is the partition's at the open); an offset needs
    /// nothing.
    pub(crate) async fn resolve(&mut self) -> Result<(), GroupError> {
        self.offset().await.map(|_| ())
    }

    async fn fetch(&mut self, max_bytes: usize) -> Result<Vec<Message>, ReadError> {
        let offset = self.offset().await?;
        let consumer = &self.client.config().consumer;
        let limit = max_bytes.min(consumer.fetch_max_bytes).max(1);
        let settings = Settings {
            topic: Arc::clone(&self.partition.topic),
            partition: self.partition.partition,
            from: offset,
            fetch_limit: limit,
            max_decompressed: consumer.max_decompressed_batch_bytes,
            read_committed: consumer.isolation_level == IsolationLevel::ReadCommitted,
        };
        let limit = i32::try_from(limit).unwrap_or(i32::MAX);
        // Room for the largest part this fetch may get, before asking for it: waits for the
        // messages of earlier fetches to be handled when the budget is spent.
        let room = usize::try_from(limit).unwrap_or(0).saturating_add(FETCH_RESPONSE_SLACK);
        let reserved = self
            .budget
            .reserve(room)
            .await
            .ok_or_else(|| self.error("fetch", "the reader's memory budget is closed"))?;
        let what = format!("fetch at offset {offset} failed");
        let (topic, partition) = (self.topic.clone(), self.partition.partition);
        let answer: FetchPart = self
            .ask(&what, |reply| {
                Job::Fetch(FetchJob { topic, partition, offset, max_bytes: limit, reserved, reply })
            })
            .await?;
        let broker = Arc::clone(&answer.broker);
        match answer.error_code {
            0 => {
                if answer.high_watermark >= 0 {
                    self.high_watermark = Some(answer.high_watermark);
                }
            }
            OFFSET_OUT_OF_RANGE => {
                return self.reset(offset, "out of range (OFFSET_OUT_OF_RANGE)").await;
            }
            code => {
                // Not the leader any more, unknown partition, fenced epoch…: look the leader
                // up again on the next fetch.
                self.leader_failed();
                return Err(self
                    .error(&format!("fetch at offset {offset} failed"), code_name(code))
                    .into());
            }
        }
        let aborted = AbortedTransactions::new(answer.aborted.iter().copied());
        let decoded = match &answer.records {
            Some(records) => batch::decode(records, &settings, aborted, &self.budget).await,
            None => batch::Decoded::default(),
        };
        if let Some(next) = decoded.next {
            self.position = StartAt::Offset(next.max(offset));
        }
        match decoded.unreadable {
            Some(unreadable) if decoded.messages.is_empty() && decoded.next.is_none() => {
                return Err(ReadError::Unreadable(UnreadableBatch {
                    partition: self.partition.clone(),
                    first_offset: unreadable.first_offset,
                    last_offset: unreadable.last_offset,
                    raw: unreadable.raw,
                    reason: format!("broker {broker}: {}", unreadable.reason),
                }));
            }
            // The records before it first; the next fetch starts with it.
            _ => {}
        }
        if decoded.next.is_none() && offset > answer.high_watermark {
            // Past the end. Kafka answers OFFSET_OUT_OF_RANGE here; some brokers (nisshi
            // 0.8.1, docs/BROKER.md) answer an empty batch and would stall the reader for
            // good. Confirm with the partition's end offset (a high watermark can lag for a
            // moment after a leader change) before resetting.
            let latest = self.list_offset(LATEST).await?;
            return if offset > latest {
                self.reset(offset, "beyond the end of the partition").await
            } else {
                Ok(Vec::new())
            };
        }
        Ok(decoded.messages)
    }

    /// Moves the position as `auto_offset_reset` says (logged): `offset` is `why`.
    async fn reset(&mut self, offset: i64, why: &str) -> Result<Vec<Message>, ReadError> {
        let (timestamp, to) = match self.reset {
            OffsetReset::Earliest => (EARLIEST, "earliest"),
            OffsetReset::Latest => (LATEST, "latest"),
        };
        let target = self.list_offset(timestamp).await?;
        tracing::warn!(
            group = %self.group, partition = %self.partition, offset, target,
            "offset {why}; resetting to the {to} offset (auto_offset_reset)"
        );
        self.position = StartAt::Offset(target);
        Ok(Vec::new())
    }
}

impl PartitionReader for KafkaReader {
    fn next_batch(&mut self, max_bytes: usize) -> BoxFuture<'_, Result<Vec<Message>, ReadError>> {
        Box::pin(self.fetch(max_bytes))
    }

    fn seek(&mut self, offset: i64) {
        self.position = StartAt::Offset(offset);
    }

    fn position(&self) -> Option<i64> {
        match self.position {
            StartAt::Offset(offset) => Some(offset),
            StartAt::Earliest | StartAt::Latest | StartAt::Timestamp(_) => None,
        }
    }

    fn high_watermark(&self) -> Option<i64> {
        self.high_watermark
    }
}
