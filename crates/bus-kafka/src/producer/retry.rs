//! Which produce failures are worth retrying.
//!
//! Owns: [`classify`] and [`Verdict`]. Retriable: broken or refused connections, a leader that
//! moved or is not available, not enough replicas, request timeouts, storage errors, and
//! rskafka's own retries running out (their cause was retriable). A request too large is split
//! (by the caller). Everything else the broker says (invalid record, authorization, unsupported
//! version…) is final.

use rskafka::client::error::{Error, ProtocolError, RequestError};

/// What to do about a failed produce request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Verdict {
    /// Retry (after a backoff, with fresh metadata) until the delivery timeout.
    Retry(String),
    /// Fail the batch back to its callers with this reason.
    Reject(String),
    /// The broker found the request too large: split the batch and try the halves; a single
    /// record this large is rejected.
    TooLarge(String),
}

/// The verdict on `error`, with a description of it.
pub(super) fn classify(error: &Error) -> Verdict {
    let text = error.to_string();
    let retriable = match error {
        Error::Connection(_)
        | Error::InvalidResponse(_)
        | Error::RetryFailed(_)
        | Error::Timeout => true,
        Error::Request(request) => matches!(
            request,
            RequestError::IO(_)
                | RequestError::Poisoned(_)
                | RequestError::ReadFramedMessageError(_)
        ),
        Error::ServerError {
            protocol_error: ProtocolError::MessageTooLarge | ProtocolError::RecordListTooLarge,
            ..
        } => return Verdict::TooLarge(text),
        Error::ServerError { protocol_error, .. } => retriable_code(*protocol_error),
        _ => false,
    };
    if retriable { Verdict::Retry(text) } else { Verdict::Reject(text) }
}

/// The broker error codes the Java producer treats as retriable (for produce requests).
fn retriable_code(code: ProtocolError) -> bool {
    matches!(
        code,
        ProtocolError::CorruptMessage
            | ProtocolError::UnknownTopicOrPartition
            | ProtocolError::LeaderNotAvailable
            | ProtocolError::NotLeaderOrFollower
            | ProtocolError::RequestTimedOut
            | ProtocolError::BrokerNotAvailable
            | ProtocolError::ReplicaNotAvailable
            | ProtocolError::NetworkException
            | ProtocolError::NotEnoughReplicas
            | ProtocolError::NotEnoughReplicasAfterAppend
            | ProtocolError::KafkaStorageError
            | ProtocolError::FencedLeaderEpoch
            | ProtocolError::UnknownLeaderEpoch
            | ProtocolError::OffsetNotAvailable
            | ProtocolError::PreferredLeaderNotAvailable
            | ProtocolError::EligibleLeadersNotAvailable
            | ProtocolError::ThrottlingQuotaExceeded
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn leader_moves_and_replica_shortage_are_retried_size_errors_are_not() {
        let server = |code| Error::ServerError {
            protocol_error: code,
            error_message: None,
            request: rskafka::client::error::RequestContext::Partition("t".into(), 0),
            response: None,
            is_virtual: false,
        };
        for code in [
            ProtocolError::NotLeaderOrFollower,
            ProtocolError::LeaderNotAvailable,
            ProtocolError::NotEnoughReplicas,
            ProtocolError::RequestTimedOut,
        ] {
            assert!(matches!(classify(&server(code)), Verdict::Retry(_)), "{code:?}");
        }
        for code in [ProtocolError::InvalidRecord, ProtocolError::TopicAuthorizationFailed] {
            assert!(matches!(classify(&server(code)), Verdict::Reject(_)), "{code:?}");
        }
        assert!(matches!(classify(&server(ProtocolError::MessageTooLarge)), Verdict::TooLarge(_)));
        let reset = std::io::Error::new(std::io::ErrorKind::ConnectionReset, "reset");
        assert!(matches!(classify(&Error::Request(RequestError::IO(reset))), Verdict::Retry(_)));
    }
}
