//! An event bus on Kafka: publish and consume domain events with per-aggregate ordering,
//! at-least-once delivery, retries and dead letters, with every task of the client in a
//! supervised tree and a shutdown that is never reported complete while one of them lives.
//!
//! A service depends on this crate (and tokio) alone: [`connect`] returns an [`EventBus`], and
//! everything used with it is re-exported here.
//!
//! - **Connecting:** [`connect`], [`KafkaConfig`] and its sections ([`ProducerConfig`],
//!   [`ConsumerConfig`], [`TopicConfig`], [`MetadataConfig`], [`Compression`],
//!   [`IsolationLevel`]), [`KafkaError`].
//! - **Security:** [`SecurityConfig`] (`security.protocol` [`SecurityProtocol`], `security.tls`
//!   [`TlsConfig`], `security.sasl` [`SaslConfig`] with [`SaslMechanism`]), [`Secret`], and for
//!   OAUTHBEARER [`TokenProvider`], [`OAuthBearerToken`], [`TokenFuture`], [`TokenError`].
//! - **The bus:** [`EventBus`], [`Health`] and its [`HealthReport`] ([`SubscriptionStatus`],
//!   [`GroupState`], [`PartitionStatus`], [`ProducerPartitionStatus`], [`ProducerState`]),
//!   [`PartitionFailure`], [`MetricsSnapshot`],
//!   [`ShutdownReport`], [`ShutdownError`].
//! - **Publishing:** [`Record`], [`Envelope`] (its [`Payload`] and [`Timestamp`]),
//!   [`Delivery`], [`DeliveryFuture`], [`Partitioner`].
//! - **Consuming:** [`Message`], [`Headers`], [`Header`], [`TopicPartition`], [`Topics`],
//!   [`Handler`], [`EnvelopeHandler`], [`SubscribeOptions`], [`RetryPolicy`], [`OffsetReset`],
//!   [`StartPosition`] (with [`PartitionOffset`]), [`CommitMode`], [`UnreadableBatches`],
//!   [`Subscription`], [`SubscriptionReport`], [`UnsubscribeReport`], [`UnsubscribeError`].
//! - **Controlling a running subscription:** [`ConsumerControl`] (seek with [`StartAt`], pause
//!   and resume, commit by hand with its [`CommitReport`]), [`ControlError`].
//! - **Administration:** [`admin`] (without a bus) or [`EventBus::admin`]: [`Admin`] with
//!   [`NewTopic`], [`TopicListing`], [`TopicDescription`] ([`PartitionDescription`],
//!   [`ConfigEntry`]), [`GroupListing`], [`GroupDescription`] ([`MemberDescription`],
//!   [`PartitionLag`]), [`ClusterDescription`] ([`BrokerDescription`], [`ApiSupport`]),
//!   [`PartitionCursor`], [`AdminError`].
//! - **Errors:** [`PublishError`], [`SubscribeError`], [`HandlerError`], [`EnvelopeError`]
//!   (with [`JsonError`], [`TimestampError`]), [`ConfigError`].
//! - **Helpers:** [`aggregate_id_of`], [`envelope_headers`], [`dead_letter_headers`],
//!   [`supervisor`] (the task tree: snapshots, leak guards).
//!
//! Inside, the bus speaks Kafka itself on the `kafka-protocol` crate over connections of its
//! own: a batching produce loop per partition, consumer groups (the classic protocol, eager or
//! cooperative rebalancing as `consumer.assignors` chooses, static members with
//! [`SubscribeOptions::group_instance_id`]), a fetch loop per assigned partition, metadata and
//! topic and group administration.
//!
//! ```no_run
//! use std::time::Duration;
//! use bus_kafka::{Envelope, HandlerError, KafkaConfig, SubscribeOptions};
//!
//! # async fn example() -> Result<(), Box<dyn std::error::Error>> {
//! let bus = bus_kafka::connect(KafkaConfig::new("127.0.0.1:9092")).await?;
//! let billing = SubscribeOptions::new("billing");
//! let _billing = bus
//!     .subscribe_envelopes("orders", billing, |order: Envelope| async move {
//!         println!("{} {} v{}", order.aggregate_id, order.event_type, order.event_version);
//!         Ok::<(), HandlerError>(())
//!     })
//!     .await?;
//! let placed = Envelope::new("order-1", "OrderPlaced", 1, serde_json::json!({"total": 42}))?;
//! let stored = bus.publish_envelope("orders", &placed).await?;
//! println!("stored at {}-{}@{}", stored.topic, stored.partition, stored.offset);
//! println!("{}", bus.shutdown(Duration::from_secs(10)).await?);
//! # Ok(())
//! # }
//! ```

