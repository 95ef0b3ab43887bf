//! The producer's own requests on the shared [`Connection`]: connecting to a partition's leader
//! (the crate's [`crate::leader`] lookup) and Produce, with what went wrong classified for the
//! partition loop.
//!
//! Owns: [`Failure`] (what went wrong, and whether retrying can help), [`leader`] (the shared
//! lookup, its failure classified) and [`produce`] (one ProduceRequest for one record batch and
//! its partition's answer).
//!
//! Invariants:
//! - A transport failure ([`RequestError`]: I/O, timeout, an undecodable answer) is retriable,
//!   with a fresh connection (the failed one is poisoned); a request we cannot encode, or an API
//!   the broker does not support in a version we speak (Produce v3-v9, Metadata v1-v9), is
//!   fatal; a request too large to frame is `TooLarge` (split the batch).
//! - A broker error code is classified by Kafka's own rules (`ResponseError::is_retriable`), the
//!   two size errors (MESSAGE_TOO_LARGE, RECORD_LIST_TOO_LARGE) being `TooLarge`.
//! - Produce sends the batch as the `Bytes` it was encoded into (no copy before the request's
//!   own frame) and asks for acks from all in-sync replicas (acks = -1).
//! - No task is spawned here: the partition loop drives every read and write itself.

use std::time::Duration;

use bytes::Bytes;
use kafka_protocol::ResponseError;
use kafka_protocol::messages::produce_request::{PartitionProduceData, TopicProduceData};
use kafka_protocol::messages::{ProduceRequest, TopicName};

use crate::connection::{Connection, RequestError};
use crate::connector::Connector;
use crate::leader::LeaderError;

/// Why a request failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Failure {
    /// Worth retrying (with a fresh connection): I/O, a timeout, a broker error Kafka marks
    /// retriable, no leader, an undecodable answer.
    Retriable(String),
    /// The request or batch is too large for the broker: split it.
    TooLarge(String),
    /// Retrying cannot help.
    Fatal(String),
}

impl Failure {
    /// The failure of a broker error code.
    fn of_code(code: i16, context: &str) -> Failure {
        match ResponseError::try_from_code(code) {
            Some(e @ (ResponseError::MessageTooLarge | ResponseError::RecordListTooLarge)) => {
                Failure::TooLarge(format!("{context}: {e} (error {code})"))
            }
            Some(e) if e.is_retriable() => {
                Failure::Retriable(format!("{context}: {e} (error {code})"))
            }
            Some(e) => Failure::Fatal(format!("{context}: {e} (error {code})")),
            None => Failure::Fatal(format!("{context}: unknown error code {code}")),
        }
    }

    /// The failure of a failed request (see the module documentation for the classes).
    fn of_request(error: &RequestError) -> Failure {
        match error {
            RequestError::Connect { .. }
            | RequestError::Io { .. }
            | RequestError::Timeout { .. }
            | RequestError::Protocol { .. } => Failure::Retriable(error.to_string()),
            RequestError::TooLarge { .. } => Failure::TooLarge(error.to_string()),
            RequestError::Encode { .. }
            | RequestError::Unsupported { .. }
            | RequestError::Tls { .. }
            | RequestError::Auth { .. } => Failure::Fatal(error.to_string()),
        }
    }

    /// The failure of a leader lookup.
    fn of_leader(error: &LeaderError) -> Failure {
        match error {
            LeaderError::Request(error) => Failure::of_request(error),
            LeaderError::Code { topic, partition, code } => {
                Failure::of_code(*code, &format!("topic `{topic}` partition {partition}: metadata"))
            }
            LeaderError::Missing { .. } => Failure::Retriable(error.to_string()),
        }
    }
}

/// Connects to the leader of `topic`/`partition` (see [`crate::leader::leader`]), each
/// connection and request bounded by `request_timeout`.
pub(super) async fn leader(
    connector: &Connector,
    topic: &TopicName,
    partition: i32,
) -> Result<Connection, Failure> {
    crate::leader::leader(connector, topic, partition).await.map_err(|e| Failure::of_leader(&e))
}

