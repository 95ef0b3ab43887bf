//! The event bus: envelope, records, handler traits, the `EventBus` API, the in-memory backend
//! and the backend conformance suite.

pub mod record;
