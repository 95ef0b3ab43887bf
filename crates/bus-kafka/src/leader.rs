//! The leader directory: which broker leads each partition, for both sides of the data plane
//! (the producer's partition loops and the partition readers, `fetch`), shared by the whole bus.
//!
//! Owns: [`Leaders`] (the partitions' leaders as the latest Metadata said, per topic),
//! [`Broker`] (a broker as metadata names it: node id and address), [`LeaderError`] (why no
//! leader could be named, structured so that each plane can classify it its own way) and
//! [`leader`] (a connection of its own to a partition's leader, for the rare callers that want
//! one: administrative reads).
//!
//! Invariants:
//! - One Metadata request answers for every partition of a topic, and at most one is in flight
//!   for the whole bus at a time: however many partitions lose their leader at once (a broker
//!   dies under 500 of them), the first caller asks and the others take its answer. A caller
//!   that saw its leader fail passes the time it failed (`after`) and is answered only from
//!   metadata read after that; other callers take any answer younger than `metadata.max_age`.
//! - The bootstrap brokers are asked in their configured order, then the brokers the last
//!   answer named: one that cannot be reached or whose answer lacks the topic is passed over
//!   for the next, and the last failure is reported. Every connection and request is bounded
//!   by `request_timeout`; nothing is retried here (callers retry on their own terms).
//! - A partition without a leader (an election under way) is remembered as such, like a leader:
//!   the callers that failed before the answer was read take it (and retry on their own terms,
//!   then asking for metadata read after their next failure), so an election seen by 500
//!   partitions costs one request per round of retries, not 500.
//! - The topic is not created: Metadata is sent with `allow_auto_topic_creation = false`.

use std::collections::HashMap;
use std::sync::Arc;

use kafka_protocol::messages::metadata_request::MetadataRequestTopic;
use kafka_protocol::messages::{MetadataRequest, MetadataResponse, TopicName};
use parking_lot::Mutex;
use tokio::time::Instant;

use crate::connection::{Connection, RequestError, code_name};
use crate::connector::Connector;

/// Why no leader could be named for a partition.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum LeaderError {
    /// A connection or the Metadata request failed.
    #[error(transparent)]
    Request(#[from] RequestError),
    /// The metadata answers an error code for the topic or the partition (and names no leader).
    #[error("topic `{topic}` partition {partition}: metadata: {}", code_name(*code))]
    Code {
        /// The topic.
        topic: String,
        /// The partition.
        partition: i32,
        /// The Kafka error code.
        code: i16,
    },
    /// The metadata lacks the topic, the partition, or a reachable leader.
    #[error("topic `{topic}` partition {partition}: metadata: {reason}")]
    Missing {
        /// The topic.
        topic: String,
        /// The partition.
        partition: i32,
        /// What is missing.
        reason: String,
    },
}

/// A broker as the cluster's metadata names it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) struct Broker {
    /// Its node id.
    pub(crate) node: i32,
    /// `host:port` (`[host]:port` for an IPv6 address).
    pub(crate) address: Arc<str>,
}

impl std::fmt::Display for Broker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} (node {})", self.address, self.node)
    }
}

/// One topic as the latest Metadata answer said.
#[derive(Debug)]
struct TopicLeaders {
    /// When it was read.
    read: Instant,
    /// Each partition's leader, or why it has none (by partition index).
    partitions: HashMap<i32, Result<Broker, LeaderError>>,
}

/// The partitions' leaders, read with Metadata and shared by every part of the bus.
#[derive(Debug)]
pub(crate) struct Leaders {
    connector: Arc<Connector>,
    max_age: std::time::Duration,
    topics: Mutex<HashMap<TopicName, TopicLeaders>>,
    /// The brokers the latest answer named (asked after the bootstrap brokers).
    known: Mutex<Vec<Arc<str>>>,
    /// Held while a Metadata request is in flight: one at a time.
    asking: tokio::sync::Mutex<()>,
}

impl Leaders {
    /// A directory asking through `connector`, whose answers are trusted for `max_age`
    /// (`metadata.max_age`).
    pub(crate) fn new(connector: Arc<Connector>, max_age: std::time::Duration) -> Leaders {
        Leaders {
            connector,
            max_age,
            topics: Mutex::new(HashMap::new()),
            known: Mutex::new(Vec::new()),
            asking: tokio::sync::Mutex::new(()),
        }
    }

    /// The leader of `topic`/`partition`: from metadata read after `after` (the moment the
    /// caller's leader failed it) when given, else from any answer younger than `max_age`;
    /// asked for (one Metadata request for the topic, shared with concurrent callers) when
    /// there is none.
    ///
    /// # Errors
    ///
    /// [`LeaderError::Request`] when no broker could be asked, [`LeaderError::Code`] or
    /// [`LeaderError::Missing`] when the metadata names no leader.
    pub(crate) async fn leader(
        &self,
        topic: &TopicName,
        partition: i32,
        after: Option<Instant>,
    ) -> Result<Broker, LeaderError> {
        if let Some(known) = self.cached(topic, partition, after) {
            return known;
        }
        let _asking = self.asking.lock().await;
        // Another caller may have asked while this one waited.
        if let Some(known) = self.cached(topic, partition, after) {
            return known;
        }
        let read = Instant::now();
        let response = self.ask(topic, partition).await?;
        let leaders = leaders_of(&response, topic);
        let answer = match &leaders {
            Ok(partitions) => partitions.get(&partition).cloned().unwrap_or_else(|| {
                Err(LeaderError::Missing {
                    topic: topic.0.to_string(),
                    partition,
                    reason: "no such partition".into(),
                })
            }),
            Err(code) => {
                Err(LeaderError::Code { topic: topic.0.to_string(), partition, code: *code })
            }
        };
        if let Ok(partitions) = leaders {
            self.topics.lock().insert(topic.clone(), TopicLeaders { read, partitions });
        }
        answer
    }

