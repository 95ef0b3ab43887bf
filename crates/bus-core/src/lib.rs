//! The event bus: publish and consume domain events with per-aggregate ordering, at-least-once
//! delivery, retries and dead letters, on any backend, with every task in a supervised tree.
//!
//! This crate is the in-memory bus (the embedded default, no broker needed) and everything the
//! backends share; a Kafka service uses `bus-kafka`, which re-exports the same front page.
//!
//! # The front page
//!
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
//! - **Controlling a running subscription:** [`ConsumerControl`] (seek with [`SeekTo`], pause
//!   and resume, commit by hand with its [`CommitReport`]), [`ControlError`].
//! - **Administration:** [`Admin`] ([`EventBus::admin`]) with [`NewTopic`], [`TopicListing`],
//!   [`TopicDescription`] ([`PartitionDescription`], [`ConfigEntry`]), [`GroupListing`],
//!   [`GroupDescription`] ([`MemberDescription`], [`PartitionLag`]), [`ClusterDescription`]
//!   ([`BrokerDescription`], [`ApiSupport`]), [`PartitionCursor`], [`AdminError`].
//! - **Errors:** [`PublishError`], [`SubscribeError`], [`HandlerError`], [`EnvelopeError`]
//!   (with [`JsonError`], [`TimestampError`]), [`ConfigError`].
//! - **Helpers:** [`aggregate_id_of`], [`envelope_headers`], [`dead_letter_headers`].
//!
//! Modules for other readers: [`memory`] (the in-memory backend's configuration and inspection,
//! for tests), [`supervisor`] (the task tree: snapshots, leak guards, the scope-level shutdown
//! report), [`backend`] (the interface a new transport implements), `conformance` (feature
//! `conformance`: the behavioural suite every backend runs), [`fault`] (fault points; arming
//! them only with the `fault-injection` feature, for tests).
//!
//! # Example
//!
//! ```
//! use std::time::Duration;
//! use bus_core::{Envelope, EventBus, HandlerError, SubscribeOptions};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let bus = EventBus::in_memory();
//! let (seen, mut rx) = tokio::sync::mpsc::unbounded_channel();
//! let _billing = bus
//!     .subscribe_envelopes("orders", SubscribeOptions::new("billing"), move |e: Envelope| {
//!         let seen = seen.clone();
//!         async move {
//!             seen.send(e.aggregate_id).map_err(|_| HandlerError::new("test ended"))?;
//!             Ok(())
//!         }
//!     })
//!     .await?;
//! let placed = Envelope::new("order-1", "OrderPlaced", 1, serde_json::json!({"total": 42}))?;
//! bus.publish_envelope("orders", &placed).await?;
//! assert_eq!(rx.recv().await.as_deref(), Some("order-1"));
//! let report = bus.shutdown(Duration::from_secs(5)).await?;
//! assert_eq!(bus.live_tasks(), 0);
//! println!("{report}");
//! # Ok(())
//! # }
//! ```

mod admin;
pub mod backend;
mod bus;
pub mod commit;
#[cfg(feature = "conformance")]
pub mod conformance;
mod consumer;
mod delivery;
pub mod dispatch;
mod envelope;
mod error;
pub mod fault;
mod future;
mod handler;
mod health;
pub mod memory;
mod metrics;
mod options;
mod partition;
mod record;
mod start;
mod topics;

pub use admin::{
    Admin, AdminError, ApiSupport, BrokerDescription, ClusterDescription, ConfigEntry,
    GroupDescription, GroupListing, MemberDescription, NewTopic, PartitionCursor,
    PartitionDescription, PartitionLag, TopicDescription, TopicListing,
};
pub use bus::{EventBus, ShutdownError, ShutdownReport};
pub use consumer::{
    CommitReport, ConsumerControl, ControlError, Subscription, SubscriptionReport,
    UnsubscribeError, UnsubscribeReport, dead_letter_headers,
};
pub use delivery::{Delivery, DeliveryFuture};
pub use envelope::headers as envelope_headers;
pub use envelope::{
    Envelope, EnvelopeError, JsonError, Payload, Timestamp, TimestampError, aggregate_id_of,
};
pub use error::{ConfigError, HandlerError, PublishError, SubscribeError};
pub use handler::{EnvelopeHandler, Handler};
pub use health::{
    GroupState, Health, HealthReport, PartitionFailure, PartitionStatus, ProducerPartitionStatus,
    ProducerState, SubscriptionStatus,
};
pub use metrics::MetricsSnapshot;
pub use options::{CommitMode, RetryPolicy, SubscribeOptions, UnreadableBatches};
pub use partition::Partitioner;
pub use record::{Header, Headers, Message, Record, TopicPartition};
pub use start::{OffsetReset, PartitionOffset, StartAt, StartPosition};
pub use topics::Topics;

/// The task supervisor the bus runs on (the `bus-supervisor` crate): [`EventBus::snapshot`]'s
/// [`Snapshot`](supervisor::Snapshot), the [`ScopeShutdownReport`](supervisor::ScopeShutdownReport)
/// inside a [`ShutdownReport`], [`LeakGuard`](supervisor::LeakGuard) for tests, and
/// [`Scope`](supervisor::Scope) / [`Supervisor`](supervisor::Supervisor) for backends.
pub use bus_supervisor as supervisor;
