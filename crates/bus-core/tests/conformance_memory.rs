//! The backend conformance suite, run on the in-memory backend.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::sync::atomic::{AtomicUsize, Ordering};

use bus_core::EventBus;
use bus_core::backend::BoxFuture;
use bus_core::conformance::Harness;

/// Fresh in-memory buses; topics created on the bus's own backend.
struct Memory;

static TOPICS: AtomicUsize = AtomicUsize::new(0);

impl Harness for Memory {
    fn bus(&self) -> BoxFuture<'_, EventBus> {
        Box::pin(async { EventBus::in_memory() })
    }

    fn topic<'a>(
        &'a self,
        bus: &'a EventBus,
        hint: &'a str,
        partitions: i32,
    ) -> BoxFuture<'a, String> {
        Box::pin(async move {
            let name = format!("{hint}-{}", TOPICS.fetch_add(1, Ordering::Relaxed));
            bus.memory_backend().expect("in-memory bus").create_topic(&name, partitions).unwrap();
            name
        })
    }
}

bus_core::conformance_suite!(Memory);
