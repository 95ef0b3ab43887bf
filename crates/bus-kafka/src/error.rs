//! The Kafka backend's errors: each names the broker, topic or partition and why.

/// A failure of the Kafka backend outside the event-bus API's own errors.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum KafkaError {
    /// The configuration is invalid.
    #[error(transparent)]
    Config(#[from] bus_core::errors::ConfigError),
    /// No bootstrap broker answered.
    #[error("cannot connect to the Kafka cluster at {bootstrap}: {reason}")]
    Connect {
        /// The bootstrap addresses tried.
        bootstrap: String,
        /// Why.
        reason: String,
    },
    /// The topic does not exist (and auto-creation is off).
    #[error("unknown topic `{topic}`")]
    UnknownTopic {
        /// The topic.
        topic: String,
    },
    /// A topic could not be created, or exists with another partition count.
    #[error("cannot ensure topic `{topic}`: {reason}")]
    Topic {
        /// The topic.
        topic: String,
        /// Why.
        reason: String,
    },
    /// A metadata or partition request failed.
    #[error("topic `{topic}` partition {partition}: {reason}")]
    Partition {
        /// The topic.
        topic: String,
        /// The partition.
        partition: i32,
        /// Why.
        reason: String,
    },
    /// A task could not be started.
    #[error(transparent)]
    Spawn(#[from] bus_supervisor::SpawnError),
}
