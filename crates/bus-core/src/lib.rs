//! bus-core: the envelope, handler traits, the event-bus API and the in-memory backend (to come).