/// Produces one record batch of `count` records to `topic`/`partition` with acks=all, and
/// returns the offset of its first record. The broker is given `request_timeout` to gather the
/// acknowledgements, and the request as long to be answered.
pub(super) async fn produce(
    connection: &mut Connection,
    topic: &TopicName,
    partition: i32,
    batch: Bytes,
    count: usize,
    request_timeout: Duration,
) -> Result<i64, Failure> {
    let version = connection.version::<ProduceRequest>().map_err(|e| Failure::of_request(&e))?;
    let mut data = PartitionProduceData::default();
    data.index = partition;
    data.records = Some(batch);
    let mut topic_data = TopicProduceData::default();
    topic_data.name = topic.clone();
    topic_data.partition_data = vec![data];
    let mut request = ProduceRequest::default();
    request.acks = -1;
    request.timeout_ms = i32::try_from(request_timeout.as_millis()).unwrap_or(i32::MAX);
    request.topic_data = vec![topic_data];
    let response = connection
        .send(&request, version, request_timeout)
        .await
        .map_err(|e| Failure::of_request(&e))?;
    let context = || format!("topic `{}` partition {partition}", topic.0.as_str());
    let answer = response
        .responses
        .iter()
        .filter(|t| t.name == *topic)
        .flat_map(|t| t.partition_responses.iter())
        .find(|p| p.index == partition);
    let Some(answer) = answer else {
        return Err(Failure::Retriable(format!(
            "{}: the produce response names no such partition",
            context()
        )));
    };
    if answer.error_code != 0 {
        let mut failure = Failure::of_code(answer.error_code, &context());
        if let Some(message) = answer.error_message.as_ref() {
            match &mut failure {
                Failure::Retriable(text) | Failure::TooLarge(text) | Failure::Fatal(text) => {
                    text.push_str(&format!(": {}", message.as_str()));
                }
            }
        }
        return Err(failure);
    }
    if answer.base_offset < 0 {
        return Err(Failure::Fatal(format!(
            "{}: the broker acknowledged {count} record(s) without an offset",
            context()
        )));
    }
    Ok(answer.base_offset)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kind(failure: &Failure) -> &'static str {
        match failure {
            Failure::Retriable(_) => "retry",
            Failure::TooLarge(_) => "split",
            Failure::Fatal(_) => "final",
        }
    }

    #[test]
    fn leader_moves_replica_shortage_and_timeouts_are_retried_size_errors_split_others_final() {
        let kind = |code: i16| kind(&Failure::of_code(code, "t-0"));
        // NOT_LEADER_OR_FOLLOWER, LEADER_NOT_AVAILABLE, REQUEST_TIMED_OUT, NOT_ENOUGH_REPLICAS,
        // NOT_ENOUGH_REPLICAS_AFTER_APPEND, NETWORK_EXCEPTION, UNKNOWN_TOPIC_OR_PARTITION.
        for code in [6, 5, 7, 19, 20, 13, 3] {
            assert_eq!(kind(code), "retry", "error {code}");
        }
        // MESSAGE_TOO_LARGE, RECORD_LIST_TOO_LARGE.
        for code in [10, 18] {
            assert_eq!(kind(code), "split", "error {code}");
        }
        // INVALID_RECORD, TOPIC_AUTHORIZATION_FAILED, UNSUPPORTED_VERSION, an unknown code.
        for code in [87, 29, 35, 30_000] {
            assert_eq!(kind(code), "final", "error {code}");
        }
    }

    #[test]
    fn transport_failures_are_retried_unframeable_requests_split_or_final() {
        let broker = || "b:9092".to_owned();
        let retried = [
            RequestError::Connect { broker: broker(), reason: "refused".into() },
            RequestError::Io { broker: broker(), api: "Produce", reason: "reset".into() },
            RequestError::Timeout {
                broker: broker(),
                api: "Produce",
                version: 9,
                timeout: Duration::from_secs(30),
            },
            RequestError::Protocol {
                broker: broker(),
                api: "Produce",
                version: 9,
                reason: "correlation id 1 does not match the request's 2".into(),
            },
        ];
        for error in &retried {
            assert_eq!(kind(&Failure::of_request(error)), "retry", "{error}");
        }
        let split =
            RequestError::TooLarge { broker: broker(), api: "Produce", version: 9, size: 1 << 31 };
        assert_eq!(kind(&Failure::of_request(&split)), "split");
        let last = [
            RequestError::Encode {
                broker: broker(),
                api: "Produce",
                version: 3,
                reason: "a field this version lacks".into(),
            },
            RequestError::Unsupported {
                broker: broker(),
                api: "Produce",
                ours_min: 3,
                ours_max: 9,
                theirs: "v0-v2".into(),
            },
        ];
        for error in &last {
            assert_eq!(kind(&Failure::of_request(error)), "final", "{error}");
        }
        // A leader lookup: transport failures and missing leaders retried, codes by Kafka's rules.
        let missing = LeaderError::Missing {
            topic: "t".into(),
            partition: 0,
            reason: "no leader (leader id -1)".into(),
        };
        assert_eq!(kind(&Failure::of_leader(&missing)), "retry");
        let moving = LeaderError::Code { topic: "t".into(), partition: 0, code: 5 };
        assert_eq!(kind(&Failure::of_leader(&moving)), "retry");
        let denied = LeaderError::Code { topic: "t".into(), partition: 0, code: 29 };
        assert_eq!(kind(&Failure::of_leader(&denied)), "final");
        let refused = LeaderError::Request(retried[0].clone());
        assert_eq!(kind(&Failure::of_leader(&refused)), "retry");
    }
}
