//! Finding a partition's leader and connecting to it, for both sides of the data plane: the
//! producer's partition loops and the partition readers (`fetch`).
//!
//! Owns: [`leader`] (Metadata for one topic-partition through the bootstrap brokers, then a
//! connection to the leader it names) and [`LeaderError`] (why no leader connection could be
//! had, structured so that each plane can classify it its own way).
//!
//! Invariants:
//! - The bootstrap brokers are asked in their configured order; one that cannot be reached or
//!   whose answer names no leader is passed over for the next, and the last failure is
//!   reported. The first answer that names a leader decides.
//! - The connection to the bootstrap broker asked is kept (not reopened) when it is the leader
//!   itself; otherwise it is dropped and a new one is opened to the leader.
//! - Every connection and request is bounded by the caller's timeout; nothing is retried here
//!   (callers retry on their own terms, with a fresh lookup).
//! - The topic is not created: Metadata is sent with `allow_auto_topic_creation = false`.

use std::time::Duration;

use kafka_protocol::messages::metadata_request::MetadataRequestTopic;
use kafka_protocol::messages::{MetadataRequest, TopicName};

use crate::connection::{Connection, RequestError, code_name};
use crate::connector::Connector;

/// Why no connection to a partition's leader could be had.
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

/// Connects to the leader of `topic`/`partition`: asks the `bootstrap` brokers in turn
/// (Metadata) and keeps the connection of the one asked when it is the leader itself. Every
/// connection and request is bounded by `timeout`.
///
/// # Errors
///
/// The last failure met: [`LeaderError::Request`] when a broker cannot be reached or its
/// answer read, [`LeaderError::Code`] or [`LeaderError::Missing`] when the metadata names no
/// leader.
pub(crate) async fn leader(
    connector: &Connector,
    topic: &TopicName,
    partition: i32,
) -> Result<Connection, LeaderError> {
    let timeout = connector.timeout();
    let mut last = LeaderError::Missing {
        topic: topic.0.to_string(),
        partition,
        reason: "no bootstrap broker configured".into(),
    };
    for address in connector.bootstrap() {
        let mut connection = match connector.open(address).await {
            Ok(connection) => connection,
            Err(e) => {
                last = e.into();
                continue;
            }
        };
        match leader_of(&mut connection, timeout, topic, partition).await {
            Ok(leader) if leader == connection.broker() => return Ok(connection),
            Ok(leader) => return Ok(connector.open(&leader).await?),
            Err(e) => last = e,
        }
    }
    Err(last)
}

/// The leader of `topic`/`partition` as the broker behind `connection` sees it: `host:port`
/// (`[host]:port` for an IPv6 address).
async fn leader_of(
    connection: &mut Connection,
    timeout: Duration,
    topic: &TopicName,
    partition: i32,
) -> Result<String, LeaderError> {
    let version = connection.version::<MetadataRequest>()?;
    let mut wanted = MetadataRequestTopic::default();
    wanted.name = Some(topic.clone());
    let mut request = MetadataRequest::default();
    request.topics = Some(vec![wanted]);
    request.allow_auto_topic_creation = false;
    let response = connection.send(&request, version, timeout).await?;
    let missing =
        |reason: String| LeaderError::Missing { topic: topic.0.to_string(), partition, reason };
    let code = |code: i16| LeaderError::Code { topic: topic.0.to_string(), partition, code };
    let found = response.topics.iter().find(|t| t.name.as_ref() == Some(topic));
    let Some(found) = found else {
        return Err(missing(format!(
            "the topic is not in broker {}'s answer",
            connection.broker()
        )));
    };
    if found.error_code != 0 {
        return Err(code(found.error_code));
    }
    let Some(p) = found.partitions.iter().find(|p| p.partition_index == partition) else {
        return Err(missing("no such partition".into()));
    };
    if p.leader_id.0 < 0 {
        return Err(if p.error_code != 0 {
            code(p.error_code)
        } else {
            missing(format!("no leader (leader id {})", p.leader_id.0))
        });
    }
    let Some(broker) = response.brokers.iter().find(|b| b.node_id == p.leader_id) else {
        return Err(missing(format!("the leader ({}) is not among the brokers", p.leader_id.0)));
    };
    Ok(crate::client::address(broker.host.as_str(), broker.port))
}