    /// A remembered leader of `topic`/`partition` read after `after` (or younger than
    /// `max_age`).
    fn cached(
        &self,
        topic: &TopicName,
        partition: i32,
        after: Option<Instant>,
    ) -> Option<Result<Broker, LeaderError>> {
        let topics = self.topics.lock();
        let known = topics.get(topic)?;
        let fresh = match after {
            Some(after) => known.read > after,
            None => known.read.elapsed() < self.max_age,
        };
        if !fresh {
            return None;
        }
        known.partitions.get(&partition).cloned()
    }

    /// Metadata for `topic` from the first broker that answers with it: the bootstrap brokers
    /// in order, then those the latest answer named.
    async fn ask(
        &self,
        topic: &TopicName,
        partition: i32,
    ) -> Result<MetadataResponse, LeaderError> {
        let mut last = LeaderError::Missing {
            topic: topic.0.to_string(),
            partition,
            reason: "no bootstrap broker configured".into(),
        };
        let known = self.known.lock().clone();
        let bootstrap = self.connector.bootstrap().iter().map(String::as_str);
        let learned = known
            .iter()
            .map(|a| &**a)
            .filter(|a| !self.connector.bootstrap().iter().any(|b| b == a));
        for address in bootstrap.chain(learned) {
            let mut connection = match self.connector.open(address).await {
                Ok(connection) => connection,
                Err(e) => {
                    last = e.into();
                    continue;
                }
            };
            match metadata(&mut connection, self.connector.timeout(), topic).await {
                Ok(response) if has_topic(&response, topic) => {
                    let brokers = response
                        .brokers
                        .iter()
                        .map(|b| Arc::from(crate::client::address(b.host.as_str(), b.port)))
                        .collect();
                    *self.known.lock() = brokers;
                    return Ok(response);
                }
                Ok(_) => {
                    last = LeaderError::Missing {
                        topic: topic.0.to_string(),
                        partition,
                        reason: format!(
                            "the topic is not in broker {}'s answer",
                            connection.broker()
                        ),
                    };
                }
                Err(e) => last = e.into(),
            }
        }
        Err(last)
    }
}

/// Connects to the leader of `topic`/`partition` as `leaders` names it (see
/// [`Leaders::leader`]), bounded by `request_timeout`.
///
/// # Errors
///
/// As for [`Leaders::leader`], and [`LeaderError::Request`] when the leader cannot be reached.
pub(crate) async fn leader(
    leaders: &Leaders,
    topic: &TopicName,
    partition: i32,
    after: Option<Instant>,
) -> Result<Connection, LeaderError> {
    let broker = leaders.leader(topic, partition, after).await?;
    Ok(leaders.connector.open(&broker.address).await?)
}

/// Whether `response` answers for `topic`.
fn has_topic(response: &MetadataResponse, topic: &TopicName) -> bool {
    response.topics.iter().any(|t| t.name.as_ref() == Some(topic))
}

/// Metadata for `topic` on `connection`.
async fn metadata(
    connection: &mut Connection,
    timeout: std::time::Duration,
    topic: &TopicName,
) -> Result<MetadataResponse, RequestError> {
    let version = connection.version::<MetadataRequest>()?;
    let mut wanted = MetadataRequestTopic::default();
    wanted.name = Some(topic.clone());
    let mut request = MetadataRequest::default();
    request.topics = Some(vec![wanted]);
    request.allow_auto_topic_creation = false;
    connection.send(&request, version, timeout).await
}

/// Every partition's leader of `topic` in `response` (or why it has none), or the topic's
/// error code.
fn leaders_of(
    response: &MetadataResponse,
    topic: &TopicName,
) -> Result<HashMap<i32, Result<Broker, LeaderError>>, i16> {
    let Some(found) = response.topics.iter().find(|t| t.name.as_ref() == Some(topic)) else {
        return Ok(HashMap::new());
    };
    if found.error_code != 0 {
        return Err(found.error_code);
    }
    let name = topic.0.as_str();
    let leaders = found.partitions.iter().map(|p| {
        let partition = p.partition_index;
        let missing =
            |reason: String| LeaderError::Missing { topic: name.to_owned(), partition, reason };
        let leader = if p.leader_id.0 < 0 {
            Err(if p.error_code != 0 {
                LeaderError::Code { topic: name.to_owned(), partition, code: p.error_code }
            } else {
                missing(format!("no leader (leader id {})", p.leader_id.0))
            })
        } else {
            match response.brokers.iter().find(|b| b.node_id == p.leader_id) {
                Some(b) => Ok(Broker {
                    node: b.node_id.0,
                    address: Arc::from(crate::client::address(b.host.as_str(), b.port)),
                }),
                None => {
                    Err(missing(format!("the leader ({}) is not among the brokers", p.leader_id.0)))
                }
            }
        };
        (partition, leader)
    });
    Ok(leaders.collect())
}
