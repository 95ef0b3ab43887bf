//! [`RequestError`], a request to a broker that failed (naming the broker and the API; each
//! plane classifies it its own way), and [`code_name`], a Kafka error code's name for messages.

use std::time::Duration;

use kafka_protocol::error::ResponseError;

/// A request to a broker that failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum RequestError {
    /// The TCP connection could not be opened (or was closed during the TLS handshake).
    #[error("cannot connect to broker {broker}: {reason}")]
    Connect {
        /// The broker's address.
        broker: String,
        /// Why.
        reason: String,
    },
    /// The TLS handshake was refused: the broker's certificate is not trusted or does not name
    /// it, or the broker does not speak TLS. The same configuration fails again.
    #[error("TLS handshake with broker {broker} failed: {reason}")]
    Tls {
        /// The broker's address.
        broker: String,
        /// Why.
        reason: String,
    },
    /// SASL authentication failed: the broker refused the credentials or the mechanism, or the
    /// exchange broke the mechanism's rules. The same credentials fail again.
    #[error("broker {broker}: SASL authentication with {mechanism} failed: {reason}")]
    Auth {
        /// The broker's address.
        broker: String,
        /// The mechanism (`SCRAM-SHA-512`, ...).
        mechanism: &'static str,
        /// Why.
        reason: String,
    },
    /// Reading or writing the stream failed, the connection was closed, or the response's size
    /// prefix is invalid.
    #[error("broker {broker}: {api} failed: {reason}")]
    Io {
        /// The broker's address.
        broker: String,
        /// The API.
        api: &'static str,
        /// Why.
        reason: String,
    },
    /// No response within the request's timeout.
    #[error("broker {broker}: {api} v{version} got no response within {timeout:?}")]
    Timeout {
        /// The broker's address.
        broker: String,
        /// The API.
        api: &'static str,
        /// The version sent.
        version: i16,
        /// The timeout.
        timeout: Duration,
    },
    /// The response could not be decoded, or does not answer the request (correlation id).
    #[error("broker {broker}: {api} v{version}: {reason}")]
    Protocol {
        /// The broker's address.
        broker: String,
        /// The API.
        api: &'static str,
        /// The version.
        version: i16,
        /// Why.
        reason: String,
    },
    /// The request could not be encoded in the version chosen (nothing was sent).
    #[error("broker {broker}: {api} v{version}: cannot encode the request: {reason}")]
    Encode {
        /// The broker's address.
        broker: String,
        /// The API.
        api: &'static str,
        /// The version.
        version: i16,
        /// Why.
        reason: String,
    },
    /// The request is larger than a frame can carry (nothing was sent).
    #[error("broker {broker}: {api} v{version}: the request ({size} bytes) is too large")]
    TooLarge {
        /// The broker's address.
        broker: String,
        /// The API.
        api: &'static str,
        /// The version.
        version: i16,
        /// The request's encoded size.
        size: usize,
    },
    /// The broker supports no version of the API that we implement.
    #[error(
        "broker {broker} does not support {api} in a version we implement (ours: v{ours_min}-v{ours_max}, its: {theirs})"
    )]
    Unsupported {
        /// The broker's address.
        broker: String,
        /// The API.
        api: &'static str,
        /// The lowest version we implement.
        ours_min: i16,
        /// The highest version we implement.
        ours_max: i16,
        /// The broker's range, or "none".
        theirs: String,
    },
}

impl RequestError {
    /// Whether the error is a TLS or SASL refusal: the configuration does not fit the broker,
    /// and trying again at once would fail the same way.
    pub(crate) fn is_security(&self) -> bool {
        matches!(self, RequestError::Tls { .. } | RequestError::Auth { .. })
    }
}

/// A Kafka error code's name, for messages: `NAME (error N)`.
///
/// The name is Kafka's own (`TOPIC_ALREADY_EXISTS`, as the Java client's `Errors` spells it).
pub(crate) fn code_name(code: i16) -> String {
    ResponseError::try_from_code(code).map_or_else(
        || format!("error code {code}"),
        |e| format!("{} (error {code})", screaming_snake(&format!("{e:?}"))),
    )
}

/// `TopicAlreadyExists` as `TOPIC_ALREADY_EXISTS`.
fn screaming_snake(camel: &str) -> String {
    let mut name = String::with_capacity(camel.len() + 8);
    for (i, c) in camel.chars().enumerate() {
        if c.is_ascii_uppercase() && i > 0 {
            name.push('_');
        }
        name.push(c.to_ascii_uppercase());
    }
    name
}
