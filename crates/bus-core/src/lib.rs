//! The event bus: publish and consume domain events with per-aggregate ordering, at-least-once
//! delivery, retries and dead letters, on any backend, with every task in a supervised tree.
//!
//! This crate is the in-memory bus (the embedded default, no broker needed) and everything the
//! backends share; a Kafka service uses `bus-kafka`, which re-exports this front page whole.
//!
//! # The front page
//!
//! - **The bus:** [`EventBus`] and its [`ShutdownReport`].
//! - **Publishing:** [`Record`], [`Envelope`] (its [`Payload`] and [`Timestamp`]), [`Delivery`],
//!   [`DeliveryFuture`], [`Partitioner`].
//! - **Consuming:** [`Message`], [`Headers`] ([`Header`]), [`TopicPartition`], [`Topics`],
//!   [`Handler`], [`EnvelopeHandler`], [`HandlerError`], [`SubscribeOptions`],
//!   [`Subscription`], [`ConsumerControl`], [`StartAt`] (where reading starts: a seek, a
//!   read without a group), [`aggregate_id_of`].
//!
//! The rest, grouped by what it holds: [`subscription`] (the options' parts, the reports of a
//! subscription and of a manual commit), [`health`] (the health roll-up, its report and the
//! metrics), [`admin`] (topic and group administration), [`errors`] (every other error),
//! [`headers`] (the header names of envelopes and dead letters), [`supervisor`] (the task
//! tree: snapshots, leak guards, the scope-level shutdown report), [`memory`] (the in-memory
//! backend's configuration and inspection, for tests).
//!
//! For other readers: [`backend`] (the interface a new transport implements), [`dispatch`] and
//! [`commit`] (the consumer runtime's keyed dispatch and commit tracking, for a backend with a
//! consumer loop of its own and for benchmarks), `conformance` (feature `conformance`: the
//! behavioural suite every backend runs), [`fault`] (fault points; arming them only with the
//! `fault-injection` feature, for tests).
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

mod bus;
mod consumer;
mod delivery;
mod envelope;
mod error;
mod future;
mod handler;
mod metrics;
mod options;
mod partition;
mod record;
mod start;
mod topics;

pub mod admin;
pub mod backend;
pub mod commit;
#[cfg(feature = "conformance")]
pub mod conformance;
pub mod dispatch;
pub mod fault;
pub mod health;
pub mod memory;

pub use bus::{EventBus, ShutdownReport};
pub use consumer::{ConsumerControl, Subscription};
pub use delivery::{Delivery, DeliveryFuture};
pub use envelope::{Envelope, Payload, Timestamp, aggregate_id_of};
pub use error::HandlerError;
pub use handler::{EnvelopeHandler, Handler};
pub use options::SubscribeOptions;
pub use partition::Partitioner;
pub use record::{Header, Headers, Message, Record, TopicPartition};
pub use start::StartAt;
pub use topics::Topics;

/// A subscription's parts: the options' policies ([`RetryPolicy`](subscription::RetryPolicy),
/// [`CommitMode`](subscription::CommitMode),
/// [`UnreadableBatches`](subscription::UnreadableBatches),
/// [`RefusedDeadLetters`](subscription::RefusedDeadLetters)), where it starts
/// ([`StartPosition`](subscription::StartPosition) with
/// [`PartitionOffset`](subscription::PartitionOffset),
/// [`OffsetReset`](subscription::OffsetReset)), and its reports.
pub mod subscription {
    pub use crate::consumer::{CommitReport, SubscriptionReport, UnsubscribeReport};
    pub use crate::options::{CommitMode, RefusedDeadLetters, RetryPolicy, UnreadableBatches};
    pub use crate::start::{OffsetReset, PartitionOffset, StartPosition};
}

/// The errors the front page's calls return, besides [`HandlerError`]
/// (which handlers build) and the administration's [`AdminError`](crate::admin::AdminError).
pub mod errors {
    pub use crate::bus::ShutdownError;
    pub use crate::consumer::{ControlError, UnsubscribeError};
    pub use crate::envelope::{EnvelopeError, JsonError, TimestampError};
    pub use crate::error::{ConfigError, PublishError, SubscribeError};
}

/// The header names the bus writes: an envelope's (`X-*`) and a dead letter's.
pub mod headers {
    pub use crate::consumer::dead_letter_headers as dead_letter;
    pub use crate::envelope::headers as envelope;
}

/// The task supervisor the bus runs on (the `bus-supervisor` crate): [`EventBus::snapshot`]'s
/// [`Snapshot`](supervisor::Snapshot), the [`ScopeShutdownReport`](supervisor::ScopeShutdownReport)
/// inside a [`ShutdownReport`], [`LeakGuard`](supervisor::LeakGuard) for tests, and
/// [`Scope`](supervisor::Scope) / [`Supervisor`](supervisor::Supervisor) for backends.
pub use bus_supervisor as supervisor;
