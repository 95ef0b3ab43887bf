//! What a partition loop's attempts come to: a partition's answer to a Produce request (sent by
//! the broker's link, `link`), a failed request, a failed leader lookup, classified.
//!
//! Owns: [`Failure`] (what went wrong, and whether retrying can help), [`Stored`] (what an
//! answer that is not a failure says) and [`answer`] (a partition's answer, classified).
//!
//! Invariants:
//! - A transport failure ([`RequestError`]: I/O, timeout, an undecodable answer) is retriable,
//!   with a fresh connection (the failed one is poisoned); a request we cannot encode, or an API
//!   the broker does not support in a version we speak (Produce v3-v9, Metadata v1-v9), is
//!   fatal; a request too large to frame is `TooLarge` (split the batch).
//! - A broker error code is classified by Kafka's own rules (`ResponseError::is_retriable`), the
//!   two size errors (MESSAGE_TOO_LARGE, RECORD_LIST_TOO_LARGE) being `TooLarge`, and the
//!   idempotent producer's as the Java client and librdkafka take them: DUPLICATE_SEQUENCE_NUMBER
//!   is an acknowledgement (the batch was stored by an earlier attempt whose answer was lost;
//!   its offset is not known), OUT_OF_ORDER_SEQUENCE_NUMBER, UNKNOWN_PRODUCER_ID,
//!   INVALID_PRODUCER_EPOCH and PRODUCER_FENCED are [`Failure::Sequence`] (not stored; the
//!   broker's record of the producer and ours disagree).
//! - Nothing here sends or waits: classification only.

use kafka_protocol::ResponseError;
use kafka_protocol::messages::TopicName;
use kafka_protocol::messages::produce_response::PartitionProduceResponse;

use crate::connection::RequestError;
use crate::leader::LeaderError;

/// DUPLICATE_SEQUENCE_NUMBER: the batch is stored already.
const DUPLICATE_SEQUENCE_NUMBER: i16 = 46;

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
    /// The broker's record of this producer (id, epoch, sequence numbers) disagrees with ours:
    /// OUT_OF_ORDER_SEQUENCE_NUMBER, UNKNOWN_PRODUCER_ID, INVALID_PRODUCER_EPOCH,
    /// PRODUCER_FENCED. The batch was not stored; sent again under a new producer epoch (its
    /// sequence numbers from 0), it can be.
    Sequence(String),
}

impl Failure {
    /// The failure of a broker error code.
    pub(super) fn of_code(code: i16, context: &str) -> Failure {
        match ResponseError::try_from_code(code) {
            Some(e @ (ResponseError::MessageTooLarge | ResponseError::RecordListTooLarge)) => {
                Failure::TooLarge(format!("{context}: {e} (error {code})"))
            }
            Some(
                e @ (ResponseError::OutOfOrderSequenceNumber
                | ResponseError::UnknownProducerId
                | ResponseError::InvalidProducerEpoch
                | ResponseError::ProducerFenced),
            ) => Failure::Sequence(format!("{context}: {e} (error {code})")),
            Some(e) if e.is_retriable() => {
                Failure::Retriable(format!("{context}: {e} (error {code})"))
            }
            Some(e) => Failure::Fatal(format!("{context}: {e} (error {code})")),
            None => Failure::Fatal(format!("{context}: unknown error code {code}")),
        }
    }

    /// The failure of a failed request (see the module documentation for the classes).
    pub(super) fn of_request(error: &RequestError) -> Failure {
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
    pub(super) fn of_leader(error: &LeaderError) -> Failure {
        match error {
            LeaderError::Request(error) => Failure::of_request(error),
            LeaderError::Code { topic, partition, code } => {
                Failure::of_code(*code, &format!("topic `{topic}` partition {partition}: metadata"))
            }
            LeaderError::Missing { .. } => Failure::Retriable(error.to_string()),
        }
    }

    fn append(&mut self, more: &str) {
        match self {
            Failure::Retriable(text)
            | Failure::TooLarge(text)
            | Failure::Fatal(text)
            | Failure::Sequence(text) => {
                text.push_str(": ");
                text.push_str(more);
            }
        }
    }
}

/// What a partition's answer to a produce says, when it is not a failure.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Stored {
    /// Stored from this offset on.
    At(i64),
    /// Stored already (DUPLICATE_SEQUENCE_NUMBER: an earlier attempt was, and its answer was
    /// lost); the broker does not say at which offset.
    Duplicate,
}

/// What `answer` (a partition's part of a Produce response) says of the batch of `count`
/// records sent to `topic`/`partition`.
pub(super) fn answer(
    answer: &PartitionProduceResponse,
    topic: &TopicName,
    partition: i32,
    count: usize,
) -> Result<Stored, Failure> {
    let context = || format!("topic `{}` partition {partition}", topic.0.as_str());
    if answer.error_code == DUPLICATE_SEQUENCE_NUMBER {
        return Ok(Stored::Duplicate);
    }
    if answer.error_code != 0 {
        let mut failure = Failure::of_code(answer.error_code, &context());
        if let Some(message) = answer.error_message.as_ref() {
            failure.append(message.as_str());
        }
        return Err(failure);
    }
    if answer.base_offset < 0 {
        return Err(Failure::Fatal(format!(
            "{}: the broker acknowledged {count} record(s) without an offset",
            context()
        )));
    }
    Ok(Stored::At(answer.base_offset))
}

#[cfg(test)]
mod tests {
    use super::*;
    use kafka_protocol::protocol::StrBytes;
    use std::time::Duration;

    fn kind(failure: &Failure) -> &'static str {
        match failure {
            Failure::Retriable(_) => "retry",
            Failure::TooLarge(_) => "split",
            Failure::Fatal(_) => "final",
            Failure::Sequence(_) => "sequence",
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
        // OUT_OF_ORDER_SEQUENCE_NUMBER, INVALID_PRODUCER_EPOCH, UNKNOWN_PRODUCER_ID,
        // PRODUCER_FENCED: the producer's state, not the batch, is at fault.
        for code in [45, 47, 59, 90] {
            assert_eq!(kind(code), "sequence", "error {code}");
        }
    }

    fn response(code: i16, base_offset: i64) -> PartitionProduceResponse {
        let mut partition = PartitionProduceResponse::default();
        partition.index = 2;
        partition.error_code = code;
        partition.base_offset = base_offset;
        partition
    }

    #[test]
    fn a_duplicate_sequence_is_an_acknowledgement_without_an_offset() {
        let topic = TopicName(StrBytes::from_static_str("t"));
        assert_eq!(answer(&response(0, 42), &topic, 2, 3), Ok(Stored::At(42)));
        assert_eq!(answer(&response(46, -1), &topic, 2, 3), Ok(Stored::Duplicate));
        let gap = answer(&response(45, -1), &topic, 2, 3);
        assert!(matches!(gap, Err(Failure::Sequence(ref r)) if r.contains("t` partition 2")));
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
