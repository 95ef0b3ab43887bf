//! The errors of the event-bus API.
//!
//! Owns: [`PublishError`], [`SubscribeError`], [`HandlerError`] and [`ConfigError`]. Each error
//! names what failed (topic, partition, field, group) and why. Backends map their own failures
//! into these; nothing here panics.

use std::fmt;
use std::time::Duration;

use crate::envelope::EnvelopeError;

/// Why a record was not published.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PublishError {
    /// The bus is shutting down or shut down: it admits no new records.
    #[error("the bus is closed: no new records are accepted")]
    Closed,
    /// The envelope failed validation; nothing reached the backend.
    #[error("invalid envelope: {0}")]
    InvalidEnvelope(#[from] EnvelopeError),
    /// The record cannot be published as given.
    #[error("invalid record for topic `{topic}`: {reason}")]
    InvalidRecord {
        /// The record's topic.
        topic: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The topic does not exist and the backend is not configured to create it.
    #[error("unknown topic `{topic}`")]
    UnknownTopic {
        /// The topic.
        topic: String,
    },
    /// No room in the producer buffer within the publish timeout (backpressure).
    #[error(
        "no room for {needed} bytes in the producer buffer ({capacity} bytes) after waiting \
         {waited:?}"
    )]
    BufferFull {
        /// The buffer bytes the record needs (on Kafka its size plus its bookkeeping: see
        /// `producer.buffer_bytes`).
        needed: usize,
        /// The buffer's capacity.
        capacity: usize,
        /// How long the caller waited.
        waited: Duration,
    },
    /// The record could not be delivered within the delivery timeout.
    #[error(
        "delivery to `{topic}` partition {partition} timed out after {elapsed:?} \
         ({attempts} attempts): {last_error}"
    )]
    DeliveryTimeout {
        /// The topic.
        topic: String,
        /// The partition.
        partition: i32,
        /// Attempts made.
        attempts: u32,
        /// Time since the record was accepted.
        elapsed: Duration,
        /// The last error seen.
        last_error: String,
    },
    /// The broker rejected the record with an error that retrying cannot fix.
    #[error("the broker rejected the record for `{topic}` partition {partition}: {reason}")]
    Rejected {
        /// The topic.
        topic: String,
        /// The partition.
        partition: i32,
        /// The broker's error.
        reason: String,
    },
    /// The record was accepted but not acknowledged before the shutdown deadline; it is failed
    /// back rather than dropped. It may or may not have been stored.
    #[error("the record for `{topic}` was not acknowledged before shutdown")]
    NotAcknowledgedAtShutdown {
        /// The topic.
        topic: String,
    },
    /// Any other backend failure.
    #[error("{backend} backend: {reason}")]
    Backend {
        /// The backend's name.
        backend: &'static str,
        /// What failed.
        reason: String,
    },
}

/// Why a subscription could not be made (or an unsubscribe failed).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SubscribeError {
    /// The bus is shutting down or shut down.
    #[error("the bus is closed: no new subscriptions are accepted")]
    Closed,
    /// An option is out of range.
    #[error(transparent)]
    InvalidOptions(#[from] ConfigError),
    /// The topic does not exist and the backend is not configured to create it.
    #[error("unknown topic `{topic}`")]
    UnknownTopic {
        /// The topic.
        topic: String,
    },
    /// The backend could not join the consumer group.
    #[error("{backend} backend: cannot join group `{group}`: {reason}")]
    Group {
        /// The backend's name.
        backend: &'static str,
        /// The group.
        group: String,
        /// Why.
        reason: String,
    },
    /// A task could not be started (the bus's supervisor is closed).
    #[error("cannot start the subscription's tasks: {0}")]
    Spawn(#[from] bus_supervisor::SpawnError),
}

/// A configuration value out of range: names the field and the rule.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid `{field}`: {reason}")]
pub struct ConfigError {
    /// The field, as written in the configuration (`subscribe.concurrency`).
    pub field: &'static str,
    /// The rule it breaks.
    pub reason: String,
}

impl ConfigError {
    /// An error for `field`.
    pub fn new(field: &'static str, reason: impl Into<String>) -> Self {
        ConfigError { field, reason: reason.into() }
    }
}

/// A handler's failure. Any error converts into it with `?`; by default it is retried with
/// backoff and then dead-lettered. [`HandlerError::permanent`] skips the retries.
pub struct HandlerError {
    message: String,
    source: Option<Box<dyn std::error::Error + Send + Sync + 'static>>,
    retryable: bool,
}

impl HandlerError {
    /// A retryable failure described by `message`.
    pub fn new(message: impl Into<String>) -> Self {
        HandlerError { message: message.into(), source: None, retryable: true }
    }

    /// A failure that retrying cannot fix: the message goes to the dead-letter topic at once.
    pub fn permanent(message: impl Into<String>) -> Self {
        HandlerError { message: message.into(), source: None, retryable: false }
    }

    /// Whether the failure may be retried.
    pub fn is_retryable(&self) -> bool {
        self.retryable
    }

    /// The failure as text (with its sources).
    pub fn message(&self) -> &str {
        &self.message
    }

    /// The underlying error, if it was converted from one.
    pub fn source(&self) -> Option<&(dyn std::error::Error + Send + Sync + 'static)> {
        self.source.as_deref()
    }
}

impl<E: std::error::Error + Send + Sync + 'static> From<E> for HandlerError {
    fn from(error: E) -> Self {
        let mut message = error.to_string();
        let mut source = error.source();
        while let Some(cause) = source {
            message.push_str(": ");
            message.push_str(&cause.to_string());
            source = cause.source();
        }
        HandlerError { message, source: Some(Box::new(error)), retryable: true }
    }
}

impl fmt::Display for HandlerError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl fmt::Debug for HandlerError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HandlerError")
            .field("message", &self.message)
            .field("retryable", &self.retryable)
            .finish()
    }
}
