//! The event bus: envelope, records, handler traits, the `EventBus` API, the in-memory backend
//! and the backend conformance suite.

pub mod backend;
pub mod delivery;
pub mod envelope;
pub mod error;
pub mod options;
pub mod partition;
pub mod record;

pub use delivery::{Delivery, DeliveryFuture};
pub use envelope::{Envelope, EnvelopeError, aggregate_id_of};
pub use error::{ConfigError, HandlerError, PublishError, SubscribeError};
pub use options::{OffsetReset, RetryPolicy, SubscribeOptions};
pub use partition::{PartitionError, Partitioner, UnkeyedSpreader};
pub use record::{Header, Headers, Message, Record};
