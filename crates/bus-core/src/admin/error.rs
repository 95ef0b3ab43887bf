//! [`AdminError`], and the Kafka error codes the in-memory backend answers with their names.

/// Kafka's UNKNOWN_TOPIC_OR_PARTITION.
pub(crate) const UNKNOWN_TOPIC_OR_PARTITION: i16 = 3;
/// Kafka's TOPIC_ALREADY_EXISTS.
pub(crate) const TOPIC_ALREADY_EXISTS: i16 = 36;
/// Kafka's INVALID_PARTITIONS.
pub(crate) const INVALID_PARTITIONS: i16 = 37;
/// Kafka's INVALID_TOPIC_EXCEPTION.
pub(crate) const INVALID_TOPIC: i16 = 17;
/// Kafka's GROUP_ID_NOT_FOUND.
pub(crate) const GROUP_ID_NOT_FOUND: i16 = 69;

/// `NAME (error N)` for the codes the in-memory backend answers.
pub(crate) fn code_label(code: i16) -> String {
    let name = match code {
        UNKNOWN_TOPIC_OR_PARTITION => "UNKNOWN_TOPIC_OR_PARTITION",
        TOPIC_ALREADY_EXISTS => "TOPIC_ALREADY_EXISTS",
        INVALID_PARTITIONS => "INVALID_PARTITIONS",
        INVALID_TOPIC => "INVALID_TOPIC_EXCEPTION",
        GROUP_ID_NOT_FOUND => "GROUP_ID_NOT_FOUND",
        _ => "error",
    };
    format!("{name} (error {code})")
}

/// An administrative request that failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum AdminError {
    /// A request about a topic failed.
    #[error("topic `{topic}`: {reason}")]
    Topic {
        /// The topic.
        topic: String,
        /// Kafka's error code, when the failure has one.
        code: Option<i16>,
        /// What failed and why (with the code's name and the broker, where there is one).
        reason: String,
    },
    /// A request about a consumer group failed.
    #[error("group `{group}`: {reason}")]
    Group {
        /// The group.
        group: String,
        /// Kafka's error code, when the failure has one.
        code: Option<i16>,
        /// What failed and why.
        reason: String,
    },
    /// The backend (or the broker, named in `reason`) does not support the operation.
    #[error("{operation} is not supported: {reason}")]
    Unsupported {
        /// The operation (`add partitions`, …).
        operation: &'static str,
        /// Why, naming the broker where there is one.
        reason: String,
    },
    /// The cluster could not be reached (no broker answered within the request timeout).
    #[error("cannot reach the cluster: {reason}")]
    Unavailable {
        /// Why.
        reason: String,
    },
}

impl AdminError {
    /// Kafka's error code of the failure, when it has one.
    pub fn code(&self) -> Option<i16> {
        match self {
            AdminError::Topic { code, .. } | AdminError::Group { code, .. } => *code,
            AdminError::Unsupported { .. } | AdminError::Unavailable { .. } => None,
        }
    }

    /// A topic failure with Kafka's `code` (its name leads the reason).
    pub fn topic_code(topic: impl Into<String>, code: i16, detail: impl AsRef<str>) -> Self {
        AdminError::Topic {
            topic: topic.into(),
            code: Some(code),
            reason: with_detail(code_label(code), detail.as_ref()),
        }
    }

    /// A group failure with Kafka's `code` (its name leads the reason).
    pub fn group_code(group: impl Into<String>, code: i16, detail: impl AsRef<str>) -> Self {
        AdminError::Group {
            group: group.into(),
            code: Some(code),
            reason: with_detail(code_label(code), detail.as_ref()),
        }
    }
}

fn with_detail(label: String, detail: &str) -> String {
    if detail.is_empty() { label } else { format!("{label}: {detail}") }
}