mod admin;
mod backend;
mod client;
mod config;
mod connection;
mod connector;
mod error;
mod fetch;
#[cfg(feature = "fuzzing")]
pub mod fuzzing;
mod group;
mod leader;
mod producer;
mod schema;
mod security;
mod transport;

use std::sync::Arc;

pub use admin::admin;
pub use config::limits::{FETCH_RESPONSE_SLACK, MAX_FETCH_BYTES, MAX_PARTITION_BUFFER_BYTES};
pub use config::{
    Compression, ConsumerConfig, IsolationLevel, KafkaConfig, MetadataConfig, ProducerConfig,
    TopicConfig,
};
pub use error::KafkaError;
pub use security::{
    OAuthBearerToken, SaslConfig, SaslMechanism, Secret, SecurityConfig, SecurityProtocol,
    TlsConfig, TokenError, TokenFuture, TokenProvider,
};

pub use bus_core::{
    Admin, AdminError, ApiSupport, BrokerDescription, ClusterDescription, CommitMode, CommitReport,
    ConfigEntry, ConfigError, ConsumerControl, ControlError, Delivery, DeliveryFuture, Envelope,
    EnvelopeError, EnvelopeHandler, EventBus, GroupDescription, GroupListing, GroupState, Handler,
    HandlerError, Header, Headers, Health, HealthReport, JsonError, MemberDescription, Message,
    MetricsSnapshot, NewTopic, OffsetReset, PartitionCursor, PartitionDescription,
    PartitionFailure, PartitionLag, PartitionOffset, PartitionStatus, Partitioner, Payload,
    ProducerPartitionStatus, ProducerState, PublishError, Record, RetryPolicy, ShutdownError,
    ShutdownReport, StartAt, StartPosition, SubscribeError, SubscribeOptions, Subscription,
    SubscriptionReport, SubscriptionStatus, Timestamp, TimestampError, TopicDescription,
    TopicListing, TopicPartition, Topics, UnreadableBatches, UnsubscribeError, UnsubscribeReport,
    aggregate_id_of, dead_letter_headers, envelope_headers, supervisor,
};

use backend::KafkaBackend;
use client::KafkaClient;

/// Connects to the cluster and returns an event bus on it. The bus's tasks live under
/// `bus/kafka` (the producer's partition loops) and `bus/consumer` (subscriptions, their group
/// members and fetch loops).
///
/// # Errors
///
/// [`KafkaError::Config`] naming an invalid field; [`KafkaError::Connect`] when no bootstrap
/// broker answers within `request_timeout`.
pub async fn connect(config: KafkaConfig) -> Result<EventBus, KafkaError> {
    let config = Arc::new(config);
    let client = Arc::new(KafkaClient::connect(Arc::clone(&config)).await?);
    let supervisor = EventBus::backend_supervisor();
    let scope = supervisor.root().child("kafka");
    let producer =
        producer::Producer::start(scope.isolated_child("producer"), Arc::clone(&client))?;
    let backend = Arc::new(KafkaBackend::new(scope, client, producer));
    Ok(EventBus::on_backend(supervisor, backend))
}
