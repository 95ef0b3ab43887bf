//! The event bus: envelope, records, handler traits, the `EventBus` API, the in-memory backend
//! and the backend conformance suite.

pub mod envelope;
pub mod partition;
pub mod record;

pub use envelope::{Envelope, EnvelopeError, aggregate_id_of};
pub use partition::{PartitionError, Partitioner, UnkeyedSpreader};
