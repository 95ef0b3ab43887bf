//! The event bus: envelope, records, handler traits, the `EventBus` API, the in-memory backend
//! and the backend conformance suite.

pub mod backend;
mod bus;
pub mod commit;
#[cfg(feature = "conformance")]
pub mod conformance;
mod consumer;
pub mod delivery;
pub mod dispatch;
pub mod envelope;
pub mod error;
mod handler;
pub mod memory;
mod metrics;
pub mod options;
pub mod partition;
pub mod record;

pub use bus::{EventBus, ShutdownError, ShutdownReport};
pub use consumer::{Subscription, SubscriptionReport, UnsubscribeReport, dead_letter_headers};
pub use delivery::{Delivery, DeliveryFuture};
pub use envelope::{Envelope, EnvelopeError, aggregate_id_of};
pub use error::{ConfigError, HandlerError, PublishError, SubscribeError};
pub use handler::{EnvelopeHandler, Handler};
pub use metrics::MetricsSnapshot;
pub use options::{OffsetReset, RetryPolicy, SubscribeOptions};
pub use partition::{PartitionError, Partitioner, UnkeyedSpreader};
pub use record::{Header, Headers, Message, Record};
