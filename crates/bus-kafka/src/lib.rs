//! An event bus on Kafka: publish and consume domain events with per-aggregate ordering,
//! at-least-once delivery, retries and dead letters, with every task of the client in a
//! supervised tree and a shutdown that is never reported complete while one of them lives.
//!
//! A service depends on this crate (and tokio) alone: [`connect`] returns an [`EventBus`], and
//! everything used with it is re-exported here.
//!
//! # The front page
//!
//! - **Connecting:** [`connect`], [`KafkaConfig`], [`KafkaError`].
//! - **The bus:** [`EventBus`] and its [`ShutdownReport`].
//! - **Publishing:** [`Record`], [`Envelope`] (its [`Payload`] and [`Timestamp`]), [`Delivery`],
//!   [`DeliveryFuture`], [`Partitioner`].
//! - **Consuming:** [`Message`], [`Headers`] ([`Header`]), [`TopicPartition`], [`Topics`],
//!   [`Handler`], [`EnvelopeHandler`], [`HandlerError`], [`SubscribeOptions`],
//!   [`Subscription`], [`ConsumerControl`], [`StartAt`], [`aggregate_id_of`].
//!
//! The rest, grouped by what it holds: [`config`] (the configuration's sections and limits),
//! [`security`] (TLS and SASL: the `security` section, [`Secret`](security::Secret), OAUTHBEARER
//! token providers), [`admin`] (topic and group administration, with or without a bus),
//! [`subscription`] (the options' parts and the reports), [`health`] (the health roll-up, its
//! report, the metrics), [`errors`] (every other error), [`headers`] (the header names of
//! envelopes and dead letters), [`supervisor`] (the task tree: snapshots, leak guards) and
//! [`memory`] (the in-memory backend, for tests). All but the first three are bus-core's,
//! re-exported whole.
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

// Deliberately hides bus-core's `backend` module from the front page re-exported below: a
// service does not implement backends.
#[allow(hidden_glob_reexports)]
mod backend;
mod client;
mod connection;
mod connector;
mod error;
mod fetch;
mod group;
mod leader;
mod producer;
mod schema;
mod transport;

pub mod admin;
pub mod config;
#[cfg(feature = "fuzzing")]
pub mod fuzzing;
pub mod security;

pub use config::kafka::KafkaConfig;
pub use error::KafkaError;

/// bus-core's front page, whole: the bus, publishing, consuming, and its modules (`subscription`,
/// `health`, `errors`, `headers`, `supervisor`, `memory`, ...). This crate's own `admin` module
/// (bus-core's administration and [`admin::connect`]) stands in for bus-core's, and its private
/// `backend` hides bus-core's backend interface, which a service does not need.
pub use bus_core::*;

/// The workspace README's Rust code (the service in "Use it in a service"), compiled with this
/// crate's doc-tests so that the page a newcomer copies from cannot rot.
#[cfg(doctest)]
#[doc = include_str!("../../../README.md")]
pub struct ReadmeDoctests;

use std::sync::Arc;

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
